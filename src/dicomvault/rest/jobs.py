"""`/jobs`: the jobs engine over REST, as Orthanc 1.10.1 has it: the list (`?expand`), one job's
state, its control (`cancel`, `pause`, `resume`, `resubmit`, answered `{}`), and its outputs
(`GET /jobs/{id}/archive` for an archive job)."""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.jobs.engine import JobsEngine
from dicomvault.rest.requests import context, flag
from dicomvault.rest.responses import JsonResponse


def _engine(request: Request) -> JobsEngine:
    return context(request).jobs


async def list_jobs(request: Request) -> Response:
    engine = _engine(request)
    ids = engine.ids()
    if not flag(request, "expand"):
        return JsonResponse(ids)
    answers = []
    for job_id in ids:
        try:
            answers.append(engine.describe(job_id))
        except DicomVaultError:
            continue  # forgotten between the listing and now
    return JsonResponse(answers)


async def get_job(request: Request) -> Response:
    return JsonResponse(_engine(request).describe(request.path_params["id"]))


_ACTIONS = {
    "cancel": JobsEngine.cancel,
    "pause": JobsEngine.pause,
    "resume": JobsEngine.resume,
    "resubmit": JobsEngine.resubmit,
}


async def control_job(request: Request) -> Response:
    action = request.path_params["action"]
    engine = _engine(request)
    handler = _ACTIONS.get(action)
    if handler is None:
        raise DicomVaultError(ErrorCode.UNKNOWN_RESOURCE, f"unknown job action: {action}")
    # resubmit resets the job (an archive job deletes its partial file): off the event loop.
    await run_in_threadpool(handler, engine, request.path_params["id"])
    return JsonResponse({})


async def job_output(request: Request) -> Response:
    found = _engine(request).output(request.path_params["id"], request.path_params["key"])
    if not found.path.is_file():
        raise DicomVaultError(ErrorCode.INEXISTENT_FILE, f"the output {request.path_params['key']!r} is gone")
    return FileResponse(
        found.path, media_type=found.mime_type, headers={"Content-Disposition": f'filename="{found.filename}"'}
    )


def routes() -> list[Route]:
    return [
        Route("/jobs", list_jobs, methods=["GET"]),
        Route("/jobs/{id}", get_job, methods=["GET"]),
        Route("/jobs/{id}/{action}", control_job, methods=["POST"]),
        Route("/jobs/{id}/{key}", job_output, methods=["GET"]),
    ]
