"""`DicomMoveScuJob`: asking a modality to send resources somewhere with C-MOVE, one resource per
step (Orthanc's "DicomMoveScu" job, behind `/queries/{id}/retrieve`, `/queries/{id}/answers/{i}/retrieve`
and `/modalities/{m}/move`).

One association is kept open from one step to the next and released when the job stops (pause,
cancel, end). A step lasts as long as its C-MOVE: the peer sends the instances to the destination
while it runs, so a pause or a cancel takes effect once the current C-MOVE has finished, and the
resources after it are not requested.

Each resource is a flat map of tags carrying its QueryRetrieveLevel (a C-FIND answer, or a
resource of `/modalities/{m}/move`); its identifying tags make the C-MOVE identifier. The content
is Orthanc 1.10.1's: `Description`, `LocalAet`, `RemoteAet` and `Query` (the resources, in the
DICOM-as-JSON format the request asked for).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from dicomvault.context import ServerContext
from dicomvault.dicom.tags_json import TagsFormat
from dicomvault.enums import ResourceType
from dicomvault.errors import DicomVaultError
from dicomvault.jobs.job import Job, StepOutcome, StopReason
from dicomvault.network.modalities import RemoteModality
from dicomvault.network.queries import FindAnswer, answer_level, move
from dicomvault.network.scu import ScuAssociation, control_contexts, scu_parameters

logger = logging.getLogger(__name__)


class DicomMoveScuJob(Job):
    job_type = "DicomMoveScu"

    def __init__(
        self,
        context: ServerContext,
        modality: RemoteModality,
        resources: Sequence[FindAnswer],
        *,
        level: ResourceType,
        target_aet: str,
        local_aet: str | None = None,
        timeout: int | None = None,
        query_format: TagsFormat = TagsFormat.SHORT,
        description: str = "",
        permissive: bool = False,
    ) -> None:
        self._context = context
        self._params = scu_parameters(context.config, modality, local_aet=local_aet, timeout=timeout)
        self._resources = list(resources)
        self._level = level  # when a resource does not say its own
        self._target = target_aet
        self._format = query_format
        self._description = description
        self._permissive = permissive
        self._lock = threading.Lock()
        self._position = 0
        self._association: ScuAssociation | None = None

    @property
    def target_aet(self) -> str:
        return self._target

    def start(self) -> None:
        self._association = ScuAssociation(self._params, control_contexts())  # opened by the first C-MOVE

    def step(self) -> StepOutcome:
        with self._lock:
            position = self._position
        if position >= len(self._resources):
            return StepOutcome.SUCCESS
        resource = self._resources[position]
        association = self._association
        if association is None:
            association = self._association = ScuAssociation(self._params, control_contexts())
        level = answer_level(resource, self._level)
        values = {tag: value or "" for tag, _name, _kind, value in resource.elements}
        try:
            move(association, level, values, self._target, default_encoding=self._context.config.default_encoding)
        except DicomVaultError as exc:
            if not self._permissive:
                raise
            logger.warning("permissive job: C-MOVE of resource %d to %s failed: %s", position, self._target, exc)
        with self._lock:
            self._position = position + 1
            done = self._position >= len(self._resources)
        return StepOutcome.SUCCESS if done else StepOutcome.CONTINUE

    def stop(self, reason: StopReason) -> None:
        association, self._association = self._association, None
        if association is not None:
            association.close()

    def reset(self) -> None:
        with self._lock:
            self._position = 0

    def progress(self) -> float:
        with self._lock:
            return 1.0 if not self._resources else self._position / len(self._resources)

    def content(self) -> dict[str, Any]:
        return {
            "Description": self._description,
            "LocalAet": self._params.local_aet,
            "Query": [resource.render(self._format) for resource in self._resources],
            "RemoteAet": self._params.remote_aet,
        }
