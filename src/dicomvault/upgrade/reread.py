"""The re-read pass of a migration that needs every stored DICOM file parsed again.

Each instance's DICOM attachment is read from the storage area and parsed by the ingest parser
(`dicom/parsing.py: parse_instance`, the same code that indexed it) in worker processes (both
cores; nothing is written to the storage area), and the migrations' `reread` steps store what they
need in the index. Results are committed in batches, each with the cursor (the last internal id
done) in the same transaction: killed at any moment, the next run resumes after the cursor and the
index ends identical to an uninterrupted run. Instances whose file is missing, unreadable or holds
another instance are recorded (table UpgradeProblems, kept across resumptions) and reported.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tqdm import tqdm

from dicomvault.dicom.parsing import ParsedInstance, parse_instance
from dicomvault.enums import FileContentType, GlobalProperty, ResourceType
from dicomvault.errors import DicomVaultError
from dicomvault.index.migrations import Migration, Reread
from dicomvault.index.transactions import WriteTx, file_info_from_row
from dicomvault.model import FileInfo
from dicomvault.storage.accessor import CompressionPolicy, StorageAccessor
from dicomvault.storage.factory import AreaSettings, FilesystemSettings, build_area
from dicomvault.upgrade.connection import MigrationConnection

logger = logging.getLogger(__name__)

PROBLEMS_DDL = (
    "CREATE TABLE IF NOT EXISTS UpgradeProblems("
    "internalId INTEGER PRIMARY KEY, publicId TEXT NOT NULL, uuid TEXT, problem TEXT NOT NULL)"
)
CHUNK = 16  # instances per task sent to a worker process (at most the batch size)
BATCH = 512  # instances per committed transaction
COMMIT_INTERVAL_S = 2.0  # ... or fewer, when that much time went by


@dataclass(frozen=True)
class Problem:
    public_id: str
    uuid: str | None
    problem: str  # "missing: ...", "unreadable: ...", "mismatch: ..."


@dataclass(frozen=True)
class RereadReport:
    instances: int
    reread: int
    problems: tuple[Problem, ...]
    elapsed_s: float
    resumed_from: int  # instances already done when this run started

    @property
    def rate(self) -> float:
        done = self.instances - self.resumed_from
        return done / self.elapsed_s if self.elapsed_s > 0 else 0.0


_Item = tuple[int, str, FileInfo | None]
_Result = tuple[int, str, str | None, ParsedInstance | str]


def _die_with_parent() -> None:
    """Worker initializer: the kernel kills this worker when the upgrade process dies (even by
    SIGKILL), instead of leaving it orphaned."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


@lru_cache(maxsize=4)
def _accessor(area: AreaSettings) -> StorageAccessor:
    # Reading only: the compression policy is for writes; each attachment says how it is stored.
    return StorageAccessor(build_area(area), CompressionPolicy())


def _reread_chunk(area: AreaSettings, default_encoding: str, items: Sequence[_Item]) -> list[_Result]:
    """Worker process: read and parse each instance's file; a problem is a string."""
    accessor = _accessor(area)
    out: list[_Result] = []
    for internal_id, public_id, info in items:
        if info is None:
            out.append((internal_id, public_id, None, "missing: the instance has no DICOM attachment"))
            continue
        try:
            data = accessor.read(info)
        except DicomVaultError as exc:
            kind = (
                "missing" if not accessor.area.exists(info.uuid, content_type=int(info.content_type)) else "unreadable"
            )
            out.append((internal_id, public_id, info.uuid, f"{kind}: {exc.details}"))
            continue
        except OSError as exc:
            out.append((internal_id, public_id, info.uuid, f"unreadable: {exc.strerror or exc}"))
            continue
        try:
            parsed = parse_instance(data, default_encoding)
        except DicomVaultError as exc:
            out.append((internal_id, public_id, info.uuid, f"unreadable: not a valid DICOM file ({exc.details})"))
            continue
        if parsed.instance_id != public_id:
            problem = f"mismatch: the file holds instance {parsed.instance_id}"
            out.append((internal_id, public_id, info.uuid, problem))
            continue
        out.append((internal_id, public_id, info.uuid, parsed))
    return out


def _pending(conn: MigrationConnection, cursor: int, page: int = 2048) -> Iterator[_Item]:
    """Instances after `cursor`, in internal id order, with their DICOM attachment."""
    last = cursor
    while True:
        rows = conn.execute(
            "SELECT r.internalId, r.publicId, a.fileType, a.uuid, a.compressedSize, a.uncompressedSize, "
            "a.compressionType, a.uncompressedMD5, a.compressedMD5 FROM Resources r "
            "LEFT JOIN AttachedFiles a ON a.id = r.internalId AND a.fileType = ? "
            "WHERE r.resourceType = ? AND r.internalId > ? ORDER BY r.internalId LIMIT ?",
            (int(FileContentType.DICOM), int(ResourceType.INSTANCE), last, page),
        ).fetchall()
        if not rows:
            return
        for row in rows:
            info = None if row[3] is None else file_info_from_row(row[2:])
            yield int(row[0]), str(row[1]), info
        last = int(rows[-1][0])


def _chunks(items: Iterator[_Item], size: int) -> Iterator[list[_Item]]:
    chunk: list[_Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def reread_pass(
    conn: MigrationConnection,
    storage: Path | AreaSettings,
    migrations: Sequence[Migration],
    default_encoding: str = "Latin1",
    workers: int | None = None,
    progress: bool = True,
    batch_size: int = BATCH,
) -> RereadReport:
    """Run the `reread` steps of `migrations` on every instance after the persisted cursor. The
    caller has set the "upgrading to N" marker; `conn` is outside any transaction. `storage` is the
    storage folder, or the description of any storage area (an S3 bucket)."""
    steps = [m.reread for m in migrations if m.reread is not None]
    conn.execute(PROBLEMS_DDL)
    tx = WriteTx(conn, conn.dialect)
    cursor = int(tx.global_property(GlobalProperty.DICOMVAULT_UPGRADE_CURSOR) or "0")
    count = "SELECT COUNT(*) FROM Resources WHERE resourceType = ? AND internalId <= ?"
    total = int(conn.execute(count, (int(ResourceType.INSTANCE), 2**62)).fetchone()[0])
    done = int(conn.execute(count, (int(ResourceType.INSTANCE), cursor)).fetchone()[0])
    # Worker processes for the instances left (none: no process is started at all).
    size = min(workers or max(2, os.cpu_count() or 2), max(1, -(-(total - done) // CHUNK)))
    if cursor:
        logger.warning(
            "resuming the re-read of the DICOM files after instance %d (%d of %d done), %d worker processes",
            cursor,
            done,
            total,
            size,
        )
    else:
        logger.warning("re-reading the DICOM files of %d instances, %d worker processes", total, size)
    started = time.monotonic()
    bar = tqdm(
        total=total,
        initial=done,
        unit=" instances",
        desc="re-reading DICOM files",
        file=sys.stderr,
        disable=not progress,
        mininterval=0.5,
        smoothing=0.05,
        dynamic_ncols=True,
    )
    context = multiprocessing.get_context("spawn")
    area = FilesystemSettings(str(storage.resolve()), fsync=False) if isinstance(storage, Path) else storage
    batch: list[_Result] = []
    last_commit = time.monotonic()
    with (
        bar,
        concurrent.futures.ProcessPoolExecutor(
            max_workers=size, mp_context=context, initializer=_die_with_parent
        ) as pool,
    ):
        in_flight: deque[concurrent.futures.Future[list[_Result]]] = deque()
        chunks = _chunks(_pending(conn, cursor), min(CHUNK, batch_size))
        exhausted = False
        while True:
            while not exhausted and len(in_flight) < size * 4:
                chunk = next(chunks, None)
                if chunk is None:
                    exhausted = True
                    break
                in_flight.append(pool.submit(_reread_chunk, area, default_encoding, chunk))
            if not in_flight:
                break
            results = in_flight.popleft().result()
            batch.extend(results)
            bar.update(len(results))
            if len(batch) >= batch_size or time.monotonic() - last_commit >= COMMIT_INTERVAL_S:
                _commit(conn, tx, steps, batch)
                batch = []
                last_commit = time.monotonic()
        if batch:
            _commit(conn, tx, steps, batch)
    problems = tuple(
        Problem(row[0], row[1], row[2])
        for row in conn.execute("SELECT publicId, uuid, problem FROM UpgradeProblems ORDER BY internalId").fetchall()
    )
    elapsed = time.monotonic() - started
    report = RereadReport(total, total - len(problems), problems, elapsed, done)
    logger.info(
        "re-read %d instances in %.1f s (%.0f instances/s), %d problems",
        total - done,
        elapsed,
        report.rate,
        len(problems),
    )
    return report


def _commit(conn: MigrationConnection, tx: WriteTx, steps: Sequence[Reread], batch: list[_Result]) -> None:
    conn.begin()
    try:
        for internal_id, public_id, uuid, outcome in batch:
            if isinstance(outcome, str):
                logger.warning("instance %s (attachment %s): %s", public_id, uuid, outcome)
                conn.execute(
                    "INSERT INTO UpgradeProblems(internalId, publicId, uuid, problem) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(internalId) DO UPDATE SET publicId = excluded.publicId, uuid = excluded.uuid, "
                    "problem = excluded.problem",
                    (internal_id, public_id, uuid, outcome),
                )
                continue
            for step in steps:
                step(tx, internal_id, outcome)
        tx.set_global_property(GlobalProperty.DICOMVAULT_UPGRADE_CURSOR, str(batch[-1][0]))
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
