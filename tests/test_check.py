"""`dicomvault check CONFIG [--repair] [--json]`, run as an operator runs it, on SQLite and on a real
PostgreSQL (and once on a real S3 server): a clean archive passes (exit 0); each problem, injected for
real (files deleted, truncated, a byte flipped, a compressed file damaged, rows edited by SQL, orphan
and temporary files), is found and named missing / corrupt / orphan (exit 1); `--repair` removes the
orphans only and recomputes the counters, and a re-run passes; the refusals (exit 3: index in use,
other schema versions, an Orthanc index, an unreachable database) and usage errors (exit 2)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dicomvault.config import load_config
from dicomvault.enums import GlobalProperty
from dicomvault.ingest.pool import WorkerPool
from dicomvault.ingest.store import Origin
from dicomvault.server import build
from dicomvault.storage.area import StorageArea
from dicomvault.storage.factory import open_storage_area
from tests.dicomgen import Spec, make_bytes
from tests.postgres import PASSWORD, PostgresCluster
from tests.s3 import SeaweedS3
from tests.servers import free_port
from tests.upgrades import dicomvault, set_version

JSON_KEYS = {"ok", "index", "storage", "schema_version", "checked", "counts", "problems", "repaired"}
PROBLEM_KEYS = {"kind", "subject", "uuid", "resource", "level", "content_type", "detail", "repaired"}
USER_TYPE = 1025


class Archive:
    """An installation (configuration file, storage folder, index) and direct access to its rows."""

    def __init__(self, base: Path, index: dict[str, Any], cluster: PostgresCluster | None, database: str) -> None:
        self.base = base
        self.storage = base / "storage"
        self.config = base / "config.json"
        self.cluster = cluster
        self.database = database
        self.values: dict[str, Any] = {
            "StorageDirectory": str(self.storage),
            "HttpPort": 0,
            "DicomPort": 0,
            "UserContentType": {"sample": USER_TYPE},
            **index,
        }
        self.write_config()

    def write_config(self, **values: Any) -> None:
        self.values.update(values)
        self.config.write_text(json.dumps(self.values))

    def fill(self, pool: WorkerPool, count: int, compression: bool = False, first: int = 0) -> None:
        self.write_config(StorageCompression=compression)
        server = build(load_config(self.config), workers=pool)
        try:
            for i in range(first, first + count):
                spec = Spec(seed=i, patient_id=f"P{i % 3}", instance_number=i)
                server.context.ingest.store_sync(make_bytes(spec), Origin())
        finally:
            server.close()

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement with the foreign keys off (to break the tree as a crash or a bug would)."""
        if self.cluster is None:
            conn = sqlite3.connect(self.storage / "dicomvault.db", isolation_level=None)
            try:
                return [tuple(r) for r in conn.execute(statement, params).fetchall()]
            finally:
                conn.close()
        with psycopg.connect(self.cluster.uri(self.database), autocommit=True) as pg:
            pg.execute("SET session_replication_role = replica")  # no foreign key triggers
            cursor = pg.execute(statement.replace("?", "%s"), params or None)
            return [tuple(r) for r in cursor.fetchall()] if cursor.description else []

    def attachments(self, compression: int | None = None) -> list[tuple[str, str, int]]:
        """(uuid, owner public id, content type) of the attachments, in uuid order."""
        where = "" if compression is None else f" WHERE a.compressionType = {compression}"
        rows = self.sql(
            "SELECT a.uuid, r.publicId, a.fileType FROM AttachedFiles a JOIN Resources r ON r.internalId = a.id"
            + where
            + " ORDER BY a.uuid"
        )
        return [(str(u), str(p), int(t)) for u, p, t in rows]

    def path(self, uuid: str) -> Path:
        return self.storage / uuid[0:2] / uuid[2:4] / uuid

    def check(self, *options: str) -> subprocess.CompletedProcess[str]:
        return dicomvault("check", self.config, *options)

    def check_json(self, *options: str) -> dict[str, Any]:
        done = self.check("--json", *options)
        assert done.returncode in (0, 1), done.stderr
        report: dict[str, Any] = json.loads(done.stdout)  # one JSON object, nothing else on stdout
        assert report["ok"] == (done.returncode == 0)
        return report


@pytest.fixture(params=["sqlite", "postgresql"])
def archive(request: pytest.FixtureRequest, tmp_path: Path) -> Archive:
    if request.param == "sqlite":
        return Archive(tmp_path, {}, None, "")
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    database: str = request.getfixturevalue("postgres_database")
    return Archive(tmp_path, {"PostgreSQL": cluster.section(database)}, cluster, database)


def find(report: dict[str, Any], kind: str, subject: str, **fields: Any) -> list[dict[str, Any]]:
    return [
        p
        for p in report["problems"]
        if p["kind"] == kind and p["subject"] == subject and all(p[k] == v for k, v in fields.items())
    ]


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_clean_archive_passes(archive: Archive, worker_pool: WorkerPool) -> None:
    archive.fill(worker_pool, 4)
    archive.fill(worker_pool, 3, compression=True, first=4)
    done = archive.check()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "OK: no problem found"
    assert "3 patients" in done.stdout and "7 instances" in done.stdout
    report = archive.check_json()
    assert set(report) == JSON_KEYS
    assert report["ok"] is True and report["problems"] == [] and report["repaired"] == 0
    assert report["counts"] == {"missing": 0, "corrupt": 0, "orphan": 0}
    assert report["schema_version"] == 3
    assert report["checked"]["attachments"] == 7 and report["checked"]["files"] == 7
    assert report["checked"]["resources"] == 3 + 7 + 7 + 7
    assert report["checked"]["bytes"] == sum(archive.path(u).stat().st_size for u, _, _ in archive.attachments())
    assert str(archive.storage) in report["storage"]
    assert ("PostgreSQL" if archive.cluster else "SQLite") in report["index"]
    assert PASSWORD not in done.stdout + done.stderr


def test_each_problem_is_named(archive: Archive, worker_pool: WorkerPool) -> None:
    archive.fill(worker_pool, 8)
    archive.fill(worker_pool, 2, compression=True, first=8)
    plain = archive.attachments(compression=1)
    (zipped, zipped_owner, _), (bombed, _, _) = archive.attachments(compression=2)
    (gone, gone_owner, _), (short, _, _), (flipped, _, _), (resized, _, _) = plain[:4]
    archive.path(gone).unlink()
    with open(archive.path(short), "r+b") as f:
        f.truncate(100)
    flip_byte(archive.path(flipped), 200)
    archive.sql("UPDATE AttachedFiles SET compressedSize = compressedSize + 1 WHERE uuid = ?", (resized,))
    flip_byte(archive.path(zipped), 30)  # inside the zlib stream
    bomb = archive.path(bombed)
    size = bomb.stat().st_size
    bomb.write_bytes(bomb.read_bytes()[:8] + (b"not zlib at all" * size)[: size - 8])  # same size, not zlib
    orphan = archive.path("0123abcd-0000-4000-8000-000000000000")
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"x" * 1234)
    temp = archive.path(plain[5][0]).parent / ".tmp-fedcba98-0000-4000-8000-000000000000"
    temp.write_bytes(b"half written")
    # A series whose study is gone, a study without series, an instance without its DICOM file row.
    series_id, study_id = archive.sql(
        "SELECT s.internalId, s.parentId FROM Resources s JOIN Resources i ON i.parentId = s.internalId "
        "WHERE i.publicId = ?",
        (plain[4][1],),
    )[0]
    series_public = archive.sql("SELECT publicId FROM Resources WHERE internalId = ?", (series_id,))[0][0]
    archive.sql("DELETE FROM Resources WHERE internalId = ?", (study_id,))
    patient_id = archive.sql("SELECT MIN(internalId) FROM Resources WHERE resourceType = 1")[0][0]
    archive.sql("INSERT INTO Resources(resourceType, publicId, parentId) VALUES (2, 'lonely-study', ?)", (patient_id,))
    archive.sql("DELETE FROM AttachedFiles WHERE uuid = ?", (plain[6][0],))  # its file becomes an orphan
    archive.sql("UPDATE StorageTotals SET uncompressedSize = uncompressedSize + 1000")

    done = archive.check()
    assert done.returncode == 1
    assert done.stdout.splitlines()[-1].startswith("PROBLEMS FOUND: ")
    for heading in ("missing (", "corrupt (", "orphan ("):
        assert heading in done.stdout
    report = archive.check_json()
    assert set(report) == JSON_KEYS and report["ok"] is False
    assert all(set(p) == PROBLEM_KEYS for p in report["problems"])
    missing = find(report, "missing", "attachment", uuid=gone)
    assert missing[0]["resource"] == gone_owner and missing[0]["level"] == "Instance"
    assert missing[0]["content_type"] == 1 and str(archive.path(gone)) in missing[0]["detail"]
    assert "100 bytes stored" in find(report, "corrupt", "attachment", uuid=short)[0]["detail"]
    assert "MD5" in find(report, "corrupt", "attachment", uuid=flipped)[0]["detail"]
    assert "the index records" in find(report, "corrupt", "attachment", uuid=resized)[0]["detail"]
    damaged = find(report, "corrupt", "attachment", uuid=zipped)[0]
    assert damaged["resource"] == zipped_owner and "MD5" in damaged["detail"]
    assert "zlib" in find(report, "corrupt", "attachment", uuid=bombed)[0]["detail"]
    assert "1234 bytes" in find(report, "orphan", "file", uuid=orphan.name)[0]["detail"]
    assert "temporary file" in find(report, "orphan", "file", uuid="fedcba98-0000-4000-8000-000000000000")[0]["detail"]
    assert find(report, "orphan", "file", uuid=plain[6][0])
    assert "is gone" in find(report, "corrupt", "resource", resource=series_public, level="Series")[0]["detail"]
    assert "without any series" in find(report, "corrupt", "resource", resource="lonely-study")[0]["detail"]
    assert find(report, "missing", "attachment", resource=plain[6][1], content_type=1, uuid=None)
    statistics = find(report, "corrupt", "statistics")
    assert len(statistics) == 1 and "uncompressed" in statistics[0]["detail"]
    assert report["counts"] == {
        kind: sum(1 for p in report["problems"] if p["kind"] == kind) for kind in ("missing", "corrupt", "orphan")
    }
    assert report["counts"]["orphan"] == 3 and report["repaired"] == 0

    # --repair removes the orphans (and only them) and fixes the counters; the rest stays for an operator.
    kept = {p: p.read_bytes() for p in archive.storage.glob("??/??/*") if p.name != orphan.name}
    repaired = archive.check_json("--repair")
    assert repaired["ok"] is False and repaired["repaired"] == 4
    assert all(p["repaired"] for p in repaired["problems"] if p["kind"] == "orphan" or p["subject"] == "statistics")
    assert not any(
        p["repaired"] for p in repaired["problems"] if p["kind"] != "orphan" and p["subject"] != "statistics"
    )
    assert not orphan.exists() and not orphan.parent.exists() and not orphan.parent.parent.exists()  # pruned
    assert not temp.exists() and not archive.path(plain[6][0]).exists()
    for path, data in kept.items():
        if path != temp and path != archive.path(plain[6][0]):
            assert path.read_bytes() == data  # every file with a row untouched, damaged ones included
    again = archive.check_json()
    assert again["counts"]["orphan"] == 0 and not find(again, "corrupt", "statistics")
    assert again["counts"]["missing"] == report["counts"]["missing"]
    assert again["counts"]["corrupt"] == report["counts"]["corrupt"] - 1


def test_repair_then_a_rerun_passes(archive: Archive, worker_pool: WorkerPool) -> None:
    archive.fill(worker_pool, 3)
    uuid = archive.attachments()[0][0]
    orphan = archive.path("abcdef01-2345-4678-9abc-def012345678")
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"lost")
    (archive.path(uuid).parent / ".tmp-abcdef01-2345-4678-9abc-def012345679").write_bytes(b"")
    archive.sql("UPDATE StorageTotals SET compressedSize = 0, uncompressedSize = 0")
    # A copy of a file that has a row, in the wrong folder: an orphan, but never removed.
    misplaced = archive.storage / "ff" / "ff" / uuid
    misplaced.parent.mkdir(parents=True)
    misplaced.write_bytes(archive.path(uuid).read_bytes())
    first = archive.check("--repair")
    assert first.returncode == 1, first.stdout  # the misplaced copy is left for an operator
    assert "wrong folder" in first.stdout and misplaced.exists()
    assert not orphan.exists() and not orphan.parent.parent.exists()
    misplaced.unlink()
    done = archive.check("--repair")
    assert done.returncode == 0, done.stdout
    assert "removed 2 empty storage folders" in done.stdout  # ff/ff
    assert archive.check().returncode == 0
    totals = archive.sql("SELECT compressedSize, uncompressedSize FROM StorageTotals")[0]
    sizes = archive.sql("SELECT SUM(compressedSize), SUM(uncompressedSize) FROM AttachedFiles")[0]
    assert tuple(map(int, totals)) == tuple(map(int, sizes))
    assert len(list(archive.storage.glob("??/??/*"))) == 3


def test_repair_of_counters_alone_passes(archive: Archive, worker_pool: WorkerPool) -> None:
    archive.fill(worker_pool, 2)
    archive.sql("UPDATE StorageTotals SET compressedSize = compressedSize * 2")
    expected = 1
    if archive.cluster is not None:  # PostgreSQL numbers new rows from its counters alone
        archive.sql("UPDATE Sequences SET value = 1 WHERE name = 'changes'")
        archive.sql("SELECT setval(pg_get_serial_sequence('resources', 'internalid'), 1)")
        expected = 3
    report = archive.check_json("--repair")
    assert report["ok"] is True and report["repaired"] == expected and report["counts"]["corrupt"] == expected
    assert len(find(report, "corrupt", "statistics", repaired=True)) == expected
    assert archive.check_json()["problems"] == []
    archive.fill(worker_pool, 1, first=2)  # the repaired counters number new rows without collisions
    assert archive.check_json()["problems"] == []


def test_refuses_an_index_in_use(archive: Archive, worker_pool: WorkerPool) -> None:
    archive.fill(worker_pool, 1)
    if archive.cluster is not None:
        archive.write_config(PostgreSQL={**archive.values["PostgreSQL"], "Lock": True})
    server = build(load_config(archive.config), workers=worker_pool)
    try:
        done = archive.check()
    finally:
        server.close()
    assert done.returncode == 3, done.stderr
    assert "refusing to check" in done.stderr and "in use" in done.stderr and done.stdout == ""
    if archive.cluster is not None:  # servers sharing the database without the lock: refused too
        archive.write_config(PostgreSQL={**archive.values["PostgreSQL"], "Lock": False})
        server = build(load_config(archive.config), workers=worker_pool)
        try:
            shared = archive.check()
        finally:
            server.close()
        assert shared.returncode == 3 and "session(s) connected" in shared.stderr, shared.stderr
    assert archive.check().returncode == 0


def test_refuses_other_schema_versions(archive: Archive, worker_pool: WorkerPool) -> None:
    archive.fill(worker_pool, 1)

    def set_schema(value: str) -> None:
        if archive.cluster is None:
            set_version(archive.storage / "dicomvault.db", value)
        else:
            prop = int(GlobalProperty.DICOMVAULT_SCHEMA_VERSION)
            archive.sql("UPDATE GlobalProperties SET value = ? WHERE property = ?", (value, prop))

    for value, words in (
        ("2", f"dicomvault upgrade {archive.config}"),
        ("99", "too recent"),
        ("upgrading-to-3", "half-way through an upgrade"),
    ):
        set_schema(value)
        done = archive.check()
        assert done.returncode == 3 and words in done.stderr, done.stderr
    set_schema("3")
    assert archive.check().returncode == 0


def test_refuses_an_orthanc_index_and_a_missing_index(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    storage.mkdir()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"StorageDirectory": str(storage)}))
    done = dicomvault("check", config)
    assert done.returncode == 3 and "nothing to check" in done.stderr, done.stderr
    (storage / "index").write_bytes(b"SQLite format 3\x00")
    done = dicomvault("check", config)
    assert done.returncode == 3 and f"Adopt it with: dicomvault upgrade {config}" in done.stderr, done.stderr
    assert sorted(p.name for p in storage.iterdir()) == ["index"]  # nothing created beside it


def test_refuses_an_unreachable_database(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    section = {
        "EnableIndex": True,
        "Host": "127.0.0.1",
        "Port": free_port(),
        "Database": "x",
        "Username": "u",
        "Password": "secret-pw",
    }
    config.write_text(json.dumps({"StorageDirectory": str(tmp_path), "PostgreSQL": section}))
    done = dicomvault("check", config, "--json")
    assert done.returncode == 3 and "is unreachable" in done.stderr and done.stdout == "", done.stderr
    assert "secret-pw" not in done.stderr


def test_usage_errors(tmp_path: Path) -> None:
    assert dicomvault("check", tmp_path / "missing.json").returncode == 2
    assert dicomvault("check").returncode == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    assert dicomvault("check", bad).returncode == 2


@pytest.mark.slow
def test_object_storage(tmp_path: Path, s3_server: SeaweedS3, worker_pool: WorkerPool) -> None:
    """The same check through the `StorageArea` protocol, on a real S3 server (listing, sizes, reads,
    removal of an orphan object)."""
    archive = Archive(tmp_path, {"AwsS3Storage": s3_server.section()}, None, "")
    archive.storage.mkdir()
    archive.fill(worker_pool, 3, compression=True)
    clean = archive.check_json()
    assert clean["ok"] is True and clean["checked"]["files"] == 3, clean
    assert "S3 bucket" in clean["storage"]
    area = _s3_area(archive)
    (gone, _, _), (flipped, _, _), _ = archive.attachments()
    area.remove(gone, content_type=1)
    data = bytearray(area.read(flipped, content_type=1))
    data[40] ^= 0xFF
    area.remove(flipped, content_type=1)
    area.create(flipped, bytes(data), content_type=1)
    area.create("0123abcd-0000-4000-8000-000000000000", b"orphan", content_type=1)
    report = archive.check_json("--repair")
    assert find(report, "missing", "attachment", uuid=gone)
    assert find(report, "corrupt", "attachment", uuid=flipped)
    assert find(report, "orphan", "file", uuid="0123abcd-0000-4000-8000-000000000000", repaired=True)
    assert not area.exists("0123abcd-0000-4000-8000-000000000000", content_type=1)


def _s3_area(archive: Archive) -> StorageArea:
    return open_storage_area(load_config(archive.config))
