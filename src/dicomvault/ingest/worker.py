"""The per-instance CPU work of ingest, run in worker processes (off the main process's GIL):
parse once, compress if configured, hash while writing, write the file with fsync.

Inputs and outputs are plain picklable values. Each worker process builds its storage accessor
once (`_accessor`) from the `StorageSettings` it is given: the storage area's description
(`storage.factory.AreaSettings`: a folder or an S3 bucket) and the compression policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from dicomvault.dicom.parsing import ParsedInstance, parse_instance
from dicomvault.enums import FileContentType
from dicomvault.model import FileInfo
from dicomvault.storage.accessor import CompressionPolicy, StorageAccessor
from dicomvault.storage.factory import AreaSettings, build_area


@dataclass(frozen=True)
class StorageSettings:
    area: AreaSettings
    compression: CompressionPolicy
    default_encoding: str = "Latin1"  # Orthanc's DefaultEncoding, for the find tags


@dataclass(frozen=True)
class Prepared:
    parsed: ParsedInstance
    file: FileInfo


@lru_cache(maxsize=4)
def _accessor(settings: StorageSettings) -> StorageAccessor:
    return StorageAccessor(build_area(settings.area), settings.compression)


def prepare_instance(raw: bytes, settings: StorageSettings) -> Prepared:
    """Parse and validate `raw`, then write it to the storage area; nothing touches the index."""
    parsed = parse_instance(raw, settings.default_encoding)
    info = _accessor(settings).write(raw, FileContentType.DICOM)
    return Prepared(parsed, info)
