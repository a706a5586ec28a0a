"""The ``gcl-zoo`` console script: one entry point, one subcommand per job.

Subcommands live with the code they drive (``train/``, ``serve/``, ``gcl_zoo.hub``) and are imported only when
invoked, so the library never imports the applications built on it.
"""
from __future__ import annotations

import importlib
import sys
from typing import List, Optional

# subcommand -> (module providing ``main(argv)``, one-line help)
SUBCOMMANDS = {
    "train": ("train.cli", "train a model (stage 1 GCL, stage 2 classifier re-training)"),
    "eval": ("train.evaluate", "evaluate a run or checkpoint: eval.json and plots"),
    "export": ("gcl_zoo.hub_cli", "export a run as a Hub-ready folder (safetensors, config.json, model card)"),
    "push": ("gcl_zoo.hub_cli", "push an exported folder to the Hugging Face Hub"),
    "serve": ("serve.cli", "serve models over HTTP (FastAPI + uvicorn)"),
    "bench": ("train.bench_cli", "run a benchmark script from bench/"),
}


def _usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: gcl-zoo <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run 'gcl-zoo <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(f"gcl-zoo: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
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
