"""A remote modality the SCU tests control: a pynetdicom SCP on a free port (bound to port 0) that
records every request it gets and answers C-ECHO, C-FIND, C-MOVE and C-STORE as the test says.

* `store_gate` (a `threading.Event`, set by default) holds each C-STORE in its handler until set:
  a job sending to the peer is then reliably in flight; `store_started` tells the test that a
  C-STORE has arrived.
* `find_answers(identifier)` gives the pending answers of a C-FIND, `find_status` its final
  status; `find_gate` holds a C-FIND like `store_gate` holds a C-STORE.
* `move_sources(identifier)` gives the datasets a C-MOVE sends to its destination, which must be
  in `destinations` (AET -> (host, port)); others are refused with 0xA801.
"""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.presentation import build_context
from pynetdicom.transport import ThreadedAssociationServer

from dicomvault.network.scu import (
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_MOVE,
    STUDY_ROOT_FIND,
    STUDY_ROOT_MOVE,
    VERIFICATION,
)

QR_CLASSES = (PATIENT_ROOT_FIND, STUDY_ROOT_FIND, PATIENT_ROOT_MOVE, STUDY_ROOT_MOVE)

HOLD_LIMIT = 60.0  # seconds a held handler waits at most, so that a failing test cannot hang


@dataclass
class StoreCall:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str
    calling_aet: str
    originator_aet: str | None
    originator_id: int | None
    dataset_bytes: bytes


@dataclass
class Request:
    calling_aet: str
    sop_class_uid: str
    identifier: Dataset
    destination: str = ""


def _no_answers(identifier: Dataset) -> Sequence[Dataset]:
    return []


@dataclass
class Peer:
    aet: str = "PEER"
    transfer_syntaxes: Sequence[str] = field(default_factory=lambda: list(ALL_TRANSFER_SYNTAXES))
    stored: list[StoreCall] = field(default_factory=list)
    finds: list[Request] = field(default_factory=list)
    moves: list[Request] = field(default_factory=list)
    calling_aets: list[str] = field(default_factory=list)
    associations: int = 0
    echo_status: int = 0x0000
    store_status: int = 0x0000
    find_status: int = 0x0000
    find_answers: Callable[[Dataset], Sequence[Dataset]] = _no_answers
    move_sources: Callable[[Dataset], Sequence[Dataset]] = _no_answers
    destinations: dict[str, tuple[str, int]] = field(default_factory=dict)
    store_gate: threading.Event = field(default_factory=threading.Event)
    store_started: threading.Event = field(default_factory=threading.Event)
    find_gate: threading.Event = field(default_factory=threading.Event)
    nodelay: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadedAssociationServer | None = None

    def __post_init__(self) -> None:
        self.store_gate.set()
        self.find_gate.set()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def modality(self, **extra: Any) -> dict[str, Any]:
        """This peer in the object form of `DicomModalities`."""
        return {"AET": self.aet, "Host": "127.0.0.1", "Port": self.port, **extra}

    def start(self) -> Peer:
        ae = AE(ae_title=self.aet)
        ae.require_called_aet = True
        syntaxes = list(self.transfer_syntaxes)
        for cx in AllStoragePresentationContexts:
            assert cx.abstract_syntax is not None
            ae.add_supported_context(cx.abstract_syntax, syntaxes)
        for uid in (VERIFICATION, *QR_CLASSES):
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES)
        # C-MOVE sub-operations: what this peer proposes to a destination.
        ae.requested_contexts = [build_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
        ae.maximum_associations = 20
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_ESTABLISHED, self._on_established),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_MOVE, self._on_move),
        ]
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        return self

    def stop(self) -> None:
        self.store_gate.set()
        self.find_gate.set()
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    def __enter__(self) -> Peer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stored_uids(self) -> list[str]:
        with self.lock:
            return [call.sop_instance_uid for call in self.stored]

    # ---- handlers -------------------------------------------------------------------------------

    def _on_open(self, event: Event) -> None:
        sock = event.assoc.dul.socket
        raw = sock.socket if sock is not None else None
        if raw is not None:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_established(self, event: Event) -> None:
        with self.lock:
            self.associations += 1
            self.calling_aets.append(event.assoc.requestor.ae_title)

    def _on_echo(self, event: Event) -> int:
        return self.echo_status

    def _on_store(self, event: Event) -> int:
        self.store_started.set()
        self.store_gate.wait(HOLD_LIMIT)
        request = cast(C_STORE, event.request)
        data = request.DataSet.getvalue() if isinstance(request.DataSet, io.BytesIO) else b""
        call = StoreCall(
            sop_class_uid=str(request.AffectedSOPClassUID),
            sop_instance_uid=str(request.AffectedSOPInstanceUID),
            transfer_syntax=str(event.context.transfer_syntax),
            calling_aet=event.assoc.requestor.ae_title,
            originator_aet=request.MoveOriginatorApplicationEntityTitle,
            originator_id=request.MoveOriginatorMessageID,
            dataset_bytes=data,
        )
        with self.lock:
            self.stored.append(call)
        return self.store_status

    def _on_find(self, event: Event) -> Any:
        identifier = event.identifier
        with self.lock:
            self.finds.append(
                Request(event.assoc.requestor.ae_title, str(event.request.AffectedSOPClassUID), identifier)
            )
        self.find_gate.wait(HOLD_LIMIT)
        for answer in self.find_answers(identifier):
            yield 0xFF00, answer
        if self.find_status:
            yield self.find_status, None

    def _on_move(self, event: Event) -> Any:
        identifier = event.identifier
        destination = str(event.move_destination or "")
        with self.lock:
            self.moves.append(
                Request(event.assoc.requestor.ae_title, str(event.request.AffectedSOPClassUID), identifier, destination)
            )
        if destination not in self.destinations:
            yield None, None
            return
        yield self.destinations[destination]
        datasets = list(self.move_sources(identifier))
        yield len(datasets)
        for ds in datasets:
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield 0xFF00, ds
