"""The storage side of `dicomvault check`: every attachment row against its file, and every
stored file against the rows (orphans), with the removal of orphans that `--repair` asks for.

An attachment's file is read once, in chunks: the MD5 of the stored bytes and, for a compressed
attachment (Orthanc's "zlib with size": an 8-byte little-endian size, then a zlib stream), the
inflated bytes' size and MD5 are computed in the same pass, each inflation step bounded, so a file
of any size (or a zlib bomb) takes bounded memory. On the filesystem a wrong size is seen with one
`fstat`, without reading. Files are read by a small thread pool (the work is I/O and hashing,
which release the GIL), with a bounded number of files in flight whatever the archive size.

Orphans: files in the storage area that no attachment row names, and the temporary files an
interrupted write leaves (`storage/area.py`). `--repair` removes an orphan only after asking the
index afresh whether a row names its uuid (it never removes a file that has a row), then prunes
the empty `xx/yy` folders, as Orthanc does when it removes a file.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import logging
import os
import re
import struct
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from tqdm import tqdm

from dicomvault.check.database import IndexUnderCheck
from dicomvault.check.findings import ATTACHMENT, CORRUPT, FILE, MISSING, ORPHAN, Problem
from dicomvault.enums import CompressionType, FileContentType, ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.storage.area import TEMP_PREFIX, FilesystemStorageArea, StorageArea, is_valid_uuid

logger = logging.getLogger(__name__)

READ_CHUNK = 1 << 20
WORKERS = 4
_IN_FLIGHT = 64  # files submitted to the pool ahead of the one being collected
_SIZE_HEADER = struct.Struct("<Q")
_FOLDER = re.compile(r"^[0-9a-f]{2}$")
# The spellings an object may have in a bucket (`storage/s3.py`): DICOM, JSON, header, anything else.
_OBJECT_CONTENT_TYPES = (
    int(FileContentType.DICOM),
    int(FileContentType.DICOM_AS_JSON),
    int(FileContentType.DICOM_UNTIL_PIXEL_DATA),
    int(FileContentType.UNKNOWN),
)

ATTACHMENTS_SQL = (
    "SELECT a.id, r.resourceType, r.publicId, a.fileType, a.uuid, a.compressedSize, a.uncompressedSize, "
    "a.compressionType, a.compressedMD5, a.uncompressedMD5 "
    # LEFT JOIN: a row whose resource is gone still names a file (not an orphan) and is itself a problem.
    "FROM AttachedFiles a LEFT JOIN Resources r ON r.internalId = a.id ORDER BY a.uuid"
)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class AttachmentRow:
    internal_id: int
    level: str | None  # None: the row's resource does not exist
    public_id: str | None
    content_type: int
    uuid: str
    compressed_size: int
    uncompressed_size: int
    compression: int
    compressed_md5: str
    uncompressed_md5: str

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> AttachmentRow:
        internal_id, level, public_id, ftype, uuid, csize, usize, ctype, cmd5, umd5 = row
        return cls(
            int(internal_id),
            _level_label(level),
            None if public_id is None else str(public_id),
            int(ftype),
            str(uuid),
            int(csize),
            int(usize),
            int(ctype),
            str(cmd5 or ""),
            str(umd5 or ""),
        )

    def problem(self, kind: str, detail: str) -> Problem:
        return Problem(
            kind,
            ATTACHMENT,
            detail,
            self.uuid,
            self.public_id,
            self.level if self.public_id else None,
            self.content_type,
        )


def _level_label(level: Any) -> str | None:
    if level is None:
        return None
    try:
        return ResourceType(int(level)).label
    except ValueError:
        return f"type {level}"


@dataclass(frozen=True)
class AttachmentsOutcome:
    attachments: int
    bytes_read: int
    problems: tuple[Problem, ...]
    referenced: frozenset[str]


def check_attachments(index: IndexUnderCheck, area: StorageArea, progress: bool) -> AttachmentsOutcome:
    """Every attachment row of the snapshot against its file."""
    total = int(index.query("SELECT COUNT(*) FROM AttachedFiles")[0][0])
    referenced: set[str] = set()
    problems: list[Problem] = []
    bytes_read = 0
    count = 0

    def rows() -> Iterator[AttachmentRow]:
        for batch in index.stream(ATTACHMENTS_SQL):
            for raw in batch:
                row = AttachmentRow.from_row(raw)
                referenced.add(row.uuid)
                if row.public_id is None:
                    problems.append(
                        row.problem(
                            CORRUPT,
                            f"the attachment row belongs to internal id {row.internal_id}, which is no resource",
                        )
                    )
                yield row

    with (
        ThreadPoolExecutor(WORKERS, thread_name_prefix="check") as pool,
        tqdm(total=total, unit="file", desc="checking attachments", disable=not progress, file=sys.stderr) as bar,
    ):
        for found, read in bounded_map(pool, lambda row: verify_attachment(area, row), rows(), _IN_FLIGHT):
            count += 1
            bytes_read += read
            if found is not None:
                problems.append(found)
            bar.update(1)
    return AttachmentsOutcome(count, bytes_read, tuple(problems), frozenset(referenced))


def bounded_map(pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[R]:
    """`fn` of each item on the pool, results in order, at most `window` items in flight (never
    every row of a large archive queued at once)."""
    pending: collections.deque[Future[R]] = collections.deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def verify_attachment(area: StorageArea, row: AttachmentRow) -> tuple[Problem | None, int]:
    """(the problem of one attachment or None, bytes read). A failure of the storage area itself
    (an object store that stops answering) is raised, not reported as the file's problem."""
    try:
        handle = area.open(row.uuid, content_type=row.content_type)
    except DicomVaultError as exc:
        if exc.code is ErrorCode.INEXISTENT_FILE:
            return row.problem(MISSING, f"no file {_where(area, row.uuid)}"), 0
        if exc.code is ErrorCode.PARAMETER_OUT_OF_RANGE:
            return row.problem(CORRUPT, f"the index records an invalid uuid ({exc.details})"), 0
        raise
    except OSError as exc:
        return row.problem(CORRUPT, f"{_where(area, row.uuid)} cannot be read ({exc.strerror})"), 0
    with handle:
        size = _file_size(handle)
        if size is not None and size != row.compressed_size:
            return row.problem(CORRUPT, f"{size} bytes stored, the index records {row.compressed_size}"), 0
        try:
            digest = _Digest(row)
            while chunk := handle.read(READ_CHUNK):
                digest.update(chunk)
        except OSError as exc:
            return row.problem(CORRUPT, f"{_where(area, row.uuid)} cannot be read ({exc.strerror})"), digest.stored
    issues = digest.issues()
    return (row.problem(CORRUPT, "; ".join(issues)) if issues else None), digest.stored


def _file_size(handle: BinaryIO) -> int | None:
    """The size of a local file without reading it; None for other handles (objects)."""
    try:
        return os.fstat(handle.fileno()).st_size
    except (OSError, io.UnsupportedOperation):
        return None


def _where(area: StorageArea, uuid: str) -> str:
    if isinstance(area, FilesystemStorageArea):
        with contextlib.suppress(DicomVaultError):
            return str(area.path(uuid))
    return f"{uuid} in {area.describe()}"


class _Digest:
    """Sizes and MD5s of one attachment's stored bytes and, when compressed, of the inflated bytes,
    fed chunk by chunk."""

    def __init__(self, row: AttachmentRow) -> None:
        self.row = row
        self.stored = 0
        self._stored_md5 = hashlib.md5(usedforsecurity=False)
        self._inflating = row.compression == CompressionType.ZLIB_WITH_SIZE
        self._header = b""
        self._inflater = zlib.decompressobj()
        self._plain = 0
        self._plain_md5 = hashlib.md5(usedforsecurity=False)
        self._zlib_error: str | None = None
        self._overflow = False

    def update(self, chunk: bytes) -> None:
        self.stored += len(chunk)
        self._stored_md5.update(chunk)
        if not self._inflating or self._zlib_error is not None or self._overflow:
            return
        data = chunk
        if len(self._header) < _SIZE_HEADER.size:
            need = _SIZE_HEADER.size - len(self._header)
            self._header += data[:need]
            data = data[need:]
        while data and not self._inflater.eof:
            try:
                # `max_length` bounds what one step may produce, whatever the compression ratio.
                out = self._inflater.decompress(data, READ_CHUNK)
            except zlib.error as exc:
                self._zlib_error = str(exc)
                return
            self._plain += len(out)
            self._plain_md5.update(out)
            if self._plain > self.row.uncompressed_size:
                self._overflow = True
                return
            data = self._inflater.unconsumed_tail

    def issues(self) -> list[str]:
        row = self.row
        found: list[str] = []
        if self.stored != row.compressed_size:
            found.append(f"{self.stored} bytes stored, the index records {row.compressed_size}")
        stored_md5 = self._stored_md5.hexdigest()
        if row.compressed_md5 and stored_md5 != row.compressed_md5:
            found.append(f"MD5 {stored_md5} of the stored bytes, the index records {row.compressed_md5}")
        if self._inflating:
            found += self._inflation_issues()
        elif row.compression == CompressionType.NONE:
            if row.uncompressed_size != row.compressed_size:
                found.append(
                    f"an uncompressed attachment recorded with two sizes ({row.compressed_size} stored, "
                    f"{row.uncompressed_size} uncompressed)"
                )
            if row.uncompressed_md5 and row.compressed_md5 and row.uncompressed_md5 != row.compressed_md5:
                found.append("an uncompressed attachment recorded with two different MD5s")
        else:
            found.append(f"unknown compression type {row.compression}: the content could not be checked")
        return found

    def _inflation_issues(self) -> list[str]:
        row = self.row
        if self.stored == 0:
            # Orthanc stores an empty buffer as an empty file.
            return [] if row.uncompressed_size == 0 else [f"an empty file, {row.uncompressed_size} bytes once inflated"]
        if len(self._header) < _SIZE_HEADER.size:
            return ["a compressed file shorter than its 8-byte size header"]
        (announced,) = _SIZE_HEADER.unpack(self._header)
        found: list[str] = []
        if announced != row.uncompressed_size:
            found.append(f"its size header says {announced} bytes, the index records {row.uncompressed_size}")
        if self._zlib_error is not None:
            found.append(f"undecodable zlib stream ({self._zlib_error})")
        elif self._overflow:
            found.append(f"inflates to more than the {row.uncompressed_size} bytes the index records")
        elif not self._inflater.eof:
            found.append(f"the zlib stream ends early (truncated after {self._plain} inflated bytes)")
        elif self._plain != row.uncompressed_size:
            found.append(f"inflates to {self._plain} bytes, the index records {row.uncompressed_size}")
        elif row.uncompressed_md5 and self._plain_md5.hexdigest() != row.uncompressed_md5:
            found.append(f"MD5 {self._plain_md5.hexdigest()} once inflated, the index records {row.uncompressed_md5}")
        return found


# -- orphans ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredFile:
    """One file (object) of the storage area, as the orphan walk finds it."""

    name: str  # its path, or its uuid in a bucket, for messages
    uuid: str | None  # None: a temporary file whose name holds no uuid
    size: int | None
    temporary: bool = False
    path: Path | None = None  # filesystem only
    content_type: int | None = None  # object storage: the spelling found
    expected: Path | None = None  # filesystem: where a file of that uuid belongs, when it is elsewhere


@dataclass(frozen=True)
class Orphan:
    file: StoredFile
    problem: Problem


def find_orphans(area: StorageArea, referenced: frozenset[str], progress: bool) -> tuple[int, list[Orphan]]:
    """(files in the storage area, the orphans among them)."""
    files = 0
    orphans: list[Orphan] = []
    with tqdm(unit="file", desc="looking for orphans", disable=not progress, file=sys.stderr) as bar:
        for stored in _stored_files(area):
            files += 1
            bar.update(1)
            orphan = _orphan(area, stored, referenced)
            if orphan is not None:
                orphans.append(orphan)
    return files, orphans


def _stored_files(area: StorageArea) -> Iterator[StoredFile]:
    if isinstance(area, FilesystemStorageArea):
        yield from _walk_folder(area.root)
    else:
        for uuid in area.iter_uuids():
            yield StoredFile(uuid, uuid, None)


def _walk_folder(root: Path) -> Iterator[StoredFile]:
    """Orthanc's layout `root/uu/id/uuid`: only those two levels of two-hex-digit folders hold
    attachments (the index file, its lock and anything else at the root are not ours to judge)."""
    for first in _sorted_dirs(root):
        for second in _sorted_dirs(Path(first.path)):
            with os.scandir(second.path) as entries:
                for entry in sorted(entries, key=lambda e: e.name):
                    # A symbolic link is listed too: the area never writes one, nor reads through one.
                    if not (entry.is_file(follow_symlinks=False) or entry.is_symlink()):
                        continue
                    path = Path(entry.path)
                    size = entry.stat(follow_symlinks=False).st_size
                    if entry.name.startswith(TEMP_PREFIX):
                        uuid = entry.name[len(TEMP_PREFIX) :]
                        yield StoredFile(str(path), uuid if is_valid_uuid(uuid) else None, size, True, path)
                    elif is_valid_uuid(entry.name):
                        uuid = entry.name
                        expected = root / uuid[0:2] / uuid[2:4] / uuid
                        yield StoredFile(
                            str(path),
                            uuid,
                            size,
                            path=path,
                            expected=None if expected == path else expected,
                        )


def _sorted_dirs(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            found = [e for e in entries if _FOLDER.match(e.name) and e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    return sorted(found, key=lambda e: e.name)


def _orphan(area: StorageArea, stored: StoredFile, referenced: frozenset[str]) -> Orphan | None:
    if stored.temporary:
        detail = f"{stored.name} ({stored.size} bytes): a temporary file left by an interrupted write"
        return Orphan(stored, Problem(ORPHAN, FILE, detail, stored.uuid))
    if stored.uuid is None:
        return None
    if stored.uuid in referenced:
        if stored.expected is None:
            return None
        detail = (
            f"{stored.name} ({stored.size} bytes): the file of an attachment, in the wrong folder (it belongs at "
            f"{stored.expected}); kept, since a row names its uuid"
        )
        return Orphan(stored, Problem(ORPHAN, FILE, detail, stored.uuid))
    size = stored.size
    if size is None:  # an object: its size (and spelling) from the store
        found = _object_size(area, stored.uuid)
        if found is None:
            return None  # gone since listed
        size, content_type = found
        stored = StoredFile(stored.name, stored.uuid, size, content_type=content_type)
    where = stored.name if stored.path is not None else f"{stored.uuid} in {area.describe()}"
    return Orphan(stored, Problem(ORPHAN, FILE, f"{where} ({size} bytes): no attachment row names it", stored.uuid))


def _object_size(area: StorageArea, uuid: str) -> tuple[int, int] | None:
    for content_type in _OBJECT_CONTENT_TYPES:
        try:
            return area.size(uuid, content_type=content_type), content_type
        except DicomVaultError as exc:
            if exc.code is not ErrorCode.INEXISTENT_FILE:
                raise
    return None


def remove_orphans(index: IndexUnderCheck, area: StorageArea, orphans: list[Orphan]) -> list[Problem]:
    """Remove every orphan that no attachment row names now (asked afresh, right before each
    removal); the orphans' problems, in order, marked repaired where removed."""
    outcome: list[Problem] = []
    for orphan in orphans:
        outcome.append(orphan.problem)
        stored = orphan.file
        if stored.uuid is not None and index.referenced(stored.uuid):
            logger.warning("kept %s: an attachment row names uuid %s", stored.name, stored.uuid)
            continue
        try:
            if stored.path is not None:
                stored.path.unlink(missing_ok=True)
            elif stored.uuid is not None:
                content_type = stored.content_type
                if content_type is None:
                    found = _object_size(area, stored.uuid)
                    content_type = found[1] if found is not None else int(FileContentType.UNKNOWN)
                area.remove(stored.uuid, content_type=content_type)
        except OSError as exc:
            logger.error("cannot remove the orphan %s: %s", stored.name, exc.strerror)
            continue
        except DicomVaultError as exc:
            logger.error("cannot remove the orphan %s: %s", stored.name, exc.details)
            continue
        logger.info("removed the orphan %s", stored.name)
        outcome[-1] = orphan.problem.mark_repaired()
    return outcome


def prune_empty_folders(area: StorageArea) -> int:
    """Remove the empty `xx/yy` and `xx` folders of a filesystem area; how many were removed."""
    if not isinstance(area, FilesystemStorageArea):
        return 0
    removed = 0
    for first in _sorted_dirs(area.root):
        for second in _sorted_dirs(Path(first.path)):
            with contextlib.suppress(OSError):  # not empty
                os.rmdir(second.path)
                removed += 1
        with contextlib.suppress(OSError):
            os.rmdir(first.path)
            removed += 1
    return removed
