"""The SQLite backend of the index: the file `dicomvault.db` in `IndexDirectory`.

WAL journal (readers never wait for the writer), `synchronous=FULL` (a commit that returned is on
disk), foreign keys on (deletes cascade). An exclusive lock file keeps a second server process off
the same index: it refuses to start rather than fight over locks.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
from pathlib import Path
from typing import IO

from dicomvault.enums import GlobalProperty
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.index.migrations import SchemaVersionError, create_schema
from dicomvault.index.schema import SCHEMA_VERSION, parse_version
from dicomvault.index.transactions import ReadTx, WriteTx

logger = logging.getLogger(__name__)

INDEX_FILENAME = "dicomvault.db"
ORTHANC_INDEX_FILENAME = "index"  # Orthanc 1.x's SQLite index, in the same folder
LOCK_SUFFIX = ".lock"
_BUSY_TIMEOUT_S = 30.0


def connect_index(path: Path, read_only: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with the index's pragmas; a file
    that is not a database, or that cannot be opened, is a `DicomVaultError` saying so."""
    uri = f"file:{path}{'?mode=ro' if read_only else ''}"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=_BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise DicomVaultError(ErrorCode.SQLITE_CANNOT_OPEN, f"cannot open the SQLite index {path}: {exc}") from exc
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA cache_size = -32000")
    except sqlite3.OperationalError as exc:
        conn.close()
        raise DicomVaultError(
            ErrorCode.SQLITE_CANNOT_OPEN,
            f"cannot use the SQLite index {path}: {exc} "
            f"(check the permissions of {path.parent} and the free disk space)",
        ) from exc
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise not_a_database(path, exc) from exc
    return conn


def orthanc_index_only(directory: Path, config_label: str) -> DicomVaultError | None:
    """The refusal for a folder that holds Orthanc's index and not ours: an older schema, to adopt
    with `dicomvault upgrade` before anything serves, checks or copies it (never an empty index
    created beside an archive). None when that is not the case."""
    orthanc = directory / ORTHANC_INDEX_FILENAME
    if orthanc.is_file() and not (directory / INDEX_FILENAME).exists():
        return DicomVaultError(
            ErrorCode.INCOMPATIBLE_DATABASE_VERSION,
            f"{directory} holds an Orthanc index ({orthanc}) and no dicomvault index: this is an older schema. "
            f"Adopt it with: dicomvault upgrade {config_label}",
        )
    return None


def lock_index(path: Path) -> IO[bytes]:
    """Take the exclusive lock of the index `path` (its `.lock` file), held until `unlock_index`:
    one process at a time serves or upgrades an index."""
    lock_path = path.with_name(path.name + LOCK_SUFFIX)
    try:
        handle = open(lock_path, "a+b")  # noqa: SIM115 - held for the backend's lifetime
    except OSError as exc:
        raise DicomVaultError(
            ErrorCode.CANNOT_WRITE_FILE, f"cannot create the lock file {lock_path}: {exc.strerror}"
        ) from exc
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise DicomVaultError(
            ErrorCode.DATABASE_UNAVAILABLE,
            f"the index {path} is in use by another dicomvault process (lock {lock_path}); "
            "stop that process or point IndexDirectory elsewhere",
        ) from exc
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n".encode())
    handle.flush()
    return handle


def unlock_index(handle: IO[bytes]) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    handle.close()


def not_a_database(path: Path, exc: sqlite3.DatabaseError) -> DicomVaultError:
    """SQLite's "file is not a database" / "disk image is malformed", said for an operator."""
    return DicomVaultError(
        ErrorCode.SQLITE_CANNOT_OPEN,
        f"{path} cannot be read as an SQLite database ({exc}): the file is corrupted or truncated. Restore it from "
        "a backup (the upgrade keeps one beside it, named dicomvault.db.backup-*), or move it away",
    )


class _Reader:
    def __init__(self, path: Path) -> None:
        self._conn = connect_index(path)
        self._tx = ReadTx(self._conn)

    def begin(self) -> ReadTx:
        self._conn.execute("BEGIN")
        return self._tx

    def end(self) -> None:
        self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()


class _Writer:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn = connect_index(path)
        self._tx = WriteTx(self._conn)

    def begin(self) -> WriteTx:
        self._conn.execute("BEGIN IMMEDIATE")
        return self._tx

    def savepoint(self) -> None:
        self._conn.execute("SAVEPOINT job")

    def release(self) -> None:
        self._conn.execute("RELEASE SAVEPOINT job")

    def rollback_to_savepoint(self) -> None:
        self._conn.execute("ROLLBACK TO SAVEPOINT job")

    def commit(self) -> None:
        self._conn.execute("COMMIT")

    def rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def is_serialization_failure(self, exc: BaseException) -> bool:
        return False  # a single writer never conflicts with itself

    def translate_error(self, exc: BaseException) -> BaseException:
        """A full disk under the index is Orthanc's FullStorage (HTTP 507, a C-STORE "out of
        resources"), said for the operator, not an internal error."""
        code = getattr(exc, "sqlite_errorcode", 0)  # absent when the error did not come from SQLite itself
        if isinstance(exc, sqlite3.OperationalError) and (code & 0xFF) == sqlite3.SQLITE_FULL:
            # The path is for the operator's log only: an HTTP or DICOM client never sees server paths.
            logger.error(
                "the disk of the SQLite index %s is full (%s): free space there or move IndexDirectory", self._path, exc
            )
            return DicomVaultError(ErrorCode.FULL_STORAGE, "the disk of the SQLite index is full")
        return exc

    def close(self) -> None:
        self._conn.close()


class SQLiteBackend:
    """Opens (or creates) the index file and checks its schema version."""

    def __init__(self, directory: Path, create: bool = True) -> None:
        self.path = directory / INDEX_FILENAME
        self.description = f"SQLite index {self.path}"
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DicomVaultError(
                ErrorCode.MAKE_DIRECTORY, f"cannot create the index folder {directory}: {exc}"
            ) from exc
        self._lock = lock_index(self.path)
        try:
            exists = self.path.exists()
            if not exists and not create:
                raise DicomVaultError(ErrorCode.INEXISTENT_FILE, f"no dicomvault index at {self.path}")
            conn = connect_index(self.path)
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    logger.warning(
                        "SQLite refused WAL mode on %s (got %s): readers will wait for writers",
                        self.path,
                        mode,
                    )
                self._prepare(conn, fresh=not exists)
            except sqlite3.OperationalError as exc:
                raise DicomVaultError(
                    ErrorCode.SQLITE_CANNOT_OPEN,
                    f"cannot use the SQLite index {self.path}: {exc} (check the permissions of {directory} "
                    "and the free disk space)",
                ) from exc
            except sqlite3.DatabaseError as exc:
                raise not_a_database(self.path, exc) from exc
            finally:
                conn.close()
        except BaseException:
            unlock_index(self._lock)
            raise

    def _prepare(self, conn: sqlite3.Connection, fresh: bool) -> None:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if fresh or not tables:
            logger.info("creating a new index (schema %d) at %s", SCHEMA_VERSION, self.path)
            create_schema(conn)
            return
        version = None
        if "GlobalProperties" in tables:
            version = ReadTx(conn).global_property(GlobalProperty.DICOMVAULT_SCHEMA_VERSION)
        found, upgrading_to = parse_version(version)
        if found is None and upgrading_to is None:
            raise DicomVaultError(
                ErrorCode.INCOMPATIBLE_DATABASE_VERSION,
                f"{self.path} is an SQLite file but not a dicomvault index: "
                "move it away or point IndexDirectory elsewhere",
            )
        if found != SCHEMA_VERSION:
            raise SchemaVersionError(str(self.path), found, upgrading_to)

    def open_reader(self) -> _Reader:
        return _Reader(self.path)

    def open_writer(self) -> _Writer:
        return _Writer(self.path)

    def close(self) -> None:
        unlock_index(self._lock)
