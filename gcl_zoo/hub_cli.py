"""``gcl-zoo export`` and ``gcl-zoo push``: the command-line face of ``gcl_zoo.hub``.

    gcl-zoo export runs/c10lt100 exported/gcl_resnet32_cifar10_lt.ir100
    gcl-zoo export gcl_resnet32_cifar10_lt.ir100 exported/gcl_resnet32_cifar10_lt.ir100   # a shipped checkpoint
    gcl-zoo export --shipped-cards model_cards                                             # regenerate their cards
    gcl-zoo push exported/gcl_resnet32_cifar10_lt.ir100 --repo-id ORG/NAME [--private] [--revision BRANCH] [--create-pr]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]


def _export_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gcl-zoo export", description=(
        "Write a Hub-ready folder (model.safetensors, config.json, model.onnx, train_hparams.yaml, eval.json, README.md)"
        " from a"
        " training run folder, or from a zoo name whose weights ship in the package."))
    p.add_argument("source", nargs="?", help="training run folder, or a zoo name with shipped weights")
    p.add_argument("out", nargs="?", help="folder to write (created; files in it are replaced)")
    p.add_argument("--zoo-name", help="zoo name with tag for the card (default: run.json's, else inferred)")
    p.add_argument("--repo-id", help="Hub repo the folder will be pushed to, used in the card's usage snippet")
    p.add_argument("--shipped-cards", metavar="DIR", help="regenerate DIR/<name>.md for every shipped checkpoint")
    p.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=None,
                   help="write model.onnx (checked against PyTorch) for OpenVINO / ONNX Runtime servers; default: when"
                        " the exporter (the [openvino] or [onnxruntime] extra) is installed")
    p.add_argument("--int8-calibration", metavar="DATA", type=Path,
                   help="also write model.int8.onnx for `gcl-zoo serve --precision int8`, quantised with activation "
                        "ranges from images under DATA (a folder or .zip of the model's domain, such as its training"
                        " data; only its train/ folder when it has one) and checked on more of them; needs the [int8]"
                        " extra")
    p.add_argument("--int8-images", type=int, default=300, metavar="N",
                   help="calibration images (default 300; 500 more are held out for the check)")
    return p


def _push_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gcl-zoo push", description=(
        "Validate an exported folder and upload it to the Hugging Face Hub (token: HF_TOKEN or `hf auth login`;"
        " server: HF_ENDPOINT)."))
    p.add_argument("folder", help="folder written by `gcl-zoo export`")
    p.add_argument("--repo-id", required=True, help="ORG/NAME of the model repo (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo private (ignored if it exists)")
    p.add_argument("--revision", help="branch to commit to (created from the default branch if missing)")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing directly")
    p.add_argument("--commit-message", help="commit title (default: 'Upload <folder> with gcl-zoo')")
    return p


def _export(argv: list[str]) -> int:
    from . import hub
    from .folders import CONFIG_NAME, read_json
    from .onnx_export import ONNX_NAME, onnx_exporter_missing
    from .quantize import INT8_CONFIG_KEY

    parser = _export_parser()
    args = parser.parse_args(argv)
    if args.shipped_cards:
        written = hub.write_shipped_cards(args.shipped_cards)
        for path in written:
            print(f"wrote {path}")
        if not written:
            print("no checkpoints ship in the package; nothing to write")
        return 0
    if not (args.source and args.out):
        parser.error("give SOURCE and OUT (or --shipped-cards DIR)")
    if not Path(args.source).is_dir() and any(sep in args.source for sep in ("/", "\\")):
        raise FileNotFoundError(f"{args.source}: no such run folder")
    int8 = hub.Int8Calibration(args.int8_calibration, args.int8_images) if args.int8_calibration else None
    if Path(args.source).is_dir():
        out = hub.export_run(args.source, args.out, zoo_name=args.zoo_name, repo_id=args.repo_id, onnx=args.onnx,
                             int8=int8)
    else:
        out = hub.export_embedded(args.source, args.out, repo_id=args.repo_id, onnx=args.onnx, int8=int8)
    print(f"exported {out}: load it with timm.create_model('local-dir:{out}', pretrained=True)")
    if (out / ONNX_NAME).is_file():
        print(f"  with {ONNX_NAME} for `gcl-zoo serve --runtime openvino|onnxruntime`")
    elif args.onnx is None:
        print(f"  without {ONNX_NAME}: {onnx_exporter_missing()}")
    if int8 is not None:
        entry = read_json(out / CONFIG_NAME)[INT8_CONFIG_KEY]
        print(f"  with {entry['file']} for `--precision int8`: top-1 labels of {entry['held_out_images']} held-out "
              f"images {entry['top1_agreement_vs_float32']:.1%} the same as float32")
    return 0


def _push(argv: list[str]) -> int:
    from . import hub

    args = _push_parser().parse_args(argv)
    info = hub.push_folder(args.folder, args.repo_id, private=args.private, revision=args.revision,
                           create_pr=args.create_pr, commit_message=args.commit_message)
    print(f"pull request: {info.pr_url}" if info.pr_url else f"commit: {info.commit_url}")
    return 0


def main(argv: list[str], command: str) -> int:
    """Run ``gcl-zoo export`` or ``gcl-zoo push`` (``command``) with ``argv``; clear errors exit with status 1."""
    from huggingface_hub.errors import HfHubHTTPError

    from .onnx_export import ExportUnavailable

    run = {"export": _export, "push": _push}[command]
    try:
        return run(argv)
    except (ValueError, PermissionError, FileNotFoundError, HfHubHTTPError, ExportUnavailable) as exc:  # InvalidModelFolder too
        print(f"gcl-zoo {command}: error: {exc}", file=sys.stderr)
        return 1
