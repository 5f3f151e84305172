"""`dicomvault import PATH... --to URL`: send every DICOM file found under folders, zip files and
Orthanc storage folders (compressed or not) to an Orthanc-compatible server over its REST API.

Files are read, classified (`classify`) and uploaded (`import_job`) by 2 x `workers` threads, at most
`workers` uploads at a time, sharing
one `OrthancClient`. Pixel-less DICOM files wait for the end of the import (see `classify`): sent only
when no complete file of the same instance turned up. Progress is persisted (`import_walk.Progress`)
so that `--resume` skips what an interrupted run already did. A file the target refuses is a failure
with its reason and the import goes on; a target that becomes unreachable or refuses the
credentials stops it (the state keeps what was done).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dicomvault.replication.client import OrthancClient, ServerError
from dicomvault.replication.import_job import Failure, ImportJob
from dicomvault.replication.import_walk import (
    Progress,
    StateMismatch,
    default_state_path,
    file_signature,
    walk,
)
from dicomvault.replication.options import ImportOptions
from dicomvault.replication.state import StateError, load_state, save_state

logger = logging.getLogger(__name__)

__all__ = ["Failure", "ImportReport", "RefusedError", "UsageError", "import_paths", "run_import", "summary_table"]

EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3
SAVE_INTERVAL_S = 2.0


@dataclass(frozen=True)
class ImportReport:
    target: str
    files: int  # files read this run (a zip counts its members too)
    sent_new: int  # uploads answered "Success" (pixel-less ones included)
    already_stored: int  # uploads answered "AlreadyStored" (or found on the target at the end)
    summaries_skipped: int  # Orthanc JSON summaries (content type 2)
    compressed_decompressed: int  # Orthanc compressed attachments (then classified as their content)
    until_pixel_data_skipped: int  # pixel-less copies of instances whose complete file was seen
    pixelless_sent: int  # pixel-less DICOM files sent because no complete copy was seen (SR...)
    other_skipped: int
    resumed_skipped: int  # files a previous run had done (--resume)
    failures: tuple[Failure, ...]
    bytes_read: int
    bytes_sent: int
    seconds: float
    interrupted: str = ""  # why the import stopped before the end (empty: it went through)
    state_file: str = ""

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- the driver


class UsageError(Exception):
    """The import cannot start as asked (exit code 2)."""


class RefusedError(Exception):
    """The target cannot be used (exit code 3)."""


def import_paths(
    options: ImportOptions, client: OrthancClient | None = None, save_interval_s: float = SAVE_INTERVAL_S
) -> ImportReport:
    """Import `options.paths` into `options.target` (or through `client`); raises `UsageError`
    (bad URL, missing PATH, a state file of another import) or `RefusedError` (target unreachable,
    credentials refused, not Orthanc-compatible) before anything is sent."""
    started = time.monotonic()
    roots = tuple(Path(os.path.abspath(path)) for path in options.paths)
    for root in roots:
        if not os.path.lexists(root):
            raise UsageError(f"{root} does not exist")
    own_client = client is None
    if client is None:
        try:
            client = OrthancClient(options.target, connections=options.workers + 2)
        except ServerError as exc:
            raise UsageError(str(exc)) from exc
    try:
        try:
            client.system()
        except ServerError as exc:
            raise RefusedError(str(exc)) from exc
        state_path = options.state or default_state_path(client.url.base, roots)
        progress = _progress(options, client.url.base, roots, state_path)
        job = ImportJob(options, client, progress)
        interrupted = ""
        try:
            _run(job, roots, state_path, save_interval_s)
        except KeyboardInterrupt:
            interrupted = "interrupted (SIGINT)"
            job.stop.set()
        interrupted = interrupted or job.stop_reason
        state_written = _save(state_path, progress.snapshot(finished=not interrupted))
        counts = job.counts
        return ImportReport(
            target=client.url.base,
            files=counts["files"],
            sent_new=counts["sent_new"],
            already_stored=counts["already_stored"],
            summaries_skipped=counts["summaries_skipped"],
            compressed_decompressed=counts["compressed_decompressed"],
            until_pixel_data_skipped=counts["until_pixel_data_skipped"],
            pixelless_sent=counts["pixelless_sent"],
            other_skipped=counts["other_skipped"],
            resumed_skipped=counts["resumed_skipped"],
            failures=tuple(counts.failures),
            bytes_read=counts["bytes_read"],
            bytes_sent=counts["bytes_sent"],
            seconds=round(time.monotonic() - started, 3),
            interrupted=interrupted,
            state_file=str(state_path) if state_written else "",
        )
    finally:
        if own_client:
            client.close()


def _progress(options: ImportOptions, target: str, roots: tuple[Path, ...], state_path: Path) -> Progress:
    previous = None
    if options.resume:
        try:
            previous = load_state(state_path)
        except StateError as exc:
            raise UsageError(str(exc)) from exc
        if previous is None:
            logger.warning("--resume: no state file %s yet: importing everything", state_path)
    try:
        progress = Progress(target, roots, previous)
    except StateMismatch as exc:
        raise UsageError(f"the state file {state_path} cannot be used: {exc}") from exc
    if (options.resume or options.state is not None) and not _save(state_path, progress.snapshot()):
        raise UsageError(f"cannot write the state file {state_path}: --resume needs it")
    return progress


def _save(path: Path, snapshot: dict[str, Any]) -> bool:
    try:
        save_state(path, snapshot)
    except StateError as exc:
        logger.warning("%s (the import goes on; it cannot be resumed)", exc)
        return False
    return True


def _run(job: ImportJob, roots: tuple[Path, ...], state_path: Path, save_interval_s: float) -> None:
    options = job.options
    window = 4 * options.workers  # bounded: memory, and the progress's out-of-order set, stay small
    last_save = time.monotonic()
    with (
        _bar(options.progress, roots, job) as bar,
        # Twice the workers: reading and classifying overlap `workers` uploads (ImportJob's gate).
        concurrent.futures.ThreadPoolExecutor(2 * options.workers, thread_name_prefix="import") as executor,
    ):
        in_flight: set[concurrent.futures.Future[None]] = set()

        def settle(block: bool) -> None:
            nonlocal last_save
            if in_flight:
                done, _ = concurrent.futures.wait(
                    in_flight, timeout=0.5 if block else 0, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in done:
                    in_flight.discard(future)
                    future.result()
                    job.counts.add("units")
            if time.monotonic() - last_save >= save_interval_s:
                _save(state_path, job.progress.snapshot())
                last_save = time.monotonic()
            _refresh(bar, job)

        try:
            for unit in walk(roots):
                if job.stop.is_set():
                    break
                if job.progress.already_done(unit):
                    job.counts.add("resumed_skipped")
                    job.progress.complete(unit, file_signature(unit.path))
                    continue
                while len(in_flight) >= window:
                    settle(block=True)
                in_flight.add(executor.submit(job.process, unit))
                settle(block=False)
            while in_flight:
                settle(block=True)
            if not job.stop.is_set():
                job.finish_deferred(executor)
            _refresh(bar, job)
        except BaseException:
            job.stop.set()  # the workers drop what they have not started
            raise


class _Bar:
    """A tqdm bar on stderr (files, MB, rate, ETA); the total is counted by a background walk."""

    def __init__(self, enabled: bool, roots: tuple[Path, ...], job: ImportJob) -> None:
        self.bar: tqdm[Any] = tqdm(total=None, unit="file", disable=not enabled, file=sys.stderr, dynamic_ncols=True)
        self._roots = roots
        self._job = job
        self._counter = threading.Thread(target=self._count, daemon=True) if enabled else None

    def _count(self) -> None:
        total = 0
        for _ in walk(self._roots):
            if self._job.stop.is_set():
                return
            total += 1
        self.bar.total = total
        self.bar.refresh()

    def __enter__(self) -> tqdm[Any]:
        if self._counter is not None:
            self._counter.start()
        return self.bar

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


def _bar(enabled: bool, roots: tuple[Path, ...], job: ImportJob) -> _Bar:
    return _Bar(enabled, roots, job)


def _refresh(bar: tqdm[Any], job: ImportJob) -> None:
    if bar.disable:
        return
    counts = job.counts
    done = counts["units"] + counts["resumed_skipped"]  # walk units: what the total counts
    if done > bar.n:
        bar.update(done - bar.n)
    elapsed = max(float(bar.format_dict["elapsed"]), 1e-6)
    megabytes = counts["bytes_read"] / 1e6
    bar.set_postfix_str(f"{megabytes:.1f} MB, {megabytes / elapsed:.1f} MB/s, {len(counts.failures)} failed")


# ---------------------------------------------------------------- the command


def run_import(options: ImportOptions) -> int:
    """`dicomvault import`: the exit code (0 ok, 1 failures, 2 usage error, 3 target refused)."""
    try:
        report = import_paths(options)
    except UsageError as exc:
        print(f"dicomvault import: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RefusedError as exc:
        print(f"dicomvault import: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if options.json_report:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(summary_table(report))
    if report.interrupted:
        print(f"dicomvault import: stopped: {report.interrupted}; run again with --resume", file=sys.stderr)
    return EXIT_FAILURES if report.failures or report.interrupted else EXIT_OK


def summary_table(report: ImportReport) -> str:
    rows: list[tuple[str, str]] = [
        ("files read", f"{report.files} ({report.bytes_read / 1e6:.1f} MB)"),
        ("DICOM sent, new", str(report.sent_new)),
        ("DICOM already stored", str(report.already_stored)),
        ("  of which pixel-less (no complete copy found)", str(report.pixelless_sent)),
        ("Orthanc compressed attachments (decompressed)", str(report.compressed_decompressed)),
        ("'DICOM until pixel data' copies (not sent)", str(report.until_pixel_data_skipped)),
        ("Orthanc JSON summaries (skipped)", str(report.summaries_skipped)),
        ("other files (skipped)", str(report.other_skipped)),
        ("done by a previous run (--resume)", str(report.resumed_skipped)),
        ("failures", str(len(report.failures))),
        ("sent", f"{report.bytes_sent / 1e6:.1f} MB in {report.seconds:.1f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"Import into {report.target}"]
    lines += [f"  {name.ljust(width)}  {value}" for name, value in rows]
    for failure in report.failures[:50]:
        lines.append(f"  FAILED {failure.path}: {failure.reason}")
    if len(report.failures) > 50:
        lines.append(f"  ... and {len(report.failures) - 50} more failures (see --json)")
    if report.interrupted:
        lines.append(f"  STOPPED: {report.interrupted}")
    return "\n".join(lines)
