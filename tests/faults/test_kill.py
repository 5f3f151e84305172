"""SIGKILL of a real `dicomvault serve` during ingest (issue 9): 4 clients upload 2,000 distinct
instances while 2 delete (instances, series, studies of what was uploaded) and 2 read; the server
is killed at moments drawn from a seeded `random.Random` (a number of answered uploads plus a random
delay, so wherever the server happens to be) and restarted; clients send again what got no answer.

After each kill, with the server down: the index and the folder (read directly) hold no missing or
corrupt file and a whole hierarchy, every upload answered 200 and not deleted is there with its exact
bytes, every delete answered 200 is gone; `dicomvault check` agrees (orphans allowed), `--repair`
removes them and a second run exits 0. At the end, through the API: the listing is exactly what was
acknowledged minus what was deleted, every listed file reads completely with the uploaded bytes, the
sizes add up to /statistics, deleted resources answer 404, /changes is strictly increasing.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faults.integrity import (
    Stored,
    check_and_repair,
    check_api_files,
    check_changes,
    check_clean,
    inspect,
    inspect_sqlite,
)
from tests.faults.workload import Item, make_item, mixed_side, process_tree
from tests.postgres import PostgresCluster
from tests.servers import RunningServer

SEED = 20260909
KILLS = 5
PATIENTS, STUDIES, SERIES, PER_SERIES = 20, 2, 5, 10  # 2,000 instances
UPLOADERS, DELETERS, READERS = 4, 2, 2
DELETED_SHARE = 0.2  # deleters stop once this share of the instances is deleted


def build_series(rng: random.Random) -> list[list[Item]]:
    """The instances, grouped by series (each series is uploaded in order by one client)."""
    return [
        [make_item("kill", p, st, se, n, mixed_side(rng)) for n in range(1, PER_SERIES + 1)]
        for p in range(PATIENTS)
        for st in range(STUDIES)
        for se in range(SERIES)
    ]


@dataclass
class Run:
    """The server, the clients' shared journal, and the kill cycle."""

    server: RunningServer
    inspect: Callable[[], Stored]
    series: list[list[Item]]
    rng: random.Random
    up: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    generation: int = 0
    acked: dict[str, Item] = field(default_factory=dict)  # uploads answered 200
    gone: set[str] = field(default_factory=set)  # instances of deletes answered 200
    gone_resources: list[tuple[str, str]] = field(default_factory=list)
    deleting: set[str] = field(default_factory=set)  # instances of deletes in flight
    complete: list[int] = field(default_factory=list)  # series whose every upload was answered
    failures: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    orphans: int = 0

    def __post_init__(self) -> None:
        self._local = threading.local()
        self.total = sum(len(s) for s in self.series)

    # -- requests that survive kills --------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        """A connection pool per thread and per server generation (a killed server's keep-alive
        connections are dead)."""
        held: tuple[int, httpx.Client] | None = getattr(self._local, "client", None)
        if held is None or held[0] != self.generation:
            if held is not None:
                held[1].close()
            held = (self.generation, httpx.Client(base_url=self.server.url, timeout=60.0))
            self._local.client = held
        return held[1]

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[httpx.Response | None, bool]:
        """Send until an answer comes (None when asked to stop); True if a try got no answer."""
        unanswered = False
        while not self.stop.is_set():
            self.up.wait()
            generation = self.generation
            try:
                return self._client().request(method, path, **kwargs), unanswered
            except httpx.TransportError as exc:
                unanswered = True
                self.counts["unanswered"] += 1
                if self.up.is_set() and self.generation == generation:
                    self.failures.append(f"no answer from a running server: {exc!r}")
                    time.sleep(0.1)
        return None, unanswered

    # -- clients --------------------------------------------------------------------------------------------

    def uploader(self, number: int) -> None:
        for index in range(number, len(self.series), UPLOADERS):
            for item in self.series[index]:
                answer, _ = self.call("POST", "/instances", content=item.data)
                if answer is None:
                    return
                if answer.status_code != 200 or answer.json().get("ID") != item.instance_id:
                    self.failures.append(f"upload {item.instance_id}: {answer.status_code} {answer.text[:300]}")
                    continue
                with self.lock:
                    self.acked[item.instance_id] = item
                    self.counts["uploads answered 200"] += 1
            with self.lock:
                self.complete.append(index)

    def _pick_deletion(self, rng: random.Random) -> tuple[str, str, set[str]] | None:
        """A resource all of whose uploads were answered, none of it deleted or being deleted."""
        live = [s for s in self.complete if any(i.instance_id not in self.gone for i in self.series[s])]
        free = [s for s in live if not any(i.instance_id in self.deleting for i in self.series[s])]
        if not free:
            return None
        chosen = self.series[rng.choice(free)]
        roll = rng.random()
        if roll < 0.5:
            item = rng.choice([i for i in chosen if i.instance_id not in self.gone])
            return "instances", item.instance_id, {item.instance_id}
        if roll < 0.8:
            return "series", chosen[0].series_id, {i.instance_id for i in chosen} - self.gone
        # A whole study, if each of its series was uploaded completely and none is being deleted.
        study = [s for s in range(len(self.series)) if self.series[s][0].study_id == chosen[0].study_id]
        if not all(s in self.complete for s in study):
            return None
        members = {i.instance_id for s in study for i in self.series[s]} - self.gone
        if members & self.deleting:
            return None
        return "studies", chosen[0].study_id, members

    def deleter(self, number: int) -> None:
        rng = random.Random(SEED + 100 + number)
        while not self.stop.is_set():
            time.sleep(rng.uniform(0.005, 0.03))
            with self.lock:
                if len(self.gone) >= DELETED_SHARE * self.total:
                    return
                picked = self._pick_deletion(rng)
                if picked is None:
                    continue
                level, target, members = picked
                self.deleting |= members
            answer, unanswered = self.call("DELETE", f"/{level}/{target}")
            with self.lock:
                self.deleting -= members
                if answer is None:
                    return
                # 404 after a try that got no answer: that try deleted it before the kill.
                if answer.status_code == 200 or (answer.status_code == 404 and unanswered):
                    self.gone |= members
                    self.gone_resources.append((level, target))
                    self.counts[f"deletes of {level}"] += 1
                else:
                    self.failures.append(f"DELETE {level}/{target}: {answer.status_code} {answer.text[:300]}")

    def reader(self, number: int) -> None:
        rng = random.Random(SEED + 200 + number)
        step = 0
        while not self.stop.is_set():
            step += 1
            if step % 4 == 0:
                patient = f"killP{rng.randrange(PATIENTS)}"
                find = {"Level": rng.choice(("Study", "Series")), "Query": {"PatientID": patient}}
                answer, _ = self.call("POST", "/tools/find", json=find)
                if answer is not None and answer.status_code != 200:
                    self.failures.append(f"find {find}: {answer.status_code} {answer.text[:300]}")
                self.counts["finds"] += 1
                continue
            with self.lock:
                candidates = sorted(set(self.acked) - self.gone - self.deleting)
            if not candidates:
                time.sleep(0.01)
                continue
            item = self.acked[rng.choice(candidates)]
            answer, _ = self.call("GET", f"/instances/{item.instance_id}/file")
            if answer is None:
                return
            self.counts["file reads"] += 1
            if answer.status_code == 200:
                if answer.content != item.data:
                    self.failures.append(f"GET file {item.instance_id}: other bytes than uploaded")
            elif not (answer.status_code == 404 and item.instance_id in self.gone | self.deleting):
                self.failures.append(f"GET file {item.instance_id}: {answer.status_code} {answer.text[:300]}")

    # -- the kill cycle ---------------------------------------------------------------------------------------

    def kill_and_restart(self) -> None:
        proc = self.server.proc
        assert proc is not None
        self.up.clear()  # before the kill: every request that then fails was cut by it
        tree = process_tree(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        _wait_gone(tree[1:])  # the ingest workers notice their parent died and exit
        self.counts["kills"] += 1
        stored = self.inspect()
        self.verify_offline(stored)
        self.orphans += check_and_repair(self.server.config_path, stored)
        self.server.start()
        stats = httpx.get(self.server.url + "/statistics", timeout=30).json()
        assert stats["CountInstances"] == len(stored.instances)
        self.generation += 1
        self.up.set()

    def verify_offline(self, stored: Stored) -> None:
        """The index and folder after a kill, against what the clients were told."""
        assert stored.damaged == []
        with self.lock:
            acked, gone, deleting = dict(self.acked), set(self.gone), set(self.deleting)
        known = {i.instance_id: i for s in self.series for i in s}
        assert set(stored.instances) <= set(known), "an instance nobody uploaded"
        lost = set(acked) - gone - deleting - set(stored.instances)
        assert lost == set(), f"{len(lost)} uploads answered 200 are not in the index"
        assert gone & set(stored.instances) == set(), "deleted instances are back"
        storage = Path(self.server.base / "storage")
        for public, uuid in stored.instances.items():
            data = (storage / uuid[:2] / uuid[2:4] / uuid).read_bytes()
            assert data == known[public].data, f"instance {public}: other bytes than uploaded"


def _wait_gone(pids: list[int], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                break
            if state in ("Z", "X"):
                break
            time.sleep(0.02)
        else:
            raise AssertionError(f"ingest worker {pid} still running {timeout}s after its server was killed")


@contextlib.contextmanager
def threads(run: Run) -> Iterator[list[threading.Thread]]:
    uploaders = [threading.Thread(target=run.uploader, args=(n,), name=f"up{n}") for n in range(UPLOADERS)]
    others = [threading.Thread(target=run.deleter, args=(n,), name=f"del{n}") for n in range(DELETERS)]
    others += [threading.Thread(target=run.reader, args=(n,), name=f"read{n}") for n in range(READERS)]
    for thread in uploaders + others:
        thread.start()
    try:
        yield uploaders
    finally:
        run.stop.set()
        run.up.set()  # release anyone waiting for a server
        for thread in uploaders + others:
            thread.join(timeout=120)


def kill_run(server: RunningServer, inspect_index: Callable[[], Stored]) -> Run:
    rng = random.Random(SEED)
    run = Run(server, inspect_index, build_series(rng), rng)
    moments = sorted(rng.sample(range(50, run.total - 50), KILLS))
    server.start()
    run.up.set()
    with threads(run) as uploaders:
        for moment in moments:
            while len(run.acked) < moment and any(t.is_alive() for t in uploaders) and not run.failures:
                time.sleep(0.002)
            assert not run.failures, run.failures[:10]
            time.sleep(rng.uniform(0.0, 0.15))
            run.kill_and_restart()
        for thread in uploaders:
            thread.join()
    assert run.failures == [], run.failures[:10]
    return run


def verify_final(run: Run, http: httpx.Client) -> dict[str, Any]:
    url = run.server.url
    files = check_api_files(http, url)
    expected = set(run.acked) - run.gone
    assert set(run.acked) == {i.instance_id for s in run.series for i in s}, "every upload ends answered"
    assert set(files) == expected
    assert all(files[public] == run.acked[public].data for public in expected)
    for level, target in run.gone_resources:
        assert http.get(f"{url}/{level}/{target}").status_code == 404, (level, target)
    changes = check_changes(http, url)
    return {
        "instances uploaded (answered 200)": len(run.acked),
        "verified present with their bytes": len(expected),
        "deleted and verified gone": len(run.gone),
        "changes": len(changes),
        **run.counts,
        "orphans found after kills": run.orphans,
    }


def verify_stopped(run: Run) -> None:
    run.server.stop()
    stored = run.inspect()
    assert stored.damaged == [] and set(stored.instances) == set(run.acked) - run.gone
    assert stored.orphans == [], "a clean stop leaves no orphan"
    check_clean(run.server.config_path)


def run_and_verify(server: RunningServer, inspect_index: Callable[[], Stored], backend: str) -> None:
    """The kill cycle, then the final checks through the API and with the server stopped."""
    try:
        run = kill_run(server, inspect_index)
        with httpx.Client(timeout=60) as http:
            figures = verify_final(run, http)
        verify_stopped(run)
    finally:
        server.stop()
    print(f"kill test ({backend}):", figures)
    assert run.counts["kills"] >= KILLS


@pytest.mark.slow
def test_sigkill_during_ingest_sqlite(tmp_path: Path) -> None:
    server = RunningServer(tmp_path / "srv", {})
    storage = server.base / "storage"
    run_and_verify(server, lambda: inspect_sqlite(storage / "dicomvault.db", storage), "SQLite")


@pytest.mark.slow
def test_sigkill_during_ingest_postgresql(
    tmp_path: Path, postgres_cluster: PostgresCluster, postgres_database: str
) -> None:
    server = RunningServer(tmp_path / "srv", {"PostgreSQL": postgres_cluster.section(postgres_database)})
    storage = server.base / "storage"

    def inspect_index() -> Stored:
        with postgres_cluster.connect(postgres_database) as conn:
            return inspect(conn, storage)

    run_and_verify(server, inspect_index, "PostgreSQL")
