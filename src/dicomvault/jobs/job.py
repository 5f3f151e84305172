"""`Job`: one unit of asynchronous work the jobs engine runs, step by step (Orthanc's `IJob`).

A job does its work in bounded steps so that the engine can pause or cancel it between two steps.
The engine calls, on one of its worker threads:

- `start()` each time the job begins running: the first time, after a resume and after a
  resubmit (a job opens its resources here, e.g. a DICOM association);
- `step()` repeatedly: one bounded piece of work, returning `StepOutcome.CONTINUE` while work
  remains and `StepOutcome.SUCCESS` when done. A failure is a raised `DicomVaultError` (its code is
  the job's `ErrorCode`); any other exception is a bug, reported as an internal error;
- `stop(reason)` once the job stops running for any reason (its resources are released there);
- `reset()` before a failed job is resubmitted: it starts over from its first step;
- `dispose()` once the engine forgets the job (history full, server stopping): outputs go.

`progress()` (0.0 to 1.0) and `content()` (the public JSON `Content` of `/jobs/{id}`) may be called
from any thread at any time: implementations keep them cheap and thread-safe. `output(key)` serves
`GET /jobs/{id}/{key}` (the archive of an archive job) once the job succeeded.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any


class StepOutcome(Enum):
    CONTINUE = "Continue"
    SUCCESS = "Success"


class StopReason(Enum):
    PAUSED = "Paused"
    CANCELED = "Canceled"
    SUCCESS = "Success"
    FAILURE = "Failure"


@dataclass(frozen=True)
class JobOutput:
    """A file a finished job produced, served as `GET /jobs/{id}/{key}`."""

    path: Path
    mime_type: str
    filename: str


class Job(ABC):
    #: Orthanc's job type names: "DicomModalityStore", "DicomMoveScu", "Archive", ...
    job_type: str = "Job"

    def start(self) -> None:  # noqa: B027  (optional hook)
        """About to run (again): acquire what the steps need."""

    @abstractmethod
    def step(self) -> StepOutcome:
        """Do one bounded piece of work; raise `DicomVaultError` to fail the job."""

    def stop(self, reason: StopReason) -> None:  # noqa: B027  (optional hook)
        """Stopped running (paused, canceled, finished): release what `start()` acquired."""

    def reset(self) -> None:  # noqa: B027  (optional hook)
        """Forget all progress: the job will run again from its first step (resubmit)."""

    def dispose(self) -> None:  # noqa: B027  (optional hook)
        """Forgotten by the engine: delete whatever the job keeps (temporary files, outputs)."""

    @abstractmethod
    def progress(self) -> float:
        """How far the job is, from 0.0 to 1.0."""

    def content(self) -> dict[str, Any]:
        """The job's public description (`Content` in `/jobs/{id}`)."""
        return {}

    def output(self, key: str) -> JobOutput | None:
        """The output `key` of a successful job, or None if it has no such output."""
        return None
