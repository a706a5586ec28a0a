"""Soak benchmark: a real server under mixed good and bad requests at its capacity for ten minutes.

    python bench/soak_serve.py                      # 600 s, 8 clients, the shipped default model, default runtime
    python bench/soak_serve.py --seconds 120 --clients 4 --server-args --runtime torch

Each client sends requests back to back, drawn at random (seeded): multipart batches of real CIFAR-10 test images,
base64 JSON, raw image bodies, and bad ones (not an image, a decompression bomb, an unknown model, a malformed v2
tensor), each of which has one right answer. Per minute: requests and images answered, statuses, latency
percentiles, and the server's resident memory (sampled every second). It passes when every request got its right
status (no transport error, no 5xx) and resident memory after the first minute stays flat (within
``--rss-tolerance``).

Results: a table on stdout, ``bench/results/soak_serve.json`` and ``soak_serve.png`` (memory and p99 per minute).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(REPO / "tests")]

from serve_images import png_header_only  # noqa: E402
from serve_load import load_images, machine, multipart_body  # noqa: E402
from server_process import ServerProcess  # noqa: E402

Request = tuple[str, dict[str, Any], int]  # (kind, httpx.post keyword arguments, the status it must get)


def request_kinds(images: list[bytes]) -> dict[str, tuple[float, Callable[[random.Random], Request]]]:
    """Kind -> (share of the traffic, a function drawing one such request)."""
    def multipart(rng: random.Random) -> Request:
        start = rng.randrange(0, len(images) - 16)
        body, kind = multipart_body(images[start:start + 16])
        return "multipart x16", {"content": body, "headers": {"content-type": kind}}, 200

    def base64_json(rng: random.Random) -> Request:
        chosen = rng.sample(images, 4)
        return "json x4", {"json": {"inputs": [base64.b64encode(b).decode() for b in chosen]}}, 200

    def raw(rng: random.Random) -> Request:
        return "raw x1", {"content": rng.choice(images), "headers": {"content-type": "image/webp"}}, 200

    def not_an_image(rng: random.Random) -> Request:
        return "not an image", {"content": b"plain text " * rng.randint(1, 50),
                                "headers": {"content-type": "application/octet-stream"}}, 422

    def bomb(rng: random.Random) -> Request:
        return "pixel bomb", {"content": png_header_only(20000, 20000), "headers": {"content-type": "image/png"}}, 413

    def unknown_model(rng: random.Random) -> Request:
        return "unknown model", {"json": {"inputs": base64.b64encode(images[0]).decode(), "model": "nope"}}, 404

    return {"multipart": (0.55, multipart), "json": (0.15, base64_json), "raw": (0.10, raw),
            "not_an_image": (0.08, not_an_image), "bomb": (0.06, bomb), "unknown_model": (0.06, unknown_model)}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def soak(url: str, kinds, clients: int, seconds: float, seed: int) -> list[dict[str, Any]]:
    """Every request's (minute, kind, status wanted and got, latency), for ``seconds``."""
    shares = [share for share, _ in kinds.values()]
    makers = [make for _, make in kinds.values()]
    records: list[dict[str, Any]] = []
    began = time.perf_counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        async def client(index: int) -> None:
            rng = random.Random(seed * 1000 + index)
            while time.perf_counter() - began < seconds:
                kind, kwargs, want = rng.choices(makers, shares)[0](rng)
                start = time.perf_counter()
                try:
                    status = (await http.post(f"{url}/predict", **kwargs)).status_code
                except httpx.HTTPError as exc:
                    status = f"transport error: {type(exc).__name__}"
                records.append({"minute": int((start - began) // 60), "kind": kind, "want": want, "got": status,
                                "ms": 1000 * (time.perf_counter() - start)})

        await asyncio.gather(*(client(i) for i in range(clients)))
    return records


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1)))] if ordered else float("nan")


def main(argv: list[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rss-tolerance", type=float, default=0.05, help="allowed memory growth after minute 1")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--server-args", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args(argv)
    images = load_images(args.data, 512)
    kinds = request_kinds(images)
    samples: list[tuple[float, float]] = []
    with ServerProcess(["--log-level", "warning", *args.server_args], env={"GCL_ZOO_API_KEY": ""}) as server:
        described = httpx.get(f"{server.url}/models").json()["models"][0]
        stop = threading.Event()
        began = time.perf_counter()

        def sample_memory() -> None:
            while not stop.is_set():
                samples.append((time.perf_counter() - began, rss_mb(server.proc.pid)))
                time.sleep(1)

        sampler = threading.Thread(target=sample_memory)
        sampler.start()
        try:
            records = asyncio.run(soak(server.url, kinds, args.clients, args.seconds, args.seed))
        finally:
            stop.set()
            sampler.join()
        tracebacks = server.log().count("Traceback")
    minutes = []
    for minute in sorted({r["minute"] for r in records}):
        rows = [r for r in records if r["minute"] == minute]
        rss = [mb for t, mb in samples if minute * 60 <= t < (minute + 1) * 60]
        statuses: dict[str, int] = {}
        for r in rows:
            statuses[str(r["got"])] = statuses.get(str(r["got"]), 0) + 1
        good = [r["ms"] for r in rows if r["want"] == 200]
        minutes.append({"minute": minute + 1, "requests": len(rows), "wrong": sum(r["got"] != r["want"] for r in rows),
                        "statuses": statuses, "p50_ms": percentile(good, 0.5), "p95_ms": percentile(good, 0.95),
                        "p99_ms": percentile(good, 0.99), "rss_mb_max": max(rss, default=float("nan")),
                        "rss_mb_median": statistics.median(rss) if rss else float("nan")})
    wrong = [r for r in records if r["got"] != r["want"]]
    settled = [m["rss_mb_median"] for m in minutes[1:]] or [m["rss_mb_median"] for m in minutes]
    growth = (settled[-1] - settled[0]) / settled[0] if settled else float("nan")
    passed = not wrong and tracebacks == 0 and growth <= args.rss_tolerance
    print(f"server: {described['runtime']} ({described['precision']}), {args.clients} clients, {args.seconds:g} s")
    print(f"{'minute':>6} {'requests':>8} {'wrong':>5} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'RSS MB':>7}  statuses")
    for m in minutes:
        print(f"{m['minute']:>6} {m['requests']:>8} {m['wrong']:>5} {m['p50_ms']:>7.0f} {m['p95_ms']:>7.0f} "
              f"{m['p99_ms']:>7.0f} {m['rss_mb_median']:>7.0f}  {m['statuses']}")
    print(f"{len(records)} requests, {len(wrong)} with the wrong answer, {tracebacks} server tracebacks, memory "
          f"{growth:+.1%} from minute 2 to the last: {'PASS' if passed else 'FAIL'}")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "server": {k: described[k] for k in ("runtime", "precision", "device")},
              "clients": args.clients, "seconds": args.seconds, "seed": args.seed,
              "mix": {name: share for name, (share, _) in kinds.items()}, "minutes": minutes,
              "requests": len(records), "wrong": wrong[:50], "server_tracebacks": tracebacks,
              "rss_growth_after_minute_1": growth, "passed": passed,
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (args.out / "soak_serve.json").write_text(json.dumps(result, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
        top.plot([t / 60 for t, _ in samples], [mb for _, mb in samples])
        top.set_ylabel("server RSS (MB)")
        bottom.plot([m["minute"] for m in minutes], [m["p99_ms"] for m in minutes], marker="o", label="p99")
        bottom.plot([m["minute"] for m in minutes], [m["p50_ms"] for m in minutes], marker="o", label="p50")
        bottom.set_ylabel("latency of good requests (ms)")
        bottom.set_xlabel("minute")
        bottom.legend()
        fig.tight_layout()
        fig.savefig(args.out / "soak_serve.png", dpi=100)
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'gcl-zoo[report]')")
    print(f"wrote {args.out / 'soak_serve.json'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
