"""Load models the way a user does, in a fresh process (``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and
``GCL_ZOO_HUB_ORG`` are read at import), and write what came back for the test to compare.

    python tests/hub_client.py OUT_DIR NAME [NAME ...]

For each NAME (``hf-hub:ORG/REPO``, a zoo name, ``local-dir:PATH``) ``timm.create_model(NAME, pretrained=True)``
runs; ``OUT_DIR/<i>.safetensors`` receives the state dict plus ``__output__`` (logits of a fixed input) and
``OUT_DIR/results.json`` the label names, ``timm.list_pretrained("gcl_*")`` and any error message.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

import gcl_zoo  # noqa: F401  (registers the zoo)


def fixed_input() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def main(out_dir: str, names: list) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = {"list_pretrained": timm.list_pretrained("gcl_*"), "models": []}
    for i, name in enumerate(names):
        try:
            model = timm.create_model(name, pretrained=True).eval()
        except Exception as exc:  # reported to the test, which checks the message
            results["models"].append({"name": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        with torch.no_grad():
            tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
            tensors["__output__"] = model(fixed_input())
        save_file(tensors, str(out / f"{i}.safetensors"))
        labels = model.pretrained_cfg.get("label_names")
        results["models"].append({"name": name, "file": f"{i}.safetensors",
                                  "label_names": list(labels) if labels else None})
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
