"""Writing files so that a crash never leaves a half-written one where a reader would find it."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["replace_file"]


def replace_file(src: str | Path, dest: str | Path) -> None:
    """Atomically move a finished temporary file into place, with the permissions a plain file would get
    (temporary files are created private, 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(src, 0o666 & ~umask)
    os.replace(src, dest)
