"""Stability with a fake clock: which resources are unstable after a store, when a monitoring
pass declares them stable (whole seconds, as Orthanc counts), the Stable* changes and their
order, `IsStable` in descriptions, deleted and re-created resources, and a restart (everything
is stable and nothing is logged for what came before it)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from dicomvault.config import Config
from dicomvault.dicom.parsing import public_id
from dicomvault.enums import ResourceType
from dicomvault.ingest.pool import WorkerPool
from dicomvault.ingest.stability import StabilityMonitor
from dicomvault.model import ResourceRef
from dicomvault.server import Server, build
from tests.dicomgen import Spec, make_bytes

pytestmark = pytest.mark.contract

START = 1_780_000_000.25  # 2026-05-28T20:26:40.25Z


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def start(
    make_config: Callable[..., Config], worker_pool: WorkerPool, clock: FakeClock
) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def factory(**overrides: Any) -> Server:
        server = build(make_config(**overrides), workers=worker_pool, clock=clock)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.close()


def _client(server: Server) -> TestClient:
    return TestClient(server.app(), client=("127.0.0.1", 50000))  # type: ignore[arg-type]


def _ids(patient: str, series: int = 1, number: int = 1) -> dict[str, str]:
    study, series_uid = f"1.2.9.{len(patient)}.{ord(patient[0])}", f"1.2.9.{ord(patient[0])}.{series}"
    sop = f"{series_uid}.{number}"
    return {
        "patients": public_id(patient),
        "studies": public_id(patient, study),
        "series": public_id(patient, study, series_uid),
        "instances": public_id(patient, study, series_uid, sop),
        "uids": f"{study}|{series_uid}|{sop}",
    }


def _upload(client: TestClient, patient: str, series: int = 1, number: int = 1) -> str:
    study, series_uid, sop = _ids(patient, series, number)["uids"].split("|")
    spec = Spec(
        seed=number, patient_id=patient, study_uid=study, series_uid=series_uid, sop_uid=sop, instance_number=number
    )
    answer = client.post("/instances", content=make_bytes(spec))
    assert answer.status_code == 200, answer.text
    status: str = answer.json()["Status"]
    return status


def _stable(client: TestClient, patient: str, series: int = 1) -> dict[str, bool]:
    ids = _ids(patient, series)
    return {
        level: client.get(f"/{level}/{ids[level]}").json()["IsStable"] for level in ("patients", "studies", "series")
    }


def _stable_changes(client: TestClient) -> list[tuple[str, str, str]]:
    changes = client.get("/changes").json()["Changes"]
    return [(c["ChangeType"], c["ID"], c["Date"]) for c in changes if c["ChangeType"].startswith("Stable")]


def _monitor(server: Server) -> StabilityMonitor:
    monitor = server.context.stability
    assert monitor is not None
    return monitor


def test_store_makes_unstable_and_a_pass_makes_stable(start: Callable[..., Server], clock: FakeClock) -> None:
    server = start(StableAge=2)
    monitor = _monitor(server)
    with _client(server) as client:
        _upload(client, "A")
        ids = _ids("A")
        assert _stable(client, "A") == {"patients": False, "studies": False, "series": False}
        assert [(r.level, r.public_id) for r in monitor.unstable()] == [
            (ResourceType.SERIES, ids["series"]),
            (ResourceType.STUDY, ids["studies"]),
            (ResourceType.PATIENT, ids["patients"]),
        ]
        # Marked during second S (START is S + 0.25): stable from second S + StableAge + 1 on.
        clock.advance(2.74)  # S + 2.99
        assert monitor.run_pass() == []
        assert _stable(client, "A") == {"patients": False, "studies": False, "series": False}
        assert _stable_changes(client) == []
        clock.advance(0.01)  # S + 3
        assert [r.level for r in monitor.run_pass()] == [ResourceType.SERIES, ResourceType.STUDY, ResourceType.PATIENT]
        assert _stable(client, "A") == {"patients": True, "studies": True, "series": True}
        date = "20260528T202643"
        assert _stable_changes(client) == [
            ("StableSeries", ids["series"], date),
            ("StableStudy", ids["studies"], date),
            ("StablePatient", ids["patients"], date),
        ]
        assert client.get("/changes").json()["Last"] == 7
        # an instance is never unstable; ?expand and children routes read the same state
        assert "IsStable" not in client.get(f"/instances/{ids['instances']}").json()
        assert [s["IsStable"] for s in client.get("/series?expand").json()] == [True]
        assert [s["IsStable"] for s in client.get(f"/patients/{ids['patients']}/studies").json()] == [True]
        assert monitor.run_pass() == []


def test_order_follows_the_last_marking(start: Callable[..., Server], clock: FakeClock) -> None:
    server = start(StableAge=5)
    monitor = _monitor(server)
    with _client(server) as client:
        _upload(client, "A", series=1)
        clock.advance(1)
        _upload(client, "A", series=2)  # study and patient move behind the second series
        clock.advance(1)
        _upload(client, "B")
        ids_a1, ids_a2, ids_b = _ids("A", 1), _ids("A", 2), _ids("B")
        assert [r.public_id for r in monitor.unstable()] == [
            ids_a1["series"],
            ids_a2["series"],
            ids_a2["studies"],
            ids_a2["patients"],
            ids_b["series"],
            ids_b["studies"],
            ids_b["patients"],
        ]
        clock.advance(3.75)  # the first series: 6 whole seconds; the rest: 5 or 4
        assert [r.public_id for r in monitor.run_pass()] == [ids_a1["series"]]
        assert _stable(client, "A", 1)["series"] is True
        assert _stable(client, "A", 2) == {"patients": False, "studies": False, "series": False}
        clock.advance(1)
        assert len(monitor.run_pass()) == 3
        clock.advance(1)
        assert len(monitor.run_pass()) == 3
        assert [c[0] for c in _stable_changes(client)] == [
            "StableSeries",
            "StableSeries",
            "StableStudy",
            "StablePatient",
            "StableSeries",
            "StableStudy",
            "StablePatient",
        ]


def test_new_instance_restarts_the_wait_and_already_stored_does_not(
    start: Callable[..., Server], clock: FakeClock
) -> None:
    server = start(StableAge=3)
    monitor = _monitor(server)
    with _client(server) as client:
        _upload(client, "A", number=1)
        clock.advance(3)
        _upload(client, "A", number=2)
        clock.advance(1)
        assert monitor.run_pass() == []  # 4 s after the first instance, 1 s after the second
        clock.advance(3)
        assert len(monitor.run_pass()) == 3
        assert _upload(client, "A", number=2) == "AlreadyStored"
        assert _stable(client, "A") == {"patients": True, "studies": True, "series": True}
        assert monitor.unstable() == []


def test_deletion_marks_nothing_and_deleted_resources_get_no_change(
    start: Callable[..., Server], clock: FakeClock
) -> None:
    server = start(StableAge=1)
    monitor = _monitor(server)
    with _client(server) as client:
        _upload(client, "A", number=1)
        _upload(client, "A", number=2)
        _upload(client, "B")
        clock.advance(2)
        monitor.run_pass()
        client.delete(f"/instances/{_ids('A', number=2)['instances']}")
        assert _stable(client, "A") == {"patients": True, "studies": True, "series": True}
        assert monitor.unstable() == []
        # deleted while unstable: taken off the list in time, but no change logged for it
        _upload(client, "C")
        client.delete(f"/patients/{_ids('C')['patients']}")
        # deleted and stored again: a new resource (new internal id), whose own marking counts
        _upload(client, "B", number=2)
        client.delete(f"/patients/{_ids('B')['patients']}")
        clock.advance(1)
        _upload(client, "B", number=3)
        clock.advance(1)
        assert len(monitor.run_pass()) == 6  # C's three and B's old three
        assert _stable(client, "B") == {"patients": False, "studies": False, "series": False}
        clock.advance(1)
        assert len(monitor.run_pass()) == 3
        ids_b = _ids("B")
        assert [(c[0], c[1]) for c in _stable_changes(client)][-3:] == [
            ("StableSeries", ids_b["series"]),
            ("StableStudy", ids_b["studies"]),
            ("StablePatient", ids_b["patients"]),
        ]
        assert len(_stable_changes(client)) == 6  # A's and B's last three: nothing for C


def test_restart_forgets_unstable_resources(start: Callable[..., Server], clock: FakeClock) -> None:
    server = start(StableAge=10)
    with _client(server) as client:
        _upload(client, "A")
        assert _stable(client, "A")["series"] is False
    server.close()
    again = start(StableAge=10)
    with _client(again) as client:
        assert _stable(client, "A") == {"patients": True, "studies": True, "series": True}
        clock.advance(60)
        assert _monitor(again).run_pass() == []
        assert _stable_changes(client) == []


def test_stable_age_zero_means_sixty(start: Callable[..., Server], clock: FakeClock) -> None:
    server = start(StableAge=0)
    monitor = _monitor(server)
    assert monitor.stable_age == 60
    with _client(server) as client:
        _upload(client, "A")
        clock.advance(60.74)
        assert monitor.run_pass() == []
        clock.advance(0.01)
        assert len(monitor.run_pass()) == 3


def test_the_thread_starts_with_the_server_and_stops_with_it(start: Callable[..., Server]) -> None:
    server = start()
    monitor = _monitor(server)
    assert monitor.running
    server.close()
    assert not monitor.running


def test_passes_are_serialised(start: Callable[..., Server], clock: FakeClock) -> None:
    """A pass of the thread and one of the caller never both take the same resources."""
    server = start(StableAge=1)
    monitor = _monitor(server)
    with _client(server) as client:
        for n in range(1, 6):
            _upload(client, f"P{n}")
        clock.advance(2)
        results: list[list[ResourceRef]] = []
        threads = [threading.Thread(target=lambda: results.append(monitor.run_pass())) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(len(r) for r in results) == 15
        assert len(_stable_changes(client)) == 15
