"""Hostile paths on every route enumerated from the application (tests/routes.py): path traversal
through ids, attachment and metadata names, corrupted storage rows and planted symbolic links; the
absence of any code-executing or file-writing route; secrets and server paths never in an answer.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
from starlette.testclient import TestClient

from dicomvault.server import Server
from tests.dicomgen import Spec, make_bytes
from tests.postgres import PASSWORD as PG_PASSWORD
from tests.postgres import PostgresCluster
from tests.routes import (
    _PLACEHOLDER,
    GOOD,
    USERS,
    Stored,
    all_requests,
    assert_no_server_error,
    enumerate_routes,
    fill,
    peer_fixture,  # noqa: F401  (the peer fixture)
    populate,
    request_body,
    server_config,
    storage_snapshot,
)
from tests.scu_peer import Peer

pytestmark = pytest.mark.timeout(300)


# ---- path traversal -------------------------------------------------------------------------------------

HOSTILE_IDS = [
    "..",
    "%2e%2e",
    "%2E%2E%2F%2E%2E",
    "..%2f..%2fetc%2fpasswd",
    "..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "%2Fetc%2Fpasswd",
    "%2F%2Fetc%2Fpasswd",
    "..\\..\\etc\\passwd",
    "..%5c..%5cetc%5cpasswd",
    "abc%00def",
    "%00",
    "x%0d%0aSet-Cookie:%20a=b",
    "....%2F....%2F",
    "%252e%252e%252fetc",
    "~root",
    "*",
    "'%20OR%201=1%20--",
]


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    """A file outside the storage folder that no request may read, change or delete."""
    path = tmp_path / "canary.txt"
    path.write_text("CANARY-7f3a the server must never send or touch this\n")
    return path


def assert_canary_untouched(canary: Path, answer: httpx.Response) -> None:
    assert canary.read_text() == "CANARY-7f3a the server must never send or touch this\n"
    assert b"CANARY-7f3a" not in answer.content
    assert b"root:x:0:0" not in answer.content  # /etc/passwd


def canary_ids(canary: Path) -> list[str]:
    """Traversals aimed at the canary itself, relative and absolute."""
    absolute = str(canary).replace("/", "%2F")
    relative = "..%2F" * 12 + str(canary).lstrip("/").replace("/", "%2F")
    return [absolute, relative, "..%2F..%2F" + canary.name]


@pytest.fixture
def open_server(make_server: Callable[..., Server], peer: Peer) -> Iterator[tuple[Server, TestClient, Stored]]:
    server = make_server(**server_config(peer))
    with TestClient(server.app(), raise_server_exceptions=False, client=("127.0.0.1", 1)) as client:  # type: ignore[arg-type]
        yield server, client, populate(client)


IDEMPOTENT_BY_NAME = frozenset(
    {("PUT", "/modalities/{id}"), ("DELETE", "/modalities/{id}"), ("DELETE", "/queries/{id}")}
)


@pytest.mark.slow  # ~3,000 requests
def test_hostile_ids_in_every_id_route(open_server: tuple[Server, TestClient, Stored], canary: Path) -> None:
    server, client, ids = open_server
    before = storage_snapshot(server.config.storage_directory)
    tried = 0
    for method, template in enumerate_routes(server.app()):
        if "{" not in template:
            continue
        placeholders = [m.group(1) for m in _PLACEHOLDER.finditer(template)]
        for name in placeholders:
            for hostile in [*HOSTILE_IDS, *canary_ids(canary)]:
                url = fill(template, ids, {name: hostile})
                body, headers = request_body(method, template, ids)
                answer = client.request(method, url, content=body, headers=headers)
                tried += 1
                assert_no_server_error(answer, method, url)
                # "x/.." segments resolve to another route of the API (as in Orthanc): a 2xx is
                # possible there, never for an id standing alone.
                # PUT /modalities/{id} creates (DELETE removes) a modality of any name: a name, never a
                # path; DELETE /queries/{id} answers 200 for any id, as Orthanc 1.10.1 (checked).
                creates = (method, template) in IDEMPOTENT_BY_NAME
                assert answer.status_code >= 400 or ".." in unquote(hostile) or creates, (
                    method,
                    url,
                    answer.status_code,
                )
                assert_canary_untouched(canary, answer)
                assert "set-cookie" not in answer.headers
    assert tried > 1000
    after = storage_snapshot(server.config.storage_directory)
    assert set(after) - set(before) == set(), "a hostile request created a file in the storage folder"
    assert_nothing_outside(server.config.storage_directory.parent, {"canary.txt"})


def assert_nothing_outside(base: Path, allowed: set[str]) -> None:
    """Only the storage folder and `allowed` files in the test's base folder."""
    names = {p.name for p in base.iterdir()} - {"storage"} - allowed
    assert not names, f"files created outside the storage folder: {names}"


@pytest.mark.parametrize(
    "name",
    ["../x", "..%2Fx", "1024%2F..%2F..%2Fx", "1024/../../x", "%2Fetc%2Fpasswd", "..", "1024%00", "1024\\..\\x", "-1"],
)
def test_hostile_attachment_and_metadata_names(
    open_server: tuple[Server, TestClient, Stored], canary: Path, name: str
) -> None:
    server, client, ids = open_server
    before = storage_snapshot(server.config.storage_directory)
    for level, public_id in [("instances", ids.instance), ("patients", ids.patient)]:
        for kind in ("attachments", "metadata"):
            base = f"/{level}/{public_id}/{kind}/{name}"
            for method, url in [("PUT", base), ("GET", base), ("GET", base + "/data")]:
                answer = client.request(method, url, content=b"CANARY-7f3a?" if method == "PUT" else None)
                # `..` segments are resolved first (as Orthanc does): `/instances/{id}/attachments/..`
                # IS `/instances/{id}`, a 200 for GET; nothing else may succeed.
                assert 400 <= answer.status_code < 500 or (method == "GET" and ".." in name), (method, url, answer.text)
                assert_canary_untouched(canary, answer)
    assert set(storage_snapshot(server.config.storage_directory)) == set(before)
    assert_nothing_outside(server.config.storage_directory.parent, {"canary.txt"})


def _attachment_uuid(server: Server, public_id: str, content_type: int) -> str:
    db = server.config.index_directory / "dicomvault.db"
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT a.uuid FROM AttachedFiles a JOIN Resources r ON r.internalId = a.id "
            "WHERE r.publicId = ? AND a.fileType = ?",
            (public_id, content_type),
        ).fetchone()
    return str(row[0])


def _corrupt_uuid(server: Server, old: str, new: str) -> None:
    with sqlite3.connect(server.config.index_directory / "dicomvault.db") as conn:
        conn.execute("UPDATE AttachedFiles SET uuid = ? WHERE uuid = ?", (new, old))


@pytest.mark.parametrize("target", ["relative", "absolute", "dots"])
def test_corrupted_attachment_uuid_never_leaves_the_storage_folder(
    open_server: tuple[Server, TestClient, Stored], canary: Path, target: str
) -> None:
    server, client, ids = open_server
    root = server.config.storage_directory
    uuid = _attachment_uuid(server, ids.instance, 1)
    hostile = {
        "relative": os.path.relpath(canary, root / "xx" / "yy"),
        "absolute": str(canary),
        "dots": "../../../../../../../../../../../../" + str(canary).lstrip("/"),
    }[target]
    _corrupt_uuid(server, uuid, hostile)
    for method, url in [
        ("GET", f"/instances/{ids.instance}/file"),
        ("GET", f"/instances/{ids.instance}/attachments/dicom/data"),
        ("GET", f"/instances/{ids.instance}/tags"),
        ("GET", f"/studies/{ids.study}/archive"),
        ("POST", f"/instances/{ids.instance}/attachments/dicom/verify-md5"),
        ("POST", f"/instances/{ids.instance}/attachments/dicom/compress"),
        ("DELETE", f"/instances/{ids.instance}"),
    ]:
        answer = client.request(method, url)
        assert answer.status_code != 200 or method == "DELETE" or url.endswith("/archive"), (method, url, answer.text)
        assert answer.status_code < 500 or url.endswith("/archive"), (method, url, answer.status_code, answer.text)
        assert_canary_untouched(canary, answer)
    assert canary.exists()


def test_symlink_planted_in_the_storage_folder_is_not_followed(
    open_server: tuple[Server, TestClient, Stored], canary: Path
) -> None:
    server, client, ids = open_server
    area = server.context.accessor.area
    uuid = _attachment_uuid(server, ids.instance, 1)
    path = area.path(uuid)  # type: ignore[attr-defined]
    path.unlink()
    path.symlink_to(canary)
    for url in [f"/instances/{ids.instance}/file", f"/instances/{ids.instance}/attachments/dicom/data"]:
        answer = client.get(url)
        assert answer.status_code == 404, (url, answer.status_code)
        assert_canary_untouched(canary, answer)


# ---- no code execution, no file writing, no secrets ----------------------------------------------------

FORBIDDEN_ROUTE = re.compile(
    r"execute|script|lua|plugin|shell|exec|eval|/export$|filesystem|/tools/(reset|shutdown)|/system/config|/tools/config",
    re.IGNORECASE,
)


@pytest.mark.parametrize("enabled", [False, True])
def test_no_route_executes_code_or_writes_chosen_files(make_server: Callable[..., Server], enabled: bool) -> None:
    """Orthanc 1.10.1 has /tools/execute-script (Lua; `ExecuteLuaEnabled` false by default since
    1.5.8, and then answered 403 with an empty body: checked; CVE-2023-33466 when on) and
    /instances/{id}/export (writes a chosen path; `RestApiWriteToFileSystemEnabled`). dicomvault has
    neither, whatever those keys say, nor plugins, nor a configuration dump: 404 as any unknown route.
    Should such a feature ever be added, this test fails until it is off by default and tested."""
    server = make_server(ExecuteLuaEnabled=enabled, RestApiWriteToFileSystemEnabled=enabled)
    for method, template in enumerate_routes(server.app()):
        assert not FORBIDDEN_ROUTE.search(template), (method, template)
    with TestClient(server.app(), raise_server_exceptions=False, client=("127.0.0.1", 1)) as client:  # type: ignore[arg-type]
        ids = populate_minimal(client)
        for method, url in [
            ("POST", "/tools/execute-script"),
            ("POST", f"/instances/{ids}/export"),
            ("POST", f"/studies/{ids}/export"),
            ("GET", "/plugins"),
            ("POST", "/tools/reset"),
            ("POST", "/tools/shutdown"),
        ]:
            answer = client.request(method, url, content=b'os.execute("touch /tmp/pwned")')
            assert answer.status_code in (404, 405), (method, url, answer.status_code)
    assert not Path("/tmp/pwned").exists()


def populate_minimal(client: TestClient) -> str:
    answer = client.post("/instances", content=make_bytes(Spec(seed=3)))
    assert answer.status_code == 200
    return str(answer.json()["ID"])


def assert_no_secret_in_answers(server: Server, secrets: list[bytes]) -> None:
    with TestClient(server.app(), raise_server_exceptions=False, client=("127.0.0.1", 1)) as client:  # type: ignore[arg-type]
        ids = populate(client, GOOD)
        for method, url, body, headers in all_requests(server, ids):
            answer = client.request(method, url, content=body, headers=headers, auth=GOOD)
            for secret in secrets:
                assert secret not in answer.content, (method, url, secret)
                assert secret not in str(answer.headers).encode(), (method, url, secret)


def test_secrets_never_appear_in_any_answer(make_server: Callable[..., Server], peer: Peer) -> None:
    """RegisteredUsers passwords and the storage folder's path are in no answer of any route."""
    server = make_server(**server_config(peer, AuthenticationEnabled=True, RegisteredUsers=USERS))
    assert_no_secret_in_answers(server, [b"secret-alice-pw", str(server.config.storage_directory).encode()])


@pytest.mark.slow
def test_postgresql_password_never_appears_in_any_answer(
    make_server: Callable[..., Server], peer: Peer, postgres_cluster: PostgresCluster, postgres_database: str
) -> None:
    server = make_server(
        **server_config(peer, AuthenticationEnabled=True, RegisteredUsers=USERS),
        PostgreSQL=postgres_cluster.section(postgres_database),
    )
    assert_no_secret_in_answers(server, [b"secret-alice-pw", PG_PASSWORD.encode()])


def test_full_storage_error_names_no_server_path(caplog: pytest.LogCaptureFixture) -> None:
    """A write failure answers a generic detail; the path is in the log only."""
    from dicomvault.errors import DicomVaultError, ErrorCode
    from dicomvault.storage.area import _write_error

    for errno_value, code in [(28, ErrorCode.FULL_STORAGE), (13, ErrorCode.FILE_STORAGE_CANNOT_WRITE)]:
        error = _write_error(OSError(errno_value, os.strerror(errno_value)), Path("/srv/secret/storage/ab/cd/x"))
        assert isinstance(error, DicomVaultError) and error.code is code
        assert "/srv" not in (error.details or "")
    assert caplog.text.count("/srv/secret/storage/ab/cd/x") == 2  # the operator's log names it


def test_error_details_name_no_server_path(open_server: tuple[Server, TestClient, Stored], tmp_path: Path) -> None:
    """Every error answer of the route table (bad ids, bad bodies) keeps paths out of Details."""
    server, client, ids = open_server
    root = str(tmp_path)
    for method, template in enumerate_routes(server.app()):
        for url in (fill(template, ids), fill(template, ids, {"id": "nope", "name": "9999"})):
            answer = client.request(method, url, content=b"\x00garbage{", headers={"Content-Type": "application/json"})
            assert_no_server_error(answer, method, url)
            assert root.encode() not in answer.content, (method, url, answer.text)
