"""Training runs that a benchmark starts as ``python -m train`` processes, under a time limit and resumable.

A run lives in its own folder. A finished one (``eval.json`` written, ``run.json`` says so) is read back, never run
again; a run folder that is not finished (stopped at a limit, or killed) is continued with ``--resume``; anything
else starts fresh. At a deadline a run is stopped with SIGTERM, which makes the trainer write a checkpoint at the
next step and exit (status 143), so the next call continues from there instead of losing the work.
Results are written with ``write_json`` as each part finishes, so a benchmark killed midway keeps what it has.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
# the files ``gcl-zoo train`` writes into a run folder (train.run_folder's constants; a test checks they agree),
# named here so that a benchmark starts its runs without importing torch
RUN_FILE, RECIPE_FILE, METRICS_FILE, EVAL_FILE = "run.json", "recipe.yaml", "metrics.jsonl", "eval.json"

# a few steps of every stage on a small subset: the whole benchmark tried on a CPU (the rehearsal of a GPU run)
SMOKE = {"epochs": 1, "warmup_epochs": 1, "decay_epochs": [], "stage2.epochs": 1, "max_per_class": 100,
         "val_per_class": 10, "test_per_class": 20}
REPORT_KEYS = ("top1", "many", "medium", "few", "per_class")
STOP_GRACE_S = 60  # a stopped run finishes its step and writes its checkpoint within this


def recipe_flags(overrides: Mapping[str, Any]) -> list[str]:
    """``gcl-zoo train`` flags for recipe overrides (``{"max_per_class": 100}`` -> ``--max-per-class 100``)."""
    flags: list[str] = []
    for key, value in overrides.items():
        flags.append("--" + key.replace("_", "-"))
        flags += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return flags


def write_json(path: Path, data: Any) -> None:
    """Replace ``path`` atomically: a benchmark killed while writing leaves the previous results whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=2))
    os.replace(partial, path)


def read_json(path: Path) -> dict[str, Any]:
    """The results a previous call wrote (empty when there are none, or they are unreadable)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def is_finished(folder: Path) -> bool:
    return (folder / EVAL_FILE).is_file() and "finished" in read_json(folder / RUN_FILE)


def progress(folder: Path) -> dict[str, Any]:
    """What a run folder holds: epochs done per stage, the seconds they took, and the final report once finished."""
    epochs: dict[str, int] = {}
    seconds = 0.0
    metrics = folder / METRICS_FILE
    for line in metrics.read_text().splitlines() if metrics.is_file() else []:
        row = json.loads(line)
        epochs[str(row["stage"])] = row["epoch"]
        seconds += row.get("seconds") or 0.0
    info: dict[str, Any] = {"finished": is_finished(folder), "epochs_done": epochs, "epoch_seconds": seconds}
    if info["finished"]:
        report = read_json(folder / EVAL_FILE)
        info.update({k: report.get(k) for k in REPORT_KEYS})
    return info


def is_run_folder(folder: Path) -> bool:
    """Whether ``--resume`` can continue ``folder`` (its recipe and run options were written)."""
    return (folder / RUN_FILE).is_file() and (folder / RECIPE_FILE).is_file()


def train_command(folder: Path, args: Sequence[str]) -> list[str]:
    """``--resume`` for a run folder that is not finished; otherwise a fresh run (a folder left without the run
    files, by a process stopped while starting, holds nothing to continue and is removed)."""
    if is_run_folder(folder):
        return [sys.executable, "-m", "train", "--resume", str(folder), "--no-progress"]
    if folder.exists():
        shutil.rmtree(folder)
    return [sys.executable, "-m", "train", *args, "--out", str(folder), "--no-progress"]


class TrainRun:
    """One run's process: started (or resumed) in ``folder`` with its output appended to ``log``."""

    def __init__(self, folder: Path, args: Sequence[str], log: Path):
        self.folder, self.log = folder, log
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.resumed = is_run_folder(folder)
        with log.open("a") as handle:
            self.process = subprocess.Popen(train_command(folder, args), cwd=REPO, env=env, stdout=handle,
                                            stderr=subprocess.STDOUT)
        self.started = time.perf_counter()
        self.stopped_at: float | None = None

    def poll(self) -> int | None:
        """The exit status once ended; a run stopped but still going after the grace is killed here."""
        code = self.process.poll()
        if code is None and self.stopped_at is not None and time.perf_counter() - self.stopped_at > STOP_GRACE_S:
            self.process.kill()
            code = self.process.wait()
        return code

    def stop(self) -> None:
        """SIGTERM: the trainer checkpoints at its next step and exits (``poll`` kills it after the grace)."""
        if self.stopped_at is None:
            self.stopped_at = time.perf_counter()
            self.process.send_signal(signal.SIGTERM)

    def summary(self) -> dict[str, Any]:
        """How this call went (status, exit code, wall time), what the folder holds, and a failure's log tail."""
        code = self.process.returncode
        info = progress(self.folder)
        status = "finished" if info["finished"] else "stopped" if self.stopped_at is not None else "failed"
        result = {"status": status, "exit_code": code, "resumed": self.resumed,
                  "wall_seconds": time.perf_counter() - self.started, **info}
        if status == "failed":
            result["log_tail"] = self.log.read_text()[-2000:]
        return result
