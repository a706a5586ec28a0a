"""Ship an int8 graph beside packaged checkpoints, so ``gcl-zoo serve --model NAME --precision int8`` needs no export.

    python bench/ship_int8.py gcl_resnet32_cifar10_lt.ir100 gcl_resnet32_cifar10_lt.ir50 \\
        --data-root ../shared/data/cifar10/cifar10.zip

For each name: the export of ``gcl-zoo export NAME OUT --int8-calibration DATA`` (activation ranges from 300
training images, the labels of 500 more held-out training images checked) into a temporary folder, then its
``model.int8.onnx`` -> ``gcl_zoo/weights/<name>.int8.onnx`` and its ``config.json`` entry -> the ``onnx_int8``
field of ``<name>.json`` (what the graph was calibrated on and how many labels it kept).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gcl_zoo.files import replace_file  # noqa: E402
from gcl_zoo.hub import Int8Calibration, export_embedded  # noqa: E402
from gcl_zoo.models.weights import WEIGHTS_DIR  # noqa: E402
from gcl_zoo.quantize import INT8_CONFIG_KEY, INT8_ONNX_NAME  # noqa: E402


def ship_int8(name: str, calibration: Int8Calibration, weights_dir: Path) -> dict[str, Any]:
    """Quantise the packaged checkpoint ``name`` and put its graph and the graph's record beside its weights."""
    info_path = weights_dir / f"{name}.json"
    info = json.loads(info_path.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_embedded(name, Path(tmp) / name, weights_dir=weights_dir, int8=calibration)
        entry = json.loads((folder / "config.json").read_text())[INT8_CONFIG_KEY]
        staging = weights_dir / f".{name}.int8.onnx.partial"
        shutil.copyfile(folder / INT8_ONNX_NAME, staging)
        replace_file(staging, weights_dir / f"{name}.int8.onnx")
    entry = {**entry, "file": f"{name}.int8.onnx"}
    staging = weights_dir / f".{name}.json.partial"
    staging.write_text(json.dumps({**info, INT8_CONFIG_KEY: entry}, indent=2) + "\n")
    replace_file(staging, info_path)
    return entry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", help="packaged checkpoints, e.g. gcl_resnet32_cifar10_lt.ir100")
    parser.add_argument("--data-root", type=Path, required=True,
                        help="the checkpoints' training data (a folder or .zip; only its train/ images are used)")
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR, help="where shipped weights live")
    parser.add_argument("--images", type=int, default=300, help="calibration images")
    parser.add_argument("--held-out", type=int, default=500, help="held-out images whose labels are checked")
    args = parser.parse_args()
    calibration = Int8Calibration(args.data_root, images=args.images, held_out=args.held_out)
    for name in args.names:
        entry = ship_int8(name, calibration, args.weights_dir)
        print(f"shipped {entry['file']}: {entry['top1_agreement_vs_float32']:.1%} of {entry['held_out_images']} "
              f"held-out labels kept (calibrated on {entry['calibration_images']} images of "
              f"{entry['calibration_source']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
