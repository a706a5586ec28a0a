"""Publishing an exported folder to the Hugging Face Hub, refusing anything that would not load or is unsafe."""
from __future__ import annotations

from pathlib import Path

from .folders import CARD_NAME, InvalidModelFolder, refuse_pickles, validate_folder

__all__ = ["push_folder"]

PathLike = str | Path


def push_folder(folder: PathLike, repo_id: str, private: bool = False, revision: str | None = None,
                create_pr: bool = False, commit_message: str | None = None, token: str | None = None,
                endpoint: str | None = None):
    """Validate ``folder`` and upload it to the Hub repo ``repo_id`` (created if needed); returns the CommitInfo.

    Uses ``huggingface_hub.HfApi``: the token comes from ``token``, ``HF_TOKEN`` or the login cache
    (``hf auth login``), the server from ``endpoint`` or ``HF_ENDPOINT``. A folder that would not load, or that
    holds pickle files, is refused before anything is sent. ``revision`` names a branch (created from the default
    branch if missing); ``create_pr`` opens a pull request instead of committing directly.
    """
    from huggingface_hub import HfApi, get_token

    folder = Path(folder)
    validate_folder(folder)
    refuse_pickles(folder)
    if (folder / CARD_NAME).is_file():
        _check_card(folder / CARD_NAME)
    token = token or get_token()
    if not token:
        raise PermissionError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (pushing needs write access)")
    api = HfApi(endpoint=endpoint, token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision and revision != "main" and not create_pr:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, create_pr=create_pr,
                             commit_message=commit_message or f"Upload {folder.name} with gcl-zoo")


def _check_card(path: Path) -> None:
    """The card's YAML header parses and its model-index is well formed (the Hub rejects it otherwise)."""
    from huggingface_hub import ModelCard

    try:
        ModelCard.load(path)
    except Exception as exc:  # the loader raises ValueError, YAMLError or KeyError depending on the fault
        raise InvalidModelFolder(f"{path}: invalid model card metadata ({exc}); re-export the folder") from exc
