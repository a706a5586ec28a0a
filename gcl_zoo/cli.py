"""The ``gcl-zoo`` console script: one entry point, one subcommand per job.

Subcommands live with the code they drive (``train/``, ``serve/``, ``gcl_zoo.hub``) and are imported only when
invoked, so the library never imports the applications built on it.
"""
from __future__ import annotations

import importlib
import runpy
import sys
from pathlib import Path
from typing import List, Optional

# subcommand -> (module providing ``main(argv, command)``, one-line help); ``bench`` is handled here
SUBCOMMANDS = {
    "train": ("train.cli", "train a model (stage 1 GCL, stage 2 classifier re-training)"),
    "eval": ("train.evaluate", "evaluate a run or checkpoint: eval.json and plots"),
    "export": ("gcl_zoo.hub_cli", "export a run as a Hub-ready folder (safetensors, config.json, model card)"),
    "push": ("gcl_zoo.hub_cli", "push an exported folder to the Hugging Face Hub"),
    "serve": ("serve.cli", "serve models over HTTP (FastAPI + uvicorn)"),
    "bench": (None, "run a script from bench/ in a source checkout (gcl-zoo bench --help lists them)"),
}
BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"


def _usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: gcl-zoo <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run 'gcl-zoo <command> --help' for a command's options."]
    return "\n".join(lines)


def run_bench(argv: List[str], command: str = "bench") -> int:
    """``gcl-zoo bench NAME [options]``: run ``bench/NAME.py`` (benchmarks live in the source tree, not the wheel)."""
    available = sorted(p.stem for p in BENCH_DIR.glob("*.py")) if BENCH_DIR.is_dir() else []
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: gcl-zoo bench NAME [options]\nbenchmarks: {', '.join(available) or 'none (not a source checkout)'}")
        return 0
    name = argv[0].replace("-", "_")
    if name not in available:
        where = f"choose one of {', '.join(available)}" if available else "benchmarks ship with the source checkout only"
        print(f"gcl-zoo bench: unknown benchmark {argv[0]!r}; {where}", file=sys.stderr)
        return 2
    sys.argv = [str(BENCH_DIR / f"{name}.py"), *argv[1:]]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(f"gcl-zoo: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    if command == "bench":
        return run_bench(rest)
    module_name = SUBCOMMANDS[command][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            print(f"gcl-zoo: command {command!r} is not available in this installation ({exc})", file=sys.stderr)
            return 2
        raise
    return int(module.main(rest, command=command) or 0)


if __name__ == "__main__":
    sys.exit(main())
