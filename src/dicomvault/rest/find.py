"""REST routes of finds: `POST /tools/find` (a DICOM query on the local resources) and
`POST /tools/lookup` (which resources carry a DICOM identifier).

Both only translate: the body is read by `find.query`, the resources are selected by
`find.finder` and rendered by `find.answers`, all inside one read transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomvault.enums import ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.find.answers import render
from dicomvault.find.finder import FindSettings, find
from dicomvault.find.query import parse_find_request
from dicomvault.find.resources import describe
from dicomvault.index.find import lookup_identifier
from dicomvault.index.transactions import ReadTx
from dicomvault.model import ResourceRef
from dicomvault.rest.requests import context, read_body
from dicomvault.rest.responses import JsonResponse

logger = logging.getLogger(__name__)

# A find body is a small JSON document: no reason to accept MaximumUploadSize of it.
_MAX_BODY = 16 * 1024 * 1024

# `/tools/lookup`: the identifier of each level, looked up in this order.
_LOOKUP_TAGS = (
    (ResourceType.PATIENT, 0x00100020),  # PatientID
    (ResourceType.STUDY, 0x0020000D),  # StudyInstanceUID
    (ResourceType.SERIES, 0x0020000E),  # SeriesInstanceUID
    (ResourceType.INSTANCE, 0x00080018),  # SOPInstanceUID
)


async def tools_find(request: Request) -> Response:
    ctx = context(request)
    body = await read_body(request, min(_MAX_BODY, ctx.config.maximum_upload_size or _MAX_BODY))
    parsed = parse_find_request(body)
    settings = FindSettings.from_config(ctx.config)

    def describe_resources(tx: ReadTx, refs: Sequence[ResourceRef]) -> list[dict[str, Any]]:
        return describe(tx, refs, ctx.config.stable_age, ctx.clock, ctx.stability)

    def work(tx: ReadTx) -> list[Any]:
        refs = find(tx, parsed.query, settings, ctx.accessor.read)
        logger.info(
            "find at level %s (%s): %d answers",
            parsed.query.level.label,
            parsed.query.lookup.describe(),
            len(refs),
        )
        return render(
            tx,
            refs,
            parsed.expand,
            parsed.format,
            parsed.requested_tags,
            describe_resources,
            ctx.accessor.read,
            settings.default_encoding,
        )

    return JsonResponse(await run_in_threadpool(ctx.index.read, work))


async def tools_lookup(request: Request) -> Response:
    ctx = context(request)
    body = await read_body(request, _MAX_BODY)
    # Orthanc takes the body as it is, bytes included; normalisation keeps printable ASCII only.
    value = body.decode("utf-8", "replace")
    if "*" in value or "?" in value:
        # Orthanc builds an equality constraint on PatientID first, which refuses wildcards.
        raise DicomVaultError(ErrorCode.PARAMETER_OUT_OF_RANGE, "Wildcards are not allowed on tag 0010,0020")

    def work(tx: ReadTx) -> list[dict[str, str]]:
        found = [ref for level, tag in _LOOKUP_TAGS for ref in lookup_identifier(tx, level, tag, value)]
        return [{"ID": ref.public_id, "Path": ref.path, "Type": ref.level.label} for ref in found]

    return JsonResponse(await run_in_threadpool(ctx.index.read, work))


def routes() -> list[Route]:
    """The find routes, in the manner of Orthanc's RegisterResources()."""
    return [
        Route("/tools/find", tools_find, methods=["POST"]),
        Route("/tools/lookup", tools_lookup, methods=["POST"]),
    ]
