"""`dicomvault upgrade CONFIG` (and `serve --upgrade`): bring an index to the schema this code
serves, on the operator's request, then exit. This module drives the SQLite index file; a
PostgreSQL index goes through `upgrade/postgresql.py`, the same steps in that database's words.

Order of work, each step safe to interrupt:

1. Take the index lock (no server may run meanwhile). An Orthanc `index` without our
   `dicomvault.db` is adopted first (`adoption.py`: a new index written beside it, atomically;
   Orthanc's file is only read).
2. Refuse a schema newer than ours; say "no upgrade needed" for ours.
3. Keep a consistent backup copy of the index beside it (`VACUUM INTO`), unless `--no-backup`.
4. Run the migrations in order: a plain one in one transaction with its version bump; a
   re-reading one behind the "upgrading to N" marker, in resumable batches (`reread.py`). An index
   found at the marker (an interrupted run) resumes there, without a new backup.
5. Read the version back from a fresh connection to confirm, and report.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from dicomvault.config import Config
from dicomvault.enums import GlobalProperty
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.index.backends import postgresql_settings
from dicomvault.index.migrations import SchemaVersionError
from dicomvault.index.schema import SCHEMA_VERSION, parse_version
from dicomvault.index.sqlite import (
    INDEX_FILENAME,
    ORTHANC_INDEX_FILENAME,
    connect_index,
    lock_index,
    not_a_database,
    unlock_index,
)
from dicomvault.index.transactions import ReadTx
from dicomvault.storage.accessor import CompressionPolicy, StorageAccessor
from dicomvault.storage.factory import FilesystemSettings, area_settings, build_area
from dicomvault.upgrade.adoption import adopt_orthanc
from dicomvault.upgrade.connection import SQLiteMigrationConnection
from dicomvault.upgrade.migrate import UpgradeOutcome, migrate
from dicomvault.upgrade.reread import BATCH
from dicomvault.upgrade.verify import VerificationReport, verify_storage

__all__ = ["UpgradeOutcome", "backup_index", "upgrade"]

logger = logging.getLogger(__name__)

BACKUP_INFIX = ".backup-schema"


def _version(conn: sqlite3.Connection, path: Path) -> tuple[int | None, int | None]:
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        value = None
        if "GlobalProperties" in tables:
            value = ReadTx(conn).global_property(GlobalProperty.DICOMVAULT_SCHEMA_VERSION)
    except sqlite3.OperationalError as exc:
        raise DicomVaultError(ErrorCode.SQLITE_CANNOT_OPEN, f"cannot read the index {path}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise not_a_database(path, exc) from exc
    found, upgrading_to = parse_version(value)
    if found is None and upgrading_to is None:
        raise DicomVaultError(
            ErrorCode.INCOMPATIBLE_DATABASE_VERSION,
            f"{path} is not a dicomvault index: nothing to upgrade (move it away or point IndexDirectory elsewhere)",
        )
    return found, upgrading_to


def backup_index(conn: sqlite3.Connection, path: Path, version: int) -> Path:
    """A consistent copy of the index beside it (SQLite's `VACUUM INTO`); a failed copy is removed
    and stops the upgrade before anything was changed."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}{BACKUP_INFIX}{version}-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}{BACKUP_INFIX}{version}-{stamp}-{n}")
    logger.warning("keeping a backup copy of the index: %s", target)
    try:
        conn.execute("VACUUM INTO ?", (str(target),))
    except sqlite3.Error as exc:
        with contextlib.suppress(OSError):
            target.unlink()
        raise DicomVaultError(
            ErrorCode.CANNOT_WRITE_FILE,
            f"cannot write the backup copy {target} ({exc}); nothing was changed. Free disk space or make the "
            "folder writable, or run the upgrade with --no-backup after copying the index yourself",
        ) from exc
    return target


def upgrade(
    config: Config,
    config_label: str = "CONFIG",
    backup: bool = True,
    progress: bool = True,
    workers: int | None = None,
    batch_size: int = BATCH,
) -> UpgradeOutcome:
    """Upgrade (or adopt) the index of `config`; raise `SchemaVersionError` for a newer schema and
    `DicomVaultError` for anything that stops the upgrade (the index then stays as it was, or at a
    resumable point)."""
    settings = postgresql_settings(config)
    if settings is not None:
        from dicomvault.upgrade.postgresql import upgrade_postgresql

        return upgrade_postgresql(config, settings, config_label, backup, progress, workers, batch_size)
    directory = config.index_directory
    if not directory.is_dir():
        raise DicomVaultError(
            ErrorCode.INEXISTENT_FILE,
            f"the IndexDirectory {directory} does not exist: check {config_label}",
        )
    storage = config.storage_directory
    if config.aws_s3_storage is None and not storage.is_dir():
        raise DicomVaultError(
            ErrorCode.INEXISTENT_FILE,
            f"the StorageDirectory {storage} does not exist: check {config_label}",
        )
    path = directory / INDEX_FILENAME
    lock = lock_index(path)
    try:
        return _upgrade_locked(config, config_label, path, backup, progress, workers, batch_size)
    finally:
        unlock_index(lock)


def _upgrade_locked(
    config: Config, config_label: str, path: Path, backup: bool, progress: bool, workers: int | None, batch_size: int
) -> UpgradeOutcome:
    adoption = None
    orthanc = path.with_name(ORTHANC_INDEX_FILENAME)
    if not path.exists():
        if not orthanc.is_file():
            raise DicomVaultError(
                ErrorCode.INEXISTENT_FILE,
                f"nothing to upgrade: neither a dicomvault index ({path}) nor an Orthanc index ({orthanc}); "
                f"check IndexDirectory in {config_label}",
            )
        logger.warning("adopting the Orthanc index %s (read only; the new index is %s)", orthanc, path)
        adoption = adopt_orthanc(orthanc, path)
    conn = connect_index(path)
    try:
        found, upgrading_to = _version(conn, path)
        if max(found or 0, upgrading_to or 0) > SCHEMA_VERSION:
            raise SchemaVersionError(str(path), found, upgrading_to)
        if found == SCHEMA_VERSION:
            logger.warning("the index %s has schema version %d: no upgrade needed", path, found)
            return UpgradeOutcome(path, found, None, found, None)
        saved = backup_index(conn, path, found) if backup and found is not None else None
        if not backup and found is not None:
            logger.warning("upgrading %s without a backup copy (--no-backup)", path)
        migration_conn = SQLiteMigrationConnection(conn, str(path))
        reread = migrate(migration_conn, config, found, upgrading_to, progress, workers, batch_size)
    except sqlite3.OperationalError as exc:
        raise DicomVaultError(
            ErrorCode.SQLITE_CANNOT_OPEN,
            f"the upgrade of {path} stopped: {exc}. The index is at a resumable point: fix the cause (disk space, "
            f"permissions) and run `dicomvault upgrade {config_label}` again",
        ) from exc
    except sqlite3.DatabaseError as exc:
        raise not_a_database(path, exc) from exc
    finally:
        conn.close()
    confirm = connect_index(path)
    try:
        version, _ = _version(confirm, path)
    finally:
        confirm.close()
    if version != SCHEMA_VERSION:  # pragma: no cover - would be a bug of _migrate
        raise DicomVaultError(ErrorCode.INTERNAL_ERROR, f"the upgrade of {path} ended at schema {version}")
    verification = None
    if adoption is not None:
        verification = _verify(config, path)
    outcome = UpgradeOutcome(path, found, upgrading_to, version, saved, adoption, reread, verification)
    logger.warning(
        "the index %s is now at schema version %d%s",
        path,
        version,
        " (with problems: see the report)" if outcome.problems else "",
    )
    return outcome


def _verify(config: Config, path: Path) -> VerificationReport:
    area = area_settings(config)
    if isinstance(area, FilesystemSettings):
        area = FilesystemSettings(area.root, fsync=False)  # the check only reads
    accessor = StorageAccessor(build_area(area), CompressionPolicy())
    return verify_storage(path, accessor)
