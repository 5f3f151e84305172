"""Resource descriptions as Orthanc 1.10.1 answers them (`GET /{level}/{id}`, `?expand`).

Every function takes a `ReadTx` so that one description (and one page of `?expand`) is read in
one consistent snapshot, with a fixed number of queries whatever the number of resources.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from dicomvault.dicom.main_tags import MAIN_TAGS, PATIENT_TAGS
from dicomvault.enums import FileContentType, MetadataType, ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.index.transactions import ReadTx
from dicomvault.model import ResourceRef

_CHILDREN_KEY = {
    ResourceType.PATIENT: "Studies",
    ResourceType.STUDY: "Series",
    ResourceType.SERIES: "Instances",
}
_PARENT_KEY = {
    ResourceType.STUDY: "ParentPatient",
    ResourceType.SERIES: "ParentStudy",
    ResourceType.INSTANCE: "ParentSeries",
}
_NAMES = {level: dict(tags) for level, tags in MAIN_TAGS.items()}
_PATIENT_NAMES = dict(PATIENT_TAGS)


def require(tx: ReadTx, level: ResourceType, public_id: str) -> ResourceRef:
    ref = tx.lookup(public_id, level)
    if ref is None:
        raise DicomVaultError(ErrorCode.UNKNOWN_RESOURCE, f"Unknown {level.label.lower()}: {public_id}")
    return ref


def tags_by_name(tags: dict[int, str], names: dict[int, str]) -> dict[str, str]:
    return {names[tag]: value for tag, value in tags.items() if tag in names}


class StabilityView(Protocol):
    """Which resources are stable: the server's stability monitor (`ingest/stability.py`), the
    source of `IsStable` (Orthanc keeps it in memory: everything is stable after a restart)."""

    def is_stable(self, internal_id: int) -> bool: ...


def is_stable(last_update: str | None, stable_age: int, now: float) -> bool:
    """An approximation from LastUpdate, for descriptions made without a stability monitor."""
    if not last_update:
        return True
    try:
        updated = datetime.strptime(last_update, "%Y%m%dT%H%M%S").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return True
    return now - updated >= stable_age


def describe(
    tx: ReadTx,
    refs: Sequence[ResourceRef],
    stable_age: int,
    clock: Callable[[], float] = time.time,
    stability: StabilityView | None = None,
) -> list[dict[str, Any]]:
    """Orthanc's JSON description of each resource (all of one level), in the given order.

    Pass the server's `stability` (`ctx.stability`): `IsStable` is then exactly Orthanc's."""
    if not refs:
        return []
    level = refs[0].level
    ids = [r.internal_id for r in refs]
    tags = tx.main_tags(ids)
    meta = tx.metadata(ids)
    parents = tx.parents(ids) if level is not ResourceType.PATIENT else {}
    children = tx.children(ids) if level is not ResourceType.INSTANCE else {}
    files = tx.attachments(ids, FileContentType.DICOM) if level is ResourceType.INSTANCE else {}
    series_indexes: dict[int, dict[int, str]] = {}
    if level is ResourceType.SERIES:
        # One query for the IndexInSeries of every instance of every series of the page.
        instance_ids = [c.internal_id for r in refs for c in children[r.internal_id]]
        series_indexes = tx.metadata(instance_ids, [MetadataType.INSTANCE_INDEX_IN_SERIES]) if instance_ids else {}
    now = clock()
    out: list[dict[str, Any]] = []
    for ref in refs:
        iid = ref.internal_id
        item: dict[str, Any] = {
            "ID": ref.public_id,
            "MainDicomTags": tags_by_name(tags[iid], _NAMES[level]),
            "Type": level.label,
        }
        if level is not ResourceType.PATIENT:
            item[_PARENT_KEY[level]] = parents.get(iid)
        if level is not ResourceType.INSTANCE:
            item[_CHILDREN_KEY[level]] = [c.public_id for c in children[iid]]
            last_update = meta[iid].get(MetadataType.LAST_UPDATE)
            if stability is not None:
                item["IsStable"] = stability.is_stable(iid)
            else:
                item["IsStable"] = is_stable(last_update, stable_age, now)
            if last_update is not None:
                item["LastUpdate"] = last_update
        if level is ResourceType.STUDY:
            item["PatientMainDicomTags"] = tags_by_name(tags[iid], _PATIENT_NAMES)
        elif level is ResourceType.SERIES:
            expected_raw = meta[iid].get(MetadataType.SERIES_EXPECTED_NUMBER_OF_INSTANCES)
            expected = int(expected_raw) if expected_raw and expected_raw.isdigit() else None
            item["ExpectedNumberOfInstances"] = expected
            item["Status"] = _series_status(expected, [c.internal_id for c in children[iid]], series_indexes)
        elif level is ResourceType.INSTANCE:
            dicom = files[iid][0] if files[iid] else None
            if dicom is not None:
                item["FileSize"] = dicom.uncompressed_size
                item["FileUuid"] = dicom.uuid
            index = meta[iid].get(MetadataType.INSTANCE_INDEX_IN_SERIES)
            item["IndexInSeries"] = _int_or_none(index)
        out.append(item)
    return out


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _series_status(expected: int | None, instances: list[int], indexes: dict[int, dict[int, str]]) -> str:
    """Orthanc's series status from ExpectedNumberOfInstances and the instances' IndexInSeries."""
    if expected is None:
        return "Unknown"
    seen: set[int] = set()
    for iid in instances:
        index = _int_or_none(indexes[iid].get(MetadataType.INSTANCE_INDEX_IN_SERIES))
        if index is None:
            continue  # as Orthanc: an instance without index neither completes nor breaks a series
        if index <= 0 or index > expected or index in seen:
            return "Inconsistent"
        seen.add(index)
    return "Complete" if len(seen) == expected else "Missing"


def children_of(tx: ReadTx, ref: ResourceRef, level: ResourceType) -> list[ResourceRef]:
    """`/studies/{id}/instances` and friends: the descendants of `ref` at `level`."""
    if level <= ref.level:
        raise DicomVaultError(ErrorCode.BAD_REQUEST, f"{level.plural} are not below a {ref.level.label.lower()}")
    return tx.descendants(ref, level)


def ancestor_of(tx: ReadTx, ref: ResourceRef, level: ResourceType) -> ResourceRef:
    """`/instances/{id}/patient` and friends."""
    if level >= ref.level:
        raise DicomVaultError(
            ErrorCode.BAD_REQUEST, f"a {level.label.lower()} is not above a {ref.level.label.lower()}"
        )
    found = tx.ancestor(ref, level)
    if found is None:  # pragma: no cover - every resource has its full ancestry
        raise DicomVaultError(ErrorCode.INTERNAL_ERROR, f"broken hierarchy above {ref.public_id}")
    return found
