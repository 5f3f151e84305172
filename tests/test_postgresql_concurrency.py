"""Several `dicomvault serve` processes on one PostgreSQL database and one shared storage folder
(issue 8): concurrent uploads, deletes, finds and listings through all of them end in the expected
state (the same through every server, in the database and on disk); the same-instance race and the
race between deleting a series' last instance and uploading into that series, each forced by a
barrier and repeated; and `"Lock": true` keeping a second server out with exit code 3.

Expectations never come from the code under test: public ids are computed here (SHA-1 of the
identifiers, as Orthanc does), the database and the storage folder are read directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import random
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.dicomgen import Spec, make_bytes
from tests.faults.integrity import read_changes
from tests.faults.workload import Item
from tests.postgres import PostgresCluster
from tests.servers import RunningServer

UID_ROOT = "1.2.826.0.1.3680043.10.1234.77"
DICOM_FILE = 1  # FileContentType.DICOM, Orthanc's value
TIMEOUT = httpx.Timeout(60.0)


def make_item(tag: str, patient: int | str, study: int | str, series: int | str, number: int) -> Item:
    patient_name = patient if isinstance(patient, str) else f"{tag}P{patient}"
    # Short enough for the VR UI (64 characters): one hashed component per level.
    study_uid = f"{UID_ROOT}.{_digits(f'{tag}|{patient_name}|{study}')}"
    series_uid = f"{UID_ROOT}.{_digits(f'{tag}|{patient_name}|{study}|{series}')}"
    sop_uid = f"{series_uid}.{number}"
    # Sizes vary (rows), so a file of the wrong instance would not have the expected size.
    rows = 4 + (number * 7 + len(sop_uid)) % 13
    spec = Spec(
        seed=number,
        patient_id=patient_name,
        patient_name=f"{patient_name}^Test",
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        instance_number=number,
        rows=rows,
        columns=8,
    )
    return Item(patient_name, study_uid, series_uid, sop_uid, make_bytes(spec))


def _digits(text: str) -> str:
    """A UID component from any text (stable across runs, unlike `hash`)."""
    return str(int.from_bytes(hashlib.sha1(text.encode()).digest()[:6], "big"))


@dataclass(frozen=True)
class Tree:
    """The resources expected at the end: every level's ids and every parent's children."""

    patients: frozenset[str]
    studies: frozenset[str]
    series: frozenset[str]
    instances: frozenset[str]
    children: dict[str, frozenset[str]]

    @classmethod
    def of(cls, items: Sequence[Item]) -> Tree:
        children: defaultdict[str, set[str]] = defaultdict(set)
        for item in items:
            children[item.patient_id].add(item.study_id)
            children[item.study_id].add(item.series_id)
            children[item.series_id].add(item.instance_id)
        return cls(
            frozenset(i.patient_id for i in items),
            frozenset(i.study_id for i in items),
            frozenset(i.series_id for i in items),
            frozenset(i.instance_id for i in items),
            {parent: frozenset(kids) for parent, kids in children.items()},
        )


# -- servers ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def shared_servers(
    base: Path, cluster: PostgresCluster, database: str, count: int, **extra: Any
) -> Iterator[list[RunningServer]]:
    """`count` `dicomvault serve` processes on `database` and one storage folder, started at once
    (so they also race to create the schema of the new database)."""
    storage = base / "shared-storage"
    servers = [
        RunningServer(
            base / f"node{i}",
            {"StorageDirectory": str(storage), "PostgreSQL": cluster.section(database), **extra},
        )
        for i in range(count)
    ]
    try:
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(lambda s: s.start(), servers))
        yield servers
    finally:
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(lambda s: s.stop(), servers))


def server_problems(servers: Sequence[RunningServer]) -> list[str]:
    """Error lines and tracebacks in the servers' logs (an unexpected exception is logged in full)."""
    problems = []
    for server in servers:
        for line in server.log_path.read_text(errors="replace").splitlines():
            if line.startswith("Traceback") or (line[:1] == "E" and line[1:5].isdigit()):
                problems.append(f"{server.base.name}: {line}")
    return problems


# -- what the database and the folder hold -------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    """The index and the storage folder, read directly."""

    counts: dict[int, int]  # resourceType -> rows
    children: dict[str, frozenset[str]]  # parent public id -> children public ids
    orphans: list[str]  # non-patient resources without a parent
    attachments: list[tuple[str, int, str, int]]  # (instance public id, fileType, uuid, compressedSize)
    totals: tuple[int, int]  # StorageTotals (compressed, uncompressed)
    sum_sizes: tuple[int, int]
    files: dict[str, int]  # uuid -> size, for every file in the storage folder
    temp_files: list[str]


def read_stored(cluster: PostgresCluster, database: str, storage: Path) -> Stored:
    with cluster.connect(database) as conn:
        counts = dict(conn.execute("SELECT resourceType, count(*) FROM Resources GROUP BY resourceType").fetchall())
        children: defaultdict[str, set[str]] = defaultdict(set)
        for parent, child in conn.execute(
            "SELECT p.publicId, c.publicId FROM Resources c JOIN Resources p ON c.parentId = p.internalId"
        ):
            children[parent].add(child)
        orphans = [
            r[0] for r in conn.execute("SELECT publicId FROM Resources WHERE parentId IS NULL AND resourceType <> 1")
        ]
        attachments = conn.execute(
            "SELECT r.publicId, a.fileType, a.uuid, a.compressedSize FROM AttachedFiles a "
            "JOIN Resources r ON a.id = r.internalId"
        ).fetchall()
        totals = conn.execute("SELECT compressedSize, uncompressedSize FROM StorageTotals").fetchone()
        sums = conn.execute(
            "SELECT coalesce(sum(compressedSize), 0), coalesce(sum(uncompressedSize), 0) FROM AttachedFiles"
        ).fetchone()
    assert totals is not None and sums is not None
    files: dict[str, int] = {}
    temp_files: list[str] = []
    for path in storage.rglob("*"):
        if path.is_file():
            if path.name.startswith(".tmp-"):
                temp_files.append(path.name)
            elif (
                len(path.parts) >= 3 and path.parent.name == path.name[2:4] and path.parent.parent.name == path.name[:2]
            ):
                files[path.name] = path.stat().st_size
    return Stored(
        counts={int(k): int(v) for k, v in counts.items()},
        children={k: frozenset(v) for k, v in children.items()},
        orphans=orphans,
        attachments=[(str(a), int(b), str(c), int(d)) for a, b, c, d in attachments],
        totals=(int(totals[0]), int(totals[1])),
        sum_sizes=(int(sums[0]), int(sums[1])),
        files=files,
        temp_files=temp_files,
    )


def check_stored(stored: Stored, tree: Tree) -> None:
    """The index holds exactly `tree`; every row points at a file of its size; no file is left over."""
    assert stored.counts == {
        level: len(ids)
        for level, ids in ((1, tree.patients), (2, tree.studies), (3, tree.series), (4, tree.instances))
        if ids
    }
    assert stored.children == tree.children
    assert stored.orphans == []
    rows_per_instance = Counter(public for public, _, _, _ in stored.attachments)
    assert set(rows_per_instance) == set(tree.instances)
    assert all(n == 1 for n in rows_per_instance.values()), "an instance has several attachments"
    assert {file_type for _, file_type, _, _ in stored.attachments} <= {DICOM_FILE}
    missing = [(public, uuid) for public, _, uuid, _ in stored.attachments if uuid not in stored.files]
    assert missing == [], "rows pointing at missing files"
    wrong_size = [
        (uuid, size, stored.files[uuid]) for _, _, uuid, size in stored.attachments if stored.files[uuid] != size
    ]
    assert wrong_size == []
    # Losers' files and deleted instances' files were removed: nothing but referenced files remain.
    assert sorted(stored.files) == sorted(uuid for _, _, uuid, _ in stored.attachments)
    assert stored.temp_files == []
    assert stored.totals == stored.sum_sizes


def check_through(client: httpx.Client, servers: Sequence[RunningServer], tree: Tree, stored: Stored) -> None:
    """Every server answers the same final state: listings, statistics and the change log."""
    logs = []
    for server in servers:
        for level, ids in (
            ("patients", tree.patients),
            ("studies", tree.studies),
            ("series", tree.series),
            ("instances", tree.instances),
        ):
            answer = client.get(f"{server.url}/{level}")
            assert answer.status_code == 200, answer.text
            assert sorted(answer.json()) == sorted(ids), f"{level} through {server.url}"
        stats = client.get(f"{server.url}/statistics").json()
        assert (stats["CountPatients"], stats["CountStudies"], stats["CountSeries"], stats["CountInstances"]) == (
            len(tree.patients),
            len(tree.studies),
            len(tree.series),
            len(tree.instances),
        )
        assert int(stats["TotalDiskSize"]) == sum(stored.files.values())
        logs.append(read_changes(client, server.url, limit=97))  # pages ending mid-group
    # The same log through every server. A stability monitor may still append Stable* changes
    # while the logs are read one after the other: each log read must be a prefix of the longest.
    changes = max(logs, key=len)
    assert all(log == changes[: len(log)] for log in logs), "the servers answer different change logs"
    seqs = [c["Seq"] for c in changes]
    assert all(a < b for a, b in itertools.pairwise(seqs)), "change numbers are not strictly increasing"
    # One New* change for every resource present (those of deleted resources went with them).
    for change_type, ids in (
        ("NewPatient", tree.patients),
        ("NewStudy", tree.studies),
        ("NewSeries", tree.series),
        ("NewInstance", tree.instances),
    ):
        logged = Counter(c["ID"] for c in changes if c["ChangeType"] == change_type)
        assert set(logged) == set(ids), change_type
        assert set(logged.values()) <= {1}, f"{change_type} logged twice"


# -- 1. three servers, eight clients ----------------------------------------------------------------


@dataclass(frozen=True)
class Deletion:
    """One deletion target of the run: deleted once, after every upload of its instances."""

    level: str
    ids: tuple[str, ...]


def build_run() -> tuple[list[Item], list[Item], list[Deletion]]:
    """4 patients x 2 studies x 3 series x 8 instances; a disjoint part of them is deleted."""
    items = {
        (p, st, se, n): make_item("run", p, st, se, n)
        for p in range(4)
        for st in range(2)
        for se in range(3)
        for n in range(1, 9)
    }

    def where(condition: Callable[[int, int, int], bool]) -> list[Item]:
        return [item for (p, st, se, _), item in items.items() if condition(p, st, se)]

    whole_patient = where(lambda p, st, se: p == 3)
    one_series = where(lambda p, st, se: (p, st, se) == (0, 0, 2))  # its study keeps 2 series
    one_by_one = where(lambda p, st, se: (p, st, se) == (1, 1, 2))  # the last delete removes the series
    one_study = where(lambda p, st, se: (p, st) == (2, 1))  # its patient keeps the other study
    deleted = whole_patient + one_series + one_by_one + one_study
    deletions = [
        Deletion("patients", (whole_patient[0].patient_id,)),
        Deletion("series", (one_series[0].series_id,)),
        Deletion("instances", tuple(i.instance_id for i in one_by_one)),
        Deletion("studies", (one_study[0].study_id,)),
    ]
    gone = {i.instance_id for i in deleted}
    kept = [item for item in items.values() if item.instance_id not in gone]
    return kept, deleted, deletions


@dataclass
class Journal:
    """What the threads saw, appended from many threads (list.append is atomic)."""

    uploads: list[tuple[str, int, str]]  # (instance id, HTTP status, Status)
    deletes: list[tuple[str, int]]
    failures: list[str]


FINDS: list[dict[str, Any]] = [
    {"Level": "Study", "Query": {"PatientID": "run*"}, "Expand": True},
    {"Level": "Instance", "Query": {"PatientID": "runP1"}},
    {"Level": "Series", "Query": {"Modality": "CT"}, "Expand": True},
    {"Level": "Patient", "Query": {}, "Expand": True},
]
LISTINGS = ["/patients?expand", "/studies", "/series?expand", "/instances", "/statistics", "/changes?limit=50"]


def browse(client: httpx.Client, url: str, step: int, journal: Journal, items: Sequence[Item]) -> None:
    """One find, listing or file read; a listing or find must never fail, a file read may only
    find the instance already deleted (404)."""
    kind = step % 3
    if kind == 0:
        query = FINDS[step // 3 % len(FINDS)]
        answer = client.post(f"{url}/tools/find", json=query)
        if answer.status_code != 200:
            journal.failures.append(f"find {query} -> {answer.status_code} {answer.text[:300]}")
    elif kind == 1:
        path = LISTINGS[step // 3 % len(LISTINGS)]
        answer = client.get(url + path)
        if answer.status_code != 200:
            journal.failures.append(f"GET {path} -> {answer.status_code} {answer.text[:300]}")
    else:
        item = items[step * 7919 % len(items)]
        answer = client.get(f"{url}/instances/{item.instance_id}/file")
        if answer.status_code == 200 and answer.content != item.data:
            journal.failures.append(f"instance {item.instance_id}: other bytes than uploaded")
        elif answer.status_code not in (200, 404):
            journal.failures.append(f"GET file {item.instance_id} -> {answer.status_code} {answer.text[:300]}")


def upload(client: httpx.Client, url: str, item: Item, journal: Journal) -> None:
    answer = client.post(f"{url}/instances", content=item.data)
    status = answer.json().get("Status", "") if answer.status_code == 200 else answer.text[:300]
    journal.uploads.append((item.instance_id, answer.status_code, status))


@pytest.mark.slow
def test_three_servers_eight_clients_end_in_the_expected_state(
    tmp_path: Path, postgres_cluster: PostgresCluster, postgres_database: str
) -> None:
    kept, deleted, deletions = build_run()
    rng = random.Random(8)
    clients = 8
    # Before the barrier: every to-be-deleted instance by two clients (c and c + 4).
    before = [[d for n, d in enumerate(deleted) if n % 4 == c % 4] for c in range(clients)]
    # After it: every kept instance at least 3 times, shuffled (overlapping sets, random order).
    pool = [*kept, *kept, *kept]
    pool += rng.sample(kept, clients * 40 - len(pool))
    rng.shuffle(pool)
    after = [pool[c::clients] for c in range(clients)]
    journal = Journal([], [], [])
    barrier = threading.Barrier(clients)
    done = threading.Event()
    everything = kept + deleted

    with shared_servers(tmp_path, postgres_cluster, postgres_database, 3, StableAge=1) as servers:
        urls = [s.url for s in servers]

        def client_thread(c: int) -> None:
            turn = itertools.count(c)  # round-robin over the servers, each client from its own start
            with httpx.Client(timeout=TIMEOUT) as client:
                try:
                    for item in before[c]:
                        upload(client, urls[next(turn) % 3], item, journal)
                    barrier.wait(timeout=120)
                    for n, item in enumerate(after[c]):
                        upload(client, urls[next(turn) % 3], item, journal)
                        if c < len(deletions) and n == 5 + c:
                            target = deletions[c]
                            for public in target.ids:
                                answer = client.delete(f"{urls[next(turn) % 3]}/{target.level}/{public}")
                                journal.deletes.append((public, answer.status_code))
                        if n % 4 == 3:
                            browse(client, urls[next(turn) % 3], n + c, journal, everything)
                except Exception as exc:  # reported by the assertions below
                    journal.failures.append(f"client {c}: {exc!r}")
                    barrier.abort()

        def reader_thread() -> None:
            with httpx.Client(timeout=TIMEOUT) as client:
                for step in itertools.count():
                    if done.is_set():
                        return
                    try:
                        browse(client, urls[step % 3], step, journal, everything)
                    except Exception as exc:  # reported by the assertions below
                        journal.failures.append(f"reader: {exc!r}")

        reader = threading.Thread(target=reader_thread)
        reader.start()
        with ThreadPoolExecutor(clients) as executor:
            list(executor.map(client_thread, range(clients)))
        done.set()
        reader.join()

        assert journal.failures == []
        assert [s for _, s in journal.deletes] == [200] * sum(len(d.ids) for d in deletions)
        assert {(code, status) for _, code, status in journal.uploads} <= {(200, "Success"), (200, "AlreadyStored")}
        successes = Counter(public for public, _, status in journal.uploads if status == "Success")
        # Each instance stored exactly once (none was uploaded again after its deletion).
        assert successes == Counter({i.instance_id: 1 for i in everything})
        assert Counter(public for public, _, _ in journal.uploads) == Counter(
            i.instance_id for i in itertools.chain(*before, *after)
        )

        tree = Tree.of(kept)
        stored = read_stored(postgres_cluster, postgres_database, tmp_path / "shared-storage")
        check_stored(stored, tree)
        with httpx.Client(timeout=TIMEOUT) as client:
            check_through(client, servers, tree, stored)
            for n, item in enumerate(kept):
                answer = client.get(f"{urls[n % 3]}/instances/{item.instance_id}/file")
                assert answer.status_code == 200 and answer.content == item.data, item.instance_id
        assert server_problems(servers) == []


# -- 2. forced races between two servers -----------------------------------------------------------------


Action = Callable[[], tuple[int, str]]
# (side, iteration, side's client) -> the action to release at the barrier; what comes before the
# returned action (uploading what the race needs, preparing the body) runs before the barrier.
Step = Callable[[int, int, httpx.Client], Action]


def run_race(urls: Sequence[str], iterations: int, step: Step) -> list[tuple[tuple[int, str], tuple[int, str]]]:
    """Two threads, each with its own client, released together by a `Barrier(2)` at every iteration."""
    barrier = threading.Barrier(2)
    results: list[list[tuple[int, str]]] = [[(0, "")] * iterations, [(0, "")] * iterations]
    failures: list[str] = []

    def side(n: int) -> None:
        with httpx.Client(timeout=TIMEOUT) as client:
            try:
                client.get(urls[n] + "/system")  # a connection is open before the first release
                for i in range(iterations):
                    action = step(n, i, client)
                    barrier.wait(timeout=60)
                    results[n][i] = action()
            except Exception as exc:  # reported below
                failures.append(f"side {n}: {exc!r}")
                barrier.abort()

    threads = [threading.Thread(target=side, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    return list(zip(results[0], results[1], strict=True))


def post(client: httpx.Client, url: str, item: Item) -> Action:
    def action() -> tuple[int, str]:
        answer = client.post(f"{url}/instances", content=item.data)
        if answer.status_code != 200:
            return answer.status_code, answer.text[:300]
        assert answer.json()["ID"] == item.instance_id
        return 200, str(answer.json()["Status"])

    return action


@pytest.mark.slow
def test_the_same_instance_at_two_servers_at_once_is_stored_once(
    tmp_path: Path, postgres_cluster: PostgresCluster, postgres_database: str
) -> None:
    # 50 new instances; the first ones also create their patient, study or series in the race.
    items = [make_item("same", f"sameP{i % 5}", i % 10, i % 20, i + 1) for i in range(50)]
    with shared_servers(tmp_path, postgres_cluster, postgres_database, 2) as servers:
        urls = [s.url for s in servers]
        outcomes = run_race(urls, len(items), lambda side, i, client: post(client, urls[side], items[i]))
        # Orthanc's answer to a second upload of a stored instance: 200 AlreadyStored (not an error).
        assert [sorted(pair) for pair in outcomes] == [[(200, "AlreadyStored"), (200, "Success")]] * len(items)
        tree = Tree.of(items)
        stored = read_stored(postgres_cluster, postgres_database, tmp_path / "shared-storage")
        check_stored(stored, tree)
        assert len(stored.files) == len(items)  # the loser's file was removed every time
        with httpx.Client(timeout=TIMEOUT) as client:
            check_through(client, servers, tree, stored)
        assert server_problems(servers) == []


@pytest.mark.slow
def test_deleting_a_series_last_instance_while_uploading_into_it(
    tmp_path: Path, postgres_cluster: PostgresCluster, postgres_database: str
) -> None:
    anchor = make_item("race", "raceShared", "anchor", "anchor", 1)

    def pair(i: int) -> tuple[Item, Item]:
        """The instance deleted and the one uploaded into its series; deleting the first alone
        removes its patient (i % 3 == 0), its study (1) or its series only (2)."""
        variants: list[tuple[str, int | str, int | str]] = [
            (f"raceP{i}", 0, 0),
            ("raceShared", f"study{i}", 0),
            ("raceShared", "anchor", f"series{i}"),
        ]
        patient, study, series = variants[i % 3]
        return make_item("race", patient, study, series, 1), make_item("race", patient, study, series, 2)

    pairs = [pair(i) for i in range(50)]
    with shared_servers(tmp_path, postgres_cluster, postgres_database, 2) as servers:
        urls = [s.url for s in servers]
        with httpx.Client(timeout=TIMEOUT) as client:
            assert post(client, urls[0], anchor)() == (200, "Success")

        def step(side: int, i: int, client: httpx.Client) -> Action:
            first, second = pairs[i]
            url = urls[(side + i) % 2]  # each server deletes in one iteration, uploads in the next
            if side == 1:
                return post(client, url, second)
            assert post(client, url, first)() == (200, "Success")

            def delete() -> tuple[int, str]:
                answer = client.delete(f"{url}/instances/{first.instance_id}")
                return answer.status_code, answer.text[:300] if answer.status_code != 200 else ""

            return delete

        outcomes = run_race(urls, len(pairs), step)
        assert outcomes == [((200, ""), (200, "Success"))] * len(pairs)
        tree = Tree.of([anchor, *(second for _, second in pairs)])
        stored = read_stored(postgres_cluster, postgres_database, tmp_path / "shared-storage")
        check_stored(stored, tree)
        with httpx.Client(timeout=TIMEOUT) as client:
            check_through(client, servers, tree, stored)
        assert server_problems(servers) == []


# -- 3. "Lock": true ------------------------------------------------------------------------------------


def test_lock_true_keeps_a_second_serve_out_with_exit_code_3(
    tmp_path: Path, postgres_cluster: PostgresCluster, postgres_database: str
) -> None:
    section = {**postgres_cluster.section(postgres_database), "Lock": True}
    first = RunningServer(tmp_path / "first", {"PostgreSQL": section})
    second = RunningServer(tmp_path / "second", {"PostgreSQL": section})
    first.start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "dicomvault", "serve", str(second.config_path)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=second.base,
        )
        assert done.returncode == 3, done.stderr
        assert '"Lock": true' in done.stderr and "another server process" in done.stderr, done.stderr
        assert httpx.get(first.url + "/system", timeout=TIMEOUT).status_code == 200  # the first one serves on
    finally:
        first.stop()
    # The lock goes with the first server's session: the second one starts now.
    try:
        second.start()
    finally:
        second.stop()
