"""The single index writer: one thread that runs every write transaction, grouping the writes
queued meanwhile into one commit.

Each queued write runs under its own SAVEPOINT inside the group's transaction, so one write that
fails (a constraint, a bug) is rolled back alone and reported to its caller, while the others of
the group commit together: one fsync for many instances. Results are delivered only after the
commit succeeded; if the commit itself fails, every write of the group gets the error.
Serialization failures (PostgreSQL) re-run the whole group with backoff and jitter.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from dicomvault.errors import DicomVaultError
from dicomvault.index.transactions import WriteTx

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_GROUP = 64
MAX_RETRIES = 8


class WriteSession(Protocol):
    """What a backend gives the writer thread: transactions, savepoints, a tx object."""

    def begin(self) -> WriteTx: ...
    def savepoint(self) -> None: ...
    def release(self) -> None: ...
    def rollback_to_savepoint(self) -> None: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def is_serialization_failure(self, exc: BaseException) -> bool: ...
    def translate_error(self, exc: BaseException) -> BaseException: ...
    def close(self) -> None: ...


class CommitUncertain(DicomVaultError):
    """The database connection was lost while COMMIT was on its way: the writes may or may not be
    committed. Files written for them must be kept (an orphan file is harmless, a row pointing at a
    removed file would be corruption)."""


@dataclass
class _Job(Generic[T]):
    fn: Callable[[WriteTx], T]
    future: Future[T]


class IndexWriter:
    def __init__(self, session_factory: Callable[[], WriteSession], name: str = "index-writer") -> None:
        self._factory = session_factory
        self._queue: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error

    def submit(self, fn: Callable[[WriteTx], T]) -> Future[T]:
        future: Future[T] = Future()
        if not self._thread.is_alive():
            future.set_exception(RuntimeError("the index writer is stopped"))
            return future
        self._queue.put(_Job(fn, future))
        return future

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        try:
            session = self._factory()
        except BaseException as exc:  # reported to the constructor's caller
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            stop = False
            while not stop:
                first = self._queue.get()
                if first is None:
                    break
                group: list[_Job[Any]] = [first]
                while len(group) < MAX_GROUP:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    group.append(nxt)
                self._run_group(session, group)
        finally:
            session.close()

    def _run_group(self, session: WriteSession, group: list[_Job[Any]]) -> None:
        for attempt in range(MAX_RETRIES + 1):
            outcomes: list[tuple[bool, Any]] = []
            try:
                tx = session.begin()
                for job in group:
                    if job.future.cancelled():
                        outcomes.append((False, None))
                        continue
                    session.savepoint()
                    try:
                        outcomes.append((True, job.fn(tx)))
                        session.release()
                    except BaseException as exc:
                        if session.is_serialization_failure(exc):
                            raise
                        try:
                            session.rollback_to_savepoint()
                            session.release()
                        except Exception:
                            # The database rolled the whole transaction back itself (SQLite does on a
                            # full disk): the group fails with the cause, not with "no such savepoint".
                            raise exc from None
                        outcomes.append((False, session.translate_error(exc)))
                session.commit()
            except BaseException as exc:
                try:
                    session.rollback()
                except Exception:  # the connection may be gone; the next begin() reconnects
                    logger.debug("rollback after a failed group failed too", exc_info=True)
                if session.is_serialization_failure(exc) and attempt < MAX_RETRIES:
                    delay = min(0.5, 0.005 * 2**attempt) * (0.5 + random.random())
                    logger.info("index write group serialization failure, retry %d in %.3fs", attempt + 1, delay)
                    time.sleep(delay)
                    continue
                logger.error("index write group of %d failed: %s", len(group), exc)
                error = session.translate_error(exc)
                for job in group:
                    if not job.future.done():
                        job.future.set_exception(error)
                return
            for job, (ok, value) in zip(group, outcomes, strict=True):
                if job.future.cancelled():
                    continue
                if ok:
                    job.future.set_result(value)
                elif value is not None:
                    job.future.set_exception(value)
            return
