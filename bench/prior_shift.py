"""Top-1 on test sets whose class mix is shifted, as served traffic is: the model as it is, moved to the known
prior, and moved to a prior estimated from the unlabeled test images (EM), beside TADE's published figures.

    python bench/prior_shift.py --data-dir ../shared/data

The shifted sets follow the test-agnostic long-tailed protocol (LADE, CVPR 2021; SADE/TADE, NeurIPS 2022): class
``i`` of ``C`` keeps ``n * r^(-i/(C-1))`` of its ``n`` test images (its first ones, in file order), in the training
order ("forward-r": the head class is the most frequent) or reversed ("backward-r"); "uniform" is the full test
set. Each shipped checkpoint's calibrated test logits are computed once and every set is a subset of them.
Rows: ``none`` (the calibrated scores as served by default), ``known prior`` (``target_prior`` = the set's class
counts, divided by the implied prior measured on validation), ``known prior, implied assumed uniform`` (the same
without the measured implied prior, for comparison), ``EM-estimated prior`` (Saerens et al. 2002 on the set's
own unlabeled predictions). Writes ``bench/results/prior_shift.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Dict, List, Optional

import timm
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import gcl_zoo  # noqa: E402,F401
from gcl_zoo.data import CIFARLongTail  # noqa: E402
from gcl_zoo.data.preprocessing import eval_transform  # noqa: E402
from gcl_zoo.prior import adjust_logits, check_prior, estimate_prior_em  # noqa: E402
from train.batches import test_batches  # noqa: E402

RESULTS = REPO / "bench" / "results"
SHIFTS = (("forward-50", 50, False), ("forward-10", 10, False), ("uniform", 1, False), ("backward-10", 10, True),
          ("backward-50", 50, True))
# SADE/TADE (ResNet-32, three experts, test-time self-supervised aggregation), NeurIPS 2022, Table 4
TADE = {"gcl_resnet32_cifar100_lt.ir100": {"forward-50": 65.9, "forward-10": 58.3, "uniform": 49.8,
                                           "backward-10": 43.9, "backward-50": 42.4}}
ENTRIES = {"gcl_resnet32_cifar100_lt.ir100": "cifar100/cifar100.zip", "gcl_resnet32_cifar10_lt.ir100": "cifar10/cifar10.zip"}


def shifted_counts(per_class: int, num_classes: int, ratio: float, backward: bool) -> List[int]:
    counts = [int(per_class * ratio ** (-i / (num_classes - 1))) for i in range(num_classes)]
    return counts[::-1] if backward else counts


def subset(targets: torch.Tensor, counts: List[int]) -> torch.Tensor:
    """Indices of the first ``counts[c]`` test images of every class c."""
    return torch.cat([(targets == c).nonzero().flatten()[:n] for c, n in enumerate(counts)])


@torch.no_grad()
def test_logits(model: torch.nn.Module, root: Path, num_classes: int) -> tuple:
    """The model's calibrated logits and the labels of the whole test set (float32, CPU)."""
    cfg = model.pretrained_cfg
    test = CIFARLongTail(root, num_classes, split="test", transform=eval_transform(cfg))
    images, labels = test.as_tensors()
    data_cfg = {k: cfg[k] for k in ("mean", "std", "input_size")}
    logits = torch.cat([model(x) for x, _ in test_batches(images, labels, test, 1000, torch.device("cpu"),
                                                          data_cfg, 0, 0, 1)])
    return logits.float(), labels


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return round(100.0 * float((logits.argmax(dim=1) == labels).float().mean()), 2)


def evaluate_entry(name: str, root: Path) -> Dict[str, Dict[str, Optional[float]]]:
    model = timm.create_model(name, pretrained=True).eval()
    logits, labels = test_logits(model, root, model.num_classes)
    implied = model.implied_prior.double()
    per_class = int((labels == 0).sum())
    table: Dict[str, Dict[str, Optional[float]]] = {}
    for shift, ratio, backward in SHIFTS:
        counts = shifted_counts(per_class, model.num_classes, ratio, backward)
        pick = subset(labels, counts)
        rows, targets = logits[pick], labels[pick]
        known = check_prior(counts, model.num_classes)
        estimated = estimate_prior_em(rows.softmax(dim=1), implied)
        table[shift] = {
            "images": int(pick.numel()),
            "none": top1(rows, targets),
            "known prior": top1(adjust_logits(rows, known, implied), targets),
            "known prior, implied assumed uniform": top1(adjust_logits(rows, known, None), targets),
            "EM-estimated prior": top1(adjust_logits(rows, estimated, implied), targets),
            "TADE (paper)": TADE.get(name, {}).get(shift),
        }
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=RESULTS / "prior_shift.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for name, archive in ENTRIES.items():
        table = evaluate_entry(name, args.data_dir / archive)
        results[name] = table
        print(f"\n{name}: top-1 (%) on shifted test sets")
        methods = [m for m in next(iter(table.values())) if m != "images"]
        print(f"{'method':40}" + "".join(f"{s:>13}" for s, _, _ in SHIFTS))
        for method in methods:
            cells = [table[s][method] for s, _, _ in SHIFTS]
            print(f"{method:40}" + "".join(f"{'n/a' if c is None else f'{c:.2f}':>13}" for c in cells))
    record = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "protocol": "class i keeps n * r^(-i/(C-1)) test images (forward: training order; backward: reversed)",
              "results": results}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
