"""Enumerations stored on disk or shown in the API.

Values are Orthanc's where Orthanc has them (ServerEnumerations.h, Enumerations.h), so that an
index adopted from Orthanc and our own agree, and they are never reused: a new value gets a new
number and a comment saying when it was added.
"""

from __future__ import annotations

from enum import IntEnum


class ResourceType(IntEnum):
    PATIENT = 1
    STUDY = 2
    SERIES = 3
    INSTANCE = 4

    @property
    def label(self) -> str:
        """Orthanc's name in JSON answers (`"Type": "Study"`)."""
        return _LABELS[self]

    @property
    def plural(self) -> str:
        """The URI segment of this level (`/studies`)."""
        return _PLURALS[self]

    @property
    def parent(self) -> ResourceType | None:
        return None if self is ResourceType.PATIENT else ResourceType(self - 1)

    @property
    def child(self) -> ResourceType | None:
        return None if self is ResourceType.INSTANCE else ResourceType(self + 1)

    @classmethod
    def from_plural(cls, plural: str) -> ResourceType:
        return _FROM_PLURAL[plural]

    @classmethod
    def from_label(cls, label: str) -> ResourceType:
        """Parse Orthanc's level names, case-insensitively, as Orthanc's StringToResourceType."""
        key = label.strip().lower()
        for level in cls:
            if key in (level.label.lower(), level.plural):
                return level
        raise ValueError(label)


_LABELS = {
    ResourceType.PATIENT: "Patient",
    ResourceType.STUDY: "Study",
    ResourceType.SERIES: "Series",
    ResourceType.INSTANCE: "Instance",
}
_PLURALS = {
    ResourceType.PATIENT: "patients",
    ResourceType.STUDY: "studies",
    ResourceType.SERIES: "series",
    ResourceType.INSTANCE: "instances",
}
_FROM_PLURAL = {v: k for k, v in _PLURALS.items()}


class FileContentType(IntEnum):
    """Kind of attachment (Orthanc's FileContentType)."""

    UNKNOWN = 0
    DICOM = 1
    DICOM_AS_JSON = 2  # written by Orthanc < 1.9.1; never by dicomvault
    DICOM_UNTIL_PIXEL_DATA = 3  # written by Orthanc >= 1.9.1 with compression; never by dicomvault
    START_USER = 1024
    END_USER = 65535

    @staticmethod
    def label(value: int) -> str:
        """How reports name an attachment's content type."""
        if value == FileContentType.DICOM:
            return "DICOM"
        if value == FileContentType.DICOM_AS_JSON:
            return "Orthanc 'DICOM as JSON'"
        if value == FileContentType.DICOM_UNTIL_PIXEL_DATA:
            return "Orthanc 'DICOM until pixel data'"
        if FileContentType.START_USER <= value <= FileContentType.END_USER:
            return f"user content type {value}"
        return f"content type {value}"


class CompressionType(IntEnum):
    NONE = 1
    ZLIB_WITH_SIZE = 2


class MetadataType(IntEnum):
    """Orthanc's metadata numbers (MetadataType in Enumerations.h)."""

    INSTANCE_INDEX_IN_SERIES = 1
    INSTANCE_RECEPTION_DATE = 2
    INSTANCE_REMOTE_AET = 3
    SERIES_EXPECTED_NUMBER_OF_INSTANCES = 4
    MODIFIED_FROM = 5
    ANONYMIZED_FROM = 6
    LAST_UPDATE = 7
    INSTANCE_ORIGIN = 8
    INSTANCE_TRANSFER_SYNTAX = 9
    INSTANCE_SOP_CLASS_UID = 10
    INSTANCE_REMOTE_IP = 11
    INSTANCE_CALLED_AET = 12
    INSTANCE_HTTP_USERNAME = 13
    INSTANCE_PIXEL_DATA_OFFSET = 14
    START_USER = 1024
    END_USER = 65535


class ChangeType(IntEnum):
    """Orthanc's change types (the `/changes` log), with Orthanc's numbers (ServerEnumerations.h).
    Schemas 1 and 2 stored other numbers; migration 3 renumbers their Changes rows."""

    COMPLETED_SERIES = 1
    NEW_INSTANCE = 2
    NEW_PATIENT = 3
    NEW_SERIES = 4
    NEW_STUDY = 5
    ANONYMIZED_STUDY = 6
    ANONYMIZED_SERIES = 7
    MODIFIED_STUDY = 8
    MODIFIED_SERIES = 9
    ANONYMIZED_PATIENT = 10
    MODIFIED_PATIENT = 11
    STABLE_PATIENT = 12
    STABLE_STUDY = 13
    STABLE_SERIES = 14
    UPDATED_ATTACHMENT = 15
    UPDATED_METADATA = 16
    # Orthanc's internal ones, never in its log (kept for the day they are reported):
    DELETED = 4096
    NEW_CHILD_INSTANCE = 4097

    @property
    def label(self) -> str:
        return "".join(part.capitalize() for part in self.name.split("_"))


class GlobalProperty(IntEnum):
    """Orthanc's global property numbers, plus ours from 1000 (never reused)."""

    DATABASE_SCHEMA_VERSION = 1
    FLUSH_SLEEP = 2
    ANONYMIZATION_SEQUENCE = 3
    JOBS_REGISTRY = 5
    GET_TOTAL_SIZE_IS_FAST = 6
    MODALITIES = 20
    PEERS = 21
    DATABASE_PATCH_LEVEL = 4
    # dicomvault's own properties (added in schema 1):
    DICOMVAULT_SCHEMA_VERSION = 1000
    # Added in schema 2, present only while an upgrade re-reads the files (issue 6):
    DICOMVAULT_UPGRADE_CURSOR = 1001  # the last instance (internal id) re-read and committed
    DICOMVAULT_REREAD_FROM = 1002  # the first migration whose re-read step the pass applies
    # Added in schema 2: where and when an Orthanc index was adopted (JSON), and when dicomvault
    # first removed one of its files (from then on, going back to Orthanc loses data).
    DICOMVAULT_ADOPTED_FROM_ORTHANC = 1003
    DICOMVAULT_ORTHANC_ROLLBACK_ENDED = 1004


class RequestOrigin(IntEnum):
    """Where an instance came from (Orthanc's RequestOrigin), stored as the Origin metadata."""

    UNKNOWN = 0
    DICOM_PROTOCOL = 1
    REST_API = 2
    PLUGINS = 3
    LUA = 4
    WEB_DAV = 5

    @property
    def label(self) -> str:
        return {
            RequestOrigin.UNKNOWN: "Unknown",
            RequestOrigin.DICOM_PROTOCOL: "DicomProtocol",
            RequestOrigin.REST_API: "RestApi",
            RequestOrigin.PLUGINS: "Plugins",
            RequestOrigin.LUA: "Lua",
            RequestOrigin.WEB_DAV: "WebDav",
        }[self]
