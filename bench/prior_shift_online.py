"""The prior estimated online through the server (``bench/prior_shift.py``'s ``ONLINE_ROW``): each shifted set's
images in a random order, 64 a request, on a fresh prior stream, every answer scored as the server gave it.

    taskset -c 0 env OMP_NUM_THREADS=1 python bench/prior_shift_online.py --data-dir ../shared/data

The model is the shipped CIFAR-100-LT r100 checkpoint; the sets are ``bench/prior_shift.py``'s (SADE's five, the
long-tailed profiles over random class orders, Dirichlet draws). The window size is chosen first, on validation
only: the same kinds of sets built from the checkpoint's validation split (20 images per class from the training
images the long-tailed subset leaves unused; the head class has none), streamed in process through the server's
own ``PriorStreams`` for each candidate window, keeping the window with the best mean gain over no prior. Then a
real server (``gcl-zoo serve --prior-window W``) answers every test set once with ``target_prior: "estimated"`` and
once with ``"uniform"`` (the no-prior answer through the same runtime); ``known prior`` comes from the library's
logits as in the offline bench. Images travel as lossless PNGs of the decoded test images. Writes
``bench/results/prior_shift_online.json``.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import platform
import statistics
import sys
from pathlib import Path

import httpx
import numpy as np
import timm
import torch
from PIL import Image
from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(REPO / "tests")]

import gcl_zoo  # noqa: E402,F401
from gcl_zoo.data import CIFARLongTail  # noqa: E402
from gcl_zoo.data.preprocessing import eval_transform  # noqa: E402
from gcl_zoo.prior import adjust_logits, check_prior  # noqa: E402
from prior_shift import ONLINE_ROW, TADE, sade_orders, shifted_sets, subset, test_logits, top1  # noqa: E402
from serve.streams import PriorStreams  # noqa: E402
from server_process import ServerProcess  # noqa: E402
from train.batches import test_batches  # noqa: E402

MODEL = "gcl_resnet32_cifar100_lt.ir100"
PER_REQUEST = 64
WINDOWS = (256, 1024, 4096)
SADE_SETS = ("forward-50", "forward-10", "uniform", "backward-10", "backward-50")


@torch.no_grad()
def validation_logits(model: torch.nn.Module, root: Path) -> tuple:
    """The checkpoint's validation split (as its recipe builds it) and the model's calibrated logits on it."""
    cfg = model.pretrained_cfg
    val = CIFARLongTail(root, model.num_classes, split="val", imb_ratio=100, seed=0, val_per_class=20,
                        transform=eval_transform(cfg))
    images, labels = val.as_tensors()
    data_cfg = {k: cfg[k] for k in ("mean", "std", "input_size")}
    logits = torch.cat([model(x) for x, _ in test_batches(images, labels, val, 1000, torch.device("cpu"),
                                                          data_cfg, 0, 0, 1)])
    return logits.float(), labels


def validation_sets(labels: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """The test sets' kinds built from the validation split: each profile scaled to 20 images per class, a class
    keeping what it has where it has fewer (the head class has none)."""
    per_class = int(torch.bincount(labels, minlength=num_classes).max())
    fake = torch.arange(num_classes).repeat_interleave(per_class)  # shifted_sets reads the per-class size off it
    orders = sade_orders(labels, num_classes)
    return {name: subset(orders, [min(n, len(orders[c])) for c, n in enumerate(counts)])
            for name, counts in shifted_sets(fake, num_classes).items()}


def stream_online(logits: torch.Tensor, source: torch.Tensor, source_images: int, window: int,
                  seed: int) -> torch.Tensor:
    """What the server answers for ``logits`` streamed 64 at a time on a fresh stream: the predicted classes."""
    streams = PriorStreams(window, 1, source, source_images)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(logits)))
    predictions = torch.empty(len(logits), dtype=torch.long)
    for start in range(0, len(order), PER_REQUEST):
        rows = logits[order[start:start + PER_REQUEST]]
        prior = asyncio.run(streams.observe("s", rows))
        predictions[order[start:start + PER_REQUEST]] = adjust_logits(rows, prior, source).argmax(dim=1)
    return predictions


def choose_window(model: torch.nn.Module, root: Path, source: torch.Tensor, source_images: int) -> dict:
    """The window with the best mean online gain over no prior on the validation sets."""
    logits, labels = validation_logits(model, root)
    sets = validation_sets(labels, model.num_classes)
    table = {}
    for window in WINDOWS:
        gains = {}
        for k, (name, pick) in enumerate(sets.items()):
            rows, targets = logits[pick], labels[pick]
            online = 100.0 * float((stream_online(rows, source, source_images, window, k) == targets).float().mean())
            gains[name] = round(online - top1(rows, targets), 2)
        table[window] = {"mean_gain": round(statistics.mean(gains.values()), 3), "worst_gain": min(gains.values()),
                         "gains": gains}
        print(f"validation, window {window}: mean gain {table[window]['mean_gain']:+.2f}, worst "
              f"{table[window]['worst_gain']:+.2f}", flush=True)
    chosen = max(WINDOWS, key=lambda w: table[w]["mean_gain"])
    return {"candidates": table, "chosen_window": chosen, "validation_images": int(len(labels)),
            "set_sizes": {name: int(len(pick)) for name, pick in sets.items()}}


def png(image: np.ndarray) -> str:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def served_predictions(http: httpx.Client, url: str, encoded: list[str], order: np.ndarray, label_index: dict,
                       parameters: dict) -> np.ndarray:
    """The server's top-1 class for every image, sent in ``order``, 64 a request (in that order)."""
    predictions = np.empty(len(order), dtype=np.int64)
    for start in range(0, len(order), PER_REQUEST):
        chunk = order[start:start + PER_REQUEST]
        reply = http.post(f"{url}/predict", json={"inputs": [encoded[i] for i in chunk],
                                                  "parameters": {"top_k": 1, **parameters}})
        reply.raise_for_status()
        predictions[start:start + PER_REQUEST] = [label_index[row[0]["label"]] for row in reply.json()]
    return predictions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "prior_shift_online.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = args.data_dir / "cifar100" / "cifar100.zip"
    model = timm.create_model(MODEL, pretrained=True).eval()
    source, source_images = model.implied_prior.double(), int(model.source_images)
    choice = choose_window(model, root, source, source_images)
    window = choice["chosen_window"]
    logits, labels = test_logits(model, root, model.num_classes)
    test = CIFARLongTail(root, model.num_classes, split="test")
    encoded = [png(image) for image in tqdm(test.data, desc="encoding the test images")]
    orders = sade_orders(labels, model.num_classes)
    table: dict[str, dict] = {}
    with ServerProcess(["--model", MODEL, "--prior-window", str(window), "--log-level", "warning"],
                       env={"GCL_ZOO_API_KEY": ""}) as server, httpx.Client(timeout=300) as http:
        described = http.get(f"{server.url}/models").json()["models"][0]
        label_index = {label: i for i, label in enumerate(described["labels"])}
        sets = shifted_sets(labels, model.num_classes)
        for k, (name, counts) in enumerate(tqdm(sets.items(), desc="shifted test sets")):
            pick = subset(orders, counts).numpy()
            order = pick[np.random.default_rng(k).permutation(len(pick))]
            truth = labels[order].numpy()
            served = {prior: served_predictions(http, server.url, encoded, order, label_index, parameters)
                      for prior, parameters in (("uniform", {"target_prior": "uniform"}),
                                                ("estimated", {"target_prior": "estimated",
                                                               "prior_stream": f"set-{k}"}))}
            rows = logits[torch.from_numpy(pick)]
            known = check_prior(counts, model.num_classes)
            table[name] = {
                "images": int(len(pick)),
                "none (through the server)": round(100.0 * float((served["uniform"] == truth).mean()), 2),
                "none (library)": top1(rows, labels[torch.from_numpy(pick)]),
                "known prior (library)": top1(adjust_logits(rows, known, source), labels[torch.from_numpy(pick)]),
                ONLINE_ROW: round(100.0 * float((served["estimated"] == truth).mean()), 2),
                "TADE (paper, test-agnostic)": TADE.get(MODEL, {}).get(name)}
            row = table[name]
            print(f"{name:24} none {row['none (through the server)']:6.2f}  online {row[ONLINE_ROW]:6.2f}  "
                  f"known {row['known prior (library)']:6.2f}", flush=True)
        runtime = f"{described['runtime']} {described['precision']}"
    sade_mean = statistics.mean(table[name][ONLINE_ROW] for name in SADE_SETS)
    worst = min(table[n][ONLINE_ROW] - table[n]["none (through the server)"] for n in table
                if not n.startswith("dirichlet"))
    record = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__, "model": MODEL,
              "server_runtime": runtime, "images_per_request": PER_REQUEST,
              "window_choice": choice, "prior_window": window,
              "summary": {"sade_mean_online": round(sade_mean, 2),
                          "sade_mean_none": round(statistics.mean(table[n]["none (through the server)"]
                                                                  for n in SADE_SETS), 2),
                          "sade_mean_known": round(statistics.mean(table[n]["known prior (library)"]
                                                                   for n in SADE_SETS), 2),
                          "worst_online_minus_none_sade_and_random_order": round(worst, 2)},
              "results": table}
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["summary"], indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
