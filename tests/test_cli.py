"""The gcl-zoo console script: dispatch, help, and the benchmarks it runs (smoke-sized here)."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gcl_zoo import cli
from gcl_zoo.data import CIFARLongTail

REPO = Path(__file__).resolve().parent.parent


def test_help_lists_every_subcommand(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for command in ("train", "eval", "export", "push", "serve", "bench"):
        assert f"  {command}" in out


def test_unknown_command_and_benchmark_are_clear(capsys):
    assert cli.main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err
    assert cli.main(["bench", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'nope'; choose one of" in err and "train_speed" in err and "serve_load" in err


def test_train_speed_benchmark_runs_on_cpu(tmp_path, cifar10_zip):
    out = tmp_path / "speed.json"
    result = subprocess.run([sys.executable, "-m", "gcl_zoo.cli", "bench", "train-speed", "--data-root", str(cifar10_zip),
                             "--steps", "2", "--warmup", "1", "--workers", "0", "--device", "cpu", "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["loader"]["steps_per_epoch"] == 194  # 12,406 images in batches of 64
    for path in ("loader", "fast", "fast_stage2"):  # each pipeline timed the asked-for steps, figures consistent
        timing = report[path]
        assert timing["steps_timed"] == 2 and timing["seconds_per_step"] > 0
        assert timing["images_per_second"] == pytest.approx(64 / timing["seconds_per_step"])
        assert timing["seconds_per_epoch"] == pytest.approx(timing["seconds_per_step"] * timing["steps_per_epoch"])
    assert report["speedup"] == pytest.approx(report["loader"]["seconds_per_epoch"] / report["fast"]["seconds_per_epoch"])
    assert "speed-up of the fast path" in result.stdout
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():  # the record names the CPU model, which decides the timings
        assert f": {report['machine']['cpu_model']}\n" in cpuinfo.read_text()


@pytest.mark.slow
def test_train_speed_benchmark_times_the_compiled_and_eager_fast_path_in_one_run(tmp_path, cifar10_zip):
    out = tmp_path / "speed.json"
    result = subprocess.run([sys.executable, "bench/train_speed.py", "--data-root", str(cifar10_zip), "--steps", "2",
                             "--warmup", "1", "--workers", "0", "--device", "cpu", "--compile", "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["compile"] and report["fast_eager"]["steps_timed"] == 2
    assert report["compile_speedup"] == pytest.approx(report["fast_eager"]["seconds_per_epoch"]
                                                      / report["fast"]["seconds_per_epoch"])
    assert "speed-up of torch.compile on the fast path" in result.stdout


def test_packed_subset_reads_like_the_full_archive(tmp_path, cifar10_zip):
    packed = tmp_path / "c10lt100.zip"
    result = subprocess.run([sys.executable, "bench/pack_cifar_lt.py", str(cifar10_zip), str(packed), "--imb-ratio", "100"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for ratio in (100, 200):  # the subsets are nested: a ratio-100 pack also serves ratio 200
        small, full = CIFARLongTail(packed, imb_ratio=ratio), CIFARLongTail(cifar10_zip, imb_ratio=ratio)
        assert np.array_equal(small.data, full.data) and np.array_equal(small.positions, full.positions)
    assert len(CIFARLongTail(packed, train=False)) == 10000
    with pytest.raises(FileNotFoundError, match="packed subset without image position"):
        CIFARLongTail(packed, imb_ratio=50)


def test_serve_load_benchmark_runs_on_cpu(tmp_path, shared_data):
    """Smoke-sized: a real server, one cell, one head-to-head round; the report holds every figure it quotes."""
    result = subprocess.run([sys.executable, "-m", "gcl_zoo.cli", "bench", "serve-load", "--data", str(shared_data),
                             "--concurrency", "2", "--images-per-request", "4", "--seconds", "0.5", "--warmup", "0.2",
                             "--rounds", "1", "--raw-batch", "8", "--out", str(tmp_path)],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / "serve_load.json").read_text())
    (cell,) = report["cells"]
    assert cell["errors"] == 0 and cell["requests"] > 0 and cell["images_per_s"] > 0
    assert "trace/1t" in report["raw_images_per_s"]["before"] and "trace/1t" in report["raw_images_per_s"]["after"]
    duel = report["head_to_head"]
    assert len(duel["ratios"]) == 1 and duel["median_ratio"] > 0
    assert 0 < report["best_server"]["ratio_to_best_raw"]
    assert "the server delivers" in result.stdout
