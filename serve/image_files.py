"""The image files a ``gcl-zoo predict`` command names: files as given, folders searched for image files, and
glob patterns (quoted, so that the shell leaves them alone) expanded."""
from __future__ import annotations

import glob
from collections.abc import Sequence
from pathlib import Path

__all__ = ["IMAGE_SUFFIXES", "collect_image_files"]

# what a folder's image files end in (the formats the server accepts); a file named on its own is taken whatever
# its name, and one that is no image is reported as such
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _in_folder(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _matching(pattern: str) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())


def collect_image_files(inputs: Sequence[str]) -> list[Path]:
    """Every file ``inputs`` names, in the order given (a folder's and a pattern's files sorted), each once; an
    input that names nothing is an error saying so."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = _in_folder(path)
            if not files:
                raise FileNotFoundError(f"folder {item} holds no image files ({' '.join(IMAGE_SUFFIXES)})")
        elif path.is_file():
            files = [path]
        elif any(c in item for c in "*?["):
            files = _matching(item)
            if not files:
                raise FileNotFoundError(f"the pattern {item!r} matches no files")
        else:
            raise FileNotFoundError(f"{item} is neither a file, a folder nor a glob pattern")
        found.extend(files)
    return list(dict.fromkeys(found))
