"""The gcl-zoo console script: dispatch, help, and the benchmarks it runs (smoke-sized here)."""
import json
import subprocess
import sys
from pathlib import Path

from gcl_zoo import cli

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
    assert "unknown benchmark 'nope'; choose one of serve_load, train_speed" in capsys.readouterr().err


def test_train_speed_benchmark_runs_on_cpu(tmp_path, cifar10_zip):
    out = tmp_path / "speed.json"
    result = subprocess.run([sys.executable, "-m", "gcl_zoo.cli", "bench", "train-speed", "--data-root", str(cifar10_zip),
                             "--steps", "2", "--warmup", "1", "--workers", "0", "--device", "cpu", "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["loader"]["steps_per_epoch"] == 194  # 12,406 images in batches of 64
    assert report["fast"]["seconds_per_step"] > 0 and report["speedup"] > 0
    assert "speed-up of the fast path" in result.stdout
