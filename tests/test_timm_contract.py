"""timm's model contract, as timm's own generic model tests state it, for every zoo entry and for gcl_timm over
several backbone families: gradients, pooled/unpooled outputs, classifier reset, features, TorchScript and FX.

The full timm test file runs from ``../shared/peers/timm_tests``; these are our own checks of the same behaviour,
sized for the default suite (CIFAR entries at their native 32 px, the 224 px entries once at 224 and otherwise small).
"""
import math

import pytest
import timm
import torch
from timm.data import create_transform, resolve_data_config
from timm.models import get_notrace_functions, get_notrace_modules, group_parameters
from timm.optim import create_optimizer_v2
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import gcl_zoo  # noqa: F401
from gcl_zoo import CosineClassifier

CIFAR = ["gcl_resnet32_cifar10_lt", "gcl_resnet32_cifar100_lt"]
LARGE = ["gcl_resnet50_imagenet_lt", "gcl_resnet50_inat18", "gcl_resnet152_places_lt"]
# gcl_timm over several families: (backbone, extra args, input size)
FAMILIES = [("resnet18", {}, 64), ("convnext_atto", {}, 64), ("efficientnet_b0", {}, 64),
            ("vit_tiny_patch16_224", {"img_size": 64}, 64)]


def build(name, **kwargs):
    if name.startswith("gcl_timm:"):
        backbone = name.split(":", 1)[1]
        extra = next(args for b, args, _ in FAMILIES if b == backbone)
        return timm.create_model("gcl_timm", backbone=backbone, **extra, **kwargs)
    return timm.create_model(name, **kwargs)


def input_size(name):
    if name.startswith("gcl_timm:"):
        return next(size for b, _, size in FAMILIES if b == name.split(":", 1)[1])
    return 32 if name in CIFAR else 64


EVERY = CIFAR + LARGE + [f"gcl_timm:{b}" for b, _, _ in FAMILIES]


@pytest.mark.parametrize("name", EVERY)
def test_every_trainable_parameter_gets_a_gradient(name):
    model = build(name, num_classes=42).train()
    size = input_size(name)
    out = model(torch.randn(2, 3, size, size))
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert out.shape == (2, 42) and not missing


@pytest.mark.parametrize("name", CIFAR + ["gcl_resnet50_imagenet_lt"] + [f"gcl_timm:{b}" for b, _, _ in FAMILIES[:3]])
def test_pooled_and_unpooled_outputs_follow_the_config(name):
    model = build(name).eval()
    cfg = model.pretrained_cfg
    size = cfg["input_size"][-1] if not name.startswith("gcl_timm:") else input_size(name)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        assert features.shape[1] == model.num_features and pooled.shape == (1, model.head_hidden_size)
        if not name.startswith("gcl_timm:"):  # the zoo table's pool_size is the native feature-map size
            assert tuple(features.shape[-2:]) == tuple(cfg["pool_size"])
        model.reset_classifier(0)
        assert model.num_classes == 0 and model(x).shape == pooled.shape
        model.reset_classifier(0, "")
        assert model(x).shape == features.shape
        unpooled = build(name, num_classes=0, global_pool="").eval()
        assert unpooled(x).shape == features.shape
    assert "head.weight" in build(name).state_dict() and cfg["first_conv"] + ".weight" in model.state_dict()
    model = build(name).eval()
    model.reset_classifier(5)
    assert isinstance(model.get_classifier(), CosineClassifier) and model(x).shape == (1, 5)


def test_the_vit_family_keeps_the_token_contract():
    model = build("gcl_timm:vit_tiny_patch16_224").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        tokens = model.forward_features(x)
        assert tokens.ndim == 3 and tokens.shape[-1] == model.num_features
        assert model.forward_head(tokens, pre_logits=True).shape == (1, model.head_hidden_size)
        assert build("gcl_timm:vit_tiny_patch16_224", num_classes=0).eval()(x).shape == (1, model.num_features)


@pytest.mark.parametrize("name", CIFAR + ["gcl_resnet50_imagenet_lt", "gcl_timm:convnext_atto", "gcl_timm:vit_tiny_patch16_224"])
def test_feature_extraction_and_intermediates(name):
    size = input_size(name)
    x = torch.randn(1, 3, size, size)
    for feature_cls in (None, "getter"):
        extra = {"feature_cls": feature_cls} if feature_cls else {}
        features = build(name, features_only=True, **extra).eval()
        channels, reductions = features.feature_info.channels(), features.feature_info.reduction()
        outputs = features(x)
        assert len(channels) >= 3 and len(outputs) == len(channels)
        for c, r, o in zip(channels, reductions, outputs):
            assert o.shape[1] == c and o.shape[-1] <= math.ceil(size / r) + 1
    model = build(name).eval()
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        assert len(intermediates) == len(model.feature_info)
        assert torch.allclose(final, model.forward_features(x))


@pytest.mark.parametrize("name", CIFAR + [f"gcl_timm:{b}" for b, _, _ in FAMILIES[:2]])
def test_torchscript_fx_and_fx_then_torchscript(name):
    model = build(name).eval()
    size = input_size(name)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        eager = model(x)
        with timm.set_scriptable(True):
            scripted = torch.jit.script(build(name).eval())
        scripted.load_state_dict(model.state_dict())
        assert torch.allclose(scripted(x), eager, atol=1e-5)
        tracer = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
        _, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer)
        fx = create_feature_extractor(model, return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer)
        traced = next(iter(fx(x).values()))
        assert torch.allclose(traced, eager, atol=1e-5)
        assert torch.allclose(next(iter(torch.jit.script(fx)(x).values())), eager, atol=1e-5)


def test_pretrained_zoo_model_fine_tunes_on_new_classes():
    """pretrained=True with another num_classes: the trained backbone and a fresh head, as timm does."""
    trained = timm.create_model("gcl_resnet32_cifar10_lt.ir100", pretrained=True)
    for classes in (5, 0):
        model = timm.create_model("gcl_resnet32_cifar10_lt.ir100", pretrained=True, num_classes=classes)
        assert torch.equal(model.backbone.conv1.weight, trained.backbone.conv1.weight)
        assert model.num_classes == classes
    gray = timm.create_model("gcl_resnet32_cifar10_lt.ir100", pretrained=True, in_chans=1, num_classes=5)
    assert gray(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    features = timm.create_model("gcl_resnet32_cifar10_lt.ir100", pretrained=True, features_only=True)
    assert len(features(torch.randn(1, 3, 32, 32))) == 4


def test_timm_training_script_calls_work_on_a_zoo_model(tmp_path):
    """What timm's train.py does with a model, as library calls: transforms from the config, an optimizer that
    skips the model's no-decay parameters, layer groups, and a training step on a real image."""
    from PIL import Image

    model = timm.create_model("gcl_resnet32_cifar10_lt.ir100", pretrained=True, num_classes=3)
    config = resolve_data_config({}, model=model)
    assert config["input_size"] == (3, 32, 32) and config["mean"] == model.pretrained_cfg["mean"]
    transform = create_transform(**config, is_training=True)
    path = tmp_path / "image.jpg"
    Image.effect_noise((48, 40), 60).convert("RGB").save(path, quality=90)
    batch = torch.stack([transform(Image.open(path).convert("RGB")) for _ in range(4)])
    optimizer = create_optimizer_v2(model, opt="sgd", lr=0.05, weight_decay=5e-4)
    no_decay = [g for g in optimizer.param_groups if g["weight_decay"] == 0.0]
    assert no_decay and all(p.ndim <= 1 for g in no_decay for p in g["params"])  # biases and BatchNorm
    groups = group_parameters(model, model.group_matcher(coarse=True))
    assert "backbone.conv1.weight" in groups[0] and "head.weight" in groups[max(groups)]
    assert sum(len(v) for v in groups.values()) == len(list(model.named_parameters()))
    loss = gcl_zoo.GCLLoss([30, 10, 3])(model(batch), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
