"""``gcl-zoo serve``: flags -> ``ServeSettings`` -> uvicorn.

The flags are made from ``ServeSettings``' fields (one per field, its help the field's description), so a new
setting is a new flag without a second list to keep in step. Flags override ``GCL_ZOO_SERVE_<FIELD>`` environment variables, which override the defaults; an invalid value
stops the command with a message naming it, before anything is loaded.
"""
from __future__ import annotations

import argparse
import logging
import sys
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import ValidationError
from pydantic.fields import FieldInfo

from .settings import ENV_PREFIX, ServeSettings

__all__ = ["main", "build_parser", "flag_kwargs", "settings_problems"]


# the flags not named after their field (``--model a b`` fills ``models``), and the metavars that say more than a type
FLAG_NAMES = {"models": "--model"}
METAVARS = {"models": "MODEL", "target_prior": "VALUE", "api_key_env": "VAR"}


def flag_kwargs(name: str, field: FieldInfo) -> dict[str, Any]:
    """argparse keywords for one ``ServeSettings`` field: its type or choices, its description and default as
    help; every flag defaults to None so that unset flags leave environment values and defaults in place."""
    kwargs: dict[str, Any] = {"dest": name, "default": None}
    annotation = field.annotation
    if get_origin(annotation) in (Union, UnionType):  # X | None: the flag takes an X
        annotation = next(arg for arg in get_args(annotation) if arg is not type(None))
    if get_origin(annotation) is Literal:
        kwargs["choices"] = list(get_args(annotation))
    elif get_origin(annotation) is list:
        kwargs.update(action="extend", nargs="+", type=get_args(annotation)[0])
    elif annotation is not str:
        kwargs["type"] = annotation
    if name in METAVARS:
        kwargs["metavar"] = METAVARS[name]
    default = None if field.default_factory is not None else field.default
    shown = f"{default:,}" if isinstance(default, int) and default >= 10_000 else (
        f"{default:g}" if isinstance(default, float) else default)
    kwargs["help"] = field.description + ("" if default is None or "(default" in field.description
                                          else f" (default: {shown})")
    return kwargs


def settings_problems(exc: ValidationError) -> str:
    """What is wrong with the settings, field by field, in one line."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())


def build_parser(prog: str = "gcl-zoo serve") -> argparse.ArgumentParser:
    """One flag per ``ServeSettings`` field (``--max-batch-size`` for ``max_batch_size``), made from the field's
    type, choices and description, plus ``--compile``, short for ``--optimize compile``."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Serve zoo models over HTTP: POST /predict, GET /health /ready /models /metrics /docs.",
        epilog=f"Every option can also be set as an environment variable {ENV_PREFIX}<NAME> "
               f"(for example {ENV_PREFIX}MAX_BATCH_SIZE=32); flags win.")
    for name, field in ServeSettings.model_fields.items():
        parser.add_argument(FLAG_NAMES.get(name, "--" + name.replace("_", "-")), **flag_kwargs(name, field))
    parser.add_argument("--compile", dest="optimize", action="store_const", const="compile",
                        help="same as --optimize compile")
    return parser


def main(argv: list[str] | None = None, command: str = "serve") -> int:
    """Parse flags, validate settings, run uvicorn until interrupted; 1 if the models could not be loaded."""
    args = build_parser(f"gcl-zoo {command}").parse_args(argv)
    try:
        settings = ServeSettings.from_sources(vars(args))
    except ValidationError as exc:
        print(f"gcl-zoo {command}: invalid settings: {settings_problems(exc)}", file=sys.stderr)
        return 2

    import uvicorn

    from .app import create_app
    from .lifecycle import DrainingServer
    from .limits import header_timeout_protocol

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server: uvicorn.Server | None = None

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
