"""The copying machinery of `replicate`: copying one instance from a source to a target (its
outcome, never an exception), and the ordered pipeline that runs copies on a thread pool while
handing their outcomes back *in submission order*.

Why in order: the replication cursor (a `/changes` sequence number) may only be persisted up to
the last change whose instance, and every earlier one, is done. A pipeline that reports outcomes
in order makes the persisted cursor "the key of the last outcome handed back", so a kill at any
moment leaves no gap behind the cursor (what lies after it is copied again, idempotently:
AlreadyStored).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from dicomvault.replication.client import OrthancClient, ServerError

logger = logging.getLogger(__name__)

COPIED = "copied"
ALREADY_STORED = "already-stored"
VANISHED = "vanished"  # deleted at the source between the listing and the download
FAILED = "failed"
SKIPPED = "skipped"  # not selected by the filters


@dataclass(frozen=True)
class Outcome:
    instance: str
    kind: str  # COPIED, ALREADY_STORED, VANISHED, FAILED or SKIPPED
    size: int = 0
    reason: str = ""


@dataclass(frozen=True)
class Gates:
    """How many downloads and how many uploads may run at once. With twice as many threads as
    uploads, the next files are downloaded while `uploads` uploads keep the target busy (one
    thread doing both in turn leaves the target idle during every download)."""

    downloads: threading.Semaphore
    uploads: threading.Semaphore

    @classmethod
    def of(cls, workers: int) -> Gates:
        return cls(threading.Semaphore(workers), threading.Semaphore(workers))


def copy_instance(source: OrthancClient, target: OrthancClient, instance: str, gates: Gates | None = None) -> Outcome:
    """Download one instance from `source` and upload it to `target`. Transient errors were
    already retried by the clients; what is left is an outcome, logged at warning level when the
    instance could not be copied."""
    download = gates.downloads if gates is not None else contextlib.nullcontext()
    upload = gates.uploads if gates is not None else contextlib.nullcontext()
    try:
        with download:
            data = source.instance_file(instance)
    except ServerError as exc:
        logger.warning("instance %s not copied: cannot download it from the source: %s", instance, exc)
        return Outcome(instance, FAILED, reason=f"download: {exc}")
    if data is None:
        logger.warning("instance %s was deleted from the source %s meanwhile: skipped", instance, source.url)
        return Outcome(instance, VANISHED)
    try:
        with upload:
            answer = target.upload(data)
    except ServerError as exc:
        logger.warning("instance %s not copied: the target refused it: %s", instance, exc)
        return Outcome(instance, FAILED, len(data), f"upload: {exc}")
    if answer.get("ID") != instance:
        # Public ids are SHA-1 of the UIDs on every Orthanc-compatible server: a different id
        # means the target changed the file (e.g. a Lua script or an anonymizing plugin).
        logger.warning("instance %s was stored by the target as %s", instance, answer.get("ID"))
    kind = ALREADY_STORED if answer.get("Status") == "AlreadyStored" else COPIED
    logger.info("instance %s: %s (%d bytes)", instance, kind, len(data))
    return Outcome(instance, kind, len(data))


class OrderedPipeline:
    """Copies running on `pool`, at most `window` at a time, whose outcomes reach `on_done` in the
    order they were added (`on_done(key, outcome)`, in the caller's thread). Entries without an
    instance (a change that is not a new instance, the end of a page) pass through in order too,
    so that their key can advance the cursor."""

    def __init__(
        self,
        pool: ThreadPoolExecutor,
        window: int,
        copy: Callable[[str], Outcome],
        on_done: Callable[[int, Outcome | None], None],
    ) -> None:
        self._pool = pool
        self._window = max(1, window)
        self._copy = copy
        self._on_done = on_done
        self._pending: deque[tuple[int, Future[Outcome] | None]] = deque()
        self._running: set[Future[Outcome]] = set()

    def add(self, key: int, instance: str | None) -> None:
        future = None if instance is None else self._pool.submit(self._copy, instance)
        self._pending.append((key, future))
        if future is not None:
            self._running.add(future)
        self._running = {f for f in self._running if not f.done()}
        while len(self._running) >= self._window:
            done, _ = wait(self._running, return_when=FIRST_COMPLETED)
            self._running -= done
        self._harvest()

    def drain(self) -> None:
        """Wait for every copy added so far and hand back every outcome."""
        wait(self._running)
        self._running.clear()
        self._harvest()

    def _harvest(self) -> None:
        while self._pending:
            key, future = self._pending[0]
            if future is not None and not future.done():
                return
            self._pending.popleft()
            self._on_done(key, None if future is None else future.result())
