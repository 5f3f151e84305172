"""REST, in process: lists, `?expand`, `?since`/`?limit`, resource descriptions at every level,
children and parent routes, `/system`, `/statistics` and `/tools`."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from tests.dicomgen import Spec, make_bytes

pytestmark = pytest.mark.contract

PATIENT_KEYS = {"ID", "IsStable", "LastUpdate", "MainDicomTags", "Studies", "Type"}
STUDY_KEYS = {
    "ID",
    "IsStable",
    "LastUpdate",
    "MainDicomTags",
    "ParentPatient",
    "PatientMainDicomTags",
    "Series",
    "Type",
}
SERIES_KEYS = {
    "ExpectedNumberOfInstances",
    "ID",
    "Instances",
    "IsStable",
    "LastUpdate",
    "MainDicomTags",
    "ParentStudy",
    "Status",
    "Type",
}
INSTANCE_KEYS = {"FileSize", "FileUuid", "ID", "IndexInSeries", "MainDicomTags", "ParentSeries", "Type"}


@pytest.fixture
def populated(client: TestClient) -> dict[str, str]:
    """Two patients; patient A has two studies (different PatientName copies), 3 instances."""
    ids: dict[str, str] = {}
    for key, spec in {
        "a1": Spec(seed=1, patient_id="A", instance_number=1),
        "a2": Spec(seed=1, patient_id="A", instance_number=2),
        "a3": Spec(seed=2, patient_id="A", patient_name="Other^Name", instance_number=1),
        "b1": Spec(seed=3, patient_id="B", patient_name="Bee^Bob", modality="MR", instance_number=7),
    }.items():
        answer = client.post("/instances", content=make_bytes(spec)).json()
        ids[key] = answer["ID"]
        ids[key + ".series"] = answer["ParentSeries"]
        ids[key + ".study"] = answer["ParentStudy"]
        ids[key + ".patient"] = answer["ParentPatient"]
    return ids


def test_lists_and_expand(client: TestClient, populated: dict[str, str]) -> None:
    patients = client.get("/patients").json()
    assert patients == [populated["a1.patient"], populated["b1.patient"]]
    expanded = client.get("/patients?expand").json()
    assert [p["ID"] for p in expanded] == patients
    assert all(set(p) == PATIENT_KEYS for p in expanded)
    assert client.get("/patients?expand=false").json() == expanded  # Orthanc 1.10.1: presence means expand
    assert len(client.get("/instances").json()) == 4
    assert len(client.get("/studies").json()) == 3


def test_since_and_limit(client: TestClient, populated: dict[str, str]) -> None:
    everything = client.get("/instances").json()
    assert client.get("/instances?since=1&limit=2").json() == everything[1:3]
    assert client.get("/instances?since=3&limit=10").json() == everything[3:]
    assert [i["ID"] for i in client.get("/instances?since=0&limit=1&expand").json()] == everything[:1]
    for bad in ("/instances?since=1", "/instances?limit=1"):
        answer = client.get(bad)
        assert answer.status_code == 400 and answer.json()["OrthancStatus"] == 8
    assert client.get("/instances?since=x&limit=1").json()["OrthancStatus"] == 5
    # Orthanc 1.10.1: limit 0 answers nothing, a negative limit means all, a negative since means 0.
    assert client.get("/instances?since=0&limit=0").json() == []
    assert client.get("/instances?since=1&limit=-1").json() == everything[1:]
    assert client.get("/instances?since=-5&limit=2").json() == everything[:2]


def test_descriptions_per_level(client: TestClient, populated: dict[str, str]) -> None:
    patient = client.get(f"/patients/{populated['a1.patient']}").json()
    assert set(patient) == PATIENT_KEYS and patient["Type"] == "Patient"
    assert patient["MainDicomTags"]["PatientID"] == "A"
    assert patient["Studies"] == [populated["a1.study"], populated["a3.study"]]
    assert re.fullmatch(r"\d{8}T\d{6}", patient["LastUpdate"]) and patient["IsStable"] is False

    study = client.get(f"/studies/{populated['a3.study']}").json()
    assert set(study) == STUDY_KEYS and study["ParentPatient"] == populated["a1.patient"]
    assert study["PatientMainDicomTags"]["PatientName"] == "Other^Name"  # the study's own copy
    assert "PatientName" not in study["MainDicomTags"]
    assert study["MainDicomTags"]["StudyDescription"] == "Chest"

    series = client.get(f"/series/{populated['a1.series']}").json()
    assert set(series) == SERIES_KEYS and series["Status"] == "Unknown" and series["ExpectedNumberOfInstances"] is None
    assert series["Instances"] == [populated["a1"], populated["a2"]]
    assert series["MainDicomTags"]["Modality"] == "CT"

    instance = client.get(f"/instances/{populated['b1']}").json()
    assert set(instance) == INSTANCE_KEYS and instance["IndexInSeries"] == 7
    assert instance["ParentSeries"] == populated["b1.series"]
    assert instance["FileSize"] == len(
        make_bytes(Spec(seed=3, patient_id="B", patient_name="Bee^Bob", modality="MR", instance_number=7))
    )


def test_series_status_from_expected_instances(client: TestClient) -> None:
    def upload(number: int) -> str:
        spec = Spec(seed=20, instance_number=number, extra={"CardiacNumberOfImages": 2})
        return str(client.post("/instances", content=make_bytes(spec)).json()["ParentSeries"])

    series = upload(1)
    answer = client.get(f"/series/{series}").json()
    assert (answer["ExpectedNumberOfInstances"], answer["Status"]) == (2, "Missing")
    upload(2)
    assert client.get(f"/series/{series}").json()["Status"] == "Complete"
    upload(5)
    assert client.get(f"/series/{series}").json()["Status"] == "Inconsistent"


def test_children_and_parents(client: TestClient, populated: dict[str, str]) -> None:
    pid, sid = populated["a1.patient"], populated["a1.study"]
    assert [s["ID"] for s in client.get(f"/patients/{pid}/studies").json()] == [sid, populated["a3.study"]]
    assert len(client.get(f"/patients/{pid}/series").json()) == 2
    assert [i["ID"] for i in client.get(f"/patients/{pid}/instances").json()] == [
        populated["a1"],
        populated["a2"],
        populated["a3"],
    ]
    assert [i["ID"] for i in client.get(f"/studies/{sid}/instances").json()] == [populated["a1"], populated["a2"]]
    assert client.get(f"/series/{populated['a1.series']}/instances").json()[0]["Type"] == "Instance"
    assert client.get(f"/instances/{populated['a2']}/patient").json()["ID"] == pid
    assert client.get(f"/instances/{populated['a2']}/study").json()["ID"] == sid
    assert client.get(f"/instances/{populated['a2']}/series").json()["ID"] == populated["a1.series"]
    assert client.get(f"/series/{populated['a1.series']}/patient").json()["Type"] == "Patient"
    assert client.get(f"/studies/{sid}/patient").json()["ID"] == pid
    # wrong level for the id
    assert client.get(f"/studies/{pid}/series").status_code == 404


def test_trailing_slash_is_tolerated(client: TestClient, populated: dict[str, str]) -> None:
    assert client.get("/patients/").json() == client.get("/patients").json()


def test_system(client: TestClient) -> None:
    system = client.get("/system").json()
    assert system["ApiVersion"] == 16 and system["DatabaseVersion"] == 6 and system["Version"] == "1.10.1"
    assert system["DicomAet"] == "ORTHANC" and system["Name"] == ""
    assert {"DicomPort", "HttpPort", "PluginsEnabled", "StorageAreaPlugin", "DatabaseBackendPlugin"} <= set(system)


def test_statistics_follow_uploads_and_deletes(client: TestClient, populated: dict[str, str]) -> None:
    stats = client.get("/statistics").json()
    assert (stats["CountPatients"], stats["CountStudies"], stats["CountSeries"], stats["CountInstances"]) == (
        2,
        3,
        3,
        4,
    )
    assert int(stats["TotalDiskSize"]) == int(stats["TotalUncompressedSize"]) > 0
    client.delete(f"/patients/{populated['a1.patient']}")
    stats = client.get("/statistics").json()
    assert (stats["CountPatients"], stats["CountInstances"]) == (1, 1)


def test_tools(client: TestClient) -> None:
    assert re.fullmatch(r"\d{8}T\d{6}", client.get("/tools/now").text)
    uid = client.get("/tools/generate-uid?level=study").text
    assert re.fullmatch(r"[0-9.]{10,64}", uid)
    assert client.get("/tools/generate-uid?level=study").text != uid
    assert client.get("/tools/generate-uid?level=nope").status_code == 404  # as Orthanc 1.10.1
    assert client.get("/tools/generate-uid").status_code == 404
    patient = client.get("/tools/generate-uid?level=patient")
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", patient.text)
    assert patient.headers["content-type"] == "text/plain"


def test_wrong_method(client: TestClient) -> None:
    assert client.put("/patients").status_code == 405
