"""The jobs engine: a registry of jobs and the worker threads that run them (Orthanc's
`JobsEngine` + `JobsRegistry`), behind `/jobs`.

States and transitions, as Orthanc 1.10.1 has them::

    Pending --(a worker takes it)--> Running --(last step)--> Success
       ^  |                            |  \\--(error)--------> Failure --(resubmit)--> Pending
       |  +--(pause)--> Paused <-------+ pause (between two steps)
       +-----(resume)----+             +--(cancel)--> Failure (ErrorCode 37, "This job was canceled")

Pending jobs run by decreasing priority, then in submission order, on `ConcurrentJobs` worker
threads (0: one per CPU core). Pause and cancel of a running job take effect between two steps.
Finished jobs (Success, Failure) stay listed until more than `JobsHistorySize` have finished;
the oldest are then forgotten (with their outputs). Jobs live in memory only: they are not saved
across restarts (Orthanc's `SaveJobs` is not supported).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from dicomvault.errors import DicomVaultError, ErrorCode, description
from dicomvault.jobs.job import Job, JobOutput, StepOutcome, StopReason

logger = logging.getLogger(__name__)


class JobState(Enum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCESS = "Success"
    FAILURE = "Failure"
    PAUSED = "Paused"
    RETRY = "Retry"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCESS, JobState.FAILURE)


def _timestamp(when: float) -> str:
    """Orthanc's job timestamps: `20261122T225958.408238`, UTC."""
    return datetime.fromtimestamp(when, UTC).strftime("%Y%m%dT%H%M%S.%f")


@dataclass(eq=False)
class _Record:
    id: str
    job: Job
    priority: int
    sequence: int
    created: float
    state: JobState = JobState.PENDING
    completed: float | None = None
    runtime: float = 0.0  # seconds spent running, summed over every run
    error: DicomVaultError | None = None
    pause_requested: bool = False
    cancel_requested: bool = False
    last_progress: float = 0.0  # kept once finished, so a forgotten job's progress is stable
    finished_order: int = field(default=0)


class JobsEngine:
    def __init__(
        self, threads: int = 2, history_size: int = 10, clock: Callable[[], float] = time.time, name: str = "jobs"
    ) -> None:
        self._threads_count = threads if threads > 0 else (os.cpu_count() or 1)
        self._history_size = max(history_size, 0)
        self._clock = clock
        self._lock = threading.Condition()
        self._records: dict[str, _Record] = {}
        self._pending: list[tuple[int, int, str]] = []  # (-priority, sequence, id): a heap
        self._sequence = itertools.count()
        self._finished = itertools.count(1)
        self._closing = False
        self._workers = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(self._threads_count)
        ]
        for worker in self._workers:
            worker.start()

    # ---- submitting and observing ----------------------------------------------------------------

    def submit(self, job: Job, priority: int = 0) -> str:
        with self._lock:
            if self._closing:
                raise DicomVaultError(ErrorCode.BAD_SEQUENCE_OF_CALLS, "the server is stopping: no new job accepted")
            record = _Record(str(uuid.uuid4()), job, priority, next(self._sequence), self._clock())
            self._records[record.id] = record
            heapq.heappush(self._pending, (-priority, record.sequence, record.id))
            self._lock.notify_all()
        logger.info("job %s (%s) submitted with priority %d", record.id, job.job_type, priority)
        return record.id

    def submit_and_wait(self, job: Job, priority: int = 0) -> dict[str, Any]:
        """Run `job` in the engine and wait for its end (Orthanc's synchronous jobs): its content
        on success, its error raised on failure."""
        job_id = self.submit(job, priority)
        with self._lock:
            record = self._records[job_id]
        state = self._wait(record, None)
        if state is JobState.FAILURE:
            raise record.error or DicomVaultError(ErrorCode.INTERNAL_ERROR, f"job {job_id} failed")
        if state is JobState.PAUSED:  # only when the server is stopping
            raise DicomVaultError(ErrorCode.BAD_SEQUENCE_OF_CALLS, f"job {job_id} was paused before its end")
        return job.content()

    def wait(self, job_id: str, timeout: float | None = None) -> JobState:
        """Block until the job is finished (or paused, which only a request can undo), or until
        `timeout` seconds passed; the state then. A job forgotten meanwhile (history full) was
        finished: its last state is answered."""
        with self._lock:
            record = self._require(job_id)
        return self._wait(record, timeout)

    def _wait(self, record: _Record, timeout: float | None) -> JobState:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while not (record.state.finished or record.state is JobState.PAUSED):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._lock.wait(remaining)
            return record.state

    def ids(self) -> list[str]:
        with self._lock:
            return [r.id for r in sorted(self._records.values(), key=lambda r: r.sequence)]

    def state(self, job_id: str) -> JobState:
        with self._lock:
            return self._require(job_id).state

    def describe(self, job_id: str) -> dict[str, Any]:
        """Orthanc's `/jobs/{id}`."""
        with self._lock:
            record = self._require(job_id)
            state, error, completed = record.state, record.error, record.completed
            runtime = record.runtime
        job = record.job
        progress = 1.0 if state is JobState.SUCCESS else (record.last_progress if state.finished else job.progress())
        code = error.code if error is not None else ErrorCode.SUCCESS
        answer: dict[str, Any] = {
            "ID": record.id,
            "Type": job.job_type,
            "Priority": record.priority,
            "State": state.value,
            "Progress": round(100 * min(max(progress, 0.0), 1.0)),
            "CreationTime": _timestamp(record.created),
            "Timestamp": _timestamp(self._clock()),
            "EffectiveRuntime": round(runtime, 3),
            "ErrorCode": int(code),
            "ErrorDescription": description(code),
            "ErrorDetails": (error.details or "") if error is not None else "",
            "Content": job.content(),
        }
        if completed is not None:
            answer["CompletionTime"] = _timestamp(completed)
        return answer

    def output(self, job_id: str, key: str) -> JobOutput:
        with self._lock:
            record = self._require(job_id)
            state = record.state
        if state is not JobState.SUCCESS:
            raise DicomVaultError(
                ErrorCode.INEXISTENT_ITEM, f"job {job_id} is {state.value}: its outputs exist once it succeeded"
            )
        found = record.job.output(key)
        if found is None:
            raise DicomVaultError(ErrorCode.INEXISTENT_ITEM, f"job {job_id} has no output named {key!r}")
        return found

    # ---- control ---------------------------------------------------------------------------------

    def pause(self, job_id: str) -> None:
        with self._lock:
            record = self._require(job_id)
            if record.state in (JobState.PENDING, JobState.RETRY):
                self._set_state(record, JobState.PAUSED)
            elif record.state is JobState.RUNNING:
                record.pause_requested = True
            # Paused, Success, Failure: nothing to do (Orthanc answers success too)
        logger.info("job %s: pause requested", job_id)

    def resume(self, job_id: str) -> None:
        with self._lock:
            record = self._require(job_id)
            if record.state is JobState.RUNNING and record.pause_requested:
                record.pause_requested = False  # not stopped yet: it just keeps running
                return
            if record.state is not JobState.PAUSED:
                raise DicomVaultError(
                    ErrorCode.BAD_REQUEST, f"job {job_id} is {record.state.value}: only a paused job can be resumed"
                )
            self._make_pending(record)
        logger.info("job %s resumed", job_id)

    def cancel(self, job_id: str) -> None:
        with self._lock:
            record = self._require(job_id)
            if record.state in (JobState.PENDING, JobState.PAUSED, JobState.RETRY):
                self._fail(record, DicomVaultError(ErrorCode.CANCELED_JOB))
            elif record.state is JobState.RUNNING:
                record.cancel_requested = True
        logger.info("job %s: cancel requested", job_id)

    def resubmit(self, job_id: str) -> None:
        with self._lock:
            record = self._require(job_id)
            if record.state is not JobState.FAILURE:
                raise DicomVaultError(
                    ErrorCode.BAD_REQUEST, f"job {job_id} is {record.state.value}: only a failed job can be resubmitted"
                )
            record.job.reset()
            record.error = None
            record.completed = None
            record.last_progress = 0.0
            self._make_pending(record)
        logger.info("job %s resubmitted", job_id)

    def close(self, timeout: float = 10.0) -> None:
        """Stop accepting jobs, pause running ones at their next step, and stop the workers."""
        with self._lock:
            self._closing = True
            for record in self._records.values():
                if record.state is JobState.RUNNING:
                    record.pause_requested = True
            self._lock.notify_all()
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.join(max(deadline - time.monotonic(), 0.0))
        with self._lock:
            records = list(self._records.values())
        for record in records:
            if record.state is not JobState.RUNNING:
                self._dispose(record.job)

    # ---- internals (called with the lock held unless said otherwise) -----------------------------

    def _require(self, job_id: str) -> _Record:
        record = self._records.get(job_id)
        if record is None:
            raise DicomVaultError(ErrorCode.UNKNOWN_RESOURCE, f"unknown job: {job_id}")
        return record

    def _set_state(self, record: _Record, state: JobState) -> None:
        record.state = state
        self._lock.notify_all()

    def _make_pending(self, record: _Record) -> None:
        record.pause_requested = record.cancel_requested = False
        self._set_state(record, JobState.PENDING)
        heapq.heappush(self._pending, (-record.priority, record.sequence, record.id))
        self._lock.notify_all()

    def _finish(self, record: _Record, state: JobState) -> None:
        record.completed = self._clock()
        record.finished_order = next(self._finished)
        record.pause_requested = record.cancel_requested = False
        self._set_state(record, state)
        self._forget_old()

    def _fail(self, record: _Record, error: DicomVaultError) -> None:
        record.error = error
        try:
            record.last_progress = record.job.progress()
        except Exception:
            logger.exception("job %s: progress() failed", record.id)
        self._finish(record, JobState.FAILURE)
        logger.warning("job %s (%s) failed: %s", record.id, record.job.job_type, error)

    def _forget_old(self) -> None:
        finished = sorted((r for r in self._records.values() if r.state.finished), key=lambda r: r.finished_order)
        for record in finished[: max(len(finished) - self._history_size, 0)]:
            del self._records[record.id]
            self._dispose(record.job)

    def _next(self) -> _Record | None:
        """The next pending job to run, waiting for one; None when the engine closes."""
        with self._lock:
            while True:
                if self._closing:
                    return None
                while self._pending:
                    _, _, job_id = heapq.heappop(self._pending)
                    record = self._records.get(job_id)
                    # Entries of jobs paused, canceled or forgotten since they were queued are stale.
                    if record is not None and record.state is JobState.PENDING:
                        self._set_state(record, JobState.RUNNING)
                        return record
                self._lock.wait()

    # ---- the worker threads (no lock held while a job works) -------------------------------------

    def _work(self) -> None:
        while (record := self._next()) is not None:
            self._run(record)

    def _run(self, record: _Record) -> None:
        job = record.job
        started = time.monotonic()
        try:
            job.start()
            while True:
                with self._lock:
                    if record.cancel_requested or record.pause_requested:
                        break
                if job.step() is StepOutcome.SUCCESS:
                    self._stop(job, StopReason.SUCCESS)
                    with self._lock:
                        record.runtime += time.monotonic() - started
                        record.last_progress = 1.0
                        self._finish(record, JobState.SUCCESS)
                    logger.info("job %s (%s) succeeded", record.id, job.job_type)
                    return
        except DicomVaultError as exc:
            self._ended_by_error(record, exc, started)
            return
        except Exception as exc:
            logger.exception("job %s (%s): unexpected error", record.id, job.job_type)
            self._ended_by_error(record, DicomVaultError(ErrorCode.INTERNAL_ERROR, str(exc) or None), started)
            return
        with self._lock:
            cancel = record.cancel_requested
        self._stop(job, StopReason.CANCELED if cancel else StopReason.PAUSED)
        with self._lock:
            record.runtime += time.monotonic() - started
            if cancel:
                self._fail(record, DicomVaultError(ErrorCode.CANCELED_JOB))
            else:
                record.pause_requested = False
                self._set_state(record, JobState.PAUSED)
                logger.info("job %s (%s) paused", record.id, job.job_type)

    def _ended_by_error(self, record: _Record, error: DicomVaultError, started: float) -> None:
        self._stop(record.job, StopReason.FAILURE)
        with self._lock:
            record.runtime += time.monotonic() - started
            self._fail(record, error)

    @staticmethod
    def _dispose(job: Job) -> None:
        try:
            job.dispose()
        except Exception:
            logger.exception("job %s: dispose() failed", job.job_type)

    @staticmethod
    def _stop(job: Job, reason: StopReason) -> None:
        try:
            job.stop(reason)
        except Exception:
            logger.exception("job %s: stop(%s) failed", job.job_type, reason.value)
