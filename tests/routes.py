"""The REST route table as the security and fuzz tests see it: every route enumerated from the
application itself (so a route added later is covered without touching the tests), each `{param}`
filled with the id of a real stored resource, a body each write route accepts, the errors that may
legitimately be a 500 (Orthanc's own), and the observable state refused requests must not change.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from starlette.routing import BaseRoute, Route
from starlette.testclient import TestClient

from dicomvault.server import Server
from tests.dicomgen import Spec, make_bytes
from tests.scu_peer import Peer

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


@pytest.fixture(name="peer")
def peer_fixture() -> Iterator[Peer]:
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
