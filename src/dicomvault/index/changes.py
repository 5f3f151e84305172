"""The index's three logs: changes (`/changes`), exported resources (`/exports`) and dicomvault's
deletion log (`/dicomvault/deleted`), with their SQL and their values.

Paging follows Orthanc 1.10.1 exactly for the two Orthanc logs: a page holds the entries whose
`seq` is above `since`, in order, at most `limit` of them, and is "done" unless a full page left
entries behind. Orthanc computes the SQL `LIMIT` as `limit + 1` in 32-bit unsigned arithmetic
bound as a signed 32-bit integer, which gives two visible quirks that clients may rely on:
`limit=4294967295` (or `-1`, which Orthanc's parser wraps to it) answers nothing with `Done`
true, and any `limit` from 2^31 on answers everything.

The change log keeps no entry of a deleted resource (the rows cascade with it) and has no
`Deleted` change: Orthanc forgets deletions. dicomvault records each one in `DeletedResources`
instead (written by `WriteTx.delete`), which this module exposes for replication.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from dicomvault.enums import ChangeType, MetadataType, ResourceType
from dicomvault.index.transactions import ReadTx, WriteTx
from dicomvault.model import ResourceRef

logger = logging.getLogger(__name__)

T = TypeVar("T")

_UINT32 = 1 << 32
_INT32 = 1 << 31

# DICOM identifiers of each level, as (group, element) of the main DICOM tags.
_PATIENT_ID = (0x0010, 0x0020)
_STUDY_UID = (0x0020, 0x000D)
_SERIES_UID = (0x0020, 0x000E)
_SOP_UID = (0x0008, 0x0018)


def as_int32(value: int) -> int:
    """A number as Orthanc renders `Seq` and `Last`: truncated to a signed 32-bit integer."""
    value %= _UINT32
    return value - _UINT32 if value >= _INT32 else value


def _sql_limit(tx: ReadTx, limit: int) -> int | None:
    """The `LIMIT` Orthanc binds for a page of `limit` entries (or the backend's "no limit")."""
    fetch = (limit + 1) % _UINT32
    return tx.dialect.no_limit if fetch >= _INT32 else fetch


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a log: its entries, and whether nothing is left after them."""

    entries: tuple[T, ...]
    done: bool


def _page(rows: Sequence[Any], limit: int, make: Callable[[Any], T]) -> Page[T]:
    taken = [make(row) for row in rows[:limit]]
    return Page(tuple(taken), done=not (len(taken) == limit and len(rows) > limit))


def _sequence_value(tx: ReadTx, table: str) -> int:
    """The highest `seq` ever given in `table` (never reused), even if its rows were deleted since:
    SQLite keeps it in `sqlite_sequence`, the PostgreSQL backend in its `Sequences` table."""
    row = tx.fetch_one(*tx.dialect.sequence_value_sql(table))
    return int(row[0]) if row is not None else 0


# ---- changes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    seq: int
    change_type: ChangeType
    level: ResourceType
    public_id: str
    date: str

    def to_json(self) -> dict[str, Any]:
        return {
            "ChangeType": self.change_type.label,
            "Date": self.date,
            "ID": self.public_id,
            "Path": f"/{self.level.plural}/{self.public_id}",
            "ResourceType": self.level.label,
            "Seq": as_int32(self.seq),
        }


_CHANGE_COLUMNS = "c.seq, c.changeType, c.resourceType, r.publicId, c.date"
_CHANGE_FROM = "Changes c JOIN Resources r ON r.internalId = c.internalId"


def _change(row: Sequence[Any]) -> Change:
    seq, change_type, level, public_id, date = row
    return Change(int(seq), ChangeType(change_type), ResourceType(level), public_id, date)


def changes(tx: ReadTx, since: int, limit: int) -> Page[Change]:
    rows = tx.fetch_all(
        f"SELECT {_CHANGE_COLUMNS} FROM {_CHANGE_FROM} WHERE c.seq > ? ORDER BY c.seq LIMIT ?",
        (since, _sql_limit(tx, limit)),
    )
    return _page(rows, limit, _change)


def last_change(tx: ReadTx) -> Change | None:
    row = tx.fetch_one(f"SELECT {_CHANGE_COLUMNS} FROM {_CHANGE_FROM} ORDER BY c.seq DESC LIMIT 1")
    return None if row is None else _change(row)


def last_change_index(tx: ReadTx) -> int:
    """Orthanc's "last change index": the last `seq` given, kept when its entry is gone (the
    resource was deleted, or the log cleared); 0 for a log that never held anything."""
    return _sequence_value(tx, "Changes")


def clear_changes(tx: WriteTx) -> None:
    """`DELETE /changes`; the numbering goes on from where it was, as in Orthanc."""
    tx.execute("DELETE FROM Changes")


def log_change_if_current(tx: WriteTx, change: ChangeType, ref: ResourceRef, date: str) -> bool:
    """Log `change` unless `ref` was deleted (or deleted and created again, under a new internal
    id) meanwhile: Orthanc's rule for changes computed outside the transaction that made them."""
    current = tx.lookup(ref.public_id, ref.level)
    if current is None or current.internal_id != ref.internal_id:
        return False
    tx.log_change(change, ref, date)
    return True


def series_is_complete(tx: ReadTx, series: ResourceRef, expected: int) -> bool:
    """Orthanc's series status is "Complete": the `IndexInSeries` of the instances that have one
    are integers, distinct, in 1..expected, and there are `expected` of them. (A value that is
    not an integer makes the status "Unknown" in Orthanc, so never complete.)"""
    rows = tx.fetch_all(
        "SELECT m.value FROM Resources r JOIN Metadata m ON m.id = r.internalId AND m.type = ? WHERE r.parentId = ?",
        (int(MetadataType.INSTANCE_INDEX_IN_SERIES), series.internal_id),
    )
    seen: set[int] = set()
    for (raw,) in rows:
        try:
            index = int(str(raw).strip())
        except ValueError:
            return False
        if not 0 < index <= expected or index in seen:
            return False
        seen.add(index)
    return len(seen) == expected


def log_if_series_completed(tx: WriteTx, series: ResourceRef, expected: int | None, date: str) -> bool:
    """After an instance was stored: Orthanc logs `CompletedSeries` each time an instance arrives
    in a series that is then complete (against the expected count of that instance's tags)."""
    if expected is None or expected <= 0 or not series_is_complete(tx, series, expected):
        return False
    tx.log_change(ChangeType.COMPLETED_SERIES, series, date)
    logger.info("series %s is complete (%d instances)", series.public_id, expected)
    return True


# ---- exported resources -----------------------------------------------------------------------


@dataclass(frozen=True)
class ExportedResource:
    """One resource sent to a modality or a peer (`RemoteModality`: the symbolic name of the
    modality or peer in the configuration). The DICOM identifiers are those of the resource and
    of its ancestors: Orthanc shows the ones of the resource's level and above."""

    seq: int
    level: ResourceType
    public_id: str
    remote_modality: str
    date: str
    patient_id: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    sop_instance_uid: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "Date": self.date,
            "ID": self.public_id,
            "Path": f"/{self.level.plural}/{self.public_id}",
            "PatientID": self.patient_id,
            "RemoteModality": self.remote_modality,
            "ResourceType": self.level.label,
            "Seq": as_int32(self.seq),
        }
        if self.level >= ResourceType.STUDY:
            out["StudyInstanceUID"] = self.study_instance_uid
        if self.level >= ResourceType.SERIES:
            out["SeriesInstanceUID"] = self.series_instance_uid
        if self.level >= ResourceType.INSTANCE:
            out["SOPInstanceUID"] = self.sop_instance_uid
        return out


_EXPORT_COLUMNS = (
    "seq, resourceType, publicId, remoteModality, date, patientId, studyInstanceUid, seriesInstanceUid, sopInstanceUid"
)


def _export(row: Sequence[Any]) -> ExportedResource:
    seq, level, public_id, modality, date, patient, study, series, sop = row
    return ExportedResource(
        int(seq), ResourceType(level), public_id, modality, date, patient or "", study or "", series or "", sop or ""
    )


def exports(tx: ReadTx, since: int, limit: int) -> Page[ExportedResource]:
    rows = tx.fetch_all(
        f"SELECT {_EXPORT_COLUMNS} FROM ExportedResources WHERE seq > ? ORDER BY seq LIMIT ?",
        (since, _sql_limit(tx, limit)),
    )
    return _page(rows, limit, _export)


def last_export(tx: ReadTx) -> ExportedResource | None:
    row = tx.fetch_one(f"SELECT {_EXPORT_COLUMNS} FROM ExportedResources ORDER BY seq DESC LIMIT 1")
    return None if row is None else _export(row)


def clear_exports(tx: WriteTx) -> None:
    tx.execute("DELETE FROM ExportedResources")


def log_export(tx: WriteTx, ref: ResourceRef, remote_modality: str, date: str) -> ExportedResource:
    """Record that `ref` was sent to `remote_modality` (for the C-STORE SCU and peer jobs).

    Callers log only when `Config.log_exported_resources` (Orthanc's `LogExportedResources`,
    false by default) is on, and log what Orthanc logs: the resource the job was asked to send
    (a study sent as a whole is one entry at the study level), not each of its instances.
    """
    chain = [ref]
    while chain[-1].level is not ResourceType.PATIENT:
        parent = tx.parent(chain[-1])
        if parent is None:  # pragma: no cover - every resource has its full ancestry
            break
        chain.append(parent)
    by_level = {r.level: r.internal_id for r in chain}
    tags = tx.main_tags(list(by_level.values()))

    def identifier(level: ResourceType, tag: tuple[int, int]) -> str:
        internal_id = by_level.get(level)
        if internal_id is None or level > ref.level:
            return ""
        return tags[internal_id].get((tag[0] << 16) | tag[1], "")

    tx.execute(
        "INSERT INTO ExportedResources(resourceType, publicId, remoteModality, patientId, studyInstanceUid, "
        "seriesInstanceUid, sopInstanceUid, date) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            int(ref.level),
            ref.public_id,
            remote_modality,
            identifier(ResourceType.PATIENT, _PATIENT_ID),
            identifier(ResourceType.STUDY, _STUDY_UID),
            identifier(ResourceType.SERIES, _SERIES_UID),
            identifier(ResourceType.INSTANCE, _SOP_UID),
            date,
        ),
    )
    exported = last_export(tx)
    assert exported is not None
    logger.debug("logged the export of %s to %s", ref.path, remote_modality)
    return exported


# ---- deleted resources (dicomvault's extension) ----------------------------------------------


@dataclass(frozen=True)
class DeletedResource:
    """One resource removed from the index: asked for, removed with its parent, recycled, or
    replaced by `OverwriteInstances`. `parent_id` is the public id of its parent at that time."""

    seq: int
    level: ResourceType
    public_id: str
    parent_id: str | None
    date: str

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "Date": self.date,
            "ID": self.public_id,
            "Path": f"/{self.level.plural}/{self.public_id}",
            "ResourceType": self.level.label,
            "Seq": self.seq,
        }
        if self.parent_id is not None:
            out["ParentID"] = self.parent_id
        return out


def _deleted(row: Sequence[Any]) -> DeletedResource:
    seq, level, public_id, parent_id, date = row
    return DeletedResource(int(seq), ResourceType(level), public_id, parent_id, date)


def deleted(tx: ReadTx, since: int, limit: int) -> Page[DeletedResource]:
    rows = tx.fetch_all(
        "SELECT seq, resourceType, publicId, parentPublicId, date FROM DeletedResources "
        "WHERE seq > ? ORDER BY seq LIMIT ?",
        (since, limit + 1),
    )
    return _page(rows, limit, _deleted)


def last_deleted_index(tx: ReadTx) -> int:
    """The last `seq` of the deletion log (0 if nothing was ever deleted)."""
    return _sequence_value(tx, "DeletedResources")
