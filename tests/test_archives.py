"""Archives, in process: the zip layout rules (names, order, uniqueness), entries byte-exact against
the stored files (plain and compressed storage), ZIP64, bounded memory while streaming a large
archive, files vanishing mid-stream, and the refusal of what is not supported (transcoding).
Archive jobs are tested in `tests/test_jobs.py`.

The differential tests (`tests/test_differential_archives.py`) compare the same routes with the
real Orthanc; the names expected here are the ones Orthanc 1.10.1 was seen to make."""

from __future__ import annotations

import asyncio
import io
import logging
import random
import tracemalloc
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import zipstream.ng
from starlette.testclient import TestClient

from dicomvault.enums import ResourceType
from dicomvault.find import archive
from dicomvault.find.archive import file_name, folder_name, unique
from dicomvault.index.transactions import ReadTx
from dicomvault.ingest.delete import Deleter
from dicomvault.server import Server
from dicomvault.storage.area import FilesystemStorageArea
from tests.dicomgen import Spec, make_bytes
from tests.servers import RunningServer

pytestmark = pytest.mark.contract

PATIENT, STUDY, SERIES = ResourceType.PATIENT, ResourceType.STUDY, ResourceType.SERIES


# ---- names -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "first", "second", "expected"),
    [
        (PATIENT, "N1.x_y-z", "Doe^John^^Dr.", "N1.x_yz Doe John Dr."),
        (PATIENT, "", "", "Unknown Patient"),
        (PATIENT, "N4", "!@#$%&*()+=[]{};:'\",<>?/|~`", "N4"),
        (PATIENT, "N5", "Tab\there  many   spaces ^ x", "N5 Tabhere many spaces x"),
        (PATIENT, "Del\x7fx", "New\nLine", "Delx New Line"),
        (PATIENT, "N8", "Éric^Ärger", "N8 ric rger"),
        (PATIENT, "  N11", " ^Lead", "N11 Lead"),
        (PATIENT, "Q", "a = b=c", "Q a bc"),
        (PATIENT, "-", "", ""),  # not "Unknown": the ASCII text "-" was not empty
        (STUDY, "", "\x01", "Unknown Study"),
        (STUDY, "", "É", "Unknown Study"),
        (STUDY, "", "\n", "Unknown Study"),
        (STUDY, "", "\x01x", "x"),
        (STUDY, "A.1_2-3", "x/y\\z", "A.1_23 xyz"),
        (SERIES, "", "", "Unknown Series"),
        (SERIES, "mr", "lower", "mr lower"),
        (SERIES, "ABC\\DEF", "Multi", "ABCDEF Multi"),
    ],
)
def test_folder_names(level: ResourceType, first: str, second: str, expected: str) -> None:
    tags = {
        PATIENT: {0x00100020: first, 0x00100010: second},
        STUDY: {0x00080050: first, 0x00081030: second},
        SERIES: {0x00080060: first, 0x0008103E: second},
    }[level]
    assert folder_name(level, tags) == expected


def test_folder_names_without_tags() -> None:
    assert folder_name(PATIENT, {}) == "Unknown Patient"
    assert folder_name(STUDY, {0x00081030: "Desc only"}) == "Desc only"


def test_every_ascii_character() -> None:
    # Seen with Orthanc 1.10.1: one patient named "a<c>b" for every ASCII code c.
    for code in range(1, 128):
        ch = chr(code)
        if ch.isalnum() or ch in "._":
            expected = f"a{ch}b"
        elif ch in " \n^":
            expected = "a b"
        else:
            expected = "ab"
        assert folder_name(PATIENT, {0x00100010: f"a{ch}b"}) == expected, code


@pytest.mark.parametrize(
    ("modality", "counter", "expected"),
    [
        ("CT", 0, "CT000000.dcm"),
        ("CT", 12, "CT000012.dcm"),
        ("X", 0, "X0000000.dcm"),
        ("x", 3, "X0000003.dcm"),
        ("OPT", 0, "OP000000.dcm"),
        ("", 0, "00000000.dcm"),
        ("A B", 0, "A 000000.dcm"),
        ("C_T", 0, "C_000000.dcm"),
        ("C-T", 0, "C000000.dcm"),
        (".", 0, ".0000000.dcm"),
        ("%d", 0, "D000000.dcm"),
        ("É", 0, "000000.dcm"),  # two bytes of UTF-8, both dropped
        ("CT", 123456789, "CT123456789.dcm"),
    ],
)
def test_file_names(modality: str, counter: int, expected: str) -> None:
    assert file_name(modality, counter) == expected


def test_unique_names() -> None:
    used: set[str] = set()
    assert [unique(n, used) for n in ("A B", "A B", "a b", "A B", "", "")] == ["A B", "A B-2", "a b", "A B-3", "", "-2"]


# ---- archives over REST ----------------------------------------------------------------------------


def upload(client: TestClient, **spec: Any) -> dict[str, str]:
    answer = client.post("/instances", content=make_bytes(Spec(**spec)))
    assert answer.status_code == 200, answer.text
    result: dict[str, str] = answer.json()
    return result


def entries(content: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(content)) as z:
        assert z.testzip() is None
        return {info.filename: z.read(info) for info in z.infolist()}


@pytest.fixture
def two_patients(client: TestClient) -> dict[str, dict[str, str]]:
    out = {
        "ct3": upload(client, seed=1, patient_id="P1", patient_name="Doe^Jane", instance_number=3),
        "ct1": upload(client, seed=1, patient_id="P1", patient_name="Doe^Jane", instance_number=1),
        "mr": upload(client, seed=2, patient_id="P1", modality="MR", series_description="T1", study_uid="1.2.3.9"),
        "other": upload(client, seed=3, patient_id="P2", patient_name="Roe^Rick", study_description="Head"),
    }
    return out


def test_patient_archive_is_the_stored_files(client: TestClient, two_patients: dict[str, dict[str, str]]) -> None:
    ct3, ct1, mr = two_patients["ct3"], two_patients["ct1"], two_patients["mr"]
    answer = client.get(f"/patients/{ct3['ParentPatient']}/archive")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/zip"
    assert answer.headers["content-disposition"] == f'filename="{ct3["ParentPatient"]}.zip"'
    files = {i["ID"]: client.get(f"/instances/{i['ID']}/file").content for i in (ct3, ct1, mr)}
    got = entries(answer.content)
    # studies sorted by public id; instances in the order they were stored (not InstanceNumber)
    ct_study, mr_study = "P1 Doe Jane/ACC1 Chest", "P1 Doe Jane/ACC2 Chest"
    by_study = {
        ct3["ParentStudy"]: [
            (f"{ct_study}/CT Axial/CT000000.dcm", files[ct3["ID"]]),
            (f"{ct_study}/CT Axial/CT000001.dcm", files[ct1["ID"]]),
        ],
        mr["ParentStudy"]: [(f"{mr_study}/MR T1/MR000000.dcm", files[mr["ID"]])],
    }
    assert list(got.items()) == [entry for study in sorted(by_study) for entry in by_study[study]]


def test_levels_and_create_archive(client: TestClient, two_patients: dict[str, dict[str, str]]) -> None:
    ct3, ct1, other = two_patients["ct3"], two_patients["ct1"], two_patients["other"]
    series = entries(client.get(f"/series/{ct3['ParentSeries']}/archive").content)
    assert list(series) == [
        "P1 Doe Jane/ACC1 Chest/CT Axial/CT000000.dcm",
        "P1 Doe Jane/ACC1 Chest/CT Axial/CT000001.dcm",
    ]
    posted = client.post(f"/studies/{ct3['ParentStudy']}/archive", json={"Synchronous": True})
    assert list(entries(posted.content)) == list(series)
    # the level in the URL is not checked, as in Orthanc 1.10.1
    assert list(entries(client.get(f"/patients/{ct1['ParentSeries']}/archive").content)) == list(series)
    body = {"Resources": [ct1["ID"], other["ParentPatient"], ct1["ID"]]}
    created = client.post("/tools/create-archive", json=body)
    assert created.headers["content-disposition"] == 'filename="Archive.zip"'
    assert list(entries(created.content)) == [
        "P1 Doe Jane/ACC1 Chest/CT Axial/CT000000.dcm",
        "P1 Doe Jane/ACC1 Chest/CT Axial/CT000001.dcm",  # asked twice, written twice
        "P2 Roe Rick/ACC3 Head/CT Axial/CT000000.dcm",
    ]
    assert entries(client.post("/tools/create-archive", json={"Resources": []}).content) == {}


def test_errors_and_refusals(client: TestClient, two_patients: dict[str, dict[str, str]]) -> None:
    series = two_patients["ct3"]["ParentSeries"]
    unknown = "00000000-00000000-00000000-00000000-00000000"
    assert client.get(f"/series/{unknown}/archive").status_code == 404
    assert client.get(f"/instances/{two_patients['ct3']['ID']}/archive").status_code == 404
    assert client.post("/tools/create-archive", json={"Resources": [unknown]}).status_code == 404
    bad = client.post("/tools/create-archive", json={"Resources": "x"})
    assert (bad.status_code, bad.json()["OrthancStatus"]) == (400, 15)
    syntax = client.get(f"/series/{series}/archive?transcode=bogus")
    assert (syntax.status_code, syntax.json()["OrthancStatus"]) == (400, 3)
    for body in ({"Transcode": "1.2.840.10008.1.2.1"}, {"Asynchronous": True, "Transcode": "1.2.840.10008.1.2.1"}):
        refused = client.post(f"/series/{series}/archive", json=body)
        assert refused.status_code == 400
        assert "not supported yet" in refused.json()["Details"]
        refused = client.post("/tools/create-archive", json={"Resources": [series], **body})
        assert refused.status_code == 400
    refused = client.get(f"/series/{series}/archive?transcode=1.2.840.10008.1.2.1")
    assert refused.status_code == 400 and "transcoding" in refused.json()["Details"]


def test_compressed_storage(make_server: Callable[..., Server]) -> None:
    server = make_server(StorageCompression=True)
    with TestClient(server.app(), client=("127.0.0.1", 50000)) as client:  # type: ignore[arg-type]
        raws = [make_bytes(Spec(seed=7, instance_number=n, rows=64, columns=64)) for n in (1, 2)]
        ids = [client.post("/instances", content=raw).json() for raw in raws]
        got = entries(client.get(f"/series/{ids[0]['ParentSeries']}/archive").content)
        assert list(got.values()) == raws


def test_zip64_where_sizes_need_it(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    # Lower zipstream's 4 GiB ZIP64 threshold so that these small entries and offsets cross it.
    monkeypatch.setattr(zipstream.ng, "ZIP64_LIMIT", 1500)
    ids = [upload(client, seed=8, instance_number=n, rows=32, columns=32) for n in range(1, 4)]
    content = client.get(f"/series/{ids[0]['ParentSeries']}/archive").content
    assert b"PK\x06\x06" in content  # the ZIP64 end of central directory record
    assert list(entries(content).values()) == [client.get(f"/instances/{i['ID']}/file").content for i in ids]


# ---- streaming --------------------------------------------------------------------------------------


@dataclass
class Streamed:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    size: int = 0
    body: list[bytes] = field(default_factory=list)
    complete: bool = False


def run_asgi(app: Any, path: str, keep: bool = True, on_start: Callable[[], None] | None = None) -> Streamed:
    """One GET through the ASGI application, keeping (or only counting) the body as it arrives."""
    out = Streamed()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out.status = message["status"]
            out.headers = {k.decode(): v.decode() for k, v in message["headers"]}
            if on_start is not None:
                on_start()
        elif message["type"] == "http.response.body":
            out.size += len(message["body"])
            if keep:
                out.body.append(message["body"])
            if not message.get("more_body", False):
                out.complete = True

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8042),
        "root_path": "",
    }
    asyncio.run(app(scope, receive, send))
    return out


@pytest.mark.slow
def test_large_archive_streams_in_bounded_memory(server: Server, client: TestClient) -> None:
    # 24 instances of 2 MiB of random pixels (incompressible): a ~48 MiB archive.
    ids = [
        upload(
            client,
            seed=9 + n,
            patient_id="BIG",
            study_uid="1.2.3.77",
            series_uid="1.2.3.78",
            rows=1024,
            columns=1024,
            extra={"PixelData": random.Random(n).randbytes(1024 * 1024 * 2)},
        )
        for n in range(24)
    ]
    series = ids[0]["ParentSeries"]
    total = sum(len(client.get(f"/instances/{i['ID']}/file").content) for i in ids)
    app = server.app()
    tracemalloc.start()
    try:
        streamed = run_asgi(app, f"/series/{series}/archive", keep=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert streamed.status == 200 and streamed.complete
    assert streamed.size > total // 2
    assert peak < total // 6, f"peak {peak} bytes of Python memory for a {total}-byte archive"


def test_answer_is_an_iterator(server: Server, two_patients: dict[str, dict[str, str]]) -> None:
    from dicomvault.rest.archives import ArchiveOptions, ZipResponse, _answer

    ctx = server.context
    folders = ctx.index.read(lambda tx: archive.plan(tx, [_series_ref(tx, two_patients["ct3"]["ParentSeries"])]))
    response = asyncio.run(_answer(ctx, folders, "x.zip", "test", ArchiveOptions()))
    assert isinstance(response, ZipResponse)
    assert hasattr(response.body_iterator, "__anext__")


def _series_ref(tx: ReadTx, public_id: str) -> Any:
    ref = tx.lookup(public_id, ResourceType.SERIES)
    assert ref is not None
    return ref


def test_file_missing_while_indexed_ends_the_answer_unfinished(
    server: Server, two_patients: dict[str, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    ct1 = two_patients["ct1"]
    uuid = server.context.index.read(lambda tx: _file_uuid(tx, ct1["ID"]))
    area = server.context.accessor.area
    assert isinstance(area, FilesystemStorageArea)
    area.path(uuid).unlink()
    with caplog.at_level(logging.ERROR, logger="dicomvault.find.archive"):
        streamed = run_asgi(server.app(), f"/series/{ct1['ParentSeries']}/archive")
    assert streamed.status == 200 and not streamed.complete
    assert any(ct1["ID"] in r.getMessage() and uuid in r.getMessage() for r in caplog.records)
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(b"".join(streamed.body)))


def test_corrupted_compressed_file_ends_the_answer_unfinished(
    make_server: Callable[..., Server], caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server(StorageCompression=True)
    with TestClient(server.app(), client=("127.0.0.1", 50000)) as client:  # type: ignore[arg-type]
        ids = upload(client, seed=11, rows=64, columns=64)
    uuid = server.context.index.read(lambda tx: _file_uuid(tx, ids["ID"]))
    area = server.context.accessor.area
    assert isinstance(area, FilesystemStorageArea)
    path = area.path(uuid)
    path.write_bytes(path.read_bytes()[:-40])
    with caplog.at_level(logging.ERROR, logger="dicomvault.find.archive"):
        streamed = run_asgi(server.app(), f"/series/{ids['ParentSeries']}/archive")
    assert streamed.status == 200 and not streamed.complete
    assert any("stopped at" in r.getMessage() for r in caplog.records)


def test_instance_deleted_meanwhile_is_left_out(
    server: Server, two_patients: dict[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    ct3, ct1 = two_patients["ct3"], two_patients["ct1"]
    ct1_file = TestClient(server.app(), client=("127.0.0.1", 50000)).get(f"/instances/{ct1['ID']}/file").content  # type: ignore[arg-type]
    listed = archive.series_entries

    def list_then_delete(tx: ReadTx, folder: archive.SeriesFolder) -> list[archive.ArchiveEntry]:
        found = listed(tx, folder)
        # another client deletes ct3 right after the series was listed
        Deleter(server.context.index, server.context.accessor).delete(
            ResourceType.INSTANCE, ct3["ID"], "20200101T000000"
        )
        return found

    monkeypatch.setattr(archive, "series_entries", list_then_delete)
    streamed = run_asgi(server.app(), f"/series/{ct3['ParentSeries']}/archive")
    assert streamed.complete
    # numbered from 0 among the files actually written
    assert entries(b"".join(streamed.body)) == {"P1 Doe Jane/ACC1 Chest/CT Axial/CT000000.dcm": ct1_file}


def _file_uuid(tx: ReadTx, instance_id: str) -> str:
    ref = tx.lookup(instance_id, ResourceType.INSTANCE)
    assert ref is not None
    info = tx.attachment(ref.internal_id, 1)
    assert info is not None
    return info.uuid


def test_interrupted_archive_over_a_socket(running_server: Callable[..., RunningServer]) -> None:
    """What an HTTP client sees when a file is missing mid-stream: an incomplete transfer."""
    srv = running_server()
    with httpx.Client(base_url=srv.url) as http:
        first = http.post("/instances", content=make_bytes(Spec(seed=12, instance_number=1))).json()
        second = http.post("/instances", content=make_bytes(Spec(seed=12, instance_number=2))).json()
        uuid = http.get(f"/instances/{second['ID']}").json()["FileUuid"]
        (srv.base / "storage" / uuid[:2] / uuid[2:4] / uuid).unlink()
        with pytest.raises(httpx.RemoteProtocolError):
            http.get(f"/series/{first['ParentSeries']}/archive")
        assert http.get("/system").status_code == 200  # the server goes on
    assert second["ID"] in srv.log_path.read_text()
