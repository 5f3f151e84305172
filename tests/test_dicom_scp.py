"""The DICOM server of dicomvault: C-ECHO, C-STORE (every storage SOP class and the usual transfer
syntaxes, stored as received), who may associate and who may ask what, timeouts, maximum PDU, and
`dicomvault serve` running it. Peers are pynetdicom and DCMTK's echoscu/storescu."""

from __future__ import annotations

import io
import logging
import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pydicom
import pynetdicom.association
import pynetdicom.dsutils
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import (
    MPEG2MPML,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.network.scp import DicomServer
from dicomvault.server import Server
from tests.dicomgen import Spec, make_bytes, make_dataset
from tests.dicomnet import (
    AET,
    CT_IMAGE_STORAGE,
    EXPLICIT_LE,
    PEER_AET,
    VERIFICATION,
    DicomNodeFactory,
    associate,
    dicom_node_fixture,  # noqa: F401  (the dicom_node fixture)
    echo,
    instance_ids,
    modality,
    needs_dcmtk,
    run_dcmtk,
    store,
)
from tests.servers import RunningServer, free_port

ALL_FALSE = {
    "DicomAlwaysAllowEcho": False,
    "DicomAlwaysAllowStore": False,
    "DicomAlwaysAllowFind": False,
    "DicomAlwaysAllowGet": False,
    "DicomAlwaysAllowMove": False,
}


def encoded(spec: Spec, transfer_syntax: str) -> bytes:
    """A Part 10 file in `transfer_syntax` (compressed ones get an encapsulated dummy frame: the
    server never decodes pixel data)."""
    ds = make_dataset(spec)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(transfer_syntax)
    uid = pydicom.uid.UID(transfer_syntax)
    if uid.is_compressed:
        ds.PixelData = encapsulate([b"\xff\xd8" + bytes(range(64)) + b"\xff\xd9"])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def dataset_part(raw: bytes) -> bytes:
    """The bytes after the File Meta header of a Part 10 file (its group 0002 elements walked one
    by one, whatever its group length says)."""
    offset = 132
    while offset + 8 <= len(raw) and struct.unpack("<H", raw[offset : offset + 2])[0] == 0x0002:
        vr = raw[offset + 4 : offset + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            offset += 12 + struct.unpack("<I", raw[offset + 8 : offset + 12])[0]
        else:
            offset += 8 + struct.unpack("<H", raw[offset + 6 : offset + 8])[0]
    return raw[offset:]


# ---- C-ECHO ---------------------------------------------------------------------------------------


def test_echo_with_pynetdicom(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node()
    assert echo(node.port) == 0x0000
    assert echo(node.port) == 0x0000  # and again: the server keeps serving


@needs_dcmtk
def test_echo_with_echoscu(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node()
    result = run_dcmtk("echoscu", "-aet", PEER_AET, "-aec", AET, "127.0.0.1", str(node.port))
    assert result.returncode == 0, result.stdout


def test_maximum_pdu_length_is_announced(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node(MaximumPduLength=32768)
    with associate(node.port) as assoc:
        assert assoc.is_established
        assert assoc.acceptor.maximum_length == 32768


def test_port_in_use_is_refused(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node()
    other = DicomServer(node.server.context)
    with pytest.raises(DicomVaultError) as caught:
        other.start("127.0.0.1", node.port)
    assert caught.value.code is ErrorCode.DICOM_PORT_IN_USE
    assert echo(node.port) == 0x0000


# ---- C-STORE --------------------------------------------------------------------------------------


def test_store_records_origin_metadata(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node()
    assert store(node.port, [make_bytes(Spec(seed=1))]) == [0x0000]
    [instance] = instance_ids(node.client)
    metadata = node.client.get(f"/instances/{instance}/metadata?expand").json()
    assert metadata["RemoteAET"] == PEER_AET
    assert metadata["RemoteIP"] == "127.0.0.1"
    assert metadata["CalledAET"] == AET
    assert metadata["Origin"] == "DicomProtocol"
    assert metadata["TransferSyntax"] == EXPLICIT_LE
    assert metadata["SopClassUid"] == CT_IMAGE_STORAGE


def test_store_is_byte_identical_and_already_stored_succeeds(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node()
    raw = make_bytes(Spec(seed=2))
    assert store(node.port, [raw, raw]) == [0x0000, 0x0000]  # the second is AlreadyStored: a success
    [instance] = instance_ids(node.client)
    stored = node.client.get(f"/instances/{instance}/file").content
    assert dataset_part(stored) == dataset_part(raw)
    meta = pydicom.dcmread(io.BytesIO(stored)).file_meta
    assert meta.TransferSyntaxUID == EXPLICIT_LE
    assert meta.SourceApplicationEntityTitle == PEER_AET
    assert meta.MediaStorageSOPInstanceUID == pydicom.dcmread(io.BytesIO(raw)).SOPInstanceUID


@pytest.mark.parametrize(
    "transfer_syntax",
    [
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
        JPEGBaseline8Bit,
        JPEGLSLossless,
        JPEG2000Lossless,
        RLELossless,
        MPEG2MPML,
        "1.2.840.10008.1.2.4.201",  # HTJ2K lossless: newer than Orthanc 1.10.1, stored all the same
    ],
)
def test_store_keeps_the_transfer_syntax(dicom_node: DicomNodeFactory, transfer_syntax: str) -> None:
    node = dicom_node()
    raw = encoded(Spec(seed=3), transfer_syntax)
    assert store(node.port, [raw]) == [0x0000]
    [instance] = instance_ids(node.client)
    assert node.client.get(f"/instances/{instance}/metadata/TransferSyntax").text == transfer_syntax
    stored = node.client.get(f"/instances/{instance}/file").content
    assert dataset_part(stored) == dataset_part(raw)  # never transcoded


def test_preferred_transfer_syntax_is_orthancs(dicom_node: DicomNodeFactory) -> None:
    """Orthanc 1.10.1 picks Explicit LE, then Implicit LE, then Deflated, then the JPEG family."""
    node = dicom_node()
    proposals = [
        ([JPEGBaseline8Bit, ImplicitVRLittleEndian, ExplicitVRLittleEndian], ExplicitVRLittleEndian),
        ([DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian], ImplicitVRLittleEndian),
        ([RLELossless, JPEG2000Lossless, JPEGBaseline8Bit], JPEGBaseline8Bit),
    ]
    for proposed, expected in proposals:
        with associate(node.port, [(CT_IMAGE_STORAGE, proposed)]) as assoc:
            [context] = assoc.accepted_contexts
            assert context.transfer_syntax[0] == expected


def test_group_options_remove_transfer_syntaxes(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node(JpegTransferSyntaxAccepted=False, AcceptedTransferSyntaxes=["1.2.840.10008.1.2*"])
    with associate(node.port, [(CT_IMAGE_STORAGE, [JPEGBaseline8Bit]), (VERIFICATION, [EXPLICIT_LE])]) as assoc:
        assert [str(cx.abstract_syntax) for cx in assoc.accepted_contexts] == [VERIFICATION]


def test_every_storage_sop_class_is_accepted(dicom_node: DicomNodeFactory) -> None:
    from pynetdicom import AllStoragePresentationContexts

    node = dicom_node()
    classes = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    for start in range(0, len(classes), 120):
        batch = classes[start : start + 120]
        with associate(node.port, [(uid, [EXPLICIT_LE]) for uid in batch]) as assoc:
            assert sorted(str(cx.abstract_syntax) for cx in assoc.accepted_contexts) == sorted(batch)


@needs_dcmtk
def test_storescu_stores_a_study(dicom_node: DicomNodeFactory, tmp_path: Path) -> None:
    node = dicom_node()
    paths = []
    for number in range(1, 4):
        path = tmp_path / f"ct{number}.dcm"
        path.write_bytes(make_bytes(Spec(seed=4, instance_number=number)))
        paths.append(str(path))
    result = run_dcmtk("storescu", "-aet", PEER_AET, "-aec", AET, "127.0.0.1", str(node.port), *paths)
    assert result.returncode == 0, result.stdout
    assert len(instance_ids(node.client)) == 3
    studies = node.client.get("/studies?expand").json()
    assert studies[0]["MainDicomTags"]["StudyInstanceUID"] == make_dataset(Spec(seed=4)).StudyInstanceUID


def test_unknown_sop_class_refused_by_default(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node()
    with associate(node.port, [("1.2.3.4.5.6.7", [EXPLICIT_LE]), (VERIFICATION, [EXPLICIT_LE])]) as assoc:
        assert [str(cx.abstract_syntax) for cx in assoc.accepted_contexts] == [VERIFICATION]


def test_unknown_sop_class_accepted_in_promiscuous_mode(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node(UnknownSopClassAccepted=True)
    raw = make_bytes(Spec(seed=5, extra={"SOPClassUID": "1.2.3.4.5.6.7"}))
    ds = pydicom.dcmread(io.BytesIO(raw))
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.UID("1.2.3.4.5.6.7")
    out = io.BytesIO()
    ds.save_as(out)
    assert store(node.port, [out.getvalue()]) == [0x0000]
    [instance] = instance_ids(node.client)
    assert node.client.get(f"/instances/{instance}/metadata/SopClassUid").text == "1.2.3.4.5.6.7"
    assert echo(node.port) == 0x0000


# ---- who may associate, who may ask what ----------------------------------------------------------


def test_called_aet_checked_when_asked(dicom_node: DicomNodeFactory, caplog: pytest.LogCaptureFixture) -> None:
    lenient = dicom_node()
    assert echo(lenient.port, called="ANYTHING") == 0x0000
    strict = dicom_node(DicomCheckCalledAet=True)
    assert echo(strict.port, called=AET.lower()) == 0x0000  # StrictAetComparison is false
    with (
        caplog.at_level(logging.WARNING, logger="dicomvault.network.scp"),
        associate(strict.port, called="ANYTHING") as assoc,
    ):
        assert assoc.is_rejected
        assert assoc.acceptor.primitive is not None
        assert (assoc.acceptor.primitive.result, assoc.acceptor.primitive.diagnostic) == (0x01, 0x07)
    assert any("ANYTHING" in r.getMessage() and "DicomCheckCalledAet" in r.getMessage() for r in caplog.records)
    assert echo(strict.port) == 0x0000


def test_unknown_calling_aet_rejected_when_nothing_is_always_allowed(
    dicom_node: DicomNodeFactory, caplog: pytest.LogCaptureFixture
) -> None:
    node = dicom_node(**ALL_FALSE, DicomModalities={"peer": modality(PEER_AET, 11112)})
    with (
        caplog.at_level(logging.WARNING, logger="dicomvault.network.scp"),
        associate(node.port, calling="STRANGER") as assoc,
    ):
        assert assoc.is_rejected
        assert assoc.acceptor.primitive is not None
        assert assoc.acceptor.primitive.diagnostic == 0x03
    assert any("STRANGER" in r.getMessage() and "rejected" in r.getMessage() for r in caplog.records)
    assert echo(node.port) == 0x0000  # the known modality may


def test_modality_host_checked_when_asked(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node(
        **ALL_FALSE, DicomCheckModalityHost=True, DicomModalities={"peer": modality(PEER_AET, 11112, host="10.1.2.3")}
    )
    with associate(node.port) as assoc:
        assert assoc.is_rejected


def test_any_calling_aet_may_associate_by_default(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node()
    assert echo(node.port, calling="WHOEVER") == 0x0000
    assert store(node.port, [make_bytes(Spec(seed=6))], calling="WHOEVER") == [0x0000]


def test_refused_echo_aborts_the_association(dicom_node: DicomNodeFactory, caplog: pytest.LogCaptureFixture) -> None:
    node = dicom_node(
        DicomAlwaysAllowEcho=False,
        DicomModalities={"peer": modality(PEER_AET, 11112, AllowEcho=False), "other": modality("OTHER", 11113)},
    )
    with caplog.at_level(logging.WARNING, logger="dicomvault.network.scp"):
        assert echo(node.port) is None  # aborted, as Orthanc does
        assert echo(node.port, calling="STRANGER") is None  # not a modality
    messages = [r.getMessage() for r in caplog.records]
    assert any("Echo" in m and PEER_AET in m and "AllowEcho" in m for m in messages)
    assert any("Echo" in m and "STRANGER" in m and "not listed" in m for m in messages)
    assert echo(node.port, calling="OTHER") == 0x0000


def test_refused_store_stores_nothing(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node(
        DicomAlwaysAllowStore=False, DicomModalities={"peer": modality(PEER_AET, 11112, AllowStore=False)}
    )
    assert store(node.port, [make_bytes(Spec(seed=7))]) == [None]
    assert instance_ids(node.client) == []
    assert store(node.port, [make_bytes(Spec(seed=7))], calling="STRANGER") == [None]
    assert instance_ids(node.client) == []
    assert echo(node.port) == 0x0000  # DicomAlwaysAllowEcho is still true


def test_modalities_changed_over_rest_apply_at_once(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node(DicomAlwaysAllowStore=False)
    raw = make_bytes(Spec(seed=8))
    assert store(node.port, [raw]) == [None]
    answer = node.client.put("/modalities/peer", json=modality(PEER_AET, 11112))
    assert answer.status_code == 200, answer.text
    assert store(node.port, [raw]) == [0x0000]


# ---- bad data sets (more hostile input in test_dicom_hostile.py) ----------------------------------


def test_store_of_a_data_set_not_matching_the_request(
    dicom_node: DicomNodeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = dicom_node()
    other = make_dataset(Spec(seed=10))
    original = pynetdicom.dsutils.encode
    # A faulty peer: the request announces one instance, the data set holds another.
    monkeypatch.setattr(pynetdicom.association, "encode", lambda ds, *args: original(other, *args))
    with associate(node.port, [(CT_IMAGE_STORAGE, [EXPLICIT_LE])]) as assoc:
        assert assoc.send_c_store(make_dataset(Spec(seed=9))).Status == 0xA900
    assert instance_ids(node.client) == []
    assert echo(node.port) == 0x0000


def test_store_of_an_undecodable_data_set(dicom_node: DicomNodeFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    node = dicom_node()
    garbage = b"\x08\x00\x16\x00UI\xff\xff" + b"\x00" * 40  # a UI element claiming 65535 bytes
    monkeypatch.setattr(pynetdicom.association, "encode", lambda ds, *args: garbage)
    with associate(node.port, [(CT_IMAGE_STORAGE, [EXPLICIT_LE])]) as assoc:
        assert assoc.send_c_store(make_dataset(Spec(seed=11))).Status == 0xC000
    assert instance_ids(node.client) == []
    assert echo(node.port) == 0x0000


# ---- `dicomvault serve` -----------------------------------------------------------------------------


@needs_dcmtk
def test_serve_runs_the_dicom_server(running_server: Callable[..., RunningServer]) -> None:
    port = free_port()
    srv = running_server(DicomPort=port, DicomAet=AET)
    result = run_dcmtk("echoscu", "-aet", PEER_AET, "-aec", AET, "127.0.0.1", str(port))
    assert result.returncode == 0, result.stdout
    assert "DICOM server listening" in srv.log_path.read_text()


def test_serve_without_dicom_server(running_server: Callable[..., RunningServer]) -> None:
    port = free_port()
    running_server(DicomPort=port, DicomServerEnabled=False)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_server_close_stops_dicom(make_server: Callable[..., Server]) -> None:
    server = make_server()
    port = server.start_dicom("127.0.0.1", 0)
    assert echo(port) == 0x0000
    server.close()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0


def test_close_aborts_associations_in_progress(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node(DicomScpTimeout=30)
    with associate(node.port) as assoc:
        assert assoc.is_established
        node.dicom.close()
        assoc.join(timeout=30)  # the association's thread ends once the server aborted it
        assert assoc.is_aborted
    port = node.dicom.start("127.0.0.1", 0)  # and the server can start again
    assert echo(port) == 0x0000


def test_dicom_port_in_use_refuses_start_up(make_server: Callable[..., Server]) -> None:
    from dicomvault.server import StartupRefused

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        server = make_server()
        with pytest.raises(StartupRefused) as caught:
            server.start_dicom("127.0.0.1", taken.getsockname()[1])
    assert caught.value.code is ErrorCode.DICOM_PORT_IN_USE
