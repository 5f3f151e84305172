"""What a file found by `dicomvault import` is, and what (if anything) to send for it.

Classes, as the import reports them:

* **DICOM**: a Part 10 file or a raw data set (Orthanc accepts both); validated with the server's
  own parser, which also gives the instance's public id and whether the file holds PixelData.
  A DICOM file without PixelData may be Orthanc's "DICOM until pixel data" attachment (content
  type 3, written by Orthanc >= 1.9.1 with StorageCompression on: the file's prefix stopped just
  before (7FE0,0010)). The importer never sends such a file before it knows no complete file of
  the same instance exists: sent first, it would leave a pixel-less instance on the target and make
  the real file "AlreadyStored".
* **summary**: Orthanc's JSON summary of an instance (content type 2, Orthanc < 1.9.1): skipped,
  never a failure (Orthanc's ImportDicomFiles.py counts them as failed files).
* **compressed**: Orthanc's "zlib with size" attachment (8-byte little-endian size, then a zlib
  stream): decompressed, then classified again (`Classified.compressed` is then True).
* **zip**: a zip archive; the importer walks its members (`zip_members`, with size and ratio caps).
* **other**: anything else (Orthanc's SQLite `index`, text, images...): skipped.
* **invalid**: something that claims to be DICOM (or a compressed attachment) and is damaged: a
  failure, with its reason.
"""

from __future__ import annotations

import enum
import json
import logging
import re
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from dicomvault.dicom.parsing import identify_instance, read_dataset
from dicomvault.errors import DicomVaultError
from dicomvault.storage.accessor import decompress_zlib_with_size

logger = logging.getLogger(__name__)

ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_DICM_OFFSET = 128
_SIZE_HEADER = struct.Struct("<Q")
# zlib cannot expand more than ~1032:1; a "zlib with size" header announcing more is not one.
_ZLIB_MAX_RATIO = 1100
# Bounds on what one decompressed file or zip member may hold in memory.
MAX_FILE_SIZE = 2 << 30
MAX_ZIP_RATIO = 1100  # above deflate's limit: a member claiming more is a zip bomb
MAX_ZIP_TOTAL = 64 << 30  # uncompressed bytes read from one zip archive
MAX_ZIP_DEPTH = 2  # zip inside zip inside zip: no further
_TAG_KEY = re.compile(r"^[0-9a-fA-F]{4},[0-9a-fA-F]{4}$")
# Attributes of the image pixel module: present without PixelData, the file is a header-only copy.
_IMAGE_ATTRIBUTES = (0x00280010, 0x00280011, 0x00280100)


class Kind(enum.Enum):
    DICOM = "dicom"
    SUMMARY = "summary"
    ZIP = "zip"
    OTHER = "other"
    INVALID = "invalid"


@dataclass(frozen=True)
class Classified:
    kind: Kind
    payload: bytes = b""  # DICOM: the bytes to send; ZIP: the archive
    instance_id: str = ""
    has_pixel_data: bool = False
    header_only: bool = False  # image attributes without PixelData: looks like "DICOM until pixel data"
    compressed: bool = False  # came out of an Orthanc compressed attachment
    reason: str = ""  # OTHER / INVALID: why


def classify(data: bytes, _nested: bool = False) -> Classified:
    """The class of one file's bytes (see the module docstring)."""
    if not data:
        return Classified(Kind.OTHER, reason="empty file")
    if data[:4] in ZIP_MAGIC:
        return Classified(Kind.ZIP, payload=data)
    if _is_dicom_magic(data):
        return _dicom(data, claimed=True)
    if not _nested and _looks_zlib_with_size(data):
        try:
            inner = decompress_zlib_with_size(data, limit=min(MAX_FILE_SIZE, len(data) * _ZLIB_MAX_RATIO))
        except DicomVaultError as exc:
            return Classified(Kind.INVALID, reason=f"damaged Orthanc compressed attachment: {exc}")
        result = classify(inner, _nested=True)
        return Classified(
            result.kind,
            result.payload,
            result.instance_id,
            result.has_pixel_data,
            result.header_only,
            True,
            result.reason,
        )
    stripped = data.lstrip()
    if stripped[:1] == b"{":
        return _json(data)
    if data[:16] == b"SQLite format 3\x00":
        return Classified(Kind.OTHER, reason="SQLite database (Orthanc's index?)")
    # Orthanc also accepts a raw data set without the Part 10 header.
    result = _dicom(data, claimed=False)
    return result


def _is_dicom_magic(data: bytes) -> bool:
    return data[_DICM_OFFSET : _DICM_OFFSET + 4] == b"DICM"


def _looks_zlib_with_size(data: bytes) -> bool:
    """An 8-byte little-endian size then a zlib header (deflate method, valid check bits)."""
    if len(data) < _SIZE_HEADER.size + 2:
        return False
    (size,) = _SIZE_HEADER.unpack_from(data)
    cmf, flg = data[8], data[9]
    return size > 0 and cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf << 8 | flg) % 31 == 0


def _dicom(data: bytes, claimed: bool) -> Classified:
    # Who the instance is and whether it has pixels; validating the file is the target's job (it
    # answers 400 with its reason), so the cheaper identification is enough here.
    try:
        identity = identify_instance(data)
    except DicomVaultError as exc:
        if claimed:
            return Classified(Kind.INVALID, reason=f"damaged DICOM file: {exc}")
        return Classified(Kind.OTHER, reason="not DICOM, not an Orthanc attachment")
    has_pixels = identity.has_pixel_data
    header_only = False
    if not has_pixels:
        try:
            ds = read_dataset(data)
            header_only = all(tag in ds for tag in _IMAGE_ATTRIBUTES)
        except DicomVaultError:
            header_only = False
    return Classified(
        Kind.DICOM, payload=data, instance_id=identity.instance_id, has_pixel_data=has_pixels, header_only=header_only
    )


def _json(data: bytes) -> Classified:
    """Orthanc's DICOM-as-JSON summary: `{"gggg,eeee": {"Name": ..., "Type": ..., "Value": ...}}`."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return Classified(Kind.OTHER, reason="not DICOM (text)")
    if isinstance(value, dict) and value and all(_TAG_KEY.match(key) for key in value):
        entries = list(value.values())
        if all(isinstance(entry, dict) and "Type" in entry for entry in entries):
            return Classified(Kind.SUMMARY)
    return Classified(Kind.OTHER, reason="JSON, not an Orthanc summary")


@dataclass(frozen=True)
class ZipMember:
    name: str
    data: bytes | None  # None: refused, see reason
    reason: str = ""


def zip_members(source: IO[bytes]) -> Iterator[ZipMember]:
    """Every file member of a zip archive, read with caps: a member larger than MAX_FILE_SIZE or
    expanding more than deflate can (MAX_ZIP_RATIO), encrypted members, and members beyond
    MAX_ZIP_TOTAL bytes for the whole archive are refused (reason given), never read in full.
    Raises `zipfile.BadZipFile` / `OSError` when the archive itself cannot be read."""
    total = 0
    with zipfile.ZipFile(source) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            if info.flag_bits & 0x1:
                yield ZipMember(info.filename, None, "encrypted zip member")
                continue
            if info.file_size > MAX_FILE_SIZE:
                yield ZipMember(info.filename, None, f"zip member of {info.file_size} bytes: over the size cap")
                continue
            if info.file_size > 1 << 20 and info.file_size > max(info.compress_size, 1) * MAX_ZIP_RATIO:
                yield ZipMember(info.filename, None, "zip member expands beyond deflate's ratio: zip bomb?")
                continue
            if total + info.file_size > MAX_ZIP_TOTAL:
                yield ZipMember(info.filename, None, "zip archive expands beyond the total size cap")
                continue
            try:
                with archive.open(info) as member:
                    # Read one byte more than announced: a lying header is caught, not followed.
                    data = member.read(info.file_size + 1)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
                yield ZipMember(info.filename, None, f"unreadable zip member: {exc}")
                continue
            if len(data) != info.file_size:
                yield ZipMember(info.filename, None, "zip member larger than its header says")
                continue
            total += len(data)
            yield ZipMember(info.filename, data)
