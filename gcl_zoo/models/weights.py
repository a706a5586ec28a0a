"""Where a zoo model's weights come from (the package, a Hub repo, a local folder), clear errors when they
cannot be read, and the ``gcl-zoo train`` command that makes them where none are published.

timm does the loading; this module only decides two things it cannot know: which Hub repo a zoo name points at
(``GCL_ZOO_HUB_ORG``), and that weights from the Hub are read from ``model.safetensors`` only, so nothing
downloaded is ever unpickled.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from huggingface_hub.constants import SAFETENSORS_SINGLE_FILE as WEIGHTS_NAME
from timm.models import PretrainedCfg

__all__ = ["WEIGHTS_DIR", "HUB_ORG_ENV", "WeightsNotCachedError", "embedded_weights", "hub_org",
           "with_hub_repos", "safe_hub_overlay", "hub_unreachable", "explain_offline", "explain_load_errors",
           "training_command", "no_weights_error"]

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
HUB_ORG_ENV = "GCL_ZOO_HUB_ORG"


def embedded_weights(name: str) -> str | None:
    """Path of the weights shipped in the package for ``name`` ('arch.tag'), or None when none ship."""
    path = WEIGHTS_DIR / f"{name}.safetensors"
    return str(path) if path.is_file() else None


def hub_org() -> str | None:
    """The Hub user or organisation named by ``GCL_ZOO_HUB_ORG`` (None when unset)."""
    org = os.environ.get(HUB_ORG_ENV, "").strip().strip("/")
    return org or None


def with_hub_repos(cfgs: dict[str, dict[str, Any]], skip: str) -> dict[str, dict[str, Any]]:
    """Point every zoo entry except ``skip`` at the Hub repo ``<org>/<name.tag>`` when ``GCL_ZOO_HUB_ORG`` is set.

    Read once, when ``gcl_zoo`` is imported: set the variable first. Then ``pretrained=True`` downloads the
    entry from that repo (weights shipped in the package still win) and ``timm.list_pretrained`` lists it.
    ``gcl-zoo push`` of a folder exported as ``<name.tag>`` to ``--repo-id <org>/<name.tag>`` fills such a repo.
    """
    org = hub_org()
    if org is None:
        return cfgs
    out = {}
    for key, cfg in cfgs.items():
        name = key.rstrip("*")
        out[key] = cfg if name == skip else {**cfg, "hf_hub_id": f"{org}/{name}", "hf_hub_filename": WEIGHTS_NAME}
    return out


def safe_hub_overlay(cfg: PretrainedCfg, overlay: dict[str, Any] | None) -> dict[str, Any] | None:
    """``overlay`` plus ``hf_hub_filename='model.safetensors'`` when the weights will come from the Hub.

    timm falls back to ``pytorch_model.bin`` (a pickle) when a repo has no safetensors file; pinning the file name
    makes such a repo fail with a clear error instead.
    """
    from_hub = cfg.source == "hf-hub" or (cfg.source != "local-dir" and cfg.hf_hub_id and not cfg.file
                                          and cfg.state_dict is None)
    if not from_hub or str(cfg.hf_hub_filename or "").endswith(".safetensors"):
        return overlay
    return {**(overlay or {}), "hf_hub_filename": WEIGHTS_NAME}


class WeightsNotCachedError(RuntimeError):
    """Weights that are neither in the Hub cache nor downloadable here (``HF_HUB_OFFLINE``, or no network)."""


def hub_unreachable(wanted: str, repo_id: str, ways: Sequence[str], files: str = "",
                    note: str = "") -> WeightsNotCachedError:
    """The one message for weights the Hub cannot give: what was wanted, why it cannot come, and the ways on
    (``ways``, then fetching them once where the Hub is reachable, into the cache this machine reads); ``note``
    ends it."""
    from huggingface_hub import constants

    why = ("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE
           else f"the Hub ({constants.ENDPOINT}) cannot be reached")
    fetch = (f"fetch them once where the Hub is reachable: `hf download {repo_id}{' ' + files if files else ''}` "
             f"with HF_HUB_CACHE naming the Hub cache this machine reads (here {constants.HF_HUB_CACHE}), or copy "
             "that cache folder here afterwards")
    listed = " ".join(f"({i}) {way};" for i, way in enumerate([*ways, fetch], 1)).rstrip(";")
    return WeightsNotCachedError(f"{wanted} are not in the Hub cache and cannot be downloaded: {why}. "
                                 f"Ways on: {listed}.{note}")


@contextmanager
def explain_offline(model_id: str) -> Iterator[None]:
    """``timm.create_model(model_id, pretrained=True)`` for an ``hf-hub:`` name whose files are neither cached nor
    downloadable: the one message naming the repo and the ways on, instead of the Hub client's error."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        yield
    except LocalEntryNotFoundError:
        if not model_id.startswith("hf-hub:"):
            raise
        repo_id = model_id[len("hf-hub:"):].partition("@")[0]
        raise hub_unreachable(f"the files of Hub repo {repo_id} (config.json, {WEIGHTS_NAME})", repo_id, [
            "load a local copy instead: local-dir:FOLDER (a folder `gcl-zoo export` wrote, or a training run)",
        ]) from None


def _weights_location(cfg: PretrainedCfg) -> str:
    """Human-readable name of the weights file a pretrained cfg loads."""
    if cfg.source == "local-dir":
        return str(Path(cfg.file) / WEIGHTS_NAME)
    if cfg.file and cfg.source != "hf-hub":
        return str(cfg.file)
    filename = cfg.hf_hub_filename or WEIGHTS_NAME
    repo_id, _, revision = str(cfg.hf_hub_id).partition("@")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, filename, revision=revision or None)
    where = f" (cached at {cached})" if isinstance(cached, str) else ""
    return f"{filename} of Hub repo {cfg.hf_hub_id}{where}"


def _origin(name: str, cfg: PretrainedCfg) -> str:
    """Why ``name`` loads from where it does (zoo names pointed at the Hub by GCL_ZOO_HUB_ORG say so)."""
    if cfg.source in ("hf-hub", "local-dir") or not cfg.hf_hub_id or cfg.file:
        return ""
    return (f" The zoo name {name!r} points at Hub repo {cfg.hf_hub_id} because {HUB_ORG_ENV}={hub_org()!r};"
            f" push the model there with `gcl-zoo push` or unset {HUB_ORG_ENV}.")


@contextmanager
def explain_load_errors(name: str, cfg: PretrainedCfg) -> Iterator[None]:
    """Turn the loader's low-level errors into one message naming the file, the cause and the fix."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as exc:
        repo_id = str(cfg.hf_hub_id).partition("@")[0]
        fix = (f"remove it from the Hub cache (`hf cache rm model/{repo_id}`, or delete the file) and load again"
               if cfg.source == "hf-hub" or (cfg.hf_hub_id and not cfg.file)
               else "write the folder again with `gcl-zoo export`")
        raise RuntimeError(f"{_weights_location(cfg)} is not a readable safetensors file ({exc}). The file is corrupt"
                           f" or truncated: {fix}.") from exc
    except RepositoryNotFoundError as exc:
        raise RuntimeError(f"Hub repo {cfg.hf_hub_id} does not exist or is not visible with your token"
                           f" (HF_TOKEN or `hf auth login`).{_origin(name, cfg)}") from exc
    except RevisionNotFoundError as exc:
        raise RuntimeError(f"Hub repo {cfg.hf_hub_id} has no such revision.{_origin(name, cfg)}") from exc
    except LocalEntryNotFoundError:  # offline (HF_HUB_OFFLINE=1 or no network) and not in the cache
        filename = cfg.hf_hub_filename or WEIGHTS_NAME
        raise hub_unreachable(f"the weights of {name} ({filename} of Hub repo {cfg.hf_hub_id})", str(cfg.hf_hub_id), [
            "load a local copy instead: timm.create_model('local-dir:FOLDER', pretrained=True) or --model "
            "local-dir:FOLDER (a folder `gcl-zoo export` wrote, or a training run)",
            "pretrained=False for random weights",
        ], files=filename, note=_origin(name, cfg)) from None
    except EntryNotFoundError as exc:
        raise RuntimeError(
            f"Hub repo {cfg.hf_hub_id} has no {cfg.hf_hub_filename or WEIGHTS_NAME}: gcl-zoo loads weights from"
            f" safetensors only (never pickle files). Export the model with `gcl-zoo export` and push that folder."
            f"{_origin(name, cfg)}") from exc
    except RuntimeError as exc:
        message = str(exc)
        if message.startswith("No suitable checkpoints found"):
            raise RuntimeError(f"{cfg.file} has no weights file: expected {WEIGHTS_NAME} beside config.json."
                               f" Write the folder with `gcl-zoo export` (or gcl_zoo.hub.save_model_folder).") from exc
        if "Error(s) in loading state_dict" in message:
            details = (message.split(":", 1)[1] if ":" in message else message).strip().rstrip(".")
            raise RuntimeError(
                f"{_weights_location(cfg)} does not fit the architecture its config describes ({name},"
                f" num_classes={cfg.num_classes}): {details}. Check `num_classes`, `label_names` and `model_args` in"
                f" config.json against the weights; re-export the folder from the training run.") from exc
        raise


def training_command(variant: str, tag: str | None) -> str:
    """The ``gcl-zoo train`` command that reproduces a zoo entry, complete as printed (placeholders in capitals).

    Zoo names are ``gcl_<arch>_<dataset>`` and the trainer names its recipes after the data set, so the name gives
    the recipe; the generic wrapper (no data set in its name) trains from image folders.
    """
    out = f"runs/{variant}" + (f".{tag}" if tag else "")
    parts = variant.split("_", 2)
    if len(parts) < 3:
        return f"gcl-zoo train --dataset imagefolder --train-dir TRAIN_DIR --test-dir TEST_DIR --out {out}"
    recipe = parts[2]
    if recipe.startswith("cifar"):
        ratio = f" --imb-ratio {tag[2:]}" if tag and tag.startswith("ir") and tag[2:].isdigit() else ""
        archive = "cifar10/cifar10.zip" if recipe == "cifar10_lt" else "cifar100/cifar100.zip"
        return f"gcl-zoo train --recipe {recipe}{ratio} --data-root DATA/{archive} --out {out}"
    return (f"gcl-zoo train --recipe {recipe} --data-root IMAGES_DIR --train-list TRAIN_LIST.txt "
            f"--test-list TEST_LIST.txt --out {out}")


def no_weights_error(variant: str, tag: str | None) -> RuntimeError:
    """What ``pretrained=True`` says for an entry without published weights: how to train and load them."""
    command = training_command(variant, tag)
    out = command.rsplit(" --out ", 1)[1]
    name = variant + (f".{tag}" if tag else "")
    return RuntimeError(
        f"no weights are published for {name!r} yet. Train them with `{command}` and load the run with "
        f"timm.create_model('local-dir:{out}', pretrained=True), or load a Hub copy with "
        f"timm.create_model('hf-hub:ORG/NAME', pretrained=True); pretrained=False gives random weights.")
