"""`POST /tools/find` and `POST /tools/lookup` in process: answers, order, `Expand` formats,
`Since`/`Limit`, the find limits of the configuration, `StorageAccessOnFind`, `RequestedTags`
(newer Orthanc: tested here only), Orthanc's errors, its lenient JSON and tag names, and a find
over thousands of resources written straight into the index (pages, early stop, bounded memory)."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from dicomvault.dicom.parsing import ParsedInstance, public_id
from dicomvault.enums import CompressionType, FileContentType, ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.find.finder import FindQuery, FindSettings, find
from dicomvault.find.matching import Lookup, parse_constraints
from dicomvault.find.query import JsonSyntaxError, JsonUInt, parse_tag, read_json, vr_of
from dicomvault.model import FileInfo
from dicomvault.server import Server
from tests.find_corpus import FIND_CORPUS, FIND_IDS

pytestmark = pytest.mark.contract

ID = FIND_IDS


@pytest.fixture
def corpus(client: TestClient) -> TestClient:
    for item in FIND_CORPUS:
        assert client.post("/instances", content=item.data).status_code == 200
    return client


def post(client: TestClient, body: Any, url: str = "/tools/find") -> Any:
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return client.post(url, content=data)


def found(client: TestClient, body: Any) -> list[Any]:
    answer = post(client, body)
    assert answer.status_code == 200, answer.text
    result: list[Any] = answer.json()
    return result


def names(ids: list[str]) -> list[str]:
    by_id = {public: name for name, public in ID.items()}
    return [by_id[i] for i in ids]


# ---- answers ------------------------------------------------------------------------------------


def test_order_is_public_id_order_except_for_instances(corpus: TestClient) -> None:
    studies = found(corpus, {"Level": "Study", "Query": {}})
    assert studies == sorted(studies) and len(studies) == 10
    instances = found(corpus, {"Level": "Instance", "Query": {}})
    assert names(instances) == [item.name for item in FIND_CORPUS]  # creation order


def test_patient_tags_case_and_accents(corpus: TestClient) -> None:
    assert names(found(corpus, {"Level": "Study", "Query": {"PatientName": "doe*"}})) == sorted(
        ["ST_DOE_1", "ST_DOE_2", "ST_DOE_3"], key=lambda n: ID[n]
    )
    # case-insensitive by default, CaseSensitivePN or not; accents compared, not removed
    upper = {"Level": "Patient", "Query": {"PatientName": "MÜLLER^JÖRG"}}
    assert set(names(found(corpus, upper))) == {"P_MUL_L1", "P_MUL_U8"}
    assert found(corpus, {"Level": "Patient", "Query": {"PatientName": "Muller^Jorg"}}) == []
    sensitive = {**upper, "CaseSensitive": True}
    assert found(corpus, sensitive) == []
    # each study keeps its own copy of the patient tags; a patient is matched on its first study's
    assert names(found(corpus, {"Level": "Study", "Query": {"PatientName": "Doe^Johnny"}, "CaseSensitive": True})) == [
        "ST_DOE_3"
    ]
    assert found(corpus, {"Level": "Patient", "Query": {"PatientName": "Doe^Johnny"}}) == []


def test_case_sensitive_pn_configuration_is_not_consulted(make_server: Callable[..., Server]) -> None:
    server = make_server(CaseSensitivePN=True)
    with TestClient(server.app(), client=("127.0.0.1", 50000)) as client:  # type: ignore[arg-type]
        client.post("/instances", content=FIND_CORPUS[0].data)
        assert found(client, {"Level": "Patient", "Query": {"PatientName": "doe^john"}}) == [ID["P_DOE"]]


def test_lower_level_tags_do_not_match_but_modalities_in_study_does(corpus: TestClient) -> None:
    assert found(corpus, {"Level": "Study", "Query": {"Modality": "CT"}}) == []
    by_modality = names(found(corpus, {"Level": "Study", "Query": {"ModalitiesInStudy": "CT\\MR"}}))
    # answered in StudyInstanceUID order
    assert by_modality == ["ST_DOE_1", "ST_OBR", "ST_OMEGA", "ST_DOE_3"]
    # Orthanc 1.10.1 keeps Since <= index < Limit here
    assert found(corpus, {"Level": "Study", "Query": {"ModalitiesInStudy": "CT\\MR"}, "Since": 1, "Limit": 1}) == []
    two = found(corpus, {"Level": "Study", "Query": {"ModalitiesInStudy": "CT\\MR"}, "Since": 1, "Limit": 3})
    assert names(two) == ["ST_OBR", "ST_OMEGA"]
    # two patients sharing a StudyInstanceUID: one answer
    assert len(found(corpus, {"Level": "Study", "Query": {"ModalitiesInStudy": "CR\\MG"}})) == 1


def test_tags_outside_the_main_ones_are_read_from_the_files(
    corpus: TestClient, make_server: Callable[..., Server], tmp_path: Path
) -> None:
    mr = {"Level": "Series", "Query": {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"}}
    assert set(names(found(corpus, mr))) == {"SE_DOE_1_MR", "SE_OMEGA_MR"}
    other = str(tmp_path / "never")
    server = make_server(StorageAccessOnFind="Never", StorageDirectory=other, IndexDirectory=other)
    with TestClient(server.app(), client=("127.0.0.1", 50000)) as client:  # type: ignore[arg-type]
        for item in FIND_CORPUS[:4]:
            client.post("/instances", content=item.data)
        assert found(client, mr) == []


def test_since_limit_and_expand_formats(corpus: TestClient) -> None:
    every = found(corpus, {"Level": "Series", "Query": {}})
    assert found(corpus, {"Level": "Series", "Query": {}, "Since": 2, "Limit": 3}) == every[2:5]
    assert found(corpus, {"Level": "Series", "Query": {}, "Limit": 0}) == every
    query = {"Level": "Series", "Query": {"SeriesDescription": "T1 sag"}, "Expand": True}
    (human,) = found(corpus, query)
    assert human["MainDicomTags"]["Modality"] == "MR" and human["Type"] == "Series"
    (short,) = found(corpus, {**query, "Short": True})
    assert short["MainDicomTags"]["0008,0060"] == "MR"
    (full,) = found(corpus, {**query, "Full": True})
    assert full["MainDicomTags"]["0008,0060"] == {"Name": "Modality", "Type": "String", "Value": "MR"}
    (patient,) = found(corpus, {"Level": "Patient", "Query": {"PatientID": "FIND-3"}, "Expand": True, "Full": True})
    assert patient["MainDicomTags"]["0010,1000"]["Name"] == "OtherPatientIDs"


def test_find_limits_of_the_configuration(make_server: Callable[..., Server]) -> None:
    server = make_server(LimitFindResults=2, LimitFindInstances=3)
    with TestClient(server.app(), client=("127.0.0.1", 50000)) as client:  # type: ignore[arg-type]
        for item in FIND_CORPUS:
            client.post("/instances", content=item.data)
        # Orthanc answers one more than the limit, the first ones created
        studies = found(client, {"Level": "Study", "Query": {}})
        assert sorted(names(studies)) == ["ST_DOE_1", "ST_DOE_2", "ST_MUL_L1"]
        assert len(found(client, {"Level": "Instance", "Query": {}})) == 4


# ---- RequestedTags (newer Orthanc) --------------------------------------------------------------------


def test_requested_tags(corpus: TestClient) -> None:
    body = {
        "Level": "Study",
        "Query": {"StudyDate": "20200115"},
        "Expand": True,
        "RequestedTags": ["ModalitiesInStudy", "NumberOfStudyRelatedInstances", "PatientName", "Rows", "0008,0016"],
    }
    (study,) = found(corpus, body)
    assert study["RequestedTags"] == {
        "ModalitiesInStudy": "CT\\MR",
        "NumberOfStudyRelatedInstances": "3",
        "PatientName": "Doe^John",
        "Rows": "8",
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
    }
    (short,) = found(corpus, {**body, "Short": True})
    assert short["RequestedTags"]["0008,0061"] == "CT\\MR"
    (patient,) = found(
        corpus,
        {
            "Level": "Patient",
            "Query": {"PatientID": "FIND-1"},
            "Expand": True,
            "RequestedTags": ["NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries", "StudyDescription"],
        },
    )
    assert patient["RequestedTags"] == {
        "NumberOfPatientRelatedSeries": "5",
        "NumberOfPatientRelatedStudies": "3",
        "StudyDescription": "Chest CT",
    }
    (instance,) = found(
        corpus,
        {
            "Level": "Instance",
            "Query": {"SOPInstanceUID": "1.2.826.0.1.3680043.10.1234.77.3.0.0.1"},
            "Expand": True,
            "RequestedTags": ["InstanceAvailability", "StudyDate", "PatientWeight", "0009,0010"],
        },
    )
    assert instance["RequestedTags"] == {
        "InstanceAvailability": "ONLINE",
        "PatientWeight": "80",
        "StudyDate": "20200115",
    }
    # without Expand, ids only
    assert found(corpus, {**body, "Expand": False}) == [ID["ST_DOE_1"]]


@pytest.mark.parametrize("requested", ["PatientName", [1], {"a": 1}])
def test_requested_tags_must_be_a_list_of_names(corpus: TestClient, requested: Any) -> None:
    answer = post(corpus, {"Level": "Study", "Query": {}, "RequestedTags": requested})
    assert answer.status_code == 400 and answer.json()["OrthancStatus"] == ErrorCode.BAD_REQUEST


def test_requested_tags_unknown_name(corpus: TestClient) -> None:
    answer = post(corpus, {"Level": "Study", "Query": {}, "RequestedTags": ["NotATag"]})
    assert answer.status_code == 500 and answer.json()["OrthancStatus"] == ErrorCode.UNKNOWN_DICOM_TAG


# ---- errors, as Orthanc 1.10.1 -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code", "details"),
    [
        ("not json", 400, ErrorCode.BAD_REQUEST, "The body must contain a JSON object"),
        ("[]", 400, ErrorCode.BAD_REQUEST, "The body must contain a JSON object"),
        ('{"Query": {}}', 400, ErrorCode.BAD_REQUEST, 'Field "Level" is missing, or should be a string'),
        ('{"Level": "Study"}', 400, ErrorCode.BAD_REQUEST, 'Field "Query" is missing, or should be a JSON object'),
        ('{"Level": "Study", "Query": {}, "CaseSensitive": 1}', 400, ErrorCode.BAD_REQUEST, None),
        (
            '{"Level": "Study", "Query": {}, "Limit": 1.0}',
            400,
            ErrorCode.BAD_REQUEST,
            'Field "Limit" should be an integer',
        ),
        ('{"Level": "Study", "Query": {}, "Limit": -1}', 400, ErrorCode.PARAMETER_OUT_OF_RANGE, None),
        ('{"Level": "Study", "Query": {}, "Since": 2147483648}', 500, ErrorCode.INTERNAL_ERROR, None),
        ('{"Level": "Study", "Query": {}, "Limit": 9223372036854775808}', 400, ErrorCode.BAD_REQUEST, None),
        ('{"Level": "Study", "Query": {}, "Expand": "yes"}', 500, ErrorCode.INTERNAL_ERROR, None),
        ('{"Level": "Bogus", "Query": {}}', 400, ErrorCode.PARAMETER_OUT_OF_RANGE, None),
        ('{"Level": "Study", "Query": []}', 500, ErrorCode.INTERNAL_ERROR, None),
        ('{"Level": "Study", "Query": {"PatientName": 1}}', 400, ErrorCode.BAD_REQUEST, None),
        ('{"Level": "Study", "Query": {"Nope": "x"}}', 500, ErrorCode.UNKNOWN_DICOM_TAG, None),
        ('{"Level": "Study", "Query": {"StudyDate": "2020*"}}', 400, ErrorCode.PARAMETER_OUT_OF_RANGE, None),
        ('{"Level": "Study", "Query": {}, "Full": 1}', 400, ErrorCode.BAD_FILE_FORMAT, None),
    ],
)
def test_errors(client: TestClient, body: str, status: int, code: ErrorCode, details: str | None) -> None:
    answer = post(client, body)
    assert answer.status_code == status
    error = answer.json()
    assert error["OrthancStatus"] == code and error["Uri"] == "/tools/find" and error["Method"] == "POST"
    if details is not None:
        assert error["Details"] == details


def test_lenient_json_and_levels(corpus: TestClient) -> None:
    body = '\ufeff{"Level": "studies", /* comment */ "Query": {"PatientID": "FIND-3",},} // trailing\n garbage'
    assert names(found(corpus, body)) == ["ST_MUL_U8"]
    assert found(corpus, '{"Level": "IMAGE", "Query": null, "Limit": 1}') == [ID[FIND_CORPUS[0].name]]


# ---- /tools/lookup -------------------------------------------------------------------------------------


def test_lookup(corpus: TestClient) -> None:
    answer = post(corpus, " find-1\n", url="/tools/lookup")
    assert answer.json() == [{"ID": ID["P_DOE"], "Path": f"/patients/{ID['P_DOE']}", "Type": "Patient"}]
    twins = post(corpus, "1.2.826.0.1.3680043.10.1234.77.1.99", url="/tools/lookup").json()
    assert [t["ID"] for t in twins] == [ID["ST_TWIN_A"], ID["ST_TWIN_B"]]
    instance = FIND_CORPUS[0]
    sop = "1.2.826.0.1.3680043.10.1234.77.3.0.0.1"
    assert post(corpus, sop, url="/tools/lookup").json()[0]["Path"] == f"/instances/{ID[instance.name]}"
    assert post(corpus, "nothing", url="/tools/lookup").json() == []
    refused = post(corpus, "FIND-*", url="/tools/lookup")
    assert refused.status_code == 400 and refused.json()["OrthancStatus"] == ErrorCode.PARAMETER_OUT_OF_RANGE


# ---- the JSON reader and tag names -----------------------------------------------------------------


def test_read_json_types_numbers_as_jsoncpp() -> None:
    assert read_json(b"[1, -0, 9223372036854775807, -9223372036854775808]") == [1, 0, 2**63 - 1, -(2**63)]
    big = read_json(b"9223372036854775808")
    assert isinstance(big, JsonUInt) and big == 2**63
    assert isinstance(read_json(b"18446744073709551616"), float)
    assert isinstance(read_json(b"1.0"), float) and read_json(b"01") == 1
    assert read_json(b'{"a": "\\u00e9\\ud83d\\ude00", "a": 2}') == {"a": 2}
    assert read_json(b'["\\u00e9\\ud83d\\ude00"]') == ["é😀"]
    for bad in (b"", b"{'a': 1}", b"[1,", b"NaN", b'"\\x"', b"/* open", b"{1: 2}"):
        with pytest.raises(JsonSyntaxError):
            read_json(bad)


def test_read_json_depth_limit() -> None:
    with pytest.raises(DicomVaultError) as caught:
        read_json(b"[" * 1200 + b"]" * 1200)
    assert caught.value.code is ErrorCode.INTERNAL_ERROR


@pytest.mark.parametrize(
    ("name", "tag"),
    [
        ("PatientName", 0x00100010),
        ("0010,0010", 0x00100010),
        ("0010-0010", 0x00100010),
        ("00100010", 0x00100010),
        ("10,10", 0x00100010),
        (" 0x10, 0x20", 0x00100020),
        ("0010,001", 0x00100001),
        ("12345,1garbage", 0x23450001),
        ("RETIRED_OtherPatientIDs", 0x00101000),
    ],
)
def test_parse_tag(name: str, tag: int) -> None:
    assert parse_tag(name) == tag


@pytest.mark.parametrize("name", ["patientname", "(0010,0010)", "0010 0010", "", "0x00100010"])
def test_parse_tag_unknown(name: str) -> None:
    with pytest.raises(DicomVaultError) as caught:
        parse_tag(name)
    assert caught.value.code is ErrorCode.UNKNOWN_DICOM_TAG


# ---- many resources, written straight into the index ---------------------------------------------


def _parsed(n: int) -> ParsedInstance:
    patient, study, series, sop = f"BIG-{n % 500}", f"1.2.3.{n}", f"1.2.3.{n}.1", f"1.2.3.{n}.1.1"
    return ParsedInstance(
        patient_key=patient,
        study_uid=study,
        series_uid=series,
        sop_uid=sop,
        patient_id=public_id(patient),
        study_id=public_id(patient, study),
        series_id=public_id(patient, study, series),
        instance_id=public_id(patient, study, series, sop),
        main_tags={
            ResourceType.PATIENT: ((0x00100020, patient), (0x00100010, f"Big^Patient{n % 500}")),
            ResourceType.STUDY: ((0x0020000D, study), (0x00080020, f"2020{n % 12 + 1:02d}01")),
            ResourceType.SERIES: ((0x0020000E, series), (0x00080060, "CT" if n % 3 else "MR")),
            ResourceType.INSTANCE: ((0x00080018, sop), (0x00200013, str(n))),
        },
        transfer_syntax="1.2.840.10008.1.2.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        pixel_data_offset=None,
    )


@pytest.fixture
def big(server: Server) -> Iterator[Server]:
    count = 3000

    def write(tx: Any) -> None:
        for n in range(count):
            info = FileInfo(f"uuid-{n}", FileContentType.DICOM, 1, "m", CompressionType.NONE, 1, "m")
            tx.create_instance(_parsed(n), info, {}, "20260101T000000", False, None)

    server.context.index.write(write)
    yield server


def _run(server: Server, query: FindQuery, settings: FindSettings | None = None) -> list[str]:
    refs = server.context.index.read(
        lambda tx: find(tx, query, settings or FindSettings(), server.context.accessor.read)
    )
    return [ref.public_id for ref in refs]


def _lookup(**query: str) -> Lookup:
    constraints = []
    for name, value in query.items():
        tag = parse_tag(name)
        constraints += parse_constraints(tag, vr_of(tag), value, False)
    return Lookup.of(constraints)


def test_many_resources(big: Server) -> None:
    everything = _run(big, FindQuery(ResourceType.STUDY, Lookup()))
    assert len(everything) == 3000 and everything == sorted(everything)  # several pages
    instances = _run(big, FindQuery(ResourceType.INSTANCE, _lookup(PatientName="big*")))
    assert len(instances) == 3000
    march = _run(big, FindQuery(ResourceType.STUDY, _lookup(StudyDate="20200301-20200331")))
    assert len(march) == 250
    mr = _run(big, FindQuery(ResourceType.STUDY, _lookup(ModalitiesInStudy="MR")))
    assert len(mr) == 1000
    page = _run(big, FindQuery(ResourceType.STUDY, Lookup(), since=2990, limit=20))
    assert page == everything[2990:]
    limited = _run(big, FindQuery(ResourceType.SERIES, Lookup()), FindSettings(limit_find_results=100))
    assert len(limited) == 101


def test_a_limited_find_stays_small(big: Server) -> None:
    """With `Limit`, a find over thousands of candidates reads a page or two, not all of them."""
    query = FindQuery(ResourceType.INSTANCE, _lookup(PatientName="big*"), limit=10)
    _run(big, query)  # warm the caches
    tracemalloc.start()
    try:
        assert len(_run(big, query)) == 10
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024
