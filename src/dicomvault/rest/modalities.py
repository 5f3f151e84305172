"""REST routes of the DICOM modalities (`/modalities`): the registry (list, configuration, create,
update, delete) and the SCU operations that are not queries: C-ECHO (`echo`), C-STORE (`store`,
`store-straight`) and C-MOVE (`move`). Queries are in `rest/queries.py`.

Behaviour checked against Orthanc 1.10.1 (facts, not its code):

* `GET /modalities` lists the names; `?expand` gives `{name: configuration}` in the object form.
  `GET /modalities/{m}` lists the operations; unknown modalities are 404 everywhere.
* `PUT` takes either form and answers an empty 200; `DELETE` too (404 if unknown).
* `echo` takes an optional body (`Timeout`, `CheckFind`, which defaults to `DicomEchoChecksFind`
  and adds a C-FIND at study level about a random StudyInstanceUID); it answers `{}`.
* `store` takes one id (as text or a JSON string), a list of ids of any level, or an object with
  `Resources` and the options; a string that is not an id is 400, an unknown id 404. It runs a
  "DicomModalityStore" job, synchronously unless `Asynchronous` (or `"Synchronous": false`).
  `StorageCommitment` is not supported (refused: a client asking for it must not believe it got it).
* `move` runs one C-MOVE per resource of `Resources` (objects of tags, of which the identifying
  ones of `Level` are used); synchronously it answers `{}` as 1.10.1, with a direct request's
  errors (422 for "unable to process"). Orthanc 1.10.1 ignores `Asynchronous` there; dicomvault
  honours it with a "DicomMoveScu" job, as later Orthanc versions do.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from pydicom.uid import generate_uid
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomvault.context import ServerContext
from dicomvault.dicom.main_tags import format_tag
from dicomvault.dicom.parsing import check_dicom_file
from dicomvault.dicom.tags_json import TagsFormat, tag_name
from dicomvault.enums import ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.find.query import JsonSyntaxError, parse_level, parse_tag, read_json
from dicomvault.index.changes import log_export
from dicomvault.index.transactions import ReadTx, WriteTx
from dicomvault.ingest.store import now_iso
from dicomvault.model import ResourceRef
from dicomvault.network.modalities import RemoteModality
from dicomvault.network.move_job import DicomMoveScuJob
from dicomvault.network.queries import (
    IDENTIFYING,
    LEVEL_KEYWORDS,
    QUERY_RETRIEVE_LEVEL,
    FindAnswer,
    find,
)
from dicomvault.network.scu import ScuAssociation, StoreClient, control_contexts, scu_parameters
from dicomvault.network.store_job import DicomStoreJob, instances_to_send
from dicomvault.rest.dicom_requests import (
    MAX_JSON_BODY,
    empty_answer,
    integer_field,
    job_options,
    json_body,
    logged_route,
    read_boolean,
    read_unsigned,
    run_job,
    string_field,
)
from dicomvault.rest.requests import context, flag, read_body
from dicomvault.rest.responses import JsonResponse

logger = logging.getLogger(__name__)

# What `GET /modalities/{m}` lists: the operations dicomvault serves.
_OPERATIONS = ["configuration", "echo", "find", "find-instance", "find-patient", "find-series", "find-study"]
_OPERATIONS += ["move", "query", "store", "store-straight"]
# Orthanc's `Toolbox::IsSHA1`: 44 characters, dashes at these places, letters or digits elsewhere.
_ORTHANC_ID = re.compile(r"[A-Za-z0-9]{8}(-[A-Za-z0-9]{8}){4}")
_DESCRIPTION = "REST API"  # the Description Orthanc gives the jobs it creates for REST requests


def _modality(ctx: ServerContext, request: Request) -> tuple[str, RemoteModality]:
    name = request.path_params["id"]
    try:
        return name, ctx.modalities.get(name)
    except DicomVaultError as exc:
        raise DicomVaultError(exc.code, f"No modality with symbolic name: {name}") from exc


# ---- the registry ----------------------------------------------------------------------------


async def list_modalities(request: Request) -> Response:
    ctx = context(request)
    if flag(request, "expand"):
        return JsonResponse({name: modality.to_json() for name, modality in ctx.modalities.all().items()})
    return JsonResponse(ctx.modalities.names())


async def get_modality(request: Request) -> Response:
    _modality(context(request), request)
    return JsonResponse(sorted(_OPERATIONS))


async def get_configuration(request: Request) -> Response:
    _, modality = _modality(context(request), request)
    return JsonResponse(modality.to_json())


async def put_modality(request: Request) -> Response:
    ctx = context(request)
    body = await read_body(request, MAX_JSON_BODY)
    try:
        value = read_json(body)
    except JsonSyntaxError as exc:
        raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, "the body must be a modality in JSON") from exc
    name = request.path_params["id"]
    await run_in_threadpool(ctx.modalities.put, name, value)
    return empty_answer()


async def delete_modality(request: Request) -> Response:
    ctx = context(request)
    name = request.path_params["id"]
    try:
        await run_in_threadpool(ctx.modalities.delete, name)
    except DicomVaultError as exc:
        raise DicomVaultError(exc.code, f"Unknown DICOM modality with symbolic name: {name}") from exc
    return empty_answer()


# ---- C-ECHO ----------------------------------------------------------------------------------

_RANDOM_STUDY_UID = 0x0020000D


async def echo(request: Request) -> Response:
    ctx = context(request)
    body = await json_body(request, "Cannot parse the JSON body", empty_ok=True)
    _, modality = _modality(ctx, request)
    timeout = read_unsigned(body, "Timeout")
    check_find = read_boolean(body, "CheckFind", ctx.config.dicom_echo_checks_find)
    params = scu_parameters(ctx.config, modality, timeout=timeout)

    def run() -> None:
        with ScuAssociation(params, control_contexts()) as association:
            association.echo()
            if check_find:
                # A C-FIND about a study that cannot exist: a peer that does not know this AET
                # refuses it, which a C-ECHO alone would not reveal.
                find(
                    association,
                    ResourceType.STUDY,
                    {_RANDOM_STUDY_UID: str(generate_uid())},
                    normalize=False,
                    default_encoding=ctx.config.default_encoding,
                )

    await run_in_threadpool(run)
    return JsonResponse({})


# ---- C-STORE ---------------------------------------------------------------------------------


def _resources(raw: bytes) -> tuple[list[str], dict[str, Any]]:
    """The ids a store body names and its other fields, checked as Orthanc checks them."""
    text = raw.decode("utf-8", "replace").strip(" \t\n\v\f\r\0")
    if _ORTHANC_ID.fullmatch(text):
        return [text], {}  # a bare id, as Orthanc <= 0.5.1 took it
    try:
        request = read_json(raw)
    except JsonSyntaxError as exc:
        raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, "Must provide a JSON value") from exc
    options: dict[str, Any] = {}
    if isinstance(request, str):
        resources: Any = [request]
    elif isinstance(request, list):
        resources = request
    elif isinstance(request, dict):
        if "Resources" not in request:
            raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, 'Missing field in JSON: "Resources"')
        resources = request["Resources"]
        if not isinstance(resources, list):
            raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, 'JSON field "Resources" must contain an array')
        options = request
    else:
        raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, "Must provide a JSON object, or a JSON array of strings")
    ids: list[str] = []
    for item in resources:
        if not isinstance(item, str):
            raise DicomVaultError(
                ErrorCode.BAD_FILE_FORMAT, "Resources to be exported must be specified as a JSON array of strings"
            )
        resource_id = item.strip()
        if not _ORTHANC_ID.fullmatch(resource_id):
            raise DicomVaultError(
                ErrorCode.BAD_FILE_FORMAT, f"This string is not a valid Orthanc identifier: {resource_id}"
            )
        ids.append(resource_id)
    return ids, options


def _instances(ctx: ServerContext, ids: list[str], modality_name: str) -> list[str]:
    """The instances to send, in order. Each resource is logged as exported when
    `LogExportedResources` is on (as Orthanc: when the request is accepted, before sending)."""

    def collect(tx: ReadTx) -> tuple[list[str], list[ResourceRef]]:
        instances: list[str] = []
        refs: list[ResourceRef] = []
        for resource_id in ids:
            ref = tx.lookup(resource_id)
            if ref is None:
                logger.warning('C-STORE to modality "%s" refused: unknown resource %s', modality_name, resource_id)
                raise DicomVaultError(ErrorCode.UNKNOWN_RESOURCE)  # Orthanc gives no details
            refs.append(ref)
            instances += instances_to_send(tx, ref)
        return instances, refs

    instances, refs = ctx.index.read(collect)
    if ctx.config.log_exported_resources:
        date = now_iso(ctx.clock)

        def log(tx: WriteTx) -> None:
            for ref in refs:
                log_export(tx, ref, modality_name, date)

        ctx.index.write(log)
    return instances


async def store(request: Request) -> Response:
    ctx = context(request)
    raw = await read_body(request, MAX_JSON_BODY)
    ids, body = _resources(raw)
    name = request.path_params["id"]
    instances = await run_in_threadpool(_instances, ctx, ids, name)
    _, modality = _modality(ctx, request)
    local_aet = string_field(body, "LocalAet", ctx.config.dicom_aet)
    originator_aet = string_field(body, "MoveOriginatorAet", ctx.config.dicom_aet)
    originator_id = integer_field(body, "MoveOriginatorID", 0)
    if not 0 <= originator_id <= 65535:
        raise DicomVaultError(ErrorCode.PARAMETER_OUT_OF_RANGE, f"MoveOriginatorID out of range: {originator_id}")
    if read_boolean(body, "StorageCommitment", False):
        raise DicomVaultError(ErrorCode.NOT_IMPLEMENTED, "storage commitment (StorageCommitment) is not supported")
    timeout = read_unsigned(body, "Timeout")
    options = job_options(body)
    job = DicomStoreJob(
        ctx,
        modality,
        instances,
        local_aet=local_aet,
        move_originator_aet=originator_aet if originator_id else "",
        move_originator_id=originator_id,
        description=_DESCRIPTION,
        parent_resources=ids,
        timeout=timeout,
        permissive=options.permissive,
    )
    logger.info('C-STORE of %d instances to modality "%s" (%s)', len(instances), name, modality.aet)
    return JsonResponse(await run_job(ctx, job, options))


async def store_straight(request: Request) -> Response:
    ctx = context(request)
    _, modality = _modality(ctx, request)
    raw = await read_body(request, ctx.config.maximum_upload_size or MAX_JSON_BODY)
    params = scu_parameters(ctx.config, modality)

    def run() -> dict[str, str]:
        check_dicom_file(raw)  # Orthanc parses the body first: garbage is 400 "Bad file format"
        client = StoreClient(params)
        try:
            sent = client.store(raw)
        finally:
            client.close()
        return {"SOPClassUID": sent.sop_class_uid, "SOPInstanceUID": sent.sop_instance_uid}

    return JsonResponse(await run_in_threadpool(run))


# ---- C-MOVE ----------------------------------------------------------------------------------


def move_resources(level: ResourceType, items: list[Any]) -> list[FindAnswer]:
    """The resources of a `/move` body as flat maps of tags (Orthanc's `FromJson` checks)."""
    resources: list[FindAnswer] = []
    for item in items:
        if not isinstance(item, dict):
            raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, "Resources elements must be JSON objects")
        elements: dict[int, str] = {}
        for key, value in item.items():
            tag = parse_tag(key)
            if not isinstance(value, str):
                raise DicomVaultError(
                    ErrorCode.BAD_FILE_FORMAT, f"Resources elements: the value of {key} must be a string"
                )
            elements[tag] = value
        elements[QUERY_RETRIEVE_LEVEL] = LEVEL_KEYWORDS[level]
        missing = [tag for tag in IDENTIFYING[level] if tag not in elements]
        if missing:
            raise DicomVaultError(ErrorCode.BAD_REQUEST, f"Missing tag {format_tag(missing[0])}")
        resources.append(FindAnswer(tuple((t, tag_name(t), "String", v) for t, v in sorted(elements.items()))))
    return resources


async def move(request: Request) -> Response:
    ctx = context(request)
    body = await json_body(request, "Must provide a JSON body containing fields Resources and Level")
    if not (isinstance(body, dict) and isinstance(body.get("Resources"), list) and isinstance(body.get("Level"), str)):
        raise DicomVaultError(
            ErrorCode.BAD_FILE_FORMAT, "Must provide a JSON body containing fields Resources and Level"
        )
    level = parse_level(body["Level"])
    _, modality = _modality(ctx, request)
    local_aet = string_field(body, "LocalAet", ctx.config.dicom_aet)
    timeout = read_unsigned(body, "Timeout")
    resources = move_resources(level, body["Resources"])
    target = string_field(body, "TargetAet", ctx.config.dicom_aet)
    options = job_options(body)
    job = DicomMoveScuJob(
        ctx,
        modality,
        resources,
        level=level,
        target_aet=target,
        local_aet=local_aet,
        timeout=timeout,
        query_format=TagsFormat.SHORT,
        description=_DESCRIPTION,
        permissive=options.permissive,
    )
    answer = await run_job(ctx, job, options)
    return JsonResponse(answer if not options.synchronous else {})


def routes() -> list[Route]:
    """The modality routes, in the manner of Orthanc's RegisterResources()."""
    return [
        logged_route("/modalities", list_modalities, "GET"),
        logged_route("/modalities/{id}", get_modality, "GET"),
        logged_route("/modalities/{id}", put_modality, "PUT"),
        logged_route("/modalities/{id}", delete_modality, "DELETE"),
        logged_route("/modalities/{id}/configuration", get_configuration, "GET"),
        logged_route("/modalities/{id}/echo", echo, "POST"),
        logged_route("/modalities/{id}/store", store, "POST"),
        logged_route("/modalities/{id}/store-straight", store_straight, "POST"),
        logged_route("/modalities/{id}/move", move, "POST"),
    ]
