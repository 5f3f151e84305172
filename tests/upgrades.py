"""Helpers of the upgrade tests: copies of the released-schema fixtures, larger schema-1 indexes
built for crash tests, the `dicomvault` command line in a subprocess, and a logical dump of an
index to compare two upgrades."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dicomvault.config import config_from_mapping
from dicomvault.enums import GlobalProperty
from dicomvault.ingest.pool import WorkerPool
from dicomvault.ingest.store import Origin
from dicomvault.server import build
from tests.dicomgen import Spec, make_bytes

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).parent.parent


def fixture_copy(version: int, base: Path, **overrides: Any) -> Path:
    """A copy of the fixture of schema `version` under `base`, and its configuration file."""
    shutil.copytree(FIXTURES / f"schema{version}" / "storage", base / "storage")
    return write_config(base, **overrides)


def write_config(base: Path, **overrides: Any) -> Path:
    config = {"StorageDirectory": str(base / "storage"), "IndexDirectory": str(base / "storage"), **overrides}
    path = base / "config.json"
    path.write_text(json.dumps(config))
    return path


def expected(version: int) -> dict[str, Any]:
    """What the code of that version answered when it generated its fixture."""
    return dict(json.loads((FIXTURES / f"schema{version}" / "expected.json").read_text()))


def schema1_archive(base: Path, count: int, workers: WorkerPool, compression: bool = False, pixels: int = 8) -> Path:
    """A schema-1 archive of `count` instances, larger than the fixture (for crash tests): stored
    by today's code, then made what schema 1 holds (`make_schema1`)."""
    base.mkdir(parents=True, exist_ok=True)
    config_path = write_config(base, StorageCompression=compression)
    config = config_from_mapping(json.loads(config_path.read_text()), source=str(config_path))
    server = build(config, workers=workers)
    try:
        for seed in range(count):
            spec = Spec(
                seed=seed % 7,
                patient_id=f"P{seed % 5}",
                instance_number=seed,
                rows=pixels,
                columns=pixels,
                extra={"ContentDate": f"202001{seed % 28 + 1:02d}", "PatientAge": f"0{seed % 90:02d}Y"},
            )
            server.context.ingest.store_sync(make_bytes(spec), Origin())
    finally:
        server.close()
    make_schema1(base / "storage" / "dicomvault.db")
    return config_path


# Change types: today's numbers (Orthanc's) -> those of schemas 1 and 2.
SCHEMA1_CHANGE_TYPES = {2: 4, 3: 5, 4: 6, 5: 7, 12: 8, 14: 9, 13: 10, 15: 11, 16: 12, 4096: 2, 4097: 3}


def renumber_changes_as_schema1(conn: sqlite3.Connection) -> None:
    conn.execute(
        "UPDATE Changes SET changeType = CASE changeType "
        + " ".join(f"WHEN {new} THEN {old}" for new, old in SCHEMA1_CHANGE_TYPES.items())
        + " ELSE changeType END"
    )


def make_schema1(index: Path) -> None:
    """Turn an index written by today's code into the schema-1 index of the same data: the tables
    of migration 2 dropped (schema 1's DDL is the prefix of today's), the change types renumbered
    back (undoing migration 3), the version property set to 1."""
    with contextlib.closing(sqlite3.connect(index)) as conn, conn:
        conn.execute("DROP TABLE InstanceTags")
        conn.execute("DROP TABLE Labels")
        renumber_changes_as_schema1(conn)
        conn.execute(
            "UPDATE GlobalProperties SET value = '1' WHERE property = ?",
            (int(GlobalProperty.DICOMVAULT_SCHEMA_VERSION),),
        )


def dicomvault(
    *args: str | Path, timeout: float = 120, preexec_fn: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    """The command line, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "dicomvault", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec_fn,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )


def start_upgrade(*args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dicomvault", "upgrade", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )


def dump(index: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, sorted: two indexes with equal dumps hold the same data."""
    conn = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {table: sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr) for table in tables}
    finally:
        conn.close()


def set_version(index: Path, value: str) -> None:
    with sqlite3.connect(index) as conn:
        conn.execute(
            "UPDATE GlobalProperties SET value = ? WHERE property = ?",
            (value, int(GlobalProperty.DICOMVAULT_SCHEMA_VERSION)),
        )


class SmallDisk:
    """A tmpfs of a chosen size mounted at `path` (root only): a real full disk, a real read-only
    folder. `resize` and `read_only` remount it."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)

    def resize(self, size: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def read_only(self, flag: bool = True) -> None:
        subprocess.run(["mount", "-o", f"remount,{'ro' if flag else 'rw'}", str(self.path)], check=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)

    @staticmethod
    def available() -> bool:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            return False
        probe = Path(tempfile.mkdtemp(prefix="dicomvault-mount-"))
        try:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True)
            if done.returncode != 0:
                return False
            subprocess.run(["umount", str(probe)], check=True)
            return True
        finally:
            probe.rmdir()
