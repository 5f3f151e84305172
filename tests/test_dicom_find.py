"""C-FIND SCP: Orthanc's matching and answers, compared with the real Orthanc 1.10.1 on the same
data (tests/find_corpus.py), with pynetdicom and DCMTK's findscu as the C-FIND SCU. Answers are
compared as multisets of data sets (tag, VR, value), and the final statuses too."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicomvault.config import config_from_mapping
from dicomvault.ingest.pool import WorkerPool
from dicomvault.network.scp import DicomServer
from dicomvault.server import Server, build
from tests.dicomgen import Spec, make_bytes
from tests.dicomnet import (
    AET,
    PATIENT_ROOT_FIND,
    PEER_AET,
    STUDY_ROOT_FIND,
    DicomNodeFactory,
    associate,
    dicom_node_fixture,  # noqa: F401  (the dicom_node fixture)
    find,
    needs_dcmtk,
    run_dcmtk,
    store,
)
from tests.find_corpus import FIND_CORPUS
from tests.orthanc import OrthancServer, missing_orthanc_reason, orthanc_available

pytestmark = pytest.mark.contract

DOE_STUDY = pydicom.dcmread(io.BytesIO(FIND_CORPUS[0].data)).StudyInstanceUID
DOE_CT_SERIES = pydicom.dcmread(io.BytesIO(FIND_CORPUS[0].data)).SeriesInstanceUID

SHARED = {"DicomAet": AET, "DicomModalities": {"peer": [PEER_AET, "127.0.0.1", 11112]}}


Canonical = tuple[tuple[int, str, str], ...]


def _value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue | list):
        return "\\".join(_value(v) for v in value)
    return str(value)


def canonical(answer: Dataset) -> Canonical:
    return tuple(sorted((int(e.tag), str(e.VR), _value(e.value)) for e in answer))


@dataclass
class FindPair:
    orthanc: OrthancServer
    server: Server
    dicom: DicomServer
    port: int

    def both(self, identifier: Dataset, model: str) -> tuple[tuple[list[int], list[Canonical]], ...]:
        out = []
        for port in (self.orthanc.dicom_port, self.port):
            statuses, answers = find(port, identifier, model)
            out.append((statuses[len(answers) :], sorted(canonical(a) for a in answers)))
        return tuple(out)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, worker_pool: WorkerPool) -> Iterator[FindPair]:
    if not orthanc_available():
        pytest.skip(missing_orthanc_reason())
    base = tmp_path_factory.mktemp("find-pair")
    orthanc = OrthancServer(base / "orthanc", SHARED)
    orthanc.start()
    server = build(
        config_from_mapping(
            {**SHARED, "StorageDirectory": str(base / "dv"), "HttpPort": 0, "DicomPort": 0}, source="<test>"
        ),
        workers=worker_pool,
    )
    dicom = DicomServer(server.context)
    try:
        port = dicom.start("127.0.0.1", 0)
        with httpx.Client(base_url=orthanc.url) as client:
            for item in FIND_CORPUS:
                assert client.post("/instances", content=item.data).status_code == 200
        # dicomvault receives the corpus over DICOM (C-STORE), in the same order.
        assert store(port, [item.data for item in FIND_CORPUS]) == [0x0000] * len(FIND_CORPUS)
        yield FindPair(orthanc, server, dicom, port)
    finally:
        dicom.close()
        server.close()
        orthanc.stop()


def identifier(**keys: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


Outcome = tuple[list[int], list[Canonical]]


def assert_same(dicomvault: Outcome, orthanc: Outcome) -> None:
    """Equal final statuses and answers; on failure, the answers only one side gave."""
    if dicomvault == orthanc:
        return
    only_orthanc = [a for a in orthanc[1] if a not in dicomvault[1]]
    only_dicomvault = [a for a in dicomvault[1] if a not in orthanc[1]]
    lines = [f"statuses: orthanc {[hex(s) for s in orthanc[0]]}, dicomvault {[hex(s) for s in dicomvault[0]]}"]
    lines += [f"answers: orthanc {len(orthanc[1])}, dicomvault {len(dicomvault[1])}"]
    lines += [
        "only orthanc:",
        *(f"  {a}" for a in only_orthanc),
        "only dicomvault:",
        *(f"  {a}" for a in only_dicomvault),
    ]
    pytest.fail("\n".join(lines))


CASES: list[tuple[str, str, dict[str, Any]]] = [
    (
        "patients-all-with-counts",
        PATIENT_ROOT_FIND,
        dict(
            QueryRetrieveLevel="PATIENT",
            PatientName="*",
            PatientID="",
            PatientBirthDate="",
            NumberOfPatientRelatedStudies="",
            NumberOfPatientRelatedSeries="",
            NumberOfPatientRelatedInstances="",
        ),
    ),
    (
        "patients-pn-case-insensitive",
        PATIENT_ROOT_FIND,
        dict(QueryRetrieveLevel="PATIENT", PatientName="doe*", PatientID=""),
    ),
    (
        "patients-id-case-sensitive",
        PATIENT_ROOT_FIND,
        dict(QueryRetrieveLevel="PATIENT", PatientID="find-1", PatientName=""),
    ),
    ("patients-id-exact", PATIENT_ROOT_FIND, dict(QueryRetrieveLevel="PATIENT", PatientID="FIND-1", PatientSex="")),
    (
        "patients-question-mark",
        PATIENT_ROOT_FIND,
        dict(QueryRetrieveLevel="PATIENT", PatientName="tw?n*", PatientID=""),
    ),
    (
        "patients-birth-date-range",
        PATIENT_ROOT_FIND,
        dict(QueryRetrieveLevel="PATIENT", PatientBirthDate="19500101-19700101", PatientName=""),
    ),
    (
        "patients-counters-of-other-levels",
        PATIENT_ROOT_FIND,
        dict(QueryRetrieveLevel="PATIENT", PatientName="doe*", NumberOfStudyRelatedInstances="", ModalitiesInStudy=""),
    ),
    (
        "studies-with-computed-tags",
        STUDY_ROOT_FIND,
        dict(
            QueryRetrieveLevel="STUDY",
            StudyInstanceUID="",
            StudyDate="",
            StudyDescription="",
            AccessionNumber="",
            PatientName="",
            ModalitiesInStudy="",
            NumberOfStudyRelatedSeries="",
            NumberOfStudyRelatedInstances="",
            SOPClassesInStudy="",
        ),
    ),
    (
        "studies-date-range",
        STUDY_ROOT_FIND,
        dict(QueryRetrieveLevel="STUDY", StudyDate="20200101-20201231", StudyInstanceUID="", StudyTime=""),
    ),
    (
        "studies-date-open-start",
        STUDY_ROOT_FIND,
        dict(QueryRetrieveLevel="STUDY", StudyDate="-20000101", StudyDescription=""),
    ),
    (
        "studies-date-open-end",
        STUDY_ROOT_FIND,
        dict(QueryRetrieveLevel="STUDY", StudyDate="20230101-", StudyDescription=""),
    ),
    ("studies-description-wildcard", STUDY_ROOT_FIND, dict(QueryRetrieveLevel="STUDY", StudyDescription="*CT*")),
    ("studies-description-case", STUDY_ROOT_FIND, dict(QueryRetrieveLevel="STUDY", StudyDescription="chest*")),
    (
        "studies-modalities-list",
        STUDY_ROOT_FIND,
        dict(QueryRetrieveLevel="STUDY", ModalitiesInStudy="CT\\MR", StudyInstanceUID="", PatientID=""),
    ),
    ("studies-modality-one", STUDY_ROOT_FIND, dict(QueryRetrieveLevel="STUDY", ModalitiesInStudy="US", StudyDate="")),
    (
        "studies-lower-level-main-tag-empty",
        STUDY_ROOT_FIND,
        dict(QueryRetrieveLevel="STUDY", StudyInstanceUID=DOE_STUDY, SeriesDescription="", Modality=""),
    ),
    (
        "studies-non-main-tag-from-file",
        STUDY_ROOT_FIND,
        dict(QueryRetrieveLevel="STUDY", InstitutionName="", SeriesDescription="", StudyDescription=""),
    ),
    (
        "studies-accents-utf8-query",
        STUDY_ROOT_FIND,
        dict(
            SpecificCharacterSet="ISO_IR 192",
            QueryRetrieveLevel="STUDY",
            PatientName="müller*",
            StudyDescription="",
            InstitutionName="",
        ),
    ),
    ("studies-nothing-but-the-level", STUDY_ROOT_FIND, dict(QueryRetrieveLevel="STUDY")),
    ("studies-accession-list", STUDY_ROOT_FIND, dict(QueryRetrieveLevel="STUDY", AccessionNumber="A-100\\ACC_3")),
    (
        "series-of-a-study",
        STUDY_ROOT_FIND,
        dict(
            QueryRetrieveLevel="SERIES",
            StudyInstanceUID=DOE_STUDY,
            SeriesInstanceUID="",
            Modality="",
            SeriesDescription="",
            SeriesNumber="",
            NumberOfSeriesRelatedInstances="",
        ),
    ),
    (
        "series-with-parent-tags",
        STUDY_ROOT_FIND,
        dict(QueryRetrieveLevel="SERIES", Modality="MR", PatientName="", StudyDescription="", StudyDate=""),
    ),
    (
        "series-modality-list",
        STUDY_ROOT_FIND,
        dict(QueryRetrieveLevel="SERIES", Modality="CT\\US", BodyPartExamined=""),
    ),
    ("series-non-main-tag", STUDY_ROOT_FIND, dict(QueryRetrieveLevel="SERIES", Manufacturer="", Modality="MR")),
    (
        "images-of-a-series",
        STUDY_ROOT_FIND,
        dict(
            QueryRetrieveLevel="IMAGE",
            SeriesInstanceUID=DOE_CT_SERIES,
            SOPInstanceUID="",
            SOPClassUID="",
            InstanceNumber="",
        ),
    ),
    (
        "images-content-date-range",
        STUDY_ROOT_FIND,
        dict(QueryRetrieveLevel="IMAGE", ContentDate="20200102-", SOPInstanceUID=""),
    ),
    ("images-binary-key", STUDY_ROOT_FIND, dict(QueryRetrieveLevel="IMAGE", Modality="SR", Rows=None, Columns=None)),
    ("wildcard-on-a-date-refused", STUDY_ROOT_FIND, dict(QueryRetrieveLevel="STUDY", StudyDate="2020*")),
    ("unknown-level", STUDY_ROOT_FIND, dict(QueryRetrieveLevel="WARD", PatientName="")),
    ("no-level", STUDY_ROOT_FIND, dict(PatientName="doe*")),
]


@pytest.mark.orthanc
@pytest.mark.parametrize(("name", "model", "keys"), CASES, ids=[c[0] for c in CASES])
def test_find_like_orthanc(pair: FindPair, name: str, model: str, keys: dict[str, Any]) -> None:
    orthanc, dicomvault = pair.both(identifier(**keys), model)
    assert_same(dicomvault, orthanc)


@pytest.mark.orthanc
def test_sequence_key_returns_the_sequence(pair: FindPair) -> None:
    query = identifier(QueryRetrieveLevel="IMAGE", SOPInstanceUID="", Modality="CT")
    query.ReferencedImageSequence = []
    orthanc, dicomvault = pair.both(query, STUDY_ROOT_FIND)
    assert_same(dicomvault, orthanc)


@pytest.mark.orthanc
@needs_dcmtk
def test_findscu_like_orthanc(pair: FindPair, tmp_path: Path) -> None:
    answers = []
    for port in (pair.orthanc.dicom_port, pair.port):
        folder = tmp_path / str(port)
        folder.mkdir()
        result = run_dcmtk(
            "findscu",
            "-aet",
            PEER_AET,
            "-aec",
            AET,
            "-S",
            "-X",
            "-od",
            str(folder),
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "PatientName=*o*",
            "-k",
            "StudyInstanceUID",
            "-k",
            "ModalitiesInStudy",
            "-k",
            "NumberOfStudyRelatedInstances",
            "-k",
            "StudyDate=20000101-",
            "127.0.0.1",
            str(port),
        )
        assert result.returncode == 0, result.stdout
        answers.append(sorted(canonical(pydicom.dcmread(path)) for path in sorted(folder.glob("rsp*.dcm"))))
    assert answers[0] and answers[1] == answers[0]


# ---- dicomvault alone -----------------------------------------------------------------------------


def _studies(count: int) -> list[bytes]:
    return [make_bytes(Spec(seed=900 + n, patient_id=f"L{n}")) for n in range(count)]


def test_limit_find_results_ends_with_cancel_status(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node(LimitFindResults=2, LimitFindInstances=3, DicomAlwaysAllowFind=True)
    assert store(node.port, _studies(5)) == [0x0000] * 5
    statuses, answers = find(node.port, identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=""))
    assert len(answers) == 2
    assert statuses[-1] == 0xFE00  # as Orthanc: matching terminated, more results exist
    statuses, answers = find(node.port, identifier(QueryRetrieveLevel="IMAGE", SOPInstanceUID=""))
    assert (len(answers), statuses[-1]) == (3, 0xFE00)
    statuses, answers = find(node.port, identifier(QueryRetrieveLevel="PATIENT", PatientID="L1"), PATIENT_ROOT_FIND)
    assert (len(answers), statuses[-1]) == (1, 0x0000)


def test_case_sensitive_pn(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node(CaseSensitivePN=True, DicomAlwaysAllowFind=True)
    assert store(node.port, [make_bytes(Spec(seed=950, patient_name="Doe^Jane"))]) == [0x0000]
    _, answers = find(node.port, identifier(QueryRetrieveLevel="STUDY", PatientName="doe*"))
    assert answers == []
    _, answers = find(node.port, identifier(QueryRetrieveLevel="STUDY", PatientName="Doe*"))
    assert len(answers) == 1


def test_find_needs_a_known_modality(dicom_node: DicomNodeFactory) -> None:
    """Orthanc's default DicomAlwaysAllowFind is false: an unknown AET is aborted."""
    node = dicom_node(DicomModalities={"peer": [PEER_AET, "127.0.0.1", 11112]})
    statuses, _ = find(node.port, identifier(QueryRetrieveLevel="STUDY"), calling="STRANGER")
    assert statuses == []
    statuses, _ = find(node.port, identifier(QueryRetrieveLevel="STUDY"))
    assert statuses == [0x0000]
    node = dicom_node(DicomAlwaysAllowFind=True)
    statuses, _ = find(node.port, identifier(QueryRetrieveLevel="STUDY"), calling="STRANGER")
    assert statuses == [0x0000]


def test_cancel_keeps_the_association_usable(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node(DicomAlwaysAllowFind=True)
    assert store(node.port, _studies(6)) == [0x0000] * 6
    with associate(node.port, [(STUDY_ROOT_FIND, ["1.2.840.10008.1.2.1"])]) as assoc:
        responses = assoc.send_c_find(identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=""), STUDY_ROOT_FIND)
        first_status, _ = next(responses)
        assert first_status.Status == 0xFF00
        assoc.send_c_cancel(1, query_model=STUDY_ROOT_FIND)
        rest = [int(status.Status) for status, _ in responses if "Status" in status]
        # The answers may all be on their way before the C-CANCEL arrives: success then.
        assert rest[-1] in (0xFE00, 0x0000)
        statuses, _ = find(node.port, identifier(QueryRetrieveLevel="STUDY"))
    assert statuses[-1] == 0x0000


class _CancelAfter:
    """An EVT_C_FIND event whose peer cancels once `after` answers were taken (an injected fault:
    over the network, a C-CANCEL races with answers already in flight)."""

    def __init__(self, identifier: Dataset, after: int) -> None:
        self.identifier = identifier
        self.after = after
        self.taken = 0

    @property
    def is_cancelled(self) -> bool:
        return self.taken >= self.after


def test_cancel_stops_the_answers(dicom_node: DicomNodeFactory) -> None:
    from dicomvault.network.find_scp import FindScp
    from dicomvault.network.scp import Peer

    node = dicom_node()
    assert store(node.port, _studies(6)) == [0x0000] * 6
    peer = Peer(PEER_AET, AET, "127.0.0.1")
    scp = FindScp(node.server.context, lambda event, request: peer, threading.BoundedSemaphore(1))
    event = _CancelAfter(identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=""), after=2)
    statuses = []
    for status, _ in scp.handle(event):  # type: ignore[arg-type]
        statuses.append(status)
        event.taken += 1
    assert statuses == [0xFF00, 0xFF00, 0xFE00]
