"""Structural validation of a DICOM byte stream, without decoding values.

pydicom reads a truncated file without complaint (the last value is simply short), while Orthanc,
through DCMTK, refuses it. This walker checks that every element's declared length fits in the
buffer, descending into undefined-length sequences and encapsulated pixel data, so a truncated or
lying file (e.g. an element claiming 4 GiB) is refused before anything is stored or allocated.
"""

from __future__ import annotations

import struct

from dicomvault.errors import DicomVaultError, ErrorCode

_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQ_END = 0xFFFEE0DD
# VRs whose explicit encoding uses a reserved 2 bytes and a 4-byte length.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_MAX_DEPTH = 64


def check_complete(buf: bytes | memoryview, offset: int, explicit_vr: bool, little_endian: bool) -> None:
    """Raise `BAD_FILE_FORMAT` unless the data set starting at `offset` runs exactly to the end."""
    end = _walk(memoryview(buf), offset, len(buf), explicit_vr, "<" if little_endian else ">", 0, False)
    if end != len(buf):  # pragma: no cover - _walk consumes up to the end or raises
        raise _truncated(end)


def _truncated(offset: int) -> DicomVaultError:
    return DicomVaultError(ErrorCode.BAD_FILE_FORMAT, f"Truncated or malformed DICOM file near byte {offset}")


def _walk(buf: memoryview, pos: int, end: int, explicit: bool, bo: str, depth: int, in_item: bool) -> int:
    """Walk elements in [pos, end); return where the walk stopped (`end`, or after an item end)."""
    if depth > _MAX_DEPTH:
        raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, "DICOM sequences nested too deeply")
    tag_fmt = bo + "HH"
    while pos < end:
        if end - pos < 8:
            # Trailing bytes shorter than an element header: DCMTK treats a few padding bytes at the
            # very end as an error too; refuse.
            raise _truncated(pos)
        group, element = struct.unpack_from(tag_fmt, buf, pos)
        tag = (group << 16) | element
        if tag in (_ITEM_END, _SEQ_END):
            if in_item and tag == _ITEM_END:
                return pos + 8
            raise _truncated(pos)
        if group == 0xFFFE:
            raise _truncated(pos)
        vr = bytes(buf[pos + 4 : pos + 6])
        if explicit and group != 0xFFFE and vr.isalpha() and vr.isupper():
            if vr in _LONG_VRS:
                if end - pos < 12:
                    raise _truncated(pos)
                (length,) = struct.unpack_from(bo + "I", buf, pos + 8)
                header = 12
            else:
                (length,) = struct.unpack_from(bo + "H", buf, pos + 6)
                header = 8
        else:
            (length,) = struct.unpack_from(bo + "I", buf, pos + 4)
            vr = b"SQ" if length == _UNDEFINED else vr
            header = 8
        pos += header
        if length == _UNDEFINED:
            pos = _walk_items(buf, pos, end, explicit, bo, depth + 1)
        else:
            if length > end - pos:
                raise _truncated(pos - header)
            if vr == b"SQ" and length:
                _walk_items(buf, pos, pos + length, explicit, bo, depth + 1, delimited=False)
            pos += length
    if in_item:
        raise _truncated(pos)
    return pos


def _walk_items(
    buf: memoryview, pos: int, end: int, explicit: bool, bo: str, depth: int, delimited: bool = True
) -> int:
    """Items of a sequence or of encapsulated pixel data. `delimited`: undefined length, read up to
    the sequence delimiter; otherwise the items fill [pos, end) exactly."""
    tag_fmt = bo + "HHI"
    while delimited or pos < end:
        if end - pos < 8:
            raise _truncated(pos)
        group, element, length = struct.unpack_from(tag_fmt, buf, pos)
        tag = (group << 16) | element
        if delimited and tag == _SEQ_END:
            return pos + 8
        if tag != _ITEM:
            raise _truncated(pos)
        pos += 8
        if length == _UNDEFINED:
            pos = _walk(buf, pos, end, explicit, bo, depth, True)
        else:
            if length > end - pos:
                raise _truncated(pos - 8)
            pos += length
    return pos
