"""Adopting an Orthanc 1.x installation: a dicomvault index built from Orthanc's SQLite index, in
place, without copying, moving or writing any stored file.

Orthanc's storage layout (`root/uu/id/uuid`), public ids, internal ids, enumerations of metadata,
content and compression types are ours too, so the adoption is a copy of rows: resources (same
internal ids, so every change keeps its resource), main DICOM tags, metadata, attachments of every
content type (DICOM, Orthanc's auxiliary "DICOM as JSON" and "DICOM until pixel data" ones, which
stay attachments of their instance, and user ones), the change log (same `seq`), exported
resources, the recycling order and protection, labels (Orthanc >= 1.12), and the global
properties that carry over (anonymization sequence, modalities, peers). `DicomIdentifiers` is
recomputed with our normalisation; `InstanceTags` is left to the re-read pass of the upgrade
driver, which this module sets up (the version property holds the "upgrading" marker).

Safety: Orthanc's index is only read (`orthanc_index.py`); the new index is built whole in
`dicomvault.db.adopting`, fsynced, then renamed onto `dicomvault.db`, so a crash leaves either no
dicomvault index or a complete one, and Orthanc can be used again until dicomvault first removes
one of its files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from dicomvault.enums import GlobalProperty, ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.index.migrations import create_schema
from dicomvault.index.schema import SCHEMA_VERSION, upgrading_marker
from dicomvault.index.transactions import WriteTx
from dicomvault.upgrade.orthanc_copy import RowCopier
from dicomvault.upgrade.orthanc_index import (
    check_adoptable,
    is_orthanc_index,
    open_orthanc_index,
    orthanc_schema,
    read_schema,
)

__all__ = ["AdoptionReport", "adopt_orthanc", "is_orthanc_index", "orthanc_schema"]

logger = logging.getLogger(__name__)

ADOPTING_SUFFIX = ".adopting"
SNAPSHOT_SUFFIX = ".orthanc-snapshot"


@dataclass(frozen=True)
class AdoptionReport:
    """What `adopt_orthanc` found and copied."""

    orthanc_index: str
    target: str
    orthanc_schema: int
    orthanc_patch_level: int
    patients: int
    studies: int
    series: int
    instances: int
    dicom_attachments: int
    dicom_as_json_attachments: int  # content type 2 (Orthanc < 1.9.1)
    dicom_until_pixel_data_attachments: int  # content type 3 (Orthanc >= 1.9.1, compression on)
    user_attachments: int  # content types >= 1024
    other_attachments: int  # any other content type
    metadata: int
    protected_patients: int
    labels: int
    changes: int
    changes_left_out: int  # Orthanc change types without a counterpart here
    exported_resources: int
    compressed_size: int
    uncompressed_size: int
    warnings: tuple[str, ...]
    elapsed_s: float

    @property
    def total_attachments(self) -> int:
        return (
            self.dicom_attachments
            + self.dicom_as_json_attachments
            + self.dicom_until_pixel_data_attachments
            + self.user_attachments
            + self.other_attachments
        )

    def render(self) -> list[str]:
        lines = [
            f"adopted the Orthanc index {self.orthanc_index} (Orthanc database schema {self.orthanc_schema}, "
            f"patch level {self.orthanc_patch_level}) into {self.target} in {self.elapsed_s:.1f} s, "
            "without copying any stored file",
            f"  {self.patients} patients, {self.studies} studies, {self.series} series, {self.instances} instances",
            f"  attachments: {self.dicom_attachments} DICOM, {self.user_attachments} user, "
            f"{self.dicom_until_pixel_data_attachments} Orthanc 'DICOM until pixel data', "
            f"{self.dicom_as_json_attachments} Orthanc 'DICOM as JSON'"
            + (f", {self.other_attachments} of other types" if self.other_attachments else "")
            + f" ({self.compressed_size} bytes on disk, {self.uncompressed_size} uncompressed)",
            f"  {self.metadata} metadata values, {self.protected_patients} protected patients, {self.labels} labels, "
            f"{self.exported_resources} exported resources",
            f"  {self.changes} changes"
            + (
                f" ({self.changes_left_out} Orthanc changes without a counterpart left out)"
                if self.changes_left_out
                else ""
            ),
        ]
        lines.extend(f"  warning: {w}" for w in self.warnings)
        lines.append(
            "  Orthanc's index was only read: until dicomvault first deletes or overwrites a stored file, Orthanc can "
            "still be used on this folder instead"
        )
        return lines


def adopt_orthanc(orthanc_index: Path, target: Path) -> AdoptionReport:
    """Build the dicomvault index `target` from the Orthanc index `orthanc_index` (see the module
    docstring). `target` must not exist; on any failure it still does not."""
    started = time.monotonic()
    if target.exists():
        raise DicomVaultError(
            ErrorCode.BAD_SEQUENCE_OF_CALLS,
            f"{target} already exists: an Orthanc index is only adopted where there is no dicomvault index",
        )
    building = target.with_name(target.name + ADOPTING_SUFFIX)
    scratch = target.with_name(target.name + SNAPSHOT_SUFFIX)
    _remove_stale(target, building)
    logger.info("adopting the Orthanc index %s: building %s", orthanc_index, building)
    try:
        with open_orthanc_index(orthanc_index, scratch) as source:
            try:
                version, patch = read_schema(source, orthanc_index)
                check_adoptable(version, orthanc_index)
                _quick_check(source, orthanc_index)
                report = _build(source, building, orthanc_index, target, version, patch, started)
            except sqlite3.DatabaseError as exc:
                raise _corrupted(orthanc_index, exc) from exc
        _make_durable(building)
        os.replace(building, target)
        _fsync_directory(target.parent)
    except BaseException:
        _remove_quietly(building)
        raise
    logger.info(
        "adopted %d instances of the Orthanc index %s into %s in %.1f s",
        report.instances,
        orthanc_index,
        target,
        report.elapsed_s,
    )
    return report


def _remove_stale(target: Path, building: Path) -> None:
    if building.exists():
        logger.warning("removing %s, left by an adoption that did not finish", building)
    _remove_quietly(building)
    # Journals of a dicomvault.db that no longer exists would be replayed into the new one.
    for suffix in ("-wal", "-shm", "-journal"):
        stale = target.with_name(target.name + suffix)
        if stale.exists():
            logger.warning("removing %s, left by a dicomvault index that no longer exists", stale)
            stale.unlink()


def _remove_quietly(path: Path) -> None:
    for suffix in ("", "-journal", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + suffix).unlink()


def _make_durable(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise DicomVaultError(ErrorCode.CANNOT_WRITE_FILE, f"cannot flush {path} to disk: {exc.strerror}") from exc


def _fsync_directory(folder: Path) -> None:
    # The rename is durable once the folder's entry is: a crash after this keeps dicomvault.db.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _corrupted(path: Path, exc: sqlite3.DatabaseError) -> DicomVaultError:
    return DicomVaultError(
        ErrorCode.CORRUPTED_FILE,
        f"the Orthanc index {path} cannot be read ({exc}): it is corrupted or truncated. Restore it from a backup; "
        "nothing was written",
    )


def _quick_check(conn: sqlite3.Connection, path: Path) -> None:
    # SQLite's structural check (pages, b-trees), not the slower index-content one: it reads every
    # page once, so a truncated or damaged file is refused before anything is built.
    rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check(5)")]
    if rows != ["ok"]:
        raise DicomVaultError(
            ErrorCode.CORRUPTED_FILE,
            f"the Orthanc index {path} is damaged ({'; '.join(rows)}): restore it from a backup; nothing was written",
        )


def _build(
    source: sqlite3.Connection,
    building: Path,
    orthanc_index: Path,
    target: Path,
    version: int,
    patch: int,
    started: float,
) -> AdoptionReport:
    try:
        dest = sqlite3.connect(str(building), isolation_level=None)
    except sqlite3.Error as exc:
        raise DicomVaultError(ErrorCode.CANNOT_WRITE_FILE, f"cannot create {building}: {exc}") from exc
    try:
        # The file is thrown away if anything fails before the rename: no journal on disk and no
        # sync per commit are needed; durability comes from the fsync before the rename.
        dest.execute("PRAGMA journal_mode = MEMORY")
        dest.execute("PRAGMA synchronous = OFF")
        # Orthanc creates an instance before its parents (parents have higher ids): the foreign
        # keys are checked once everything is in, and reported instead of refused.
        dest.execute("PRAGMA foreign_keys = OFF")
        dest.execute("PRAGMA cache_size = -65536")
        try:
            create_schema(dest, SCHEMA_VERSION)
            dest.execute("BEGIN IMMEDIATE")
            copier = RowCopier(source, WriteTx(dest), dest)
            copier.copy_all()
            tx = WriteTx(dest)
            tx.set_global_property(GlobalProperty.DICOMVAULT_SCHEMA_VERSION, upgrading_marker(SCHEMA_VERSION))
            tx.set_global_property(GlobalProperty.DICOMVAULT_UPGRADE_CURSOR, "0")
            tx.set_global_property(GlobalProperty.DICOMVAULT_REREAD_FROM, "2")
            tx.set_global_property(
                GlobalProperty.DICOMVAULT_ADOPTED_FROM_ORTHANC,
                json.dumps(
                    {
                        "Index": str(orthanc_index),
                        "Date": datetime.now(UTC).isoformat(timespec="seconds"),
                        "OrthancSchema": version,
                        "OrthancPatchLevel": patch,
                    }
                ),
            )
            dest.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            raise DicomVaultError(
                ErrorCode.CORRUPTED_FILE,
                f"the Orthanc index {orthanc_index} holds inconsistent rows ({exc}): it cannot be adopted as it is",
            ) from exc
        except sqlite3.Error as exc:
            # Orthanc's file passed SQLite's check above: a failure now is a failure to write ours.
            code = ErrorCode.FULL_STORAGE if "full" in str(exc) else ErrorCode.CANNOT_WRITE_FILE
            raise DicomVaultError(
                code,
                f"cannot write the new index {building} ({exc}): free disk space or fix the folder's permissions, "
                "then run the upgrade again; nothing was adopted and Orthanc's index is unchanged",
            ) from exc
        copier.check_foreign_keys()
        totals = dest.execute("SELECT compressedSize, uncompressedSize FROM StorageTotals WHERE id = 0").fetchone()
        copier.check_totals(int(totals[0]), int(totals[1]))
    finally:
        dest.close()
    c = copier.counts
    return AdoptionReport(
        orthanc_index=str(orthanc_index),
        target=str(target),
        orthanc_schema=version,
        orthanc_patch_level=patch,
        patients=c[f"level{int(ResourceType.PATIENT)}"],
        studies=c[f"level{int(ResourceType.STUDY)}"],
        series=c[f"level{int(ResourceType.SERIES)}"],
        instances=c[f"level{int(ResourceType.INSTANCE)}"],
        dicom_attachments=c["dicom"],
        dicom_as_json_attachments=c["dicom_as_json"],
        dicom_until_pixel_data_attachments=c["until_pixel_data"],
        user_attachments=c["user"],
        other_attachments=c["other"],
        metadata=c["metadata"],
        protected_patients=c["protected"],
        labels=c["labels"],
        changes=c["changes"],
        changes_left_out=c["changes_left_out"],
        exported_resources=c["exports"],
        compressed_size=int(totals[0]),
        uncompressed_size=int(totals[1]),
        warnings=copier.warnings.summary(),
        elapsed_s=time.monotonic() - started,
    )
