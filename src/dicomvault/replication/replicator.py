"""`dicomvault replicate SRC DST`: copy every instance of one Orthanc-compatible server to another
through their REST APIs, resumably, once or continuously (`--follow`), or compare them (`--verify`).

How the source is walked (and why):

* The cursor is the source's `/changes` log (`Seq` numbers). It cannot be the only walk: Orthanc
  drops the log entries of deleted resources and `DELETE /changes` clears it, so an archive may
  hold instances no change mentions. So the *first* run (no state yet) first snapshots the last
  `Seq` ever given (`Last` of an empty page, which Orthanc 1.10.1 keeps counting after deletions),
  persists it as the cursor, then compares the two servers' instance id lists (public ids are
  SHA-1 of the UIDs, identical everywhere) and copies what the target lacks. Every instance stored
  before the snapshot is in that listing; every later one has a change after the cursor. The lists
  are read in one request each, never paged: `/instances?since=` is an offset in Orthanc, and a
  deletion during a paged walk would shift the list and skip an instance.
* Until that initial comparison has finished, the state says so and a re-run (after a kill) does
  it again: cheap (two lists), and it copies only what is still missing.
* Afterwards each run (or each `--follow` poll) reads `/changes?since=cursor`, copies the
  instances of `NewInstance` changes, and persists the cursor only up to the last change whose
  instance and every earlier one is done (`copy_queue.OrderedPipeline`), atomically (`state.py`): after a
  kill, what follows the cursor is copied again and answered AlreadyStored, nothing is skipped.
* A source whose `Last` went below the cursor got a new index: the comparison is done again.
* Instances that failed (a refusal by the target, a source unreachable past the retries) are
  recorded in the state and retried by the next run, so the cursor never has to wait for them.
* Deletions (`--propagate-deletes`) are in `deletions.py`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

from tqdm import tqdm

from dicomvault.replication.client import OrthancClient, Retry, ServerError
from dicomvault.replication.compare import verify
from dicomvault.replication.copy_queue import (
    ALREADY_STORED,
    COPIED,
    FAILED,
    SKIPPED,
    Gates,
    OrderedPipeline,
    Outcome,
    copy_instance,
)
from dicomvault.replication.deletions import DeletionMirror
from dicomvault.replication.extras import copy_extras
from dicomvault.replication.options import ReplicateOptions
from dicomvault.replication.replicate_report import (
    EXIT_FAILURES,
    EXIT_REFUSED,
    EXIT_USAGE,
    Failure,
    ReplicateReport,
    Tally,
    summary,
)
from dicomvault.replication.select import Matcher, Selection, SelectionError
from dicomvault.replication.state import StateError, load_state, save_state

logger = logging.getLogger(__name__)

STATE_FORMAT = 1
CHANGES_PAGE = 1000
SAVE_EVERY_S = 1.0  # how often the cursor is persisted while copying (and at every page end)


def default_state_path(source: OrthancClient, target: OrthancClient) -> Path:
    """`.dicomvault-replicate-<hash>.json` in the current folder, named after both URLs without
    their credentials (a password change keeps the state)."""
    digest = hashlib.sha1(f"{source.url.base} {target.url.base}".encode()).hexdigest()[:16]
    return Path(f".dicomvault-replicate-{digest}.json")


def replicate(
    options: ReplicateOptions,
    source: OrthancClient | None = None,
    target: OrthancClient | None = None,
    stop: threading.Event | None = None,
) -> ReplicateReport:
    """The Python API: replicate (or verify) as `options` say. `source`/`target` replace the
    clients built from the URLs (e.g. with an injected transport); `stop`, once set, ends the run
    cleanly (in-flight copies finish, the cursor is saved). Raises `ServerError` when a server
    cannot be used at the start, `StateError` when the state file cannot be used,
    `SelectionError` when a filter cannot be understood."""
    Selection.of(options)  # a usage error before any request
    owned: list[OrthancClient] = []
    if source is None:
        source = OrthancClient(options.source, connections=2 * options.workers + 2)
        owned.append(source)
    if target is None:
        target = OrthancClient(options.target, connections=2 * options.workers + 2)
        owned.append(target)
    try:
        for client, role in ((source, "source"), (target, "target")):
            try:
                client.system()
            except ServerError as exc:
                raise ServerError(f"{role}: {exc}", exc.status) from exc
        if options.verify:
            return _verify(options, source, target)
        return _Run(options, source, target, stop or threading.Event()).execute()
    finally:
        for client in owned:
            client.close()


def _verify(options: ReplicateOptions, source: OrthancClient, target: OrthancClient) -> ReplicateReport:
    started = time.monotonic()
    with _progress(options.progress, "verifying") as bar:
        result = verify(source, target, options.md5, options.workers, bar.update)
    return ReplicateReport(str(source.url), str(target.url), seconds=time.monotonic() - started, verify=result)


@contextlib.contextmanager
def _progress(enabled: bool, description: str) -> Iterator[tqdm[Any]]:
    bar: tqdm[Any] = tqdm(
        total=0, unit="inst", desc=description, file=sys.stderr, disable=not enabled, dynamic_ncols=True
    )
    try:
        yield bar
    finally:
        bar.close()


class _Run:
    """One replication run: the initial comparison when needed, the `/changes` walk, deletions,
    and with `follow` the polling loop."""

    def __init__(
        self, options: ReplicateOptions, source: OrthancClient, target: OrthancClient, stop: threading.Event
    ) -> None:
        self.options = options
        self.source = source
        self.target = target
        self.stop = stop
        self.path = options.state or default_state_path(source, target)
        self.state = self._load()
        self.tally = Tally()
        self.started = time.monotonic()
        self.saved_at = 0.0
        self.bar: tqdm[Any] | None = None
        self.selection = Selection.of(options)
        self.matcher = None if self.selection is None else Matcher(self.selection, source)
        self.deletions = DeletionMirror(source, target, self.state, self.path) if options.propagate_deletes else None
        self.gates = Gates.of(options.workers)

    def _load(self) -> dict[str, Any]:
        state = load_state(self.path)
        if state is None:
            return {"format": STATE_FORMAT, "source": self.source.url.base, "target": self.target.url.base}
        if state.get("format") != STATE_FORMAT:
            raise StateError(f"the state file {self.path} is not a replication state: move it away to start over")
        if (state.get("source"), state.get("target")) != (self.source.url.base, self.target.url.base):
            raise StateError(
                f"the state file {self.path} belongs to the replication {state.get('source')} -> "
                f"{state.get('target')}: name another one with --state"
            )
        return state

    def save(self) -> None:
        self.state["failed"] = dict(sorted(self.tally.failures.items()))
        save_state(self.path, self.state)
        self.saved_at = time.monotonic()

    # ---------------------------------------------------------------- the run

    def execute(self) -> ReplicateReport:
        # Failures of earlier runs are retried by this one (and reported again if they fail again).
        self.tally.failures.update(self.state.get("failed") or {})
        with (
            # Twice the workers: `workers` uploads in flight while the next files download.
            ThreadPoolExecutor(max_workers=2 * self.options.workers) as pool,
            _progress(self.options.progress, "replicating") as bar,
        ):
            self.pool = pool
            self.bar = bar
            try:
                if self.deletions is not None:
                    self.deletions.start()
                self._cycle(first=True)
                while self.options.follow and not self.stop.wait(self.options.poll_interval_s):
                    try:
                        self._cycle(first=False)
                    except ServerError as exc:
                        # A mirror outlives a source or target restart: warn and poll again.
                        logger.warning("replication cycle failed, retrying at the next poll: %s", exc)
            finally:
                # Also when a server fails mid-run: the cursor reached so far is kept.
                self.save()
        t = self.tally
        failures = tuple(Failure(i, r) for i, r in sorted(t.failures.items()))
        return ReplicateReport(
            str(self.source.url),
            str(self.target.url),
            t.copied,
            t.already_stored,
            t.vanished,
            failures,
            t.deleted,
            t.bytes,
            time.monotonic() - self.started,
            self.stop.is_set() and not self.options.follow,
            self.state.get("changes"),
        )

    def _cycle(self, first: bool) -> None:
        last = self.source.last_change()
        cursor = self.state.get("changes")
        if cursor is not None and last < cursor:
            logger.warning(
                "the change log of %s restarted (last change %d < cursor %d): a new index? comparing the "
                "instance lists again",
                self.source.url,
                last,
                cursor,
            )
        if cursor is None or last < cursor:
            self.state["changes"] = last
            self.state["initial_done"] = False
            self.save()
        seen: set[str] = set()
        if not self.state.get("initial_done"):
            seen = self._initial_copy()
        if first and self.state.get("failed"):
            self._copy_list(sorted(self.state["failed"]), "retrying failures")
        self._follow_changes(seen)
        if self.deletions is not None and not self.stop.is_set():
            self.tally.deleted += self.deletions.propagate(self.stop)
        self.save()

    def _initial_copy(self) -> set[str]:
        """Copy what the target lacks of the source (both lists read once); the ids listed, so the
        changes walk that follows in this run skips those it already copied."""
        source_ids = self.source.instance_ids() if self.selection is None else self.selection.initial_ids(self.source)
        target_ids = set(self.target.instance_ids())
        todo = [i for i in source_ids if i not in target_ids]
        logger.info(
            "%s holds %d instances, %d of them missing at %s",
            self.source.url,
            len(source_ids),
            len(todo),
            self.target.url,
        )
        self._copy_list(todo, "initial copy")
        if self.options.copy_metadata:
            # What the target already holds may lack its metadata: copy them, not the files.
            self._copy_list([i for i in source_ids if i in target_ids], "metadata copy", self._extras_only)
        if self.deletions is not None and self.selection is None:
            self.deletions.remember(source_ids)
        if not self.stop.is_set():
            self.state["initial_done"] = True
            self.save()
        return set(source_ids)

    def _copy_list(self, instances: list[str], what: str, copy: Callable[[str], Outcome] | None = None) -> None:
        pipeline = OrderedPipeline(
            self.pool, self.options.workers * 4, copy or self._copy, lambda key, o: self._count(o)
        )
        self._expect(len(instances))
        for position, instance in enumerate(instances):
            if self.stop.is_set():
                logger.info("%s interrupted after %d of %d instances", what, position, len(instances))
                break
            pipeline.add(position, instance)
        pipeline.drain()

    def _follow_changes(self, seen: set[str]) -> None:
        """Walk `/changes` from the cursor to its end, copying each new instance."""

        def done(key: int, outcome: Outcome | None) -> None:
            self._count(outcome)
            self.state["changes"] = key
            if time.monotonic() - self.saved_at >= SAVE_EVERY_S:
                self.save()

        pipeline = OrderedPipeline(self.pool, self.options.workers * 4, self._copy_change, done)
        since = int(self.state["changes"])
        try:
            while not self.stop.is_set():
                page = self.source.changes(since, CHANGES_PAGE)
                for change in page["Changes"]:
                    seq = int(change["Seq"])
                    instance = str(change.get("ID", ""))
                    wanted = (
                        change.get("ChangeType") == "NewInstance"
                        and change.get("ResourceType") == "Instance"
                        and instance not in seen
                    )
                    if wanted:
                        self._expect(1)
                    pipeline.add(seq, instance if wanted else None)
                    if self.stop.is_set():
                        break
                else:
                    # The end of the page: the cursor may move to `Last` once everything is done.
                    since = max(since, int(page["Last"]))
                    pipeline.add(since, None)
                    if page.get("Done", True) or not page["Changes"]:
                        break
        finally:
            pipeline.drain()

    def _copy_change(self, instance: str) -> Outcome:
        if self.matcher is not None and not self.matcher.wants(instance):
            return Outcome(instance, SKIPPED)
        return self._copy(instance)

    def _extras_only(self, instance: str) -> Outcome:
        problem = copy_extras(self.source, self.target, instance)
        if problem is not None:
            return Outcome(instance, FAILED, reason=f"metadata: {problem}")
        return Outcome(instance, ALREADY_STORED)

    def _copy(self, instance: str) -> Outcome:
        outcome = copy_instance(self.source, self.target, instance, self.gates)
        if self.options.copy_metadata and outcome.kind in (COPIED, ALREADY_STORED):
            problem = copy_extras(self.source, self.target, instance)
            if problem is not None:
                return Outcome(instance, FAILED, outcome.size, f"metadata: {problem}")
        return outcome

    def _expect(self, count: int) -> None:
        """More instances to copy: the bar's total (and so its ETA) follows what is known so far."""
        if self.bar is not None and count:
            self.bar.total = (self.bar.total or 0) + count
            self.bar.refresh()

    def _count(self, outcome: Outcome | None) -> None:
        if outcome is None:
            return
        if outcome.kind != SKIPPED:
            self.tally.add(outcome)
        if self.deletions is not None and outcome.kind in (COPIED, ALREADY_STORED):
            self.deletions.note_copied(outcome.instance)
        if self.bar is not None:
            elapsed = max(time.monotonic() - self.started, 1e-6)
            mb = self.tally.bytes / 1e6
            failed = len(self.tally.failures)
            self.bar.set_postfix_str(f"{mb:.1f} MB, {mb / elapsed:.1f} MB/s, {failed} failed", refresh=False)
            self.bar.update(1)


# ---------------------------------------------------------------- command line


def run_replicate(options: ReplicateOptions) -> int:
    """`dicomvault replicate`: the exit code (0 ok, 1 failures or mismatches, 2 usage, 3 refused).
    SIGINT/SIGTERM stop the run cleanly, cursor saved."""
    try:
        Selection.of(options)
        source = OrthancClient(options.source, connections=2 * options.workers + 2)
        target = OrthancClient(options.target, connections=2 * options.workers + 2)
    except (ServerError, SelectionError) as exc:
        print(f"dicomvault replicate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        # A quick look first, with few retries: an unreachable server or wrong credentials are
        # reported at once, not after the long backoff that protects a run already under way.
        for url, role in ((options.source, "source"), (options.target, "target")):
            with OrthancClient(url, retry=Retry(attempts=2, first_delay_s=0.2), timeout_s=10) as probe:
                try:
                    probe.system()
                except ServerError as exc:
                    raise ServerError(f"{role}: {exc}", exc.status) from exc
    except ServerError as exc:
        print(f"dicomvault replicate: {exc}", file=sys.stderr)
        source.close()
        target.close()
        return EXIT_REFUSED
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %d: stopping after the copies in flight", signum)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        report = replicate(options, source, target, stop)
    except ServerError as exc:
        print(f"dicomvault replicate: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except (StateError, SelectionError) as exc:
        print(f"dicomvault replicate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        source.close()
        target.close()
    if options.json_report:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(summary(report))
    for failure in report.failures[:20]:
        print(f"dicomvault replicate: instance {failure.instance} not copied: {failure.reason}", file=sys.stderr)
    if len(report.failures) > 20:
        print(f"dicomvault replicate: ... and {len(report.failures) - 20} more failures", file=sys.stderr)
    if report.interrupted:
        print("dicomvault replicate: interrupted; run the same command again to continue", file=sys.stderr)
        return EXIT_FAILURES
    return report.exit_code
