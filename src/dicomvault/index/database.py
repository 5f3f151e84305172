"""`Index`: the one entry point to the index. Every operation runs inside `read(fn)` or
`write(fn)`; `fn` receives a `ReadTx` or a `WriteTx`.

Reads run in the caller's thread on a per-thread connection, inside a transaction (a consistent
snapshot); writes are queued to the single writer thread (`IndexWriter`), which groups them.
A thread's reader is closed once the thread has ended (thread pools retire idle threads and start
new ones: without this every retired thread would leave an open connection and its page cache).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

from dicomvault.index.transactions import ReadTx, WriteTx
from dicomvault.index.writer import IndexWriter, WriteSession

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ReadSession(Protocol):
    def begin(self) -> ReadTx: ...
    def end(self) -> None: ...
    def close(self) -> None: ...


class Backend(Protocol):
    """What a database backend provides to `Index` (SQLite today, PostgreSQL later)."""

    description: str

    def open_reader(self) -> ReadSession: ...
    def open_writer(self) -> WriteSession: ...
    def close(self) -> None: ...


class Index:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._local = threading.local()
        self._readers: dict[threading.Thread, ReadSession] = {}
        self._readers_lock = threading.Lock()
        self._writer = IndexWriter(backend.open_writer)
        self._closed = False

    def _reader(self) -> ReadSession:
        session: ReadSession | None = getattr(self._local, "session", None)
        if session is None:
            session = self.backend.open_reader()
            self._local.session = session
            with self._readers_lock:
                ended = [thread for thread in self._readers if not thread.is_alive()]
                retired = [self._readers.pop(thread) for thread in ended]
                self._readers[threading.current_thread()] = session
            for old in retired:
                _close_quietly(old)
        return session

    def read(self, fn: Callable[[ReadTx], T]) -> T:
        session = self._reader()
        tx = session.begin()
        try:
            return fn(tx)
        finally:
            session.end()

    def write(self, fn: Callable[[WriteTx], T]) -> T:
        return self._writer.submit(fn).result()

    def submit_write(self, fn: Callable[[WriteTx], T]) -> Future[T]:
        return self._writer.submit(fn)

    async def write_async(self, fn: Callable[[WriteTx], T]) -> T:
        return await asyncio.wrap_future(self._writer.submit(fn))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        with self._readers_lock:
            sessions = list(self._readers.values())
            self._readers.clear()
        for session in sessions:
            _close_quietly(session)  # a reader of another thread may be mid-use at shutdown
        self.backend.close()

    def open_readers(self) -> int:
        """How many per-thread read sessions are open (the threads that read and are alive, plus
        those ended since the last new reader)."""
        with self._readers_lock:
            return len(self._readers)

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _close_quietly(session: ReadSession) -> None:
    try:
        session.close()
    except Exception:
        logger.debug("closing a reader failed", exc_info=True)
