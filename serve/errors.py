"""Errors a client can cause, and how every one of them answers.

``RequestError`` is raised wherever a request is found wanting (parsing, limits, batching, the runner); it answers
its status with the JSON body ``{"error": "<what is wrong and how to fix it>"}`` (``error_response``).
``install_error_handlers`` makes FastAPI's own errors (validation, HTTP) and unexpected ones answer the same way.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

__all__ = ["RequestError", "error_response", "install_error_handlers"]

log = logging.getLogger(__name__)


class RequestError(Exception):
    """A problem with the client's request: answered with ``status`` and a JSON body ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error body every refusal answers with: ``{"error": "<what is wrong and how to fix it>"}``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _on_request_error(request: Request, exc: RequestError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.headers)


async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(422, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))


async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    headers = getattr(exc, "headers", None)
    if exc.status_code == 405:  # Starlette's Allow names the first route of the path only: name every route's
        allowed = sorted({method for route in request.app.routes if getattr(route, "methods", None)
                          and getattr(route, "path_regex", None) and route.path_regex.match(request.url.path)
                          for method in route.methods})
        headers = {**(headers or {}), "Allow": ", ".join(allowed)}
    return error_response(exc.status_code, str(exc.detail), headers)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error on %s", request.url.path)
    return error_response(500, f"internal error ({type(exc).__name__}); the server logs have the details")


def install_error_handlers(app: FastAPI) -> None:
    """Every error answers ``{"error": ...}``: the client's with its status, anything unexpected with 500."""
    app.add_exception_handler(RequestError, _on_request_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
