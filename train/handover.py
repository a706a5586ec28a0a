"""The hand-over from stage 1 to stage 2: the stage-1 weights, checked against the model stage 2 trains."""
from __future__ import annotations

import json
from pathlib import Path

import torch.nn as nn

from gcl_zoo.folders import CONFIG_NAME, WEIGHTS_NAME

from .errors import TrainingError

__all__ = ["load_stage1"]


def load_stage1(model: nn.Module, folder: str | Path, backbone: str, num_classes: int) -> None:
    """Start stage 2 from a stage-1 model folder (or its ``model.safetensors``); refuse a missing or mismatched one
    with a clear message."""
    folder = Path(folder)
    weights = folder / WEIGHTS_NAME if folder.is_dir() else folder
    if not weights.is_file():
        raise TrainingError(
            f"stage 2 needs the stage-1 model, but {weights} does not exist; run stage 1 first "
            f"(--stage 1 or both) or point --stage1-checkpoint at a stage-1 folder or model.safetensors")
    config_path = weights.parent / CONFIG_NAME
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        saved = config.get("model_args", {}).get("backbone")
        if saved and saved != backbone:
            raise TrainingError(f"the stage-1 model in {weights.parent} is a {saved!r}, but this recipe trains "
                                f"{backbone!r}; pass the matching --model or stage-1 folder")
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except Exception as exc:
        raise TrainingError(f"cannot read the stage-1 weights {weights}: {exc}") from exc
    expected = model.state_dict()
    problems = [k for k in expected if k not in state] + [k for k in state if k not in expected]
    problems += [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if problems:
        raise TrainingError(f"the stage-1 weights {weights} do not match this model ({backbone}, "
                            f"{num_classes} classes): first mismatched tensor {problems[0]!r}")
    model.load_state_dict(state)
