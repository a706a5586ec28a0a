"""The stage-2 study script: its variants run from a stage-1 folder, read only validation data, and are summarised."""
import json
import subprocess
import sys

import pytest

from train import cli

REPO_BENCH = "bench/stage2_study.py"


@pytest.mark.slow  # several training runs end to end
def test_study_runs_variants_on_validation_only_and_resumes(tmp_path, cifar100_zip):
    stage1 = tmp_path / "s1"
    assert cli.main(["--recipe", "cifar100_lt", "--out", str(stage1), "--data-root", str(cifar100_zip), "--stage", "1",
                     "--epochs", "1", "--imb-ratio", "10", "--max-per-class", "30", "--val-per-class", "5", "--test-per-class", "5",
                     "--workers", "0", "--no-progress", "--no-test"]) == 0
    command = [sys.executable, REPO_BENCH, "--stage1", str(stage1 / "stage1"), "--data-root", str(cifar100_zip),
               "--imb-ratio", "10", "--out", str(tmp_path / "study"), "--results", str(tmp_path / "results"), "--smoke",
               "--only", "lr 0.004", "--only", "fresh head, lr 0.002"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    summary = json.loads((tmp_path / "results" / "r10.json").read_text())
    assert summary["split"] == "val" and summary["test_set_read"] is False
    assert [row["variant"] for row in summary["variants"]] == ["lr 0.004", "fresh head, lr 0.002"]
    for row in summary["variants"]:
        assert row["runs"] == 1 and 0 <= row["mean"]["top1"] <= 100 and row["mean"]["nll"] > 0
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)  # finished variants are read back
    assert again.returncode == 0 and "core 0:" not in again.stdout
    unknown = subprocess.run([*command[:-4], "--only", "lr 0.1"], capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "unknown variant" in unknown.stderr
