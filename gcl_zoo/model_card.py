"""Model cards (``README.md``) for exported checkpoints: Hub metadata with a ``model-index`` of the measured
accuracy, a usage snippet, the training command and the numbers beside the paper's.

Rendered with ``huggingface_hub.ModelCard.from_template`` from ``gcl_zoo/model_card_template.md``, so the YAML
header is written (and can be read back) by the same library the Hub uses.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .folders import EVAL_NAME, RUN_INFO_NAME, RUN_RECIPE_NAME

__all__ = ["CardInputs", "render_card", "card_data", "card_notes", "dataset_info", "PAPER_TOP1", "TEMPLATE_PATH"]

TEMPLATE_PATH = Path(__file__).resolve().parent / "model_card_template.md"
ARXIV_ID = "2305.11733"
PAPER_TITLE = "Long-tailed Visual Recognition via Gaussian Clouded Logit Adjustment"
CVF_URL = ("https://openaccess.thecvf.com/content/CVPR2022/html/"
           "Li_Long-Tailed_Visual_Recognition_via_Gaussian_Clouded_Logit_Adjustment_CVPR_2022_paper.html")
CODE_URL = "https://github.com/Keke921/GCLLoss"

# Top-1 accuracy (%) published in the paper (best epoch) for each zoo entry
PAPER_TOP1 = {
    "gcl_resnet32_cifar10_lt.ir200": 79.03, "gcl_resnet32_cifar10_lt.ir100": 82.68,
    "gcl_resnet32_cifar10_lt.ir50": 85.46,
    "gcl_resnet32_cifar100_lt.ir200": 44.88, "gcl_resnet32_cifar100_lt.ir100": 48.71,
    "gcl_resnet32_cifar100_lt.ir50": 53.55,
    "gcl_resnet50_imagenet_lt": 54.88, "gcl_resnet50_inat18": 72.01, "gcl_resnet152_places_lt": 40.64,
}

# data set key (as recipes and eval.json name it) -> (display name, Hub data set id or None, long-tailed by ratio)
_DATASETS = {
    "cifar10_lt": ("CIFAR-10-LT", "cifar10", True), "cifar100_lt": ("CIFAR-100-LT", "cifar100", True),
    "imagenet_lt": ("ImageNet-LT", "imagenet-1k", False), "inat18": ("iNaturalist 2018", None, False),
    "places_lt": ("Places-LT", None, False),
}
_ALIASES = {"cifar10": "cifar10_lt", "cifar100": "cifar100_lt", "imagenet": "imagenet_lt", "inat2018": "inat18",
            "inaturalist2018": "inat18", "places": "places_lt", "places365_lt": "places_lt"}

_GROUPS = (("top1", "Top-1 accuracy"), ("many", "Many-shot accuracy"), ("medium", "Medium-shot accuracy"),
           ("few", "Few-shot accuracy"), ("top5", "Top-5 accuracy"))


@dataclass
class CardInputs:
    """Everything a card says, gathered by the exporter; ``None`` means the source file was missing."""

    name: str  # zoo name with tag (or the folder name)
    config: dict[str, Any]  # config.json
    num_params: int
    evaluation: dict[str, Any] | None = None  # eval.json
    recipe: dict[str, Any] | None = None  # recipe.yaml
    run: dict[str, Any] | None = None  # run.json
    load_name: str | None = None  # what the usage snippet passes to timm.create_model
    notes: list[str] = field(default_factory=list)  # what is missing, said in the card


def dataset_info(key: str | None, imb_ratio: float | None) -> dict[str, str | None]:
    """Display name and Hub data set id for a recipe's data set key (unknown keys are shown as given)."""
    if not key:
        return {"name": "unknown data set", "hub_id": None, "key": None}
    norm = str(key).lower().replace("-", "_")
    norm = _ALIASES.get(norm, norm)
    display, hub_id, by_ratio = _DATASETS.get(norm, (str(key), None, False))
    if by_ratio and imb_ratio:
        display = f"{display} (imbalance ratio {imb_ratio:g})"
    return {"name": display, "hub_id": hub_id, "key": norm}


def _metric(evaluation: dict[str, Any] | None, key: str) -> float | None:
    value = (evaluation or {}).get(key)
    return None if value is None else round(float(value), 2)


def _dataset(inputs: CardInputs) -> dict[str, str | None]:
    recipe, evaluation = inputs.recipe or {}, inputs.evaluation or {}
    return dataset_info(recipe.get("dataset") or evaluation.get("dataset"), recipe.get("imb_ratio"))


def card_data(inputs: CardInputs) -> ModelCardData:
    """The card's YAML header: library, tags, license, data sets and a ``model-index`` of the measured accuracy."""
    data = _dataset(inputs)
    split = (inputs.evaluation or {}).get("split") or "test"
    results = [
        EvalResult(task_type="image-classification", task_name="Image Classification",
                   dataset_type=data["hub_id"] or data["key"] or "custom", dataset_name=data["name"],
                   dataset_split=split, metric_type="accuracy", metric_name=label, metric_value=value)
        for key, label in _GROUPS if (value := _metric(inputs.evaluation, key)) is not None
    ]
    ece = _calibrated_ece(inputs.evaluation)
    if ece is not None:
        results.append(EvalResult(
            task_type="image-classification", task_name="Image Classification",
            dataset_type=data["hub_id"] or data["key"] or "custom", dataset_name=data["name"], dataset_split=split,
            metric_type="ece", metric_name="Expected calibration error (%, 15 bins)", metric_value=ece))
    pretrained_cfg = inputs.config.get("pretrained_cfg", {})
    tags = ["image-classification", "timm", "long-tailed", "gcl", f"arxiv:{ARXIV_ID}"]
    return ModelCardData(
        library_name="timm", pipeline_tag="image-classification", license=pretrained_cfg.get("license", "apache-2.0"),
        tags=tags, datasets=[data["hub_id"]] if data["hub_id"] else None, metrics=["accuracy"],
        model_name=inputs.name, eval_results=results or None)


def _calibrated_ece(evaluation: dict[str, Any] | None) -> float | None:
    """The test-set ECE of the calibrated scores, when the evaluation measured it."""
    after = ((evaluation or {}).get("calibration") or {}).get("after") or {}
    return _metric(after, "ece")


def _usage(inputs: CardInputs) -> str:
    source = inputs.load_name or f"local-dir:{inputs.name}"
    return "\n".join([
        "import timm, torch, gcl_zoo  # importing gcl_zoo registers the architecture",
        "from PIL import Image",
        "",
        f'model = timm.create_model("{source}", pretrained=True).eval()',
        "transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))",
        'x = transform(Image.open("image.jpg").convert("RGB")).unsqueeze(0)',
        "with torch.no_grad():",
        "    probs = model(x).softmax(-1)  # calibrated probabilities",
        'labels = model.pretrained_cfg.get("label_names")',
        "top = probs[0].topk(5)",
        "print([(labels[i] if labels else int(i), round(float(p), 3)) for p, i in zip(top.values, top.indices)])",
    ])


def _rows(inputs: CardInputs) -> list[list[str]]:
    """Results table: this checkpoint (final epoch) beside the paper (best epoch, as published)."""
    def cell(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    ours = ["this checkpoint (final epoch)"] + [cell(_metric(inputs.evaluation, k)) for k, _ in _GROUPS[:4]]
    rows = [ours]
    paper = PAPER_TOP1.get(inputs.name)
    if paper is not None:
        rows.append(["paper (best epoch, as published)", cell(paper), "n/a", "n/a", "n/a"])
    return rows


def _significant(value: float | None, digits: int = 4) -> str | None:
    """A trained parameter as a reader wants it (26.76, not 26.764291763305664)."""
    return None if value is None else f"{value:.{digits}g}"


def _recipe_yaml(recipe: dict[str, Any] | None) -> str:
    """The recipe as YAML, in its own key order (the same settings as the shipped ``train_hparams.yaml``)."""
    import yaml

    return yaml.safe_dump(recipe, sort_keys=False, default_flow_style=False).strip() if recipe else ""


def render_card(inputs: CardInputs, template_path: Path | None = None) -> str:
    """The full ``README.md`` text for an exported folder."""
    config = inputs.config
    pretrained_cfg = config.get("pretrained_cfg", {})
    model_args = config.get("model_args", {})
    data = _dataset(inputs)
    evaluation = inputs.evaluation or {}
    run = inputs.run or {}
    paper = PAPER_TOP1.get(inputs.name)
    top1 = _metric(evaluation, "top1")
    card = ModelCard.from_template(
        card_data(inputs), template_path=str(template_path or TEMPLATE_PATH),
        name=inputs.name, architecture=config.get("architecture"), backbone=model_args.get("backbone"),
        head=model_args.get("head", "cosine"), logit_scale=_significant(model_args.get("logit_scale")),
        num_classes=config.get("num_classes"), num_params=f"{inputs.num_params / 1e6:.2f}M",
        has_labels=bool(config.get("label_names")), dataset_name=data["name"],
        input_size=pretrained_cfg.get("input_size"), mean=pretrained_cfg.get("mean"), std=pretrained_cfg.get("std"),
        crop_pct=pretrained_cfg.get("crop_pct"), interpolation=pretrained_cfg.get("interpolation"),
        rows=_rows(inputs), paper_top1=paper, delta=None if paper is None or top1 is None else round(top1 - paper, 2),
        num_samples=evaluation.get("num_samples"), split=evaluation.get("split"),
        usage=_usage(inputs), command=run.get("command"), device=run.get("device"), training_notes=run.get("notes"),
        started=run.get("started"), finished=run.get("finished"), recipe_yaml=_recipe_yaml(inputs.recipe),
        seeds=evaluation.get("seeds"),
        calibration=(evaluation.get("calibration") or {}) if evaluation.get("calibration", {}).get("after") else None,
        has_eval=inputs.evaluation is not None, has_recipe=inputs.recipe is not None, notes=inputs.notes,
        arxiv_id=ARXIV_ID, paper_title=PAPER_TITLE, cvf_url=CVF_URL, code_url=CODE_URL)
    return str(card)


def card_notes(missing: Sequence[str]) -> list[str]:
    """One sentence per missing source file, for the card's "Files" section."""
    why = {EVAL_NAME: "no evaluation results are reported", RUN_RECIPE_NAME: "the training settings are unknown",
           RUN_INFO_NAME: "the training command is unknown"}
    return [f"No `{name}` was available: {why.get(name, 'it is not included')}." for name in missing]
