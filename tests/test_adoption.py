"""Adopting an Orthanc 1.x installation (issue 6): installations made by the real Orthanc 1.10.1,
with `StorageCompression` off and on, adopted in place (`dicomvault upgrade CONFIG`, or
`adopt_orthanc` directly), then served by dicomvault, whose answers must be Orthanc's; Orthanc's
files untouched; bad input refused clearly; the storage verification report.

Both installations are built once per module, by two Orthanc processes started side by side
(Orthanc takes 3-4 s to stop). Every test that adopts works on its own copy of the storage folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from dicomvault.enums import ChangeType, GlobalProperty
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.index.schema import SCHEMA_VERSION, upgrading_marker
from dicomvault.server import Server
from dicomvault.storage.accessor import CompressionPolicy, StorageAccessor
from dicomvault.storage.area import FilesystemStorageArea
from dicomvault.upgrade.adoption import adopt_orthanc, is_orthanc_index, orthanc_schema
from dicomvault.upgrade.verify import MISSING, UNREADABLE, WRONG_MD5, WRONG_SIZE, verify_storage
from tests.dicomgen import Spec, make_bytes
from tests.orthanc import OrthancServer, missing_orthanc_reason, orthanc_available
from tests.upgrades import dicomvault

pytestmark = [
    pytest.mark.orthanc,
    pytest.mark.skipif(not orthanc_available(), reason=missing_orthanc_reason()),
    pytest.mark.timeout(300),
]

ORTHANC_CONFIG: dict[str, Any] = {
    # A short StableAge: the Stable* changes are logged before the answers are recorded, so that
    # `IsStable` is true on both sides (dicomvault starts with everything stable, as Orthanc does).
    "StableAge": 1,
    "OverwriteInstances": False,
    "MaximumStorageSize": 0,
    "MaximumPatientCount": 0,
}
MANY = 3  # instances of the multi-instance series
# Finds answered from the identifiers recomputed at adoption and from the main DICOM tags.
FINDS: dict[str, dict[str, Any]] = {
    "by-patient-id": {"Level": "Study", "Query": {"PatientID": "P3"}},
    "by-name": {"Level": "Patient", "Query": {"PatientName": "doe*"}},
    "by-non-ascii-name": {"Level": "Patient", "Query": {"PatientName": "Müller*"}, "Expand": True},
    "by-accession": {"Level": "Study", "Query": {"AccessionNumber": "ACC4"}, "Expand": True},
    "by-modality": {"Level": "Series", "Query": {"Modality": "MR"}},
    "by-sop-instance": {"Level": "Instance", "Query": {"SOPInstanceUID": "1.2.826.0.1.3680043.10.1234.3.1.2"}},
}


@dataclass
class Installation:
    """An Orthanc storage folder (index included, never modified by the tests) and what Orthanc
    answered about it."""

    compression: bool
    storage: Path
    answers: dict[str, Any] = field(default_factory=dict)  # request -> JSON (or bytes, for files)
    instances: list[str] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)
    protected: str = ""
    user_attachments: dict[str, list[str]] = field(default_factory=dict)  # resource path -> names


# ---- building the installations with the real Orthanc -----------------------------------------


def _specs() -> list[Spec]:
    return [
        # One series of several instances.
        *(Spec(seed=1, patient_id="P1", patient_name="Doe^John", instance_number=i) for i in range(1, MANY + 1)),
        # A non-ASCII name, with its character set.
        Spec(seed=2, patient_id="P2", patient_name="Müller^Jörg", extra={"SpecificCharacterSet": "ISO_IR 100"}),
        # One patient, two studies.
        Spec(seed=3, patient_id="P3", patient_name="Roe^Jane", study_description="Head"),
        Spec(seed=4, patient_id="P3", patient_name="Roe^Jane", modality="MR"),
        # A patient deleted below (a gap in the ids and in the recycling order).
        Spec(seed=5, patient_id="P5", patient_name="Gone^Soon"),
    ]


def _populate(orthanc: OrthancServer, inst: Installation) -> None:
    with httpx.Client(base_url=orthanc.url, timeout=30.0) as client:
        stored = []
        for spec in _specs():
            answer = client.post("/instances", content=make_bytes(spec))
            answer.raise_for_status()
            stored.append(answer.json())
        first, second = stored[0]["ID"], stored[1]["ID"]
        series = stored[0]["ParentSeries"]
        study = stored[3]["ParentStudy"]
        for path, body in (
            (f"/instances/{first}/metadata/1024", b"hello"),
            (f"/instances/{first}/metadata/1025", "Grüße".encode()),
            (f"/instances/{second}/metadata/1024", b"second"),
            (f"/series/{series}/metadata/1030", b"series-level"),
        ):
            client.put(path, content=body).raise_for_status()
        for path, body in (
            (f"/instances/{first}/attachments/1025", b"user attachment bytes" * 50),
            (f"/instances/{second}/attachments/1026", b""),
            (f"/studies/{study}/attachments/1027", bytes(range(256)) * 8),
        ):
            client.put(path, content=body).raise_for_status()
        inst.protected = stored[3]["ParentPatient"]
        client.put(f"/patients/{inst.protected}/protected", content=b"1").raise_for_status()
        # One instance of the multi-instance series, and a whole patient.
        client.delete(f"/instances/{stored[MANY - 1]['ID']}").raise_for_status()
        client.delete(f"/patients/{stored[-1]['ParentPatient']}").raise_for_status()
        _wait_stable(client)
        _record(client, inst)


def _wait_stable(client: httpx.Client, timeout: float = 30.0) -> None:
    wanted = (
        {("StablePatient", p) for p in client.get("/patients").json()}
        | {("StableStudy", s) for s in client.get("/studies").json()}
        | {("StableSeries", s) for s in client.get("/series").json()}
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        changes = client.get("/changes", params={"limit": 1000}).json()["Changes"]
        if wanted <= {(c["ChangeType"], c["ID"]) for c in changes}:
            return
        time.sleep(0.2)
    raise AssertionError("Orthanc did not log every Stable* change in time")


def _record(client: httpx.Client, inst: Installation) -> None:
    answers = inst.answers

    def get(path: str, raw: bool = False) -> Any:
        answer = client.get(path)
        answer.raise_for_status()
        answers[path] = answer.content if raw else answer.json()
        return answers[path]

    for level in ("patients", "studies", "series", "instances"):
        get(f"/{level}?expand")
        for public_id in get(f"/{level}"):
            for name in get(f"/{level}/{public_id}/attachments"):
                if name.isdigit():
                    inst.user_attachments.setdefault(f"/{level}/{public_id}", []).append(name)
                # Every attachment, Orthanc's "dicom-until-pixel-data" included, read both ways.
                base = f"/{level}/{public_id}/attachments/{name}"
                for reading in ("data", "compressed-data", "md5", "compressed-md5", "size", "compressed-size"):
                    get(f"{base}/{reading}", raw=True)
                get(f"{base}/is-compressed", raw=True)
            get(f"/{level}/{public_id}/attachments?full")
            get(f"/{level}/{public_id}/metadata?expand")
    inst.instances = list(answers["/instances"])
    inst.patients = list(answers["/patients"])
    for instance in inst.instances:
        get(f"/instances/{instance}/file", raw=True)
        get(f"/instances/{instance}/simplified-tags")
    for patient in inst.patients:
        get(f"/patients/{patient}/protected", raw=True)
    get("/changes?limit=1000")
    get("/changes?since=3&limit=4")
    get("/statistics")
    # Finds and lookups go through the identifiers recomputed at adoption.
    for name, query in FINDS.items():
        answer = client.post("/tools/find", json=query)
        answer.raise_for_status()
        answers[f"find:{name}"] = answer.json()
    answer = client.post("/tools/lookup", content=b"P2")
    answer.raise_for_status()
    answers["lookup:P2"] = answer.json()


@pytest.fixture(scope="module")
def installations(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Installation]:
    """{compression: installation}: both made at once (their Orthanc processes stop in parallel)."""
    servers: dict[bool, OrthancServer] = {}
    made: dict[bool, Installation] = {}
    try:
        for compression in (False, True):
            base = tmp_path_factory.mktemp(f"orthanc-{'compressed' if compression else 'plain'}")
            servers[compression] = OrthancServer(base, {**ORTHANC_CONFIG, "StorageCompression": compression})
            servers[compression].start()
            made[compression] = Installation(compression, base / "storage")
        for compression, orthanc in servers.items():
            _populate(orthanc, made[compression])
    finally:
        for orthanc in servers.values():
            orthanc.terminate()
        for orthanc in servers.values():
            orthanc.wait()
    for inst in made.values():
        assert (inst.storage / "index").is_file()
        assert not (inst.storage / "index-wal").exists(), "Orthanc did not stop cleanly"
    return made


# ---- helpers ----------------------------------------------------------------------------------


def _copy_storage(inst: Installation, tmp_path: Path) -> Path:
    target = tmp_path / "storage"
    shutil.copytree(inst.storage, target, copy_function=shutil.copy2)
    return target


def _snapshot(folder: Path, ignore_ours: bool = True) -> dict[str, tuple[int, int, str]]:
    """Relative path -> (size, mtime, SHA-256) of every file; dicomvault's own files left out."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        rel = str(path.relative_to(folder))
        if ignore_ours and rel.startswith("dicomvault.db"):
            continue
        stat = path.stat()
        out[rel] = (stat.st_size, stat.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def _finish_rereading(storage: Path) -> None:
    """What the upgrade driver does after `adopt_orthanc`, for tests that call it directly."""
    from dicomvault.config import config_from_mapping
    from dicomvault.upgrade.driver import upgrade

    config = config_from_mapping({"StorageDirectory": str(storage), "IndexDirectory": str(storage)}, source="<test>")
    outcome = upgrade(config, backup=False, progress=False, workers=1)
    assert outcome.version == SCHEMA_VERSION


def _index_properties(db: Path) -> dict[int, str]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return {int(k): str(v) for k, v in conn.execute("SELECT property, value FROM GlobalProperties")}


def _accessor(storage: Path) -> StorageAccessor:
    return StorageAccessor(FilesystemStorageArea(storage, fsync=False), CompressionPolicy())


def _edit_orthanc_index(storage: Path, *statements: str) -> None:
    """Change a copy of Orthanc's index (as another Orthanc version, or damage, would)."""
    with contextlib.closing(sqlite3.connect(storage / "index")) as conn, conn:
        # Orthanc's triggers call functions its C++ code registers: stand-ins that do nothing.
        conn.create_function("SignalFileDeleted", 7, lambda *args: None)
        conn.create_function("SignalResourceDeleted", 2, lambda *args: None)
        conn.create_function("SignalRemainingAncestor", 2, lambda *args: None)
        for statement in statements:
            conn.execute(statement)


def _compare(inst: Installation, client: TestClient) -> None:
    """Every recorded Orthanc answer, asked again of dicomvault."""
    mismatches = []
    for key, expected in inst.answers.items():
        if key.startswith(("find:", "lookup:")):
            continue
        answer = client.get(key)
        actual: Any = answer.content if isinstance(expected, bytes) else answer.json()
        if answer.status_code != 200 or actual != expected:
            mismatches.append(f"{key}: {answer.status_code}\n orthanc: {expected!r}\n dicomvault: {actual!r}")
    for name, query in FINDS.items():
        expected = inst.answers[f"find:{name}"]
        actual = client.post("/tools/find", json=query).json()
        if actual != expected:
            mismatches.append(f"find {name}\n orthanc: {expected!r}\n dicomvault: {actual!r}")
    actual = client.post("/tools/lookup", content=b"P2").json()
    if actual != inst.answers["lookup:P2"]:
        mismatches.append(f"lookup:P2\n orthanc: {inst.answers['lookup:P2']!r}\n dicomvault: {actual!r}")
    assert not mismatches, "\n".join(mismatches)


@contextlib.contextmanager
def _serve(make_server: Callable[..., Server], storage: Path, compression: bool) -> Iterator[TestClient]:
    server = make_server(
        StorageDirectory=str(storage),
        IndexDirectory=str(storage),
        StorageCompression=compression,
        StableAge=3600,
    )
    with TestClient(server.app(), raise_server_exceptions=False, client=("127.0.0.1", 50000)) as client:  # type: ignore[arg-type]
        yield client


# ---- adoption end to end ----------------------------------------------------------------------


def _upgrade(storage: Path, base: Path) -> subprocess.CompletedProcess[str]:
    """`dicomvault upgrade CONFIG` on an Orthanc folder, as an operator runs it."""
    config = base / "config.json"
    config.write_text(json.dumps({"StorageDirectory": str(storage), "IndexDirectory": str(storage)}))
    return dicomvault("upgrade", config, "--no-progress")


@pytest.mark.parametrize("compression", [False, True], ids=["plain", "compressed"])
def test_upgrade_command_adopts_and_dicomvault_answers_as_orthanc(
    installations: dict[bool, Installation],
    compression: bool,
    tmp_path: Path,
    make_server: Callable[..., Server],
) -> None:
    inst = installations[compression]
    storage = _copy_storage(inst, tmp_path)
    before = _snapshot(storage)
    done = _upgrade(storage, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "adopted the Orthanc index" in done.stdout
    assert "every file is present" in done.stdout
    # Orthanc's index and every stored file as they were: nothing created, changed or removed.
    assert _snapshot(storage) == before
    record = json.loads(_index_properties(storage / "dicomvault.db")[GlobalProperty.DICOMVAULT_ADOPTED_FROM_ORTHANC])
    assert record["OrthancSchema"] == 6 and record["Index"] == str(storage / "index")
    with _serve(make_server, storage, compression) as client:
        _compare(inst, client)
        # The adopted archive keeps working: a new upload joins the adopted patient.
        answer = client.post("/instances", content=make_bytes(Spec(seed=1, patient_id="P1", instance_number=9)))
        assert answer.status_code == 200, answer.text
        assert answer.json()["ParentPatient"] in inst.patients


@pytest.mark.parametrize("compression", [False, True], ids=["plain", "compressed"])
def test_adoption_report_counts_orthanc_auxiliary_attachments_apart(
    installations: dict[bool, Installation], compression: bool, tmp_path: Path
) -> None:
    inst = installations[compression]
    storage = _copy_storage(inst, tmp_path)
    report = adopt_orthanc(storage / "index", storage / "dicomvault.db")
    n = len(inst.instances)
    assert (report.patients, report.studies, report.series, report.instances) == (
        len(inst.patients),
        len(inst.answers["/studies"]),
        len(inst.answers["/series"]),
        n,
    )
    assert report.dicom_attachments == n
    # Orthanc 1.10.1 writes its "DICOM until pixel data" copy only when it compresses: never an instance.
    assert report.dicom_until_pixel_data_attachments == (n if compression else 0)
    assert report.dicom_as_json_attachments == 0
    assert report.user_attachments == sum(len(v) for v in inst.user_attachments.values())
    assert report.protected_patients == 1
    assert report.changes == len(inst.answers["/changes?limit=1000"]["Changes"])
    assert report.changes_left_out == 0 and not report.warnings
    stats = inst.answers["/statistics"]
    assert (str(report.compressed_size), str(report.uncompressed_size)) == (
        stats["TotalDiskSize"],
        stats["TotalUncompressedSize"],
    )
    lines = report.render()
    assert any(f"{n} instances" in line for line in lines)
    # The version property says "upgrading": nothing serves the index before the re-read pass.
    props = _index_properties(storage / "dicomvault.db")
    assert props[GlobalProperty.DICOMVAULT_SCHEMA_VERSION] == upgrading_marker(SCHEMA_VERSION)
    assert props[GlobalProperty.DICOMVAULT_UPGRADE_CURSOR] == "0"
    assert props[GlobalProperty.DICOMVAULT_REREAD_FROM] == "2"
    assert not (storage / "dicomvault.db.adopting").exists()


def test_adopted_index_keeps_ids_sequences_protection_and_identifiers(
    installations: dict[bool, Installation], tmp_path: Path
) -> None:
    inst = installations[False]
    storage = _copy_storage(inst, tmp_path)
    adopt_orthanc(storage / "index", storage / "dicomvault.db")
    orthanc = sqlite3.connect(storage / "index")
    ours = sqlite3.connect(storage / "dicomvault.db")
    try:
        query = "SELECT internalId, resourceType, publicId, parentId FROM Resources ORDER BY internalId"
        assert ours.execute(query).fetchall() == orthanc.execute(query).fetchall()
        sequences = "SELECT name, seq FROM sqlite_sequence WHERE name IN ('Resources', 'Changes') ORDER BY name"
        assert ours.execute(sequences).fetchall() == orthanc.execute(sequences).fetchall()
        query = "SELECT seq, patientId FROM PatientRecyclingOrder ORDER BY seq"
        assert ours.execute(query).fetchall() == orthanc.execute(query).fetchall()
        protected = ours.execute("SELECT r.publicId FROM Protected p JOIN Resources r ON r.internalId = p.patientId")
        assert [r[0] for r in protected] == [inst.protected]
        # Our normalisation gives Orthanc's identifiers (non-ASCII letters dropped, upper case).
        query = "SELECT id, tagGroup, tagElement, value FROM DicomIdentifiers ORDER BY 1, 2, 3"
        assert ours.execute(query).fetchall() == orthanc.execute(query).fetchall()
        query = "SELECT id, type, value FROM Metadata ORDER BY 1, 2"
        assert ours.execute(query).fetchall() == orthanc.execute(query).fetchall()
        # Orthanc's change types become ours, name for name.
        kinds = {ChangeType(t).label for (t,) in ours.execute("SELECT DISTINCT changeType FROM Changes")}
        assert {"NewInstance", "NewSeries", "NewStudy", "NewPatient", "StableSeries", "StableStudy"} <= kinds
        assert {"StablePatient", "UpdatedMetadata", "UpdatedAttachment"} <= kinds
    finally:
        orthanc.close()
        ours.close()


def test_orthanc_1_12_index_labels_revisions_and_extra_rows_are_adopted(
    installations: dict[bool, Installation], tmp_path: Path, make_server: Callable[..., Server]
) -> None:
    inst = installations[False]
    storage = _copy_storage(inst, tmp_path)
    patient, study = inst.patients[0], inst.answers["/studies"][0]
    # What Orthanc >= 1.12 adds to schema 6 (patch level), and rows Orthanc 1.10.1 did not write here.
    _edit_orthanc_index(
        storage,
        "CREATE TABLE Labels(id INTEGER REFERENCES Resources(internalId) ON DELETE CASCADE, label TEXT NOT NULL, "
        "PRIMARY KEY(id, label))",
        f"INSERT INTO Labels SELECT internalId, 'urgent' FROM Resources WHERE publicId IN ('{patient}', '{study}')",
        f"INSERT INTO Labels SELECT internalId, 'teaching' FROM Resources WHERE publicId = '{study}'",
        "ALTER TABLE Metadata ADD COLUMN revision INTEGER",
        "ALTER TABLE AttachedFiles ADD COLUMN revision INTEGER",
        "ALTER TABLE AttachedFiles ADD COLUMN customData BLOB",
        "UPDATE Metadata SET revision = 3 WHERE type = 1024",
        "INSERT INTO GlobalProperties VALUES (4, '2')",
        "INSERT INTO GlobalProperties VALUES (3, '42')",
        'INSERT INTO GlobalProperties VALUES (20, \'{"remote": ["REMOTE", "127.0.0.1", 104]}\')',
        "INSERT INTO GlobalProperties VALUES (21, '{}')",
        "INSERT INTO ExportedResources VALUES (NULL, 2, 'abc', 'REMOTE', 'P1', '1.2', NULL, NULL, '20200101T000000')",
        # Orthanc's ModifiedStudy (8) is kept; a type no Orthanc logs (99) is left out and counted.
        "INSERT INTO Changes SELECT NULL, 8, internalId, 2, '20200101T000000' FROM Resources WHERE resourceType = 2",
        "INSERT INTO Changes SELECT NULL, 99, internalId, 2, '20200101T000000' FROM Resources WHERE resourceType = 2",
    )
    assert orthanc_schema(storage / "index") == (6, 2)
    report = adopt_orthanc(storage / "index", storage / "dicomvault.db")
    assert report.labels == 3 and report.orthanc_patch_level == 2
    assert report.exported_resources == 1
    assert report.changes_left_out == len(inst.answers["/studies"])
    with contextlib.closing(sqlite3.connect(storage / "dicomvault.db")) as ours:
        modified = ours.execute("SELECT COUNT(*) FROM Changes WHERE changeType = 8").fetchone()[0]
    assert modified == len(inst.answers["/studies"])
    with contextlib.closing(sqlite3.connect(storage / "dicomvault.db")) as ours:
        labels = ours.execute(
            "SELECT r.publicId, l.label FROM Labels l JOIN Resources r ON r.internalId = l.id ORDER BY 1, 2"
        ).fetchall()
        assert sorted(labels) == sorted([(patient, "urgent"), (study, "teaching"), (study, "urgent")])
        assert {r[0] for r in ours.execute("SELECT revision FROM Metadata WHERE type = 1024")} == {3}
    props = _index_properties(storage / "dicomvault.db")
    assert props[3] == "42" and props[20].startswith('{"remote"') and props[21] == "{}"
    assert props[GlobalProperty.DATABASE_PATCH_LEVEL] == "0"  # ours, not Orthanc's
    _finish_rereading(storage)
    with _serve(make_server, storage, False) as client:
        exports = client.get("/exports").json()
        assert [e["ID"] for e in exports["Exports"]] == ["abc"]
        changes = client.get("/changes?limit=1000").json()["Changes"]
        # Orthanc's own changes, then the ModifiedStudy ones added to its index above.
        recorded = inst.answers["/changes?limit=1000"]["Changes"]
        assert changes[: len(recorded)] == recorded
        added = sorted((c["ChangeType"], c["ID"]) for c in changes[len(recorded) :])
        assert added == sorted(("ModifiedStudy", study) for study in inst.answers["/studies"])


# ---- Orthanc's files are never touched ---------------------------------------------------------


def test_adoption_writes_nothing_beside_orthanc_files(installations: dict[bool, Installation], tmp_path: Path) -> None:
    inst = installations[True]
    storage = _copy_storage(inst, tmp_path)
    before = _snapshot(storage, ignore_ours=False)
    assert is_orthanc_index(storage / "index")
    assert orthanc_schema(storage / "index") == (6, 0)
    adopt_orthanc(storage / "index", storage / "dicomvault.db")
    after = _snapshot(storage, ignore_ours=False)
    # Exactly one new file, ours; no -wal/-shm beside Orthanc's index (a plain read-only SQLite
    # connection would leave both).
    assert set(after) - set(before) == {"dicomvault.db"}
    assert {k: v for k, v in after.items() if k != "dicomvault.db"} == before


def test_running_orthanc_is_refused_and_a_killed_one_is_adopted_with_its_journal(
    installations: dict[bool, Installation], tmp_path: Path
) -> None:
    inst = installations[False]
    storage = _copy_storage(inst, tmp_path)
    orthanc = OrthancServer(
        tmp_path / "orthanc", {**ORTHANC_CONFIG, "StorageDirectory": str(storage), "IndexDirectory": str(storage)}
    )
    orthanc.start()
    try:
        with pytest.raises(DicomVaultError) as refused:
            adopt_orthanc(storage / "index", storage / "dicomvault.db")
        assert refused.value.code == ErrorCode.DATABASE_UNAVAILABLE
        assert "stop Orthanc first" in str(refused.value.details)
        assert not (storage / "dicomvault.db").exists() and not (storage / "dicomvault.db.adopting").exists()
        done = _upgrade(storage, tmp_path)
        assert done.returncode == 3, done.stdout + done.stderr  # refused
        assert "stop Orthanc first" in done.stderr
        assert not (storage / "dicomvault.db").exists()
        answer = httpx.post(orthanc.url + "/instances", content=make_bytes(Spec(seed=7, patient_id="P7")))
        answer.raise_for_status()
        new_instance = answer.json()["ID"]
    finally:
        # Killed: Orthanc's last transactions stay in index-wal, not yet in index.
        if orthanc.proc is not None:
            orthanc.proc.send_signal(signal.SIGKILL)
        orthanc.wait()
    assert (storage / "index-wal").stat().st_size > 0
    before = _snapshot(storage)
    report = adopt_orthanc(storage / "index", storage / "dicomvault.db")
    assert report.instances == len(inst.instances) + 1
    assert _snapshot(storage) == before
    assert not (storage / "dicomvault.db.orthanc-snapshot").exists()
    with contextlib.closing(sqlite3.connect(storage / "dicomvault.db")) as ours:
        assert ours.execute("SELECT 1 FROM Resources WHERE publicId = ?", (new_instance,)).fetchone()


# ---- bad input --------------------------------------------------------------------------------


def _assert_refused(storage: Path, code: ErrorCode, words: str) -> None:
    with pytest.raises(DicomVaultError) as refused:
        adopt_orthanc(storage / "index", storage / "dicomvault.db")
    assert refused.value.code == code, refused.value
    assert words in str(refused.value.details)
    left = sorted(p.name for p in storage.iterdir() if p.name.startswith("dicomvault.db"))
    assert left == [], left


def test_truncated_orthanc_index_is_refused(installations: dict[bool, Installation], tmp_path: Path) -> None:
    storage = _copy_storage(installations[False], tmp_path)
    index = storage / "index"
    with open(index, "r+b") as f:
        f.truncate(index.stat().st_size // 2)
    _assert_refused(storage, ErrorCode.CORRUPTED_FILE, "corrupted or truncated")


def test_damaged_orthanc_index_is_refused(installations: dict[bool, Installation], tmp_path: Path) -> None:
    storage = _copy_storage(installations[False], tmp_path)
    index = storage / "index"
    data = bytearray(index.read_bytes())
    page = 4096
    data[2 * page : 3 * page] = bytes(range(256)) * 16  # a b-tree page overwritten
    index.write_bytes(bytes(data))
    with pytest.raises(DicomVaultError) as refused:
        adopt_orthanc(index, storage / "dicomvault.db")
    assert refused.value.code == ErrorCode.CORRUPTED_FILE
    assert not [p for p in storage.iterdir() if p.name.startswith("dicomvault.db")]


def test_garbage_and_foreign_files_are_not_orthanc_indexes(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    storage.mkdir()
    (storage / "index").write_bytes(os.urandom(8192))
    assert not is_orthanc_index(storage / "index")
    _assert_refused(storage, ErrorCode.INCOMPATIBLE_DATABASE_VERSION, "not an SQLite database")
    (storage / "index").unlink()
    with contextlib.closing(sqlite3.connect(storage / "index")) as conn:
        conn.execute("CREATE TABLE Something(x)")
    assert not is_orthanc_index(storage / "index")
    _assert_refused(storage, ErrorCode.INCOMPATIBLE_DATABASE_VERSION, "not an Orthanc index")
    (storage / "index").unlink()
    _assert_refused(storage, ErrorCode.INEXISTENT_FILE, "no Orthanc index")


@pytest.mark.parametrize(
    ("version", "words"),
    [("7", "newer than those dicomvault knows"), ("5", "Orthanc CONFIG --upgrade"), ("x", "no usable schema")],
)
def test_unknown_orthanc_schema_is_refused(
    installations: dict[bool, Installation], tmp_path: Path, version: str, words: str
) -> None:
    storage = _copy_storage(installations[False], tmp_path)
    _edit_orthanc_index(storage, f"UPDATE GlobalProperties SET value = '{version}' WHERE property = 1")
    assert is_orthanc_index(storage / "index") == version.isdigit()
    _assert_refused(storage, ErrorCode.INCOMPATIBLE_DATABASE_VERSION, words)


_ADOPT = """
import sys
from pathlib import Path
from dicomvault.upgrade.adoption import adopt_orthanc

storage = Path(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
report = adopt_orthanc(storage / "index", storage / "dicomvault.db")
print("done", report.instances, flush=True)
"""
SYNTHETIC = 30000


def _grow_orthanc_index(storage: Path, series_public_id: str) -> None:
    """Add `SYNTHETIC` instances (rows only: their files do not exist) under one series, so that an
    adoption takes long enough to be killed half-way."""
    _edit_orthanc_index(
        storage,
        f"""WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {SYNTHETIC})
        INSERT INTO Resources(resourceType, publicId, parentId)
        SELECT 4, printf('synthetic-%08d', i), (SELECT internalId FROM Resources WHERE publicId = '{series_public_id}')
        FROM n""",
        """INSERT INTO MainDicomTags SELECT internalId, 8, 24, '1.2.3.' || internalId FROM Resources
        WHERE publicId LIKE 'synthetic-%'""",
        """INSERT INTO Metadata SELECT internalId, 2, '20200101T000000' FROM Resources
        WHERE publicId LIKE 'synthetic-%'""",
        """INSERT INTO AttachedFiles SELECT internalId, 1, printf('%08x-0000-4000-8000-000000000000', internalId),
        100, 100, 1, 'x', 'x' FROM Resources WHERE publicId LIKE 'synthetic-%'""",
    )


def _adopt_in_subprocess(storage: Path, kill_after: float | None) -> str:
    proc = subprocess.Popen(
        [sys.executable, "-c", _ADOPT, str(storage)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.stdin.write("go\n")
    proc.stdin.flush()
    if kill_after is not None:
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    if kill_after is None:
        assert proc.returncode == 0, err
    return out


@pytest.mark.slow
def test_adoption_killed_at_random_moments_leaves_no_index_or_a_complete_one(
    installations: dict[bool, Installation], tmp_path: Path
) -> None:
    inst = installations[False]
    storage = _copy_storage(inst, tmp_path)
    _grow_orthanc_index(storage, inst.answers["/series"][0])
    expected = len(inst.instances) + SYNTHETIC
    started = time.monotonic()
    assert _adopt_in_subprocess(storage, None).split() == ["done", str(expected)]
    duration = time.monotonic() - started
    rng = random.Random(6)
    outcomes = []
    for _ in range(5):
        (storage / "dicomvault.db").unlink(missing_ok=True)
        _adopt_in_subprocess(storage, rng.uniform(0.0, duration))
        db = storage / "dicomvault.db"
        if not db.exists():
            outcomes.append("none")
            continue
        # There, it is whole: every instance and the marker that sends it to the re-read pass.
        with contextlib.closing(sqlite3.connect(db)) as conn:
            (instances,) = conn.execute("SELECT COUNT(*) FROM Resources WHERE resourceType = 4").fetchone()
            marker = conn.execute("SELECT value FROM GlobalProperties WHERE property = 1000").fetchone()
        assert (instances, marker[0]) == (expected, upgrading_marker(SCHEMA_VERSION))
        outcomes.append("complete")
    # Whatever the moment, the next run finishes (a stale half-built file is replaced).
    (storage / "dicomvault.db").unlink(missing_ok=True)
    assert _adopt_in_subprocess(storage, None).split() == ["done", str(expected)]
    assert not (storage / "dicomvault.db.adopting").exists()
    assert "none" in outcomes, outcomes  # at least one kill fell during the adoption


_FILLED_DISK = """
import resource, signal, sys
from pathlib import Path
from dicomvault.errors import DicomVaultError
from dicomvault.upgrade.adoption import adopt_orthanc

# Files cannot grow beyond 40 kB: writing the new index fails half-way, as on a full disk.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (40000, 40000))
storage = Path(sys.argv[1])
try:
    adopt_orthanc(storage / "index", storage / "dicomvault.db")
except DicomVaultError as exc:
    print(exc.code.name, exc.details)
"""


def test_disk_filling_up_half_way_leaves_no_index(installations: dict[bool, Installation], tmp_path: Path) -> None:
    storage = _copy_storage(installations[False], tmp_path)
    before = _snapshot(storage)
    done = subprocess.run(
        [sys.executable, "-c", _FILLED_DISK, str(storage)], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.startswith(("CANNOT_WRITE_FILE", "FULL_STORAGE")), done.stdout + done.stderr
    assert "free disk space" in done.stdout
    assert not [p for p in storage.iterdir() if p.name.startswith("dicomvault.db")]
    assert _snapshot(storage) == before


def test_existing_target_is_refused_and_a_stale_unfinished_one_replaced(
    installations: dict[bool, Installation], tmp_path: Path
) -> None:
    storage = _copy_storage(installations[False], tmp_path)
    (storage / "dicomvault.db.adopting").write_bytes(b"half-written by a killed adoption")
    report = adopt_orthanc(storage / "index", storage / "dicomvault.db")
    assert report.instances == len(installations[False].instances)
    assert not (storage / "dicomvault.db.adopting").exists()
    with pytest.raises(DicomVaultError) as refused:
        adopt_orthanc(storage / "index", storage / "dicomvault.db")
    assert refused.value.code == ErrorCode.BAD_SEQUENCE_OF_CALLS


def test_odd_rows_are_reported_and_adoption_goes_on(installations: dict[bool, Installation], tmp_path: Path) -> None:
    inst = installations[False]
    storage = _copy_storage(inst, tmp_path)
    instance = inst.instances[0]
    _edit_orthanc_index(
        storage,
        "DELETE FROM AttachedFiles WHERE fileType = 1 AND id = "
        f"(SELECT internalId FROM Resources WHERE publicId = '{instance}')",
        "INSERT INTO Resources VALUES (NULL, 3, 'orphan-series', 999999)",
        "UPDATE AttachedFiles SET uncompressedMD5 = NULL, compressedMD5 = NULL WHERE fileType >= 1024",
    )
    report = adopt_orthanc(storage / "index", storage / "dicomvault.db")
    assert report.series == len(inst.answers["/series"]) + 1
    text = "\n".join(report.warnings)
    assert "instances without a DICOM attachment (1)" in text
    assert "resources with an inconsistent level or parent (1)" in text
    with contextlib.closing(sqlite3.connect(storage / "dicomvault.db")) as ours:
        md5s = ours.execute("SELECT uncompressedMD5, compressedMD5 FROM AttachedFiles WHERE fileType >= 1024")
        assert set(md5s.fetchall()) == {("", "")}
    verification = verify_storage(storage / "dicomvault.db", _accessor(storage))
    assert verification.instances_without_dicom == 1 and not verification.ok


# ---- verification of the storage area ---------------------------------------------------------


@pytest.mark.parametrize("compression", [False, True], ids=["plain", "compressed"])
def test_verify_storage_reports_missing_unreadable_and_damaged_files(
    installations: dict[bool, Installation], compression: bool, tmp_path: Path
) -> None:
    inst = installations[compression]
    storage = _copy_storage(inst, tmp_path)
    adopt_orthanc(storage / "index", storage / "dicomvault.db")
    accessor = _accessor(storage)
    area = accessor.area
    assert isinstance(area, FilesystemStorageArea)
    clean = verify_storage(storage / "dicomvault.db", accessor, check_md5=True)
    assert clean.ok, clean.render()
    assert clean.instances == len(inst.instances) and clean.dicom_files == len(inst.instances)
    assert clean.files_checked == clean.dicom_files + clean.auxiliary_files + clean.user_files
    assert clean.auxiliary_files == (len(inst.instances) if compression else 0)
    with contextlib.closing(sqlite3.connect(storage / "dicomvault.db")) as conn:
        rows = conn.execute(
            "SELECT r.publicId, a.uuid FROM AttachedFiles a JOIN Resources r ON r.internalId = a.id "
            "WHERE a.fileType = 1 ORDER BY a.id"
        ).fetchall()
    (missing_id, missing), (short_id, short), (flipped_id, flipped), (odd_id, odd) = rows[:4]
    area.path(missing).unlink()
    with open(area.path(short), "r+b") as f:
        f.truncate(10)
    data = bytearray(area.path(flipped).read_bytes())
    data[-1] ^= 0xFF
    area.path(flipped).write_bytes(bytes(data))
    area.path(odd).unlink()
    area.path(odd).mkdir()  # a folder where the file should be: cannot be read as one
    report = verify_storage(storage / "dicomvault.db", accessor)
    found = {(p.kind, p.public_id, p.uuid) for p in report.problems}
    assert (MISSING, missing_id, missing) in found
    assert (WRONG_SIZE, short_id, short) in found
    assert (UNREADABLE, odd_id, odd) in found
    assert not report.ok and len(report.problems) == 3  # sizes only: the flipped byte goes unseen
    text = "\n".join(report.render())
    assert missing in text and missing_id in text and "PROBLEMS" in text
    with_md5 = verify_storage(storage / "dicomvault.db", accessor, check_md5=True)
    assert (WRONG_MD5, flipped_id, flipped) in {(p.kind, p.public_id, p.uuid) for p in with_md5.problems}


def test_upgrade_command_with_a_missing_file_finishes_with_problems(
    installations: dict[bool, Installation], tmp_path: Path
) -> None:
    inst = installations[True]
    storage = _copy_storage(inst, tmp_path)
    with contextlib.closing(sqlite3.connect(storage / "index")) as conn:
        (uuid,) = conn.execute("SELECT uuid FROM AttachedFiles WHERE fileType = 1 LIMIT 1").fetchone()
    path = storage / uuid[:2] / uuid[2:4] / uuid
    path.unlink()
    done = _upgrade(storage, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{MISSING}: instance" in done.stdout and uuid in done.stdout
