"""`dicomvault upgrade CONFIG` for a PostgreSQL index: the same steps as for SQLite
(`upgrade/driver.py`), in PostgreSQL's words.

1. Keep every server off the database (`claim_database`: the exclusive advisory lock, no other
   dicomvault session connected), otherwise a refusal (exit 3) naming what to stop.
2. Refuse a newer schema; say "no upgrade needed" for ours.
3. A backup before changing anything: `pg_dump --format=custom` of the database into
   IndexDirectory (`dicomvault-<database>.backup-schemaN-<date>.dump`, restorable with
   `pg_restore`), unless `--no-backup`. No pg_dump, or a failed one: refusal, nothing changed.
4. The migrations (`migrate.py`): each plain one in one transaction with its bump; a re-reading
   one behind the "upgrading to N" marker, in resumable batches. Each transaction takes the
   writers' advisory lock.
5. Read the version back on a new connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import psycopg.conninfo

from dicomvault.config import Config
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.index.migrations import SchemaVersionError
from dicomvault.index.postgresql import (
    PostgreSQLSettings,
    claim_database,
    connect,
    connect_with_retries,
    schema_state,
)
from dicomvault.index.schema import SCHEMA_VERSION
from dicomvault.upgrade.connection import PostgreSQLMigrationConnection
from dicomvault.upgrade.migrate import UpgradeOutcome, migrate

logger = logging.getLogger(__name__)

BACKUP_INFIX = ".backup-schema"


def upgrade_postgresql(
    config: Config,
    settings: PostgreSQLSettings,
    config_label: str,
    backup: bool,
    progress: bool,
    workers: int | None,
    batch_size: int,
) -> UpgradeOutcome:
    label = settings.label
    conn = connect_with_retries(settings)
    try:
        claim_database(conn, label)
        state = schema_state(conn, label)
        if state is None:
            raise DicomVaultError(
                ErrorCode.INEXISTENT_FILE,
                f"nothing to upgrade: the {label} is empty (a server creates the index there at its first start); "
                f"check the PostgreSQL section of {config_label}",
            )
        found, upgrading_to = state
        if max(found or 0, upgrading_to or 0) > SCHEMA_VERSION:
            raise SchemaVersionError(label, found, upgrading_to)
        if found == SCHEMA_VERSION:
            logger.warning("the %s has schema version %d: no upgrade needed", label, found)
            return UpgradeOutcome(label, found, None, found, None)
        saved = None
        if backup and found is not None:
            saved = backup_database(settings, config.index_directory, found)
        elif found is not None:
            logger.warning("upgrading the %s without a backup (--no-backup)", label)
        try:
            reread = migrate(
                PostgreSQLMigrationConnection(conn, label), config, found, upgrading_to, progress, workers, batch_size
            )
        except psycopg.OperationalError as exc:
            raise DicomVaultError(
                ErrorCode.DATABASE_UNAVAILABLE,
                f"the upgrade of the {label} stopped: {exc}. The index is at a resumable point: run "
                f"`dicomvault upgrade {config_label}` again once the database is reachable",
            ) from exc
    finally:
        conn.close()
    confirm = connect(settings)
    try:
        state = schema_state(confirm, label)
    finally:
        confirm.close()
    version = state[0] if state is not None else None
    if version != SCHEMA_VERSION:  # pragma: no cover - would be a bug of migrate()
        raise DicomVaultError(ErrorCode.INTERNAL_ERROR, f"the upgrade of the {label} ended at schema {version}")
    outcome = UpgradeOutcome(label, found, upgrading_to, version, saved, None, reread, None)
    logger.warning(
        "the %s is now at schema version %d%s",
        label,
        version,
        " (with problems: see the report)" if outcome.problems else "",
    )
    return outcome


def _pg_dump() -> str | None:
    found = shutil.which("pg_dump")
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_dump"), key=lambda p: p.parent.parent.name)
    return str(candidates[-1]) if candidates else None


def backup_database(settings: PostgreSQLSettings, directory: Path, version: int) -> Path:
    """`pg_dump --format=custom` of the whole database into `directory`; the password goes through
    the environment, never the command line. A failure removes the partial file and stops the upgrade
    before anything was changed."""
    params = psycopg.conninfo.conninfo_to_dict(settings.conninfo)
    password = params.pop("password", None)
    dbname = str(params.get("dbname") or "postgres")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    target = directory / f"dicomvault-{dbname}{BACKUP_INFIX}{version}-{stamp}.dump"
    tool = _pg_dump()
    advice = (
        "nothing was changed. Install PostgreSQL's client tools (Debian: postgresql-client) or back the database "
        "up yourself and run the upgrade with --no-backup"
    )
    if tool is None:
        raise DicomVaultError(ErrorCode.CANNOT_WRITE_FILE, f"cannot back up the {settings.label}: no pg_dump; {advice}")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DicomVaultError(
            ErrorCode.CANNOT_WRITE_FILE, f"cannot create {directory}: {exc.strerror}; {advice}"
        ) from exc
    env = {**os.environ, "PGAPPNAME": "dicomvault-backup"}
    if password is not None:
        env["PGPASSWORD"] = str(password)
    logger.warning("keeping a backup of the %s: %s", settings.label, target)
    done = subprocess.run(
        [tool, "--format=custom", f"--file={target}", "--dbname", psycopg.conninfo.make_conninfo("", **params)],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        with contextlib.suppress(OSError):
            target.unlink()
        reason = (done.stderr.strip().splitlines() or ["pg_dump failed"])[-1]
        raise DicomVaultError(
            ErrorCode.CANNOT_WRITE_FILE, f"cannot back up the {settings.label} into {target} ({reason}); {advice}"
        )
    return target
