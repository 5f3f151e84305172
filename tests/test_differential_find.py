"""`/tools/find` and `/tools/lookup` against the real Orthanc 1.10.1 (harness: `tests/differential.py`,
data: `tests/find_corpus.py`): the same queries at every level, answers compared exactly, order
included.

Deliberately not compared: `RequestedTags` (newer than 1.10.1, which ignores it; see
`tests/test_find.py`), and the bodies of 405 answers (Orthanc sends none).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.differential import SHARED_CONFIG, Pair, Processes, _make_pair
from tests.find_corpus import FIND_CORPUS, FIND_IDS

pytestmark = [pytest.mark.orthanc]

LEVELS = ("Patient", "Study", "Series", "Instance")
LIMITED_CONFIG: dict[str, Any] = {
    **SHARED_CONFIG,
    "LimitFindResults": 2,
    "LimitFindInstances": 3,
    "CaseSensitivePN": True,
}

# Queries sent at every level, case-insensitive (the default) and case-sensitive.
QUERIES: list[dict[str, str]] = [
    {},
    # patient names: case, accents, wildcards (`?` is one UTF-8 byte), lists
    {"PatientName": "*"},
    {"PatientName": "doe*"},
    {"PatientName": "DOE^JOHN"},
    {"PatientName": "Doe^John"},
    {"PatientName": "d?e^j*"},
    {"PatientName": "*john*"},
    {"PatientName": "müller*"},
    {"PatientName": "M?ller*"},
    {"PatientName": "M??ller*"},
    {"PatientName": "MÜLLER^JÖRG"},
    {"PatientName": "Muller^Jorg"},
    {"PatientName": "*LLER*"},
    {"PatientName": "ωMEGA*"},
    {"PatientName": "Ωmega^Ölaf"},
    {"PatientName": "o'brien*"},
    {"PatientName": "Doe^John\\Twin^Beta"},
    {"PatientName": "doe^john\\TWIN^BETA"},
    {"PatientName": "Doe^Johnny"},
    {"PatientName": "NoId^Patient"},
    # identifiers: compared normalised by the database (upper case, printable ASCII, trimmed)
    {"PatientID": "FIND-1"},
    {"PatientID": "find-1"},
    {"PatientID": "find-2"},
    {"PatientID": "FIND*"},
    {"PatientID": "*-?"},
    {"PatientID": "FIND-1\\FIND-3"},
    {"PatientID": " FIND-1 "},
    {"PatientID": "FIND_1"},
    {"PatientID": "FIND%1"},
    {"PatientSex": "m"},
    {"PatientSex": "F\\O"},
    {"PatientSex": "*"},
    {"PatientBirthDate": "1960-"},
    {"PatientBirthDate": "-1970"},
    {"PatientBirthDate": "-"},
    {"OtherPatientIDs": "X1\\X2"},
    {"OtherPatientIDs": "X1*"},
    {"OtherPatientIDs": "*"},
    # dates and times: ranges, lists, bounds
    {"StudyDate": "20200115"},
    {"StudyDate": "20200101-20201231"},
    {"StudyDate": "2021-"},
    {"StudyDate": "-20200229"},
    {"StudyDate": "20200229-20200115"},
    {"StudyDate": "20200115\\20230310"},
    {"StudyTime": "093000-120000"},
    {"StudyTime": "2359-"},
    {"StudyTime": "-08"},
    # descriptions: SQL's % and _ are plain characters, so are regular expression ones
    {"StudyDescription": "chest ct"},
    {"StudyDescription": "*ct*"},
    {"StudyDescription": "ÉTUDE*"},
    {"StudyDescription": "étude*"},
    {"StudyDescription": "50%*"},
    {"StudyDescription": "50?_*"},
    {"StudyDescription": "*[x]"},
    {"StudyDescription": "50%_done [x]"},
    {"StudyDescription": "Brain? MRI*"},
    {"StudyDescription": "brain?*"},
    {"StudyDescription": "*"},
    {"AccessionNumber": "a-100"},
    {"AccessionNumber": "A*"},
    {"AccessionNumber": "ACC 3"},
    {"AccessionNumber": "acc?3"},
    {"StudyInstanceUID": "1.2.826.0.1.3680043.10.1234.77.1.99"},
    {"StudyInstanceUID": "1.2.826.0.1.3680043.10.1234.77.1.0\\1.2.826.0.1.3680043.10.1234.77.1.1"},
    {"ReferringPhysicianName": "smith*"},
    {"InstitutionName": "hôpital*"},
    {"InstitutionName": "HÔPITAL*"},
    # series and instance tags (never matched above their level)
    {"Modality": "ct"},
    {"Modality": "CT\\MR"},
    {"Modality": "M?"},
    {"Modality": "*"},
    {"SeriesDescription": "axial*"},
    {"SeriesDescription": "*"},
    {"SeriesDescription": "Screenshot?"},
    {"BodyPartExamined": "CHEST"},
    {"OperatorsName": "tech*"},
    {"Manufacturer": "acme*"},
    {"SeriesDate": "1999-"},
    {"SeriesTime": "2300-"},
    {"SeriesNumber": "2\\3"},
    {"InstanceNumber": "2"},
    {"SOPInstanceUID": "1.2.826.0.1.3680043.10.1234.77.3.0.0.1"},
    {"ImageOrientationPatient": "1.0\\0.0\\0.0\\0.0\\1.0\\0.0"},
    # tags outside the main DICOM tags: read from the files (StorageAccessOnFind "Always")
    {"ContentDate": "20200101"},
    {"AcquisitionDateTime": "20200102-"},
    {"Rows": "8"},
    {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"},
    {"PatientWeight": "80"},
    {"SpecificCharacterSet": "iso_ir*"},
    # combinations
    {"PatientName": "doe*", "StudyDate": "2020-"},
    {"PatientName": "doe*", "Modality": "CT"},
    {"PatientName": "doe*", "Rows": "8"},
    {"Modality": "CT", "Rows": "8"},
    {"SeriesDescription": "Axial", "ContentDate": "20200101"},
    {"StudyDate": "2020-", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"},
    # ModalitiesInStudy: a series-level search at the study level, nothing elsewhere
    {"ModalitiesInStudy": "CT"},
    {"ModalitiesInStudy": "CT\\MR"},
    {"ModalitiesInStudy": "mr"},
    {"ModalitiesInStudy": "C*"},
    {"ModalitiesInStudy": "*"},
    {"ModalitiesInStudy": "CR\\MG"},
    {"ModalitiesInStudy": "CT", "PatientName": "doe*"},
    {"ModalitiesInStudy": "CT", "SeriesDescription": "Coronal"},
    {"ModalitiesInStudy": "CT", "InstanceNumber": "1"},
    {"ModalitiesInStudy": "CT", "Rows": "8"},
    {"ModalitiesInStudy": "CT\\"},
    # tag names
    {"0010,0010": "doe*"},
    {"0010-0020": "FIND-1"},
    {"00100020": "FIND-3"},
    {"10,20": "FIND-3"},
]

# Options combined with some of the queries above.
OPTIONS: list[dict[str, Any]] = [
    {"Expand": True},
    {"Limit": 2},
    {"Since": 1},
    {"Since": 1, "Limit": 2},
    {"Since": 2, "Limit": 1},
    {"Limit": 0},
    {"Since": 100},
    {"Expand": True, "Short": True},
    {"Expand": True, "Full": True},
    {"Expand": True, "Simplify": True, "Since": 1, "Limit": 3},
]
OPTION_QUERIES = [
    {},
    {"PatientName": "doe*"},
    {"PatientName": "müller*"},
    {"PatientID": "FIND-1"},
    {"StudyDate": "20200101-20201231"},
    {"Modality": "CT\\MR"},
    {"Rows": "8"},
    {"ModalitiesInStudy": "CT\\MR"},
    {"ModalitiesInStudy": "C*", "Rows": "8"},
]

# Bodies sent as they are: Orthanc's JSON reading, its checks and their order.
RAW_BODIES: list[str] = [
    "not json",
    "",
    "[]",
    '"x"',
    "null",
    "{}",
    '{"Level": 1, "Query": {}}',
    '{"Level": "Study"}',
    '{"Level": "Study", "Query": null}',
    '{"Level": "Study", "Query": []}',
    '{"Level": "Study", "Query": "x"}',
    '{"Level": "Bogus", "Query": {}}',
    '{"Level": "STUDIES", "Query": {}}',
    '{"Level": " Study ", "Query": {}}',
    '{"Level": "images", "Query": {}, "Limit": 2}',
    '{"Level": "", "Query": {}}',
    '{"Level": "Study\\u0000x", "Query": {}}',
    '{"Level": "Study", "Query": {"PatientName": 3}}',
    '{"Level": "Study", "Query": {"PatientName": null}}',
    '{"Level": "Study", "Query": {"Nope": "x"}}',
    '{"Level": "Study", "Query": {"Nope": ""}}',
    '{"Level": "Study", "Query": {"Nope": 1}}',
    '{"Level": "Study", "Query": {"patientname": "x"}}',
    '{"Level": "Study", "Query": {"(0010,0010)": "x"}}',
    '{"Level": "Study", "Query": {"0010,001": "x"}}',
    '{"Level": "Study", "Query": {"0x10,0x10": "DOE*"}}',
    '{"Level": "Study", "Query": {"10,10xyz": "DOE*"}}',
    '{"Level": "Study", "Query": {"RETIRED_OtherPatientIDs": "X1*"}}',
    '{"Level": "Study", "Query": {"ReferencedImageSequence": "x"}}',
    '{"Level": "Study", "Query": {"PatientName\\u0000": "DOE*"}}',
    '{"Level": "Study", "Query": {}, "Limit": -1}',
    '{"Level": "Study", "Query": {}, "Limit": "2"}',
    '{"Level": "Study", "Query": {}, "Limit": 2.0}',
    '{"Level": "Study", "Query": {}, "Limit": 3000000000}',
    '{"Level": "Study", "Query": {}, "Limit": 9223372036854775808}',
    '{"Level": "Study", "Query": {}, "Limit": -2147483649}',
    '{"Level": "Study", "Query": {}, "Limit": 2147483647}',
    '{"Level": "Study", "Query": {}, "Limit": 1e2}',
    '{"Level": "Study", "Query": {}, "Limit": true}',
    '{"Level": "Study", "Query": {}, "Limit": null}',
    '{"Level": "Study", "Query": {}, "Limit": 01}',
    '{"Level": "Study", "Query": {}, "Since": -1}',
    '{"Level": "Study", "Query": {}, "CaseSensitive": 1}',
    '{"Level": "Study", "Query": {}, "CaseSensitive": null}',
    '{"Level": "Study", "Query": {}, "Expand": 1, "Limit": 1}',
    '{"Level": "Study", "Query": {}, "Expand": 0.5, "Limit": 1}',
    '{"Level": "Study", "Query": {}, "Expand": "yes"}',
    '{"Level": "Study", "Query": {}, "Expand": null}',
    '{"Level": "Study", "Query": {}, "Expand": []}',
    '{"Level": "Series", "Query": {}, "Simplify": "x", "Expand": true}',
    '{"Level": 1, "Query": {}, "Short": "x"}',
    '{"Level": "Series", "Query": {}, "Short": "x", "Limit": -1}',
    '{"Level": "Bogus", "Query": {}, "Short": "x"}',
    '{"Level": "Series", "Query": {"Nope": "x"}, "Short": "x"}',
    '{"Level": "Series", "Query": {}, "Short": "x", "Expand": "x"}',
    '{"Level": "Bogus", "Query": {}, "Expand": "x"}',
    '{"Level": "Bogus", "Query": {}, "Limit": -1}',
    '{"Level": "Series", "Query": {"Nope": "x", "PatientName": 1}}',
    '{"Level": "Series", "Query": {"StudyDate": "*", "Nope": "x"}}',
    '{"Level": "Series", "Query": "x", "Limit": -1}',
    '{"Level": "Series", "Query": {"StudyDate": "*"}, "Short": "x"}',
    '{"Level": "Series", "Query": {"PatientName": "DOE*"}, "Full": true, "Simplify": true, "Expand": true}',
    '{"Level": "Series", "Query": {"PatientName": "DOE*"}, "Short": true, "Full": "x"}',
    '{"Level": "Series", "Query": {"PatientName": "DOE*"}, "Short": false, "Full": "x"}',
    '{"Level": "Series", "Query": {"PatientName": "DOE*"}, "Full": true, "Simplify": "x"}',
    '{"Level": "Series", "Query": {"PatientName": "DOE*"}, "Short": null}',
    '{"Level": "Series", "Query": {"PatientName": "DOE*"}} // comment',
    '{"Level": "Series", "Query": {"PatientName": "DOE*"}} garbage',
    '{"Level": "Series", /* c */ "Query": {"PatientName": "DOE*"}}',
    '\ufeff{"Level": "Series", "Query": {"PatientName": "DOE*"}}',
    '{"Level": "Series", "Query": {"PatientName": "DOE*",}, "Expand": true,}',
    "{'Level': 'Series', 'Query': {}}",
    '{"Level": "Series", "Query": {"PatientName": NaN}}',
    '{"Level": "Series", "Query": {"PatientName": "\\u0000x"}}',
    '{"Level": "Series", "Query": {"PatientName": "DOE*"}',
    '{"Level": "Series", "Query": {"PatientName": "DO\\qE*"}}',
    '{"Level": "Study", "Query": {"StudyDate": "2020*"}}',
    '{"Level": "Study", "Query": {"StudyDate": "*-2020"}}',
    '{"Level": "Study", "Query": {"StudyInstanceUID": "1.2.*"}}',
    '{"Level": "Study", "Query": {"SeriesNumber": "*"}}',
    '{"Level": "Study", "Query": {"StudyDate": "--"}}',
    '{"Level": "Study", "Query": {"PatientName": "\\\\"}}',
    '{"Level": "Study", "Query": {"PatientName": "DOE*", "PatientName": "TWIN*"}}',
    '{"Level": "Study", "Query": {}, "Limit": -}',
    '{"Level": "Study", "Query": {}, "Limit": 1.}',
]
# Bodies that are not UTF-8: Orthanc compares their bytes, and skips what is not UTF-8 (with the
# byte that revealed it) when it makes a value upper case.
RAW_BYTES: list[bytes] = [
    b'{"Level": "Study", "Query": {"StudyTime": "-\xff"}}',
    b'{"Level": "Study", "Query": {"StudyTime": "-\xff"}, "CaseSensitive": true}',
    b'{"Level": "Study", "Query": {"PatientName": "*\xc3"}}',
    b'{"Level": "Study", "Query": {"PatientName": "M\xc3*"}}',
    b'{"Level": "Study", "Query": {"PatientName": "M\xc3*"}, "CaseSensitive": true}',
    b'{"Level": "Study", "Query": {"InstitutionName": "h\xf4pital*"}}',
    b'{"Level": "Study", "Query": {"InstitutionName": "\xff\\\\x"}}',
    b'{"Level": "Study", "Query": {"\xff": "x"}}',
]

LOOKUPS = [
    "FIND-1",
    "find-1",
    " FIND-1 \n",
    "FIND_1",
    "",
    "nothing",
    "1.2.826.0.1.3680043.10.1234.77.1.99",
    "1.2.826.0.1.3680043.10.1234.77.2.0.0",
    "1.2.826.0.1.3680043.10.1234.77.3.0.0.1",
    "FIND-*",
    "FÏND-1",
    "FIND-1\\FIND-3",
]


def _label(body: dict[str, Any]) -> str:
    return json.dumps(body, ensure_ascii=False)


def _find(pair: Pair, body: dict[str, Any]) -> None:
    pair.compare("POST", "/tools/find", json.dumps(body).encode())


@pytest.fixture(scope="session")
def limited_pair(processes: Processes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    yield from _make_pair(processes, tmp_path_factory, LIMITED_CONFIG)


@pytest.mark.parametrize("query", QUERIES, ids=[_label(q) for q in QUERIES])
def test_query(checked: Pair, query: dict[str, str]) -> None:
    checked.load("find", FIND_CORPUS)
    for level in LEVELS:
        _find(checked, {"Level": level, "Query": query})
        _find(checked, {"Level": level, "Query": query, "CaseSensitive": True})
    checked.verdict()


@pytest.mark.parametrize("options", OPTIONS, ids=[_label(o) for o in OPTIONS])
def test_options(checked: Pair, options: dict[str, Any]) -> None:
    checked.load("find", FIND_CORPUS)
    for level in LEVELS:
        for query in OPTION_QUERIES:
            _find(checked, {"Level": level, "Query": query, **options})
    checked.verdict()


@pytest.mark.parametrize("body", RAW_BODIES, ids=RAW_BODIES)
def test_raw_body(checked: Pair, body: str) -> None:
    checked.load("find", FIND_CORPUS)
    checked.compare("POST", "/tools/find", body.encode())
    checked.verdict()


@pytest.mark.parametrize("body", RAW_BYTES, ids=[repr(b) for b in RAW_BYTES])
def test_raw_bytes(checked: Pair, body: bytes) -> None:
    checked.load("find", FIND_CORPUS)
    checked.compare("POST", "/tools/find", body)
    checked.verdict()


@pytest.mark.parametrize("body", LOOKUPS, ids=[repr(b) for b in LOOKUPS])
def test_lookup(checked: Pair, body: str) -> None:
    checked.load("find", FIND_CORPUS)
    checked.compare("POST", "/tools/lookup", body.encode())
    checked.verdict()


def test_methods(checked: Pair) -> None:
    for method in ("GET", "PUT", "DELETE"):
        for url in ("/tools/find", "/tools/lookup"):
            checked.compare(method, url)
    checked.verdict()


def test_after_deletions(checked: Pair) -> None:
    """Orthanc matches a patient on the patient tags of its first study, and reads the first
    instance of each resource: both change when those are deleted."""
    checked.load("find", FIND_CORPUS)
    checked.state = None  # mutated below
    for url in (f"/studies/{FIND_IDS['ST_DOE_1']}", f"/instances/{FIND_IDS['I_MUL_L1_PT_1']}"):
        checked.compare("DELETE", url)
    for query in (
        {"PatientName": "Doe^John"},
        {"PatientName": "DOE^JOHN"},
        {"PatientName": "Doe^Johnny"},
        {"ContentDate": "20200102"},
        {"Rows": "8"},
    ):
        for level in LEVELS:
            _find(checked, {"Level": level, "Query": query, "CaseSensitive": True})
    checked.verdict()


LIMITED_QUERIES = [q for q in QUERIES if not any(key.startswith(("00", "10")) for key in q)]


@pytest.mark.parametrize("query", LIMITED_QUERIES, ids=[_label(q) for q in LIMITED_QUERIES])
def test_limits_of_the_configuration(limited_pair: Pair, query: dict[str, str]) -> None:
    """`LimitFindResults` 2 and `LimitFindInstances` 3: Orthanc answers the resources of the first
    3 (4) rows of its SQL; `CaseSensitivePN` does not change REST finds."""
    limited_pair.failures.clear()
    limited_pair.load("find", FIND_CORPUS)
    for level in LEVELS:
        for options in ({}, {"Since": 1}, {"Since": 1, "Limit": 2}):
            _find(limited_pair, {"Level": level, "Query": query, **options})
    limited_pair.verdict()
