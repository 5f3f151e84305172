"""Associations dicomvault opens to remote modalities (the SCU side): C-ECHO, C-FIND, C-MOVE and
C-STORE, with Orthanc 1.10.1's parameters and error messages.

Parameters (`scu_parameters`), as Orthanc 1.10.1 opens its associations:

* calling AET: the modality's `LocalAet` when it has one, else the one the request names, else
  `DicomAet` (Orthanc lets a modality's `LocalAet` win over the request's);
* timeout: the request's `Timeout`, else the modality's `Timeout`, else `DicomScuTimeout`; 0 means
  none. It bounds the TCP connection, the association negotiation, each DIMSE answer and any
  silence on the association, so a C-MOVE whose destination stalls fails after that many seconds;
* TCP_NODELAY on the socket (Nagle's algorithm would add ~40 ms to each exchange), and
  `MaximumPduLength` as the PDU size dicomvault accepts.

Errors are Orthanc's: a peer that cannot be reached or refuses the association is
`NETWORK_PROTOCOL` with `DicomAssociation - connecting to AET "X": ...`; a DIMSE failure status is
`NETWORK_PROTOCOL` with `C-FIND SCU to AET "X" has failed with DIMSE status 0x....` (HTTP 422 for
C-FIND/C-MOVE's 0xC000 "unable to process", as Orthanc); no answer within the timeout, or an
abort, is `NETWORK_PROTOCOL` naming the DIMSE command.

C-FIND and C-MOVE identifiers are built as Implicit VR Little Endian bytes (`encode_identifier`)
and only that transfer syntax is proposed for them: every SCP must accept it (PS3.5 10.1), and
values such as ranges (`1-3` in an IS) or wildcards in UIDs reach the peer byte for byte instead
of going through pydicom's value conversions. Orthanc also proposes the explicit VR syntaxes.

C-STORE (`StoreClient`) sends each stored instance as stored, never transcoded: one
presentation context is proposed per (SOP class, transfer syntax) pair met, the association is
kept open across instances and negotiated again when a new pair shows up. An instance whose own
pair the peer refused fails with `NO_PRESENTATION_CONTEXT` (Orthanc would transcode it to an
accepted syntax when `AllowTranscoding` permits; dicomvault does not change stored files). The
dataset is streamed from the file bytes untouched (pynetdicom's chunked sending).
"""

from __future__ import annotations

import io
import logging
import os
import socket
import struct
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from pydicom import dcmread
from pydicom.charset import convert_encodings, encode_string
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_file_meta_info
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.dsutils import create_file_meta, decode
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.transport import AddressInformation, AssociationSocket

from dicomvault.config import Config
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.network.modalities import RemoteModality
from dicomvault.network.pdu import PduLimits, bound_pdu_reading
from dicomvault.network.reactor import event_driven

logger = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
MAX_CONTEXTS = 128  # PS3.8: presentation context ids are odd numbers from 1 to 255

# Orthanc's `DefaultEncoding` names -> the SpecificCharacterSet term it sends with queries.
SPECIFIC_CHARACTER_SETS: dict[str, str] = {
    "Ascii": "ISO_IR 6",
    "Utf8": "ISO_IR 192",
    "Latin1": "ISO_IR 100",
    "Latin2": "ISO_IR 101",
    "Latin3": "ISO_IR 109",
    "Latin4": "ISO_IR 110",
    "Latin5": "ISO_IR 148",
    "Cyrillic": "ISO_IR 144",
    "Windows1251": "ISO_IR 144",
    "Arabic": "ISO_IR 127",
    "Greek": "ISO_IR 126",
    "Hebrew": "ISO_IR 138",
    "Thai": "ISO_IR 166",
    "Japanese": "ISO_IR 13",
    "Chinese": "GB18030",
    "JapaneseKanji": "ISO 2022 IR 87",
    "Korean": "ISO 2022 IR 149",
    "SimplifiedChinese": "ISO 2022 IR 58",
}

# DIMSE statuses of a C-STORE response that Orthanc counts as a success (warnings included).
_STORE_OK = frozenset({0x0000, 0xB000, 0xB006, 0xB007, 0x0111})
_PENDING = frozenset({0xFF00, 0xFF01})
_UNABLE_TO_PROCESS = 0xC000


# ---- parameters ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScuParameters:
    """Everything needed to open an association to one modality."""

    modality: RemoteModality
    local_aet: str
    timeout: int  # seconds, 0: no timeout
    maximum_pdu: int

    @property
    def remote_aet(self) -> str:
        return self.modality.aet

    def describe(self) -> str:
        limit = f"timeout {self.timeout}s" if self.timeout else "no timeout"
        return (
            f'from AET "{self.local_aet}" to AET "{self.remote_aet}" on host '
            f"{self.modality.host}:{self.modality.port} (manufacturer {self.modality.manufacturer}, {limit})"
        )


def scu_parameters(
    config: Config, modality: RemoteModality, *, local_aet: str | None = None, timeout: int | None = None
) -> ScuParameters:
    calling = modality.local_aet or local_aet or config.dicom_aet
    seconds = timeout if timeout is not None else (modality.timeout or config.dicom_scu_timeout)
    return ScuParameters(modality, calling, max(int(seconds), 0), config.maximum_pdu_length)


def network_error(params: ScuParameters, command: str, why: str) -> DicomVaultError:
    """Orthanc's message for a failed DICOM exchange (`DicomAssociation - C-FIND to AET ...`)."""
    return DicomVaultError(
        ErrorCode.NETWORK_PROTOCOL, f'DicomAssociation - {command} to AET "{params.remote_aet}": {why}'
    )


def status_error(params: ScuParameters, command: str, status: int, unable: str | None = None) -> DicomVaultError:
    """A DIMSE failure status, as Orthanc reports it (HTTP 422 for "unable to process")."""
    details = f'{command} SCU to AET "{params.remote_aet}" has failed with DIMSE status 0x{status:04X}'
    if status == _UNABLE_TO_PROCESS and unable is not None:
        return DicomVaultError(ErrorCode.NETWORK_PROTOCOL, f"{details} ({unable})", http_status=422)
    return DicomVaultError(ErrorCode.NETWORK_PROTOCOL, details)


# ---- sockets ---------------------------------------------------------------------------------


class _TcpSocket(socket.socket):
    """A TCP socket that keeps why `connect()` failed (Orthanc names the reason in its error) and
    keeps its timeout once connected: pynetdicom clears it after connecting, which would let a
    peer stalling in the middle of a PDU block the association's reader for ever."""

    connect_error: OSError | None = None
    kept_timeout: float | None = None

    def connect(self, address: Any) -> None:
        try:
            super().connect(address)
        except OSError as exc:
            self.connect_error = exc
            raise

    def settimeout(self, value: float | None) -> None:
        super().settimeout(self.kept_timeout if value is None else value)


class _NoDelaySocket(AssociationSocket):
    """pynetdicom's requestor socket, with TCP_NODELAY and the connection error remembered."""

    tcp: _TcpSocket | None = None

    def __init__(self, assoc: Association, address: AddressInformation, limits: PduLimits) -> None:
        # What the peer sends is read within bounds (pynetdicom trusts PDU lengths: its issue
        # #1086); installed before the association's reader thread starts.
        bound_pdu_reading(assoc.dul, limits)
        event_driven(assoc)  # its two threads wait for events instead of polling every 1 ms
        super().__init__(assoc, address=address)

    def _create_socket(self, address: AddressInformation) -> socket.socket:
        # As pynetdicom 3.0.4's own `_create_socket`, plus TCP_NODELAY.
        family = socket.AF_INET if address.is_ipv4 else socket.AF_INET6
        sock = _TcpSocket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.assoc.network_timeout is not None:
            sock.kept_timeout = self.assoc.network_timeout
            sock.settimeout(self.assoc.network_timeout)
        sock.bind(address.as_tuple)
        self._is_connected = False
        self.tcp = sock
        return sock


class _RequestorAE(AE):
    def __init__(self, ae_title: str, limits: PduLimits) -> None:
        super().__init__(ae_title=ae_title)
        self._limits = limits

    def _create_socket(self, assoc: Association, address: AddressInformation, tls_args: Any) -> AssociationSocket:
        sock = _NoDelaySocket(assoc, address, self._limits)
        sock.tls_args = tls_args
        return sock


# ---- associations ----------------------------------------------------------------------------

# The largest data set (a C-FIND answer, a status detail) a peer may send us in one message.
MAX_RESPONSE_DATASET = 64 * 1024 * 1024


def _limits(params: ScuParameters) -> PduLimits:
    return PduLimits(params.maximum_pdu, float(params.timeout) or None, MAX_RESPONSE_DATASET)


def control_contexts() -> list[PresentationContext]:
    """Verification, C-FIND and C-MOVE, in Implicit VR Little Endian (see the module docstring)."""
    syntaxes: list[str | UID] = [ImplicitVRLittleEndian]
    return [
        build_context(uid, syntaxes)
        for uid in (VERIFICATION, PATIENT_ROOT_FIND, STUDY_ROOT_FIND, PATIENT_ROOT_MOVE, STUDY_ROOT_MOVE)
    ]


class ScuAssociation:
    """One association to a modality; `open()` raises Orthanc's errors, `close()` releases it."""

    def __init__(self, params: ScuParameters, contexts: Sequence[PresentationContext]) -> None:
        if not contexts or len(contexts) > MAX_CONTEXTS:
            raise DicomVaultError(
                ErrorCode.PARAMETER_OUT_OF_RANGE, f"cannot propose {len(contexts)} presentation contexts"
            )
        self.params = params
        self.contexts = list(contexts)
        self._assoc: Association | None = None
        self._message_id = 0

    @property
    def is_open(self) -> bool:
        return self._assoc is not None and self._assoc.is_established

    def open(self) -> Association:
        if self._assoc is not None and self._assoc.is_established:
            return self._assoc
        params = self.params
        seconds = params.timeout or None
        try:
            ae = _RequestorAE(params.local_aet, _limits(params))
        except ValueError as exc:
            raise DicomVaultError(
                ErrorCode.PARAMETER_OUT_OF_RANGE, f"invalid local AET {params.local_aet!r}: {exc}"
            ) from exc
        # Orthanc bounds the negotiation by 10 s when no timeout is set: a peer that accepts the
        # TCP connection but never answers must not hang a job forever.
        ae.acse_timeout = seconds or 10
        ae.dimse_timeout = seconds
        ae.network_timeout = seconds
        ae.connection_timeout = seconds
        ae.maximum_pdu_size = params.maximum_pdu
        ae.requested_contexts = self.contexts
        logger.info("opening a DICOM SCU connection %s", params.describe())
        try:
            assoc = ae.associate(
                params.modality.host, params.modality.port, ae_title=params.remote_aet, max_pdu=params.maximum_pdu
            )
        except (ValueError, OSError) as exc:  # an invalid called AET or an unusable host name
            raise network_error(params, "connecting", f"TCP Initialization Error: {exc}") from exc
        if not assoc.is_established:
            if assoc.rejected_contexts and not assoc.accepted_contexts:
                # Accepted, but without any of the proposed presentation contexts: pynetdicom
                # aborts such an association at once.
                raise DicomVaultError(
                    ErrorCode.NO_PRESENTATION_CONTEXT,
                    f'Unable to negotiate a presentation context with AET "{params.remote_aet}"',
                )
            raise self._refusal(assoc)
        self._assoc = assoc
        return assoc

    def _refusal(self, assoc: Association) -> DicomVaultError:
        sock = assoc.dul.socket
        tcp = sock.tcp if isinstance(sock, _NoDelaySocket) else None
        if tcp is not None and tcp.connect_error is not None:
            error = tcp.connect_error
            why = os.strerror(error.errno) if error.errno else str(error) or type(error).__name__
            text = f"TCP Initialization Error: {why}"
        elif assoc.is_rejected:
            text = "DUL Association Rejected"
        else:
            text = "DUL Peer Aborted Association (or never connected)"
        exc = network_error(self.params, "connecting", text)
        logger.error("%s", exc.details)
        return exc

    def next_message_id(self) -> int:
        self._message_id = self._message_id % 65535 + 1
        return self._message_id

    def accepted(self, abstract_syntax: str, transfer_syntax: str | None = None) -> PresentationContext | None:
        assoc = self.open()
        for cx in assoc.accepted_contexts:
            if cx.abstract_syntax == abstract_syntax and (
                transfer_syntax is None or cx.transfer_syntax[0] == transfer_syntax
            ):
                return cx
        return None

    def lost(self, command: str) -> DicomVaultError:
        """No (valid) answer: timeout, abort or a broken response. The association is unusable."""
        assoc = self._assoc
        aborted = assoc is not None and assoc.is_aborted
        self.close()
        why = (
            "Peer aborted Association (or never connected)"
            if aborted
            else "DIMSE No data available (timeout in non-blocking mode)"
        )
        exc = network_error(self.params, command, why)
        logger.error("%s", exc.details)
        return exc

    def close(self) -> None:
        assoc, self._assoc = self._assoc, None
        if assoc is None:
            return
        try:
            if assoc.is_established:
                assoc.release()
        except Exception:  # a peer vanishing during the release must not hide the real outcome
            logger.warning('error while releasing the association with AET "%s"', self.params.remote_aet, exc_info=True)
            assoc.abort()

    def __enter__(self) -> ScuAssociation:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- DIMSE services -------------------------------------------------------------------------

    def echo(self) -> None:
        assoc = self.open()
        try:
            status = assoc.send_c_echo(msg_id=self.next_message_id())
        except RuntimeError as exc:  # the association ended under our feet (peer abort)
            raise self.lost("C-ECHO") from exc
        if "Status" not in status:
            raise self.lost("C-ECHO")
        if status.Status != 0x0000:
            raise status_error(self.params, "C-ECHO", int(status.Status))

    def find(self, model: str, identifier: Dataset) -> list[Dataset]:
        """Every pending answer of one C-FIND; a failure status raises Orthanc's error."""
        assoc = self.open()
        if self.accepted(model) is None:
            raise DicomVaultError(ErrorCode.DICOM_FIND_UNAVAILABLE, f"Remote AET is {self.params.remote_aet}")
        answers: list[Dataset] = []
        try:
            responses = assoc.send_c_find(identifier, model, msg_id=self.next_message_id(), priority=0)
        except RuntimeError as exc:  # the association ended under our feet (peer abort)
            raise self.lost("C-FIND") from exc
        for status, found in responses:
            if "Status" not in status:
                raise self.lost("C-FIND")
            code = int(status.Status)
            if code in _PENDING:
                if found is not None:
                    answers.append(found)
            elif code != 0x0000:
                raise status_error(self.params, "C-FIND", code, "unable to process - invalid query ?")
        return answers

    def move(self, model: str, identifier: Dataset, target_aet: str) -> None:
        """One C-MOVE, until its final response; a failure status raises Orthanc's error."""
        assoc = self.open()
        if self.accepted(model) is None:
            raise DicomVaultError(ErrorCode.DICOM_MOVE_UNAVAILABLE, f"Remote AET is {self.params.remote_aet}")
        try:
            responses = assoc.send_c_move(identifier, target_aet, model, msg_id=self.next_message_id(), priority=0)
        except RuntimeError as exc:  # the association ended under our feet (peer abort)
            raise self.lost("C-MOVE") from exc
        for status, _ in responses:
            if "Status" not in status:
                raise self.lost("C-MOVE")
            code = int(status.Status)
            if code == 0xFF00:
                continue
            if code != 0x0000:
                raise status_error(self.params, "C-MOVE", code, "unable to process - resource not found ?")


# ---- identifiers -----------------------------------------------------------------------------

_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UC", "UT", "PN"})
_NUMBER_FORMATS = {"US": "<H", "SS": "<h", "UL": "<I", "SL": "<i", "FL": "<f", "FD": "<d"}


def _encode_value(vr: str, value: str, encodings: list[str]) -> bytes:
    if vr in _TEXT_VRS:
        data = encode_string(value, encodings)
    elif vr in _NUMBER_FORMATS:
        data = b""
        try:
            for item in filter(None, value.split("\\")):
                number = float(item) if vr in ("FL", "FD") else int(item)
                data += struct.pack(_NUMBER_FORMATS[vr], number)
        except (ValueError, struct.error):
            logger.warning("the value %r cannot be sent as %s: sent empty (universal matching)", value, vr)
            data = b""
    else:
        data = value.encode("ascii", "replace") if vr != "UN" else value.encode("utf-8")
    if len(data) % 2:
        data += b"\0" if vr in ("UI", "UN", "OB") else b" "
    return data


def encode_identifier(elements: Iterable[tuple[int, str, str]], charset: str) -> Dataset:
    """A C-FIND/C-MOVE identifier from (tag, VR, value) triples, encoded as Implicit VR Little
    Endian bytes with `charset` (a SpecificCharacterSet term) for the text values."""
    encodings = convert_encodings([charset])
    values: dict[int, bytes] = {0x00080005: _encode_value("CS", charset, encodings)}
    for tag, vr, value in elements:
        if vr == "SQ":
            logger.warning("sequence %08X left out of a C-FIND/C-MOVE identifier", tag)
            continue
        values[tag] = _encode_value(vr, value, encodings)
    raw = b"".join(struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(v)) + v for tag, v in sorted(values.items()))
    return decode(io.BytesIO(raw), True, True)


# ---- C-STORE ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutgoingInstance:
    """A stored file ready for C-STORE: its identity and a Part 10 image of its bytes."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    part10: bytes


def _not_group_2(tag: BaseTag, vr: str | None, length: int) -> bool:
    return bool(tag.group != 2)


def prepare_instance(raw: bytes, remote_aet: str = "") -> OutgoingInstance:
    """Read the identity of a stored file and give it a Part 10 header if it has none (pynetdicom
    streams the dataset that follows the header, byte for byte)."""
    preamble = len(raw) >= 132 and raw[128:132] == b"DICM"
    start = 132 if preamble else 0
    meta = Dataset()
    offset = start
    if raw[start : start + 2] == b"\x02\x00":
        fp = io.BytesIO(raw)
        fp.seek(start)
        meta = read_dataset(fp, False, True, stop_when=_not_group_2)
        offset = fp.tell()
    try:
        ds = dcmread(io.BytesIO(raw), force=True, stop_before_pixels=True, specific_tags=[0x00080016, 0x00080018])
        sop_class, sop_instance = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
    except Exception as exc:
        raise DicomVaultError(
            ErrorCode.NO_SOP_CLASS_OR_INSTANCE,
            f"Unable to determine the SOP class/instance for C-STORE with AET {remote_aet}",
        ) from exc
    syntax = str(meta.get("TransferSyntaxUID", "")).rstrip("\0 ")
    if not syntax:
        implicit, little = ds.original_encoding
        syntax = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    complete = all(k in meta for k in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID"))
    if preamble and complete:
        return OutgoingInstance(sop_class, sop_instance, syntax, raw)
    header = DicomBytesIO()
    header.is_little_endian, header.is_implicit_VR = True, False
    header.write(b"\0" * 128 + b"DICM")
    meta = create_file_meta(
        sop_class_uid=UID(sop_class), sop_instance_uid=UID(sop_instance), transfer_syntax=UID(syntax)
    )
    write_file_meta_info(header, meta)
    return OutgoingInstance(sop_class, sop_instance, syntax, header.getvalue() + raw[offset:])


class StoreClient:
    """C-STORE SCU keeping one association open across instances (see the module docstring)."""

    def __init__(self, params: ScuParameters, planned: Iterable[tuple[str, str]] = ()) -> None:
        # Stream each dataset from its file instead of decoding and re-encoding it: what is
        # sent is what is stored. This is pynetdicom's documented switch; it only changes
        # `send_c_store(path)`, which only SCU code calls with a path.
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
        self.params = params
        self._wanted: dict[tuple[str, str], None] = dict.fromkeys(planned)
        self._association: ScuAssociation | None = None
        self._proposed: set[tuple[str, str]] = set()

    def close(self) -> None:
        if self._association is not None:
            self._association.close()
        self._association = None

    def _association_for(self, pair: tuple[str, str]) -> ScuAssociation:
        current = self._association
        if current is not None and current.is_open:
            if current.accepted(*pair) is not None or pair in self._proposed:
                return current
            logger.info(
                'negotiating again with AET "%s" for SOP class %s in %s', self.params.remote_aet, pair[0], pair[1]
            )
            self.close()
        self._wanted[pair] = None
        others = [p for p in reversed(self._wanted) if p != pair][: MAX_CONTEXTS - 1]
        chosen = [pair, *others]
        association = ScuAssociation(self.params, [build_context(sop, [ts]) for sop, ts in chosen])
        try:
            association.open()
        except DicomVaultError as exc:
            if exc.code != ErrorCode.NO_PRESENTATION_CONTEXT:
                raise
            raise self._refused(pair) from exc
        self._association, self._proposed = association, set(chosen)
        return association

    def _refused(self, pair: tuple[str, str]) -> DicomVaultError:
        exc = DicomVaultError(
            ErrorCode.NO_PRESENTATION_CONTEXT,
            f"No valid presentation context was negotiated for SOP class UID [{pair[0]}] and transfer "
            f"syntax [{pair[1]}] while sending to modality [{self.params.remote_aet}]; dicomvault sends "
            "instances as stored and does not transcode them",
        )
        logger.error("%s", exc.details)
        return exc

    def store(self, raw: bytes, *, originator_aet: str = "", originator_id: int = 0) -> OutgoingInstance:
        """Send one stored file; raises Orthanc's errors (the association stays usable after a
        failure status, not after a timeout or an abort)."""
        params = self.params
        instance = prepare_instance(raw, params.remote_aet)
        pair = (instance.sop_class_uid, instance.transfer_syntax)
        association = self._association_for(pair)
        if association.accepted(*pair) is None:
            raise self._refused(pair)
        assoc = association.open()
        handle, name = tempfile.mkstemp(prefix="dicomvault-scu-", suffix=".dcm")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(instance.part10)
            try:
                status = assoc.send_c_store(
                    Path(name),
                    msg_id=association.next_message_id(),
                    priority=0,
                    originator_aet=originator_aet if originator_id else None,
                    originator_id=originator_id or None,
                )
            except RuntimeError as exc:  # the association ended under our feet (peer abort)
                self._association = None
                raise association.lost("C-STORE") from exc
        finally:
            os.unlink(name)
        if "Status" not in status:
            self._association = None
            raise association.lost("C-STORE")
        code = int(status.Status)
        if code not in _STORE_OK:
            failure = status_error(params, "C-STORE", code)
            logger.error("%s (instance %s)", failure.details, instance.sop_instance_uid)
            raise failure
        return instance
