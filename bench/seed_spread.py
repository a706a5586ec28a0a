"""Seed spread of the shipped ratio-100 recipes: final-epoch top-1 of the shipped checkpoint (seed 0) and of the
extra seeds in ``bench/results/seeds/``, with mean and sample standard deviation.

Writes ``bench/results/seeds/spread.json``, adds the spread to each shipped entry's JSON (``seeds``) and regenerates
the model cards, which state it.

    python bench/seed_spread.py
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gcl_zoo.export import write_shipped_cards  # noqa: E402
from gcl_zoo.models.weights import WEIGHTS_DIR  # noqa: E402
from train.run_folder import RunFolder  # noqa: E402

SEEDS_DIR = Path(__file__).resolve().parent / "results" / "seeds"
# shipped entry -> the prefix of its extra seeds' record folders (``<prefix>_seed<N>``)
ENTRIES = {"gcl_resnet32_cifar10_lt.ir100": "c10_gcl_ir100", "gcl_resnet32_cifar100_lt.ir100": "c100_gcl_ir100"}
SHIPPED_SEED = 0


def final_top1(record: Path) -> float:
    """The test top-1 of a record's last line (the run's final epoch)."""
    last = json.loads(RunFolder(record).metrics_file.read_text().splitlines()[-1])
    return float(last["top1"])


def spread(name: str, prefix: str) -> dict[str, Any]:
    shipped = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())
    seeds: list[int] = [SHIPPED_SEED]
    top1: list[float] = [round(float(shipped["top1"]), 2)]
    for record in sorted(SEEDS_DIR.glob(f"{prefix}_seed*"), key=lambda p: int(p.name.rsplit("seed", 1)[1])):
        run = RunFolder(record).read_info()
        seeds.append(int(run["options"]["seed"]))
        top1.append(round(final_top1(record), 2))
    if len(top1) < 2:
        raise SystemExit(f"{name}: no extra seed under {SEEDS_DIR} ({prefix}_seed<N>)")
    return {"seeds": seeds, "shipped_seed": SHIPPED_SEED, "top1": top1,
            "mean": round(statistics.fmean(top1), 2), "std": round(statistics.stdev(top1), 2)}


def main() -> int:
    results = {name: spread(name, prefix) for name, prefix in ENTRIES.items()}
    (SEEDS_DIR / "spread.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'entry':34} {'seeds':>9} {'top-1 per seed':>24} {'mean +- std':>14}")
    for name, row in results.items():
        per_seed = " / ".join(f"{t:.2f}" for t in row["top1"])
        print(f"{name:34} {','.join(map(str, row['seeds'])):>9} {per_seed:>24} {row['mean']:8.2f} +- {row['std']:.2f}")
        record = WEIGHTS_DIR / f"{name}.json"
        info = json.loads(record.read_text())
        info["seeds"] = row
        record.write_text(json.dumps(info, indent=2) + "\n")
    cards = write_shipped_cards(REPO / "model_cards", WEIGHTS_DIR)
    print(f"{len(cards)} cards regenerated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
