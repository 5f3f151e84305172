"""Access control and hostile paths on EVERY route, enumerated from the application itself (so a
route added later is covered without touching this file): RemoteAccessAllowed, HTTP basic
authentication (refused requests change nothing), path traversal through ids, attachment and
metadata names and corrupted storage rows, the absence of any code-executing or file-writing route,
secrets and server paths never in an answer.

The real-socket side (remote address, upload limits on the wire, stalled clients) is in
tests/test_security_network.py; the DICOM element declaring 4 GiB in tests/test_fuzz_dicom.py. The
enumeration helpers here are shared with the fuzz tests.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from pydicom.dataset import Dataset
from starlette.routing import BaseRoute, Route
from starlette.testclient import TestClient

from dicomvault.server import Server
from tests.dicomgen import Spec, make_bytes
from tests.postgres import PASSWORD as PG_PASSWORD
from tests.postgres import PostgresCluster
from tests.scu_peer import Peer

pytestmark = pytest.mark.timeout(300)

USERS = {"alice": "secret-alice-pw"}
GOOD = ("alice", "secret-alice-pw")
# Every way of not being alice: no header, wrong password, unknown user, and malformed headers.
BAD_AUTH: list[dict[str, str]] = [
    {},
    {"Authorization": "Basic " + base64.b64encode(b"alice:wrong").decode()},
    {"Authorization": "Basic " + base64.b64encode(b"mallory:secret-alice-pw").decode()},
    {"Authorization": "Basic " + base64.b64encode(b"alice").decode()},  # no colon
    {"Authorization": "Basic !!!not-base64"},
    {"Authorization": "Bearer secret-alice-pw"},
    {"Authorization": "Basic"},
    {"Authorization": "basic " + base64.b64encode(b"alice:secret-alice-pw ").decode()},  # trailing space
]
PEER_AET = "PEER"


# Errors Orthanc 1.10.1 itself answers with HTTP 500 and that dicomvault reproduces on purpose (the
# differential tests compare them): "Unknown DICOM tag" (`/instances/{id}/content/zzzz-0010`). Any
# other 500 is a bug.
# "Error in the network protocol" (9) is how Orthanc reports a DICOM peer's failure (a C-MOVE the peer
# refuses, an unreachable modality): the remote's fault, answered 500 by Orthanc too.
ORTHANC_500 = frozenset({9, 27})


# Orthanc 1.10.1 answers `/tools/find` bodies that jsoncpp cannot convert (a `Query` that is not an
# object, checked; a non-Boolean `Expand`, an out-of-range integer, deep nesting) with an
# unhandled-exception 500 ("Internal error"); dicomvault mirrors them on purpose (find/query.py).
MIRRORED_INTERNAL_ERRORS = re.compile(
    r'field ".*" (is not a JSON object|cannot be converted to a Boolean|is out of the range of a 32-bit integer)'
    r"|JSON document nested too deeply"
)


def assert_no_server_error(answer: httpx.Response, *context: object) -> None:
    if answer.status_code < 500:
        return
    if answer.request.method == "HEAD" and not answer.content:
        return  # no body to tell: the GET of the same URL is checked too
    details = answer.json().get("Details") or ""
    if answer.url.path == "/tools/find" and MIRRORED_INTERNAL_ERRORS.fullmatch(details):
        return
    status = answer.json().get("OrthancStatus") if answer.content.startswith(b"{") else None
    assert answer.status_code == 500 and status in ORTHANC_500, (*context, answer.status_code, answer.text)


# ---- the route table, from the application -------------------------------------------------------


def starlette_routes(app: Any) -> list[BaseRoute]:
    """The routes of the Starlette application inside the middleware wrappers of `Server.app()`."""
    seen = 0
    while not hasattr(app, "routes"):
        app = app.app  # AccessControl -> _NormalisePath -> Starlette (whatever is added between)
        seen += 1
        assert seen < 10, "no Starlette application found inside Server.app()"
    return list(app.routes)


def enumerate_routes(app: Any) -> list[tuple[str, str]]:
    """(method, path template) of every route, HEAD included where Starlette adds it."""
    out: list[tuple[str, str]] = []
    for route in starlette_routes(app):
        assert isinstance(route, Route), f"unexpected route type {route!r}: teach the security tests about it"
        for method in sorted(route.methods or ()):
            out.append((method, route.path))
    return out


@dataclass(frozen=True)
class Stored:
    """Ids of real resources, so an authorised request reaches its handler."""

    patient: str
    study: str
    series: str
    instance: str
    job: str
    query: str
    modality_port: int
    modality: str = "peer"
    attachment: str = "1024"
    metadata: str = "1024"


_PLACEHOLDER = re.compile(r"\{(\w+)(?::\w+)?\}")


def fill(template: str, ids: Stored, override: dict[str, str] | None = None) -> str:
    """The template with real ids: `{id}` after `/patients` is a patient id, and so on."""
    segments = template.strip("/").split("/")
    out: list[str] = []
    for i, segment in enumerate(segments):
        match = _PLACEHOLDER.fullmatch(segment)
        if match is None:
            out.append(segment)
            continue
        name = match.group(1)
        if override and name in override:
            out.append(override[name])
            continue
        before = segments[i - 1] if i else ""
        out.append(_value(name, before, segments[0], ids))
    return "/" + "/".join(out)


def _value(name: str, before: str, root: str, ids: Stored) -> str:
    if name == "id":
        by_root = {
            "patients": ids.patient,
            "studies": ids.study,
            "series": ids.series,
            "instances": ids.instance,
            "jobs": ids.job,
            "modalities": ids.modality,
            "queries": ids.query,
        }
        assert root in by_root, f"no known id for /{root}/{{id}}: add one to the security tests"
        return by_root[root]
    if name == "name":
        return ids.attachment if before == "attachments" else ids.metadata
    if name == "path":
        return "0010-0010"
    if name in ("index", "frame"):
        return "0"
    if name == "key":
        return "archive"
    if name == "action":
        return "pause"
    raise AssertionError(f"unknown route parameter {{{name}}}: add a value to the security tests")


def request_body(method: str, template: str, ids: Stored) -> tuple[bytes | None, dict[str, str]]:
    """A plausible body for a write route: real enough to reach the handler's logic."""
    if method not in ("POST", "PUT"):
        return None, {}
    json_type = {"Content-Type": "application/json"}
    if template == "/instances":
        return make_bytes(Spec(seed=77)), {"Content-Type": "application/dicom"}
    if template.endswith("/attachments/{name}") or template.endswith("/metadata/{name}"):
        return b"some value", {"Content-Type": "text/plain"}
    if template == "/tools/find":
        return b'{"Level": "Study", "Query": {"PatientName": "*"}}', json_type
    if template == "/tools/lookup":
        return ids.study.encode(), {"Content-Type": "text/plain"}
    if template == "/tools/create-archive":
        return f'{{"Resources": ["{ids.study}"]}}'.encode(), json_type
    if template == "/modalities/{id}":
        # The same peer again: later requests still reach a live modality.
        return f'{{"AET": "PEER", "Host": "127.0.0.1", "Port": {ids.modality_port}}}'.encode(), json_type
    if template.endswith("/store") or template.endswith("/store-straight"):
        return f'["{ids.instance}"]'.encode(), json_type
    if template.endswith("/query") or template.startswith("/modalities/{id}/find"):
        return b'{"Level": "Study", "Query": {}}', json_type
    if template.endswith("/protected"):
        return b"1", {"Content-Type": "text/plain"}
    return b"{}", json_type


def study_answer(identifier: Dataset) -> list[Dataset]:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.PatientID = "PID"
    return [ds]


@pytest.fixture
def peer() -> Iterator[Peer]:
    with Peer() as started:
        started.find_answers = study_answer
        yield started


def populate(client: TestClient, auth: Any = None, port: int = 0) -> Stored:
    """Store an instance, a user attachment, a user metadata, an archive job and a query."""
    answer = client.post("/instances", content=make_bytes(Spec(seed=1)), auth=auth)
    assert answer.status_code == 200, answer.text
    stored = answer.json()
    instance = stored["ID"]
    assert client.put(f"/instances/{instance}/attachments/1024", content=b"attached", auth=auth).status_code == 200
    assert client.put(f"/instances/{instance}/metadata/1024", content=b"meta", auth=auth).status_code == 200
    job = client.post(
        "/tools/create-archive", json={"Resources": [stored["ParentStudy"]], "Asynchronous": True}, auth=auth
    )
    assert job.status_code == 200, job.text
    query = client.post("/modalities/peer/query", json={"Level": "Study", "Query": {}}, auth=auth)
    assert query.status_code == 200, query.text
    return Stored(
        patient=stored["ParentPatient"],
        study=stored["ParentStudy"],
        series=stored["ParentSeries"],
        instance=instance,
        job=job.json()["ID"],
        query=query.json()["ID"],
        modality_port=port or int(client.get("/modalities/peer/configuration", auth=auth).json()["Port"]),
    )


def server_config(peer: Peer, **overrides: Any) -> dict[str, Any]:
    return {"DicomAet": "VAULT", "DicomScuTimeout": 10, "DicomModalities": {"peer": peer.modality()}, **overrides}


def storage_snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file under the storage folder but the index: size and MD5 (so a change shows)."""
    out: dict[str, tuple[int, str]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.name.startswith("dicomvault.db"):
            data = path.read_bytes()
            out[str(path.relative_to(root))] = (len(data), hashlib.md5(data).hexdigest())
    return out


def observable_state(server: Server, client: TestClient, auth: Any) -> tuple[Any, ...]:
    stats = server.context.index.read(lambda tx: tx.statistics())
    changes = client.get("/changes?limit=1000", auth=auth).json()
    return stats, changes, storage_snapshot(server.config.storage_directory)


# ---- authentication -----------------------------------------------------------------------------------


@pytest.fixture
def secured(make_server: Callable[..., Server], peer: Peer) -> Iterator[tuple[Server, TestClient, Stored]]:
    server = make_server(**server_config(peer, AuthenticationEnabled=True, RegisteredUsers=USERS))
    with TestClient(server.app(), raise_server_exceptions=False, client=("127.0.0.1", 1)) as client:  # type: ignore[arg-type]
        yield server, client, populate(client, GOOD)


def all_requests(server: Server, ids: Stored) -> list[tuple[str, str, bytes | None, dict[str, str]]]:
    """Every (method, url, body, headers) of the route table, then unknown routes and methods."""
    out = []
    for method, template in enumerate_routes(server.app()):
        body, headers = request_body(method, template, ids)
        out.append((method, fill(template, ids), body, headers))
    for method, url in [
        ("GET", "/no/such/route"),
        ("POST", "/tools/execute-script"),
        ("PATCH", f"/instances/{ids.instance}"),
        ("OPTIONS", "/system"),
        ("GET", "/"),
        ("GET", "/app/explorer.html"),
        ("PUT", "/instances"),
        ("GET", f"/studies/{ids.study}/media"),  # Orthanc's DICOMDIR archives: not in dicomvault
        ("POST", "/tools/create-media"),
        ("POST", f"/instances/{ids.instance}/export"),
    ]:
        out.append((method, url, b"{}", {}))
    return out


def test_route_table_is_enumerated() -> None:
    """The enumeration sees what the other tests rely on: file downloads, archives, writes."""
    from dicomvault.rest.app import route_table

    templates = {(m, r.path) for r in route_table() if isinstance(r, Route) for m in r.methods or ()}
    for expected in [
        ("GET", "/instances/{id}/file"),
        ("GET", "/studies/{id}/archive"),
        ("POST", "/tools/create-archive"),
        ("PUT", "/instances/{id}/attachments/{name}"),
        ("DELETE", "/patients/{id}"),
        ("POST", "/instances"),
    ]:
        assert expected in templates


def test_every_route_refuses_missing_and_wrong_credentials(secured: tuple[Server, TestClient, Stored]) -> None:
    server, client, ids = secured
    requests = all_requests(server, ids)
    assert len(requests) > 150
    before = observable_state(server, client, GOOD)
    refused = 0
    for method, url, body, headers in requests:
        for auth in BAD_AUTH:
            answer = client.request(method, url, content=body, headers={**headers, **auth})
            assert answer.status_code == 401, (method, url, auth, answer.status_code, answer.text)
            assert answer.headers["www-authenticate"] == 'Basic realm="Orthanc Secure Area"'
            if method != "HEAD":
                assert answer.json()["HttpStatus"] == 401
                assert b"secret" not in answer.content
            refused += 1
    assert observable_state(server, client, GOOD) == before  # nothing written, changed or deleted
    assert refused == len(requests) * len(BAD_AUTH)


def test_every_route_answers_good_credentials_without_a_server_error(
    secured: tuple[Server, TestClient, Stored],
) -> None:
    """Reads first, then writes, deletions last: each authorised request reaches its handler and
    answers anything but a 5xx (a 4xx is fine: a job already finished cannot be paused)."""
    server, client, ids = secured
    order = {"GET": 0, "HEAD": 0, "OPTIONS": 0, "PUT": 1, "POST": 1, "PATCH": 1, "DELETE": 2}
    requests = sorted(all_requests(server, ids), key=lambda r: order[r[0]])
    statuses: dict[int, int] = {}
    for method, url, body, headers in requests:
        answer = client.request(method, url, content=body, headers=headers, auth=GOOD)
        assert_no_server_error(answer, method, url)
        statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
        if answer.status_code >= 400 and method != "HEAD":
            assert {"HttpStatus", "OrthancStatus", "Message"} <= set(answer.json()), (method, url)
    assert statuses.get(200, 0) > 100, statuses  # most routes really ran


def test_http_username_is_recorded(secured: tuple[Server, TestClient, Stored]) -> None:
    from dicomvault.enums import MetadataType

    server, _client, ids = secured
    meta = server.context.index.read(lambda tx: tx.metadata([tx.lookup(ids.instance).internal_id]))  # type: ignore[union-attr]
    (values,) = meta.values()
    assert values[MetadataType.INSTANCE_HTTP_USERNAME] == "alice"
    assert values[MetadataType.INSTANCE_ORIGIN] == "RestApi"
    assert values[MetadataType.INSTANCE_REMOTE_IP] == "127.0.0.1"


# ---- RemoteAccessAllowed (in process; over a real socket in test_security_network.py) --------------


def test_remote_access_refused_on_every_route(make_server: Callable[..., Server], peer: Peer) -> None:
    server = make_server(**server_config(peer))
    with TestClient(server.app(), raise_server_exceptions=False, client=("127.0.0.1", 1)) as local:  # type: ignore[arg-type]
        ids = populate(local)
        before = observable_state(server, local, None)
        with TestClient(server.app(), raise_server_exceptions=False, client=("192.0.2.10", 5555)) as remote:  # type: ignore[arg-type]
            for method, url, body, headers in all_requests(server, ids):
                answer = remote.request(method, url, content=body, headers=headers)
                assert answer.status_code == 403, (method, url)
                if method != "HEAD":
                    assert answer.json()["OrthancStatus"] == 45
        assert observable_state(server, local, None) == before


@pytest.mark.parametrize(
    ("host", "local"),
    [("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("::ffff:127.0.0.1", True), ("localhost", True),
     ("::ffff:192.0.2.10", False), ("192.0.2.10", False), ("0.0.0.0", False), ("", False), ("garbage", False)],
)  # fmt: skip
def test_loopback_detection(host: str, local: bool) -> None:
    from dicomvault.rest.security import is_loopback

    assert is_loopback(host) is local


def test_remote_access_allowed(make_server: Callable[..., Server]) -> None:
    server = make_server(RemoteAccessAllowed=True, AuthenticationEnabled=False)
    for host in ("192.0.2.10", "::1", "10.0.0.1"):
        with TestClient(server.app(), client=(host, 5555)) as client:  # type: ignore[arg-type]
            assert client.get("/system").status_code == 200


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
