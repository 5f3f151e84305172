"""REST routes of attachments, at the four levels: `/{level}/{id}/attachments` (names, or
name -> content type with `?full`), `/{level}/{id}/attachments/{name}` (GET: the sub-routes; PUT and
DELETE of user attachments with `If-Match`), its readings (`data`, `compressed-data`, `md5`,
`compressed-md5`, `size`, `compressed-size`, `info`, `is-compressed`: each with `ETag` and
`If-None-Match`) and its actions (`POST` `compress`, `uncompress`, `verify-md5`).

As Orthanc 1.10.1: `Range` is ignored (the whole content, 200), and the list of sub-routes names
`uuid`, which no route answers.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from dicomvault.enums import CompressionType, FileContentType, ResourceType
from dicomvault.find.metadata import require_user_type
from dicomvault.index.attachments import StoredAttachment
from dicomvault.ingest.attachments import Attachments, attachment_etag, iter_file
from dicomvault.ingest.store import now_iso
from dicomvault.rest.metadata import at_level, if_match, names, not_modified, plain
from dicomvault.rest.requests import context, flag, read_body
from dicomvault.rest.responses import JsonResponse, attachment_response

logger = logging.getLogger(__name__)

# What `GET /{level}/{id}/attachments/{name}` lists (Orthanc 1.10.1's list, `uuid` included).
SUB_ROUTES = (
    "compress",
    "compressed-data",
    "compressed-md5",
    "compressed-size",
    "data",
    "info",
    "is-compressed",
    "md5",
    "size",
    "uncompress",
    "verify-md5",
    "uuid",
)
_EMPTY_JSON = b"{}"
_JSON_NO_CHARSET = "application/json"  # Orthanc's type for its `{}` answers


def _service(request: Request) -> Attachments:
    ctx = context(request)
    return Attachments(ctx.index, ctx.accessor, ctx.config.check_revisions)


def _content_type(request: Request) -> int:
    return names(request).content_type(request.path_params["name"])


async def _stored(request: Request, level: ResourceType) -> StoredAttachment:
    content_type = _content_type(request)
    return await run_in_threadpool(_service(request).get, level, request.path_params["id"], content_type)


# ---- the list and one attachment ------------------------------------------------------------


async def list_attachments(request: Request, level: ResourceType) -> Response:
    known = names(request)
    found = await run_in_threadpool(_service(request).content_types, level, request.path_params["id"])
    answer: Any
    if flag(request, "full"):
        answer = {known.content_type_name(t): t for t in found}
    else:
        answer = [known.content_type_name(t) for t in found]
    return JsonResponse(answer)


async def sub_routes(request: Request, level: ResourceType) -> Response:
    etag = attachment_etag(await _stored(request, level))
    return not_modified(request, etag) or JsonResponse(list(SUB_ROUTES), headers={"ETag": etag.header()})


async def put_attachment(request: Request, level: ResourceType) -> Response:
    ctx = context(request)
    content_type = _content_type(request)
    require_user_type(content_type, "attachment")
    expected = if_match(request)
    body = await read_body(request, ctx.config.maximum_upload_size)
    etag = await run_in_threadpool(
        _service(request).put, level, request.path_params["id"], content_type, body, expected, now_iso(ctx.clock)
    )
    return plain(_EMPTY_JSON, etag, _JSON_NO_CHARSET)


async def delete_attachment(request: Request, level: ResourceType) -> Response:
    ctx = context(request)
    content_type = _content_type(request)
    require_user_type(content_type, "attachment")
    expected = if_match(request)
    await run_in_threadpool(
        _service(request).delete, level, request.path_params["id"], content_type, expected, now_iso(ctx.clock)
    )
    return plain(b"")


# ---- readings -------------------------------------------------------------------------------


def _reading(render: Callable[[Request, StoredAttachment], Awaitable[Response]]) -> Callable[..., Awaitable[Response]]:
    """A GET of one attachment: look it up, answer 304 if `If-None-Match` names it, else render."""

    async def handler(request: Request, level: ResourceType) -> Response:
        stored = await _stored(request, level)
        etag = attachment_etag(stored)
        early = not_modified(request, etag)
        if early is not None:
            return early
        answer = await render(request, stored)
        answer.headers["ETag"] = etag.header()
        return answer

    return handler


async def _data(request: Request, stored: StoredAttachment) -> Response:
    info = stored.info
    content_type = int(info.content_type)
    headers = {
        "Content-Type": names(request).mime_type(content_type),
        "Content-Disposition": f'filename="{info.uuid}{".dcm" if content_type == FileContentType.DICOM else ""}"',
    }
    return await attachment_response(_service(request).accessor, info, headers)


async def _compressed_data(request: Request, stored: StoredAttachment) -> Response:
    return await _stream(_service(request), stored, {"Content-Type": "application/octet-stream"})


async def _stream(service: Attachments, stored: StoredAttachment, headers: dict[str, str]) -> Response:
    handle, size = await run_in_threadpool(service.open_stored, stored.info)
    return StreamingResponse(iter_file(handle), headers={**headers, "Content-Length": str(size)})


def _text(pick: Callable[[StoredAttachment], object]) -> Callable[[Request, StoredAttachment], Awaitable[Response]]:
    async def render(request: Request, stored: StoredAttachment) -> Response:
        return plain(str(pick(stored)))

    return render


async def _info(request: Request, stored: StoredAttachment) -> Response:
    info = stored.info
    return JsonResponse(
        {
            "CompressedMD5": info.compressed_md5,
            "CompressedSize": info.compressed_size,
            "ContentType": int(info.content_type),
            "UncompressedMD5": info.uncompressed_md5,
            "UncompressedSize": info.uncompressed_size,
            "Uuid": info.uuid,
        }
    )


READINGS: dict[str, Callable[..., Awaitable[Response]]] = {
    "data": _reading(_data),
    "compressed-data": _reading(_compressed_data),
    "md5": _reading(_text(lambda s: s.info.uncompressed_md5)),
    "compressed-md5": _reading(_text(lambda s: s.info.compressed_md5)),
    "size": _reading(_text(lambda s: s.info.uncompressed_size)),
    "compressed-size": _reading(_text(lambda s: s.info.compressed_size)),
    "info": _reading(_info),
    "is-compressed": _reading(_text(lambda s: int(s.info.compression != CompressionType.NONE))),
}


# ---- actions --------------------------------------------------------------------------------


def _compression(target: CompressionType) -> Callable[[Request, ResourceType], Awaitable[Response]]:
    async def action(request: Request, level: ResourceType) -> Response:
        ctx = context(request)
        content_type = _content_type(request)
        await run_in_threadpool(
            _service(request).set_compression,
            level,
            request.path_params["id"],
            content_type,
            target,
            now_iso(ctx.clock),
        )
        return plain(_EMPTY_JSON, content_type=_JSON_NO_CHARSET)

    return action


async def _verify_md5(request: Request, level: ResourceType) -> Response:
    content_type = _content_type(request)
    await run_in_threadpool(_service(request).verify_md5, level, request.path_params["id"], content_type)
    return plain(_EMPTY_JSON, content_type=_JSON_NO_CHARSET)


ACTIONS: dict[str, Callable[[Request, ResourceType], Awaitable[Response]]] = {
    "compress": _compression(CompressionType.ZLIB_WITH_SIZE),
    "uncompress": _compression(CompressionType.NONE),
    "verify-md5": _verify_md5,
}


def routes() -> list[Route]:
    """The table of attachment routes, in the manner of Orthanc's RegisterResources()."""
    table: list[Route] = []
    for level in ResourceType:
        base = f"/{level.plural}/{{id}}/attachments"
        table.append(Route(base, at_level(level, get=list_attachments), methods=["GET"]))
        table.append(
            Route(
                f"{base}/{{name}}",
                at_level(level, get=sub_routes, put=put_attachment, delete=delete_attachment),
                methods=["GET", "PUT", "DELETE"],
            )
        )
        for reading, handler in READINGS.items():
            table.append(Route(f"{base}/{{name}}/{reading}", at_level(level, get=handler), methods=["GET"]))
        for action, handler in ACTIONS.items():
            table.append(Route(f"{base}/{{name}}/{action}", at_level(level, post=handler), methods=["POST"]))
    return table
