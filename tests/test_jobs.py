"""The jobs engine (`jobs/engine.py`) and `/jobs` over REST: states and transitions, priorities,
pause/resume/cancel/resubmit between steps, history size, outputs, and archive jobs (the zip of an
asynchronous archive is the synchronous one's). Jobs driven over DICOM (store, move) are tested
in `tests/test_dicom_jobs.py`; the JSON of `/jobs/{id}` is compared with the real Orthanc's at the end.

The test job below is a real `Job` whose steps wait on events the test sets, so that a job is
reliably in a given state when the test acts on it (no sleeps, no timing assertions)."""

from __future__ import annotations

import io
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.jobs.engine import JobsEngine, JobState
from dicomvault.jobs.job import Job, StepOutcome, StopReason
from dicomvault.server import Server
from tests.dicomgen import Spec, make_bytes
from tests.orthanc import OrthancServer

WAIT = 30.0  # generous bound for anything to happen; tests never assert a duration


class GatedJob(Job):
    """`steps` steps; each waits for `gate` (set by default) and records itself."""

    job_type = "Gated"

    def __init__(self, steps: int, fail_at: int | None = None, gated: bool = False) -> None:
        self.steps = steps
        self.fail_at = fail_at
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.in_step = threading.Event()
        self.done = 0
        self.starts = 0
        self.stops: list[StopReason] = []
        self.resets = 0
        self.disposed = False
        self.order: list[str] = []

    def start(self) -> None:
        self.starts += 1

    def step(self) -> StepOutcome:
        self.in_step.set()
        if not self.gate.wait(WAIT):
            raise DicomVaultError(ErrorCode.TIMEOUT, "the test never opened the gate")
        if self.fail_at is not None and self.done == self.fail_at:
            raise DicomVaultError(ErrorCode.NETWORK_PROTOCOL, "injected failure")
        self.done += 1
        return StepOutcome.SUCCESS if self.done >= self.steps else StepOutcome.CONTINUE

    def stop(self, reason: StopReason) -> None:
        self.stops.append(reason)

    def reset(self) -> None:
        self.resets += 1
        self.done = 0
        self.fail_at = None

    def dispose(self) -> None:
        self.disposed = True

    def progress(self) -> float:
        return self.done / self.steps

    def content(self) -> dict[str, Any]:
        return {"Done": self.done}


@pytest.fixture
def engine() -> Iterator[JobsEngine]:
    e = JobsEngine(threads=1, history_size=3)
    yield e
    e.close()


def wait_for(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def test_a_job_runs_to_success(engine: JobsEngine) -> None:
    job = GatedJob(3)
    job_id = engine.submit(job)
    assert engine.wait(job_id, WAIT) is JobState.SUCCESS
    described = engine.describe(job_id)
    assert described["State"] == "Success" and described["Progress"] == 100
    assert described["Type"] == "Gated" and described["Content"] == {"Done": 3}
    assert described["ErrorCode"] == 0 and described["ErrorDescription"] == "Success"
    assert "CompletionTime" in described
    assert job.stops == [StopReason.SUCCESS] and job.starts == 1
    assert engine.submit_and_wait(GatedJob(2)) == {"Done": 2}


def test_failure_and_resubmit(engine: JobsEngine) -> None:
    job = GatedJob(3, fail_at=1)
    job_id = engine.submit(job)
    assert engine.wait(job_id, WAIT) is JobState.FAILURE
    described = engine.describe(job_id)
    assert (described["ErrorCode"], described["ErrorDetails"]) == (9, "injected failure")
    assert described["Progress"] == 33 and job.stops == [StopReason.FAILURE]
    with pytest.raises(DicomVaultError) as refused:
        engine.resume(job_id)
    assert refused.value.http_status == 400
    engine.resubmit(job_id)
    assert engine.wait(job_id, WAIT) is JobState.SUCCESS
    assert job.resets == 1 and job.done == 3
    with pytest.raises(DicomVaultError) as failed:
        engine.submit_and_wait(GatedJob(2, fail_at=0))
    assert failed.value.code is ErrorCode.NETWORK_PROTOCOL
    with pytest.raises(DicomVaultError):
        engine.resubmit(job_id)  # succeeded: nothing to resubmit


def test_pause_resume_and_cancel_between_steps(engine: JobsEngine) -> None:
    job = GatedJob(5, gated=True)
    job_id = engine.submit(job)
    assert job.in_step.wait(WAIT)
    assert engine.state(job_id) is JobState.RUNNING
    engine.pause(job_id)
    job.gate.set()  # the step in progress completes; the job then stops before the next one
    assert engine.wait(job_id, WAIT) is JobState.PAUSED
    assert job.done == 1 and job.stops == [StopReason.PAUSED]
    engine.pause(job_id)  # pausing a paused job changes nothing
    engine.resume(job_id)
    assert engine.wait(job_id, WAIT) is JobState.SUCCESS
    assert job.starts == 2 and job.done == 5

    second = GatedJob(5, gated=True)
    second_id = engine.submit(second)
    assert second.in_step.wait(WAIT)
    engine.cancel(second_id)
    second.gate.set()
    assert engine.wait(second_id, WAIT) is JobState.FAILURE
    described = engine.describe(second_id)
    assert (described["ErrorCode"], described["ErrorDescription"]) == (37, "This job was canceled")
    assert second.done == 1 and second.stops == [StopReason.CANCELED]
    engine.resubmit(second_id)  # a canceled job is a failed job: it can run again
    assert engine.wait(second_id, WAIT) is JobState.SUCCESS


def test_pending_jobs_pause_and_cancel_without_running(engine: JobsEngine) -> None:
    blocker = GatedJob(1, gated=True)
    blocker_id = engine.submit(blocker)
    assert blocker.in_step.wait(WAIT)
    waiting, canceled = GatedJob(1), GatedJob(1)
    waiting_id, canceled_id = engine.submit(waiting), engine.submit(canceled)
    assert engine.state(waiting_id) is JobState.PENDING
    engine.pause(waiting_id)
    engine.cancel(canceled_id)
    assert engine.state(waiting_id) is JobState.PAUSED
    assert engine.describe(canceled_id)["ErrorCode"] == 37
    blocker.gate.set()
    assert engine.wait(blocker_id, WAIT) is JobState.SUCCESS
    assert engine.state(waiting_id) is JobState.PAUSED and waiting.starts == 0 and canceled.starts == 0
    engine.resume(waiting_id)
    assert engine.wait(waiting_id, WAIT) is JobState.SUCCESS


def test_priorities_then_submission_order(engine: JobsEngine) -> None:
    blocker = GatedJob(1, gated=True)
    engine.submit(blocker)
    assert blocker.in_step.wait(WAIT)
    ran: list[str] = []

    class Recorder(GatedJob):
        def __init__(self, name: str) -> None:
            super().__init__(1)
            self.name = name

        def start(self) -> None:
            ran.append(self.name)

    for name, priority in (("low", -1), ("a", 5), ("b", 5), ("zero", 0)):
        engine.submit(Recorder(name), priority)
    blocker.gate.set()
    wait_for(lambda: len(ran) == 4)
    assert ran == ["a", "b", "zero", "low"]


def test_history_keeps_the_last_finished_jobs(engine: JobsEngine) -> None:
    jobs = [GatedJob(1) for _ in range(5)]
    ids = [engine.submit(job) for job in jobs]
    wait_for(lambda: engine.ids() == ids[-3:])
    assert [job.disposed for job in jobs] == [True, True, False, False, False]
    with pytest.raises(DicomVaultError) as unknown:
        engine.describe(ids[0])
    assert unknown.value.http_status == 404


def test_close_pauses_running_jobs_and_refuses_new_ones() -> None:
    engine = JobsEngine(threads=2)
    job = GatedJob(3, gated=True)
    job_id = engine.submit(job)
    assert job.in_step.wait(WAIT)
    closer = threading.Thread(target=engine.close)
    closer.start()
    wait_for(lambda: not engine.ids() or engine.describe(job_id) is not None)
    job.gate.set()
    closer.join(WAIT)
    assert engine.state(job_id) is JobState.PAUSED and job.done == 1
    with pytest.raises(DicomVaultError):
        engine.submit(GatedJob(1))


def test_unexpected_exceptions_fail_the_job_as_internal_errors(engine: JobsEngine) -> None:
    class Broken(GatedJob):
        def step(self) -> StepOutcome:
            raise RuntimeError("bug")

    job_id = engine.submit(Broken(1))
    assert engine.wait(job_id, WAIT) is JobState.FAILURE
    assert engine.describe(job_id)["ErrorCode"] == -1


# ---- over REST, with archive jobs ---------------------------------------------------------------


def upload_study(client: TestClient, count: int = 4) -> str:
    study = ""
    for i in range(count):
        answer = client.post(
            "/instances", content=make_bytes(Spec(seed=i, instance_number=i + 1, study_uid="1.2.3.77"))
        )
        assert answer.status_code == 200, answer.text
        study = answer.json()["ParentStudy"]
    return study


def wait_job(client: TestClient, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT
    while True:
        described: dict[str, Any] = client.get(f"/jobs/{job_id}").json()
        if described["State"] in ("Success", "Failure"):
            return described
        assert time.monotonic() < deadline, described
        time.sleep(0.01)


def test_asynchronous_archive_is_the_synchronous_zip(client: TestClient) -> None:
    study = upload_study(client)
    synchronous = client.get(f"/studies/{study}/archive").content
    answer = client.post(f"/studies/{study}/archive", json={"Asynchronous": True, "Priority": 3})
    assert answer.status_code == 200
    job_id = answer.json()["ID"]
    assert answer.json() == {"ID": job_id, "Path": f"/jobs/{job_id}"}
    described = wait_job(client, job_id)
    assert described["State"] == "Success" and described["Type"] == "Archive" and described["Priority"] == 3
    content = described["Content"]
    assert content["InstancesCount"] == 4 and content["Description"] == "REST API"
    assert int(content["UncompressedSize"]) == sum(
        len(client.get(f"/instances/{i}/file").content)
        for i in client.get(f"/studies/{study}/instances").json()
        for i in [i["ID"]]
    )
    archive = client.get(f"/jobs/{job_id}/archive")
    assert archive.status_code == 200 and archive.headers["content-type"] == "application/zip"
    assert int(content["ArchiveSize"]) == len(archive.content)
    with zipfile.ZipFile(io.BytesIO(archive.content)) as made, zipfile.ZipFile(io.BytesIO(synchronous)) as expected:
        assert made.namelist() == expected.namelist()
        assert all(made.read(n) == expected.read(n) for n in made.namelist())
    assert client.get("/jobs").json() == [job_id]
    assert client.get("/jobs?expand").json()[0]["ID"] == job_id
    created = client.post("/tools/create-archive", json={"Resources": [study], "Synchronous": False}).json()
    assert wait_job(client, created["ID"])["Content"]["InstancesCount"] == 4


def test_job_routes_errors(client: TestClient) -> None:
    study = upload_study(client, 1)
    job_id = client.post(f"/studies/{study}/archive", json={"Asynchronous": True}).json()["ID"]
    wait_job(client, job_id)
    assert client.get("/jobs/nope").status_code == 404
    assert client.post("/jobs/nope/pause").status_code == 404
    assert client.get(f"/jobs/{job_id}/nothing").status_code == 404
    # As Orthanc 1.10.1: pausing or canceling a finished job is accepted and changes nothing;
    # resuming or resubmitting it is a bad request.
    assert client.post(f"/jobs/{job_id}/pause").json() == {}
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 200
    assert client.post(f"/jobs/{job_id}/resume").status_code == 400
    assert client.post(f"/jobs/{job_id}/resubmit").status_code == 400
    assert client.get(f"/jobs/{job_id}").json()["State"] == "Success"


def test_archive_job_temporary_file_is_removed_when_forgotten(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    server = make_server(JobsHistorySize=1, TemporaryDirectory=str(scratch))
    with TestClient(server.app(), client=("127.0.0.1", 50000)) as client:  # type: ignore[arg-type]
        study = upload_study(client, 1)
        first = client.post(f"/studies/{study}/archive", json={"Asynchronous": True}).json()["ID"]
        wait_job(client, first)
        assert len(list(scratch.iterdir())) == 1
        second = client.post(f"/studies/{study}/archive", json={"Asynchronous": True}).json()["ID"]
        wait_job(client, second)
        assert client.get("/jobs").json() == [second]
        assert len(list(scratch.iterdir())) == 1


# ---- the JSON of a job, against the real Orthanc ----------------------------------------------


@pytest.mark.orthanc
def test_job_json_has_orthancs_fields(tmp_path: Path, client: TestClient) -> None:
    study = upload_study(client, 2)
    ours = wait_job(client, client.post(f"/studies/{study}/archive", json={"Asynchronous": True}).json()["ID"])
    with OrthancServer(tmp_path / "orthanc") as orthanc, httpx.Client(base_url=orthanc.url) as theirs:
        for i in range(2):
            theirs.post("/instances", content=make_bytes(Spec(seed=i, instance_number=i + 1, study_uid="1.2.3.77")))
        answer = theirs.post(f"/studies/{study}/archive", json={"Asynchronous": True}).json()
        deadline = time.monotonic() + WAIT
        while (reference := theirs.get(f"/jobs/{answer['ID']}").json())["State"] != "Success":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert sorted(ours) == sorted(reference)
        assert sorted(ours["Content"]) == sorted(reference["Content"])
        for key in ("State", "Progress", "Type", "Priority", "ErrorCode", "ErrorDescription", "ErrorDetails"):
            assert ours[key] == reference[key], key
        assert ours["Content"]["InstancesCount"] == reference["Content"]["InstancesCount"]
        assert ours["Content"]["UncompressedSize"] == reference["Content"]["UncompressedSize"]
        for key in ("CreationTime", "CompletionTime", "Timestamp"):
            assert len(ours[key]) == len(reference[key]) and ours[key][8] == reference[key][8] == "T"
        for action in ("pause", "cancel", "resume", "resubmit"):
            mine = client.post(f"/jobs/{ours['ID']}/{action}").status_code
            assert mine == theirs.post(f"/jobs/{answer['ID']}/{action}").status_code, action
        assert client.get("/jobs/nope").status_code == theirs.get("/jobs/nope").status_code == 404
