"""The documentation site builds cleanly, and every benchmark figure that it and the README quote matches its record.

The convention is ``docs/tables.py``'s: marked tables are regenerated from ``bench/results/`` and compared whole;
figures in running text are listed in its ``QUOTES`` with the phrase they must appear in.
"""
import copy
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CODE_WIDTH = 100  # columns a code block shows without scrolling on a 1280-px page
FENCE = re.compile(r"^\s*(```|~~~)")


def _tables():
    spec = importlib.util.spec_from_file_location("gcl_zoo_doc_tables", ROOT / "docs" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tables():
    return _tables()


def test_mkdocs_build_strict(tmp_path):
    """No broken link, missing page or image, or docstring the API reference cannot render (strict: any warning fails)."""
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                          str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert out.returncode == 0, out.stdout + out.stderr
    site = tmp_path / "site"
    assert (site / "benchmarks" / "index.html").exists() and (site / "reference" / "losses" / "index.html").exists()
    assert "gcl_zoo.losses.GCLLoss" in (site / "reference" / "losses" / "index.html").read_text()
    assert (site / "bench" / "results" / "soak_serve.png").exists()  # plots outside docs/ reach the site


def test_every_quoted_figure_matches_its_record(tables):
    assert tables.check() == []


def test_every_table_is_used_and_every_shipped_entry_documented(tables):
    text = "\n".join(p.read_text() for p in tables.doc_files())
    used = {m["name"] for m in tables.MARKER.finditer(text)}
    assert used == set(tables.TABLES)
    assert "<!-- table: zoo -->" in (ROOT / "README.md").read_text()
    zoo_page, nav = (ROOT / "docs" / "zoo.md").read_text(), (ROOT / "mkdocs.yml").read_text()
    for name in tables.shipped():
        assert f"cards/{name}.md" in nav and (ROOT / "model_cards" / f"{name}.md").exists()
        for plot in ("per_class_accuracy", "tsne", "reliability"):
            assert f"bench/results/{name}/{plot}.png" in zoo_page


def test_a_changed_record_fails_the_check(tables, monkeypatch):
    """The check can fail: move one figure of a table and one of a quoted phrase, and both are reported."""
    real = tables.load

    def moved(rel):
        data = copy.deepcopy(real(rel))
        if rel == "gcl_resnet32_cifar10_lt.ir100/calibration.json":
            data["after"]["ece"] += 0.5
        if rel == "train_speed_cpu_xeon_compile.json":
            data["compile_speedup"] += 0.1
        return data

    monkeypatch.setattr(tables, "load", moved)
    problems = tables.check()
    assert any(p.startswith("README.md: table 'zoo'") for p in problems)
    assert any(p.startswith("docs/zoo.md: table 'zoo'") for p in problems)
    assert any(p.startswith("docs/zoo.md: table 'calibration'") for p in problems)
    assert any("docs/training.md: no longer says" in p and "buys nothing" in p for p in problems)


def _code_lines(text: str) -> list[tuple[int, str]]:
    """The lines inside fenced code blocks, with their line numbers."""
    inside, lines = False, []
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            inside = not inside
        elif inside:
            lines.append((number, line))
    return lines


def test_code_blocks_fit_the_page(tables):
    """No line of a fenced code block is wider than the page shows: long commands wrap with \\, comments sit above."""
    wide = [f"{path.relative_to(ROOT)}:{number}: {len(line)} columns"
            for path in tables.doc_files() for number, line in _code_lines(path.read_text())
            if len(line) > CODE_WIDTH]
    assert wide == []


def test_the_width_check_sees_code_blocks_only():
    text = "x" * 150 + "\n```bash\nshort\n" + "y" * 101 + "\n```\n" + "z" * 150
    assert _code_lines(text) == [(3, "short"), (4, "y" * 101)]
