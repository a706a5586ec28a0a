"""Data for a recipe: the long-tailed training set, the balanced test set, and their preprocessing.

The data set decides the preprocessing it is trained with (CIFAR: 32 px and the recipe's CIFAR statistics;
everything else: the backbone's own ``pretrained_cfg`` at ``img_size``); the trainer writes it into the model's
``pretrained_cfg`` so evaluation and serving preprocess exactly as training did.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from timm.data import create_transform, resolve_model_data_config
from torch.utils.data import Dataset
from torchvision import transforms as T

from gcl_zoo.data import CIFAR10_CLASSES, CIFAR100_CLASSES, CIFAR_MEAN_STD, CIFARLongTail, ImageFolderLT, ListFileDataset
from gcl_zoo.data.preprocessing import eval_transform

STANDARD_LISTS = {
    "imagenet_lt": ("ImageNet_LT_train.txt", "ImageNet_LT_test.txt"),
    "places_lt": ("Places_LT_train.txt", "Places_LT_test.txt"),
    "inat18": ("iNaturalist18_train.txt", "iNaturalist18_val.txt"),
}
NUM_CLASSES = {"cifar10_lt": 10, "cifar100_lt": 100, "imagenet_lt": 1000, "places_lt": 365, "inat18": 8142}


def data_home() -> Optional[Path]:
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


def is_small_image_data(recipe: Dict[str, Any]) -> bool:
    """CIFAR-size data: decoded once, it fits on the training device."""
    return recipe["dataset"] in ("cifar10_lt", "cifar100_lt")


@dataclass
class DataBundle:
    train: Dataset
    test: Dataset
    num_classes: int
    classes: Tuple[str, ...]
    cls_num_list: list
    data_cfg: Dict[str, Any]


def cifar_data_cfg() -> Dict[str, Any]:
    mean, std = CIFAR_MEAN_STD
    return {"input_size": (3, 32, 32), "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
            "mean": mean, "std": std}


def large_data_cfg(model: torch.nn.Module, img_size: int) -> Dict[str, Any]:
    cfg = resolve_model_data_config(model)
    return {**cfg, "input_size": (3, img_size, img_size)}


def train_transform(recipe: Dict[str, Any], data_cfg: Dict[str, Any]):
    """The authors' augmentation: CIFAR pad-4 crop + flip; large images: random-resized crop + flip (timm)."""
    if is_small_image_data(recipe):
        return T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                          T.Normalize(data_cfg["mean"], data_cfg["std"])])
    return create_transform(data_cfg["input_size"], is_training=True, interpolation=data_cfg["interpolation"],
                            mean=data_cfg["mean"], std=data_cfg["std"], hflip=0.5, color_jitter=None)


def _cifar_root(recipe: Dict[str, Any]) -> Path:
    if recipe["data_root"]:
        return Path(recipe["data_root"])
    relative = "cifar10/cifar10.zip" if recipe["dataset"] == "cifar10_lt" else "cifar100/cifar100.zip"
    return _default_path("data_root", relative)


def screen_images(train: Any, test: Any, policy: str, workers: int) -> None:
    """Read every image once before training (``bad_images``: ``fail`` lists every unreadable file and stops;
    ``skip`` leaves bad training images out and says how many; ``unchecked`` reads nothing ahead).
    The test set is never thinned: accuracy is reported on all of it, so a bad test image always stops the run."""
    if policy == "unchecked":
        return
    bad_train = train.unreadable_images(workers=max(workers, 4))
    bad_test = test.unreadable_images(workers=max(workers, 4))
    if bad_test or (bad_train and policy == "fail"):
        listed = [f"  {train.source.describe(p)}: {why}" for p, why in bad_train] + \
                 [f"  {test.source.describe(p)}: {why}" for p, why in bad_test]
        fix = ("replace or remove them" + ("" if bad_test else ", or pass --bad-images skip to train without them"))
        raise ValueError(f"{len(listed)} unreadable image(s) ({len(bad_train)} training, {len(bad_test)} test); "
                         f"{fix}:\n" + "\n".join(listed[:50]) + ("\n  ..." if len(listed) > 50 else ""))
    if bad_train:
        train.drop([p for p, _ in bad_train])
        print(f"skipped {len(bad_train)} unreadable training image(s) (--bad-images skip): "
              + ", ".join(train.source.describe(p) for p, _ in bad_train[:5]) + (" ..." if len(bad_train) > 5 else ""),
              flush=True)


def build_data(recipe: Dict[str, Any], model: torch.nn.Module) -> DataBundle:
    """Training and test sets for a recipe, with transforms set for the DataLoader path."""
    kind = recipe["dataset"]
    if is_small_image_data(recipe):
        num_classes = NUM_CLASSES[kind]
        root = _cifar_root(recipe)
        data_cfg = cifar_data_cfg()
        train = CIFARLongTail(root, num_classes, train=True, imb_ratio=recipe["imb_ratio"],
                              profile=recipe["imb_profile"], seed=recipe["imb_seed"],
                              transform=train_transform(recipe, data_cfg), max_per_class=recipe["max_per_class"])
        test = CIFARLongTail(root, num_classes, train=False, transform=eval_transform(data_cfg),
                             max_per_class=recipe["test_per_class"])
        classes = CIFAR10_CLASSES if num_classes == 10 else CIFAR100_CLASSES
        return DataBundle(train, test, num_classes, classes, train.cls_num_list, data_cfg)

    data_cfg = large_data_cfg(model, recipe["img_size"])
    if kind == "imagefolder":
        if not recipe["train_dir"] or not recipe["test_dir"]:
            raise FileNotFoundError("dataset 'imagefolder' needs --train-dir and --test-dir (folders or .zip files)")
        train = ImageFolderLT(recipe["train_dir"], transform=train_transform(recipe, data_cfg))
        test = ImageFolderLT(recipe["test_dir"], transform=eval_transform(data_cfg))
        if test.classes != train.classes:
            raise ValueError(f"test classes differ from training classes in {recipe['test_dir']}; "
                             "both folders need the same class sub-folders")
    else:
        train_name, test_name = STANDARD_LISTS.get(kind, (None, None))
        train_list = recipe["train_list"] or (_default_path("train_list", f"lt_splits/{train_name}") if train_name else None)
        test_list = recipe["test_list"] or (_default_path("test_list", f"lt_splits/{test_name}") if test_name else None)
        if train_list is None or test_list is None:
            raise FileNotFoundError("dataset 'listfile' needs --train-list and --test-list ('path label' files)")
        if not recipe["data_root"]:
            raise FileNotFoundError(f"dataset {kind!r} needs --data-root: the folder (or .zip) the list paths are relative to")
        num_classes = recipe["num_classes"] or NUM_CLASSES.get(kind)
        train = ListFileDataset(recipe["data_root"], train_list, transform=train_transform(recipe, data_cfg),
                                num_classes=num_classes)
        test = ListFileDataset(recipe["data_root"], test_list, transform=eval_transform(data_cfg),
                               num_classes=train.num_classes, classes=train.classes)
    screen_images(train, test, recipe["bad_images"], recipe["workers"])
    if min(train.cls_num_list) == 0:
        empty = [c for c, n in enumerate(train.cls_num_list) if n == 0][:5]
        raise ValueError(f"classes {empty} have no training images; every class needs at least one")
    return DataBundle(train, test, train.num_classes, train.classes, train.cls_num_list, data_cfg)
