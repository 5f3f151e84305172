"""`DicomStoreJob`: sending stored instances to a modality with C-STORE, one instance per step
(Orthanc's "DicomModalityStore" job, behind `POST /modalities/{m}/store` and the C-MOVE SCP).

* One association is kept open from one step to the next (`StoreClient` negotiates again only
  when an instance needs a presentation context the association lacks); it is released when the
  job stops for any reason (pause, cancel, end) and opened again at the next step after a resume.
* An instance deleted (or unreadable) since the job was created is skipped with a warning and
  counted in `FailedInstancesCount`, as Orthanc does.
* Any other failure (peer unreachable, refused, failure status, presentation context refused)
  fails the job, unless the job is `Permissive`: the instance is then counted as failed and the
  job goes on. Orthanc 1.10.1 leaves `FailedInstancesCount` at 0 for the instances a permissive
  job skipped; counting them tells the client what was not sent.
* `LocalAet` in the content is the calling AET really used: a modality's own `LocalAet` wins
  over the one the job was given (Orthanc uses it as well, but shows the other one).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from dicomvault.context import ServerContext
from dicomvault.enums import FileContentType, MetadataType, ResourceType
from dicomvault.errors import DicomVaultError
from dicomvault.index.transactions import ReadTx
from dicomvault.jobs.job import Job, StepOutcome, StopReason
from dicomvault.model import FileInfo, ResourceRef
from dicomvault.network.modalities import RemoteModality
from dicomvault.network.scu import StoreClient, scu_parameters

logger = logging.getLogger(__name__)

_IDENTITY = (int(MetadataType.INSTANCE_SOP_CLASS_UID), int(MetadataType.INSTANCE_TRANSFER_SYNTAX))


def planned_contexts(tx: ReadTx, instances: Sequence[str]) -> list[tuple[str, str]]:
    """The distinct (SOP class, transfer syntax) pairs of `instances`, from their metadata, in
    order of first appearance: what the first association proposes."""
    ids = []
    for public_id in instances:
        ref = tx.lookup(public_id, ResourceType.INSTANCE)
        if ref is not None:
            ids.append(ref.internal_id)
    metadata = tx.metadata(ids, list(_IDENTITY))
    pairs: dict[tuple[str, str], None] = {}
    for internal_id in ids:
        values = metadata.get(internal_id, {})
        sop_class, syntax = values.get(_IDENTITY[0]), values.get(_IDENTITY[1])
        if sop_class and syntax:
            pairs[(sop_class, syntax)] = None
    return list(pairs)


class DicomStoreJob(Job):
    job_type = "DicomModalityStore"

    def __init__(
        self,
        context: ServerContext,
        modality: RemoteModality,
        instances: Sequence[str],
        *,
        local_aet: str,
        move_originator_aet: str = "",
        move_originator_id: int = 0,
        description: str = "",
        parent_resources: Sequence[str] = (),
        timeout: int | None = None,
        permissive: bool = False,
    ) -> None:
        self._context = context
        self._params = scu_parameters(context.config, modality, local_aet=local_aet, timeout=timeout)
        self._instances = list(instances)
        self._originator = (move_originator_aet, move_originator_id)
        self._description = description
        self._parents = list(parent_resources)
        self._permissive = permissive
        self._lock = threading.Lock()
        self._position = 0
        self._failed = 0
        self._client: StoreClient | None = None
        self._planned: list[tuple[str, str]] | None = None

    @property
    def permissive(self) -> bool:
        return self._permissive

    # ---- the engine's calls ---------------------------------------------------------------------

    def start(self) -> None:
        if self._planned is None:
            self._planned = self._context.index.read(lambda tx: planned_contexts(tx, self._instances))
        # The association itself opens at the first C-STORE: a job with nothing left to send
        # (or only deleted instances) never connects.
        self._client = StoreClient(self._params, self._planned)

    def step(self) -> StepOutcome:
        with self._lock:
            position = self._position
        if position >= len(self._instances):
            return StepOutcome.SUCCESS
        public_id = self._instances[position]
        failed = False
        raw = self._read(public_id)
        if raw is None:
            failed = True
        else:
            try:
                self._send(raw)
            except DicomVaultError as exc:
                if not self._permissive:
                    raise
                logger.warning(
                    "permissive job: instance %s not sent to %s: %s", public_id, self._params.remote_aet, exc
                )
                failed = True
        with self._lock:
            self._position = position + 1
            self._failed += int(failed)
            done = self._position >= len(self._instances)
        return StepOutcome.SUCCESS if done else StepOutcome.CONTINUE

    def stop(self, reason: StopReason) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def reset(self) -> None:
        with self._lock:
            self._position = 0
            self._failed = 0

    def progress(self) -> float:
        with self._lock:
            return 1.0 if not self._instances else self._position / len(self._instances)

    def content(self) -> dict[str, Any]:
        with self._lock:
            failed = self._failed
        out: dict[str, Any] = {
            "Description": self._description,
            "InstancesCount": len(self._instances),
            "FailedInstancesCount": failed,
            "LocalAet": self._params.local_aet,
            "RemoteAet": self._params.remote_aet,
        }
        if self._parents:
            out["ParentResources"] = list(self._parents)
        aet, message_id = self._originator
        if message_id:
            out["MoveOriginatorAET"] = aet
            out["MoveOriginatorID"] = message_id
        return out

    # ---- one instance ---------------------------------------------------------------------------

    def _read(self, public_id: str) -> bytes | None:
        def attachment(tx: ReadTx) -> FileInfo | None:
            ref = tx.lookup(public_id, ResourceType.INSTANCE)
            return None if ref is None else tx.attachment(ref.internal_id, FileContentType.DICOM)

        try:
            info = self._context.index.read(attachment)
            if info is not None:
                return self._context.accessor.read(info)
        except DicomVaultError as exc:
            logger.warning(
                "instance %s cannot be read, it is not sent to %s: %s", public_id, self._params.remote_aet, exc
            )
            return None
        logger.warning("an instance was removed after the job was issued: %s", public_id)
        return None

    def _send(self, raw: bytes) -> None:
        client = self._client
        if client is None:  # step() without start(): the engine always starts a job first
            client = self._client = StoreClient(self._params, self._planned or ())
        aet, message_id = self._originator
        client.store(raw, originator_aet=aet, originator_id=message_id)


_INSTANCE_NUMBER = 0x00200013
_NO_NUMBER = 2**63


def _instance_number(tags: dict[int, str]) -> int:
    text = tags.get(_INSTANCE_NUMBER, "").strip()
    try:
        return int(float(text)) if text else _NO_NUMBER
    except ValueError:
        return _NO_NUMBER


def instances_to_send(tx: ReadTx, ref: ResourceRef) -> list[str]:
    """The instances of a resource of any level, in sending order: series after series, and
    within a series by InstanceNumber (then in the order they were stored), as recent Orthanc
    versions send them. An instance is itself."""
    if ref.level is ResourceType.INSTANCE:
        return [ref.public_id]
    ordered: list[str] = []
    for series in tx.descendants(ref, ResourceType.SERIES):
        instances = tx.children([series.internal_id])[series.internal_id]
        tags = tx.main_tags([i.internal_id for i in instances])
        keyed = sorted((_instance_number(tags[i.internal_id]), n, i.public_id) for n, i in enumerate(instances))
        ordered += [public_id for _, _, public_id in keyed]
    return ordered
