"""The filesystem storage area: raw bytes by uuid, in Orthanc's layout `root/uu/id/uuid`.

`uu` and `id` are the uuid's first two and next two characters, so an Orthanc storage folder is
readable in place. Writes go to a temporary file in the final folder, are fsynced, then renamed
with `os.replace`: a reader (or a crash) never sees a half-written file under a real uuid.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from dicomvault.errors import DicomVaultError, ErrorCode

logger = logging.getLogger(__name__)

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_TEMP_PREFIX = ".tmp-"


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def is_valid_uuid(value: str) -> bool:
    return bool(_UUID_RE.match(value))


class FilesystemStorageArea:
    """Stores each attachment as one file; knows nothing of compression or the index."""

    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = root
        self._fsync = fsync
        try:
            root.mkdir(parents=True, exist_ok=True)
        except FileExistsError as exc:
            raise DicomVaultError(ErrorCode.DIRECTORY_OVER_FILE, f"{root} exists and is not a folder") from exc
        except OSError as exc:
            raise DicomVaultError(ErrorCode.MAKE_DIRECTORY, f"cannot create {root}: {exc.strerror}") from exc

    def path(self, uuid: str) -> Path:
        # The uuid comes from the index or from our own generator, never from a URL; the check
        # still makes a path traversal through a corrupted index row impossible.
        if not is_valid_uuid(uuid):
            raise DicomVaultError(ErrorCode.PARAMETER_OUT_OF_RANGE, f"not a valid attachment uuid: {uuid!r}")
        return self.root / uuid[0:2] / uuid[2:4] / uuid

    def create(self, uuid: str, chunks: Iterator[bytes] | bytes) -> None:
        """Write a new file atomically. `chunks` may be a generator (hashing while writing)."""
        final = self.path(uuid)
        folder = final.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _write_error(exc, folder) from exc
        temp = folder / f"{_TEMP_PREFIX}{uuid}"
        try:
            with open(temp, "wb") as out:
                if isinstance(chunks, bytes | bytearray | memoryview):
                    out.write(chunks)
                else:
                    for chunk in chunks:
                        out.write(chunk)
                out.flush()
                if self._fsync:
                    os.fsync(out.fileno())
            os.replace(temp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise _write_error(exc, final) from exc

    def read(self, uuid: str) -> bytes:
        try:
            with open(self.path(uuid), "rb") as f:
                return f.read()
        except FileNotFoundError as exc:
            raise DicomVaultError(ErrorCode.INEXISTENT_FILE, f"missing attachment file {uuid}") from exc

    def open(self, uuid: str) -> BinaryIO:
        try:
            return open(self.path(uuid), "rb")
        except FileNotFoundError as exc:
            raise DicomVaultError(ErrorCode.INEXISTENT_FILE, f"missing attachment file {uuid}") from exc

    def read_range(self, uuid: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of a stored file."""
        with self.open(uuid) as f:
            f.seek(start)
            return f.read(max(0, end - start))

    def size(self, uuid: str) -> int:
        try:
            return self.path(uuid).stat().st_size
        except FileNotFoundError as exc:
            raise DicomVaultError(ErrorCode.INEXISTENT_FILE, f"missing attachment file {uuid}") from exc

    def remove(self, uuid: str) -> None:
        """Remove a file; a file already gone is not an error (removal is idempotent)."""
        path = self.path(uuid)
        try:
            path.unlink()
        except FileNotFoundError:
            logger.debug("attachment %s already removed", uuid)
            return
        # Orthanc prunes the two-level folders once empty; harmless if another writer races us.
        for folder in (path.parent, path.parent.parent):
            try:
                folder.rmdir()
            except OSError:
                break

    def exists(self, uuid: str) -> bool:
        return self.path(uuid).is_file()

    def iter_uuids(self) -> Iterator[str]:
        """Every stored uuid (for integrity checks); temporary files are skipped."""
        for first in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if not (first.is_dir() and len(first.name) == 2):
                continue
            for second in sorted(first.iterdir()):
                if not (second.is_dir() and len(second.name) == 2):
                    continue
                for f in sorted(second.iterdir()):
                    if is_valid_uuid(f.name):
                        yield f.name


def _write_error(exc: OSError, path: Path) -> DicomVaultError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DicomVaultError(ErrorCode.FULL_STORAGE, f"no space left on the storage area while writing {path}")
    return DicomVaultError(ErrorCode.FILE_STORAGE_CANNOT_WRITE, f"cannot write {path}: {exc.strerror}")
