"""The verification report that ends an adoption: does every attachment the index lists have its
file in the storage area, readable, of the size the index records?

It reads the index with its own read-only connection (the upgrade driver holding the index lock
meanwhile is fine: it only reads) and checks each file with one `open` + `fstat`, never reading
the content, so 10,000 files take a fraction of a second; `check_md5=True` also reads each file
and compares the MD5 of its stored (compressed) bytes with the one recorded. Another storage area
(an S3 bucket) is checked through the area's own `size` and `open` (one request per file).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import stat
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from dicomvault.enums import FileContentType, ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.storage.accessor import StorageAccessor
from dicomvault.storage.area import FilesystemStorageArea, StorageArea

logger = logging.getLogger(__name__)

MISSING = "missing"
UNREADABLE = "unreadable"
WRONG_SIZE = "wrong size"
WRONG_MD5 = "wrong MD5"
_MAX_LISTED = 50  # problems listed one by one in the rendered report
_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class StorageProblem:
    """One attachment whose file is not as the index says."""

    kind: str  # MISSING, UNREADABLE, WRONG_SIZE, WRONG_MD5
    level: ResourceType
    public_id: str  # of the resource owning the attachment (an instance, for DICOM files)
    content_type: int
    uuid: str
    detail: str

    def render(self) -> str:
        owner = f"{self.level.label.lower()} {self.public_id}"
        return (
            f"{self.kind}: {owner}, {FileContentType.label(self.content_type)} attachment {self.uuid} ({self.detail})"
        )


@dataclass(frozen=True)
class VerificationReport:
    storage: str
    patients: int
    studies: int
    series: int
    instances: int
    files_checked: int
    dicom_files: int
    auxiliary_files: int  # Orthanc's "DICOM as JSON" and "DICOM until pixel data"
    user_files: int
    instances_without_dicom: int
    md5_checked: bool
    problems: tuple[StorageProblem, ...]
    elapsed_s: float

    @property
    def ok(self) -> bool:
        return not self.problems and self.instances_without_dicom == 0

    def count(self, kind: str) -> int:
        return sum(1 for p in self.problems if p.kind == kind)

    def render(self) -> list[str]:
        lines = [
            f"verification of the storage area {self.storage}: {self.patients} patients, {self.studies} studies, "
            f"{self.series} series, {self.instances} instances",
            f"  {self.files_checked} files checked in {self.elapsed_s:.1f} s ({self.dicom_files} DICOM, "
            f"{self.auxiliary_files} Orthanc auxiliary, {self.user_files} user)"
            + (", MD5 compared" if self.md5_checked else ", sizes compared"),
        ]
        if self.ok:
            lines.append("  every file is present, readable and of the recorded size")
            return lines
        kinds = Counter(p.kind for p in self.problems)
        summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        if self.instances_without_dicom:
            summary += (
                ", " if summary else ""
            ) + f"{self.instances_without_dicom} instances without a DICOM attachment"
        lines.append(f"  PROBLEMS: {summary}")
        lines.extend(f"  {p.render()}" for p in self.problems[:_MAX_LISTED])
        if len(self.problems) > _MAX_LISTED:
            lines.append(f"  ... and {len(self.problems) - _MAX_LISTED} more")
        return lines


def verify_storage(index_path: Path, accessor: StorageAccessor, check_md5: bool = False) -> VerificationReport:
    """Check every attachment of the index `index_path` against the storage area of `accessor`."""
    started = time.monotonic()
    try:
        conn = sqlite3.connect(index_path.resolve().as_uri() + "?mode=ro", uri=True, timeout=30.0)
    except sqlite3.Error as exc:
        raise DicomVaultError(ErrorCode.SQLITE_CANNOT_OPEN, f"cannot open the index {index_path}: {exc}") from exc
    try:
        levels = dict(conn.execute("SELECT resourceType, COUNT(*) FROM Resources GROUP BY resourceType").fetchall())
        without_dicom = int(
            conn.execute(
                "SELECT COUNT(*) FROM Resources r WHERE r.resourceType = ? AND NOT EXISTS "
                "(SELECT 1 FROM AttachedFiles a WHERE a.id = r.internalId AND a.fileType = ?)",
                (int(ResourceType.INSTANCE), int(FileContentType.DICOM)),
            ).fetchone()[0]
        )
        cursor = conn.execute(
            "SELECT r.resourceType, r.publicId, a.fileType, a.uuid, a.compressedSize, a.compressedMD5 "
            "FROM AttachedFiles a JOIN Resources r ON r.internalId = a.id ORDER BY a.id, a.fileType"
        )
        kinds: Counter[str] = Counter()
        problems: list[StorageProblem] = []
        while batch := cursor.fetchmany(1000):
            for level, public_id, ftype, uuid, size, md5 in batch:
                ftype = int(ftype)
                kinds[_kind(ftype)] += 1
                detail = _check(accessor.area, str(uuid), ftype, int(size), str(md5 or ""), check_md5)
                if detail is not None:
                    kind, text = detail
                    problem = StorageProblem(kind, ResourceType(level), str(public_id), ftype, str(uuid), text)
                    problems.append(problem)
                    if len(problems) <= _MAX_LISTED:
                        logger.error("storage check: %s", problem.render())
    except sqlite3.DatabaseError as exc:
        raise DicomVaultError(ErrorCode.SQLITE_CANNOT_OPEN, f"cannot read the index {index_path}: {exc}") from exc
    finally:
        conn.close()
    report = VerificationReport(
        storage=str(area.root) if isinstance(area := accessor.area, FilesystemStorageArea) else area.describe(),
        patients=int(levels.get(int(ResourceType.PATIENT), 0)),
        studies=int(levels.get(int(ResourceType.STUDY), 0)),
        series=int(levels.get(int(ResourceType.SERIES), 0)),
        instances=int(levels.get(int(ResourceType.INSTANCE), 0)),
        files_checked=sum(kinds.values()),
        dicom_files=kinds["dicom"],
        auxiliary_files=kinds["auxiliary"],
        user_files=kinds["user"],
        instances_without_dicom=without_dicom,
        md5_checked=check_md5,
        problems=tuple(problems),
        elapsed_s=time.monotonic() - started,
    )
    if report.ok:
        logger.info("storage check: %d files present and of the recorded size", report.files_checked)
    else:
        logger.error(
            "storage check: %d of %d files have a problem, %d instances have no DICOM attachment",
            len(problems),
            report.files_checked,
            without_dicom,
        )
    return report


def _kind(content_type: int) -> str:
    if content_type == FileContentType.DICOM:
        return "dicom"
    if content_type in (FileContentType.DICOM_AS_JSON, FileContentType.DICOM_UNTIL_PIXEL_DATA):
        return "auxiliary"
    return "user" if content_type >= FileContentType.START_USER else "other"


def _check(
    area: StorageArea, uuid: str, content_type: int, size: int, md5: str, check_md5: bool
) -> tuple[str, str] | None:
    """(kind, detail) of what is wrong with one file, or None."""
    if not isinstance(area, FilesystemStorageArea):
        return _check_object(area, uuid, content_type, size, md5, check_md5)
    try:
        path = area.path(uuid)
    except DicomVaultError as exc:
        return UNREADABLE, f"the index records an invalid uuid: {exc.details}"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return MISSING, f"no file {path}"
    except OSError as exc:
        return UNREADABLE, f"{path}: {exc.strerror}"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return UNREADABLE, f"{path} is not a regular file"
        actual = info.st_size
        if actual != size:
            return WRONG_SIZE, f"{actual} bytes on disk, the index records {size}"
        if check_md5 and md5:
            digest = hashlib.md5(usedforsecurity=False)
            while chunk := os.read(fd, _READ_CHUNK):
                digest.update(chunk)
            if digest.hexdigest() != md5:
                return WRONG_MD5, f"MD5 {digest.hexdigest()} on disk, the index records {md5}"
    except OSError as exc:
        return UNREADABLE, f"{path}: {exc.strerror}"
    finally:
        os.close(fd)
    return None


def _check_object(
    area: StorageArea, uuid: str, content_type: int, size: int, md5: str, check_md5: bool
) -> tuple[str, str] | None:
    """`_check` through the area's own operations (object storage has no paths)."""
    try:
        actual = area.size(uuid, content_type=content_type)
        if actual != size:
            return WRONG_SIZE, f"{actual} bytes stored, the index records {size}"
        if check_md5 and md5:
            digest = hashlib.md5(usedforsecurity=False)
            with area.open(uuid, content_type=content_type) as handle:
                while chunk := handle.read(_READ_CHUNK):
                    digest.update(chunk)
            if digest.hexdigest() != md5:
                return WRONG_MD5, f"MD5 {digest.hexdigest()} stored, the index records {md5}"
    except DicomVaultError as exc:
        if exc.code is ErrorCode.INEXISTENT_FILE:
            return MISSING, f"no object in {area.describe()}"
        if exc.code is ErrorCode.PARAMETER_OUT_OF_RANGE:
            return UNREADABLE, f"the index records an invalid uuid: {exc.details}"
        return UNREADABLE, str(exc.details or exc)
    return None
