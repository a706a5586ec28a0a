"""Models compared on one validation split, image by image: is a change better than chance would make it?

Two models' validation top-1 on ~2,000 images each move about a point by chance, but on the *same* images their
errors are paired: only the images one gets right and the other wrong (the discordant pairs) carry the difference.
This prints and records, for every model against the first (the base): validation top-1 and many / medium / few,
the difference with a paired bootstrap 95% interval, the discordant counts and the exact McNemar p-value. The test
set is never read.

    python bench/paired_val.py --recipe-from runs/c100_noise1_seed2 \
        --model "noise 0.5, seed 0 (shipped)=gcl_resnet32_cifar100_lt.ir100" \
        --model "noise 1.0, seed 2=runs/c100_noise1_seed2" --out bench/results/stage1_noise/paired_val.json

A model is a run or model folder (``model.safetensors`` + ``config.json``, stage-1 folders too) or a zoo name; the
validation split is the recipe's of the run named by ``--recipe-from``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import timm
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from timm.data import resolve_model_data_config  # noqa: E402

import gcl_zoo  # noqa: E402,F401
from gcl_zoo.metrics import accuracy_report, mcnemar_p, paired_bootstrap  # noqa: E402
from train.calibrate import folder_recipe, load_folder_model  # noqa: E402
from train.data import build_data  # noqa: E402
from train.predict import predict  # noqa: E402


def load_model(spec: str) -> torch.nn.Module:
    """A folder's model, or a zoo entry's shipped weights."""
    path = Path(spec)
    if path.is_dir():
        return load_folder_model(path)
    if spec not in timm.list_models(pretrained=True):
        raise ValueError(f"--model {spec!r} is neither a folder nor a zoo name with weights; give a run or model "
                         "folder, or one of timm.list_pretrained('gcl_*')")
    return timm.create_model(spec, pretrained=True)


def compare(models: list[tuple[str, str, torch.nn.Module]], recipe: dict[str, Any], draws: int,
            seed: int) -> dict[str, Any]:
    rows, correct, bundle = [], [], None
    for name, spec, model in models:
        model.eval()
        bundle = bundle or build_data(recipe, resolve_model_data_config(model))  # one split, read once, for every model
        out = predict(model, bundle, torch.device("cpu"), split="val")
        report = accuracy_report(out["logits"], out["targets"], bundle.cls_num_list, topk=(1,))
        correct.append(out["logits"].argmax(dim=1) == out["targets"])
        rows.append({"name": name, "model": spec, "val_images": report["num_samples"],
                     **{k: report[k] for k in ("top1", "many", "medium", "few")}})
    base = correct[0]
    for row, right in zip(rows[1:], correct[1:]):
        base_only, new_only = int((base & ~right).sum()), int((~base & right).sum())
        low, high = paired_bootstrap(base, right, draws, seed)
        row["against_base"] = {"top1_difference": row["top1"] - rows[0]["top1"], "bootstrap_95": [low, high],
                               "base_right_only": base_only, "this_right_only": new_only,
                               "mcnemar_p": mcnemar_p(base_only, new_only)}
    return {"split": "val", "test_set_read": False, "imb_ratio": recipe["imb_ratio"], "dataset": recipe["dataset"],
            "base": rows[0]["name"], "bootstrap_draws": draws, "models": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe-from", type=Path, required=True, help="run folder whose recipe gives the split")
    parser.add_argument("--data-root", help="the data set, if not where the run found it")
    parser.add_argument("--model", action="append", required=True, metavar="NAME=FOLDER_OR_ZOO_NAME",
                        help="a model to compare; the first is the base")
    parser.add_argument("--draws", type=int, default=10000, help="bootstrap draws")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="JSON to write")
    args = parser.parse_args()
    models = []
    for item in args.model:
        name, sep, spec = item.rpartition("=")
        if not sep or not name:
            parser.error(f"--model {item!r}: write it as NAME=FOLDER_OR_ZOO_NAME")
        models.append((name, spec))
    if len(models) < 2:
        parser.error("give at least two --model: the base first, then the models compared with it")
    try:  # every model and the recipe before any data is read
        loaded = [(name, spec, load_model(spec)) for name, spec in models]
        recipe = folder_recipe(args.recipe_from, args.data_root, workers=0)
    except (FileNotFoundError, ValueError) as exc:  # a missing folder, an unfinished run, an unknown name
        parser.error(str(exc))
    result = compare(loaded, recipe, args.draws, args.seed)
    print(f"{'model':40s} {'val top-1':>9s} {'many':>6s} {'medium':>6s} {'few':>6s}  against the base")
    for row in result["models"]:
        groups = " ".join("   n/a" if row[key] is None else f"{row[key]:6.2f}" for key in ("many", "medium", "few"))
        line = f"{row['name']:40s} {row['top1']:9.2f} {groups}"
        if "against_base" in row:
            a = row["against_base"]
            line += (f"  {a['top1_difference']:+.2f} [{a['bootstrap_95'][0]:+.2f}, {a['bootstrap_95'][1]:+.2f}] "
                     f"right only: base {a['base_right_only']}, this {a['this_right_only']}, "
                     f"McNemar p {a['mcnemar_p']:.3g}")
        print(line)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
