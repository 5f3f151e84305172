"""Summary routes of one resource: `/statistics`, `/shared-tags`, `/module`, `/module-patient` and
`/instances-tags` (the work is in `find.summaries`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomvault.dicom.tags_json import parse_tags_format
from dicomvault.enums import ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.find import summaries
from dicomvault.index.transactions import ReadTx
from dicomvault.rest.requests import context
from dicomvault.rest.responses import JsonResponse

Endpoint = Callable[[Request], Awaitable[Response]]


async def statistics(request: Request) -> Response:
    ctx = context(request)
    public_id = request.path_params["id"]

    def read(tx: ReadTx) -> dict[str, Any]:
        # As Orthanc 1.10.1: an id of any level is accepted at any level of the URL.
        ref = tx.lookup(public_id)
        if ref is None:
            raise DicomVaultError(ErrorCode.UNKNOWN_RESOURCE, f"unknown resource: {public_id}")
        return summaries.statistics(tx, ref)

    return JsonResponse(await run_in_threadpool(ctx.index.read, read))


def _tags_of_instances(reader: Callable[..., Any]) -> Callable[[Request], Awaitable[Response]]:
    """A route rendering tags read from the files of a resource's instances."""

    async def endpoint(request: Request) -> Response:
        ctx = context(request)
        answer = await run_in_threadpool(
            reader,
            ctx.index,
            ctx.accessor,
            request.path_params["id"],
            parse_tags_format(request.query_params),
            ctx.config.default_encoding,
        )
        return JsonResponse(answer)

    return endpoint


shared_tags = _tags_of_instances(summaries.shared_tags)
instances_tags = _tags_of_instances(summaries.instances_tags)


def module_endpoint(module_level: ResourceType, resource_level: ResourceType | None) -> Endpoint:
    """The module of `module_level`; `resource_level` restricts the level of the id (None: any)."""

    async def endpoint(request: Request) -> Response:
        ctx = context(request)
        answer = await run_in_threadpool(
            summaries.module,
            ctx.index,
            ctx.accessor,
            request.path_params["id"],
            module_level,
            parse_tags_format(request.query_params),
            ctx.config.default_encoding,
            resource_level,
        )
        return JsonResponse(answer)

    return endpoint


_PATIENT_MODULE = module_endpoint(ResourceType.PATIENT, None)
_STUDY_MODULE = module_endpoint(ResourceType.STUDY, None)
_SERIES_MODULE = module_endpoint(ResourceType.SERIES, None)
_INSTANCE_MODULE = module_endpoint(ResourceType.INSTANCE, ResourceType.INSTANCE)


def routes() -> list[Route]:
    """The summary routes, in the manner of Orthanc's RegisterResources()."""
    get = ["GET"]
    return [
        Route("/patients/{id}/statistics", statistics, methods=get),
        Route("/studies/{id}/statistics", statistics, methods=get),
        Route("/series/{id}/statistics", statistics, methods=get),
        Route("/instances/{id}/statistics", statistics, methods=get),
        Route("/patients/{id}/shared-tags", shared_tags, methods=get),
        Route("/studies/{id}/shared-tags", shared_tags, methods=get),
        Route("/series/{id}/shared-tags", shared_tags, methods=get),
        Route("/patients/{id}/instances-tags", instances_tags, methods=get),
        Route("/studies/{id}/instances-tags", instances_tags, methods=get),
        Route("/series/{id}/instances-tags", instances_tags, methods=get),
        Route("/patients/{id}/module", _PATIENT_MODULE, methods=get),
        Route("/studies/{id}/module", _STUDY_MODULE, methods=get),
        Route("/studies/{id}/module-patient", _PATIENT_MODULE, methods=get),
        Route("/series/{id}/module", _SERIES_MODULE, methods=get),
        Route("/instances/{id}/module", _INSTANCE_MODULE, methods=get),
    ]
