"""The logs, in process: `/changes` (what a store, a re-upload, an overwrite and a deletion log;
paging with Orthanc's quirks of `since`, `limit` and `last`), `CompletedSeries`, `/exports` (rows
written by `log_export`), and dicomvault's deletion log `/dicomvault/deleted`."""

from __future__ import annotations

import dataclasses
import io
import re
from collections.abc import Callable
from typing import Any

import pytest
from pydicom import dcmread
from starlette.testclient import TestClient

from dicomvault.dicom.parsing import public_id
from dicomvault.enums import ChangeType, ResourceType
from dicomvault.index import changes as log
from dicomvault.index.transactions import ReadTx, WriteTx
from dicomvault.model import ResourceRef
from dicomvault.server import Server
from tests.dicomgen import Spec, make_bytes

pytestmark = pytest.mark.contract

TIMESTAMP = re.compile(r"^\d{8}T\d{6}$")


def _spec(patient: str, series: int = 1, number: int = 1, **extra: object) -> Spec:
    return Spec(
        seed=series,
        patient_id=patient,
        study_uid=f"1.2.3.{patient_id_digits(patient)}",
        series_uid=f"1.2.3.{patient_id_digits(patient)}.{series}",
        sop_uid=f"1.2.3.{patient_id_digits(patient)}.{series}.{number}",
        instance_number=number,
        extra=dict(extra),
    )


def patient_id_digits(patient: str) -> str:
    return ".".join(str(ord(c)) for c in patient)


def _ids(patient: str, series: int = 1, number: int = 1) -> dict[str, str]:
    d = patient_id_digits(patient)
    study, series_uid, sop = f"1.2.3.{d}", f"1.2.3.{d}.{series}", f"1.2.3.{d}.{series}.{number}"
    return {
        "patient": public_id(patient),
        "study": public_id(patient, study),
        "series": public_id(patient, study, series_uid),
        "instance": public_id(patient, study, series_uid, sop),
    }


def _client(server: Server) -> TestClient:
    return TestClient(server.app(), client=("127.0.0.1", 50000))  # type: ignore[arg-type]


def _upload(client: TestClient, patient: str, series: int = 1, number: int = 1, **extra: object) -> str:
    answer = client.post("/instances", content=make_bytes(_spec(patient, series, number, **extra)))
    assert answer.status_code == 200, answer.text
    status: str = answer.json()["Status"]
    return status


def _changes(client: TestClient, query: str = "") -> dict[str, Any]:
    answer = client.get(f"/changes{query}")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = answer.json()
    assert sorted(body) == ["Changes", "Done", "Last"]
    return body


def _kinds(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["ChangeType"], c["ID"]) for c in body["Changes"]]


def _seqs(body: dict[str, Any]) -> list[int]:
    return [c["Seq"] for c in body["Changes"]]


# ---- what is logged -------------------------------------------------------------------------------


def test_empty_log(client: TestClient) -> None:
    assert _changes(client) == {"Changes": [], "Done": True, "Last": 0}
    assert _changes(client, "?last") == {"Changes": [], "Done": True, "Last": 0}


def test_first_instance_logs_instance_to_patient(client: TestClient) -> None:
    assert _upload(client, "A") == "Success"
    ids = _ids("A")
    body = _changes(client)
    assert body["Done"] is True and body["Last"] == 4
    for change in body["Changes"]:
        assert TIMESTAMP.match(change.pop("Date"))
    assert body["Changes"] == [
        {
            "ChangeType": "NewInstance",
            "ID": ids["instance"],
            "Path": f"/instances/{ids['instance']}",
            "ResourceType": "Instance",
            "Seq": 1,
        },
        {
            "ChangeType": "NewSeries",
            "ID": ids["series"],
            "Path": f"/series/{ids['series']}",
            "ResourceType": "Series",
            "Seq": 2,
        },
        {
            "ChangeType": "NewStudy",
            "ID": ids["study"],
            "Path": f"/studies/{ids['study']}",
            "ResourceType": "Study",
            "Seq": 3,
        },
        {
            "ChangeType": "NewPatient",
            "ID": ids["patient"],
            "Path": f"/patients/{ids['patient']}",
            "ResourceType": "Patient",
            "Seq": 4,
        },
    ]


def test_new_levels_only_and_already_stored_logs_nothing(client: TestClient) -> None:
    _upload(client, "A", series=1, number=1)
    _upload(client, "A", series=1, number=2)  # same series: the instance only
    _upload(client, "A", series=2, number=1)  # new series of the same study
    assert _upload(client, "A", series=1, number=1) == "AlreadyStored"
    assert _kinds(_changes(client, "?since=4")) == [
        ("NewInstance", _ids("A", 1, 2)["instance"]),
        ("NewInstance", _ids("A", 2, 1)["instance"]),
        ("NewSeries", _ids("A", 2, 1)["series"]),
    ]
    assert _changes(client)["Last"] == 7


def test_overwrite_replaces_the_entries_of_the_old_instance(make_server: Callable[..., Server]) -> None:
    with _client(make_server(OverwriteInstances=True)) as client:
        _upload(client, "A", number=1)
        _upload(client, "A", number=2)
        assert _upload(client, "A", number=2) == "Success"
        # The old instance was deleted (its entry with it), then stored again: Orthanc's order.
        assert _seqs(_changes(client)) == [1, 2, 3, 4, 6]
        assert _kinds(_changes(client, "?since=4")) == [("NewInstance", _ids("A", 1, 2)["instance"])]
        # Overwriting the only instance of a patient re-creates the whole chain.
        _upload(client, "B")
        _upload(client, "B")
        assert [c["ChangeType"] for c in _changes(client, "?since=6")["Changes"]] == [
            "NewInstance",
            "NewSeries",
            "NewStudy",
            "NewPatient",
        ]
        assert _seqs(_changes(client, "?since=6")) == [11, 12, 13, 14]


def test_deletion_logs_nothing_and_removes_the_entries(client: TestClient) -> None:
    _upload(client, "A", number=1)
    _upload(client, "A", number=2)
    _upload(client, "B")
    ids = _ids("A", number=2)
    assert client.delete(f"/instances/{ids['instance']}").status_code == 200
    assert _seqs(_changes(client)) == [1, 2, 3, 4, 6, 7, 8, 9]
    assert client.delete(f"/patients/{_ids('B')['patient']}").status_code == 200
    body = _changes(client)
    assert _seqs(body) == [1, 2, 3, 4]
    assert body["Last"] == 4
    # An empty page answers the last number ever given, not the last entry still there.
    assert _changes(client, "?since=4") == {"Changes": [], "Done": True, "Last": 9}
    assert _changes(client, "?last")["Last"] == 4


def test_delete_changes_clears_and_numbering_goes_on(client: TestClient) -> None:
    _upload(client, "A")
    answer = client.delete("/changes")
    assert answer.status_code == 200
    assert answer.content == b""
    assert answer.headers["content-type"] == "text/plain"
    assert _changes(client) == {"Changes": [], "Done": True, "Last": 4}
    assert _changes(client, "?last") == {"Changes": [], "Done": True, "Last": 4}
    _upload(client, "A", number=2)
    assert _seqs(_changes(client)) == [5]


def test_completed_series(client: TestClient) -> None:
    _upload(client, "C", series=1, number=1, CardiacNumberOfImages=2)
    assert "CompletedSeries" not in [c["ChangeType"] for c in _changes(client)["Changes"]]
    _upload(client, "C", series=1, number=2, CardiacNumberOfImages=2)
    series = _ids("C", 1)["series"]
    # after the New* of the instance that completes the series
    assert _kinds(_changes(client, "?since=4")) == [
        ("NewInstance", _ids("C", 1, 2)["instance"]),
        ("CompletedSeries", series),
    ]
    # an instance without an index leaves the series complete: Orthanc logs it again
    ds = dcmread(io.BytesIO(make_bytes(_spec("C", 1, 3, CardiacNumberOfImages=2))))
    del ds.InstanceNumber
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    assert client.post("/instances", content=out.getvalue()).json()["Status"] == "Success"
    assert [c["ChangeType"] for c in _changes(client, "?since=6")["Changes"]] == ["NewInstance", "CompletedSeries"]
    assert client.get(f"/series/{series}").json()["Status"] == "Complete"


@pytest.mark.parametrize(
    ("extra", "numbers"),
    [
        ({"CardiacNumberOfImages": 2}, [1, 1]),  # duplicate index: inconsistent
        ({"CardiacNumberOfImages": 2}, [1, 5]),  # out of range
        ({"CardiacNumberOfImages": 3}, [1, 2]),  # missing one
        ({"ImagesInAcquisition": 2}, [1, 2]),  # no expected count without temporal positions
    ],
)
def test_series_not_completed(client: TestClient, extra: dict[str, object], numbers: list[int]) -> None:
    for k, number in enumerate(numbers):
        spec = dataclasses.replace(_spec("D", 1, number, **extra), sop_uid=f"9.9.{k}")
        assert client.post("/instances", content=make_bytes(spec)).json()["Status"] == "Success"
    assert "CompletedSeries" not in [c["ChangeType"] for c in _changes(client)["Changes"]]


def test_completed_series_with_temporal_positions(client: TestClient) -> None:
    for number in (1, 2, 3, 4):
        _upload(client, "E", 1, number, ImagesInAcquisition=2, NumberOfTemporalPositions=2)
    assert [c["ChangeType"] for c in _changes(client)["Changes"]][-2:] == ["NewInstance", "CompletedSeries"]


# ---- paging ---------------------------------------------------------------------------------------


def _fill(server: Server, count: int) -> None:
    """`count` changes after the 4 of one upload (synthetic NewInstance entries of its instance)."""

    def write(tx: WriteTx) -> None:
        ref = tx.lookup(_ids("A")["instance"])
        assert ref is not None
        for _ in range(count):
            tx.log_change(ChangeType.NEW_INSTANCE, ref, "20200101T000000")

    server.context.index.write(write)


@pytest.mark.parametrize(
    ("query", "seqs", "done", "last"),
    [
        ("", (1, 100), False, 100),  # Orthanc's default limit: 100
        ("?since=0&limit=150", (1, 150), True, 150),
        ("?limit=200", (1, 150), True, 150),  # no maximum
        ("?limit=149", (1, 149), False, 149),
        ("?since=140", (141, 150), True, 150),
        ("?since=2&limit=3", (3, 5), False, 5),
        ("?since=147&limit=3", (148, 150), True, 150),
        ("?since=150", None, True, 150),
        ("?since=1000&limit=5", None, True, 150),
        ("?limit=0", None, False, 150),
        ("?since=150&limit=0", None, True, 150),
        ("?since=-5&limit=2", (1, 2), False, 2),
        ("?limit=+5", (1, 5), False, 5),
        ("?since=+5&limit=05", (6, 10), False, 10),
        # limit is unsigned 32-bit: "-1" wraps to 4294967295, whose "limit + 1" is 0 in SQL
        ("?limit=-1", None, True, 150),
        ("?limit=4294967295", None, True, 150),
        ("?limit=-2", (1, 150), True, 150),
        ("?limit=2147483648", (1, 150), True, 150),
        ("?limit=-4294967295", (1, 1), False, 1),
        ("?limit=-0", None, False, 150),
        # anything else makes both arguments the defaults
        ("?limit=4294967296", (1, 100), False, 100),
        ("?since=abc&limit=5", (1, 100), False, 100),
        ("?since=5&limit=abc", (1, 100), False, 100),
        ("?since=1.5&limit=5", (1, 100), False, 100),
        ("?since=&limit=5", (1, 100), False, 100),
        ("?since=5&limit=", (1, 100), False, 100),
        ("?since=%205&limit=5", (1, 100), False, 100),
        ("?since=0x10&limit=5", (1, 100), False, 100),
        ("?since=1e2&limit=5", (1, 100), False, 100),
        ("?since=9223372036854775808&limit=5", (1, 100), False, 100),
        ("?since=9223372036854775807&limit=5", None, True, 150),
        ("?since=-9223372036854775808&limit=2", (1, 2), False, 2),
        # arguments are read as sent: no percent-decoding, and "+" is no space
        ("?limit=%35", (1, 100), False, 100),
        ("?%6Cimit=5", (1, 100), False, 100),
        ("?limit=5&", (1, 5), False, 5),
        ("?&limit=5", (1, 5), False, 5),
        ("?limit=5=6", (1, 100), False, 100),
        ("?limit", (1, 100), False, 100),
        # the last value of a repeated argument counts; names are case-sensitive
        ("?since=140&since=5&limit=2", (6, 7), False, 7),
        ("?Since=140&LIMIT=2", (1, 100), False, 100),
        # `last`, with any value, answers the last change alone
        ("?last", (150, 150), True, 150),
        ("?last=3", (150, 150), True, 150),
        ("?since=3&limit=2&last", (150, 150), True, 150),
    ],
)
def test_paging(
    client: TestClient, server: Server, query: str, seqs: tuple[int, int] | None, done: bool, last: int
) -> None:
    _upload(client, "A")
    _fill(server, 146)
    body = _changes(client, query)
    expected = [] if seqs is None else list(range(seqs[0], seqs[1] + 1))
    assert (_seqs(body), body["Done"], body["Last"]) == (expected, done, last)


def test_a_cursor_walks_the_whole_log(client: TestClient, server: Server) -> None:
    _upload(client, "A")
    _fill(server, 20)
    seen: list[int] = []
    since = 0
    while True:
        body = _changes(client, f"?since={since}&limit=7")
        seen += _seqs(body)
        since = body["Last"]
        if body["Done"]:
            break
    assert seen == list(range(1, 25))


def test_wrong_methods(client: TestClient) -> None:
    for method in ("PUT", "POST"):
        for path in ("/changes", "/exports", "/dicomvault/deleted"):
            assert client.request(method, path).status_code == 405
    assert client.delete("/dicomvault/deleted").status_code == 405
    assert client.get("/changes/1").status_code == 404


# ---- exports ------------------------------------------------------------------------------------


def _export(server: Server, public: str, modality: str) -> log.ExportedResource:
    def write(tx: WriteTx) -> log.ExportedResource:
        ref = tx.lookup(public)
        assert ref is not None
        return log.log_export(tx, ref, modality, "20260102T030405")

    return server.context.index.write(write)


def _exports(client: TestClient, query: str = "") -> dict[str, Any]:
    answer = client.get(f"/exports{query}")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    assert sorted(body) == ["Done", "Exports", "Last"]
    return body


def test_exports_empty(client: TestClient) -> None:
    assert _exports(client) == {"Done": True, "Exports": [], "Last": 0}
    assert _exports(client, "?last") == {"Done": True, "Exports": [], "Last": 0}
    # With nothing to answer, Last is the `since` asked for, truncated to 32 bits as Orthanc does.
    assert _exports(client, "?since=5")["Last"] == 5
    assert _exports(client, "?since=-5")["Last"] == -5
    assert _exports(client, "?since=4294967297")["Last"] == 1
    assert _exports(client, "?since=2147483648")["Last"] == -2147483648
    assert _exports(client, "?limit=0") == {"Done": True, "Exports": [], "Last": 0}


def test_exports_rows_and_paging(client: TestClient, server: Server) -> None:
    _upload(client, "A")
    ids = _ids("A")
    uids = {"PatientID": "A", "StudyInstanceUID": "1.2.3.65", "SeriesInstanceUID": "1.2.3.65.1"}
    sop = "1.2.3.65.1.1"
    _export(server, ids["instance"], "pacs")
    _export(server, ids["study"], "pacs")
    _export(server, ids["patient"], "peer")
    _export(server, ids["series"], "pacs")
    body = _exports(client)
    common = {"Date": "20260102T030405"}
    assert body == {
        "Done": True,
        "Last": 4,
        "Exports": [
            {
                **common,
                "ID": ids["instance"],
                "Path": f"/instances/{ids['instance']}",
                "RemoteModality": "pacs",
                "ResourceType": "Instance",
                "Seq": 1,
                **uids,
                "SOPInstanceUID": sop,
            },
            {
                **common,
                "ID": ids["study"],
                "Path": f"/studies/{ids['study']}",
                "RemoteModality": "pacs",
                "ResourceType": "Study",
                "Seq": 2,
                "PatientID": "A",
                "StudyInstanceUID": "1.2.3.65",
            },
            {
                **common,
                "ID": ids["patient"],
                "Path": f"/patients/{ids['patient']}",
                "RemoteModality": "peer",
                "ResourceType": "Patient",
                "Seq": 3,
                "PatientID": "A",
            },
            {
                **common,
                "ID": ids["series"],
                "Path": f"/series/{ids['series']}",
                "RemoteModality": "pacs",
                "ResourceType": "Series",
                "Seq": 4,
                **uids,
            },
        ],
    }
    page = _exports(client, "?since=1&limit=2")
    assert ([e["Seq"] for e in page["Exports"]], page["Done"], page["Last"]) == ([2, 3], False, 3)
    assert [e["Seq"] for e in _exports(client, "?last")["Exports"]] == [4]
    assert _exports(client, "?limit=-1") == {"Done": True, "Exports": [], "Last": 0}
    # the export log outlives the resources
    client.delete(f"/patients/{ids['patient']}")
    assert len(_exports(client)["Exports"]) == 4
    answer = client.delete("/exports")
    assert (answer.status_code, answer.content, answer.headers["content-type"]) == (200, b"", "text/plain")
    assert _exports(client) == {"Done": True, "Exports": [], "Last": 0}


# ---- the deletion log ---------------------------------------------------------------------------


def _deleted(client: TestClient, query: str = "") -> dict[str, Any]:
    answer = client.get(f"/dicomvault/deleted{query}")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    assert sorted(body) == ["Deleted", "Done", "Last"]
    return body


def test_deletion_log(client: TestClient) -> None:
    assert _deleted(client) == {"Deleted": [], "Done": True, "Last": 0}
    _upload(client, "A", number=1)
    _upload(client, "A", number=2)
    _upload(client, "B")
    a1, a2, b = _ids("A", number=1), _ids("A", number=2), _ids("B")
    client.delete(f"/instances/{a2['instance']}")
    client.delete(f"/series/{b['series']}")  # takes its study and patient with it
    body = _deleted(client)
    for entry in body["Deleted"]:
        assert TIMESTAMP.match(entry.pop("Date"))
    assert body == {
        "Done": True,
        "Last": 5,
        "Deleted": [
            {
                "ID": a2["instance"],
                "ParentID": a1["series"],
                "Path": f"/instances/{a2['instance']}",
                "ResourceType": "Instance",
                "Seq": 1,
            },
            {"ID": b["patient"], "Path": f"/patients/{b['patient']}", "ResourceType": "Patient", "Seq": 2},
            {
                "ID": b["study"],
                "ParentID": b["patient"],
                "Path": f"/studies/{b['study']}",
                "ResourceType": "Study",
                "Seq": 3,
            },
            {
                "ID": b["series"],
                "ParentID": b["study"],
                "Path": f"/series/{b['series']}",
                "ResourceType": "Series",
                "Seq": 4,
            },
            {
                "ID": b["instance"],
                "ParentID": b["series"],
                "Path": f"/instances/{b['instance']}",
                "ResourceType": "Instance",
                "Seq": 5,
            },
        ],
    }
    page = _deleted(client, "?since=1&limit=2")
    assert ([d["Seq"] for d in page["Deleted"]], page["Done"], page["Last"]) == ([2, 3], False, 3)
    assert _deleted(client, "?since=5") == {"Deleted": [], "Done": True, "Last": 5}
    # a persisted cursor resumes where it stopped
    cursor, seen = 0, []
    while True:
        page = _deleted(client, f"?since={cursor}&limit=2")
        seen += [d["Seq"] for d in page["Deleted"]]
        cursor = page["Last"]
        if page["Done"]:
            break
    assert seen == [1, 2, 3, 4, 5]
    # Orthanc's changes log forgets all of it
    assert "Deleted" not in {c["ChangeType"] for c in _changes(client)["Changes"]}


def test_deletion_log_records_overwrites(make_server: Callable[..., Server]) -> None:
    with _client(make_server(OverwriteInstances=True)) as client:
        _upload(client, "A", number=1)
        _upload(client, "A", number=2)
        _upload(client, "A", number=2)
        entries = _deleted(client)["Deleted"]
        assert [(d["ResourceType"], d["ID"]) for d in entries] == [("Instance", _ids("A", number=2)["instance"])]


@pytest.mark.parametrize(
    "query", ["?since=-1", "?limit=0", "?limit=10001", "?limit=-1", "?since=abc", "?limit=1.5", "?since="]
)
def test_deletion_log_bad_arguments(client: TestClient, query: str) -> None:
    answer = client.get(f"/dicomvault/deleted{query}")
    assert answer.status_code == 400
    assert answer.json()["HttpStatus"] == 400


# ---- the index functions ----------------------------------------------------------------------


def test_log_change_if_current(server: Server, client: TestClient) -> None:
    _upload(client, "A")
    ids = _ids("A")

    def read(tx: ReadTx) -> ResourceRef:
        ref = tx.lookup(ids["series"])
        assert ref is not None
        return ref

    series = server.context.index.read(read)
    stale = ResourceRef(ResourceType.SERIES, series.public_id, series.internal_id + 1000)
    wrong_level = ResourceRef(ResourceType.STUDY, series.public_id, series.internal_id)
    logged = server.context.index.write(
        lambda tx: [
            log.log_change_if_current(tx, ChangeType.STABLE_SERIES, ref, "20200101T000000")
            for ref in (series, stale, wrong_level)
        ]
    )
    assert logged == [True, False, False]


def test_as_int32() -> None:
    assert [log.as_int32(v) for v in (0, 5, 2**31 - 1, 2**31, 2**32 + 1, -5)] == [0, 5, 2**31 - 1, -(2**31), 1, -5]
