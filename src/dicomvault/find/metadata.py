"""Metadata as Orthanc 1.10.1 reads it, and the vocabulary shared with attachments: the names of
metadata types and attachment content types, and revisions (`ETag`, `If-Match`, `If-None-Match`).

Names: a URL names a metadata type or a content type by Orthanc's built-in name
(`ReceptionDate`, `dicom`...), by a name declared in the configuration (`UserMetadata`,
`UserContentType`), or by its number. As Orthanc, text that is a number once surrounding blanks
are removed is read as a number, and must then be a plain 32-bit integer (`" 2"` or
`"99999999999"` is a bad parameter, 400); anything else is a name, case-sensitive, and an unknown
name is an inexistent item (404).

Revisions: every metadata value and attachment carries a revision, shown as the strong ETag
`"{revision}-{md5}"` (MD5 of the value, or of the uncompressed attachment). Unlike Orthanc's
built-in SQLite index, which always reports revision 0 and so refuses the ETag its own PUT just
returned, dicomvault stores revisions (as Orthanc does on PostgreSQL): an ETag from a GET or a
PUT can always be sent back as `If-Match`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dicomvault.config import Config
from dicomvault.enums import FileContentType, MetadataType, ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.find.resources import require
from dicomvault.index.metadata import StoredMetadata, get_metadata, list_metadata
from dicomvault.index.transactions import ReadTx
from dicomvault.storage.accessor import md5_hex

logger = logging.getLogger(__name__)

# Orthanc 1.10.1's names of its own metadata types (EnumerationToString of MetadataType).
SYSTEM_METADATA: Mapping[int, str] = {
    MetadataType.INSTANCE_INDEX_IN_SERIES: "IndexInSeries",
    MetadataType.INSTANCE_RECEPTION_DATE: "ReceptionDate",
    MetadataType.INSTANCE_REMOTE_AET: "RemoteAET",
    MetadataType.SERIES_EXPECTED_NUMBER_OF_INSTANCES: "ExpectedNumberOfInstances",
    MetadataType.MODIFIED_FROM: "ModifiedFrom",
    MetadataType.ANONYMIZED_FROM: "AnonymizedFrom",
    MetadataType.LAST_UPDATE: "LastUpdate",
    MetadataType.INSTANCE_ORIGIN: "Origin",
    MetadataType.INSTANCE_TRANSFER_SYNTAX: "TransferSyntax",
    MetadataType.INSTANCE_SOP_CLASS_UID: "SopClassUid",
    MetadataType.INSTANCE_REMOTE_IP: "RemoteIP",
    MetadataType.INSTANCE_CALLED_AET: "CalledAET",
    MetadataType.INSTANCE_HTTP_USERNAME: "HttpUsername",
    MetadataType.INSTANCE_PIXEL_DATA_OFFSET: "PixelDataOffset",
}
# Orthanc 1.10.1's names of its own content types ("unknown", 0, has no name in URLs).
SYSTEM_CONTENT_TYPES: Mapping[int, str] = {
    FileContentType.DICOM: "dicom",
    FileContentType.DICOM_AS_JSON: "dicom-as-json",
    FileContentType.DICOM_UNTIL_PIXEL_DATA: "dicom-until-pixel-data",
}
DICOM_MIME = "application/dicom"
DEFAULT_MIME = "application/octet-stream"
USER_RANGE = range(FileContentType.START_USER, FileContentType.END_USER + 1)  # same for metadata

_BLANKS = " \t\n\r\v\f"
_INTEGER = re.compile(r"-?[0-9]+")
_INT32 = range(-(2**31), 2**31)
_REVISION = re.compile(r"\+?[0-9]+")
_INT64_MAX = 2**63 - 1


def _number_or_name(text: str, names: Mapping[str, int], what: str) -> int:
    stripped = text.strip(_BLANKS)
    if _INTEGER.fullmatch(stripped):
        if stripped != text or int(text) not in _INT32:
            raise DicomVaultError(ErrorCode.BAD_PARAMETER_TYPE, f"not a valid {what} number: {text!r}")
        return int(text)
    number = names.get(text)
    if number is None:
        raise DicomVaultError(ErrorCode.INEXISTENT_ITEM, f"unknown {what} name: {text!r}")
    return number


@dataclass(frozen=True)
class Names:
    """Metadata types and content types by name (Orthanc's and the configuration's), both ways."""

    metadata: Mapping[str, int]
    content_types: Mapping[str, int]
    mime_types: Mapping[int, str]

    @classmethod
    def from_config(cls, config: Config) -> Names:
        metadata = {name: int(number) for number, name in SYSTEM_METADATA.items()}
        for name, number in config.user_metadata.items():
            metadata.setdefault(name, int(number))
        content_types = {name: int(number) for number, name in SYSTEM_CONTENT_TYPES.items()}
        mime_types: dict[int, str] = {int(FileContentType.DICOM): DICOM_MIME}
        for name, value in config.user_content_type.items():
            parsed = _user_content_type(value)
            if parsed is None:
                logger.warning(
                    'UserContentType "%s": %r is neither a number in 1024..65535 nor [number, MIME type]; ignored',
                    name,
                    value,
                )
                continue
            number, mime = parsed
            content_types.setdefault(name, number)
            if mime is not None:
                mime_types.setdefault(number, mime)
        return cls(metadata, content_types, mime_types)

    def metadata_type(self, text: str) -> int:
        """The metadata type a URL segment names (Orthanc's rules: see the module docstring)."""
        return _number_or_name(text, self.metadata, "metadata")

    def content_type(self, text: str) -> int:
        """The attachment content type a URL segment names."""
        return _number_or_name(text, self.content_types, "attachment")

    def metadata_name(self, mtype: int) -> str:
        return _reverse(self.metadata, SYSTEM_METADATA, mtype)

    def content_type_name(self, content_type: int) -> str:
        return _reverse(self.content_types, SYSTEM_CONTENT_TYPES, content_type)

    def mime_type(self, content_type: int) -> str:
        return self.mime_types.get(content_type, DEFAULT_MIME)


def _user_content_type(value: Any) -> tuple[int, str | None] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        number, mime = value, None
    elif (
        isinstance(value, tuple | list)
        and len(value) == 2
        and isinstance(value[0], int)
        and not isinstance(value[0], bool)
        and isinstance(value[1], str)
    ):
        number, mime = value[0], value[1]
    else:
        return None
    return (number, mime) if number in USER_RANGE else None


def _reverse(by_name: Mapping[str, int], system: Mapping[int, str], number: int) -> str:
    if number in system:
        return system[number]
    for name, value in by_name.items():
        if value == number:
            return name
    return str(number)


def require_user_type(number: int, what: str) -> None:
    """Only user metadata and user attachments (1024..65535) may be written or deleted (403)."""
    if number not in USER_RANGE:
        raise DicomVaultError(
            ErrorCode.FORBIDDEN_ACCESS, f"{what} {number} is not a user {what} (1024..65535): it is read-only"
        )


# ---- revisions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ETag:
    """A revision and the MD5 of the content it protects."""

    revision: int
    md5: str

    def header(self) -> str:
        return f'"{self.revision}-{self.md5}"'


def parse_etag(raw: str, header: str) -> ETag:
    """An `If-Match` / `If-None-Match` value: `"{revision}-{md5}"`, quotes optional (as Orthanc)."""
    text = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw
    revision, dash, md5 = text.partition("-")
    if not dash or not _REVISION.fullmatch(revision) or int(revision) > _INT64_MAX:
        raise DicomVaultError(
            ErrorCode.PARAMETER_OUT_OF_RANGE,
            f'the {header} header must hold an ETag "{{revision}}-{{md5}}" as this server sent it, not {raw!r}',
        )
    return ETag(int(revision), md5)


def require_if_match(expected: ETag | None, check_revisions: bool) -> None:
    """With `CheckRevisions`, a deletion must name the revision it deletes (409 otherwise)."""
    if expected is None and check_revisions:
        raise DicomVaultError(ErrorCode.REVISION, 'the If-Match header is required when "CheckRevisions" is true')


def check_revision(current: ETag, expected: ETag | None, check_revisions: bool) -> None:
    """Refuse to change content whose revision is not the one the client saw (409)."""
    if expected is None:
        if check_revisions:
            raise DicomVaultError(
                ErrorCode.REVISION, 'this content exists: "CheckRevisions" is true, so If-Match must name its revision'
            )
        return
    if expected != current:
        raise DicomVaultError(
            ErrorCode.REVISION, f"If-Match names revision {expected.header()}, the current one is {current.header()}"
        )


def metadata_etag(stored: StoredMetadata) -> ETag:
    return ETag(stored.revision, md5_hex(stored.value.encode()))


# ---- reading metadata -----------------------------------------------------------------------


def metadata_listing(tx: ReadTx, level: ResourceType, public_id: str, names: Names, expand: bool) -> Any:
    """`GET /{level}/{id}/metadata`: the names in type order, or name -> value with `?expand`."""
    ref = require(tx, level, public_id)
    rows = list_metadata(tx, ref.internal_id)
    if expand:
        return {names.metadata_name(row.type): row.value for row in rows}
    return [names.metadata_name(row.type) for row in rows]


def metadata_value(tx: ReadTx, level: ResourceType, public_id: str, mtype: int) -> StoredMetadata:
    """`GET /{level}/{id}/metadata/{name}`: one value (404 if the resource does not carry it)."""
    ref = require(tx, level, public_id)
    stored = get_metadata(tx, ref.internal_id, mtype)
    if stored is None:
        raise DicomVaultError(ErrorCode.INEXISTENT_ITEM, f"{ref.path} has no metadata {mtype}")
    return stored
