"""`/system`, `/statistics` and the `/tools` that only read the clock or make identifiers."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydicom.uid import generate_uid as make_uid
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomvault import __version__
from dicomvault.enums import ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.index.schema import ORTHANC_DATABASE_VERSION
from dicomvault.index.transactions import Statistics
from dicomvault.ingest.store import now_iso
from dicomvault.rest.requests import context
from dicomvault.rest.responses import JsonResponse

# Orthanc 1.10.1's REST API version; clients (e.g. pyorthanc, OHIF plugins) test it for features.
API_VERSION = 16
ORTHANC_COMPATIBLE_VERSION = "1.10.1"
# Our own UID root (a UUID-derived root under 2.25 would be long; pydicom's prefix is registered).
UID_PREFIX = "1.2.826.0.1.3680043.8.498."


async def system(request: Request) -> Response:
    cfg = context(request).config
    return JsonResponse(
        {
            "ApiVersion": API_VERSION,
            "CheckRevisions": cfg.check_revisions,
            "DatabaseBackendPlugin": None,
            "DatabaseVersion": ORTHANC_DATABASE_VERSION,
            "DicomAet": cfg.dicom_aet,
            "DicomPort": cfg.dicom_port,
            "HttpPort": cfg.http_port,
            "IsHttpServerSecure": cfg.is_http_server_secure,
            "Name": cfg.name,
            "PluginsEnabled": False,
            "StorageAreaPlugin": None,
            "Version": ORTHANC_COMPATIBLE_VERSION,
            # dicomvault's own fields (Orthanc clients ignore unknown keys)
            "DicomVaultVersion": __version__,
        }
    )


async def statistics(request: Request) -> Response:
    ctx = context(request)
    stats: Statistics = await run_in_threadpool(ctx.index.read, lambda tx: tx.statistics())
    mb = 1024 * 1024
    return JsonResponse(
        {
            "CountInstances": stats.count_instances,
            "CountPatients": stats.count_patients,
            "CountSeries": stats.count_series,
            "CountStudies": stats.count_studies,
            # Orthanc sends the byte counts as strings (they may exceed 2^53) and MB as integers.
            "TotalDiskSize": str(stats.disk_size),
            "TotalDiskSizeMB": stats.disk_size // mb,
            "TotalUncompressedSize": str(stats.uncompressed_size),
            "TotalUncompressedSizeMB": stats.uncompressed_size // mb,
        }
    )


def _text(value: str) -> Response:
    # Orthanc answers these as bare `text/plain` (no charset parameter).
    return Response(value.encode(), headers={"content-type": "text/plain"})


async def tools_now(request: Request) -> Response:
    return _text(now_iso(context(request).clock))


async def tools_now_local(request: Request) -> Response:
    return _text(datetime.fromtimestamp(context(request).clock()).strftime("%Y%m%dT%H%M%S"))


async def generate_uid(request: Request) -> Response:
    level_name = request.query_params.get("level")
    try:
        level = ResourceType.from_label(level_name or "")
    except ValueError as exc:
        # Orthanc 1.10.1 treats the route as unknown without a valid "level".
        raise DicomVaultError(ErrorCode.UNKNOWN_RESOURCE, f"missing or unknown level: {level_name!r}") from exc
    if level is ResourceType.PATIENT:
        return _text(str(uuid.uuid4()))  # a PatientID is no UID: Orthanc makes a UUID
    return _text(make_uid(prefix=UID_PREFIX))


def routes() -> list[Route]:
    return [
        Route("/system", system, methods=["GET"]),
        Route("/statistics", statistics, methods=["GET"]),
        Route("/tools/now", tools_now, methods=["GET"]),
        Route("/tools/now-local", tools_now_local, methods=["GET"]),
        Route("/tools/generate-uid", generate_uid, methods=["GET"]),
    ]
