"""A soak (issue 9): 8 concurrent clients mixing uploads, finds, file and archive downloads, deletes
and listings against a `dicomvault serve` subprocess for a bounded time (120 s here; the
environment variable DICOMVAULT_SOAK_SECONDS changes it; `python -m bench.soak --minutes N` runs the
same workload longer). Every answer is checked against each client's model (any unexpected status,
a 500 included, fails); at the end the REST view equals the union of the models, the index and the
folder are whole with no orphan, `check` exits 0; and the memory of the server's process tree does
not keep growing.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.faults.integrity import check_api_files, check_changes, check_clean, inspect_sqlite
from tests.faults.workload import RssSampler, expected_instances, run_soak, summary
from tests.servers import RunningServer

SECONDS = float(os.environ.get("DICOMVAULT_SOAK_SECONDS", "120"))
CLIENTS = 8
MB = 1024 * 1024


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 240)
def test_soak(tmp_path: Path) -> None:
    server = RunningServer(tmp_path / "srv", {})
    server.start()
    assert server.proc is not None
    try:
        with RssSampler(server.proc.pid, interval=max(1.0, SECONDS / 60)) as rss:
            clients = run_soak(server.url, CLIENTS, SECONDS, seed=1)
        figures = summary(clients)
        assert figures["failures"] == [], figures["failures"][:10]
        expected = expected_instances(clients)
        with httpx.Client(base_url=server.url, timeout=60) as http:
            files = check_api_files(http, server.url)
            assert set(files) == set(expected)
            assert all(files[i] == item.data for i, item in expected.items())
            for level, ids in (
                ("series", {i.series_id for i in expected.values()}),
                ("studies", {i.study_id for i in expected.values()}),
                ("patients", {i.patient_id for i in expected.values()}),
            ):
                assert set(http.get(f"/{level}").json()) == ids, level
            check_changes(http, server.url)
    finally:
        server.stop()
    storage = server.base / "storage"
    stored = inspect_sqlite(storage / "dicomvault.db", storage)
    assert stored.damaged == [] and stored.orphans == [] and set(stored.instances) == set(expected)
    check_clean(server.config_path)
    first, last = rss.thirds()
    print(
        f"soak: {figures['total']} requests in {SECONDS:.0f} s {figures['counts']}, {len(expected)} instances "
        f"kept; RSS of the server's process tree: first third max {first / MB:.0f} MB, last third max "
        f"{last / MB:.0f} MB"
    )
    # Memory must not grow without bound. The first third already holds the warm-up (the ingest
    # workers' imports, SQLite's page caches filling, the thread pools' connections); what is left
    # to grow is the index's page cache as the archive grows and allocator fragmentation, which
    # stay well under half again plus 30 MB in 2 minutes. A leak per request (a buffer per upload
    # or download kept) would exceed it: thousands of requests of 10-300 KB.
    assert last <= first * 1.5 + 30 * MB, rss.samples
