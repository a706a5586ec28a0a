"""Export a training run to a Hub-ready folder, load it back with ``local-dir:``, and reject bad folders clearly."""
import json
import re
import shutil
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

import gcl_zoo  # noqa: F401
from conftest import RUN_EVAL, RUN_INFO, RUN_RECIPE
from gcl_zoo import hub
from gcl_zoo.hub import InvalidModelFolder, export_run, push_folder, validate_folder
from gcl_zoo.hub_cli import main as hub_cli

X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def exported(make_run, tmp_path_factory):
    run = make_run()
    out = tmp_path_factory.mktemp("exported") / "gcl_resnet32_cifar10_lt.ir100"
    export_run(run, out, repo_id="org/gcl_resnet32_cifar10_lt.ir100")
    return run, out


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    return target


def test_export_writes_exactly_what_timm_reads(exported):
    _, out = exported
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "eval.json", "model.onnx",
                                                      "model.safetensors", "train_hparams.yaml"]
    config = json.loads((out / "config.json").read_text())
    assert config["onnx"]["file"] == "model.onnx" and config["onnx"]["dynamic_batch"] is True
    assert config["architecture"] == "gcl_resnet32_cifar10_lt" and config["num_classes"] == 10
    assert config["label_names"][:2] == ["airplane", "automobile"] and len(config["label_names"]) == 10
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, 32, 32] and cfg["mean"] == [0.4914, 0.4822, 0.4465] and cfg["crop_pct"] == 1.0
    args = config["model_args"]
    assert args["backbone"] == "cifar_resnet32" and args["head"] == "cosine" and args["pretrained_backbone"] is False
    assert abs(args["logit_scale"] - 16.0) < 0.1
    assert json.loads((out / "eval.json").read_text()) == RUN_EVAL
    assert "stage2" in (out / "train_hparams.yaml").read_text()


def test_export_local_dir_round_trip_is_bit_identical(exported):
    run, out = exported
    source = timm.create_model(f"local-dir:{run}", pretrained=True).eval()
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    original = load_file(str(run / "model.safetensors"))
    assert original.keys() == loaded.state_dict().keys()
    assert all(torch.equal(original[k], v) for k, v in loaded.state_dict().items())
    with torch.no_grad():
        assert torch.equal(source(X), loaded(X))
    assert loaded.pretrained_cfg["label_names"][-1] == "truck"
    assert float(loaded.logit_scale) == float(original["logit_scale"])


def test_model_card_metadata_and_content(exported):
    _, out = exported
    card = ModelCard.load(out / "README.md")
    data = card.data
    assert data.library_name == "timm" and data.license == "apache-2.0" and data.datasets == ["cifar10"]
    assert {"image-classification", "long-tailed", "arxiv:2305.11733"} <= set(data.tags)
    results = {r.metric_name: r.metric_value for r in data.eval_results}
    assert results["Top-1 accuracy"] == 81.25
    assert (results["Many-shot accuracy"], results["Medium-shot accuracy"], results["Few-shot accuracy"]) == (
        91.0, 79.5, 70.75)
    assert all(r.dataset_name == "CIFAR-10-LT (imbalance ratio 100)" for r in data.eval_results)
    text = card.text
    assert 'timm.create_model("hf-hub:org/gcl_resnet32_cifar10_lt.ir100", pretrained=True)' in text
    assert RUN_INFO["command"] in text
    assert "| paper (best epoch, as published) | 82.68 |" in text and "| 81.25 | 91.00 | 79.50 | 70.75 |" in text
    # a shortfall is stated as one, never as a reproduction
    assert "reaches 81.25% top-1, 1.43 points below the paper's 82.68%" in " ".join(text.split())
    assert "reproduces" not in text
    scale = re.search(r"cosine classifier, logit scale ([0-9.]+)\)", text)[1]
    assert len(scale.replace(".", "").lstrip("0")) <= 4  # 4 significant digits, not a float's 16
    assert "openaccess.thecvf.com/content/CVPR2022" in text and "Missing information" not in text


def test_export_without_optional_files_says_what_is_missing(make_run, tmp_path):
    run = make_run(optional=())
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "model.onnx").write_bytes(b"a graph from an earlier export")
    out = export_run(run, tmp_path / "bare", onnx=False)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]  # none stale
    card = ModelCard.load(out / "README.md")
    assert card.data.eval_results is None and card.data.library_name == "timm"
    for name in ("eval.json", "recipe.yaml", "run.json"):
        assert f"No `{name}` was available" in card.text
    assert "\n# bare\n" in card.text  # no recipe, so no zoo name: the card is titled after the folder


def test_generic_wrapper_exports_with_its_backbone_preprocessing(tmp_path):
    model = gcl_zoo.create_gcl_model("resnet18", num_classes=3, label_names=["cat", "dog", "eel"]).eval()
    hub.save_model_folder(model, tmp_path / "run")
    out = export_run(tmp_path / "run", tmp_path / "pets", onnx=False)
    config = json.loads((out / "config.json").read_text())
    backbone_cfg = timm.create_model("resnet18").pretrained_cfg
    assert config["architecture"] == "gcl_timm" and config["model_args"]["backbone"] == "resnet18"
    assert config["label_names"] == ["cat", "dog", "eel"]
    for key in ("input_size", "mean", "std", "crop_pct", "interpolation"):
        assert config["pretrained_cfg"][key] == pytest.approx(list(backbone_cfg[key]) if isinstance(
            backbone_cfg[key], tuple) else backbone_cfg[key]), key
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert "\n# pets\n" in (out / "README.md").read_text()
    named = export_run(tmp_path / "run", tmp_path / "pets2", repo_id="org/pet-classifier", onnx=False)
    assert "\n# pet-classifier\n" in (named / "README.md").read_text()  # titled after the repo it goes to


def test_cli_export(make_run, tmp_path, capsys):
    run = make_run(optional=("recipe.yaml",))
    assert hub_cli([str(run), str(tmp_path / "out")], command="export") == 0  # model.onnx too: the exporter is installed
    assert "local-dir:" in capsys.readouterr().out
    assert ModelCard.load(tmp_path / "out" / "README.md").data.model_name == "gcl_resnet32_cifar10_lt.ir100"
    assert hub_cli([str(tmp_path / "no" / "such-run"), str(tmp_path / "x")], command="export") == 1
    assert "no such run folder" in capsys.readouterr().err


def test_shipped_checkpoint_export_and_card(exported, tmp_path):
    run, _ = exported
    zoo = "gcl_resnet32_cifar10_lt.ir100"
    weights_dir = tmp_path / "weights"  # laid out like gcl_zoo/weights/
    weights_dir.mkdir()
    shutil.copyfile(run / "model.safetensors", weights_dir / f"{zoo}.safetensors")
    seeds = {"seeds": [0, 1, 2], "shipped_seed": 0, "top1": [81.25, 82.0, 80.5], "mean": 81.25, "std": 0.75}
    (weights_dir / f"{zoo}.json").write_text(json.dumps({**RUN_EVAL, "command": RUN_INFO["command"],
                                                         "recipe": RUN_RECIPE, "seeds": seeds}))
    written = hub.write_shipped_cards(tmp_path / "cards", weights_dir=weights_dir)
    assert written == [tmp_path / "cards" / f"{zoo}.md"]
    card = ModelCard.load(written[0])
    assert card.data.model_name == zoo and card.data.eval_results[0].metric_value == 81.25
    assert f'timm.create_model("{zoo}", pretrained=True)' in card.text and RUN_INFO["command"] in card.text
    assert "reaches top-1 81.25 / 82.0 / 80.5: mean 81.25 ± 0.75" in " ".join(card.text.split())
    out = hub.export_embedded(zoo, tmp_path / "out", weights_dir=weights_dir, onnx=False)
    with torch.no_grad():
        assert torch.equal(timm.create_model(f"local-dir:{out}", pretrained=True).eval()(X),
                           timm.create_model(f"local-dir:{run}", pretrained=True).eval()(X))
    with pytest.raises(InvalidModelFolder, match=r"gcl_resnet32_cifar10_lt\.ir50\.safetensors: missing"):
        hub.export_embedded("gcl_resnet32_cifar10_lt.ir50", tmp_path / "none", weights_dir=weights_dir)


def test_committed_cards_of_shipped_checkpoints_are_current(tmp_path):
    written = hub.write_shipped_cards(tmp_path)
    for card in written:
        committed = REPO / "model_cards" / card.name
        assert committed.is_file(), f"commit the card: gcl-zoo export --shipped-cards model_cards ({card.name})"
        assert committed.read_text() == card.read_text(), f"regenerate {committed}"


# -- bad input: each gives one clear error naming the file or field ------------------------------------------

def test_folder_without_weights(exported, tmp_path):
    folder = _copy(exported[1], tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(InvalidModelFolder, match=r"model\.safetensors: missing"):
        validate_folder(folder)
    with pytest.raises(RuntimeError, match=r"has no weights file: expected model\.safetensors"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)


def test_corrupted_safetensors(exported, tmp_path):
    folder = _copy(exported[1], tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated download
    with pytest.raises(InvalidModelFolder, match=r"model\.safetensors: not a readable safetensors file"):
        validate_folder(folder)
    with pytest.raises(RuntimeError, match=r"model\.safetensors is not a readable safetensors file"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    weights.write_bytes(b"\x00" * 64)  # garbage header
    with pytest.raises(InvalidModelFolder, match="not a readable safetensors file"):
        validate_folder(folder)


def test_config_naming_unknown_architecture(exported, tmp_path):
    folder = _copy(exported[1], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["architecture"] = "gcl_resnet33_cifar10_lt"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidModelFolder, match=r"config\.json: field 'architecture' names 'gcl_resnet33_cifar10_lt'"):
        validate_folder(folder)
    # timm raises this before any gcl_zoo code runs; its message names the architecture but not the file
    with pytest.raises(RuntimeError, match=r"Unknown model \(gcl_resnet33_cifar10_lt\)"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(InvalidModelFolder, match=r"config\.json: not readable JSON"):
        validate_folder(folder)


def test_shape_mismatch_between_config_and_weights(exported, tmp_path):
    folder = _copy(exported[1], tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["head.weight"] = torch.randn(100, tensors["head.weight"].shape[1])  # a 100-class head
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(InvalidModelFolder, match=r"config\.json: field 'num_classes' is 10 but model\.safetensors holds"
                                                 r" a 100-class classifier"):
        validate_folder(folder)
    with pytest.raises(RuntimeError, match=r"model\.safetensors does not fit the architecture .*num_classes=10.*"
                                           r"size mismatch for head\.weight"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)


def test_shape_mismatch_inside_the_backbone(exported, tmp_path):
    folder = _copy(exported[1], tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["backbone.conv1.weight"] = torch.randn(8, 3, 3, 3)
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(InvalidModelFolder, match=r"does not fit the architecture.*backbone\.conv1\.weight"):
        validate_folder(folder)


@pytest.mark.parametrize("field, value, message", [
    ("backbone", "resnet_does_not_exist", r"field 'model_args\.backbone' names 'resnet_does_not_exist'"),
    ("bogus_arg", 1, r"field 'model_args' does not fit 'gcl_resnet32_cifar10_lt'.*bogus_arg"),
])
def test_config_that_does_not_build(exported, tmp_path, field, value, message):
    folder = _copy(exported[1], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["model_args"][field] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidModelFolder, match=r"config\.json: " + message):
        validate_folder(folder)
    with pytest.raises(InvalidModelFolder, match=message):
        push_folder(folder, "org/name", token="hf_test", endpoint="http://127.0.0.1:9")


def test_label_count_mismatch(exported, tmp_path):
    folder = _copy(exported[1], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["label_names"] = config["label_names"][:9]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(InvalidModelFolder, match=r"field 'label_names' has 9 names for num_classes=10"):
        validate_folder(folder)


def test_push_refuses_invalid_folders_before_any_request(exported, tmp_path):
    folder = _copy(exported[1], tmp_path)
    (folder / "model.safetensors").unlink()
    endpoint = "http://127.0.0.1:9"  # nothing listens: a request would fail with a connection error instead
    with pytest.raises(InvalidModelFolder, match=r"model\.safetensors: missing"):
        push_folder(folder, "org/name", token="hf_test", endpoint=endpoint)
    folder = _copy(exported[1], tmp_path / "pickled")
    torch.save({"x": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(InvalidModelFolder, match=r"holds pickle files \['pytorch_model\.bin'\]"):
        push_folder(folder, "org/name", token="hf_test", endpoint=endpoint)
