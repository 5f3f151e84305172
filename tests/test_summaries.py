"""Resource summaries, in process: `/statistics` per level (counts, sizes of every attachment,
compressed storage), `/shared-tags`, `/module`, `/module-patient` and `/instances-tags` (which
instance, which elements, the three formats), and how instances are read for them.

The differential tests (`tests/test_differential_archives.py`) compare the same routes with the
real Orthanc 1.10.1."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian
from starlette.testclient import TestClient

from dicomvault.dicom.tags_json import TagsFormat, dataset_to_json
from dicomvault.enums import CompressionType, ResourceType
from dicomvault.find.summaries import MODULES, child_instances, reformat
from dicomvault.index.transactions import WriteTx
from dicomvault.model import FileInfo
from dicomvault.server import Server
from dicomvault.storage.area import FilesystemStorageArea
from tests.dicomgen import Spec, make_bytes, make_dataset
from tests.differential_cases import CORPUS, to_bytes

pytestmark = pytest.mark.contract

UNKNOWN = "00000000-00000000-00000000-00000000-00000000"


def upload(client: TestClient, data: bytes) -> dict[str, str]:
    answer = client.post("/instances", content=data)
    assert answer.status_code == 200, answer.text
    result: dict[str, str] = answer.json()
    return result


def spec(n: int, **kwargs: Any) -> Spec:
    kwargs.setdefault("patient_id", "SUM")
    kwargs.setdefault("study_uid", "1.2.3.100")
    kwargs.setdefault("series_uid", "1.2.3.101")
    return Spec(seed=n, sop_uid=f"1.2.3.102.{n}", instance_number=n, **kwargs)


@pytest.fixture
def tree(client: TestClient) -> dict[str, dict[str, str]]:
    """Patient SUM: study 100 with series 101 (instances 1, 2) and 103 (instance 3), study 200
    (instance 4)."""
    return {
        "i1": upload(client, make_bytes(spec(1))),
        "i2": upload(client, make_bytes(spec(2))),
        "i3": upload(client, make_bytes(spec(3, series_uid="1.2.3.103", modality="MR", series_description="T2"))),
        "i4": upload(client, make_bytes(spec(4, study_uid="1.2.3.200", series_uid="1.2.3.201", patient_name="Doe^Jo"))),
    }


# ---- statistics ------------------------------------------------------------------------------------


def test_statistics_per_level(client: TestClient, tree: dict[str, dict[str, str]]) -> None:
    sizes = {name: len(client.get(f"/instances/{ids['ID']}/file").content) for name, ids in tree.items()}
    i1 = tree["i1"]

    def expect(total: int, **counts: int) -> dict[str, Any]:
        body: dict[str, Any] = {f"Count{k}": v for k, v in counts.items()}
        for key in ("DiskSize", "UncompressedSize", "DicomDiskSize", "DicomUncompressedSize"):
            body[key], body[f"{key}MB"] = str(total), 0
        return body

    assert client.get(f"/patients/{i1['ParentPatient']}/statistics").json() == expect(
        sum(sizes.values()), Studies=2, Series=3, Instances=4
    )
    assert client.get(f"/studies/{i1['ParentStudy']}/statistics").json() == expect(
        sizes["i1"] + sizes["i2"] + sizes["i3"], Series=2, Instances=3
    )
    assert client.get(f"/series/{i1['ParentSeries']}/statistics").json() == expect(
        sizes["i1"] + sizes["i2"], Instances=2
    )
    assert client.get(f"/instances/{i1['ID']}/statistics").json() == expect(sizes["i1"])
    # as Orthanc 1.10.1: the level in the URL is not checked
    assert client.get(f"/patients/{i1['ID']}/statistics").json() == expect(sizes["i1"])
    assert client.get(f"/patients/{UNKNOWN}/statistics").status_code == 404


def test_statistics_count_every_attachment_and_compression(make_server: Callable[..., Server]) -> None:
    server = make_server(StorageCompression=True)
    with TestClient(server.app(), client=("127.0.0.1", 50000)) as client:  # type: ignore[arg-type]
        ids = upload(client, make_bytes(spec(1, rows=64, columns=64)))
        plain = len(client.get(f"/instances/{ids['ID']}/file").content)

        def attach(tx: WriteTx) -> int:
            study = tx.lookup(ids["ParentStudy"], ResourceType.STUDY)
            assert study is not None
            info = FileInfo(
                "0" * 8 + "-0000-4000-8000-" + "0" * 12, 1025, 1000, "", CompressionType.ZLIB_WITH_SIZE, 300, ""
            )
            tx.add_attachment(study.internal_id, info)
            dicom = tx.attachment(tx.lookup(ids["ID"]).internal_id, 1)  # type: ignore[union-attr]
            assert dicom is not None
            return dicom.compressed_size

        stored = server.context.index.write(attach)
        assert stored < plain
        patient = client.get(f"/patients/{ids['ParentPatient']}/statistics").json()
        assert patient["DicomUncompressedSize"] == str(plain) and patient["DicomDiskSize"] == str(stored)
        assert patient["UncompressedSize"] == str(plain + 1000) and patient["DiskSize"] == str(stored + 300)
        series = client.get(f"/series/{ids['ParentSeries']}/statistics").json()
        assert series["DiskSize"] == str(stored)  # the study's attachment is above the series


# ---- which instance, which elements ------------------------------------------------------------------


def test_child_instances_in_orthancs_order(server: Server, tree: dict[str, dict[str, str]]) -> None:
    def order(public_id: str) -> list[str]:
        def read(tx: Any) -> list[str]:
            ref = tx.lookup(public_id)
            return [r.public_id for r in child_instances(tx, ref)]

        return server.context.index.read(read)

    i1, i2, i3, i4 = (tree[k]["ID"] for k in ("i1", "i2", "i3", "i4"))
    # depth first, the last stored child first at every level
    assert order(tree["i1"]["ParentPatient"]) == [i4, i3, i2, i1]
    assert order(tree["i1"]["ParentStudy"]) == [i3, i2, i1]
    assert order(i2) == [i2]


def test_module_reads_the_last_stored_child(client: TestClient, tree: dict[str, dict[str, str]]) -> None:
    i1 = tree["i1"]
    patient = client.get(f"/patients/{i1['ParentPatient']}/module?simplify").json()
    assert patient["PatientName"] == "Doe^Jo"  # from instance 4, in the last stored study
    assert set(patient) == {"PatientName", "PatientID", "PatientBirthDate", "PatientSex"}
    study = client.get(f"/studies/{i1['ParentStudy']}/module?short").json()
    assert study["0008,0050"] == "ACC3"  # instance 3, in the last stored series of the study
    assert client.get(f"/studies/{i1['ParentStudy']}/module-patient?simplify").json()["PatientName"] == "Doe^John"
    series = client.get(f"/series/{i1['ParentSeries']}/module").json()
    assert series["0020,0011"] == {"Name": "SeriesNumber", "Type": "String", "Value": "1"}
    instance = client.get(f"/instances/{i1['ID']}/module?simplify").json()
    assert instance == {
        "InstanceNumber": "1",
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
        "SOPInstanceUID": "1.2.3.102.1",
    }
    # module of the URL's level, id of any level; except /instances/{id}/module
    assert client.get(f"/patients/{i1['ID']}/module?simplify").json()["PatientName"] == "Doe^John"
    assert client.get(f"/instances/{i1['ParentSeries']}/module").status_code == 404
    assert client.get(f"/series/{UNKNOWN}/module").status_code == 404


def test_module_lists() -> None:
    assert len(MODULES[ResourceType.PATIENT]) == 24 and 0x00100010 in MODULES[ResourceType.PATIENT]
    assert 0x00280109 not in MODULES[ResourceType.SERIES]  # LargestPixelValueInSeries: not in Orthanc's
    assert 0x00080005 in MODULES[ResourceType.INSTANCE]


def test_shared_tags(client: TestClient, tree: dict[str, dict[str, str]]) -> None:
    i1 = tree["i1"]
    full = client.get(f"/series/{i1['ParentSeries']}/shared-tags").json()
    assert full["0008,103e"] == {"Name": "SeriesDescription", "Type": "String", "Value": "Axial"}
    assert "0020,0013" not in full and "0008,0018" not in full  # InstanceNumber, SOPInstanceUID differ
    assert "7fe0,0010" not in full  # null, never shared
    short = client.get(f"/series/{i1['ParentSeries']}/shared-tags?short").json()
    assert short == {key: entry["Value"] for key, entry in full.items()}
    simplified = client.get(f"/series/{i1['ParentSeries']}/shared-tags?simplify").json()
    assert simplified == {entry["Name"]: entry["Value"] for entry in full.values()}
    patient = client.get(f"/patients/{i1['ParentPatient']}/shared-tags?simplify").json()
    assert "PatientName" not in patient and patient["PatientID"] == "SUM"
    assert client.get(f"/instances/{i1['ID']}/shared-tags").status_code == 404


def test_shared_tags_leave_out_sequences_and_long_values(client: TestClient) -> None:
    for n in (1, 2):
        ds = make_dataset(spec(n))
        ds.ImageComments = "long " * 60  # over 256 bytes: TooLong, not a string
        item = Dataset()
        item.CodeValue = "X"
        ds.ProcedureCodeSequence = [item]
        ids = upload(client, to_bytes(ds))
    shared = client.get(f"/series/{ids['ParentSeries']}/shared-tags?short").json()
    assert "0020,4000" not in shared and "0008,1032" not in shared and shared["0008,0060"] == "CT"


def test_shared_tags_skip_unreadable_instances(server: Server, client: TestClient) -> None:
    first = upload(client, make_bytes(spec(1)))
    second = upload(client, make_bytes(spec(2)))
    uuid = client.get(f"/instances/{second['ID']}").json()["FileUuid"]
    area = server.context.accessor.area
    assert isinstance(area, FilesystemStorageArea)
    area.path(uuid).unlink()
    shared = client.get(f"/series/{first['ParentSeries']}/shared-tags?short").json()
    assert shared["0020,0013"] == "1"  # only the first instance was read


def test_instances_tags(client: TestClient, tree: dict[str, dict[str, str]]) -> None:
    i1, i2 = tree["i1"], tree["i2"]
    answer = client.get(f"/series/{i1['ParentSeries']}/instances-tags?short").json()
    assert set(answer) == {i1["ID"], i2["ID"]}
    assert answer[i2["ID"]]["0020,0013"] == "2"
    tags = client.get(f"/instances/{i1['ID']}/tags").json()
    assert client.get(f"/series/{i1['ParentSeries']}/instances-tags").json()[i1["ID"]] == tags
    assert client.get(f"/instances/{i1['ID']}/instances-tags").status_code == 404


# ---- how instances are read --------------------------------------------------------------------------


def _with_late_elements(ds: Dataset) -> Dataset:
    ds.add_new(0x7FE10010, "LO", "LATE")
    ds.add_new(0x7FE11001, "LO", "after the pixel data")
    return ds


@pytest.mark.parametrize("variant", ["plain", "no-pixels", "deflated", "compressed-storage"])
def test_nothing_after_the_pixel_data(make_server: Callable[..., Server], variant: str) -> None:
    server = make_server(StorageCompression=variant == "compressed-storage")
    ds = _with_late_elements(make_dataset(spec(1)))
    if variant == "no-pixels":
        del ds.PixelData
    if variant == "deflated":
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    with TestClient(server.app(), client=("127.0.0.1", 50000)) as client:  # type: ignore[arg-type]
        ids = upload(client, to_bytes(ds))
        tags = client.get(f"/series/{ids['ParentSeries']}/instances-tags?short").json()[ids["ID"]]
    late = [key for key in tags if key > "7fe0,0010"]
    assert late == []
    assert ("7fe0,0010" in tags) is (variant != "no-pixels")
    assert tags.get("7fe0,0010") is None and tags["0010,0020"] == "SUM"


@pytest.mark.parametrize("item", CORPUS, ids=[item.name for item in CORPUS])
def test_reformat_matches_direct_renderings(item: Any) -> None:
    ds = dcmread(io.BytesIO(item.data))
    full = dataset_to_json(ds, TagsFormat.FULL)
    for form in (TagsFormat.SHORT, TagsFormat.SIMPLIFY):
        assert reformat(full, form) == dataset_to_json(dcmread(io.BytesIO(item.data)), form)
