"""The persisted progress of an import or a replication: a small JSON document replaced
atomically (written to a temporary file in the same folder, fsynced, renamed), so that a kill at
any moment leaves either the previous state or the new one, never a torn file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


class StateError(Exception):
    """The state file cannot be read or written; the message says which and why."""


def load_state(path: Path) -> dict[str, Any] | None:
    """The saved state, or None when there is none yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read the state file {path}: {exc.strerror}") from exc
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise StateError(f"the state file {path} is not valid JSON: move it away to start over") from exc
    if not isinstance(value, dict):
        raise StateError(f"the state file {path} does not hold a state: move it away to start over")
    return value


def save_state(path: Path, state: dict[str, Any]) -> None:
    data = json.dumps(state, sort_keys=True).encode()
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    except OSError as exc:
        raise StateError(f"cannot write the state file {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise StateError(f"cannot write the state file {path}: {exc.strerror}") from exc
