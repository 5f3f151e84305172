"""Access control on EVERY route, enumerated from the application itself (tests/routes.py, so a
route added later is covered without touching this file): RemoteAccessAllowed and HTTP basic
authentication (refused requests change nothing). Hostile paths, code execution and secrets are in
tests/test_security_paths.py.

The real-socket side (remote address, upload limits on the wire, stalled clients) is in
tests/test_security_network.py; the DICOM element declaring 4 GiB in tests/test_fuzz_dicom.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from dicomvault.server import Server
from tests.routes import (
    BAD_AUTH,
    GOOD,
    USERS,
    Stored,
    all_requests,
    assert_no_server_error,
    observable_state,
    peer_fixture,  # noqa: F401  (the peer fixture)
    populate,
    server_config,
)
from tests.scu_peer import Peer

pytestmark = pytest.mark.timeout(300)


# ---- authentication -----------------------------------------------------------------------------------


@pytest.fixture
def secured(make_server: Callable[..., Server], peer: Peer) -> Iterator[tuple[Server, TestClient, Stored]]:
    server = make_server(**server_config(peer, AuthenticationEnabled=True, RegisteredUsers=USERS))
    with TestClient(server.app(), raise_server_exceptions=False, client=("127.0.0.1", 1)) as client:  # type: ignore[arg-type]
        yield server, client, populate(client, GOOD)


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
