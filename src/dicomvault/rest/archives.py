"""Archive routes: `/{level}/{id}/archive` (GET and POST) and `POST /tools/create-archive`, answered
with a streamed zip (the layout and the stream are `find.archive`'s), or, with `"Asynchronous": true`
(or `"Synchronous": false`), with an archive job (`{"ID", "Path"}`; the zip is then
`GET /jobs/{id}/archive`, see `jobs.archive`).

`Transcode` (a conversion of the files) is not implemented: it is refused with 400 and a message
saying so, after the body was checked as Orthanc 1.10.1 checks it (same statuses and error codes
for the same malformed bodies).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom._uid_dict import UID_dictionary  # pydicom.uid re-exports it implicitly only
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Send

from dicomvault.context import ServerContext
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.find.archive import ArchiveInterrupted, SeriesFolder, plan, stream
from dicomvault.index.transactions import ReadTx
from dicomvault.jobs.archive import ArchiveJob
from dicomvault.model import ResourceRef
from dicomvault.rest.requests import context, read_body
from dicomvault.rest.responses import JsonResponse

logger = logging.getLogger(__name__)

_MAX_BODY = 64 << 20  # a JSON list of a million ids is ~45 MB
_INT32 = (-(2**31), 2**31 - 1)


class ZipResponse(StreamingResponse):
    """A streamed zip. Once its headers are sent, an error can no longer become an error status:
    if the archive cannot be completed (`ArchiveInterrupted`, logged where it happened), the
    answer is left unfinished, which HTTP clients report as an incomplete transfer."""

    media_type = "application/zip"

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except ArchiveInterrupted:
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


# ---- the JSON body ----------------------------------------------------------------------------------


def _bad_format(details: str | None) -> DicomVaultError:
    return DicomVaultError(ErrorCode.BAD_FILE_FORMAT, details)


def _boolean(body: dict[str, Any], name: str) -> bool:
    value = body[name]
    if not isinstance(value, bool):
        raise _bad_format(f'"{name}" must be true or false')
    return value


def _check_syntax(uid: str) -> None:
    if UID_dictionary.get(uid, ("", ""))[1] != "Transfer Syntax":
        raise DicomVaultError(ErrorCode.PARAMETER_OUT_OF_RANGE, f"not a transfer syntax UID: {uid!r}")


@dataclass(frozen=True)
class ArchiveOptions:
    synchronous: bool = True
    transcode: str | None = None
    priority: int = 0


def _options(body: dict[str, Any]) -> ArchiveOptions:
    """The options of a body, checked in Orthanc's order; `Synchronous` wins over `Asynchronous`,
    synchronous is the default."""
    synchronous = True
    priority = 0
    if "Synchronous" in body:
        synchronous = _boolean(body, "Synchronous")
    elif "Asynchronous" in body:
        synchronous = not _boolean(body, "Asynchronous")
    if "Priority" in body:
        value = body["Priority"]
        integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not integral or not _INT32[0] <= value <= _INT32[1]:
            raise _bad_format('"Priority" must be an integer')
        priority = int(value)
    transcode = None
    if "Transcode" in body:
        transcode = body["Transcode"]
        if not isinstance(transcode, str):
            raise _bad_format('"Transcode" must be a transfer syntax UID (a string)')
        _check_syntax(transcode)
    return ArchiveOptions(synchronous, transcode, priority)


def _refuse_unsupported(options: ArchiveOptions) -> None:
    if options.transcode is not None:
        raise DicomVaultError(
            ErrorCode.BAD_REQUEST, f"transcoding archives (to {options.transcode}) is not supported yet"
        )


def _parse_json(raw: bytes, details: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:  # not JSON, not UTF-8, or empty
        raise _bad_format(details) from exc


def resource_options(raw: bytes) -> ArchiveOptions:
    """The body of `POST /{level}/{id}/archive`: any JSON (Orthanc reads options from an object
    only), not an empty or unparseable one."""
    body = _parse_json(raw, "the body must be JSON")
    return _options(body) if isinstance(body, dict) else ArchiveOptions()


def create_archive_body(raw: bytes) -> tuple[list[str], ArchiveOptions]:
    """The body of `POST /tools/create-archive`: `{"Resources": [ids...], options...}`, or the
    bare list of ids that Orthanc also accepts."""
    body = _parse_json(raw, 'the body must be a JSON list of resource ids, or an object with a "Resources" list')
    if isinstance(body, list):
        resources: Any = body
        options = ArchiveOptions()
    elif isinstance(body, dict):
        options = _options(body)
        if "Resources" not in body:
            raise _bad_format('the body has no "Resources" list')
        resources = body["Resources"]
    else:
        raise _bad_format(None)
    if not isinstance(resources, list) or not all(isinstance(r, str) for r in resources):
        raise _bad_format('"Resources" must be a list of resource ids (strings)')
    return resources, options


# ---- the answers ------------------------------------------------------------------------------------


def _lookup(tx: ReadTx, public_ids: Sequence[str]) -> list[ResourceRef]:
    refs: list[ResourceRef] = []
    for public_id in public_ids:
        # As Orthanc 1.10.1: the level in the URL is not checked (`/patients/{series}/archive`
        # archives the series).
        ref = tx.lookup(public_id)
        if ref is None:
            raise DicomVaultError(ErrorCode.UNKNOWN_RESOURCE, f"unknown resource: {public_id}")
        refs.append(ref)
    return refs


def _plan(ctx: ServerContext, public_ids: Sequence[str]) -> list[SeriesFolder]:
    return ctx.index.read(lambda tx: plan(tx, _lookup(tx, public_ids)))


async def _answer(
    ctx: ServerContext, folders: list[SeriesFolder], filename: str, label: str, options: ArchiveOptions
) -> Response:
    _refuse_unsupported(options)
    logger.info("archive %s: %d series folders", label, len(folders))
    if not options.synchronous:
        job = await run_in_threadpool(
            ArchiveJob, ctx.index, ctx.accessor, folders, label, temporary_directory=ctx.config.temporary_directory
        )
        job_id = ctx.jobs.submit(job, options.priority)
        return JsonResponse({"ID": job_id, "Path": f"/jobs/{job_id}"})
    return ZipResponse(
        stream(ctx.index, ctx.accessor, folders, label),
        headers={"Content-Disposition": f'filename="{filename}"'},
    )


async def resource_archive(request: Request) -> Response:
    ctx = context(request)
    public_id = request.path_params["id"]
    if request.method == "POST":
        options = resource_options(await read_body(request, _MAX_BODY))
        folders = await run_in_threadpool(_plan, ctx, [public_id])
    else:
        folders = await run_in_threadpool(_plan, ctx, [public_id])
        options = ArchiveOptions(transcode=request.query_params.get("transcode"))
        if options.transcode is not None:
            _check_syntax(options.transcode)
    return await _answer(ctx, folders, f"{public_id}.zip", request.url.path, options)


async def create_archive(request: Request) -> Response:
    ctx = context(request)
    public_ids, options = create_archive_body(await read_body(request, _MAX_BODY))
    folders = await run_in_threadpool(_plan, ctx, public_ids)
    return await _answer(ctx, folders, "Archive.zip", request.url.path, options)


def routes() -> list[Route]:
    """The archive routes, in the manner of Orthanc's RegisterResources(). Orthanc 1.10.1 has no
    `/instances/{id}/archive` (404): `/tools/create-archive` takes instances."""
    return [
        Route("/patients/{id}/archive", resource_archive, methods=["GET", "POST"]),
        Route("/studies/{id}/archive", resource_archive, methods=["GET", "POST"]),
        Route("/series/{id}/archive", resource_archive, methods=["GET", "POST"]),
        Route("/tools/create-archive", create_archive, methods=["POST"]),
    ]
