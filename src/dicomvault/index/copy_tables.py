"""What `dicomvault copy-index` copies and how it reads either backend: the tables of the current
schema in copy order (each with its key, the order rows are copied and compared in), the counters
(the highest number each numbered table ever gave), one reading interface over an SQLite or a
PostgreSQL connection (`Side`), and the checks both ends make before anything is written: the
schema version, the tables, and whether an index holds anything beyond what a new one does.
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

from dicomvault.enums import GlobalProperty
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.index.migrations import SchemaVersionError
from dicomvault.index.postgresql import translate
from dicomvault.index.schema import SCHEMA_VERSION, parse_version

logger = logging.getLogger(__name__)

BATCH = 5000  # rows per fetch / executemany: bounded memory, few round trips
_cursor_names = itertools.count()


class CopyRefused(DicomVaultError):
    """The copy was not started: an end is in use, at another schema version, not empty, or
    unreachable (CLI exit code 3). Nothing was written."""


@dataclass(frozen=True)
class Table:
    """A table of the index as the copy sees it. `key` is its primary key: rows are copied and
    compared in that order (the same on both backends: integer keys, or text compared byte-wise)."""

    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]
    replaced: bool = False  # a new index already holds rows here: they are replaced, not merged

    def select(self) -> str:
        return f"SELECT {', '.join(self.columns)} FROM {self.name} ORDER BY {', '.join(self.key)}"


# Every table of schema 3, in the order copied. StorageTotals comes last: SQLite's triggers add the
# attachments' sizes as AttachedFiles is written, and the source's totals then overwrite the sum.
TABLES: tuple[Table, ...] = (
    Table("GlobalProperties", ("property", "value"), ("property",), replaced=True),
    Table("Resources", ("internalId", "resourceType", "publicId", "parentId"), ("internalId",)),
    Table("MainDicomTags", ("id", "tagGroup", "tagElement", "value"), ("id", "tagGroup", "tagElement")),
    Table("DicomIdentifiers", ("id", "tagGroup", "tagElement", "value"), ("id", "tagGroup", "tagElement")),
    Table("InstanceTags", ("id", "tagGroup", "tagElement", "value"), ("id", "tagGroup", "tagElement")),
    Table("Metadata", ("id", "type", "value", "revision"), ("id", "type")),
    Table(
        "AttachedFiles",
        (
            "id",
            "fileType",
            "uuid",
            "compressedSize",
            "uncompressedSize",
            "compressionType",
            "uncompressedMD5",
            "compressedMD5",
            "revision",
        ),
        ("id", "fileType"),
    ),
    Table("Labels", ("id", "label"), ("id", "label")),
    Table("Protected", ("patientId",), ("patientId",)),
    Table("PatientRecyclingOrder", ("seq", "patientId"), ("seq",)),
    Table("Changes", ("seq", "changeType", "internalId", "resourceType", "date"), ("seq",)),
    Table(
        "ExportedResources",
        (
            "seq",
            "resourceType",
            "publicId",
            "remoteModality",
            "patientId",
            "studyInstanceUid",
            "seriesInstanceUid",
            "sopInstanceUid",
            "date",
        ),
        ("seq",),
    ),
    Table("DeletedResources", ("seq", "resourceType", "publicId", "parentPublicId", "date"), ("seq",)),
    Table("StorageTotals", ("id", "compressedSize", "uncompressedSize"), ("id",), replaced=True),
)
# The highest number each numbered table ever gave (never reused, even when its rows are gone).
# The log counters are what clients see (`/changes` Last); the others keep internal ids unique.
LOG_COUNTERS = ("changes", "exportedresources", "deletedresources")
SERIAL_COUNTERS = {"resources": "internalid", "patientrecyclingorder": "seq"}
COUNTERS = ("resources", "patientrecyclingorder", *LOG_COUNTERS)
COUNTER_TABLES = {t.name.lower(): t.name for t in TABLES}
# What a freshly created index holds in GlobalProperties.
_FRESH_PROPERTIES = {int(GlobalProperty.DICOMVAULT_SCHEMA_VERSION), int(GlobalProperty.DATABASE_PATCH_LEVEL)}


class Side(Protocol):
    """An open connection to one end, inside its transaction: the reads both ends answer."""

    label: str

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...
    def stream(self, sql: str) -> Iterator[list[tuple[Any, ...]]]: ...
    def tables(self) -> dict[str, set[str]]: ...
    def counters(self) -> dict[str, int]: ...


class SQLiteSide:
    def __init__(self, conn: sqlite3.Connection, label: str) -> None:
        self.conn = conn
        self.label = label

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.conn.execute(sql, params).fetchall()]

    def stream(self, sql: str) -> Iterator[list[tuple[Any, ...]]]:
        cursor = self.conn.execute(sql)
        try:
            while batch := cursor.fetchmany(BATCH):
                yield batch
        finally:
            cursor.close()

    def tables(self) -> dict[str, set[str]]:
        names = [r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {
            name.lower(): {str(c[1]).lower() for c in self.conn.execute(f'PRAGMA table_info("{name}")')}
            for name in names
            if not name.startswith("sqlite_")
        }

    def counters(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT name, seq FROM sqlite_sequence")
        found = {str(name).lower(): int(seq) for name, seq in rows}
        return {name: found.get(name, 0) for name in COUNTERS}


class PostgreSQLSide:
    def __init__(self, conn: psycopg.Connection[Any], label: str) -> None:
        self.conn = conn
        self.label = label

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.conn.execute(translate(sql), params if params else None).fetchall()]

    def stream(self, sql: str) -> Iterator[list[tuple[Any, ...]]]:
        # A server-side cursor: a table of millions of rows is never held in memory at once.
        with self.conn.cursor(name=f"dicomvault_copy_{next(_cursor_names)}") as cursor:
            cursor.itersize = BATCH
            cursor.execute(translate(sql))
            while batch := cursor.fetchmany(BATCH):
                yield batch

    def tables(self) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        rows = self.conn.execute(
            "SELECT t.table_name, c.column_name FROM information_schema.tables t LEFT JOIN "
            "information_schema.columns c ON c.table_schema = t.table_schema AND c.table_name = t.table_name "
            "WHERE t.table_schema = current_schema()"
        )
        for table, column in rows:
            found.setdefault(str(table).lower(), set())
            if column is not None:
                found[str(table).lower()].add(str(column).lower())
        found.pop("sequences", None)  # the log counters (read by `counters`)
        return found

    def counters(self) -> dict[str, int]:
        found = {str(n): int(v) for n, v in self.conn.execute("SELECT name, value FROM Sequences")}
        counters = {name: found.get(name, 0) for name in LOG_COUNTERS}
        for table, column in SERIAL_COUNTERS.items():
            # NULL until the sequence gave its first number.
            row = self.conn.execute(
                "SELECT pg_sequence_last_value(pg_get_serial_sequence(%s, %s)::regclass)", (table, column)
            ).fetchone()
            counters[table] = int(row[0]) if row is not None and row[0] is not None else 0
        return counters


# -- checks shared by both ends -----------------------------------------------------------------------


def check_version(side: Side, config_label: str) -> None:
    rows = side.query(
        "SELECT value FROM GlobalProperties WHERE property = ?", (int(GlobalProperty.DICOMVAULT_SCHEMA_VERSION),)
    )
    found, upgrading_to = parse_version(rows[0][0] if rows else None)
    if found is None and upgrading_to is None:
        raise CopyRefused(
            ErrorCode.INCOMPATIBLE_DATABASE_VERSION,
            f"the {side.label} is not a dicomvault index (no schema version): check {config_label}",
        )
    if found != SCHEMA_VERSION:
        error = SchemaVersionError(side.label, found, upgrading_to)
        raise CopyRefused(error.code, error.describe(config_label))


def check_tables(side: Side) -> None:
    """The tables are those this code copies: a column or table it does not know would be lost."""
    found = side.tables()
    expected = {t.name.lower(): {c.lower() for c in t.columns} for t in TABLES}
    problems = [f"unknown table {name}" for name in sorted(set(found) - set(expected))]
    problems += [f"no table {name}" for name in sorted(set(expected) - set(found))]
    problems += [
        f"table {name} has columns {sorted(found[name])}, expected {sorted(columns)}"
        for name, columns in expected.items()
        if name in found and found[name] != columns
    ]
    if problems:
        raise CopyRefused(
            ErrorCode.INCOMPATIBLE_DATABASE_VERSION,
            f"the {side.label} does not have the tables of schema {SCHEMA_VERSION} that copy-index copies "
            f"({'; '.join(problems)}): nothing was copied",
        )


def contents(side: Side) -> list[str]:
    """What an index holds beyond what a freshly created one does (empty: nothing)."""
    held: list[str] = []
    for table in TABLES:
        if table.replaced:
            continue
        count = int(side.query(f"SELECT COUNT(*) FROM {table.name}")[0][0])
        if count:
            held.append(f"{count} rows in {table.name}")
    extra = sorted(int(p) for (p,) in side.query("SELECT property FROM GlobalProperties") if p not in _FRESH_PROPERTIES)
    if extra:
        held.append(f"global properties {', '.join(map(str, extra))}")
    counters = side.counters()
    held += [f"{name} numbered up to {counters[name]}" for name in LOG_COUNTERS if counters[name]]
    totals = side.query("SELECT compressedSize, uncompressedSize FROM StorageTotals")
    if any(v for row in totals for v in row):
        held.append(f"storage totals {totals[0]}")
    return held


def refuse_unless_empty(side: Side, config_label: str) -> None:
    held = contents(side)
    if held:
        shown = "; ".join(held[:4]) + ("; ..." if len(held) > 4 else "")
        raise CopyRefused(
            ErrorCode.INCOMPATIBLE_DATABASE_VERSION,
            f"the destination {side.label} is not empty ({shown}): copy-index never merges into or "
            f"overwrites an index. Point {config_label} at a new database or folder",
        )
