"""Access control on every route: RemoteAccessAllowed and HTTP basic authentication."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from starlette.testclient import TestClient

from dicomvault.server import Server
from tests.dicomgen import make_bytes

INSTANCE = "889deaac-20f18edc-8e6fde36-ada71019-aab6861d"
ROUTES = [
    ("GET", "/system"),
    ("GET", "/statistics"),
    ("GET", "/patients"),
    ("GET", "/studies?expand"),
    ("GET", f"/instances/{INSTANCE}"),
    ("GET", f"/instances/{INSTANCE}/file"),
    ("GET", f"/instances/{INSTANCE}/tags"),
    ("GET", f"/instances/{INSTANCE}/content/0010-0010"),
    ("POST", "/instances"),
    ("DELETE", f"/instances/{INSTANCE}"),
    ("GET", "/tools/now"),
    ("GET", "/no/such/route"),
]


@pytest.fixture
def secured(make_server: Callable[..., Server]) -> Server:
    return make_server(AuthenticationEnabled=True, RegisteredUsers={"alice": "secret"})


@pytest.mark.parametrize(("method", "url"), ROUTES)
def test_every_route_needs_credentials(secured: Server, method: str, url: str) -> None:
    with TestClient(secured.app(), client=("127.0.0.1", 1)) as client:  # type: ignore[arg-type]
        client.post("/instances", content=make_bytes(seed=1), auth=("alice", "secret"))
        body = make_bytes(seed=2) if method == "POST" else None
        for auth in (None, ("alice", "wrong"), ("mallory", "secret")):
            answer = client.request(method, url, content=body, auth=auth)
            assert answer.status_code == 401, (url, auth)
            assert answer.headers["www-authenticate"].startswith("Basic realm=")
        answer = client.request(method, url, content=body, auth=("alice", "secret"))
        assert answer.status_code in (200, 404), answer.text
    # nothing was written by the refused requests
    stats = secured.context.index.read(lambda tx: tx.statistics())
    assert stats.count_instances in (1, 2) if method == "POST" else stats.count_instances in (0, 1)


def test_malformed_authorization_headers(secured: Server) -> None:
    with TestClient(secured.app(), client=("127.0.0.1", 1)) as client:  # type: ignore[arg-type]
        for header in ("Basic !!!", "Basic " + "YWxpY2U=", "Bearer abc", "Basic"):
            assert client.get("/system", headers={"Authorization": header}).status_code == 401


def test_http_username_is_recorded(secured: Server) -> None:
    from dicomvault.enums import MetadataType

    with TestClient(secured.app(), client=("127.0.0.1", 1)) as client:  # type: ignore[arg-type]
        client.post("/instances", content=make_bytes(seed=1), auth=("alice", "secret"))
    meta = secured.context.index.read(lambda tx: tx.metadata([tx.lookup(INSTANCE).internal_id]))  # type: ignore[union-attr]
    (values,) = meta.values()
    assert values[MetadataType.INSTANCE_HTTP_USERNAME] == "alice"
    assert values[MetadataType.INSTANCE_ORIGIN] == "RestApi"
    assert values[MetadataType.INSTANCE_REMOTE_IP] == "127.0.0.1"


@pytest.mark.parametrize(("method", "url"), ROUTES)
def test_remote_access_refused_by_default(server: Server, method: str, url: str) -> None:
    with TestClient(server.app(), client=("192.0.2.10", 5555)) as client:  # type: ignore[arg-type]
        answer = client.request(method, url, content=make_bytes(seed=1) if method == "POST" else None)
        assert answer.status_code == 403
    assert server.context.index.read(lambda tx: tx.statistics()).count_instances == 0


def test_remote_access_allowed(make_server: Callable[..., Server]) -> None:
    server = make_server(RemoteAccessAllowed=True, AuthenticationEnabled=False)
    with TestClient(server.app(), client=("192.0.2.10", 5555)) as client:  # type: ignore[arg-type]
        assert client.get("/system").status_code == 200
    with TestClient(server.app(), client=("::1", 5555)) as client:  # type: ignore[arg-type]
        assert client.get("/system").status_code == 200
