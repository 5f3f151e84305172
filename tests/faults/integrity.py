"""Independent integrity checks of an installation, for the fault tests: the index and the storage
folder read directly (SQLite file or PostgreSQL database), and the state a client sees through the
REST API. They never use dicomvault's own code, so they also check `dicomvault check`, whose result
(`run_check`) the tests assert beside them.

What an installation must satisfy after any fault: every attachment row points at a file of its
recorded size and MD5 (else *missing* / *corrupt*); the hierarchy is whole (every non-patient has a
parent, every non-instance has children, every instance one DICOM attachment); the running totals
equal the sum of the rows. Files nobody references and temporary files (*orphans*) are allowed after
a crash: an orphan is harmless, a row pointing at nothing is corruption (DESIGN.md, Ingest).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

REPO = Path(__file__).resolve().parent.parent.parent
DICOM_FILE = 1  # FileContentType.DICOM, Orthanc's value
TEMP_PREFIX = ".tmp-"
LEVELS = {1: "patients", 2: "studies", 3: "series", 4: "instances"}


class Connection(Protocol):
    """What sqlite3 and psycopg connections have in common, as used here."""

    def execute(self, query: str, /) -> Any: ...


@dataclass(frozen=True)
class Stored:
    """The index and the storage folder, read directly, and what is wrong with them."""

    instances: dict[str, str]  # instance public id -> uuid of its DICOM file
    resources: dict[int, frozenset[str]]  # resource type -> public ids
    missing: list[str]  # uuids of rows whose file is absent
    corrupt: list[str]  # uuids of rows whose file has another size or MD5
    orphans: list[Path]  # files no row references, and temporary files
    hierarchy: list[str]  # hierarchy problems, described
    totals: tuple[int, int]  # StorageTotals (compressed, uncompressed)
    sum_sizes: tuple[int, int]  # the same summed over the rows
    disk_size: int  # sum of the referenced files' sizes

    @property
    def damaged(self) -> list[str]:
        """Everything but orphans: what no fault may ever leave."""
        problems = [f"missing {u}" for u in self.missing] + [f"corrupt {u}" for u in self.corrupt]
        problems += self.hierarchy
        if self.totals != self.sum_sizes:
            problems.append(f"StorageTotals {self.totals} != sum of the rows {self.sum_sizes}")
        return problems


def inspect_sqlite(index: Path, storage: Path) -> Stored:
    """Read an SQLite index (read-only, any time: WAL readers do not block the server) and its folder."""
    with contextlib.closing(sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=30)) as conn:
        return inspect(conn, storage)


def inspect(conn: Connection, storage: Path) -> Stored:
    resources: dict[int, set[str]] = {level: set() for level in LEVELS}
    for level, public in conn.execute("SELECT resourceType, publicId FROM Resources").fetchall():
        resources[int(level)].add(str(public))
    hierarchy = [
        f"{LEVELS[int(level)]} {public} has no parent"
        for level, public in conn.execute(
            "SELECT resourceType, publicId FROM Resources WHERE parentId IS NULL AND resourceType <> 1"
        ).fetchall()
    ]
    hierarchy += [
        f"{LEVELS[int(level)]} {public} has no child"
        for level, public in conn.execute(
            "SELECT r.resourceType, r.publicId FROM Resources r WHERE r.resourceType <> 4 "
            "AND NOT EXISTS (SELECT 1 FROM Resources c WHERE c.parentId = r.internalId)"
        ).fetchall()
    ]
    hierarchy += [
        f"{LEVELS[int(child)]} {public} under a {LEVELS[int(parent)]}"
        for child, parent, public in conn.execute(
            "SELECT c.resourceType, p.resourceType, c.publicId FROM Resources c "
            "JOIN Resources p ON c.parentId = p.internalId WHERE c.resourceType <> p.resourceType + 1"
        ).fetchall()
    ]
    rows = conn.execute(
        "SELECT r.publicId, r.resourceType, a.fileType, a.uuid, a.compressedSize, a.uncompressedSize, "
        "a.compressedMD5 FROM AttachedFiles a JOIN Resources r ON a.id = r.internalId"
    ).fetchall()
    totals = conn.execute("SELECT compressedSize, uncompressedSize FROM StorageTotals").fetchone()
    instances: dict[str, str] = {}
    per_instance: Counter[str] = Counter()
    missing: list[str] = []
    corrupt: list[str] = []
    referenced: set[str] = set()
    disk_size = 0
    for public, level, file_type, uuid, size, _, md5 in rows:
        uuid = str(uuid)
        referenced.add(uuid)
        if int(level) == 4 and int(file_type) == DICOM_FILE:
            instances[str(public)] = uuid
            per_instance[str(public)] += 1
        path = storage / uuid[:2] / uuid[2:4] / uuid
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            missing.append(uuid)
            continue
        disk_size += len(data)
        if len(data) != int(size) or hashlib.md5(data).hexdigest() != str(md5):
            corrupt.append(uuid)
    hierarchy += [f"instance {i} has no DICOM attachment" for i in resources[4] - set(instances)]
    orphans = [
        path
        for path in sorted(storage.rglob("*"))
        if path.is_file()
        and (path.name.startswith(TEMP_PREFIX) or (_is_uuid_path(path, storage) and path.name not in referenced))
    ]
    return Stored(
        instances=instances,
        resources={level: frozenset(ids) for level, ids in resources.items()},
        missing=missing,
        corrupt=corrupt,
        orphans=orphans,
        hierarchy=hierarchy,
        totals=(int(totals[0]), int(totals[1])),
        sum_sizes=(sum(int(r[4]) for r in rows), sum(int(r[5]) for r in rows)),
        disk_size=disk_size,
    )


def _is_uuid_path(path: Path, storage: Path) -> bool:
    parts = path.relative_to(storage).parts
    return len(parts) == 3 and len(path.name) == 36 and parts[0] == path.name[:2] and parts[1] == path.name[2:4]


def remove_orphans(stored: Stored) -> None:
    """What `check --repair` does, for when the command is not there (the server must be stopped)."""
    for path in stored.orphans:
        path.unlink(missing_ok=True)


# -- `dicomvault check` -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """`dicomvault check CONFIG --json`: exit code and its JSON report (None if not JSON)."""

    returncode: int
    report: dict[str, Any] | None
    output: str

    def count(self, kind: str) -> int:
        assert self.report is not None, self.output
        return int(self.report["counts"][kind])

    @property
    def kinds(self) -> Counter[str]:
        assert self.report is not None, self.output
        return Counter(str(p["kind"]) for p in self.report["problems"])


def dicomvault(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomvault", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )


@functools.cache
def check_available() -> bool:
    """Whether `dicomvault check` exists yet (another helper writes it in parallel)."""
    return dicomvault("check", "--help", timeout=60).returncode == 0


def run_check(config: Path, repair: bool = False) -> CheckResult | None:
    """`dicomvault check CONFIG --json [--repair]`, or None while the command does not exist."""
    if not check_available():
        return None
    done = dicomvault("check", config, "--json", *(["--repair"] if repair else []))
    report: dict[str, Any] | None = None
    with contextlib.suppress(ValueError):
        report = json.loads(done.stdout)
    return CheckResult(done.returncode, report, done.stdout + done.stderr)


def check_and_repair(config: Path, stored: Stored) -> int:
    """After a crash: `check --repair` finds no missing or corrupt file (orphans allowed, exactly
    those this module found) and removes the orphans; a second `check` then exits 0. Without the
    command, the orphans are removed here. Returns the number of orphans found."""
    result = run_check(config, repair=True)
    if result is None:
        remove_orphans(stored)
        return len(stored.orphans)
    assert result.returncode in (0, 1), result.output
    assert result.count("missing") == 0 and result.count("corrupt") == 0, result.output
    assert set(result.kinds) <= {"orphan"}, result.output
    assert result.report is not None
    found = sorted(str(p["uuid"]) for p in result.report["problems"])
    mine = sorted(p.name.removeprefix(TEMP_PREFIX) for p in stored.orphans)
    assert found == mine, (result.output, stored.orphans)
    assert all(p["repaired"] for p in result.report["problems"]), result.output
    if stored.orphans:
        check_clean(config)
        assert not any(p.exists() for p in stored.orphans)
    return len(stored.orphans)


def check_clean(config: Path) -> None:
    """`check` exits 0 (when the command exists)."""
    result = run_check(config)
    assert result is None or result.returncode == 0, result.output


# -- through the REST API --------------------------------------------------------------------------------


def read_changes(client: httpx.Client, url: str, limit: int = 500) -> list[dict[str, Any]]:
    """The whole /changes log, page by page (`limit` per page)."""
    changes: list[dict[str, Any]] = []
    since = 0
    while True:
        answer = client.get(f"{url}/changes", params={"since": since, "limit": limit})
        assert answer.status_code == 200, answer.text
        page = answer.json()
        changes.extend(page["Changes"])
        if page["Done"]:
            return changes
        since = page["Last"]


def check_changes(client: httpx.Client, url: str) -> list[dict[str, Any]]:
    changes = read_changes(client, url)
    seqs = [int(c["Seq"]) for c in changes]
    assert all(a < b for a, b in itertools.pairwise(seqs)), "/changes is not strictly increasing"
    return changes


def check_api_files(client: httpx.Client, url: str) -> dict[str, bytes]:
    """Every listed instance's file reads completely (its declared length, a DICOM preamble) and
    the sizes add up to /statistics: no half-written file is visible. Returns the files by id."""
    listed = client.get(f"{url}/instances")
    assert listed.status_code == 200, listed.text
    files: dict[str, bytes] = {}
    for public in listed.json():
        answer = client.get(f"{url}/instances/{public}/file")
        assert answer.status_code == 200, (public, answer.status_code, answer.text[:300])
        assert answer.content[128:132] == b"DICM", f"instance {public}: not a complete DICOM file"
        files[public] = answer.content
    stats = client.get(f"{url}/statistics").json()
    assert stats["CountInstances"] == len(files)
    assert int(stats["TotalUncompressedSize"]) == sum(len(f) for f in files.values())
    return files
