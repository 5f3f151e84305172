"""A full disk during ingest (issue 9), on a real tmpfs of a few MB: uploads fail with a clear error
(507 and Orthanc's `FullStorage` status 19, or 500 with an explicit message; never a hang), a
C-STORE gets a failure status, nothing stored before is damaged and no temporary file is left,
and once space is freed (deleting instances through REST, or growing the disk) uploads succeed
again without a restart. Twice: the index on another disk, and the index on the full disk itself
(the nastier case: SQLite's WAL needs space to record even a delete).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.dicomnet import store
from tests.faults.integrity import check_api_files, check_clean, inspect_sqlite
from tests.faults.workload import Item, make_item
from tests.servers import RunningServer
from tests.upgrades import SmallDisk

DISK = 6 * 1024 * 1024
SIDE = 220  # ~97 KB instances: about 60 fill the disk
AET = "DICOMVAULT"
FULL_STATUSES = range(0xA700, 0xA800)  # C-STORE "Refused: out of resources"


@dataclass
class Filler:
    server: RunningServer
    http: httpx.Client
    numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1))
    stored: dict[str, Item] = field(default_factory=dict)
    cstored: set[str] = field(default_factory=set)  # re-encoded by the SCU: other bytes, same instance

    def item(self) -> Item:
        number = next(self.numbers)
        return make_item("full", number % 3, number % 2, 0, number, SIDE)

    def upload(self) -> httpx.Response:
        item = self.item()
        answer = self.http.post("/instances", content=item.data)
        if answer.status_code == 200:
            self.stored[item.instance_id] = item
        return answer

    def cstore(self) -> int | None:
        item = self.item()
        port = json.loads(self.server.config_path.read_text())["DicomPort"]
        (status,) = store(port, [item.data], called=AET)
        if status == 0:
            self.stored[item.instance_id] = item
            self.cstored.add(item.instance_id)
        return status

    def fill(self, limit: int = 400) -> httpx.Response:
        """Upload until the first refusal (the answer returned)."""
        for _ in range(limit):
            answer = self.upload()
            if answer.status_code != 200:
                return answer
        raise AssertionError(f"{limit} uploads of {SIDE}x{SIDE} instances fit on a {DISK}-byte disk")


def assert_full_refusal(answer: httpx.Response) -> None:
    assert answer.status_code in (500, 507), answer.text
    body = answer.json()
    if answer.status_code == 507:
        assert body["OrthancStatus"] == 19 and body["OrthancError"] == "The file storage is full", body
    else:  # a 500 is acceptable only if it says why
        assert "full" in str(body.get("Details", "")).lower() or "space" in str(body.get("Details", "")), body


def assert_intact(filler: Filler, storage: Path, index: Path) -> None:
    """Everything stored is there with its bytes; no temporary file nor orphan is left."""
    files = check_api_files(filler.http, filler.server.url)
    assert set(files) == set(filler.stored)
    differing = [
        (i, len(files[i]), len(item.data))
        for i, item in filler.stored.items()
        if files[i] != item.data and i not in filler.cstored
    ]
    assert differing == [], "other bytes than uploaded"
    stored = inspect_sqlite(index, storage)
    assert stored.damaged == [] and stored.orphans == [], (stored.damaged, stored.orphans)
    assert set(stored.instances) == set(filler.stored)


@pytest.fixture
def disk(small_disk: Callable[[Path, int], SmallDisk], tmp_path: Path) -> SmallDisk:
    return small_disk(tmp_path / "disk", DISK)


@pytest.mark.parametrize("index_on_full_disk", [False, True], ids=["index-elsewhere", "index-on-full-disk"])
def test_disk_full_refuses_then_resumes(disk: SmallDisk, tmp_path: Path, index_on_full_disk: bool) -> None:
    storage = disk.path / "storage"
    index_dir = disk.path / "storage" if index_on_full_disk else tmp_path / "index"
    overrides: dict[str, Any] = {"StorageDirectory": str(storage), "IndexDirectory": str(index_dir), "DicomAet": AET}
    server = RunningServer(tmp_path / "srv", overrides)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            filler = Filler(server, http)
            assert_full_refusal(filler.fill())
            for _ in range(3):  # it stays a clear refusal, never a hang
                assert_full_refusal(filler.upload())
            status = filler.cstore()
            assert status in FULL_STATUSES, status
            assert_intact(filler, storage, index_dir / "dicomvault.db")

            # Free space by deleting through REST: uploads resume, without a restart. With the index
            # on the full disk, SQLite's WAL needs room to record a delete at all: the delete is
            # then refused as clearly as the uploads, and the disk has to grow.
            for public in sorted(filler.stored)[:10]:
                answer = http.delete(f"/instances/{public}")
                if index_on_full_disk and answer.status_code != 200:
                    assert_full_refusal(answer)
                    break
                assert answer.status_code == 200, answer.text
                del filler.stored[public]
            else:
                for _ in range(5):
                    answer = filler.upload()
                    assert answer.status_code == 200, answer.text
                assert_full_refusal(filler.fill())  # full again

            # A bigger disk: uploads resume, without a restart.
            assert_intact(filler, storage, index_dir / "dicomvault.db")
            disk.resize(2 * DISK)
            for _ in range(10):
                answer = filler.upload()
                assert answer.status_code == 200, answer.text
            assert filler.cstore() == 0
            assert_intact(filler, storage, index_dir / "dicomvault.db")
    finally:
        server.stop()
    check_clean(server.config_path)
