"""Validation splits: disjoint from training and test images, seeded, balanced where they can be, and what the
trainer reads every evaluation (validation) against what it reads once per stage (test)."""
import contextlib
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import timm
from PIL import Image
from timm.data import resolve_model_data_config

from gcl_zoo.data import CIFAR10_CLASSES, CIFARLongTail, long_tail_counts, long_tail_positions, stratified_holdout
from test_train import metrics, tiny_run
from train.cli import main
from train.data import STANDARD_LISTS, build_data
from train.recipes import RecipeError, load_recipe
from train.validation import SharedImagesError, validation_sizes


def _hashes(images: np.ndarray) -> set:
    return {hashlib.sha1(image.tobytes()).hexdigest() for image in images}


def _by_class(ds) -> dict:
    targets = np.asarray(ds.targets)
    return {c: set(ds.positions[targets == c].tolist()) for c in range(len(ds.classes))}


@pytest.fixture(scope="module")
def cifar10_splits(cifar10_zip):
    return {split: CIFARLongTail(cifar10_zip, split=split, imb_ratio=100) for split in ("train", "val", "test")}


def test_cifar10_val_is_disjoint_from_training_and_test_images(cifar10_splits):
    train, val, test = cifar10_splits["train"], cifar10_splits["val"], cifar10_splits["test"]
    kept, held = _by_class(train), _by_class(val)
    assert all(not kept[c] & held[c] for c in range(10))  # positions in the archive's training images
    assert len(_hashes(val.data)) == len(val)  # and by the pixels themselves: no image shared with either split
    assert not _hashes(val.data) & _hashes(train.data) and not _hashes(val.data) & _hashes(test.data)


def test_cifar10_val_is_balanced_seeded_and_the_head_class_gives_none(cifar10_splits, cifar10_zip):
    val = cifar10_splits["val"]
    assert val.cls_num_list == [0] + [500] * 9 and len(val) == len(val.targets) == len(val.positions) == 4500
    assert sorted(set(val.targets)) == list(range(1, 10)) and val.classes[1] == "automobile"
    images, labels = val.as_tensors()
    assert images.shape == (4500, 3, 32, 32) and labels.tolist() == val.targets
    again = CIFARLongTail(cifar10_zip, split="val", imb_ratio=100)
    assert np.array_equal(again.positions, val.positions) and np.array_equal(again.data, val.data)


def test_cifar10_val_takes_the_end_of_the_seeded_order(cifar10_zip):
    """The last val_per_class of each class's seeded order: the same images at every ratio that leaves them unused."""
    orders = long_tail_positions([5000] * 10, [5000] * 10)  # keeping everything: each class's whole seeded order
    for ratio in (10, 200):
        val = CIFARLongTail(cifar10_zip, split="val", imb_ratio=ratio, val_per_class=3)
        assert val.positions.tolist() == [int(p) for order in orders[1:] for p in order[-3:]]


def test_cifar100_val_defaults_and_short_classes(cifar100_zip):
    at50 = CIFARLongTail(cifar100_zip, num_classes=100, split="val", imb_ratio=50)
    assert at50.cls_num_list[0] == 0 and at50.cls_num_list[1:] == [20] * 99  # class 1: its 20 unused images
    at10 = CIFARLongTail(cifar100_zip, num_classes=100, split="val", imb_ratio=10)
    train10 = CIFARLongTail(cifar100_zip, num_classes=100, split="train", imb_ratio=10)
    assert at10.cls_num_list[1] == 500 - train10.cls_num_list[1] == 12  # fewer unused than 20: all of them
    assert all(n == 20 for n in at10.cls_num_list[5:])
    assert not _hashes(at10.data) & _hashes(train10.data)


def test_cifar_split_arguments_are_checked(cifar10_zip):
    with pytest.raises(ValueError, match="unknown CIFAR split 'valid'"):
        CIFARLongTail(cifar10_zip, split="valid")
    with pytest.raises(ValueError, match="not both"):
        CIFARLongTail(cifar10_zip, split="val", train=True)


def _packed_subset(root: Path, size: int = 40, imb_ratio: float = 10) -> Path:
    """A folder laid out as bench/pack_cifar_lt.py packs: the training subset's positions, the test set, sizes."""
    kept = long_tail_positions([size] * 10, long_tail_counts(size, 10, imb_ratio))
    for c, name in enumerate(CIFAR10_CLASSES):
        for split, positions in (("train", kept[c]), ("test", [0])):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for p in positions:
                Image.new("RGB", (32, 32), (c, int(p), 0)).save(root / split / name / f"{int(p):05d}.png")
    (root / "class_sizes.json").write_text(json.dumps({"train": [size] * 10, "test": [1] * 10}))
    return root


def test_a_packed_subset_without_validation_images_says_how_to_go_on(tmp_path):
    root = _packed_subset(tmp_path)
    assert len(CIFARLongTail(root, imb_ratio=10)) > 0  # the training subset reads as before
    with pytest.raises(FileNotFoundError, match="without validation image position .*--val-per-class 0"):
        CIFARLongTail(root, split="val", imb_ratio=10, val_per_class=5)
    empty = CIFARLongTail(root, split="val", imb_ratio=10, val_per_class=0)
    assert len(empty) == 0 and empty.cls_num_list == [0] * 10 and empty.as_tensors()[0].shape == (0, 3, 32, 32)


# -- the carve: ImageFolder and list-file data without published validation images -------------------------------

def test_stratified_holdout_takes_a_share_of_each_class_above_the_floor():
    sizes = [100, 50, 20, 6, 5, 3]
    targets = [c for c, n in enumerate(sizes) for _ in range(n)]
    held = stratified_holdout(targets, len(sizes), 0.1, 5, seed=0)
    counts = np.bincount(np.asarray(targets)[held], minlength=len(sizes)).tolist()
    assert counts == [10, 5, 2, 1, 0, 0]  # round(0.1 n); classes of 5 or fewer keep every image
    assert held == sorted(held) and len(set(held)) == len(held)
    assert held == stratified_holdout(targets, len(sizes), 0.1, 5, seed=0)
    assert held != stratified_holdout(targets, len(sizes), 0.1, 5, seed=1)
    floored = stratified_holdout(targets, len(sizes), 0.5, 5, seed=0)
    assert np.bincount(np.asarray(targets)[floored], minlength=len(sizes)).tolist() == [50, 25, 10, 1, 0, 0]
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        stratified_holdout(targets, len(sizes), 1.0, 5)


@pytest.fixture(scope="module")
def probe():
    """A small backbone's evaluation data config, what the data of a folder or list is preprocessed with."""
    return resolve_model_data_config(timm.create_model("resnet10t", pretrained=False, num_classes=1))


def _folder(root: Path, sizes) -> Path:
    for c, n in enumerate(sizes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (c, i, 0)).save(root / f"class{c}" / f"{i:03d}.png")
    return root


def test_imagefolder_carve_is_disjoint_seeded_and_reported(tmp_path, probe):
    train_dir, test_dir = _folder(tmp_path / "train", [40, 12, 4]), _folder(tmp_path / "test", [2, 2, 2])
    fields = {"train_dir": str(train_dir), "test_dir": str(test_dir), "img_size": 32, "workers": 0}
    bundle = build_data(load_recipe("imagefolder", fields), probe)
    assert bundle.val.cls_num_list == [4, 1, 0] and bundle.cls_num_list == bundle.train.cls_num_list == [36, 11, 4]
    train_paths, val_paths = {p for p, _ in bundle.train.samples}, {p for p, _ in bundle.val.samples}
    assert not train_paths & val_paths and len(train_paths | val_paths) == 56
    assert bundle.val.transform is not bundle.train.transform  # validation images are not augmented
    summary = bundle.validation_summary()
    assert summary["images"] == 5 and summary["classes_with_none"] == 1 and "val_seed 0" in summary["source"]
    same = build_data(load_recipe("imagefolder", fields), probe)
    other = build_data(load_recipe("imagefolder", {**fields, "val_seed": 1}), probe)
    assert same.val.samples == bundle.val.samples and other.val.samples != bundle.val.samples
    given_dir = _folder(tmp_path / "val", [2, 2, 2])
    (given_dir / "class0" / "000.png").write_bytes(b"")  # another image than the training one of that name
    Image.new("RGB", (8, 8), (9, 9, 9)).save(given_dir / "class0" / "000.png")
    for c in range(3):
        for i in range(2):
            Image.new("RGB", (8, 8), (c, 200 + i, 7)).save(given_dir / f"class{c}" / f"{i:03d}.png")
    given = build_data(load_recipe("imagefolder", {**fields, "val_dir": str(given_dir)}), probe)
    assert len(given.train) == 56 and given.validation_summary()["source"] == f"folder {given_dir}"


def test_a_given_validation_split_sharing_files_with_train_or_test_is_refused_by_name(tmp_path, probe):
    """The test folder given as validation (same paths), or a validation folder holding a copy of a training image
    (same content, another name), is refused naming the file; the CLI exits 2 with that message."""
    train_dir, test_dir = _folder(tmp_path / "train", [6, 6, 6]), _folder(tmp_path / "test", [2, 2, 2])
    fields = {"train_dir": str(train_dir), "test_dir": str(test_dir), "img_size": 32, "workers": 0}
    with pytest.raises(SharedImagesError, match=r"and the test split share 6 image file\(s\): .*class0.000\.png"):
        build_data(load_recipe("imagefolder", {**fields, "val_dir": str(test_dir)}), probe)
    val_dir = tmp_path / "val"
    for c in range(3):
        (val_dir / f"class{c}").mkdir(parents=True)
        Image.new("RGB", (8, 8), (c, 250, 9)).save(val_dir / f"class{c}" / "mine.png")
    (val_dir / "class1" / "copied.png").write_bytes((train_dir / "class1" / "004.png").read_bytes())
    with pytest.raises(SharedImagesError, match=r"content is also in the training split: .*copied\.png"):
        build_data(load_recipe("imagefolder", {**fields, "val_dir": str(val_dir)}), probe)
    assert_cli_refuses(fields, val_dir)


def assert_cli_refuses(fields: dict, val_dir: Path) -> None:
    """``gcl-zoo train`` with that validation folder: exit 2, the file named on stderr, no traceback."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["--recipe", "imagefolder", "--train-dir", fields["train_dir"], "--test-dir", fields["test_dir"],
                     "--val-dir", str(val_dir), "--model", "resnet18", "--pretrained-backbone", "false",
                     "--img-size", "32", "--workers", "0", "--device", "cpu", "--no-progress",
                     "--out", str(val_dir.parent / "run")])
    assert code == 2 and "content is also in the training split" in err.getvalue() and "copied.png" in err.getvalue()
    assert "Traceback" not in err.getvalue()


def test_the_validation_split_size_is_printed_and_a_small_one_warned_about():
    sizes, warning = validation_sizes([1, 2, 0], ("a", "b", "c"))
    assert sizes == "validation split: 3 images (a 1, b 2, c 0)"
    assert "bounded" in warning and "1 such" in warning
    big = validation_sizes([20] * 100, [str(i) for i in range(100)])
    assert big == ("validation split: 2000 images (min 20, median 20, max 20, 0 class(es) with none)", None)


def test_a_bad_validation_image_stops_the_run_even_when_bad_training_images_are_skipped(tmp_path, probe):
    val_dir = _folder(tmp_path / "val", [2, 2, 2])
    (val_dir / "class1" / "001.png").write_bytes(b"not an image")
    fields = {"train_dir": str(_folder(tmp_path / "train", [6, 6, 6])), "val_dir": str(val_dir), "img_size": 32,
              "test_dir": str(_folder(tmp_path / "test", [1, 1, 1])), "workers": 0, "bad_images": "skip"}
    with pytest.raises(ValueError, match=r"1 unreadable image\(s\) \(0 training, 1 validation, 0 test\)") as error:
        build_data(load_recipe("imagefolder", fields), probe)
    assert "class1/001.png" in str(error.value) and "--bad-images skip" not in str(error.value)


def test_validation_fields_are_checked():
    with pytest.raises(RecipeError, match="val_fraction"):
        load_recipe("imagefolder", {"val_fraction": 1.5})
    with pytest.raises(RecipeError, match="val_min_train"):
        load_recipe("imagefolder", {"val_min_train": 0})
    assert load_recipe("cifar10_lt")["val_per_class"] == 500 and load_recipe("cifar100_lt")["val_per_class"] == 20


# -- published lists: ImageNet-LT and Places-LT have one; iNaturalist 2018's is its test set ----------------------

def _unchecked(dataset: str, lt_splits: Path, **fields) -> dict:
    return load_recipe(dataset, {"data_root": str(lt_splits), "bad_images": "unchecked", "img_size": 32, **fields})


def test_places_lt_validates_on_its_published_val_list(lt_splits, probe, monkeypatch):
    monkeypatch.setenv("GCL_ZOO_DATA", str(lt_splits.parent))
    bundle = build_data(_unchecked("places_lt", lt_splits), probe)  # images are read only when indexed
    assert bundle.val.list_file == lt_splits / "Places_LT_val.txt" and len(bundle.val) == 7300
    assert len(bundle.train) == 62500 and bundle.val.cls_num_list == [20] * 365  # nothing carved from training
    paths = {split: {p for p, _ in getattr(bundle, split).samples} for split in ("train", "val", "test")}
    assert not paths["val"] & paths["train"] and not paths["val"] & paths["test"]
    assert bundle.validation_summary() == {"source": f"list file {lt_splits / 'Places_LT_val.txt'}", "images": 7300,
                                           "classes_with_none": 0, "per_class_min": 20, "per_class_max": 20}


def test_imagenet_lt_validates_on_its_published_val_list(lt_splits, probe, monkeypatch, tmp_path):
    monkeypatch.setenv("GCL_ZOO_DATA", str(lt_splits.parent))
    train_list = tmp_path / "train.txt"  # ImageNet_LT_train.txt is not here: one stand-in line per class
    train_list.write_text("".join(f"train/c{c}/{c}.JPEG {c}\n" for c in range(1000)))
    bundle = build_data(_unchecked("imagenet_lt", lt_splits, train_list=str(train_list)), probe)
    assert STANDARD_LISTS["imagenet_lt"]["val"] == "ImageNet_LT_val.txt"
    assert bundle.val.list_file == lt_splits / "ImageNet_LT_val.txt" and len(bundle.val) == 20000
    assert not {p for p, _ in bundle.val.samples} & {p for p, _ in bundle.test.samples}


def test_inat18_carves_its_validation_from_training(lt_splits, probe, monkeypatch):
    monkeypatch.setenv("GCL_ZOO_DATA", str(lt_splits.parent))
    stand_in = str(lt_splits / "iNaturalist18_val.txt")  # 3 images per class stand in for the training list
    bundle = build_data(_unchecked("inat18", lt_splits, train_list=stand_in), probe)
    assert bundle.test.list_file.name == "iNaturalist18_val.txt" and len(bundle.val) == 0  # too few to carve
    assert bundle.validation_summary()["classes_with_none"] == 8142
    carved = build_data(_unchecked("inat18", lt_splits, train_list=stand_in, val_fraction=0.4, val_min_train=2),
                        probe)
    assert carved.val.cls_num_list == [1] * 8142 and carved.cls_num_list == [2] * 8142
    assert carved.validation_summary()["source"].startswith("carved from the training images")


# -- the trainer: validation every evaluation, the test set once per stage ------------------------------------------

def test_training_reads_validation_each_evaluation_and_test_at_each_stage_end(tmp_path, cifar10_zip):
    out = tiny_run(tmp_path, cifar10_zip, "--epochs", "3", "--warmup-epochs", "1", "--stage2.epochs", "2",
                   "--eval-every", "2")
    rows = {(r["stage"], r["epoch"]): r for r in metrics(out)}
    validated = [key for key, r in rows.items() if "val_top1" in r]
    tested = [key for key, r in rows.items() if "top1" in r]
    assert validated == [(1, 2), (1, 3), (2, 2)] and tested == [(1, 3), (2, 2)]
    for key in validated:
        row = rows[key]
        assert 0 <= row["val_top1"] <= 100 and row["val_nll"] > 0 and np.isfinite(row["val_nll"])
        assert {"val_many", "val_medium", "val_few"} <= set(row)
    assert all(k in rows[(2, 2)] for k in ("top1", "top5", "many", "medium", "few"))
    report = json.loads((out / "eval.json").read_text())
    assert report["num_samples"] == 200 and report["top1"] == rows[(2, 2)]["top1"]  # the final report: test set
    validation = json.loads((out / "run.json").read_text())["validation"]
    assert validation["images"] == 100 and validation["per_class_max"] == 10  # --val-per-class 10 of tiny runs


def test_training_without_validation_images_skips_their_metrics(tmp_path, cifar10_zip):
    out = tiny_run(tmp_path, cifar10_zip, "--epochs", "1", "--warmup-epochs", "1", "--stage", "1",
                   "--val-per-class", "0", "--fast", "on")
    rows = metrics(out)
    assert len(rows) == 1 and "val_top1" not in rows[0] and rows[0]["top1"] is not None
    validation = json.loads((out / "run.json").read_text())["validation"]
    assert validation["images"] == 0 and validation["classes_with_none"] == 10
