"""The C-MOVE and C-GET SCP: which stored instances a retrieve names, and handing them to
pynetdicom's sub-operation machinery (C-MOVE: a new association to the destination; C-GET: the
requestor's own association).

Facts mirrored from Orthanc 1.10.1 (its OrthancMoveRequestHandler / OrthancGetRequestHandler):

* The resources are found by the identifier of the QueryRetrieveLevel, each of its `\\`-separated
  values looked up exactly (normalised identifiers, as `/tools/lookup`): PatientID, at STUDY level
  AccessionNumber when it is not empty else StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID.
  Without QueryRetrieveLevel the level is deduced, from the instance level up, as the first whose
  identifier is present. No identifier, or nothing found: a failure status (Orthanc: 0xC000).
* The C-MOVE destination is the modality of `DicomModalities` with that AET (`by_aet_unique`); an
  unknown one answers 0xA801 (Refused: Move Destination unknown; Orthanc 1.10.1 answers 0xC000).
* `SynchronousCMove` true (Orthanc's default): the sub-operations run inside the C-MOVE, a pending
  response after each one with the counts. False: a `DicomStoreJob` ("C-MOVE") is submitted to the
  jobs engine and the C-MOVE succeeds at once.
* Instances are sent as stored, never transcoded: the sub-association proposes each (SOP class,
  stored transfer syntax) in a context of its own, and for uncompressed or deflated instances a
  fallback context (Explicit/Implicit VR Little Endian) which pynetdicom re-encodes to losslessly
  only when the peer refuses the stored syntax. A compressed instance whose syntax the peer refuses
  fails its sub-operation (Orthanc would transcode it); the others go on, and the final status is
  0xB000 (warning) with the Failed SOP Instance UID List, or 0xA702 when every sub-operation failed.
  With C-GET, the requestor proposes the contexts: the same rules apply to what it accepted.

Differences imposed by pynetdicom's machinery, kept on purpose: a C-MOVE failing before its
sub-operations answers 0xC513 (pynetdicom's "unable to process" code; a C-GET answers Orthanc's
0xC000, counting one failed sub-operation where Orthanc counts none); a pending response follows
every sub-operation (Orthanc sends none after the last one); the asynchronous C-MOVE reports zero
sub-operations instead of Orthanc's count; the Move Originator AET of synchronous sub-operations is
our AET (pynetdicom's choice; the asynchronous job sends the requestor's) and their calling AET is
`DicomAet` (a modality's `LocalAet` is not applied).
"""

from __future__ import annotations

import io
import logging
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import build_context, evt
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext

from dicomvault.context import ServerContext
from dicomvault.enums import FileContentType, MetadataType, ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.find.query import parse_level
from dicomvault.index.find import lookup_identifier
from dicomvault.index.transactions import ReadTx
from dicomvault.model import FileInfo, ResourceRef
from dicomvault.network.find_scp import decoded_identifier
from dicomvault.network.modalities import RemoteModality
from dicomvault.network.pdu import PduLimits, bound_pdu_reading
from dicomvault.network.presentation import EXPLICIT_LE, MAX_CONTEXTS, UNCOMPRESSED_FALLBACK, sending_syntaxes
from dicomvault.network.reactor import event_driven
from dicomvault.network.store_job import DicomStoreJob

if TYPE_CHECKING:
    from dicomvault.network.scp import Guard, Peer

logger = logging.getLogger(__name__)

QUERY_RETRIEVE_LEVEL = 0x00080052
ACCESSION_NUMBER = 0x00080050
_IDENTIFIER_TAGS = {
    ResourceType.PATIENT: 0x00100020,  # PatientID
    ResourceType.STUDY: 0x0020000D,  # StudyInstanceUID
    ResourceType.SERIES: 0x0020000E,  # SeriesInstanceUID
    ResourceType.INSTANCE: 0x00080018,  # SOPInstanceUID
}
_PENDING = 0xFF00
_CANCEL = 0xFE00
_UNABLE_TO_PROCESS = 0xC000


@dataclass(frozen=True)
class StoredInstance:
    ref: ResourceRef
    file: FileInfo
    sop_class_uid: str
    transfer_syntax: str


@dataclass(frozen=True)
class Selection:
    """What a C-MOVE/C-GET identifier names: resources of one level and their instances."""

    level: ResourceType
    resources: tuple[ResourceRef, ...]
    instances: tuple[StoredInstance, ...]


def identifier_values(identifier: Dataset) -> dict[int, str]:
    """The string values of an identifier's elements (binary and sequence values left out)."""
    values: dict[int, str] = {}
    try:
        for element in identifier:
            if element.VR == "SQ" or isinstance(element.value, bytes | bytearray):
                continue
            value = element.value
            if isinstance(value, pydicom.multival.MultiValue | list | tuple):
                values[int(element.tag)] = "\\".join(str(v) for v in value)
            else:
                values[int(element.tag)] = "" if value is None else str(value)
    except Exception as exc:  # untrusted bytes: any decoding error is the peer's
        raise DicomVaultError(ErrorCode.BAD_REQUEST, f"the retrieve identifier cannot be decoded: {exc}") from exc
    return values


def _level_tag(level: ResourceType, values: dict[int, str]) -> int:
    if level is ResourceType.STUDY and values.get(ACCESSION_NUMBER, "").strip():
        return ACCESSION_NUMBER
    return _IDENTIFIER_TAGS[level]


def _lookup(tx: ReadTx, level: ResourceType, tag: int, value: str) -> list[ResourceRef]:
    found: dict[int, ResourceRef] = {}
    for token in value.split("\\"):
        for ref in lookup_identifier(tx, level, tag, token):
            found.setdefault(ref.internal_id, ref)
    return list(found.values())


def select(tx: ReadTx, values: dict[int, str], operation: str) -> Selection:
    """The resources and instances an identifier names (see the module docstring)."""
    level_text = values.get(QUERY_RETRIEVE_LEVEL, "").strip()
    levels = (
        [parse_level(level_text)]
        if level_text
        else [ResourceType.INSTANCE, ResourceType.SERIES, ResourceType.STUDY, ResourceType.PATIENT]
    )
    for level in levels:
        tag = _level_tag(level, values)
        if tag in values:
            resources = _lookup(tx, level, tag, values[tag])
            break
    else:
        if level_text:
            why = f"no DICOM identifier provided in the {operation} request for this query retrieve level"
        else:
            why = f"invalid fields in a {operation} request (no QueryRetrieveLevel and no identifier)"
        raise DicomVaultError(ErrorCode.BAD_REQUEST, why)
    if not resources:
        raise DicomVaultError(ErrorCode.BAD_REQUEST, f"{operation} request matching no resource stored here")
    instances: dict[int, ResourceRef] = {}
    for ref in resources:
        for instance in tx.descendants(ref, ResourceType.INSTANCE):
            instances.setdefault(instance.internal_id, instance)
    ids = list(instances)
    files = tx.attachments(ids, FileContentType.DICOM)
    kinds = [MetadataType.INSTANCE_SOP_CLASS_UID, MetadataType.INSTANCE_TRANSFER_SYNTAX]
    metadata = tx.metadata(ids, kinds)
    stored = tuple(
        StoredInstance(
            instances[iid],
            files[iid][0],
            metadata[iid].get(MetadataType.INSTANCE_SOP_CLASS_UID, ""),
            metadata[iid].get(MetadataType.INSTANCE_TRANSFER_SYNTAX, ""),
        )
        for iid in ids
        if files.get(iid)  # deleted meanwhile
    )
    return Selection(level, tuple(resources), stored)


def proposed_contexts(instances: Sequence[StoredInstance]) -> list[PresentationContext]:
    """The contexts to send `instances` as stored: one per (SOP class, stored transfer syntax)
    proposing that syntax alone, so that an acceptor preferring another one cannot make pynetdicom
    re-encode; then, per SOP class with uncompressed (or deflated) instances, one proposing
    Explicit and Implicit VR Little Endian as the fallback pynetdicom converts to losslessly.
    At most 128 (PS3.8), the exact ones first."""
    pairs = dict.fromkeys((i.sop_class_uid, i.transfer_syntax or EXPLICIT_LE) for i in instances if i.sop_class_uid)
    exact = [build_context(sop, [ts]) for sop, ts in pairs]
    fallbacks = [
        build_context(sop, list(UNCOMPRESSED_FALLBACK))
        for sop in dict.fromkeys(sop for sop, ts in pairs if len(sending_syntaxes(ts)) > 1)
    ]
    contexts = exact + fallbacks
    if len(contexts) > MAX_CONTEXTS:
        logger.warning(
            "%d presentation contexts needed to send these instances as stored: only the first %d are "
            "proposed, instances needing the others fail",
            len(contexts),
            MAX_CONTEXTS,
        )
    return contexts[:MAX_CONTEXTS]


class RetrieveScp:
    """The handlers of `evt.EVT_C_MOVE` and `evt.EVT_C_GET` (generators, pynetdicom's protocol)."""

    def __init__(self, context: ServerContext, guard: Guard, local_aet: str) -> None:
        self._context = context
        self._guard = guard
        self._local_aet = local_aet
        config = context.config
        self._outgoing_limits = PduLimits(int(config.maximum_pdu_length), float(config.dicom_scu_timeout) or None)

    def _select(self, event: Event, operation: str) -> Selection:
        values = identifier_values(decoded_identifier(event))
        return self._context.index.read(lambda tx: select(tx, values, operation))

    def _load(self, instance: StoredInstance) -> Dataset:
        """The stored file as a data set for pynetdicom (read lazily: encoded back as it came);
        on failure a placeholder that makes the sub-operation fail and be listed as failed."""
        try:
            data = self._context.accessor.read(instance.file)
            return pydicom.dcmread(io.BytesIO(data))
        except Exception as exc:  # a damaged file fails its own sub-operation only
            logger.error("cannot read the stored file of instance %s: %s", instance.ref.public_id, exc)
            placeholder = Dataset()
            placeholder.SOPInstanceUID = ""
            return placeholder

    def _sub_operations(self, event: Event, selection: Selection, peer: Peer) -> Iterator[tuple[int, Dataset | None]]:
        for instance in selection.instances:
            if event.is_cancelled:
                logger.info("retrieve from %s canceled by the peer", peer.describe())
                yield _CANCEL, None
                return
            yield _PENDING, self._load(instance)

    def handle_move(self, event: Event) -> Iterator[Any]:
        peer = self._guard(event, "Move")
        if peer is None:
            return
        destination = str(event.move_destination or "").strip()
        try:
            modality = self._context.modalities.by_aet_unique(destination)
        except DicomVaultError as exc:
            logger.warning("C-MOVE from %s refused: unknown destination: %s", peer.describe(), exc.details or exc)
            yield None, None  # pynetdicom answers 0xA801 (Move Destination unknown)
            return
        try:
            selection = self._select(event, "C-MOVE")
        except DicomVaultError as failure:
            logger.warning("C-MOVE from %s to %s failed: %s", peer.describe(), destination, failure)
            yield modality.host, modality.port
            # pynetdicom turns this into a failure response (0xC513) before any sub-operation.
            raise failure
        if not self._context.config.synchronous_cmove:
            self._submit_job(event, peer, modality, selection)
            yield modality.host, modality.port
            yield 0  # the job performs the sub-operations
            return
        logger.info(
            "C-MOVE from %s: sending %d instances to %s (%s:%d)",
            peer.describe(),
            len(selection.instances),
            destination,
            modality.host,
            modality.port,
        )
        options = {
            "contexts": proposed_contexts(selection.instances),
            "max_pdu": int(self._context.config.maximum_pdu_length),
            "evt_handlers": [(evt.EVT_CONN_OPEN, self._outgoing_connection)],
        }
        yield modality.host, modality.port, options
        yield len(selection.instances)
        yield from self._sub_operations(event, selection, peer)

    def _outgoing_connection(self, event: Event) -> None:
        dul = event.assoc.dul
        raw = dul.socket.socket if dul.socket is not None else None
        if raw is not None:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        bound_pdu_reading(dul, self._outgoing_limits)
        event_driven(event.assoc)  # (the DUL already runs: its part applies from its next turn)

    def _submit_job(self, event: Event, peer: Peer, modality: RemoteModality, selection: Selection) -> None:
        job = DicomStoreJob(
            self._context,
            modality,
            [i.ref.public_id for i in selection.instances],
            local_aet=modality.local_aet or self._local_aet,
            move_originator_aet=peer.calling_aet,
            move_originator_id=int(event.request.MessageID or 0),
            description="C-MOVE",
            parent_resources=[r.public_id for r in selection.resources],
        )
        job_id = self._context.jobs.submit(job)
        logger.info(
            "C-MOVE from %s: job %s sends %d instances to %s",
            peer.describe(),
            job_id,
            len(selection.instances),
            modality.aet,
        )

    def handle_get(self, event: Event) -> Iterator[Any]:
        peer = self._guard(event, "Get")
        if peer is None:
            return
        try:
            selection = self._select(event, "C-GET")
        except DicomVaultError as failure:
            logger.warning("C-GET from %s failed: %s", peer.describe(), failure)
            yield 1
            yield _UNABLE_TO_PROCESS, None  # the final failure response, as Orthanc's 0xC000
            return
        logger.info("C-GET from %s: sending %d instances", peer.describe(), len(selection.instances))
        yield len(selection.instances)
        yield from self._sub_operations(event, selection, peer)
