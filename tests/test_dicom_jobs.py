"""The DICOM jobs under pause, resume, cancel and resubmit with real associations in flight
(network/store_job.py, network/move_job.py): a "DicomModalityStore" job sending to a peer whose
C-STORE handler is held, and a "DicomMoveScu" job whose C-MOVE destination is held. The tests wait
for the jobs engine's states, never for a duration."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from dicomvault.jobs.engine import JobState
from dicomvault.server import Server
from tests.dicomgen import Spec, make_bytes, make_dataset
from tests.scu_peer import HOLD_LIMIT, Peer

pytestmark = pytest.mark.timeout(180)

COUNT = 6


@pytest.fixture
def peer() -> Iterator[Peer]:
    with Peer() as started:
        yield started


@pytest.fixture
def vault(make_server: Callable[..., Server], peer: Peer) -> Iterator[tuple[Server, TestClient]]:
    server = make_server(DicomAet="VAULT", DicomScuTimeout=60, DicomModalities={"peer": peer.modality()})
    with TestClient(server.app(), raise_server_exceptions=False, client=("127.0.0.1", 50000)) as client:  # type: ignore[arg-type]
        yield server, client


def study(client: TestClient, seed: int) -> str:
    ids = []
    for n in range(COUNT):
        answer = client.post("/instances", content=make_bytes(Spec(seed=seed, instance_number=n + 1)))
        ids.append(answer.json()["ParentStudy"])
    return str(ids[0])


def job(client: TestClient, job_id: str) -> dict[str, Any]:
    answer = client.get(f"/jobs/{job_id}")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def start_held_store(server: Server, client: TestClient, peer: Peer, seed: int) -> str:
    """An asynchronous store job whose first C-STORE is held by the peer."""
    peer.store_gate.clear()
    answer = client.post("/modalities/peer/store", json={"Resources": [study(client, seed)], "Asynchronous": True})
    job_id = str(answer.json()["ID"])
    assert peer.store_started.wait(HOLD_LIMIT), "the first C-STORE never arrived"
    assert server.context.jobs.state(job_id) is JobState.RUNNING
    return job_id


def test_store_job_pause_and_resume(vault: tuple[Server, TestClient], peer: Peer) -> None:
    server, client = vault
    jobs = server.context.jobs
    job_id = start_held_store(server, client, peer, seed=1)
    assert client.post(f"/jobs/{job_id}/pause", json={}).status_code == 200
    peer.store_gate.set()  # the C-STORE in flight completes, then the job pauses
    assert jobs.wait(job_id, timeout=HOLD_LIMIT) is JobState.PAUSED
    paused = job(client, job_id)
    sent = len(peer.stored)
    assert paused["State"] == "Paused" and 1 <= sent < COUNT
    assert paused["Progress"] == round(100 * sent / COUNT)
    # Paused means released: the association is closed, nothing more can arrive.
    assert peer.associations == 1 and len(peer.stored) == sent

    assert client.post(f"/jobs/{job_id}/resume", json={}).status_code == 200
    assert jobs.wait(job_id, timeout=HOLD_LIMIT) is JobState.SUCCESS
    done = job(client, job_id)
    assert (done["State"], done["Progress"], done["ErrorCode"]) == ("Success", 100, 0)
    assert done["Content"]["InstancesCount"] == COUNT and done["Content"]["FailedInstancesCount"] == 0
    uids = peer.stored_uids()
    assert len(uids) == COUNT and len(set(uids)) == COUNT  # each instance once
    assert peer.associations == 2  # opened again after the resume


def test_store_job_cancel_then_resubmit(vault: tuple[Server, TestClient], peer: Peer) -> None:
    server, client = vault
    jobs = server.context.jobs
    job_id = start_held_store(server, client, peer, seed=2)
    assert client.post(f"/jobs/{job_id}/cancel", json={}).status_code == 200
    peer.store_gate.set()
    assert jobs.wait(job_id, timeout=HOLD_LIMIT) is JobState.FAILURE
    canceled = job(client, job_id)
    assert (canceled["State"], canceled["ErrorCode"]) == ("Failure", 37)
    assert canceled["ErrorDescription"] == "This job was canceled"
    sent = len(peer.stored)
    assert 1 <= sent < COUNT

    assert client.post(f"/jobs/{job_id}/resubmit", json={}).status_code == 200
    assert jobs.wait(job_id, timeout=HOLD_LIMIT) is JobState.SUCCESS
    # A resubmitted job starts over: every instance is sent (again).
    assert len(peer.stored) == sent + COUNT
    assert job(client, job_id)["Content"]["FailedInstancesCount"] == 0


def test_store_job_failure_then_resubmit(vault: tuple[Server, TestClient], peer: Peer) -> None:
    server, client = vault
    jobs = server.context.jobs
    peer.store_status = 0xA700  # out of resources
    answer = client.post("/modalities/peer/store", json={"Resources": [study(client, 3)], "Asynchronous": True})
    job_id = answer.json()["ID"]
    assert jobs.wait(job_id, timeout=HOLD_LIMIT) is JobState.FAILURE
    failed = job(client, job_id)
    assert (failed["ErrorCode"], failed["ErrorDetails"]) == (
        9,
        'C-STORE SCU to AET "PEER" has failed with DIMSE status 0xA700',
    )
    peer.store_status = 0x0000
    assert client.post(f"/jobs/{job_id}/resubmit", json={}).status_code == 200
    assert jobs.wait(job_id, timeout=HOLD_LIMIT) is JobState.SUCCESS
    assert len(peer.stored) == 1 + COUNT


def test_store_job_skips_instances_deleted_meanwhile(vault: tuple[Server, TestClient], peer: Peer) -> None:
    server, client = vault
    jobs = server.context.jobs
    job_id = start_held_store(server, client, peer, seed=4)
    jobs.pause(job_id)
    peer.store_gate.set()
    assert jobs.wait(job_id, timeout=HOLD_LIMIT) is JobState.PAUSED
    sent = set(peer.stored_uids())
    remaining = [
        i["ID"] for i in client.get("/instances?expand").json() if i["MainDicomTags"]["SOPInstanceUID"] not in sent
    ]
    assert client.delete(f"/instances/{remaining[0]}").status_code == 200
    jobs.resume(job_id)
    assert jobs.wait(job_id, timeout=HOLD_LIMIT) is JobState.SUCCESS
    content = job(client, job_id)["Content"]
    assert (content["InstancesCount"], content["FailedInstancesCount"]) == (COUNT, 1)
    assert len(peer.stored) == COUNT - 1


# ---- C-MOVE jobs -----------------------------------------------------------------------------


@pytest.fixture
def destination(peer: Peer) -> Iterator[Peer]:
    """A C-MOVE destination for the peer; each C-MOVE sends the two instances of its study."""
    with Peer(aet="DEST") as dest:
        peer.destinations = {"DEST": ("127.0.0.1", dest.port)}

        def sources(identifier: Any) -> list[Any]:
            seed = int(str(identifier.StudyInstanceUID).split(".")[-2])
            return [make_dataset(Spec(seed=seed, instance_number=n)) for n in (1, 2)]

        peer.move_sources = sources
        yield dest


MOVED_STUDIES = [f"1.2.826.0.1.3680043.10.1234.1.{seed}.1" for seed in (81, 82, 83)]
MOVE_BODY = {
    "Level": "Study",
    "Resources": [{"StudyInstanceUID": uid} for uid in MOVED_STUDIES],
    "TargetAet": "DEST",
    "Asynchronous": True,
}


def start_held_move(server: Server, client: TestClient, destination: Peer) -> str:
    destination.store_gate.clear()
    answer = client.post("/modalities/peer/move", json=MOVE_BODY)
    assert answer.status_code == 200, answer.text
    job_id = str(answer.json()["ID"])
    assert destination.store_started.wait(HOLD_LIMIT), "the first C-MOVE sub-operation never arrived"
    return job_id


def test_move_job_pause_and_resume(vault: tuple[Server, TestClient], peer: Peer, destination: Peer) -> None:
    server, client = vault
    jobs = server.context.jobs
    job_id = start_held_move(server, client, destination)
    assert client.post(f"/jobs/{job_id}/pause", json={}).status_code == 200
    destination.store_gate.set()  # the C-MOVE in flight completes, then the job pauses
    assert jobs.wait(job_id, timeout=HOLD_LIMIT) is JobState.PAUSED
    paused = job(client, job_id)
    assert (paused["Type"], paused["State"]) == ("DicomMoveScu", "Paused")
    assert len(peer.moves) == 1 and len(destination.stored) == 2
    assert paused["Content"]["Query"][0] == {
        "0008,0052": "STUDY",
        "0020,000d": "1.2.826.0.1.3680043.10.1234.1.81.1",
    }

    assert client.post(f"/jobs/{job_id}/resume", json={}).status_code == 200
    assert jobs.wait(job_id, timeout=HOLD_LIMIT) is JobState.SUCCESS
    assert [m.identifier.StudyInstanceUID for m in peer.moves] == MOVED_STUDIES
    assert len(destination.stored) == 6
    assert peer.associations == 2  # the job's association, opened again after the resume


def test_move_job_cancel_and_resubmit(vault: tuple[Server, TestClient], peer: Peer, destination: Peer) -> None:
    server, client = vault
    jobs = server.context.jobs
    job_id = start_held_move(server, client, destination)
    assert client.post(f"/jobs/{job_id}/cancel", json={}).status_code == 200
    destination.store_gate.set()
    assert jobs.wait(job_id, timeout=HOLD_LIMIT) is JobState.FAILURE
    assert (job(client, job_id)["ErrorCode"], len(peer.moves), len(destination.stored)) == (37, 1, 2)
    assert client.post(f"/jobs/{job_id}/resubmit", json={}).status_code == 200
    assert jobs.wait(job_id, timeout=HOLD_LIMIT) is JobState.SUCCESS
    assert len(peer.moves) == 4 and len(destination.stored) == 8


def test_move_job_failure_and_permissive(vault: tuple[Server, TestClient], peer: Peer) -> None:
    server, client = vault
    jobs = server.context.jobs
    body = {**MOVE_BODY, "TargetAet": "NOWHERE"}  # the peer refuses the destination (0xA801)
    job_id = client.post("/modalities/peer/move", json=body).json()["ID"]
    assert jobs.wait(job_id, timeout=HOLD_LIMIT) is JobState.FAILURE
    assert job(client, job_id)["ErrorDetails"] == 'C-MOVE SCU to AET "PEER" has failed with DIMSE status 0xA801'
    assert len(peer.moves) == 1
    permissive = client.post("/modalities/peer/move", json={**body, "Permissive": True}).json()["ID"]
    assert jobs.wait(permissive, timeout=HOLD_LIMIT) is JobState.SUCCESS
    assert len(peer.moves) == 4
