"""Instance routes: upload (`POST /instances`: DICOM, zip, gzip) and reading one stored file
(`/file`, `/tags`, `/simplified-tags`, `/header`, `/content/...`)."""

from __future__ import annotations

import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomvault.context import ServerContext
from dicomvault.dicom.content import resolve_content
from dicomvault.dicom.parsing import read_dataset
from dicomvault.dicom.tags_json import (
    TagsFormat,
    dataset_to_json,
    drop_after_pixel_data,
    header_to_json,
    parse_tags_format,
)
from dicomvault.enums import FileContentType, RequestOrigin, ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.find.resources import require
from dicomvault.index.transactions import ReadTx
from dicomvault.ingest.archives import is_zip, iter_zip
from dicomvault.ingest.store import Origin
from dicomvault.model import FileInfo
from dicomvault.rest.requests import context, read_body
from dicomvault.rest.responses import JsonResponse, attachment_response

logger = logging.getLogger(__name__)


def _origin(request: Request) -> Origin:
    client = request.client
    return Origin(
        request_origin=RequestOrigin.REST_API,
        remote_ip=client.host if client else None,
        remote_aet="",
        http_username=request.scope.get("state", {}).get("username", ""),
    )


async def upload(request: Request) -> Response:
    ctx = context(request)
    body = await read_body(request, ctx.config.maximum_upload_size)
    origin = _origin(request)
    if is_zip(body):
        answers: list[dict[str, str]] = []
        for name, data in iter_zip(body, ctx.config.maximum_upload_size):
            try:
                result = await ctx.ingest.store(data, origin)
            except DicomVaultError as exc:
                # As Orthanc: entries that are not valid DICOM instances are skipped.
                if exc.code not in (ErrorCode.BAD_FILE_FORMAT, ErrorCode.INEXISTENT_TAG):
                    raise
                logger.info("upload: skipping zip entry %r: %s", name, exc)
                continue
            answers.append(result.to_json())
        return JsonResponse(answers)
    result = await ctx.ingest.store(body, origin)
    return JsonResponse(result.to_json())


def _dicom_file(ctx: ServerContext, public_id: str) -> FileInfo:
    def read(tx: ReadTx) -> FileInfo:
        ref = require(tx, ResourceType.INSTANCE, public_id)
        info = tx.attachment(ref.internal_id, FileContentType.DICOM)
        if info is None:
            raise DicomVaultError(ErrorCode.UNKNOWN_RESOURCE, f"instance {public_id} has no DICOM attachment")
        return info

    return ctx.index.read(read)


def load_dicom(ctx: ServerContext, public_id: str) -> bytes:
    """The stored DICOM file of an instance (404 for an unknown one); shared by the image routes."""
    return ctx.accessor.read(_dicom_file(ctx, public_id))


async def file(request: Request) -> Response:
    ctx = context(request)
    info = await run_in_threadpool(_dicom_file, ctx, request.path_params["id"])
    headers = {"Content-Type": "application/dicom", "Content-Disposition": f'filename="{info.uuid}.dcm"'}
    return await attachment_response(ctx.accessor, info, headers)


async def _tags_answer(request: Request, form: TagsFormat, header: bool) -> Response:
    ctx = context(request)
    public_id = request.path_params["id"]

    def work() -> dict[str, Any]:
        ds = read_dataset(load_dicom(ctx, public_id), stop_before_pixels=False)
        return header_to_json(ds.file_meta, form) if header else dataset_to_json(drop_after_pixel_data(ds), form)

    return JsonResponse(await run_in_threadpool(work))


async def tags(request: Request) -> Response:
    return await _tags_answer(request, parse_tags_format(request.query_params), header=False)


async def simplified_tags(request: Request) -> Response:
    return await _tags_answer(request, TagsFormat.SIMPLIFY, header=False)


async def header(request: Request) -> Response:
    return await _tags_answer(request, parse_tags_format(request.query_params), header=True)


async def content(request: Request) -> Response:
    ctx = context(request)
    public_id = request.path_params["id"]
    path = [p for p in request.path_params.get("path", "").split("/") if p]

    def work() -> Any:
        ds = read_dataset(load_dicom(ctx, public_id), stop_before_pixels=False)
        return resolve_content(ds, path)

    answer = await run_in_threadpool(work)
    if isinstance(answer, bytes | bytearray):
        return Response(bytes(answer), media_type="application/octet-stream")
    return JsonResponse(answer)


def routes() -> list[Route]:
    return [
        Route("/instances", upload, methods=["POST"]),
        Route("/instances/{id}/file", file, methods=["GET"]),
        Route("/instances/{id}/tags", tags, methods=["GET"]),
        Route("/instances/{id}/simplified-tags", simplified_tags, methods=["GET"]),
        Route("/instances/{id}/header", header, methods=["GET"]),
        Route("/instances/{id}/content", content, methods=["GET"]),
        Route("/instances/{id}/content/{path:path}", content, methods=["GET"]),
    ]
