"""``gcl-zoo predict``: classify image files on disk without HTTP, with the server's own answers.

A model (zoo name, ``hf-hub:``, ``local-dir:`` or a run folder) and files, folders or glob patterns in; one row per
image out (CSV or JSON Lines, to stdout or ``--out``) with its top-k labels and calibrated scores. Each image takes
the server's path through the same code: the header check (``inspect_image``), the runner's ``prepare``, the
pipeline's ``predict_batch`` and ``output_scores`` with the target prior, so a file scores here as it does over ``/predict`` with the
same settings. The settings are the server's (``ServeSettings``: their checks, defaults and descriptions).
Unreadable files are listed at the end and left out; they make the exit code 1 unless ``--bad-images skip``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import torch
from pydantic import ValidationError
from tqdm import tqdm

from gcl_zoo.devices import resolve_device
from gcl_zoo.folders import CONFIG_NAME, WEIGHTS_NAME

from .cli import flag_kwargs, settings_problems
from .decoding import ImagePayload, inspect_image
from .errors import RequestError
from .image_files import collect_image_files
from .parsing import check_top_k
from .pipeline import predict_batch
from .priors import DEFAULT_OUTPUT_FUNCTION, ESTIMATED, OUTPUT_TRANSFORMS, default_prior, output_scores
from .runner import Execution, ModelRunner, create_runner
from .settings import ServeSettings

__all__ = ["main", "build_parser", "resolve_model_id", "predict_files"]

# the server settings this command takes, and the flags it names them by
SETTINGS_FLAGS = {"device": "--device", "max_batch_size": "--batch-size", "default_top_k": "--top-k",
                  "target_prior": "--target-prior", "runtime": "--runtime", "precision": "--precision",
                  "optimize": "--optimize", "decode_workers": "--workers", "max_pixels": "--max-pixels"}
EXIT_BAD_IMAGES = 1

Row = tuple[Path, list[tuple[str, float]]]  # a file and its (label, score) pairs, best first
Failure = tuple[Path, str]  # a file that could not be classified, and why


def resolve_model_id(spec: str) -> str:
    """The model id the runner loads: a folder (a training run or an exported model) as ``local-dir:``, anything
    else (a zoo name, ``hf-hub:``, ``local-dir:``) as given."""
    path = Path(spec)
    if spec.startswith(("hf-hub:", "local-dir:")) or not path.is_dir():
        return spec
    if not (path / WEIGHTS_NAME).is_file() or not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{spec} holds no model ({WEIGHTS_NAME} + {CONFIG_NAME}); give a finished training "
                                "run (gcl-zoo train --resume RUN finishes one) or a folder gcl-zoo export wrote")
    return f"local-dir:{path}"


def _prepared(runner: ModelRunner, path: Path, max_pixels: int) -> Any | RequestError:
    """One file read, its header checked and pre-processed for ``runner``, as the server's decode pool does."""
    try:
        payload = ImagePayload(str(path), path.read_bytes())
    except OSError as exc:
        return RequestError(422, f"{path} cannot be read ({exc.strerror or exc})")
    try:
        return runner.prepare(payload, inspect_image(payload, max_pixels))
    except RequestError as exc:
        return exc


def _batches(runner: ModelRunner, paths: Sequence[Path], size: int, max_pixels: int,
             pool: ThreadPoolExecutor) -> Iterator[list[tuple[Path, Future[Any]]]]:
    """The files in batches of ``size``, each batch's pre-processing started in ``pool`` while the one before it
    runs through the model."""
    chunks = [paths[start:start + size] for start in range(0, len(paths), size)]

    def submitted(chunk: Sequence[Path]) -> list[tuple[Path, Future[Any]]]:
        return [(path, pool.submit(_prepared, runner, path, max_pixels)) for path in chunk]

    ahead = submitted(chunks[0]) if chunks else []
    for following in [*chunks[1:], None]:
        current, ahead = ahead, (submitted(following) if following is not None else [])
        yield current


def predict_files(runner: ModelRunner, paths: Sequence[Path], prior: torch.Tensor | None, top_k: int,
                  batch_size: int, max_pixels: int, workers: int, function: str = DEFAULT_OUTPUT_FUNCTION,
                  progress: bool = True) -> Iterator[Row | Failure]:
    """One ``Row`` per file that classifies, one ``Failure`` per file that does not, in the files' order."""
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool, \
            tqdm(total=len(paths), unit="image", disable=not progress, file=sys.stderr) as bar:
        for batch in _batches(runner, paths, batch_size, max_pixels, pool):
            prepared = [(path, future.result()) for path, future in batch]
            good = [(path, item) for path, item in prepared if not isinstance(item, RequestError)]
            rows = predict_batch(runner, [item for _, item in good]) if good else []
            outcome: dict[Path, Any] = {path: item for path, item in prepared if isinstance(item, RequestError)}
            outcome.update({path: row for (path, _), row in zip(good, rows)})
            scored = [path for path, _ in prepared if not isinstance(outcome[path], RequestError)]
            if scored:
                scores = output_scores(torch.stack([outcome[p] for p in scored]), runner, prior, function)
                best, indices = torch.topk(scores, top_k, dim=1)
                for path, values, classes in zip(scored, best.tolist(), indices.tolist()):
                    outcome[path] = [(runner.labels[i], s) for s, i in zip(values, classes)]
            for path, _ in prepared:
                result = outcome[path]
                yield (path, result.message) if isinstance(result, RequestError) else (path, result)
            bar.update(len(prepared))


class RowWriter:
    """CSV (``file,label_1,score_1,...``) or JSON Lines (``{"file", "predictions": [{"label", "score"}]}``, the
    server's shape) rows, written as they come."""

    def __init__(self, out: IO[str], fmt: str, top_k: int):
        self.out, self.fmt = out, fmt
        if fmt == "csv":
            self.csv = csv.writer(out, lineterminator="\n")
            self.csv.writerow(["file"] + [f"{kind}_{rank}" for rank in range(1, top_k + 1)
                                          for kind in ("label", "score")])

    def write(self, path: Path, predictions: list[tuple[str, float]]) -> None:
        if self.fmt == "csv":
            self.csv.writerow([str(path)] + [value for pair in predictions for value in (pair[0], repr(pair[1]))])
        else:
            body = {"file": str(path), "predictions": [{"label": label, "score": score} for label, score in predictions]}
            self.out.write(json.dumps(body, separators=(",", ":")) + "\n")
        self.out.flush()


def _output_format(requested: str | None, out: Path | None) -> str:
    if requested:
        return requested
    return "jsonl" if out is not None and out.suffix.lower() in (".jsonl", ".json", ".ndjson") else "csv"


def build_parser(prog: str = "gcl-zoo predict") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Classify image files with a model, as the server would: top-k labels with calibrated "
                               "scores per file, as CSV or JSON Lines.")
    parser.add_argument("model", help="zoo name, hf-hub:ORG/NAME, local-dir:PATH, or a training run's folder")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help=f"image files, folders (searched for {' '.join(('*.jpg', '*.png', '*.webp', '...'))}) or "
                             "quoted glob patterns ('photos/**/*.jpg')")
    parser.add_argument("--out", type=Path, help="write the rows here (default: standard output)")
    parser.add_argument("--format", choices=("csv", "jsonl"),
                        help="csv (file,label_1,score_1,...) or jsonl (default: jsonl for an --out ending in .jsonl "
                             "or .json, else csv)")
    parser.add_argument("--bad-images", choices=("fail", "skip"), default="fail",
                        help="files that cannot be classified are listed and left out either way; fail: exit code 1 "
                             "(default), skip: exit code 0")
    parser.add_argument("--function-to-apply", choices=tuple(OUTPUT_TRANSFORMS), default=DEFAULT_OUTPUT_FUNCTION,
                        help="the scores: softmax (calibrated probabilities, default), sigmoid, or none (logits)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    for name, flag in SETTINGS_FLAGS.items():
        parser.add_argument(flag, **flag_kwargs(name, ServeSettings.model_fields[name]))
    return parser


def load_runner(settings: ServeSettings, model_id: str) -> ModelRunner:
    """``model_id`` loaded and warmed as the server loads it, one batch at a time on all the CPU threads."""
    device = resolve_device(settings.device)
    execution = Execution(settings.runtime, settings.precision, 1, torch.get_num_threads())
    return create_runner(model_id, device, settings.optimize, settings.max_batch_size, execution)


def run(args: argparse.Namespace, command: str) -> int:
    model_id = resolve_model_id(args.model)
    settings = ServeSettings(models=[model_id], **{name: getattr(args, name) for name in SETTINGS_FLAGS
                                                   if getattr(args, name) is not None})
    if settings.target_prior_for(model_id) == ESTIMATED:
        raise ValueError(f"--target-prior {ESTIMATED} is the server's (a stream's traffic, request by request); "
                         f"gcl-zoo {command} takes uniform, train or a JSON file of class weights")
    paths = collect_image_files(args.inputs)
    runner = load_runner(settings, model_id)
    prior = default_prior(settings.target_prior_for(model_id), runner)
    top_k = check_top_k(None, runner.num_classes, settings.default_top_k)
    failures: list[Failure] = []
    with ExitStack() as stack:
        out = stack.enter_context(args.out.open("w", newline="")) if args.out else sys.stdout
        writer = RowWriter(out, _output_format(args.format, args.out), top_k)
        for path, result in predict_files(runner, paths, prior, top_k, settings.max_batch_size, settings.max_pixels,
                                          settings.decode_workers, args.function_to_apply, not args.no_progress):
            if isinstance(result, str):
                failures.append((path, result))
            else:
                writer.write(path, result)
    if failures:
        level = "warning" if args.bad_images == "skip" else "error"
        listed = "\n".join(f"  {why}" for _, why in failures)
        print(f"gcl-zoo {command}: {level}: {len(failures)} of {len(paths)} files could not be classified and were "
              f"left out:\n{listed}" + ("" if args.bad_images == "skip" else
                                        "\nreplace or remove them, or pass --bad-images skip"), file=sys.stderr)
    return EXIT_BAD_IMAGES if failures and args.bad_images == "fail" else 0


def main(argv: list[str] | None = None, command: str = "predict") -> int:
    args = build_parser(f"gcl-zoo {command}").parse_args(argv)
    try:
        return run(args, command)
    except BrokenPipeError:  # the reader stopped early (| head): the rest of the rows are not wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except ValidationError as exc:
        print(f"gcl-zoo {command}: invalid settings: {settings_problems(exc)}", file=sys.stderr)
    except (OSError, ValueError, RuntimeError) as exc:  # WeightsNotCachedError is a RuntimeError
        print(f"gcl-zoo {command}: error: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
