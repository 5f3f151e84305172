"""Data and requests of the differential tests against the real Orthanc: the DICOM files uploaded
(generated here with pydicom, on top of `tests.dicomgen`), their public ids, and the tables of
requests sent to both servers.

Public ids are SHA-1 hashes of the DICOM identifiers, so every URL is known before any upload and
each request can be its own test id; URLs are written with `{NAME}` placeholders naming resources
of the corpus (`{P_A}`, `{ST_A1}`, `{SE_A1_CT}`, `{I_A1_CT_1}`...).
"""

from __future__ import annotations

import enum
import gzip
import hashlib
import io
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import MRImageStorage, SecondaryCaptureImageStorage

from tests.dicomgen import Spec, make_dataset

LEVELS = ("patients", "studies", "series", "instances")
Change = Callable[[Dataset], Dataset]
UNKNOWN_ID = "00000000-00000000-00000000-00000000-00000000"


def public_id(*identifiers: str) -> str:
    """Orthanc's public id: SHA-1 of the identifiers joined by `|`, as five groups of 8 hex digits."""
    digest = hashlib.sha1("|".join(identifiers).encode()).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


def to_bytes(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@dataclass(frozen=True)
class Item:
    """One generated instance, with the names of its resources for URL placeholders."""

    name: str  # instance placeholder, e.g. "I_A1_CT_1"
    series: str  # "SE_A1_CT"
    study: str  # "ST_A1"
    patient: str  # "P_A"
    data: bytes
    ids: tuple[str, str, str, str]  # public ids of the patient, study, series, instance


def _item(name: str, series: str, study: str, patient: str, ds: Dataset) -> Item:
    pid = str(getattr(ds, "PatientID", ""))
    st, se, sop = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    ids = (public_id(pid), public_id(pid, st), public_id(pid, st, se), public_id(pid, st, se, sop))
    return Item(name, series, study, patient, to_bytes(ds), ids)


def _uid(*parts: object) -> str:
    return "1.2.826.0.1.3680043.10.1234.99." + ".".join(str(p) for p in parts)


def _with_sequence(ds: Dataset) -> Dataset:
    """An MR instance carrying a two-item sequence (one nested), a private block and a long text."""
    refs = []
    for n in (1, 2):
        ref = Dataset()
        ref.ReferencedSOPClassUID = MRImageStorage
        ref.ReferencedSOPInstanceUID = _uid(7, n)
        if n == 2:
            code = Dataset()
            code.CodeValue = "T-04000"
            code.CodingSchemeDesignator = "SRT"
            code.CodeMeaning = "Breast"
            ref.PurposeOfReferenceCodeSequence = Sequence([code])
        refs.append(ref)
    ds.ReferencedImageSequence = Sequence(refs)
    ds.add_new(0x00091010, "LO", "DVTEST")
    ds.add_new(0x00091001, "LO", "private value")
    ds.add_new(0x00091002, "US", [1, 2, 3])
    # Over 256 characters: Orthanc leaves it out of the instance's main DICOM tags, and `?simplify`
    # and `?short` render it as null.
    ds.ImageComments = "long text " * 40
    ds.WindowCenter = ["40", "400"]
    ds.WindowWidth = ["350", "1500"]
    return ds


def _multi_frame(ds: Dataset, frames: int) -> Dataset:
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.NumberOfFrames = frames
    count = ds.Rows * ds.Columns * frames
    ds.PixelData = struct.pack(f"<{count}h", *((i * 7) % 3000 for i in range(count)))
    return ds


def _latin1(ds: Dataset) -> Dataset:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jörg"
    ds.StudyDescription = "Étude thoracique"
    ds.SeriesDescription = "Coupes axiales à plat"
    ds.InstitutionName = "Hôpital Saint-Éloi"
    return ds


def _build_corpus() -> list[Item]:
    items: list[Item] = []

    def add(name: str, series: str, study: str, patient: str, spec: Spec, *changes: Change) -> None:
        ds = make_dataset(spec)
        for change in changes:
            ds = change(ds)
        items.append(_item(name, series, study, patient, ds))

    # Patient A: two studies whose instances carry different PatientName (each study keeps its own
    # copy of the patient tags), CT and MR series, several instance numbers.
    st_a1, st_a2 = _uid(1, 1), _uid(1, 2)
    for n in (1, 2, 3):
        spec = Spec(
            seed=101,
            patient_id="DIFF-A",
            patient_name="Alpha^Ann",
            study_uid=st_a1,
            series_uid=_uid(2, 11),
            instance_number=n,
            study_description="Chest CT",
        )
        add(f"I_A1_CT_{n}", "SE_A1_CT", "ST_A1", "P_A", spec)
    spec = Spec(
        seed=102,
        patient_id="DIFF-A",
        patient_name="Alpha^Ann",
        study_uid=st_a1,
        series_uid=_uid(2, 12),
        modality="MR",
        series_description="T1",
        extra={"SOPClassUID": MRImageStorage, "SeriesNumber": 2},
    )
    add("I_A1_MR_1", "SE_A1_MR", "ST_A1", "P_A", spec, _with_sequence)
    for n in (1, 2):
        spec = Spec(
            seed=103,
            patient_id="DIFF-A",
            patient_name="Alpha^Anne",
            study_uid=st_a2,
            series_uid=_uid(2, 21),
            instance_number=n,
            study_date="20210304",
            study_description="Follow-up",
        )
        add(f"I_A2_CT_{n}", "SE_A2_CT", "ST_A2", "P_A", spec)

    # Patient B: a Latin-1 instance and a multi-frame instance.
    st_b1 = _uid(1, 3)
    spec = Spec(seed=201, patient_id="DIFF-B", study_uid=st_b1, series_uid=_uid(2, 31))
    add("I_B1_L1", "SE_B1_L1", "ST_B1", "P_B", spec, _latin1)
    spec = Spec(
        seed=202,
        patient_id="DIFF-B",
        study_uid=st_b1,
        series_uid=_uid(2, 32),
        modality="OT",
        rows=4,
        columns=6,
        extra={"SeriesNumber": 3},
    )
    add("I_B1_MF", "SE_B1_MF", "ST_B1", "P_B", spec, _latin1, lambda ds: _multi_frame(ds, 3))

    # Patient C: series whose ExpectedNumberOfInstances is computable, for every series Status.
    st_c1 = _uid(1, 4)
    status_series: list[tuple[str, dict[str, object], list[int | None]]] = [
        ("SE_C_COMPLETE", {"CardiacNumberOfImages": 3}, [1, 2, 3]),
        ("SE_C_MISSING", {"CardiacNumberOfImages": 3}, [1, 3]),
        ("SE_C_ACQ", {"ImagesInAcquisition": 2}, [1, 2]),
        ("SE_C_ACQ_TEMP", {"ImagesInAcquisition": 2, "NumberOfTemporalPositions": 2}, [1, 2, 3]),
        ("SE_C_DUPLICATE", {"CardiacNumberOfImages": 2}, [1, 1]),
        ("SE_C_RANGE", {"CardiacNumberOfImages": 2}, [1, 5]),
        ("SE_C_NO_NUMBER", {"CardiacNumberOfImages": 2}, [1, None]),
        ("SE_C_UNKNOWN", {}, [1, 2]),
    ]
    for s, (series, extra, numbers) in enumerate(status_series):
        for k, number in enumerate(numbers):
            spec = Spec(
                seed=300 + s,
                patient_id="DIFF-C",
                patient_name="Gamma^Carl",
                study_uid=st_c1,
                series_uid=_uid(2, 40 + s),
                sop_uid=_uid(3, 40 + s, k),
                instance_number=number or 1,
                modality="MR",
                extra={**extra, "SeriesNumber": 10 + s},
            )
            ds = make_dataset(spec)
            if number is None:
                del ds.InstanceNumber
            items.append(_item(f"I_{series[3:]}_{k}", series, "ST_C1", "P_C", ds))
    return items


CORPUS: list[Item] = _build_corpus()


def corpus_ids(items: list[Item]) -> dict[str, str]:
    """Placeholder name -> public id, for every resource of `items`."""
    ids: dict[str, str] = {}
    for item in items:
        for name, public in zip((item.patient, item.study, item.series, item.name), item.ids, strict=True):
            ids[name] = public
    ids["UNKNOWN"] = UNKNOWN_ID
    return ids


CORPUS_IDS = corpus_ids(CORPUS)


class Check(enum.Enum):
    """How two answers are compared."""

    EXACT = "exact"  # status, and the normalised body (JSON) or bytes + Content-Type
    SYSTEM = "system"  # /system: only the keys that must match
    NOW = "now"  # /tools/now: status, Content-Type and the timestamp format
    UID = "uid"  # /tools/generate-uid: status, Content-Type and the UID syntax


@dataclass(frozen=True)
class Case:
    """One request sent to both servers; `path` may hold `{NAME}` placeholders."""

    method: str
    path: str
    check: Check = Check.EXACT
    unordered: bool = False  # compare a JSON list sorted (see UNORDERED_CHILDREN)

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"

    def url(self, ids: dict[str, str]) -> str:
        return self.path.format(**ids)


# Representatives of each level: plain, sequence-bearing, Latin-1, multi-frame, and every status.
PATIENTS = ["P_A", "P_B", "P_C"]
STUDIES = ["ST_A1", "ST_A2", "ST_B1", "ST_C1"]
SERIES = sorted({item.series for item in CORPUS})
INSTANCES = ["I_A1_CT_1", "I_A1_MR_1", "I_B1_L1", "I_B1_MF", "I_C_NO_NUMBER_1"]
CHILDREN = {
    "patients": ("studies", "series", "instances"),
    "studies": ("series", "instances"),
    "series": ("instances",),
}
# Routes reaching two levels down. Orthanc 1.10.1 builds their answer parent by parent, putting the
# children of each parent in front of those already collected, so the groups of the parents come out
# in reverse order (seen with patient A: the series of its second study first). That order is an
# artefact, documented nowhere, and dicomvault keeps the groups in natural order: these lists are
# compared sorted by ID. One-level routes (`/studies/{id}/series`...) keep their order compared.
UNORDERED_CHILDREN = {("patients", "series"), ("patients", "instances"), ("studies", "instances")}
PARENTS = {"studies": ("patient",), "series": ("patient", "study"), "instances": ("patient", "study", "series")}
REPRESENTATIVES = {"patients": PATIENTS, "studies": STUDIES, "series": SERIES, "instances": INSTANCES}
INSTANCE_ROUTES = [
    "file",
    "tags",
    "tags?simplify",
    "tags?short",
    "simplified-tags",
    "header",
    "header?simplify",
    "header?short",
    "content",
    "content/0010-0010",
    "content/7fe0-0010",
    "content/0020-000d",
    "content/0010-1000",
    "content/zzzz-0010",
]


def _list_cases() -> Iterator[Case]:
    for level in LEVELS:
        for query in (
            "",
            "?expand",
            "?since=0&limit=3",
            "?since=2&limit=100",
            "?since=100&limit=5",
            "?since=0&limit=0",
            "?expand&since=1&limit=2",
            "?since=1",
            "?limit=2",
            "?since=abc&limit=2",
            "?since=-1&limit=2",
            "?since=0&limit=-1",
            "?since=&limit=2",
        ):
            yield Case("GET", f"/{level}{query}")
        yield Case("GET", f"/{level}/")


def _resource_cases() -> Iterator[Case]:
    for level in LEVELS:
        for name in [*REPRESENTATIVES[level], "UNKNOWN"]:
            yield Case("GET", f"/{level}/{{{name}}}")
            for child in CHILDREN.get(level, ()):
                unordered = (level, child) in UNORDERED_CHILDREN
                yield Case("GET", f"/{level}/{{{name}}}/{child}", unordered=unordered)
            for parent in PARENTS.get(level, ()):
                yield Case("GET", f"/{level}/{{{name}}}/{parent}")
        # a public id of another level is unknown at this one
        other = REPRESENTATIVES[LEVELS[(LEVELS.index(level) + 1) % 4]][0]
        yield Case("GET", f"/{level}/{{{other}}}")
    for name in ["I_A1_CT_2", "I_A2_CT_1", *(i.name for i in CORPUS if i.series.startswith("SE_C_"))]:
        yield Case("GET", f"/instances/{{{name}}}")


def _instance_cases() -> Iterator[Case]:
    for name in [*INSTANCES, "UNKNOWN"]:
        for route in INSTANCE_ROUTES:
            yield Case("GET", f"/instances/{{{name}}}/{route}")
    for route in (
        "content/0008-1140",
        "content/0008-1140/0",
        "content/0008-1140/0/0008-1155",
        "content/0008-1140/1/0040-a170",
        "content/0008-1140/1/0040-a170/0/0008-0104",
        "content/0008-1140/2",
        "content/0008-1140/0/0008-1155/0",
        "content/0009-1001",
        "content/0009-1002",
        "content/0020-4000",
        "content/0028-1050",
    ):
        yield Case("GET", f"/instances/{{I_A1_MR_1}}/{route}")
    for route in (
        "content/7fe0-0010/0",
        "content/7fe0-0010/2",
        "content/7fe0-0010/3",
        "content/0028-0008",
        "content/0008-0005",
        "content/0010-0010",
    ):
        yield Case("GET", f"/instances/{{I_B1_MF}}/{route}")
    yield Case("GET", "/instances/{I_A1_CT_1}/content/7fe0-0010/0")


def _system_cases() -> Iterator[Case]:
    yield Case("GET", "/statistics")
    yield Case("GET", "/system", Check.SYSTEM)
    yield Case("GET", "/tools/now", Check.NOW)
    for level in ("patient", "study", "series", "instance"):
        yield Case("GET", f"/tools/generate-uid?level={level}", Check.UID)
    yield Case("GET", "/tools/generate-uid?level=bogus")
    yield Case("GET", "/tools/generate-uid")
    for path in (
        "/nope",
        "/patients/{P_A}/nope",
        "/instances/{I_A1_CT_1}/nope",
        "/statistics/x",
        "/series/{SE_A1_CT}/instances/x",
        "/tools/nope",
    ):
        yield Case("GET", path)
    for method, path in (
        ("PUT", "/patients"),
        ("POST", "/patients"),
        ("DELETE", "/patients"),
        ("POST", "/patients/{P_A}"),
        ("PUT", "/studies/{ST_A1}"),
        ("DELETE", "/instances/{I_A1_CT_1}/file"),
        ("POST", "/statistics"),
        ("DELETE", "/system"),
        ("PUT", "/instances"),
        ("GET", "/instances/{I_A1_CT_1}/file/x"),
        ("POST", "/studies/{ST_A1}/series"),
        ("DELETE", "/series/{SE_A1_CT}/study"),
    ):
        yield Case(method, path)


READ_CASES: list[Case] = [*_list_cases(), *_resource_cases(), *_instance_cases(), *_system_cases()]


# ---- uploads (POST /instances) ----------------------------------------------------------------


def _spec(seed: int, **kwargs: object) -> Spec:
    return Spec(seed=seed, patient_id=f"UP-{seed}", **kwargs)  # type: ignore[arg-type]


def _file(seed: int, **kwargs: object) -> bytes:
    return to_bytes(make_dataset(_spec(seed, **kwargs)))


def _zip(entries: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return out.getvalue()


def _without(seed: int, keyword: str) -> bytes:
    ds = make_dataset(_spec(seed))
    delattr(ds, keyword)
    return to_bytes(ds)


def _bare_dataset(seed: int) -> bytes:
    """The data set alone, implicit VR little endian: no preamble, no "DICM", no file meta."""
    ds = make_dataset(_spec(seed))
    del ds.file_meta
    out = io.BytesIO()
    dcmwrite(out, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return out.getvalue()


@dataclass(frozen=True)
class Upload:
    """A `POST /instances` case: optional earlier uploads, then the body (and headers) compared."""

    name: str
    body: bytes
    before: tuple[bytes, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()


def _uploads() -> list[Upload]:
    one, two, three = _file(501), _file(502, instance_number=2), _file(503)
    text = b"This is not a DICOM file, just some text.\n" * 20
    return [
        Upload("new", one),
        Upload("already-stored", one, before=(one,)),
        Upload("same-study-second-instance", _file(501, instance_number=2), before=(one,)),
        Upload("zip-dicom-and-junk", _zip([("a/one.dcm", one), ("readme.txt", text), ("b/two.dcm", two)])),
        Upload("zip-with-duplicate", _zip([("one.dcm", one), ("again.dcm", one)])),
        Upload("zip-already-stored", _zip([("one.dcm", one), ("three.dcm", three)]), before=(one,)),
        Upload("zip-junk-only", _zip([("readme.txt", text), ("empty.bin", b"")])),
        Upload("zip-empty", _zip([])),
        Upload("zip-truncated", _zip([("one.dcm", one)])[:-30]),
        Upload("gzip-encoded", gzip.compress(one), headers=(("Content-Encoding", "gzip"),)),
        # Deliberate deviation, not compared here: a body announced as gzip that is not gzip makes
        # Orthanc 1.10.1 answer 500 after seconds; dicomvault answers 400 at once
        # (tests/test_rest_instances.py::test_gzip_announced_but_not_gzip).
        Upload("garbage", bytes(range(256)) * 4),
        Upload("empty-body", b""),
        Upload("truncated-file", one[: len(one) // 2]),
        Upload("preamble-only", one[:132]),
        Upload("without-study-uid", _without(504, "StudyInstanceUID")),
        Upload("without-series-uid", _without(505, "SeriesInstanceUID")),
        Upload("without-sop-uid", _without(506, "SOPInstanceUID")),
        Upload("without-patient-id", _without(507, "PatientID")),
        Upload("non-dicom-text", text),
        Upload("bare-data-set", _bare_dataset(508)),
        Upload("latin1", to_bytes(_latin1(make_dataset(_spec(509))))),
    ]


UPLOADS: list[Upload] = _uploads()


# ---- deletions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deletion:
    """`DELETE` of `targets` in turn (each answer compared), on the corpus of patient A and B."""

    name: str
    targets: tuple[str, ...]


DELETE_CORPUS: list[Item] = [item for item in CORPUS if item.patient in ("P_A", "P_B")]
DELETE_IDS = corpus_ids(DELETE_CORPUS)
DELETIONS: list[Deletion] = [
    Deletion("instance-not-last", ("/instances/{I_A1_CT_2}",)),
    Deletion("instance-last-of-series", ("/instances/{I_A1_MR_1}",)),
    Deletion("instances-until-study-gone", ("/instances/{I_A2_CT_1}", "/instances/{I_A2_CT_2}")),
    Deletion("instance-last-of-patient", ("/instances/{I_B1_L1}", "/instances/{I_B1_MF}")),
    Deletion("series", ("/series/{SE_A1_CT}",)),
    Deletion("series-last-of-study", ("/series/{SE_A2_CT}",)),
    Deletion("series-last-of-patient", ("/series/{SE_B1_L1}", "/series/{SE_B1_MF}")),
    Deletion("study-not-last", ("/studies/{ST_A2}",)),
    Deletion("study-last-of-patient", ("/studies/{ST_B1}",)),
    Deletion("patient", ("/patients/{P_A}",)),
    Deletion("patient-twice", ("/patients/{P_B}", "/patients/{P_B}")),
    Deletion("unknown-ids", ("/patients/{UNKNOWN}", "/studies/{UNKNOWN}", "/series/{UNKNOWN}", "/instances/{UNKNOWN}")),
    Deletion("wrong-level-id", ("/studies/{P_A}", "/instances/{SE_A1_CT}")),
    Deletion("everything-bottom-up", tuple(f"/instances/{{{i.name}}}" for i in DELETE_CORPUS)),
]
# Read after each deletion: the statistics and every list, plus the resources named here.
AFTER_DELETE = [
    "/statistics",
    *(f"/{level}" for level in LEVELS),
    "/patients/{P_A}",
    "/patients/{P_B}",
    "/studies/{ST_A1}",
    "/studies/{ST_A2}",
    "/series/{SE_A1_CT}",
    "/instances/{I_A1_CT_1}",
]


# ---- authentication (`AuthenticationEnabled`, user alice:secret) -------------------------------


@dataclass(frozen=True)
class AuthCase:
    method: str
    path: str
    user: tuple[str, str] | None
    body: bytes | None = None

    @property
    def label(self) -> str:
        who = "anonymous" if self.user is None else ":".join(self.user)
        return f"{self.method} {self.path} as {who}"

    @property
    def check(self) -> Check:
        return Check.SYSTEM if self.path == "/system" else Check.EXACT


AUTH_CASES: list[AuthCase] = [
    *(
        AuthCase("GET", path, user)
        for path in ("/system", "/patients", "/nope", f"/patients/{UNKNOWN_ID}")
        for user in (None, ("alice", "secret"), ("alice", "wrong"), ("bob", "secret"))
    ),
    AuthCase("POST", "/instances", None, b"garbage"),
    AuthCase("POST", "/instances", ("alice", "secret"), b"garbage"),
    AuthCase("DELETE", f"/patients/{UNKNOWN_ID}", None),
    AuthCase("PUT", "/patients", None),
    AuthCase("PUT", "/patients", ("alice", "secret")),
]
