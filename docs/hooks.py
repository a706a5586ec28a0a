"""MkDocs hook: the site shows files that live outside ``docs/`` without copying them into it.

* every PNG under ``bench/results/`` keeps its repository path, so a page at the top of the site embeds
  ``bench/results/<record>/<plot>.png`` exactly as the repository's README would;
* every committed model card ``model_cards/<name>.md`` becomes the page ``cards/<name>.md``.
"""
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent


def on_files(files: Files, config) -> Files:
    for png in sorted((ROOT / "bench" / "results").rglob("*.png")):
        files.append(File(png.relative_to(ROOT).as_posix(), str(ROOT), config["site_dir"],
                          config["use_directory_urls"]))
    for card in sorted((ROOT / "model_cards").glob("gcl_*.md")):
        files.append(File.generated(config, f"cards/{card.name}", abs_src_path=str(card)))
    return files
