"""`/modalities` and `/queries` over REST, driving real associations (rest/modalities.py,
rest/queries.py): peers are a pynetdicom SCP on port 0 (tests/scu_peer.py), DCMTK's storescp, and
the real Orthanc 1.10.1 (tests marked `orthanc`: one study sent to it with `/store`, one pulled from
it with `/query` + `/retrieve` into dicomvault's own C-STORE SCP)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from starlette.testclient import TestClient

from dicomvault.network.scp import DicomServer
from dicomvault.server import Server
from tests.dicomgen import Spec, make_bytes, make_dataset
from tests.dicomnet import needs_dcmtk, storescp
from tests.orthanc import OrthancServer, delete_all_patients, missing_orthanc_reason, orthanc_available
from tests.scu_peer import Peer
from tests.servers import free_port

pytestmark = pytest.mark.timeout(180)

AET = "VAULT"


@pytest.fixture
def peer() -> Iterator[Peer]:
    with Peer() as started:
        yield started


@pytest.fixture
def vault(make_server: Callable[..., Server], peer: Peer) -> Iterator[tuple[Server, TestClient]]:
    """dicomvault knowing the peer as modality `peer`, and a REST client."""
    server = make_server(DicomAet=AET, DicomScuTimeout=30, DicomModalities={"peer": peer.modality()})
    with TestClient(server.app(), raise_server_exceptions=False, client=("127.0.0.1", 50000)) as client:  # type: ignore[arg-type]
        yield server, client


@pytest.fixture
def client(vault: tuple[Server, TestClient]) -> TestClient:
    return vault[1]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def upload(client: TestClient, *specs: Spec) -> list[dict[str, Any]]:
    answers = []
    for spec in specs:
        answer = client.post("/instances", content=make_bytes(spec))
        assert answer.status_code == 200, answer.text
        answers.append(answer.json())
    return answers


def study_of(client: TestClient, seed: int, count: int) -> str:
    return str(upload(client, *(Spec(seed=seed, instance_number=n + 1) for n in range(count)))[0]["ParentStudy"])


def error(answer: httpx.Response) -> tuple[int, int, str | None]:
    body = answer.json()
    return answer.status_code, body["OrthancStatus"], body.get("Details")


# ---- the registry ----------------------------------------------------------------------------


def test_modalities_registry(client: TestClient, peer: Peer) -> None:
    assert client.get("/modalities").json() == ["peer"]
    expanded = client.get("/modalities?expand").json()
    assert expanded["peer"]["AET"] == "PEER" and expanded["peer"]["Port"] == peer.port
    assert expanded["peer"]["LocalAet"] == "" and expanded["peer"]["AllowTranscoding"] is True
    assert client.get("/modalities/peer/configuration").json() == expanded["peer"]
    assert "store" in client.get("/modalities/peer").json()

    put = client.put("/modalities/other", content=b'["OTHER", "127.0.0.1", 1234]')
    assert put.status_code == 200 and put.content == b""
    assert client.get("/modalities").json() == ["other", "peer"]
    put = client.put("/modalities/other", json={"AET": "OTHER2", "Host": "127.0.0.1", "Port": 1, "LocalAet": "MINE"})
    assert put.status_code == 200
    assert client.get("/modalities/other/configuration").json()["LocalAet"] == "MINE"
    assert client.delete("/modalities/other").status_code == 200
    assert client.get("/modalities").json() == ["peer"]

    assert client.get("/modalities/nope").status_code == 404
    assert error(client.get("/modalities/nope/configuration"))[:2] == (404, 7)
    assert error(client.delete("/modalities/nope"))[:2] == (404, 7)
    assert error(client.put("/modalities/bad", content=b"zz"))[:2] == (400, 15)
    assert error(client.put("/modalities/bad", content=b'["A", "h"]'))[:2] == (400, 15)


# ---- C-ECHO ----------------------------------------------------------------------------------


def test_echo(client: TestClient, peer: Peer) -> None:
    answer = client.post("/modalities/peer/echo")
    assert (answer.status_code, answer.json()) == (200, {})
    assert client.post("/modalities/peer/echo", json={"Timeout": 5}).json() == {}
    assert peer.finds == []
    assert client.post("/modalities/peer/echo", json={"CheckFind": True}).status_code == 200
    assert len(peer.finds) == 1 and peer.finds[0].identifier.QueryRetrieveLevel == "STUDY"
    assert peer.calling_aets == [AET, AET, AET]


def test_echo_errors(client: TestClient, peer: Peer) -> None:
    assert error(client.post("/modalities/nope/echo")) == (404, 7, "No modality with symbolic name: nope")
    assert error(client.post("/modalities/peer/echo", content=b"xx")) == (400, 15, "Cannot parse the JSON body")
    assert error(client.post("/modalities/peer/echo", json={"Timeout": -1})) == (
        400,
        15,
        "Unsigned integer value expected in field: Timeout",
    )
    assert error(client.post("/modalities/peer/echo", json={"Timeout": "a"}))[2] == (
        "Integer value expected in field: Timeout"
    )
    client.put("/modalities/dead", json={"AET": "DEAD", "Host": "127.0.0.1", "Port": closed_port()})
    assert error(client.post("/modalities/dead/echo")) == (
        500,
        9,
        'DicomAssociation - connecting to AET "DEAD": TCP Initialization Error: Connection refused',
    )
    client.put("/modalities/wrong", json={"AET": "WRONG", "Host": "127.0.0.1", "Port": peer.port})
    assert error(client.post("/modalities/wrong/echo"))[2] == (
        'DicomAssociation - connecting to AET "WRONG": DUL Association Rejected'
    )


# ---- C-STORE ---------------------------------------------------------------------------------


def test_store_synchronous_answers_as_orthanc(client: TestClient, peer: Peer) -> None:
    study = study_of(client, seed=1, count=3)
    answer = client.post("/modalities/peer/store", content=study.encode())  # a bare id, as text
    assert answer.status_code == 200
    assert answer.json() == {
        "Description": "REST API",
        "FailedInstancesCount": 0,
        "InstancesCount": 3,
        "LocalAet": AET,
        "ParentResources": [study],
        "RemoteAet": "PEER",
    }
    assert sorted(peer.stored_uids()) == [f"1.2.826.0.1.3680043.10.1234.3.1.{n}" for n in (1, 2, 3)]
    assert peer.associations == 1
    # By InstanceNumber within the series.
    assert peer.stored_uids() == [f"1.2.826.0.1.3680043.10.1234.3.1.{n}" for n in (1, 2, 3)]

    options = {"Resources": [study], "LocalAet": "CALLER", "MoveOriginatorAet": "ORIG", "MoveOriginatorID": 7}
    content = client.post("/modalities/peer/store", json=options).json()
    assert (content["LocalAet"], content["MoveOriginatorAET"], content["MoveOriginatorID"]) == ("CALLER", "ORIG", 7)
    assert {(c.calling_aet, c.originator_aet, c.originator_id) for c in peer.stored[3:]} == {("CALLER", "ORIG", 7)}

    assert client.post("/modalities/peer/store", json=study).json()["InstancesCount"] == 3
    assert client.post("/modalities/peer/store", json=[]).json() == {
        "Description": "REST API",
        "FailedInstancesCount": 0,
        "InstancesCount": 0,
        "LocalAet": AET,
        "RemoteAet": "PEER",
    }


def test_store_of_mixed_levels_and_modality_local_aet(client: TestClient, peer: Peer) -> None:
    first = upload(client, Spec(seed=2, instance_number=1), Spec(seed=2, instance_number=2))
    other = upload(client, Spec(seed=3))[0]
    client.put("/modalities/peer", json=peer.modality(LocalAet="MODLOCAL"))
    answer = client.post(
        "/modalities/peer/store", json={"Resources": [first[0]["ParentSeries"], other["ID"]], "LocalAet": "IGNORED"}
    )
    assert answer.json()["InstancesCount"] == 3
    # The modality's LocalAet wins (Orthanc 1.10.1 uses it too, but reports the other one).
    assert answer.json()["LocalAet"] == "MODLOCAL"
    assert set(peer.calling_aets) == {"MODLOCAL"}


def test_store_errors(client: TestClient, peer: Peer) -> None:
    study = study_of(client, seed=4, count=1)
    unknown = "4e16caa3-61ada511-9ca4cef3-9a76a871-a9005481"
    post = client.post
    assert error(post("/modalities/peer/store", content=f'"{unknown}"'.encode())) == (404, 17, None)
    assert error(post("/modalities/peer/store", json="nothex")) == (
        400,
        15,
        "This string is not a valid Orthanc identifier: nothex",
    )
    assert error(post("/modalities/peer/store", json={}))[2] == 'Missing field in JSON: "Resources"'
    assert error(post("/modalities/peer/store", json={"Resources": "x"}))[2] == (
        'JSON field "Resources" must contain an array'
    )
    assert error(post("/modalities/peer/store", json={"Resources": [1]}))[:2] == (400, 15)
    assert error(post("/modalities/peer/store", json=12))[2] == "Must provide a JSON object, or a JSON array of strings"
    assert error(post("/modalities/peer/store", content=b"garbage"))[2] == "Must provide a JSON value"
    assert error(post("/modalities/peer/store", json={"Resources": [study], "LocalAet": 5}))[:2] == (400, 5)
    assert error(post("/modalities/peer/store", json={"Resources": [study], "MoveOriginatorID": 70000}))[:2] == (400, 3)
    assert error(post("/modalities/peer/store", json={"Resources": [study], "Synchronous": "yes"}))[2] == (
        "Boolean value expected in field: Synchronous"
    )
    assert error(post("/modalities/nope/store", json=[study]))[:2] == (404, 7)
    assert peer.stored == []


def test_store_failures(client: TestClient, peer: Peer) -> None:
    study = study_of(client, seed=5, count=2)
    client.put("/modalities/dead", json={"AET": "DEAD", "Host": "127.0.0.1", "Port": closed_port()})
    assert error(client.post("/modalities/dead/store", json=[study])) == (
        500,
        9,
        'DicomAssociation - connecting to AET "DEAD": TCP Initialization Error: Connection refused',
    )
    # Permissive: the job succeeds and counts what it could not send.
    content = client.post("/modalities/dead/store", json={"Resources": [study], "Permissive": True}).json()
    assert (content["InstancesCount"], content["FailedInstancesCount"]) == (2, 2)
    peer.store_status = 0xA700
    assert error(client.post("/modalities/peer/store", json=[study]))[2] == (
        'C-STORE SCU to AET "PEER" has failed with DIMSE status 0xA700'
    )


def test_store_asynchronous_job(vault: tuple[Server, TestClient], peer: Peer) -> None:
    server, client = vault
    study = study_of(client, seed=6, count=2)
    answer = client.post("/modalities/peer/store", json={"Resources": [study], "Asynchronous": True, "Priority": 3})
    job_id = answer.json()["ID"]
    assert answer.json() == {"ID": job_id, "Path": f"/jobs/{job_id}"}
    assert server.context.jobs.wait(job_id, timeout=60).value == "Success"
    described = server.context.jobs.describe(job_id)
    assert (described["Type"], described["Priority"], described["Progress"]) == ("DicomModalityStore", 3, 100)
    assert described["Content"]["InstancesCount"] == 2
    assert len(peer.stored) == 2


def test_store_exports_are_logged(make_server: Callable[..., Server], peer: Peer) -> None:
    server = make_server(DicomAet=AET, LogExportedResources=True, DicomModalities={"peer": peer.modality()})
    with TestClient(server.app(), client=("127.0.0.1", 50000)) as client:  # type: ignore[arg-type]
        study = study_of(client, seed=7, count=1)
        client.post("/modalities/peer/store", json=[study])
        exports = client.get("/exports").json()["Exports"]
    assert [(e["ID"], e["RemoteModality"], e["ResourceType"]) for e in exports] == [(study, "peer", "Study")]


@needs_dcmtk
def test_store_to_dcmtk_storescp(client: TestClient, tmp_path: Path) -> None:
    study = study_of(client, seed=8, count=3)
    out = tmp_path / "received"
    with storescp(out) as port:
        client.put("/modalities/dcmtk", json={"AET": "STORESCP", "Host": "127.0.0.1", "Port": port})
        answer = client.post("/modalities/dcmtk/store", json=[study])
        assert answer.status_code == 200, answer.text
        assert answer.json()["FailedInstancesCount"] == 0
    assert len(list(out.iterdir())) == 3


def test_store_straight(client: TestClient, peer: Peer) -> None:
    raw = make_bytes(Spec(seed=9))
    answer = client.post("/modalities/peer/store-straight", content=raw)
    assert answer.json() == {
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
        "SOPInstanceUID": "1.2.826.0.1.3680043.10.1234.3.9.1",
    }
    assert client.get("/instances").json() == []  # not stored locally


def test_store_straight_refuses_what_is_not_dicom(client: TestClient, peer: Peer) -> None:
    """Orthanc 1.10.1 parses the body first: 400 "Bad file format" (checked), never a C-STORE."""
    for body in (b"not a DICOM file at all", b"", make_bytes(Spec(seed=9))[:301]):
        answer = client.post("/modalities/peer/store-straight", content=body)
        assert answer.status_code == 400, answer.text
        assert answer.json()["OrthancStatus"] == 15
    assert peer.stored == [] and peer.associations == 0


# ---- C-FIND: /query and /queries -------------------------------------------------------------


def study_answers(identifier: Dataset) -> list[Dataset]:
    out = []
    for i in range(2):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.QueryRetrieveLevel = "STUDY"
        ds.PatientID = f"PID{i}"
        ds.StudyInstanceUID = f"1.2.3.{i}"
        ds.StudyDescription = "Desc"
        ds.AccessionNumber = f"ACC{i}"
        out.append(ds)
    return out


def test_query_answers_and_registry(client: TestClient, peer: Peer) -> None:
    peer.find_answers = study_answers
    body = {"Level": "Study", "Query": {"PatientName": "Doe*", "SeriesDescription": "x"}, "LocalAet": "QAET"}
    answer = client.post("/modalities/peer/query", json=body)
    query_id = answer.json()["ID"]
    assert answer.json() == {"ID": query_id, "Path": f"/queries/{query_id}"}
    sent = peer.finds[0].identifier
    assert "SeriesDescription" not in sent and sent.QueryRetrieveLevel == "STUDY"  # normalized
    assert peer.calling_aets == ["QAET"]

    base = f"/queries/{query_id}"
    assert client.get("/queries").json() == [query_id]
    assert client.get(base).json() == ["answers", "level", "modality", "query", "retrieve"]
    assert client.get(f"{base}/answers").json() == ["0", "1"]
    assert client.get(f"{base}/answers?expand&simplify").json()[1] == {
        "AccessionNumber": "ACC1",
        "PatientID": "PID1",
        "QueryRetrieveLevel": "STUDY",
        "SpecificCharacterSet": "ISO_IR 100",
        "StudyDescription": "Desc",
        "StudyInstanceUID": "1.2.3.1",
    }
    assert client.get(f"{base}/answers?expand").json()[0]["0010,0020"] == {
        "Name": "PatientID",
        "Type": "String",
        "Value": "PID0",
    }
    assert client.get(f"{base}/answers/0/content?short").json()["0020,000d"] == "1.2.3.0"
    assert client.get(f"{base}/answers/0").json() == ["content", "retrieve", "query-series", "query-instances"]
    assert client.get(f"{base}/level").text == "Study"
    assert client.get(f"{base}/modality").text == "peer"
    assert client.get(f"{base}/query?simplify").json() == {"PatientName": "Doe*", "SeriesDescription": "x"}
    assert error(client.get(f"{base}/answers/5/content"))[:2] == (400, 3)
    assert error(client.get(f"{base}/answers/x/content"))[:2] == (400, 5)

    child = client.post(f"{base}/answers/1/query-series", json={"Query": {"Modality": "CT"}}).json()
    sent = peer.finds[1].identifier
    assert (sent.QueryRetrieveLevel, sent.StudyInstanceUID, sent.Modality) == ("SERIES", "1.2.3.1", "CT")
    assert client.get(f"/queries/{child['ID']}/level").text == "Series"
    assert error(client.post(f"{base}/answers/1/query-studies", json={}))[:2] == (404, 17)

    assert client.delete(base).status_code == 200
    assert client.delete(base).status_code == 200
    assert error(client.get(base))[:2] == (404, 17)


def test_query_errors(client: TestClient, peer: Peer) -> None:
    post = client.post
    assert error(post("/modalities/peer/query", json={}))[2] == "The JSON body must contain field Level"
    assert error(post("/modalities/peer/query", json=[]))[2] == "Must provide a JSON object"
    assert error(post("/modalities/peer/query", json={"Level": "Foo"}))[:2] == (400, 3)
    assert error(post("/modalities/peer/query", json={"Level": "Study", "Query": []}))[2] == (
        "The field Query must contain a JSON object"
    )
    assert error(post("/modalities/peer/query", json={"Level": "Study", "Normalize": 1}))[2] == (
        "The field Normalize must contain a Boolean"
    )
    assert error(post("/modalities/peer/query", json={"Level": "Study", "Query": {"Nope": "x"}}))[2] == (
        "Associative array of DICOM tags to strings expected in field: Query"
    )
    assert error(post("/modalities/nope/query", json={"Level": "Study"}))[:2] == (404, 7)
    assert peer.finds == []
    peer.find_status = 0xC000
    assert error(post("/modalities/peer/query", json={"Level": "Study"})) == (
        422,
        9,
        'C-FIND SCU to AET "PEER" has failed with DIMSE status 0xC000 (unable to process - invalid query ?)',
    )


def test_query_registry_is_bounded(make_server: Callable[..., Server], peer: Peer) -> None:
    server = make_server(QueryRetrieveSize=2, DicomModalities={"peer": peer.modality()})
    with TestClient(server.app(), client=("127.0.0.1", 50000)) as client:  # type: ignore[arg-type]
        ids = [client.post("/modalities/peer/query", json={"Level": "Patient"}).json()["ID"] for _ in range(3)]
        assert sorted(client.get("/queries").json()) == sorted(ids[1:])


def test_legacy_find_routes(client: TestClient, peer: Peer) -> None:
    peer.find_answers = study_answers
    answer = client.post("/modalities/peer/find-study", json={"PatientID": "P0001", "PatientName": "x"})
    assert answer.json()[0]["StudyInstanceUID"] == "1.2.3.0"
    sent = peer.finds[0].identifier
    assert "PatientName" not in sent and sent.PatientID == "P0001" and "StudyDate" in sent
    # Not narrow enough: Orthanc asks nothing and answers an empty 400.
    empty = client.post("/modalities/peer/find-series", json={"PatientID": "P0001"})
    assert (empty.status_code, empty.content) == (400, b"")
    assert client.post("/modalities/peer/find-patient", json={}).status_code == 200
    tree = client.post("/modalities/peer/find", json={}).json()
    assert [p["PatientID"] for p in tree] == ["PID0", "PID1"]
    assert tree[0]["Studies"][0]["Series"][0]["StudyInstanceUID"] == "1.2.3.0"


# ---- C-MOVE: /retrieve and /move -------------------------------------------------------------


@pytest.fixture
def destination(peer: Peer) -> Iterator[Peer]:
    with Peer(aet="DEST") as dest:
        peer.destinations = {"DEST": ("127.0.0.1", dest.port)}
        peer.move_sources = lambda identifier: [make_dataset(Spec(seed=50, instance_number=n)) for n in (1, 2)]
        yield dest


def test_retrieve(vault: tuple[Server, TestClient], peer: Peer, destination: Peer) -> None:
    server, client = vault
    peer.find_answers = study_answers
    query_id = client.post("/modalities/peer/query", json={"Level": "Study"}).json()["ID"]
    answer = client.post(f"/queries/{query_id}/answers/1/retrieve", content=b"DEST")
    assert answer.json() == {
        "Description": "REST API",
        "LocalAet": AET,
        "Query": [{"0008,0050": "ACC1", "0008,0052": "STUDY", "0010,0020": "PID1", "0020,000d": "1.2.3.1"}],
        "RemoteAet": "PEER",
    }
    assert peer.moves[0].destination == "DEST" and peer.moves[0].identifier.StudyInstanceUID == "1.2.3.1"
    assert "PatientID" not in peer.moves[0].identifier
    assert len(destination.stored) == 2

    simplified = client.post(f"/queries/{query_id}/retrieve", json={"TargetAet": "DEST", "Simplify": True}).json()
    assert [q["StudyInstanceUID"] for q in simplified["Query"]] == ["1.2.3.0", "1.2.3.1"]
    assert len(destination.stored) == 6

    job = client.post(f"/queries/{query_id}/retrieve", json={"TargetAet": "DEST", "Asynchronous": True}).json()
    assert server.context.jobs.wait(job["ID"], timeout=60).value == "Success"
    assert server.context.jobs.describe(job["ID"])["Type"] == "DicomMoveScu"

    # A failed C-MOVE through a job: no HTTP status of its own (500, as Orthanc).
    failed = client.post(f"/queries/{query_id}/answers/0/retrieve", json={"TargetAet": "UNKNOWN"})
    assert error(failed) == (500, 9, 'C-MOVE SCU to AET "PEER" has failed with DIMSE status 0xA801')


def test_move(vault: tuple[Server, TestClient], peer: Peer, destination: Peer) -> None:
    server, client = vault
    body = {"Level": "Series", "Resources": [{"StudyInstanceUID": "1.2", "SeriesInstanceUID": "1.2.3"}]}
    answer = client.post("/modalities/peer/move", json={**body, "TargetAet": "DEST"})
    assert (answer.status_code, answer.json()) == (200, {})  # Orthanc 1.10.1's answer
    assert peer.moves[0].identifier.QueryRetrieveLevel == "SERIES"
    assert len(destination.stored) == 2
    # No TargetAet: DicomAet, i.e. a retrieve to this server.
    assert error(client.post("/modalities/peer/move", json=body))[1] == 9
    assert peer.moves[1].destination == AET

    job = client.post("/modalities/peer/move", json={**body, "TargetAet": "DEST", "Asynchronous": True}).json()
    assert server.context.jobs.wait(job["ID"], timeout=60).value == "Success"
    assert len(destination.stored) == 4

    post = client.post
    assert error(post("/modalities/peer/move", json={"Level": "Study", "Resources": [{"PatientID": "P"}]})) == (
        400,
        8,
        "Missing tag 0020,000d",
    )
    assert error(post("/modalities/peer/move", json={"Resources": []}))[2] == (
        "Must provide a JSON body containing fields Resources and Level"
    )
    assert error(post("/modalities/peer/move", json={"Level": "Study", "Resources": [{"Nope": "x"}]}))[:2] == (500, 27)
    assert error(post("/modalities/peer/move", json={"Level": "Study", "Resources": ["abc"]}))[:2] == (400, 15)
    assert post("/modalities/peer/move", json={"Level": "Study", "Resources": []}).json() == {}
    peer.move_sources = lambda identifier: []
    peer.destinations = {}


# ---- the real Orthanc 1.10.1 -----------------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    if not orthanc_available():
        pytest.skip(missing_orthanc_reason())
    server = OrthancServer(tmp_path_factory.mktemp("orthanc-scu"), {"DicomAet": "ORTHANC"})
    server.start()
    yield server
    server.stop()


@pytest.fixture
def orthanc_client(orthanc: OrthancServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=orthanc.url, timeout=30) as client:
        delete_all_patients(client)
        yield client


@pytest.mark.orthanc
def test_store_a_study_to_orthanc(client: TestClient, orthanc: OrthancServer, orthanc_client: httpx.Client) -> None:
    study = study_of(client, seed=60, count=3)
    client.put("/modalities/orthanc", json={"AET": "ORTHANC", "Host": "127.0.0.1", "Port": orthanc.dicom_port})
    answer = client.post("/modalities/orthanc/store", json={"Resources": [study]})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["InstancesCount"], answer.json()["FailedInstancesCount"]) == (3, 0)
    # Same public ids on both servers: the study arrived whole, its files byte for byte.
    assert orthanc_client.get("/studies").json() == [study]
    for instance in client.get(f"/studies/{study}/instances").json():
        ours = client.get(f"/instances/{instance['ID']}/file").content
        theirs = orthanc_client.get(f"/instances/{instance['ID']}/file").content
        assert dataset_bytes(ours) == dataset_bytes(theirs)
        assert orthanc_client.get(f"/instances/{instance['ID']}/metadata/RemoteAET").text == AET


def dataset_bytes(raw: bytes) -> bytes:
    group_length = int.from_bytes(raw[140:144], "little")
    return raw[144 + group_length :]


@pytest.mark.orthanc
def test_pull_a_study_from_orthanc(
    make_server: Callable[..., Server], orthanc: OrthancServer, orthanc_client: httpx.Client
) -> None:
    raws = [make_bytes(Spec(seed=61, instance_number=n)) for n in (1, 2)]
    for raw in raws:
        orthanc_client.post("/instances", content=raw).raise_for_status()
    study = orthanc_client.get("/studies").json()[0]
    port = free_port()
    server = make_server(
        DicomAet=AET,
        DicomPort=port,
        DicomModalities={"orthanc": {"AET": "ORTHANC", "Host": "127.0.0.1", "Port": orthanc.dicom_port}},
    )
    scp = DicomServer(server.context)
    scp.start("127.0.0.1", port)
    try:
        # Orthanc answers C-FIND and C-MOVE only to modalities it knows.
        orthanc_client.put("/modalities/vault", json={"AET": AET, "Host": "127.0.0.1", "Port": port}).raise_for_status()
        with TestClient(server.app(), client=("127.0.0.1", 50000)) as client:  # type: ignore[arg-type]
            query = client.post("/modalities/orthanc/query", json={"Level": "Study", "Query": {"PatientID": "P0001"}})
            assert query.status_code == 200, query.text
            answers = client.get(f"/queries/{query.json()['ID']}/answers?expand&simplify").json()
            assert [a["StudyInstanceUID"] for a in answers] == ["1.2.826.0.1.3680043.10.1234.1.61.1"]
            retrieved = client.post(f"/queries/{query.json()['ID']}/retrieve", json={})
            assert retrieved.status_code == 200, retrieved.text
            assert retrieved.json()["RemoteAet"] == "ORTHANC"
            assert client.get("/studies").json() == [study]
            assert len(client.get(f"/studies/{study}/instances").json()) == 2
    finally:
        scp.close()
        orthanc_client.delete("/modalities/vault")
