"""`ArchiveJob`: an asynchronous zip archive (Orthanc's "Archive" job), written to a temporary file
step by step and served as the job's output `archive` (`GET /jobs/{id}/archive`).

The zip is the one a synchronous archive streams (`find.archive.stream`, same layout and bytes); a
step writes the next piece of it. Paused, the job keeps its place (the stream is only suspended);
canceled, failed or resubmitted, the partial file is deleted. The file lives until the engine
forgets the job (`JobsHistorySize`).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.find.archive import ArchiveEntry, ArchiveInterrupted, SeriesFolder, series_entries, stream
from dicomvault.index.database import Index
from dicomvault.index.transactions import ReadTx
from dicomvault.jobs.job import Job, JobOutput, StepOutcome, StopReason
from dicomvault.storage.accessor import StorageAccessor

logger = logging.getLogger(__name__)

_MB = 1024 * 1024


class ArchiveJob(Job):
    job_type = "Archive"

    def __init__(
        self,
        index: Index,
        accessor: StorageAccessor,
        folders: Sequence[SeriesFolder],
        label: str,
        filename: str = "archive.zip",
        description: str = "REST API",
        temporary_directory: Path | None = None,
    ) -> None:
        self._index = index
        self._accessor = accessor
        self._folders = list(folders)
        self._label = label
        self._filename = filename
        self._description = description
        self._directory = temporary_directory
        self._lock = threading.Lock()
        self._pieces: Iterator[bytes] | None = None
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self._done = False
        self._instances = 0
        self._uncompressed = 0
        self._files_written = 0
        self._bytes_in = 0
        self._archive_size = 0
        self._measure()

    def _measure(self) -> None:
        """The archive's instance count and uncompressed size, as the index holds them now."""

        def read(tx: ReadTx) -> tuple[int, int]:
            count = size = 0
            for folder in self._folders:
                entries = series_entries(tx, folder)
                count += len(entries)
                size += sum(e.file.uncompressed_size for e in entries)
            return count, size

        self._instances, self._uncompressed = self._index.read(read)

    def start(self) -> None:
        if self._pieces is not None:
            return  # resumed after a pause: carry on where the stream stopped
        fd, name = tempfile.mkstemp(prefix="dicomvault-archive-", suffix=".zip", dir=self._directory)
        self._file = os.fdopen(fd, "wb")
        self._path = Path(name)
        self._pieces = stream(self._index, self._accessor, self._folders, self._label, self._count)

    def _count(self, entry: ArchiveEntry) -> None:
        with self._lock:
            self._files_written += 1
            self._bytes_in += entry.file.uncompressed_size

    def step(self) -> StepOutcome:
        assert self._pieces is not None and self._file is not None
        try:
            piece = next(self._pieces, None)
        except ArchiveInterrupted as exc:
            raise DicomVaultError(ErrorCode.INEXISTENT_FILE, f"archive {self._label}: {exc}") from exc
        if piece is None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            with self._lock:
                self._done = True
            logger.info(
                "archive job %s: %d files, %d bytes in %s",
                self._label,
                self._files_written,
                self._archive_size,
                self._path,
            )
            return StepOutcome.SUCCESS
        self._file.write(piece)
        with self._lock:
            self._archive_size += len(piece)
        return StepOutcome.CONTINUE

    def stop(self, reason: StopReason) -> None:
        if reason in (StopReason.CANCELED, StopReason.FAILURE):
            self._discard()

    def reset(self) -> None:
        self._discard()
        with self._lock:
            self._files_written = self._bytes_in = self._archive_size = 0
            self._done = False

    def dispose(self) -> None:
        self._discard()

    def _discard(self) -> None:
        if self._pieces is not None:
            close = getattr(self._pieces, "close", None)
            if close is not None:
                close()
        self._pieces = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path = None

    def progress(self) -> float:
        with self._lock:
            if self._done:
                return 1.0
            if self._uncompressed == 0:
                return 0.0
            # The zip's central directory is written last: never claim 100% before it is.
            return min(self._bytes_in / self._uncompressed, 0.99)

    def content(self) -> dict[str, Any]:
        with self._lock:
            size = self._archive_size
        # Orthanc 1.10.1 writes the two byte counts as strings, and the MB figures as integers.
        return {
            "Description": self._description,
            "InstancesCount": self._instances,
            "UncompressedSize": str(self._uncompressed),
            "UncompressedSizeMB": self._uncompressed // _MB,
            "ArchiveSize": str(size),
            "ArchiveSizeMB": size // _MB,
        }

    def output(self, key: str) -> JobOutput | None:
        if key != "archive" or self._path is None or not self._done:
            return None
        return JobOutput(self._path, "application/zip", self._filename)
