"""The logs over REST: `/changes` and `/exports` as Orthanc 1.10.1 answers them, and
`/dicomvault/deleted`, dicomvault's deletion log (under a prefix no Orthanc client asks for).

Orthanc's two logs share one reading of `since`, `limit` and `last`, reproduced here with its
quirks: the query string is taken as sent (no percent-decoding, `+` stays `+`; the last of a
repeated argument counts); `last` (any value) answers the last entry alone; otherwise `since` is
a signed 64-bit integer (default 0) and `limit` an unsigned 32-bit one (default 100, no maximum)
where a leading `-` wraps around (`-1` is 4294967295). Anything else in either (a decimal point,
a space, an escape, an overflow, an empty value) silently makes both the defaults: never an error.

`Last` is the `seq` of the last entry answered. With no entry, `/changes` answers the last `seq`
ever given (still counted after `DELETE /changes` or the deletion of the resources), `/exports`
the `since` asked for (0 with `last`), both truncated to 32 bits as Orthanc does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.index import changes as log
from dicomvault.index.transactions import ReadTx, WriteTx
from dicomvault.rest.requests import context, int_argument
from dicomvault.rest.responses import JsonResponse

T = TypeVar("T")

ORTHANC_DEFAULT_LIMIT = 100
DELETED_DEFAULT_LIMIT = 100
DELETED_MAXIMUM_LIMIT = 10000

_INTEGER = re.compile(r"[+-]?[0-9]+")
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_UINT32 = 1 << 32


def _as_int64(raw: str) -> int | None:
    """A signed 64-bit integer as Orthanc's parser reads one (sign allowed, nothing else)."""
    if not _INTEGER.fullmatch(raw):
        return None
    value = int(raw)
    return value if _INT64_MIN <= value <= _INT64_MAX else None


def _as_uint32(raw: str) -> int | None:
    """An unsigned 32-bit integer as Orthanc's parser reads one: `-N` wraps to 2^32 - N."""
    if not _INTEGER.fullmatch(raw):
        return None
    value = int(raw)
    if abs(value) >= _UINT32:
        return None
    return value % _UINT32


def raw_arguments(request: Request) -> dict[str, str]:
    """The GET arguments as Orthanc 1.10.1 reads them for these routes: not decoded."""
    query = bytes(request.scope.get("query_string", b"")).decode("latin-1")
    arguments: dict[str, str] = {}
    for part in query.split("&"):
        if part:
            name, _, value = part.partition("=")
            arguments[name] = value
    return arguments


def orthanc_range(request: Request) -> tuple[int, int] | None:
    """(since, limit) of a request to an Orthanc log, or None for `?last`."""
    params = raw_arguments(request)
    if "last" in params:
        return None
    since = _as_int64(params.get("since", "0"))
    limit = _as_uint32(params.get("limit", str(ORTHANC_DEFAULT_LIMIT)))
    if since is None or limit is None:
        return 0, ORTHANC_DEFAULT_LIMIT
    return since, limit


def _answer(key: str, entries: list[dict[str, Any]], done: bool, last: int) -> Response:
    return JsonResponse({key: entries, "Done": done, "Last": log.as_int32(last)})


def _empty_text() -> Response:
    # Orthanc answers a cleared log with an empty `text/plain` body.
    return Response(b"", headers={"content-type": "text/plain"})


async def _read(request: Request, fn: Callable[[ReadTx], T]) -> T:
    ctx = context(request)
    return await run_in_threadpool(ctx.index.read, fn)


async def _write(request: Request, fn: Callable[[WriteTx], None]) -> None:
    await context(request).index.write_async(fn)


# ---- /changes ---------------------------------------------------------------------------------


async def get_changes(request: Request) -> Response:
    asked = orthanc_range(request)

    def read(tx: ReadTx) -> Response:
        if asked is None:
            change = log.last_change(tx)
            if change is None:
                return _answer("Changes", [], True, log.last_change_index(tx))
            return _answer("Changes", [change.to_json()], True, change.seq)
        since, limit = asked
        page = log.changes(tx, since, limit)
        last = page.entries[-1].seq if page.entries else log.last_change_index(tx)
        return _answer("Changes", [c.to_json() for c in page.entries], page.done, last)

    return await _read(request, read)


async def delete_changes(request: Request) -> Response:
    await _write(request, log.clear_changes)
    return _empty_text()


async def changes_endpoint(request: Request) -> Response:
    return await (delete_changes(request) if request.method == "DELETE" else get_changes(request))


# ---- /exports ---------------------------------------------------------------------------------


async def get_exports(request: Request) -> Response:
    asked = orthanc_range(request)

    def read(tx: ReadTx) -> Response:
        if asked is None:
            exported = log.last_export(tx)
            entries = [] if exported is None else [exported]
            since = 0
            done = True
        else:
            since, limit = asked
            page = log.exports(tx, since, limit)
            entries, done = list(page.entries), page.done
        last = entries[-1].seq if entries else since
        return _answer("Exports", [e.to_json() for e in entries], done, last)

    return await _read(request, read)


async def delete_exports(request: Request) -> Response:
    await _write(request, log.clear_exports)
    return _empty_text()


async def exports_endpoint(request: Request) -> Response:
    return await (delete_exports(request) if request.method == "DELETE" else get_exports(request))


# ---- /dicomvault/deleted (dicomvault's extension) ---------------------------------------------


async def get_deleted(request: Request) -> Response:
    """Every resource deleted from the index, oldest first, for replication to mirror.

    Unlike Orthanc's logs, arguments are checked (400 on a bad one): `since` (>= 0, default 0),
    `limit` (1..10000, default 100). `Last` is the `seq` of the last entry answered, or with no
    entry the last `seq` ever given: a client persists it as its cursor and asks `since=Last`.
    """
    since = int_argument(request, "since")
    limit = int_argument(request, "limit")
    since = 0 if since is None else since
    limit = DELETED_DEFAULT_LIMIT if limit is None else limit
    if since < 0:
        raise DicomVaultError(ErrorCode.PARAMETER_OUT_OF_RANGE, f"since must be >= 0, not {since}")
    if not 1 <= limit <= DELETED_MAXIMUM_LIMIT:
        raise DicomVaultError(
            ErrorCode.PARAMETER_OUT_OF_RANGE, f"limit must be in 1..{DELETED_MAXIMUM_LIMIT}, not {limit}"
        )

    def read(tx: ReadTx) -> Response:
        page = log.deleted(tx, since, limit)
        last = page.entries[-1].seq if page.entries else log.last_deleted_index(tx)
        return JsonResponse({"Deleted": [d.to_json() for d in page.entries], "Done": page.done, "Last": last})

    return await _read(request, read)


def routes() -> list[Route]:
    """The table of the logs' routes, in the manner of Orthanc's RegisterResources()."""
    return [
        Route("/changes", changes_endpoint, methods=["GET", "DELETE"]),
        Route("/exports", exports_endpoint, methods=["GET", "DELETE"]),
        Route("/dicomvault/deleted", get_deleted, methods=["GET"]),
    ]
