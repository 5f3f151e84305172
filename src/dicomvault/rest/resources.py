"""Routes common to the four levels: lists (`?expand`, `?since`, `?limit`), one resource, its
children and ancestors, and deletion."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomvault.context import ServerContext
from dicomvault.enums import ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.find.resources import ancestor_of, children_of, describe, require
from dicomvault.index.recycling import is_protected, set_protected
from dicomvault.index.transactions import ReadTx, WriteTx
from dicomvault.ingest.delete import Deleter
from dicomvault.ingest.store import now_iso
from dicomvault.model import ResourceRef
from dicomvault.rest.requests import context, flag, int_argument
from dicomvault.rest.responses import JsonResponse


def _render(ctx: ServerContext, tx: ReadTx, refs: list[ResourceRef], expand: bool) -> list[Any]:
    if expand:
        return describe(tx, refs, ctx.config.stable_age, ctx.clock, ctx.stability)
    return [r.public_id for r in refs]


def list_route(level: ResourceType) -> Route:
    async def endpoint(request: Request) -> Response:
        ctx = context(request)
        expand = flag(request, "expand")
        since = int_argument(request, "since")
        limit = int_argument(request, "limit")
        # Orthanc 1.10.1: a negative "since" counts from 0, a negative "limit" means no limit,
        # and "limit=0" answers nothing.
        # As Orthanc: "since" and "limit" go together.
        if (since is None) != (limit is None):
            missing = "since" if since is None else "limit"
            raise DicomVaultError(
                ErrorCode.BAD_REQUEST,
                f'Missing "{missing}" argument for GET request against: /{level.plural}/',
            )

        def read(tx: ReadTx) -> list[Any]:
            if limit == 0:
                return []
            start = max(since or 0, 0)
            count = limit if limit is not None and limit > 0 else None
            return _render(ctx, tx, tx.list_resources(level, start, count), expand)

        return JsonResponse(await run_in_threadpool(ctx.index.read, read))

    return Route(f"/{level.plural}", endpoint, methods=["GET"])


def one_route(level: ResourceType) -> Route:
    async def get(request: Request) -> Response:
        ctx = context(request)
        public_id = request.path_params["id"]

        def read(tx: ReadTx) -> Any:
            return describe(tx, [require(tx, level, public_id)], ctx.config.stable_age, ctx.clock, ctx.stability)[0]

        return JsonResponse(await run_in_threadpool(ctx.index.read, read))

    async def delete(request: Request) -> Response:
        ctx = context(request)
        deleter = Deleter(ctx.index, ctx.accessor)
        outcome = await run_in_threadpool(deleter.delete, level, request.path_params["id"], now_iso(ctx.clock))
        ancestor = outcome.remaining_ancestor
        remaining = (
            None
            if ancestor is None
            else {"ID": ancestor.public_id, "Path": ancestor.path, "Type": ancestor.level.label}
        )
        return JsonResponse({"RemainingAncestor": remaining})

    async def endpoint(request: Request) -> Response:
        return await (delete(request) if request.method == "DELETE" else get(request))

    return Route(f"/{level.plural}/{{id}}", endpoint, methods=["GET", "DELETE"])


def children_route(level: ResourceType, below: ResourceType) -> Route:
    async def endpoint(request: Request) -> Response:
        ctx = context(request)
        public_id = request.path_params["id"]

        def read(tx: ReadTx) -> list[Any]:
            # Orthanc 1.10.1 always answers full descriptions on these routes.
            refs = children_of(tx, require(tx, level, public_id), below)
            return describe(tx, refs, ctx.config.stable_age, ctx.clock, ctx.stability)

        return JsonResponse(await run_in_threadpool(ctx.index.read, read))

    return Route(f"/{level.plural}/{{id}}/{below.plural}", endpoint, methods=["GET"])


def parent_route(level: ResourceType, above: ResourceType) -> Route:
    async def endpoint(request: Request) -> Response:
        ctx = context(request)
        public_id = request.path_params["id"]

        def read(tx: ReadTx) -> Any:
            ref = ancestor_of(tx, require(tx, level, public_id), above)
            return describe(tx, [ref], ctx.config.stable_age, ctx.clock, ctx.stability)[0]

        return JsonResponse(await run_in_threadpool(ctx.index.read, read))

    return Route(f"/{level.plural}/{{id}}/{above.label.lower()}", endpoint, methods=["GET"])


def _patient_for_protection(tx: ReadTx, public_id: str) -> ResourceRef:
    ref = tx.lookup(public_id, ResourceType.PATIENT)
    if ref is None:
        # Orthanc 1.10.1 answers "Parameter out of range" (400) for an unknown patient here.
        raise DicomVaultError(ErrorCode.PARAMETER_OUT_OF_RANGE, f"Unknown patient: {public_id}")
    return ref


def _parse_protection(body: bytes) -> bool:
    value = body.decode("utf-8", errors="replace").strip().lower()
    if value in ("1", "true"):
        return True
    if value in ("0", "false"):
        return False
    raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, "Boolean value expected")


async def protected(request: Request) -> Response:
    ctx = context(request)
    public_id = request.path_params["id"]
    if request.method == "GET":

        def read(tx: ReadTx) -> bool:
            return is_protected(tx, _patient_for_protection(tx, public_id))

        value = await run_in_threadpool(ctx.index.read, read)
        return Response(b"1" if value else b"0", headers={"content-type": "text/plain"})
    wanted = _parse_protection(await request.body())

    def write(tx: WriteTx) -> None:
        set_protected(tx, _patient_for_protection(tx, public_id), wanted)

    await ctx.index.write_async(write)
    return Response(b"", headers={"content-type": "text/plain"})


def routes() -> list[Route]:
    """The table of level routes, in the manner of Orthanc's RegisterResources()."""
    table: list[Route] = [Route("/patients/{id}/protected", protected, methods=["GET", "PUT"])]
    for level in ResourceType:
        table.append(list_route(level))
        table.append(one_route(level))
        for below in ResourceType:
            if below > level:
                table.append(children_route(level, below))
            elif below < level:
                table.append(parent_route(level, below))
    return table
