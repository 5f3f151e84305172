"""The body of `POST /tools/find`, read and checked as Orthanc 1.10.1 does, into a `FindRequest`.

Owns Orthanc's JSON reading of request bodies (jsoncpp's lenient defaults: comments, trailing
commas, anything after the document ignored, integers typed by their range), its tag names
(`PatientName`, `0010,0010`, `0010-0010`, `00100010`, and DCMTK's `gggg,eeee` scanning), and the
checks, in Orthanc's order, with Orthanc's error codes:

1. not a JSON object: 400 "Bad request"; `Level` missing or not a string, `Query` missing,
   `CaseSensitive` not a Boolean, `Limit` or `Since` not an integer: 400 "Bad request";
2. `Expand` that is a string, list or object: 500 (Orthanc fails to convert it; numbers count as
   Booleans); `Limit`/`Since` beyond 32 bits: 500; negative: 400 "Parameter out of range";
3. unknown `Level` (not Patient(s), Study/Studies, Series, Instance(s), Image(s), any case):
   400 "Parameter out of range";
4. `Query` that is neither an object nor null: 500; its members in sorted order: a value that is
   not a string: 400 "Bad request"; an empty value is ignored; an unknown tag name: 500 "Unknown
   DICOM tag"; a wildcard where the attribute's VR allows none: 400 "Parameter out of range";
5. `Short`, `Simplify`, `Full` (checked in that order, the first true one wins) that are not
   Booleans: 400 "Bad file format";
6. `RequestedTags` (newer Orthanc, answered with `Expand`): a list of tag names, else 400.

Every value of the request is case-insensitive unless `CaseSensitive` is true: Orthanc 1.10.1
does not consult `CaseSensitivePN` for REST finds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR

from dicomvault.dicom.tags_json import TagsFormat, tag_for_name
from dicomvault.enums import ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.find.finder import FindQuery
from dicomvault.find.matching import Lookup, parse_constraints, utf8

_STACK_LIMIT = 1000
_INT64 = (-(2**63), 2**63 - 1)
_UINT64_MAX = 2**64 - 1
_INT32 = (-(2**31), 2**31 - 1)


class JsonUInt(int):
    """An integer jsoncpp holds as unsigned (2**63 to 2**64 - 1): not an "integer" for Orthanc."""


class JsonSyntaxError(ValueError):
    pass


# ---- JSON, as jsoncpp reads it with Orthanc's settings --------------------------------------------


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, what: str) -> JsonSyntaxError:
        return JsonSyntaxError(f"{what} at offset {self.pos}")

    def skip(self) -> None:
        """Whitespace and comments (`// ...` to the end of the line, `/* ... */`)."""
        text, n = self.text, len(self.text)
        while self.pos < n:
            char = text[self.pos]
            if char in " \t\r\n":
                self.pos += 1
            elif char == "/" and text.startswith("//", self.pos):
                end = min((i for i in (text.find("\n", self.pos), text.find("\r", self.pos)) if i >= 0), default=n)
                self.pos = end
            elif char == "/" and text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                if end < 0:
                    raise self.fail("unterminated comment")
                self.pos = end + 2
            else:
                return

    def document(self) -> Any:
        """One JSON value, read without recursion (containers on an explicit stack)."""
        stack: list[tuple[dict[str, Any] | list[Any], str]] = []  # (container, member name)
        state = "value"
        result: Any = None
        while True:
            self.skip()
            if state in ("member", "element") and self.text.startswith("}" if state == "member" else "]", self.pos):
                # an empty container, or a trailing comma
                self.pos += 1
                result, state = stack.pop()[0], "attach"
            elif state == "member":
                if not self.text.startswith('"', self.pos):
                    raise self.fail("object member name expected")
                name = self.string()
                self.skip()
                if not self.text.startswith(":", self.pos):
                    raise self.fail("':' expected")
                self.pos += 1
                container = stack[-1][0]
                stack[-1] = (container, name)
                state = "value"
                continue
            elif state in ("value", "element"):
                opened = self.opening()
                if opened is not None:
                    if len(stack) >= _STACK_LIMIT:
                        # jsoncpp throws here instead of reporting a syntax error: Orthanc answers 500.
                        raise DicomVaultError(ErrorCode.INTERNAL_ERROR, "JSON document nested too deeply")
                    stack.append((opened, ""))
                    state = "member" if isinstance(opened, dict) else "element"
                    continue
                result, state = self.scalar(), "attach"
            if state == "attach":
                if not stack:
                    return result
                container, name = stack[-1]
                if isinstance(container, dict):
                    container[name] = result  # a repeated name keeps its last value
                else:
                    container.append(result)
                self.skip()
                closer = "}" if isinstance(container, dict) else "]"
                if self.text.startswith(",", self.pos):
                    self.pos += 1
                    state = "member" if isinstance(container, dict) else "element"
                elif self.text.startswith(closer, self.pos):
                    self.pos += 1
                    result = stack.pop()[0]
                else:
                    raise self.fail(f"',' or '{closer}' expected")

    def opening(self) -> dict[str, Any] | list[Any] | None:
        if self.text.startswith("{", self.pos):
            self.pos += 1
            return {}
        if self.text.startswith("[", self.pos):
            self.pos += 1
            return []
        return None

    def scalar(self) -> Any:
        if self.pos >= len(self.text):
            raise self.fail("value expected")
        char = self.text[self.pos]
        if char == '"':
            return self.string()
        for word, result in (("true", True), ("false", False), ("null", None)):
            if self.text.startswith(word, self.pos):
                self.pos += len(word)
                return result
        if char == "-" or (char.isdigit() and char.isascii()):
            return self.number()
        raise self.fail("value expected")

    def string(self) -> str:
        text, n = self.text, len(self.text)
        self.pos += 1
        out: list[str] = []
        while True:
            end = self.pos
            while end < n and text[end] not in '"\\':
                end += 1
            out.append(text[self.pos : end])
            if end >= n:
                self.pos = end
                raise self.fail("unterminated string")
            self.pos = end + 1
            if text[end] == '"':
                return "".join(out)
            if self.pos >= n:
                raise self.fail("unterminated string")
            escape = text[self.pos]
            self.pos += 1
            simple = {'"': '"', "/": "/", "\\": "\\", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
            if escape in simple:
                out.append(simple[escape])
            elif escape == "u":
                code = self.hex4()
                if 0xD800 <= code <= 0xDBFF:
                    if not text.startswith("\\u", self.pos):
                        raise self.fail("second half of a surrogate pair expected")
                    self.pos += 2
                    code = 0x10000 + ((code & 0x3FF) << 10) + (self.hex4() & 0x3FF)
                out.append(chr(code))
            else:
                raise self.fail("bad escape sequence")

    def hex4(self) -> int:
        digits = self.text[self.pos : self.pos + 4]
        if len(digits) != 4 or not all(c in "0123456789abcdefABCDEF" for c in digits):
            raise self.fail("bad unicode escape")
        self.pos += 4
        return int(digits, 16)

    def number(self) -> int | float:
        match = re.compile(r"-?[0-9]*(\.[0-9]*)?([eE][+-]?[0-9]*)?").match(self.text, self.pos)
        assert match is not None  # the pattern matches the empty string
        token = match.group(0)
        self.pos = match.end()
        digits = token[1:] if token.startswith("-") else token
        if digits.isdigit() or not digits:
            value = int(digits or "0")
            if token.startswith("-"):
                if value <= 2**63:
                    return -value
            elif value <= _INT64[1]:
                return value
            elif value <= _UINT64_MAX:
                return JsonUInt(value)
        try:
            real = float(token)
        except ValueError as exc:
            raise self.fail(f"{token!r} is not a number") from exc
        if real in (float("inf"), float("-inf")):
            raise self.fail(f"{token!r} is not a number")
        return real


def read_json(body: bytes) -> Any:
    """A request body as Orthanc's JSON reader takes it (raises `JsonSyntaxError`)."""
    text = body.decode("utf-8", "surrogateescape")
    if text.startswith("\ufeff"):
        text = text[1:]
    return _Reader(text).document()


def _is_int(value: Any) -> bool:
    """jsoncpp's `intValue`: an integer literal within 64 signed bits."""
    return type(value) is int


def _as_bool(value: Any, name: str) -> bool:
    """jsoncpp's `asBool()`: null is false, numbers are compared with zero, other types throw."""
    if value is None:
        return False
    if isinstance(value, bool | int | float):
        return bool(value)
    raise DicomVaultError(ErrorCode.INTERNAL_ERROR, f'field "{name}" cannot be converted to a Boolean')


def _as_int32(value: int, name: str) -> int:
    if not _INT32[0] <= value <= _INT32[1]:
        raise DicomVaultError(ErrorCode.INTERNAL_ERROR, f'field "{name}" is out of the range of a 32-bit integer')
    return value


# ---- tags -------------------------------------------------------------------------------------


def _scan_hex(text: str, pos: int) -> tuple[int, int] | None:
    """C's `%x` conversion at `pos`: (value, end) or None."""
    match = re.compile(r"[ \t\n\v\f\r]*([+-]?)(0[xX](?=[0-9a-fA-F]))?([0-9a-fA-F]+)").match(text, pos)
    if match is None:
        return None
    value = min(int(match.group(3), 16), _UINT64_MAX)
    if match.group(1) == "-":
        value = (-value) % 2**64
    return value & 0xFFFFFFFF, match.end()


def parse_tag(name: str) -> int:
    """A tag from its name as Orthanc parses it: `gggg,eeee`, `gggg-eeee`, `ggggeeee`, DCMTK's
    dictionary names, and anything C's `sscanf("%x,%x")` reads. Unknown: 500 "Unknown DICOM tag"."""
    name = name.split("\0", 1)[0]  # read as a C string, as Orthanc does
    hexdigits = "0123456789abcdefABCDEF"
    if len(name) == 9 and name[4] in ",-" and all(c in hexdigits for c in name[:4] + name[5:]):
        return int(name[:4], 16) << 16 | int(name[5:], 16)
    if len(name) == 8 and all(c in hexdigits for c in name):
        return int(name, 16)
    first = _scan_hex(name, 0)
    if first is not None and name.startswith(",", first[1]):
        second = _scan_hex(name, first[1] + 1)
        if second is not None:
            return (first[0] & 0xFFFF) << 16 | (second[0] & 0xFFFF)
    tag = tag_for_name(name)
    if tag is None:
        raise DicomVaultError(ErrorCode.UNKNOWN_DICOM_TAG, f"unknown DICOM tag: {name!r}")
    return tag


def vr_of(tag: int) -> str:
    """The dictionary VR of a tag (`UN` when unknown)."""
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


# ---- the request ------------------------------------------------------------------------------


_LEVELS = {
    "PATIENT": ResourceType.PATIENT,
    "PATIENTS": ResourceType.PATIENT,
    "STUDY": ResourceType.STUDY,
    "STUDIES": ResourceType.STUDY,
    "SERIES": ResourceType.SERIES,
    "INSTANCE": ResourceType.INSTANCE,
    "INSTANCES": ResourceType.INSTANCE,
    "IMAGE": ResourceType.INSTANCE,
    "IMAGES": ResourceType.INSTANCE,
}


def parse_level(text: str) -> ResourceType:
    """Orthanc's resource type names, in any (ASCII) case."""
    # Orthanc reads the name as a C string: it ends at the first NUL.
    level = _LEVELS.get(text.split("\0", 1)[0].translate(_ASCII_UPPER))
    if level is None:
        raise DicomVaultError(ErrorCode.PARAMETER_OUT_OF_RANGE)
    return level


_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


@dataclass(frozen=True)
class FindRequest:
    query: FindQuery
    expand: bool = False
    format: TagsFormat = TagsFormat.SIMPLIFY  # "Human": tags by name
    requested_tags: tuple[int, ...] = ()


def _bad(details: str) -> DicomVaultError:
    return DicomVaultError(ErrorCode.BAD_REQUEST, details)


def _boolean_option(body: dict[str, Any], name: str) -> bool:
    if name not in body:
        return False
    value = body[name]
    if not isinstance(value, bool):
        raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, f"Boolean value expected in field: {name}")
    return value


def parse_format(body: dict[str, Any]) -> TagsFormat:
    """`Short`, then `Simplify`, then `Full`: the first one that is true decides."""
    if _boolean_option(body, "Short"):
        return TagsFormat.SHORT
    if _boolean_option(body, "Simplify"):
        return TagsFormat.SIMPLIFY
    if _boolean_option(body, "Full"):
        return TagsFormat.FULL
    return TagsFormat.SIMPLIFY


def _requested_tags(body: dict[str, Any]) -> tuple[int, ...]:
    if "RequestedTags" not in body:
        return ()
    value = body["RequestedTags"]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _bad('Field "RequestedTags" should be a list of strings')
    return tuple(dict.fromkeys(parse_tag(item) for item in value))


def _integer_field(body: dict[str, Any], name: str) -> Any:
    if name in body and not _is_int(body[name]):
        raise _bad(f'Field "{name}" should be an integer')
    return body.get(name)


def _count(value: Any, name: str) -> int:
    if value is None:
        return 0
    number = _as_int32(value, name)
    if number < 0:
        raise DicomVaultError(ErrorCode.PARAMETER_OUT_OF_RANGE, f'Field "{name}" should be a positive integer')
    return number


def parse_find_request(body: bytes) -> FindRequest:
    """Read and check a `/tools/find` body, raising Orthanc's error for the first problem."""
    try:
        request = read_json(body)
    except JsonSyntaxError as exc:
        raise _bad("The body must contain a JSON object") from exc
    if not isinstance(request, dict):
        raise _bad("The body must contain a JSON object")
    if not isinstance(request.get("Level"), str):
        raise _bad('Field "Level" is missing, or should be a string')
    if "Query" not in request:
        raise _bad('Field "Query" is missing, or should be a JSON object')
    if "CaseSensitive" in request and not isinstance(request["CaseSensitive"], bool):
        raise _bad('Field "CaseSensitive" should be a Boolean')
    raw_limit = _integer_field(request, "Limit")
    raw_since = _integer_field(request, "Since")
    expand = _as_bool(request["Expand"], "Expand") if "Expand" in request else False
    case_sensitive = bool(request.get("CaseSensitive", False))
    limit = _count(raw_limit, "Limit")
    since = _count(raw_since, "Since")
    level = parse_level(request["Level"])
    query = request["Query"]
    if query is None:
        query = {}
    if not isinstance(query, dict):
        raise DicomVaultError(ErrorCode.INTERNAL_ERROR, 'field "Query" is not a JSON object')
    constraints = []
    for name in sorted(query, key=utf8):  # jsoncpp lists members in byte order
        value = query[name]
        if not isinstance(value, str):
            raise _bad(f'Tag "{name}" should be associated with a string')
        if not value:
            continue  # an empty value is universal: no constraint (as Orthanc's C-FIND SCP)
        tag = parse_tag(name)
        constraints += parse_constraints(tag, vr_of(tag), value, case_sensitive)
    form = parse_format(request)
    requested = _requested_tags(request)
    return FindRequest(FindQuery(level, Lookup.of(constraints), since, limit), expand, form, requested)
