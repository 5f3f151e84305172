"""Request reading shared by the DICOM network routes (`/modalities`, `/queries`): JSON bodies read
as Orthanc reads them, its typed field readers with their exact errors, and the submission of a
job synchronously (the default) or asynchronously, as Orthanc's `SubmitCommandsJob`.

Orthanc's field readers, reproduced because clients see their messages:

* `SerializationToolbox` (Timeout, Priority, Synchronous, ...): a value of the wrong type is
  400 "Bad file format" with `Integer value expected in field: Timeout`, `Unsigned integer value
  expected in field: Timeout` (negative), `Boolean value expected in field: Synchronous`;
* `Toolbox::GetJson...Field` (LocalAet, TargetAet, MoveOriginatorID, ...): a value of the wrong
  type is 400 "Bad type for a parameter", without details.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomvault.context import ServerContext
from dicomvault.dicom.tags_json import TagsFormat
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.find.query import JsonSyntaxError, read_json
from dicomvault.jobs.job import Job
from dicomvault.rest.requests import read_body
from dicomvault.rest.responses import JsonResponse

logger = logging.getLogger(__name__)

# Bodies of these routes are small JSON documents (or one DICOM file for store-straight).
MAX_JSON_BODY = 16 * 1024 * 1024

Handler = Callable[[Request], Awaitable[Response]]


def refusals_logged(handler: Handler) -> Handler:
    """Log every refused request at warning level with its reason (the error answer itself is
    rendered by the application; 5xx errors are logged there at error level)."""

    @functools.wraps(handler)
    async def logged(request: Request) -> Response:
        try:
            return await handler(request)
        except DicomVaultError as exc:
            if exc.http_status < 500:
                logger.warning("%s %s refused: %s", request.method, request.url.path, exc)
            raise

    return logged


def logged_route(path: str, handler: Handler, method: str) -> Route:
    """One row of a route table, its refusals logged."""
    return Route(path, refusals_logged(handler), methods=[method])


async def json_body(request: Request, error: str, *, empty_ok: bool = False) -> Any:
    """The body parsed as JSON (jsoncpp's lenient reading); `error` is the details of Orthanc's 400
    "Bad file format" when it is not JSON. An empty body is `{}` when `empty_ok`."""
    body = await read_body(request, MAX_JSON_BODY)
    if empty_ok and not body:
        return {}
    try:
        return read_json(body)
    except JsonSyntaxError as exc:
        raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, error) from exc


def _is_int(value: Any) -> bool:
    return type(value) is int


def read_unsigned(body: Any, key: str) -> int | None:
    """`SerializationToolbox::ReadUnsignedInteger` of an optional field of an object."""
    if not isinstance(body, dict) or key not in body:
        return None
    value = body[key]
    if not _is_int(value):
        raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, f"Integer value expected in field: {key}")
    if value < 0:
        raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, f"Unsigned integer value expected in field: {key}")
    return int(value)


def read_integer(body: Any, key: str, default: int) -> int:
    """`SerializationToolbox::ReadInteger` with a default."""
    if not isinstance(body, dict) or key not in body:
        return default
    value = body[key]
    if not _is_int(value):
        raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, f"Integer value expected in field: {key}")
    return int(value)


def read_boolean(body: Any, key: str, default: bool) -> bool:
    """`SerializationToolbox::ReadBoolean` with a default."""
    if not isinstance(body, dict) or key not in body:
        return default
    value = body[key]
    if not isinstance(value, bool):
        raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, f"Boolean value expected in field: {key}")
    return value


def string_field(body: Any, key: str, default: str) -> str:
    """`Toolbox::GetJsonStringField`."""
    if not isinstance(body, dict) or key not in body:
        return default
    value = body[key]
    if not isinstance(value, str):
        raise DicomVaultError(ErrorCode.BAD_PARAMETER_TYPE, f"{key} must be a string")
    return value


def integer_field(body: Any, key: str, default: int) -> int:
    """`Toolbox::GetJsonIntegerField`."""
    if not isinstance(body, dict) or key not in body:
        return default
    value = body[key]
    if not _is_int(value):
        raise DicomVaultError(ErrorCode.BAD_PARAMETER_TYPE, f"{key} must be an integer")
    return int(value)


def tags_format(body: Any, default: TagsFormat) -> TagsFormat:
    """The `Short` / `Simplify` / `Full` options of a body (the first true one wins)."""
    for key, form in (("Short", TagsFormat.SHORT), ("Simplify", TagsFormat.SIMPLIFY), ("Full", TagsFormat.FULL)):
        if read_boolean(body, key, False):
            return form
    return default


@dataclass(frozen=True)
class JobOptions:
    """Orthanc's options of a job submitted over REST."""

    synchronous: bool
    priority: int
    permissive: bool


def job_options(body: Any, synchronous_default: bool = True) -> JobOptions:
    if isinstance(body, dict) and "Synchronous" in body:
        synchronous = read_boolean(body, "Synchronous", synchronous_default)
    elif isinstance(body, dict) and "Asynchronous" in body:
        synchronous = not read_boolean(body, "Asynchronous", not synchronous_default)
    else:
        synchronous = synchronous_default
    return JobOptions(synchronous, read_integer(body, "Priority", 0), read_boolean(body, "Permissive", False))


async def run_job(ctx: ServerContext, job: Job, options: JobOptions) -> dict[str, Any]:
    """Submit `job`: its content once finished (synchronous), or `{"ID", "Path"}` at once."""
    if options.synchronous:
        content: dict[str, Any] = await run_in_threadpool(ctx.jobs.submit_and_wait, job, options.priority)
        return content
    job_id = ctx.jobs.submit(job, options.priority)
    return {"ID": job_id, "Path": f"/jobs/{job_id}"}


def empty_answer() -> Response:
    """Orthanc's empty 200 answer of PUT/DELETE routes."""
    return Response(b"", headers={"Content-Type": "text/plain"})


def json_answer(content: Any) -> Response:
    return JsonResponse(content)
