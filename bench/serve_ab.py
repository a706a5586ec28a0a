"""Served throughput of an earlier commit against the working tree, in alternating runs on one machine.

    python bench/serve_ab.py --before 03650ed --name serve_seams_ab -- --concurrency 8 --images-per-request 64

A refactor of the request path must not cost throughput, and one run of each on a shared machine says little: this
runs ``bench/serve_load.py`` of each code base in turn (before, after, after, before, ...), each with a fresh server
whose packages come from that code base (a temporary git worktree of ``--before``; the working tree for after),
and compares the medians and the ratio within each adjacent pair. Results: a table on stdout and
``bench/results/<name>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from serve_load import Transcript  # noqa: E402

# the installed names of the repository's packages, and their folders in a checkout
PACKAGES = {"gcl_zoo": "gcl_zoo", "gcl_zoo_serve": "serve", "gcl_zoo_train": "train"}


def package_dir(checkout: Path, into: Path) -> Path:
    """A folder whose entries are ``checkout``'s packages under their installed names, to put first on
    PYTHONPATH, so that a server started by that checkout's benchmark runs that checkout's code."""
    into.mkdir(parents=True, exist_ok=True)
    for name, folder in PACKAGES.items():
        (into / name).symlink_to(checkout / folder, target_is_directory=True)
    return into


def load_run(checkout: Path, packages: Path, load_args: Sequence[str], out: Path) -> dict[str, Any]:
    """One ``bench/serve_load.py`` run of ``checkout``'s code; its JSON record."""
    env = {"GCL_ZOO_DATA": str(REPO.parent / "shared" / "data"), **os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(packages), os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, str(checkout / "bench" / "serve_load.py"), "--out", str(out), *load_args],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "serve_load.json").read_text())


def run_figures(record: dict[str, Any]) -> dict[str, Any]:
    best_cell = max(record["cells"], key=lambda cell: cell["images_per_s"])
    return {"best_served_images_per_s": round(record["best_server"]["images_per_s"], 1),
            "cell_images_per_s": round(best_cell["images_per_s"], 1), "cell_p50_ms": round(best_cell["p50_ms"], 1),
            "cell_p99_ms": round(best_cell["p99_ms"], 1), "cell_errors": best_cell["errors"],
            "served_over_raw_median": round(record["head_to_head"]["median_ratio"], 3),
            "load_average_at_start": record["machine"]["load_average_at_start"]}


def summary(runs: list[dict[str, Any]], figure: str) -> dict[str, Any]:
    """Each side's median, range and run count; after over before of the medians and of every adjacent pair."""
    sides = {code: [run[figure] for run in runs if run["code"] == code] for code in ("before", "after")}
    pairs = [after[figure] / before[figure] for before, after in zip(runs[::2], runs[1::2])]
    pairs = [ratio if runs[2 * i]["code"] == "before" else 1 / ratio for i, ratio in enumerate(pairs)]
    medians = {code: statistics.median(values) for code, values in sides.items()}
    return {**{code: {"median": round(medians[code], 2), "min": min(values), "max": max(values), "runs": len(values)}
               for code, values in sides.items()},
            "after_over_before": round(medians["after"] / medians["before"], 3),
            "after_over_before_per_pair": [round(r, 3) for r in pairs],
            "after_over_before_median_pair": round(statistics.median(pairs), 3)}


def main(argv: Sequence[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the earlier commit (any git revision)")
    parser.add_argument("--pairs", type=int, default=3, help="before/after pairs, their order alternating")
    parser.add_argument("--name", default="serve_ab", help="the record's name under --out")
    parser.add_argument("--what", default="", help="what changed between the two, for the record")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("load_args", nargs="*", help="bench/serve_load.py's arguments, after --")
    args = parser.parse_args(argv)
    transcript = Transcript()
    info = transcript.machine()
    before_commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.before], check=True,
                                   capture_output=True, text=True).stdout.strip()
    after_commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], check=True,
                                  capture_output=True, text=True).stdout.strip()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="serve-ab-") as tmp:
        root = Path(tmp)
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(root / "before"), args.before],
                       check=True, capture_output=True)
        try:
            code = {"before": (root / "before", package_dir(root / "before", root / "before-packages")),
                    "after": (REPO, package_dir(REPO, root / "after-packages"))}
            order = [side for i in range(args.pairs) for side in (("before", "after") if i % 2 == 0
                                                                   else ("after", "before"))]
            for i, side in enumerate(order):
                record = load_run(*code[side], args.load_args, root / f"run{i}")
                runs.append({"code": side, "round": i // 2 + 1, **run_figures(record)})
                transcript.say(f"{side:>6} run {i + 1}/{len(order)}: best served window "
                               f"{runs[-1]['best_served_images_per_s']:.0f} images/s, best cell "
                               f"{runs[-1]['cell_images_per_s']:.0f} images/s, served/raw "
                               f"{runs[-1]['served_over_raw_median']:.2f}")
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(root / "before")],
                           check=False, capture_output=True)
    result = {"what": args.what, "before_commit": before_commit, "after_commit": after_commit,
              "command": "python bench/serve_ab.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": info,
              "summary": {figure: summary(runs, figure) for figure in ("best_served_images_per_s",
                                                                       "cell_images_per_s", "served_over_raw_median")},
              "runs": runs}
    for figure, numbers in result["summary"].items():
        transcript.say(f"{figure}: before median {numbers['before']['median']}, after {numbers['after']['median']}, "
                       f"after/before {numbers['after_over_before']} (pairs {numbers['after_over_before_per_pair']})")
    transcript.save(args.out, args.name, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
