"""The ``gcl-zoo`` console script: one entry point, one subcommand per job.

The library's own subcommands (``export``, ``push``) live in ``gcl_zoo.hub_cli``; the applications built on the
library register theirs under the ``gcl_zoo.commands`` entry-point group (the trainer installs as
``gcl_zoo_train``: ``train``, ``eval``, ``calibrate``; the server as ``gcl_zoo_serve``: ``serve``, ``predict``). A subcommand's
module is imported only when it runs, and the library never names an application's module.
"""
from __future__ import annotations

import importlib
import runpy
import sys
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

ENTRY_POINT_GROUP = "gcl_zoo.commands"
# the library's own subcommands (``main(argv, command)`` in the named module); ``bench`` is handled here
OWN = {"export": "gcl_zoo.hub_cli", "push": "gcl_zoo.hub_cli"}
HELP = {
    "train": "train a model (stage 1 GCL, stage 2 classifier re-training)",
    "eval": "evaluate a run or checkpoint: eval.json and plots",
    "calibrate": "refit a trained model's score scale and implied prior on its validation split",
    "export": "export a run as a Hub-ready folder (safetensors, ONNX, config.json, model card)",
    "push": "push an exported folder to the Hugging Face Hub",
    "serve": "serve models over HTTP (FastAPI + uvicorn)",
    "predict": "classify image files, folders or globs as the server would: top-k per file as CSV or JSON Lines",
    "bench": "run a script from bench/ in a source checkout (gcl-zoo bench --help lists them)",
}
BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"


def registered() -> dict[str, EntryPoint]:
    """The subcommands installed applications registered, by name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _usage() -> str:
    names = list(dict.fromkeys([*HELP, *registered()]))
    width = max(map(len, names))
    lines = ["usage: gcl-zoo <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {HELP.get(name, '')}" for name in names]
    lines += ["", "Run 'gcl-zoo <command> --help' for a command's options."]
    return "\n".join(lines)


def _command_main(command: str) -> Callable[..., int] | None:
    if command in OWN:
        return importlib.import_module(OWN[command]).main
    entry = registered().get(command)
    return entry.load() if entry is not None else None


def run_bench(argv: list[str], command: str = "bench") -> int:
    """``gcl-zoo bench NAME [options]``: run ``bench/NAME.py`` (benchmarks live in the source tree, not the wheel)."""
    # bench/_*.py are helpers the benchmarks share, not benchmarks
    available = sorted(p.stem for p in BENCH_DIR.glob("[!_]*.py")) if BENCH_DIR.is_dir() else []
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: gcl-zoo bench NAME [options]\nbenchmarks: {', '.join(available) or 'none (not a source checkout)'}")
        return 0
    name = argv[0].replace("-", "_")
    if name not in available:
        where = f"choose one of {', '.join(available)}" if available else "benchmarks ship with the source checkout only"
        print(f"gcl-zoo bench: unknown benchmark {argv[0]!r}; {where}", file=sys.stderr)
        return 2
    # a script reads its arguments from sys.argv: set them for the run, and put the caller's back after it
    script, saved = str(BENCH_DIR / f"{name}.py"), sys.argv
    sys.argv = [script, *argv[1:]]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = saved
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command == "bench":
        return run_bench(rest)
    run = _command_main(command)
    if run is None:
        if command in HELP:  # a standard command whose application is not installed (a bare source checkout)
            print(f"gcl-zoo: command {command!r} is not installed here; `pip install -e .` in the source checkout "
                  f"(or run `python -m {'serve' if command == 'serve' else 'train'}` from it)", file=sys.stderr)
        else:
            print(f"gcl-zoo: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return int(run(rest, command=command) or 0)


if __name__ == "__main__":
    sys.exit(main())
