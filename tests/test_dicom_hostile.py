"""Bad input on the DICOM port: PDU length fields claiming gigabytes, an HTTP request, peers that
stall or vanish in the middle of a PDU or of a data set, broken identifiers. After each, the server
must still serve another association (C-ECHO), must not have buffered what the peer claimed, and
must have stored nothing half-way. Raw sockets play the hostile peers (PS3.8 PDUs built here)."""

from __future__ import annotations

import contextlib
import resource
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pynetdicom.dsutils
import pytest
from pynetdicom import evt
from pynetdicom.pdu import P_DATA_TF

from tests.dicomgen import Spec, make_bytes, make_dataset
from tests.dicomnet import (
    AET,
    CT_IMAGE_STORAGE,
    EXPLICIT_LE,
    PEER_AET,
    STUDY_ROOT_FIND,
    STUDY_ROOT_MOVE,
    VERIFICATION,
    DicomNodeFactory,
    associate,
    dicom_node_fixture,  # noqa: F401  (the dicom_node fixture)
    echo,
    find,
    instance_ids,
    move,
    store,
)
from tests.test_dicom_scp import dataset_part

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
A_ASSOCIATE_AC = 0x02
A_ABORT = 0x07
MIB = 1024 * 1024


# ---- raw PDUs (PS3.8 9.3) ---------------------------------------------------------------------------


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def associate_rq(contexts: list[tuple[str, str]] | None = None, calling: str = PEER_AET, called: str = AET) -> bytes:
    """An A-ASSOCIATE-RQ proposing one transfer syntax per abstract syntax (ids 1, 3, 5...)."""
    body = struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + b"\0" * 32
    body += _item(0x10, APPLICATION_CONTEXT.encode())
    for index, (abstract, transfer) in enumerate(contexts or [(VERIFICATION, EXPLICIT_LE)]):
        sub = _item(0x30, abstract.encode()) + _item(0x40, transfer.encode())
        body += _item(0x20, struct.pack(">BBBB", 1 + 2 * index, 0, 0, 0) + sub)
    user = _item(0x51, struct.pack(">I", 16384)) + _item(0x52, b"1.2.826.0.1.3680043.10.1234.99")
    body += _item(0x50, user)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def pdu_header(pdu_type: int, length: int) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, length)


def read_pdu(sock: socket.socket) -> tuple[int, bytes] | None:
    """The next PDU (type, body), or None when the connection is closed."""
    header = _read_exactly(sock, 6)
    if header is None:
        return None
    pdu_type, _, length = struct.unpack(">BBI", header)
    body = _read_exactly(sock, length)
    return None if body is None else (pdu_type, body)


def _read_exactly(sock: socket.socket, count: int) -> bytes | None:
    data = b""
    while len(data) < count:
        try:
            chunk = sock.recv(count - len(data))
        except (ConnectionResetError, TimeoutError):
            return None
        if not chunk:
            return None
        data += chunk
    return data


def pdus_until_closed(sock: socket.socket) -> list[int]:
    """The types of the PDUs the server sends until it closes the connection."""
    types = []
    while (pdu := read_pdu(sock)) is not None:
        types.append(pdu[0])
    return types


@contextmanager
def raw_connection(port: int, timeout: float = 30) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        yield sock
    finally:
        sock.close()


def send_junk(sock: socket.socket, total: int) -> int:
    """Send up to `total` junk bytes; how many went out before the server closed the connection."""
    chunk = b"\xa5" * MIB
    sent = 0
    try:
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError, TimeoutError):
        pass
    return sent


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---- PDU length fields --------------------------------------------------------------------------------


def test_oversized_association_request_is_aborted(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node()
    before = peak_rss_mib()
    with raw_connection(node.port) as sock:
        sock.sendall(pdu_header(0x01, 0xFFFFFFF0))  # an A-ASSOCIATE-RQ claiming 4 GiB
        sent = send_junk(sock, 256 * MIB)
        assert sent < 256 * MIB  # the server stopped reading and closed the connection
        assert pdus_until_closed(sock) in ([A_ABORT], [])
    assert peak_rss_mib() - before < 100  # nothing like the claimed length was buffered
    assert echo(node.port) == 0x0000


def test_oversized_pdata_after_association_is_aborted(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node()
    before = peak_rss_mib()
    with raw_connection(node.port) as sock:
        sock.sendall(associate_rq())
        reply = read_pdu(sock)
        assert reply is not None and reply[0] == A_ASSOCIATE_AC
        sock.sendall(pdu_header(0x04, 2**31))  # a P-DATA-TF far above our maximum PDU length
        sent = send_junk(sock, 256 * MIB)
        assert sent < 256 * MIB
        assert pdus_until_closed(sock) in ([A_ABORT], [])
    assert peak_rss_mib() - before < 100
    assert echo(node.port) == 0x0000


def test_http_request_on_the_dicom_port(dicom_node: DicomNodeFactory, caplog: pytest.LogCaptureFixture) -> None:
    node = dicom_node()
    with raw_connection(node.port) as sock:
        sock.sendall(b"GET /system HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n")
        assert pdus_until_closed(sock) in ([A_ABORT], [])
    assert any("not a DICOM PDU" in r.getMessage() for r in caplog.records)
    assert echo(node.port) == 0x0000


def test_unknown_pdu_type_inside_an_association(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node()
    with raw_connection(node.port) as sock:
        sock.sendall(associate_rq())
        assert read_pdu(sock) is not None
        sock.sendall(pdu_header(0x3C, 4) + b"\0" * 4)
        assert pdus_until_closed(sock) in ([A_ABORT], [])
    assert echo(node.port) == 0x0000


# ---- stalled and vanished peers --------------------------------------------------------------------------


def test_peer_stalling_mid_pdu_is_dropped(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node(DicomScpTimeout=1)
    with raw_connection(node.port, timeout=60) as sock:
        request = associate_rq()
        sock.sendall(request[: len(request) // 2])  # then nothing: the PDU never completes
        assert pdus_until_closed(sock) in ([A_ABORT], [])  # returns once the server gave up
    assert echo(node.port) == 0x0000


def test_idle_association_is_closed(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node(DicomScpTimeout=1)
    with raw_connection(node.port, timeout=60) as sock:
        sock.sendall(associate_rq())
        reply = read_pdu(sock)
        assert reply is not None and reply[0] == A_ASSOCIATE_AC
        # No DIMSE request follows: after DicomScpTimeout the server aborts.
        assert pdus_until_closed(sock) in ([A_ABORT], [])
    assert echo(node.port) == 0x0000


def test_peer_trickling_a_pdu_is_dropped(dicom_node: DicomNodeFactory) -> None:
    """One byte at a time, each within the socket timeout: the whole PDU still has a deadline."""
    node = dicom_node(DicomScpTimeout=1)
    stop = threading.Event()
    with raw_connection(node.port, timeout=60) as sock:
        sock.sendall(associate_rq())
        assert read_pdu(sock) is not None
        sock.sendall(pdu_header(0x04, 1000))

        def trickle() -> None:
            try:
                while not stop.wait(0.3):
                    sock.sendall(b"\0")
            except OSError:
                pass

        writer = threading.Thread(target=trickle, daemon=True)
        writer.start()
        try:
            assert pdus_until_closed(sock) in ([A_ABORT], [])
        finally:
            stop.set()
            writer.join()
    assert echo(node.port) == 0x0000


def test_association_aborted_mid_transfer_stores_nothing(dicom_node: DicomNodeFactory) -> None:
    """The peer sends part of a large data set, then an A-ABORT."""
    node = dicom_node()
    big = make_bytes(Spec(seed=400, rows=512, columns=512))  # 512 KiB of pixels: many PDUs
    sent: list[int] = []

    def abort_after_some(event: Any) -> None:
        if isinstance(event.pdu, P_DATA_TF):
            sent.append(1)
            if len(sent) == 8:
                raw = event.assoc.dul.socket.socket
                raw.sendall(pdu_header(A_ABORT, 4) + b"\0\0\0\0")
                raw.shutdown(socket.SHUT_RDWR)

    with (
        associate(node.port, [(CT_IMAGE_STORAGE, [EXPLICIT_LE])], handlers=[(evt.EVT_PDU_SENT, abort_after_some)]) as a,
        contextlib.suppress(Exception),
    ):  # the peer side breaks on purpose
        a.send_c_store(pynetdicom_dataset(big))
    assert len(sent) >= 8
    assert instance_ids(node.client) == []
    assert store(node.port, [big]) == [0x0000]  # the same instance, whole, is then stored
    assert len(instance_ids(node.client)) == 1


def pynetdicom_dataset(raw: bytes) -> Any:
    import io

    import pydicom

    return pydicom.dcmread(io.BytesIO(raw))


def test_data_set_above_the_size_limit_is_refused(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node(MaximumUploadSize=256 * 1024)
    big = make_bytes(Spec(seed=401, rows=512, columns=512))
    assert store(node.port, [big]) == [None]  # aborted while it arrives
    assert instance_ids(node.client) == []
    small = make_bytes(Spec(seed=402))
    assert store(node.port, [small]) == [0x0000]


# ---- broken DIMSE content ---------------------------------------------------------------------------------


def test_truncated_data_set_stores_nothing(dicom_node: DicomNodeFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    node = dicom_node()
    whole = dataset_part(make_bytes(Spec(seed=403)))
    monkeypatch.setattr(pynetdicom.association, "encode", lambda ds, *args: whole[:300])
    with associate(node.port, [(CT_IMAGE_STORAGE, [EXPLICIT_LE])]) as assoc:
        status = assoc.send_c_store(make_dataset(Spec(seed=403)))
    assert 0xA000 <= int(status.Status) <= 0xCFFF  # a failure, no success nor warning
    monkeypatch.undo()
    assert instance_ids(node.client) == []
    assert echo(node.port) == 0x0000


@pytest.mark.parametrize(
    "garbage",
    [
        # A sequence of undefined length whose item is not an item: pydicom cannot decode it.
        b"\x08\x00\x52\x00CS\x06\x00STUDY \x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + bytes(range(1, 9)),
        b"\x08\x00\x52",  # three bytes: no element, so no QueryRetrieveLevel
    ],
)
def test_broken_identifiers(dicom_node: DicomNodeFactory, monkeypatch: pytest.MonkeyPatch, garbage: bytes) -> None:
    node = dicom_node(
        DicomAlwaysAllowFind=True, DicomAlwaysAllowMove=True, DicomModalities={"dest": [PEER_AET, "127.0.0.1", 11112]}
    )
    assert store(node.port, [make_bytes(Spec(seed=404))]) == [0x0000]
    monkeypatch.setattr(pynetdicom.association, "encode", lambda ds, *args: garbage)
    statuses, answers = find(node.port, make_dataset(Spec(seed=404)), STUDY_ROOT_FIND)
    assert (statuses, answers) == ([0xC000], [])
    responses = move(node.port, make_dataset(Spec(seed=404)), PEER_AET, STUDY_ROOT_MOVE)
    assert len(responses) == 1 and 0xC000 <= int(responses[0].Status) <= 0xCFFF
    monkeypatch.undo()
    assert echo(node.port) == 0x0000


def test_many_garbage_connections_in_a_row(dicom_node: DicomNodeFactory) -> None:
    node = dicom_node()
    for payload in (b"\x00", b"\x01\x00", b"\xff" * 64, pdu_header(0x01, 10) + b"short", b"\x16\x03\x01\x02\x00"):
        with raw_connection(node.port) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            pdus_until_closed(sock)
    assert echo(node.port) == 0x0000
