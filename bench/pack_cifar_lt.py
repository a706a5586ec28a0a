"""Pack the CIFAR-10-LT training images of one imbalance ratio (and every smaller-tail ratio above it), its validation
images and the test set into a small zip that ``CIFARLongTail`` reads like the full archive, for machines the full data cannot reach.

The long-tailed subsets are nested (each class keeps the first n of one seeded shuffle), so the ratio-50 pack also
serves ratios 100 and 200 (their validation images, the last 500 of each class's same order, are the same). Files are copied byte for byte; ``class_sizes.json`` records the full class sizes so the
seeded selection picks the same images.

    python bench/pack_cifar_lt.py ../shared/data/cifar10/cifar10.zip .gpu/cifar10_lt50.zip --imb-ratio 50
"""
from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gcl_zoo.data.cifar_lt import (  # noqa: E402
    SUBSET_MANIFEST,
    VAL_PER_CLASS,
    long_tail_counts,
    long_tail_positions,
    validation_positions,
)
from gcl_zoo.data.labels import CIFAR10_CLASSES  # noqa: E402


def pack(source: Path, target: Path, imb_ratio: float, seed: int = 0) -> int:
    with zipfile.ZipFile(source) as archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]
        sizes = {split: [sum(n.startswith(f"{split}/{c}/") for n in names) for c in CIFAR10_CLASSES]
                 for split in ("train", "test")}
        counts = long_tail_counts(max(sizes["train"]), 10, imb_ratio)
        keep = long_tail_positions(sizes["train"], counts, seed)
        held_out = validation_positions(sizes["train"], counts, seed, VAL_PER_CLASS[10])
        wanted = {f"train/{c}/{int(p):05d}" for positions in (keep, held_out)
                  for c, chosen in zip(CIFAR10_CLASSES, positions) for p in chosen}
        target.parent.mkdir(parents=True, exist_ok=True)
        count = 0
        with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as out:
            out.writestr(SUBSET_MANIFEST, json.dumps(sizes))
            for name in names:
                if name.startswith("test/") or name.rsplit(".", 1)[0] in wanted:
                    out.writestr(name, archive.read(name))
                    count += 1
    return count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--imb-ratio", type=float, default=50)
    args = parser.parse_args()
    count = pack(args.source, args.target, args.imb_ratio)
    print(f"wrote {count} images to {args.target} ({args.target.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
