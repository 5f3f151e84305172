"""Metadata over REST, in process: the automatic metadata recorded at ingest, names and numbers,
user metadata written and deleted with revisions (`ETag`, `If-Match`, `If-None-Match`,
`CheckRevisions`), the change log, and the refusals (each leaves everything as it was)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from starlette.testclient import TestClient

from dicomvault.config import config_from_mapping
from dicomvault.enums import ChangeType, RequestOrigin, ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.find.metadata import ETag, Names, parse_etag
from dicomvault.ingest.metadata import MetadataWriter
from dicomvault.ingest.store import Origin
from dicomvault.model import StoreStatus
from dicomvault.server import Server
from dicomvault.storage.accessor import md5_hex
from tests.dicomgen import make_bytes

pytestmark = pytest.mark.contract

INSTANCE = "889deaac-20f18edc-8e6fde36-ada71019-aab6861d"
PATIENT = "40048daa-ea797422-2c5d7c48-ee36c45c-83ed8e7b"
STUDY = "4e16caa3-61ada511-9ca4cef3-9a76a871-a9005480"
SERIES = "fcb5d03d-194a99b6-64483e20-5a7ad92f-d6f6ac29"
UNKNOWN = "00000000-00000000-00000000-00000000-00000000"
NAMES = {"UserMetadata": {"Sample": 1024, "Other": 2000}}
PATHS = {"patients": PATIENT, "studies": STUDY, "series": SERIES, "instances": INSTANCE}


def open_client(server: Server) -> TestClient:
    return TestClient(server.app(), raise_server_exceptions=False, client=("127.0.0.1", 50000))  # type: ignore[arg-type]


@pytest.fixture
def named_server(make_server: Callable[..., Server]) -> Server:
    return make_server(**NAMES)


@pytest.fixture
def named(named_server: Server) -> Iterator[TestClient]:
    with open_client(named_server) as client:
        assert client.post("/instances", content=make_bytes(seed=1)).status_code == 200
        yield client


@pytest.fixture
def strict_server(make_server: Callable[..., Server]) -> Server:
    return make_server(CheckRevisions=True, **NAMES)


@pytest.fixture
def strict(strict_server: Server) -> Iterator[TestClient]:
    with open_client(strict_server) as client:
        assert client.post("/instances", content=make_bytes(seed=1)).status_code == 200
        yield client


def error_code(answer: Any) -> int:
    return int(answer.json()["OrthancStatus"])


def metadata_state(server: Server) -> dict[str, Any]:
    """Everything a refused request must leave unchanged: every metadata row (with its revision)
    and the change log."""
    return {
        "metadata": server.context.index.read(lambda tx: tx.fetch_all("SELECT * FROM Metadata ORDER BY id, type")),
        "changes": change_types(server),
    }


def change_types(server: Server) -> list[int]:
    rows = server.context.index.read(lambda tx: tx.fetch_all("SELECT changeType FROM Changes ORDER BY seq"))
    return [int(row[0]) for row in rows]


# ---- automatic metadata --------------------------------------------------------------------------


def test_automatic_metadata_of_each_level(named: TestClient) -> None:
    assert named.get(f"/instances/{INSTANCE}/metadata").json() == [
        "IndexInSeries",
        "ReceptionDate",
        "RemoteAET",
        "Origin",
        "TransferSyntax",
        "SopClassUid",
        "RemoteIP",
        "HttpUsername",
        "PixelDataOffset",
    ]
    expanded = named.get(f"/instances/{INSTANCE}/metadata?expand").json()
    assert expanded["Origin"] == "RestApi"
    assert expanded["RemoteIP"] == "127.0.0.1"
    assert expanded["RemoteAET"] == "" and expanded["HttpUsername"] == ""
    assert expanded["IndexInSeries"] == "1"
    assert expanded["TransferSyntax"] == "1.2.840.10008.1.2.1"
    assert expanded["SopClassUid"] == "1.2.840.10008.5.1.4.1.1.2"
    assert int(expanded["PixelDataOffset"]) > 0
    assert "LastUpdate" not in expanded  # as Orthanc 1.10.1: never on instances
    assert named.get(f"/series/{SERIES}/metadata").json() == ["RemoteAET", "LastUpdate"]
    assert named.get(f"/studies/{STUDY}/metadata").json() == ["LastUpdate"]
    assert named.get(f"/patients/{PATIENT}/metadata").json() == ["LastUpdate"]
    # `?numeric` appeared in Orthanc 1.11: 1.10.1 ignores it.
    assert named.get(f"/series/{SERIES}/metadata?numeric").json() == ["RemoteAET", "LastUpdate"]


def test_get_by_name_and_by_number(named: TestClient) -> None:
    by_name = named.get(f"/instances/{INSTANCE}/metadata/Origin")
    assert by_name.status_code == 200
    assert by_name.content == b"RestApi"
    assert by_name.headers["content-type"] == "text/plain"
    assert by_name.headers["etag"] == f'"0-{md5_hex(b"RestApi")}"'
    for number in ("8", "08", "0008"):
        assert named.get(f"/instances/{INSTANCE}/metadata/{number}").content == b"RestApi"


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("LastUpdate", 404, None),  # a known name the instance does not carry
        ("7", 404, None),
        ("0", 404, None),
        ("-1", 404, None),
        ("-0", 404, None),
        ("65536", 404, None),
        ("2147483647", 404, None),
        ("-2147483648", 404, None),
        ("Sample", 404, None),
        ("nope", 404, ErrorCode.INEXISTENT_ITEM),
        ("origin", 404, ErrorCode.INEXISTENT_ITEM),  # names are case-sensitive
        ("+8", 404, ErrorCode.INEXISTENT_ITEM),
        ("1.5", 404, ErrorCode.INEXISTENT_ITEM),
        ("0x8", 404, ErrorCode.INEXISTENT_ITEM),
        ("-", 404, ErrorCode.INEXISTENT_ITEM),
        ("%20", 404, ErrorCode.INEXISTENT_ITEM),
        ("%208", 400, ErrorCode.BAD_PARAMETER_TYPE),
        ("8%20", 400, ErrorCode.BAD_PARAMETER_TYPE),
        ("%098", 400, ErrorCode.BAD_PARAMETER_TYPE),
        ("2147483648", 400, ErrorCode.BAD_PARAMETER_TYPE),
        ("-2147483649", 400, ErrorCode.BAD_PARAMETER_TYPE),
        ("99999999999", 400, ErrorCode.BAD_PARAMETER_TYPE),
    ],
)
def test_names_and_numbers_as_orthanc_reads_them(named: TestClient, name: str, status: int, code: int | None) -> None:
    answer = named.get(f"/instances/{INSTANCE}/metadata/{name}")
    assert answer.status_code == status
    if code is not None:
        assert error_code(answer) == code


def test_unknown_resources_and_wrong_levels(named: TestClient) -> None:
    for url in (
        f"/instances/{UNKNOWN}/metadata",
        f"/instances/{UNKNOWN}/metadata/Origin",
        f"/series/{INSTANCE}/metadata",
        f"/series/{INSTANCE}/metadata/Origin",
        f"/patients/{STUDY}/metadata?expand",
    ):
        answer = named.get(url)
        assert answer.status_code == 404 and error_code(answer) == ErrorCode.UNKNOWN_RESOURCE, url
    # The name is read before the resource is looked up, as Orthanc.
    assert error_code(named.get(f"/instances/{UNKNOWN}/metadata/nope")) == ErrorCode.INEXISTENT_ITEM


# ---- user metadata ----------------------------------------------------------------------------


def test_user_metadata_lifecycle(named: TestClient) -> None:
    url = f"/instances/{INSTANCE}/metadata/Sample"
    put = named.put(url, content=b"hello")
    assert put.status_code == 200 and put.content == b""
    assert put.headers["content-type"] == "text/plain"
    assert put.headers["etag"] == f'"0-{md5_hex(b"hello")}"'
    assert named.get(url).content == b"hello"
    assert named.get(f"/instances/{INSTANCE}/metadata/1024").content == b"hello"
    named.put(f"/instances/{INSTANCE}/metadata/1500", content=b"unnamed")
    named.put(f"/instances/{INSTANCE}/metadata/2000", content=b"other")
    names = named.get(f"/instances/{INSTANCE}/metadata").json()
    assert names[-3:] == ["Sample", "1500", "Other"]  # type order; a number without name as text
    assert named.get(f"/instances/{INSTANCE}/metadata?expand").json()["1500"] == "unnamed"
    # Replacing bumps the revision; the ETag of a PUT can be sent back as If-Match.
    second = named.put(url, content=b"hello2")
    assert second.headers["etag"] == f'"1-{md5_hex(b"hello2")}"'
    third = named.put(url, content=b"hello3", headers={"If-Match": second.headers["etag"]})
    assert third.status_code == 200 and third.headers["etag"] == f'"2-{md5_hex(b"hello3")}"'
    assert named.get(url).headers["etag"] == third.headers["etag"]
    deleted = named.delete(url, headers={"If-Match": third.headers["etag"]})
    assert deleted.status_code == 200 and deleted.content == b"" and deleted.headers["content-type"] == "text/plain"
    assert named.get(url).status_code == 404
    again = named.delete(url)
    assert again.status_code == 404 and error_code(again) == ErrorCode.UNKNOWN_RESOURCE
    # A value created again starts over at revision 0.
    assert named.put(url, content=b"new").headers["etag"] == f'"0-{md5_hex(b"new")}"'


def test_user_metadata_at_every_level_and_the_change_log(named: TestClient, named_server: Server) -> None:
    before = change_types(named_server)
    for level, public in PATHS.items():
        assert named.put(f"/{level}/{public}/metadata/Other", content=level.encode()).status_code == 200
    for level, public in PATHS.items():
        assert named.get(f"/{level}/{public}/metadata/2000").content == level.encode()
        assert named.get(f"/{level}/{public}/metadata").json()[-1] == "Other"
    assert named.delete(f"/studies/{STUDY}/metadata/Other").status_code == 200
    assert change_types(named_server)[len(before) :] == [ChangeType.UPDATED_METADATA] * 5


def test_empty_value_and_utf8(named: TestClient) -> None:
    named.put(f"/instances/{INSTANCE}/metadata/1030", content=b"")
    empty = named.get(f"/instances/{INSTANCE}/metadata/1030")
    assert empty.status_code == 200 and empty.content == b""
    assert empty.headers["etag"] == '"0-d41d8cd98f00b204e9800998ecf8427e"'
    text = "Müller — 東京".encode()
    named.put(f"/instances/{INSTANCE}/metadata/1031", content=text)
    assert named.get(f"/instances/{INSTANCE}/metadata/1031").content == text
    assert named.get(f"/instances/{INSTANCE}/metadata?expand").json()["1031"] == text.decode()


def test_if_none_match(named: TestClient) -> None:
    url = f"/instances/{INSTANCE}/metadata/Origin"
    etag = named.get(url).headers["etag"]
    for header in (etag, etag.strip('"'), f'"+{etag[1:]}', f'"00{etag[2:]}'):
        cached = named.get(url, headers={"If-None-Match": header})
        assert cached.status_code == 304 and cached.content == b"" and cached.headers["etag"] == etag, header
    for header in ('"1' + etag[2:], etag.upper(), etag[:-2] + '"', '"0-"'):
        assert named.get(url, headers={"If-None-Match": header}).status_code == 200, header
    for header in ("*", "junk", '"0"', f"W/{etag}", '""', etag[:-1]):
        answer = named.get(url, headers={"If-None-Match": header})
        assert answer.status_code == 400 and error_code(answer) == ErrorCode.PARAMETER_OUT_OF_RANGE, header


# ---- refusals: each leaves everything as it was -----------------------------------------------


@pytest.mark.parametrize(
    ("method", "name", "headers", "status", "code"),
    [
        ("PUT", "ReceptionDate", {}, 403, ErrorCode.FORBIDDEN_ACCESS),
        ("PUT", "LastUpdate", {}, 403, ErrorCode.FORBIDDEN_ACCESS),
        ("PUT", "2", {}, 403, ErrorCode.FORBIDDEN_ACCESS),
        ("PUT", "1023", {}, 403, ErrorCode.FORBIDDEN_ACCESS),
        ("PUT", "65536", {}, 403, ErrorCode.FORBIDDEN_ACCESS),
        ("PUT", "0", {}, 403, ErrorCode.FORBIDDEN_ACCESS),
        ("PUT", "-1", {}, 403, ErrorCode.FORBIDDEN_ACCESS),
        ("PUT", "2", {"If-Match": "junk"}, 403, ErrorCode.FORBIDDEN_ACCESS),  # 403 comes first
        ("DELETE", "Origin", {}, 403, ErrorCode.FORBIDDEN_ACCESS),
        ("DELETE", "1", {}, 403, ErrorCode.FORBIDDEN_ACCESS),
        ("PUT", "nope", {}, 404, ErrorCode.INEXISTENT_ITEM),
        ("DELETE", "nope", {}, 404, ErrorCode.INEXISTENT_ITEM),
        ("PUT", "%201024", {}, 400, ErrorCode.BAD_PARAMETER_TYPE),
        ("PUT", "Sample", {"If-Match": "junk"}, 400, ErrorCode.PARAMETER_OUT_OF_RANGE),
        ("PUT", "Sample", {"If-Match": '"0-wrong"'}, 409, ErrorCode.REVISION),
        ("PUT", "Sample", {"If-Match": '"1-5d41402abc4b2a76b9719d911017c592"'}, 409, ErrorCode.REVISION),
        ("DELETE", "Sample", {"If-Match": '"0-wrong"'}, 409, ErrorCode.REVISION),
        ("DELETE", "Sample", {"If-Match": "junk"}, 400, ErrorCode.PARAMETER_OUT_OF_RANGE),
        ("DELETE", "Other", {}, 404, ErrorCode.UNKNOWN_RESOURCE),
    ],
)
def test_refusals_change_nothing(
    named: TestClient, named_server: Server, method: str, name: str, headers: dict[str, str], status: int, code: int
) -> None:
    named.put(f"/instances/{INSTANCE}/metadata/Sample", content=b"hello")
    before = metadata_state(named_server)
    answer = named.request(method, f"/instances/{INSTANCE}/metadata/{name}", content=b"x", headers=headers)
    assert answer.status_code == status
    assert error_code(answer) == code
    assert metadata_state(named_server) == before


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("PUT", f"/instances/{UNKNOWN}/metadata/Sample"),
        ("DELETE", f"/instances/{UNKNOWN}/metadata/Sample"),
        # Orthanc 1.10.1 ignores the level on these two: `PUT /series/{instance}/...` writes on the
        # instance. dicomvault refuses an id of another level everywhere.
        ("PUT", f"/series/{INSTANCE}/metadata/Sample"),
        ("DELETE", f"/series/{INSTANCE}/metadata/Sample"),
    ],
)
def test_unknown_or_wrong_level_resource_changes_nothing(
    named: TestClient, named_server: Server, method: str, url: str
) -> None:
    named.put(f"/instances/{INSTANCE}/metadata/Sample", content=b"hello")
    before = metadata_state(named_server)
    answer = named.request(method, url, content=b"x")
    assert answer.status_code == 404 and error_code(answer) == ErrorCode.UNKNOWN_RESOURCE
    assert metadata_state(named_server) == before


def test_value_that_is_not_utf8_is_refused(named: TestClient, named_server: Server) -> None:
    before = metadata_state(named_server)
    answer = named.put(f"/instances/{INSTANCE}/metadata/Sample", content=b"caf\xe9")
    assert answer.status_code == 400 and error_code(answer) == ErrorCode.BAD_REQUEST
    assert metadata_state(named_server) == before


def test_wrong_methods(named: TestClient) -> None:
    assert named.post(f"/instances/{INSTANCE}/metadata/Sample").status_code == 405
    assert named.put(f"/instances/{INSTANCE}/metadata", content=b"x").status_code == 405
    assert named.delete(f"/instances/{INSTANCE}/metadata").status_code == 405


# ---- CheckRevisions --------------------------------------------------------------------------------


def test_check_revisions_requires_if_match_to_change_or_delete(strict: TestClient, strict_server: Server) -> None:
    url = f"/instances/{INSTANCE}/metadata/Sample"
    first = strict.put(url, content=b"a")
    assert first.status_code == 200  # creating needs no If-Match
    before = metadata_state(strict_server)
    refused = strict.put(url, content=b"b")
    assert refused.status_code == 409 and error_code(refused) == ErrorCode.REVISION
    for target in (url, f"/instances/{INSTANCE}/metadata/1500", f"/instances/{UNKNOWN}/metadata/Sample"):
        # Deleting without If-Match is refused before anything is looked up, as Orthanc.
        missing = strict.delete(target)
        assert missing.status_code == 409 and error_code(missing) == ErrorCode.REVISION, target
    assert metadata_state(strict_server) == before
    second = strict.put(url, content=b"b", headers={"If-Match": first.headers["etag"]})
    assert second.status_code == 200
    assert strict.delete(url, headers={"If-Match": first.headers["etag"]}).status_code == 409
    assert strict.delete(url, headers={"If-Match": second.headers["etag"]}).status_code == 200
    absent = strict.delete(url, headers={"If-Match": second.headers["etag"]})
    assert absent.status_code == 404 and error_code(absent) == ErrorCode.UNKNOWN_RESOURCE
    # System metadata stays read-only whatever the headers.
    assert strict.delete(f"/instances/{INSTANCE}/metadata/Origin").status_code == 403


def test_metadata_goes_with_its_resource(named: TestClient, named_server: Server) -> None:
    named.put(f"/patients/{PATIENT}/metadata/Sample", content=b"p")
    assert named.delete(f"/patients/{PATIENT}").status_code == 200
    assert named.get(f"/patients/{PATIENT}/metadata/Sample").status_code == 404
    assert metadata_state(named_server)["metadata"] == []


# ---- units: ETags and names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('"3-abc"', ETag(3, "abc")),
        ("3-abc", ETag(3, "abc")),
        ('"+3-abc"', ETag(3, "abc")),
        ('"007-abc-def"', ETag(7, "abc-def")),
        ('"0-"', ETag(0, "")),
        ('0-abc"', ETag(0, 'abc"')),
        ('"9223372036854775807-x"', ETag(2**63 - 1, "x")),
    ],
)
def test_parse_etag(raw: str, expected: ETag) -> None:
    assert parse_etag(raw, "If-Match") == expected


@pytest.mark.parametrize(
    "raw",
    ["", '""', '"', "abc", '"3"', '"-3-abc"', '" 3-abc"', '"3 -abc"', '"x-abc"', '"9223372036854775808-x"', "'3-abc'"],
)
def test_parse_etag_refuses(raw: str) -> None:
    with pytest.raises(DicomVaultError) as caught:
        parse_etag(raw, "If-Match")
    assert caught.value.code == ErrorCode.PARAMETER_OUT_OF_RANGE


def test_names_from_configuration(caplog: pytest.LogCaptureFixture) -> None:
    config = config_from_mapping(
        {
            "UserMetadata": {"Sample": 1024},
            "UserContentType": {"plain": 1025, "pdf": [1026, "application/pdf"], "bad": [1], "low": 5, "text": "x"},
        },
        source="<test>",
    )
    with caplog.at_level(logging.WARNING):
        names = Names.from_config(config)
    assert names.metadata_type("Sample") == 1024 and names.metadata_name(1024) == "Sample"
    assert names.metadata_name(7) == "LastUpdate" and names.metadata_name(1500) == "1500"
    assert names.content_type("plain") == 1025 and names.mime_type(1025) == "application/octet-stream"
    assert names.content_type("pdf") == 1026 and names.mime_type(1026) == "application/pdf"
    assert names.content_type("dicom") == 1 and names.mime_type(1) == "application/dicom"
    assert names.content_type_name(3) == "dicom-until-pixel-data"
    for bad in ("bad", "low", "text"):
        with pytest.raises(DicomVaultError):
            names.content_type(bad)
        assert f'UserContentType "{bad}"' in caplog.text


def test_race_of_writers_with_the_same_revision(named: TestClient, named_server: Server) -> None:
    writer = MetadataWriter(named_server.context.index)
    for attempt in range(10):
        etag = writer.put(ResourceType.INSTANCE, INSTANCE, 1024, "base", None, "20260101T000000")
        barrier = threading.Barrier(4)

        def put(i: int, expected: ETag = etag, start: threading.Barrier = barrier) -> ETag | DicomVaultError:
            start.wait()
            try:
                return writer.put(ResourceType.INSTANCE, INSTANCE, 1024, f"writer {i}", expected, "20260101T000000")
            except DicomVaultError as exc:
                return exc

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(put, range(4)))
        winners = [r for r in results if isinstance(r, ETag)]
        assert len(winners) == 1, attempt
        assert all(r.code == ErrorCode.REVISION for r in results if isinstance(r, DicomVaultError))
        assert named.get(f"/instances/{INSTANCE}/metadata/1024").headers["etag"] == winners[0].header()


def test_series_keeps_the_remote_aet_of_its_first_instance(named_server: Server) -> None:
    ingest = named_server.context.ingest
    first = ingest.store_sync(make_bytes(seed=1), Origin(RequestOrigin.DICOM_PROTOCOL, "10.0.0.1", "FIRST", "ORTHANC"))
    second = ingest.store_sync(
        make_bytes(seed=1, instance_number=2), Origin(RequestOrigin.DICOM_PROTOCOL, "10.0.0.2", "SECOND", "ANY")
    )
    assert second.status is StoreStatus.SUCCESS and second.series_id == first.series_id
    with open_client(named_server) as client:
        assert client.get(f"/series/{first.series_id}/metadata?expand").json()["RemoteAET"] == "FIRST"
        instance = client.get(f"/instances/{first.instance_id}/metadata?expand").json()
        assert (instance["RemoteAET"], instance["CalledAET"], instance["Origin"]) == (
            "FIRST",
            "ORTHANC",
            "DicomProtocol",
        )
