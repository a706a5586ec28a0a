import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from gcl_zoo.data import CIFARLongTail, ImageFolderLT, ListFileDataset, long_tail_counts, read_list_file
from gcl_zoo.metrics import shot_groups

STANDARD_R100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def cao_reference_positions(counts, per_class=5000, seed=0):
    """The selection of Cao et al.'s IMBALANCECIFAR10/100, written independently: global seed, per-class shuffle."""
    np.random.seed(seed)
    targets = np.repeat(np.arange(len(counts)), per_class)  # positions within each class in original order
    kept = []
    for c, n in enumerate(counts):
        idx = np.where(targets == c)[0]
        np.random.shuffle(idx)
        kept.append(idx[:n] - per_class * c)
    return kept


def test_counts_profiles():
    assert long_tail_counts(5000, 10, 100) == STANDARD_R100
    assert long_tail_counts(5000, 10, 50)[-1] == 100 and long_tail_counts(5000, 10, 200)[-1] == 25
    assert long_tail_counts(500, 100, 100)[0] == 500 and long_tail_counts(500, 100, 100)[-1] == 5
    assert long_tail_counts(5000, 10, 10, "step") == [5000] * 5 + [500] * 5
    with pytest.raises(ValueError, match="imbalance ratio must be >= 1"):
        long_tail_counts(5000, 10, 0.5)
    with pytest.raises(ValueError, match="unknown imbalance profile"):
        long_tail_counts(5000, 10, 10, "linear")


@pytest.mark.parametrize("ratio", [100, 50, 200])
def test_cifar10_lt_from_shared_zip_has_standard_subsets(cifar10_zip, ratio):
    ds = CIFARLongTail(cifar10_zip, num_classes=10, train=True, imb_ratio=ratio)
    counts = long_tail_counts(5000, 10, ratio)
    assert ds.cls_num_list == counts
    if ratio == 100:
        assert ds.cls_num_list == STANDARD_R100 and len(ds) == 12406
    reference = cao_reference_positions(counts)
    targets = np.asarray(ds.targets)
    for c in range(10):
        assert np.array_equal(ds.positions[targets == c], reference[c])
    assert ds.data.shape == (sum(counts), 32, 32, 3) and ds.data.dtype == np.uint8
    image, label = ds[0]
    assert isinstance(image, Image.Image) and label == 0


def test_cifar10_lt_image_identity_matches_the_archive(cifar10_zip):
    ds = CIFARLongTail(cifar10_zip, train=True, imb_ratio=100)
    with zipfile.ZipFile(cifar10_zip) as z:
        i = len(ds) - 1  # last image: a truck at its kept position
        name = f"train/truck/{ds.positions[i]:05d}.webp"
        with z.open(name) as f:
            expected = np.asarray(Image.open(f).convert("RGB"))
    assert np.array_equal(ds.data[i], expected)


def test_cifar10_test_split_is_balanced(cifar10_zip):
    ds = CIFARLongTail(cifar10_zip, train=False)
    assert ds.cls_num_list == [1000] * 10 and len(ds) == 10000
    mean = ds.data.reshape(-1, 3).mean(0) / 255
    assert np.allclose(mean, [0.4942, 0.4851, 0.4504], atol=0.003)  # the test set's known channel means


@pytest.mark.parametrize("ratio,total", [(100, 10847), (50, 12608), (200, 9502)])
def test_cifar100_lt_from_shared_zip_has_standard_subsets(cifar100_zip, ratio, total):
    ds = CIFARLongTail(cifar100_zip, num_classes=100, train=True, imb_ratio=ratio)
    assert len(ds) == total and ds.cls_num_list == long_tail_counts(500, 100, ratio)
    assert ds.cls_num_list[0] == 500 and ds.cls_num_list[-1] == int(500 / ratio)
    reference = cao_reference_positions(ds.cls_num_list, per_class=500)
    targets = np.asarray(ds.targets)
    for c in range(100):
        assert np.array_equal(ds.positions[targets == c], reference[c])
    with zipfile.ZipFile(cifar100_zip) as z:  # the last kept image of the rarest class is the archive's file
        i = len(ds) - 1
        with z.open(f"train/worm/{ds.positions[i]:05d}.webp") as f:
            assert np.array_equal(ds.data[i], np.asarray(Image.open(f).convert("RGB")))


def test_cifar100_classes_are_the_standard_fine_labels_in_order(cifar100_zip):
    """The label order is the archive's sorted class folders, which is the fine-label order of the original
    ``meta`` file (apple=0 ... worm=99); a few fixed points of that order guard the table itself."""
    ds = CIFARLongTail(cifar100_zip, num_classes=100, train=False)
    with zipfile.ZipFile(cifar100_zip) as z:
        folders = sorted({n.split("/")[1] for n in z.namelist() if n.startswith("test/") and n.count("/") == 2})
    assert list(ds.classes) == folders and len(set(ds.classes)) == 100
    assert {0: "apple", 1: "aquarium_fish", 19: "cattle", 58: "pickup_truck", 99: "worm"} == \
        {i: ds.classes[i] for i in (0, 1, 19, 58, 99)}
    assert ds.cls_num_list == [100] * 100 and len(ds) == 10000
    mean = ds.data.reshape(-1, 3).mean(0) / 255
    assert np.allclose(mean, [0.5088, 0.4874, 0.4419], atol=0.003)  # the CIFAR-100 test set's known channel means


def test_cifar100_recipe_reads_the_zip_by_default(cifar100_zip, monkeypatch):
    from train.data import build_data
    from train.recipes import load_recipe

    monkeypatch.setenv("GCL_ZOO_DATA", str(cifar100_zip.parent.parent))
    recipe = load_recipe("cifar100_lt", {"max_per_class": 20, "test_per_class": 2})
    bundle = build_data(recipe)  # CIFAR's data config does not depend on the model
    assert bundle.num_classes == 100 and bundle.classes[-1] == "worm" and len(bundle.test) == 200
    assert bundle.cls_num_list[0] == 20 and sum(bundle.cls_num_list) < 100 * 20


def test_cifar_missing_root_and_wrong_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CIFARLongTail(tmp_path / "nope")
    (tmp_path / "train" / "airplane").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "train" / "airplane" / "00000.png")
    (tmp_path / "train" / "unicorn").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "train" / "unicorn" / "00000.png")
    with pytest.raises(ValueError, match="unicorn"):
        CIFARLongTail(tmp_path)


def test_places_lt_train_list_counts_and_shot_groups(lt_splits):
    samples = read_list_file(lt_splits / "Places_LT_train.txt")
    ds = ListFileDataset(lt_splits, lt_splits / "Places_LT_train.txt")  # images are read only when indexed
    assert len(samples) == len(ds) == 62500
    assert ds.num_classes == 365 and max(ds.cls_num_list) == 4980 and min(ds.cls_num_list) == 5
    assert ds.classes[0] == "airfield"
    groups = shot_groups(ds.cls_num_list)
    sizes = {k: len(v) for k, v in groups.items()}
    assert sizes == {"many": 131, "medium": 163, "few": 71}  # the split Liu et al. (2019) report for Places-LT


@pytest.mark.parametrize("name, lines, classes", [
    ("ImageNet_LT_test.txt", 50000, 1000), ("ImageNet_LT_val.txt", 20000, 1000), ("Places_LT_val.txt", 7300, 365),
    ("Places_LT_test.txt", 36500, 365), ("iNaturalist18_val.txt", 24426, 8142),
])
def test_other_split_lists_parse(lt_splits, name, lines, classes):
    ds = ListFileDataset(lt_splits, lt_splits / name)
    assert len(ds) == lines and ds.num_classes == classes and min(ds.cls_num_list) > 0


def test_list_file_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("a/b.jpg 0\nno-label-here\n")
    with pytest.raises(ValueError, match=r"bad.txt:2"):
        read_list_file(bad)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_list_file(tmp_path / "missing.txt")


def test_missing_and_corrupt_images_are_named(tmp_path):
    (tmp_path / "cls").mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "cls" / "ok.jpg")
    (tmp_path / "cls" / "broken.jpg").write_bytes(b"not an image")
    listing = tmp_path / "list.txt"
    listing.write_text("cls/ok.jpg 0\ncls/broken.jpg 1\ncls/gone.jpg 1\n")
    ds = ListFileDataset(tmp_path, listing)
    assert ds[0][0].size == (8, 8) and ds.cls_num_list == [1, 2]
    with pytest.raises(ValueError, match="broken.jpg"):
        ds[1]
    with pytest.raises(FileNotFoundError, match="gone.jpg"):
        ds[2]
    bad = ds.unreadable_images(workers=2, progress=False)  # every bad file at once, with its reason
    assert [path for path, _ in bad] == ["cls/broken.jpg", "cls/gone.jpg"]
    assert "cannot read image" in bad[0][1] and "missing" in bad[1][1]
    ds.drop([path for path, _ in bad])
    assert ds.cls_num_list == [1, 0] and len(ds) == 1 and ds.targets == [0]


def test_image_folder_lt(tmp_path):
    for cls, n in (("cat", 3), ("ant", 1)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            Image.new("RGB", (8, 8)).save(tmp_path / cls / f"{i}.png")
    ds = ImageFolderLT(tmp_path)
    assert ds.classes == ("ant", "cat") and ds.cls_num_list == [1, 3]


def test_tensor_decoding_falls_back_to_pil_for_16_bit_images():
    """The tensor decoders give a 16-bit PNG as uint16; the training decoder hands such files to PIL (8-bit RGB)."""
    import io

    from gcl_zoo.data.codecs import decode_rgb
    from gcl_zoo.data.sources import decode_rgb_tensor

    gradient = (np.arange(12 * 8, dtype=np.uint16).reshape(8, 12) * 600).astype(np.uint16)
    out = io.BytesIO()
    Image.fromarray(gradient).convert("I;16").save(out, format="PNG")
    data = out.getvalue()
    assert decode_rgb(data) is None
    image = decode_rgb_tensor(data, "deep.png")
    assert str(image.dtype) == "torch.uint8"
    assert np.array_equal(image.permute(1, 2, 0).numpy(), np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def test_images_decode_without_torchvisions_deprecated_decoders(cifar10_zip):
    """Where TorchCodec is installed it decodes (torchvision's decoders are deprecated from 0.29 on): no
    DeprecationWarning, and the pixels torchvision gives."""
    import importlib.util
    import warnings

    import torchvision
    from torchvision.io import ImageReadMode, decode_image

    from gcl_zoo.data import codecs

    if importlib.util.find_spec("torchcodec") is None:
        pytest.skip("TorchCodec is not installed: torchvision decodes")
    assert codecs.backend() == "torchcodec", f"torchcodec is installed but unusable beside torchvision {torchvision.__version__}"
    with zipfile.ZipFile(cifar10_zip) as archive:
        blobs = [archive.read(n) for n in sorted(archive.namelist()) if n.endswith(".webp")][:20]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        decoded = [codecs.decode_rgb(blob) for blob in blobs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for blob, image in zip(blobs, decoded):
            assert torch.equal(image, decode_image(torch.frombuffer(bytearray(blob), dtype=torch.uint8),
                                                   mode=ImageReadMode.RGB))
