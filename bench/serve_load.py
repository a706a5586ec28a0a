"""Load benchmark of the inference server, beside the raw in-process model throughput of the same run.

    python bench/serve_load.py                       # embedded default model (random weights if not shipped)
    python bench/serve_load.py --model local-dir:runs/x --concurrency 1 8 32 --images-per-request 1 16 64

1. Raw throughput: the model's forward pass in this process on a batch of real pre-processed images, eager and
   TorchScript-traced (``--raw-compile`` adds ``torch.compile``), on one thread, on all cores, and as two
   streams sharing the cores (the server's default on CPU), images/s.
2. A real server process (``gcl-zoo serve``) and an async httpx load generator: for every images-per-request x
   concurrency cell, images/s, p50/p99 request latency and the mean batch size the server formed.
3. Head to head: the best cell and the best raw layout in alternating windows (``--rounds``), so both meet
   the same load on a shared machine; the median ratio is the share of the raw throughput the server delivers
   (what HTTP, decoding, pre-processing and batching cost). The load generator shares the machine, so the
   ratio is a lower bound.
4. The raw figures are measured again after the server stops. Every window of the run, raw or served, lasts
   ``--seconds``; the best served window is also set against the best raw window. Cells asking for more
   images than the server queues (``--max-queue``, 1024 by default; 32 clients x 64 images) show its 503s.

Results: a table on stdout, ``bench/results/serve_load.json`` and ``bench/results/serve_load.log``.
Speed does not depend on the weights, so a randomly initialised model is used when no trained one is given.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # tests/server_process.py: the real-server harness

import timm  # noqa: E402

import gcl_zoo  # noqa: E402,F401
from gcl_zoo.devices import cpu_has_fast_bf16, cpu_model  # noqa: E402
from gcl_zoo.hub import save_model_folder  # noqa: E402
from gcl_zoo.models.weights import embedded_weights  # noqa: E402
from serve.decoding import ImagePayload, inspect_image  # noqa: E402
from serve.preprocess import PilPipeline, data_config  # noqa: E402
from serve.runner import ModelRunner  # noqa: E402
from serve.startup import retain_freed_memory  # noqa: E402
from server_process import ServerProcess  # noqa: E402

DEFAULT_MODEL = "gcl_resnet32_cifar10_lt"


def machine() -> dict[str, Any]:
    cpu = cpu_model() or platform.processor() or "unknown"
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_bf16_units": cpu_has_fast_bf16(),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "retain_freed_memory": retain_freed_memory(),  # as the server does, so the raw figures get it too
            "python": platform.python_version(),
            "torch": torch.__version__, "timm": timm.__version__, "platform": platform.platform(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}


class Transcript:
    """Lines printed as they come and kept for the benchmark's ``.log`` file."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def machine(self) -> dict[str, Any]:
        """This machine's description, said first."""
        info = machine()
        self.say(f"machine: {info['cpu']} ({info['cpu_capability']}, bf16 units: {info['cpu_bf16_units']}), "
                 f"{info['cores']} cores, torch {info['torch']} ({info['torch_threads']} "
                 f"threads), timm {info['timm']}, GPU: {info['gpu'] or 'none'}, load average "
                 f"{info['load_average_at_start']}")
        return info

    def save(self, out: Path, name: str, result: dict[str, Any]) -> None:
        """``out/<name>.json`` (the results, stamped with the load average and date) and ``out/<name>.log``."""
        out.mkdir(parents=True, exist_ok=True)
        result = {**result, "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
                  "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / f"{name}.log").write_text("\n".join(self.lines) + "\n")
        print(f"wrote {out / name}.json and {name}.log")


def add_data_and_out(parser: argparse.ArgumentParser) -> None:
    """The flags every serving benchmark takes: where the data is and where the results go."""
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("GCL_ZOO_DATA", REPO.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")


def load_images(data_root: Path, count: int, dataset: str = "cifar10") -> list[bytes]:
    """``count`` CIFAR-10 (or ``dataset``'s) test images (WebP bytes), classes interleaved."""
    archive = data_root / dataset / f"{dataset}.zip"
    if not archive.is_file():
        raise SystemExit(f"no {dataset} zip at {archive}; set GCL_ZOO_DATA or --data to the folder holding {dataset}/")
    with zipfile.ZipFile(archive) as zf:
        names = sorted(n for n in zf.namelist() if n.startswith("test/") and n.endswith(".webp"))
        step = max(1, len(names) // count)
        return [zf.read(n) for n in names[::step][:count]]


def resolve_model(spec: str, workdir: Path) -> (str, str):
    """The model id to serve and a note on its weights (a zoo name without shipped weights is saved randomly
    initialised to a folder, which loads exactly like trained weights)."""
    if spec != DEFAULT_MODEL or embedded_weights(f"{DEFAULT_MODEL}.ir100"):
        return spec, "as given"
    torch.manual_seed(0)
    folder = save_model_folder(timm.create_model(spec), workdir / spec)
    return f"local-dir:{folder}", "random init (embedded weights not shipped yet; speed does not depend on them)"


def throughput(forward: Callable[[torch.Tensor], Any], batch: torch.Tensor, seconds: float, streams: int = 1,
               threads: int = 1) -> float:
    """Images/s over one window of ``seconds`` (as long as a server cell's), with ``streams`` threads running
    batches at once, each on ``threads`` intra-op threads (set per thread, as the server does)."""

    def stream(until: float) -> int:
        torch.set_num_threads(threads)
        done = 0
        with torch.inference_mode():
            while time.perf_counter() < until:
                forward(batch)
                done += batch.shape[0]
        return done

    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(stream, [time.perf_counter() + 0.2] * streams))  # warm every thread
        start = time.perf_counter()
        done = sum(pool.map(stream, [start + seconds] * streams))
        return done / (time.perf_counter() - start)


def raw_forwards(model_id: str, images: Sequence[bytes], batch_size: int,
                 with_compile: bool) -> tuple[torch.Tensor, dict[str, Callable[[torch.Tensor], Any]]]:
    """A batch of real, pre-processed images and the model's forward pass per optimisation."""
    model = timm.create_model(model_id, pretrained=True).eval()
    pipeline = PilPipeline(data_config(model), torch.device("cpu"))
    payloads = [ImagePayload(str(i), images[i % len(images)]) for i in range(batch_size)]
    items = [pipeline.prepare(payload, inspect_image(payload, max_pixels=sys.maxsize)) for payload in payloads]
    batch, _ = pipeline.collate(items, torch.device("cpu"))
    modes = ["eager", "trace"] + (["compile"] * with_compile)
    return batch, {mode: ModelRunner(model_id, model, torch.device("cpu"), optimize=mode,
                                     max_batch_size=batch_size).forward for mode in modes}


def layouts(mode: str, cores: int) -> dict[str, tuple[int, int]]:
    """Ways of using the cores, by name: one stream on 1 thread or on all, and (traced, on 2+ cores) two streams
    sharing them as the server runs them (``trace/2x1t``: two streams of one thread each)."""
    shapes = sorted({(1, 1), (1, cores)} | ({(2, cores // 2)} if mode == "trace" and cores >= 2 else set()))
    return {(f"{mode}/{t}t" if s == 1 else f"{mode}/{s}x{t}t"): (s, t) for s, t in shapes}


def raw_throughput(batch: torch.Tensor, forwards: dict[str, Callable[[torch.Tensor], Any]],
                   seconds: float) -> dict[str, float]:
    """Forward-pass images/s in this process, per optimisation and layout."""
    results = {}
    for mode, forward in forwards.items():
        for key, (streams, threads) in layouts(mode, torch.get_num_threads()).items():
            results[key] = throughput(forward, batch, seconds, streams, threads)
            print(f"raw {key:12s} batch {batch.shape[0]}: {results[key]:8.0f} images/s", flush=True)
    return results


def head_to_head(rounds: int, seconds: float, raw: Callable[[], float], served: Callable[[], float]) -> dict[str, Any]:
    """The server against the raw forward pass in alternating windows, so both see the same machine load;
    the median of the per-round ratios is the server's share of the raw throughput."""
    pairs = [(raw(), served()) for _ in range(rounds)]
    ratios = [s / r for r, s in pairs]
    return {"rounds": rounds, "seconds": seconds, "raw_images_per_s": [r for r, _ in pairs],
            "server_images_per_s": [s for _, s in pairs], "ratios": ratios, "median_ratio": statistics.median(ratios)}


def multipart_body(images: Sequence[bytes]) -> (bytes, str):
    """One pre-encoded multipart body, so the load generator spends its CPU on sending, not encoding."""
    boundary = uuid.uuid4().hex
    parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{i}.webp\"\r\n"
             f"Content-Type: image/webp\r\n\r\n".encode() + data + b"\r\n" for i, data in enumerate(images)]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def batch_stats(url: str) -> (float, float):
    text = httpx.get(f"{url}/metrics").text
    values = {}
    for line in text.splitlines():
        for key in ("gcl_serve_batch_size_sum", "gcl_serve_batch_size_count"):
            if line.startswith(key + "{"):
                values[key] = values.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return values.get("gcl_serve_batch_size_sum", 0.0), values.get("gcl_serve_batch_size_count", 0.0)


async def load_cell(url: str, body: bytes, content_type: str, images_per_request: int, concurrency: int,
                    warmup_s: float, seconds: float, query: str = "") -> dict[str, Any]:
    """``concurrency`` clients sending the same request back to back (``query``: request parameters as a query
    string, e.g. ``target_prior=estimated``); measured after ``warmup_s``."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        async def client(until: float, record: bool) -> None:
            while time.perf_counter() < until:
                start = time.perf_counter()
                response = await http.post(f"{url}/predict{'?' + query if query else ''}", content=body,
                                           headers={"content-type": content_type})
                if record:
                    latencies.append(time.perf_counter() - start)
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        await asyncio.gather(*(client(time.perf_counter() + warmup_s, False) for _ in range(concurrency)))
        before = batch_stats(url)
        start = time.perf_counter()
        await asyncio.gather(*(client(start + seconds, True) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        after = batch_stats(url)
    latencies.sort()
    ok = statuses.get(200, 0)
    batches = after[1] - before[1]
    return {
        "images_per_request": images_per_request, "concurrency": concurrency, "requests": len(latencies),
        "rejected_503": statuses.get(503, 0), "errors": len(latencies) - ok - statuses.get(503, 0),
        "images_per_s": ok * images_per_request / elapsed,
        "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "mean_batch": (after[0] - before[0]) / batches if batches else 0.0,
    }


def main(argv: list[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model to serve (zoo name, hf-hub:, local-dir:)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--images-per-request", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each cell")
    parser.add_argument("--rounds", type=int, default=5, help="alternating raw/server rounds of the head-to-head")
    parser.add_argument("--raw-batch", type=int, default=64, help="batch size of the raw forward-pass figures")
    parser.add_argument("--raw-compile", action="store_true", help="also measure torch.compile (about 30 s more)")
    parser.add_argument("--server-args", nargs=argparse.REMAINDER, default=[],
                        help="extra gcl-zoo serve flags (last on the line), e.g. --server-args --optimize eager")
    add_data_and_out(parser)
    args = parser.parse_args(argv)

    transcript = Transcript()
    say = transcript.say
    info = transcript.machine()
    images = load_images(args.data, max(args.images_per_request + [args.raw_batch]))
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        model_id, weights = resolve_model(args.model, Path(tmp))
        say(f"model: {args.model} ({weights})")
        batch, forwards = raw_forwards(model_id, images, args.raw_batch, args.raw_compile)
        raw_runs = {"before": raw_throughput(batch, forwards, args.seconds)}
        cells = []
        server_args = ["--model", model_id, "--log-level", "warning", *args.server_args]
        with ServerProcess(server_args) as server:
            served = httpx.get(f"{server.url}/models").json()["models"][0]
            optimization = (f"{served['optimization']}, {served['inference_streams']} stream(s) x "
                            f"{served['threads_per_stream']} thread(s)")
            say(f"server: gcl-zoo serve {' '.join(args.server_args) or '(defaults)'}; optimisation: {optimization}")
            say(f"{'img/req':>7} {'conc':>5} {'requests':>8} {'503s':>5} {'errors':>6} {'images/s':>9} {'p50 ms':>8} "
                f"{'p99 ms':>8} {'batch':>6} {'vs raw before':>13}")
            bodies = {n: multipart_body(images[:n]) for n in args.images_per_request}
            for per_request in args.images_per_request:
                for concurrency in args.concurrency:
                    cell = asyncio.run(load_cell(server.url, *bodies[per_request], per_request, concurrency,
                                                 args.warmup, args.seconds))
                    cell["ratio_to_raw_before"] = cell["images_per_s"] / max(raw_runs["before"].values())
                    cells.append(cell)
                    say(f"{per_request:>7} {concurrency:>5} {cell['requests']:>8} {cell['rejected_503']:>5} "
                        f"{cell['errors']:>6} "
                        f"{cell['images_per_s']:>9.0f} {cell['p50_ms']:>8.1f} {cell['p99_ms']:>8.1f} "
                        f"{cell['mean_batch']:>6.1f} {cell['ratio_to_raw_before']:>13.0%}")
            best = max(cells, key=lambda c: c["images_per_s"])
            raw_key = max(raw_runs["before"], key=raw_runs["before"].get)
            streams, threads = layouts(raw_key.split("/")[0], torch.get_num_threads())[raw_key]
            duel = head_to_head(
                args.rounds, args.seconds,
                raw=lambda: throughput(forwards[raw_key.split("/")[0]], batch, args.seconds, streams, threads),
                served=lambda: asyncio.run(load_cell(server.url, *bodies[best["images_per_request"]],
                                                     best["images_per_request"], best["concurrency"], args.warmup,
                                                     args.seconds))["images_per_s"])
            duel.update(raw_layout=raw_key, images_per_request=best["images_per_request"],
                        concurrency=best["concurrency"])
        # measured again once the server is gone: the machine may be shared, and the best figure counts
        raw_runs["after"] = raw_throughput(batch, forwards, args.seconds)
    for when, runs in raw_runs.items():
        say(f"raw in-process forward ({when} the server), batch {args.raw_batch}: "
            + ", ".join(f"{m} {v:.0f}/s" for m, v in runs.items()))
    say(f"head to head, {duel['rounds']} alternating rounds of {duel['seconds']:g} s ({duel['raw_layout']} vs the server "
        f"at {duel['images_per_request']} images/request, concurrency {duel['concurrency']}), server/raw: "
        + ", ".join(f"{s:.0f}/{r:.0f}" for r, s in zip(duel["raw_images_per_s"], duel["server_images_per_s"]))
        + f" images/s; the server delivers {duel['median_ratio']:.0%} of the raw forward pass (median)")
    # every window of the run, raw or served, is as long as every other: the best of each side, set side by side
    raw_windows = [(f"{m} {w} the server", v) for w, r in raw_runs.items() for m, v in r.items()] + [
        (f"{duel['raw_layout']} in head-to-head round {i + 1}", v) for i, v in enumerate(duel["raw_images_per_s"])]
    served_windows = [(f"{c['images_per_request']} images/request, concurrency {c['concurrency']}", c["images_per_s"])
                      for c in cells] + [(f"head-to-head round {i + 1}", v)
                                         for i, v in enumerate(duel["server_images_per_s"])]
    best_raw = max(raw_windows, key=lambda w: w[1])
    best_served = max(served_windows, key=lambda w: w[1])
    best_ratio = best_served[1] / best_raw[1]
    say(f"best server window: {best_served[1]:.0f} images/s ({best_served[0]}) = {best_ratio:.0%} of the best raw "
        f"window ({best_raw[0]}, {best_raw[1]:.0f} images/s); server optimisation: {optimization}")
    result = {"machine": info, "model": args.model, "weights": weights, "server_args": args.server_args,
              "server_optimization": optimization, "raw_batch": args.raw_batch, "raw_images_per_s": raw_runs,
              "best_raw": {"where": best_raw[0], "images_per_s": best_raw[1]}, "cells": cells,
              "best_server": {"where": best_served[0], "images_per_s": best_served[1], "ratio_to_best_raw": best_ratio},
              "head_to_head": duel, "seconds_per_window": args.seconds}
    transcript.save(args.out, "serve_load", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
