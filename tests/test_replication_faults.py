"""Replication against a target whose disk fills up: every refused file is a failure with its
reason, the run goes on and exits 1, and the target keeps only complete instances (each one it
lists serves exactly the bytes sent)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from tests.dicomgen import Spec, make_bytes
from tests.servers import RunningServer
from tests.upgrades import SmallDisk, dicomvault

COUNT = 24


def _files() -> dict[str, bytes]:
    """Instances of ~33 KB (128x128 16-bit), keyed by SOP instance UID suffix."""
    return {f"{n}": make_bytes(Spec(seed=90 + n, rows=128, columns=128, instance_number=n)) for n in range(COUNT)}


def _full_target(
    tmp_path: Path, running_server: Callable[..., RunningServer], small_disk: Callable[[Path, int], SmallDisk]
) -> RunningServer:
    """A dicomvault target whose storage area (not its index) is a disk with room for ~8 files."""
    disk = small_disk(tmp_path / "disk", 8 * 40 * 1024)
    return running_server(StorageDirectory=str(disk.path), IndexDirectory=str(tmp_path / "index"))


def _only_complete_instances(target: RunningServer, originals: dict[str, bytes]) -> int:
    sent = set(originals.values())
    with httpx.Client(base_url=target.url) as http:
        ids = http.get("/instances").json()
        for instance in ids:
            assert http.get(f"/instances/{instance}/file").content in sent
    return len(ids)


def test_import_into_a_target_whose_disk_fills_up(
    tmp_path: Path, running_server: Callable[..., RunningServer], small_disk: Callable[[Path, int], SmallDisk]
) -> None:
    folder = tmp_path / "files"
    folder.mkdir()
    originals = _files()
    for name, data in originals.items():
        (folder / f"{name}.dcm").write_bytes(data)
    target = _full_target(tmp_path, running_server, small_disk)
    state = tmp_path / "import-state.json"
    result = dicomvault("import", folder, "--to", target.url, "--no-progress", "--workers", "2", "--state", state)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "HTTP 507: no space left on the storage area" in result.stdout + result.stderr
    stored = _only_complete_instances(target, originals)
    assert 0 < stored < COUNT


def test_replicate_into_a_target_whose_disk_fills_up(
    tmp_path: Path, running_server: Callable[..., RunningServer], small_disk: Callable[[Path, int], SmallDisk]
) -> None:
    source = running_server()
    originals = _files()
    with httpx.Client(base_url=source.url) as http:
        for data in originals.values():
            assert http.post("/instances", content=data).status_code == 200
    target = _full_target(tmp_path, running_server, small_disk)
    state = tmp_path / "state.json"
    result = dicomvault("replicate", source.url, target.url, "--no-progress", "--state", state)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "HTTP 507: no space left on the storage area" in result.stdout + result.stderr
    stored = _only_complete_instances(target, originals)
    assert 0 < stored < COUNT
