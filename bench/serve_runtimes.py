"""The server's CPU runtimes side by side: raw forward pass and served throughput per runtime, in one run.

    python bench/serve_runtimes.py                                   # shipped default model, 64 images a request
    python bench/serve_runtimes.py --rounds 5 --seconds 4 --concurrency 8

For each runtime configuration (PyTorch TorchScript, OpenVINO at auto precision, OpenVINO float32, ONNX
Runtime, and OpenVINO and ONNX Runtime running the int8 graph that ``gcl-zoo export --int8-calibration`` writes,
calibrated here on CIFAR-10 training images; the int8 ones need the ``[int8]`` extra) the benchmark
1. measures the raw figure: the runtime's forward pass in this process on a batch of real pre-processed CIFAR-10
   test images, laid out as the server runs it (two streams of one thread on two cores);
2. starts a real server (``gcl-zoo serve --runtime ...``); all servers are up at once and idle while another is
   measured;
3. alternates rounds: each configuration's raw window, then its served window (multipart requests of
   ``--images-per-request`` images from ``--concurrency`` clients), so every configuration meets the same
   machine load; ratios are taken within a round and their median reported;
4. profiles where a served image's CPU time goes: the server process's CPU seconds per image (from /proc),
   split into the model (this runtime's single-thread forward), decode + resize (``prepare``), batching and
   normalisation (``collate``), multipart parsing, building the answer (top-k, JSON), and the rest (HTTP, the
   event loop, the hand-offs between threads); and the load generator's own CPU seconds per image, which shares
   the machine;
5. reports top-1 agreement with PyTorch float32 on real test images, and the largest probability difference.

Results: a table on stdout, ``bench/results/serve_runtimes.json`` and ``serve_runtimes.log``.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(REPO / "tests")]

import timm  # noqa: E402

import gcl_zoo  # noqa: E402,F401
from gcl_zoo.hub import Int8Calibration, export_embedded  # noqa: E402
from gcl_zoo.quantize import int8_quantizer_missing  # noqa: E402
from serve.decoding import ImagePayload, inspect_image  # noqa: E402
from serve.multipart import parse_form  # noqa: E402
from serve.pipeline import predict_batch  # noqa: E402
from serve.predict import PredictReply, predict_response  # noqa: E402
from serve.runner import Execution, ModelRunner  # noqa: E402
from serve.runtimes import runtime_installed  # noqa: E402
from serve_load import Transcript, add_data_and_out, load_cell, load_images, multipart_body, throughput  # noqa: E402
from server_process import ServerProcess  # noqa: E402

# name -> (runtime, precision)
CONFIGS = {"torch (TorchScript)": ("torch", "auto"), "openvino (auto precision)": ("openvino", "auto"),
           "openvino f32": ("openvino", "f32"), "onnxruntime": ("onnxruntime", "auto"),
           "openvino int8": ("openvino", "int8"), "onnxruntime int8": ("onnxruntime", "int8")}
BASELINE = "torch (TorchScript)"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prepared(runner: ModelRunner, images: Sequence[bytes]) -> tuple[list[Any], float, float]:
    """The images prepared by the runner's pipeline, and the single-thread seconds per image that ``prepare``
    (header check, decode, resize) and ``collate`` (batching, normalisation) took."""
    payloads = [ImagePayload(str(i), data) for i, data in enumerate(images)]
    runner.prepare(payloads[0], inspect_image(payloads[0], max_pixels=sys.maxsize))  # loads the decoder, untimed
    start = time.perf_counter()
    for _ in range(5):
        items = [runner.prepare(p, inspect_image(p, max_pixels=sys.maxsize)) for p in payloads]
    prepare_s = (time.perf_counter() - start) / (5 * len(images))
    start = time.perf_counter()
    for _ in range(20):
        runner.pipeline.collate(items, runner.device)
    collate_s = (time.perf_counter() - start) / (20 * len(images))
    return items, prepare_s, collate_s


def request_costs(runner: ModelRunner, body: tuple[bytes, str], images: int, rounds: int = 50) -> dict[str, float]:
    """Single-thread seconds per image of the event loop's own steps for one request: parsing the multipart body,
    and building the answer (top-k, JSON) from the batch's logits."""
    start = time.perf_counter()
    for _ in range(rounds):
        parts = parse_form(*body, max_files=images, max_fields=3)
    multipart_s = (time.perf_counter() - start) / (rounds * images)
    assert len(parts) == images
    scores = torch.randn(images, runner.num_classes).softmax(dim=1)
    start = time.perf_counter()
    for _ in range(rounds):
        predict_response(runner.model_id, scores, runner.labels, 5, PredictReply(hf_schema=False, single=False))
    return {"multipart": multipart_s, "answer": (time.perf_counter() - start) / (rounds * images)}


def probabilities(runner: ModelRunner, items: Sequence[Any]) -> torch.Tensor:
    rows = []
    for start in range(0, len(items), 64):
        rows += predict_batch(runner, items[start:start + 64])
    return torch.stack(rows).softmax(dim=1)


def served_window(server: ServerProcess, body: tuple[bytes, str], per_request: int, concurrency: int,
                  warmup: float, seconds: float) -> dict[str, Any]:
    """One served window, with the CPU seconds per image of the server and of this load generator."""
    server_before, client_before = cpu_seconds(server.proc.pid), time.process_time()
    cell = asyncio.run(load_cell(server.url, *body, per_request, concurrency, warmup, seconds))
    images = max(1, cell["images_per_s"] * seconds + cell["images_per_s"] * warmup)  # warm-up requests count too
    cell["server_cpu_ms_per_image"] = 1000 * (cpu_seconds(server.proc.pid) - server_before) / images
    cell["client_cpu_ms_per_image"] = 1000 * (time.process_time() - client_before) / images
    return cell


def main(argv: list[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gcl_resnet32_cifar10_lt", help="zoo name, hf-hub: or local-dir:")
    parser.add_argument("--images-per-request", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per window")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each served window")
    parser.add_argument("--agreement-images", type=int, default=2000, help="real test images for top-1 agreement")
    add_data_and_out(parser)
    args = parser.parse_args(argv)
    transcript = Transcript()
    say = transcript.say
    info = transcript.machine()
    configs = {name: spec for name, spec in CONFIGS.items() if runtime_installed(spec[0])
               and (spec[1] != "int8" or int8_quantizer_missing() is None)}
    images = load_images(args.data, max(args.images_per_request, args.agreement_images))
    model = timm.create_model(args.model, pretrained=True).eval()
    model_ids = {name: args.model for name in configs}
    if any(precision == "int8" for _, precision in configs.values()):
        folder = Path(tempfile.mkdtemp(prefix="gcl-zoo-int8-")) / "model"
        shipped = f"{model.pretrained_cfg['architecture']}.{model.pretrained_cfg['tag']}"
        export_embedded(shipped, folder, int8=Int8Calibration(args.data / "cifar10" / "cifar10.zip"))
        model_ids.update({name: f"local-dir:{folder}" for name, (_, precision) in configs.items() if precision == "int8"})
    cpu = torch.device("cpu")
    runners = {name: ModelRunner(model_ids[name], model, cpu, execution=Execution(runtime, precision, 2, 1))
               for name, (runtime, precision) in configs.items()}
    reference = ModelRunner(args.model, model, cpu, optimize="eager", execution=Execution("torch", "f32"))
    items, prepare_s, collate_s = prepared(reference, images[:args.images_per_request])
    batch, _ = reference.pipeline.collate(items, cpu)
    all_items = prepared(reference, images[:args.agreement_images])[0]
    expected = probabilities(reference, all_items)
    per_config: dict[str, dict[str, Any]] = {}
    for name, runner in runners.items():
        probs = probabilities(runner, all_items)
        per_config[name] = {
            "runtime": runner.runtime, "precision": runner.precision, "precision_speeds": runner.precision_speeds,
            "top1_agreement_vs_pytorch_f32": float((probs.argmax(1) == expected.argmax(1)).float().mean()),
            "max_abs_prob_diff": float((probs - expected).abs().max()),
            "model_ms_per_image_1_thread": 1000 / throughput(runner.forward, batch, args.seconds / 2, 1, 1),
            "raw_images_per_s": [], "served": []}
    body = multipart_body(images[:args.images_per_request])
    request_s = request_costs(reference, body, args.images_per_request)
    servers = {}
    try:
        for name, (runtime, precision) in configs.items():
            servers[name] = ServerProcess(["--model", model_ids[name], "--runtime", runtime, "--precision", precision,
                                           "--log-level", "warning"], env={"GCL_ZOO_API_KEY": ""}).start()
        for round_ in range(args.rounds):
            for name, runner in runners.items():
                raw = throughput(runner.forward, batch, args.seconds, streams=2, threads=1)
                cell = served_window(servers[name], body, args.images_per_request, args.concurrency, args.warmup,
                                     args.seconds)
                per_config[name]["raw_images_per_s"].append(raw)
                per_config[name]["served"].append(cell)
                say(f"round {round_ + 1} {name:30s} raw {raw:7.0f}/s  served {cell['images_per_s']:7.0f}/s "
                    f"(p50 {cell['p50_ms']:.0f} ms, batch {cell['mean_batch']:.1f}, 503s {cell['rejected_503']})")
    finally:
        for server in servers.values():
            server.stop()

    for result in per_config.values():
        served = [c["images_per_s"] for c in result["served"]]
        baseline = [c["images_per_s"] for c in per_config[BASELINE]["served"]] if BASELINE in per_config else served
        result["served_images_per_s_median"] = statistics.median(served)
        result["raw_images_per_s_median"] = statistics.median(result["raw_images_per_s"])
        result["served_share_of_raw"] = statistics.median(s / r for s, r in zip(served, result["raw_images_per_s"]))
        result["served_vs_torchscript_served"] = statistics.median(s / b for s, b in zip(served, baseline))
        server_ms = statistics.median(c["server_cpu_ms_per_image"] for c in result["served"])
        model_ms = result["model_ms_per_image_1_thread"]
        stages = {"model": model_ms, "decode_resize": 1000 * prepare_s, "collate_normalize": 1000 * collate_s,
                  "multipart": 1000 * request_s["multipart"], "answer": 1000 * request_s["answer"]}
        result["server_cpu_ms_per_image"] = {"total": server_ms, **stages,
                                             "http_loop_threads": server_ms - sum(stages.values())}
        result["client_cpu_ms_per_image"] = statistics.median(c["client_cpu_ms_per_image"] for c in result["served"])

    say()
    say(f"{args.images_per_request} images a request, {args.concurrency} clients, {args.rounds} alternating rounds of "
        f"{args.seconds:g} s; medians. CPU ms per served image: server (model / decode+resize / collate / multipart "
        "/ answer / HTTP, loop and threads) and load generator")
    say(f"{'runtime':30s} {'precision':>9} {'raw/s':>7} {'served/s':>9} {'vs TS served':>12} {'of raw':>7} "
        f"{'agree':>7} {'server ms':>43} {'client ms':>9}")
    for name, r in per_config.items():
        ms = r["server_cpu_ms_per_image"]
        split = f"{ms['total']:.3f} (" + "/".join(f"{ms[k]:.3f}" for k in ("model", "decode_resize", "collate_normalize",
                                                                          "multipart", "answer", "http_loop_threads")) + ")"
        say(f"{name:30s} {r['precision']:>9} {r['raw_images_per_s_median']:7.0f} {r['served_images_per_s_median']:9.0f} "
            f"{r['served_vs_torchscript_served']:11.2f}x {r['served_share_of_raw']:7.0%} "
            f"{r['top1_agreement_vs_pytorch_f32']:7.2%} {split:>43} {r['client_cpu_ms_per_image']:9.3f}")
    result = {"machine": info, "model": args.model, "images_per_request": args.images_per_request,
              "concurrency": args.concurrency, "rounds": args.rounds, "seconds_per_window": args.seconds,
              "agreement_images": len(all_items), "configs": per_config}
    transcript.save(args.out, "serve_runtimes", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
