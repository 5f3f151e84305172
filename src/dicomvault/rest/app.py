"""The Starlette application: route tables of every REST module, Orthanc's error bodies, access
control, and Orthanc's path normalisation (`/patients/` is `/patients`; dot segments resolved)."""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from dicomvault.context import ServerContext
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.rest import (
    archives,
    attachments,
    changes,
    find,
    images,
    instances,
    jobs,
    metadata,
    modalities,
    queries,
    resources,
    summaries,
    system,
)
from dicomvault.rest.responses import JsonResponse, error_body, error_response, internal_error_response
from dicomvault.rest.security import AccessControl

logger = logging.getLogger(__name__)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        code = ErrorCode.UNKNOWN_RESOURCE
    elif exc.status_code == 405:
        body = error_body(request.method, request.url.path, 405, ErrorCode.BAD_REQUEST, "method not allowed")
        return JsonResponse(body, status_code=405, headers=dict(exc.headers or {}))
    else:
        code = ErrorCode.BAD_REQUEST
    return error_response(request, DicomVaultError(code, exc.detail if exc.status_code != 404 else None))


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DicomVaultError)
    return error_response(request, exc)


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client closed (or was cut off by HttpRequestTimeout) while its body was being read:
    nobody is left to answer, and it is no server error (the reason is logged where it is known)."""
    logger.info("%s %s: the client disconnected before its request body was complete", request.method, request.url.path)
    return Response(status_code=400)


async def _unexpected(request: Request, exc: Exception) -> Response:
    return internal_error_response(request, exc)


def normalise_path(path: str) -> str:
    """Orthanc's reading of a decoded URI path: empty and "." segments dropped (so a trailing
    slash too), ".." resolved, never above the root. `/instances/x/attachments/..%2F..%2Fy` is
    thus routed (and answered 404) as `/instances/y`, as Orthanc does."""
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in ("", "."):
            segments.append(segment)
    return "/" + "/".join(segments)


class _NormalisePath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            normal = normalise_path(path)
            if normal != path:
                scope = dict(scope)
                scope["path"] = normal
                scope["raw_path"] = normal.encode()
        await self.app(scope, receive, send)


def route_table() -> list[BaseRoute]:
    # Specific routes first: Starlette takes the first match.
    return [
        *system.routes(),
        *instances.routes(),
        *images.routes(),
        *metadata.routes(),
        *attachments.routes(),
        *changes.routes(),
        *find.routes(),
        *archives.routes(),
        *jobs.routes(),
        *modalities.routes(),
        *queries.routes(),
        *summaries.routes(),
        *resources.routes(),
    ]


def create_app(context: ServerContext) -> ASGIApp:
    app = Starlette(
        routes=route_table(),
        exception_handlers={
            HTTPException: _http_exception,
            DicomVaultError: _domain_error,
            ClientDisconnect: _client_gone,
            Exception: _unexpected,
        },
    )
    app.router.redirect_slashes = False
    app.state.context = context
    cfg = context.config
    return AccessControl(
        _NormalisePath(app), cfg.remote_access_allowed, cfg.authentication_enabled, cfg.registered_users
    )
