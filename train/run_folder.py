"""A training run's folder: every file ``gcl-zoo train`` writes there, by name, and the reads and writes of them.

```
RUN/
  recipe.yaml     the resolved recipe (written at the start; --resume reads it)
  run.json        the command, runtime options, device, world size ("started", then "finished")
  metrics.jsonl   one line per epoch (loss, lr, validation and, at a stage's last epoch, test metrics)
  checkpoint.pt   the full training state, rewritten atomically each epoch and at a stop request
  stage1/         the stage-1 model folder (stage 2 starts from it)
  tensorboard/    TensorBoard's event files (with --tensorboard)
  model.safetensors + config.json   the run's model (gcl_zoo.folders writes them)
  eval.json       the final-epoch report
```

A run folder is also a model folder, and ``gcl-zoo export`` reads it: the names the library reads come from
``gcl_zoo.folders`` (``RUN_INFO_NAME``, ``RUN_RECIPE_NAME``, ``EVAL_NAME``), the others are named here.
Benchmarks that start runs as processes name these files without importing torch
(``bench/_train_runs.py``; a test checks they agree).
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gcl_zoo.folders import EVAL_NAME, RUN_INFO_NAME, RUN_RECIPE_NAME

__all__ = ["METRICS_FILE", "CHECKPOINT_FILE", "STAGE1_DIR", "TENSORBOARD_DIR", "RunFolder"]

METRICS_FILE = "metrics.jsonl"
CHECKPOINT_FILE = "checkpoint.pt"
STAGE1_DIR = "stage1"
TENSORBOARD_DIR = "tensorboard"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class RunFolder:
    """The files of one run folder (``path``), by name."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.run_file = self.path / RUN_INFO_NAME
        self.recipe_file = self.path / RUN_RECIPE_NAME
        self.metrics_file = self.path / METRICS_FILE
        self.eval_file = self.path / EVAL_NAME
        self.checkpoint_file = self.path / CHECKPOINT_FILE
        self.stage1_dir = self.path / STAGE1_DIR
        self.tensorboard_dir = self.path / TENSORBOARD_DIR

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def is_run(self) -> bool:
        """Whether a run was started here (its recipe and run.json are written)."""
        return self.run_file.is_file() and self.recipe_file.is_file()

    # ---- run.json and recipe.yaml ----------------------------------------------------------------------------
    def start(self, recipe: dict[str, Any], info: dict[str, Any]) -> None:
        """Write the resolved recipe and run.json (stamped "started")."""
        from .recipes import dump_recipe

        dump_recipe(recipe, self.recipe_file)
        self.write_info({**info, "started": _now()})

    def read_recipe(self) -> dict[str, Any]:
        import yaml

        return yaml.safe_load(self.recipe_file.read_text())

    def read_info(self) -> dict[str, Any]:
        return json.loads(self.run_file.read_text())

    def write_info(self, info: dict[str, Any]) -> None:
        self.run_file.write_text(json.dumps(info, indent=2))

    def finish(self, report: dict[str, Any]) -> None:
        """Write eval.json and stamp run.json "finished"."""
        self.eval_file.write_text(json.dumps(report, indent=2))
        self.write_info({**self.read_info(), "finished": _now()})

    # ---- metrics.jsonl ---------------------------------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.metrics_file.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def rewrite_metrics(self, history: Iterable[dict[str, Any]]) -> None:
        """After a crash, metrics.jsonl holds exactly the epochs the checkpoint holds."""
        self.metrics_file.write_text("".join(json.dumps(r) + "\n" for r in history))
