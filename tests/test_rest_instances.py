"""REST, in process: uploads (DICOM, zip, gzip), answers, storage on disk, deletion, and the
refusals of bad input (each leaves nothing stored)."""

from __future__ import annotations

import gzip
import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from dicomvault.enums import FileContentType
from dicomvault.server import Server
from dicomvault.storage.accessor import decompress_zlib_with_size, md5_hex
from tests.dicomgen import make_bytes

pytestmark = pytest.mark.contract

INSTANCE_1 = "889deaac-20f18edc-8e6fde36-ada71019-aab6861d"
PATIENT_1 = "40048daa-ea797422-2c5d7c48-ee36c45c-83ed8e7b"
STUDY_1 = "4e16caa3-61ada511-9ca4cef3-9a76a871-a9005480"
SERIES_1 = "fcb5d03d-194a99b6-64483e20-5a7ad92f-d6f6ac29"


def stored_files(server: Server) -> list[Path]:
    root = server.config.storage_directory
    return [p for p in root.rglob("*") if p.is_file() and p.parent != root]


def assert_nothing_stored(client: TestClient, server: Server) -> None:
    stats = client.get("/statistics").json()
    assert stats["CountInstances"] == 0 and stats["CountPatients"] == 0
    assert stored_files(server) == []


def test_upload_answer_and_already_stored(client: TestClient) -> None:
    raw = make_bytes(seed=1)
    first = client.post("/instances", content=raw)
    assert first.status_code == 200
    assert first.json() == {
        "ID": INSTANCE_1,
        "ParentPatient": PATIENT_1,
        "ParentSeries": SERIES_1,
        "ParentStudy": STUDY_1,
        "Path": f"/instances/{INSTANCE_1}",
        "Status": "Success",
    }
    again = client.post("/instances", content=raw)
    assert again.json()["Status"] == "AlreadyStored"


def test_file_is_exact_bytes_and_layout_is_orthancs(client: TestClient, server: Server) -> None:
    raw = make_bytes(seed=1)
    client.post("/instances", content=raw)
    answer = client.get(f"/instances/{INSTANCE_1}/file")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/dicom"
    assert answer.content == raw
    uuid = client.get(f"/instances/{INSTANCE_1}").json()["FileUuid"]
    path = server.config.storage_directory / uuid[:2] / uuid[2:4] / uuid
    assert path.read_bytes() == raw
    assert stored_files(server) == [path]  # the AlreadyStored duplicate was not kept


def test_compressed_storage(make_server: Callable[..., Server]) -> None:
    server = make_server(StorageCompression=True)
    raw = make_bytes(seed=1, rows=64, columns=64)
    with TestClient(server.app(), client=("127.0.0.1", 1)) as client:  # type: ignore[arg-type]
        client.post("/instances", content=raw)
        uuid = client.get(f"/instances/{INSTANCE_1}").json()["FileUuid"]
        on_disk = (server.config.storage_directory / uuid[:2] / uuid[2:4] / uuid).read_bytes()
        assert on_disk != raw and decompress_zlib_with_size(on_disk) == raw
        assert client.get(f"/instances/{INSTANCE_1}/file").content == raw
    info = server.context.index.read(
        lambda tx: tx.attachment(tx.lookup(INSTANCE_1).internal_id, FileContentType.DICOM)  # type: ignore[union-attr]
    )
    assert info is not None and info.uncompressed_md5 == md5_hex(raw) and info.compressed_md5 == md5_hex(on_disk)


def test_store_md5_can_be_off(make_server: Callable[..., Server]) -> None:
    server = make_server(StoreMD5ForAttachments=False)
    with TestClient(server.app(), client=("127.0.0.1", 1)) as client:  # type: ignore[arg-type]
        client.post("/instances", content=make_bytes(seed=1))
    info = server.context.index.read(
        lambda tx: tx.attachment(tx.lookup(INSTANCE_1).internal_id, FileContentType.DICOM)  # type: ignore[union-attr]
    )
    assert info is not None and info.uncompressed_md5 == ""


def test_overwrite_instances(make_server: Callable[..., Server]) -> None:
    server = make_server(OverwriteInstances=True)
    first = make_bytes(seed=1)
    second = make_bytes(seed=1, series_description="Changed")
    with TestClient(server.app(), client=("127.0.0.1", 1)) as client:  # type: ignore[arg-type]
        client.post("/instances", content=first)
        answer = client.post("/instances", content=second)
        assert answer.json()["Status"] == "Success"
        assert client.get(f"/instances/{INSTANCE_1}/file").content == second
        assert len(stored_files(server)) == 1  # the replaced file is gone


def test_zip_upload(client: TestClient, server: Server) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a/one.dcm", make_bytes(seed=1))
        z.writestr("two.dcm", make_bytes(seed=1, instance_number=2))
        z.writestr("readme.txt", "not dicom")
        z.writestr("bad.dcm", make_bytes(seed=3)[:300])
    answer = client.post("/instances", content=buf.getvalue())
    assert answer.status_code == 200
    statuses = [a["Status"] for a in answer.json()]
    assert statuses == ["Success", "Success"]
    assert len(stored_files(server)) == 2


def test_zip_of_junk_stores_nothing(client: TestClient, server: Server) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("junk.bin", b"garbage" * 10)
    answer = client.post("/instances", content=buf.getvalue())
    assert answer.status_code == 200 and answer.json() == []
    assert_nothing_stored(client, server)


def test_zip_bomb_is_refused(client: TestClient, server: Server) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("bomb.dcm", b"\0" * (50 * 1024 * 1024))
    answer = client.post("/instances", content=buf.getvalue())
    assert answer.status_code == 413
    assert_nothing_stored(client, server)


def test_gzip_body(client: TestClient) -> None:
    answer = client.post("/instances", content=gzip.compress(make_bytes(seed=1)), headers={"Content-Encoding": "gzip"})
    assert answer.status_code == 200 and answer.json()["ID"] == INSTANCE_1


def test_gzip_announced_but_not_gzip(client: TestClient, server: Server) -> None:
    # Orthanc 1.10.1 answers 500 after seconds here; a client error deserves a 400.
    answer = client.post("/instances", content=b"not gzip at all", headers={"Content-Encoding": "gzip"})
    assert answer.status_code == 400 and answer.json()["OrthancStatus"] == 8
    assert_nothing_stored(client, server)


def test_upload_over_maximum_size(make_server: Callable[..., Server]) -> None:
    server = make_server(MaximumUploadSize=1000)
    with TestClient(server.app(), client=("127.0.0.1", 1)) as client:  # type: ignore[arg-type]
        answer = client.post("/instances", content=make_bytes(seed=1, rows=64, columns=64))
        assert answer.status_code == 413
        assert_nothing_stored(client, server)


@pytest.mark.parametrize(
    ("body", "status", "orthanc_status"),
    [
        (b"garbage\n", 400, 15),
        (b"", 400, 15),
        (make_bytes(seed=6)[:-50], 400, 15),  # truncated
        (make_bytes(seed=3, study_uid=""), 404, 21),  # no StudyInstanceUID: Orthanc's "Inexistent tag"
        (b"%PDF-1.4 not a dicom file" * 20, 400, 15),
    ],
    ids=["garbage", "empty", "truncated", "no-study-uid", "pdf"],
)
def test_bad_uploads(client: TestClient, server: Server, body: bytes, status: int, orthanc_status: int) -> None:
    answer = client.post("/instances", content=body)
    assert answer.status_code == status
    error = answer.json()
    assert error["HttpStatus"] == status and error["OrthancStatus"] == orthanc_status
    assert error["Method"] == "POST" and error["Uri"] == "/instances"
    assert {"HttpError", "Message", "OrthancError"} <= set(error)
    assert_nothing_stored(client, server)
    # and the server keeps serving
    assert client.post("/instances", content=make_bytes(seed=1)).status_code == 200


def test_delete_answers_remaining_ancestor_and_removes_files(client: TestClient, server: Server) -> None:
    client.post("/instances", content=make_bytes(seed=1))
    client.post("/instances", content=make_bytes(seed=1, instance_number=2))
    answer = client.delete(f"/instances/{INSTANCE_1}")
    assert answer.json() == {"RemainingAncestor": {"ID": SERIES_1, "Path": f"/series/{SERIES_1}", "Type": "Series"}}
    assert len(stored_files(server)) == 1
    answer = client.delete(f"/patients/{PATIENT_1}")
    assert answer.json() == {"RemainingAncestor": None}
    assert_nothing_stored(client, server)
    assert client.delete(f"/patients/{PATIENT_1}").status_code == 404


def test_unknown_ids_and_routes(client: TestClient) -> None:
    for url in (
        "/instances/nope",
        "/patients/nope/studies",
        f"/studies/{INSTANCE_1}",
        "/nope/x",
        "/instances/x/file",
    ):
        answer = client.get(url)
        assert answer.status_code == 404, url
        assert answer.json()["OrthancStatus"] == 17
