"""Attachments over REST, in process: the `dicom` attachment and user attachments read in every
form, written and deleted with revisions, compressed and uncompressed on disk (files first, index
second, sizes and MD5s exact), verified; and the refusals, each leaving index and storage as they
were."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from dicomvault.enums import ChangeType, CompressionType, ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.find.metadata import ETag
from dicomvault.ingest.attachments import Attachments
from dicomvault.rest.app import normalise_path
from dicomvault.server import Server
from dicomvault.storage.accessor import compress_zlib_with_size, decompress_zlib_with_size, md5_hex
from tests.dicomgen import make_bytes

pytestmark = pytest.mark.contract

INSTANCE = "889deaac-20f18edc-8e6fde36-ada71019-aab6861d"
PATIENT = "40048daa-ea797422-2c5d7c48-ee36c45c-83ed8e7b"
STUDY = "4e16caa3-61ada511-9ca4cef3-9a76a871-a9005480"
SERIES = "fcb5d03d-194a99b6-64483e20-5a7ad92f-d6f6ac29"
UNKNOWN = "00000000-00000000-00000000-00000000-00000000"
NAMES = {"UserContentType": {"sample": 1025, "pdf": [1026, "application/pdf"]}}
SUB_ROUTES = [
    "compress",
    "compressed-data",
    "compressed-md5",
    "compressed-size",
    "data",
    "info",
    "is-compressed",
    "md5",
    "size",
    "uncompress",
    "verify-md5",
    "uuid",
]
DICOM = make_bytes(seed=1)
BASE = f"/instances/{INSTANCE}/attachments"


def open_client(server: Server) -> TestClient:
    return TestClient(server.app(), raise_server_exceptions=False, client=("127.0.0.1", 50000))  # type: ignore[arg-type]


@pytest.fixture
def named_server(make_server: Callable[..., Server]) -> Server:
    return make_server(**NAMES)


@pytest.fixture
def named(named_server: Server) -> Iterator[TestClient]:
    with open_client(named_server) as client:
        assert client.post("/instances", content=DICOM).status_code == 200
        yield client


def error_code(answer: Any) -> int:
    return int(answer.json()["OrthancStatus"])


def stored_files(server: Server) -> dict[str, bytes]:
    root = server.config.storage_directory
    return {p.name: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.parent != root}


def rows(server: Server) -> list[Any]:
    return server.context.index.read(lambda tx: tx.fetch_all("SELECT * FROM AttachedFiles ORDER BY id, fileType"))


def change_types(server: Server) -> list[int]:
    found = server.context.index.read(lambda tx: tx.fetch_all("SELECT changeType FROM Changes ORDER BY seq"))
    return [int(row[0]) for row in found]


def state(server: Server) -> dict[str, Any]:
    """Everything a refused request must leave unchanged: rows, files, change log."""
    return {"rows": rows(server), "files": stored_files(server), "changes": change_types(server)}


def info(client: TestClient, name: str, base: str = BASE) -> dict[str, Any]:
    answer = client.get(f"{base}/{name}/info")
    assert answer.status_code == 200, answer.text
    found: dict[str, Any] = answer.json()
    return found


def on_disk(server: Server, uuid: str) -> bytes:
    return (server.config.storage_directory / uuid[:2] / uuid[2:4] / uuid).read_bytes()


# ---- reading ------------------------------------------------------------------------------------


def test_dicom_attachment_in_every_form(named: TestClient) -> None:
    assert named.get(BASE).json() == ["dicom"]
    assert named.get(f"{BASE}?full").json() == {"dicom": 1}
    assert named.get(f"{BASE}?expand").json() == ["dicom"]
    listing = named.get(f"{BASE}/dicom")
    md5 = md5_hex(DICOM)
    assert listing.json() == SUB_ROUTES and listing.headers["etag"] == f'"0-{md5}"'
    described = info(named, "dicom")
    assert described == {
        "CompressedMD5": md5,
        "CompressedSize": len(DICOM),
        "ContentType": 1,
        "UncompressedMD5": md5,
        "UncompressedSize": len(DICOM),
        "Uuid": described["Uuid"],
    }
    data = named.get(f"{BASE}/dicom/data")
    assert data.content == DICOM
    assert data.headers["content-type"] == "application/dicom"
    assert data.headers["content-disposition"] == f'filename="{described["Uuid"]}.dcm"'
    assert data.headers["etag"] == f'"0-{md5}"'
    raw = named.get(f"{BASE}/1/compressed-data")
    assert raw.content == DICOM and raw.headers["content-type"] == "application/octet-stream"
    assert "content-disposition" not in raw.headers
    for reading, expected in (
        ("md5", md5),
        ("compressed-md5", md5),
        ("size", str(len(DICOM))),
        ("compressed-size", str(len(DICOM))),
        ("is-compressed", "0"),
    ):
        answer = named.get(f"{BASE}/dicom/{reading}")
        assert answer.text == expected and answer.headers["content-type"] == "text/plain", reading
        assert answer.headers["etag"] == f'"0-{md5}"'
    verified = named.post(f"{BASE}/dicom/verify-md5")
    assert verified.status_code == 200 and verified.content == b"{}"
    assert verified.headers["content-type"] == "application/json"


def test_range_is_ignored_as_orthanc(named: TestClient) -> None:
    answer = named.get(f"{BASE}/dicom/data", headers={"Range": "bytes=0-9"})
    assert answer.status_code == 200 and answer.content == DICOM


def test_if_none_match_on_readings(named: TestClient) -> None:
    etag = f'"0-{md5_hex(DICOM)}"'
    for reading in ("", "/data", "/compressed-data", "/md5", "/size", "/info", "/is-compressed"):
        cached = named.get(f"{BASE}/dicom{reading}", headers={"If-None-Match": etag})
        assert cached.status_code == 304 and cached.content == b"" and cached.headers["etag"] == etag, reading
        assert named.get(f"{BASE}/dicom{reading}", headers={"If-None-Match": '"1-x"'}).status_code == 200
        junk = named.get(f"{BASE}/dicom{reading}", headers={"If-None-Match": "junk"})
        assert junk.status_code == 400 and error_code(junk) == ErrorCode.PARAMETER_OUT_OF_RANGE


@pytest.mark.parametrize(
    ("url", "code"),
    [
        (f"{BASE}/nope/data", ErrorCode.INEXISTENT_ITEM),
        (f"{BASE}/DICOM/data", ErrorCode.INEXISTENT_ITEM),
        (f"{BASE}/unknown/size", ErrorCode.INEXISTENT_ITEM),
        (f"{BASE}/sample/data", ErrorCode.UNKNOWN_RESOURCE),  # a known name the instance lacks
        (f"{BASE}/dicom-until-pixel-data/data", ErrorCode.UNKNOWN_RESOURCE),
        (f"{BASE}/0/info", ErrorCode.UNKNOWN_RESOURCE),
        (f"{BASE}/-1/info", ErrorCode.UNKNOWN_RESOURCE),
        (f"{BASE}/1500", ErrorCode.UNKNOWN_RESOURCE),
        (f"{BASE}/99999999999/data", ErrorCode.BAD_PARAMETER_TYPE),
        (f"{BASE}/%201/data", ErrorCode.BAD_PARAMETER_TYPE),
        (f"{BASE}/dicom/uuid", ErrorCode.UNKNOWN_RESOURCE),  # listed by Orthanc 1.10.1, not answered
        (f"{BASE}/dicom/nope", ErrorCode.UNKNOWN_RESOURCE),
        (f"/instances/{UNKNOWN}/attachments", ErrorCode.UNKNOWN_RESOURCE),
        (f"/instances/{UNKNOWN}/attachments/dicom/data", ErrorCode.UNKNOWN_RESOURCE),
        (f"/instances/{UNKNOWN}/attachments/nope/data", ErrorCode.INEXISTENT_ITEM),
        (f"/series/{INSTANCE}/attachments", ErrorCode.UNKNOWN_RESOURCE),
        (f"/series/{INSTANCE}/attachments/dicom/data", ErrorCode.UNKNOWN_RESOURCE),
        (f"/patients/{PATIENT}/attachments/dicom", ErrorCode.UNKNOWN_RESOURCE),
    ],
)
def test_read_errors(named: TestClient, url: str, code: int) -> None:
    answer = named.get(url)
    assert answer.status_code == (400 if code == ErrorCode.BAD_PARAMETER_TYPE else 404)
    assert error_code(answer) == code


def test_other_levels_list_their_own_attachments(named: TestClient) -> None:
    for url in (f"/patients/{PATIENT}", f"/studies/{STUDY}", f"/series/{SERIES}"):
        assert named.get(f"{url}/attachments").json() == []
        assert named.get(f"{url}/attachments?full").json() == {}


# ---- user attachments ---------------------------------------------------------------------------


def test_user_attachment_lifecycle(named: TestClient, named_server: Server) -> None:
    put = named.put(f"{BASE}/pdf", content=b"%PDF-1.4 fake")
    assert put.status_code == 200 and put.content == b"{}"
    assert put.headers["content-type"] == "application/json"
    assert put.headers["etag"] == f'"0-{md5_hex(b"%PDF-1.4 fake")}"'
    named.put(f"{BASE}/1500", content=b"unnamed")
    named.put(f"{BASE}/sample", content=b"hello")
    assert named.get(BASE).json() == ["dicom", "sample", "pdf", "1500"]
    assert named.get(f"{BASE}?full").json() == {"1500": 1500, "dicom": 1, "pdf": 1026, "sample": 1025}
    pdf = info(named, "pdf")
    data = named.get(f"{BASE}/pdf/data")
    assert data.content == b"%PDF-1.4 fake"
    assert data.headers["content-type"] == "application/pdf"
    assert data.headers["content-disposition"] == f'filename="{pdf["Uuid"]}"'
    assert named.get(f"{BASE}/1500/data").headers["content-type"] == "application/octet-stream"
    assert on_disk(named_server, pdf["Uuid"]) == b"%PDF-1.4 fake"
    stats = named.get("/statistics").json()
    assert int(stats["TotalDiskSize"]) == len(DICOM) + len(b"%PDF-1.4 fake") + len(b"unnamed") + len(b"hello")
    # Replacing: a new file, the old one removed after the commit, the revision bumped.
    second = named.put(f"{BASE}/pdf", content=b"%PDF-1.5 other", headers={"If-Match": put.headers["etag"]})
    assert second.status_code == 200 and second.headers["etag"] == f'"1-{md5_hex(b"%PDF-1.5 other")}"'
    replaced = info(named, "pdf")
    assert replaced["Uuid"] != pdf["Uuid"] and pdf["Uuid"] not in stored_files(named_server)
    assert named.get(f"{BASE}/1026/data").content == b"%PDF-1.5 other"
    # Deleting: the row, then the file.
    deleted = named.delete(f"{BASE}/pdf", headers={"If-Match": second.headers["etag"]})
    assert deleted.status_code == 200 and deleted.content == b"" and deleted.headers["content-type"] == "text/plain"
    assert replaced["Uuid"] not in stored_files(named_server)
    again = named.delete(f"{BASE}/pdf")
    assert again.status_code == 404 and error_code(again) == ErrorCode.UNKNOWN_RESOURCE
    assert named.get(BASE).json() == ["dicom", "sample", "1500"]
    assert change_types(named_server)[-5:] == [ChangeType.UPDATED_ATTACHMENT] * 5


def test_empty_and_large_attachments(named: TestClient) -> None:
    assert named.put(f"{BASE}/1500", content=b"").status_code == 200
    assert named.get(f"{BASE}/1500/data").content == b""
    assert named.get(f"{BASE}/1500/size").text == "0"
    assert named.post(f"{BASE}/1500/compress").status_code == 200
    assert named.get(f"{BASE}/1500/data").content == b""
    assert named.post(f"{BASE}/1500/verify-md5").status_code == 200
    large = bytes(range(256)) * (3 * 4096 + 7)  # several read chunks
    assert named.put(f"{BASE}/1501", content=large).status_code == 200
    answer = named.get(f"{BASE}/1501/data")
    assert answer.content == large and answer.headers["content-length"] == str(len(large))


def test_attachments_at_other_levels_and_with_their_resource(named: TestClient, named_server: Server) -> None:
    for url in (f"/patients/{PATIENT}", f"/studies/{STUDY}", f"/series/{SERIES}"):
        assert named.put(f"{url}/attachments/sample", content=url.encode()).status_code == 200
        assert named.get(f"{url}/attachments").json() == ["sample"]
        assert named.get(f"{url}/attachments/sample/data").content == url.encode()
    assert len(stored_files(named_server)) == 4
    assert named.delete(f"/patients/{PATIENT}").status_code == 200
    assert stored_files(named_server) == {} and rows(named_server) == []


def test_put_compressed_when_storage_compression_is_on(make_server: Callable[..., Server]) -> None:
    server = make_server(StorageCompression=True, **NAMES)
    content = b"compressible " * 100
    with open_client(server) as client:
        client.post("/instances", content=DICOM)
        assert client.put(f"{BASE}/sample", content=content).status_code == 200
        described = info(client, "sample")
        assert client.get(f"{BASE}/sample/is-compressed").text == "1"
        stored = on_disk(server, described["Uuid"])
        assert decompress_zlib_with_size(stored) == content
        assert described["CompressedSize"] == len(stored) and described["CompressedMD5"] == md5_hex(stored)
        assert described["UncompressedMD5"] == md5_hex(content)
        assert client.get(f"{BASE}/sample/data").content == content
        assert client.get(f"{BASE}/sample/compressed-data").content == stored


# ---- compression --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dicom", "sample"])
def test_compress_and_uncompress_rewrite_exactly(named: TestClient, named_server: Server, name: str) -> None:
    content = DICOM if name == "dicom" else b"user content " * 50
    if name != "dicom":
        named.put(f"{BASE}/{name}", content=content)
    before = info(named, name)
    changes = len(change_types(named_server))
    compressed = named.post(f"{BASE}/{name}/compress")
    assert compressed.status_code == 200 and compressed.content == b"{}"
    after = info(named, name)
    stored = on_disk(named_server, after["Uuid"])
    assert after["Uuid"] != before["Uuid"] and before["Uuid"] not in stored_files(named_server)
    assert stored == compress_zlib_with_size(content, named_server.config.storage_compression_level)
    assert after == {
        "CompressedMD5": md5_hex(stored),
        "CompressedSize": len(stored),
        "ContentType": before["ContentType"],
        "UncompressedMD5": md5_hex(content),
        "UncompressedSize": len(content),
        "Uuid": after["Uuid"],
    }
    assert named.get(f"{BASE}/{name}/is-compressed").text == "1"
    assert named.get(f"{BASE}/{name}/data").content == content
    assert named.get(f"{BASE}/{name}/compressed-data").content == stored
    assert named.post(f"{BASE}/{name}/verify-md5").status_code == 200
    # The revision moved, the content (hence the MD5 of the ETag) did not.
    assert named.get(f"{BASE}/{name}").headers["etag"] == f'"1-{md5_hex(content)}"'
    if name == "dicom":
        assert named.get(f"/instances/{INSTANCE}/file").content == DICOM
        assert named.get(f"/instances/{INSTANCE}").json()["FileUuid"] == after["Uuid"]
    # A second compress has nothing to do.
    assert named.post(f"{BASE}/{name}/compress").status_code == 200
    assert info(named, name) == after
    uncompressed = named.post(f"{BASE}/{name}/uncompress")
    assert uncompressed.status_code == 200
    plain = info(named, name)
    assert on_disk(named_server, plain["Uuid"]) == content
    assert plain["CompressedSize"] == len(content) and plain["CompressedMD5"] == md5_hex(content)
    assert set(stored_files(named_server)) == {plain["Uuid"]} | (
        {info(named, "dicom")["Uuid"]} if name != "dicom" else set()
    )
    assert named.post(f"{BASE}/{name}/uncompress").status_code == 200
    assert info(named, name) == plain
    # As Orthanc: rewriting logs UpdatedAttachment for user attachments only.
    expected = [] if name == "dicom" else [ChangeType.UPDATED_ATTACHMENT] * 2
    assert change_types(named_server)[changes:] == expected


def test_compress_is_atomic_when_the_index_refuses(
    named: TestClient, named_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = state(named_server)

    def refuse(*args: object) -> None:
        raise RuntimeError("injected index failure")

    monkeypatch.setattr("dicomvault.ingest.attachments.put_attachment", refuse)
    answer = named.post(f"{BASE}/dicom/compress")
    assert answer.status_code == 500
    assert state(named_server) == before  # the new file was removed, the old one kept
    put = named.put(f"{BASE}/sample", content=b"x")
    assert put.status_code == 500
    assert state(named_server) == before


def test_compress_refuses_damaged_content(named: TestClient, named_server: Server) -> None:
    uuid = info(named, "dicom")["Uuid"]
    path = named_server.config.storage_directory / uuid[:2] / uuid[2:4] / uuid
    path.write_bytes(DICOM[:-1] + bytes([DICOM[-1] ^ 0xFF]))
    before = state(named_server)
    answer = named.post(f"{BASE}/dicom/compress")
    assert answer.status_code == 500 and error_code(answer) == ErrorCode.CORRUPTED_FILE
    assert state(named_server) == before


# ---- verify-md5 --------------------------------------------------------------------------------


def _tamper(server: Server, uuid: str, data: bytes) -> None:
    (server.config.storage_directory / uuid[:2] / uuid[2:4] / uuid).write_bytes(data)


def test_verify_md5_finds_damage(named: TestClient, named_server: Server) -> None:
    named.put(f"{BASE}/sample", content=b"plain content")
    _tamper(named_server, info(named, "sample")["Uuid"], b"plain contenX")
    answer = named.post(f"{BASE}/sample/verify-md5")
    assert answer.status_code == 400 and error_code(answer) == ErrorCode.CORRUPTED_FILE
    named.put(f"{BASE}/1500", content=b"compressed content")
    named.post(f"{BASE}/1500/compress")
    described = info(named, "1500")
    _tamper(named_server, described["Uuid"], b"garbage!!!!!")
    assert named.post(f"{BASE}/1500/verify-md5").status_code == 400
    # Damage that keeps the stored MD5 but not the content cannot happen by accident; a stored
    # file whose zlib stream is cut is caught by the compressed MD5 first.
    stored = compress_zlib_with_size(b"compressed content", 1)
    _tamper(named_server, described["Uuid"], stored[:-2])
    assert named.post(f"{BASE}/1500/verify-md5").status_code == 400


def test_missing_file(named: TestClient, named_server: Server) -> None:
    named.put(f"{BASE}/sample", content=b"to be removed")
    uuid = info(named, "sample")["Uuid"]
    (named_server.config.storage_directory / uuid[:2] / uuid[2:4] / uuid).unlink()
    for method, reading in (("GET", "data"), ("GET", "compressed-data"), ("POST", "verify-md5"), ("POST", "compress")):
        answer = named.request(method, f"{BASE}/sample/{reading}")
        assert answer.status_code == 404 and error_code(answer) == ErrorCode.INEXISTENT_FILE, reading
    assert named.get(f"{BASE}/sample/info").status_code == 200  # the index still describes it
    assert named.delete(f"{BASE}/sample").status_code == 200  # and it can be deleted


# ---- refusals: each leaves everything as it was -----------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "headers", "status", "code"),
    [
        ("PUT", f"{BASE}/dicom", {}, 403, ErrorCode.FORBIDDEN_ACCESS),
        ("PUT", f"{BASE}/1", {}, 403, ErrorCode.FORBIDDEN_ACCESS),
        ("PUT", f"{BASE}/dicom-until-pixel-data", {}, 403, ErrorCode.FORBIDDEN_ACCESS),
        ("PUT", f"{BASE}/0", {}, 403, ErrorCode.FORBIDDEN_ACCESS),
        ("PUT", f"{BASE}/-1", {}, 403, ErrorCode.FORBIDDEN_ACCESS),
        ("PUT", f"{BASE}/1023", {}, 403, ErrorCode.FORBIDDEN_ACCESS),
        ("PUT", f"{BASE}/65536", {}, 403, ErrorCode.FORBIDDEN_ACCESS),
        ("PUT", f"{BASE}/1", {"If-Match": "junk"}, 403, ErrorCode.FORBIDDEN_ACCESS),
        ("DELETE", f"{BASE}/dicom", {}, 403, ErrorCode.FORBIDDEN_ACCESS),
        ("DELETE", f"{BASE}/1023", {}, 403, ErrorCode.FORBIDDEN_ACCESS),
        ("PUT", f"{BASE}/nope", {}, 404, ErrorCode.INEXISTENT_ITEM),
        ("PUT", f"{BASE}/Sample", {}, 404, ErrorCode.INEXISTENT_ITEM),
        ("DELETE", f"{BASE}/nope", {}, 404, ErrorCode.INEXISTENT_ITEM),
        ("PUT", f"{BASE}/99999999999", {}, 400, ErrorCode.BAD_PARAMETER_TYPE),
        ("PUT", f"{BASE}/sample", {"If-Match": "junk"}, 400, ErrorCode.PARAMETER_OUT_OF_RANGE),
        ("PUT", f"{BASE}/sample", {"If-Match": '"0-wrong"'}, 409, ErrorCode.REVISION),
        ("PUT", f"{BASE}/sample", {"If-Match": '"1-d41d8cd98f00b204e9800998ecf8427e"'}, 409, ErrorCode.REVISION),
        ("DELETE", f"{BASE}/sample", {"If-Match": '"0-wrong"'}, 409, ErrorCode.REVISION),
        ("DELETE", f"{BASE}/sample", {"If-Match": "junk"}, 400, ErrorCode.PARAMETER_OUT_OF_RANGE),
        ("DELETE", f"{BASE}/1500", {}, 404, ErrorCode.UNKNOWN_RESOURCE),
        ("POST", f"{BASE}/1500/compress", {}, 404, ErrorCode.UNKNOWN_RESOURCE),
        ("POST", f"{BASE}/nope/compress", {}, 404, ErrorCode.INEXISTENT_ITEM),
        ("POST", f"{BASE}/1500/verify-md5", {}, 400, ErrorCode.BAD_REQUEST),  # 400 here, as Orthanc
        # Path traversal: dot segments are resolved before routing, as Orthanc does, so these
        # address other routes (`/instances/{id}`, `/instances/{id}/dicom`...); never a file.
        ("PUT", f"{BASE}/..%2F..%2Fetc", {}, 405, ErrorCode.BAD_REQUEST),
        ("PUT", f"{BASE}/%2Fetc%2Fpasswd", {}, 404, ErrorCode.UNKNOWN_RESOURCE),
        ("PUT", f"{BASE}/%2E%2E", {}, 405, ErrorCode.BAD_REQUEST),
        ("GET", f"{BASE}/..%2F..%2F..%2Fdicomvault.db/data", {}, 404, ErrorCode.UNKNOWN_RESOURCE),
        ("DELETE", f"{BASE}/..%2Fdicom", {}, 404, ErrorCode.UNKNOWN_RESOURCE),
        ("POST", f"{BASE}/%2E%2E/compress", {}, 404, ErrorCode.UNKNOWN_RESOURCE),
        # Unknown resources, and ids of another level (Orthanc 1.10.1 answers 200 to a PUT on an
        # unknown id while storing nothing, and acts on the resource of another level: refused).
        ("PUT", f"/instances/{UNKNOWN}/attachments/sample", {}, 404, ErrorCode.UNKNOWN_RESOURCE),
        ("PUT", f"/series/{INSTANCE}/attachments/sample", {}, 404, ErrorCode.UNKNOWN_RESOURCE),
        ("DELETE", f"/series/{INSTANCE}/attachments/sample", {}, 404, ErrorCode.UNKNOWN_RESOURCE),
        ("POST", f"/series/{INSTANCE}/attachments/sample/compress", {}, 404, ErrorCode.UNKNOWN_RESOURCE),
        ("POST", f"/studies/{INSTANCE}/attachments/dicom/uncompress", {}, 404, ErrorCode.UNKNOWN_RESOURCE),
    ],
)
def test_refusals_change_nothing(
    named: TestClient, named_server: Server, method: str, url: str, headers: dict[str, str], status: int, code: int
) -> None:
    named.put(f"{BASE}/sample", content=b"")
    before = state(named_server)
    answer = named.request(method, url, content=b"payload", headers=headers)
    assert answer.status_code == status
    assert error_code(answer) == code
    assert state(named_server) == before
    root = named_server.config.storage_directory
    assert not any(p.is_file() for p in root.parent.iterdir() if p.name not in ("storage",))


def test_wrong_methods(named: TestClient) -> None:
    assert named.put(BASE, content=b"x").status_code == 405
    assert named.post(f"{BASE}/dicom").status_code == 405
    assert named.post(f"{BASE}/dicom/data").status_code == 405
    assert named.delete(f"{BASE}/dicom/data").status_code == 405
    assert named.get(f"{BASE}/dicom/compress").status_code == 405
    assert named.put(f"{BASE}/dicom/verify-md5", content=b"x").status_code == 405


# ---- CheckRevisions --------------------------------------------------------------------------------


def test_check_revisions(make_server: Callable[..., Server]) -> None:
    server = make_server(CheckRevisions=True, **NAMES)
    with open_client(server) as client:
        client.post("/instances", content=DICOM)
        first = client.put(f"{BASE}/sample", content=b"one")
        assert first.status_code == 200
        before = state(server)
        for method, url in (
            ("PUT", f"{BASE}/sample"),
            ("DELETE", f"{BASE}/sample"),
            ("DELETE", f"{BASE}/1999"),  # refused before the lookup, as Orthanc
            ("DELETE", f"/instances/{UNKNOWN}/attachments/1999"),
        ):
            answer = client.request(method, url, content=b"two")
            assert answer.status_code == 409 and error_code(answer) == ErrorCode.REVISION, url
        assert state(server) == before
        absent = client.delete(f"{BASE}/1999", headers={"If-Match": '"0-x"'})
        assert absent.status_code == 404 and error_code(absent) == ErrorCode.UNKNOWN_RESOURCE
        etag = client.get(f"{BASE}/sample/info").headers["etag"]
        second = client.put(f"{BASE}/sample", content=b"two", headers={"If-Match": etag})
        assert second.status_code == 200
        # compress ignores If-Match (as Orthanc), and bumps the revision.
        assert client.post(f"{BASE}/sample/compress", headers={"If-Match": '"5-x"'}).status_code == 200
        assert client.delete(f"{BASE}/sample", headers={"If-Match": second.headers["etag"]}).status_code == 409
        current = client.get(f"{BASE}/sample").headers["etag"]
        assert current == f'"2-{hashlib.md5(b"two").hexdigest()}"'
        assert client.delete(f"{BASE}/sample", headers={"If-Match": current}).status_code == 200
        assert client.get(BASE).json() == ["dicom"]


def test_compression_kept_per_attachment(named: TestClient, named_server: Server) -> None:
    named.put(f"{BASE}/sample", content=b"abc" * 100)
    named.post(f"{BASE}/sample/compress")
    stored = named_server.context.index.read(
        lambda tx: tx.fetch_one("SELECT compressionType FROM AttachedFiles WHERE fileType = 1025")
    )
    assert int(stored[0]) == CompressionType.ZLIB_WITH_SIZE


def test_storage_folder_layout_is_kept(named: TestClient, named_server: Server) -> None:
    named.put(f"{BASE}/sample", content=b"layout")
    uuid = info(named, "sample")["Uuid"]
    expected = Path(named_server.config.storage_directory) / uuid[:2] / uuid[2:4] / uuid
    assert expected.read_bytes() == b"layout"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/", "/"),
        ("/patients/", "/patients"),
        ("//patients//x//", "/patients/x"),
        ("/instances/a/attachments/../../etc/data", "/instances/etc/data"),
        ("/instances/a/./attachments", "/instances/a/attachments"),
        ("/../../system", "/system"),
        ("/statistics/..", "/"),
        ("/a/b/c/../../..", "/"),
        ("/a/..b/c..", "/a/..b/c.."),
    ],
)
def test_path_normalisation_as_orthanc(path: str, expected: str) -> None:
    assert normalise_path(path) == expected


# ---- races (forced with a barrier, repeated) ------------------------------------------------------


def _race(count: int, work: Callable[[int], object]) -> list[object]:
    """Run `work(i)` for i in range(count) on as many threads, released together."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except DicomVaultError as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def assert_no_orphan_and_no_missing_file(server: Server) -> None:
    referenced = {row[2] for row in rows(server)}
    assert set(stored_files(server)) == referenced


def test_race_of_writers_with_the_same_revision(named: TestClient, named_server: Server) -> None:
    service = Attachments(named_server.context.index, named_server.context.accessor)
    for attempt in range(10):
        etag = service.put(ResourceType.INSTANCE, INSTANCE, 1025, b"base", None, "20260101T000000")
        results = _race(
            4,
            lambda i, expected=etag: service.put(  # type: ignore[misc]
                ResourceType.INSTANCE, INSTANCE, 1025, f"writer {i}".encode(), expected, "20260101T000000"
            ),
        )
        winners = [r for r in results if isinstance(r, ETag)]
        losers = [r for r in results if isinstance(r, DicomVaultError)]
        assert len(winners) == 1 and len(losers) == 3, attempt
        assert all(loser.code == ErrorCode.REVISION for loser in losers)
        assert named.get(f"{BASE}/sample").headers["etag"] == winners[0].header()
        assert_no_orphan_and_no_missing_file(named_server)


def test_race_of_compression_and_replacement(named: TestClient, named_server: Server) -> None:
    service = Attachments(named_server.context.index, named_server.context.accessor)
    for attempt in range(10):
        service.put(ResourceType.INSTANCE, INSTANCE, 1025, b"content " * 100, None, "20260101T000000")
        operations: list[Callable[[], object]] = [
            lambda: service.set_compression(
                ResourceType.INSTANCE, INSTANCE, 1025, CompressionType.ZLIB_WITH_SIZE, "20260101T000000"
            ),
            lambda: service.put(ResourceType.INSTANCE, INSTANCE, 1025, b"replaced", None, "20260101T000000"),
            lambda: service.set_compression(
                ResourceType.INSTANCE, INSTANCE, 1, CompressionType.ZLIB_WITH_SIZE, "20260101T000000"
            ),
        ]
        results = _race(len(operations), lambda i, ops=operations: ops[i]())  # type: ignore[misc]
        for result in results:
            assert not isinstance(result, DicomVaultError) or result.code == ErrorCode.REVISION, (attempt, result)
        assert_no_orphan_and_no_missing_file(named_server)
        assert named.post(f"{BASE}/sample/verify-md5").status_code == 200
        assert named.post(f"{BASE}/dicom/verify-md5").status_code == 200
        assert named.get(f"/instances/{INSTANCE}/file").content == DICOM
        named.post(f"{BASE}/dicom/uncompress")


def test_bodies_over_the_upload_limit_change_nothing(make_server: Callable[..., Server]) -> None:
    server = make_server(MaximumUploadSize=len(DICOM) + 10, **NAMES)
    with open_client(server) as client:
        client.post("/instances", content=DICOM)
        before = state(server)
        for url in (f"{BASE}/sample", f"/instances/{INSTANCE}/metadata/1024"):
            assert client.put(url, content=b"x" * (len(DICOM) + 11)).status_code == 413, url
        assert state(server) == before
