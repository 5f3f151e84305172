"""The numbered schema migrations and the creation of an index at a given schema version.

A migration is never edited once released. A *plain* one runs its DDL and the version bump in one
transaction. A *re-reading* one (it needs every stored DICOM file parsed again, writing no file)
also names the per-instance step `reread`; the upgrade driver (`upgrade/driver.py`) runs it in
batches behind the "upgrading to N" marker (`schema.upgrading_marker`), so that it can resume
after a crash and nothing serves the index meanwhile.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dicomvault.dicom.parsing import ParsedInstance
from dicomvault.enums import GlobalProperty
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.index.dialect import SQLITE, Dialect
from dicomvault.index.schema import SCHEMA_1_DDL, SCHEMA_2_DDL, SCHEMA_3_DDL, SCHEMA_PATCH_LEVEL, SCHEMA_VERSION
from dicomvault.index.schema_postgresql import PG_SCHEMA_1_DDL, PG_SCHEMA_2_DDL
from dicomvault.index.transactions import WriteTx

if TYPE_CHECKING:
    from dicomvault.index.transactions import Executor

# Fills what a re-reading migration adds for one instance, from its re-parsed file.
Reread = Callable[[WriteTx, int, ParsedInstance], None]


@dataclass(frozen=True)
class Migration:
    target: int  # the schema version this migration produces
    description: str
    ddl: str  # SQLite's
    reread: Reread | None = None
    postgresql_ddl: str | None = None  # None: the same SQL as SQLite's

    def ddl_for(self, dialect: Dialect) -> str:
        return self.ddl if dialect.name == "sqlite" or self.postgresql_ddl is None else self.postgresql_ddl


def _fill_instance_tags(tx: WriteTx, internal_id: int, parsed: ParsedInstance) -> None:
    tx.add_instance_tags(internal_id, parsed.find_tags)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        2,
        "index the find tags of every instance (InstanceTags)",
        SCHEMA_2_DDL,
        _fill_instance_tags,
        postgresql_ddl=PG_SCHEMA_2_DDL,
    ),
    Migration(3, "store the change types with Orthanc's numbers", SCHEMA_3_DDL),
)
assert [m.target for m in MIGRATIONS] == list(range(2, SCHEMA_VERSION + 1)), "migrations must be numbered 2..N"


class SchemaVersionError(DicomVaultError):
    """The index is at another schema version than this code serves (or half-way through an
    upgrade). The composition root turns it into a start-up refusal naming the command to run."""

    def __init__(self, path: str, found: int | None, upgrading_to: int | None) -> None:
        self.path = path
        self.found = found
        self.upgrading_to = upgrading_to
        super().__init__(ErrorCode.INCOMPATIBLE_DATABASE_VERSION, self.describe())

    @property
    def too_recent(self) -> bool:
        version = self.found if self.found is not None else self.upgrading_to
        return version is not None and version > SCHEMA_VERSION

    def describe(self, config_label: str = "CONFIG") -> str:
        if self.upgrading_to is not None:
            if self.upgrading_to > SCHEMA_VERSION:
                return (
                    f"the index {self.path} is half-way through an upgrade to schema {self.upgrading_to} by a newer "
                    f"dicomvault (this one knows schema versions up to {SCHEMA_VERSION}): finish it with that version"
                )
            return (
                f"the index {self.path} is half-way through an upgrade to schema {self.upgrading_to} (interrupted): "
                f"finish it with: dicomvault upgrade {config_label}"
            )
        if self.too_recent:
            return (
                f"the index {self.path} has schema version {self.found}, too recent for this version of dicomvault "
                f"(it serves schema {SCHEMA_VERSION}): run the newer dicomvault that upgraded it, or restore the "
                "backup copy taken before that upgrade"
            )
        return (
            f"the index {self.path} has schema version {self.found}, this version of dicomvault needs schema "
            f"{SCHEMA_VERSION}: upgrade it with: dicomvault upgrade {config_label}"
        )


def split_sql(script: str) -> list[str]:
    """Statements of a DDL script; trigger bodies (with inner `;`) stay whole."""
    statements: list[str] = []
    current: list[str] = []
    for line in script.splitlines():
        if line.strip().startswith("--") or not line.strip():
            continue
        current.append(line)
        text = "\n".join(current)
        if sqlite3.complete_statement(text):
            statements.append(text.strip().rstrip(";"))
            current = []
    if current:
        raise ValueError(f"incomplete SQL statement in the schema: {current[0]!r}")
    return statements


def run_ddl(executor: Executor, ddl: str, dialect: Dialect) -> None:
    """Run a DDL script inside the caller's transaction. PostgreSQL takes a whole script at once
    (its function bodies hold `;`); SQLite one statement at a time."""
    if dialect.name == "sqlite":
        for statement in split_sql(ddl):
            executor.execute(statement)
    elif ddl.strip():
        executor.execute(ddl)


def create_schema_in(executor: Executor, version: int, dialect: Dialect) -> None:
    """Create the tables of schema `version` (1..SCHEMA_VERSION) in an empty database and record
    the version, inside the caller's transaction: schema 1's DDL, then each migration's DDL up to
    `version`. An empty index needs no re-reading, so a new index is created at the current
    version directly."""
    if not 1 <= version <= SCHEMA_VERSION:
        raise ValueError(f"no schema version {version}")
    run_ddl(executor, SCHEMA_1_DDL if dialect.name == "sqlite" else PG_SCHEMA_1_DDL, dialect)
    for migration in MIGRATIONS:
        if migration.target <= version:
            run_ddl(executor, migration.ddl_for(dialect), dialect)
    tx = WriteTx(executor, dialect)
    tx.set_global_property(GlobalProperty.DICOMVAULT_SCHEMA_VERSION, str(version))
    tx.set_global_property(GlobalProperty.DATABASE_PATCH_LEVEL, str(SCHEMA_PATCH_LEVEL))


def create_schema(conn: sqlite3.Connection, version: int = SCHEMA_VERSION) -> None:
    """SQLite: `create_schema_in` in a transaction of its own."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        create_schema_in(conn, version, SQLITE)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
