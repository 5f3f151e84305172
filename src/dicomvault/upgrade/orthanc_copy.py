"""The row copies of an adoption: each table of an Orthanc index into the dicomvault index being
built, inside the caller's transaction, with what is odd along the way counted and logged.

Orthanc's enumerations of resource, metadata, content and compression types are ours, so those
rows are copied as they are, change types too (ours have Orthanc's numbers since schema 3);
`DicomIdentifiers` is recomputed from the main DICOM tags with our normalisation.
"""

from __future__ import annotations

import logging
import sqlite3
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from dicomvault.enums import ChangeType, CompressionType, FileContentType, GlobalProperty, ResourceType
from dicomvault.index.find import add_identifiers
from dicomvault.index.transactions import WriteTx

logger = logging.getLogger(__name__)

# Orthanc's change types are ours (enums.ChangeType has Orthanc's numbers): every logged one
# (1-16) is kept as it is; anything else (a future Orthanc's) is left out and counted.
_ORTHANC_CHANGES: dict[int, ChangeType] = {int(t): t for t in ChangeType if int(t) <= 16}

# The global properties that mean the same in both (Orthanc's numbers are ours).
_CARRIED_PROPERTIES = (GlobalProperty.ANONYMIZATION_SEQUENCE, GlobalProperty.MODALITIES, GlobalProperty.PEERS)
# AUTOINCREMENT counters carried over, so that no seq or internal id is ever given twice.
_SEQUENCES = ("Resources", "Changes", "ExportedResources", "PatientRecyclingOrder")
_MAX_LOGGED = 20  # odd rows logged one by one; beyond, only counted
_INSTANCE_CONTENT = (FileContentType.DICOM, FileContentType.DICOM_AS_JSON, FileContentType.DICOM_UNTIL_PIXEL_DATA)


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {str(r[1]) for r in conn.execute(f"PRAGMA table_info({table})")}


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


class Findings:
    """Odd findings: each logged at WARNING (the first ones one by one), all counted per kind."""

    def __init__(self) -> None:
        self.kinds: Counter[str] = Counter()
        self.logged = 0

    def add(self, kind: str, detail: str) -> None:
        self.kinds[kind] += 1
        if self.logged < _MAX_LOGGED:
            logger.warning("%s: %s", kind, detail)
            self.logged += 1

    def summary(self) -> tuple[str, ...]:
        return tuple(f"{kind} ({n})" for kind, n in sorted(self.kinds.items()))


class RowCopier:
    """The row copies, table by table, inside the caller's transaction."""

    def __init__(self, source: sqlite3.Connection, tx: WriteTx, dest: sqlite3.Connection) -> None:
        self.src = source
        self.tx = tx
        self.dest = dest
        self.counts: Counter[str] = Counter()
        self.warnings = Findings()
        self.tables = _tables(source)
        self.levels: dict[int, int] = {}  # internal id -> resource type
        self.public_ids: dict[int, str] = {}

    def rows(self, sql: str) -> Iterable[Sequence[Any]]:
        cursor = self.src.execute(sql)
        while batch := cursor.fetchmany(5000):
            yield from batch

    def copy_all(self) -> None:
        self.resources()
        self.main_tags_and_identifiers()
        self.metadata()
        self.attachments()
        self.changes()
        self.exports()
        self.recycling()
        self.labels()
        self.properties()
        self.sequences()

    def resources(self) -> None:
        rows = self.src.execute(
            "SELECT internalId, resourceType, publicId, parentId FROM Resources ORDER BY internalId"
        ).fetchall()
        for iid, level, public_id, _ in rows:
            self.levels[int(iid)] = int(level)
            self.public_ids[int(iid)] = str(public_id)
        for _, level, public_id, parent in rows:
            self.counts[f"level{level}"] += 1
            problem = self._chain_problem(int(level), parent)
            if problem:
                self.warnings.add("resources with an inconsistent level or parent", f"{public_id}: {problem}")
        self.tx.execute_many(
            "INSERT INTO Resources(internalId, resourceType, publicId, parentId) VALUES (?, ?, ?, ?)", rows
        )
        logger.info("copied %d resources", len(rows))

    def _chain_problem(self, level: int, parent: int | None) -> str | None:
        if level not in (1, 2, 3, 4):
            return f"unknown resource type {level}"
        if level == ResourceType.PATIENT:
            return None if parent is None else "a patient with a parent"
        if parent is None:
            return "no parent"
        parent_level = self.levels.get(int(parent))
        if parent_level is None:
            return f"its parent {parent} does not exist"
        if parent_level != level - 1:
            return f"its parent is at level {parent_level}"
        return None

    def main_tags_and_identifiers(self) -> None:
        # Orthanc's study rows already hold the copy of the patient's main tags (as ours do), so
        # rows are copied as they are; identifiers are derived from them with our normalisation.
        insert = "INSERT INTO MainDicomTags(id, tagGroup, tagElement, value) VALUES (?, ?, ?, ?)"
        batch: list[Sequence[Any]] = []
        current: int | None = None
        tags: list[tuple[int, str]] = []
        n = 0
        for row in self.rows("SELECT id, tagGroup, tagElement, value FROM MainDicomTags ORDER BY id"):
            iid, group, element, value = int(row[0]), int(row[1]), int(row[2]), row[3]
            value = "" if value is None else str(value)
            if iid != current:
                self._identifiers(current, tags)
                current, tags = iid, []
            tags.append(((group << 16) | element, value))
            batch.append((iid, group, element, value))
            n += 1
            if len(batch) >= 10000:
                self.tx.execute_many(insert, batch)
                batch = []
        self._identifiers(current, tags)
        self.tx.execute_many(insert, batch)
        logger.info("copied %d main DICOM tags and recomputed the identifiers", n)

    def _identifiers(self, iid: int | None, tags: list[tuple[int, str]]) -> None:
        if iid is None:
            return
        level = self.levels.get(iid)
        if level in (1, 2, 3, 4):
            add_identifiers(self.tx, iid, ResourceType(level), tags)

    def metadata(self) -> None:
        revision = "IFNULL(revision, 0)" if "revision" in _columns(self.src, "Metadata") else "0"
        rows = [
            (iid, mtype, "" if value is None else value, rev)
            for iid, mtype, value, rev in self.rows(f"SELECT id, type, value, {revision} FROM Metadata")
        ]
        self.tx.execute_many("INSERT INTO Metadata(id, type, value, revision) VALUES (?, ?, ?, ?)", rows)
        self.counts["metadata"] = len(rows)
        logger.info("copied %d metadata values", len(rows))

    def attachments(self) -> None:
        columns = _columns(self.src, "AttachedFiles")
        revision = "IFNULL(revision, 0)" if "revision" in columns else "0"
        custom = "customData" if "customData" in columns else "NULL"
        out: list[Sequence[Any]] = []
        with_dicom: set[int] = set()
        for row in self.rows(
            "SELECT id, fileType, uuid, compressedSize, uncompressedSize, compressionType, uncompressedMD5, "
            f"compressedMD5, {revision}, {custom} FROM AttachedFiles"
        ):
            iid, ftype, uuid, csize, usize, ctype, umd5, cmd5, rev, custom_data = row
            iid, ftype = int(iid), int(ftype)
            level = self.levels.get(iid)
            where = f"{self.public_ids.get(iid, iid)} (content type {ftype}, uuid {uuid})"
            if ftype == FileContentType.DICOM:
                self.counts["dicom"] += 1
                with_dicom.add(iid)
            elif ftype == FileContentType.DICOM_AS_JSON:
                self.counts["dicom_as_json"] += 1
            elif ftype == FileContentType.DICOM_UNTIL_PIXEL_DATA:
                self.counts["until_pixel_data"] += 1
            elif ftype >= FileContentType.START_USER:
                self.counts["user"] += 1
            else:
                self.counts["other"] += 1
            if ftype in _INSTANCE_CONTENT and level != ResourceType.INSTANCE:
                self.warnings.add("Orthanc DICOM attachments of a resource that is not an instance", where)
            if ctype not in (CompressionType.NONE, CompressionType.ZLIB_WITH_SIZE):
                self.warnings.add("attachments with a compression dicomvault cannot read", f"{where}: type {ctype}")
            if custom_data is not None:
                self.warnings.add(
                    "attachments written by an Orthanc storage plugin (customData), maybe stored elsewhere", where
                )
            out.append((iid, ftype, uuid, csize, usize, ctype, umd5 or "", cmd5 or "", rev))
        self.tx.execute_many(
            "INSERT INTO AttachedFiles(id, fileType, uuid, compressedSize, uncompressedSize, compressionType, "
            "uncompressedMD5, compressedMD5, revision) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            out,
        )
        for iid, level in self.levels.items():
            if level == ResourceType.INSTANCE and iid not in with_dicom:
                self.warnings.add("instances without a DICOM attachment", self.public_ids[iid])
        logger.info("copied %d attachments", len(out))

    def changes(self) -> None:
        rows = []
        left_out: Counter[int] = Counter()
        for seq, ctype, iid, level, date in self.rows(
            "SELECT seq, changeType, internalId, resourceType, date FROM Changes ORDER BY seq"
        ):
            ours = _ORTHANC_CHANGES.get(int(ctype))
            if ours is None:
                left_out[int(ctype)] += 1
                continue
            rows.append((seq, int(ours), iid, level, date or ""))
        self.tx.execute_many(
            "INSERT INTO Changes(seq, changeType, internalId, resourceType, date) VALUES (?, ?, ?, ?, ?)", rows
        )
        self.counts["changes"] = len(rows)
        self.counts["changes_left_out"] = sum(left_out.values())
        if left_out:
            logger.warning(
                "left out %d changes of Orthanc types dicomvault does not log (type: count %s)",
                sum(left_out.values()),
                dict(left_out),
            )
        logger.info("copied %d changes", len(rows))

    def exports(self) -> None:
        rows = self.src.execute(
            "SELECT seq, resourceType, publicId, remoteModality, patientId, studyInstanceUid, seriesInstanceUid, "
            "sopInstanceUid, date FROM ExportedResources ORDER BY seq"
        ).fetchall()
        rows = [(*r[:3], r[3] or "", *r[4:8], r[8] or "") for r in rows]
        self.tx.execute_many(
            "INSERT INTO ExportedResources(seq, resourceType, publicId, remoteModality, patientId, studyInstanceUid, "
            "seriesInstanceUid, sopInstanceUid, date) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        self.counts["exports"] = len(rows)

    def recycling(self) -> None:
        rows = self.src.execute("SELECT seq, patientId FROM PatientRecyclingOrder ORDER BY seq").fetchall()
        self.tx.execute_many("INSERT INTO PatientRecyclingOrder(seq, patientId) VALUES (?, ?)", rows)
        # Orthanc has no protection flag: a protected patient is one absent from the recycling order.
        in_order = {int(r[1]) for r in rows}
        protected = [
            (iid,) for iid, level in self.levels.items() if level == ResourceType.PATIENT and iid not in in_order
        ]
        self.tx.execute_many("INSERT INTO Protected(patientId) VALUES (?)", protected)
        self.counts["protected"] = len(protected)

    def labels(self) -> None:
        if "Labels" not in self.tables:
            return
        rows = self.src.execute("SELECT id, label FROM Labels").fetchall()
        self.tx.execute_many("INSERT INTO Labels(id, label) VALUES (?, ?)", rows)
        self.counts["labels"] = len(rows)

    def properties(self) -> None:
        for prop in _CARRIED_PROPERTIES:
            row = self.src.execute("SELECT value FROM GlobalProperties WHERE property = ?", (int(prop),)).fetchone()
            if row is not None and row[0] is not None:
                self.tx.set_global_property(prop, str(row[0]))
                logger.info("carried over the global property %s", prop.name)
        if self.src.execute(
            "SELECT 1 FROM GlobalProperties WHERE property = ?", (int(GlobalProperty.JOBS_REGISTRY),)
        ).fetchone():
            logger.warning("Orthanc's saved jobs are not carried over (dicomvault's jobs are its own)")

    def sequences(self) -> None:
        if "sqlite_sequence" not in self.tables:
            return
        for name, seq in self.src.execute("SELECT name, seq FROM sqlite_sequence").fetchall():
            if name not in _SEQUENCES:
                continue
            # An AUTOINCREMENT counter only grows: Orthanc's may be above every remaining row
            # (the last resources or changes deleted); keep it so that nothing is numbered twice.
            self.dest.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = ?", (seq, name))
            self.dest.execute(
                "INSERT INTO sqlite_sequence(name, seq) SELECT ?, ? WHERE NOT EXISTS "
                "(SELECT 1 FROM sqlite_sequence WHERE name = ?)",
                (name, seq, name),
            )

    def check_totals(self, compressed: int, uncompressed: int) -> None:
        """Our triggers summed every attachment; Orthanc (>= 1.5.1) keeps the same two sums."""
        if "GlobalIntegers" not in self.tables:
            return
        theirs = dict(self.src.execute("SELECT key, value FROM GlobalIntegers WHERE key IN (0, 1)").fetchall())
        if (theirs.get(0, compressed), theirs.get(1, uncompressed)) != (compressed, uncompressed):
            self.warnings.add(
                "attachment size totals differ from Orthanc's",
                f"Orthanc recorded {theirs.get(0)} / {theirs.get(1)} bytes, the attachments sum to "
                f"{compressed} / {uncompressed}",
            )
        if "DeletedFiles" in self.tables:
            pending = int(self.src.execute("SELECT COUNT(*) FROM DeletedFiles").fetchone()[0])
            if pending:
                self.warnings.add(
                    "files Orthanc had still to delete (left in the storage area, unused)", f"{pending} files"
                )

    def check_foreign_keys(self) -> None:
        problems = self.dest.execute("PRAGMA foreign_key_check").fetchall()
        by_table = Counter(str(r[0]) for r in problems)
        for table, n in sorted(by_table.items()):
            self.warnings.add("rows pointing at a resource that does not exist", f"{n} in {table}")
