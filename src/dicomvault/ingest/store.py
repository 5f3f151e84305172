"""`Ingest.store(raw, origin) -> StoreResult`: the store pipeline shared by every front end.

Files first, index second: the worker writes the file, then the index writer records it; if
the index refuses (already stored, error), the new file is removed again. The index is the truth:
an orphan file left by a crash is harmless, a row pointing at nothing would be corruption. An
overwritten instance's old file is removed only after the index committed its replacement.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from dicomvault.dicom.parsing import ParsedInstance
from dicomvault.enums import MetadataType, RequestOrigin, ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.index.database import Index
from dicomvault.index.recycling import StorageLimits
from dicomvault.index.transactions import CreateOutcome, WriteTx
from dicomvault.index.writer import CommitUncertain
from dicomvault.ingest.pool import WorkerPool
from dicomvault.ingest.worker import Prepared, StorageSettings
from dicomvault.model import FileInfo, StoreResult, StoreStatus
from dicomvault.storage.accessor import StorageAccessor

logger = logging.getLogger(__name__)

PIPELINE_THREADS = 16


@dataclass(frozen=True)
class Origin:
    """Who sent an instance (recorded as the instance metadata Orthanc keeps)."""

    request_origin: RequestOrigin = RequestOrigin.UNKNOWN
    remote_ip: str | None = None
    remote_aet: str = ""
    called_aet: str | None = None
    http_username: str | None = None


def now_iso(clock: Callable[[], float] = time.time) -> str:
    """Orthanc's timestamp format, UTC: `20261122T205248`."""
    return datetime.fromtimestamp(clock(), UTC).strftime("%Y%m%dT%H%M%S")


def expected_instances(parsed: ParsedInstance) -> int | None:
    """Orthanc's expected number of instances of a series, from the series' main tags."""
    tags = dict(parsed.main_tags[ResourceType.SERIES])

    def product(a: int, b: int) -> int | None:
        try:
            value = int(tags[a]) * int(tags[b])
        except (KeyError, ValueError):
            return None
        return value if value > 0 else None

    for a, b in ((0x00201002, 0x00200105), (0x00541081, 0x00540101)):
        if a in tags and b in tags:
            return product(a, b)
    if 0x00181090 in tags:
        try:
            value = int(tags[0x00181090])
        except ValueError:
            return None
        return value if value > 0 else None
    return None


def instance_metadata(parsed: ParsedInstance, origin: Origin, now: str) -> dict[int, str]:
    meta: dict[int, str] = {
        MetadataType.INSTANCE_RECEPTION_DATE: now,
        MetadataType.INSTANCE_REMOTE_AET: origin.remote_aet,
        MetadataType.INSTANCE_ORIGIN: origin.request_origin.label,
        MetadataType.INSTANCE_TRANSFER_SYNTAX: parsed.transfer_syntax,
    }
    if origin.remote_ip is not None:
        meta[MetadataType.INSTANCE_REMOTE_IP] = origin.remote_ip
    if origin.called_aet is not None:
        meta[MetadataType.INSTANCE_CALLED_AET] = origin.called_aet
    if origin.http_username is not None:
        meta[MetadataType.INSTANCE_HTTP_USERNAME] = origin.http_username
    if parsed.sop_class_uid:
        meta[MetadataType.INSTANCE_SOP_CLASS_UID] = parsed.sop_class_uid
    tags = dict(parsed.main_tags[ResourceType.INSTANCE])
    index = tags.get(0x00200013, tags.get(0x00541330))
    if index is not None:
        meta[MetadataType.INSTANCE_INDEX_IN_SERIES] = index
    if parsed.pixel_data_offset is not None:
        meta[MetadataType.INSTANCE_PIXEL_DATA_OFFSET] = str(parsed.pixel_data_offset)
    return meta


# Runs in the store's write transaction after an instance was stored (not for AlreadyStored):
# the stability monitor's hook (CompletedSeries, unstable resources).
AfterStore = Callable[[WriteTx, ParsedInstance, str], None]


class Ingest:
    def __init__(
        self,
        index: Index,
        accessor: StorageAccessor,
        settings: StorageSettings,
        workers: WorkerPool,
        overwrite: bool = False,
        limits: StorageLimits | None = None,
        clock: Callable[[], float] = time.time,
        after_store: AfterStore | None = None,
    ) -> None:
        self._index = index
        self._accessor = accessor
        self._settings = settings
        self._workers = workers
        self._overwrite = overwrite
        self._limits = limits if limits is not None and limits.active else None
        self._clock = clock
        self._after_store = after_store
        # Enough pipeline threads for many uploads to be in flight at once (their index writes
        # then share commits); each mostly waits on a worker process or on the index writer.
        self._threads = ThreadPoolExecutor(max_workers=PIPELINE_THREADS, thread_name_prefix="ingest")

    def close(self) -> None:
        self._threads.shutdown(wait=True)

    async def store(self, raw: bytes, origin: Origin) -> StoreResult:
        # The whole pipeline runs on one pipeline thread, so an upload costs the event loop a
        # single hand-off and a single wake-up (measured: cheaper than awaiting each step).
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, self.store_sync, raw, origin)

    def store_sync(self, raw: bytes, origin: Origin) -> StoreResult:
        """The pipeline, blocking: for the pipeline threads and for callers on plain threads (the
        DICOM server)."""
        prepared = self._workers.prepare(raw, self._settings)
        try:
            outcome = self._index.write(self._index_write(prepared, origin))
        except CommitUncertain:
            logger.warning(
                "instance %s: file %s kept, the index may hold it", prepared.parsed.instance_id, prepared.file.uuid
            )
            raise
        except BaseException:
            self._discard(prepared.file)
            raise
        return self._finish(prepared, outcome)

    def _index_write(self, prepared: Prepared, origin: Origin) -> Callable[[WriteTx], CreateOutcome]:
        now = now_iso(self._clock)
        parsed = prepared.parsed
        meta = instance_metadata(parsed, origin, now)
        expected = expected_instances(parsed)

        def write(tx: WriteTx) -> CreateOutcome:
            try:
                outcome = tx.create_instance(parsed, prepared.file, meta, now, self._overwrite, expected, self._limits)
            except ValueError as exc:
                raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, str(exc)) from exc
            if outcome.stored and self._after_store is not None:
                self._after_store(tx, parsed, now)
            return outcome

        return write

    def _finish(self, prepared: Prepared, outcome: CreateOutcome) -> StoreResult:
        parsed = prepared.parsed
        if not outcome.stored:
            self._discard(prepared.file)
            status = StoreStatus.ALREADY_STORED
        else:
            for old in outcome.replaced:
                self._discard(old)
            status = StoreStatus.SUCCESS
        logger.debug("instance %s: %s", parsed.instance_id, status.value)
        return StoreResult(status, parsed.instance_id, parsed.patient_id, parsed.study_id, parsed.series_id)

    def _discard(self, info: FileInfo) -> None:
        try:
            self._accessor.remove(info)
        except Exception:
            # An orphan file is harmless (the index does not reference it); `check` lists it.
            logger.warning("could not remove the unreferenced attachment %s", info.uuid, exc_info=True)
