"""What the `import` and `replicate` commands were asked to do: plain values passed from the
command line (or a Python caller) to `importer.run_import` and `replicator.run_replicate`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ImportOptions:
    paths: tuple[Path, ...]
    target: str  # URL, credentials included (http://user:password@host:8042/)
    workers: int = 4
    resume: bool = False
    state: Path | None = None  # default: a file named after the target in the current folder
    json_report: bool = False
    progress: bool = True


@dataclass(frozen=True)
class ReplicateOptions:
    source: str
    target: str
    workers: int = 4
    follow: bool = False
    poll_interval_s: float = 2.0
    propagate_deletes: bool = False
    copy_metadata: bool = False  # user metadata, user attachments, labels
    study_date: str | None = None  # DICOM range "YYYYMMDD-YYYYMMDD" (either end may be empty)
    modalities: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()  # public ids of patients/studies/series/instances
    state: Path | None = None
    verify: bool = False
    md5: bool = False
    json_report: bool = False
    progress: bool = True
