"""Object storage (`AwsS3Storage`) against a real S3 server (SeaweedFS, `tests/s3.py`): the storage
area contract (also run on the filesystem area), Orthanc's S3 plugin object names, the settings,
a server storing/reading/deleting over REST with and without compression, attachments, archives,
uploads through the ingest worker processes, several server processes sharing one bucket, and the
refusals (unreachable endpoint, wrong secret, missing bucket, object deleted behind our back)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import pickle
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from dicomvault.enums import FileContentType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.index.sqlite import INDEX_FILENAME, connect_index
from dicomvault.server import Server, StartupRefused
from dicomvault.storage.accessor import CompressionPolicy, StorageAccessor, decompress_zlib_with_size
from dicomvault.storage.area import FilesystemStorageArea, StorageArea, new_uuid
from dicomvault.storage.factory import FilesystemSettings, area_settings, build_area, open_storage_area
from dicomvault.storage.s3 import S3Settings, S3StorageArea, object_key
from dicomvault.upgrade.connection import SQLiteMigrationConnection
from dicomvault.upgrade.reread import reread_pass
from dicomvault.upgrade.verify import MISSING, WRONG_SIZE, verify_storage
from tests.dicomgen import Spec, make_bytes
from tests.s3 import ACCESS_KEY, BUCKET, SECRET_KEY, SeaweedS3
from tests.servers import RunningServer, free_port

DICOM = int(FileContentType.DICOM)
UNTIL_PIXEL_DATA = int(FileContentType.DICOM_UNTIL_PIXEL_DATA)


def s3_area(s3_server: SeaweedS3, **overrides: Any) -> S3StorageArea:
    area = open_storage_area(S3Settings.from_section(s3_server.section(**overrides)))
    assert isinstance(area, S3StorageArea)
    return area


@pytest.fixture(params=["filesystem", "s3"])
def area(request: pytest.FixtureRequest, tmp_path: Path) -> StorageArea:
    if request.param == "filesystem":
        return FilesystemStorageArea(tmp_path / "area")
    return s3_area(request.getfixturevalue("s3_server"))


# ---- the storage area contract, on both areas -------------------------------------------------------
def test_create_read_size_range_remove(area: StorageArea) -> None:
    uuid = new_uuid()
    data = bytes(range(256)) * 40
    assert not area.exists(uuid, content_type=DICOM)
    area.create(uuid, data, content_type=DICOM)
    assert area.exists(uuid, content_type=DICOM)
    assert area.read(uuid, content_type=DICOM) == data
    assert area.size(uuid, content_type=DICOM) == len(data)
    assert area.read_range(uuid, 10, 20, content_type=DICOM) == data[10:20]
    assert area.read_range(uuid, len(data) - 3, len(data) + 50, content_type=DICOM) == data[-3:]
    assert area.read_range(uuid, len(data) + 5, len(data) + 9, content_type=DICOM) == b""
    assert area.read_range(uuid, 7, 7, content_type=DICOM) == b""
    assert list(area.iter_uuids()) == [uuid]
    area.remove(uuid, content_type=DICOM)
    area.remove(uuid, content_type=DICOM)  # idempotent
    assert not area.exists(uuid, content_type=DICOM)
    assert list(area.iter_uuids()) == []


def test_missing_file_is_inexistent_file_everywhere(area: StorageArea) -> None:
    uuid = new_uuid()
    reads: list[Callable[[], object]] = [
        lambda: area.read(uuid, content_type=DICOM),
        lambda: area.open(uuid, content_type=DICOM),
        lambda: area.size(uuid, content_type=DICOM),
        lambda: area.read_range(uuid, 0, 4, content_type=DICOM),
        lambda: area.read_range(uuid, 4, 4, content_type=DICOM),
    ]
    for read in reads:
        with pytest.raises(DicomVaultError) as info:
            read()
        assert info.value.code is ErrorCode.INEXISTENT_FILE
        assert uuid in str(info.value.details)


def test_open_is_a_seekable_stream(area: StorageArea) -> None:
    uuid = new_uuid()
    data = hashlib.sha256(b"seed").digest() * 100_000  # 3.2 MB: several buffers
    area.create(uuid, iter([data[:1000], data[1000:]]), content_type=DICOM)
    with area.open(uuid, content_type=DICOM) as handle:
        assert handle.seek(0, io.SEEK_END) == len(data) and handle.tell() == len(data)
        handle.seek(0)
        assert handle.read(5) == data[:5]
        handle.seek(2_000_000)
        assert handle.read(10) == data[2_000_000:2_000_010]
        handle.seek(100)
        assert handle.read() == data[100:]
        assert handle.read() == b""


def test_empty_file(area: StorageArea) -> None:
    uuid = new_uuid()
    area.create(uuid, b"", content_type=DICOM)
    assert area.read(uuid, content_type=DICOM) == b""
    assert area.size(uuid, content_type=DICOM) == 0
    with area.open(uuid, content_type=DICOM) as handle:
        assert handle.read() == b""
    assert area.read_range(uuid, 0, 10, content_type=DICOM) == b""


def test_failed_generator_leaves_nothing(area: StorageArea) -> None:
    uuid = new_uuid()

    def chunks() -> Iterator[bytes]:
        yield b"partial"
        raise DicomVaultError(ErrorCode.CORRUPTED_FILE, "the source broke")

    with pytest.raises(DicomVaultError):
        area.create(uuid, chunks(), content_type=DICOM)
    assert not area.exists(uuid, content_type=DICOM)


def test_invalid_uuid_is_refused(area: StorageArea) -> None:
    for bad in ("../../etc/passwd", "x", new_uuid() + "/.."):
        with pytest.raises(DicomVaultError) as info:
            area.read(bad, content_type=DICOM)
        assert info.value.code is ErrorCode.PARAMETER_OUT_OF_RANGE


def test_accessor_compression_round_trip(area: StorageArea) -> None:
    for enabled in (False, True):
        accessor = StorageAccessor(area, CompressionPolicy(enabled=enabled))
        data = b"compressible " * 5000
        info = accessor.write(data, FileContentType.DICOM)
        assert accessor.read(info) == data
        assert b"".join(accessor.stream(info, chunk_size=4096)) == data
        assert accessor.read_range(info, 13, 26) == data[13:26]
        assert area.size(info.uuid, content_type=DICOM) == info.compressed_size
        accessor.remove(info)
        assert not area.exists(info.uuid, content_type=DICOM)


# ---- object names: Orthanc's S3 plugin ----------------------------------------------------------------
def test_flat_names_carry_orthancs_extensions(s3_server: SeaweedS3) -> None:
    area = s3_area(s3_server, RootPath="names/flat/")
    root = area.settings.root_path
    assert root == "names/flat"  # a trailing "/" is not doubled
    uuids = {ct: new_uuid() for ct in (DICOM, 2, UNTIL_PIXEL_DATA, 1024, 0)}
    for content_type, uuid in uuids.items():
        area.create(uuid, f"type {content_type}".encode(), content_type=content_type)
    assert sorted(s3_server.keys(prefix=root + "/")) == sorted(
        [
            f"{root}/{uuids[DICOM]}.dcm",
            f"{root}/{uuids[2]}.json",
            f"{root}/{uuids[UNTIL_PIXEL_DATA]}.dcm.head",
            f"{root}/{uuids[1024]}.unk",
            f"{root}/{uuids[0]}.unk",
        ]
    )
    assert sorted(area.iter_uuids()) == sorted(uuids.values())
    # A content type reads its own object only: the name is part of the address.
    assert not area.exists(uuids[DICOM], content_type=2)


def test_legacy_names_are_the_filesystem_layout(s3_server: SeaweedS3) -> None:
    area = s3_area(s3_server, RootPath="names/legacy", StorageStructure="legacy")
    uuid = new_uuid()
    area.create(uuid, b"legacy", content_type=DICOM)
    assert s3_server.keys(prefix="names/legacy/") == [f"names/legacy/{uuid[:2]}/{uuid[2:4]}/{uuid}"]
    assert list(area.iter_uuids()) == [uuid]
    assert area.read(uuid, content_type=1024) == b"legacy"  # no extension: the content type does not matter


def test_no_root_path_puts_objects_at_the_top_of_the_bucket(s3_server: SeaweedS3) -> None:
    bucket = s3_server.create_bucket("dicomvault-top")
    area = s3_area(s3_server, BucketName=bucket, RootPath="")
    uuid = new_uuid()
    area.create(uuid, b"top", content_type=DICOM)
    assert s3_server.keys(bucket) == [f"{uuid}.dcm"]
    assert object_key(area.settings, uuid, DICOM) == f"{uuid}.dcm"
    area.remove(uuid, content_type=DICOM)
    assert s3_server.keys(bucket) == []


def test_files_written_under_orthancs_names_are_read_in_place(s3_server: SeaweedS3) -> None:
    section = s3_server.section()
    client = s3_server.client()
    uuid = new_uuid()
    client.put_object(Bucket=BUCKET, Key=f"{section['RootPath']}/{uuid}.dcm", Body=b"written by Orthanc")
    area = open_storage_area(S3Settings.from_section(section))
    assert area.read(uuid, content_type=DICOM) == b"written by Orthanc"


def test_legacy_unknown_files_are_found_as_unk(s3_server: SeaweedS3) -> None:
    section = s3_server.section()
    uuid = new_uuid()
    s3_server.client().put_object(Bucket=BUCKET, Key=f"{section['RootPath']}/{uuid}.unk", Body=b"header")
    strict = open_storage_area(S3Settings.from_section(section))
    assert not strict.exists(uuid, content_type=UNTIL_PIXEL_DATA)
    tolerant = open_storage_area(S3Settings.from_section({**section, "EnableLegacyUnknownFiles": True}))
    assert tolerant.read(uuid, content_type=UNTIL_PIXEL_DATA) == b"header"
    assert tolerant.size(uuid, content_type=UNTIL_PIXEL_DATA) == 6
    tolerant.remove(uuid, content_type=UNTIL_PIXEL_DATA)
    assert s3_server.keys(prefix=section["RootPath"] + "/") == []


def test_listing_is_paginated(s3_server: SeaweedS3) -> None:
    area = s3_area(s3_server)
    uuids = sorted(new_uuid() for _ in range(11))
    for uuid in uuids:
        area.create(uuid, b"x", content_type=DICOM)
    area.create(uuids[0], b"y", content_type=2)  # two objects, one uuid
    area.list_page_size = 3
    requests: list[int] = []
    area._s3().meta.events.register("before-send.s3.ListObjectsV2", lambda request, **_: requests.append(1))
    assert list(area.iter_uuids()) == uuids
    assert len(requests) == 4


def test_ranges_are_read_with_http_range(s3_server: SeaweedS3) -> None:
    area = s3_area(s3_server)
    uuid = new_uuid()
    area.create(uuid, b"0123456789", content_type=DICOM)
    ranges: list[str | None] = []

    def record(request: Any, **_: Any) -> None:
        value = request.headers.get("Range")
        ranges.append(value.decode() if isinstance(value, bytes) else value)

    area._s3().meta.events.register("before-send.s3.GetObject", record)
    assert area.read_range(uuid, 2, 5, content_type=DICOM) == b"234"
    with area.open(uuid, content_type=DICOM) as handle:
        handle.seek(7)
        assert handle.read() == b"789"
    assert ranges == ["bytes=2-4", None, "bytes=7-"]


def test_sdk_logs_only_when_asked(s3_server: SeaweedS3, caplog: pytest.LogCaptureFixture) -> None:
    """botocore's DEBUG lines (dozens per request) appear only with EnableAwsSdkLogs, as in Orthanc."""
    for enabled in (True, False):
        area = s3_area(s3_server, EnableAwsSdkLogs=enabled)
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            area.create(new_uuid(), b"PATIENT-NAME-MARKER", content_type=DICOM)
        sdk = [r.getMessage() for r in caplog.records if r.name.startswith("botocore")]
        assert bool(sdk) is enabled


# ---- settings ------------------------------------------------------------------------------------------
def test_settings_follow_the_plugin_keys(caplog: pytest.LogCaptureFixture) -> None:
    base = {"BucketName": "b", "Region": "eu-west-1", "AccessKey": "AK", "SecretKey": "top-secret"}
    settings = S3Settings.from_section(base)
    assert (settings.endpoint, settings.virtual_addressing, settings.structure, settings.root_path) == (
        None,
        True,
        "flat",
        "",
    )
    assert (settings.connect_timeout, settings.request_timeout) == (30.0, 1200.0)
    assert "top-secret" not in repr(settings) and "top-secret" not in settings.describe()
    assert pickle.loads(pickle.dumps(settings)) == settings
    assert S3Settings.from_section({**base, "Endpoint": "s3.example.org"}).endpoint == "https://s3.example.org"
    assert S3Settings.from_section({**base, "ConnectTimeout": 4}).connect_timeout == 4.0  # the plugin's spelling
    assert S3Settings.from_section({**base, "ConnectionTimeout": 5}).connect_timeout == 5.0  # the Book's
    assert S3Settings.from_section({**base, "StorageEncryption": {"Enable": False}}).bucket == "b"
    with caplog.at_level(logging.WARNING, logger="dicomvault.storage.s3"):
        S3Settings.from_section({**base, "HybridMode": "WriteToFileSystem", "Colour": 1, "TransferPoolSize": 4})
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "HybridMode" in messages and "Colour" in messages and "TransferPoolSize" in messages
    assert "top-secret" not in messages


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"BucketName": None}, "BucketName"),
        ({"Region": None}, "Region"),
        ({"SecretKey": None}, "SecretKey"),
        ({"StorageStructure": "deep"}, "StorageStructure"),
        ({"RootPath": "/abs"}, "RootPath"),
        ({"RequestTimeout": 0}, "RequestTimeout"),
        ({"VirtualAddressing": "no"}, "VirtualAddressing"),
        ({"StorageEncryption": {"MasterKey": [1, "/k"]}}, "StorageEncryption"),
    ],
)
def test_bad_settings_are_refused(change: dict[str, Any], words: str) -> None:
    section = {"BucketName": "b", "Region": "r", "AccessKey": "AK", "SecretKey": "top-secret", **change}
    with pytest.raises(DicomVaultError) as info:
        S3Settings.from_section({k: v for k, v in section.items() if v is not None})
    assert words in str(info.value.details) and "top-secret" not in str(info.value.details)


def test_factory_picks_the_area(make_config: Callable[..., Any], tmp_path: Path, s3_server: SeaweedS3) -> None:
    plain = area_settings(make_config())
    assert plain == FilesystemSettings(str((tmp_path / "storage").resolve()), fsync=True)
    assert isinstance(build_area(plain), FilesystemStorageArea)
    section = s3_server.section()
    s3 = area_settings(make_config(AwsS3Storage=section))
    assert isinstance(s3, S3Settings) and s3.root_path == section["RootPath"]
    assert plain.describe() == f"folder {plain.root}"
    assert s3.describe() == f"S3 bucket {BUCKET!r}/{section['RootPath']} at {s3_server.endpoint}"
    assert isinstance(open_storage_area(make_config(AwsS3Storage=section)), S3StorageArea)


# ---- a server on S3 ----------------------------------------------------------------------------------
def _client(server: Server) -> TestClient:
    return TestClient(server.app(), raise_server_exceptions=False, client=("127.0.0.1", 50000))  # type: ignore[arg-type]


def _upload(client: TestClient | httpx.Client, data: bytes) -> dict[str, str]:
    answer = client.post("/instances", content=data)
    assert answer.status_code == 200, answer.text
    result: dict[str, str] = answer.json()
    return result


@pytest.mark.parametrize("compression", [False, True])
def test_server_stores_reads_and_deletes_in_the_bucket(
    make_server: Callable[..., Server], s3_server: SeaweedS3, compression: bool
) -> None:
    section = s3_server.section()
    root = section["RootPath"] + "/"
    server = make_server(AwsS3Storage=section, StorageCompression=compression)
    data = make_bytes(Spec(seed=1, rows=64, columns=64))
    with _client(server) as client:
        ids = _upload(client, data)  # written by an ingest worker process
        uuid = client.get(f"/instances/{ids['ID']}").json()["FileUuid"]
        assert s3_server.keys(prefix=root) == [f"{root}{uuid}.dcm"]
        stored = s3_server.client().get_object(Bucket=BUCKET, Key=f"{root}{uuid}.dcm")["Body"].read()
        assert (decompress_zlib_with_size(stored) if compression else stored) == data
        assert (len(stored) < len(data)) is compression
        assert client.get(f"/instances/{ids['ID']}/file").content == data
        assert client.get(f"/instances/{ids['ID']}/tags?simplify").json()["PatientID"] == "P0001"
        assert client.post(f"/instances/{ids['ID']}/attachments/dicom/verify-md5").status_code == 200
        assert client.get(f"/instances/{ids['ID']}/attachments/dicom/compressed-data").content == stored
        assert client.post("/instances", content=data).json()["Status"] == "AlreadyStored"
        assert client.delete(f"/instances/{ids['ID']}").status_code == 200
        assert s3_server.keys(prefix=root) == []


def test_attachments_and_archives(make_server: Callable[..., Server], s3_server: SeaweedS3) -> None:
    section = s3_server.section()
    root = section["RootPath"] + "/"
    server = make_server(AwsS3Storage=section)
    files = [make_bytes(Spec(seed=i, instance_number=i + 1, study_uid="1.2.3.4.5")) for i in range(3)]
    with _client(server) as client:
        ids = [_upload(client, data) for data in files]
        instance = ids[0]["ID"]
        assert client.put(f"/instances/{instance}/attachments/1500", content=b"user data").status_code == 200
        assert client.get(f"/instances/{instance}/attachments/1500/data").content == b"user data"
        user_uuid = client.get(f"/instances/{instance}/attachments/1500/info").json()["Uuid"]
        assert f"{root}{user_uuid}.unk" in s3_server.keys(prefix=root)
        answer = client.get(f"/studies/{ids[0]['ParentStudy']}/archive")
        assert answer.status_code == 200
        with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
            assert sorted(archive.read(name) for name in archive.namelist()) == sorted(files)
        assert client.delete(f"/instances/{instance}/attachments/1500").status_code == 200
        assert f"{root}{user_uuid}.unk" not in s3_server.keys(prefix=root)
        assert client.delete(f"/studies/{ids[0]['ParentStudy']}").status_code == 200
    assert s3_server.keys(prefix=root) == []


@pytest.mark.parametrize("storage", ["filesystem", "s3"])
def test_file_deleted_behind_the_servers_back(
    make_server: Callable[..., Server], s3_server: SeaweedS3, storage: str
) -> None:
    """The object store answers as the filesystem does for a file gone missing."""
    section = s3_server.section()
    server = make_server(**({"AwsS3Storage": section} if storage == "s3" else {}))
    with _client(server) as client:
        ids = _upload(client, make_bytes(Spec(seed=3)))
        uuid = client.get(f"/instances/{ids['ID']}").json()["FileUuid"]
        area = server.context.accessor.area
        if isinstance(area, FilesystemStorageArea):
            area.path(uuid).unlink()
        else:
            s3_server.client().delete_object(Bucket=BUCKET, Key=f"{section['RootPath']}/{uuid}.dcm")
        statuses = {
            url: client.get(url).status_code
            for url in (f"/instances/{ids['ID']}/file", f"/instances/{ids['ID']}/attachments/dicom/data")
        }
        answer = client.get(f"/instances/{ids['ID']}/file")
        assert answer.json()["OrthancStatus"] == int(ErrorCode.INEXISTENT_FILE)
        assert client.delete(f"/instances/{ids['ID']}").status_code == 200  # deleting still works
    assert set(statuses.values()) == {404}


def test_upgrade_tools_read_the_bucket(
    make_server: Callable[..., Server], s3_server: SeaweedS3, tmp_path: Path
) -> None:
    """The storage check and the re-read pass of `dicomvault upgrade` work on S3 as on a folder."""
    section = s3_server.section()
    root = section["RootPath"]
    server = make_server(AwsS3Storage=section, StorageCompression=True)
    with _client(server) as client:
        ids = [_upload(client, make_bytes(Spec(seed=30 + i, instance_number=i)))["ID"] for i in range(3)]
        uuids = [client.get(f"/instances/{i}").json()["FileUuid"] for i in ids]
    server.close()
    index = tmp_path / "storage" / INDEX_FILENAME
    settings = area_settings(server.config)
    accessor = StorageAccessor(build_area(settings), CompressionPolicy())
    assert verify_storage(index, accessor, check_md5=True).ok
    client = s3_server.client()
    client.delete_object(Bucket=BUCKET, Key=f"{root}/{uuids[0]}.dcm")
    client.put_object(Bucket=BUCKET, Key=f"{root}/{uuids[1]}.dcm", Body=b"short")
    report = verify_storage(index, accessor)
    assert {(p.kind, p.uuid) for p in report.problems} == {(MISSING, uuids[0]), (WRONG_SIZE, uuids[1])}
    assert BUCKET in report.storage and section["Endpoint"] in report.storage
    conn = SQLiteMigrationConnection(connect_index(index), str(index))
    try:
        reread = reread_pass(conn, settings, [], workers=1, progress=False)
    finally:
        conn.close()
    assert reread.instances == 3 and reread.reread == 1
    assert sorted((p.uuid or "", p.problem.split(":")[0]) for p in reread.problems) == sorted(
        [(uuids[0], "missing"), (uuids[1], "unreadable")]
    )


# ---- refusals -----------------------------------------------------------------------------------------
def _refusal(make_server: Callable[..., Server], section: dict[str, Any], caplog: pytest.LogCaptureFixture) -> str:
    with caplog.at_level(logging.DEBUG), pytest.raises(StartupRefused) as info:
        make_server(AwsS3Storage=section)
    text = str(info.value.details)
    assert section["BucketName"] in text and section["Endpoint"] in text, text
    for record in caplog.records:
        assert SECRET_KEY not in record.getMessage() and "wrong-secret" not in record.getMessage()
    assert SECRET_KEY not in text and "wrong-secret" not in text
    return text


def test_start_refused_when_the_endpoint_is_unreachable(
    make_server: Callable[..., Server], s3_server: SeaweedS3, caplog: pytest.LogCaptureFixture
) -> None:
    section = s3_server.section(Endpoint=f"http://127.0.0.1:{free_port()}")
    assert "cannot reach" in _refusal(make_server, section, caplog)


def test_start_refused_with_a_wrong_secret(
    make_server: Callable[..., Server], s3_server: SeaweedS3, caplog: pytest.LogCaptureFixture
) -> None:
    text = _refusal(make_server, s3_server.section(SecretKey="wrong-secret"), caplog)
    assert "refused" in text and "SecretKey" in text and ACCESS_KEY in text
    text = _refusal(make_server, s3_server.section(AccessKey="nobody", SecretKey="wrong-secret"), caplog)
    assert "refused" in text and "nobody" in text


def test_start_refused_when_the_bucket_is_missing(
    make_server: Callable[..., Server], s3_server: SeaweedS3, caplog: pytest.LogCaptureFixture
) -> None:
    text = _refusal(make_server, s3_server.section(BucketName="no-such-bucket"), caplog)
    assert "does not exist" in text
    assert "no-such-bucket" not in s3_server.client().list_buckets().get("Buckets", [])


def test_serve_exits_3_naming_the_bucket(tmp_path: Path, s3_server: SeaweedS3) -> None:
    config = tmp_path / "config.json"
    section = s3_server.section(SecretKey="wrong-secret")
    config.write_text(
        json.dumps({"StorageDirectory": str(tmp_path / "s"), "HttpPort": free_port(), "AwsS3Storage": section})
    )
    done = subprocess.run(
        [sys.executable, "-m", "dicomvault", "serve", str(config), "--trace"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 3, done.stderr
    output = done.stdout + done.stderr
    assert "refusing to start" in output and BUCKET in output and s3_server.endpoint in output
    assert "wrong-secret" not in output


def test_storage_unreachable_while_serving_is_a_clear_500(
    make_server: Callable[..., Server], s3_server: SeaweedS3, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server(AwsS3Storage=s3_server.section())
    with _client(server) as client:
        ids = _upload(client, make_bytes(Spec(seed=4)))
        area = server.context.accessor.area
        assert isinstance(area, S3StorageArea)
        # The same server, its endpoint gone: a port where nothing listens.
        area.settings = S3Settings.from_section(s3_server.section(Endpoint=f"http://127.0.0.1:{free_port()}"))
        area._client = None
        with caplog.at_level(logging.ERROR, logger="dicomvault.storage.s3"):
            answer = client.get(f"/instances/{ids['ID']}/file")
        assert answer.status_code == 500
        assert answer.json()["OrthancStatus"] == int(ErrorCode.STORAGE_AREA_PLUGIN)
        assert any("cannot reach" in r.getMessage() for r in caplog.records)


def test_bucket_gone_while_serving_fails_uploads_cleanly(
    make_server: Callable[..., Server], s3_server: SeaweedS3
) -> None:
    """A store refused by the object store (here: its bucket deleted) fails the upload with the
    reason, from the ingest worker process that wrote it, and leaves nothing in the index."""
    bucket = s3_server.create_bucket("dicomvault-gone")
    server = make_server(AwsS3Storage=s3_server.section(BucketName=bucket))
    with _client(server) as client:
        _upload(client, make_bytes(Spec(seed=5)))
        s3_server.client().delete_bucket(Bucket=bucket)
        answer = client.post("/instances", content=make_bytes(Spec(seed=6)))
        assert answer.status_code == 500
        body = answer.json()
        assert body["OrthancStatus"] == int(ErrorCode.STORAGE_AREA_PLUGIN)
        assert bucket in body["Details"] and "does not exist" in body["Details"]
        assert len(client.get("/instances").json()) == 1


# ---- several processes on one bucket -------------------------------------------------------------------
@pytest.mark.slow
def test_two_processes_share_one_bucket(
    running_server: Callable[..., RunningServer], s3_server: SeaweedS3, tmp_path: Path
) -> None:
    section = s3_server.section()
    root = section["RootPath"] + "/"
    first = running_server(AwsS3Storage=section)
    second = running_server(AwsS3Storage=section)
    files = [make_bytes(Spec(seed=10 + i, patient_id=f"P{i}")) for i in range(8)]
    results: dict[int, dict[str, str]] = {}

    def upload(i: int) -> None:
        with httpx.Client(base_url=(first if i % 2 else second).url, timeout=30) as client:
            results[i] = _upload(client, files[i])

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(len(files))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == len(files)
    assert len(s3_server.keys(prefix=root)) == len(files)
    # Another machine: the first server's index, an empty local folder, the same bucket.
    first.stop()
    third = running_server(AwsS3Storage=section, IndexDirectory=str(first.base / "storage"))
    assert not any((third.base / "storage").glob("*/*/*"))
    with httpx.Client(base_url=third.url, timeout=30) as client:
        for i in range(1, len(files), 2):
            assert client.get(f"/instances/{results[i]['ID']}/file").content == files[i]


@pytest.mark.slow
def test_two_processes_share_one_bucket_and_one_postgresql_index(
    running_server: Callable[..., RunningServer],
    s3_server: SeaweedS3,
    postgres_cluster: Any,
    postgres_database: str,
) -> None:
    section = s3_server.section()
    root = section["RootPath"] + "/"
    index = postgres_cluster.section(postgres_database)
    first = running_server(AwsS3Storage=section, PostgreSQL=index)
    second = running_server(AwsS3Storage=section, PostgreSQL=index)
    data = make_bytes(Spec(seed=21, rows=32, columns=32))
    with httpx.Client(base_url=first.url, timeout=30) as a, httpx.Client(base_url=second.url, timeout=30) as b:
        ids = _upload(a, data)
        assert b.get(f"/instances/{ids['ID']}/file").content == data  # the other sees the file
        assert len(s3_server.keys(prefix=root)) == 1
        assert b.delete(f"/instances/{ids['ID']}").status_code == 200
        assert a.get(f"/instances/{ids['ID']}/file").status_code == 404
    assert s3_server.keys(prefix=root) == []
