"""Two `dicomvault serve` on one SQLite index (issue 9): the second refuses with exit code 3 and a
message naming the index and its lock file, whichever path leads to the index (the same folder, a
symlink to it, the same IndexDirectory with another StorageDirectory); the first keeps serving
meanwhile; `check` and `upgrade` refuse a running server's index too; once the first stops, the
second starts. (Orthanc 1.10.1 has no such lock: a second Orthanc on the same folder starts and
then meets SQLite's lock errors.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from dicomvault.index.sqlite import INDEX_FILENAME
from tests.dicomgen import Spec, make_bytes
from tests.faults.integrity import check_available, dicomvault
from tests.servers import RunningServer, free_port


def serve(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomvault", "serve", str(config)], capture_output=True, text=True, timeout=60, cwd=cwd
    )


def write_config(path: Path, **keys: Any) -> Path:
    path.write_text(json.dumps({"HttpPort": free_port(), "DicomPort": free_port(), **keys}))
    return path


def assert_refused(result: subprocess.CompletedProcess[str], index: Path) -> None:
    assert result.returncode == 3, result.stderr
    assert "in use by another dicomvault process" in result.stderr
    # The message names the index and the lock file, as the first process resolved them.
    assert str(index) in result.stderr and f"{index}.lock" in result.stderr, result.stderr


def assert_serving(first: RunningServer, seed: int) -> None:
    raw = make_bytes(Spec(seed=seed, instance_number=seed))
    with httpx.Client(base_url=first.url, timeout=30) as http:
        answer = http.post("/instances", content=raw)
        assert answer.status_code == 200 and answer.json()["Status"] == "Success", answer.text
        assert http.get(f"/instances/{answer.json()['ID']}/file").content == raw


@pytest.fixture
def first(tmp_path: Path) -> Any:
    server = RunningServer(tmp_path / "first", {"IndexDirectory": str(tmp_path / "first" / "index")})
    server.start()
    yield server
    server.stop()


def test_second_server_on_same_index_refused(first: RunningServer, tmp_path: Path) -> None:
    index_dir = first.base / "index"
    index = index_dir / INDEX_FILENAME
    link = tmp_path / "link-to-index"
    link.symlink_to(index_dir, target_is_directory=True)
    attempts = {
        "same folders": write_config(
            tmp_path / "same.json", StorageDirectory=str(first.base / "storage"), IndexDirectory=str(index_dir)
        ),
        "a symlink to the index folder": write_config(
            tmp_path / "link.json", StorageDirectory=str(first.base / "storage"), IndexDirectory=str(link)
        ),
        "same index, another storage": write_config(
            tmp_path / "other.json", StorageDirectory=str(tmp_path / "other-storage"), IndexDirectory=str(index_dir)
        ),
    }
    for seed, (what, config) in enumerate(attempts.items(), start=1):
        result = serve(config, tmp_path)
        named = link / INDEX_FILENAME if "symlink" in what else index
        assert_refused(result, named)
        assert_serving(first, seed)  # the first keeps serving, uploads included
    # The refused server wrote nothing into its storage folder.
    assert [p for p in (tmp_path / "other-storage").rglob("*") if p.is_file()] == []


def test_maintenance_commands_refuse_a_running_servers_index(first: RunningServer) -> None:
    index = first.base / "index" / INDEX_FILENAME
    upgrade = dicomvault("upgrade", first.config_path, "--no-backup")
    assert upgrade.returncode == 3, upgrade.stdout + upgrade.stderr
    assert "in use by another dicomvault process" in upgrade.stderr and str(index) in upgrade.stderr
    if check_available():
        check = dicomvault("check", first.config_path, "--json")
        assert check.returncode == 3, check.stdout + check.stderr
        assert str(index) in check.stdout + check.stderr
    assert_serving(first, 7)


def test_second_server_starts_once_the_first_stopped(first: RunningServer, tmp_path: Path) -> None:
    assert_serving(first, 9)
    assert serve(first.config_path, tmp_path).returncode == 3
    first.stop()
    second = RunningServer(tmp_path / "second", {})
    second.config_path = first.config_path  # the same configuration: same folders, same ports
    second.port = first.port
    second.start()
    try:
        with httpx.Client(base_url=second.url, timeout=30) as http:
            assert http.get("/statistics").json()["CountInstances"] == 1
    finally:
        second.stop()
