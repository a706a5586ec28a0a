"""Data for a recipe: the long-tailed training set, a validation set disjoint from it and from the test set, the
balanced test set, and their preprocessing.

Validation images come from the data set's published validation list (ImageNet-LT, Places-LT), a recipe's
``val_list`` / ``val_dir``, the training images CIFAR-LT leaves unused, or else a seeded, stratified carve from the
training images (``val_fraction``, ``val_min_train``, ``val_seed``).

The data set decides the preprocessing it is trained with (CIFAR: 32 px and the recipe's CIFAR statistics;
everything else: the backbone's own ``pretrained_cfg`` at ``img_size``); the trainer writes it into the model's
``pretrained_cfg`` so evaluation and serving preprocess exactly as training did.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timm.data import create_transform
from torch.utils.data import Dataset
from torchvision import transforms as T

from gcl_zoo.data import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    CIFAR_DATA_CFG,
    CIFARLongTail,
    ImageFolderLT,
    ListFileDataset,
    stratified_holdout,
)
from gcl_zoo.data.preprocessing import eval_transform

from .validation import refuse_shared_images

log = logging.getLogger(__name__)

STANDARD_LISTS = {  # the published split lists, under $GCL_ZOO_DATA/lt_splits
    "imagenet_lt": {"train": "ImageNet_LT_train.txt", "val": "ImageNet_LT_val.txt", "test": "ImageNet_LT_test.txt"},
    "places_lt": {"train": "Places_LT_train.txt", "val": "Places_LT_val.txt", "test": "Places_LT_test.txt"},
    # iNaturalist 2018's only published validation list is its test set, as in the literature: validation is carved
    "inat18": {"train": "iNaturalist18_train.txt", "test": "iNaturalist18_val.txt"},
}
NUM_CLASSES = {"cifar10_lt": 10, "cifar100_lt": 100, "imagenet_lt": 1000, "places_lt": 365, "inat18": 8142}


def data_home() -> Path | None:
    """``$GCL_ZOO_DATA``: where default data roots and split lists are looked up."""
    value = os.environ.get("GCL_ZOO_DATA")
    return Path(value) if value else None


def _default_path(recipe_field: str, relative: str) -> Path:
    home = data_home()
    if home is None:
        raise FileNotFoundError(
            f"recipe field {recipe_field!r} is not set and GCL_ZOO_DATA is not set; pass --{recipe_field.replace('_', '-')} "
            f"PATH or export GCL_ZOO_DATA=<folder holding {relative}>")
    return home / relative


def is_small_image_data(recipe: dict[str, Any]) -> bool:
    """CIFAR-size data: decoded once, it fits on the training device."""
    return recipe["dataset"] in ("cifar10_lt", "cifar100_lt")


@dataclass
class DataBundle:
    """A recipe's three splits: ``train`` trains, ``val`` chooses, tunes and calibrates, ``test`` is read for the
    record; ``cls_num_list`` counts training images, ``val_source`` says where the validation images came from."""
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    classes: tuple[str, ...]
    cls_num_list: list
    data_cfg: dict[str, Any]
    val_source: str

    def validation_summary(self) -> dict[str, Any]:
        """What run.json states about the validation split: its source and how its images spread over classes."""
        counts = list(self.val.cls_num_list)
        return {"source": self.val_source, "images": sum(counts), "classes_with_none": sum(n == 0 for n in counts),
                "per_class_min": min(counts), "per_class_max": max(counts)}


def large_data_cfg(recipe: dict[str, Any], data_cfg: dict[str, Any]) -> dict[str, Any]:
    """A model's evaluation data config (``timm.data.resolve_model_data_config``, or the backbone's from
    ``train.parts.backbone_data_config``) at the recipe's ``img_size``."""
    return {**data_cfg, "input_size": (3, recipe["img_size"], recipe["img_size"])}


def train_transform(recipe: dict[str, Any], data_cfg: dict[str, Any]):
    """The authors' augmentation: CIFAR pad-4 crop + flip; large images: random-resized crop + flip (timm)."""
    if is_small_image_data(recipe):
        return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                          T.Normalize(data_cfg["mean"], data_cfg["std"])])
    return create_transform(data_cfg["input_size"], is_training=True, interpolation=data_cfg["interpolation"],
                            mean=data_cfg["mean"], std=data_cfg["std"], hflip=0.5, color_jitter=None)


def _cifar_root(recipe: dict[str, Any]) -> Path:
    if recipe["data_root"]:
        return Path(recipe["data_root"])
    relative = "cifar10/cifar10.zip" if recipe["dataset"] == "cifar10_lt" else "cifar100/cifar100.zip"
    return _default_path("data_root", relative)


def screen_images(train: Any, held_out: dict[str, Any], policy: str, workers: int) -> None:
    """Read every image once before training (``bad_images``: ``fail`` lists every unreadable file and stops;
    ``skip`` leaves bad training images out and says how many; ``unchecked`` reads nothing ahead).
    ``held_out`` (validation and test sets by name) is never thinned: models are chosen and calibrated on all of the
    validation set and reported on all of the test set, so a bad image there always stops the run."""
    if policy == "unchecked":
        return
    workers = max(workers, 4)
    bad_train = train.unreadable_images(workers=workers)
    bad_held = {name: part.unreadable_images(workers=workers) for name, part in held_out.items()}
    held_count = sum(len(bad) for bad in bad_held.values())
    if held_count or (bad_train and policy == "fail"):
        listed = [f"  {train.source.describe(p)}: {why}" for p, why in bad_train] + \
                 [f"  {held_out[name].source.describe(p)}: {why}" for name, bad in bad_held.items() for p, why in bad]
        counts = ", ".join([f"{len(bad_train)} training"] + [f"{len(bad)} {name}" for name, bad in bad_held.items()])
        fix = "replace or remove them" + ("" if held_count else ", or pass --bad-images skip to train without them")
        raise ValueError(f"{len(listed)} unreadable image(s) ({counts}); "
                         f"{fix}:\n" + "\n".join(listed[:50]) + ("\n  ..." if len(listed) > 50 else ""))
    if bad_train:
        train.drop([p for p, _ in bad_train])
        log.warning(f"skipped {len(bad_train)} unreadable training image(s) (--bad-images skip): "
                    + ", ".join(train.source.describe(p) for p, _ in bad_train[:5])
                    + (" ..." if len(bad_train) > 5 else ""))


def carve_validation(train: Any, recipe: dict[str, Any], transform) -> tuple[Any, Any, str]:
    """Split a seeded, stratified validation share off the training images: (training rest, validation, source)."""
    fraction, floor, seed = recipe["val_fraction"], recipe["val_min_train"], recipe["val_seed"]
    held = stratified_holdout(train.targets, train.num_classes, fraction, floor, seed)
    chosen = set(held)
    rest = [i for i in range(len(train)) if i not in chosen]
    source = (f"carved from the training images: round({fraction:g} x n) of each class's n (val_seed {seed}), "
              f"leaving every class at least {floor} training images (smaller classes give none)")
    return train.subset(rest, train.transform), train.subset(held, transform), source


def _cifar_data(recipe: dict[str, Any]) -> DataBundle:
    """CIFAR-LT: validation from the training images the long-tailed subset leaves unused."""
    num_classes = NUM_CLASSES[recipe["dataset"]]
    root = _cifar_root(recipe)
    data_cfg = dict(CIFAR_DATA_CFG)
    subset = {"imb_ratio": recipe["imb_ratio"], "profile": recipe["imb_profile"], "seed": recipe["imb_seed"],
              "max_per_class": recipe["max_per_class"]}
    train = CIFARLongTail(root, num_classes, split="train", transform=train_transform(recipe, data_cfg), **subset)
    val = CIFARLongTail(root, num_classes, split="val", transform=eval_transform(data_cfg),
                        val_per_class=recipe["val_per_class"], **subset)
    test = CIFARLongTail(root, num_classes, split="test", transform=eval_transform(data_cfg),
                         max_per_class=recipe["test_per_class"])
    classes = CIFAR10_CLASSES if num_classes == 10 else CIFAR100_CLASSES
    source = (f"training images the long-tailed subset leaves unused: the last {val.val_per_class} of each class's "
              f"seeded order (imb_seed {recipe['imb_seed']}), all of them where fewer are unused")
    return DataBundle(train, val, test, num_classes, classes, train.cls_num_list, data_cfg, source)


def _folder_splits(recipe: dict[str, Any], data_cfg: dict[str, Any]) -> list[ImageFolderLT | None]:
    """ImageFolders: training, validation (``val_dir``; None: to be carved) and test."""
    if not recipe["train_dir"] or not recipe["test_dir"]:
        raise FileNotFoundError("dataset 'imagefolder' needs --train-dir and --test-dir (folders or .zip files)")
    train = ImageFolderLT(recipe["train_dir"], transform=train_transform(recipe, data_cfg))
    val = ImageFolderLT(recipe["val_dir"], transform=eval_transform(data_cfg)) if recipe["val_dir"] else None
    test = ImageFolderLT(recipe["test_dir"], transform=eval_transform(data_cfg))
    for name, part, field in (("validation", val, "val_dir"), ("test", test, "test_dir")):
        if part is not None and part.classes != train.classes:
            raise ValueError(f"{name} classes differ from training classes in {recipe[field]}; "
                             "every folder needs the same class sub-folders")
    return [train, val, test]


def _list_path(recipe: dict[str, Any], split: str) -> Path | None:
    """The recipe's ``<split>_list``, else the data set's published one (None: neither)."""
    field = f"{split}_list"
    if recipe[field]:
        return Path(recipe[field])
    name = STANDARD_LISTS.get(recipe["dataset"], {}).get(split)
    return _default_path(field, f"lt_splits/{name}") if name else None


def _list_splits(recipe: dict[str, Any], data_cfg: dict[str, Any]) -> list[ListFileDataset | None]:
    """List files: training, validation (None: to be carved) and test."""
    kind = recipe["dataset"]
    train_list, val_list, test_list = (_list_path(recipe, split) for split in ("train", "val", "test"))
    if train_list is None or test_list is None:
        raise FileNotFoundError("dataset 'listfile' needs --train-list and --test-list ('path label' files)")
    if not recipe["data_root"]:
        raise FileNotFoundError(f"dataset {kind!r} needs --data-root: the folder (or .zip) the list paths are "
                                "relative to")
    num_classes = recipe["num_classes"] or NUM_CLASSES.get(kind)
    train = ListFileDataset(recipe["data_root"], train_list, transform=train_transform(recipe, data_cfg),
                            num_classes=num_classes)
    held_out = [None if path is None else
                ListFileDataset(recipe["data_root"], path, transform=eval_transform(data_cfg),
                                num_classes=train.num_classes, classes=train.classes) for path in (val_list, test_list)]
    return [train, *held_out]


def build_data(recipe: dict[str, Any], data_cfg: dict[str, Any] | None = None) -> DataBundle:
    """Training, validation and test sets for a recipe, with transforms set for the DataLoader path. Images other
    than CIFAR's are preprocessed as ``data_cfg`` says: the model's evaluation data config (a trained model's, or
    the recipe's backbone's), which they need; CIFAR's preprocessing is its own."""
    if is_small_image_data(recipe):
        return _cifar_data(recipe)
    if data_cfg is None:
        raise ValueError(f"the {recipe['dataset']} data needs the model's data config to be preprocessed; pass "
                         "timm.data.resolve_model_data_config(model) or train.parts.backbone_data_config(recipe)")
    data_cfg = large_data_cfg(recipe, data_cfg)
    splits = _folder_splits if recipe["dataset"] == "imagefolder" else _list_splits
    train, val, test = splits(recipe, data_cfg)
    held_out = {"validation": val, "test": test} if val is not None else {"test": test}
    screen_images(train, held_out, recipe["bad_images"], recipe["workers"])
    if val is None:
        train, val, source = carve_validation(train, recipe, eval_transform(data_cfg))
    else:
        source = f"list file {val.list_file}" if isinstance(val, ListFileDataset) else f"folder {recipe['val_dir']}"
        # a published list is checked by path; a user's own split by content too, unless nothing may be read ahead
        user_given = bool(recipe["val_dir"] or recipe["val_list"])
        refuse_shared_images(val, {"training": train, "test": test}, source,
                             by_content=user_given and recipe["bad_images"] != "unchecked", progress=recipe["workers"] > 0)
    if min(train.cls_num_list) == 0:
        empty = [c for c, n in enumerate(train.cls_num_list) if n == 0][:5]
        raise ValueError(f"classes {empty} have no training images; every class needs at least one")
    return DataBundle(train, val, test, train.num_classes, train.classes, train.cls_num_list, data_cfg, source)
