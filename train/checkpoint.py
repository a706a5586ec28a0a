"""Training state on disk: written atomically every epoch, read back by ``--resume``.

Everything saved is a tensor or a plain Python value, so it loads with ``torch.load(weights_only=True)``
(no arbitrary unpickling, even of our own files).
"""
from __future__ import annotations

import io
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gcl_zoo.files import replace_file

from .distributed import gather_objects


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def rng_states_of_all_ranks() -> list[dict[str, Any]]:
    """Every rank's generator states, in rank order, on every rank (one entry without a process group).

    Each state travels serialised: tensors inside gathered Python objects do not survive the gather.
    """
    buffer = io.BytesIO()
    torch.save(rng_state(), buffer)
    return [torch.load(io.BytesIO(blob), weights_only=True) for blob in gather_objects(buffer.getvalue())]


def set_rng_state(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        replace_file(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint at {path}; nothing to resume (start the run without --resume)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise ValueError(f"cannot read training checkpoint {path}: {exc}") from exc


def check_writable(folder: str | Path, needed_bytes: int) -> None:
    """Fail before training if the output folder cannot be written or the disk is too full."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise PermissionError(f"cannot write to the output folder {folder} ({exc.strerror}); "
                              "choose another --out or fix its permissions") from None
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise OSError(f"only {free / 2**20:.1f} MiB free under {folder}, and this run needs about "
                      f"{needed_bytes / 2**20:.1f} MiB for checkpoints; free some space or choose another --out")
