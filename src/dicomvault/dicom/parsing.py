"""Parse one DICOM file once, and extract what the index needs: identifiers, public ids, main
DICOM tags per level, and the automatic metadata (transfer syntax, SOP class, pixel data offset).

This runs in the ingest worker processes: it must be picklable in and out (plain bytes in, a
frozen dataclass out) and never touch the index or the storage area.
"""

from __future__ import annotations

import hashlib
import io
import struct
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.charset import decode_bytes
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag

from dicomvault.dicom.main_tags import INSTANCE_FIND_TAG_SET, MAIN_TAGS
from dicomvault.dicom.structure import check_complete
from dicomvault.dicom.tags_json import selected_strings
from dicomvault.enums import ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode

_PREAMBLE = 128
_DEFLATED = "1.2.840.10008.1.2.1.99"
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})
_PIXEL_DATA = 0x7FE00010
# Byte values at which multi-byte character sets switch back (backslash; PN adds ^ and =).
_DELIMITERS = {0x5C}
_PN_DELIMITERS = {0x5C, 0x5E, 0x3D}

MainTags = tuple[tuple[int, str], ...]
MAX_MAIN_TAG_LENGTH = 256


@dataclass(frozen=True)
class ParsedInstance:
    """Everything the index needs from one DICOM file; values are Orthanc's strings."""

    patient_key: str  # PatientID ("" when absent)
    study_uid: str
    series_uid: str
    sop_uid: str
    patient_id: str  # public ids
    study_id: str
    series_id: str
    instance_id: str
    main_tags: dict[ResourceType, MainTags]
    transfer_syntax: str
    sop_class_uid: str
    pixel_data_offset: int | None
    # Schema 2: the INSTANCE_FIND_TAGS of the file, rendered as a find reading the file sees them.
    find_tags: MainTags = ()


def public_id(*parts: str) -> str:
    """Orthanc's public id: SHA-1 of the `|`-joined identifiers, as 5 dash-separated groups."""
    digest = hashlib.sha1("|".join(parts).encode("utf-8"), usedforsecurity=False).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


def read_dataset(raw: bytes, stop_before_pixels: bool = True) -> Dataset:
    """pydicom's view of a buffer, accepting files without a Part 10 header as Orthanc does."""
    try:
        if len(raw) >= _PREAMBLE + 4 and raw[_PREAMBLE : _PREAMBLE + 4] == b"DICM":
            return pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=stop_before_pixels)
        return pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=stop_before_pixels, force=True)
    except (InvalidDicomError, EOFError, ValueError, KeyError, struct.error, NotImplementedError) as exc:
        raise DicomVaultError(
            ErrorCode.BAD_FILE_FORMAT, f"Cannot parse an invalid DICOM file (size: {len(raw)} bytes)"
        ) from exc


def check_dicom_file(raw: bytes) -> None:
    """Raise `BAD_FILE_FORMAT` unless `raw` is a well-formed DICOM file (header optional), without
    requiring the identifiers an archive needs: what Orthanc checks of a body it only forwards
    (`/modalities/{id}/store-straight`)."""
    if not raw:
        raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, "Received an empty DICOM file")
    has_header = len(raw) >= _PREAMBLE + 4 and raw[_PREAMBLE : _PREAMBLE + 4] == b"DICM"
    try:
        ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True, force=not has_header)
        transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if has_header else ""
        _check_structure(raw, has_header, ds, transfer_syntax)
    except DicomVaultError:
        raise
    except Exception as exc:  # pydicom raises a wide variety on garbage: all mean "bad file"
        raise DicomVaultError(
            ErrorCode.BAD_FILE_FORMAT, f"Cannot parse an invalid DICOM file (size: {len(raw)} bytes)"
        ) from exc


def parse_instance(raw: bytes, default_encoding: str = "Latin1") -> ParsedInstance:
    """Parse and validate one DICOM file; raise `BAD_FILE_FORMAT` (HTTP 400) when unusable.
    `default_encoding` (Orthanc's `DefaultEncoding`) decodes the find tags of a file without
    SpecificCharacterSet."""
    if not raw:
        raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, "Received an empty DICOM file")
    stream = io.BytesIO(raw)
    try:
        has_header = len(raw) >= _PREAMBLE + 4 and raw[_PREAMBLE : _PREAMBLE + 4] == b"DICM"
        ds = pydicom.dcmread(stream, stop_before_pixels=True, force=not has_header)
        stop_offset = stream.tell()
        if has_header and len(ds.file_meta) == 0:
            raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, "DICOM file without file meta information")
        transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if has_header else ""
        _check_structure(raw, has_header, ds, transfer_syntax)
        charset = ds._character_set  # pydicom's Python codec(s) for this data set
        encodings = [charset] if isinstance(charset, str) else list(charset)
        patient_key = _string(ds, 0x00100020, encodings) or ""
        study_uid = _string(ds, 0x0020000D, encodings)
        series_uid = _string(ds, 0x0020000E, encodings)
        sop_uid = _string(ds, 0x00080018, encodings)
        sop_class = _string(ds, 0x00080016, encodings) or ""
        main_tags = {level: _extract(ds, tags, encodings) for level, tags in MAIN_TAGS.items()}
        find_tags = selected_strings(ds, INSTANCE_FIND_TAG_SET, default_encoding)
    except DicomVaultError:
        raise
    except Exception as exc:  # pydicom raises a wide variety on garbage: all mean "bad file"
        raise DicomVaultError(
            ErrorCode.BAD_FILE_FORMAT, f"Cannot parse an invalid DICOM file (size: {len(raw)} bytes)"
        ) from exc
    for name, value in (
        ("StudyInstanceUID", study_uid),
        ("SeriesInstanceUID", series_uid),
        ("SOPInstanceUID", sop_uid),
    ):
        if not value:
            # Orthanc 1.10.1 answers "Inexistent tag" (HTTP 404) here, not "Bad file format".
            raise DicomVaultError(ErrorCode.INEXISTENT_TAG, f"Missing tag {name} in the DICOM file")
    assert study_uid is not None and series_uid is not None and sop_uid is not None
    if not transfer_syntax:
        transfer_syntax = (
            _EXPLICIT_BE if not ds.is_little_endian else (_IMPLICIT_LE if ds.is_implicit_VR else "1.2.840.10008.1.2.1")
        )
    pixel_offset = stop_offset if _PIXEL_DATA in ds or _starts_pixel_data(raw, stop_offset, ds) else None
    return ParsedInstance(
        patient_key=patient_key,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_uid=sop_uid,
        patient_id=public_id(patient_key),
        study_id=public_id(patient_key, study_uid),
        series_id=public_id(patient_key, study_uid, series_uid),
        instance_id=public_id(patient_key, study_uid, series_uid, sop_uid),
        main_tags=main_tags,
        transfer_syntax=transfer_syntax,
        sop_class_uid=sop_class,
        pixel_data_offset=pixel_offset,
        find_tags=find_tags,
    )


@dataclass(frozen=True)
class Identity:
    """Who an instance is and whether its file holds pixel data: what a client sorting files needs,
    without the validation and indexing work of `parse_instance` (the receiving server does that)."""

    instance_id: str
    transfer_syntax: str
    has_pixel_data: bool


# PatientID, StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID: what a public id hashes.
_IDENTIFIERS = (0x00100020, 0x0020000D, 0x0020000E, 0x00080018)


def identify_instance(raw: bytes) -> Identity:
    """The public id of the instance in `raw` and whether pixel data follows its header (for a
    deflated file: whether the inflated data set has it). `BAD_FILE_FORMAT` if it is not DICOM or
    lacks a UID, as `parse_instance` would say."""
    if not raw:
        raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, "Received an empty DICOM file")
    stream = io.BytesIO(raw)
    has_header = len(raw) >= _PREAMBLE + 4 and raw[_PREAMBLE : _PREAMBLE + 4] == b"DICM"
    try:
        ds = pydicom.dcmread(stream, stop_before_pixels=True, force=not has_header)
        stop_offset = stream.tell()
        transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", "")) if has_header else ""
        charset = ds._character_set
        encodings = [charset] if isinstance(charset, str) else list(charset)
        keys = [_string(ds, tag, encodings) for tag in _IDENTIFIERS]
    except DicomVaultError:
        raise
    except Exception as exc:
        raise DicomVaultError(
            ErrorCode.BAD_FILE_FORMAT, f"Cannot parse an invalid DICOM file (size: {len(raw)} bytes)"
        ) from exc
    patient, study, series, sop = keys
    if not study or not series or not sop:
        raise DicomVaultError(ErrorCode.INEXISTENT_TAG, "Missing a UID (study, series or SOP instance) in the file")
    if transfer_syntax == _DEFLATED:
        # The stream position is in the inflated data: read it all once to know.
        has_pixels = _PIXEL_DATA in read_dataset(raw, stop_before_pixels=False)
    else:
        has_pixels = _PIXEL_DATA in ds or _starts_pixel_data(raw, stop_offset, ds)
    return Identity(public_id(patient or "", study, series, sop), transfer_syntax, has_pixels)


def _starts_pixel_data(raw: bytes, offset: int, ds: Dataset) -> bool:
    if offset + 4 > len(raw):
        return False
    fmt = "<HH" if ds.is_little_endian else ">HH"
    group, element = struct.unpack_from(fmt, raw, offset)
    return bool((group << 16 | element) == _PIXEL_DATA)


def _check_structure(raw: bytes, has_header: bool, ds: Dataset, transfer_syntax: str) -> None:
    if transfer_syntax == _DEFLATED:
        return  # the deflated body is checked by zlib while pydicom inflates it
    start = _dataset_start(raw) if has_header else 0
    if start > len(raw):  # a meta element's length runs past the end (e.g. one declaring 4 GiB)
        raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, "Truncated or malformed DICOM file meta information")
    check_complete(raw, start, explicit_vr=not ds.is_implicit_VR, little_endian=bool(ds.is_little_endian))


def _dataset_start(raw: bytes) -> int:
    """Offset of the first element after the file meta group (explicit VR little endian)."""
    pos = _PREAMBLE + 4
    while pos + 8 <= len(raw):
        group, _element = struct.unpack_from("<HH", raw, pos)
        if group != 0x0002:
            return pos
        vr = raw[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"UN", b"UT", b"SQ", b"UC", b"UR"):
            (length,) = struct.unpack_from("<I", raw, pos + 8)
            pos += 12 + length
        else:
            (length,) = struct.unpack_from("<H", raw, pos + 6)
            pos += 8 + length
    return pos


def _extract(ds: Dataset, tags: MainTags, encodings: list[str]) -> MainTags:
    out: list[tuple[int, str]] = []
    for tag, _name in tags:
        value = _string(ds, tag, encodings)
        # Orthanc keeps no main DICOM tag value longer than 256 characters.
        if value is not None and len(value) <= MAX_MAIN_TAG_LENGTH:
            out.append((tag, value))
    return tuple(out)


def _string(ds: Dataset, tag: int, encodings: list[str]) -> str | None:
    """An element's value as Orthanc's string (trailing padding removed, UTF-8), or None. As
    Orthanc's (a C string), the value ends at its first NUL character: `AB\0CD` is stored `AB`
    (which also keeps NUL out of the index, where PostgreSQL text cannot hold it)."""
    elem = ds.get_item(Tag(tag))
    if elem is None:
        return None
    value = element_string(elem, encodings)
    return value if value is None else value.split("\x00", 1)[0]


def element_string(elem: DataElement | RawDataElement, encodings: list[str]) -> str | None:
    """Render one non-sequence element's value as the string Orthanc stores for it."""
    if isinstance(elem, RawDataElement):
        value: Any = elem.value
        vr = elem.VR
        if isinstance(value, bytes) and vr is not None and vr not in ("US", "SS", "UL", "SL", "FL", "FD", "AT", "SQ"):
            if vr in _TEXT_VRS:
                text = decode_bytes(value, encodings, _PN_DELIMITERS if vr == "PN" else _DELIMITERS)
            else:
                text = value.decode("ascii", errors="replace")
            return text.rstrip(" \x00")
        elem = pydicom.dataelem.convert_raw_data_element(elem, encoding=encodings)
    value = elem.value
    if value is None:
        return ""
    if elem.VR == "SQ":
        return None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(_scalar(v) for v in value)
    return _scalar(value)


def _scalar(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace").rstrip(" \x00")
    return str(value).rstrip(" \x00")
