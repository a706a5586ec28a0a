"""``gcl-zoo serve``: flags -> ``ServeSettings`` -> uvicorn.

Flags override ``GCL_ZOO_SERVE_<FIELD>`` environment variables, which override the defaults; an invalid value
stops the command with a message naming it, before anything is loaded.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from pydantic import ValidationError

from .settings import DEFAULT_MODEL, ENV_PREFIX, ServeSettings

__all__ = ["main", "build_parser"]


def build_parser(prog: str = "gcl-zoo serve") -> argparse.ArgumentParser:
    """Every flag defaults to None so that unset flags leave environment values and defaults in place."""
    fields = ServeSettings.model_fields
    parser = argparse.ArgumentParser(
        prog=prog, description="Serve zoo models over HTTP: POST /predict, GET /health /ready /models /metrics /docs.",
        epilog=f"Every option can also be set as an environment variable {ENV_PREFIX}<NAME> "
               f"(for example {ENV_PREFIX}MAX_BATCH_SIZE=32); flags win.")
    add = parser.add_argument
    add("--model", dest="models", action="extend", nargs="+", metavar="MODEL",
        help=f"zoo name, hf-hub:ORG/NAME or local-dir:PATH; repeat or list several to serve them side by side "
             f"(the first is the default; default: {DEFAULT_MODEL})")
    add("--device", choices=["auto", "cpu", "cuda"], help="where the models run (default: auto, CUDA when present)")
    add("--host", help="address to bind (default: 127.0.0.1; 0.0.0.0 for every interface)")
    add("--port", type=int, help="port (default: 8000)")
    add("--max-batch-size", type=int, help=f"most images per forward pass (default: {fields['max_batch_size'].default})")
    add("--max-wait-ms", type=float, help=f"longest a batch waits to fill (default: {fields['max_wait_ms'].default})")
    add("--max-queue", type=int, help=f"most images queued per model before 503 (default: {fields['max_queue'].default})")
    add("--request-timeout-s", type=float,
        help=f"answer 504 after this long (default: {fields['request_timeout_s'].default})")
    add("--max-body-mb", type=float, help=f"largest request body in MB (default: {fields['max_body_mb'].default})")
    add("--max-images", type=int, help=f"most images per request (default: {fields['max_images'].default})")
    add("--max-pixels", type=int, help=f"most pixels per image (default: {fields['max_pixels'].default:,})")
    add("--max-inflight-mb", type=float, help="most MB of request bodies held at once; beyond, 503 with Retry-After "
                                              f"(default: {fields['max_inflight_mb'].default:g})")
    add("--header-timeout-s", type=float, help="408 and close when a request's headers take longer "
                                               f"(default: {fields['header_timeout_s'].default:g})")
    add("--body-timeout-s", type=float, help="408 when a request's body takes longer "
                                             f"(default: {fields['body_timeout_s'].default:g})")
    add("--shutdown-grace-s", type=float, help="on SIGTERM, how long requests in flight may still finish "
                                               f"(default: {fields['shutdown_grace_s'].default:g})")
    add("--default-top-k", type=int, help=f"labels per image when a request names no top_k "
                                          f"(default: {fields['default_top_k'].default})")
    add("--target-prior", metavar="VALUE",
        help="the deployment's class prior, where a request names no target_prior: uniform (default: the scores as "
             "calibrated), train (each model's training class counts) or a JSON file holding a list of class weights "
             "for every model, or a mapping from model id to a list, uniform or train")
    add("--api-key-env", metavar="VAR",
        help="environment variable holding the API key /predict requires; unset or empty variable: no key "
             "(default: GCL_ZOO_API_KEY)")
    add("--optimize", choices=["auto", "eager", "trace", "compile"],
        help="auto (default): TorchScript trace on CPU, eager bf16 on CUDA; compile: torch.compile per batch bucket")
    add("--compile", dest="optimize", action="store_const", const="compile", help="same as --optimize compile")
    add("--runtime", choices=["auto", "torch", "openvino", "onnxruntime"],
        help="auto (default): OpenVINO on CPU when installed (pip install 'gcl-zoo[openvino]'), else PyTorch; "
             "onnxruntime: ONNX Runtime (the [onnxruntime] extra); both run the model's ONNX graph on the CPU")
    add("--precision", choices=["auto", "f32", "int8"],
        help="auto (default): bf16 where it pays (OpenVINO: timed against float32 at start-up, kept only when at "
             "least 1.1x faster; CUDA: bf16 autocast); f32: exact float32; int8: the folder's model.int8.onnx "
             "(gcl-zoo export --int8-calibration) in OpenVINO or ONNX Runtime")
    add("--inference-streams", type=int,
        help="batches computed at once, each on an equal share of the cores, on CUDA each on its own CUDA stream "
             "(default: 2 on CPU, 1 with --compile or on CUDA)")
    add("--decode-workers", type=int, help="threads decoding images (default: up to 4)")
    add("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    return parser


def main(argv: Optional[List[str]] = None, command: str = "serve") -> int:
    """Parse flags, validate settings, run uvicorn until interrupted; 1 if the models could not be loaded."""
    args = build_parser(f"gcl-zoo {command}").parse_args(argv)
    try:
        settings = ServeSettings.from_sources(vars(args))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        print(f"gcl-zoo {command}: invalid settings: {problems}", file=sys.stderr)
        return 2

    import uvicorn

    from .app import create_app
    from .lifecycle import DrainingServer
    from .limits import header_timeout_protocol

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server: Optional[uvicorn.Server] = None

    def stop(message: str) -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_load_failure=stop)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            timeout_graceful_shutdown=5, http=header_timeout_protocol(settings.header_timeout_s))
    server = DrainingServer(config, app.state.server, settings.shutdown_grace_s)
    server.run()
    if app.state.server.load_error:
        print(f"gcl-zoo {command}: could not load the models: {app.state.server.load_error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
