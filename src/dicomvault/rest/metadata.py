"""REST routes of metadata, at the four levels: `/{level}/{id}/metadata` (names, or name -> value
with `?expand`) and `/{level}/{id}/metadata/{name}` (GET with `ETag` and `If-None-Match`, PUT and
DELETE with `If-Match`). Also the request helpers the attachment routes share: names from the
configuration, revision headers, and Orthanc's plain-text answers (`text/plain`, no charset).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomvault.enums import ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.find.metadata import (
    ETag,
    Names,
    metadata_etag,
    metadata_listing,
    metadata_value,
    parse_etag,
    require_user_type,
)
from dicomvault.index.transactions import ReadTx
from dicomvault.ingest.metadata import MetadataWriter
from dicomvault.ingest.store import now_iso
from dicomvault.rest.requests import context, flag, read_body
from dicomvault.rest.responses import JsonResponse

logger = logging.getLogger(__name__)

Handler = Callable[[Request, ResourceType], Awaitable[Response]]


# ---- shared with rest/attachments.py --------------------------------------------------------


def names(request: Request) -> Names:
    """The metadata and content-type names of this server's configuration (built once)."""
    state = request.app.state
    found: Names | None = getattr(state, "metadata_names", None)
    if found is None:
        found = Names.from_config(context(request).config)
        state.metadata_names = found
    return found


def if_match(request: Request) -> ETag | None:
    raw = request.headers.get("if-match")
    return None if raw is None else parse_etag(raw, "If-Match")


def not_modified(request: Request, etag: ETag) -> Response | None:
    """Orthanc's 304 when `If-None-Match` names the current revision, else None."""
    raw = request.headers.get("if-none-match")
    if raw is None or parse_etag(raw, "If-None-Match") != etag:
        return None
    return Response(status_code=304, headers={"ETag": etag.header()})


def plain(body: bytes | str, etag: ETag | None = None, content_type: str = "text/plain") -> Response:
    """An answer whose Content-Type is exactly `content_type` (Starlette would add a charset)."""
    headers = {"Content-Type": content_type}
    if etag is not None:
        headers["ETag"] = etag.header()
    return Response(body.encode() if isinstance(body, str) else body, headers=headers)


def at_level(level: ResourceType, **by_method: Handler) -> Callable[[Request], Awaitable[Response]]:
    """One endpoint for the methods of one path at one level (so that a 405 lists them all)."""

    async def endpoint(request: Request) -> Response:
        return await by_method[request.method.lower() if request.method != "HEAD" else "get"](request, level)

    return endpoint


# ---- the routes -----------------------------------------------------------------------------


async def list_metadata(request: Request, level: ResourceType) -> Response:
    ctx = context(request)
    public_id = request.path_params["id"]
    known = names(request)
    expand = flag(request, "expand")  # `?numeric` only exists from Orthanc 1.11: ignored, as 1.10.1

    def read(tx: ReadTx) -> Any:
        return metadata_listing(tx, level, public_id, known, expand)

    return JsonResponse(await run_in_threadpool(ctx.index.read, read))


async def get_metadata(request: Request, level: ResourceType) -> Response:
    ctx = context(request)
    public_id = request.path_params["id"]
    mtype = names(request).metadata_type(request.path_params["name"])
    stored = await run_in_threadpool(ctx.index.read, lambda tx: metadata_value(tx, level, public_id, mtype))
    etag = metadata_etag(stored)
    return not_modified(request, etag) or plain(stored.value, etag)


async def put_metadata(request: Request, level: ResourceType) -> Response:
    ctx = context(request)
    public_id = request.path_params["id"]
    mtype = names(request).metadata_type(request.path_params["name"])
    require_user_type(mtype, "metadata")
    expected = if_match(request)
    body = await read_body(request, ctx.config.maximum_upload_size)
    try:
        value = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        # Orthanc stores any bytes, then renders them as broken JSON in `?expand`: refuse instead.
        raise DicomVaultError(ErrorCode.BAD_REQUEST, f"a metadata value must be UTF-8 text: {exc}") from exc
    writer = MetadataWriter(ctx.index, ctx.config.check_revisions)
    etag = await run_in_threadpool(writer.put, level, public_id, mtype, value, expected, now_iso(ctx.clock))
    return plain(b"", etag)


async def delete_metadata(request: Request, level: ResourceType) -> Response:
    ctx = context(request)
    public_id = request.path_params["id"]
    mtype = names(request).metadata_type(request.path_params["name"])
    require_user_type(mtype, "metadata")
    expected = if_match(request)
    writer = MetadataWriter(ctx.index, ctx.config.check_revisions)
    await run_in_threadpool(writer.delete, level, public_id, mtype, expected, now_iso(ctx.clock))
    return plain(b"")


def routes() -> list[Route]:
    """The table of metadata routes, in the manner of Orthanc's RegisterResources()."""
    table: list[Route] = []
    for level in ResourceType:
        base = f"/{level.plural}/{{id}}/metadata"
        table += [
            Route(base, at_level(level, get=list_metadata), methods=["GET"]),
            Route(
                f"{base}/{{name}}",
                at_level(level, get=get_metadata, put=put_metadata, delete=delete_metadata),
                methods=["GET", "PUT", "DELETE"],
            ),
        ]
    return table
