"""Schema versions and `dicomvault upgrade` on a PostgreSQL index: the same steps as on SQLite (a
backup first, plain migrations in one transaction, the re-read behind its marker, resumable), and the
refusals (a server still connected, a newer schema, an unreachable database)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from dicomvault.config import config_from_mapping
from dicomvault.enums import GlobalProperty
from dicomvault.ingest.pool import WorkerPool
from dicomvault.server import build
from tests.dicomgen import make_bytes
from tests.postgres import PostgresCluster
from tests.servers import free_port
from tests.upgrades import REPO, SCHEMA1_CHANGE_TYPES, dicomvault

QUERIES = [
    {"Level": "Instance", "Query": {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}},  # from InstanceTags
    {"Level": "Study", "Query": {"PatientName": "*"}},
    {"Level": "Series", "Query": {"Modality": "CT"}},
]


def _write_config(base: Path, section: dict[str, Any], **extra: Any) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    path = base / "config.json"
    data = {"StorageDirectory": str(base / "storage"), "HttpPort": free_port(), "PostgreSQL": section, **extra}
    path.write_text(json.dumps(data))
    return path


def _fill(config: Path, worker_pool: WorkerPool, count: int) -> dict[str, Any]:
    """Store `count` instances through a server, then take what it answers."""
    server = build(config_from_mapping(json.loads(config.read_text()), source=str(config)), workers=worker_pool)
    try:
        with TestClient(server.app(), client=("127.0.0.1", 1)) as client:  # type: ignore[arg-type]
            for i in range(count):
                body = make_bytes(seed=i % 7, instance_number=i + 1, patient_id=f"P{i % 3}")
                assert client.post("/instances", content=body).status_code == 200
            return _answers(client)
    finally:
        server.close()


def _answers(client: TestClient) -> dict[str, Any]:
    studies = client.get("/studies?expand").json()
    for study in studies:
        study.pop("IsStable")  # kept in memory by the server that received the instances
    return {
        "instances": sorted(client.get("/instances").json()),
        "studies": studies,
        "changes": client.get("/changes?limit=100000").json(),
        "statistics": client.get("/statistics").json(),
        "finds": [sorted(client.post("/tools/find", json=q).json()) for q in QUERIES],
    }


def _served(config: Path, worker_pool: WorkerPool) -> dict[str, Any]:
    server = build(config_from_mapping(json.loads(config.read_text()), source=str(config)), workers=worker_pool)
    try:
        with TestClient(server.app(), client=("127.0.0.1", 1)) as client:  # type: ignore[arg-type]
            return _answers(client)
    finally:
        server.close()


def _make_schema1(cluster: PostgresCluster, database: str) -> None:
    """Today's index turned into schema 1 of the same data (as tests/upgrades.py does for SQLite)."""
    with cluster.connect(database) as conn, conn.transaction():
        conn.execute("DROP TABLE InstanceTags")
        conn.execute("DROP TABLE Labels")
        conn.execute(
            "UPDATE Changes SET changeType = CASE changeType "
            + " ".join(f"WHEN {new} THEN {old}" for new, old in SCHEMA1_CHANGE_TYPES.items())
            + " ELSE changeType END"
        )
        conn.execute(
            "UPDATE GlobalProperties SET value = '1' WHERE property = %s",
            (int(GlobalProperty.DICOMVAULT_SCHEMA_VERSION),),
        )


def _version(cluster: PostgresCluster, database: str) -> str:
    with cluster.connect(database) as conn:
        row = conn.execute(
            "SELECT value FROM GlobalProperties WHERE property = %s", (int(GlobalProperty.DICOMVAULT_SCHEMA_VERSION),)
        ).fetchone()
    assert row is not None
    return str(row[0])


def test_upgrade_from_schema_1_on_postgresql(
    tmp_path: Path, postgres_cluster: PostgresCluster, postgres_database: str, worker_pool: WorkerPool
) -> None:
    config = _write_config(tmp_path, postgres_cluster.section(postgres_database))
    before = _fill(config, worker_pool, 30)
    _make_schema1(postgres_cluster, postgres_database)
    refused = dicomvault("serve", config)
    assert refused.returncode == 3
    assert "schema version 1" in refused.stderr and f"dicomvault upgrade {config}" in refused.stderr
    done = dicomvault("upgrade", config, "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "upgraded from schema 1 to schema 3" in done.stdout
    assert "re-read 30 DICOM files" in done.stdout
    backups = list((tmp_path / "storage").glob(f"dicomvault-{postgres_database}.backup-schema1-*.dump"))
    assert len(backups) == 1 and backups[0].stat().st_size > 0
    assert _version(postgres_cluster, postgres_database) == "3"
    after = _served(config, worker_pool)
    assert after == before
    assert len(after["finds"][0]) == 30  # the re-read filled InstanceTags
    again = dicomvault("upgrade", config, "--no-progress")
    assert again.returncode == 0 and "no upgrade needed" in again.stdout
    # The backup is a real one: pg_restore lists the tables of schema 1.
    listing = subprocess.run(
        [str(postgres_cluster.bin / "pg_restore"), "--list", str(backups[0])],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "TABLE public changes" in listing.stdout and "instancetags" not in listing.stdout


def test_upgrade_refused_while_a_server_is_connected(
    tmp_path: Path, postgres_cluster: PostgresCluster, postgres_database: str, running_server: Any
) -> None:
    section = postgres_cluster.section(postgres_database)
    server = running_server(PostgreSQL=section)  # "Lock": false: no exclusive lock, but a session
    config = _write_config(tmp_path / "cli", section)
    done = dicomvault("upgrade", config, "--no-progress")
    assert done.returncode == 3, done.stderr
    assert "dicomvault session(s) connected from" in done.stderr
    server.stop()
    locked = running_server(PostgreSQL={**section, "Lock": True})
    done = dicomvault("upgrade", config, "--no-progress")
    assert done.returncode == 3 and '"Lock": true' in done.stderr
    locked.stop()


def test_newer_schema_and_unreachable_database(
    tmp_path: Path, postgres_cluster: PostgresCluster, postgres_database: str, worker_pool: WorkerPool
) -> None:
    config = _write_config(tmp_path, postgres_cluster.section(postgres_database))
    _fill(config, worker_pool, 1)
    with postgres_cluster.connect(postgres_database) as conn:
        conn.execute(
            "UPDATE GlobalProperties SET value = '7' WHERE property = %s",
            (int(GlobalProperty.DICOMVAULT_SCHEMA_VERSION),),
        )
    done = dicomvault("upgrade", config, "--no-progress")
    assert done.returncode == 3 and "too recent for this version of dicomvault" in done.stderr
    assert _version(postgres_cluster, postgres_database) == "7"
    gone = _write_config(
        tmp_path / "gone",
        {**postgres_cluster.section("x"), "Port": free_port(), "MaximumConnectionRetries": 0},
    )
    done = dicomvault("upgrade", gone, "--no-progress")
    assert done.returncode == 3 and "unreachable" in done.stderr


@pytest.mark.slow
def test_upgrade_killed_during_the_re_read_resumes(
    tmp_path: Path, postgres_cluster: PostgresCluster, postgres_database: str, worker_pool: WorkerPool
) -> None:
    config = _write_config(tmp_path, postgres_cluster.section(postgres_database))
    before = _fill(config, worker_pool, 120)
    _make_schema1(postgres_cluster, postgres_database)
    for attempt in range(3):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dicomvault",
                "upgrade",
                str(config),
                "--no-progress",
                "--no-backup",
                "--batch-size",
                "4",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if _version(postgres_cluster, postgres_database).startswith("upgrading-to-"):
                with postgres_cluster.connect(postgres_database) as conn:
                    row = conn.execute(
                        "SELECT value FROM GlobalProperties WHERE property = %s",
                        (int(GlobalProperty.DICOMVAULT_UPGRADE_CURSOR),),
                    ).fetchone()
                if row is not None and int(row[0]) > 0:
                    break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if attempt == 0:
            assert _version(postgres_cluster, postgres_database).startswith("upgrading-to-")
            refused = dicomvault("serve", config)
            assert refused.returncode == 3 and "half-way through an upgrade" in refused.stderr
    done = dicomvault("upgrade", config, "--no-progress")
    assert done.returncode == 0, done.stderr
    assert _served(config, worker_pool) == before
