"""The load generator: client processes that upload, download and query, and what they measure.

Each client is a separate process (spawned, so nothing of the parent is shared) with one
keep-alive connection (`bench.client`). Processes rather than threads keep the clients from
competing for one GIL, so four clients are four independent request streams. Every client loads
its data and opens its connection first, then waits at a starting line (`_Start`); the timed part starts when all
of them (and the parent) have reached it. Each client reports its wall-clock interval
(`time.monotonic`, comparable between processes on Linux), its own CPU time (to check that the
load generator is not the bottleneck) and per-request latencies.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.client import connect
from bench.data import Pack, load_items

_CTX = multiprocessing.get_context("spawn")


@dataclass(frozen=True)
class ClientResult:
    started: float
    ended: float
    cpu_seconds: float
    requests: int
    failures: int
    bytes: int
    latencies: list[float]
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadResult:
    """What all the clients of one measurement did together."""

    started: float
    ended: float
    clients: list[ClientResult]

    @property
    def wall(self) -> float:
        return self.ended - self.started

    @property
    def requests(self) -> int:
        return sum(c.requests for c in self.clients)

    @property
    def failures(self) -> int:
        return sum(c.failures for c in self.clients)

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self.clients)

    @property
    def client_cpu(self) -> float:
        return sum(c.cpu_seconds for c in self.clients)

    @property
    def latencies(self) -> list[float]:
        return [x for c in self.clients for x in c.latencies]


def _ingest_task(kind: str, url: str, pack_path: str, entries: list[tuple[int, int]], start: _Start, out: Any) -> None:
    items = load_items(Path(pack_path), entries)
    failures = 0
    notes: dict[str, Any] = {}
    latencies: list[float] = []
    conn = connect(kind, url)
    try:
        conn.request("GET", "/system")  # opens the keep-alive connection before timing
        start.wait()
        started, cpu = time.monotonic(), time.process_time()
        for data in items:
            t = time.perf_counter()
            answer = conn.request("POST", "/instances", data, "application/dicom")
            latencies.append(time.perf_counter() - t)
            # Checked by the byte pattern: parsing each answer would cost the client more than the request.
            if answer.status != 200 or b'"Success"' not in answer.body:
                failures += 1
                notes.setdefault("first_failure", f"{answer.status} {answer.body[:300]!r}")
        ended, cpu = time.monotonic(), time.process_time() - cpu
    finally:
        conn.close()
    out.put(ClientResult(started, ended, cpu, len(items), failures, sum(len(d) for d in items), latencies, notes))


def _download_task(kind: str, url: str, ids: list[str], start: _Start, out: Any) -> None:
    failures = total = 0
    latencies: list[float] = []
    conn = connect(kind, url)
    try:
        conn.request("GET", "/system")
        start.wait()
        started, cpu = time.monotonic(), time.process_time()
        for public_id in ids:
            t = time.perf_counter()
            status, size = conn.download(f"/instances/{public_id}/file")
            latencies.append(time.perf_counter() - t)
            total += size
            if status != 200:
                failures += 1
        ended, cpu = time.monotonic(), time.process_time() - cpu
    finally:
        conn.close()
    out.put(ClientResult(started, ended, cpu, len(ids), failures, total, latencies))


class _Start:
    """The starting line: each client says it is ready (data loaded, connected), then all of them
    and the parent pass a barrier together. The parent waits for the "ready" messages while
    watching the client processes, so a client that fails while loading is reported at once."""

    def __init__(self, clients: int) -> None:
        self.ready: Any = _CTX.Queue()
        self.barrier = _CTX.Barrier(clients + 1)

    def wait(self) -> None:
        self.ready.put(True)
        self.barrier.wait()


def _failed(procs: list[Any]) -> None:
    dead = [p for p in procs if p.exitcode not in (None, 0)]
    if dead:
        raise RuntimeError(f"a client process failed (exit code {dead[0].exitcode})")


def _run_clients(
    target: Callable[..., None], args_per_client: list[tuple[Any, ...]], on_start: Callable[[], None]
) -> LoadResult:
    """Start one process per argument tuple; `on_start` runs in the parent when timing starts."""
    start = _Start(len(args_per_client))
    out: Any = _CTX.Queue()
    procs = [_CTX.Process(target=target, args=(*args, start, out), daemon=True) for args in args_per_client]
    for p in procs:
        p.start()
    results: list[ClientResult] = []
    try:
        ready = 0
        while ready < len(procs):
            try:
                ready += start.ready.get(timeout=1.0)
            except queue.Empty:
                _failed(procs)
        start.barrier.wait(timeout=60)
        on_start()
        while len(results) < len(procs):
            try:
                results.append(out.get(timeout=1.0))
            except queue.Empty:
                _failed(procs)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
    return LoadResult(min(r.started for r in results), max(r.ended for r in results), results)


def ingest(kind: str, url: str, pack: Pack, clients: int, on_start: Callable[[], None]) -> LoadResult:
    """Upload every instance of `pack` once, dealt round-robin to `clients` processes."""
    shares = [list(pack.entries[i::clients]) for i in range(clients)]
    return _run_clients(_ingest_task, [(kind, url, str(pack.path), share) for share in shares], on_start)


def download(
    kind: str, url: str, ids: list[str], passes: int, clients: int, on_start: Callable[[], None]
) -> LoadResult:
    """`GET /instances/{id}/file` of every id, `passes` times over, shared among `clients` processes."""
    work = [ids[(i + p * 7) % len(ids)] for p in range(passes) for i in range(len(ids))]
    shares = [work[i::clients] for i in range(clients)]
    return _run_clients(_download_task, [(kind, url, share) for share in shares], on_start)


@dataclass(frozen=True)
class Query:
    """One kind of request timed for latency, cycling through several variants (JSON bodies)."""

    name: str
    method: str
    path: str
    bodies: tuple[dict[str, Any] | None, ...]


def _summary(answer: Any) -> dict[str, Any]:
    """What is compared between the servers: the number of answers and, for lists of ids (the
    same on every server: SHA-1 of the DICOM identifiers), a digest of the sorted ids."""
    if not isinstance(answer, list):
        return {"type": type(answer).__name__}
    summary: dict[str, Any] = {"count": len(answer)}
    if all(isinstance(x, str) for x in answer):
        summary["digest"] = hashlib.sha1("\n".join(sorted(answer)).encode()).hexdigest()
    return summary


def _latency_task(kind: str, url: str, query: Query, repeats: int, warmup: int, start: _Start, out: Any) -> None:
    latencies: list[float] = []
    failures = total = 0
    notes: dict[str, Any] = {}
    answers: dict[str, dict[str, Any]] = {}
    bodies = [None if b is None else json.dumps(b).encode() for b in query.bodies]
    content_type = None if bodies[0] is None else "application/json"
    conn = connect(kind, url)
    try:
        conn.request("GET", "/system")
        start.wait()
        # A probe first: a server without this route is reported, not timed.
        probe = conn.request(query.method, query.path, bodies[0], content_type)
        if probe.status != 200:
            notes["unavailable"] = f"HTTP {probe.status}: {probe.body[:200].decode(errors='replace')}"
            now = time.monotonic()
            out.put(ClientResult(now, now, 0.0, 0, 1, 0, [], notes))
            return
        for i, body in enumerate(bodies):
            answers[str(i)] = _summary(json.loads(conn.request(query.method, query.path, body, content_type).body))
        for i in range(warmup):
            conn.request(query.method, query.path, bodies[i % len(bodies)], content_type)
        started, cpu = time.monotonic(), time.process_time()
        for i in range(repeats):
            t = time.perf_counter()
            answer = conn.request(query.method, query.path, bodies[i % len(bodies)], content_type)
            latencies.append(time.perf_counter() - t)
            total += len(answer.body)
            if answer.status != 200:
                failures += 1
        ended, cpu = time.monotonic(), time.process_time() - cpu
    finally:
        conn.close()
    notes["answers"] = answers
    out.put(ClientResult(started, ended, cpu, repeats, failures, total, latencies, notes))


def latency(kind: str, url: str, query: Query, repeats: int, warmup: int, on_start: Callable[[], None]) -> LoadResult:
    """Time `repeats` sequential requests from one client process."""
    return _run_clients(_latency_task, [(kind, url, query, repeats, warmup)], on_start)
