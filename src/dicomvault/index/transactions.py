"""Index operations, written once for every backend.

`ReadTx` only reads; `WriteTx` extends it with writes, so a read path cannot write by accident.
Both wrap a DB-API cursor-like `execute(sql, params)`; placeholders are `?` (the PostgreSQL
backend translates them) and the few differences between backends go through `tx.dialect`
(`index/dialect.py`). Operations here never open transactions: `Index.read/write` own them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from dicomvault.dicom.parsing import ParsedInstance
from dicomvault.enums import (
    ChangeType,
    CompressionType,
    FileContentType,
    GlobalProperty,
    MetadataType,
    ResourceType,
)
from dicomvault.index.dialect import SQLITE, Dialect
from dicomvault.index.find import add_identifiers
from dicomvault.model import FileInfo, ResourceRef

_CHUNK = 500  # bound on "IN (...)" lists

if TYPE_CHECKING:
    from dicomvault.index.recycling import StorageLimits


class Executor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any: ...
    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> Any: ...


@dataclass(frozen=True)
class Statistics:
    count_patients: int
    count_studies: int
    count_series: int
    count_instances: int
    disk_size: int
    uncompressed_size: int


@dataclass(frozen=True)
class CreateOutcome:
    """What `WriteTx.create_instance` did; `replaced` lists files of an overwritten instance."""

    stored: bool
    instance: ResourceRef
    replaced: tuple[FileInfo, ...] = ()  # the overwritten instance's files, and recycled patients' ones


@dataclass(frozen=True)
class DeleteOutcome:
    remaining_ancestor: ResourceRef | None
    files: tuple[FileInfo, ...]


def _chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i : i + _CHUNK]


def _placeholders(n: int) -> str:
    return ",".join("?" * n)


def file_info_from_row(row: Sequence[Any]) -> FileInfo:
    file_type, uuid, csize, usize, ctype, umd5, cmd5 = row
    try:
        content: FileContentType | int = FileContentType(file_type)
    except ValueError:
        content = int(file_type)
    return FileInfo(
        uuid=uuid,
        content_type=content,
        uncompressed_size=int(usize),
        uncompressed_md5=umd5,
        compression=CompressionType(ctype),
        compressed_size=int(csize),
        compressed_md5=cmd5,
    )


_FILE_COLUMNS = "fileType, uuid, compressedSize, uncompressedSize, compressionType, uncompressedMD5, compressedMD5"


class ReadTx:
    def __init__(self, cur: Executor, dialect: Dialect = SQLITE) -> None:
        self._cur = cur
        self.dialect = dialect

    # The query primitives, for the operations of this module and of the other index modules
    # (one module per concept: metadata, changes, find...). SQL uses `?` placeholders.
    def fetch_all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(self._cur.execute(sql, params).fetchall())

    def fetch_one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._cur.execute(sql, params).fetchone()

    def iterate(self, sql: str, params: Sequence[Any] = (), size: int = 1000) -> Iterator[list[Any]]:
        """The rows of one statement in batches of `size`, never all at once (large finds). Other
        queries may run between two batches."""
        cursor = self._cur.execute(sql, params)
        try:
            while rows := cursor.fetchmany(size):
                yield list(rows)
        finally:
            cursor.close()  # also when the caller stops early: no statement left open at COMMIT

    # -- resources -----------------------------------------------------------------------------
    def lookup(self, public_id: str, level: ResourceType | None = None) -> ResourceRef | None:
        row = self.fetch_one("SELECT internalId, resourceType FROM Resources WHERE publicId = ?", (public_id,))
        if row is None or (level is not None and row[1] != level):
            return None
        return ResourceRef(ResourceType(row[1]), public_id, int(row[0]))

    def refs(self, internal_ids: Sequence[int]) -> dict[int, ResourceRef]:
        out: dict[int, ResourceRef] = {}
        for chunk in _chunks(internal_ids):
            for iid, rtype, pid in self.fetch_all(
                "SELECT internalId, resourceType, publicId FROM Resources "
                f"WHERE internalId IN ({_placeholders(len(chunk))})",
                chunk,
            ):
                out[int(iid)] = ResourceRef(ResourceType(rtype), pid, int(iid))
        return out

    def parent(self, ref: ResourceRef) -> ResourceRef | None:
        row = self.fetch_one(
            "SELECT p.internalId, p.resourceType, p.publicId FROM Resources c JOIN Resources p "
            "ON p.internalId = c.parentId WHERE c.internalId = ?",
            (ref.internal_id,),
        )
        return None if row is None else ResourceRef(ResourceType(row[1]), row[2], int(row[0]))

    def parents(self, internal_ids: Sequence[int]) -> dict[int, str]:
        """Child internal id -> parent public id."""
        out: dict[int, str] = {}
        for chunk in _chunks(internal_ids):
            for cid, pid in self.fetch_all(
                "SELECT c.internalId, p.publicId FROM Resources c JOIN Resources p ON p.internalId = c.parentId "
                f"WHERE c.internalId IN ({_placeholders(len(chunk))})",
                chunk,
            ):
                out[int(cid)] = pid
        return out

    def children(self, internal_ids: Sequence[int]) -> dict[int, list[ResourceRef]]:
        """Parent internal id -> its children, in creation order."""
        out: dict[int, list[ResourceRef]] = {i: [] for i in internal_ids}
        for chunk in _chunks(internal_ids):
            for parent, iid, rtype, pid in self.fetch_all(
                "SELECT parentId, internalId, resourceType, publicId FROM Resources "
                f"WHERE parentId IN ({_placeholders(len(chunk))}) ORDER BY internalId",
                chunk,
            ):
                out[int(parent)].append(ResourceRef(ResourceType(rtype), pid, int(iid)))
        return out

    def descendants(self, ref: ResourceRef, level: ResourceType) -> list[ResourceRef]:
        """All resources at `level` below `ref` (or `ref` itself if it is at that level)."""
        current = [ref]
        while current and current[0].level < level:
            kids = self.children([r.internal_id for r in current])
            current = [c for r in current for c in kids[r.internal_id]]
        return current

    def ancestor(self, ref: ResourceRef, level: ResourceType) -> ResourceRef | None:
        current: ResourceRef | None = ref
        while current is not None and current.level > level:
            current = self.parent(current)
        return current

    def list_resources(self, level: ResourceType, since: int = 0, limit: int | None = None) -> list[ResourceRef]:
        """Resources of a level in creation order; `limit=None` means all of them."""
        sql = "SELECT internalId, publicId FROM Resources WHERE resourceType = ? ORDER BY internalId"
        params: list[Any] = [int(level)]
        if limit is not None or since > 0:
            sql += " LIMIT ? OFFSET ?"
            params += [limit if limit is not None else self.dialect.no_limit, since]
        return [ResourceRef(level, pid, int(iid)) for iid, pid in self.fetch_all(sql, params)]

    # -- tags, metadata, attachments -----------------------------------------------------------
    def main_tags(self, internal_ids: Sequence[int]) -> dict[int, dict[int, str]]:
        out: dict[int, dict[int, str]] = {i: {} for i in internal_ids}
        for chunk in _chunks(internal_ids):
            for iid, group, element, value in self.fetch_all(
                f"SELECT id, tagGroup, tagElement, value FROM MainDicomTags WHERE id IN ({_placeholders(len(chunk))})",
                chunk,
            ):
                out[int(iid)][(int(group) << 16) | int(element)] = value
        return out

    def metadata(self, internal_ids: Sequence[int], types: Sequence[int] | None = None) -> dict[int, dict[int, str]]:
        out: dict[int, dict[int, str]] = {i: {} for i in internal_ids}
        type_filter = f" AND type IN ({_placeholders(len(types))})" if types else ""
        for chunk in _chunks(internal_ids):
            for iid, mtype, value in self.fetch_all(
                f"SELECT id, type, value FROM Metadata WHERE id IN ({_placeholders(len(chunk))}){type_filter}",
                [*chunk, *(types or ())],
            ):
                out[int(iid)][int(mtype)] = value
        return out

    def attachment(self, internal_id: int, content_type: int) -> FileInfo | None:
        row = self.fetch_one(
            f"SELECT {_FILE_COLUMNS} FROM AttachedFiles WHERE id = ? AND fileType = ?",
            (internal_id, int(content_type)),
        )
        return None if row is None else file_info_from_row(row)

    def attachments(self, internal_ids: Sequence[int], content_type: int | None = None) -> dict[int, list[FileInfo]]:
        out: dict[int, list[FileInfo]] = {i: [] for i in internal_ids}
        type_filter = " AND fileType = ?" if content_type is not None else ""
        for chunk in _chunks(internal_ids):
            params: list[Any] = list(chunk)
            if content_type is not None:
                params.append(int(content_type))
            for row in self.fetch_all(
                f"SELECT id, {_FILE_COLUMNS} FROM AttachedFiles WHERE id IN ({_placeholders(len(chunk))}){type_filter}",
                params,
            ):
                out[int(row[0])].append(file_info_from_row(row[1:]))
        return out

    def all_attachment_uuids(self) -> set[str]:
        return {row[0] for row in self.fetch_all("SELECT uuid FROM AttachedFiles")}

    def statistics(self) -> Statistics:
        rows = self.fetch_all("SELECT resourceType, COUNT(*) FROM Resources GROUP BY resourceType")
        counts = {int(t): int(n) for t, n in rows}
        disk, plain = self.fetch_one("SELECT compressedSize, uncompressedSize FROM StorageTotals WHERE id = 0")
        return Statistics(
            count_patients=counts.get(ResourceType.PATIENT, 0),
            count_studies=counts.get(ResourceType.STUDY, 0),
            count_series=counts.get(ResourceType.SERIES, 0),
            count_instances=counts.get(ResourceType.INSTANCE, 0),
            disk_size=int(disk),
            uncompressed_size=int(plain),
        )

    def global_property(self, prop: GlobalProperty | int) -> str | None:
        row = self.fetch_one("SELECT value FROM GlobalProperties WHERE property = ?", (int(prop),))
        return None if row is None else str(row[0])


class WriteTx(ReadTx):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._cur.execute(sql, params)

    def execute_many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._cur.executemany(sql, rows)

    def set_global_property(self, prop: GlobalProperty | int, value: str) -> None:
        self._cur.execute("DELETE FROM GlobalProperties WHERE property = ?", (int(prop),))
        self._cur.execute("INSERT INTO GlobalProperties(property, value) VALUES (?, ?)", (int(prop), value))

    def _insert_resource(self, level: ResourceType, public_id: str, parent: int | None) -> int:
        row = self._cur.execute(
            "INSERT INTO Resources(resourceType, publicId, parentId) VALUES (?, ?, ?) RETURNING internalId",
            (int(level), public_id, parent),
        ).fetchone()
        return int(row[0])

    def set_metadata(self, internal_id: int, mtype: int, value: str) -> None:
        """Create or replace a metadata value (revision back to 0). One upsert statement, valid in
        SQLite (>= 3.24) and PostgreSQL alike."""
        self._cur.execute(
            "INSERT INTO Metadata(id, type, value) VALUES (?, ?, ?) "
            "ON CONFLICT(id, type) DO UPDATE SET value = excluded.value, revision = 0",
            (internal_id, int(mtype), value),
        )

    def log_change(self, change: ChangeType, ref: ResourceRef, date: str) -> None:
        self._cur.execute(
            "INSERT INTO Changes(changeType, internalId, resourceType, date) VALUES (?, ?, ?, ?)",
            (int(change), ref.internal_id, int(ref.level), date),
        )

    def add_instance_tags(self, internal_id: int, tags: Sequence[tuple[int, str]]) -> None:
        """Schema 2: the find tags of an instance's file (table InstanceTags)."""
        self._cur.executemany(
            "INSERT INTO InstanceTags(id, tagGroup, tagElement, value) VALUES (?, ?, ?, ?)",
            [(internal_id, tag >> 16, tag & 0xFFFF, value) for tag, value in tags],
        )

    def add_attachment(self, internal_id: int, info: FileInfo, revision: int = 0) -> None:
        self._cur.execute(
            f"INSERT INTO AttachedFiles(id, {_FILE_COLUMNS}, revision) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                internal_id,
                int(info.content_type),
                info.uuid,
                info.compressed_size,
                info.uncompressed_size,
                int(info.compression),
                info.uncompressed_md5,
                info.compressed_md5,
                revision,
            ),
        )

    def create_instance(
        self,
        parsed: ParsedInstance,
        attachment: FileInfo,
        instance_metadata: dict[int, str],
        now: str,
        overwrite: bool,
        expected_instances: int | None,
        limits: StorageLimits | None = None,
    ) -> CreateOutcome:
        """Index one new instance and whatever ancestors it creates (Orthanc's Store)."""
        replaced: tuple[FileInfo, ...] = ()
        existing = self.lookup(parsed.instance_id)
        if existing is not None:
            if not overwrite:
                return CreateOutcome(stored=False, instance=existing)
            replaced = self.delete(existing, now).files
        chain = (
            (ResourceType.PATIENT, parsed.patient_id),
            (ResourceType.STUDY, parsed.study_id),
            (ResourceType.SERIES, parsed.series_id),
            (ResourceType.INSTANCE, parsed.instance_id),
        )
        refs: dict[ResourceType, ResourceRef] = {}
        created: list[ResourceRef] = []
        parent_id: int | None = None
        for level, public in chain:
            found = None if level is ResourceType.INSTANCE else self.lookup(public)
            if found is not None and found.level != level:
                raise ValueError(f"public id {public} already used at level {found.level.label}")
            if found is None:
                found = ResourceRef(level, public, self._insert_resource(level, public, parent_id))
                created.append(found)
                self._cur.executemany(
                    "INSERT INTO MainDicomTags(id, tagGroup, tagElement, value) VALUES (?, ?, ?, ?)",
                    [(found.internal_id, tag >> 16, tag & 0xFFFF, value) for tag, value in _stored_tags(parsed, level)],
                )
                add_identifiers(self, found.internal_id, level, _stored_tags(parsed, level))
            refs[level] = found
            parent_id = found.internal_id
        # Orthanc logs the creations from the instance up to the patient.
        for ref in reversed(created):
            self.log_change(_NEW_CHANGE[ref.level], ref, now)
        instance = refs[ResourceType.INSTANCE]
        self.add_instance_tags(instance.internal_id, parsed.find_tags)
        self.add_attachment(instance.internal_id, attachment)
        for level in (ResourceType.PATIENT, ResourceType.STUDY, ResourceType.SERIES):
            self.set_metadata(refs[level].internal_id, MetadataType.LAST_UPDATE, now)
        if expected_instances is not None and refs[ResourceType.SERIES] in created:
            self.set_metadata(
                refs[ResourceType.SERIES].internal_id,
                MetadataType.SERIES_EXPECTED_NUMBER_OF_INSTANCES,
                str(expected_instances),
            )
        if refs[ResourceType.SERIES] in created:
            # As Orthanc 1.10.1: a series keeps the RemoteAET of the instance that created it.
            self.set_metadata(
                refs[ResourceType.SERIES].internal_id,
                MetadataType.INSTANCE_REMOTE_AET,
                instance_metadata.get(MetadataType.INSTANCE_REMOTE_AET, ""),
            )
        # The instance is new: its metadata rows are plain inserts, in one batch.
        self._cur.executemany(
            "INSERT INTO Metadata(id, type, value) VALUES (?, ?, ?)",
            [(instance.internal_id, int(mtype), value) for mtype, value in instance_metadata.items()],
        )
        patient = refs[ResourceType.PATIENT]
        self._cur.execute("DELETE FROM PatientRecyclingOrder WHERE patientId = ?", (patient.internal_id,))
        # A protected patient stays out of the recycling order (as in Orthanc).
        self._cur.execute(
            "INSERT INTO PatientRecyclingOrder(patientId) SELECT ? WHERE NOT EXISTS "
            "(SELECT 1 FROM Protected WHERE patientId = ?)",
            (patient.internal_id, patient.internal_id),
        )
        if limits is not None:
            from dicomvault.index.recycling import enforce  # recycling builds on this module

            replaced += tuple(enforce(self, limits, patient.internal_id, now))
        return CreateOutcome(stored=True, instance=instance, replaced=replaced)

    def delete(self, ref: ResourceRef, now: str) -> DeleteOutcome:
        """Delete a resource, its descendants, and the ancestors it leaves empty (Orthanc's rule)."""
        # Climb while the parent has this resource as its only child.
        top = ref
        while True:
            parent = self.parent(top)
            if parent is None:
                remaining = None
                break
            siblings = self.fetch_one("SELECT COUNT(*) FROM Resources WHERE parentId = ?", (parent.internal_id,))[0]
            if int(siblings) > 1:
                remaining = parent
                break
            top = parent
        subtree = self._subtree(top)
        ids = [r.internal_id for r in subtree]
        files = [f for lst in self.attachments(ids).values() for f in lst]
        parents = self.parents(ids)
        self._cur.executemany(
            "INSERT INTO DeletedResources(resourceType, publicId, parentPublicId, date) VALUES (?, ?, ?, ?)",
            [(int(r.level), r.public_id, parents.get(r.internal_id), now) for r in subtree],
        )
        # ON DELETE CASCADE removes the rows of every descendant and of the dependent tables.
        self._cur.execute("DELETE FROM Resources WHERE internalId = ?", (top.internal_id,))
        return DeleteOutcome(remaining_ancestor=remaining, files=tuple(files))

    def _subtree(self, ref: ResourceRef) -> list[ResourceRef]:
        out = [ref]
        level = [ref]
        while level:
            kids = self.children([r.internal_id for r in level])
            level = [c for r in level for c in kids[r.internal_id]]
            out.extend(level)
        return out


def _stored_tags(parsed: ParsedInstance, level: ResourceType) -> tuple[tuple[int, str], ...]:
    # Orthanc keeps a copy of the patient's main tags with each study: a study answers the
    # patient tags of its own instances (`PatientMainDicomTags`), even if another study of the
    # same PatientID carries other values.
    if level is ResourceType.STUDY:
        return parsed.main_tags[ResourceType.STUDY] + parsed.main_tags[ResourceType.PATIENT]
    return parsed.main_tags[level]


_NEW_CHANGE = {
    ResourceType.PATIENT: ChangeType.NEW_PATIENT,
    ResourceType.STUDY: ChangeType.NEW_STUDY,
    ResourceType.SERIES: ChangeType.NEW_SERIES,
    ResourceType.INSTANCE: ChangeType.NEW_INSTANCE,
}
