"""Security over real sockets, against a `dicomvault serve` subprocess: RemoteAccessAllowed seen
from a non-loopback source address, MaximumUploadSize enforced on the wire (a declared length
refused before any body byte, a chunked body cut after about the limit, memory bounded), and slow
or stalled clients (HttpRequestTimeout) that cannot keep a normal client from being served.

The non-loopback address is one of this machine's own (e.g. eth0's): a connection to it from it
has that address as its source. Without one, a dummy interface gets a TEST-NET address (root
only); otherwise the test is skipped."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import select
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.dicomgen import Spec, make_bytes
from tests.servers import RunningServer

pytestmark = pytest.mark.timeout(240)

DUMMY_INTERFACE = "dvsec0"
DUMMY_ADDRESS = "198.51.100.77"


def own_non_loopback_ipv4() -> str | None:
    """An IPv4 address of this machine that is not loopback, from `ip -j addr`."""
    try:
        out = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    for interface in json.loads(out.stdout or "[]"):
        for info in interface.get("addr_info", []):
            address = info.get("local", "")
            if address and not ipaddress.ip_address(address).is_loopback:
                return str(address)
    return None


@pytest.fixture(scope="module")
def remote_address() -> Iterator[str]:
    found = own_non_loopback_ipv4()
    if found is not None:
        yield found
        return
    added = subprocess.run(
        ["sh", "-c", f"ip link add {DUMMY_INTERFACE} type dummy && ip addr add {DUMMY_ADDRESS}/32 dev "
         f"{DUMMY_INTERFACE} && ip link set {DUMMY_INTERFACE} up"],
        capture_output=True,
    )  # fmt: skip
    if added.returncode != 0:
        pytest.skip(f"no non-loopback address and no way to add one: {added.stderr.decode().strip()}")
    try:
        yield DUMMY_ADDRESS
    finally:
        subprocess.run(["ip", "link", "del", DUMMY_INTERFACE], capture_output=True)


def get(url: str, **kwargs: object) -> httpx.Response:
    return httpx.get(url, timeout=10, **kwargs)  # type: ignore[arg-type]


# ---- RemoteAccessAllowed --------------------------------------------------------------------------------


def test_remote_access_refused_from_a_non_loopback_address(
    running_server: Callable[..., RunningServer], remote_address: str
) -> None:
    """Orthanc 1.10.1 answers such a request 401 with an empty body and a WWW-Authenticate header
    (checked); dicomvault answers 403 with Orthanc's JSON error body: credentials would not help."""
    srv = running_server(RemoteAccessAllowed=False)
    remote = f"http://{remote_address}:{srv.port}"
    for method, path in [("GET", "/system"), ("GET", "/instances"), ("POST", "/instances"), ("GET", "/nope")]:
        answer = httpx.request(method, remote + path, content=make_bytes(Spec(seed=5)), timeout=10)
        assert answer.status_code == 403, (method, path, answer.text)
        assert answer.json()["OrthancStatus"] == 45  # ForbiddenAccess
    assert get(srv.url + "/system").status_code == 200  # loopback still served
    assert get(srv.url + "/instances").json() == []  # the refused upload stored nothing
    assert "RemoteAccessAllowed is false" in srv.log_path.read_text()


def test_forwarded_headers_are_not_trusted(running_server: Callable[..., RunningServer], remote_address: str) -> None:
    """The client is the TCP peer (as in Orthanc): a remote client claiming to be 127.0.0.1 in
    X-Forwarded-For is refused, and a local one naming a remote address is still local."""
    srv = running_server(RemoteAccessAllowed=False)
    spoofing = {"X-Forwarded-For": "127.0.0.1", "Forwarded": "for=127.0.0.1", "X-Real-IP": "127.0.0.1"}
    assert get(f"http://{remote_address}:{srv.port}/system", headers=spoofing).status_code == 403
    assert get(srv.url + "/system", headers={"X-Forwarded-For": "192.0.2.99"}).status_code == 200
    upload = httpx.post(
        srv.url + "/instances", content=make_bytes(Spec(seed=7)), headers={"X-Forwarded-For": "192.0.2.99"}
    )
    instance = upload.json()["ID"]
    assert get(f"{srv.url}/instances/{instance}/metadata/RemoteIP").text == "127.0.0.1"


def test_remote_access_allowed_from_a_non_loopback_address(
    running_server: Callable[..., RunningServer], remote_address: str
) -> None:
    srv = running_server(RemoteAccessAllowed=True, AuthenticationEnabled=True, RegisteredUsers={"bob": "pw-bob"})
    remote = f"http://{remote_address}:{srv.port}"
    assert get(remote + "/system").status_code == 401
    assert get(remote + "/system", auth=("bob", "pw-bob")).status_code == 200


# ---- MaximumUploadSize on the wire ------------------------------------------------------------------------

LIMIT = 4 * 1024 * 1024


def vm_hwm_kib(pid: int) -> int:
    """Peak resident memory of the server and of its children (the ingest workers parse uploads in
    their own processes): the sum of their VmHWM, an upper bound of what they held at once."""
    total = 0
    pids = [pid]
    while pids:
        current = pids.pop()
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{current}/task").iterdir():
                pids.extend(int(child) for child in (task / "children").read_text().split())
    assert total > 0, "no VmHWM"
    return total


def read_response_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def stored_files(srv: RunningServer) -> list[str]:
    root = srv.base / "storage"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "dicomvault.db" not in p.name)


def warm_up(srv: RunningServer) -> None:
    """One refused upload first, so that every ingest worker exists before memory is measured."""
    for _ in range(4):
        assert httpx.post(srv.url + "/instances", content=b"not DICOM", timeout=30).status_code == 400


@pytest.fixture
def limited(running_server: Callable[..., RunningServer]) -> RunningServer:
    srv = running_server(MaximumUploadSize=LIMIT, HttpRequestTimeout=5)
    assert srv.proc is not None
    return srv


def test_declared_length_over_the_limit_is_refused_before_the_body(limited: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", limited.port), timeout=30) as sock:
        sock.sendall(
            f"POST /instances HTTP/1.1\r\nHost: x\r\nContent-Type: application/dicom\r\n"
            f"Content-Length: {LIMIT + 1}\r\n\r\n".encode()
        )
        head = read_response_head(sock)  # no body byte sent: the answer comes anyway
    assert head.startswith(b"HTTP/1.1 413"), head
    # A huge declared length (4 GiB and more) likewise.
    with socket.create_connection(("127.0.0.1", limited.port), timeout=30) as sock:
        sock.sendall(b"POST /instances HTTP/1.1\r\nHost: x\r\nContent-Length: 109951162777600\r\n\r\n")
        assert read_response_head(sock).startswith(b"HTTP/1.1 413")
    assert stored_files(limited) == []
    assert get(limited.url + "/statistics").json()["CountInstances"] == 0


def test_chunked_body_over_the_limit_is_cut_and_memory_stays_bounded(limited: RunningServer) -> None:
    assert limited.proc is not None
    warm_up(limited)
    before = vm_hwm_kib(limited.proc.pid)
    chunk = b"\xa5" * 65536
    sent = 0
    answered = b""
    with socket.create_connection(("127.0.0.1", limited.port), timeout=30) as sock:
        sock.sendall(b"POST /instances HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            while sent < 16 * LIMIT:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                if select.select([sock], [], [], 0)[0]:
                    break
        with contextlib.suppress(ConnectionResetError):
            answered = read_response_head(sock)
    assert answered.startswith(b"HTTP/1.1 413"), answered
    # Refused after about the limit: what the socket buffers absorbed beyond it is all the slack.
    assert sent < LIMIT + 8 * 1024 * 1024, sent
    growth_mib = (vm_hwm_kib(limited.proc.pid) - before) / 1024
    assert growth_mib < 64, growth_mib
    assert stored_files(limited) == []  # no file, no temporary file in the storage folder
    assert get(limited.url + "/statistics").json()["CountInstances"] == 0
    good = httpx.post(limited.url + "/instances", content=make_bytes(Spec(seed=6)), timeout=10)
    assert good.status_code == 200  # the server is fine


def test_element_declaring_4_gib_over_the_wire(limited: RunningServer) -> None:
    """The parser refuses a file whose element claims 4 GiB before allocating anything for it."""
    from tests.test_fuzz_dicom import HUGE

    assert limited.proc is not None
    warm_up(limited)
    before = vm_hwm_kib(limited.proc.pid)
    for case, raw in sorted(HUGE.items()):
        answer = httpx.post(limited.url + "/instances", content=raw, timeout=30)
        assert answer.status_code == 400, (case, answer.text)
    assert (vm_hwm_kib(limited.proc.pid) - before) / 1024 < 64
    assert stored_files(limited) == []


# ---- slow and stalled clients ------------------------------------------------------------------------------

STALL_TIMEOUT = 2


def stalled_connections(port: int, count: int) -> list[socket.socket]:
    """`count` connections stalled in every way: silent, in the request line, in the headers, in a body."""
    partials = [
        b"",
        b"GET /sys",
        b"POST /instances HTTP/1.1\r\nHost: x\r\n",
        b"POST /instances HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"\0" * 500,
        b'POST /tools/find HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"Le',
    ]
    out = []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        if partials[i % len(partials)]:
            sock.sendall(partials[i % len(partials)])
        out.append(sock)
    return out


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed the connection (it may have sent a 408 first)."""
    sock.setblocking(False)
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except (ConnectionResetError, OSError):
        return True


def test_stalled_clients_do_not_exhaust_the_server(running_server: Callable[..., RunningServer]) -> None:
    srv = running_server(HttpRequestTimeout=STALL_TIMEOUT, HttpThreadsCount=4)
    stalled = stalled_connections(srv.port, 200)
    try:
        # A normal client is served while 200 connections stall (each answer well before any timeout
        # could have freed a slot: the stalled ones hold nothing the server needs).
        for seed in range(3):
            assert (
                httpx.post(srv.url + "/instances", content=make_bytes(Spec(seed=seed)), timeout=30).status_code == 200
            )
        assert len(get(srv.url + "/instances").json()) == 3
        # The stalled connections are closed by the server after HttpRequestTimeout.
        deadline = time.monotonic() + 20 * STALL_TIMEOUT
        open_ones = list(stalled)
        while open_ones and time.monotonic() < deadline:
            open_ones = [s for s in open_ones if not closed_by_server(s)]
            time.sleep(0.2)
        assert not open_ones, f"{len(open_ones)} stalled connections still open"
    finally:
        for sock in stalled:
            sock.close()
    log = srv.log_path.read_text()
    assert "HttpRequestTimeout" in log
    assert "Exception in ASGI application" not in log, log[-3000:]
    assert get(srv.url + "/statistics").json()["CountInstances"] == 3  # the partial uploads stored nothing


@pytest.mark.slow  # waits out several timeouts
def test_dripping_headers_do_not_extend_the_deadline(running_server: Callable[..., RunningServer]) -> None:
    """One header byte every half second keeps the connection busy but not alive: the header
    deadline is a total, not an idle timeout."""
    srv = running_server(HttpRequestTimeout=STALL_TIMEOUT)
    request = b"GET /system HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        closed = False
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if closed_by_server(sock):
                closed = True
                break
            sock.setblocking(True)
            time.sleep(0.5)
    assert closed, "a client dripping its headers was never cut off"
    assert get(srv.url + "/system").status_code == 200


@pytest.mark.slow  # waits out several timeouts
def test_a_slow_but_steady_body_is_not_cut(running_server: Callable[..., RunningServer]) -> None:
    """A body arriving in pieces, each within the timeout, is accepted: the body bound is a pause
    between reads, not a total (a large upload on a slow link takes long)."""
    srv = running_server(HttpRequestTimeout=STALL_TIMEOUT)
    raw = make_bytes(Spec(seed=9))
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as sock:
        sock.sendall(f"POST /instances HTTP/1.1\r\nHost: x\r\nContent-Length: {len(raw)}\r\n\r\n".encode())
        pieces = [raw[i : i + len(raw) // 4 + 1] for i in range(0, len(raw), len(raw) // 4 + 1)]
        for piece in pieces:
            time.sleep(STALL_TIMEOUT * 0.6)
            sock.sendall(piece)
        head = read_response_head(sock)
    assert head.startswith(b"HTTP/1.1 200"), head
