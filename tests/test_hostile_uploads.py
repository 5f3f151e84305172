"""Hostile uploads over real HTTP (a `dicomvault serve` subprocess) and in process: gzip and zip
bombs, a huge declared Content-Length with no body, and absurd image dimensions. Each must end in a
4xx with Orthanc's JSON error body, nothing stored, and the server's peak memory (VmHWM) bounded.
"""

from __future__ import annotations

import gzip
import io
import socket
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from dicomvault.ingest.archives import MAX_ZIP_ENTRIES, RATIO_FREE_OUTPUT, gunzip, iter_zip
from dicomvault.server import Server
from tests.dicomgen import Spec, make_bytes, make_dataset, to_bytes
from tests.servers import RunningServer

GIB = 1 << 30
MEMORY_BOUND = 200 << 20  # the growth of the server's peak RSS a hostile request may cause


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def _zeros_deflated(size: int, wbits: int) -> Iterator[bytes]:
    """A stream of `size` zero bytes compressed, produced piecewise (never materialised)."""
    encoder = zlib.compressobj(9, zlib.DEFLATED, wbits)
    block = bytes(1 << 20)
    left = size
    while left:
        piece = block[: min(left, len(block))]
        left -= len(piece)
        yield encoder.compress(piece)
    yield encoder.flush()


def gzip_bomb(size: int) -> bytes:
    return b"".join(_zeros_deflated(size, 16 + zlib.MAX_WBITS))


def zip_bomb(size: int) -> bytes:
    """One entry of `size` zeros (zip64 when needed), written in pieces."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive,
        archive.open("bomb.dcm", "w", force_zip64=size >= 0xFFFFFFFF) as entry,
    ):
        block = bytes(1 << 20)
        left = size
        while left:
            piece = block[: min(left, len(block))]
            left -= len(piece)
            entry.write(piece)
    return out.getvalue()


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    server = RunningServer(tmp_path_factory.mktemp("hostile"), {})
    server.start()
    yield server
    server.stop()


def _assert_refused(answer: httpx.Response, statuses: tuple[int, ...] = (400, 413)) -> None:
    assert answer.status_code in statuses, answer.text
    body = answer.json()
    assert body["HttpStatus"] == answer.status_code and body["Method"] == "POST" and body["Uri"] == "/instances"


def _assert_empty(vault: RunningServer) -> None:
    assert httpx.get(vault.url + "/instances").json() == []
    storage = vault.base / "storage"
    stored = [p for p in storage.rglob("*") if p.is_file() and len(p.name) == 36]
    assert stored == []


def _post(vault: RunningServer, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(vault.url + "/instances", content=body, headers=headers, timeout=120)


# -- gzip ------------------------------------------------------------------------------------------


def test_gzip_bomb_of_10_mb_is_a_4xx(vault: RunningServer) -> None:
    bomb = gzip_bomb(10 << 20)
    assert len(bomb) < 20_000
    # Under RATIO_FREE_OUTPUT it inflates, then is no DICOM file: 404 "Inexistent tag" as Orthanc says.
    _assert_refused(_post(vault, bomb, **{"Content-Encoding": "gzip"}), (400, 404, 413))
    _assert_empty(vault)


@pytest.mark.slow
def test_gzip_bomb_of_4_gib_is_refused_with_bounded_memory(vault: RunningServer) -> None:
    assert vault.proc is not None
    bomb = gzip_bomb(4 * GIB + 1)  # ~4 MB on the wire
    before = _peak_rss(vault.proc.pid)
    answer = _post(vault, bomb, **{"Content-Encoding": "gzip"})
    _assert_refused(answer, (413,))
    assert "compression ratio" in answer.json()["Details"]
    assert _peak_rss(vault.proc.pid) - before < MEMORY_BOUND
    _assert_empty(vault)


def test_nested_gzip_is_a_4xx(vault: RunningServer) -> None:
    nested = gzip.compress(gzip.compress(make_bytes(seed=1)))
    _assert_refused(_post(vault, nested, **{"Content-Encoding": "gzip"}))
    _assert_empty(vault)


def test_gunzip_stops_early_on_a_bomb() -> None:
    """In process: the ratio cap trips just past RATIO_FREE_OUTPUT, whatever the limit."""
    bomb = gzip_bomb(RATIO_FREE_OUTPUT * 4)
    with pytest.raises(Exception, match="compression ratio"):
        gunzip(bomb, 4 * GIB)
    legit = make_bytes(seed=1, rows=256, columns=256)
    assert gunzip(gzip.compress(legit), 4 * GIB) == legit
    blank = bytes(RATIO_FREE_OUTPUT)  # blank images inflate ~1000:1: allowed up to the free size
    assert gunzip(gzip.compress(blank), 4 * GIB) == blank


# -- zip -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_zip_bomb_of_4_gib_is_refused_with_bounded_memory(vault: RunningServer) -> None:
    assert vault.proc is not None
    bomb = zip_bomb(4 * GIB + 1)
    before = _peak_rss(vault.proc.pid)
    _assert_refused(_post(vault, bomb), (413,))
    assert _peak_rss(vault.proc.pid) - before < MEMORY_BOUND
    _assert_empty(vault)


def test_nested_zip_stores_nothing(vault: RunningServer) -> None:
    inner = zip_bomb(64 << 20)
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("inner.zip", inner)
    answer = _post(vault, outer.getvalue())
    assert answer.status_code == 200 and answer.json() == []  # entries that are not DICOM are skipped
    _assert_empty(vault)


def test_zip_with_too_many_entries_is_refused_before_parsing(vault: RunningServer) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for i in range(MAX_ZIP_ENTRIES + 1):
            archive.writestr(f"{i}", b"")
    _assert_refused(_post(vault, out.getvalue()), (413,))
    _assert_empty(vault)


def test_zip_entry_declaring_a_small_size_but_inflating_more(vault: RunningServer) -> None:
    payload = make_bytes(seed=2)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("liar.dcm", payload)
    data = bytearray(out.getvalue())
    # Shrink the uncompressed size in the local header and in the central directory.
    local = data.index(b"PK\x03\x04")
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, 100)
    struct.pack_into("<I", data, central + 24, 100)
    answer = _post(vault, bytes(data))
    assert answer.status_code == 200 and answer.json() == []  # the entry fails its checks: skipped
    _assert_empty(vault)


def test_overlapping_zip_entries_are_bounded() -> None:
    """Many central-directory records pointing at one deflated bomb (the overlap trick): each is
    inflated separately under the ratio cap, so none gets far."""
    single = zip_bomb(64 << 20)
    central = single.index(b"PK\x01\x02")
    end = single.index(b"PK\x05\x06")
    record = single[central:end]
    copies = 50
    eocd = bytearray(single[end:])
    struct.pack_into("<HH", eocd, 8, copies, copies)
    struct.pack_into("<I", eocd, 12, len(record) * copies)
    crafted = single[:central] + record * copies + bytes(eocd)
    with pytest.raises(Exception, match=r"compression ratio|overlap|Overlapped"):
        for _ in iter_zip(crafted, 4 * GIB):
            pass


# -- Content-Length --------------------------------------------------------------------------------


def _raw_request(vault: RunningServer, length: int, body: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", vault.port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = f"POST /instances HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()
        sock.sendall(head + body)
        if length > len(body) and length < 1 << 40:
            sock.shutdown(socket.SHUT_WR)  # the client gives up mid-body
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError:
                return received
            if not chunk:
                return received
            received += chunk
            head_end = received.find(b"\r\n\r\n")
            if head_end >= 0:  # the connection is kept alive: stop once the whole answer is here
                lengths = [
                    line for line in received[:head_end].split(b"\r\n") if line.lower().startswith(b"content-length:")
                ]
                if lengths and len(received) - head_end - 4 >= int(lengths[0].split(b":")[1]):
                    return received


def test_huge_declared_content_length_is_413_before_any_byte(vault: RunningServer) -> None:
    answer = _raw_request(vault, 1 << 50)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"HttpStatus":413' in answer
    _assert_empty(vault)


def test_body_shorter_than_declared_stores_nothing(vault: RunningServer) -> None:
    data = make_bytes(seed=3)
    _raw_request(vault, 10 * len(data), data)
    _assert_empty(vault)
    # The server stays healthy and serves the next upload.
    assert _post(vault, make_bytes(seed=4)).status_code == 200
    assert len(httpx.get(vault.url + "/instances").json()) == 1
    for public_id in httpx.get(vault.url + "/instances").json():
        httpx.delete(f"{vault.url}/instances/{public_id}")


# -- absurd image dimensions -----------------------------------------------------------------------


def absurd_image() -> bytes:
    ds = make_dataset(Spec(seed=77, rows=4, columns=4))
    ds.Rows = ds.Columns = 65535
    ds.NumberOfFrames = 100000
    ds.BitsAllocated = ds.BitsStored = 32
    ds.HighBit = 31
    ds.PixelData = bytes(64)
    return to_bytes(ds)


IMAGE_ROUTES = ["preview", "rendered", "image-uint8", "image-uint16", "image-int16", "frames/7/preview"]
DATA_ROUTES = ["numpy", "matlab", "frames/0/numpy", "frames/0/raw", "frames/0/raw.gz", "frames/99999/matlab"]


def test_absurd_dimensions_are_stored_but_never_decoded(vault: RunningServer) -> None:
    assert vault.proc is not None
    answer = _post(vault, absurd_image())
    assert answer.status_code == 200, answer.text  # stored as received, as Orthanc 1.10.1 does
    public_id = answer.json()["ID"]
    before = _peak_rss(vault.proc.pid)
    try:
        for route in IMAGE_ROUTES:
            refused = httpx.get(f"{vault.url}/instances/{public_id}/{route}")
            assert refused.status_code == 415, (route, refused.text)  # Orthanc: 415 too
        for route in DATA_ROUTES:
            refused = httpx.get(f"{vault.url}/instances/{public_id}/{route}")
            # Orthanc 1.10.1: 500 "Not implemented" for numpy/matlab, 400 for raw; ours: 400 throughout.
            assert refused.status_code == 400, (route, refused.text)
            assert refused.json()["OrthancStatus"] == 15
        series = httpx.get(f"{vault.url}/instances/{public_id}/series").json()["ID"]
        assert httpx.get(f"{vault.url}/series/{series}/numpy").status_code == 400
        frames = httpx.get(f"{vault.url}/instances/{public_id}/frames").json()
        assert len(frames) == 100000  # listed as Orthanc lists them
        assert _peak_rss(vault.proc.pid) - before < MEMORY_BOUND
    finally:
        httpx.delete(f"{vault.url}/instances/{public_id}")


def test_declared_frames_beyond_the_pixel_data_are_refused(client: TestClient, server: Server) -> None:
    """In process: a plausible header (512 x 512, 16 bits) over 10 bytes of pixel data."""
    ds = make_dataset(Spec(seed=78, rows=2, columns=2))
    ds.Rows = ds.Columns = 512
    ds.PixelData = bytes(10)
    public_id = client.post("/instances", content=to_bytes(ds)).json()["ID"]
    answer = client.get(f"/instances/{public_id}/numpy")
    assert answer.status_code == 400 and "declares 524288 bytes" in answer.json()["Details"]
    assert client.get(f"/instances/{public_id}/preview").status_code == 415
