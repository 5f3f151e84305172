"""The replication tools' REST client and state file: URLs with credentials, retries of transient
failures against a real HTTP server, one-line refusals, and the atomic state file."""

from __future__ import annotations

import http.server
import json
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dicomvault.replication.client import OrthancClient, Retry, ServerError, ServerUrl
from dicomvault.replication.state import StateError, load_state, save_state
from tests.dicomgen import make_bytes
from tests.servers import RunningServer

Script = list[tuple[int, bytes]]
Seen = list[tuple[str, str, str | None]]


@pytest.fixture
def scripted() -> Iterator[Callable[..., tuple[str, Seen]]]:
    """A real HTTP server (HTTPS with `tls=(cert, key)`) answering each request with the next
    (status, body) of a script, then 200 `{}`; it records each request's method, path and
    Authorization header."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(script: Script, tls: tuple[Path, Path] | None = None) -> tuple[str, Seen]:
        answers = list(script)
        seen: Seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            disable_nagle_algorithm = True

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                seen.append((self.command, self.path, self.headers.get("Authorization")))
                status, body = answers.pop(0) if answers else (200, b"{}")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*tls)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        scheme = "https" if tls else "http"
        return f"{scheme}://127.0.0.1:{server.server_address[1]}", seen

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _no_wait() -> Retry:
    return Retry(attempts=4, first_delay_s=0.0, max_delay_s=0.0)


def test_urls_carry_credentials_and_are_checked() -> None:
    url = ServerUrl.parse("http://alice:s%40cret@host.example:8042/orthanc/")
    assert (url.base, url.username, url.password) == ("http://host.example:8042/orthanc", "alice", "s@cret")
    assert "s@cret" not in str(url)
    assert ServerUrl.parse("https://[::1]:8443").base == "https://[::1]:8443"
    for bad, said in (
        ("localhost:8042", "not an http:// or https:// URL"),
        ("ftp://host/", "not an http:// or https:// URL"),
        ("http:///path", "has no host name"),
        ("http://host:99999/", "invalid port"),
    ):
        with pytest.raises(ServerError, match=said):
            ServerUrl.parse(bad)


def test_transient_failures_are_retried(scripted: Callable[..., tuple[str, Seen]]) -> None:
    url, seen = scripted(
        [(503, b""), (500, b'{"Details": "Unable to create a subdirectory"}'), (200, b'{"Version": "x"}')]
    )
    slept: list[float] = []
    with OrthancClient(url, retry=_no_wait(), sleep=slept.append) as client:
        assert client.system() == {"Version": "x"}
    assert len(slept) == 2 and [path for _, path, _ in seen] == ["/system"] * 3


def test_retries_end_with_the_last_reason(scripted: Callable[..., tuple[str, Seen]]) -> None:
    url, _ = scripted([(503, b'{"Details": "busy"}')] * 4)
    with OrthancClient(url, retry=_no_wait(), sleep=lambda _: None) as client, pytest.raises(ServerError) as info:
        client.system()
    assert "HTTP 503: busy" in str(info.value) and info.value.transient


def test_refusals_are_not_retried_and_say_what_to_do(scripted: Callable[..., tuple[str, Seen]]) -> None:
    url, seen = scripted([(401, b""), (400, b'{"Details": "Cannot parse an invalid DICOM file"}'), (404, b"")])
    with OrthancClient(url.replace("http://", "http://bob:pw@"), retry=_no_wait(), sleep=lambda _: None) as client:
        with pytest.raises(ServerError, match="refused the credentials"):
            client.system()
        with pytest.raises(ServerError, match="HTTP 400: Cannot parse an invalid DICOM file") as info:
            client.upload(b"junk")
        assert not info.value.transient
        with pytest.raises(ServerError, match="not an Orthanc-compatible server"):
            client.system()
    assert len(seen) == 3  # nothing retried


def test_credentials_are_sent_as_basic_authentication(scripted: Callable[..., tuple[str, Seen]]) -> None:
    url, seen = scripted([(200, b'{"ApiVersion": 1}')])
    with OrthancClient(url.replace("http://", "http://alice:secret@")) as client:
        client.system()
    assert seen == [("GET", "/system", "Basic YWxpY2U6c2VjcmV0")]


def test_unreachable_server() -> None:
    with (
        OrthancClient("http://127.0.0.1:9", retry=_no_wait(), sleep=lambda _: None) as client,
        pytest.raises(ServerError, match=r"cannot reach http://127\.0\.0\.1:9") as info,
    ):
        client.system()
    assert info.value.transient


def test_against_dicomvault(running_server: Callable[..., RunningServer]) -> None:
    srv = running_server(AuthenticationEnabled=True, RegisteredUsers={"alice": "secret"})
    url = srv.url.replace("http://", "http://alice:secret@")
    with OrthancClient(url) as client:
        assert "ApiVersion" in client.system()
        first = client.upload(make_bytes(seed=4))
        assert first["Status"] == "Success"
        assert client.upload(make_bytes(seed=4))["Status"] == "AlreadyStored"
        assert client.instance_file(first["ID"]) == make_bytes(seed=4)
        assert client.instance_file("00000000-00000000-00000000-00000000-00000000") is None
    with (
        OrthancClient(srv.url.replace("http://", "http://alice:wrong@")) as client,
        pytest.raises(ServerError, match="refused the credentials"),
    ):
        client.system()


def test_state_file_is_replaced_atomically(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    assert load_state(path) is None
    save_state(path, {"cursor": 1})
    save_state(path, {"cursor": 2})
    assert load_state(path) == {"cursor": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary file left
    path.write_text("{torn")
    with pytest.raises(StateError, match="not valid JSON"):
        load_state(path)
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(StateError, match="does not hold a state"):
        load_state(path)
    with pytest.raises(StateError, match="cannot write the state file"):
        save_state(tmp_path / "missing-folder" / "state.json", {})


def test_https_with_a_private_certificate_authority(
    tmp_path: Path, scripted: Callable[..., tuple[str, Seen]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """https:// URLs: an unknown certificate is refused with a clear line; trusted through a given
    bundle (Python API) or SSL_CERT_FILE (the command line), the same server is used."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    url, seen = scripted(
        [(200, b'{"ApiVersion": 16}')] * 2 + [(200, b'{"ID": "x", "Status": "Success"}')], tls=(cert, key)
    )
    assert url.startswith("https://")
    slept: list[float] = []
    with (
        OrthancClient(url, retry=_no_wait(), sleep=slept.append) as client,
        pytest.raises(ServerError, match=r"is not trusted .*CERTIFICATE_VERIFY_FAILED.*SSL_CERT_FILE"),
    ):
        client.system()
    assert not slept  # not retried
    with OrthancClient(url.replace("https://", "https://alice:pw@"), verify_tls=str(cert)) as client:
        assert client.system() == {"ApiVersion": 16}
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    with OrthancClient(url.replace("https://", "https://bob:pw@")) as client:
        assert client.system() == {"ApiVersion": 16}
        assert client.upload(b"DICM")["ID"] == "x"  # the bulk connections speak TLS too
    assert seen[-3][2] == "Basic YWxpY2U6cHc="  # credentials travel inside TLS
    assert seen[-1][:2] == ("POST", "/instances") and seen[-1][2] == "Basic Ym9iOnB3"
