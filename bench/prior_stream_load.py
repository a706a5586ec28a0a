"""What ``target_prior: "estimated"`` costs in served throughput: one server, the same load with and without it, in
alternating windows of one run.

    taskset -c 0 env OMP_NUM_THREADS=1 python bench/prior_stream_load.py

A real server process (``gcl-zoo serve``, default settings: a 1,024-image window per stream) serves the CIFAR-100-LT
checkpoint; CIFAR-100 test images are sent as multipart requests by ``--concurrency`` clients. Each round measures a
window of plain requests (the balanced answer) and a window of requests with ``target_prior=estimated`` on one
stream (every request adds its images and is answered with the stream's estimate over a full window), in turn, so
both meet the same machine load; the median of the per-round ratios is what estimation keeps of the throughput.
Each load (images per request, concurrency) in ``--loads`` is measured so. Writes
``bench/results/prior_stream_load.json`` and ``.log``.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(REPO / "tests")]

from serve_load import Transcript, add_data_and_out, load_cell, load_images, multipart_body  # noqa: E402
from server_process import ServerProcess  # noqa: E402

MODEL = "gcl_resnet32_cifar100_lt.ir100"
ESTIMATED = "target_prior=estimated&prior_stream=bench"


def main(argv: list[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--loads", nargs="+", default=["64x8", "1x32"],
                        help="IMAGESxCONCURRENCY: images per request and clients")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    add_data_and_out(parser)
    args = parser.parse_args(argv)
    transcript = Transcript()
    say = transcript.say
    info = transcript.machine()
    loads = [tuple(int(v) for v in load.split("x")) for load in args.loads]
    images = load_images(args.data, max(n for n, _ in loads), "cifar100")
    results: list[dict[str, Any]] = []
    with ServerProcess(["--model", args.model, "--log-level", "warning"], env={"GCL_ZOO_API_KEY": ""}) as server:
        served = httpx.get(f"{server.url}/models").json()["models"][0]
        say(f"server: {args.model}, {served['runtime']} {served['precision']}, {served['inference_streams']} "
            f"stream(s) x {served['threads_per_stream']} thread(s)")
        for per_request, concurrency in loads:
            body = multipart_body(images[:per_request])
            rounds = []
            for _ in range(args.rounds):
                plain, estimated = (asyncio.run(load_cell(server.url, *body, per_request, concurrency, args.warmup,
                                                          args.seconds, query)) for query in ("", ESTIMATED))
                rounds.append({"plain": plain, "estimated": estimated,
                               "ratio": estimated["images_per_s"] / plain["images_per_s"]})
                say(f"{per_request} images/request, {concurrency} clients: plain {plain['images_per_s']:.0f}/s "
                    f"(p50 {plain['p50_ms']:.1f} ms), estimated {estimated['images_per_s']:.0f}/s (p50 "
                    f"{estimated['p50_ms']:.1f} ms), ratio {rounds[-1]['ratio']:.3f}, errors "
                    f"{plain['errors'] + estimated['errors']}")
            stream = httpx.get(f"{server.url}/models/{args.model}/prior", params={"stream": "bench"}).json()
            median = statistics.median(r["ratio"] for r in rounds)
            results.append({"images_per_request": per_request, "concurrency": concurrency, "rounds": rounds,
                            "median_ratio": median, "stream_images": stream["images"],
                            "last_em_iterations": stream["shift"]["iterations"]})
            say(f"{per_request} images/request, {concurrency} clients: estimation keeps {median:.1%} of the "
                f"throughput (median of {args.rounds} rounds); the stream holds {stream['images']} images")
    transcript.save(args.out, "prior_stream_load", {"machine": info, "model": args.model,
                                                    "seconds_per_window": args.seconds, "loads": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
