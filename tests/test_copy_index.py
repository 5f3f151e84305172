"""`dicomvault copy-index`, run as an operator runs it, against a real PostgreSQL: an archive filled
over REST on SQLite (deletions leaving gaps in the numbering, metadata revisions, protection, user
attachments compressed and not, exports, labels) copied to PostgreSQL, served from there with the
same storage folder and answering exactly as the SQLite server did, numbering continued, then copied
back to SQLite; the refusals (exit 3: destination not empty, schema versions, index in use,
database unreachable), usage errors (exit 2), and a copy failing or interrupted at random moments
leaving the destination empty, never half written."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from dicomvault.config import load_config
from dicomvault.index.copy import copy_index
from dicomvault.ingest.pool import WorkerPool
from dicomvault.server import Server, build
from tests.dicomgen import Spec, make_bytes
from tests.postgres import PostgresCluster
from tests.servers import free_port
from tests.upgrades import REPO, dicomvault, set_version

NAMES = {"UserMetadata": {"Sample": 1024}, "UserContentType": {"sample": 1025}}
LEVELS = ("patients", "studies", "series", "instances")


def write_config(path: Path, **values: Any) -> Path:
    path.write_text(json.dumps({**NAMES, "HttpPort": 0, "DicomPort": 0, **values}))
    return path


def sqlite_config(base: Path, name: str, storage: Path, **values: Any) -> Path:
    return write_config(base / f"{name}.json", StorageDirectory=str(storage), IndexDirectory=str(base / name), **values)


def pg_config(base: Path, name: str, cluster: PostgresCluster, database: str, storage: Path, **section: Any) -> Path:
    return write_config(
        base / f"{name}.json", StorageDirectory=str(storage), PostgreSQL=cluster.section(database, **section)
    )


@contextlib.contextmanager
def serving(config: Path, pool: WorkerPool) -> Iterator[tuple[Server, TestClient]]:
    server = build(load_config(config), workers=pool)
    try:
        with TestClient(server.app(), raise_server_exceptions=False, client=("127.0.0.1", 50000)) as client:  # type: ignore[arg-type]
            yield server, client
    finally:
        server.close()


def copy(source: Path, destination: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return dicomvault("copy-index", source, destination, "--no-progress", *options)


def upload(client: TestClient, spec: Spec) -> dict[str, Any]:
    answer = client.post("/instances", content=make_bytes(spec))
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def fill(config: Path, pool: WorkerPool) -> None:
    """An archive with everything the index keeps, and gaps in every numbering."""
    with serving(config, pool) as (server, client):
        stored = [upload(client, Spec(seed=i, patient_id=f"P{i % 4}", instance_number=i)) for i in range(8)]
        first = stored[0]["ID"]
        url = f"/instances/{first}/metadata/Sample"
        etag = client.put(url, content=b"one").headers["etag"]
        assert client.put(url, content=b"two", headers={"If-Match": etag}).status_code == 200  # revision 1
        assert client.put(f"/patients/{stored[1]['ParentPatient']}/protected", content=b"1").status_code == 200
        assert client.put(f"/instances/{stored[1]['ID']}/attachments/sample", content=b"plain " * 50).status_code == 200
        assert client.delete(f"/instances/{stored[2]['ID']}").status_code == 200
        assert client.delete(f"/patients/{stored[3]['ParentPatient']}").status_code == 200
        series = stored[5]["ParentSeries"]
        server.context.index.write(
            lambda tx: tx.execute(
                "INSERT INTO ExportedResources(resourceType, publicId, remoteModality, patientId, studyInstanceUid, "
                "seriesInstanceUid, sopInstanceUid, date) VALUES (2, ?, 'PACS', 'P1', '1.2', '1.2.3', '', "
                "'20240101T000000')",
                (series,),
            )
        )
        server.context.index.write(
            lambda tx: tx.execute(
                "INSERT INTO Labels(id, label) SELECT internalId, 'urgent' FROM Resources WHERE publicId = ?", (series,)
            )
        )
    # The same archive goes on with compression on: attachments of both kinds.
    data = json.loads(config.read_text())
    write_config(config, **{**data, "StorageCompression": True})
    with serving(config, pool) as (_, client):
        later = [upload(client, Spec(seed=10 + i, patient_id=f"P{i}", instance_number=i)) for i in range(3)]
        assert client.put(f"/instances/{later[0]['ID']}/attachments/sample", content=b"zipped " * 50).status_code == 200
        assert client.delete(f"/instances/{later[2]['ID']}").status_code == 200


def snapshot(client: TestClient) -> dict[str, Any]:
    """Every answer of the REST API that reads the index."""
    snap: dict[str, Any] = {level: client.get(f"/{level}?expand").json() for level in LEVELS}
    snap["changes"] = client.get("/changes?limit=100000").json()
    snap["exports"] = client.get("/exports?limit=100000").json()
    snap["deleted"] = client.get("/dicomvault/deleted?limit=10000").json()
    snap["statistics"] = client.get("/statistics").json()
    for patient in snap["patients"]:
        snap[f"protected {patient['ID']}"] = client.get(f"/patients/{patient['ID']}/protected").text
    for instance in snap["instances"]:
        base = f"/instances/{instance['ID']}"
        snap[f"file {base}"] = hashlib.md5(client.get(f"{base}/file").content).hexdigest()
        snap[f"metadata {base}"] = client.get(f"{base}/metadata?expand").json()
        snap[f"sample revision {base}"] = client.get(f"{base}/metadata/Sample").headers.get("etag")
        attachments = client.get(f"{base}/attachments?full").json()
        snap[f"attachments {base}"] = attachments
        for name in attachments:
            snap[f"{name} {base}"] = client.get(f"{base}/attachments/{name}/info").json()
            snap[f"{name} etag {base}"] = client.get(f"{base}/attachments/{name}").headers.get("etag")
            snap[f"{name} data {base}"] = hashlib.md5(client.get(f"{base}/attachments/{name}/data").content).hexdigest()
    return snap


def report(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def pg_tables(cluster: PostgresCluster, database: str) -> set[str]:
    with cluster.connect(database) as conn:
        rows = conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        return {str(r[0]) for r in rows}


def test_round_trip_sqlite_postgresql_sqlite(
    tmp_path: Path, postgres_cluster: PostgresCluster, postgres_database: str, worker_pool: WorkerPool
) -> None:
    storage = tmp_path / "storage"
    source = sqlite_config(tmp_path, "sqlite", storage)
    fill(source, worker_pool)
    with serving(source, worker_pool) as (_, client):
        before = snapshot(client)
    assert before["changes"]["Last"] > len(before["changes"]["Changes"])  # gaps: deleted resources' changes
    assert len(before["instances"]) == 7 and before["exports"]["Exports"] and before["deleted"]["Deleted"]
    with contextlib.closing(sqlite3.connect(tmp_path / "sqlite" / "dicomvault.db")) as conn:
        kinds = conn.execute("SELECT DISTINCT fileType, compressionType FROM AttachedFiles").fetchall()
        assert sorted(kinds) == [(1, 1), (1, 2), (1025, 1), (1025, 2)]  # DICOM and user, zlib and not

    target = pg_config(tmp_path, "pg", postgres_cluster, postgres_database, storage)
    done = copy(source, target, "--json")
    there = report(done)
    assert there["Verified"] is True and there["Storage"]["Shared"] is True
    assert there["LastChange"] == before["changes"]["Last"]
    assert there["Resources"]["instances"] == 7
    assert all(check["Ok"] for check in there["Checks"])
    resources_counter = next(c["Source"] for c in there["Checks"] if c["Name"] == "counter resources")

    # Copying again merges nothing, into either backend.
    again = copy(source, target)
    assert again.returncode == 3 and "not empty" in again.stderr and "never merges" in again.stderr
    back = sqlite_config(tmp_path, "back", storage)
    assert copy(target, source).returncode == 3

    with serving(target, worker_pool) as (server, client):
        assert snapshot(client) == before
        # A server is using the PostgreSQL index ("Lock": false): it cannot be the source now.
        busy = copy(target, back)
        assert busy.returncode == 3 and "in use" in busy.stderr, busy.stderr
        assert not (tmp_path / "back" / "dicomvault.db").exists()
        # The numbering goes on where the SQLite index stopped.
        last = before["changes"]["Last"]
        new = upload(client, Spec(seed=99, patient_id="P9"))
        following = client.get(f"/changes?since={last}&limit=100").json()["Changes"]
        assert [c["Seq"] for c in following] == [last + 1, last + 2, last + 3, last + 4]
        assert {c["ID"] for c in following} == {
            new["ID"],
            new["ParentSeries"],
            new["ParentStudy"],
            new["ParentPatient"],
        }
        internal = server.context.index.read(
            lambda tx: tx.fetch_one("SELECT internalId FROM Resources WHERE publicId = ?", (new["ParentPatient"],))[0]
        )
        assert internal == resources_counter + 1
    with serving(target, worker_pool) as (_, client):  # restarted: every resource stable, as after a copy
        middle = snapshot(client)

    home = report(copy(target, back, "--json"))
    assert home["Verified"] is True and home["LastChange"] == last + 4
    with serving(back, worker_pool) as (_, client):
        assert snapshot(client) == middle
        following = client.get(f"/changes?since={last + 4}").json()
        upload(client, Spec(seed=98, patient_id="P8"))
        assert client.get(f"/changes?since={last + 4}").json()["Changes"][0]["Seq"] == last + 5
        assert following["Changes"] == []
    # Labels have no REST route in Orthanc 1.10.1: read the copied row itself.
    with contextlib.closing(sqlite3.connect(tmp_path / "back" / "dicomvault.db")) as conn:
        assert conn.execute("SELECT label FROM Labels").fetchall() == [("urgent",)]


def small_source(tmp_path: Path, pool: WorkerPool, name: str = "src", instances: int = 1) -> Path:
    config = sqlite_config(tmp_path, name, tmp_path / "storage")
    with serving(config, pool) as (_, client):
        for seed in range(instances):
            upload(client, Spec(seed=seed))
    return config


def test_the_report_says_storage_is_not_copied(tmp_path: Path, worker_pool: WorkerPool) -> None:
    source = small_source(tmp_path, worker_pool)
    elsewhere = sqlite_config(tmp_path, "other", tmp_path / "elsewhere")
    done = copy(source, elsewhere)
    assert done.returncode == 0, done.stderr
    assert f"storage not copied: the index lists the files of folder {tmp_path / 'storage'}" in done.stdout
    assert "WARNING: TO_CONFIG names another storage area" in done.stdout
    assert "does not copy files" in done.stderr


def test_refuses_other_schema_versions(
    tmp_path: Path, postgres_cluster: PostgresCluster, postgres_database: str, worker_pool: WorkerPool
) -> None:
    source = small_source(tmp_path, worker_pool)
    target = pg_config(tmp_path, "pg", postgres_cluster, postgres_database, tmp_path / "storage")
    set_version(tmp_path / "src" / "dicomvault.db", "2")
    done = copy(source, target)
    assert done.returncode == 3
    assert f"dicomvault upgrade {source}" in done.stderr and "schema version 2" in done.stderr
    set_version(tmp_path / "src" / "dicomvault.db", "99")
    assert "too recent" in copy(source, target).stderr
    assert pg_tables(postgres_cluster, postgres_database) == set()
    # An empty destination at another version: refused too, naming its own configuration.
    set_version(tmp_path / "src" / "dicomvault.db", "3")
    empty = small_source(tmp_path, worker_pool, "empty", instances=0)  # a server ran on it: a fresh index
    set_version(tmp_path / "empty" / "dicomvault.db", "2")
    done = copy(source, empty)
    assert done.returncode == 3 and f"dicomvault upgrade {empty}" in done.stderr
    set_version(tmp_path / "empty" / "dicomvault.db", "3")  # now a fresh, empty index: accepted
    assert copy(source, empty).returncode == 0


def test_refuses_indexes_in_use(
    tmp_path: Path, postgres_cluster: PostgresCluster, postgres_database: str, worker_pool: WorkerPool
) -> None:
    source = small_source(tmp_path, worker_pool)
    target = pg_config(tmp_path, "pg", postgres_cluster, postgres_database, tmp_path / "storage", Lock=True)
    with serving(source, worker_pool):
        done = copy(source, target)
    assert done.returncode == 3 and "in use by another dicomvault process" in done.stderr, done.stderr
    with serving(target, worker_pool):  # "Lock": true, on the (empty) destination
        done = copy(source, target)
    assert done.returncode == 3 and '("Lock": true)' in done.stderr, done.stderr
    assert copy(source, target).returncode == 0  # both stopped


def test_refuses_an_unreachable_database(tmp_path: Path, worker_pool: WorkerPool) -> None:
    source = small_source(tmp_path, worker_pool)
    nowhere = write_config(
        tmp_path / "nowhere.json",
        StorageDirectory=str(tmp_path / "storage"),
        PostgreSQL={"EnableIndex": True, "Host": "127.0.0.1", "Port": free_port(), "Database": "x", "Username": "u"},
    )
    for args in ((source, nowhere), (nowhere, source)):
        done = copy(*args)
        assert done.returncode == 3, done.stderr
        assert "is unreachable" in done.stderr and 'the "PostgreSQL" section of' in done.stderr


def test_usage_errors(tmp_path: Path, worker_pool: WorkerPool) -> None:
    source = small_source(tmp_path, worker_pool)
    assert copy(source, tmp_path / "missing.json").returncode == 2
    assert dicomvault("copy-index", source).returncode == 2
    same = copy(source, source)
    assert same.returncode == 2 and "name the same index" in same.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    assert copy(source, bad).returncode == 2
    corrupt = sqlite_config(tmp_path, "corrupt", tmp_path / "storage")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "dicomvault.db").write_bytes(b"not a database at all" * 100)
    done = copy(corrupt, sqlite_config(tmp_path, "dst", tmp_path / "storage"))
    assert done.returncode == 1 and "cannot be read as an SQLite database" in done.stderr, done.stderr
    nothing = sqlite_config(tmp_path, "nothing", tmp_path / "storage")
    done = copy(nothing, sqlite_config(tmp_path, "dst", tmp_path / "storage"))
    assert done.returncode == 3 and "nothing to copy" in done.stderr


def test_a_failed_copy_leaves_the_destination_empty(
    tmp_path: Path, postgres_cluster: PostgresCluster, postgres_database: str, worker_pool: WorkerPool
) -> None:
    source = small_source(tmp_path, worker_pool)
    # Injected fault: a value PostgreSQL's text cannot hold (NUL), reached after most tables are copied.
    with contextlib.closing(sqlite3.connect(tmp_path / "src" / "dicomvault.db")) as conn, conn:
        conn.execute(
            "INSERT INTO DeletedResources(resourceType, publicId, parentPublicId, date) VALUES (0, ?, NULL, 'x')",
            ("bad\x00id",),
        )
    target = pg_config(tmp_path, "pg", postgres_cluster, postgres_database, tmp_path / "storage")
    done = copy(source, target)
    assert done.returncode == 1 and "the copy failed" in done.stderr and "left as it was" in done.stderr
    assert pg_tables(postgres_cluster, postgres_database) == set()  # the schema was rolled back too

    # Injected fault: a BLOB where text belongs, which PostgreSQL takes but turns into other text. The
    # copy completes and the verification catches it: nothing is kept.
    with contextlib.closing(sqlite3.connect(tmp_path / "src" / "dicomvault.db")) as conn, conn:
        conn.execute("DELETE FROM DeletedResources")
        conn.execute("UPDATE Metadata SET value = X'616263' WHERE rowid = (SELECT MIN(rowid) FROM Metadata)")
    done = copy(source, target)
    assert done.returncode == 1, done.stderr
    assert "MISMATCH in 1 of" in done.stdout and "table Metadata: source" in done.stdout
    assert "NOT kept" in done.stdout and "it was not kept" in done.stderr
    assert pg_tables(postgres_cluster, postgres_database) == set()


# -- interrupted copies ------------------------------------------------------------------------------


def multiply(index: Path, times: int) -> None:
    """Make a small index `times` larger (distinct ids, uuids and numbers): an index whose copy
    takes long enough to be interrupted, without storing thousands of files."""
    offset = 1000
    with contextlib.closing(sqlite3.connect(index)) as conn, conn:
        conn.execute("CREATE TEMP TABLE k(v INTEGER)")
        conn.executemany("INSERT INTO k VALUES (?)", [(v,) for v in range(1, times)])
        conn.execute(
            f"INSERT INTO Resources SELECT internalId + v * {offset}, resourceType, publicId || '-' || v, "
            f"parentId + v * {offset} FROM Resources, k"
        )
        for table in ("MainDicomTags", "DicomIdentifiers", "InstanceTags"):
            conn.execute(f"INSERT INTO {table} SELECT id + v * {offset}, tagGroup, tagElement, value FROM {table}, k")
        conn.execute(f"INSERT INTO Metadata SELECT id + v * {offset}, type, value, revision FROM Metadata, k")
        conn.execute(
            f"INSERT INTO AttachedFiles SELECT id + v * {offset}, fileType, uuid || '-' || v, compressedSize, "
            "uncompressedSize, compressionType, uncompressedMD5, compressedMD5, revision FROM AttachedFiles, k"
        )
        conn.execute(
            f"INSERT INTO Changes SELECT seq + v * {offset}, changeType, internalId + v * {offset}, resourceType, date "
            "FROM Changes, k"
        )


def start_copy(source: Path, destination: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dicomvault", "copy-index", str(source), str(destination), "--no-progress", "--verbose"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )


def settle(cluster: PostgresCluster, database: str) -> None:
    """Wait until the killed copy's session is gone (its backend rolls back, then exits)."""
    with cluster.connect() as conn:
        for _ in range(200):
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name LIKE 'dicomvault%%'",
                (database,),
            ).fetchone()
            if row is not None and row[0] == 0:
                return
            time.sleep(0.05)
    raise AssertionError("the interrupted copy's session did not end")


def resources_in(destination: Path, cluster: PostgresCluster) -> int | None:
    """How many resources the destination's index holds (None: no index at all)."""
    config = load_config(destination)
    if config.postgresql is None:
        index = config.index_directory / "dicomvault.db"
        if not index.exists():
            return None
        with contextlib.closing(sqlite3.connect(index)) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM Resources").fetchone()[0])
    database = str(config.postgresql["Database"])
    if not pg_tables(cluster, database):
        return None
    with cluster.connect(database) as conn:
        row = conn.execute("SELECT COUNT(*) FROM Resources").fetchone()
        return int(row[0]) if row is not None else None


@pytest.mark.slow
def test_an_interrupted_copy_is_all_or_nothing(
    tmp_path: Path, postgres_cluster: PostgresCluster, worker_pool: WorkerPool
) -> None:
    storage = tmp_path / "storage"
    source = sqlite_config(tmp_path, "src", storage)
    with serving(source, worker_pool) as (_, client):
        for i in range(4):
            upload(client, Spec(seed=i, patient_id=f"P{i}"))
    multiply(tmp_path / "src" / "dicomvault.db", 100)
    with contextlib.closing(sqlite3.connect(tmp_path / "src" / "dicomvault.db")) as conn:
        resources = conn.execute("SELECT COUNT(*) FROM Resources").fetchone()[0]
    databases = [postgres_cluster.new_database() for _ in range(3)]
    try:
        pg_source = pg_config(tmp_path, "pgsrc", postgres_cluster, databases[0], storage)
        assert copy_index(load_config(source), load_config(pg_source), progress=False).verified
        attempts = [
            (source, pg_config(tmp_path, "pg1", postgres_cluster, databases[1], storage), signal.SIGKILL),
            (pg_source, sqlite_config(tmp_path, "back1", storage), signal.SIGINT),
            (source, pg_config(tmp_path, "pg2", postgres_cluster, databases[2], storage), signal.SIGINT),
            (pg_source, sqlite_config(tmp_path, "back2", storage), signal.SIGKILL),
        ]
        rng = random.Random(8)
        for src, dst, how in attempts:
            proc = start_copy(src, dst)
            assert proc.stderr is not None
            for line in proc.stderr:  # the copy has begun: its destination transaction is open
                if "rows of GlobalProperties" in line:
                    break
            time.sleep(rng.uniform(0.0, 0.8))  # a random moment of the copy (or after it)
            proc.send_signal(how)
            _, err = proc.communicate(timeout=60)
            if how == signal.SIGINT and proc.returncode != 0:
                # Ours, or click's own word when the signal came before the command started.
                assert proc.returncode == 1 and ("interrupted" in err or "Aborted!" in err), err
            for database in databases:
                settle(postgres_cluster, database)
            # Either nothing or everything.
            assert resources_in(dst, postgres_cluster) in (None, resources)
            # A new run after the interruption completes (or refuses a copy that had completed).
            if resources_in(dst, postgres_cluster) is None:
                assert copy_index(load_config(src), load_config(dst), progress=False).verified
            assert resources_in(dst, postgres_cluster) == resources
        assert not list(tmp_path.glob("back*/.dicomvault.db.copy-index-*"))  # removed by the next run
    finally:
        for database in databases:
            postgres_cluster.drop_database(database)
