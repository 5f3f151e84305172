"""The two ends of `dicomvault copy-index`, per backend: a source read in one consistent snapshot
while nothing else may serve it, and a destination written all or nothing.

- SQLite source: the index lock file is taken (a running server holds it: refused), then one read
  transaction gives the snapshot.
- PostgreSQL source: Orthanc's exclusive advisory lock (a server with `"Lock": true` holds it:
  refused), no other dicomvault session on the database (servers with `"Lock": false`: refused),
  then the writers' advisory lock held for the whole copy, so that a server started meanwhile cannot
  write, and a REPEATABLE READ snapshot.
- SQLite destination: written to a temporary file beside `dicomvault.db` (journal and fsync off:
  a failure deletes the file), fsynced, then renamed into place. A crash or Ctrl-C leaves no index.
- PostgreSQL destination: one transaction (schema created in it when the database is new); the
  user triggers (log numbering, storage totals) are disabled inside it so that copied rows keep
  their numbers and totals are not counted twice, then enabled again before the commit. A failure
  rolls everything back, the schema too.

Both ends refuse (`CopyRefused`, exit code 3) rather than guess: schema versions other than this
code's, a destination that holds anything, an index in use, a database that cannot be reached.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import psycopg

from dicomvault.config import Config
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.index.copy_tables import (
    COUNTER_TABLES,
    LOG_COUNTERS,
    SERIAL_COUNTERS,
    CopyRefused,
    PostgreSQLSide,
    Side,
    SQLiteSide,
    Table,
    check_tables,
    check_version,
    refuse_unless_empty,
)
from dicomvault.index.dialect import POSTGRESQL, SQLITE
from dicomvault.index.migrations import create_schema_in
from dicomvault.index.postgresql import WRITER_LOCK, PostgreSQLSettings, claim_database, translate
from dicomvault.index.schema import SCHEMA_VERSION
from dicomvault.index.sqlite import (
    INDEX_FILENAME,
    ORTHANC_INDEX_FILENAME,
    connect_index,
    lock_index,
    not_a_database,
    orthanc_index_only,
    unlock_index,
)

logger = logging.getLogger(__name__)

# Our own sessions are named apart, so that the "other dicomvault sessions" check does not see them.
APPLICATION_NAME = "dicomvault copy-index"
_TEMP_INFIX = ".copy-index-"


class _PgExecutor:
    """The `Executor` that `create_schema_in` writes through, on the destination's transaction."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(translate(sql), params if params else None)

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        with self._conn.cursor() as cursor:
            cursor.executemany(translate(sql), list(params))


def _lock(path: Path, role: str) -> IO[bytes]:
    try:
        return lock_index(path)
    except DicomVaultError as exc:
        if exc.code is ErrorCode.DATABASE_UNAVAILABLE:
            raise CopyRefused(exc.code, f"{role}: {exc.details}") from exc
        raise


# -- SQLite ---------------------------------------------------------------------------------------------


def _raise_if_corrupt(path: Path, exc: BaseException) -> None:
    # OperationalError (locked, disk I/O) is a DatabaseError too, but says nothing of the file.
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        raise not_a_database(path, exc) from exc


class SQLiteSource:
    """The index file of `config`, locked and read in one snapshot."""

    def __init__(self, config: Config, config_label: str) -> None:
        directory = config.index_directory
        path = directory / INDEX_FILENAME
        if not path.is_file():
            refusal = orthanc_index_only(directory, config_label)
            if refusal is not None:
                raise CopyRefused(refusal.code, refusal.details)
            raise CopyRefused(
                ErrorCode.INEXISTENT_FILE,
                f"no dicomvault index at {path}: nothing to copy (check IndexDirectory in {config_label})",
            )
        self._lock = _lock(path, "the source")
        try:
            self._conn = connect_index(path)
            try:
                self._conn.execute("BEGIN")  # one snapshot for every read of the copy
                self.side = SQLiteSide(self._conn, f"SQLite index {path}")
                check_version(self.side, config_label)
                check_tables(self.side)
            except BaseException as exc:
                self._conn.close()
                _raise_if_corrupt(path, exc)
                raise
        except BaseException:
            unlock_index(self._lock)
            raise

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        unlock_index(self._lock)


class SQLiteDestination:
    """A new index file for `config`: written as a temporary file, renamed into place by `commit`."""

    def __init__(self, config: Config, config_label: str) -> None:
        directory = config.index_directory
        self.path = directory / INDEX_FILENAME
        self.label = f"SQLite index {self.path}"
        if (directory / ORTHANC_INDEX_FILENAME).is_file():
            raise CopyRefused(
                ErrorCode.INCOMPATIBLE_DATABASE_VERSION,
                f"the destination folder {directory} holds an Orthanc index: a dicomvault index beside it would "
                f"hide it. Point IndexDirectory of {config_label} at another folder",
            )
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DicomVaultError(
                ErrorCode.MAKE_DIRECTORY, f"cannot create the index folder {directory}: {exc}"
            ) from exc
        self._lock = _lock(self.path, "the destination")
        self.temp = directory / f".{INDEX_FILENAME}{_TEMP_INFIX}{os.getpid()}"
        self._check: sqlite3.Connection | None = None
        try:
            if self.path.exists():
                self._refuse_unless_fresh(config_label)
            for stale in directory.glob(f".{INDEX_FILENAME}{_TEMP_INFIX}*"):
                stale.unlink()  # a copy interrupted by a crash (we hold the lock: no copy is running)
            self._conn = connect_index(self.temp)
            # A file deleted on any failure needs neither a rollback journal nor ordered writes:
            # it is fsynced once, whole, before it is renamed into place.
            self._conn.execute("PRAGMA foreign_keys = OFF")
            self._conn.execute("PRAGMA journal_mode = OFF")
            self._conn.execute("PRAGMA synchronous = OFF")
            # The indexes of a multi-million-row MainDicomTags outgrow the server's 32 MB page cache.
            self._conn.execute("PRAGMA cache_size = -262144")
            self._conn.execute("BEGIN IMMEDIATE")
            create_schema_in(self._conn, SCHEMA_VERSION, SQLITE)
        except BaseException:
            self._remove_temp()
            unlock_index(self._lock)
            raise

    def _refuse_unless_fresh(self, config_label: str) -> None:
        conn = connect_index(self.path)
        try:
            side = SQLiteSide(conn, self.label)
            check_version(side, config_label)
            check_tables(side)
            refuse_unless_empty(side, config_label)
        except BaseException as exc:
            _raise_if_corrupt(self.path, exc)
            raise
        finally:
            conn.close()

    def load(self, table: Table, batches: Iterable[list[tuple[Any, ...]]]) -> None:
        if table.replaced:
            self._conn.execute(f"DELETE FROM {table.name}")
        marks = ", ".join("?" * len(table.columns))
        statement = f"INSERT INTO {table.name} ({', '.join(table.columns)}) VALUES ({marks})"
        for batch in batches:
            self._conn.executemany(statement, batch)

    def set_counters(self, counters: dict[str, int]) -> None:
        # Rows inserted with their own numbers moved sqlite_sequence to the highest copied; the
        # source may have given higher ones since deleted.
        for name, value in counters.items():
            self._conn.execute("DELETE FROM sqlite_sequence WHERE lower(name) = ?", (name,))
            if value:
                self._conn.execute(
                    "INSERT INTO sqlite_sequence(name, seq) VALUES (?, ?)", (COUNTER_TABLES[name], value)
                )

    def finish(self) -> Side:
        """Commit the temporary file, make it durable, and open it afresh for the verification."""
        self._conn.execute("COMMIT")
        self._conn.close()
        with open(self.temp, "rb") as handle:
            os.fsync(handle.fileno())
        self._check = connect_index(self.temp)
        self._check.execute("BEGIN")
        return SQLiteSide(self._check, self.label)

    def commit(self) -> None:
        if self._check is not None:
            self._check.close()
            self._check = None
        for suffix in ("-wal", "-shm", "-journal"):
            # Left by the empty index being replaced: SQLite would apply a stale WAL to the new file.
            with contextlib.suppress(FileNotFoundError):
                self.path.with_name(self.path.name + suffix).unlink()
        os.replace(self.temp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def abort(self) -> None:
        self._remove_temp()

    def _remove_temp(self) -> None:
        for conn in (getattr(self, "_conn", None), self._check):
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
        self._check = None
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                self.temp.with_name(self.temp.name + suffix).unlink()

    def close(self) -> None:
        self._remove_temp()
        unlock_index(self._lock)


# -- PostgreSQL -------------------------------------------------------------------------------------


def _connect(settings: PostgreSQLSettings, role: str, config_label: str) -> psycopg.Connection[Any]:
    # One attempt, not the server's connection retries: an operator waits at the terminal.
    try:
        return psycopg.connect(settings.conninfo, autocommit=True, application_name=APPLICATION_NAME)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CopyRefused(
            ErrorCode.DATABASE_UNAVAILABLE,
            f"{role}: the {settings.label} is unreachable ({reason}): check Host, Port, Database, Username and "
            f'Password in the "PostgreSQL" section of {config_label}, and that the server accepts connections',
        ) from exc


def _claim(conn: psycopg.Connection[Any], settings: PostgreSQLSettings, role: str) -> None:
    try:
        claim_database(conn, settings.label)
    except DicomVaultError as exc:
        raise CopyRefused(exc.code, f"{role}: {exc.details}") from exc


class PostgreSQLSource:
    def __init__(self, settings: PostgreSQLSettings, config_label: str) -> None:
        self._conn = _connect(settings, "the source", config_label)
        try:
            _claim(self._conn, settings, "the source")
            # Held until the end of the copy: a server started meanwhile ("Lock": false) cannot
            # write (its writers wait for this lock), so the copy and the source stay equal.
            writer = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (WRITER_LOCK,)).fetchone()
            if not (writer and writer[0]):
                raise CopyRefused(
                    ErrorCode.DATABASE_UNAVAILABLE,
                    f"the source: the {settings.label} is being written to by another session: stop every "
                    "server using this database first",
                )
            self._conn.autocommit = False
            self._conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            self._conn.read_only = True
            self.side = PostgreSQLSide(self._conn, settings.label)
            tables = self.side.tables()
            if "globalproperties" not in tables:
                raise CopyRefused(
                    ErrorCode.INEXISTENT_FILE,
                    f"no dicomvault index in the {settings.label}: nothing to copy (check {config_label})",
                )
            check_version(self.side, config_label)
            check_tables(self.side)
        except BaseException:
            self._conn.close()
            raise

    def close(self) -> None:
        self._conn.close()  # ends the snapshot and releases the session locks


class PostgreSQLDestination:
    def __init__(self, settings: PostgreSQLSettings, config_label: str) -> None:
        self.label = settings.label
        self._conn = _connect(settings, "the destination", config_label)
        try:
            _claim(self._conn, settings, "the destination")
            self._conn.autocommit = False
            # A server starting on this database meanwhile waits for the schema (it takes this lock
            # to create one), then finds the copy committed.
            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
            self.side = PostgreSQLSide(self._conn, settings.label)
            tables = self.side.tables()
            if not tables:
                logger.info("creating the index schema %d in the %s", SCHEMA_VERSION, settings.label)
                create_schema_in(_PgExecutor(self._conn), SCHEMA_VERSION, POSTGRESQL)
            elif "globalproperties" not in tables:
                raise CopyRefused(
                    ErrorCode.INCOMPATIBLE_DATABASE_VERSION,
                    f"the destination {settings.label} holds other tables ({', '.join(sorted(tables)[:5])}) and no "
                    f"dicomvault index: point {config_label} at a new database",
                )
            else:
                check_version(self.side, config_label)
                check_tables(self.side)
                refuse_unless_empty(self.side, config_label)
            self._triggered = [
                str(r[0])
                for r in self._conn.execute(
                    "SELECT DISTINCT event_object_table FROM information_schema.triggers "
                    "WHERE trigger_schema = current_schema() ORDER BY 1"
                )
            ]
            for table in self._triggered:
                # Copied rows keep their numbers and the totals are copied, not summed again. Inside
                # the transaction: a rollback restores the triggers with everything else.
                self._conn.execute(f'ALTER TABLE "{table}" DISABLE TRIGGER USER')
        except BaseException:
            self._conn.close()
            raise

    def load(self, table: Table, batches: Iterable[list[tuple[Any, ...]]]) -> None:
        if table.replaced:
            self._conn.execute(f"DELETE FROM {table.name}")
        # One COPY per table: constraints are checked at the end of the statement, whatever the
        # order of the rows.
        with (
            self._conn.cursor() as cursor,
            cursor.copy(f"COPY {table.name} ({', '.join(table.columns)}) FROM STDIN") as copy,
        ):
            for batch in batches:
                for row in batch:
                    copy.write_row(row)

    def set_counters(self, counters: dict[str, int]) -> None:
        for name in LOG_COUNTERS:
            self._conn.execute("UPDATE Sequences SET value = %s WHERE name = %s", (counters[name], name))
        for table, column in SERIAL_COUNTERS.items():
            value = counters[table]
            self._conn.execute(
                "SELECT setval(pg_get_serial_sequence(%s, %s), %s, %s)", (table, column, max(value, 1), value > 0)
            )

    def finish(self) -> Side:
        for table in self._triggered:
            self._conn.execute(f'ALTER TABLE "{table}" ENABLE TRIGGER USER')
        return self.side

    def commit(self) -> None:
        self._conn.commit()
        # Fresh statistics for the planner: finds right after the copy must not scan.
        try:
            self._conn.autocommit = True
            self._conn.execute("ANALYZE")
        except psycopg.Error as exc:
            logger.warning("ANALYZE of the %s failed (%s): PostgreSQL's autovacuum will do it later", self.label, exc)

    def abort(self) -> None:
        if not self._conn.closed and not self._conn.broken:
            with contextlib.suppress(psycopg.Error):
                self._conn.rollback()

    def close(self) -> None:
        self._conn.close()
