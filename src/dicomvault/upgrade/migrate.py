"""What every upgrade does whatever the backend: the migrations, run in order on a
`MigrationConnection` (a plain one in one transaction with its version bump; a re-reading one
behind the "upgrading to N" marker, in resumable batches: `reread.py`), and the outcome reported.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from dicomvault.config import Config
from dicomvault.enums import GlobalProperty
from dicomvault.index.migrations import MIGRATIONS, run_ddl
from dicomvault.index.schema import upgrading_marker
from dicomvault.index.transactions import WriteTx
from dicomvault.storage.factory import area_settings
from dicomvault.upgrade.adoption import AdoptionReport
from dicomvault.upgrade.connection import MigrationConnection
from dicomvault.upgrade.reread import RereadReport, reread_pass
from dicomvault.upgrade.verify import VerificationReport

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpgradeOutcome:
    index: Path | str  # the SQLite file, or the PostgreSQL database's label
    found: int | None  # the schema version found (None: adopted from Orthanc, or resumed)
    resumed_to: int | None  # an interrupted upgrade to this version was resumed
    version: int  # the version read back after the upgrade
    backup: Path | None
    adoption: AdoptionReport | None = None
    reread: RereadReport | None = None
    verification: VerificationReport | None = None

    @property
    def upgraded(self) -> bool:
        return self.found != self.version

    @property
    def problems(self) -> bool:
        if self.reread is not None and self.reread.problems:
            return True
        return self.verification is not None and not self.verification.ok

    def render(self) -> list[str]:
        lines: list[str] = []
        if self.adoption is not None:
            lines.extend(self.adoption.render())
        if not self.upgraded:
            lines.append(f"{self.index}: schema version {self.version}, no upgrade needed")
            return lines
        origin = (
            f"schema {self.found}"
            if self.found is not None
            else f"an interrupted upgrade to schema {self.resumed_to}"
            if self.resumed_to is not None and self.adoption is None
            else "an Orthanc index"
        )
        lines.append(f"{self.index}: upgraded from {origin} to schema {self.version}")
        if self.backup is not None:
            lines.append(f"backup copy of the index before the upgrade: {self.backup}")
        if self.reread is not None:
            r = self.reread
            lines.append(
                f"re-read {r.instances - r.resumed_from} DICOM files in {r.elapsed_s:.1f} s "
                f"({r.rate:.0f} instances/s), {len(r.problems)} problems"
            )
            lines.extend(f"  {p.problem} (instance {p.public_id}, attachment {p.uuid})" for p in r.problems)
        if self.verification is not None:
            lines.extend(self.verification.render())
        return lines


def migrate(
    conn: MigrationConnection,
    config: Config,
    found: int | None,
    upgrading_to: int | None,
    progress: bool,
    workers: int | None,
    batch_size: int,
) -> RereadReport | None:
    """Run every migration from `found` (or finish the interrupted re-read to `upgrading_to`)
    up to SCHEMA_VERSION: a plain one in one transaction with its version bump, a re-reading one
    behind the "upgrading to N" marker."""
    tx = WriteTx(conn, conn.dialect)
    reread: RereadReport | None = None
    current = found
    if upgrading_to is not None:  # an interrupted re-read (or an adoption): finish it first
        start = int(tx.global_property(GlobalProperty.DICOMVAULT_REREAD_FROM) or upgrading_to)
        reread = _reread(conn, config, start, upgrading_to, progress, workers, batch_size)
        current = upgrading_to
    assert current is not None
    for migration in MIGRATIONS:
        if migration.target <= current:
            continue
        started = time.monotonic()
        logger.warning(
            "migrating %s from schema %d to %d: %s", conn.label, current, migration.target, migration.description
        )
        conn.begin()
        try:
            run_ddl(conn, migration.ddl_for(conn.dialect), conn.dialect)
            if migration.reread is None:
                tx.set_global_property(GlobalProperty.DICOMVAULT_SCHEMA_VERSION, str(migration.target))
            else:
                tx.set_global_property(GlobalProperty.DICOMVAULT_SCHEMA_VERSION, upgrading_marker(migration.target))
                tx.set_global_property(GlobalProperty.DICOMVAULT_UPGRADE_CURSOR, "0")
                tx.set_global_property(GlobalProperty.DICOMVAULT_REREAD_FROM, str(migration.target))
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        if migration.reread is not None:
            reread = _reread(conn, config, migration.target, migration.target, progress, workers, batch_size)
        logger.info("schema %d reached in %.1f s", migration.target, time.monotonic() - started)
        current = migration.target
    return reread


def _reread(
    conn: MigrationConnection,
    config: Config,
    start: int,
    target: int,
    progress: bool,
    workers: int | None,
    batch_size: int,
) -> RereadReport:
    """The re-read pass for migrations start..target, then the version bump that ends it."""
    migrations = [m for m in MIGRATIONS if start <= m.target <= target]
    report = reread_pass(
        conn,
        area_settings(config),
        migrations,
        str(config.default_encoding),
        workers=workers,
        progress=progress,
        batch_size=batch_size,
    )
    tx = WriteTx(conn, conn.dialect)
    conn.begin()
    try:
        tx.set_global_property(GlobalProperty.DICOMVAULT_SCHEMA_VERSION, str(target))
        tx.execute(
            "DELETE FROM GlobalProperties WHERE property IN (?, ?)",
            (int(GlobalProperty.DICOMVAULT_UPGRADE_CURSOR), int(GlobalProperty.DICOMVAULT_REREAD_FROM)),
        )
        tx.execute("DROP TABLE IF EXISTS UpgradeProblems")
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    return report
