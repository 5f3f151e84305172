"""What `dicomvault check` finds, as values, and their two renderings: the report an operator
reads and the one JSON object a script parses.

Every problem has a *kind* (`missing`: the index lists something the storage area does not hold;
`corrupt`: something is there but not as the index says, or the index contradicts itself;
`orphan`: the storage area holds something the index does not list) and a *subject* (an
attachment, a stored file, a resource, the statistics counters). The JSON field names are a
contract (fault tests parse them): never rename one.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from dicomvault.enums import FileContentType

logger = logging.getLogger(__name__)

MISSING = "missing"
CORRUPT = "corrupt"
ORPHAN = "orphan"
KINDS = (MISSING, CORRUPT, ORPHAN)

ATTACHMENT = "attachment"
FILE = "file"
RESOURCE = "resource"
STATISTICS = "statistics"

_LISTED_PER_KIND = 50  # problems listed one by one per kind in the human report (the JSON has all)


@dataclass(frozen=True)
class Problem:
    kind: str  # MISSING, CORRUPT, ORPHAN
    subject: str  # ATTACHMENT, FILE, RESOURCE, STATISTICS
    detail: str
    uuid: str | None = None  # of the attachment or stored file
    resource: str | None = None  # public id of the resource concerned (the attachment's owner)
    level: str | None = None  # Orthanc's level name: Patient, Study, Series, Instance
    content_type: int | None = None
    repaired: bool = False

    def mark_repaired(self) -> Problem:
        return replace(self, repaired=True)

    def render(self) -> str:
        parts = [self.subject]
        if self.uuid is not None and self.subject != FILE:  # a file's detail names its path or uuid
            parts.append(self.uuid)
        if self.content_type is not None:
            parts.append(f"({FileContentType.label(self.content_type)})")
        if self.resource is not None:
            parts.append(f"of {(self.level or 'resource').lower()} {self.resource}")
        elif self.level is not None:
            parts.append(f"({self.level.lower()})")
        text = " ".join(parts) + f": {self.detail}"
        return text + (" [repaired]" if self.repaired else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "uuid": self.uuid,
            "resource": self.resource,
            "level": self.level,
            "content_type": self.content_type,
            "detail": self.detail,
            "repaired": self.repaired,
        }


@dataclass(frozen=True)
class CheckReport:
    index: str  # the index checked, as its backend names it (never a password)
    storage: str  # the storage area, as it describes itself
    schema_version: int
    levels: tuple[tuple[str, int], ...]  # (plural, count) per level, patients first
    resources: int
    attachments: int
    files: int  # files (objects) found in the storage area, temporary files included
    bytes_read: int  # bytes read to compare sizes and MD5s
    problems: tuple[Problem, ...]
    seconds: float
    repair: bool = False
    notes: tuple[str, ...] = field(default=())  # what --repair did beyond the problems (pruned folders)

    @property
    def counts(self) -> dict[str, int]:
        found = Counter(p.kind for p in self.problems)
        return {kind: found.get(kind, 0) for kind in KINDS}

    @property
    def repaired(self) -> int:
        return sum(1 for p in self.problems if p.repaired)

    @property
    def ok(self) -> bool:
        """No problem left: none found, or every one found was repaired."""
        return all(p.repaired for p in self.problems)

    def render(self) -> list[str]:
        lines = [
            f"checked the {self.index} (schema {self.schema_version}) against the storage area {self.storage} "
            f"in {self.seconds:.1f} s",
            "  "
            + ", ".join(f"{count} {plural}" for plural, count in self.levels)
            + f" ({self.resources} resources); {self.attachments} attachments ({_size(self.bytes_read)} read); "
            f"{self.files} stored files",
        ]
        for kind in KINDS:
            found = [p for p in self.problems if p.kind == kind]
            if not found:
                continue
            lines.append(f"  {kind} ({len(found)}):")
            lines += [f"    {p.render()}" for p in found[:_LISTED_PER_KIND]]
            if len(found) > _LISTED_PER_KIND:
                lines.append(f"    ... and {len(found) - _LISTED_PER_KIND} more (--json lists them all)")
        lines += [f"  {note}" for note in self.notes]
        lines.append(self.verdict())
        return lines

    def verdict(self) -> str:
        if not self.problems:
            return "OK: no problem found"
        counts = ", ".join(f"{n} {kind}" for kind, n in self.counts.items() if n)
        if self.ok:
            return f"OK after repair: {counts}, all {self.repaired} repaired"
        left = len(self.problems) - self.repaired
        repaired = f", {self.repaired} repaired" if self.repair else ""
        hint = "" if self.repair or not self.counts[ORPHAN] else " (--repair removes the orphans)"
        return f"PROBLEMS FOUND: {counts}{repaired}; {left} left{hint}"

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "index": self.index,
            "storage": self.storage,
            "schema_version": self.schema_version,
            "checked": {
                "resources": self.resources,
                "attachments": self.attachments,
                "files": self.files,
                "bytes": self.bytes_read,
            },
            "counts": self.counts,
            "problems": [p.to_json() for p in self.problems],
            "repaired": self.repaired,
        }


def _size(count: int) -> str:
    value = float(count)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{count} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover
