"""Request parsing helpers shared by the REST modules: bounded bodies, Orthanc's query flags."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from dicomvault.context import ServerContext
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.ingest.archives import gunzip, too_large


def context(request: Request) -> ServerContext:
    """The server's services, as `create_app` stored them on the application."""
    ctx: ServerContext = request.app.state.context
    return ctx


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, decoded from gzip if so encoded, never more than `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise too_large(limit)
        except ValueError as exc:
            raise DicomVaultError(ErrorCode.BAD_REQUEST, "invalid Content-Length header") from exc
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding == "gzip":
        # Inflating up to MaximumUploadSize is CPU work: off the event loop, as other requests wait.
        body = await run_in_threadpool(gunzip, body, limit)
    elif encoding not in ("", "identity"):
        raise DicomVaultError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, f"unsupported Content-Encoding: {encoding}")
    return body


def flag(request: Request, name: str) -> bool:
    """Orthanc 1.10.1's flags such as `?expand`: present means true, whatever the value."""
    return name in request.query_params


def int_argument(request: Request, name: str) -> int | None:
    """An integer GET argument (possibly negative); not an integer is Orthanc's "Bad type"."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise DicomVaultError(ErrorCode.BAD_PARAMETER_TYPE, f"argument {name} must be an integer: {raw!r}") from exc
