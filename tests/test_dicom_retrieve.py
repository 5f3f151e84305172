"""C-MOVE and C-GET SCP: what a retrieve names, sub-operations sent as stored (pynetdicom and DCMTK
peers), synchronous and asynchronous C-MOVE, and moves between dicomvault and the real Orthanc
1.10.1 in both directions."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import JPEGBaseline8Bit
from pynetdicom import build_context

from tests.dicomgen import Spec, make_bytes, make_dataset
from tests.dicomnet import (
    AET,
    CT_IMAGE_STORAGE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    PATIENT_ROOT_MOVE,
    PEER_AET,
    DicomNodeFactory,
    dicom_node_fixture,  # noqa: F401  (the dicom_node fixture)
    echo,
    get,
    instance_ids,
    modality,
    move,
    needs_dcmtk,
    run_dcmtk,
    storage_peer,
    store,
)
from tests.dicomnet import storescp as dcmtk_storescp
from tests.orthanc import OrthancServer, missing_orthanc_reason, orthanc_available
from tests.test_dicom_scp import dataset_part, encoded

STUDY = Spec(seed=300)


def study_files(spec: Spec = STUDY, count: int = 3) -> list[bytes]:
    return [
        make_bytes(Spec(seed=spec.seed, patient_id=spec.patient_id, instance_number=n)) for n in range(1, count + 1)
    ]


def identifier(**keys: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def statuses(responses: list[Dataset]) -> list[int]:
    return [int(r.Status) for r in responses]


def counts(response: Dataset) -> tuple[int, int, int]:
    return (
        int(response.get("NumberOfCompletedSuboperations", 0) or 0),
        int(response.get("NumberOfFailedSuboperations", 0) or 0),
        int(response.get("NumberOfWarningSuboperations", 0) or 0),
    )


def config_for(destination_port: int, **extra: Any) -> dict[str, Any]:
    return {
        "DicomModalities": {
            "peer": modality(PEER_AET, 11112),
            "dest": modality("STORESCP", destination_port),
        },
        **extra,
    }


# ---- C-MOVE -----------------------------------------------------------------------------------------


def test_move_study_to_a_storage_peer(dicom_node: DicomNodeFactory) -> None:
    files = study_files()
    with storage_peer("STORESCP") as (port, received):
        node = dicom_node(**config_for(port))
        assert store(node.port, files) == [0] * 3
        study_uid = make_dataset(STUDY).StudyInstanceUID
        responses = move(node.port, identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=study_uid), "STORESCP")
        assert statuses(responses) == [0xFF00, 0xFF00, 0xFF00, 0x0000]
        assert [r.NumberOfRemainingSuboperations for r in responses[:3]] == [2, 1, 0]
        assert counts(responses[-1]) == (3, 0, 0)
        assert sorted(dataset_part(raw) for raw in received.files) == sorted(dataset_part(raw) for raw in files)
        assert set(received.calling_aets) == {AET}


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"QueryRetrieveLevel": "PATIENT", "PatientID": "MOVE-P"}, 3),
        ({"QueryRetrieveLevel": "SERIES", "SeriesInstanceUID": make_dataset(Spec(seed=301)).SeriesInstanceUID}, 3),
        (
            {
                "QueryRetrieveLevel": "IMAGE",
                "SOPInstanceUID": make_dataset(Spec(seed=301, instance_number=2)).SOPInstanceUID,
            },
            1,
        ),
        (
            {
                "QueryRetrieveLevel": "IMAGE",
                "SOPInstanceUID": "\\".join(
                    make_dataset(Spec(seed=301, instance_number=n)).SOPInstanceUID for n in (1, 3)
                ),
            },
            2,
        ),
        ({"SOPInstanceUID": make_dataset(Spec(seed=301, instance_number=1)).SOPInstanceUID}, 1),  # level deduced
        ({"QueryRetrieveLevel": "STUDY", "AccessionNumber": "ACC301", "StudyInstanceUID": "9.9.9"}, 3),
    ],
)
def test_move_levels(dicom_node: DicomNodeFactory, keys: dict[str, Any], expected: int) -> None:
    with storage_peer("STORESCP") as (port, received):
        node = dicom_node(**config_for(port))
        assert store(node.port, study_files(Spec(seed=301, patient_id="MOVE-P"))) == [0] * 3
        responses = move(node.port, identifier(**keys), "STORESCP", PATIENT_ROOT_MOVE)
        assert responses[-1].Status == 0x0000
        assert counts(responses[-1]) == (expected, 0, 0)
        assert len(received.files) == expected


def test_move_to_an_unknown_destination(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node(**config_for(11113))
    assert store(node.port, study_files()) == [0] * 3
    responses = move(node.port, identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID="1.2.3"), "NOWHERE")
    assert statuses(responses) == [0xA801]
    assert echo(node.port) == 0x0000


@pytest.mark.parametrize(
    "keys",
    [
        {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "9.9.9"},  # matches nothing
        {"QueryRetrieveLevel": "STUDY"},  # no identifier for the level
        {"PatientName": "X"},  # no level, no identifier
        {"QueryRetrieveLevel": "WARD", "PatientID": "X"},
    ],
)
def test_move_failures_before_sub_operations(dicom_node: DicomNodeFactory, keys: dict[str, Any]) -> None:
    with storage_peer("STORESCP") as (port, received):
        node = dicom_node(**config_for(port))
        assert store(node.port, study_files()) == [0] * 3
        responses = move(node.port, identifier(**keys), "STORESCP")
        assert len(responses) == 1
        assert 0xC000 <= int(responses[0].Status) <= 0xCFFF  # Failed: unable to process
        assert received.files == []
        assert echo(node.port) == 0x0000


def test_move_refused_without_permission(dicom_node: DicomNodeFactory) -> None:
    with storage_peer("STORESCP") as (port, received):
        node = dicom_node(
            DicomModalities={"peer": modality(PEER_AET, 11112, AllowMove=False), "dest": modality("STORESCP", port)}
        )
        assert store(node.port, study_files()) == [0] * 3
        uid = make_dataset(STUDY).StudyInstanceUID
        assert move(node.port, identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=uid), "STORESCP") == []
        assert received.files == []


def test_move_sends_as_stored_and_fails_what_the_peer_refuses(dicom_node: DicomNodeFactory) -> None:
    """The peer accepts CT only uncompressed (implicit VR): the explicit VR instance is re-encoded
    losslessly by pynetdicom, the JPEG one is not transcoded and fails its sub-operation."""
    jpeg = encoded(Spec(seed=302, instance_number=1), JPEGBaseline8Bit)
    plain = make_bytes(Spec(seed=302, instance_number=2))
    with storage_peer("STORESCP", [build_context(CT_IMAGE_STORAGE, [IMPLICIT_LE])]) as (port, received):
        node = dicom_node(**config_for(port))
        assert store(node.port, [jpeg, plain]) == [0, 0]
        uid = make_dataset(Spec(seed=302)).StudyInstanceUID
        responses = move(node.port, identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=uid), "STORESCP")
        final = responses[-1]
        assert final.Status == 0xB000  # sub-operations complete, one or more failures
        assert counts(final) == (1, 1, 0)
        assert final.FailedSOPInstanceUIDList == pydicom.dcmread(io.BytesIO(jpeg)).SOPInstanceUID
        [sent] = received.datasets()
        assert sent.file_meta.TransferSyntaxUID == IMPLICIT_LE
        assert sent.SOPInstanceUID == pydicom.dcmread(io.BytesIO(plain)).SOPInstanceUID


@needs_dcmtk
def test_movescu_to_storescp(dicom_node: DicomNodeFactory, tmp_path: Path) -> None:
    out = tmp_path / "received"
    with dcmtk_storescp(out) as port:
        node = dicom_node(**config_for(port))
        files = study_files()
        assert store(node.port, files) == [0] * 3
        uid = make_dataset(STUDY).StudyInstanceUID
        result = run_dcmtk(
            "movescu",
            "-aet",
            PEER_AET,
            "-aec",
            AET,
            "-aem",
            "STORESCP",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={uid}",
            "127.0.0.1",
            str(node.port),
        )
        assert result.returncode == 0, result.stdout
        received = sorted(out.iterdir())
        assert len(received) == 3
        assert sorted(dataset_part(p.read_bytes()) for p in received) == sorted(dataset_part(raw) for raw in files)


def test_asynchronous_move_submits_a_store_job(dicom_node: DicomNodeFactory) -> None:
    pytest.importorskip("dicomvault.network.store_job")
    with storage_peer("STORESCP") as (port, received):
        node = dicom_node(**config_for(port, SynchronousCMove=False))
        assert store(node.port, study_files()) == [0] * 3
        uid = make_dataset(STUDY).StudyInstanceUID
        responses = move(node.port, identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=uid), "STORESCP")
        assert statuses(responses) == [0x0000]
        jobs = node.server.context.jobs
        [job_id] = jobs.ids()
        assert jobs.wait(job_id, timeout=60).value == "Success"
        description = jobs.describe(job_id)
        assert description["Type"] == "DicomModalityStore"
        assert description["Content"]["Description"] == "C-MOVE"
        assert description["Content"]["InstancesCount"] == 3
        assert len(received.files) == 3
        assert {originator for originator, _ in received.originators} == {PEER_AET}


# ---- C-GET --------------------------------------------------------------------------------------------


def test_get_study_on_the_same_association(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node(DicomAlwaysAllowGet=True)
    files = study_files()
    assert store(node.port, files) == [0] * 3
    uid = make_dataset(STUDY).StudyInstanceUID
    responses, received = get(
        node.port, identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=uid), [(CT_IMAGE_STORAGE, [EXPLICIT_LE])]
    )
    assert statuses(responses) == [0xFF00, 0xFF00, 0xFF00, 0x0000]
    assert counts(responses[-1]) == (3, 0, 0)
    assert sorted(dataset_part(raw) for raw in received.files) == sorted(dataset_part(raw) for raw in files)


def test_get_failures(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node(DicomAlwaysAllowGet=True)
    jpeg = encoded(Spec(seed=303), JPEGBaseline8Bit)
    assert store(node.port, [jpeg]) == [0]
    # The peer accepts CT uncompressed only: the JPEG instance is not transcoded, its sub-operation fails.
    uid = make_dataset(Spec(seed=303)).StudyInstanceUID
    responses, received = get(
        node.port, identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=uid), [(CT_IMAGE_STORAGE, [EXPLICIT_LE])]
    )
    assert responses[-1].Status == 0xA702  # every sub-operation failed
    assert received.files == []
    # Nothing matches: Orthanc's failure status.
    responses, _ = get(
        node.port, identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID="9.9.9"), [(CT_IMAGE_STORAGE, [EXPLICIT_LE])]
    )
    assert statuses(responses) == [0xC000]
    assert echo(node.port) == 0x0000


def test_get_needs_permission(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node()  # DicomAlwaysAllowGet is false by default, and PEER is no modality
    assert store(node.port, study_files()) == [0] * 3
    uid = make_dataset(STUDY).StudyInstanceUID
    responses, received = get(
        node.port, identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID=uid), [(CT_IMAGE_STORAGE, [EXPLICIT_LE])]
    )
    assert responses == [] and received.files == []


@needs_dcmtk
def test_getscu(dicom_node: DicomNodeFactory, tmp_path: Path) -> None:
    node = dicom_node(DicomAlwaysAllowGet=True)
    files = study_files()
    assert store(node.port, files) == [0] * 3
    uid = make_dataset(STUDY).StudyInstanceUID
    result = run_dcmtk(
        "getscu",
        "-aet",
        PEER_AET,
        "-aec",
        AET,
        "-S",
        "-od",
        str(tmp_path),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={uid}",
        "127.0.0.1",
        str(node.port),
    )
    assert result.returncode == 0, result.stdout
    received = sorted(tmp_path.glob("CT.*"))
    assert len(received) == 3, result.stdout
    for path in received:
        assert pydicom.dcmread(path).StudyInstanceUID == uid


# ---- with the real Orthanc ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    if not orthanc_available():
        pytest.skip(missing_orthanc_reason())
    server = OrthancServer(tmp_path_factory.mktemp("orthanc-retrieve"), {"DicomAet": "ORTHANC"})
    server.start()
    yield server
    server.stop()


def _wait_instances(client: httpx.Client, count: int) -> list[str]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = client.get("/instances").json()
        if len(found) >= count:
            return list(found)
        time.sleep(0.05)
    return list(client.get("/instances").json())


@pytest.mark.orthanc
def test_orthanc_moves_a_study_out_of_dicomvault(dicom_node: DicomNodeFactory, orthanc: OrthancServer) -> None:
    """Orthanc is the C-MOVE SCU (`POST /modalities/dv/move`) and the destination."""
    node = dicom_node(DicomModalities={"orthanc": modality("ORTHANC", orthanc.dicom_port)})
    files = study_files(Spec(seed=310))
    assert store(node.port, files) == [0] * 3
    with httpx.Client(base_url=orthanc.url, timeout=60) as client:
        assert client.put("/modalities/dv", json=modality(AET, node.port)).status_code == 200
        uid = make_dataset(Spec(seed=310)).StudyInstanceUID
        answer = client.post("/modalities/dv/move", json={"Level": "Study", "Resources": [{"StudyInstanceUID": uid}]})
        assert answer.status_code == 200, answer.text
        moved = _wait_instances(client, 3)
        assert len(moved) == 3
        for instance in moved:
            assert client.get(f"/instances/{instance}/metadata/RemoteAET").text == AET
        stored = sorted(dataset_part(client.get(f"/instances/{i}/file").content) for i in moved)
        # Orthanc re-encodes what it receives; compare the data sets, not the bytes.
        assert sorted(pydicom.dcmread(io.BytesIO(raw)).SOPInstanceUID for raw in files) == sorted(
            client.get(f"/instances/{i}/simplified-tags").json()["SOPInstanceUID"] for i in moved
        )
        assert stored
        for patient in client.get("/patients").json():
            client.delete(f"/patients/{patient}")


@pytest.mark.orthanc
def test_orthanc_queries_and_retrieves_from_dicomvault(dicom_node: DicomNodeFactory, orthanc: OrthancServer) -> None:
    """Orthanc's query/retrieve: C-FIND then C-MOVE to itself, over its REST API."""
    node = dicom_node(DicomModalities={"orthanc": modality("ORTHANC", orthanc.dicom_port)})
    assert store(node.port, study_files(Spec(seed=311))) == [0] * 3
    with httpx.Client(base_url=orthanc.url, timeout=60) as client:
        assert client.put("/modalities/dv", json=modality(AET, node.port)).status_code == 200
        query = client.post("/modalities/dv/query", json={"Level": "Study", "Query": {"PatientID": "P0001"}})
        assert query.status_code == 200, query.text
        query_id = query.json()["ID"]
        answers = client.get(f"/queries/{query_id}/answers?expand").json()
        assert len(answers) == 1
        retrieve = client.post(f"/queries/{query_id}/retrieve", json={"TargetAet": "ORTHANC", "Synchronous": True})
        assert retrieve.status_code == 200, retrieve.text
        assert len(_wait_instances(client, 3)) == 3
        for patient in client.get("/patients").json():
            client.delete(f"/patients/{patient}")


@pytest.mark.orthanc
def test_orthanc_stores_into_dicomvault(dicom_node: DicomNodeFactory, orthanc: OrthancServer) -> None:
    """Orthanc is the C-STORE SCU (`POST /modalities/dv/store`)."""
    node = dicom_node()
    files = study_files(Spec(seed=312))
    with httpx.Client(base_url=orthanc.url, timeout=60) as client:
        ids = [client.post("/instances", content=raw).json()["ID"] for raw in files]
        assert client.put("/modalities/dv", json=modality(AET, node.port)).status_code == 200
        answer = client.post("/modalities/dv/store", json={"Resources": ids, "Synchronous": True})
        assert answer.status_code == 200, answer.text
        assert answer.json()["InstancesCount"] == 3
        assert answer.json()["FailedInstancesCount"] == 0
        for patient in client.get("/patients").json():
            client.delete(f"/patients/{patient}")
    assert sorted(instance_ids(node.client)) == sorted(ids)  # the same public ids on both servers
    metadata = node.client.get(f"/instances/{ids[0]}/metadata?expand").json()
    assert metadata["RemoteAET"] == "ORTHANC"
    assert metadata["CalledAET"] == AET
