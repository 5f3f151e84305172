"""The import's walk over its PATHs and its resumable progress.

The walk is deterministic: each folder's entries sorted by name, depth first, so every file has a
*walk key* (`(index of its PATH, path components below it)`) and the walk visits keys in increasing
order. That makes the progress of a million-file import a few hundred bytes: a *cursor* (every
file up to this key is done), the few files done beyond it (uploads finish out of order), and the
files to process again (failures, and pixel-less DICOM files still waiting for the end of the
import). Symbolic links to folders are followed once (a loop is walked once).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

STATE_FORMAT = "dicomvault-import/1"
WalkKey = tuple[int, tuple[str, ...]]


@dataclass(frozen=True)
class Unit:
    """One file of the walk (a zip archive is one unit), or a folder that could not be listed."""

    seq: int
    path: Path
    key: WalkKey
    problem: str = ""  # set: the walk itself failed here (the unit is a failure)


def walk(roots: tuple[Path, ...]) -> Iterator[Unit]:
    seq = 0
    visited: set[tuple[int, int]] = set()
    for index, root in enumerate(roots):
        for path, parts, problem in _walk_one(root, (), visited):
            yield Unit(seq, path, (index, parts), problem)
            seq += 1


def _walk_one(
    path: Path, parts: tuple[str, ...], visited: set[tuple[int, int]]
) -> Iterator[tuple[Path, tuple[str, ...], str]]:
    try:
        is_dir = path.is_dir()
    except OSError:
        is_dir = False
    if not is_dir:
        yield path, parts, ""
        return
    try:
        st = path.stat()
        if (st.st_dev, st.st_ino) in visited:
            logger.info("%s: folder already walked (symbolic link loop?), skipped", path)
            return
        visited.add((st.st_dev, st.st_ino))
        with os.scandir(path) as entries:
            names = sorted(entry.name for entry in entries)
    except OSError as exc:
        yield path, parts, f"cannot list the folder: {exc.strerror or exc}"
        return
    for name in names:
        yield from _walk_one(path / name, (*parts, name), visited)


def default_state_path(target_base: str, roots: tuple[Path, ...]) -> Path:
    """`.dicomvault-import-<hash>.json` in the current folder, named after the target (without
    credentials) and the absolute PATHs, so that two different imports never share a state."""
    digest = hashlib.sha256("\n".join([target_base, *map(str, roots)]).encode()).hexdigest()[:16]
    return Path.cwd() / f".dicomvault-import-{digest}.json"


class StateMismatch(Exception):
    """The state file records another import."""


def file_signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class Progress:
    """What is done, thread-safe; `snapshot()` is the state document to persist."""

    def __init__(self, target_base: str, roots: tuple[Path, ...], previous: dict[str, Any] | None) -> None:
        self._lock = threading.Lock()
        self._target = target_base
        self._roots = [str(root) for root in roots]
        self._cursor: WalkKey | None = None
        self._old_done: dict[str, tuple[int, int]] = {}
        self._old_retry: set[str] = set()
        if previous is not None:
            if previous.get("format") != STATE_FORMAT:
                raise StateMismatch("it is not a state file of `dicomvault import`")
            if previous.get("target") != target_base or previous.get("paths") != self._roots:
                raise StateMismatch(
                    f"it records an import of {previous.get('paths')} into {previous.get('target')}, not this one"
                )
            cursor = previous.get("cursor")
            if cursor is not None:
                self._cursor = (int(cursor[0]), tuple(str(part) for part in cursor[1]))
            self._old_done = {str(k): (int(v[0]), int(v[1])) for k, v in dict(previous.get("done", {})).items()}
            self._old_retry = {str(path) for path in previous.get("retry", [])}
        self.resuming = previous is not None
        # Decisions use the previous run's cursor; this run's low-water mark only moves the saved one.
        self._old_cursor = self._cursor
        # This run.
        self._low = 0  # every unit with seq < _low is complete
        self._complete: dict[int, tuple[Unit, tuple[int, int] | None]] = {}
        self._processed: set[str] = set()
        self._failed: set[str] = set()
        self._pending: dict[str, int] = {}  # path -> deferred DICOM files not yet resolved

    def already_done(self, unit: Unit) -> bool:
        """Whether a previous run finished this file (and it has not changed since, when known)."""
        path = str(unit.path)
        if not self.resuming or path in self._old_retry:
            return False
        if self._old_cursor is not None and unit.key <= self._old_cursor:
            return True
        signature = self._old_done.get(path)
        return signature is not None and file_signature(unit.path) == signature

    def complete(self, unit: Unit, signature: tuple[int, int] | None, failed: bool = False) -> None:
        path = str(unit.path)
        with self._lock:
            if path in self._old_retry:  # only those matter: a million paths would not fit well
                self._processed.add(path)
            if failed:
                self._failed.add(path)
            self._complete[unit.seq] = (unit, signature)
            while self._low in self._complete:
                done, _ = self._complete.pop(self._low)
                self._cursor = done.key
                self._low += 1

    def deferred(self, path: Path) -> None:
        """One DICOM file of `path` waits for the end of the import: process it again on resume."""
        key = str(path)
        with self._lock:
            self._pending[key] = self._pending.get(key, 0) + 1

    def resolved(self, path: Path) -> None:
        """One deferred DICOM file of `path` was dealt with (sent, or found redundant)."""
        key = str(path)
        with self._lock:
            left = self._pending.get(key, 0) - 1
            if left > 0:
                self._pending[key] = left
            else:
                self._pending.pop(key, None)

    def snapshot(self, finished: bool = False) -> dict[str, Any]:
        with self._lock:
            retry = (self._old_retry - self._processed) | self._failed | set(self._pending)
            # Every file up to the previous cursor is done or listed in `retry`: never save less.
            mark = self._cursor
            if self._old_cursor is not None and (mark is None or mark < self._old_cursor):
                mark = self._old_cursor
            done = {
                str(unit.path): list(sig)
                for unit, sig in self._complete.values()
                if sig is not None and (mark is None or unit.key > mark)
            }
            cursor = None if mark is None else [mark[0], list(mark[1])]
            return {
                "format": STATE_FORMAT,
                "target": self._target,
                "paths": self._roots,
                "cursor": cursor,
                "done": done,
                "retry": sorted(retry),
                "finished": finished,
            }
