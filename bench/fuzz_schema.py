"""Long fuzzing of the server from its own OpenAPI document: the suite's short run (tests/test_serve_schema.py),
with many more examples, several seeds, and both a server without and one with an API key (whose document
declares the key).

    python bench/fuzz_schema.py [--max-examples 300] [--seeds 0 1 2]

Results: a table on stdout and ``bench/results/fuzz_schema.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import timm  # noqa: E402
import torch  # noqa: E402

import gcl_zoo  # noqa: E402,F401
from gcl_zoo.hub import save_model_folder  # noqa: E402
from server_process import ServerProcess  # noqa: E402
from test_serve_schema import fuzz, generated_and_passed  # noqa: E402

KEY = "bench-key"


def main(argv: list[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-examples", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "fuzz_schema.json")
    args = parser.parse_args(argv)
    rows, server_errors = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = f"local-dir:{save_model_folder(timm.create_model('gcl_resnet32_cifar10_lt'), Path(tmp) / 'm')}"
        for keyed in (False, True):
            env = {"GCL_ZOO_API_KEY": KEY if keyed else ""}
            with ServerProcess(["--model", model], env=env) as server:
                for seed in args.seeds:
                    began = time.perf_counter()
                    result = fuzz(server.url, args.max_examples, seed, timeout_s=3600)
                    generated, passed = generated_and_passed(result.stdout)
                    rows.append({"api_key": keyed, "seed": seed, "max_examples": args.max_examples,
                                 "generated": generated, "passed": passed, "exit_code": result.returncode,
                                 "seconds": round(time.perf_counter() - began, 1),
                                 "failures": result.stdout[-3000:] if result.returncode else None})
                    print(f"api key {'yes' if keyed else 'no ':3s} seed {seed}: {passed}/{generated} passed "
                          f"({rows[-1]['seconds']:.0f} s)", flush=True)
                server_errors += server.log().count("Traceback")
    args.out.write_text(json.dumps({"runs": rows, "server_tracebacks": server_errors,
                                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(r["exit_code"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
