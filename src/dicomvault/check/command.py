"""`dicomvault check CONFIG [--repair]`: the offline integrity check of an installation, run as
one function the command line calls (`run_check`).

The index is claimed first (no server may run on it meanwhile: `check/database.py`), then the
storage area is opened as a server opens it. Everything the index says is read in one snapshot:
the tree and counters (`check/hierarchy.py`), then every attachment row against its file, which
also gathers the set of uuids the rows name (`check/files.py`). The snapshot ends before the walk
of the storage area for orphans. `--repair` then removes the orphans (each re-checked against the
index right before) and recomputes the counters; it never deletes a row, nor a file a row names.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import psycopg

from dicomvault.check.database import CheckRefused, CheckUsageError, IndexUnderCheck, open_index
from dicomvault.check.files import check_attachments, find_orphans, prune_empty_folders, remove_orphans
from dicomvault.check.findings import CheckReport, Problem
from dicomvault.check.hierarchy import HierarchyOutcome, check_hierarchy
from dicomvault.config import Config
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.storage.area import StorageArea
from dicomvault.storage.factory import FilesystemSettings, area_settings, open_storage_area

logger = logging.getLogger(__name__)

__all__ = ["CheckRefused", "CheckReport", "CheckUsageError", "run_check"]


def run_check(
    config: Config, config_label: str = "CONFIG", repair: bool = False, progress: bool = False
) -> CheckReport:
    """Check the installation of `config`. Raises `CheckRefused` (nothing was checked: in use,
    another schema version, unreachable), `CheckUsageError`, or `DicomVaultError` (the check
    could not finish: the index or the storage area failed while being read)."""
    started = time.monotonic()
    index = open_index(config, config_label)
    try:
        area = _open_area(config, config_label)
        return _check(index, area, repair, progress, started)
    except (sqlite3.Error, psycopg.Error) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DicomVaultError(ErrorCode.DATABASE, f"reading the {index.label} failed: {reason}") from exc
    except OSError as exc:  # the storage folder itself (not one file) cannot be read
        where = exc.filename or config.storage_directory
        raise DicomVaultError(ErrorCode.INTERNAL_ERROR, f"cannot read {where}: {exc.strerror}") from exc
    finally:
        index.close()


def _open_area(config: Config, config_label: str) -> StorageArea:
    try:
        settings = area_settings(config)
    except DicomVaultError as exc:
        raise CheckUsageError(exc.code, exc.details) from exc
    if isinstance(settings, FilesystemSettings) and not Path(settings.root).is_dir():
        # Never create it (as a server starting would): a mistyped path would check an empty folder.
        raise CheckRefused(
            ErrorCode.INEXISTENT_FILE,
            f"the storage folder {settings.root} does not exist: check StorageDirectory in {config_label}",
        )
    try:
        return open_storage_area(settings)
    except DicomVaultError as exc:
        raise CheckRefused(exc.code, exc.details) from exc


def _check(index: IndexUnderCheck, area: StorageArea, repair: bool, progress: bool, started: float) -> CheckReport:
    index.begin_snapshot()
    try:
        hierarchy = check_hierarchy(index)
        attachments = check_attachments(index, area, progress)
    finally:
        index.end_snapshot()
    files, orphans = find_orphans(area, attachments.referenced, progress)
    hierarchy_problems = list(hierarchy.problems)
    orphan_problems = [o.problem for o in orphans]
    notes: list[str] = []
    if repair:
        orphan_problems = remove_orphans(index, area, orphans)
        hierarchy_problems = _repair_counters(index, hierarchy)
        pruned = prune_empty_folders(area)
        if pruned:
            notes.append(f"removed {pruned} empty storage folders")
    report = CheckReport(
        index=index.label,
        storage=area.describe(),
        schema_version=index.schema_version,
        levels=hierarchy.levels,
        resources=hierarchy.resources,
        attachments=attachments.attachments,
        files=files,
        bytes_read=attachments.bytes_read,
        problems=(*attachments.problems, *hierarchy_problems, *orphan_problems),
        seconds=time.monotonic() - started,
        repair=repair,
        notes=tuple(notes),
    )
    if report.problems:
        logger.warning("check of the %s: %s", report.index, report.verdict())
    else:
        logger.info("check of the %s: no problem found", report.index)
    return report


def _repair_counters(index: IndexUnderCheck, hierarchy: HierarchyOutcome) -> list[Problem]:
    fixed: dict[int, Problem] = {}
    for repair in hierarchy.repairs:
        index.write(repair.statements)
        logger.info("repaired: %s", repair.problem.detail)
        fixed[id(repair.problem)] = repair.problem.mark_repaired()
    return [fixed.get(id(p), p) for p in hierarchy.problems]
