"""Protected patients and recycling: MaximumPatientCount, MaximumStorageSize, Reject mode, and
the start-up pass; the recycled patients' files leave the disk once the index committed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from dicomvault.dicom.parsing import public_id as patient_public_id
from dicomvault.server import Server
from tests.dicomgen import Spec, make_bytes

pytestmark = pytest.mark.contract


def _client(server: Server) -> TestClient:
    return TestClient(server.app(), client=("127.0.0.1", 1))  # type: ignore[arg-type]


def _upload(client: TestClient, patient: str, seed: int, size: int = 8) -> int:
    answer = client.post("/instances", content=make_bytes(Spec(seed=seed, patient_id=patient, rows=size, columns=size)))
    return int(answer.status_code)


def _patients(client: TestClient) -> list[str]:
    return sorted(p["MainDicomTags"]["PatientID"] for p in client.get("/patients?expand").json())


def _files(server: Server) -> int:
    root = server.config.storage_directory
    return sum(1 for p in root.rglob("*") if p.is_file() and p.parent != root)


def test_maximum_patient_count_recycles_oldest(make_server: Callable[..., Server]) -> None:
    server = make_server(MaximumPatientCount=2)
    with _client(server) as client:
        for seed, patient in enumerate(("A", "B", "C")):
            assert _upload(client, patient, seed) == 200
        assert _patients(client) == ["B", "C"]
        assert _files(server) == 2
        # a new instance of B makes B the most recent: D then pushes C out
        assert _upload(client, "B", 10) == 200
        assert _upload(client, "D", 11) == 200
        assert _patients(client) == ["B", "D"]
        assert _files(server) == 3


def test_protected_patient_is_never_recycled(make_server: Callable[..., Server]) -> None:
    server = make_server(MaximumPatientCount=2)
    with _client(server) as client:
        _upload(client, "A", 0)
        a = patient_public_id("A")
        assert client.put(f"/patients/{a}/protected", content=b"1").status_code == 200
        assert client.get(f"/patients/{a}/protected").text == "1"
        _upload(client, "B", 1)
        _upload(client, "C", 2)
        assert _patients(client) == ["A", "C"]


def test_full_when_nothing_can_be_recycled(make_server: Callable[..., Server]) -> None:
    server = make_server(MaximumPatientCount=1)
    with _client(server) as client:
        _upload(client, "A", 0)
        client.put(f"/patients/{patient_public_id('A')}/protected", content=b"1")
        answer = client.post("/instances", content=make_bytes(Spec(seed=1, patient_id="B")))
        assert answer.status_code == 507 and answer.json()["OrthancStatus"] == 19
        assert _patients(client) == ["A"] and _files(server) == 1  # B's file was undone


def test_maximum_storage_size(make_server: Callable[..., Server]) -> None:
    server = make_server(MaximumStorageSize=1)  # 1 MB; each file ~525 KB
    with _client(server) as client:
        assert _upload(client, "A", 0, size=512) == 200
        assert _upload(client, "B", 1, size=512) == 200
        assert _patients(client) == ["B"]
        stats = client.get("/statistics").json()
        assert int(stats["TotalDiskSize"]) <= 1024 * 1024


def test_reject_mode_refuses_and_keeps_everything(make_server: Callable[..., Server]) -> None:
    server = make_server(MaximumPatientCount=2, MaximumStorageMode="Reject")
    with _client(server) as client:
        _upload(client, "A", 0)
        _upload(client, "B", 1)
        answer = client.post("/instances", content=make_bytes(Spec(seed=2, patient_id="C")))
        assert answer.status_code == 507
        assert _patients(client) == ["A", "B"] and _files(server) == 2
        assert _upload(client, "A", 3) == 200  # an existing patient still takes new instances


def test_limits_lowered_are_enforced_at_start(make_server: Callable[..., Server], tmp_path: Path) -> None:
    first = make_server()
    with _client(first) as client:
        for seed, patient in enumerate(("A", "B", "C")):
            _upload(client, patient, seed)
    first.close()
    second = make_server(MaximumPatientCount=1)
    with _client(second) as client:
        assert _patients(client) == ["C"]
    assert _files(second) == 1


def test_protected_route_semantics(client: TestClient) -> None:
    _upload(client, "A", 0)
    url = f"/patients/{patient_public_id('A')}/protected"
    assert client.get(url).text == "0" and client.get(url).headers["content-type"] == "text/plain"
    for body, expected in ((b" 1", "1"), (b"false", "0"), (b"true", "1"), (b"0", "0")):
        assert client.put(url, content=body).status_code == 200
        assert client.get(url).text == expected
    for bad in (b"2", b"abc", b""):
        answer = client.put(url, content=bad)
        assert answer.status_code == 400 and answer.json()["OrthancStatus"] == 15
    assert client.get(url).text == "0"
    assert client.get("/patients/nope/protected").json()["OrthancStatus"] == 3
    assert client.put("/patients/nope/protected", content=b"1").status_code == 400
