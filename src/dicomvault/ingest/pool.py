"""The ingest worker pool: processes that do the per-instance CPU work off the server's GIL.

`concurrent.futures.ProcessPoolExecutor` costs ~5 ms per call here (its queues pickle the
525 KB payload and hop through two threads). This pool keeps one AF_UNIX socket pair per worker
process and sends the raw bytes as they are: a call is one `sendall` and one `recv`, done by the
calling thread, so the only hand-off is the thread that waits. A worker that dies (killed, out of
memory) fails only its current call, with a clear error, and is replaced.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import queue
import socket
import struct
import threading
from typing import Any

from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.ingest.worker import Prepared, StorageSettings, prepare_instance

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("<QQ")  # len(settings pickle), len(payload)
_REPLY = struct.Struct("<Q")
_BUFFER = 4 * 1024 * 1024


def _recv_exact(sock: socket.socket, size: int) -> bytearray:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise EOFError("peer closed the connection")
        got += n
    return buf


def _worker_main(sock: socket.socket) -> None:
    """Entry point of a worker process: serve requests until the parent closes the socket."""
    import pydicom  # noqa: F401  (import once, before the first request)

    settings_cache: dict[bytes, StorageSettings] = {}
    while True:
        try:
            settings_len, payload_len = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
        except (EOFError, OSError):
            return
        settings_blob = bytes(_recv_exact(sock, settings_len))
        payload = bytes(_recv_exact(sock, payload_len))
        settings = settings_cache.get(settings_blob)
        if settings is None:
            settings = pickle.loads(settings_blob)
            settings_cache[settings_blob] = settings
        try:
            result: Any = prepare_instance(payload, settings)
        except DicomVaultError as exc:
            result = exc
        except Exception as exc:  # reported to the caller as an internal error, with the reason
            result = DicomVaultError(ErrorCode.INTERNAL_ERROR, f"ingest worker failed: {type(exc).__name__}: {exc}")
        reply = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        sock.sendall(_REPLY.pack(len(reply)) + reply)


class _Worker:
    def __init__(self, ctx: Any) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for s in (parent, child):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BUFFER)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER)
        self.process = ctx.Process(target=_worker_main, args=(child,), daemon=True, name="dicomvault-ingest")
        self.process.start()
        child.close()
        self.sock = parent

    def call(self, settings_blob: bytes, payload: bytes) -> Any:
        self.sock.sendall(_HEADER.pack(len(settings_blob), len(payload)))
        self.sock.sendall(settings_blob)
        self.sock.sendall(payload)
        (size,) = _REPLY.unpack(_recv_exact(self.sock, _REPLY.size))
        return pickle.loads(_recv_exact(self.sock, size))

    def stop(self) -> None:
        try:
            self.sock.close()
        finally:
            self.process.join(timeout=5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()


class WorkerPool:
    """`size` worker processes; `prepare(raw, settings)` is thread-safe and blocking (the ingest
    pipeline threads call it)."""

    def __init__(self, size: int | None = None) -> None:
        self.size = size or max(2, os.cpu_count() or 2)
        self._ctx = multiprocessing.get_context("spawn")  # the server already runs threads: never fork
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False
        for _ in range(self.size):
            self._add()

    def _add(self) -> None:
        worker = _Worker(self._ctx)
        with self._lock:
            self._all.append(worker)
        self._idle.put(worker)

    def prepare(self, raw: bytes, settings: StorageSettings) -> Prepared:
        if self._closed:
            raise DicomVaultError(ErrorCode.INTERNAL_ERROR, "the ingest worker pool is shut down")
        blob = pickle.dumps(settings, protocol=pickle.HIGHEST_PROTOCOL)
        worker = self._idle.get()
        try:
            result = worker.call(blob, raw)
        except (OSError, EOFError) as exc:
            logger.error("ingest worker %s died (%s); starting a replacement", worker.process.pid, exc)
            with self._lock:
                self._all.remove(worker)
            worker.stop()
            if not self._closed:
                self._add()
            raise DicomVaultError(ErrorCode.INTERNAL_ERROR, "an ingest worker process died while storing") from exc
        self._idle.put(worker)
        if isinstance(result, BaseException):
            raise result
        assert isinstance(result, Prepared)
        return result

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock:
            workers, self._all = self._all, []
        for worker in workers:
            worker.stop()

    def pids(self) -> list[int]:
        with self._lock:
            return [w.process.pid for w in self._all if w.process.pid is not None]
