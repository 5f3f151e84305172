"""REST routes of C-FIND SCU and retrieve: `/modalities/{m}/query` and `/queries/...` (the query/
retrieve registry, its answers, sub-queries and retrieves), and the older
`/modalities/{m}/find-patient|find-study|find-series|find-instance|find`.

Behaviour checked against Orthanc 1.10.1 (facts, not its code):

* `query` checks, in order: a JSON object, `Level` a string, `Normalize` a Boolean, `Query` an
  object, `LocalAet` a string (400 "Bad file format" with Orthanc's details), then the modality
  (404), the level name (400 "Parameter out of range"), the tags and their string values (400
  `Associative array of DICOM tags to strings expected in field: Query`) and `Timeout`. The C-FIND
  runs at once and the answers are kept: `{"ID", "Path"}`.
* `/queries/{q}/answers` lists indices (`?expand`: the answers, full format unless `?simplify` or
  `?short`); an index that is not a number is 400 "Bad type for a parameter", one out of range 400
  "Parameter out of range"; an unknown query 404; `DELETE` always answers an empty 200.
* `retrieve` takes a JSON body (`TargetAet`, `Timeout`, `Synchronous`/`Asynchronous`, `Priority`,
  `Permissive`, `Simplify`/`Short`/`Full` for the job's `Query`), or the target AET as plain text;
  the target defaults to the modality's `LocalAet`, else `DicomAet`. It runs a "DicomMoveScu" job
  (synchronous by default) whose errors carry no HTTP status of their own (500 for a C-MOVE
  failure status), as Orthanc's jobs.
* `find-*` (deprecated in Orthanc) merge the body into Orthanc's template of the level and answer
  the simplified answers; a query that does not narrow the search enough gets an empty 400.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomvault.context import ServerContext
from dicomvault.dicom.tags_json import TagsFormat, parse_tags_format
from dicomvault.enums import ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.find.query import JsonSyntaxError, parse_level, parse_tag, read_json
from dicomvault.network.move_job import DicomMoveScuJob
from dicomvault.network.queries import (
    ACCESSION_NUMBER,
    PATIENT_ID,
    QUERY_RETRIEVE_LEVEL,
    SERIES_INSTANCE_UID,
    SOP_INSTANCE_UID,
    STUDY_INSTANCE_UID,
    FindAnswer,
    QueryRegistry,
    QueryRetrieve,
    find,
    legacy_level_query,
    legacy_query_accepted,
    legacy_template,
    query_elements,
    render_elements,
)
from dicomvault.network.scu import ScuAssociation, control_contexts, scu_parameters
from dicomvault.rest.dicom_requests import (
    MAX_JSON_BODY,
    empty_answer,
    integer_field,
    job_options,
    json_body,
    logged_route,
    read_unsigned,
    run_job,
    string_field,
    tags_format,
)
from dicomvault.rest.metadata import plain
from dicomvault.rest.requests import context, flag, read_body
from dicomvault.rest.responses import JsonResponse

logger = logging.getLogger(__name__)

_DESCRIPTION = "REST API"
# What a retrieve job keeps of each answer (Orthanc 1.10.1's DicomMoveScuJob).
_RETRIEVE_TAGS: tuple[int, ...] = (
    QUERY_RETRIEVE_LEVEL,
    PATIENT_ID,
    STUDY_INSTANCE_UID,
    SERIES_INSTANCE_UID,
    SOP_INSTANCE_UID,
)
_RETRIEVE_TAGS += (ACCESSION_NUMBER,)
# Sub-queries: the tags of the parent answer copied into the child query, per parent level.
_PARENT_KEYS: dict[ResourceType, tuple[int, ...]] = {
    ResourceType.PATIENT: (PATIENT_ID,),
    ResourceType.STUDY: (STUDY_INSTANCE_UID,),
    ResourceType.SERIES: (STUDY_INSTANCE_UID, SERIES_INSTANCE_UID),
    ResourceType.INSTANCE: (STUDY_INSTANCE_UID, SERIES_INSTANCE_UID, SOP_INSTANCE_UID),
}
_CHILD_OPERATIONS = {
    ResourceType.PATIENT: ["query-study", "query-series", "query-instances"],  # sic: Orthanc lists "query-study"
    ResourceType.STUDY: ["query-series", "query-instances"],
    ResourceType.SERIES: ["query-instances"],
    ResourceType.INSTANCE: [],
}


def registry(request: Request) -> QueryRegistry:
    """The server's query/retrieve registry."""
    return context(request).queries


def _query_tags(body: Mapping[str, Any]) -> dict[int, str]:
    """`SerializationToolbox::ReadMapOfTags` on the `Query` field."""
    query = body.get("Query", {})
    if not isinstance(query, dict):  # e.g. "Query": null in a sub-query body (was a 500)
        raise DicomVaultError(
            ErrorCode.BAD_FILE_FORMAT, "Associative array of DICOM tags to strings expected in field: Query"
        )
    tags: dict[int, str] = {}
    for name, value in query.items():
        try:
            tag = parse_tag(name)
        except DicomVaultError:
            tag = -1
        if tag < 0 or not isinstance(value, str):
            raise DicomVaultError(
                ErrorCode.BAD_FILE_FORMAT, "Associative array of DICOM tags to strings expected in field: Query"
            )
        tags[tag] = value
    return tags


def _run_query(
    ctx: ServerContext,
    name: str,
    level: ResourceType,
    query: dict[int, str],
    *,
    normalize: bool,
    local_aet: str | None,
    timeout: int | None,
) -> QueryRetrieve:
    modality = ctx.modalities.get(name)
    params = scu_parameters(ctx.config, modality, local_aet=local_aet, timeout=timeout)
    with ScuAssociation(params, control_contexts()) as association:
        answers = find(association, level, query, normalize=normalize, default_encoding=ctx.config.default_encoding)
    return QueryRetrieve(
        name, modality, level, tuple(sorted(query.items())), normalize, local_aet, timeout, tuple(answers)
    )


def _known_modality(ctx: ServerContext, name: str) -> None:
    try:
        ctx.modalities.get(name)
    except DicomVaultError as exc:
        raise DicomVaultError(exc.code, f"No modality with symbolic name: {name}") from exc


async def query(request: Request) -> Response:
    ctx = context(request)
    body = await json_body(request, "Must provide a JSON object")
    if not isinstance(body, dict):
        raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, "Must provide a JSON object")
    if not isinstance(body.get("Level"), str):
        raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, "The JSON body must contain field Level")
    if "Normalize" in body and not isinstance(body["Normalize"], bool):
        raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, "The field Normalize must contain a Boolean")
    if "Query" in body and not isinstance(body["Query"], dict):
        raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, "The field Query must contain a JSON object")
    if "LocalAet" in body and not isinstance(body["LocalAet"], str):
        raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, "The field LocalAet must contain a string")
    name = request.path_params["id"]
    _known_modality(ctx, name)
    level = parse_level(body["Level"])
    tags = _query_tags(body)
    timeout = read_unsigned(body, "Timeout")
    found = await run_in_threadpool(
        _run_query,
        ctx,
        name,
        level,
        tags,
        normalize=bool(body.get("Normalize", True)),
        local_aet=body.get("LocalAet"),
        timeout=timeout,
    )
    query_id = registry(request).add(found)
    return JsonResponse({"ID": query_id, "Path": f"/queries/{query_id}"})


# ---- the registry ----------------------------------------------------------------------------


def _get(request: Request) -> QueryRetrieve:
    return registry(request).get(request.path_params["id"])


def _index(request: Request) -> int:
    """An answer index as Orthanc reads it (an unsigned number: `-1` wraps around, hence is out of
    range, while `x` is not a number)."""
    text = request.path_params["index"]
    digits = text[1:] if text.startswith(("-", "+")) else text
    if not digits.isascii() or not digits.isdigit():
        raise DicomVaultError(ErrorCode.BAD_PARAMETER_TYPE, "Syntax error in some user-supplied data")
    value = int(digits)
    return -value if text.startswith("-") and value else value


async def list_queries(request: Request) -> Response:
    return JsonResponse(registry(request).ids())


async def get_query(request: Request) -> Response:
    _get(request)
    return JsonResponse(["answers", "level", "modality", "query", "retrieve"])


async def delete_query(request: Request) -> Response:
    registry(request).remove(request.path_params["id"])
    return empty_answer()


async def list_answers(request: Request) -> Response:
    found = _get(request)
    if not flag(request, "expand"):
        return JsonResponse([str(i) for i in range(len(found.answers))])
    form = parse_tags_format(request.query_params)
    return JsonResponse([answer.render(form) for answer in found.answers])


async def get_answer(request: Request) -> Response:
    found = _get(request)
    found.answer(_index(request))
    return JsonResponse(["content", "retrieve", *_CHILD_OPERATIONS[found.level]])


async def answer_content(request: Request) -> Response:
    found = _get(request)
    answer = found.answer(_index(request))
    return JsonResponse(answer.render(parse_tags_format(request.query_params)))


async def query_level(request: Request) -> Response:
    return plain(_get(request).level.label)


async def query_modality(request: Request) -> Response:
    return plain(_get(request).modality_name)


async def query_query(request: Request) -> Response:
    found = _get(request)
    return JsonResponse(render_elements(query_elements(dict(found.query)), parse_tags_format(request.query_params)))


# ---- retrieve --------------------------------------------------------------------------------


async def _retrieve(request: Request, indices: list[int] | None) -> Response:
    ctx = context(request)
    found = _get(request)
    answers = found.answers if indices is None else tuple(found.answer(i) for i in indices)
    raw = await read_body(request, MAX_JSON_BODY)
    target = found.modality.local_aet or ctx.config.dicom_aet
    body: Any
    try:
        body = read_json(raw)
    except JsonSyntaxError:
        body = {}
        if raw:
            target = raw.decode("utf-8", "replace")  # the target AET as plain text
    target = string_field(body, "TargetAet", target)
    timeout = integer_field(body, "Timeout", -1)
    form = tags_format(body, TagsFormat.SHORT)
    options = job_options(body)
    job = DicomMoveScuJob(
        ctx,
        found.modality,
        [answer.restricted(_RETRIEVE_TAGS) for answer in answers],
        level=found.level,
        target_aet=target,
        local_aet=found.local_aet,
        timeout=timeout if timeout >= 0 else found.timeout,
        query_format=form,
        description=_DESCRIPTION,
        permissive=options.permissive,
    )
    logger.info('retrieve of %d answers from modality "%s" to AET "%s"', len(answers), found.modality_name, target)
    try:
        return JsonResponse(await run_job(ctx, job, options))
    except DicomVaultError as exc:
        # A job keeps only its error code and details: no HTTP status of a direct request (such
        # as 422 for "unable to process") survives it, as in Orthanc.
        raise DicomVaultError(exc.code, exc.details) from exc


async def retrieve_all(request: Request) -> Response:
    return await _retrieve(request, None)


async def retrieve_one(request: Request) -> Response:
    return await _retrieve(request, [_index(request)])


# ---- sub-queries -----------------------------------------------------------------------------


def _child_query(level: ResourceType) -> Any:
    async def handler(request: Request) -> Response:
        ctx = context(request)
        parent = _get(request)
        index = _index(request)
        parent.answer(index)
        allowed = {
            ResourceType.STUDY: (ResourceType.PATIENT,),
            ResourceType.SERIES: (ResourceType.PATIENT, ResourceType.STUDY),
            ResourceType.INSTANCE: (ResourceType.PATIENT, ResourceType.STUDY, ResourceType.SERIES),
        }[level]
        if parent.level not in allowed:
            raise DicomVaultError(ErrorCode.UNKNOWN_RESOURCE, f"no {level.plural} below a {parent.level.label}")
        body = await json_body(request, "Must provide a JSON object")
        timeout = read_unsigned(body, "Timeout")
        tags = _query_tags(body) if isinstance(body, dict) and "Query" in body else {}
        answer = parent.answer(index)
        for tag in _PARENT_KEYS[parent.level]:
            value = answer.get(tag)
            if value is not None:
                tags[tag] = value
        found = await run_in_threadpool(
            _run_query,
            ctx,
            parent.modality_name,
            level,
            tags,
            normalize=parent.normalize,
            local_aet=parent.local_aet,
            timeout=timeout if timeout is not None else parent.timeout,
        )
        query_id = registry(request).add(found)
        return JsonResponse({"ID": query_id, "Path": f"/queries/{query_id}"})

    return handler


# ---- the older find routes -------------------------------------------------------------------


def _json_string(value: Any) -> str:
    """jsoncpp's `asString()` of a member value."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise DicomVaultError(ErrorCode.BAD_REQUEST, "the values of a find query must be strings")


def _merged(level: ResourceType, body: dict[str, Any]) -> dict[int, str]:
    fields = legacy_template(level)
    for name, value in body.items():
        fields[parse_tag(name)] = _json_string(value)
    return fields


def _legacy_find(level: ResourceType | None) -> Any:
    async def handler(request: Request) -> Response:
        ctx = context(request)
        logger.warning("this URI is deprecated: %s", request.url.path)
        try:
            body = read_json(await read_body(request, MAX_JSON_BODY))
        except JsonSyntaxError:
            body = None
        if not isinstance(body, dict):
            return Response(status_code=400)  # Orthanc answers nothing: an empty 400
        name = request.path_params["id"]
        _known_modality(ctx, name)
        modality = ctx.modalities.get(name)
        params = scu_parameters(ctx.config, modality)
        encoding = ctx.config.default_encoding
        if level is not None:
            fields = _merged(level, body)
            if not legacy_query_accepted(level, fields):
                logger.warning("%s: the query does not narrow the search enough: nothing asked", request.url.path)
                return Response(status_code=400)

            def one() -> list[dict[str, Any]]:
                with ScuAssociation(params, control_contexts()) as association:
                    answers = find(
                        association, level, legacy_level_query(level, fields), normalize=True, default_encoding=encoding
                    )
                return [a.render(TagsFormat.SIMPLIFY) for a in answers]

            return JsonResponse(await run_in_threadpool(one))

        def tree() -> list[dict[str, Any]]:
            return _hierarchy(params, body, encoding)

        return JsonResponse(await run_in_threadpool(tree))

    return handler


def _hierarchy(params: Any, body: dict[str, Any], encoding: str) -> list[dict[str, Any]]:
    """`/modalities/{m}/find`: patients, each with its studies, each with its series."""

    def level_find(association: ScuAssociation, level: ResourceType, parent: FindAnswer | None) -> list[FindAnswer]:
        fields = _merged(level, body)
        if parent is not None:
            for tag in (PATIENT_ID, STUDY_INSTANCE_UID) if level is ResourceType.SERIES else (PATIENT_ID,):
                value = parent.get(tag)
                if value is not None:
                    fields[tag] = value
        query = legacy_level_query(level, fields)
        return find(association, level, query, normalize=True, default_encoding=encoding)

    result: list[dict[str, Any]] = []
    with ScuAssociation(params, control_contexts()) as association:
        for patient in level_find(association, ResourceType.PATIENT, None):
            studies = []
            for study in level_find(association, ResourceType.STUDY, patient):
                series = [s.render(TagsFormat.SIMPLIFY) for s in level_find(association, ResourceType.SERIES, study)]
                studies.append({**study.render(TagsFormat.SIMPLIFY), "Series": series})
            result.append({**patient.render(TagsFormat.SIMPLIFY), "Studies": studies})
    return result


def routes() -> list[Route]:
    """The query/retrieve routes, in the manner of Orthanc's RegisterResources()."""
    return [
        logged_route("/modalities/{id}/query", query, "POST"),
        logged_route("/modalities/{id}/find-patient", _legacy_find(ResourceType.PATIENT), "POST"),
        logged_route("/modalities/{id}/find-study", _legacy_find(ResourceType.STUDY), "POST"),
        logged_route("/modalities/{id}/find-series", _legacy_find(ResourceType.SERIES), "POST"),
        logged_route("/modalities/{id}/find-instance", _legacy_find(ResourceType.INSTANCE), "POST"),
        logged_route("/modalities/{id}/find", _legacy_find(None), "POST"),
        logged_route("/queries", list_queries, "GET"),
        logged_route("/queries/{id}", get_query, "GET"),
        logged_route("/queries/{id}", delete_query, "DELETE"),
        logged_route("/queries/{id}/answers", list_answers, "GET"),
        logged_route("/queries/{id}/answers/{index}", get_answer, "GET"),
        logged_route("/queries/{id}/answers/{index}/content", answer_content, "GET"),
        logged_route("/queries/{id}/answers/{index}/retrieve", retrieve_one, "POST"),
        logged_route("/queries/{id}/answers/{index}/query-studies", _child_query(ResourceType.STUDY), "POST"),
        logged_route("/queries/{id}/answers/{index}/query-series", _child_query(ResourceType.SERIES), "POST"),
        logged_route("/queries/{id}/answers/{index}/query-instances", _child_query(ResourceType.INSTANCE), "POST"),
        logged_route("/queries/{id}/level", query_level, "GET"),
        logged_route("/queries/{id}/modality", query_modality, "GET"),
        logged_route("/queries/{id}/query", query_query, "GET"),
        logged_route("/queries/{id}/retrieve", retrieve_all, "POST"),
    ]
