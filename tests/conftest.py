"""Shared fixtures: configurations in temporary folders, in-process servers (one worker-process
pool per test session), servers over a real socket (the `dicomvault serve` command), and ports.

The index contract: a test module marked `pytest.mark.contract` runs every test that uses
`make_config` (hence `make_server`, `server`, `client`) once per index backend, SQLite and PostgreSQL
(a throwaway cluster per test session and xdist worker, a fresh database per test)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from dicomvault.config import Config, config_from_mapping
from dicomvault.ingest.pool import WorkerPool
from dicomvault.server import Server, build
from tests.differential import auth_pair, checked, pair, processes  # noqa: F401  (shared fixtures)
from tests.postgres import PostgresCluster
from tests.s3 import SeaweedS3
from tests.servers import RunningServer
from tests.upgrades import SmallDisk


@pytest.fixture(scope="session")
def worker_pool() -> Iterator[WorkerPool]:
    pool = WorkerPool(2)
    yield pool
    pool.shutdown()


BACKENDS = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "index_backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("contract"):
        metafunc.parametrize("index_backend", BACKENDS, indirect=True)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A PostgreSQL server of this test session (this xdist worker), started on first use."""
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def index_backend(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "sqlite"))


@pytest.fixture
def postgres_database(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A new, empty database of the session's cluster."""
    name = postgres_cluster.new_database()
    yield name
    postgres_cluster.drop_database(name)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedS3]:
    """A real S3 server (SeaweedFS) for the session (per xdist worker); `s3_server.section()` gives
    an `AwsS3Storage` section with a fresh RootPath."""
    server = SeaweedS3()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def make_config(tmp_path: Path, index_backend: str, request: pytest.FixtureRequest) -> Callable[..., Config]:
    index_section: dict[str, Any] = {}
    if index_backend == "postgresql":
        cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
        index_section = {"PostgreSQL": cluster.section(request.getfixturevalue("postgres_database"))}

    def factory(**overrides: Any) -> Config:
        data: dict[str, Any] = {
            "StorageDirectory": str(tmp_path / "storage"),
            "IndexDirectory": str(tmp_path / "storage"),
            "HttpPort": 0,
            "DicomPort": 0,
            **index_section,
        }
        data.update(overrides)
        return config_from_mapping(data, source="<test>")

    return factory


@pytest.fixture
def make_server(make_config: Callable[..., Config], worker_pool: WorkerPool) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def factory(**overrides: Any) -> Server:
        server = build(make_config(**overrides), workers=worker_pool)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.close()


@pytest.fixture
def server(make_server: Callable[..., Server]) -> Server:
    return make_server()


@pytest.fixture
def client(server: Server) -> Iterator[TestClient]:
    with TestClient(server.app(), raise_server_exceptions=False, client=("127.0.0.1", 50000)) as c:  # type: ignore[arg-type]
        yield c


@pytest.fixture
def running_server(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def factory(**overrides: Any) -> RunningServer:
        srv = RunningServer(tmp_path / f"srv{len(started)}", overrides)
        srv.base.mkdir(parents=True, exist_ok=True)
        started.append(srv)
        srv.start()
        return srv

    yield factory
    for srv in started:
        srv.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[Path, int], SmallDisk]]:
    """Mount small tmpfs disks (root only; the test is skipped elsewhere): real full disks and
    read-only folders."""
    if not SmallDisk.available():
        pytest.skip("mounting a tmpfs needs root with CAP_SYS_ADMIN")
    disks: list[SmallDisk] = []

    def factory(path: Path, size: int) -> SmallDisk:
        disk = SmallDisk(path, size)
        disks.append(disk)
        return disk

    yield factory
    for disk in disks:
        disk.close()
