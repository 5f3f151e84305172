"""The index as `dicomvault check` opens it: claimed for the whole check, so that no server runs
on it meanwhile, read in one consistent snapshot, then (with `--repair`) written in short
transactions of its own.

Built from the pieces the other maintenance commands use (`index/sqlite.py` lock and connection,
`index/postgresql.py` `claim_database` and `schema_state`, `index/copy_tables.py` readers), not
from the server's `Index`: an offline tool connects once (no retry loop), needs no writer thread or
pool, and must refuse where a server would refuse, with the same words:

- SQLite: no `dicomvault.db` but Orthanc's `index` file: an older schema, adopt it first; the
  index lock held by a running server: refused; any schema version but this code's: refused,
  naming the command to run (as `serve`).
- PostgreSQL: unreachable, in use (a server's `"Lock": true` lock, or any dicomvault session),
  empty, foreign (Orthanc's own index) or at another schema version: refused. The writers'
  advisory lock is held for the whole check, so a server started meanwhile cannot write.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import psycopg

from dicomvault.config import Config
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.index.backends import postgresql_settings
from dicomvault.index.copy_tables import CopyRefused, PostgreSQLSide, Side, SQLiteSide, check_version
from dicomvault.index.dialect import POSTGRESQL, SQLITE, Dialect
from dicomvault.index.migrations import SchemaVersionError
from dicomvault.index.postgresql import WRITER_LOCK, PostgreSQLSettings, claim_database, schema_state, translate
from dicomvault.index.schema import SCHEMA_VERSION
from dicomvault.index.sqlite import (
    INDEX_FILENAME,
    connect_index,
    lock_index,
    not_a_database,
    orthanc_index_only,
    unlock_index,
)

logger = logging.getLogger(__name__)

# Our sessions are named apart from servers' ("dicomvault"), so that `claim_database` does not
# count them as a server using the database.
APPLICATION_NAME = "dicomvault check"


class CheckRefused(DicomVaultError):
    """The check did not start: the index is in use, at another schema version, absent or
    unreachable, or the storage area cannot be reached (CLI exit code 3)."""


class CheckUsageError(DicomVaultError):
    """The configuration cannot be used as given (CLI exit code 2)."""


class IndexUnderCheck(ABC):
    """An index claimed by the check. Reads go through `query` / `stream` inside the snapshot
    (`begin_snapshot` .. `end_snapshot`); `referenced` and `write` run after it, each in a
    transaction of its own."""

    def __init__(self, label: str, dialect: Dialect, side: Side) -> None:
        self.label = label
        self.dialect = dialect
        self.schema_version = SCHEMA_VERSION
        self.side = side

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self.side.query(sql, params)

    def stream(self, sql: str) -> Iterator[list[tuple[Any, ...]]]:
        """The rows of `sql` in batches, never all at once."""
        return self.side.stream(sql)

    @abstractmethod
    def begin_snapshot(self) -> None:
        """Start the one read transaction every check reads in."""

    @abstractmethod
    def end_snapshot(self) -> None:
        """End the snapshot (nothing was written in it)."""

    @abstractmethod
    def referenced(self, uuid: str) -> bool:
        """Whether an attachment row names `uuid` now (read afresh, not from the snapshot)."""

    @abstractmethod
    def write(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        """Run `statements` in one write transaction."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection and release the index (its lock file, or the session locks)."""


class _SQLiteIndex(IndexUnderCheck):
    def __init__(self, conn: sqlite3.Connection, lock: IO[bytes], label: str) -> None:
        super().__init__(label, SQLITE, SQLiteSide(conn, label))
        self._conn = conn
        self._lock = lock

    def begin_snapshot(self) -> None:
        self._conn.execute("BEGIN")

    def end_snapshot(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")

    def referenced(self, uuid: str) -> bool:
        return self._conn.execute("SELECT 1 FROM AttachedFiles WHERE uuid = ?", (uuid,)).fetchone() is not None

    def write(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                self._conn.execute(sql, params)
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        unlock_index(self._lock)


class _PostgreSQLIndex(IndexUnderCheck):
    def __init__(self, conn: psycopg.Connection[Any], label: str) -> None:
        super().__init__(label, POSTGRESQL, PostgreSQLSide(conn, label))
        self._conn = conn

    def begin_snapshot(self) -> None:
        self._conn.autocommit = False
        self._conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        self._conn.read_only = True

    def end_snapshot(self) -> None:
        if self._conn.broken:
            return  # the error that broke it is on its way up
        self._conn.rollback()  # read only: nothing to commit
        self._conn.read_only = False
        self._conn.autocommit = True

    def referenced(self, uuid: str) -> bool:
        row = self._conn.execute(translate("SELECT 1 FROM AttachedFiles WHERE uuid = ?"), (uuid,)).fetchone()
        return row is not None

    def write(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        # The writers' lock is already held by this session (taken in `open_index`) for the whole check.
        with self._conn.transaction():
            for sql, params in statements:
                self._conn.execute(translate(sql), params if params else None)

    def close(self) -> None:
        self._conn.close()  # releases the session locks


def open_index(config: Config, config_label: str) -> IndexUnderCheck:
    """Claim the index of `config` for a check. Raises `CheckRefused`, `CheckUsageError`, or
    `DicomVaultError` (an SQLite file that cannot be read)."""
    try:
        settings = postgresql_settings(config)
    except DicomVaultError as exc:
        raise CheckUsageError(exc.code, exc.details) from exc
    if settings is None:
        return _open_sqlite(config.index_directory, config_label)
    return _open_postgresql(settings, config_label)


def _open_sqlite(directory: Path, config_label: str) -> IndexUnderCheck:
    path = directory / INDEX_FILENAME
    label = f"SQLite index {path}"
    if not path.is_file():
        refusal = orthanc_index_only(directory, config_label)
        if refusal is not None:
            raise CheckRefused(refusal.code, refusal.details)
        raise CheckRefused(
            ErrorCode.INEXISTENT_FILE,
            f"no dicomvault index at {path}: nothing to check (check IndexDirectory in {config_label})",
        )
    try:
        lock = lock_index(path)
    except DicomVaultError as exc:
        if exc.code is ErrorCode.DATABASE_UNAVAILABLE:
            raise CheckRefused(exc.code, exc.details) from exc
        raise
    try:
        conn = connect_index(path)
        try:
            tables = {str(r[0]).lower() for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "globalproperties" not in tables:
                raise CheckRefused(
                    ErrorCode.INCOMPATIBLE_DATABASE_VERSION,
                    f"{path} is an SQLite file but not a dicomvault index: check IndexDirectory in {config_label}",
                )
            index = _SQLiteIndex(conn, lock, label)
            _check_version(index.side, config_label)
            return index
        except sqlite3.DatabaseError as exc:
            conn.close()
            if isinstance(exc, sqlite3.OperationalError):
                raise DicomVaultError(ErrorCode.SQLITE_CANNOT_OPEN, f"cannot read the {label}: {exc}") from exc
            raise not_a_database(path, exc) from exc
        except BaseException:
            conn.close()
            raise
    except BaseException:
        unlock_index(lock)
        raise


def _check_version(side: Side, config_label: str) -> None:
    try:
        check_version(side, config_label)
    except CopyRefused as exc:
        raise CheckRefused(exc.code, exc.details) from exc


def _open_postgresql(settings: PostgreSQLSettings, config_label: str) -> IndexUnderCheck:
    label = settings.label
    # One attempt, not the server's connection retries: an operator waits at the terminal.
    try:
        conn = psycopg.connect(settings.conninfo, autocommit=True, application_name=APPLICATION_NAME)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckRefused(
            ErrorCode.DATABASE_UNAVAILABLE,
            f"the {label} is unreachable ({reason}): check Host, Port, Database, Username and Password in the "
            f'"PostgreSQL" section of {config_label}, and that the server accepts connections',
        ) from exc
    try:
        try:
            claim_database(conn, label)
        except DicomVaultError as exc:
            raise CheckRefused(exc.code, exc.details) from exc
        writer = conn.execute("SELECT pg_try_advisory_lock(%s)", (WRITER_LOCK,)).fetchone()
        if not (writer and writer[0]):
            raise CheckRefused(
                ErrorCode.DATABASE_UNAVAILABLE,
                f"the {label} is being written to by another session: stop every server using this database first",
            )
        try:
            state = schema_state(conn, label)
        except DicomVaultError as exc:
            raise CheckRefused(exc.code, exc.details) from exc
        if state is None:
            raise CheckRefused(
                ErrorCode.INEXISTENT_FILE, f"no dicomvault index in the {label}: nothing to check ({config_label})"
            )
        found, upgrading_to = state
        if found != SCHEMA_VERSION:
            error = SchemaVersionError(label, found, upgrading_to)
            raise CheckRefused(error.code, error.describe(config_label))
        return _PostgreSQLIndex(conn, label)
    except BaseException:
        conn.close()
        raise
