import argparse
import re
import shlex

import pytest
import timm
import torch

import gcl_zoo
from gcl_zoo import CosineClassifier, GCLLoss, create_gcl_model, prepare_retraining
from gcl_zoo.models.gcl import checked_label_names
from gcl_zoo.models.weights import training_command
from train.cli import build_parser

ZOO = ["gcl_resnet32_cifar10_lt", "gcl_resnet32_cifar100_lt", "gcl_resnet50_imagenet_lt", "gcl_resnet50_inat18",
       "gcl_resnet152_places_lt"]


def test_zoo_names_registered_and_listed():
    listed = timm.list_models("gcl_*")
    assert set(ZOO) <= set(listed)
    tags = timm.list_models("gcl_resnet32_cifar10_lt*", include_tags=True)
    assert {"gcl_resnet32_cifar10_lt.ir100", "gcl_resnet32_cifar10_lt.ir50", "gcl_resnet32_cifar10_lt.ir200"} <= set(tags)


def test_list_pretrained_is_truthful():
    for name in timm.list_pretrained("gcl_*"):
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.file or cfg.hf_hub_id or cfg.url, name
        model = timm.create_model(name, pretrained=True)  # must actually load
        assert isinstance(model, gcl_zoo.GCLModel)


@pytest.mark.parametrize("name, classes, size", [
    ("gcl_resnet32_cifar10_lt", 10, 32), ("gcl_resnet32_cifar100_lt.ir50", 100, 32),
    ("gcl_resnet50_imagenet_lt", 1000, 64), ("gcl_resnet50_inat18", 8142, 64), ("gcl_resnet152_places_lt", 365, 64),
])
def test_every_zoo_name_creates_and_runs(name, classes, size):
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    assert cfg["num_classes"] == classes and model.num_classes == classes
    assert cfg["paper_ids"] == "arXiv:2305.11733" and cfg["license"] and cfg["input_size"][0] == 3
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        out, raw = model(x), model.forward_raw(x)
    assert out.shape == (2, classes)
    assert raw.abs().max() <= 1.0 + 1e-5  # cosine logits
    assert torch.allclose(out, raw * model.logit_scale)  # calibrated logits: the cosines times the fitted scale
    if classes in (10, 100, 1000):
        assert len(cfg["label_names"]) == classes


def _parse_training_command(suggested: str) -> tuple[list[str], argparse.Namespace]:
    """The arguments of a suggested `gcl-zoo train ...` command, and what the trainer's own parser makes of them."""
    command = shlex.split(re.search(r"gcl-zoo train ([^`]+)", suggested).group(1))
    return command, build_parser().parse_args(command)


@pytest.mark.parametrize("name, needed", [
    ("gcl_resnet50_imagenet_lt", {"--recipe": "imagenet_lt", "--train-list": "TRAIN_LIST.txt"}),
    ("gcl_resnet50_inat18", {"--recipe": "inat18", "--train-list": "TRAIN_LIST.txt"}),
])
def test_pretrained_without_weights_prints_a_training_command_that_parses(name, needed):
    """The suggested command is complete: the trainer's own parser accepts it and it trains the asked-for entry."""
    with pytest.raises(RuntimeError, match="no weights are published") as info:
        timm.create_model(name, pretrained=True)
    command, args = _parse_training_command(str(info.value))
    for flag, value in needed.items():
        assert command[command.index(flag) + 1] == value
    assert args.out and f"local-dir:{args.out}" in str(info.value)


@pytest.mark.parametrize("variant, tag, archive", [
    ("gcl_resnet32_cifar10_lt", "ir200", "DATA/cifar10/cifar10.zip"),
    ("gcl_resnet32_cifar100_lt", "ir50", "DATA/cifar100/cifar100.zip"),
])
def test_cifar_training_command_names_the_ratio_and_the_archive(variant, tag, archive):
    """What a CIFAR entry whose weights are missing from the package (a wheel built without them) tells the user."""
    command, args = _parse_training_command(training_command(variant, tag))
    assert command[command.index("--imb-ratio") + 1] == tag[2:]
    assert command[command.index("--data-root") + 1] == archive and str(args.out) == f"runs/{variant}.{tag}"


def test_resnet32_parameter_count():
    model = timm.create_model("cifar_resnet32", num_classes=10)
    n = sum(p.numel() for p in model.parameters())
    assert 0.45e6 < n < 0.475e6
    for depth, lo, hi in ((20, 0.26e6, 0.28e6), (56, 0.84e6, 0.87e6)):
        m = timm.create_model(f"cifar_resnet{depth}", num_classes=10)
        assert lo < sum(p.numel() for p in m.parameters()) < hi


@pytest.mark.parametrize("backbone, kwargs", [
    ("resnet18", {}), ("convnext_atto", {}), ("vit_tiny_patch16_224", {"img_size": 64}),
])
def test_any_timm_backbone_forward_backward(backbone, kwargs):
    model = create_gcl_model(backbone, num_classes=7, label_names=list("abcdefg"), **kwargs)
    assert model.pretrained_cfg["label_names"] == tuple("abcdefg")
    assert model.pretrained_cfg["first_conv"].startswith("backbone.")
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    pooled = model.forward_head(feats, pre_logits=True)
    assert pooled.shape == (2, model.head_hidden_size)
    logits = model(x)
    assert logits.shape == (2, 7) and isinstance(model.get_classifier(), CosineClassifier)
    loss = GCLLoss([50, 40, 30, 20, 10, 5, 2])(logits, torch.tensor([0, 6]))
    loss.backward()
    assert all(p.grad is not None for p in model.head.parameters() if p.requires_grad)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)


def test_channels_last_and_autocast_match_eager():
    torch.manual_seed(0)
    model = timm.create_model("gcl_resnet32_cifar10_lt").eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    scale = float(model.logit_scale)  # calibrated logits are scale * cosine; the tolerances are on the cosine
    assert torch.allclose(ref / scale, cl / scale, atol=1e-6)
    assert low.dtype == torch.float32  # the cosine is taken in float32 even under autocast (measured error 3e-3)
    assert torch.allclose(ref / scale, low / scale, atol=0.01)


def test_unknown_backbone_and_label_count_errors():
    with pytest.raises(ValueError, match="unknown timm backbone"):
        create_gcl_model("resnet_does_not_exist", num_classes=3)
    with pytest.raises(ValueError, match="2 label names for 3 classes"):
        create_gcl_model("resnet18", num_classes=3, label_names=["a", "b"])


def test_label_names_are_checked_and_default_to_the_hugging_face_convention():
    """What create_gcl_model and the server's answers name the classes by (one helper for both)."""
    assert checked_label_names(3) == ("LABEL_0", "LABEL_1", "LABEL_2")
    assert checked_label_names(2, ["cat", 7]) == ("cat", "7")
    with pytest.raises(ValueError, match="1 label names for 2 classes"):
        checked_label_names(2, ["cat"])


def test_retraining_methods_share_the_cosine_head_shape():
    head = CosineClassifier(8, 4)
    with torch.no_grad():
        head.weight.mul_(torch.tensor([[1.0], [2.0], [3.0], [4.0]]))
    f = torch.randn(5, 8)
    cos = head(f)
    tau = prepare_retraining(CosineClassifier(8, 4), "crt")
    assert tau.weight.requires_grad and not tau.class_scale.requires_grad
    import copy
    tau_head = prepare_retraining(copy.deepcopy(head), "tau_norm", tau=0.0)
    expected = torch.nn.functional.linear(torch.nn.functional.normalize(f, dim=1), head.weight)
    assert torch.allclose(tau_head(f), expected, atol=1e-5)
    assert torch.allclose(prepare_retraining(copy.deepcopy(head), "tau_norm", tau=1.0)(f), cos, atol=1e-6)
    lws = prepare_retraining(copy.deepcopy(head), "lws")
    assert lws.class_scale.requires_grad and not lws.weight.requires_grad
    with pytest.raises(ValueError, match="unknown re-training method"):
        prepare_retraining(head, "bogus")


def test_cosine_head_is_float32_under_autocast():
    """bf16 would round the cosine to about 0.004 (0.1 logit at s=30) before the loss sees it."""
    head = CosineClassifier(64, 10)
    features = torch.randn(256, 64)
    exact = head(features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = head(features)
        model_out = timm.create_model("gcl_resnet32_cifar10_lt")(torch.randn(2, 3, 32, 32))
    assert mixed.dtype == torch.float32 and model_out.dtype == torch.float32
    assert torch.allclose(mixed, exact, atol=1e-6)


def test_class_scale_is_not_a_parameter_until_lws_trains_it():
    """Stage 1's optimizer gets model.parameters(): the per-class gain must not be among them."""
    model = timm.create_model("gcl_resnet32_cifar10_lt")
    names = [name for name, _ in model.named_parameters()]
    assert "head.class_scale" not in names and "head.class_scale" in model.state_dict()
    lws = prepare_retraining(model.head, "lws")
    assert [name for name, p in lws.named_parameters() if p.requires_grad] == ["class_scale"]
    reloaded = timm.create_model("gcl_resnet32_cifar10_lt")
    with torch.no_grad():
        lws.class_scale.mul_(2.0)
    reloaded.load_state_dict(model.state_dict())  # an LWS-trained gain loads into a fresh model by the same name
    assert torch.equal(reloaded.head.class_scale, torch.full((10,), 2.0))


def test_tau_norm_with_tau_one_changes_nothing():
    head = CosineClassifier(8, 4)
    with torch.no_grad():
        head.weight.mul_(torch.tensor([[1.0], [2.0], [3.0], [4.0]]))
        head.class_scale.copy_(torch.tensor([0.5, 1.5, -0.25, 2.0]))  # gains some earlier step left
    f = torch.randn(5, 8)
    before = head(f)
    assert torch.equal(prepare_retraining(head, "tau_norm", tau=1.0)(f), before)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_torch_compile_full_graph(backend):
    model = timm.create_model("gcl_resnet32_cifar10_lt").eval()
    x = torch.randn(4, 3, 32, 32)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(x), model(x), atol=1e-4)
