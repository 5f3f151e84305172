"""The index side of `dicomvault check`: the patient / study / series / instance tree and the
counters the index keeps, checked by SQL inside the check's snapshot.

- every resource's parent is one level up (a patient has none): a series whose study is gone,
  a study under another study, a resource of an unknown level are *corrupt*;
- every patient, study and series has children (a delete that stopped half-way leaves a
  childless study, which Orthanc never shows): *corrupt*;
- every instance has its DICOM attachment (content type 1): *missing* otherwise;
- the running totals of `StorageTotals` (kept by triggers, read by /statistics and the recycling
  check) equal the sums of the attachment rows; on PostgreSQL the log and id counters are not
  behind the highest number in use (the next insert would collide with an existing row).
  Both are *corrupt* otherwise, and `--repair` recomputes them: safe, since nothing else writes
  the index meanwhile and the values come from the rows themselves.

Rows are never deleted: which of a contradiction's sides is wrong is an operator's decision.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dicomvault.check.database import IndexUnderCheck
from dicomvault.check.findings import ATTACHMENT, CORRUPT, MISSING, RESOURCE, STATISTICS, Problem
from dicomvault.enums import FileContentType, ResourceType
from dicomvault.index.copy_tables import COUNTER_TABLES, LOG_COUNTERS, SERIAL_COUNTERS

logger = logging.getLogger(__name__)

_PATIENT, _INSTANCE = int(ResourceType.PATIENT), int(ResourceType.INSTANCE)
_KNOWN_LEVELS = frozenset(int(level) for level in ResourceType)
_LEVELS = ", ".join(str(level) for level in sorted(_KNOWN_LEVELS))
# The column each counter numbers (the key of its table).
_COUNTED_KEY = {"resources": "internalId", "patientrecyclingorder": "seq", **{name: "seq" for name in LOG_COUNTERS}}


@dataclass(frozen=True)
class Repair:
    """What `--repair` runs for a problem: statements of one write transaction."""

    problem: Problem
    statements: tuple[tuple[str, tuple[Any, ...]], ...]


@dataclass(frozen=True)
class HierarchyOutcome:
    levels: tuple[tuple[str, int], ...]  # (plural, count), patients first
    resources: int
    problems: tuple[Problem, ...]
    repairs: tuple[Repair, ...]  # for some of `problems`


def check_hierarchy(index: IndexUnderCheck) -> HierarchyOutcome:
    counts = {int(t): int(n) for t, n in index.query("SELECT resourceType, COUNT(*) FROM Resources GROUP BY 1")}
    problems = [*_parents(index), *_childless(index), *_instances_without_dicom(index)]
    repairs = [*_storage_totals(index)]
    if index.dialect.name == "postgresql":
        repairs += _postgresql_counters(index)
    problems += [r.problem for r in repairs]
    return HierarchyOutcome(
        levels=tuple((level.plural, counts.get(int(level), 0)) for level in ResourceType),
        resources=sum(counts.values()),
        problems=tuple(problems),
        repairs=tuple(repairs),
    )


def _label(level: int) -> str:
    try:
        return ResourceType(level).label
    except ValueError:
        return f"type {level}"


def _parents(index: IndexUnderCheck) -> Iterator[Problem]:
    sql = (
        "SELECT c.resourceType, c.publicId, c.parentId, p.internalId, p.resourceType, p.publicId "
        "FROM Resources c LEFT JOIN Resources p ON p.internalId = c.parentId "
        f"WHERE c.resourceType NOT IN ({_LEVELS}) "
        f"OR (c.resourceType = {_PATIENT} AND c.parentId IS NOT NULL) "
        f"OR (c.resourceType <> {_PATIENT} AND (p.internalId IS NULL OR p.resourceType <> c.resourceType - 1)) "
        "ORDER BY c.resourceType, c.publicId"
    )
    for batch in index.stream(sql):
        for level, public_id, parent_id, found_id, parent_level, parent_public in batch:
            level = int(level)
            label = _label(level)
            if level not in _KNOWN_LEVELS:
                detail = f"a resource of unknown level {level}"
            elif level == _PATIENT:
                detail = f"a patient with a parent (internal id {parent_id})"
            else:
                expected = _label(level - 1).lower()
                if parent_id is None:
                    detail = f"a {label.lower()} without a {expected} (no parent)"
                elif found_id is None:
                    detail = (
                        f"a {label.lower()} whose {expected} is gone (parent internal id {parent_id} does not exist)"
                    )
                else:
                    detail = (
                        f"a {label.lower()} whose parent is the {_label(int(parent_level)).lower()} {parent_public} "
                        f"(expected a {expected})"
                    )
            yield Problem(CORRUPT, RESOURCE, detail, resource=str(public_id), level=label)


def _childless(index: IndexUnderCheck) -> Iterator[Problem]:
    sql = (
        f"SELECT r.resourceType, r.publicId FROM Resources r WHERE r.resourceType IN ({_LEVELS}) "
        f"AND r.resourceType <> {_INSTANCE} "
        "AND NOT EXISTS (SELECT 1 FROM Resources c WHERE c.parentId = r.internalId) ORDER BY r.resourceType, r.publicId"
    )
    for batch in index.stream(sql):
        for level, public_id in batch:
            label = _label(int(level))
            child = ResourceType(int(level)).child
            assert child is not None
            detail = f"a {label.lower()} without any {child.label.lower()}"
            yield Problem(CORRUPT, RESOURCE, detail, resource=str(public_id), level=label)


def _instances_without_dicom(index: IndexUnderCheck) -> Iterator[Problem]:
    dicom = int(FileContentType.DICOM)
    sql = (
        f"SELECT r.publicId FROM Resources r WHERE r.resourceType = {_INSTANCE} AND NOT EXISTS "
        f"(SELECT 1 FROM AttachedFiles a WHERE a.id = r.internalId AND a.fileType = {dicom}) ORDER BY r.publicId"
    )
    for batch in index.stream(sql):
        for (public_id,) in batch:
            yield Problem(
                MISSING,
                ATTACHMENT,
                "the instance has no DICOM attachment in the index",
                resource=str(public_id),
                level=ResourceType.INSTANCE.label,
                content_type=dicom,
            )


def _storage_totals(index: IndexUnderCheck) -> list[Repair]:
    summed = index.query(
        "SELECT COALESCE(SUM(compressedSize), 0), COALESCE(SUM(uncompressedSize), 0) FROM AttachedFiles"
    )
    compressed, uncompressed = (int(v) for v in summed[0])
    recompute = (
        (
            "UPDATE StorageTotals SET compressedSize = (SELECT COALESCE(SUM(compressedSize), 0) FROM AttachedFiles), "
            "uncompressedSize = (SELECT COALESCE(SUM(uncompressedSize), 0) FROM AttachedFiles) WHERE id = 0",
            (),
        ),
    )
    rows = index.query("SELECT compressedSize, uncompressedSize FROM StorageTotals WHERE id = 0")
    if not rows:
        detail = (
            f"StorageTotals has no row: /statistics cannot answer (the attachments sum to {compressed} bytes "
            f"stored, {uncompressed} uncompressed)"
        )
        insert = (
            "INSERT INTO StorageTotals(id, compressedSize, uncompressedSize) VALUES (0, 0, 0)",
            (),
        )
        return [Repair(Problem(CORRUPT, STATISTICS, detail), (insert, *recompute))]
    recorded = (int(rows[0][0]), int(rows[0][1]))
    if recorded == (compressed, uncompressed):
        return []
    differs = []
    if recorded[0] != compressed:
        differs.append(f"{recorded[0]} bytes stored where the attachments sum to {compressed}")
    if recorded[1] != uncompressed:
        differs.append(f"{recorded[1]} bytes uncompressed where the attachments sum to {uncompressed}")
    detail = "StorageTotals (the /statistics disk sizes) records " + " and ".join(differs)
    return [Repair(Problem(CORRUPT, STATISTICS, detail), recompute)]


def _postgresql_counters(index: IndexUnderCheck) -> list[Repair]:
    """PostgreSQL numbers new rows from its counters alone (SQLite's AUTOINCREMENT also looks at
    the highest id in use, so a low counter is harmless there)."""
    counters = index.side.counters()
    repairs: list[Repair] = []
    for name, value in counters.items():
        table, key = COUNTER_TABLES[name], _COUNTED_KEY[name]
        highest = int(index.query(f"SELECT COALESCE(MAX({key}), 0) FROM {table}")[0][0])
        if value >= highest:
            continue
        detail = (
            f"the counter of {table} is at {value}, behind the highest {key} in use ({highest}): "
            "the next row stored there would collide"
        )
        statement: tuple[str, tuple[Any, ...]]
        if name in SERIAL_COUNTERS:
            statement = (
                "SELECT setval(pg_get_serial_sequence(?, ?), ?, true)",
                (name, SERIAL_COUNTERS[name], highest),
            )
        else:
            statement = ("UPDATE Sequences SET value = ? WHERE name = ?", (highest, name))
        repairs.append(Repair(Problem(CORRUPT, STATISTICS, detail), (statement,)))
    return repairs
