"""Bounded reading of the PDUs a DICOM peer sends (a shim over pynetdicom 3.0.x internals).

pynetdicom 3.0.4 reads a PDU by trusting the 4-byte length of its header (its issue #1086): a peer
claiming 4 GiB makes it buffer up to 4 GiB, a peer that stops in the middle of a PDU holds the
association's reader forever (the accepted socket has no timeout), and nothing bounds how much a
peer may send as one data set. `bound_pdu_reading(dul, limits)` replaces the reading method of one
association's DUL (`DULServiceProvider._read_pdu_data`, called on the DUL's own thread whenever
its socket is readable) by one that:

* refuses a P-DATA-TF PDU longer than our maximum PDU length (what we announced in the
  A-ASSOCIATE negotiation) plus `PDATA_SLACK`, and any other PDU longer than
  `MAX_CONTROL_PDU` (an A-ASSOCIATE-RQ with many presentation contexts exceeds 16 KiB), before
  allocating anything for its body;
* refuses an unknown PDU type (an HTTP request sent to the DICOM port starts with `G`, `P`, ...);
* gives up on a PDU whose body has not fully arrived `read_timeout` seconds after its header;
* with `max_dataset_bytes`, refuses a data set (the P-DATA fragments of one message) that grows
  beyond that size;
* stops reading while `MAX_WAITING_MESSAGES` complete DIMSE messages wait for the association's
  thread: pynetdicom reassembles messages on the DUL thread into an unbounded queue, so a peer
  sending requests without waiting for our responses would otherwise fill the memory.

A refusal is logged at warning level and handed to pynetdicom's state machine as "invalid PDU"
(event 19), which sends an A-ABORT to the peer; the rest of the stream is then discarded and the
connection closed. A timeout or a closed connection is "transport closed" (event 17), as in
pynetdicom. The decoding and the events are pynetdicom's own (`_decode_pdu`, `event_queue`,
`_recv_pdu`): only the reading is ours. The shim is installed per association (by the DICOM
server's request handler, before the association starts), so nothing global is patched; it checks
the pynetdicom version it was written for and refuses to install on another major/minor version.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pynetdicom

if TYPE_CHECKING:
    from pynetdicom.dul import DULServiceProvider

logger = logging.getLogger(__name__)

SUPPORTED_PYNETDICOM = "3.0."
HEADER_LENGTH = 6
# Tolerance above the announced maximum for peers that count the PDV headers loosely.
PDATA_SLACK = 1024
# A-ASSOCIATE-RQ/AC/RJ, A-RELEASE, A-ABORT: large association requests stay far below this.
MAX_CONTROL_PDU = 1024 * 1024
# Complete DIMSE messages waiting to be served before we stop reading the socket.
MAX_WAITING_MESSAGES = 2
_PDATA_TF = 0x04
_KNOWN_TYPES = frozenset(range(0x01, 0x08))
_TRANSPORT_CLOSED = "Evt17"
_INVALID_PDU = "Evt19"
_MARKER = "_dicomvault_bounded"


@dataclass(frozen=True)
class PduLimits:
    """What one association may send us."""

    maximum_pdu_length: int  # our announced Maximum Length Received (0: unlimited, refused here)
    read_timeout: float | None = None  # seconds for a PDU's body once its header arrived
    max_dataset_bytes: int = 0  # 0: no limit on one data set

    @property
    def max_pdata_length(self) -> int:
        base = self.maximum_pdu_length if self.maximum_pdu_length > 0 else MAX_CONTROL_PDU
        return base + PDATA_SLACK

    def limit_for(self, pdu_type: int) -> int:
        return self.max_pdata_length if pdu_type == _PDATA_TF else MAX_CONTROL_PDU


class PduRefused(Exception):
    """What the peer sent is refused; the message says why (for the log)."""


class _BoundedReader:
    def __init__(self, dul: DULServiceProvider, limits: PduLimits) -> None:
        self._dul = dul
        self._limits = limits
        self._refused = False
        self._dataset_bytes = 0

    def _peer(self) -> str:
        assoc: Any = self._dul.assoc
        try:
            aet = str(assoc.requestor.ae_title or "")
            address = assoc.requestor.address
        except Exception:  # (only for a log line)
            return "an unidentified peer"
        return f'AET "{aet}" at {address}' if aet else f"at {address} (before association)"

    def read(self) -> None:
        """Replacement of `DULServiceProvider._read_pdu_data` (same contract: queue one event)."""
        dul = self._dul
        association_socket = dul.socket
        raw = association_socket.socket if association_socket is not None else None
        if raw is None:
            dul.event_queue.put(_TRANSPORT_CLOSED)
            return
        if self._refused:
            # After a refusal the stream is garbage: stop reading and close the connection.
            assert association_socket is not None
            association_socket.close()
            return
        if reading_paused(dul):
            # Backpressure: complete requests wait for the association's thread (a peer that does
            # not wait for our responses); leave the bytes in the socket, TCP slows the peer down.
            return
        try:
            header = _receive(raw, HEADER_LENGTH, None)
            if len(header) < HEADER_LENGTH:
                dul.event_queue.put(_TRANSPORT_CLOSED)  # the peer closed the connection
                return
            pdu_type, _, length = struct.unpack(">BBL", header)
            if pdu_type not in _KNOWN_TYPES:
                raise PduRefused(f"it is not a DICOM PDU (first bytes {bytes(header[:4])!r})")
            limit = self._limits.limit_for(pdu_type)
            if length > limit:
                raise PduRefused(f"its PDU of type 0x{pdu_type:02X} claims {length} bytes (limit {limit})")
            timeout = self._limits.read_timeout
            deadline = None if timeout is None else time.monotonic() + timeout
            body = _receive(raw, length, deadline)
            if len(body) < length:
                logger.warning(
                    "DICOM peer %s closed the connection in the middle of a PDU (%d of %d bytes)",
                    self._peer(),
                    len(body),
                    length,
                )
                dul.event_queue.put(_TRANSPORT_CLOSED)
                return
            if pdu_type == _PDATA_TF:
                self._count_dataset(body)
        except PduRefused as exc:
            self._refuse(str(exc))
            return
        except TimeoutError:
            logger.warning(
                "DICOM peer %s sent no complete PDU within %s seconds: closing the association",
                self._peer(),
                self._limits.read_timeout,
            )
            dul.event_queue.put(_TRANSPORT_CLOSED)
            return
        except OSError as exc:
            logger.info("connection to DICOM peer %s lost: %s", self._peer(), exc)
            dul.event_queue.put(_TRANSPORT_CLOSED)
            return
        try:
            pdu, event = dul._decode_pdu(header + body)
        except Exception as exc:
            self._refuse(f"its PDU cannot be decoded ({exc})")
            return
        dul.event_queue.put(event)
        dul._recv_pdu.put(pdu)

    def _count_dataset(self, body: bytearray) -> None:
        """Follow the PDV items of a P-DATA-TF body to bound one data set's size."""
        cap = self._limits.max_dataset_bytes
        if cap <= 0:
            return
        offset = 0
        while offset + 6 <= len(body):
            item_length = int.from_bytes(body[offset : offset + 4], "big")
            control = body[offset + 5]
            if not control & 0x01:  # a data set fragment (bit 0 set: a command fragment)
                self._dataset_bytes += max(item_length - 2, 0)
                if self._dataset_bytes > cap:
                    raise PduRefused(f"its data set exceeds {cap} bytes")
                if control & 0x02:  # last fragment of the data set
                    self._dataset_bytes = 0
            offset += 4 + item_length

    def _refuse(self, why: str) -> None:
        logger.warning("aborting the association with DICOM peer %s: %s", self._peer(), why)
        self._refused = True
        self._dul.event_queue.put(_INVALID_PDU)


def reading_paused(dul: DULServiceProvider) -> bool:
    """True while the bounded reader leaves the socket alone (backpressure, see `MAX_WAITING_MESSAGES`);
    `network/reactor.py` then stops polling the socket, which stays readable."""
    return len(dul.assoc.dimse.msg_queue.queue) >= MAX_WAITING_MESSAGES


def _receive(sock: socket.socket, count: int, deadline: float | None) -> bytearray:
    """Up to `count` bytes (fewer only if the peer closed the connection). The socket's own timeout
    bounds each wait; `deadline` (monotonic) bounds the whole read against a trickling peer."""
    buffer = bytearray(count)
    received = 0
    with memoryview(buffer) as view:
        while received < count:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError("PDU read deadline exceeded")
            got = sock.recv_into(view[received:], min(count - received, 1 << 20))
            if got == 0:
                break
            received += got
    if received < count:
        del buffer[received:]  # the peer closed the connection
    return buffer


def bound_pdu_reading(dul: DULServiceProvider, limits: PduLimits) -> None:
    """Install the bounded reader on one association's DUL (idempotent; before it starts)."""
    if getattr(dul, _MARKER, False):
        return
    if not pynetdicom.__version__.startswith(SUPPORTED_PYNETDICOM):
        raise RuntimeError(
            f"network/pdu.py wraps pynetdicom {SUPPORTED_PYNETDICOM}x internals, not pynetdicom "
            f"{pynetdicom.__version__}: check DULServiceProvider._read_pdu_data and update the shim"
        )
    reader = _BoundedReader(dul, limits)
    dul._read_pdu_data = reader.read  # type: ignore[method-assign]
    setattr(dul, _MARKER, True)
