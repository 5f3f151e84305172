"""What the fault tests and `bench/soak.py` send: generated instances with known public ids, the
soak's mixed clients (each checking every answer against its own model of the archive), and the
memory of a server's process tree read from /proc.

Shared by the test suite and the benchmark (as `bench/data.py` uses `tests.dicomgen`): the soak
test runs it for a bounded time, `python -m bench.soak --minutes N` for longer.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import random
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.dicomgen import Spec, make_bytes

UID_ROOT = "1.2.826.0.1.3680043.10.1234.99"


def public_id(*parts: str) -> str:
    """Orthanc's public id: SHA-1 of the identifiers joined by `|`, in five groups of 8 hex digits."""
    digest = hashlib.sha1("|".join(parts).encode()).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


def _digits(text: str) -> str:
    """A UID component from any text (stable across runs, unlike `hash`)."""
    return str(int.from_bytes(hashlib.sha1(text.encode()).digest()[:6], "big"))


@dataclass(frozen=True)
class Item:
    """One generated instance and the public ids it must have."""

    patient: str
    study_uid: str
    series_uid: str
    sop_uid: str
    data: bytes

    @property
    def patient_id(self) -> str:
        return public_id(self.patient)

    @property
    def study_id(self) -> str:
        return public_id(self.patient, self.study_uid)

    @property
    def series_id(self) -> str:
        return public_id(self.patient, self.study_uid, self.series_uid)

    @property
    def instance_id(self) -> str:
        return public_id(self.patient, self.study_uid, self.series_uid, self.sop_uid)


def make_item(tag: str, patient: int, study: int, series: int, number: int, side: int = 8) -> Item:
    """Instance `number` of series `series` of study `study` of patient `patient`, `side` pixels square."""
    patient_name = f"{tag}P{patient}"
    study_uid = f"{UID_ROOT}.{_digits(f'{tag}|{patient}|{study}')}"
    series_uid = f"{UID_ROOT}.{_digits(f'{tag}|{patient}|{study}|{series}')}"
    sop_uid = f"{series_uid}.{number}"
    spec = Spec(
        seed=number,
        patient_id=patient_name,
        patient_name=f"{patient_name}^Test",
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        instance_number=number,
        rows=side,
        columns=side,
        modality=("CT", "MR", "PT")[series % 3],
    )
    return Item(patient_name, study_uid, series_uid, sop_uid, make_bytes(spec))


def mixed_side(rng: random.Random) -> int:
    """Mostly small instances, some of a few hundred KB (a mix of sizes, so a file of another
    instance or a truncated one never has the expected length by chance)."""
    roll = rng.random()
    if roll < 0.05:
        return rng.randrange(300, 400)  # 180-320 KB
    if roll < 0.25:
        return rng.randrange(64, 160)  # 8-50 KB
    return rng.randrange(4, 40)


# -- the memory of a process tree --------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (the serve process and its ingest workers), from /proc."""
    found = [pid]
    at = 0
    while at < len(found):
        for children in Path(f"/proc/{found[at]}/task").glob("*/children"):
            with contextlib.suppress(OSError):  # the task ended meanwhile
                found += [int(c) for c in children.read_text().split()]
        at += 1
    return found


def rss_bytes(pid: int) -> int:
    """The summed resident memory (VmRSS) of `pid`'s process tree."""
    total = 0
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass  # exited between the listing and the read
    return total


class RssSampler:
    """Samples `rss_bytes(pid)` every `interval` seconds on a thread: (seconds since start, bytes)."""

    def __init__(self, pid: int, interval: float) -> None:
        self.samples: list[tuple[float, int]] = []
        self._pid = pid
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._start = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic() - self._start, rss_bytes(self._pid)))
            if self._stop.wait(self._interval):
                return

    def thirds(self) -> tuple[int, int]:
        """The highest sample of the first third of the run, and of the last third."""
        values = [rss for _, rss in self.samples]
        third = max(1, len(values) // 3)
        return max(values[:third]), max(values[-third:])


# -- the soak -----------------------------------------------------------------------------------------


DELETE_KINDS = {"instances": "delete_instance", "series": "delete_series", "studies": "delete_study"}
KINDS = ("upload", "find", "file", "archive", "delete_instance", "delete_series", "delete_study", "list")


@dataclass
class SoakClient:
    """One soak client: its own patient (so its model of what the archive holds is exact whatever
    the others do), a seeded mix of requests, every answer checked against the model.

    The mix: about half uploads (new instances of new or existing series and studies), finds of
    the client's own patient, file and archive downloads, deletes at the three levels, listings."""

    number: int
    url: str
    seed: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    present: dict[str, Item] = field(default_factory=dict)  # instance id -> item

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed * 1000 + self.number)
        self._tag = f"soak{self.seed}c{self.number}"
        self._patient = f"{self._tag}P0"  # the PatientID of every instance of this client (make_item)
        self._next = Counter[tuple[int, int]]()  # (study, series) -> instances made

    def _fail(self, what: str, answer: httpx.Response) -> None:
        self.failures.append(f"client {self.number}: {what} -> {answer.status_code} {answer.text[:300]}")

    def run(self, deadline: float, stop: threading.Event | None = None) -> None:
        with httpx.Client(base_url=self.url, timeout=60.0) as http:
            while time.monotonic() < deadline and not (stop and stop.is_set()):
                self.step(http)

    def step(self, http: httpx.Client) -> None:
        roll = self._rng.random()
        if roll < 0.45 or not self.present:
            self._upload(http)
        elif roll < 0.58:
            self._find(http)
        elif roll < 0.72:
            self._file(http)
        elif roll < 0.76:
            self._archive(http)
        elif roll < 0.86:
            self._delete(http, "instances", lambda i: i.instance_id)
        elif roll < 0.90:
            self._delete(http, "series", lambda i: i.series_id)
        elif roll < 0.92:
            self._delete(http, "studies", lambda i: i.study_id)
        else:
            self.counts["list"] += 1
            answer = http.get("/statistics" if roll < 0.96 else f"/patients/{public_id(self._patient)}")
            if answer.status_code not in (200, 404):
                self._fail("listing", answer)

    def _upload(self, http: httpx.Client) -> None:
        study = self._rng.randrange(4)
        series = self._rng.randrange(3)
        self._next[(study, series)] += 1
        item = make_item(self._tag, 0, study, series, self._next[(study, series)], mixed_side(self._rng))
        self.counts["upload"] += 1
        answer = http.post("/instances", content=item.data)
        if answer.status_code != 200 or answer.json().get("ID") != item.instance_id:
            self._fail("upload", answer)
            return
        self.present[item.instance_id] = item

    def _pick(self) -> Item:
        return self.present[self._rng.choice(sorted(self.present))]

    def _find(self, http: httpx.Client) -> None:
        self.counts["find"] += 1
        level = self._rng.choice(("Series", "Instance"))
        answer = http.post("/tools/find", json={"Level": level, "Query": {"PatientID": self._patient}})
        if answer.status_code != 200:
            self._fail("find", answer)
            return
        expected = {i.series_id for i in self.present.values()} if level == "Series" else set(self.present)
        if set(answer.json()) != expected:
            self.failures.append(f"client {self.number}: find {level} answered another set than the model")

    def _file(self, http: httpx.Client) -> None:
        self.counts["file"] += 1
        item = self._pick()
        answer = http.get(f"/instances/{item.instance_id}/file")
        if answer.status_code != 200:
            self._fail("GET file", answer)
        elif answer.content != item.data:
            self.failures.append(f"client {self.number}: instance {item.instance_id}: other bytes than uploaded")

    def _archive(self, http: httpx.Client) -> None:
        self.counts["archive"] += 1
        item = self._pick()
        answer = http.get(f"/series/{item.series_id}/archive")
        if answer.status_code != 200:
            self._fail("GET archive", answer)
            return
        with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
            contents = sorted(archive.read(name) for name in archive.namelist() if not name.endswith("/"))
        expected = sorted(i.data for i in self.present.values() if i.series_id == item.series_id)
        if contents != expected:
            self.failures.append(f"client {self.number}: archive of series {item.series_id} differs from the model")

    def _delete(self, http: httpx.Client, level: str, key: Callable[[Item], str]) -> None:
        self.counts[DELETE_KINDS[level]] += 1
        target = key(self._pick())
        answer = http.delete(f"/{level}/{target}")
        if answer.status_code != 200:
            self._fail(f"DELETE {level}", answer)
            return
        for instance_id in [i for i, item in self.present.items() if key(item) == target]:
            del self.present[instance_id]


def expected_instances(clients: list[SoakClient]) -> dict[str, Item]:
    return {i: item for client in clients for i, item in client.present.items()}


def run_soak(url: str, clients: int, seconds: float, seed: int = 0) -> list[SoakClient]:
    """`clients` SoakClients on threads for `seconds`; returns them (counts, failures, models)."""
    soakers = [SoakClient(n, url, seed) for n in range(clients)]
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=c.run, args=(deadline,), name=f"soak-{c.number}") for c in soakers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return soakers


def summary(clients: list[SoakClient]) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    for client in clients:
        counts.update(client.counts)
    return {"counts": dict(counts), "total": sum(counts.values()), "failures": [f for c in clients for f in c.failures]}
