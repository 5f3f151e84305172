"""Stability: which patients, studies and series are still receiving instances, and the changes
logged when they stop (`StablePatient`, `StableStudy`, `StableSeries`) or when a series is
complete (`CompletedSeries`).

Orthanc 1.10.1's behaviour, reproduced here:

- Storing an instance (not an AlreadyStored one) marks its series, study and patient unstable,
  in that order, each moved to the young end of one least-recently-marked list. The state lives
  in memory only: after a restart everything is stable and nothing received before it ever gets
  a Stable* change. A deletion marks nothing.
- Ages are counted in whole seconds of a seconds-resolution clock: a resource marked during
  second S is stable from second S + StableAge + 1 on (StableAge <= 0 means 60). A monitoring
  pass every half second takes the oldest resources off the list while they are that old, and
  logs a Stable* change for each one that still exists with the same internal id (a resource
  deleted, or deleted and created again, meanwhile gets none).
- `IsStable` in a resource's description is "not on the list"; this monitor is its only source.
- `CompletedSeries` is logged in the store transaction, after the New* changes, each time an
  instance arrives in a series that is then complete.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dicomvault.dicom.parsing import ParsedInstance
from dicomvault.enums import ChangeType, ResourceType
from dicomvault.index.changes import log_change_if_current, log_if_series_completed
from dicomvault.index.database import Index
from dicomvault.index.transactions import WriteTx
from dicomvault.ingest.store import expected_instances, now_iso
from dicomvault.model import ResourceRef

logger = logging.getLogger(__name__)

ORTHANC_DEFAULT_STABLE_AGE = 60
PASS_PERIOD = 0.5  # seconds between two monitoring passes, as Orthanc's monitor thread

_STABLE_CHANGE = {
    ResourceType.PATIENT: ChangeType.STABLE_PATIENT,
    ResourceType.STUDY: ChangeType.STABLE_STUDY,
    ResourceType.SERIES: ChangeType.STABLE_SERIES,
}
_MARKED_LEVELS = (ResourceType.SERIES, ResourceType.STUDY, ResourceType.PATIENT)


@dataclass(frozen=True)
class _Unstable:
    ref: ResourceRef
    second: int  # whole second of the clock when last marked


class StabilityMonitor:
    """The unstable resources of one server, and the thread that declares them stable.

    `instance_stored` is the ingest's after-store hook (it runs in the index writer's
    transaction); `run_pass` is one monitoring pass, which tests call with a fake clock instead of
    starting the thread.
    """

    def __init__(
        self,
        index: Index,
        stable_age: int,
        clock: Callable[[], float] = time.time,
        period: float = PASS_PERIOD,
    ) -> None:
        self._index = index
        self.stable_age = stable_age if stable_age > 0 else ORTHANC_DEFAULT_STABLE_AGE
        self._clock = clock
        self._period = period
        self._unstable: OrderedDict[int, _Unstable] = OrderedDict()
        self._lock = threading.Lock()  # guards `_unstable`
        self._pass_lock = threading.Lock()  # one pass at a time: taking off the list, then logging
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the state ---------------------------------------------------------------------------
    def is_stable(self, internal_id: int) -> bool:
        with self._lock:
            return internal_id not in self._unstable

    def unstable(self) -> list[ResourceRef]:
        """The unstable resources, oldest first."""
        with self._lock:
            return [entry.ref for entry in self._unstable.values()]

    def mark_unstable(self, refs: Sequence[ResourceRef]) -> None:
        second = self._second()
        with self._lock:
            for ref in refs:
                self._unstable.pop(ref.internal_id, None)
                self._unstable[ref.internal_id] = _Unstable(ref, second)

    def _second(self) -> int:
        return math.floor(self._clock())

    # -- the ingest's hook -------------------------------------------------------------------
    def instance_stored(self, tx: WriteTx, parsed: ParsedInstance, now: str) -> None:
        """What Orthanc does at the end of a successful store: `CompletedSeries` if the series is
        now complete, then the series, study and patient become unstable."""
        wanted = {
            parsed.series_id: ResourceType.SERIES,
            parsed.study_id: ResourceType.STUDY,
            parsed.patient_id: ResourceType.PATIENT,
        }
        rows = tx.fetch_all(
            "SELECT internalId, resourceType, publicId FROM Resources WHERE publicId IN (?, ?, ?)", list(wanted)
        )
        found = {
            ResourceType(level): ResourceRef(ResourceType(level), public_id, int(internal_id))
            for internal_id, level, public_id in rows
            if wanted.get(public_id) == level
        }
        series = found.get(ResourceType.SERIES)
        if series is not None:
            log_if_series_completed(tx, series, expected_instances(parsed), now)
        self.mark_unstable([found[level] for level in _MARKED_LEVELS if level in found])

    # -- monitoring --------------------------------------------------------------------------
    def run_pass(self) -> list[ResourceRef]:
        """Take the resources old enough off the list and log their Stable* changes; returns them
        (in the order logged)."""
        with self._pass_lock:
            instant = self._clock()
            now = math.floor(instant)
            stable: list[ResourceRef] = []
            with self._lock:
                while self._unstable:
                    oldest = next(iter(self._unstable.values()))
                    if now - oldest.second <= self.stable_age:
                        break
                    self._unstable.popitem(last=False)
                    stable.append(oldest.ref)
            if stable:
                date = now_iso(lambda: instant)

                def write(tx: WriteTx) -> list[ResourceRef]:
                    return [ref for ref in stable if log_change_if_current(tx, _STABLE_CHANGE[ref.level], ref, date)]

                try:
                    logged = self._index.write(write)
                except Exception:
                    logger.exception("cannot log the changes of %d stable resources", len(stable))
                    return stable
                for ref in logged:
                    logger.debug("%s %s is stable", ref.level.label.lower(), ref.public_id)
            return stable

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="stability-monitor", daemon=True)
        self._thread.start()
        logger.info("monitoring stable resources (StableAge %d s)", self.stable_age)

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self.run_pass()
            except Exception:  # the monitor must outlive one bad pass
                logger.exception("stability monitoring pass failed")

    def close(self) -> None:
        """Stop the thread (before the index closes: a pass writes to it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
