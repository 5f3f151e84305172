"""The storage area contract (`StorageArea`) and its filesystem implementation: raw bytes by
uuid, in Orthanc's layout `root/uu/id/uuid`.

`uu` and `id` are the uuid's first two and next two characters, so an Orthanc storage folder is
readable in place. Writes go to a temporary file in the final folder, are fsynced, then renamed
with `os.replace`: a reader (or a crash) never sees a half-written file under a real uuid.

Every operation names the attachment's content type as well as its uuid, as Orthanc's storage
plugins receive it: the filesystem ignores it, object storage puts it in the object name
(`storage/s3.py`).
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
from typing import BinaryIO, Protocol

from dicomvault.enums import FileContentType
from dicomvault.errors import DicomVaultError, ErrorCode

logger = logging.getLogger(__name__)

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TEMP_PREFIX = ".tmp-"  # a file being written; what an interrupted write leaves (`dicomvault check` lists it)
_FOLDER_RACE_RETRIES = 20


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def is_valid_uuid(value: str) -> bool:
    return bool(_UUID_RE.match(value))


class StorageArea(Protocol):
    """Bytes by (uuid, content type); knows nothing of compression or the index.

    A missing file raises `DicomVaultError(INEXISTENT_FILE)`; `remove` of a missing file is not an
    error. `open` fails at once for a missing file, never at the first read."""

    def create(self, uuid: str, chunks: Iterator[bytes] | bytes, *, content_type: int) -> None: ...

    def read(self, uuid: str, *, content_type: int) -> bytes: ...

    def open(self, uuid: str, *, content_type: int) -> BinaryIO: ...

    def read_range(self, uuid: str, start: int, end: int, *, content_type: int) -> bytes: ...

    def size(self, uuid: str, *, content_type: int) -> int: ...

    def remove(self, uuid: str, *, content_type: int) -> None: ...

    def exists(self, uuid: str, *, content_type: int) -> bool: ...

    def iter_uuids(self) -> Iterator[str]: ...

    def describe(self) -> str:
        """Where the files are, for log lines and reports (never a secret)."""
        ...


# Where a caller has no content type at hand (tests, tools reading an Orthanc folder), the
# filesystem area takes DICOM: it does not use the value anyway.
_ANY = int(FileContentType.DICOM)


class FilesystemStorageArea:
    """Stores each attachment as one file (a `StorageArea`)."""

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

    def describe(self) -> str:
        return f"folder {self.root}"

    def create(self, uuid: str, chunks: Iterator[bytes] | bytes, *, content_type: int = _ANY) -> None:
        """Write a new file atomically. `chunks` may be a generator (hashing while writing)."""
        final = self.path(uuid)
        folder = final.parent
        temp = folder / f"{TEMP_PREFIX}{uuid}"
        try:
            with self._open_temp(temp) as out:
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

    @staticmethod
    def _open_temp(temp: Path) -> BinaryIO:
        """Create the temporary file, and its folders. Another process (or thread) removing the last
        file of the same `xx/yy` folder prunes that folder: between our mkdir and our open it may
        vanish, so the pair is retried. Once the temporary file exists the folder is not empty and
        no pruning removes it before the rename."""
        for attempt in range(_FOLDER_RACE_RETRIES):
            try:
                temp.parent.mkdir(parents=True, exist_ok=True)
            except (FileNotFoundError, FileExistsError):
                continue  # pruned while mkdir created it, or between "exists" and "is a folder"
            except OSError as exc:
                raise _write_error(exc, temp.parent) from exc
            try:
                return open(temp, "wb")  # the caller closes it
            except FileNotFoundError:
                if attempt == _FOLDER_RACE_RETRIES - 1:
                    raise
        raise FileNotFoundError(errno.ENOENT, "the folder kept disappearing", str(temp.parent))

    def read(self, uuid: str, *, content_type: int = _ANY) -> bytes:
        with _open_for_reading(self.path(uuid), uuid) as f:
            return f.read()

    def open(self, uuid: str, *, content_type: int = _ANY) -> BinaryIO:
        return _open_for_reading(self.path(uuid), uuid)

    def read_range(self, uuid: str, start: int, end: int, *, content_type: int = _ANY) -> bytes:
        """Bytes [start, end) of a stored file."""
        with self.open(uuid) as f:
            f.seek(start)
            return f.read(max(0, end - start))

    def size(self, uuid: str, *, content_type: int = _ANY) -> int:
        try:
            return self.path(uuid).stat().st_size
        except FileNotFoundError as exc:
            raise DicomVaultError(ErrorCode.INEXISTENT_FILE, f"missing attachment file {uuid}") from exc

    def remove(self, uuid: str, *, content_type: int = _ANY) -> None:
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

    def exists(self, uuid: str, *, content_type: int = _ANY) -> bool:
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
    """The error a client sees: the operator's log names the path, the answer never does (a
    server's file system layout is no business of an HTTP or DICOM peer)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        logger.error("no space left on the storage area while writing %s: free space or raise its limits", path)
        return DicomVaultError(ErrorCode.FULL_STORAGE, "no space left on the storage area")
    logger.error("cannot write %s: %s (check the storage folder's permissions and disk)", path, exc.strerror)
    return DicomVaultError(ErrorCode.FILE_STORAGE_CANNOT_WRITE, f"cannot write to the storage area: {exc.strerror}")


def _open_for_reading(path: Path, uuid: str) -> BinaryIO:
    """Open a stored file, refusing a symbolic link in its place: the storage area only ever
    writes regular files, so a link planted there (pointing at /etc/passwd, say) is never served."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise DicomVaultError(ErrorCode.INEXISTENT_FILE, f"missing attachment file {uuid}") from exc
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        logger.error("refused to read %s: it is a symbolic link, not a file the storage area wrote", path)
        raise DicomVaultError(ErrorCode.INEXISTENT_FILE, f"missing attachment file {uuid}") from exc
    return os.fdopen(fd, "rb")
