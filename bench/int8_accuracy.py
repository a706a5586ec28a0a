"""What int8 costs in accuracy: each shipped CIFAR-10-LT checkpoint exported with ``--int8-calibration`` (300
CIFAR-10 training images), its float32 and int8 ONNX graphs evaluated side by side on the full 10,000-image test set.

    python bench/int8_accuracy.py [--data ../shared/data] [--names gcl_resnet32_cifar10_lt.ir100 ...]

Reports top-1 and many/medium/few of both graphs, the share of test images whose label int8 keeps, and the export's
own check (top-1 agreement on 500 held-out training images). Results: a table on stdout,
``bench/results/int8_accuracy.json`` and ``.log``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from gcl_zoo.data.cifar_lt import CIFARLongTail, long_tail_counts  # noqa: E402
from gcl_zoo.data.preprocessing import Normalize  # noqa: E402
from gcl_zoo.hub import Int8Calibration, export_embedded  # noqa: E402
from gcl_zoo.metrics import accuracy_report  # noqa: E402
from gcl_zoo.models.weights import WEIGHTS_DIR  # noqa: E402
from gcl_zoo.onnx_export import ONNX_NAME, onnx_runner  # noqa: E402
from gcl_zoo.quantize import INT8_CONFIG_KEY, INT8_ONNX_NAME  # noqa: E402
from serve_load import Transcript, add_data_and_out  # noqa: E402

NAMES = ["gcl_resnet32_cifar10_lt.ir100", "gcl_resnet32_cifar10_lt.ir50", "gcl_resnet32_cifar10_lt.ir200"]


def logits_of(path: Path, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    run = onnx_runner(path)
    return torch.cat([torch.from_numpy(run(images[i:i + batch].numpy())) for i in range(0, len(images), batch)])


def evaluate(name: str, archive: Path, test: CIFARLongTail, workdir: Path) -> dict[str, Any]:
    info = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())
    start = time.perf_counter()
    folder = export_embedded(name, workdir / name, int8=Int8Calibration(archive))
    export_s = time.perf_counter() - start
    config = json.loads((folder / "config.json").read_text())
    images = Normalize(config["pretrained_cfg"]["mean"], config["pretrained_cfg"]["std"], torch.device("cpu"))(
        torch.from_numpy(test.data).permute(0, 3, 1, 2))
    targets = torch.tensor(test.targets)
    counts = long_tail_counts(5000, 10, info["imb_ratio"])
    logits = {graph: logits_of(folder / file, images) for graph, file in (("float32", ONNX_NAME),
                                                                           ("int8", INT8_ONNX_NAME))}
    reports = {graph: accuracy_report(values, targets, counts) for graph, values in logits.items()}
    agree = float((logits["float32"].argmax(1) == logits["int8"].argmax(1)).float().mean())
    keep = ("top1", "many", "medium", "few")
    return {"name": name, "export_seconds": export_s, "export_check": config[INT8_CONFIG_KEY],
            "shipped_top1": info["top1"], "test_top1_agreement": agree,
            **{graph: {k: r.get(k) for k in keep} for graph, r in reports.items()}}


def main(argv: list[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--names", nargs="+", default=NAMES, help="shipped checkpoints")
    add_data_and_out(parser)
    args = parser.parse_args(argv)
    archive = args.data / "cifar10" / "cifar10.zip"
    transcript = Transcript()
    info = transcript.machine()
    test = CIFARLongTail(archive, num_classes=10, train=False)
    with tempfile.TemporaryDirectory(prefix="gcl-zoo-int8-") as tmp:
        rows = [evaluate(name, archive, test, Path(tmp)) for name in args.names]
    say = transcript.say
    say(f"full CIFAR-10 test set ({len(test.targets):,} images); int8 calibrated on 300 training images")
    say(f"{'checkpoint':32s} {'f32 top-1':>9} {'int8 top-1':>10} {'labels kept':>11} {'held-out check':>14} "
        f"{'f32 many/med':>13} {'int8 many/med':>13}")
    for r in rows:
        f, q = r["float32"], r["int8"]
        say(f"{r['name']:32s} {f['top1']:9.2f} {q['top1']:10.2f} {r['test_top1_agreement']:11.2%} "
            f"{r['export_check']['top1_agreement_vs_float32']:14.2%} {f['many']:6.2f}/{f['medium']:6.2f} "
            f"{q['many']:6.2f}/{q['medium']:6.2f}")
    transcript.save(args.out, "int8_accuracy", {"machine": info, "test_images": len(test.targets), "checkpoints": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
