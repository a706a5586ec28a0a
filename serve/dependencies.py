"""What the routes depend on: the server's state (``get_state``) and, for the routes that classify, the API key.

Both are coroutines, so FastAPI runs them on the event loop: a plain function would cost every request a hop to
a worker thread.
"""
from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from .errors import RequestError
from .state import ServerState

__all__ = ["get_state", "State", "require_api_key"]


async def get_state(request: Request) -> ServerState:
    """The ``ServerState`` the app factory attached to the application."""
    return request.app.state.server


State = Annotated[ServerState, Depends(get_state)]

_bearer = HTTPBearer(auto_error=False, description="the API key as a bearer token")
_header_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="the API key")


async def require_api_key(state: State, credentials: HTTPAuthorizationCredentials | None = Security(_bearer),
                          key: str | None = Security(_header_key)) -> None:
    """When an API key is configured (``ServeSettings.api_key``, read from its environment variable on every
    request, its one source), the routes that classify need it as a bearer token or an X-API-Key header."""
    expected = state.settings.api_key
    if expected is None:
        return
    given = key or (credentials.credentials if credentials else None)
    if not given:
        raise RequestError(401, "this server needs an API key; send 'Authorization: Bearer <key>' or "
                                "'X-API-Key: <key>'", headers={"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise RequestError(401, "wrong API key; check the key the server was started with",
                           headers={"WWW-Authenticate": "Bearer"})
