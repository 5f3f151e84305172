"""Orthanc's JSON renderings of a DICOM dataset: `/instances/{id}/tags` (full, `?simplify`,
`?short`), `/simplified-tags` and `/header`, plus the element model that `content.py` shares.

Orthanc 1.10.1 renders what DCMTK 3.6.7 holds in memory, not what pydicom would show, so values
are computed from the raw bytes of each element (pydicom's `RawDataElement`, left untouched by
`dcmread`). Elements that pydicom already converted (or datasets built in code) are first
re-encoded with pydicom's own writers, i.e. exactly as `save_as` would store them. Facts
mirrored here, all measured against Orthanc 1.10.1:

* Values are strings. A string element of odd length gets a NUL appended; an even one loses its
  trailing spaces; the JSON value stops at the first NUL. UIDs also lose every whitespace
  character and their trailing NULs. Leading spaces and backslashes are kept as they are.
* Binary numbers (US, SS, UL, SL, FL, FD) become decimal text joined by backslashes, floats with
  17 significant digits (`%.17g`); AT shows its first value only, as `gggg,eeee`. Empty numbers,
  OB/OW/OF/OD/OL/OV/SV/UV/UN and PixelData are `"Type": "Null"`.
* In `/tags`, a value longer than 256 bytes (after conversion to UTF-8) is `"Type": "TooLong"`
  with a null value; `/header` has no limit but leaves binary and unknown elements out and reads
  its strings as ASCII. "Binary" (a base64 data URI) is never produced by these routes.
* Strings are converted to UTF-8 with the top-level SpecificCharacterSet only (items' own
  values are ignored). See `_decoder` for Orthanc's handling of each term.
* Names come from DCMTK 3.6.7's dictionary: pydicom's keywords with `RETIRED_` before retired
  ones, `Unknown Tag & Data` for tags DCMTK does not know (those newer than 2022, every private
  tag) and DCMTK's generic names for group lengths and private creators. A private leaf (not
  a sequence) whose creator is in the same item also carries `"PrivateCreator"`. DCMTK's
  private dictionary (vendor names such as `CSAImageHeaderType`, and their VRs in implicit VR
  files) is not reproduced: such tags stay unknown here.
* In implicit VR files the VR is DCMTK's: US/SS pairs are resolved by PixelRepresentation for
  the tags DCMTK handles, everything else it cannot resolve is Null.
"""

from __future__ import annotations

import copy
import functools
import logging
import re
import struct
from collections.abc import Callable, Iterator, Mapping
from enum import Enum
from typing import Any, cast

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_has_tag, get_entry, keyword_dict
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr_element, writers
from pydicom.sequence import Sequence
from pydicom.valuerep import CUSTOMIZABLE_CHARSET_VR

logger = logging.getLogger(__name__)

Element = DataElement | RawDataElement

UNKNOWN_NAME = "Unknown Tag & Data"
MAX_STRING_LENGTH = 256  # Orthanc's limit for /tags values (bytes of UTF-8)
PIXEL_DATA = 0x7FE00010
SPECIFIC_CHARACTER_SET = 0x00080005
_PIXEL_REPRESENTATION = 0x00280103

STRING_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
# VR -> (struct code, size) of the binary numbers Orthanc renders as text.
_NUMBERS: dict[str, tuple[str, int]] = {
    "US": ("H", 2),
    "SS": ("h", 2),
    "UL": ("I", 4),
    "SL": ("i", 4),
    "FL": ("f", 4),
    "FD": ("d", 8),
}
# Word size per VR, for turning big endian values into the little endian ones DCMTK keeps.
WORD_SIZES: dict[str, int] = {
    "US": 2, "SS": 2, "OW": 2, "AT": 2, "UL": 4, "SL": 4, "FL": 4, "OF": 4, "OL": 4,
    "FD": 8, "OD": 8, "SV": 8, "UV": 8, "OV": 8,
}  # fmt: skip

# ---- DCMTK 3.6.7's data dictionary, as differences from pydicom 3.0.2's --------------------------

# Tags pydicom knows but DCMTK 3.6.7 does not (added to the standard later): unknown to Orthanc.
_UNKNOWN_TO_DCMTK_TEXT = """
0008001c 00080400 00080401 00080402 00080403 00080404 00080405 00080406 00080407 00080408 00080409 0008040a 0008040b
0008040c 0008040d 0008040e 0008040f 00080410 00080411 00080412 00080413 00080414 00080415 00080416 00080417 00080418
00080419 0008041a 0008041b 0008041c 0008041d 0008041e 0008041f 00080420 00080421 00080422 00080423 00080424 00080425
00080426 00080427 00080428 00080429 00081112 0008119b 00102161 00120022 00120023 00120032 00120041 00120043 00120054
00120055 00120073 00140200 00140201 00140202 00140203 00140204 00140205 00140206 00140207 00181204 00181205 00189821
00189822 00189823 00189824 00189825 00189826 00189828 00189829 0018982a 0018982b 0018982c 0018982d 0018982e 0018982f
00189830 00189831 00189832 00189833 00189834 00189835 00189836 0022000f 00283001 003a0317 003a0318 003a0319 003a0320
003a0321 003a0322 003a0323 003a0324 003a0325 003a0326 003a0327 003a0328 003a0329 003a032a 003a032b 003a032c 003a032d
003a032e 00480114 00480115 00480116 00480117 00700315 30020100 30020101 30020102 30020103 30020104 30020105 30020106
30020107 30020108 30020109 3002010a 3002010b 3002010c 3002010d 3002010e 3002010f 30020110 30020111 30020112 30020113
30020114 30020115 30020116 30020117 30020118 30020119 3002011a 3002011b 3002011c 3002011d 3002011e 3002011f 30020120
30020121 30020122 30020123 30020124 30020125 30020126 30020127 30020128 30020129 3002012a 3002012b 3002012c 3002012d
3002012e 3002012f 30020130 30020131 30020132 30020133 30020134 30020135 3006002d 3006002e 3006004b 3006004c 3006004d
3006004e 3006004f 300800a1 300800a2 300800a3 300800a4 300a0054 300a068b 300a079f 300a07a0 300a07a1 300c0129 301000a0
7fe00003
"""
_UNKNOWN_TO_DCMTK = frozenset(int(tag, 16) for tag in _UNKNOWN_TO_DCMTK_TEXT.split())
# DCMTK names that differ from "pydicom keyword, RETIRED_ if retired": retired later than 2022,
# and retired entries DCMTK lists one by one where pydicom has a repeating mask.
_DCMTK_NAMES: dict[int, str] = {
    0x00060001: "CurrentFrameFunctionalGroupsSequence",
    0x00380004: "ReferencedPatientAliasSequence",
    0x00701807: "WeightingLookupTableDescriptor",
    0x00701808: "WeightingLookupTableData",
    0x30040010: "RTDoseROISequence",
    0x30040012: "DoseValue",
    0x30060085: "ROIObservationLabel",
    0x30060088: "ROIObservationDescription",
    0x3008002B: "TreatmentTerminationCode",
    0x30100090: "RoboticBaseLocationIndicator",
    **{t: f"RETIRED_{get_entry(t)[4]}" for t in (0x00280410, 0x00280411, 0x00280412, 0x00280413)},
    **{t: f"RETIRED_{get_entry(t)[4]}" for t in (0x00280800, 0x00280802, 0x00280803, 0x00280804)},
    **{t: f"RETIRED_{get_entry(t)[4]}" for t in (0x00280808, 0x10100004, *range(0x10000010, 0x10000016))},
}
_DCMTK_VRS = {0x00060001: "SQ"}  # the one DCMTK entry pydicom 3.0.2 lacks
# Elements of DCMTK's repeating groups (even groups 50xx, 60xx, 7Fxx; (0020,31xx) even).
_REPEATING_TEXT = {
    0x5000: "0005 0010 0020 0022 0030 0040 0103 0104 0105 0106 0110 0112 0114 1001 2000 2002 "
    "2004 2006 2008 200a 200c 200e 2500 2600 2610 3000",
    0x6000: "0010 0011 0012 0015 0022 0040 0045 0050 0051 0052 0060 0061 0062 0063 0066 0068 0069 0100 0102 0110 "
    "0200 0800 0802 0803 0804 1001 1100 1101 1102 1103 1200 1201 1202 1203 1301 1302 1303 1500 3000 4000",
    0x7F00: "0010 0011 0020 0030 0040",
}
_REPEATING = {base: frozenset(int(e, 16) for e in text.split()) for base, text in _REPEATING_TEXT.items()}
# Implicit VR: DCMTK's "US or SS" tags it resolves with PixelRepresentation (others stay Null).
_XS_RESOLVED = frozenset(
    {0x00280106, 0x00280107, 0x00280108, 0x00280109, 0x00280120, 0x00280121, 0x00283002, 0x00409211}
    | {0x00409216, 0x00603004, 0x00603006}
)
_UP_TAGS = frozenset({0x00041200, 0x00041202, 0x00041400, 0x00041420, 0x00041504})  # DCMTK's "up"


def _dictionary_entry(tag: int) -> tuple[str, str] | None:
    """(VR, DCMTK name) of a public tag, None if DCMTK 3.6.7 does not know it."""
    group, element = tag >> 16, tag & 0xFFFF
    if element == 0:
        return "UL", get_entry(tag)[4] if dictionary_has_tag(tag) else "GenericGroupLength"
    if tag in _UNKNOWN_TO_DCMTK:
        return None
    if tag in _DCMTK_NAMES:
        return _DCMTK_VRS.get(tag) or get_entry(tag)[0], _DCMTK_NAMES[tag]
    if dictionary_has_tag(tag):
        entry = get_entry(tag)
    else:
        base = group & 0xFF01
        repeating = base in _REPEATING and element in _REPEATING[base]
        if repeating or (group == 0x0020 and 0x3100 <= element <= 0x31FF and element % 2 == 0):
            entry = get_entry(tag)
        else:
            return None
    vr, _vm, _desc, retired, keyword = entry
    if not keyword:  # a few withdrawn entries of pydicom's dictionary have none
        return None
    return vr, (f"RETIRED_{keyword}" if retired == "Retired" else keyword)


@functools.cache
def tag_name(tag: int) -> str:
    """Orthanc's `Name` of a tag (without looking at private creators)."""
    group, element = tag >> 16, tag & 0xFFFF
    if group & 1:
        legal = group > 0x0008
        if element == 0:
            return "PrivateGroupLength" if legal else "IllegalGroupLength"
        if 0x0010 <= element <= 0x00FF:
            return "PrivateCreator" if legal else "IllegalPrivateCreator"
        return UNKNOWN_NAME
    entry = _dictionary_entry(tag)
    return UNKNOWN_NAME if entry is None else entry[1]


@functools.cache
def _tags_by_name() -> dict[str, int]:
    index: dict[str, int] = {}
    candidates = [*keyword_dict.values(), *_DCMTK_NAMES, 0x00203100]
    candidates += [base << 16 | element for base, elements in _REPEATING.items() for element in elements]
    for tag in sorted(candidates, reverse=True):  # the lowest tag wins, as for repeating groups
        if not tag >> 16 & 1:
            index[tag_name(tag)] = tag
    index.pop(UNKNOWN_NAME, None)
    return index


def tag_for_name(name: str) -> int | None:
    """The tag DCMTK's dictionary gives a name (`PatientID`, `RETIRED_StudyComments`, `OverlayRows`
    for the first group of a repeating one), None if it has no such public name."""
    return _tags_by_name().get(name)


def _implicit_vr(tag: int, ds: Dataset) -> str:
    """The VR DCMTK gives an element of an implicit VR dataset; "UN" when it cannot tell."""
    group, element = tag >> 16, tag & 0xFFFF
    if element == 0:
        return "UL"
    if group & 1:
        return "LO" if 0x0010 <= element <= 0x00FF else "UN"
    if tag in _UP_TAGS:
        return "UN"
    entry = _dictionary_entry(tag)
    if entry is None:
        return "UN"
    vr = entry[0]
    if " or " in vr:
        if vr == "US or SS" and tag in _XS_RESOLVED and _PIXEL_REPRESENTATION in ds:
            pr = ds.get_item(_PIXEL_REPRESENTATION)
            pixel_representation = _numbers(ds, pr, element_vr(ds, pr))
            return "SS" if pixel_representation and pixel_representation[0] == "1" else "US"
        return "UN"
    return vr


# ---- the element model (shared with content.py) ------------------------------------------------


def element_vr(ds: Dataset, elem: Element) -> str:
    """The VR Orthanc works with: the file's (explicit VR), DCMTK's dictionary's (implicit VR)."""
    if isinstance(elem, RawDataElement):
        if elem.is_implicit_VR or elem.VR is None:
            return _implicit_vr(elem.tag, ds)
        return elem.VR
    vr = str(elem.VR)
    if " or " in vr:
        fixed = correct_ambiguous_vr_element(copy.copy(elem), ds, True)
        vr = str(fixed.VR)
        return "UN" if " or " in vr else vr
    return vr


def iter_elements(ds: Dataset, skip_file_meta: bool = True) -> Iterator[Element]:
    """The elements of one dataset level in tag order, unconverted whenever pydicom allows."""
    for elem in ds.elements():
        if skip_file_meta and elem.tag >> 16 == 0x0002:
            continue
        yield elem


def sequence_items(ds: Dataset, elem: Element, vr: str) -> list[Dataset] | None:
    """The items of a sequence element, or None if Orthanc does not see a sequence there."""
    if vr != "SQ" and not (isinstance(elem, DataElement) and elem.VR == "SQ"):
        return None
    if isinstance(elem, RawDataElement):
        if elem.VR is None:  # implicit VR: tell pydicom what DCMTK's dictionary says
            ds[elem.tag] = elem._replace(VR="SQ")
        value = ds[elem.tag].value
    else:
        value = elem.value
    return list(value) if isinstance(value, Sequence) else None


def raw_value(ds: Dataset, elem: Element, vr: str) -> bytes:
    """The value bytes as stored (little endian), before DCMTK's padding and trimming."""
    if isinstance(elem, RawDataElement) and elem.value is not None:
        data = bytes(elem.value)
        if not elem.is_little_endian and vr in WORD_SIZES:
            data = _swap(data, WORD_SIZES[vr])
        return data
    if isinstance(elem, RawDataElement):
        if elem.length in (0, 0xFFFFFFFF):
            return b""
        elem = ds[elem.tag]  # a deferred value: let pydicom read it
    return _encode(ds, elem, vr)


def stored_value(vr: str, data: bytes) -> bytes:
    """The bytes DCMTK keeps for a value (what `/content` answers)."""
    if vr in STRING_VRS:
        kept = _kept_string(vr, data)
        if len(kept) % 2:
            kept += b"\0" if vr == "UI" else b" "
        return kept
    return data + b"\0" if len(data) % 2 else data


def _kept_string(vr: str, data: bytes) -> bytes:
    """DCMTK's string after reading: odd values get a NUL, even ones lose trailing spaces;
    UIDs lose all whitespace and trailing NULs."""
    if vr == "UI":
        return data.translate(None, b" \t\r\n\v\f").rstrip(b"\0")
    if len(data) % 2:
        return data + b"\0"
    return data.rstrip(b" ")


def _swap(data: bytes, size: int) -> bytes:
    end = len(data) - len(data) % size
    out = bytearray(data)
    for i in range(0, end, size):
        out[i : i + size] = data[i : i + size][::-1]
    return bytes(out)


def _encode(ds: Dataset, elem: DataElement, vr: str) -> bytes:
    """What pydicom writes for an element's value (explicit VR little endian)."""
    if elem.is_empty or vr not in writers:
        return b""
    if elem.is_buffered:
        stream = elem.value
        position = stream.tell()
        try:
            return bytes(stream.read())
        finally:
            stream.seek(position)
    if vr != elem.VR:
        elem = copy.copy(elem)
        elem.VR = vr
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    writer, parameter = writers[vr]  # type: ignore[index]
    function = cast(Callable[..., None], writer)
    try:
        if vr in CUSTOMIZABLE_CHARSET_VR:
            function(buffer, elem, encodings=_writer_encodings(ds))
        elif parameter is not None:
            function(buffer, elem, parameter)
        else:
            function(buffer, elem)
    except (TypeError, ValueError, struct.error) as exc:
        # e.g. numbers whose "US or SS" VR could not be resolved: pydicom could not save them either
        logger.debug("cannot encode %s as %s: %s", elem.tag, vr, exc)
        return b""
    return buffer.getvalue()


def _writer_encodings(ds: Dataset) -> list[str]:
    charset = ds.get("SpecificCharacterSet", getattr(ds, "_parent_encoding", None))
    return convert_encodings(charset)


# ---- character sets ------------------------------------------------------------------------------

# Orthanc's SpecificCharacterSet terms (matched without surrounding spaces, any case) -> codec.
# "ascii" drops every byte but printable ASCII and LF; "utf-8" stops at the first invalid byte;
# the others skip undecodable bytes. Unknown terms fall back to "ascii", as Orthanc does.
_TERMS: dict[str, str] = {
    "ISO_IR 6": "ascii", "ISO 2022 IR 6": "ascii",
    "ISO_IR 100": "latin_1", "ISO 2022 IR 100": "latin_1",
    "ISO_IR 101": "iso8859_2", "ISO 2022 IR 101": "iso8859_2",
    "ISO_IR 109": "iso8859_3", "ISO 2022 IR 109": "iso8859_3",
    "ISO_IR 110": "iso8859_4", "ISO 2022 IR 110": "iso8859_4",
    "ISO_IR 144": "iso8859_5", "ISO 2022 IR 144": "iso8859_5",
    "ISO_IR 127": "iso8859_6", "ISO 2022 IR 127": "iso8859_6",
    "ISO_IR 126": "iso8859_7", "ISO 2022 IR 126": "iso8859_7",
    "ISO_IR 138": "iso8859_8", "ISO 2022 IR 138": "iso8859_8",
    "ISO_IR 148": "iso8859_9", "ISO 2022 IR 148": "iso8859_9",
    "ISO_IR 166": "tis_620", "ISO 2022 IR 166": "tis_620",
    "ISO_IR 13": "jis_x_0201", "ISO 2022 IR 13": "jis_x_0201",
    "ISO 2022 IR 87": "iso2022_jp", "ISO 2022 IR 149": "euc_kr", "ISO 2022 IR 58": "gb2312",
    "ISO_IR 192": "utf-8", "GB18030": "gb18030", "GBK": "gbk",
}  # fmt: skip
# Orthanc's `DefaultEncoding` configuration values (used when SpecificCharacterSet is absent).
DEFAULT_ENCODINGS: dict[str, str] = {
    "Ascii": "ascii", "Utf8": "utf-8", "Latin1": "latin_1", "Latin2": "iso8859_2",
    "Latin3": "iso8859_3", "Latin4": "iso8859_4", "Latin5": "iso8859_9", "Cyrillic": "iso8859_5",
    "Windows1251": "cp1251", "Arabic": "iso8859_6", "Greek": "iso8859_7", "Hebrew": "iso8859_8",
    "Thai": "tis_620", "Japanese": "jis_x_0201", "Chinese": "gb18030", "JapaneseKanji": "iso2022_jp",
    "Korean": "euc_kr", "SimplifiedChinese": "gb2312",
}  # fmt: skip
_ASCII_DROPPED = bytes(b for b in range(256) if not (0x20 <= b < 0x7F or b == 0x0A))
# The ISO 2022 escape sequences of PS3.3 C.12.1.1.2, which Orthanc removes when code extensions
# are declared (SpecificCharacterSet has several values) before decoding with a single codec.
_ESCAPES = re.compile(rb"\x1b(?:\(B|\(J|\)I|-[ABCDFGHLMTb]|\$B|\$@|\$\(D|\$\)C|\$\)A)")
_JIS_X_0201 = str.maketrans("\\~", "\u00a5\u203e")

Decoder = Callable[[bytes], str]


def _decode_with(codec: str, data: bytes) -> str:
    if codec == "ascii":
        return data.translate(None, _ASCII_DROPPED).decode("ascii")
    if codec == "utf-8":
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return data[: exc.start].decode("utf-8")
    if codec == "jis_x_0201":  # iconv's SHIFT_JIS: yen sign and overline in the ASCII half
        return data.decode("shift_jis", "ignore").translate(_JIS_X_0201)
    return data.decode(codec, "ignore")


def _decoder(charset: bytes | None, default_encoding: str = "Latin1") -> Decoder:
    """How Orthanc turns the C string of a value into text, given the raw SpecificCharacterSet."""
    values = [] if charset is None else _cstring(_kept_string("CS", charset)).decode("latin_1").split("\\")
    term = values[0].strip() if values else ""
    if not term and len(values) > 1:
        term = values[1].strip()
    if not term:
        codec = DEFAULT_ENCODINGS.get(default_encoding, "latin_1")
    else:
        codec = _TERMS.get(term.upper(), "")
        if not codec:
            logger.warning("SpecificCharacterSet %r is not supported: decoding as ASCII", term)
            codec = "ascii"
    strip_escapes = len(values) > 1 and codec not in ("ascii", "iso2022_jp")
    plain = codec not in ("ascii", "jis_x_0201")

    def decode(data: bytes) -> str:
        if strip_escapes and b"\x1b" in data:
            data = _ESCAPES.sub(b"", data)
        if plain and data.isascii() and (codec != "iso2022_jp" or b"\x1b" not in data):
            return data.decode("ascii")
        return _decode_with(codec, data)

    return decode


def _cstring(data: bytes) -> bytes:
    end = data.find(b"\0")
    return data if end < 0 else data[:end]


# ---- rendering -----------------------------------------------------------------------------------


class TagsFormat(Enum):
    FULL = "full"
    SIMPLIFY = "simplify"
    SHORT = "short"


def parse_tags_format(query: Mapping[str, str]) -> TagsFormat:
    """Orthanc reads `?simplify` and `?short` by presence alone (`?simplify=false` simplifies too;
    names are case-sensitive) and `simplify` wins when both are given."""
    if "simplify" in query:
        return TagsFormat.SIMPLIFY
    if "short" in query:
        return TagsFormat.SHORT
    return TagsFormat.FULL


def _numbers(ds: Dataset, elem: Element, vr: str) -> list[str]:
    if vr not in _NUMBERS:
        return []
    code, size = _NUMBERS[vr]
    data = stored_value(vr, raw_value(ds, elem, vr))
    count = len(data) // size
    values = struct.unpack_from(f"<{count}{code}", data)
    if code in "fd":
        return ["%.17g" % v for v in values]  # noqa: UP031 - C's %g, as Orthanc prints doubles
    return [str(v) for v in values]


class _Renderer:
    """One rendering of one dataset: the decoder, the format and the limits stay fixed."""

    def __init__(self, decode: Decoder, form: TagsFormat, max_length: int | None, header: bool) -> None:
        self.decode = decode
        self.form = form
        self.max_length = max_length
        self.header = header

    def value(self, ds: Dataset, elem: Element, vr: str) -> tuple[str, Any]:
        """(Type, Value) of a non-sequence element."""
        if vr in STRING_VRS:
            text = self.decode(_cstring(_kept_string(vr, raw_value(ds, elem, vr))))
        elif vr in _NUMBERS:
            text = "\\".join(_numbers(ds, elem, vr))
            if not text:
                return "Null", None
        elif vr == "AT":
            data = raw_value(ds, elem, vr)
            if len(data) < 4:
                return "Null", None
            group, element = struct.unpack_from("<HH", data)
            text = f"{group:04x},{element:04x}"
        else:
            return "Null", None
        limit = self.max_length
        if limit is not None and len(text) > limit // 4 and len(text.encode("utf-8")) > limit:
            return "TooLong", None
        return "String", text

    def dataset(self, ds: Dataset, top: bool) -> dict[str, Any]:
        form = self.form
        out: dict[str, Any] = {}
        creators: dict[int, str] | None = None
        for elem in iter_elements(ds, skip_file_meta=top and not self.header):
            tag = elem.tag
            vr = element_vr(ds, elem)
            items = sequence_items(ds, elem, vr)
            if items is not None:
                kind, value = "Sequence", [self.dataset(item, top=False) for item in items]
            else:
                kind, value = self.value(ds, elem, vr)
            name = tag_name(tag)
            if self.header and (kind == "Null" or name == UNKNOWN_NAME):
                continue  # Orthanc's /header shows neither binary nor unknown elements
            if form is TagsFormat.SIMPLIFY:
                out[name] = value  # a later element with the same name wins, as in Orthanc
                continue
            key = f"{tag >> 16:04x},{tag & 0xFFFF:04x}"
            if form is TagsFormat.SHORT:
                out[key] = value
                continue
            entry: dict[str, Any] = {"Name": name}
            # Orthanc names the creator (found in the same item) of private leaves, not of
            # private sequences.
            if items is None and tag & 0x10000 and (tag & 0xFFFF) >= 0x1000 and tag >> 16 > 0x0008:
                if creators is None:
                    creators = self.creators(ds)
                creator = creators.get(tag >> 16 << 8 | (tag & 0xFF00) >> 8)
                if creator is not None:
                    entry["PrivateCreator"] = creator
            entry["Type"] = kind
            entry["Value"] = value
            out[key] = entry
        if form is TagsFormat.SIMPLIFY:
            return dict(sorted(out.items()))
        return out

    def creators(self, ds: Dataset) -> dict[int, str]:
        """Private creators of one item, keyed by group << 8 | block."""
        found: dict[int, str] = {}
        for elem in ds.elements():
            group, element = elem.tag >> 16, elem.tag & 0xFFFF
            if group & 1 and 0x0010 <= element <= 0x00FF:
                vr = element_vr(ds, elem)
                if vr in STRING_VRS:
                    found[group << 8 | element] = self.decode(_cstring(_kept_string(vr, raw_value(ds, elem, vr))))
        return found


def drop_after_pixel_data(ds: Dataset) -> Dataset:
    """Orthanc renders an instance's tags from its copy "until pixel data": elements whose tag
    follows (7FE0,0010) never appear in `/tags` and the other tag routes. Modifies `ds`."""
    for tag in [tag for tag in list(ds.keys()) if tag > PIXEL_DATA]:
        del ds[tag]
    return ds


def dataset_to_json(ds: Dataset, form: TagsFormat, default_encoding: str = "Latin1") -> dict[str, Any]:
    """Orthanc's `/instances/{id}/tags` (group 0002 excluded). `default_encoding` is Orthanc's
    `DefaultEncoding` setting, used when the dataset has no SpecificCharacterSet."""
    charset = ds.get_item(SPECIFIC_CHARACTER_SET) if SPECIFIC_CHARACTER_SET in ds else None
    raw = None if charset is None else raw_value(ds, charset, "CS")
    renderer = _Renderer(_decoder(raw, default_encoding), form, MAX_STRING_LENGTH, header=False)
    return renderer.dataset(ds, top=True)


def header_to_json(file_meta: Dataset, form: TagsFormat) -> dict[str, Any]:
    """Orthanc's `/instances/{id}/header`: the file meta information, read as ASCII, no length
    limit, binary and unknown elements left out."""
    renderer = _Renderer(_decoder(b"ISO_IR 6"), form, None, header=True)
    return renderer.dataset(file_meta, top=True)


def selected_strings(
    ds: Dataset, tags: frozenset[int], default_encoding: str = "Latin1"
) -> tuple[tuple[int, str], ...]:
    """The top-level elements among `tags` that `/tags` renders as strings, with those strings:
    exactly what a find that reads the file matches (`find/finder.py: file_strings`), computed
    without rendering the whole data set."""
    charset = ds.get_item(SPECIFIC_CHARACTER_SET) if SPECIFIC_CHARACTER_SET in ds else None
    raw = None if charset is None else raw_value(ds, charset, "CS")
    renderer = _Renderer(_decoder(raw, default_encoding), TagsFormat.FULL, MAX_STRING_LENGTH, header=False)
    out: list[tuple[int, str]] = []
    for tag in sorted(tags):
        if tag not in ds:
            continue
        elem = ds.get_item(tag)
        vr = element_vr(ds, elem)
        if sequence_items(ds, elem, vr) is not None:
            continue
        kind, value = renderer.value(ds, elem, vr)
        if kind == "String" and isinstance(value, str) and "\x00" not in value:
            # A value with a NUL character stays out of the index (PostgreSQL text cannot hold
            # it): finds answered from the index do not match it on that tag.
            out.append((tag, value))
    return tuple(out)
