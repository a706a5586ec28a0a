"""Checks on a user-given validation split: it must share no image with the training or test images (by path or
by content), and a split too small for the calibration to mean much is said so at the start of training.

A validation image that is also a training image makes the calibration fit scores the model was trained on (it
looks over-confident on them); one that is also a test image means the test set is read for a choice, and the
recorded accuracy is no longer a held-out figure.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tqdm import tqdm

from gcl_zoo.calibration import validation_warning

__all__ = ["SharedImagesError", "refuse_shared_images", "validation_sizes"]


class SharedImagesError(ValueError):
    """The validation split shares images with the training or test split."""


def _locations(part: Any) -> dict[str, str]:
    """Each image's full location (its source's root and relative path, resolved) -> its relative path."""
    root = part.source.root.resolve()
    return {(f"{root}:{rel}" if part.source.is_zip else os.path.normpath(root / rel)): rel for rel, _ in part.samples}


def _hashes(part: Any, what: str, progress: bool) -> dict[str, str]:
    """sha256 of each image's bytes -> its relative path (read in threads, with a progress bar)."""
    paths = [rel for rel, _ in part.samples]
    with ThreadPoolExecutor(8) as pool:
        digests = list(tqdm(pool.map(lambda rel: hashlib.sha256(part.source.read_bytes(rel)).hexdigest(), paths),
                            total=len(paths), desc=f"hashing {what} images", unit="img", disable=not progress,
                            leave=False))
    return dict(zip(digests, paths))


def _named(part: Any, rels: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(part.source.describe(rel) for rel in list(rels)[:limit])
    return shown + (f" and {len(rels) - limit} more" if len(rels) > limit else "")


def refuse_shared_images(val: Any, others: dict[str, Any], given_as: str, by_content: bool = True,
                         progress: bool = True) -> None:
    """Raise ``SharedImagesError`` naming the first shared files when ``val`` (given as ``given_as``) holds an
    image of any of ``others`` ({"training": train, "test": test}): by path, and with ``by_content`` by the
    sha256 of the files' bytes too (every image read once)."""
    val_places = _locations(val)
    for name, part in others.items():  # paths first: cheap, and the plainer mistake
        places = _locations(part)
        same_path = sorted(rel for place, rel in val_places.items() if place in places)
        if same_path:
            raise SharedImagesError(
                f"the validation split ({given_as}) and the {name} split share {len(same_path)} image file(s): "
                f"{_named(val, same_path)}; give validation images that are neither trained on nor tested on, or "
                "leave --val-dir/--val-list out and a split is carved from the training images")
    if not by_content:
        return
    val_hashes = _hashes(val, "validation", progress)
    for name, part in others.items():
        shared = sorted(val_hashes[h] for h in set(val_hashes) & set(_hashes(part, name, progress)))
        if shared:
            raise SharedImagesError(
                f"the validation split ({given_as}) holds {len(shared)} image(s) whose content is also in the "
                f"{name} split: {_named(val, shared)}; remove the copies, or leave --val-dir/--val-list out and a "
                "split is carved from the training images")


def validation_sizes(per_class: list[int], classes: Sequence[str]) -> tuple[str, str | None]:
    """What is said at the start of training: the validation split's size per class, and a warning (None when it
    is big enough) when it is too small for the calibration to mean much."""
    if len(per_class) <= 20:
        spread = ", ".join(f"{name} {n}" for name, n in zip(classes, per_class))
    else:
        ordered = sorted(per_class)
        spread = (f"min {ordered[0]}, median {ordered[len(ordered) // 2]}, max {ordered[-1]}, "
                  f"{sum(n == 0 for n in per_class)} class(es) with none")
    return f"validation split: {sum(per_class)} images ({spread})", validation_warning(per_class)
