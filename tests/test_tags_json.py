"""Tests of `dicomvault.dicom.tags_json`: Orthanc 1.10.1's `/tags`, `?simplify`, `?short`,
`/simplified-tags` and `/header` renderings.

The datasets are built here byte by byte (to control padding, VRs and encodings exactly) or with
`tests.dicomgen`; the expected answers are what the real Orthanc 1.10.1 answered for these very
files, pasted as literals. One test (marked `orthanc`) compares live against the real Orthanc.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID

from dicomvault.dicom.content import resolve_content
from dicomvault.dicom.tags_json import TagsFormat, dataset_to_json, header_to_json, parse_tags_format
from dicomvault.errors import DicomVaultError
from tests import dicomgen
from tests.orthanc import OrthancServer, missing_orthanc_reason, orthanc_available

# ---- building Part 10 files byte by byte ---------------------------------------------------------

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
_LONG_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UC", "UR", "UT", "UN", "SV", "UV"}

# An element value: bytes, or the items of a sequence (each a list of encoded elements).
Items = list[list[bytes]]


def element(tag: int, vr: str, value: bytes | Items, ts: str = EXPLICIT_LE, undefined: bool = False) -> bytes:
    """One encoded element; a sequence with `undefined` uses undefined lengths throughout."""
    big = ts == EXPLICIT_BE
    order = ">" if big else "<"
    if isinstance(value, list):
        body = b""
        for item in value:
            content = b"".join(item)
            if undefined:
                body += struct.pack(order + "HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + content
                body += struct.pack(order + "HHI", 0xFFFE, 0xE00D, 0)
            else:
                body += struct.pack(order + "HHI", 0xFFFE, 0xE000, len(content)) + content
        if undefined:
            body += struct.pack(order + "HHI", 0xFFFE, 0xE0DD, 0)
        data, length = body, 0xFFFFFFFF if undefined else len(body)
    else:
        data, length = value, len(value)
    head = struct.pack(order + "HH", tag >> 16, tag & 0xFFFF)
    if ts == IMPLICIT_LE:
        return head + struct.pack("<I", length) + data
    if vr in _LONG_VRS:
        return head + vr.encode() + b"\0\0" + struct.pack(order + "I", length) + data
    return head + vr.encode() + struct.pack(order + "H", length) + data


def pad(value: bytes, with_byte: bytes = b" ") -> bytes:
    return value + with_byte if len(value) % 2 else value


def part10(
    sop: str,
    elements: Sequence[tuple[int, str, bytes | Items]],
    ts: str = EXPLICIT_LE,
    extra_meta: Sequence[tuple[int, str, bytes]] = (),
    tail: bytes = b"",
) -> bytes:
    """A Part 10 file: the identifying UIDs plus `elements` (sorted here), then `tail` bytes."""
    meta = [
        element(0x00020001, "OB", b"\0\1"),
        element(0x00020002, "UI", pad(b"1.2.840.10008.5.1.4.1.1.7", b"\0")),
        element(0x00020003, "UI", pad(sop.encode(), b"\0")),
        element(0x00020010, "UI", pad(ts.encode(), b"\0")),
        element(0x00020012, "UI", pad(b"1.2.826.0.1.3680043.10.1234.1", b"\0")),
        *(element(tag, vr, value) for tag, vr, value in extra_meta),
    ]
    group = b"".join(meta)
    identifiers: list[tuple[int, str, bytes | Items]] = [
        (0x00080016, "UI", pad(b"1.2.840.10008.5.1.4.1.1.7", b"\0")),
        (0x00080018, "UI", pad(sop.encode(), b"\0")),
        (0x00100020, "LO", b"P9"),
        (0x0020000D, "UI", b"1.2.3.1\0"),
        (0x0020000E, "UI", b"1.2.3.2\0"),
    ]
    body = b"".join(
        element(tag, vr, value, ts) for tag, vr, value in sorted([*identifiers, *elements], key=lambda e: e[0])
    )
    return b"\0" * 128 + b"DICM" + element(0x00020000, "UL", struct.pack("<I", len(group))) + group + body + tail


def read(raw: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(raw))


def full(raw: bytes) -> dict[str, Any]:
    return dataset_to_json(read(raw), TagsFormat.FULL)


def short(raw: bytes) -> dict[str, Any]:
    return dataset_to_json(read(raw), TagsFormat.SHORT)


def simplify(raw: bytes) -> dict[str, Any]:
    return dataset_to_json(read(raw), TagsFormat.SIMPLIFY)


def private(values: Sequence[tuple[str, bytes | Items]]) -> list[tuple[int, str, bytes | Items]]:
    """Values under private creator "X" in group 0019, as elements 0019,1000, 0019,1001..."""
    found: list[tuple[int, str, bytes | Items]] = [(0x00190010, "LO", b"X ")]
    found += [(0x00191000 + i, vr, value) for i, (vr, value) in enumerate(values)]
    return found


def values_of(raw: bytes, count: int) -> list[Any]:
    """The `?short` values of 0019,1000 .. 0019,10xx."""
    answer = short(raw)
    return [answer[f"0019,{0x1000 + i:04x}"] for i in range(count)]


# ---- the datasets ----------------------------------------------------------------------------

STRING_VRS = ["AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"]
# Padding and NULs as DCMTK trims them: odd lengths, trailing and leading spaces, embedded NULs.
TRICKY_STRINGS = [b" x  ", b" x ", b"x\0", b"  ", b"x \\y ", b"\0x", b"x\0 ", b"x \0", b"x\t\r\n", b"ab  ", b"a\\b "]


def case_string_padding() -> bytes:
    """Every VR with every tricky string, in one file (0019,1000 onwards, VR by VR)."""
    return part10("1.2.3.9.101", private([(vr, value) for vr in STRING_VRS for value in TRICKY_STRINGS]))


NUMBERS: list[tuple[str, bytes | Items]] = [
    ("US", struct.pack("<4H", 0, 256, 65535, 7)),
    ("US", b"\x01\x00\x02"),  # odd length: DCMTK pads a NUL
    ("US", b""),
    ("SS", struct.pack("<3h", -32768, 32767, -5)),
    ("UL", struct.pack("<2I", 4294967295, 0)),
    ("SL", struct.pack("<3i", -1, 2**31 - 1, -(2**31))),
    ("SL", b""),
    ("FL", struct.pack("<3f", 1.5, 0.1, 1e17)),
    ("FL", struct.pack("<f", float("nan"))),
    ("FD", struct.pack("<3d", 0.1, -0.2, 1e-20)),
    ("FD", struct.pack("<4d", 1000.0, 1e16, 123456789.0, 1e-5)),
    ("FD", struct.pack("<4d", 1e22, 1.5e300, 5e-324, 1.2345678901234567)),
    ("FD", struct.pack("<3d", float("inf"), float("-inf"), -0.0)),
    ("FD", b"\0" * 12),  # 1.5 values: only the whole one is shown
    ("FD", b""),
    ("AT", struct.pack("<4H", 0x0020, 0x9153, 0x0018, 0x1063)),  # only the first value is shown
    ("AT", struct.pack("<2H", 0xABCD, 0xEF01)),
    ("AT", b""),
    ("OB", b"\x01\x02\x03"),
    ("OW", b"ab"),
    ("OF", b"\0\0\x80\x3f"),
    ("OD", b"abcdefgh"),
    ("OL", b"abcd"),
    ("UN", b"abcd"),
    ("SV", struct.pack("<q", -5)),
    ("UV", struct.pack("<Q", 5)),
    ("SQ", []),
]


def case_numbers() -> bytes:
    return part10("1.2.3.9.102", private(NUMBERS))


LENGTHS: list[tuple[str, bytes]] = [
    ("LO", b"a" * 256),
    ("LO", b"a" * 257),
    ("LO", b"a" * 256 + b"  "),  # trimmed to 256 first
    ("LO", b"a" * 250 + b"\0" + b"b" * 11),  # the C string is what counts
    ("LO", "é".encode("latin-1") * 200),  # 200 bytes, but 400 once in UTF-8
    ("LT", b"x" * 3000),
    ("UT", b"u" * 5000),
    ("DS", b"1" * 300),
    ("UL", struct.pack("<60I", *([4294967295] * 60))),  # 240 bytes, 659 characters
    ("UL", struct.pack("<65I", *([0] * 65))),  # 260 bytes, 129 characters
    ("SS", struct.pack("<200h", *range(-100, 100))),
]


def case_lengths() -> bytes:
    return part10("1.2.3.9.103", private(LENGTHS))


# (SpecificCharacterSet or None, values): every value is stored padded to an even length.
CHARSETS: list[tuple[bytes | None, list[tuple[str, bytes]]]] = [
    (None, [("LO", b"\xe9t\xe9"), ("CS", b"A\xe9"), ("UI", b"1.\xe9")]),
    (b"", [("LO", b"a\xe9")]),
    (b"ISO_IR 100", [("LO", b"\xe9"), ("DS", b"1\xe9"), ("PN", "Müller^Jörg".encode("latin-1")), ("LO", b"a\x1b-Lb")]),
    (b"ISO_IR 192", [("LO", "é€😀".encode()), ("LO", b"bad\xe9x"), ("CS", b"A\xe9"), ("LO", b"\xc3")]),
    (b"ISO_IR 192", [("PN", "Wang^XiaoDong=王^小東=".encode()), ("LO", b"\xed\xa0\x80"), ("LO", b"\xc0\xaf")]),
    (b"ISO_IR 144", [("LO", "Люкceмбypг".encode("iso8859-5"))]),
    (b"ISO_IR 13", [("LO", "ﾔﾏﾀﾞ".encode("shift_jis")), ("LO", b"a\\b~\xd4"), ("LO", b"a\xe9\xc3\xa9\xc0")]),
    (b"GB18030", [("LO", "王小東".encode("gb18030")), ("LO", b"a\x80b"), ("LO", b"\x81\x30\x81\x30")]),
    (b"GBK", [("LO", "王小東".encode("gbk"))]),
    (b"ISO_IR 6", [("LO", b"a\xe9"), ("LT", b"a\tb\r\nc\x1bd"), ("LO", b"a\x7fb\x01")]),
    (b"FOOBAR", [("LO", b"a\xe9"), ("LO", b"a\xc3\xa9")]),
    (b"ISO_IR 203", [("LO", "€œ".encode("iso8859-15"))]),
    (b"ISO 2022 IR 100", [("LO", b"a\xe9")]),
    (b"ISO_IR 126", [("LO", "Διονυσιος".encode("iso8859-7"))]),
    (b"ISO_IR 127", [("LO", "عربي".encode("iso8859-6")), ("LO", b"a\xe9\xc3\xa9\xc0")]),
    (b"ISO_IR 138", [("LO", "שרון".encode("iso8859-8"))]),
    (b"ISO_IR 148", [("LO", "ğş".encode("iso8859-9"))]),
    (b"ISO_IR 101", [("LO", "Łódź".encode("iso8859-2"))]),
    (b"ISO_IR 109", [("LO", "ĉĝ".encode("iso8859-3"))]),
    (b"ISO_IR 110", [("LO", "ąč".encode("iso8859-4"))]),
    (b"ISO_IR 166", [("LO", "ภาษาไทย".encode("tis-620"))]),
    (b"iso_ir 192", [("LO", "é".encode())]),
    (b" ISO_IR 100", [("LO", b"a\xe9")]),
    (b"ISO 2022 IR 87", [("LO", b"\x1b$B;3ED\x1b(B")]),
    (b"ISO 2022 IR 149", [("LO", b"\x1b$)C\xb1\xe6\xc8\xf1\xb5\xbf")]),
    (b"ISO 2022 IR 58", [("LO", b"\x1b$)A\xd5\xc5")]),
    (
        b"\\ISO 2022 IR 87",
        [("PN", b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B")],
    ),
    (
        b"\\ISO 2022 IR 149",
        [("PN", b"Hong^Gildong=\x1b$)C\xfb\xf3^\x1b$)C\xd1\xce\xd4\xd7=\x1b$)C\xc8\xab^\x1b$)C\xb1\xe6\xb5\xbf")],
    ),
    (b"\\ISO 2022 IR 58", [("PN", b"Zhang^XiaoDong=\x1b$)A\xd5\xc5^\x1b$)A\xd0\xa1\xb6\xab=")]),
    (b"\\ISO 2022 IR 126", [("LO", b"a\x1b-F\xc4\xe9")]),
    (b"ISO 2022 IR 100\\ISO 2022 IR 144", [("LO", b"a\xe9\x1b-L\xbb\xee"), ("LO", b"a\x1bb"), ("LO", b"a\x1b$Bb")]),
    (b"ISO 2022 IR 6\\ISO 2022 IR 100", [("LO", b"a\x1b-A\xe9")]),
    (b"ISO 2022 IR 13\\ISO 2022 IR 87", [("PN", b"\xd4\xcf\xc0\xde^\xc0\xdb\xb3=\x1b$B;3ED\x1b(J^\x1b$BB@O:\x1b(J")]),
    (b"ISO_IR 192\\GB18030", [("LO", b"\xc3\xa9")]),
]


def case_charset(index: int) -> bytes:
    charset, values = CHARSETS[index]
    elements = private([(vr, pad(value)) for vr, value in values])
    if charset is not None:
        elements.append((0x00080005, "CS", pad(charset)))
    return part10(f"1.2.3.9.104.{index}", elements)


def case_structure() -> bytes:
    """Sequences (nested, empty, empty items, undefined lengths), private creators, and names:
    retired, unknown to DCMTK 3.6.7, group lengths, repeating groups."""
    code = [element(0x00080100, "SH", b"X "), element(0x00080104, "LO", b"\xe9t\xe9")]
    first = [
        element(0x00081150, "UI", b"1.2.3\0"),
        element(0x00081155, "UI", b"1.2.3.4\0"),
        element(0x0040A170, "SQ", [code, []]),
    ]
    own_charset = [element(0x00080005, "CS", b"ISO_IR 192"), element(0x00081030, "LO", b"\xc3\xa9\xc3\xa9")]
    private_item = [
        element(0x00190010, "LO", b"INNER "),
        element(0x00191001, "LO", b"in private seq"),
        element(0x00191002, "LO", b"inner creator"),
    ]
    undefined_items = [[element(0x00081150, "UI", b"1.2\0")], [element(0x00081155, "UI", b"9.8\0")]]
    elements: list[tuple[int, str, bytes | Items]] = [
        (0x00080005, "CS", b"ISO_IR 100"),
        (0x00081140, "SQ", [first, [], own_charset]),
        (0x00186011, "SQ", []),
        (0x00280008, "IS", b"3 "),
        (0x00280010, "US", b"\x02\x00"),
        (0x00280011, "US", b"\x02\x00"),
        (0x00280100, "US", b"\x08\x00"),
        (0x7FE00010, "OB", bytes(range(12))),
        (0x00190010, "LO", b"X "),
        (0x00191000, "SQ", [private_item]),
        (0x00110010, "LO", b"ACME 1.0"),
        (0x00111001, "LO", b"acme"),
        (0x00111002, "US", b"\x0c\x00"),
        (0x00111003, "OB", b"\x01\x02"),
        (0x00110011, "LO", b"OTHER "),
        (0x00111101, "LO", b"other"),
        (0x00091010, "LO", b"no creator"),
        (0x00130010, "LO", b"1.2.840.113681 "),  # odd length: the creator keeps its space
        (0x00131010, "ST", b"abc "),
        (0x00110100, "LO", b"mid"),
        (0x00090000, "UL", b"\x10\x00\x00\x00"),
        (0x00200000, "UL", b"\x10\x00\x00\x00"),
        (0x00080001, "UL", b"\x10\x00\x00\x00"),
        (0x00080402, "LO", b"newtag"),  # newer than DCMTK 3.6.7
        (0x00380004, "SQ", []),  # retired since, not for DCMTK 3.6.7
        (0x00324000, "LT", b"retired"),
        (0x00280800, "CS", b"CL"),
        (0x60020010, "US", b"\x01\x00"),
        (0x60010010, "LO", b"odd overlay"),
        (0x00203101, "CS", b"X "),
        (0x00203102, "CS", b"Y "),
        (0x50020005, "US", b"\x01\x00"),
        (0x7F020010, "OW", b"\0\0"),
        (0x00280420, "US", b"\x01\x00"),
    ]
    tail = element(0x00081110, "SQ", undefined_items, undefined=True)
    # (0008,1110) sorts between (0008,0005) and (0008,1140): insert it by hand, undefined length.
    raw = part10("1.2.3.9.105", elements)
    marker = struct.pack("<HH", 0x0008, 0x1140)
    cut = raw.index(marker + b"SQ")
    return raw[:cut] + tail + raw[cut:]


# "US or SS" tags: DCMTK resolves the first six with PixelRepresentation, not the others.
AMBIGUOUS = [0x00280106, 0x00280109, 0x00280121, 0x00283002, 0x00409211, 0x00603004]
AMBIGUOUS += [0x00189810, 0x00221452, 0x00280104, 0x00281101, 0x00281200, 0x00283006]


def case_implicit(pixel_representation: int | None) -> bytes:
    """Implicit VR: VRs from DCMTK's dictionary, US/SS pairs resolved by PixelRepresentation."""
    elements: list[tuple[int, str, bytes | Items]] = [(tag, "US", b"\xff\xff") for tag in AMBIGUOUS]
    elements += [
        (0x00041200, "UL", b"\x01\x00\x00\x00"),
        (0x00080008, "CS", b"ORIGINAL\\PRIMARY "),
        (0x00080402, "LO", b"newtag"),
        (0x00180050, "DS", b"1.5 "),
        (0x00189219, "SS", struct.pack("<d", 1.5)),
        (0x60000010, "US", b"\x02\x00"),
        (0x60003000, "OW", b"\x00\x00"),
        (0x50000005, "US", b"\x01\x00"),
        (0x00280410, "US", b"\x01\x00"),
        (0x00203100, "CS", b"ABCD"),
        (0x00200000, "UL", b"\x10\x00\x00\x00"),
        (0x00110010, "LO", b"ACME"),
        (0x00111000, "LO", b"private"),
        (0x00131000, "LO", b"no creator"),
        (0x00060001, "SQ", [[element(0x00081150, "UI", b"1.1\0", IMPLICIT_LE)]]),
        (0x00380004, "SQ", [[element(0x00100020, "LO", b"X ", IMPLICIT_LE)]]),
        (0x00080400, "SQ", [[element(0x00081150, "UI", b"1.1\0", IMPLICIT_LE)]]),
        (0x7FE00010, "OW", b"\x01\x00\x02\x00"),
    ]
    if pixel_representation is not None:
        elements.append((0x00280103, "US", struct.pack("<H", pixel_representation)))
    return part10(f"1.2.3.9.106.{pixel_representation}", elements, ts=IMPLICIT_LE)


def case_big_endian() -> bytes:
    item = [element(0x00081150, "UI", b"1.1\0", EXPLICIT_BE), element(0x00280010, "US", b"\x00\x09", EXPLICIT_BE)]
    elements: list[tuple[int, str, bytes | Items]] = [
        (0x00100010, "PN", b"Doe^John"),
        (0x00280010, "US", struct.pack(">H", 2)),
        (0x00280011, "US", struct.pack(">2H", 2, 3)),
        (0x00280100, "US", struct.pack(">H", 16)),
        (0x00280106, "SS", struct.pack(">h", -1)),
        (0x00280030, "DS", b"0.5\\0.5 "),
        (0x00181310, "US", struct.pack(">4H", 0, 256, 256, 0)),
        (0x00189219, "FD", struct.pack(">d", 1.5)),
        (0x00189461, "FL", struct.pack(">2f", 1.5, -2.0)),
        (0x00280009, "AT", struct.pack(">2H", 0x0018, 0x1063)),
        (0x00720078, "UL", struct.pack(">I", 7)),
        (0x0072007C, "SL", struct.pack(">i", -7)),
        (0x7FE00010, "OW", struct.pack(">4H", 1, 2, 3, 4)),
        (0x00420011, "OB", b"abcd"),
        (0x00189240, "OW", struct.pack(">H", 0x0102)),
        (0x00081140, "SQ", [item]),
    ]
    return part10("1.2.3.9.107", elements, ts=EXPLICIT_BE)


def case_header() -> bytes:
    meta = [
        (0x00020013, "SH", b"V" * 300),  # no length limit in /header
        (0x00020016, "AE", b"A\xc3\xa9 "),  # read as ASCII whatever the dataset says
        (0x00020017, "AE", b""),
        (0x00020100, "UI", b"1.2.3\0"),
        (0x00020102, "OB", b"ab"),  # binary: left out
        (0x00021000, "UR", b"x  "),  # unknown: left out
    ]
    return part10("1.2.3.9.108", [(0x00080005, "CS", b"ISO_IR 192")], extra_meta=meta)


def _fragment(data: bytes) -> bytes:
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(data)) + data


def case_encapsulated(fragments: Sequence[bytes], offsets: bytes = b"") -> bytes:
    """JPEG-like pixel data: a basic offset table and `fragments`, undefined length."""
    body = _fragment(offsets) + b"".join(_fragment(f) for f in fragments) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    pixels = struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\0\0" + struct.pack("<I", 0xFFFFFFFF) + body
    number = len(fragments)
    elements: list[tuple[int, str, bytes | Items]] = [
        (0x00280008, "IS", pad(str(max(number, 1)).encode())),
        (0x00280010, "US", b"\x02\x00"),
        (0x00280011, "US", b"\x02\x00"),
        (0x00280100, "US", b"\x08\x00"),
    ]
    return part10(f"1.2.3.9.109.{number}", elements, ts=JPEG_BASELINE, tail=pixels)


def generated(seed: int, charset: str | None) -> Dataset:
    """A dataset built with pydicom in code (values are DataElements, not raw bytes)."""
    ds = dicomgen.make_dataset(dicomgen.Spec(seed=seed, sop_uid=f"1.2.3.9.110.{seed}"))
    if charset:
        ds.SpecificCharacterSet = charset
        ds.PatientName = "Müller^Jörg=ミュラー^ヨルグ" if charset == "ISO_IR 192" else "Müller^Jörg"
        ds.StudyDescription = "Étude über"
    ds.AcquisitionMatrix = [0, 256, 256, 0]
    ds.SmallestImagePixelValue = -5
    ds.LargestImagePixelValue = 300
    ds.ImagerPixelSpacing = ["0.5", "0.5"]
    ds.PixelSpacing = [0.1234567890123, 2]
    ds.DiffusionGradientOrientation = [0.1, -0.2, 1e-20]
    ds.FieldOfViewDimensionsInFloat = [1.5, 0.1]
    ds.FrameComments = "hello\r\nworld  "
    ds.FrameIncrementPointer = [0x00181063, 0x00209153]
    ds.SequenceOfUltrasoundRegions = DicomSequence()
    code = Dataset()
    code.CodeValue = "X"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Thing"
    reference = Dataset()
    reference.ReferencedSOPClassUID = "1.2.3"
    reference.ReferencedSOPInstanceUID = "1.2.3.4"
    reference.PurposeOfReferenceCodeSequence = DicomSequence([code, Dataset()])
    ds.ReferencedImageSequence = DicomSequence([reference, Dataset()])
    ds.add_new(0x00091010, "LO", "no creator")
    block = ds.private_block(0x0011, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "acme value")
    block.add_new(0x02, "US", 12)
    block.add_new(0x03, "OB", b"\x01\x02\x03\x04")
    ds.InstitutionName = ""
    ds.EncapsulatedDocument = b"%PDF" + b"x" * 101
    ds.add_new(0x00324000, "LT", "x" * 3000)
    ds.add_new(0x00720078, "UL", [4294967295, 0])
    ds.add_new(0x0072007E, "SS", [-32768, 32767])
    ds.add_new(0x00720082, "UV", [18446744073709551615])
    return ds


def saved(ds: Dataset, transfer_syntax: str | None = None) -> bytes:
    if transfer_syntax is not None:
        ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


# ---- the tests -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({}, TagsFormat.FULL),
        ({"simplify": ""}, TagsFormat.SIMPLIFY),
        ({"simplify": "false"}, TagsFormat.SIMPLIFY),  # presence alone counts
        ({"simplify": "0"}, TagsFormat.SIMPLIFY),
        ({"short": ""}, TagsFormat.SHORT),
        ({"short": "false"}, TagsFormat.SHORT),
        ({"short": "", "simplify": ""}, TagsFormat.SIMPLIFY),  # simplify wins
        ({"Simplify": ""}, TagsFormat.FULL),  # names are case-sensitive
        ({"full": ""}, TagsFormat.FULL),
    ],
)
def test_parse_tags_format_reads_presence_only(query: dict[str, str], expected: TagsFormat) -> None:
    assert parse_tags_format(query) is expected


@pytest.mark.parametrize("vr", STRING_VRS)
def test_string_values_are_trimmed_as_dcmtk_trims_them(vr: str) -> None:
    raw = part10("1.2.3.9.112", private([(vr, value) for value in TRICKY_STRINGS]))
    got = dict(zip(TRICKY_STRINGS, values_of(raw, len(TRICKY_STRINGS)), strict=True))
    assert got == dict(zip(TRICKY_STRINGS, EXPECTED_STRING_PADDING[vr], strict=True))


def test_numbers_and_binary_values() -> None:
    assert full(case_numbers()) == EXPECTED_NUMBERS


def test_too_long_counts_utf8_bytes_of_the_shown_value() -> None:
    answer = full(case_lengths())
    got = [[answer[f"0019,{0x1000 + i:04x}"][k] for k in ("Type", "Value")] for i in range(len(LENGTHS))]
    assert got == EXPECTED_LENGTHS


@pytest.mark.filterwarnings("ignore:Unknown encoding", "ignore:Value .* does not allow code extensions")
@pytest.mark.parametrize("index", range(len(CHARSETS)), ids=[repr(c[0]) for c in CHARSETS])
def test_specific_character_sets(index: int) -> None:
    assert values_of(case_charset(index), len(CHARSETS[index][1])) == EXPECTED_CHARSETS[index]


def test_default_encoding_applies_without_specific_character_set() -> None:
    raw = part10("1.2.3.9.111", private([("LO", "é".encode())]))
    assert values_of(raw, 1) == ["Ã©"]  # Orthanc's default DefaultEncoding: Latin1
    assert dataset_to_json(read(raw), TagsFormat.SHORT, default_encoding="Utf8")["0019,1000"] == "é"


def test_sequences_private_tags_and_names() -> None:
    raw = case_structure()
    assert full(raw) == EXPECTED_STRUCTURE
    assert simplify(raw) == EXPECTED_STRUCTURE_SIMPLIFY


def test_short_is_the_full_form_without_names_and_types() -> None:
    def values(answer: dict[str, Any]) -> dict[str, Any]:
        return {
            key: [values(item) for item in entry["Value"]] if entry["Type"] == "Sequence" else entry["Value"]
            for key, entry in answer.items()
        }

    assert short(case_structure()) == values(EXPECTED_STRUCTURE)


def test_simplify_keys_are_sorted_and_the_last_duplicate_wins() -> None:
    answer = simplify(case_structure())
    assert list(answer) == sorted(answer)
    assert answer["PrivateCreator"] == "odd overlay"  # (6001,0010), the last of five private creators


def test_implicit_vr_uses_dcmtk_dictionary() -> None:
    assert full(case_implicit(1)) == EXPECTED_IMPLICIT


@pytest.mark.parametrize("pixel_representation", [1, 0, None])
def test_implicit_vr_us_or_ss_follows_pixel_representation(pixel_representation: int | None) -> None:
    answer = short(case_implicit(pixel_representation))
    got = [answer[f"{tag >> 16:04x},{tag & 0xFFFF:04x}"] for tag in AMBIGUOUS]
    assert got == EXPECTED_IMPLICIT_AMBIGUOUS[str(pixel_representation)]


def test_explicit_big_endian() -> None:
    assert full(case_big_endian()) == EXPECTED_BIG_ENDIAN


def test_header() -> None:
    meta = read(case_header()).file_meta
    assert header_to_json(meta, TagsFormat.FULL) == EXPECTED_HEADER
    assert header_to_json(meta, TagsFormat.SIMPLIFY) == EXPECTED_HEADER_SIMPLIFY
    assert header_to_json(meta, TagsFormat.SHORT) == EXPECTED_HEADER_SHORT


def test_tags_leave_out_the_file_meta_information() -> None:
    assert all(not key.startswith("0002,") for key in full(case_header()))


@pytest.mark.parametrize(
    ("seed", "charset", "form", "expected"),
    [(1, None, TagsFormat.FULL, "EXPECTED_GENERATED_1"), (3, "ISO_IR 192", TagsFormat.SHORT, "EXPECTED_GENERATED_3")],
)
def test_datasets_built_in_code(seed: int, charset: str | None, form: TagsFormat, expected: str) -> None:
    """pydicom DataElements render as the file pydicom writes for them (which Orthanc read)."""
    assert dataset_to_json(generated(seed, charset), form) == globals()[expected]
    assert dataset_to_json(read(saved(generated(seed, charset))), form) == globals()[expected]


def test_converted_elements_render_like_raw_ones() -> None:
    ds = read(saved(generated(1, None)))
    _ = (ds.PatientName, ds.PixelSpacing, ds.ReferencedImageSequence[0].PurposeOfReferenceCodeSequence)
    assert dataset_to_json(ds, TagsFormat.FULL) == EXPECTED_GENERATED_1


def test_encapsulated_pixel_data_is_null() -> None:
    answer = full(case_encapsulated([b"\xff\xd8ab", b"cd"]))
    assert answer["7fe0,0010"] == {"Name": "PixelData", "Type": "Null", "Value": None}


# ---- live comparison with the real Orthanc ------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    if not orthanc_available():
        pytest.skip(missing_orthanc_reason())
    server = OrthancServer(tmp_path_factory.mktemp("orthanc-tags"))
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30.0) as client:
            yield client
    finally:
        server.stop()


def _content(ds: Dataset, path: list[str]) -> tuple[int, Any]:
    try:
        return 200, resolve_content(ds, path)
    except DicomVaultError as exc:
        return exc.http_status, None


def _compare_content(client: httpx.Client, iid: str, ds: Dataset, path: list[str], depth: int) -> list[str]:
    """Walk /content like a client would, comparing every answer; returns the differences."""
    answer = client.get(f"/instances/{iid}/content/" + "/".join(path))
    status, mine = _content(ds, path)
    where = "/".join(path) or "(root)"
    if answer.status_code != status:
        return [f"{where}: status {answer.status_code} != {status}"]
    if status != 200:
        return []
    if isinstance(mine, bytes):
        return [] if answer.content == mine else [f"{where}: {answer.content[:40]!r} != {mine[:40]!r}"]
    if answer.json() != mine:
        return [f"{where}: {answer.json()} != {mine}"]
    problems: list[str] = []
    if depth > 0:
        for child in mine:
            problems += _compare_content(client, iid, ds, [*path, child], depth - 1)
    return problems


QUIRKY_PATHS = [
    ["0008-1140", "-1"], ["0008-1140", "-2"], ["0008-1140", "+1"], ["0008-1140", "18446744073709551615"],
    ["0008-1140", "x"], ["0008,1140", "0"], ["00081140"], ["PatientID"], ["RETIRED_StudyComments"],
    ["8-1140"], ["patientid"], ["0002-0010"], ["0018-6011", "-1"], ["7fe0-0010", "-1"], ["0010-0020", "0"],
]  # fmt: skip


@pytest.mark.orthanc
def test_matches_the_real_orthanc(orthanc: httpx.Client) -> None:
    files = {
        "structure": case_structure(),
        "numbers": case_numbers(),
        "lengths": case_lengths(),
        "padding": case_string_padding(),
        "implicit": case_implicit(1),
        "big endian": case_big_endian(),
        "header": case_header(),
        "encapsulated": case_encapsulated([b"\xff\xd8abc", b"de"], b"\0\0\0\0"),
        "latin-1": case_charset(2),
        "utf-8": case_charset(3),
        "japanese": case_charset(26),
        "generated": saved(generated(4, "ISO_IR 192")),
        "generated implicit": saved(generated(5, None), IMPLICIT_LE),
        "generated big endian": saved(generated(6, "ISO_IR 100"), EXPLICIT_BE),
    }
    problems: list[str] = []
    for label, raw in files.items():
        stored = orthanc.post("/instances", content=raw)
        assert stored.status_code == 200, stored.text
        iid = stored.json()["ID"]
        ds = read(raw)
        for query, form in [("", TagsFormat.FULL), ("?simplify", TagsFormat.SIMPLIFY), ("?short", TagsFormat.SHORT)]:
            if orthanc.get(f"/instances/{iid}/tags{query}").json() != dataset_to_json(ds, form):
                problems.append(f"{label}: /tags{query}")
            if orthanc.get(f"/instances/{iid}/header{query}").json() != header_to_json(ds.file_meta, form):
                problems.append(f"{label}: /header{query}")
        if orthanc.get(f"/instances/{iid}/simplified-tags").json() != dataset_to_json(ds, TagsFormat.SIMPLIFY):
            problems.append(f"{label}: /simplified-tags")
        problems += [f"{label}: /content/{p}" for p in _compare_content(orthanc, iid, ds, [], 3)]
        if label == "structure":
            for path in QUIRKY_PATHS:
                problems += [f"{label}: /content/{p}" for p in _compare_content(orthanc, iid, ds, path, 0)]
    assert problems == []


# ---- Orthanc 1.10.1's answers for the files above, as the real server sent them ---------------

# ?short values of TRICKY_STRINGS, per VR
EXPECTED_STRING_PADDING: Any = json.loads(
    r"""{
"AE": [" x", " x ", "x", "", "x \\y ", "", "x", "x ", "x\t\r\n", "ab", "a\\b"],
"AS": [" x", " x ", "x", "", "x \\y ", "", "x", "x ", "x\t\r\n", "ab", "a\\b"],
"CS": [" x", " x ", "x", "", "x \\y ", "", "x", "x ", "x\t\r\n", "ab", "a\\b"],
"DA": [" x", " x ", "x", "", "x \\y ", "", "x", "x ", "x\t\r\n", "ab", "a\\b"],
"DS": [" x", " x ", "x", "", "x \\y ", "", "x", "x ", "x\t\r\n", "ab", "a\\b"],
"DT": [" x", " x ", "x", "", "x \\y ", "", "x", "x ", "x\t\r\n", "ab", "a\\b"],
"IS": [" x", " x ", "x", "", "x \\y ", "", "x", "x ", "x\t\r\n", "ab", "a\\b"],
"LO": [" x", " x ", "x", "", "x \\y ", "", "x", "x ", "x\t\r\n", "ab", "a\\b"],
"LT": [" x", " x ", "x", "", "x \\y ", "", "x", "x ", "x\t\r\n", "ab", "a\\b"],
"PN": [" x", " x ", "x", "", "x \\y ", "", "x", "x ", "x\t\r\n", "ab", "a\\b"],
"SH": [" x", " x ", "x", "", "x \\y ", "", "x", "x ", "x\t\r\n", "ab", "a\\b"],
"ST": [" x", " x ", "x", "", "x \\y ", "", "x", "x ", "x\t\r\n", "ab", "a\\b"],
"TM": [" x", " x ", "x", "", "x \\y ", "", "x", "x ", "x\t\r\n", "ab", "a\\b"],
"UC": [" x", " x ", "x", "", "x \\y ", "", "x", "x ", "x\t\r\n", "ab", "a\\b"],
"UI": ["x", "x", "x", "", "x\\y", "", "x", "x", "x", "ab", "a\\b"],
"UR": [" x", " x ", "x", "", "x \\y ", "", "x", "x ", "x\t\r\n", "ab", "a\\b"],
"UT": [" x", " x ", "x", "", "x \\y ", "", "x", "x ", "x\t\r\n", "ab", "a\\b"]
}"""
)

EXPECTED_NUMBERS: Any = json.loads(
    r"""{
"0008,0016": {"Name": "SOPClassUID", "Type": "String", "Value": "1.2.840.10008.5.1.4.1.1.7"},
"0008,0018": {"Name": "SOPInstanceUID", "Type": "String", "Value": "1.2.3.9.102"},
"0010,0020": {"Name": "PatientID", "Type": "String", "Value": "P9"},
"0019,0010": {"Name": "PrivateCreator", "Type": "String", "Value": "X"},
"0019,1000": {"Name": "Unknown Tag & Data", "PrivateCreator": "X", "Type": "String", "Value": "0\\256\\65535\\7"},
"0019,1001": {"Name": "Unknown Tag & Data", "PrivateCreator": "X", "Type": "String", "Value": "1\\2"},
"0019,1002": {"Name": "Unknown Tag & Data", "PrivateCreator": "X", "Type": "Null", "Value": null},
"0019,1003": {"Name": "Unknown Tag & Data", "PrivateCreator": "X", "Type": "String", "Value": "-32768\\32767\\-5"},
"0019,1004": {"Name": "Unknown Tag & Data", "PrivateCreator": "X", "Type": "String", "Value": "4294967295\\0"},
"0019,1005": {"Name": "Unknown Tag & Data", "PrivateCreator": "X", "Type": "String", "Value": "-1\\2147483647\\-2147483648"},
"0019,1006": {"Name": "Unknown Tag & Data", "PrivateCreator": "X", "Type": "Null", "Value": null},
"0019,1007": {"Name": "Unknown Tag & Data", "PrivateCreator": "X", "Type": "String", "Value": "1.5\\0.10000000149011612\\99999998430674944"},
"0019,1008": {"Name": "Unknown Tag & Data", "PrivateCreator": "X", "Type": "String", "Value": "nan"},
"0019,1009": {"Name": "Unknown Tag & Data", "PrivateCreator": "X", "Type": "String", "Value": "0.10000000000000001\\-0.20000000000000001\\9.9999999999999995e-21"},
"0019,100a": {"Name": "Unknown Tag & Data", "PrivateCreator": "X", "Type": "String", "Value": "1000\\10000000000000000\\123456789\\1.0000000000000001e-05"},
"0019,100b": {"Name": "Unknown Tag & Data", "PrivateCreator": "X", "Type": "String", "Value": "1e+22\\1.5000000000000001e+300\\4.9406564584124654e-324\\1.2345678901234567"},
"0019,100c": {"Name": "Unknown Tag & Data", "PrivateCreator": "X", "Type": "String", "Value": "inf\\-inf\\-0"},
"0019,100d": {"Name": "Unknown Tag & Data", "PrivateCreator": "X", "Type": "String", "Value": "0"},
"0019,100e": {"Name": "Unknown Tag & Data", "PrivateCreator": "X", "Type": "Null", "Value": null},
"0019,100f": {"Name": "Unknown Tag & Data", "PrivateCreator": "X", "Type": "String", "Value": "0020,9153"},
"0019,1010": {"Name": "Unknown Tag & Data", "PrivateCreator": "X", "Type": "String", "Value": "abcd,ef01"},
"0019,1011": {"Name": "Unknown Tag & Data", "PrivateCreator": "X", "Type": "Null", "Value": null},
"0019,1012": {"Name": "Unknown Tag & Data", "PrivateCreator": "X", "Type": "Null", "Value": null},
"0019,1013": {"Name": "Unknown Tag & Data", "PrivateCreator": "X", "Type": "Null", "Value": null},
"0019,1014": {"Name": "Unknown Tag & Data", "PrivateCreator": "X", "Type": "Null", "Value": null},
"0019,1015": {"Name": "Unknown Tag & Data", "PrivateCreator": "X", "Type": "Null", "Value": null},
"0019,1016": {"Name": "Unknown Tag & Data", "PrivateCreator": "X", "Type": "Null", "Value": null},
"0019,1017": {"Name": "Unknown Tag & Data", "PrivateCreator": "X", "Type": "Null", "Value": null},
"0019,1018": {"Name": "Unknown Tag & Data", "PrivateCreator": "X", "Type": "Null", "Value": null},
"0019,1019": {"Name": "Unknown Tag & Data", "PrivateCreator": "X", "Type": "Null", "Value": null},
"0019,101a": {"Name": "Unknown Tag & Data", "Type": "Sequence", "Value": []},
"0020,000d": {"Name": "StudyInstanceUID", "Type": "String", "Value": "1.2.3.1"},
"0020,000e": {"Name": "SeriesInstanceUID", "Type": "String", "Value": "1.2.3.2"}
}"""
)

# [Type, Value] of each of LENGTHS
EXPECTED_LENGTHS: Any = json.loads(
    r"""[
["String", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"],
["TooLong", null],
["String", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"],
["String", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"],
["TooLong", null],
["TooLong", null],
["TooLong", null],
["TooLong", null],
["TooLong", null],
["String", "0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0"],
["TooLong", null]
]"""
)

# ?short values of each of CHARSETS
EXPECTED_CHARSETS: Any = json.loads(
    r"""[
["été", "Aé", "1.é"],
["aé"],
["é", "1é", "Müller^Jörg", "a\u001b-Lb"],
["é€😀", "bad", "A", ""],
["Wang^XiaoDong=王^小東=", "", ""],
["Люкceмбypг"],
["ﾔﾏﾀﾞ", "a¥b‾ﾔ", "a鯏ｩﾀ"],
["王小東", "ab", ""],
["王小東"],
["a", "ab\ncd", "ab"],
["a", "a"],
[""],
["aé"],
["Διονυσιος"],
["عربي", "aىأ"],
["שרון"],
["ğş"],
["Łódź"],
["ĉĝ"],
["ąč"],
["ภาษาไทย"],
["é"],
["aé"],
["山田"],
["\u001b$)C길희동"],
["\u001b$)A张"],
["Yamada^Tarou=山田^太郎=やまだ^たろう"],
["Hong^Gildong=洪^吉洞=홍^길동"],
["Zhang^XiaoDong=张^小东="],
["aΔι"],
["aé»î", "a\u001bb", "ab"],
["a-A"],
["ﾔﾏﾀﾞ^ﾀﾛｳ=;3ED^B@O:"],
["é"]
]"""
)

EXPECTED_STRUCTURE: Any = json.loads(
    r"""{
"0008,0001": {"Name": "RETIRED_LengthToEnd", "Type": "String", "Value": "16"},
"0008,0005": {"Name": "SpecificCharacterSet", "Type": "String", "Value": "ISO_IR 100"},
"0008,0016": {"Name": "SOPClassUID", "Type": "String", "Value": "1.2.840.10008.5.1.4.1.1.7"},
"0008,0018": {"Name": "SOPInstanceUID", "Type": "String", "Value": "1.2.3.9.105"},
"0008,0402": {"Name": "Unknown Tag & Data", "Type": "String", "Value": "newtag"},
"0008,1110": {"Name": "ReferencedStudySequence", "Type": "Sequence", "Value": [{"0008,1150": {"Name": "ReferencedSOPClassUID", "Type": "String", "Value": "1.2"}}, {"0008,1155": {"Name": "ReferencedSOPInstanceUID", "Type": "String", "Value": "9.8"}}]},
"0008,1140": {"Name": "ReferencedImageSequence", "Type": "Sequence", "Value": [{"0008,1150": {"Name": "ReferencedSOPClassUID", "Type": "String", "Value": "1.2.3"}, "0008,1155": {"Name": "ReferencedSOPInstanceUID", "Type": "String", "Value": "1.2.3.4"}, "0040,a170": {"Name": "PurposeOfReferenceCodeSequence", "Type": "Sequence", "Value": [{"0008,0100": {"Name": "CodeValue", "Type": "String", "Value": "X"}, "0008,0104": {"Name": "CodeMeaning", "Type": "String", "Value": "été"}}, {}]}}, {}, {"0008,0005": {"Name": "SpecificCharacterSet", "Type": "String", "Value": "ISO_IR 192"}, "0008,1030": {"Name": "StudyDescription", "Type": "String", "Value": "Ã©Ã©"}}]},
"0009,0000": {"Name": "PrivateGroupLength", "Type": "String", "Value": "16"},
"0009,1010": {"Name": "Unknown Tag & Data", "Type": "String", "Value": "no creator"},
"0010,0020": {"Name": "PatientID", "Type": "String", "Value": "P9"},
"0011,0010": {"Name": "PrivateCreator", "Type": "String", "Value": "ACME 1.0"},
"0011,0011": {"Name": "PrivateCreator", "Type": "String", "Value": "OTHER"},
"0011,0100": {"Name": "Unknown Tag & Data", "Type": "String", "Value": "mid"},
"0011,1001": {"Name": "Unknown Tag & Data", "PrivateCreator": "ACME 1.0", "Type": "String", "Value": "acme"},
"0011,1002": {"Name": "Unknown Tag & Data", "PrivateCreator": "ACME 1.0", "Type": "String", "Value": "12"},
"0011,1003": {"Name": "Unknown Tag & Data", "PrivateCreator": "ACME 1.0", "Type": "Null", "Value": null},
"0011,1101": {"Name": "Unknown Tag & Data", "PrivateCreator": "OTHER", "Type": "String", "Value": "other"},
"0013,0010": {"Name": "PrivateCreator", "Type": "String", "Value": "1.2.840.113681 "},
"0013,1010": {"Name": "Unknown Tag & Data", "PrivateCreator": "1.2.840.113681 ", "Type": "String", "Value": "abc"},
"0018,6011": {"Name": "SequenceOfUltrasoundRegions", "Type": "Sequence", "Value": []},
"0019,0010": {"Name": "PrivateCreator", "Type": "String", "Value": "X"},
"0019,1000": {"Name": "Unknown Tag & Data", "Type": "Sequence", "Value": [{"0019,0010": {"Name": "PrivateCreator", "Type": "String", "Value": "INNER"}, "0019,1001": {"Name": "Unknown Tag & Data", "PrivateCreator": "INNER", "Type": "String", "Value": "in private seq"}, "0019,1002": {"Name": "Unknown Tag & Data", "PrivateCreator": "INNER", "Type": "String", "Value": "inner creator"}}]},
"0020,0000": {"Name": "GenericGroupLength", "Type": "String", "Value": "16"},
"0020,000d": {"Name": "StudyInstanceUID", "Type": "String", "Value": "1.2.3.1"},
"0020,000e": {"Name": "SeriesInstanceUID", "Type": "String", "Value": "1.2.3.2"},
"0020,3101": {"Name": "Unknown Tag & Data", "Type": "String", "Value": "X"},
"0020,3102": {"Name": "RETIRED_SourceImageIDs", "Type": "String", "Value": "Y"},
"0028,0008": {"Name": "NumberOfFrames", "Type": "String", "Value": "3"},
"0028,0010": {"Name": "Rows", "Type": "String", "Value": "2"},
"0028,0011": {"Name": "Columns", "Type": "String", "Value": "2"},
"0028,0100": {"Name": "BitsAllocated", "Type": "String", "Value": "8"},
"0028,0420": {"Name": "Unknown Tag & Data", "Type": "String", "Value": "1"},
"0028,0800": {"Name": "RETIRED_CodeLabel", "Type": "String", "Value": "CL"},
"0032,4000": {"Name": "RETIRED_StudyComments", "Type": "String", "Value": "retired"},
"0038,0004": {"Name": "ReferencedPatientAliasSequence", "Type": "Sequence", "Value": []},
"5002,0005": {"Name": "RETIRED_CurveDimensions", "Type": "String", "Value": "1"},
"6001,0010": {"Name": "PrivateCreator", "Type": "String", "Value": "odd overlay"},
"6002,0010": {"Name": "OverlayRows", "Type": "String", "Value": "1"},
"7f02,0010": {"Name": "RETIRED_VariablePixelData", "Type": "Null", "Value": null},
"7fe0,0010": {"Name": "PixelData", "Type": "Null", "Value": null}
}"""
)

EXPECTED_STRUCTURE_SIMPLIFY: Any = json.loads(
    r"""{
"BitsAllocated": "8",
"Columns": "2",
"GenericGroupLength": "16",
"NumberOfFrames": "3",
"OverlayRows": "1",
"PatientID": "P9",
"PixelData": null,
"PrivateCreator": "odd overlay",
"PrivateGroupLength": "16",
"RETIRED_CodeLabel": "CL",
"RETIRED_CurveDimensions": "1",
"RETIRED_LengthToEnd": "16",
"RETIRED_SourceImageIDs": "Y",
"RETIRED_StudyComments": "retired",
"RETIRED_VariablePixelData": null,
"ReferencedImageSequence": [{"PurposeOfReferenceCodeSequence": [{"CodeMeaning": "été", "CodeValue": "X"}, {}], "ReferencedSOPClassUID": "1.2.3", "ReferencedSOPInstanceUID": "1.2.3.4"}, {}, {"SpecificCharacterSet": "ISO_IR 192", "StudyDescription": "Ã©Ã©"}],
"ReferencedPatientAliasSequence": [],
"ReferencedStudySequence": [{"ReferencedSOPClassUID": "1.2"}, {"ReferencedSOPInstanceUID": "9.8"}],
"Rows": "2",
"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7",
"SOPInstanceUID": "1.2.3.9.105",
"SequenceOfUltrasoundRegions": [],
"SeriesInstanceUID": "1.2.3.2",
"SpecificCharacterSet": "ISO_IR 100",
"StudyInstanceUID": "1.2.3.1",
"Unknown Tag & Data": "1"
}"""
)

# case_implicit(1)
EXPECTED_IMPLICIT: Any = json.loads(
    r"""{
"0004,1200": {"Name": "OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity", "Type": "Null", "Value": null},
"0006,0001": {"Name": "CurrentFrameFunctionalGroupsSequence", "Type": "Sequence", "Value": [{"0008,1150": {"Name": "ReferencedSOPClassUID", "Type": "String", "Value": "1.1"}}]},
"0008,0008": {"Name": "ImageType", "Type": "String", "Value": "ORIGINAL\\PRIMARY "},
"0008,0016": {"Name": "SOPClassUID", "Type": "String", "Value": "1.2.840.10008.5.1.4.1.1.7"},
"0008,0018": {"Name": "SOPInstanceUID", "Type": "String", "Value": "1.2.3.9.106.1"},
"0008,0400": {"Name": "Unknown Tag & Data", "Type": "Null", "Value": null},
"0008,0402": {"Name": "Unknown Tag & Data", "Type": "Null", "Value": null},
"0010,0020": {"Name": "PatientID", "Type": "String", "Value": "P9"},
"0011,0010": {"Name": "PrivateCreator", "Type": "String", "Value": "ACME"},
"0011,1000": {"Name": "Unknown Tag & Data", "PrivateCreator": "ACME", "Type": "Null", "Value": null},
"0013,1000": {"Name": "Unknown Tag & Data", "Type": "Null", "Value": null},
"0018,0050": {"Name": "SliceThickness", "Type": "String", "Value": "1.5"},
"0018,9219": {"Name": "TagAngleSecondAxis", "Type": "String", "Value": "0\\0\\0\\16376"},
"0018,9810": {"Name": "ZeroVelocityPixelValue", "Type": "Null", "Value": null},
"0020,0000": {"Name": "GenericGroupLength", "Type": "String", "Value": "16"},
"0020,000d": {"Name": "StudyInstanceUID", "Type": "String", "Value": "1.2.3.1"},
"0020,000e": {"Name": "SeriesInstanceUID", "Type": "String", "Value": "1.2.3.2"},
"0020,3100": {"Name": "RETIRED_SourceImageIDs", "Type": "String", "Value": "ABCD"},
"0022,1452": {"Name": "MappedPixelValue", "Type": "Null", "Value": null},
"0028,0103": {"Name": "PixelRepresentation", "Type": "String", "Value": "1"},
"0028,0104": {"Name": "RETIRED_SmallestValidPixelValue", "Type": "Null", "Value": null},
"0028,0106": {"Name": "SmallestImagePixelValue", "Type": "String", "Value": "-1"},
"0028,0109": {"Name": "LargestPixelValueInSeries", "Type": "String", "Value": "-1"},
"0028,0121": {"Name": "PixelPaddingRangeLimit", "Type": "String", "Value": "-1"},
"0028,0410": {"Name": "RETIRED_RowsForNthOrderCoefficients", "Type": "String", "Value": "1"},
"0028,1101": {"Name": "RedPaletteColorLookupTableDescriptor", "Type": "Null", "Value": null},
"0028,1200": {"Name": "RETIRED_GrayLookupTableData", "Type": "Null", "Value": null},
"0028,3002": {"Name": "LUTDescriptor", "Type": "String", "Value": "-1"},
"0028,3006": {"Name": "LUTData", "Type": "Null", "Value": null},
"0038,0004": {"Name": "ReferencedPatientAliasSequence", "Type": "Sequence", "Value": [{"0010,0020": {"Name": "PatientID", "Type": "String", "Value": "X"}}]},
"0040,9211": {"Name": "RealWorldValueLastValueMapped", "Type": "String", "Value": "-1"},
"0060,3004": {"Name": "HistogramFirstBinValue", "Type": "String", "Value": "-1"},
"5000,0005": {"Name": "RETIRED_CurveDimensions", "Type": "String", "Value": "1"},
"6000,0010": {"Name": "OverlayRows", "Type": "String", "Value": "2"},
"6000,3000": {"Name": "OverlayData", "Type": "Null", "Value": null},
"7fe0,0010": {"Name": "PixelData", "Type": "Null", "Value": null}
}"""
)

# ?short values of the US-or-SS tags of case_implicit, per PixelRepresentation
EXPECTED_IMPLICIT_AMBIGUOUS: Any = json.loads(
    r"""{
"1": ["-1", "-1", "-1", "-1", "-1", "-1", null, null, null, null, null, null],
"0": ["65535", "65535", "65535", "65535", "65535", "65535", null, null, null, null, null, null],
"None": [null, null, null, null, null, null, null, null, null, null, null, null]
}"""
)

EXPECTED_BIG_ENDIAN: Any = json.loads(
    r"""{
"0008,0016": {"Name": "SOPClassUID", "Type": "String", "Value": "1.2.840.10008.5.1.4.1.1.7"},
"0008,0018": {"Name": "SOPInstanceUID", "Type": "String", "Value": "1.2.3.9.107"},
"0008,1140": {"Name": "ReferencedImageSequence", "Type": "Sequence", "Value": [{"0008,1150": {"Name": "ReferencedSOPClassUID", "Type": "String", "Value": "1.1"}, "0028,0010": {"Name": "Rows", "Type": "String", "Value": "9"}}]},
"0010,0010": {"Name": "PatientName", "Type": "String", "Value": "Doe^John"},
"0010,0020": {"Name": "PatientID", "Type": "String", "Value": "P9"},
"0018,1310": {"Name": "AcquisitionMatrix", "Type": "String", "Value": "0\\256\\256\\0"},
"0018,9219": {"Name": "TagAngleSecondAxis", "Type": "String", "Value": "1.5"},
"0018,9240": {"Name": "RFEchoTrainLength", "Type": "Null", "Value": null},
"0018,9461": {"Name": "FieldOfViewDimensionsInFloat", "Type": "String", "Value": "1.5\\-2"},
"0020,000d": {"Name": "StudyInstanceUID", "Type": "String", "Value": "1.2.3.1"},
"0020,000e": {"Name": "SeriesInstanceUID", "Type": "String", "Value": "1.2.3.2"},
"0028,0009": {"Name": "FrameIncrementPointer", "Type": "String", "Value": "0018,1063"},
"0028,0010": {"Name": "Rows", "Type": "String", "Value": "2"},
"0028,0011": {"Name": "Columns", "Type": "String", "Value": "2\\3"},
"0028,0030": {"Name": "PixelSpacing", "Type": "String", "Value": "0.5\\0.5"},
"0028,0100": {"Name": "BitsAllocated", "Type": "String", "Value": "16"},
"0028,0106": {"Name": "SmallestImagePixelValue", "Type": "String", "Value": "-1"},
"0042,0011": {"Name": "EncapsulatedDocument", "Type": "Null", "Value": null},
"0072,0078": {"Name": "SelectorULValue", "Type": "String", "Value": "7"},
"0072,007c": {"Name": "SelectorSLValue", "Type": "String", "Value": "-7"},
"7fe0,0010": {"Name": "PixelData", "Type": "Null", "Value": null}
}"""
)

EXPECTED_HEADER: Any = json.loads(
    r"""{
"0002,0000": {"Name": "FileMetaInformationGroupLength", "Type": "String", "Value": "505"},
"0002,0002": {"Name": "MediaStorageSOPClassUID", "Type": "String", "Value": "1.2.840.10008.5.1.4.1.1.7"},
"0002,0003": {"Name": "MediaStorageSOPInstanceUID", "Type": "String", "Value": "1.2.3.9.108"},
"0002,0010": {"Name": "TransferSyntaxUID", "Type": "String", "Value": "1.2.840.10008.1.2.1"},
"0002,0012": {"Name": "ImplementationClassUID", "Type": "String", "Value": "1.2.826.0.1.3680043.10.1234.1"},
"0002,0013": {"Name": "ImplementationVersionName", "Type": "String", "Value": "VVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVV"},
"0002,0016": {"Name": "SourceApplicationEntityTitle", "Type": "String", "Value": "A"},
"0002,0017": {"Name": "SendingApplicationEntityTitle", "Type": "String", "Value": ""},
"0002,0100": {"Name": "PrivateInformationCreatorUID", "Type": "String", "Value": "1.2.3"}
}"""
)

EXPECTED_HEADER_SIMPLIFY: Any = json.loads(
    r"""{
"FileMetaInformationGroupLength": "505",
"ImplementationClassUID": "1.2.826.0.1.3680043.10.1234.1",
"ImplementationVersionName": "VVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVV",
"MediaStorageSOPClassUID": "1.2.840.10008.5.1.4.1.1.7",
"MediaStorageSOPInstanceUID": "1.2.3.9.108",
"PrivateInformationCreatorUID": "1.2.3",
"SendingApplicationEntityTitle": "",
"SourceApplicationEntityTitle": "A",
"TransferSyntaxUID": "1.2.840.10008.1.2.1"
}"""
)

EXPECTED_HEADER_SHORT: Any = json.loads(
    r"""{
"0002,0000": "505",
"0002,0002": "1.2.840.10008.5.1.4.1.1.7",
"0002,0003": "1.2.3.9.108",
"0002,0010": "1.2.840.10008.1.2.1",
"0002,0012": "1.2.826.0.1.3680043.10.1234.1",
"0002,0013": "VVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVV",
"0002,0016": "A",
"0002,0017": "",
"0002,0100": "1.2.3"
}"""
)

# generated(1, None)
EXPECTED_GENERATED_1: Any = json.loads(
    r"""{
"0008,0016": {"Name": "SOPClassUID", "Type": "String", "Value": "1.2.840.10008.5.1.4.1.1.2"},
"0008,0018": {"Name": "SOPInstanceUID", "Type": "String", "Value": "1.2.3.9.110.1"},
"0008,0020": {"Name": "StudyDate", "Type": "String", "Value": "20200102"},
"0008,0030": {"Name": "StudyTime", "Type": "String", "Value": "101500"},
"0008,0050": {"Name": "AccessionNumber", "Type": "String", "Value": "ACC1"},
"0008,0060": {"Name": "Modality", "Type": "String", "Value": "CT"},
"0008,0080": {"Name": "InstitutionName", "Type": "String", "Value": ""},
"0008,1030": {"Name": "StudyDescription", "Type": "String", "Value": "Chest"},
"0008,103e": {"Name": "SeriesDescription", "Type": "String", "Value": "Axial"},
"0008,1140": {"Name": "ReferencedImageSequence", "Type": "Sequence", "Value": [{"0008,1150": {"Name": "ReferencedSOPClassUID", "Type": "String", "Value": "1.2.3"}, "0008,1155": {"Name": "ReferencedSOPInstanceUID", "Type": "String", "Value": "1.2.3.4"}, "0040,a170": {"Name": "PurposeOfReferenceCodeSequence", "Type": "Sequence", "Value": [{"0008,0100": {"Name": "CodeValue", "Type": "String", "Value": "X"}, "0008,0102": {"Name": "CodingSchemeDesignator", "Type": "String", "Value": "DCM"}, "0008,0104": {"Name": "CodeMeaning", "Type": "String", "Value": "Thing"}}, {}]}}, {}]},
"0009,1010": {"Name": "Unknown Tag & Data", "Type": "String", "Value": "no creator"},
"0010,0010": {"Name": "PatientName", "Type": "String", "Value": "Doe^John"},
"0010,0020": {"Name": "PatientID", "Type": "String", "Value": "P0001"},
"0010,0030": {"Name": "PatientBirthDate", "Type": "String", "Value": "19700101"},
"0010,0040": {"Name": "PatientSex", "Type": "String", "Value": "M"},
"0011,0010": {"Name": "PrivateCreator", "Type": "String", "Value": "ACME 1.0"},
"0011,1001": {"Name": "Unknown Tag & Data", "PrivateCreator": "ACME 1.0", "Type": "String", "Value": "acme value"},
"0011,1002": {"Name": "Unknown Tag & Data", "PrivateCreator": "ACME 1.0", "Type": "String", "Value": "12"},
"0011,1003": {"Name": "Unknown Tag & Data", "PrivateCreator": "ACME 1.0", "Type": "Null", "Value": null},
"0018,1164": {"Name": "ImagerPixelSpacing", "Type": "String", "Value": "0.5\\0.5"},
"0018,1310": {"Name": "AcquisitionMatrix", "Type": "String", "Value": "0\\256\\256\\0"},
"0018,6011": {"Name": "SequenceOfUltrasoundRegions", "Type": "Sequence", "Value": []},
"0018,9089": {"Name": "DiffusionGradientOrientation", "Type": "String", "Value": "0.10000000000000001\\-0.20000000000000001\\9.9999999999999995e-21"},
"0018,9461": {"Name": "FieldOfViewDimensionsInFloat", "Type": "String", "Value": "1.5\\0.10000000149011612"},
"0020,000d": {"Name": "StudyInstanceUID", "Type": "String", "Value": "1.2.826.0.1.3680043.10.1234.1.1.1"},
"0020,000e": {"Name": "SeriesInstanceUID", "Type": "String", "Value": "1.2.826.0.1.3680043.10.1234.2.1.1"},
"0020,0010": {"Name": "StudyID", "Type": "String", "Value": "S1"},
"0020,0011": {"Name": "SeriesNumber", "Type": "String", "Value": "1"},
"0020,0013": {"Name": "InstanceNumber", "Type": "String", "Value": "1"},
"0020,0032": {"Name": "ImagePositionPatient", "Type": "String", "Value": "0.0\\0.0\\1.0"},
"0020,0037": {"Name": "ImageOrientationPatient", "Type": "String", "Value": "1.0\\0.0\\0.0\\0.0\\1.0\\0.0"},
"0020,9158": {"Name": "FrameComments", "Type": "String", "Value": "hello\r\nworld"},
"0028,0002": {"Name": "SamplesPerPixel", "Type": "String", "Value": "1"},
"0028,0004": {"Name": "PhotometricInterpretation", "Type": "String", "Value": "MONOCHROME2"},
"0028,0009": {"Name": "FrameIncrementPointer", "Type": "String", "Value": "0018,1063"},
"0028,0010": {"Name": "Rows", "Type": "String", "Value": "8"},
"0028,0011": {"Name": "Columns", "Type": "String", "Value": "8"},
"0028,0030": {"Name": "PixelSpacing", "Type": "String", "Value": "0.1234567890123\\2.0"},
"0028,0100": {"Name": "BitsAllocated", "Type": "String", "Value": "16"},
"0028,0101": {"Name": "BitsStored", "Type": "String", "Value": "16"},
"0028,0102": {"Name": "HighBit", "Type": "String", "Value": "15"},
"0028,0103": {"Name": "PixelRepresentation", "Type": "String", "Value": "1"},
"0028,0106": {"Name": "SmallestImagePixelValue", "Type": "String", "Value": "-5"},
"0028,0107": {"Name": "LargestImagePixelValue", "Type": "String", "Value": "300"},
"0028,1052": {"Name": "RescaleIntercept", "Type": "String", "Value": "-1024.0"},
"0028,1053": {"Name": "RescaleSlope", "Type": "String", "Value": "1.0"},
"0032,4000": {"Name": "RETIRED_StudyComments", "Type": "TooLong", "Value": null},
"0042,0011": {"Name": "EncapsulatedDocument", "Type": "Null", "Value": null},
"0072,0078": {"Name": "SelectorULValue", "Type": "String", "Value": "4294967295\\0"},
"0072,007e": {"Name": "SelectorSSValue", "Type": "String", "Value": "-32768\\32767"},
"0072,0082": {"Name": "SelectorSVValue", "Type": "Null", "Value": null},
"7fe0,0010": {"Name": "PixelData", "Type": "Null", "Value": null}
}"""
)

# generated(3, "ISO_IR 192"), ?short
EXPECTED_GENERATED_3: Any = json.loads(
    r"""{
"0008,0005": "ISO_IR 192",
"0008,0016": "1.2.840.10008.5.1.4.1.1.2",
"0008,0018": "1.2.3.9.110.3",
"0008,0020": "20200102",
"0008,0030": "101500",
"0008,0050": "ACC3",
"0008,0060": "CT",
"0008,0080": "",
"0008,1030": "Étude über",
"0008,103e": "Axial",
"0008,1140": [{"0008,1150": "1.2.3", "0008,1155": "1.2.3.4", "0040,a170": [{"0008,0100": "X", "0008,0102": "DCM", "0008,0104": "Thing"}, {}]}, {}],
"0009,1010": "no creator",
"0010,0010": "Müller^Jörg=ミュラー^ヨルグ",
"0010,0020": "P0001",
"0010,0030": "19700101",
"0010,0040": "M",
"0011,0010": "ACME 1.0",
"0011,1001": "acme value",
"0011,1002": "12",
"0011,1003": null,
"0018,1164": "0.5\\0.5",
"0018,1310": "0\\256\\256\\0",
"0018,6011": [],
"0018,9089": "0.10000000000000001\\-0.20000000000000001\\9.9999999999999995e-21",
"0018,9461": "1.5\\0.10000000149011612",
"0020,000d": "1.2.826.0.1.3680043.10.1234.1.3.1",
"0020,000e": "1.2.826.0.1.3680043.10.1234.2.3.1",
"0020,0010": "S1",
"0020,0011": "1",
"0020,0013": "1",
"0020,0032": "0.0\\0.0\\1.0",
"0020,0037": "1.0\\0.0\\0.0\\0.0\\1.0\\0.0",
"0020,9158": "hello\r\nworld",
"0028,0002": "1",
"0028,0004": "MONOCHROME2",
"0028,0009": "0018,1063",
"0028,0010": "8",
"0028,0011": "8",
"0028,0030": "0.1234567890123\\2.0",
"0028,0100": "16",
"0028,0101": "16",
"0028,0102": "15",
"0028,0103": "1",
"0028,0106": "-5",
"0028,0107": "300",
"0028,1052": "-1024.0",
"0028,1053": "1.0",
"0032,4000": null,
"0042,0011": null,
"0072,0078": "4294967295\\0",
"0072,007e": "-32768\\32767",
"0072,0082": null,
"7fe0,0010": null
}"""
)
