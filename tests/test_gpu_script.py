"""The GPU benchmark script rehearsed on the CPU with tiny settings: every part writes its results under $OUT, the
time limits hold, and a second call skips what is done and finishes the rest."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

import _train_runs  # noqa: E402
from _train_runs import train_command  # noqa: E402
from train import run_folder  # noqa: E402


def _gpu_script(out: Path, work: Path, data: Path, **limits: str) -> str:
    env = {**os.environ, "OUT": str(out), "WORK": str(work), "DATA": str(data), "DEVICE": "cpu", "SMOKE": "1",
           "SPEED_STEPS": "2", "SPEED_WARMUP": "1", "WORKERS": "0", "JOBS": "2", **limits}
    result = subprocess.run(["bash", "bench/gpu_cifar10_lt.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _statuses(report: Path) -> dict:
    return {run["method"]: run["status"] for run in json.loads(report.read_text())["runs"]}


@pytest.mark.slow  # the whole GPU script in miniature
def test_the_gpu_script_rehearsed_on_the_cpu_writes_each_part_and_resumes(tmp_path, cifar10_zip):
    """First call: the timings, and no training (limits of 0 s: every run waits). Second call, with an emptied
    $OUT as the GPU machine gives each command: the timings are skipped, every run trains and finishes."""
    work = tmp_path / "work"
    first = tmp_path / "first"
    _gpu_script(first, work, cifar10_zip, FULL_LIMIT_S="0", REPRO_LIMIT_S="0")
    assert sorted(p.name for p in first.iterdir()) == [
        "full_recipe.json", "machine.txt", "reproduce.log", "reproduce_cifar10_lt.json", "train_speed.json",
        "train_speed.log"]  # at most 8 files come back from a GPU machine
    speed = json.loads((first / "train_speed.json").read_text())
    assert all(speed[part]["steps_timed"] == 2 for part in ("loader", "fast", "fast_stage2"))
    assert _statuses(first / "full_recipe.json") == {"gcl": "pending"}
    assert _statuses(first / "reproduce_cifar10_lt.json") == dict.fromkeys(("gcl", "ce_mixup", "ce_mixup_crt"),
                                                                          "pending")
    second = tmp_path / "second"
    output = _gpu_script(second, work, cifar10_zip)
    assert "loader: timed by an earlier call" in output and "fast_stage2: timed by an earlier call" in output
    assert json.loads((second / "train_speed.json").read_text())["loader"] == speed["loader"]
    assert _statuses(second / "full_recipe.json") == {"gcl": "finished"}
    runs = json.loads((second / "reproduce_cifar10_lt.json").read_text())["runs"]
    assert {r["method"]: r["status"] for r in runs} == dict.fromkeys(("gcl", "ce_mixup", "ce_mixup_crt"), "finished")
    assert "gcl_ir100_seed0: finished earlier" in output  # part 4 read part 3's run back
    assert all(r["top1"] is not None and r["epochs_done"]["1"] == 1 for r in runs)
    assert [r["epochs_done"].get("2") for r in runs] == [1, None, 1]  # CE + mixup has one stage


def test_a_benchmark_run_resumes_a_run_folder_and_restarts_anything_else(tmp_path):
    """A stopped run's folder is continued with --resume; a folder a process left while starting is cleared."""
    folder = run_folder.RunFolder(tmp_path)
    assert (_train_runs.RUN_FILE, _train_runs.RECIPE_FILE, _train_runs.METRICS_FILE, _train_runs.EVAL_FILE) == (
        folder.run_file.name, folder.recipe_file.name, folder.metrics_file.name, folder.eval_file.name)
    stopped, broken = tmp_path / "stopped", tmp_path / "broken"
    stopped.mkdir()
    (stopped / "run.json").write_text("{}")
    (stopped / "recipe.yaml").write_text("dataset: cifar10_lt\n")
    broken.mkdir()
    (broken / "recipe.yaml").write_text("dataset: cifar10_lt\n")
    assert train_command(stopped, ["--recipe", "cifar10_lt"])[2:] == ["train", "--resume", str(stopped),
                                                                       "--no-progress"]
    assert train_command(broken, ["--recipe", "cifar10_lt"])[2:] == ["train", "--recipe", "cifar10_lt", "--out",
                                                                      str(broken), "--no-progress"]
    assert not broken.exists()
