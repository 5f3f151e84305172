"""The PostgreSQL backend's own behaviour (the index contract itself runs on both backends through
`pytest.mark.contract`): configuration as Orthanc's plugin, refusals at start, the exclusive lock,
schema versions, and losing the database while serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from dicomvault.config import Config, config_from_mapping
from dicomvault.enums import GlobalProperty
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.index.backends import open_backend
from dicomvault.index.database import Index
from dicomvault.index.postgresql import PostgreSQLBackend, PostgreSQLSettings, translate
from dicomvault.index.writer import CommitUncertain
from dicomvault.ingest.pool import WorkerPool
from dicomvault.server import Server, StartupRefused, build
from tests.dicomgen import make_bytes
from tests.postgres import PASSWORD, SUPERUSER, PostgresCluster
from tests.servers import free_port
from tests.upgrades import dicomvault


def _config(tmp_path: Path, section: dict[str, Any]) -> Config:
    return config_from_mapping({"StorageDirectory": str(tmp_path / "storage"), "PostgreSQL": section}, source="<test>")


def _client(server: Server) -> TestClient:
    return TestClient(server.app(), raise_server_exceptions=False, client=("127.0.0.1", 1))  # type: ignore[arg-type]


def _set_version(cluster: PostgresCluster, database: str, value: str) -> None:
    with cluster.connect(database) as conn:
        conn.execute(
            "UPDATE GlobalProperties SET value = %s WHERE property = %s",
            (value, int(GlobalProperty.DICOMVAULT_SCHEMA_VERSION)),
        )


def test_sql_translation_keeps_literals() -> None:
    assert translate("SELECT a FROM t WHERE b = ? AND c LIKE '?%' ESCAPE '\\'") == (
        "SELECT a FROM t WHERE b = %s AND c LIKE '?%' ESCAPE '\\'"
    )
    assert translate("SELECT 100 % 7, ?") == "SELECT 100 %% 7, %s"


def test_settings_as_orthanc_plugin_keys() -> None:
    assert PostgreSQLSettings.from_section({"EnableIndex": False, "Host": "x"}) is None
    settings = PostgreSQLSettings.from_section(
        {"EnableIndex": True, "Host": "db.example", "Port": 6543, "Database": "pacs", "Username": "u", "Password": "s3"}
    )
    assert settings is not None
    assert settings.label == "PostgreSQL index db.example:6543/pacs"
    assert settings.lock is True  # Orthanc's default: one server per database
    assert "s3" not in repr(settings) and "s3" in settings.conninfo
    uri = PostgreSQLSettings.from_section(
        {"EnableIndex": True, "ConnectionUri": "postgresql://u:pw@h2:5433/other", "Lock": False}
    )
    assert uri is not None and uri.label == "PostgreSQL index h2:5433/other" and uri.lock is False
    with pytest.raises(DicomVaultError, match="ConnectionUri"):
        PostgreSQLSettings.from_section({"EnableIndex": True, "ConnectionUri": "postgresql://h/x?bogus=1"})
    with pytest.raises(DicomVaultError, match="EnableStorage"):
        PostgreSQLSettings.from_section({"EnableIndex": True, "EnableStorage": True})


def test_server_on_a_connection_uri(
    tmp_path: Path, postgres_cluster: PostgresCluster, postgres_database: str, worker_pool: WorkerPool
) -> None:
    section = {"EnableIndex": True, "ConnectionUri": postgres_cluster.uri(postgres_database), "Lock": False}
    server = build(_config(tmp_path, section), workers=worker_pool)
    try:
        assert server.context.index.backend.description.endswith(f"/{postgres_database}")
        with _client(server) as client:
            assert client.post("/instances", content=make_bytes(seed=3)).status_code == 200
            assert len(client.get("/instances").json()) == 1
        with postgres_cluster.connect(postgres_database) as conn:
            assert conn.execute("SELECT COUNT(*) FROM Resources").fetchone() == (4,)
    finally:
        server.close()
    assert not (tmp_path / "storage" / "dicomvault.db").exists()  # no SQLite index beside


def test_unreachable_database_at_start_is_refused(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config.json"
    section = {
        "EnableIndex": True,
        "Host": "127.0.0.1",
        "Port": port,
        "Database": "pacs",
        "Username": "u",
        "Password": "secret-pw",
        "MaximumConnectionRetries": 1,
        "ConnectionRetryInterval": 0,
    }
    config.write_text(
        json.dumps({"StorageDirectory": str(tmp_path / "s"), "HttpPort": free_port(), "PostgreSQL": section})
    )
    done = dicomvault("serve", config, timeout=60)
    assert done.returncode == 3, done.stderr
    assert f"PostgreSQL index 127.0.0.1:{port}/pacs is unreachable" in done.stderr
    assert "gave up after 2 attempt(s)" in done.stderr
    assert "secret-pw" not in done.stderr


def test_wrong_password_is_refused_with_the_reason(
    tmp_path: Path, postgres_cluster: PostgresCluster, postgres_database: str
) -> None:
    section = {**postgres_cluster.section(postgres_database), "Password": "wrong", "MaximumConnectionRetries": 0}
    with pytest.raises(StartupRefused) as info:
        build(_config(tmp_path, section))
    assert info.value.code is ErrorCode.DATABASE_UNAVAILABLE
    assert "password authentication failed" in str(info.value)


def test_exclusive_lock_keeps_a_second_server_out(
    tmp_path: Path, postgres_cluster: PostgresCluster, postgres_database: str, worker_pool: WorkerPool
) -> None:
    section = {**postgres_cluster.section(postgres_database), "Lock": True}
    first = build(_config(tmp_path / "a", section), workers=worker_pool)
    try:
        with pytest.raises(StartupRefused) as info:
            build(_config(tmp_path / "b", section), workers=worker_pool)
        assert '"Lock": true' in str(info.value) and "another server process" in str(info.value)
    finally:
        first.close()
    # Released with the first server: the next one starts.
    build(_config(tmp_path / "c", section), workers=worker_pool).close()


def test_schema_versions_are_checked(tmp_path: Path, postgres_cluster: PostgresCluster, postgres_database: str) -> None:
    section = postgres_cluster.section(postgres_database)
    Index(open_backend(_config(tmp_path, section))).close()
    _set_version(postgres_cluster, postgres_database, "2")
    with pytest.raises(StartupRefused) as older:
        build(_config(tmp_path, section), config_label="/etc/dicomvault.json")
    assert older.value.code is ErrorCode.INCOMPATIBLE_DATABASE_VERSION
    assert "schema version 2" in str(older.value)
    assert "dicomvault upgrade /etc/dicomvault.json" in str(older.value)
    _set_version(postgres_cluster, postgres_database, "99")
    with pytest.raises(StartupRefused, match="too recent for this version of dicomvault"):
        build(_config(tmp_path, section))
    _set_version(postgres_cluster, postgres_database, "upgrading-to-3")
    with pytest.raises(StartupRefused, match="half-way through an upgrade"):
        build(_config(tmp_path, section))


def test_foreign_databases_are_refused(tmp_path: Path, postgres_cluster: PostgresCluster) -> None:
    other = postgres_cluster.new_database()
    orthanc_like = postgres_cluster.new_database()
    try:
        with postgres_cluster.connect(other) as conn:
            conn.execute("CREATE TABLE invoices(id INT)")
        with pytest.raises(StartupRefused, match="holds other tables"):
            build(_config(tmp_path, postgres_cluster.section(other)))
        with postgres_cluster.connect(other) as conn:
            assert conn.execute(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema='public'"
            ).fetchone() == (1,)
        with postgres_cluster.connect(orthanc_like) as conn:
            conn.execute("CREATE TABLE GlobalProperties(property INTEGER PRIMARY KEY, value TEXT)")
            conn.execute("INSERT INTO GlobalProperties VALUES (1, '6')")  # Orthanc's DatabaseSchemaVersion
        with pytest.raises(StartupRefused, match="not a dicomvault index"):
            build(_config(tmp_path, postgres_cluster.section(orthanc_like)))
    finally:
        postgres_cluster.drop_database(other)
        postgres_cluster.drop_database(orthanc_like)


def test_two_servers_creating_the_schema_at_once(
    tmp_path: Path, postgres_cluster: PostgresCluster, postgres_database: str
) -> None:
    import threading

    section = postgres_cluster.section(postgres_database)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []
    backends: list[PostgreSQLBackend] = []

    def open_one() -> None:
        barrier.wait()
        try:
            settings = PostgreSQLSettings.from_section(section)
            assert settings is not None
            backends.append(PostgreSQLBackend(settings))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for backend in backends:
        backend.close()
    assert errors == [] and len(backends) == 4


# ---- losing the database while serving --------------------------------------------------------


@pytest.fixture
def own_cluster() -> Iterator[PostgresCluster]:
    """A cluster of this test alone: it is stopped and started again."""
    cluster = PostgresCluster()
    cluster.start()
    yield cluster
    cluster.destroy()


def _stored_files(storage: Path) -> set[str]:
    return {p.name for p in storage.glob("*/*/*") if p.is_file()}


@pytest.mark.slow
def test_database_lost_while_serving_then_back(
    tmp_path: Path, own_cluster: PostgresCluster, worker_pool: WorkerPool
) -> None:
    database = own_cluster.new_database()
    server = build(_config(tmp_path, own_cluster.section(database)), workers=worker_pool)
    storage = tmp_path / "storage"
    try:
        with _client(server) as client:
            assert client.post("/instances", content=make_bytes(seed=1)).status_code == 200
            files_before = _stored_files(storage)
            own_cluster.stop("immediate")
            refused = client.post("/instances", content=make_bytes(seed=2))
            assert refused.status_code == 503
            body = refused.json()
            assert body["OrthancStatus"] == int(ErrorCode.DATABASE_UNAVAILABLE)
            assert "unreachable" in body["Details"] and f"/{database}" in body["Details"]
            assert _stored_files(storage) == files_before  # the refused upload's file is gone again
            listing = client.get("/instances")
            assert listing.status_code == 503
            own_cluster.start()
            # The same server recovers: reads borrow new connections, the writer reconnects.
            assert len(client.get("/instances").json()) == 1
            assert client.post("/instances", content=make_bytes(seed=2)).status_code == 200
            assert client.post("/instances", content=make_bytes(seed=3)).status_code == 200
            ids = client.get("/instances").json()
            assert len(ids) == 3
            for iid in ids:
                assert client.get(f"/instances/{iid}/file").status_code == 200
            changes = client.get("/changes").json()
            seqs = [c["Seq"] for c in changes["Changes"]]
            assert seqs == sorted(seqs) and changes["Last"] == seqs[-1]
        with own_cluster.connect(database) as conn:
            uuids = {row[0] for row in conn.execute("SELECT uuid FROM AttachedFiles")}
        assert uuids == _stored_files(storage)  # nothing half-written, no orphan, no missing file
    finally:
        server.close()


def test_a_commit_whose_outcome_is_unknown_keeps_the_file(
    tmp_path: Path,
    postgres_cluster: PostgresCluster,
    postgres_database: str,
    worker_pool: WorkerPool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Injected fault: the commit went through but its answer was lost with the connection. The
    file must stay (the row that was committed points at it)."""
    server = build(_config(tmp_path, postgres_cluster.section(postgres_database)), workers=worker_pool)
    real_write = Index.write

    def lost_answer(self: Index, fn: Any) -> Any:
        real_write(self, fn)
        raise CommitUncertain(ErrorCode.DATABASE_UNAVAILABLE, "connection lost during COMMIT (injected)")

    try:
        with _client(server) as client:
            monkeypatch.setattr(Index, "write", lost_answer)
            answer = client.post("/instances", content=make_bytes(seed=9))
            monkeypatch.setattr(Index, "write", real_write)
            assert answer.status_code == 503
            ids = client.get("/instances").json()
            assert len(ids) == 1
            assert client.get(f"/instances/{ids[0]}/file").content == make_bytes(seed=9)
    finally:
        server.close()


def test_connections_carry_the_application_name(
    tmp_path: Path, postgres_cluster: PostgresCluster, postgres_database: str, worker_pool: WorkerPool
) -> None:
    """Operators see dicomvault's sessions in pg_stat_activity (and copy-index relies on it)."""
    server = build(_config(tmp_path, postgres_cluster.section(postgres_database)), workers=worker_pool)
    try:
        with _client(server) as client:
            client.get("/instances")
        with psycopg.connect(postgres_cluster.uri(), autocommit=True) as conn:
            names = {
                row[0]
                for row in conn.execute(
                    "SELECT application_name FROM pg_stat_activity WHERE datname = %s", (postgres_database,)
                )
            }
        assert names == {"dicomvault"}
    finally:
        server.close()


def test_credentials_never_reach_the_logs(
    tmp_path: Path,
    postgres_cluster: PostgresCluster,
    postgres_database: str,
    caplog: pytest.LogCaptureFixture,
    worker_pool: WorkerPool,
) -> None:
    caplog.set_level("DEBUG")
    build(_config(tmp_path, postgres_cluster.section(postgres_database)), workers=worker_pool).close()
    assert PASSWORD not in caplog.text
    assert SUPERUSER  # the user name may appear; the password never


def test_a_nul_character_in_a_value_ends_it_as_in_orthanc(
    tmp_path: Path, postgres_cluster: PostgresCluster, postgres_database: str, worker_pool: WorkerPool
) -> None:
    """Orthanc 1.10.1 stores `AB\\0CD` as `AB` (checked against the real one); PostgreSQL text cannot
    hold NUL at all, so the same rule keeps such uploads storable."""
    import io

    from tests.dicomgen import Spec, make_dataset

    ds = make_dataset(Spec(seed=5))
    ds.PatientName = "AB\x00CD"
    ds.StudyDescription = "x\x00y"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    server = build(_config(tmp_path, postgres_cluster.section(postgres_database)), workers=worker_pool)
    try:
        with _client(server) as client:
            assert client.post("/instances", content=buf.getvalue()).status_code == 200
            assert client.get("/patients?expand").json()[0]["MainDicomTags"]["PatientName"] == "AB"
            assert client.get("/studies?expand").json()[0]["MainDicomTags"]["StudyDescription"] == "x"
    finally:
        server.close()
