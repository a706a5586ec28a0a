"""``gcl-zoo eval RUN``: evaluate a run's final model on its test set, write ``eval.json`` and plots.

Plots (PNG): per-class test accuracy against the class's training-set size (the long-tail picture), a
reliability diagram of the scores before and after calibration (with ECE over 15 bins and NLL, also in
eval.json), and a t-SNE of the test-set embeddings coloured by class (the paper's Figures 1 and 3: the embedding
space GCL enlarges for tail classes).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import torch
from timm.data import resolve_model_data_config

import gcl_zoo  # noqa: F401  (registers the architectures)
from gcl_zoo.calibration import calibration_report, reliability_bins
from gcl_zoo.devices import resolve_device
from gcl_zoo.folders import CONFIG_NAME, EVAL_NAME, WEIGHTS_NAME, read_json
from gcl_zoo.metrics import FEW_SHOT_MAX, MANY_SHOT_MIN, accuracy_report
from gcl_zoo.models.gcl import calibrated_logits, score_scale

from .calibrate import folder_recipe, load_folder_model
from .data import DataBundle, build_data
from .predict import predict
from .recipes import RecipeError


def plot_per_class(report: dict[str, Any], cls_num_list: list[int], classes, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = [a if a is not None else float("nan") for a in report["per_class"]]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    ax.scatter(cls_num_list, acc, s=18 if len(acc) > 50 else 36, alpha=0.8)
    ax.set_xscale("log")
    ax.axvline(MANY_SHOT_MIN, color="grey", ls="--", lw=0.8)
    ax.axvline(FEW_SHOT_MAX, color="grey", ls="--", lw=0.8)
    if len(acc) <= 20:
        for n, a, name in zip(cls_num_list, acc, classes):
            ax.annotate(str(name), (n, a), fontsize=7, xytext=(3, 3), textcoords="offset points")
    groups = ", ".join(f"{g} {report[g]:.1f}" for g in ("many", "medium", "few") if report.get(g) is not None)
    ax.set(xlabel="training images in the class (log scale)", ylabel="test accuracy (%)", ylim=(-3, 103),
           title=f"Per-class accuracy: top-1 {report['top1']:.2f}%  ({groups})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_tsne(embeddings: torch.Tensor, targets: torch.Tensor, cls_num_list: list[int], classes, path: Path,
              samples: int, seed: int = 0) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(targets), generator=generator)[:samples]
    feats = torch.nn.functional.normalize(embeddings[keep].float(), dim=1).numpy()  # the cosine head's geometry
    labels = targets[keep].numpy()
    points = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30, max(5, len(keep) // 50))
                  ).fit_transform(feats)
    fig, ax = plt.subplots(figsize=(6.5, 6), dpi=120)
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "viridis")
    order = sorted(range(len(classes)), key=lambda c: -cls_num_list[c])  # head classes first in the legend
    for rank, c in enumerate(order):
        mask = labels == c
        if mask.any():
            color = cmap(rank % 10) if len(classes) <= 10 else cmap(rank / max(len(classes) - 1, 1))
            ax.scatter(points[mask, 0], points[mask, 1], s=4, color=color,
                       label=f"{classes[c]} ({cls_num_list[c]})" if len(classes) <= 20 else None)
    if len(classes) <= 20:
        ax.legend(markerscale=3, fontsize=7, title="class (training images)", title_fontsize=7, loc="best")
    ax.set(title=f"t-SNE of {len(keep)} test embeddings (normalised features)", xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def test_calibration(model: torch.nn.Module, raw: torch.Tensor, targets: torch.Tensor,
                     config: dict[str, Any]) -> dict[str, Any]:
    """ECE, NLL and reliability bins on the test set with the scale training ended with (``before``) and with the
    model's calibration (``after``: scale, class scales and biases; the same when the model was never
    calibrated)."""
    after = score_scale(model)
    before = (config.get("calibration") or {}).get("logit_scale_before", after)
    scored = {"before": (before, before * raw.float()), "after": (after, calibrated_logits(model, raw))}
    return {name: {"logit_scale": scale, **calibration_report(logits, targets),
                   "bins": reliability_bins(logits, targets)} for name, (scale, logits) in scored.items()}


def plot_reliability(calibration: dict[str, Any], path: Path) -> None:
    """Reliability diagram: accuracy against confidence per bin, before and after calibration (the diagonal is a
    calibrated model)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(calibration), figsize=(4.2 * len(calibration), 4.2), dpi=120, squeeze=False)
    for ax, (name, result) in zip(axes[0], calibration.items()):
        rows = [b for b in result["bins"] if b["count"]]
        width = rows[0]["upper"] - rows[0]["lower"] if rows else 1.0
        ax.bar([b["lower"] for b in rows], [b["accuracy"] for b in rows], width=width, align="edge",
               edgecolor="black", alpha=0.7, label="accuracy")
        ax.plot([b["confidence"] for b in rows], [b["accuracy"] for b in rows], "o", color="crimson", ms=3,
                label="mean confidence")
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-1 score)", ylabel="accuracy",
               title=f"{name}: scale {result['logit_scale']:.3g}, ECE {result['ece']:.2f}%, NLL {result['nll']:.3f}")
        ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def evaluate_run(run: Path, data_root: str | None = None, device: str = "auto", tsne_samples: int = 2000,
                 workers: int = 2) -> dict[str, Any]:
    """Evaluate ``run``'s final model on the test set; write eval.json, per_class_accuracy.png, reliability.png and
    tsne.png into it."""
    recipe = folder_recipe(run, data_root, workers)
    model = load_folder_model(run)
    dev = resolve_device(device)
    model.to(dev)
    bundle: DataBundle = build_data(recipe, resolve_model_data_config(model))
    out = predict(model, bundle, dev, workers=workers, with_embeddings=tsne_samples > 0)
    # the answers are the calibrated logits: per-class biases can move the top-1 label
    report = accuracy_report(calibrated_logits(model, out["logits"]), out["targets"], bundle.cls_num_list,
                             with_confusion=True)
    report.update({"dataset": recipe["dataset"], "split": "test", "final_epoch": True, "checkpoint": WEIGHTS_NAME,
                   "classes": list(bundle.classes), "train_cls_num_list": list(bundle.cls_num_list),
                   "calibration": test_calibration(model, out["logits"], out["targets"],
                                                   read_json(run / CONFIG_NAME))})
    (run / EVAL_NAME).write_text(json.dumps(report, indent=2))
    plot_per_class(report, bundle.cls_num_list, bundle.classes, run / "per_class_accuracy.png")
    plot_reliability(report["calibration"], run / "reliability.png")
    if tsne_samples > 0:
        plot_tsne(out["embeddings"], out["targets"], bundle.cls_num_list, bundle.classes, run / "tsne.png",
                  min(tsne_samples, len(out["targets"])))
    return report


def main(argv: list[str] | None = None, command: str = "eval") -> int:
    parser = argparse.ArgumentParser(prog="gcl-zoo eval", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="training run folder")
    parser.add_argument("--data-root", help="evaluate on data at this root instead of the recipe's")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tsne-samples", type=int, default=2000, help="test images in the t-SNE plot (0: no t-SNE)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    missing = [name for name in ("matplotlib", *(("sklearn",) if args.tsne_samples > 0 else ()))
               if importlib.util.find_spec(name) is None]
    if missing:  # said before a minute of evaluation, not after
        print(f"gcl-zoo eval: the plots need {', '.join(missing)}: pip install 'gcl-zoo[report]'"
              + (" (or --tsne-samples 0 to skip the t-SNE plot)" if missing == ["sklearn"] else ""), file=sys.stderr)
        return 2
    try:
        report = evaluate_run(args.run, args.data_root, args.device, args.tsne_samples, args.workers)
    except (FileNotFoundError, RecipeError, ValueError, RuntimeError) as exc:
        print(f"gcl-zoo eval: error: {exc}", file=sys.stderr)
        return 2
    groups = ", ".join(f"{k} {report[k]:.2f}" for k in ("top1", "top5", "many", "medium", "few")
                       if report.get(k) is not None)
    scores = report["calibration"]
    print(f"{args.run}: {groups}; ECE {scores['before']['ece']:.2f}% -> {scores['after']['ece']:.2f}% (NLL "
          f"{scores['before']['nll']:.3f} -> {scores['after']['nll']:.3f}); wrote eval.json, "
          "per_class_accuracy.png, reliability.png" + (", tsne.png" if args.tsne_samples > 0 else ""))
    return 0
