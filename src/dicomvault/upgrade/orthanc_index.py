"""Reading an Orthanc 1.x SQLite index (its file `index`) without ever writing beside it.

Orthanc opens its index in WAL mode with `locking_mode=EXCLUSIVE`: it keeps its locks on the
file for as long as it runs, and a clean stop checkpoints the log and removes `index-wal`. A
plain `mode=ro` SQLite connection to a WAL database would still create `index-wal` and
`index-shm` beside it (and leave them there), so this module reads the file as *immutable* (no
lock, no side file) after checking two things itself:

- the lock: Orthanc holds SQLite's shared lock (a POSIX read lock on SQLite's lock byte range)
  from its start, and a write lock on that range from its first write on. A read lock taken
  here fails in the second case; a test for a conflicting write lock (`F_GETLK`) catches the
  first. Held for the whole read, our read lock keeps an Orthanc that would start meanwhile
  from writing to the index;
- a hot journal: an `index-wal` (or `index-journal`) with content means Orthanc did not stop
  cleanly and committed transactions live only there. Immutable reading would miss them, so the
  index and its journal are copied into a private scratch folder and the copy is read instead.

It also knows the schema versions Orthanc used (`GlobalProperties` 1) and which ones can be
adopted.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import sqlite3
import struct
from collections.abc import Iterator
from pathlib import Path

from dicomvault.errors import DicomVaultError, ErrorCode

logger = logging.getLogger(__name__)

# Orthanc's GlobalProperty numbers read here.
ORTHANC_SCHEMA_VERSION = 1
ORTHANC_PATCH_LEVEL = 4

# Schema 6 is Orthanc's since 0.9.5 (2016) up to 1.12.x (later additions are patch-level: extra
# tables and columns). Schema 5 (Orthanc 0.8.5 - 0.9.4) kept fewer main DICOM tags and the
# identifiers only in DicomIdentifiers: Orthanc's own 5 -> 6 upgrade rebuilds the main DICOM
# tags from the files, which is Orthanc's job (`Orthanc --upgrade`), so it is refused with that
# instruction rather than adopted with incomplete tags.
ADOPTABLE_SCHEMAS = frozenset({6})

# The tables of every Orthanc index of schema 5 and later.
ORTHANC_TABLES = frozenset(
    {
        "GlobalProperties",
        "Resources",
        "MainDicomTags",
        "DicomIdentifiers",
        "Metadata",
        "AttachedFiles",
        "Changes",
        "ExportedResources",
        "PatientRecyclingOrder",
    }
)

_SQLITE_HEADER = b"SQLite format 3\x00"
# SQLite's lock bytes (os_unix.c): the pending byte, the reserved byte, then the shared range.
_PENDING_BYTE = 0x40000000
_SHARED_FIRST = _PENDING_BYTE + 2
_SHARED_SIZE = 510
_LOCK_BYTES = 512  # from the pending byte to the end of the shared range
# Linux's `struct flock` on 64-bit platforms: l_type, l_whence, l_start, l_len, l_pid.
_FLOCK = struct.Struct("hhqqi")
_JOURNAL_SUFFIXES = ("-wal", "-journal")


def stop_orthanc_message(path: Path, pid: int | None = None) -> str:
    who = f"process {pid}" if pid else "another process"
    return (
        f"the Orthanc index {path} is in use by {who} (an Orthanc still running on it?): "
        "stop Orthanc first, then run the upgrade again"
    )


def _lock_holder(fd: int) -> int | None:
    """The process id of another process holding any SQLite lock on the file, or None."""
    probe = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, _PENDING_BYTE, _LOCK_BYTES, 0)
    kind, _, _, _, pid = _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_GETLK, probe))
    return None if kind == fcntl.F_UNLCK else int(pid)


@contextlib.contextmanager
def read_lock(path: Path) -> Iterator[None]:
    """Hold a POSIX read lock on SQLite's shared-lock range of `path` (see the module docstring);
    `DATABASE_UNAVAILABLE` if an exclusive holder (a running Orthanc) has it.

    POSIX locks belong to the process: closing any descriptor of the file (an SQLite connection
    to it closing) releases this one too, so hold it around the reads, not beyond them."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError as exc:
        raise DicomVaultError(ErrorCode.INEXISTENT_FILE, f"no Orthanc index at {path}") from exc
    except OSError as exc:
        raise DicomVaultError(
            ErrorCode.SQLITE_CANNOT_OPEN, f"cannot open the Orthanc index {path}: {exc.strerror}"
        ) from exc
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, _SHARED_SIZE, _SHARED_FIRST)
            holder = _lock_holder(fd)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise DicomVaultError(ErrorCode.DATABASE_UNAVAILABLE, stop_orthanc_message(path)) from exc
            # A file system without POSIX locks (some network mounts): nothing to check with.
            logger.warning("cannot check whether %s is in use (%s): make sure Orthanc is stopped", path, exc)
            holder = None
        if holder is not None:
            raise DicomVaultError(ErrorCode.DATABASE_UNAVAILABLE, stop_orthanc_message(path, holder))
        yield
    finally:
        os.close(fd)


def _check_header(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            header = f.read(100)
    except FileNotFoundError as exc:
        raise DicomVaultError(ErrorCode.INEXISTENT_FILE, f"no Orthanc index at {path}") from exc
    except OSError as exc:
        raise DicomVaultError(ErrorCode.SQLITE_CANNOT_OPEN, f"cannot read {path}: {exc.strerror}") from exc
    if not header.startswith(_SQLITE_HEADER):
        raise DicomVaultError(
            ErrorCode.INCOMPATIBLE_DATABASE_VERSION,
            f"{path} is not an SQLite database, so not an Orthanc index (Orthanc's default SQLite index is the "
            "file `index` in its IndexDirectory); check IndexDirectory",
        )
    if len(header) < 100:
        raise DicomVaultError(
            ErrorCode.CORRUPTED_FILE, f"the Orthanc index {path} is truncated ({len(header)} bytes): restore it"
        )


def hot_journals(path: Path) -> list[Path]:
    """The journal files beside `path` that hold transactions not yet in the main file."""
    found = []
    for suffix in _JOURNAL_SUFFIXES:
        journal = path.with_name(path.name + suffix)
        with contextlib.suppress(OSError):
            if journal.stat().st_size > 0:
                found.append(journal)
    return found


def connect_immutable(path: Path) -> sqlite3.Connection:
    """A read-only connection that neither locks nor creates any file beside `path`."""
    uri = path.resolve().as_uri() + "?mode=ro&immutable=1"
    try:
        return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise DicomVaultError(ErrorCode.SQLITE_CANNOT_OPEN, f"cannot open the Orthanc index {path}: {exc}") from exc


@contextlib.contextmanager
def open_orthanc_index(path: Path, scratch: Path) -> Iterator[sqlite3.Connection]:
    """A connection reading Orthanc's index consistently, Orthanc's files untouched: immutable
    on the file itself, or on a private copy in `scratch` (created here, removed at the end)
    when a hot journal must be replayed. Refuses while Orthanc holds the index."""
    _check_header(path)
    with read_lock(path):
        journals = hot_journals(path)
        if not journals:
            conn = connect_immutable(path)
            try:
                yield conn
            finally:
                conn.close()
            return
        logger.warning(
            "the Orthanc index %s has transactions only in %s (Orthanc did not stop cleanly): reading a private "
            "copy in %s; the original files stay untouched",
            path,
            ", ".join(j.name for j in journals),
            scratch,
        )
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            scratch.mkdir(parents=True)
            copy = scratch / path.name
            shutil.copyfile(path, copy)
            for journal in journals:
                shutil.copyfile(journal, scratch / journal.name)
        except OSError as exc:
            shutil.rmtree(scratch, ignore_errors=True)
            raise DicomVaultError(
                ErrorCode.CANNOT_WRITE_FILE, f"cannot copy the Orthanc index into {scratch}: {exc}"
            ) from exc
        try:
            # A read-write connection on the copy, so that SQLite replays the journal into it.
            conn = sqlite3.connect(str(copy), isolation_level=None, check_same_thread=False)
            try:
                yield conn
            finally:
                conn.close()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def read_schema(conn: sqlite3.Connection, path: Path) -> tuple[int, int]:
    """(schema version, patch level) of an open Orthanc index; `INCOMPATIBLE_DATABASE_VERSION` if
    it is not one."""
    tables = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    missing = ORTHANC_TABLES - tables
    if missing:
        if (
            "GlobalProperties" in tables
            and conn.execute("SELECT 1 FROM GlobalProperties WHERE property = 1000").fetchone()
        ):
            what = "a dicomvault index"
        else:
            what = "an SQLite database"
        raise DicomVaultError(
            ErrorCode.INCOMPATIBLE_DATABASE_VERSION,
            f"{path} is {what}, not an Orthanc index (no table {', '.join(sorted(missing))})",
        )
    props = dict(
        conn.execute(
            "SELECT property, value FROM GlobalProperties WHERE property IN (?, ?)",
            (ORTHANC_SCHEMA_VERSION, ORTHANC_PATCH_LEVEL),
        ).fetchall()
    )
    raw_version = props.get(ORTHANC_SCHEMA_VERSION)
    try:
        version = int(str(raw_version))
    except ValueError:
        raise DicomVaultError(
            ErrorCode.INCOMPATIBLE_DATABASE_VERSION,
            f"the Orthanc index {path} records no usable schema version ({raw_version!r})",
        ) from None
    try:
        patch = int(str(props.get(ORTHANC_PATCH_LEVEL, "0")))
    except ValueError:
        patch = 0
    return version, patch


def check_adoptable(version: int, path: Path) -> None:
    if version in ADOPTABLE_SCHEMAS:
        return
    if version == 5 or version < 5:
        advice = (
            "upgrade it with Orthanc 1.x first (stop Orthanc, run `Orthanc CONFIG --upgrade` once, which re-reads "
            "the files to complete the main DICOM tags, stop it), then run `dicomvault upgrade CONFIG` again"
        )
    else:
        advice = "it was written by an Orthanc newer than those dicomvault knows (schema 6, Orthanc 0.9.5 - 1.12)"
    raise DicomVaultError(
        ErrorCode.INCOMPATIBLE_DATABASE_VERSION,
        f"the Orthanc index {path} has database schema version {version}; dicomvault adopts schema "
        f"{', '.join(str(v) for v in sorted(ADOPTABLE_SCHEMAS))}: {advice}",
    )


def orthanc_schema(path: Path) -> tuple[int, int]:
    """(schema version, patch level) of the Orthanc index `path` (GlobalProperties 1 and 4; a
    missing patch level is 0). Reads without locking (fine for the schema) and writes nothing."""
    _check_header(path)
    conn = connect_immutable(path)
    try:
        return read_schema(conn, path)
    except sqlite3.DatabaseError as exc:
        raise DicomVaultError(
            ErrorCode.CORRUPTED_FILE, f"the Orthanc index {path} cannot be read ({exc}): it is corrupted or truncated"
        ) from exc
    finally:
        conn.close()


def is_orthanc_index(path: Path) -> bool:
    """Whether `path` is an Orthanc SQLite index, of any schema version."""
    if not path.is_file():
        return False
    try:
        orthanc_schema(path)
    except DicomVaultError:
        return False
    return True
