"""Schema versions and `dicomvault upgrade`: refusals of older, newer and half-upgraded indexes,
the upgrade of every released fixture (answers identical to what its own code gave), backups,
resumption after SIGKILL at seeded random moments, problems in the storage folder, bad input."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from dicomvault.config import load_config
from dicomvault.enums import GlobalProperty
from dicomvault.index.schema import SCHEMA_VERSION, upgrading_marker
from dicomvault.index.transactions import ReadTx
from dicomvault.ingest.pool import WorkerPool
from dicomvault.server import Server, build
from tests.fixtures.generate_fixture import FINDS, files
from tests.upgrades import (
    REPO,
    SmallDisk,
    dicomvault,
    dump,
    expected,
    fixture_copy,
    make_schema1,
    renumber_changes_as_schema1,
    schema1_archive,
    set_version,
    start_upgrade,
)

RELEASED = [1]  # every released schema version older than the current one has a fixture
REREAD_TARGET = 2  # the migration that re-reads the files (schema 1 -> 2)


def _tree_hashes(folder: Path) -> dict[str, str]:
    """Every file of the storage folder but the index's own, with its content hash."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith("dicomvault.db")
    }


def _client(server: Server) -> TestClient:
    return TestClient(server.app(), client=("127.0.0.1", 50000))  # type: ignore[arg-type]


def _serve_once(config: Path, workers: WorkerPool) -> Server:
    return build(load_config(config), workers=workers)


# ---------------------------------------------------------------- refusals


def test_serve_refuses_an_older_schema_and_names_the_command(tmp_path: Path) -> None:
    config = fixture_copy(1, tmp_path)
    result = dicomvault("serve", config)
    assert result.returncode == 3
    assert "schema version 1" in result.stderr and f"needs schema {SCHEMA_VERSION}" in result.stderr
    assert f"dicomvault upgrade {config}" in result.stderr
    assert any(line.startswith("E") and "refusing to start" in line for line in result.stderr.splitlines())


def test_serve_refuses_a_newer_schema(tmp_path: Path) -> None:
    config = fixture_copy(1, tmp_path)
    index = tmp_path / "storage" / "dicomvault.db"
    set_version(index, str(SCHEMA_VERSION + 1))
    before = dump(index)
    for command in ("serve", "upgrade"):
        result = dicomvault(command, config)
        assert result.returncode == 3, result.stderr
        assert "too recent for this version of dicomvault" in result.stderr
    assert dump(index) == before


@pytest.mark.parametrize("target", [REREAD_TARGET, SCHEMA_VERSION, SCHEMA_VERSION + 1])
def test_serve_refuses_a_half_upgraded_index(tmp_path: Path, target: int) -> None:
    config = fixture_copy(1, tmp_path)
    set_version(tmp_path / "storage" / "dicomvault.db", upgrading_marker(target))
    result = dicomvault("serve", config)
    assert result.returncode == 3
    assert f"half-way through an upgrade to schema {target}" in result.stderr
    if target <= SCHEMA_VERSION:
        assert f"dicomvault upgrade {config}" in result.stderr
    else:
        assert "by a newer dicomvault" in result.stderr
        assert dicomvault("upgrade", config).returncode == 3


@pytest.mark.slow
def test_released_code_refuses_a_half_upgraded_index(tmp_path: Path) -> None:
    """dicomvault 0.1.0 itself (a git worktree of its tag) refuses the "upgrading to 2" marker."""
    worktree = tmp_path / "v0.1.0"
    tagged = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", "-q", "v0.1.0^{commit}"], capture_output=True
    )
    if tagged.returncode != 0:
        pytest.skip("the tag v0.1.0 is not in this clone (a shallow clone?): fetch the tags to run this test")
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), "v0.1.0"], check=True)
    try:
        config = fixture_copy(1, tmp_path / "data")
        set_version(tmp_path / "data" / "storage" / "dicomvault.db", upgrading_marker(2))
        result = subprocess.run(
            [sys.executable, "-m", "dicomvault", "serve", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(worktree / "src")},
        )
        assert result.returncode == 3, result.stderr
        assert "upgrading-to-2" in result.stderr
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)], check=True)


def test_foreign_and_corrupted_index_files(tmp_path: Path) -> None:
    config = fixture_copy(1, tmp_path)
    index = tmp_path / "storage" / "dicomvault.db"
    data = index.read_bytes()
    cases = {
        "garbage": b"this is not SQLite at all" * 100,
        "truncated": data[: len(data) // 3],
    }
    for name, content in cases.items():
        index.write_bytes(content)
        for command in ("serve", "upgrade"):
            result = dicomvault(command, config)
            assert result.returncode == 1, (name, command, result.stderr)
            assert "corrupted or truncated" in result.stderr, (name, result.stderr)
        assert index.read_bytes() == content  # never "repaired" into an empty index
    with sqlite3.connect(index.with_name("other.db")) as conn:
        conn.execute("CREATE TABLE Something(x)")
    index.unlink()
    index.with_name("other.db").rename(index)
    result = dicomvault("upgrade", config)
    assert result.returncode == 3 and "not a dicomvault index" in result.stderr


def test_wrong_paths(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "config.json"
    assert dicomvault("upgrade", missing).returncode != 0
    config = fixture_copy(1, tmp_path, IndexDirectory=str(tmp_path / "absent"))
    result = dicomvault("upgrade", config)
    assert result.returncode == 1 and "does not exist" in result.stderr
    assert not (tmp_path / "absent").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    config = fixture_copy(1, tmp_path / "x", IndexDirectory=str(empty))
    result = dicomvault("upgrade", config)
    assert result.returncode == 1 and "nothing to upgrade" in result.stderr
    assert not (empty / "dicomvault.db").exists()


def test_upgrade_refused_while_a_server_runs(tmp_path: Path, worker_pool: WorkerPool) -> None:
    config = fixture_copy(1, tmp_path)
    assert dicomvault("upgrade", config, "--no-progress").returncode == 0
    server = _serve_once(config, worker_pool)
    try:
        result = dicomvault("upgrade", config)
        assert result.returncode == 3 and "in use by another dicomvault process" in result.stderr
    finally:
        server.close()


# ---------------------------------------------------------------- upgrading each released fixture


@pytest.mark.parametrize("version", RELEASED)
def test_upgrade_of_a_released_fixture(tmp_path: Path, version: int, worker_pool: WorkerPool) -> None:
    config = fixture_copy(version, tmp_path)
    storage = tmp_path / "storage"
    index = storage / "dicomvault.db"
    original = dump(index)
    files_before = _tree_hashes(storage)
    result = dicomvault("upgrade", config)
    assert result.returncode == 0, result.stderr
    assert f"upgraded from schema {version} to schema {SCHEMA_VERSION}" in result.stdout
    assert "re-reading DICOM files" in result.stderr and "instances/s" in result.stderr  # the progress bar
    (backup,) = storage.glob(f"dicomvault.db.backup-schema{version}-*")
    assert dump(backup) == original  # a consistent copy of the index as it was
    assert _tree_hashes(storage) == files_before  # no DICOM file written, changed or removed
    again = dicomvault("upgrade", config)
    assert again.returncode == 0 and "no upgrade needed" in again.stdout
    assert len(list(storage.glob("dicomvault.db.backup-*"))) == 1
    old = expected(version)
    server = _serve_once(config, worker_pool)
    try:
        client = _client(server)
        for level in ("patients", "studies", "series", "instances"):
            # IsStable depends on the time since the last instance arrived: not part of the data.
            answer = [
                {k: v for k, v in item.items() if k != "IsStable"} for item in client.get(f"/{level}?expand").json()
            ]
            assert answer == [{k: v for k, v in item.items() if k != "IsStable"} for item in old[level]], level
        assert client.get("/statistics").json() == old["statistics"]
        assert client.get("/changes?limit=1000").json() == old["changes"]
        for instance, metadata in old["metadata"].items():
            assert client.get(f"/instances/{instance}/metadata?expand").json() == metadata
            assert client.get(f"/instances/{instance}/attachments/1025/data").content == b"fixture attachment"
        assert [client.post("/tools/find", json=query).json() for query in FINDS] == old["finds"]
        originals = {hashlib.sha1(data).hexdigest() for data in files()}
        for item in old["instances"]:
            data = client.get(f"/instances/{item['ID']}/file").content
            assert hashlib.sha1(data).hexdigest() in originals
        assert client.get(f"/patients/{old['patients'][0]['ID']}/protected").text == "1"
    finally:
        server.close()


def test_serve_upgrade_upgrades_then_exits(tmp_path: Path) -> None:
    config = fixture_copy(1, tmp_path)
    result = dicomvault("serve", config, "--upgrade")
    assert result.returncode == 0, result.stderr
    assert f"to schema {SCHEMA_VERSION}" in result.stdout
    assert list((tmp_path / "storage").glob("dicomvault.db.backup-schema1-*"))
    result = dicomvault("serve", config, "--upgrade")
    assert result.returncode == 0 and "no upgrade needed" in result.stdout


def test_no_backup(tmp_path: Path) -> None:
    config = fixture_copy(1, tmp_path)
    result = dicomvault("upgrade", config, "--no-backup")
    assert result.returncode == 0, result.stderr
    assert "without a backup copy" in result.stderr
    assert not list((tmp_path / "storage").glob("dicomvault.db.backup-*"))


def test_indexed_find_tags_answer_without_the_files(tmp_path: Path, worker_pool: WorkerPool) -> None:
    """After the upgrade, a find on the re-read tags no longer opens the files; a find on other
    file tags still does (and so misses instances whose file is gone)."""
    config = fixture_copy(1, tmp_path)
    assert dicomvault("upgrade", config, "--no-progress").returncode == 0
    for path in (tmp_path / "storage").rglob("*"):
        if path.is_file() and not path.name.startswith("dicomvault.db"):
            path.unlink()
    server = _serve_once(config, worker_pool)
    try:
        client = _client(server)
        answer = client.post("/tools/find", json={"Level": "Instance", "Query": {"ContentDate": "20210102-"}})
        assert answer.json() == expected(1)["finds"][2]
        other = client.post("/tools/find", json={"Level": "Instance", "Query": {"Rows": "4"}})
        assert other.status_code == 404 and "missing attachment file" in other.json()["Details"]
    finally:
        server.close()


# ---------------------------------------------------------------- problems and faults


def test_missing_and_damaged_files_are_reported(tmp_path: Path) -> None:
    config = fixture_copy(1, tmp_path)
    storage = tmp_path / "storage"
    with sqlite3.connect(storage / "dicomvault.db") as conn:
        rows = conn.execute(
            "SELECT r.publicId, a.uuid FROM AttachedFiles a JOIN Resources r ON r.internalId = a.id "
            "WHERE a.fileType = 1 ORDER BY r.internalId LIMIT 2"
        ).fetchall()
    (missing_id, missing_uuid), (damaged_id, damaged_uuid) = rows
    (storage / missing_uuid[:2] / missing_uuid[2:4] / missing_uuid).unlink()
    damaged = storage / damaged_uuid[:2] / damaged_uuid[2:4] / damaged_uuid
    damaged.write_bytes(b"\x00" * 50)
    files_before = _tree_hashes(storage)
    result = dicomvault("upgrade", config)
    assert result.returncode == 1, result.stderr
    assert "missing: " in result.stdout and missing_id in result.stdout and missing_uuid in result.stdout
    assert "unreadable: " in result.stdout and damaged_id in result.stdout
    assert "2 problems" in result.stdout
    assert _tree_hashes(storage) == files_before
    assert dicomvault("upgrade", config).stdout.strip().endswith("no upgrade needed")


def _move_archive(source: Path, target: Path) -> Path:
    shutil.copytree(source / "storage", target / "storage")
    config = source / "config.json"
    moved = target / "config.json"
    moved.write_text(config.read_text().replace(str(source), str(target)))
    return moved


def _fill(disk: Path, leave: int) -> Path:
    """Fill the disk with a file, leaving `leave` bytes free."""
    filler = disk / "filler"
    stats = os.statvfs(disk)
    free = stats.f_bavail * stats.f_frsize
    with open(filler, "ab") as out:
        out.write(b"\0" * max(0, free - leave))
    return filler


@pytest.mark.slow
def test_a_disk_that_fills_up_half_way(
    tmp_path: Path, worker_pool: WorkerPool, small_disk: Callable[[Path, int], SmallDisk]
) -> None:
    """On a real full disk (a tmpfs filled up): the backup cannot be written (nothing changes),
    then the re-read cannot grow the index (the upgrade stops at a resumable point, refused by
    `serve`); with space back, the same command finishes, identical to an upgrade that never failed."""
    schema1_archive(tmp_path / "ref", 150, worker_pool)
    disk = small_disk(tmp_path / "disk", 64 << 20)
    config = _move_archive(tmp_path / "ref", disk.path)
    index = disk.path / "storage" / "dicomvault.db"
    before = dump(index)
    files_before = _tree_hashes(disk.path / "storage")
    filler = _fill(disk.path, index.stat().st_size // 2)
    result = dicomvault("upgrade", config)
    assert result.returncode == 1 and "cannot write the backup copy" in result.stderr, result.stderr
    assert dump(index) == before and not list(index.parent.glob("dicomvault.db.backup-*"))
    filler.unlink()
    filler = _fill(disk.path, 8 * 4096)
    result = dicomvault("upgrade", config, "--no-backup", "--batch-size", "1")
    assert result.returncode == 1, result.stderr
    assert "resumable point" in result.stderr, result.stderr
    assert dicomvault("serve", config).returncode == 3  # half-upgraded: refused
    filler.unlink()
    assert dicomvault("upgrade", config, "--no-backup").returncode == 0
    assert dicomvault("upgrade", tmp_path / "ref" / "config.json", "--no-backup").returncode == 0
    assert dump(index) == dump(tmp_path / "ref" / "storage" / "dicomvault.db")
    assert _tree_hashes(disk.path / "storage") == files_before


def test_a_read_only_folder(tmp_path: Path, small_disk: Callable[[Path, int], SmallDisk]) -> None:
    fixture_copy(1, tmp_path / "src")
    disk = small_disk(tmp_path / "disk", 8 << 20)
    config = _move_archive(tmp_path / "src", disk.path)
    shutil.move(str(config), tmp_path / "config.json")
    config = tmp_path / "config.json"
    storage = disk.path / "storage"
    before = dump(storage / "dicomvault.db")
    files_before = _tree_hashes(storage)
    disk.read_only()
    for command in ("upgrade", "serve"):
        result = dicomvault(command, config)
        assert result.returncode == 1, result.stderr
        assert "cannot create the lock file" in result.stderr and "Read-only file system" in result.stderr
    disk.read_only(False)
    assert dump(storage / "dicomvault.db") == before
    assert _tree_hashes(storage) == files_before


def _cursor(index: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT value FROM GlobalProperties WHERE property = 1001").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return -1
    return -1 if row is None else int(row[0])


def _kill_at(process: subprocess.Popen[str], delay: float, index: Path | None) -> bool:
    """SIGKILL `process` `delay` seconds after it starts, or, with `index`, after its re-read
    first commits progress there; False if it ended first."""
    if index is not None:
        before = _cursor(index)
        while process.poll() is None and _cursor(index) in (before, -1):
            time.sleep(0.005)
    time.sleep(delay)
    killed = process.poll() is None
    if killed:
        process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    return killed


@pytest.mark.slow
def test_upgrade_resumes_after_sigkill_at_random_moments(tmp_path: Path, worker_pool: WorkerPool) -> None:
    """SIGKILL at 10 seeded random moments: 2 anywhere in a run, 8 within the re-read of the files
    (once the run has committed progress: start-up is most of a short run). Each time the half-upgraded index is refused
    by `serve`, and the next run resumes; the result is identical to an uninterrupted upgrade."""
    template = tmp_path / "template"
    schema1_archive(template, 2000, worker_pool, compression=True, pixels=64)

    def copy(name: str) -> tuple[Path, Path]:
        target = tmp_path / name
        shutil.copytree(template, target)
        config_file = target / "config.json"
        config_file.write_text(config_file.read_text().replace(str(template), str(target)))
        return config_file, target / "storage" / "dicomvault.db"

    reference_config, reference_index = copy("reference")
    started = time.monotonic()
    reference = dicomvault("upgrade", reference_config, "--no-backup")
    assert reference.returncode == 0, reference.stderr
    duration = time.monotonic() - started
    reread = float(reference.stdout.split(" DICOM files in ")[1].split(" s ")[0])
    expected_dump = dump(reference_index)

    config_file, index = copy("killed")
    rng = random.Random(20261123)
    # Two moments anywhere in the first half of a run, then 8 moments within the re-read (once a run
    # has committed progress: start-up is most of a short run); a last run finishes. The
    # interrupted runs commit every instance (more moments inside the re-read); the result must not
    # depend on the batch size either.
    plan: list[tuple[float, Path | None]] = [(rng.uniform(0.0, duration / 2), None) for _ in range(2)]
    plan += [(rng.uniform(0.0, 0.25), index) for _ in range(8)]
    midway: list[int] = []
    for delay, watched in plan:
        process = start_upgrade(config_file, "--no-backup", "--batch-size", "1", "--no-progress")
        if not _kill_at(process, delay, watched):
            assert process.returncode == 0
            break
        properties = dict(dump(index)["GlobalProperties"])
        if properties[1000] == str(SCHEMA_VERSION):
            break  # killed after the end
        refused = dicomvault("serve", config_file)
        assert refused.returncode == 3, refused.stderr
        if properties[1000] == upgrading_marker(REREAD_TARGET) and int(properties.get(1001, "0")) > 0:
            midway.append(int(properties[1001]))
    print(f"full run {duration:.1f} s (re-read {reread:.1f} s); killed with cursors {midway}")
    assert len(set(midway)) >= 5, "at least 5 kills should interrupt the re-read at different points"
    final = dicomvault("upgrade", config_file, "--no-backup", "--batch-size", "8")
    assert final.returncode == 0, final.stderr
    assert dump(index) == expected_dump


def test_the_way_back_to_orthanc_ends_with_a_logged_removal(
    tmp_path: Path, make_server: Callable[..., Server], caplog: pytest.LogCaptureFixture
) -> None:
    """After an adoption, `serve` says once when it first removes a file that Orthanc's index still
    references (removing a file dicomvault stored itself does not count)."""
    orthanc_index = tmp_path / "orthanc-index"
    server = make_server()
    client = _client(server)
    ids = [client.post("/instances", content=data).json()["ID"] for data in files()[:3]]

    def uuid_of(tx: ReadTx, public_id: str) -> str:
        ref = tx.lookup(public_id)
        assert ref is not None
        info = tx.attachment(ref.internal_id, 1)
        assert info is not None
        return info.uuid

    uuids = [server.context.index.read(functools.partial(uuid_of, public_id=i)) for i in ids]
    with contextlib.closing(sqlite3.connect(orthanc_index)) as conn, conn:
        conn.execute("PRAGMA journal_mode = WAL")  # as Orthanc's
        conn.execute("CREATE TABLE AttachedFiles(id INTEGER, fileType INTEGER, uuid TEXT)")
        conn.executemany("INSERT INTO AttachedFiles VALUES (?, 1, ?)", [(n, u) for n, u in enumerate(uuids[1:])])
    record = json.dumps({"Index": str(orthanc_index), "Date": "20261123T000000"})
    server.context.index.write(
        lambda tx: tx.set_global_property(GlobalProperty.DICOMVAULT_ADOPTED_FROM_ORTHANC, record)
    )
    server.close()
    server = make_server()
    client = _client(server)
    with caplog.at_level(logging.WARNING, logger="dicomvault.upgrade.rollback"):
        assert client.delete(f"/instances/{ids[0]}").status_code == 200  # not one of Orthanc's files
        assert not caplog.records
        assert client.delete(f"/instances/{ids[1]}").status_code == 200
        assert client.delete(f"/instances/{ids[2]}").status_code == 200
    (line,) = [r.getMessage() for r in caplog.records]
    assert uuids[1] in line and str(orthanc_index) in line and "going back to Orthanc" in line
    ended = server.context.index.read(lambda tx: tx.global_property(GlobalProperty.DICOMVAULT_ORTHANC_ROLLBACK_ENDED))
    assert ended is not None
    assert sorted(p.name for p in tmp_path.glob("orthanc-index*")) == ["orthanc-index"]  # nothing beside it


def test_a_plain_migration_runs_in_one_transaction_without_re_reading(
    tmp_path: Path, make_server: Callable[..., Server]
) -> None:
    """Schema 2 -> 3 renumbers the change types (Orthanc's numbers): no file is read, the /changes
    answers are the same before and after."""
    server = make_server()
    client = _client(server)
    for data in files()[:4]:
        client.post("/instances", content=data)
    client.put(f"/instances/{client.get('/instances').json()[0]}/metadata/1024", content=b"x")
    before = client.get("/changes?limit=100").json()
    server.close()
    index = tmp_path / "storage" / "dicomvault.db"
    with contextlib.closing(sqlite3.connect(index)) as conn, conn:
        renumber_changes_as_schema1(conn)
        assert {row[0] for row in conn.execute("SELECT changeType FROM Changes")} <= {4, 5, 6, 7, 12}
    set_version(index, "2")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"StorageDirectory": str(tmp_path / "storage")}))
    result = dicomvault("upgrade", config)
    assert result.returncode == 0, result.stderr
    assert "upgraded from schema 2 to schema 3" in result.stdout and "re-read" not in result.stdout + result.stderr
    server = make_server()
    assert _client(server).get("/changes?limit=100").json() == before


def test_a_higher_patch_level_is_served(tmp_path: Path, make_server: Callable[..., Server]) -> None:
    """Additive changes older code tolerates raise the patch level only: an index whose patch
    level is above this code's (written by a newer dicomvault of the same schema) is served."""
    make_server().close()
    with sqlite3.connect(tmp_path / "storage" / "dicomvault.db") as conn:
        conn.execute(
            "UPDATE GlobalProperties SET value = '7' WHERE property = ?", (int(GlobalProperty.DATABASE_PATCH_LEVEL),)
        )
    server = make_server()
    assert _client(server).get("/system").status_code == 200


def test_upgrade_from_schema_1_keeps_the_change_log(tmp_path: Path, make_server: Callable[..., Server]) -> None:
    """Both migrations in a row (re-read, then renumbering): /changes answers as before."""
    server = make_server()
    client = _client(server)
    for data in files()[:6]:
        client.post("/instances", content=data)
    client.delete(f"/instances/{client.get('/instances').json()[0]}")
    before = client.get("/changes?limit=100").json()
    server.close()
    make_schema1(tmp_path / "storage" / "dicomvault.db")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"StorageDirectory": str(tmp_path / "storage")}))
    result = dicomvault("upgrade", config, "--no-progress")
    assert result.returncode == 0 and f"from schema 1 to schema {SCHEMA_VERSION}" in result.stdout, result.stderr
    assert _client(make_server()).get("/changes?limit=100").json() == before
