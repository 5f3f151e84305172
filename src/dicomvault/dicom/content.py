"""Raw access to a dataset by path, as Orthanc's `GET /instances/{id}/content/...` answers it.

`resolve_content(ds, ["0008-1140", "0", "0008-1155"])` walks the dataset: a level (the dataset,
a sequence item) or a sequence lists its children, a leaf answers its value bytes. The REST
layer renders a list as JSON and bytes as `application/octet-stream`. Facts mirrored from
Orthanc 1.10.1:

* A level lists its tags as `gggg-eeee` (lowercase), the file meta information excluded; a
  sequence lists its items as `"0"`, `"1"`...; PixelData lists its fragments, the basic offset
  table being `"0"` when encapsulated, or `["0"]` (the whole value) when native.
* A tag segment is `gggg-eeee`, `gggg,eeee`, `ggggeeee` (any case) or a name of DCMTK's dictionary
  (`PatientID`, `RETIRED_StudyComments`; names of its private dictionary are not known here); anything
  else is error 27 "Unknown DICOM tag" (HTTP 500). A tag that is absent, an index out of range,
  or a segment below a leaf answers 404.
* An item index is read as C++'s `lexical_cast<size_t>` reads it (`+1`, `-0` and `-1` parse,
  negative numbers wrap), then accepted when `index + 1 <= count` in 64-bit arithmetic: so `-1`
  (2**64 - 1) names the last item, a quirk reproduced here. Fragment indexes have no such quirk.
* Values are DCMTK's in-memory bytes: numbers little endian whatever the transfer syntax, odd
  lengths padded with a NUL, strings trimmed as `tags_json.stored_value` explains.
"""

from __future__ import annotations

import logging
import re
import struct

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from dicomvault.dicom.tags_json import (
    PIXEL_DATA,
    Element,
    element_vr,
    iter_elements,
    raw_value,
    sequence_items,
    stored_value,
    tag_for_name,
)
from dicomvault.errors import DicomVaultError, ErrorCode

logger = logging.getLogger(__name__)

# A list of child names (rendered as JSON) or the raw bytes of a value.
ContentAnswer = list[str] | bytes

_HEX_TAG = re.compile(r"([0-9A-Fa-f]{4})[-,]?([0-9A-Fa-f]{4})")
_INDEX = re.compile(r"([+-]?)([0-9]+)")
_SIZE_T = 1 << 64
_ITEM = 0xFFFEE000

_UNKNOWN_DICOM_TAG = ErrorCode.UNKNOWN_DICOM_TAG  # Orthanc's error 27, HTTP 500


def parse_tag(text: str) -> int:
    """A tag from a URI segment: hexadecimal in three spellings, or a name of DCMTK's dictionary
    (`PatientID`, `RETIRED_StudyComments`)."""
    match = _HEX_TAG.fullmatch(text)
    if match:
        return int(match.group(1), 16) << 16 | int(match.group(2), 16)
    tag = tag_for_name(text)
    if tag is None:
        raise DicomVaultError(_UNKNOWN_DICOM_TAG, f"Unknown DICOM tag: {text!r}")
    return tag


def _parse_index(text: str) -> int | None:
    """C++'s `boost::lexical_cast<size_t>`: an optional sign, digits, wrapping modulo 2**64."""
    match = _INDEX.fullmatch(text)
    if match is None:
        return None
    value = int(match.group(2))
    if value >= _SIZE_T:
        return None
    return (_SIZE_T - value) % _SIZE_T if match.group(1) == "-" else value


def _not_found(what: str) -> DicomVaultError:
    return DicomVaultError(ErrorCode.UNKNOWN_RESOURCE, what)


def _children(ds: Dataset, skip_file_meta: bool) -> list[str]:
    return [f"{e.tag >> 16:04x}-{e.tag & 0xFFFF:04x}" for e in iter_elements(ds, skip_file_meta)]


def _item(items: list[Dataset], text: str) -> Dataset:
    index = _parse_index(text)
    # Orthanc checks `index + 1 > count` in size_t arithmetic, then DCMTK clamps to the last item.
    if index is None or not items or (index + 1) % _SIZE_T > len(items):
        raise _not_found(f"no item {text!r} in a sequence of {len(items)}")
    return items[min(index, len(items) - 1)]


def fragments(data: bytes) -> list[bytes]:
    """The items of encapsulated pixel data (the basic offset table first)."""
    found: list[bytes] = []
    offset = 0
    while offset + 8 <= len(data):
        tag_group, tag_element, length = struct.unpack_from("<HHI", data, offset)
        tag = tag_group << 16 | tag_element
        offset += 8
        if tag != _ITEM:  # the sequence delimiter, or garbage
            break
        piece = data[offset : offset + length]
        found.append(piece + b"\0" if len(piece) % 2 else piece)  # DCMTK pads odd items too
        offset += length
    return found


def _pixel_data(ds: Dataset, elem: Element, vr: str) -> list[bytes]:
    """Native pixel data is one piece; encapsulated pixel data is its list of items."""
    data = raw_value(ds, elem, vr)
    undefined = elem.length == 0xFFFFFFFF if isinstance(elem, RawDataElement) else elem.is_undefined_length
    if undefined:
        return fragments(data)
    return [stored_value(vr, data)]


def resolve_content(ds: Dataset, path: list[str]) -> ContentAnswer:
    """Orthanc's `/content/{path}` on a full dataset (pixel data included); `path` holds the
    non-empty URI segments. Raises `UNKNOWN_RESOURCE` (404) for what does not exist."""
    level = ds
    position = 0
    while True:
        if position == len(path):
            return _children(level, skip_file_meta=level is ds)
        tag = parse_tag(path[position])
        position += 1
        if tag >> 16 == 0x0002 and level is ds:
            raise _not_found("the file meta information is not part of /content")
        elem = level.get_item(tag) if tag in level else None
        if elem is None:
            raise _not_found(f"tag {path[position - 1]} is absent")
        vr = element_vr(level, elem)
        items = sequence_items(level, elem, vr)
        rest = len(path) - position
        if items is not None:
            if rest == 0:
                return [str(i) for i in range(len(items))]
            level = _item(items, path[position])
            position += 1
            continue
        if tag == PIXEL_DATA:
            pieces = _pixel_data(level, elem, vr)
            if rest == 0:
                return [str(i) for i in range(len(pieces))]
            index = _parse_index(path[position])
            if rest > 1 or index is None or index >= len(pieces):
                raise _not_found(f"no fragment {path[position]!r} in the pixel data")
            return pieces[index]
        if rest:
            raise _not_found(f"tag {path[position - 1]} is not a sequence")
        return stored_value(vr, raw_value(level, elem, vr))
