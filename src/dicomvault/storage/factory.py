"""Which storage area a configuration asks for, as a picklable description, and building it.

An `AwsS3Storage` section selects the object-storage area (Orthanc's S3 plugin keys); otherwise
the filesystem area in `StorageDirectory`. The description (`AreaSettings`) is what crosses
process boundaries: the ingest worker processes receive it and call `build_area` themselves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from dicomvault.config import Config
from dicomvault.storage.area import FilesystemStorageArea, StorageArea
from dicomvault.storage.s3 import S3Settings, S3StorageArea

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FilesystemSettings:
    root: str  # absolute: worker processes may not share the server's working directory
    fsync: bool = True

    def describe(self) -> str:
        return f"folder {self.root}"


AreaSettings = FilesystemSettings | S3Settings


def area_settings(config: Config) -> AreaSettings:
    """The storage area `config` selects; a bad `AwsS3Storage` section raises `DicomVaultError`."""
    if config.aws_s3_storage is not None:
        return S3Settings.from_section(config.aws_s3_storage)
    return FilesystemSettings(str(Path(config.storage_directory).resolve()), fsync=config.sync_storage_area)


def build_area(settings: AreaSettings) -> StorageArea:
    """The area described by `settings`, without touching the network (an S3 client is made on
    first use, in the process that uses it)."""
    if isinstance(settings, S3Settings):
        return S3StorageArea(settings)
    return FilesystemStorageArea(Path(settings.root), fsync=settings.fsync)


def open_storage_area(source: Config | AreaSettings) -> StorageArea:
    """The area, checked as a server starting needs it: the folder exists (created if needed),
    the bucket answers with these credentials. Raises `DicomVaultError` naming what is wrong."""
    settings = area_settings(source) if isinstance(source, Config) else source
    area = build_area(settings)
    if isinstance(area, S3StorageArea):
        area.check()
    return area
