"""One import's work on its files: read, classify, upload, and the pixel-less DICOM files kept
for the end (see `classify`: a copy without PixelData is sent only when no complete file of the
same instance turned up). Runs in the importer's worker threads; `importer` drives it.
"""

from __future__ import annotations

import concurrent.futures
import io
import logging
import stat
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from dicomvault.replication.classify import MAX_FILE_SIZE, MAX_ZIP_DEPTH, ZIP_MAGIC, Kind, classify, zip_members
from dicomvault.replication.client import OrthancClient, ServerError
from dicomvault.replication.import_walk import Progress, Unit, file_signature
from dicomvault.replication.options import ImportOptions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Failure:
    path: str  # a zip member is `archive.zip!member`
    reason: str


class Stop(Exception):
    """The target can no longer be used: stop the import (the unit stays to do)."""


@dataclass(frozen=True)
class _Source:
    path: Path
    members: tuple[str, ...] = ()  # zip members, outermost first

    def label(self) -> str:
        return "!".join([str(self.path), *self.members])


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, int] = {}
        self.failures: list[Failure] = []
        self._thread = threading.local()  # a unit is dealt with in one thread: its failures mark it

    def mark(self) -> None:
        self._thread.failed = False

    def marked(self) -> bool:
        return bool(getattr(self._thread, "failed", False))

    def add(self, name: str, amount: int = 1) -> None:
        with self.lock:
            self.values[name] = self.values.get(name, 0) + amount

    def __getitem__(self, name: str) -> int:
        with self.lock:
            return self.values.get(name, 0)

    def fail(self, label: str, reason: str) -> None:
        logger.warning("%s: %s", label, reason)
        self._thread.failed = True
        with self.lock:
            self.failures.append(Failure(label, reason))


class ImportJob:
    def __init__(self, options: ImportOptions, client: OrthancClient, progress: Progress) -> None:
        self.options = options
        self.client = client
        self.progress = progress
        self.counts = _Counts()
        self.stop = threading.Event()
        self.stop_reason = ""
        self._lock = threading.Lock()
        # At most `workers` uploads at once; the importer runs twice as many threads, so files are
        # read and classified while `workers` uploads keep the target busy.
        self._uploads = threading.Semaphore(options.workers)
        # Instances seen with PixelData, as 20-byte digests (a million of them stay ~60 MB).
        self._with_pixels: set[bytes] = set()
        self._deferred: dict[str, list[tuple[_Source, bool]]] = {}  # instance id -> (source, header_only)

    # ------------------------------------------------------------ one unit of the walk

    def process(self, unit: Unit) -> None:
        if self.stop.is_set():
            return
        if unit.problem:
            self.counts.fail(str(unit.path), unit.problem)
            self.progress.complete(unit, None, failed=True)
            return
        signature = file_signature(unit.path)
        self.counts.mark()
        try:
            self._read_unit(unit.path)
        except Stop:
            return
        except Exception as exc:  # a bug must not lose the rest of the import: report the file
            logger.exception("%s: unexpected error", unit.path)
            self.counts.fail(str(unit.path), f"unexpected error: {exc!r}")
        failed = self.counts.marked()
        self.progress.complete(unit, signature, failed=failed)

    def _read_unit(self, path: Path) -> None:
        """Read and deal with one file of the walk (a zip: each of its members)."""
        label = str(path)
        try:
            st = path.stat()
        except OSError as exc:
            self.counts.fail(label, f"cannot read: {exc.strerror or exc}")
            return
        if not stat.S_ISREG(st.st_mode):
            # Never open a FIFO or a device: reading would block or never end.
            self.counts.fail(label, f"not a regular file ({_file_type(st.st_mode)})")
            return
        try:
            with open(path, "rb") as handle:
                if handle.read(4) in ZIP_MAGIC:
                    self._count_read(0)
                    handle.seek(0)
                    self._zip(_Source(path), handle, 0)
                    return
                if st.st_size > MAX_FILE_SIZE:
                    self.counts.fail(label, f"{st.st_size} bytes: larger than any DICOM file imported here")
                    return
                handle.seek(0)
                data = handle.read()
        except OSError as exc:
            self.counts.fail(label, f"cannot read: {exc.strerror or exc}")
            return
        self._handle(_Source(path), data, 0)

    def _count_read(self, size: int) -> None:
        self.counts.add("files")
        self.counts.add("bytes_read", size)

    def _zip(self, source: _Source, handle: IO[bytes], depth: int) -> None:
        label = source.label()
        if depth >= MAX_ZIP_DEPTH:
            self.counts.fail(label, "zip archives nested too deep")
            return
        try:
            for member in zip_members(handle):
                inner = _Source(source.path, (*source.members, member.name))
                if member.data is None:
                    self.counts.fail(inner.label(), member.reason)
                    continue
                self._handle(inner, member.data, depth + 1)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as exc:
            self.counts.fail(label, f"unreadable zip archive: {exc}")

    def _handle(self, source: _Source, data: bytes, depth: int) -> None:
        label = source.label()
        self._count_read(len(data))
        found = classify(data)
        if found.compressed:
            self.counts.add("compressed_decompressed")
        if found.kind is Kind.SUMMARY:
            logger.info("%s: Orthanc JSON summary, skipped", label)
            self.counts.add("summaries_skipped")
        elif found.kind is Kind.OTHER:
            logger.info("%s: %s, skipped", label, found.reason)
            self.counts.add("other_skipped")
        elif found.kind is Kind.INVALID:
            self.counts.fail(label, found.reason)
        elif found.kind is Kind.ZIP:
            self._zip(source, io.BytesIO(found.payload), depth)
        elif found.has_pixel_data:
            with self._lock:
                self._with_pixels.add(_digest(found.instance_id))
                redundant = self._deferred.pop(found.instance_id, [])
            for other, _ in redundant:
                logger.info("%s: pixel-less copy of %s, not sent", other.label(), found.instance_id)
                self.counts.add("until_pixel_data_skipped")
                self.progress.resolved(other.path)
            self._upload(label, found.payload, pixelless=False)
        else:
            with self._lock:
                if _digest(found.instance_id) not in self._with_pixels:
                    self.progress.deferred(source.path)
                    self._deferred.setdefault(found.instance_id, []).append((source, found.header_only))
                    logger.info("%s: DICOM without PixelData: kept for the end of the import", label)
                    return
            logger.info("%s: pixel-less copy of %s, not sent", label, found.instance_id)
            self.counts.add("until_pixel_data_skipped")

    def _upload(self, label: str, payload: bytes, pixelless: bool) -> None:
        try:
            with self._uploads:
                answer = self.client.upload(payload)
        except ServerError as exc:
            if exc.status in (None, 401, 403):
                self._halt(str(exc))
                raise Stop from exc
            self.counts.fail(label, f"refused by the target: {exc}")
            return
        self.counts.add("bytes_sent", len(payload))
        if pixelless:
            self.counts.add("pixelless_sent")
        status = answer.get("Status")
        if status == "AlreadyStored":
            self.counts.add("already_stored")
        else:
            self.counts.add("sent_new")
        logger.info("%s: %s (%s)", label, status, answer.get("ID"))

    def _halt(self, reason: str) -> None:
        with self._lock:
            if not self.stop.is_set():
                self.stop_reason = reason
                self.stop.set()
                logger.error("stopping the import: %s", reason)

    # ------------------------------------------------------------ the end: pixel-less files

    def finish_deferred(self, executor: concurrent.futures.Executor) -> None:
        """Send the pixel-less files whose instance had no complete file in the import."""
        with self._lock:
            deferred, self._deferred = self._deferred, {}
        jobs = [
            executor.submit(self._send_deferred, instance, source, header_only)
            for instance, sources in sorted(deferred.items())
            for source, header_only in sources
        ]
        for job in concurrent.futures.as_completed(jobs):
            job.result()

    def _send_deferred(self, instance: str, source: _Source, header_only: bool) -> None:
        if self.stop.is_set():
            return
        label = source.label()
        try:
            if self.progress.resuming and self._target_has(instance):
                # The complete file went in a previous run of this import: this copy adds nothing.
                self.counts.add("until_pixel_data_skipped" if header_only else "already_stored")
                self.progress.resolved(source.path)
                return
            data = _reread(source)
        except Stop:
            return
        except (OSError, ValueError) as exc:
            self.counts.fail(label, f"cannot read again: {exc}")
            return
        found = classify(data)
        if found.kind is not Kind.DICOM:
            self.counts.fail(label, "changed during the import")
            return
        logger.info("%s: no complete copy of %s in the import: sending it without PixelData", label, instance)
        self.counts.mark()
        try:
            self._upload(label, found.payload, pixelless=True)
        except Stop:
            return
        if not self.counts.marked():
            self.progress.resolved(source.path)

    def _target_has(self, instance: str) -> bool:
        try:
            self.client.request("GET", f"/instances/{instance}", ok_statuses=frozenset({200}))
        except ServerError as exc:
            if exc.status == 404:
                return False
            if exc.status in (None, 401, 403):
                self._halt(str(exc))
                raise Stop from exc
            raise
        return True


def _digest(instance: str) -> bytes:
    return bytes.fromhex(instance.replace("-", ""))


def _reread(source: _Source) -> bytes:
    """The bytes of a file found earlier (a zip member: read again from its archive)."""
    if not source.members:
        return source.path.read_bytes()
    with open(source.path, "rb") as handle:
        data = _member(handle, source.members[0])
    for member in source.members[1:]:
        data = _member(io.BytesIO(classify(data).payload), member)
    return data


def _member(archive: IO[bytes], name: str) -> bytes:
    try:
        for item in zip_members(archive):
            if item.name == name and item.data is not None:
                return item.data
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        raise ValueError(f"unreadable zip archive: {exc}") from exc
    raise ValueError(f"zip member {name} is gone")


def _file_type(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "folder"),
    ):
        if test(mode):
            return name
    return "special file"
