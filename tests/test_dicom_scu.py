"""The SCU core over real associations (network/scu.py, network/queries.py): parameters, errors,
C-ECHO, C-FIND identifiers and answers, C-MOVE identifiers, C-STORE as stored, the query registry.
Peers: a pynetdicom SCP on port 0 (tests/scu_peer.py) and a closed port."""

from __future__ import annotations

import contextlib
import io
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest
from pydicom import dcmread
from pydicom.datadict import dictionary_keyword
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from dicomvault.config import Config
from dicomvault.dicom.tags_json import TagsFormat
from dicomvault.enums import ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.network.modalities import RemoteModality
from dicomvault.network.queries import (
    QueryRegistry,
    QueryRetrieve,
    find,
    find_identifier,
    move,
    move_identifier,
)
from dicomvault.network.scu import (
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_FIND,
    ScuAssociation,
    ScuParameters,
    StoreClient,
    control_contexts,
    prepare_instance,
    scu_parameters,
)
from tests.dicomgen import Spec, make_bytes, make_dataset
from tests.scu_peer import HOLD_LIMIT, Peer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def peer() -> Iterator[Peer]:
    with Peer() as started:
        yield started


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config(DicomAet="VAULT", DicomScuTimeout=30)


def params_for(config: Config, peer: Peer, **changes: object) -> ScuParameters:
    modality = RemoteModality(peer.aet, "127.0.0.1", peer.port, **changes)  # type: ignore[arg-type]
    return scu_parameters(config, modality)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def file_bytes(ds: Dataset, syntax: str = ExplicitVRLittleEndian) -> bytes:
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True, enforce_file_format=True)
    return out.getvalue()


def dataset_part(raw: bytes) -> bytes:
    """The bytes after the File Meta header: what C-STORE carries."""
    ds = dcmread(io.BytesIO(raw), stop_before_pixels=True)
    offset = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    return raw[offset:]


# ---- parameters and association errors -------------------------------------------------------


def test_calling_aet_and_timeout_follow_orthanc(config: Config) -> None:
    plain = RemoteModality("PEER", "127.0.0.1", 104)
    assert scu_parameters(config, plain).local_aet == "VAULT"
    assert scu_parameters(config, plain, local_aet="ASKED").local_aet == "ASKED"
    own = RemoteModality("PEER", "127.0.0.1", 104, local_aet="MODLOCAL", timeout=7)
    # Orthanc 1.10.1: the modality's LocalAet wins over the request's.
    assert scu_parameters(config, own, local_aet="ASKED").local_aet == "MODLOCAL"
    assert scu_parameters(config, plain).timeout == 30  # DicomScuTimeout
    assert scu_parameters(config, own).timeout == 7
    assert scu_parameters(config, own, timeout=0).timeout == 0


def test_echo_sets_tcp_nodelay_and_calling_aet(config: Config, peer: Peer) -> None:
    with ScuAssociation(params_for(config, peer, local_aet="MINE"), control_contexts()) as association:
        assoc = association.open()
        raw = assoc.dul.socket.socket if assoc.dul.socket is not None else None
        assert raw is not None and raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        association.echo()
    assert peer.calling_aets == ["MINE"]


def test_unreachable_modality_is_orthancs_network_error(config: Config) -> None:
    params = scu_parameters(config, RemoteModality("DEAD", "127.0.0.1", closed_port()))
    with pytest.raises(DicomVaultError) as caught, ScuAssociation(params, control_contexts()) as association:
        association.echo()
    assert caught.value.code == ErrorCode.NETWORK_PROTOCOL
    assert (
        caught.value.details
        == 'DicomAssociation - connecting to AET "DEAD": TCP Initialization Error: Connection refused'
    )
    assert caught.value.http_status == 500


def test_rejected_association(config: Config, peer: Peer) -> None:
    params = scu_parameters(config, RemoteModality("WRONG", "127.0.0.1", peer.port))
    with pytest.raises(DicomVaultError) as caught, ScuAssociation(params, control_contexts()) as association:
        association.echo()
    assert caught.value.details == 'DicomAssociation - connecting to AET "WRONG": DUL Association Rejected'


def test_echo_failure_status(config: Config, peer: Peer) -> None:
    peer.echo_status = 0x0110
    with pytest.raises(DicomVaultError) as caught, ScuAssociation(params_for(config, peer), control_contexts()) as a:
        a.echo()
    assert caught.value.code == ErrorCode.NETWORK_PROTOCOL
    assert "has failed with DIMSE status 0x0110" in (caught.value.details or "")


def test_no_answer_within_the_timeout(config: Config, peer: Peer) -> None:
    peer.find_gate.clear()
    try:
        params = scu_parameters(config, RemoteModality(peer.aet, "127.0.0.1", peer.port), timeout=1)
        with pytest.raises(DicomVaultError) as caught, ScuAssociation(params, control_contexts()) as association:
            find(association, ResourceType.STUDY, {}, normalize=True, default_encoding="Latin1")
    finally:
        peer.find_gate.set()
    assert caught.value.code == ErrorCode.NETWORK_PROTOCOL
    assert (caught.value.details or "").startswith('DicomAssociation - C-FIND to AET "PEER": ')


# ---- C-FIND ----------------------------------------------------------------------------------


def _raw(identifier: Dataset, keyword: str) -> str:
    """An element's value as sent (its bytes, padding removed), without pydicom's conversions."""
    elem = identifier.get_item(keyword)
    assert elem is not None
    data = elem.value if isinstance(elem.value, bytes) else str(elem.value).encode("latin-1")
    return data.decode("latin-1").rstrip(" \0")


def _values(identifier: Dataset) -> dict[str, str]:
    keywords = [dictionary_keyword(elem.tag) for elem in identifier]
    return {keyword: _raw(identifier, keyword) for keyword in keywords}


def test_find_identifier_is_normalized_as_orthanc() -> None:
    query = {0x00100010: "Doe*", 0x00080020: "2020-", 0x0008103E: "dropped", 0x00080061: "CT", 0x00091001: "x"}
    ids = find_identifier(ResourceType.STUDY, query, normalize=True, manufacturer="Generic", charset="ISO_IR 100")
    assert _values(ids) == {
        "SpecificCharacterSet": "ISO_IR 100",
        "StudyDate": "2020-",
        "AccessionNumber": "",
        "QueryRetrieveLevel": "STUDY",
        "ModalitiesInStudy": "CT",
        "PatientName": "Doe*",
        "PatientID": "",
        "StudyInstanceUID": "",
    }
    raw = find_identifier(
        ResourceType.INSTANCE, {0x0008103E: "kept"}, normalize=False, manufacturer="GE", charset="ISO_IR 192"
    )
    values = _values(raw)
    assert values["SeriesDescription"] == "kept" and values["QueryRetrieveLevel"] == "IMAGE"
    # GE: the added identifying tags are a universal "*"
    assert all(values[k] == "*" for k in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID"))
    dates = find_identifier(
        ResourceType.STUDY, {0x00080020: "*", 0x00100010: "*"}, normalize=True,
        manufacturer="GenericNoWildcardInDates", charset="ISO_IR 100",
    )  # fmt: skip
    assert _values(dates)["StudyDate"] == "" and _values(dates)["PatientName"] == "*"


def test_find_values_reach_the_peer_byte_for_byte(config: Config, peer: Peer) -> None:
    """Ranges in numbers and wildcards in UIDs are sent as given, non-ASCII text in the charset."""
    query = {0x00200013: "1-3", 0x0020000D: "1.2.*", 0x00100010: "Müller*"}
    with ScuAssociation(params_for(config, peer), control_contexts()) as association:
        find(association, ResourceType.INSTANCE, query, normalize=False, default_encoding="Latin1")
    sent = peer.finds[0].identifier
    assert _raw(sent, "SpecificCharacterSet") == "ISO_IR 100"
    assert _raw(sent, "InstanceNumber") == "1-3"
    assert _raw(sent, "StudyInstanceUID") == "1.2.*"
    assert _raw(sent, "PatientName") == "Müller*"  # Latin-1 bytes


def test_find_models_answers_and_rendering(config: Config, peer: Peer) -> None:
    def answers(identifier: Dataset) -> list[Dataset]:
        out = []
        for i in range(2):
            ds = Dataset()
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.PatientID = f"P{i}"
            ds.PatientName = "Müller^Jörg"
            ds.ModalitiesInStudy = ["CT", "MR"]
            ds.add_new(0x00091001, "LO", "private")
            ds.add_new(0x0040A730, "SQ", [Dataset()])
            out.append(ds)
        return out

    peer.find_answers = answers
    with ScuAssociation(params_for(config, peer), control_contexts()) as association:
        patients = find(association, ResourceType.PATIENT, {}, normalize=True, default_encoding="Latin1")
        studies = find(association, ResourceType.STUDY, {}, normalize=True, default_encoding="Latin1")
    assert [r.sop_class_uid for r in peer.finds] == [PATIENT_ROOT_FIND, STUDY_ROOT_FIND]
    assert peer.associations == 1
    assert len(patients) == 2 and len(studies) == 2
    # Sequences and private elements are left out; QueryRetrieveLevel is added when missing.
    assert studies[0].render(TagsFormat.SIMPLIFY) == {
        "ModalitiesInStudy": "CT\\MR",
        "PatientID": "P0",
        "PatientName": "Müller^Jörg",
        "QueryRetrieveLevel": "STUDY",
        "SpecificCharacterSet": "ISO_IR 100",
    }
    assert studies[1].render(TagsFormat.SHORT)["0010,0020"] == "P1"
    assert studies[0].render(TagsFormat.FULL)["0008,0052"] == {
        "Name": "QueryRetrieveLevel",
        "Type": "String",
        "Value": "STUDY",
    }


@pytest.mark.parametrize(("status", "http"), [(0xC000, 422), (0xA700, 500)])
def test_find_failure_status(config: Config, peer: Peer, status: int, http: int) -> None:
    peer.find_status = status
    with pytest.raises(DicomVaultError) as caught, ScuAssociation(params_for(config, peer), control_contexts()) as a:
        find(a, ResourceType.STUDY, {}, normalize=True, default_encoding="Latin1")
    assert caught.value.code == ErrorCode.NETWORK_PROTOCOL
    assert caught.value.http_status == http
    assert (caught.value.details or "").startswith(
        f'C-FIND SCU to AET "PEER" has failed with DIMSE status 0x{status:04X}'
    )


# ---- C-MOVE ----------------------------------------------------------------------------------


def test_move_identifiers_keep_the_identifying_tags() -> None:
    resource = {0x0020000D: "1.2.3", 0x0020000E: "1.2.3.4", 0x00100010: "ignored", 0x00100020: "P"}
    series = move_identifier(ResourceType.SERIES, resource, manufacturer="Generic", charset="ISO_IR 100")
    assert _values(series) == {
        "SpecificCharacterSet": "ISO_IR 100",
        "QueryRetrieveLevel": "SERIES",
        "StudyInstanceUID": "1.2.3",
        "SeriesInstanceUID": "1.2.3.4",
    }
    with pytest.raises(DicomVaultError) as caught:
        move_identifier(ResourceType.STUDY, {0x00100020: "P"}, manufacturer="Generic", charset="ISO_IR 100")
    assert (caught.value.code, caught.value.details) == (ErrorCode.BAD_REQUEST, "Missing tag 0020,000d")


def test_move_sends_to_the_destination(config: Config, peer: Peer) -> None:
    with Peer(aet="DEST") as destination:
        peer.destinations = {"DEST": ("127.0.0.1", destination.port)}
        peer.move_sources = lambda identifier: [make_dataset(Spec(seed=5, instance_number=n)) for n in (1, 2)]
        with ScuAssociation(params_for(config, peer), control_contexts()) as association:
            move(association, ResourceType.PATIENT, {0x00100020: "P0001"}, "DEST", default_encoding="Latin1")
            with pytest.raises(DicomVaultError) as caught:
                move(association, ResourceType.STUDY, {0x0020000D: "1.2"}, "UNKNOWN", default_encoding="Latin1")
        assert len(destination.stored) == 2
    # Patient Root at the patient level when the peer accepts it (Orthanc always uses Study Root).
    assert peer.moves[0].sop_class_uid == PATIENT_ROOT_MOVE
    assert peer.moves[0].destination == "DEST"
    assert caught.value.details == 'C-MOVE SCU to AET "PEER" has failed with DIMSE status 0xA801'


# ---- C-STORE ---------------------------------------------------------------------------------


def test_store_sends_the_stored_bytes_in_their_own_transfer_syntax(config: Config, peer: Peer) -> None:
    explicit = make_bytes(Spec(seed=1))
    implicit = file_bytes(make_dataset(Spec(seed=2)), ImplicitVRLittleEndian)
    deflated = file_bytes(make_dataset(Spec(seed=3)), DeflatedExplicitVRLittleEndian)
    jpeg_ds = make_dataset(Spec(seed=4))
    jpeg_ds.PixelData = encapsulate([b"\xff\xd8fake jpeg\xff\xd9"])
    jpeg_ds["PixelData"].VR = "OB"
    jpeg_ds.PhotometricInterpretation = "YBR_FULL_422"
    jpeg = file_bytes(jpeg_ds, JPEGBaseline8Bit)
    client = StoreClient(params_for(config, peer))
    try:
        for raw in (explicit, implicit, deflated, jpeg):
            client.store(raw)
    finally:
        client.close()
    assert [call.transfer_syntax for call in peer.stored] == [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        JPEGBaseline8Bit,
    ]
    for raw, call in zip((explicit, implicit, jpeg), (peer.stored[0], peer.stored[1], peer.stored[3]), strict=True):
        assert call.dataset_bytes == dataset_part(raw)
    # A new (SOP class, transfer syntax) pair means a new negotiation.
    assert peer.associations == 4


def test_store_proposes_the_planned_pairs_at_once(config: Config, peer: Peer) -> None:
    raws = [make_bytes(Spec(seed=10, instance_number=n)) for n in range(3)]
    raws.append(file_bytes(make_dataset(Spec(seed=11)), ImplicitVRLittleEndian))
    planned = [(prepare_instance(r).sop_class_uid, prepare_instance(r).transfer_syntax) for r in raws]
    client = StoreClient(params_for(config, peer), planned)
    try:
        for raw in raws:
            client.store(raw, originator_aet="MOVER", originator_id=42)
    finally:
        client.close()
    assert peer.associations == 1
    assert {(c.originator_aet, c.originator_id) for c in peer.stored} == {("MOVER", 42)}


def test_store_refused_transfer_syntax_is_not_transcoded(config: Config) -> None:
    with Peer(transfer_syntaxes=[ImplicitVRLittleEndian]) as strict:
        client = StoreClient(params_for(config, strict))
        try:
            with pytest.raises(DicomVaultError) as caught:
                client.store(make_bytes(Spec(seed=20)))  # explicit VR little endian
            client.store(file_bytes(make_dataset(Spec(seed=21)), ImplicitVRLittleEndian))
        finally:
            client.close()
        assert caught.value.code == ErrorCode.NO_PRESENTATION_CONTEXT
        assert "does not transcode" in (caught.value.details or "")
        assert [c.transfer_syntax for c in strict.stored] == [ImplicitVRLittleEndian]


def test_store_failure_status_keeps_the_association(config: Config, peer: Peer) -> None:
    peer.store_status = 0xA700
    client = StoreClient(params_for(config, peer))
    try:
        with pytest.raises(DicomVaultError) as caught:
            client.store(make_bytes(Spec(seed=30)))
        peer.store_status = 0xB000  # a warning is a success, as for Orthanc
        client.store(make_bytes(Spec(seed=31)))
    finally:
        client.close()
    assert caught.value.details == 'C-STORE SCU to AET "PEER" has failed with DIMSE status 0xA700'
    assert peer.associations == 1


def test_prepare_instance_gives_a_header_to_a_bare_dataset() -> None:
    raw = make_bytes(Spec(seed=40))
    bare = dataset_part(raw)
    outgoing = prepare_instance(bare)
    assert outgoing.transfer_syntax == ImplicitVRLittleEndian or outgoing.transfer_syntax == ExplicitVRLittleEndian
    assert outgoing.part10[128:132] == b"DICM"
    assert outgoing.part10.endswith(bare)
    assert prepare_instance(raw).part10 is raw
    with pytest.raises(DicomVaultError) as caught:
        prepare_instance(b"not dicom at all", "PEER")
    assert caught.value.code == ErrorCode.NO_SOP_CLASS_OR_INSTANCE


# ---- the registry ----------------------------------------------------------------------------


def test_query_registry_drops_the_least_recently_used() -> None:
    registry = QueryRegistry(2)
    modality = RemoteModality("A", "h", 1)

    def query() -> QueryRetrieve:
        return QueryRetrieve("a", modality, ResourceType.STUDY, (), True, None, None, ())

    first, second = registry.add(query()), registry.add(query())
    registry.get(first)  # now the most recent
    third = registry.add(query())
    assert set(registry.ids()) == {first, third}
    with pytest.raises(DicomVaultError) as caught:
        registry.get(second)
    assert caught.value.code == ErrorCode.UNKNOWN_RESOURCE
    registry.remove(second)  # no error, as Orthanc


def test_concurrent_associations(config: Config, peer: Peer) -> None:
    errors: list[BaseException] = []

    def echo() -> None:
        try:
            with ScuAssociation(params_for(config, peer), control_contexts()) as association:
                association.echo()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=echo) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and peer.associations == 4


# ---- peers that do not play by the rules -----------------------------------------------------


@contextlib.contextmanager
def raw_peer(reply: bytes) -> Iterator[int]:
    """A TCP server that reads the association request, answers `reply` and then stays silent
    until the test is over."""
    done = threading.Event()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(reply)
            done.wait(HOLD_LIMIT)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        done.set()
        thread.join(HOLD_LIMIT)
        server.close()


@pytest.mark.parametrize(
    "reply",
    [
        struct.pack(">BBI", 0x02, 0, 0xFFFFFFF0),  # an A-ASSOCIATE-AC claiming 4 GiB
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",  # not DICOM at all
        struct.pack(">BBI", 0x02, 0, 200) + b"\x00\x01",  # stalls in the middle of a PDU
    ],
    ids=["oversized-length", "http", "stalled"],
)
def test_misbehaving_peer_fails_the_association_cleanly(config: Config, reply: bytes) -> None:
    with raw_peer(reply) as port:
        params = scu_parameters(config, RemoteModality("ROGUE", "127.0.0.1", port), timeout=2)
        with pytest.raises(DicomVaultError) as caught, ScuAssociation(params, control_contexts()) as association:
            association.echo()
    assert caught.value.code == ErrorCode.NETWORK_PROTOCOL
    assert (caught.value.details or "").startswith('DicomAssociation - connecting to AET "ROGUE": ')
