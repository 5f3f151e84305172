"""The index contract, on every backend (SQLite and PostgreSQL): hierarchy creation, AlreadyStored,
overwrite, deletion rules, the deletion log, the grouping writer's isolation of failures; and the
SQLite file's refusals at open (PostgreSQL's are in test_postgresql.py)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dicomvault.config import Config
from dicomvault.dicom.parsing import parse_instance
from dicomvault.enums import (
    ChangeType,
    CompressionType,
    FileContentType,
    GlobalProperty,
    MetadataType,
    ResourceType,
)
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.index.backends import open_backend
from dicomvault.index.database import Index
from dicomvault.index.sqlite import INDEX_FILENAME, SQLiteBackend
from dicomvault.index.transactions import WriteTx
from dicomvault.model import FileInfo
from dicomvault.storage.area import new_uuid
from tests.dicomgen import make_bytes

NOW = "20260101T120000"


def _file() -> FileInfo:
    return FileInfo(new_uuid(), FileContentType.DICOM, 10, "m", CompressionType.NONE, 10, "m")


def _store(
    index: Index, seed: int, number: int = 1, overwrite: bool = False, patient: str = "P1"
) -> tuple[bool, FileInfo]:
    parsed = parse_instance(make_bytes(seed=seed, instance_number=number, patient_id=patient))
    info = _file()
    outcome = index.write(
        lambda tx: tx.create_instance(
            parsed, info, {MetadataType.INSTANCE_INDEX_IN_SERIES: str(number)}, NOW, overwrite, None
        )
    )
    return outcome.stored, info


pytestmark = pytest.mark.contract


@pytest.fixture
def index(make_config: Callable[..., Config]) -> Iterator[Index]:
    idx = Index(open_backend(make_config()))
    yield idx
    idx.close()


def test_hierarchy_and_already_stored(index: Index) -> None:
    assert _store(index, 1, 1)[0]
    assert _store(index, 1, 2)[0]
    assert not _store(index, 1, 2)[0]
    stats = index.read(lambda tx: tx.statistics())
    assert (stats.count_patients, stats.count_studies, stats.count_series, stats.count_instances) == (
        1,
        1,
        1,
        2,
    )
    changes = index.read(lambda tx: tx.fetch_all("SELECT changeType, resourceType FROM Changes ORDER BY seq"))
    # Orthanc logs from the instance up to the patient.
    assert changes[:4] == [
        (ChangeType.NEW_INSTANCE, 4),
        (ChangeType.NEW_SERIES, 3),
        (ChangeType.NEW_STUDY, 2),
        (ChangeType.NEW_PATIENT, 1),
    ]
    assert changes[4:] == [(ChangeType.NEW_INSTANCE, 4)]


def test_overwrite_replaces_and_returns_old_file(index: Index) -> None:
    _, first = _store(index, 1)
    parsed = parse_instance(make_bytes(seed=1, patient_id="P1"))
    second = _file()
    outcome = index.write(lambda tx: tx.create_instance(parsed, second, {}, NOW, True, None))
    assert outcome.stored and outcome.replaced == (first,)
    assert index.read(lambda tx: tx.attachment(outcome.instance.internal_id, FileContentType.DICOM)) == second


def test_delete_climbs_empty_ancestors_and_logs(index: Index) -> None:
    _store(index, 1, 1)
    _store(index, 1, 2)
    _store(index, 2, 1)  # another study of the same patient
    parsed = parse_instance(make_bytes(seed=1, instance_number=1, patient_id="P1"))
    ref = index.read(lambda tx: tx.lookup(parsed.instance_id))
    assert ref is not None
    out = index.write(lambda tx: tx.delete(ref, NOW))
    assert out.remaining_ancestor is not None and out.remaining_ancestor.level is ResourceType.SERIES
    series = out.remaining_ancestor
    out = index.write(lambda tx: tx.delete(series, NOW))
    # the study became empty and went too; the patient keeps the other study
    assert out.remaining_ancestor is not None and out.remaining_ancestor.public_id == parsed.patient_id
    assert index.read(lambda tx: tx.lookup(parsed.study_id)) is None
    deleted = index.read(lambda tx: tx.fetch_all("SELECT resourceType, publicId FROM DeletedResources ORDER BY seq"))
    assert (ResourceType.STUDY, parsed.study_id) in deleted and (
        ResourceType.INSTANCE,
        parsed.instance_id,
    ) in deleted
    # the deleted resources' past changes are gone (cascade), as in Orthanc
    leftover = index.read(
        lambda tx: tx.fetch_all(
            "SELECT COUNT(*) FROM Changes c LEFT JOIN Resources r ON r.internalId = c.internalId WHERE r.internalId IS NULL"
        )
    )
    assert leftover == [(0,)]


def test_deleting_last_instance_removes_whole_patient(index: Index) -> None:
    _store(index, 1)
    parsed = parse_instance(make_bytes(seed=1, patient_id="P1"))
    ref = index.read(lambda tx: tx.lookup(parsed.instance_id))
    assert ref is not None
    out = index.write(lambda tx: tx.delete(ref, NOW))
    assert out.remaining_ancestor is None and len(out.files) == 1
    assert index.read(lambda tx: tx.statistics()).count_patients == 0


def test_failed_write_in_a_group_is_isolated(index: Index) -> None:
    barrier = threading.Event()

    def slow(tx: WriteTx) -> None:
        barrier.wait(5)

    def bad(tx: WriteTx) -> None:
        tx.set_global_property(GlobalProperty.FLUSH_SLEEP, "dirty")
        raise DicomVaultError(ErrorCode.BAD_REQUEST, "refused")

    def good(tx: WriteTx) -> str:
        tx.set_global_property(GlobalProperty.ANONYMIZATION_SEQUENCE, "42")
        return "ok"

    blocker = index.submit_write(slow)  # holds the writer so the next two form one group
    f_bad = index.submit_write(bad)
    f_good = index.submit_write(good)
    barrier.set()
    blocker.result(5)
    assert f_good.result(5) == "ok"
    with pytest.raises(DicomVaultError):
        f_bad.result(5)
    assert index.read(lambda tx: tx.global_property(GlobalProperty.ANONYMIZATION_SEQUENCE)) == "42"
    assert index.read(lambda tx: tx.global_property(GlobalProperty.FLUSH_SLEEP)) is None


def test_second_process_on_same_index_is_refused(tmp_path: Path) -> None:
    first = Index(SQLiteBackend(tmp_path))
    with pytest.raises(DicomVaultError) as info:
        SQLiteBackend(tmp_path)
    first.close()
    assert info.value.code is ErrorCode.DATABASE_UNAVAILABLE
    assert "in use by another dicomvault process" in str(info.value)


def test_other_schema_version_is_refused(tmp_path: Path) -> None:
    Index(SQLiteBackend(tmp_path)).close()
    with sqlite3.connect(tmp_path / INDEX_FILENAME) as conn:
        conn.execute(
            "UPDATE GlobalProperties SET value = '99' WHERE property = ?",
            (int(GlobalProperty.DICOMVAULT_SCHEMA_VERSION),),
        )
    with pytest.raises(DicomVaultError) as info:
        SQLiteBackend(tmp_path)
    assert info.value.code is ErrorCode.INCOMPATIBLE_DATABASE_VERSION
    assert "schema version 99" in str(info.value)


def test_foreign_sqlite_file_is_refused(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / INDEX_FILENAME) as conn:
        conn.execute("CREATE TABLE x(a)")
    with pytest.raises(DicomVaultError) as info:
        SQLiteBackend(tmp_path)
    assert "not a dicomvault index" in str(info.value)


def test_list_since_limit(index: Index) -> None:
    for seed in range(5):
        _store(index, seed, patient=f"P{seed}")
    everything = index.read(lambda tx: tx.list_resources(ResourceType.PATIENT))
    page = index.read(lambda tx: tx.list_resources(ResourceType.PATIENT, 1, 2))
    assert page == everything[1:3]
    assert index.read(lambda tx: tx.list_resources(ResourceType.PATIENT, 4, 10)) == everything[4:]


def test_readers_of_ended_threads_are_closed(index: Index) -> None:
    """Thread pools retire idle threads and start new ones: each ended thread's read session is
    closed when another thread opens one (a soak found them piling up, one connection each)."""

    def reads() -> None:
        for _ in range(3):
            index.read(lambda tx: tx.statistics())

    for _ in range(5):
        threads = [threading.Thread(target=reads) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    # At most the 10 readers of the last batch, which ended after the pruning of their own batch.
    assert index.open_readers() <= 10
    reads()  # a new reader in this thread retires every ended one
    assert index.open_readers() == 1
