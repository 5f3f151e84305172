"""Values shared by every tier: attachment descriptions, resource identities and store results."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from dicomvault.enums import CompressionType, FileContentType, ResourceType


@dataclass(frozen=True)
class FileInfo:
    """One attachment as the index records it (Orthanc's FileInfo)."""

    uuid: str
    content_type: FileContentType | int
    uncompressed_size: int
    uncompressed_md5: str
    compression: CompressionType
    compressed_size: int
    compressed_md5: str


@dataclass(frozen=True)
class ResourceRef:
    """A resource's identity: its level, its public id, and its index row."""

    level: ResourceType
    public_id: str
    internal_id: int

    @property
    def path(self) -> str:
        return f"/{self.level.plural}/{self.public_id}"


class StoreStatus(Enum):
    SUCCESS = "Success"
    ALREADY_STORED = "AlreadyStored"
    FAILURE = "Failure"
    FILTERED_OUT = "FilteredOut"


@dataclass(frozen=True)
class StoreResult:
    """The outcome of storing one instance, as Orthanc reports it for `POST /instances`."""

    status: StoreStatus
    instance_id: str
    patient_id: str
    study_id: str
    series_id: str

    def to_json(self) -> dict[str, str]:
        return {
            "ID": self.instance_id,
            "ParentPatient": self.patient_id,
            "ParentSeries": self.series_id,
            "ParentStudy": self.study_id,
            "Path": f"/instances/{self.instance_id}",
            "Status": self.status.value,
        }
