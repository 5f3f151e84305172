"""`replicate --verify`: compare two servers without copying anything.

Public ids are SHA-1 of the UIDs, identical on every Orthanc-compatible server, so comparing the
two instance id lists says what is missing at the target and what only the target has. With
`--md5`, the MD5 of every instance both hold is compared too, read from
`/instances/{id}/attachments/dicom/md5` (the MD5 of the uncompressed file: Orthanc 1.10.1 and
dicomvault answer it whatever the storage compression, so a compressed and an uncompressed
archive compare equal).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from dicomvault.replication.client import OrthancClient

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyReport:
    source_count: int
    target_count: int
    missing: tuple[str, ...]  # at the source, not at the target
    extra: tuple[str, ...]  # at the target only (not a mismatch: a mirror may hold more)
    different: tuple[str, ...]  # both have it, with different MD5s (only with md5)
    md5_checked: int = 0

    @property
    def matches(self) -> bool:
        """The target has everything of the source, byte for byte when MD5s were compared."""
        return not self.missing and not self.different

    def to_json(self) -> dict[str, Any]:
        return {
            "SourceInstances": self.source_count,
            "TargetInstances": self.target_count,
            "Missing": list(self.missing),
            "Extra": list(self.extra),
            "Different": list(self.different),
            "Md5Checked": self.md5_checked,
            "Matches": self.matches,
        }


def verify(
    source: OrthancClient,
    target: OrthancClient,
    md5: bool,
    workers: int,
    tick: Callable[[int], None] = lambda n: None,
) -> VerifyReport:
    """Compare the instance id sets (and the MD5 of each common instance when `md5`); `tick` is
    called with the number of instances checked, for a progress bar."""
    source_ids = source.instance_ids()
    target_ids = set(target.instance_ids())
    source_set = set(source_ids)
    missing = tuple(sorted(source_set - target_ids))
    extra = tuple(sorted(target_ids - source_set))
    for instance in missing:
        logger.warning("instance %s is missing at the target %s", instance, target.url)
    different: list[str] = []
    common = sorted(source_set & target_ids)
    if md5:

        def compare(instance: str) -> bool:
            a = source.instance_md5(instance)
            b = target.instance_md5(instance)
            # Deleted at the source meanwhile: nothing left to compare.
            return a is None or a == b

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for instance, same in zip(common, pool.map(compare, common), strict=True):
                tick(1)
                if not same:
                    logger.warning("instance %s differs between %s and %s (MD5)", instance, source.url, target.url)
                    different.append(instance)
    return VerifyReport(len(source_set), len(target_ids), missing, extra, tuple(different), len(common) if md5 else 0)
