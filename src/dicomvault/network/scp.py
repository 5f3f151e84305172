"""The DICOM server (SCP): `DicomServer(context).start(host, port) -> port`, `close()`.

Owns the pynetdicom application entity and its association server, who may associate and which
DIMSE requests each peer may make (Orthanc's application entity filter), C-ECHO and C-STORE; the
C-FIND, C-MOVE and C-GET handlers live in `find_scp` and `retrieve_scp`. Facts mirrored from
Orthanc 1.10.1 (checked against the real server):

* Association: with `DicomCheckCalledAet`, a called AET other than `DicomAet` is rejected
  (permanent, "called AE title not recognized"). When any `DicomAlwaysAllow*` option is true, any
  calling AET may associate; otherwise only an AET listed in `DicomModalities` (on its configured
  host with `DicomCheckModalityHost`), else the association is rejected (permanent, "calling AE
  title not recognized"). `StrictAetComparison` decides whether AETs compare case-sensitively.
* Each C-ECHO/C-STORE/C-FIND/C-MOVE/C-GET is then checked: allowed if its `DicomAlwaysAllow*`
  option is true, else by the `Allow*` permission of the modality having the calling AET (on its
  host with `DicomCheckModalityHost`; several modalities sharing the AET must all allow it unless
  one matches the host). A refused request is not answered: the association is aborted.
* A C-STORE is stored exactly as received (the data set bytes behind a File Meta header built from
  the association: the negotiated transfer syntax, the request's SOP class and instance, the
  calling AET as SourceApplicationEntityTitle) through `Ingest.store_sync`, which records the
  RemoteAET, RemoteIP and CalledAET metadata. AlreadyStored answers success. A data set without
  SOP class/instance UIDs answers 0xC000, one whose UIDs differ from the request's 0xA900, an
  ingest failure the DIMSE status of its error code; nothing is stored then.
* `DicomScpTimeout` (0: none) is the ACSE, DIMSE and network (idle) timeout of an association and
  also bounds the reception of one PDU; `MaximumPduLength` is our maximum receive PDU;
  `DicomThreadsCount` is the number of C-STORE and C-FIND operations running at once (as Orthanc's
  worker threads, it does not limit associations; C-MOVE and C-GET are left out of it because
  their sub-operations may come back to this very server).

pynetdicom internals this module relies on (pinned by `network/pdu.py`'s version check, covered
by the tests): `RequestHandler._create_association`, `ACSE._negotiate_as_acceptor` and
`ACSE._check_sop_class_common_extended` (overridden to apply the rules above and to route C-STORE
on unknown SOP classes to the storage service through SOP Class Common Extended Negotiation),
`DULServiceProvider._read_pdu_data` (bounded by `network/pdu.py`), the waiting of the association's
two threads (made event-driven by `network/reactor.py`). Process-wide, `start()` turns
off pynetdicom's logging of every request/response identifier (`_config.LOG_*_IDENTIFIERS`: it
formats them even when the log level discards them) and filters its traceback of the failures our
C-MOVE handler raises on purpose; everything else is per association or per server.
"""

from __future__ import annotations

import io
import logging
import socket
import socketserver
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from pydicom.filereader import read_dataset
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import SOPClassCommonExtendedNegotiation
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

from dicomvault.config import Config
from dicomvault.context import ServerContext
from dicomvault.enums import RequestOrigin
from dicomvault.errors import DicomVaultError, ErrorCode, dimse_status
from dicomvault.ingest.store import Origin
from dicomvault.network.find_scp import FindScp
from dicomvault.network.modalities import Modalities, same_aet
from dicomvault.network.pdu import PduLimits, bound_pdu_reading
from dicomvault.network.presentation import STORAGE_SERVICE_CLASS, SupportedContexts
from dicomvault.network.reactor import event_driven
from dicomvault.network.retrieve_scp import RetrieveScp

logger = logging.getLogger(__name__)

# Associations accepted at once; beyond, pynetdicom rejects (transient, local limit exceeded).
# Orthanc has no such limit; this one only bounds threads and buffers against a flood.
MAX_ASSOCIATIONS = 256
_SUCCESS = 0x0000
_CANNOT_UNDERSTAND = 0xC000
_DOES_NOT_MATCH_SOP_CLASS = 0xA900
_SOP_CLASS_UID = 0x00080016
_SOP_INSTANCE_UID = 0x00080018
_INFLATE_LIMIT = 1 << 20  # inflated bytes enough to reach (0008,0018) in a deflated data set

# A-ASSOCIATE-RJ (result, source, reason): permanent, by the service user.
_REJECT_CALLING_AET = (0x01, 0x01, 0x03)
_REJECT_CALLED_AET = (0x01, 0x01, 0x07)


@dataclass(frozen=True)
class Peer:
    """Who is on the other side of an association."""

    calling_aet: str
    called_aet: str
    remote_ip: str

    def describe(self) -> str:
        return f'AET "{self.calling_aet}" on IP {self.remote_ip}'


def peer_of(assoc: Association) -> Peer:
    primitive = assoc.requestor.primitive
    called = primitive.called_ae_title if primitive is not None else assoc.acceptor.ae_title
    return Peer(str(assoc.requestor.ae_title), str(called), str(assoc.requestor.address))


# (event, request name) -> the peer when allowed; None when refused (the association is aborted).
Guard = Callable[[Event, str], Peer | None]


class AccessPolicy:
    """Orthanc's rules for who may associate and who may ask what (see the module docstring)."""

    def __init__(self, config: Config, modalities: Modalities) -> None:
        self._config = config
        self._modalities = modalities
        self._always = {
            "Echo": config.dicom_always_allow_echo,
            "Store": config.dicom_always_allow_store,
            "Find": config.dicom_always_allow_find,
            "FindWorklist": config.dicom_always_allow_find_worklist,
            "Get": config.dicom_always_allow_get,
            "Move": config.dicom_always_allow_move,
        }
        for request in ("Find", "FindWorklist", "Get", "Move"):
            if self._always[request]:
                logger.warning(
                    "security risk in the DICOM server: DicomAlwaysAllow%s lets unknown modalities make %s requests",
                    request,
                    request,
                )

    def association_refusal(self, peer: Peer) -> tuple[tuple[int, int, int], str] | None:
        """The A-ASSOCIATE-RJ reason and an explanation, or None to accept."""
        config = self._config
        if config.dicom_check_called_aet and not same_aet(
            peer.called_aet, config.dicom_aet, config.strict_aet_comparison
        ):
            why = f'the called AET "{peer.called_aet}" is not "{config.dicom_aet}" (DicomCheckCalledAet is true)'
            return _REJECT_CALLED_AET, why
        if any(self._always.values()):
            return None
        host = peer.remote_ip if config.dicom_check_modality_host else None
        if self._modalities.by_aet(peer.calling_aet, host):
            return None
        why = "its AET is not listed in DicomModalities" + (
            " with this host (DicomCheckModalityHost is true)" if host is not None else ""
        )
        return _REJECT_CALLING_AET, why + " and every DicomAlwaysAllow* option is false"

    def request_refusal(self, peer: Peer, request: str) -> str | None:
        """Why `request` ("Echo", "Store", "Find", "Move", "Get") is refused to `peer`, or None."""
        if self._always.get(request, False):
            return None
        check_host = self._config.dicom_check_modality_host
        found = self._modalities.by_aet(peer.calling_aet)
        if not found:
            return f"this AET is not listed in DicomModalities (and DicomAlwaysAllow{request} is false)"
        if len(found) == 1:
            modality = found[0]
            if check_host and peer.remote_ip != modality.host:
                return f"its IP address should be {modality.host} according to DicomModalities"
            if modality.allows(request):
                return None
            return f"Allow{request} is false for this modality in DicomModalities"
        # Several modalities share the AET: the one on this host decides, else all must allow it.
        allowed_by_all = True
        for modality in found:
            if modality.allows(request):
                if check_host and modality.host == peer.remote_ip:
                    return None
            else:
                allowed_by_all = False
        if allowed_by_all:
            return None
        return f"{len(found)} modalities have this AET in DicomModalities and not all of them allow {request}"


class _PolicyACSE(ACSE):
    """pynetdicom's ACSE with our acceptance rules and per-request presentation contexts."""

    def __init__(self, assoc: Association, owner: DicomServer) -> None:
        super().__init__(assoc)
        self._owner = owner
        self._unknown_sop_classes: list[str] = []

    def _negotiate_as_acceptor(self) -> None:
        request = self.requestor.primitive
        assert request is not None
        peer = Peer(str(request.calling_ae_title), str(request.called_ae_title), str(self.requestor.address))
        refusal = self._owner.policy.association_refusal(peer)
        if refusal is not None:
            reason, why = refusal
            logger.warning("DICOM association from %s rejected: %s", peer.describe(), why)
            self.send_reject(*reason)
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        proposed = [str(cx.abstract_syntax) for cx in request.presentation_context_definition_list]
        contexts, self._unknown_sop_classes = self._owner.supported.for_request(proposed)
        if self._unknown_sop_classes:
            logger.info(
                "accepting unknown SOP classes %s from %s (UnknownSopClassAccepted)",
                self._unknown_sop_classes,
                peer.describe(),
            )
        self.acceptor.supported_contexts = contexts
        super()._negotiate_as_acceptor()
        if self.assoc.is_established:
            logger.info(
                "DICOM association from %s accepted with %d of %d presentation contexts",
                peer.describe(),
                len(self.assoc.accepted_contexts),
                len(proposed),
            )

    def _check_sop_class_common_extended(self) -> dict[UID, SOPClassCommonExtendedNegotiation]:
        accepted = super()._check_sop_class_common_extended()
        # pynetdicom picks the service of a request from its SOP class, or from this negotiation:
        # declaring the unknown classes as storage makes C-STORE on them reach our handler.
        for uid in self._unknown_sop_classes:
            item = SOPClassCommonExtendedNegotiation()
            item.sop_class_uid = UID(uid)
            item.service_class_uid = UID(STORAGE_SERVICE_CLASS)
            accepted[UID(uid)] = item
        return accepted


_LOGGING_EVENTS = (evt.EVT_PDU_RECV, evt.EVT_PDU_SENT, evt.EVT_DIMSE_RECV, evt.EVT_DIMSE_SENT)


def _drop_logging_handlers(target: Association | ThreadedAssociationServer) -> None:
    """pynetdicom binds logging handlers that format every PDU and DIMSE message even when nothing
    is logged (a measurable cost per C-STORE); we bind nothing else to these events."""
    for event in _LOGGING_EVENTS:
        for handler, _ in list(cast(list[tuple[Any, Any]], target.get_handlers(event))):
            target.unbind(event, handler)


class _RequestHandler(RequestHandler):
    """One accepted connection: socket options, our ACSE, the bounded PDU reader, then start."""

    def handle(self) -> None:
        server = cast(_AssociationServer, self.server)
        owner = server.owner
        sock = cast(socket.socket, self.request)
        try:
            # Without TCP_NODELAY, each DIMSE exchange waits ~40 ms for a delayed ACK (Nagle).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Bounds every blocking send/recv: a silent peer cannot hold a thread forever.
            sock.settimeout(owner.socket_timeout)
        except OSError as exc:
            logger.info("DICOM connection from %s lost at once: %s", self.client_address, exc)
            return
        assoc = self._create_association()
        _drop_logging_handlers(assoc)
        assoc.acse = _PolicyACSE(assoc, owner)
        bound_pdu_reading(assoc.dul, owner.pdu_limits)
        event_driven(assoc)  # its two threads wait for events instead of polling every 1 ms
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        assoc.start()


class _AssociationServer(ThreadedAssociationServer):
    daemon_threads = True

    def __init__(
        self, owner: DicomServer, ae: AE, address: tuple[str, int], handlers: list[evt.EventHandlerType]
    ) -> None:
        self.owner = owner
        # The shared contexts are given per association by `_PolicyACSE`: pynetdicom deep-copies
        # the server's list for every association, so it only gets this minimal one.
        minimal = list(owner.supported.contexts[:1])
        super().__init__(ae, address, owner.ae_title, minimal, None, handlers, _RequestHandler)


class _KnownFailures(logging.Filter):
    """Drops pynetdicom's traceback of a `DicomVaultError` our handlers raise on purpose (a C-MOVE
    failing before its sub-operations): the handler has logged why, at warning level."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DicomVaultError))


_KNOWN_FAILURES = _KnownFailures()


class DicomServer:
    """The DICOM server of one `ServerContext` (see the module docstring)."""

    def __init__(self, context: ServerContext) -> None:
        config = context.config
        self._context = context
        self.ae_title = str(config.dicom_aet)
        self.policy = AccessPolicy(config, context.modalities)
        self.supported = SupportedContexts.from_config(config)
        timeout = float(config.dicom_scp_timeout) if config.dicom_scp_timeout > 0 else None
        self.socket_timeout = timeout
        self.pdu_limits = PduLimits(
            maximum_pdu_length=int(config.maximum_pdu_length),
            read_timeout=timeout,
            max_dataset_bytes=int(config.maximum_upload_size),
        )
        self._operations = threading.BoundedSemaphore(max(1, int(config.dicom_threads_count)))
        self._find = FindScp(context, self._guard, self._operations)
        self._retrieve = RetrieveScp(context, self._guard, self.ae_title)
        self._ae = AE(ae_title=self.ae_title)
        self._ae.maximum_pdu_size = int(config.maximum_pdu_length)
        self._ae.acse_timeout = timeout
        self._ae.dimse_timeout = timeout
        self._ae.network_timeout = timeout
        self._ae.maximum_associations = MAX_ASSOCIATIONS
        self._server: _AssociationServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def port(self) -> int | None:
        server = self._server
        return None if server is None else int(server.server_address[1])

    def start(self, host: str = "0.0.0.0", port: int | None = None) -> int:
        """Listen on `host:port` (None: DicomPort, 0: any free port) and serve associations on
        background threads; returns the bound port."""
        with self._lock:
            if self._server is not None:
                raise DicomVaultError(ErrorCode.BAD_SEQUENCE_OF_CALLS, "the DICOM server is already running")
            port = int(self._context.config.dicom_port) if port is None else port
            handlers: list[evt.EventHandlerType] = [
                (evt.EVT_C_ECHO, self._on_echo),
                (evt.EVT_C_STORE, self._on_store),
                (evt.EVT_C_FIND, self._find.handle),
                (evt.EVT_C_MOVE, self._retrieve.handle_move),
                (evt.EVT_C_GET, self._retrieve.handle_get),
            ]
            try:
                server = _AssociationServer(self, self._ae, (host, port), handlers)
            except OSError as exc:
                raise DicomVaultError(
                    ErrorCode.DICOM_PORT_IN_USE, f"cannot listen on DICOM port {port}: {exc.strerror or exc}"
                ) from exc
            _drop_logging_handlers(server)
            # pynetdicom formats every request and response identifier for its log even when the
            # log level discards it (its own qrscp app turns this off for speed); we log our own
            # summaries. These two process-wide switches only affect pynetdicom's logging.
            pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
            pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
            service_logger = logging.getLogger("pynetdicom.service_class")
            if _KNOWN_FAILURES not in service_logger.filters:
                service_logger.addFilter(_KNOWN_FAILURES)
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="dicom-server", daemon=True
            )
            thread.start()
            self._server, self._thread = server, thread
            bound = int(server.server_address[1])
        logger.warning("DICOM server listening with AET %s on port %d", self.ae_title, bound)
        return bound

    def close(self) -> None:
        """Stop listening, abort the associations in progress, wait for the threads."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        if server is None:
            return
        socketserver.BaseServer.shutdown(server)  # ends serve_forever
        for assoc in server.active_associations:
            assoc.abort()
        server.server_close()
        if thread is not None:
            thread.join(timeout=10)
        logger.warning("DICOM server stopped")

    # ---- requests --------------------------------------------------------------------------

    def _guard(self, event: Event, request: str) -> Peer | None:
        peer = peer_of(event.assoc)
        why = self.policy.request_refusal(peer, request)
        if why is None:
            return peer
        logger.warning(
            "DICOM %s request refused to %s: %s; aborting the association (as Orthanc does)",
            request,
            peer.describe(),
            why,
        )
        event.assoc.abort()
        return None

    def _on_echo(self, event: Event) -> int:
        self._guard(event, "Echo")
        return _SUCCESS  # not sent if the association was aborted

    def _on_store(self, event: Event) -> int:
        peer = self._guard(event, "Store")
        if peer is None:
            return _CANNOT_UNDERSTAND  # not sent: the association is aborted
        request = cast(C_STORE, event.request)
        stream = cast(io.BytesIO, request.DataSet).getvalue()
        transfer_syntax = UID(event.context.transfer_syntax)
        sop_class = str(request.AffectedSOPClassUID)
        sop_instance = str(request.AffectedSOPInstanceUID)
        found = _sop_identifiers(stream, transfer_syntax)
        if found is None:
            logger.warning(
                "C-STORE from %s refused: its data set (SOP instance %s) cannot be read or lacks "
                "SOPClassUID/SOPInstanceUID",
                peer.describe(),
                sop_instance,
            )
            return _CANNOT_UNDERSTAND
        if found != (sop_class, sop_instance):
            logger.warning(
                "C-STORE from %s refused: the data set holds SOP class %s / instance %s, the request announced %s / %s",
                peer.describe(),
                *found,
                sop_class,
                sop_instance,
            )
            return _DOES_NOT_MATCH_SOP_CLASS
        meta = event.file_meta
        meta.SourceApplicationEntityTitle = peer.calling_aet
        raw = b"".join((b"\x00" * 128, b"DICM", encode_file_meta(meta), stream))
        origin = Origin(RequestOrigin.DICOM_PROTOCOL, peer.remote_ip, peer.calling_aet, peer.called_aet)
        with self._operations:
            try:
                result = self._context.ingest.store_sync(raw, origin)
            except DicomVaultError as exc:
                logger.warning("C-STORE of instance %s from %s failed: %s", sop_instance, peer.describe(), exc)
                return exc.dimse_status
            except Exception:
                logger.exception(
                    "C-STORE of instance %s from %s failed (internal error)", sop_instance, peer.describe()
                )
                return dimse_status(ErrorCode.INTERNAL_ERROR)
        logger.info("C-STORE of instance %s from %s: %s", result.instance_id, peer.describe(), result.status.value)
        return _SUCCESS


def _sop_identifiers(stream: bytes, transfer_syntax: UID) -> tuple[str, str] | None:
    """(SOPClassUID, SOPInstanceUID) of an encoded data set, reading no further than (0008,0018);
    None when they are missing or the data set cannot be read."""
    data = stream
    try:
        if transfer_syntax.is_deflated:
            data = zlib.decompressobj(-zlib.MAX_WBITS).decompress(stream, _INFLATE_LIMIT)
        dataset = read_dataset(
            io.BytesIO(data),
            transfer_syntax.is_implicit_VR,
            transfer_syntax.is_little_endian,
            stop_when=lambda tag, vr, length: tag > _SOP_INSTANCE_UID,
        )
        sop_class = dataset.get(_SOP_CLASS_UID)
        sop_instance = dataset.get(_SOP_INSTANCE_UID)
        if sop_class is None or sop_instance is None:
            return None
        values = (str(sop_class.value or "").strip("\0 "), str(sop_instance.value or "").strip("\0 "))
    except Exception:
        return None
    return values if all(values) else None
