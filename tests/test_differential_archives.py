"""Differential tests of the archive and summary routes against the real Orthanc 1.10.1 (harness:
`tests/differential.py`).

Archives are compared by status, Content-Type, Content-Disposition and, entry by entry, the name
and the bytes of each zip entry (not the zip's own bytes: compression and timestamps may differ).
One deliberate difference is hidden: a folder whose name filters down to nothing makes Orthanc
write an entry name starting with `/` (an absolute path, which every extractor strips); dicomvault
writes the same name without that `/`, so both extract to the same tree.

The corpus (`ARCHIVE_CORPUS`, uploaded after the shared corpus of `tests.differential_cases`) holds
names exercising every rule of the zip layout, instances stored out of order, duplicated folder
names, an element after the pixel data, an instance without pixel data and a deflated file.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import warnings
import zipfile
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from tests.dicomgen import Spec, make_dataset
from tests.differential import Answer, Pair, dump, views
from tests.differential_cases import CORPUS, UNKNOWN_ID, Item, _item, corpus_ids

pytestmark = [pytest.mark.orthanc]


# ---- the corpus -------------------------------------------------------------------------------


def _uid(*parts: object) -> str:
    return "1.2.826.0.1.3680043.10.1234.88." + ".".join(str(p) for p in parts)


def _build() -> list[Item]:
    items: list[Item] = []

    def add(name: str, ds: Dataset) -> None:
        items.append(_item(name, f"SE_{name}", f"ST_{name}", f"P_{name}", ds))

    def dataset(seed: int, **kwargs: Any) -> Dataset:
        kwargs.setdefault("study_uid", _uid(1, seed))
        kwargs.setdefault("series_uid", _uid(2, seed))
        kwargs.setdefault("sop_uid", _uid(3, seed))
        return make_dataset(Spec(seed=seed, **kwargs))

    # Patient folders: `PatientID PatientName`.
    patients: list[tuple[str, str | None, str | None, str | None]] = [
        ("PUNCT_ID", "N1.x_y-z", "Doe^John^^Dr.", None),
        ("EMPTY_BOTH", "", "", None),
        ("NO_ID", None, "Anon", None),  # same patient as EMPTY_BOTH (PatientID "")
        ("PUNCT_ONLY", "N4", "!@#$%&*()+=[]{};:'\",<>?/|~`", None),
        ("SPACES", "N5", "Tab\there  many   spaces ^ x", None),
        ("NEWLINE", "N6", "New\nLine", None),
        ("LONG_240", "N7", "Verylongname" * 20, None),
        ("LONG_300", "N8", "Toolongname" * 28, None),  # over 256: no main DICOM tag
        ("LATIN1", "N9", "Éric^Ärger", "ISO_IR 100"),
        ("DUP_1", "N-10", "Same", None),
        ("DUP_2", "N10", "Same", None),
        ("CASE_1", "n11", "x", None),
        ("CASE_2", "N11", "X", None),
        ("LEADING", "  N12", " ^Lead", None),
        ("FILTERED_EMPTY_1", "-", "", None),  # an empty folder name
        ("FILTERED_EMPTY_2", "--", "()", None),  # ... twice
    ]
    for seed, (name, pid, pname, charset) in enumerate(patients, start=10):
        ds = dataset(seed, patient_id="x")
        if pid is None:
            del ds.PatientID
        else:
            ds.PatientID = pid
        if pname is not None:
            ds.PatientName = pname
        if charset:
            ds.SpecificCharacterSet = charset
        add(name, ds)
    # Study folders: `AccessionNumber StudyDescription`, in one patient.
    studies: list[tuple[str, str | None, str | None]] = [
        ("ST_EMPTY", "", ""),
        ("ST_NOACC", None, "Desc only"),
        ("ST_PUNCT", "A.1_2-3", "x/y\\z"),
        ("ST_NODESC", "ACC9", None),
        ("ST_DUP_A", "A", "B"),
        ("ST_DUP_B", "A", "B"),
        ("ST_DUP_C", "A", "B"),
        ("ST_CONTROL", None, "\x01"),
        ("ST_CONTROL_X", None, "\x01x"),
        ("ST_FILTERED", None, " -"),
    ]
    for seed, (name, accession, description) in enumerate(studies, start=100):
        ds = dataset(seed, patient_id="ZSTUDY")
        for keyword, value in (("AccessionNumber", accession), ("StudyDescription", description)):
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        add(name, ds)
    # Series folders and file prefixes: `Modality SeriesDescription`, in one study.
    series: list[tuple[str, str | None, str | None]] = [
        ("SE_EMPTYMOD", "", "Desc"),
        ("SE_NOMOD", None, None),
        ("SE_ONE", "X", "One"),
        ("SE_THREE", "OPT", "Three"),
        ("SE_SPACE", "A B", "Space"),
        ("SE_LOWER", "mr", "lower"),
        ("SE_UNDER", "C_T", "Under"),
        ("SE_DIGIT", "1", ""),
        ("SE_DOT", ".", "dot"),
        ("SE_DASH", "C-T", "Dash"),
        ("SE_LATIN1", "É", "Latin"),
        ("SE_PERCENT", "%d", "Percent"),
        ("SE_MULTI", "ABC\\DEF", "Multi"),
        ("SE_BLANK", "  ", "Blank"),
    ]
    for seed, (name, modality, description) in enumerate(series, start=200):
        ds = dataset(seed, patient_id="ZSERIES", study_uid=_uid(1, 200))
        for keyword, value in (("Modality", modality), ("SeriesDescription", description)):
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        if name == "SE_LATIN1":
            ds.SpecificCharacterSet = "ISO_IR 100"
        add(name, ds)
    # Instances stored out of InstanceNumber order (the archive keeps the storage order), whose
    # SeriesDescription differs (`/series/{id}/module` shows the last stored one).
    for k, number in enumerate((3, 1, 2)):
        ds = dataset(300, patient_id="ZORDER", sop_uid=_uid(3, 300, 9 - k), instance_number=number)
        ds.SeriesDescription = f"Var{k}"
        add(f"ORDER_{k}", ds)
    # Two series in one study, descriptions and names varying per instance (which instance
    # `/module` reads), plus shared and non-shared values.
    for k in range(3):
        ds = dataset(400 + k, patient_id="ZMOD", study_uid=_uid(1, 400), series_uid=_uid(2, 400 + k % 2))
        ds.StudyDescription = f"Study{k}"
        ds.PatientName = f"Mod^{k}"
        ds.PatientComments = "c" * 300 if k == 2 else "short"  # TooLong in one instance
        add(f"MOD_{k}", ds)
    # An element after the pixel data (Orthanc reads up to the pixel data), an instance without
    # pixel data, and a deflated file, in one series.
    ds = dataset(500, patient_id="ZREAD", series_uid=_uid(2, 500), sop_uid=_uid(3, 500, 1))
    ds.add_new(0x7FE10010, "LO", "AFTERCREATOR")
    ds.add_new(0x7FE11001, "LO", "after the pixels")
    add("READ_AFTER", ds)
    ds = dataset(500, patient_id="ZREAD", series_uid=_uid(2, 500), sop_uid=_uid(3, 500, 2))
    del ds.PixelData
    ds.add_new(0x7FE10010, "LO", "AFTERCREATOR")
    ds.add_new(0x7FE11001, "LO", "no pixels")
    add("READ_NO_PIXELS", ds)
    ds = dataset(500, patient_id="ZREAD", series_uid=_uid(2, 500), sop_uid=_uid(3, 500, 3))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    add("READ_DEFLATED", ds)
    return items


with warnings.catch_warnings():  # pydicom warns about the deliberately odd values
    warnings.simplefilter("ignore")
    ARCHIVE_CORPUS: list[Item] = _build()
ALL_ITEMS: list[Item] = [*CORPUS, *ARCHIVE_CORPUS]
IDS: dict[str, str] = corpus_ids(ALL_ITEMS)
NAMES = {public: name for name, public in IDS.items()}
EVERY_PATIENT = sorted({item.ids[0] for item in ALL_ITEMS})


# ---- the comparison of archives ---------------------------------------------------------------


def _zip_view(answer: Answer) -> dict[str, Any]:
    view: dict[str, Any] = {
        "status": answer.status,
        "content-type": answer.content_type,
        "content-disposition": answer.disposition,
    }
    try:
        archive = zipfile.ZipFile(io.BytesIO(answer.body))
        entries = []
        for info in archive.infolist():
            data = archive.read(info)
            digest = hashlib.sha256(data).hexdigest()[:16]
            # The one deliberate difference (see the module docstring): no leading "/".
            entries.append(f"{info.filename.removeprefix('/')}  {len(data)} bytes  {digest}")
        view["entries"] = entries
    except (zipfile.BadZipFile, OSError) as exc:
        view["unreadable zip"] = repr(exc)
    return view


def compare_archive(pair: Pair, method: str, url: str, body: bytes | None = None) -> None:
    """Send one archive request to both servers; record a readable report if they differ."""
    reference = pair.reference.send(method, url, body)
    candidate = pair.candidate.send(method, url, body)
    if reference.status == 200 and reference.content_type == "application/zip":
        expected, actual = _zip_view(reference), _zip_view(candidate)
    else:
        expected, actual = views(reference, candidate)
    text_expected, text_actual = dump(expected), dump(actual)
    if text_expected != text_actual:
        diff = difflib.unified_diff(
            text_expected.splitlines(), text_actual.splitlines(), f"orthanc {method} {url}", "dicomvault", lineterm=""
        )
        pair.failures.append(f"{method} {url}\n" + "\n".join(diff))


# ---- the cases ----------------------------------------------------------------------------------


def _resources(*names: str) -> str:
    return json.dumps({"Resources": [IDS[name] for name in names]})


ARCHIVE_GETS = [
    "/patients/{P_A}/archive",
    "/patients/{P_B}/archive",
    "/studies/{ST_A1}/archive",
    "/studies/{ST_C1}/archive",
    "/series/{SE_A1_CT}/archive",
    "/patients/{P_ST_EMPTY}/archive",
    "/patients/{P_SE_ONE}/archive",
    "/series/{SE_ORDER_0}/archive",
    "/studies/{ST_MOD_0}/archive",
    "/patients/{P_READ_AFTER}/archive",
    # the level in the URL is not checked
    "/patients/{SE_A1_CT}/archive",
    "/studies/{I_A1_CT_1}/archive",
    "/series/{P_B}/archive",
    # errors
    "/patients/{UNKNOWN}/archive",
    "/studies/{UNKNOWN}/archive",
    "/series/{UNKNOWN}/archive",
    "/instances/{I_A1_CT_1}/archive",
    "/series/{SE_A1_CT}/archive?transcode=bogus",
    "/series/{SE_A1_CT}/archive?transcode",
    "/series/{UNKNOWN}/archive?transcode=bogus",
]
RESOURCE_POST_BODIES = ["{}", '{"Synchronous": true}', '{"Asynchronous": false}', "null", '["x"]', "5", '{"Bogus": 1}']
RESOURCE_POST_ERRORS = [
    ("/series/{SE_A1_CT}/archive", ""),
    ("/series/{SE_A1_CT}/archive", "not json"),
    ("/series/{SE_A1_CT}/archive", '{"Synchronous": "x"}'),
    ("/series/{SE_A1_CT}/archive", '{"Transcode": "bogus"}'),
    ("/series/{SE_A1_CT}/archive", '{"Priority": 1.5}'),
    ("/series/{UNKNOWN}/archive", "{}"),
    ("/series/{UNKNOWN}/archive", '{"Synchronous": "x"}'),
    ("/patients/{UNKNOWN}/archive", "{}"),
    ("/instances/{I_A1_CT_1}/archive", "{}"),
]
CREATE_BODIES = {
    "every-patient": json.dumps({"Resources": EVERY_PATIENT}),
    "one-instance": _resources("ORDER_1"),
    "instance-then-its-series": _resources("ORDER_1", "SE_ORDER_0"),
    "series-then-its-instance": _resources("SE_ORDER_0", "ORDER_1"),
    "instances-out-of-order": _resources("ORDER_2", "ORDER_0"),
    "instance-twice": _resources("ORDER_1", "ORDER_1"),
    "instance-series-instance": _resources("ORDER_2", "SE_ORDER_0", "ORDER_2"),
    "instances-and-repeat": _resources("ORDER_2", "ORDER_1", "ORDER_2"),
    "instance-then-patient": _resources("ST_DUP_A", "P_ST_DUP_A"),
    "two-duplicate-studies": _resources("ST_ST_DUP_B", "ST_ST_DUP_A"),
    "mixed-levels": _resources("I_A1_CT_2", "SE_B1_MF", "ST_C1", "P_MOD_0"),
    "empty-list": json.dumps({"Resources": []}),
    "bare-list": json.dumps([IDS["ORDER_1"], IDS["SE_A1_CT"]]),
    "options-accepted": json.dumps(
        {"Resources": [IDS["ORDER_1"]], "Synchronous": True, "Asynchronous": True, "Priority": -5, "Bogus": 1}
    ),
    "asynchronous-false": json.dumps({"Resources": [IDS["ORDER_1"]], "Asynchronous": False}),
    # errors
    "no-body": "",
    "not-json": "not json",
    "truncated-json": "[",
    "number": "5",
    "string": '"x"',
    "no-resources": "{}",
    "resources-not-list": json.dumps({"Resources": IDS["ORDER_1"]}),
    "resources-null": '{"Resources": null}',
    "resource-not-string": '{"Resources": [1]}',
    "list-of-numbers": "[1]",
    "unknown-id": json.dumps({"Resources": ["nope"]}),
    "known-and-unknown": json.dumps({"Resources": [IDS["ORDER_1"], UNKNOWN_ID]}),
    "synchronous-not-bool": json.dumps({"Resources": [IDS["ORDER_1"]], "Synchronous": "yes"}),
    "synchronous-null": json.dumps({"Resources": [IDS["ORDER_1"]], "Synchronous": None}),
    "asynchronous-not-bool": json.dumps({"Resources": [IDS["ORDER_1"]], "Asynchronous": "x"}),
    "synchronous-wins": json.dumps({"Synchronous": True, "Asynchronous": "x"}),
    "priority-not-int": json.dumps({"Resources": [IDS["ORDER_1"]], "Priority": "x"}),
    "priority-bool": json.dumps({"Resources": [IDS["ORDER_1"]], "Priority": True}),
    "priority-before-transcode": json.dumps({"Resources": [IDS["ORDER_1"]], "Priority": "x", "Transcode": "bogus"}),
    "synchronous-before-priority": json.dumps({"Priority": "x", "Synchronous": "x"}),
    "transcode-not-string": json.dumps({"Resources": [IDS["ORDER_1"]], "Transcode": 1}),
    "transcode-unknown": json.dumps({"Resources": [IDS["ORDER_1"]], "Transcode": "bogus"}),
    "transcode-empty": json.dumps({"Resources": [IDS["ORDER_1"]], "Transcode": ""}),
    "options-before-resources": json.dumps({"Resources": "x", "Synchronous": "x"}),
    "transcode-before-lookup": json.dumps({"Resources": ["nope"], "Transcode": "bogus"}),
}

SUMMARY_TARGETS = {
    "patients": ["P_A", "P_B", "P_MOD_0", "P_READ_AFTER", "SE_A1_CT", "I_A1_MR_1", "UNKNOWN"],
    "studies": ["ST_A1", "ST_B1", "ST_MOD_0", "P_A", "I_B1_MF", "UNKNOWN"],
    "series": ["SE_A1_CT", "SE_A1_MR", "SE_B1_L1", "SE_ORDER_0", "SE_READ_AFTER", "ST_A2", "UNKNOWN"],
    "instances": [
        "I_A1_CT_1",
        "I_A1_MR_1",
        "I_B1_MF",
        "READ_AFTER",
        "READ_NO_PIXELS",
        "READ_DEFLATED",
        "P_A",
        "UNKNOWN",
    ],
}
FORMATS = ("", "?simplify", "?short")


def _summary_urls() -> list[str]:
    urls: list[str] = []
    for level, names in SUMMARY_TARGETS.items():
        for name in names:
            base = f"/{level}/{{{name}}}"
            urls.append(f"{base}/statistics")
            routes = ["module"] if level == "instances" else ["shared-tags", "module", "instances-tags"]
            if level == "studies":
                routes.append("module-patient")
            urls += [f"{base}/{route}{query}" for route in routes for query in FORMATS]
    urls += [
        "/instances/{I_A1_CT_1}/shared-tags",
        "/instances/{I_A1_CT_1}/instances-tags",
        "/series/{SE_A1_CT}/module-patient",
        "/patients/{P_A}/module-patient",
        "/series/{SE_A1_CT}/module?short&simplify",
        "/studies/{ST_A2}/shared-tags?simplify=false",
    ]
    return urls


SUMMARY_URLS = _summary_urls()


# ---- the tests --------------------------------------------------------------------------------


@pytest.fixture
def loaded(checked: Pair) -> Pair:
    checked.load("archives", ALL_ITEMS)
    return checked


@pytest.mark.parametrize("url", ARCHIVE_GETS)
def test_archive_get(loaded: Pair, url: str) -> None:
    compare_archive(loaded, "GET", url.format(**IDS))
    loaded.verdict()


@pytest.mark.parametrize("body", RESOURCE_POST_BODIES)
def test_archive_post(loaded: Pair, body: str) -> None:
    for url in ("/patients/{P_A}/archive", "/studies/{ST_SE_ONE}/archive", "/series/{SE_ORDER_0}/archive"):
        compare_archive(loaded, "POST", url.format(**IDS), body.encode())
    loaded.verdict()


@pytest.mark.parametrize(("url", "body"), RESOURCE_POST_ERRORS)
def test_archive_post_errors(loaded: Pair, url: str, body: str) -> None:
    compare_archive(loaded, "POST", url.format(**IDS), body.encode())
    loaded.verdict()


@pytest.mark.parametrize("case", list(CREATE_BODIES))
def test_create_archive(loaded: Pair, case: str) -> None:
    compare_archive(loaded, "POST", "/tools/create-archive", CREATE_BODIES[case].encode())
    loaded.verdict()


def test_create_archive_wrong_method(loaded: Pair) -> None:
    compare_archive(loaded, "GET", "/tools/create-archive")
    loaded.verdict()


@pytest.mark.parametrize("url", SUMMARY_URLS)
def test_summary(loaded: Pair, url: str) -> None:
    loaded.compare("GET", url.format(**IDS))
    loaded.verdict()
