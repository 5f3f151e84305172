"""Orthanc's matching of DICOM attribute values against query keys, independent of any front end
(used by `/tools/find`, and meant for the C-FIND SCP).

Owns: turning one query value into constraints (Orthanc's `DatabaseLookup`), testing a value
against a constraint (Orthanc's `DicomTagConstraint::IsMatch`), and the two string
normalisations Orthanc matches with. Facts mirrored here, measured against Orthanc 1.10.1:

* A value with `-` on a DA, DT or TM attribute is a range, split at the first `-`: `lower-upper`,
  `lower-` or `-upper` (each bound an inclusive string comparison; `-` alone matches everything).
* Otherwise a value holding `\\` is a list of alternatives, compared for equality (no wildcard
  inside a list).
* Otherwise `*` (any run) and `?` (one byte of the UTF-8 value, not one character) are wildcards,
  but only on AE, CS, LO, LT, PN, SH, ST, UC, UR and UT attributes. On any other attribute a value
  holding `*` or `?` (a range bound too) is refused: "Wildcards are not allowed on tag gggg,eeee".
* Otherwise the value must be equal.
* Case-insensitive matching compares both sides made upper case character by character, accents
  included (`é` and `É` match), not case folding (`ß` stays `ß`).
* A constraint on an attribute the resource does not have (or whose value is not a string) fails
  when mandatory and holds when optional.

Orthanc's database pre-selection (`index/find.py`) applies its own comparisons first; the answer
is the resources both accept.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from dicomvault.errors import DicomVaultError, ErrorCode

# Value representations on which `*` and `?` are wildcards (DICOM PS3.4 C.2.2.2.4, as Orthanc
# >= 1.6.0 applies it), and those on which `-` makes a range (PS3.4 C.2.2.2.5).
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
RANGE_VRS = frozenset({"DA", "DT", "TM"})


class ConstraintType(Enum):
    EQUAL = "=="
    SMALLER_OR_EQUAL = "<="
    GREATER_OR_EQUAL = ">="
    WILDCARD = "~~"
    LIST = "IN"


def format_tag(tag: int) -> str:
    return f"{tag >> 16:04x},{tag & 0xFFFF:04x}"


def utf8(text: str) -> bytes:
    """The UTF-8 bytes of a value; request bodies may carry bytes that are not UTF-8 (kept as
    surrogate escapes) or lone surrogates from `\\u` escapes, which jsoncpp passes through."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _decode_skipping(data: bytes) -> str:
    """UTF-8 decoded as Orthanc's conversion (boost.locale) does: an invalid sequence is skipped
    together with the byte that revealed it (so `M\\xc3*` reads `M`)."""
    out: list[str] = []
    pos, end = 0, len(data)
    while pos < end:
        lead = data[pos]
        pos += 1
        if lead < 0x80:
            out.append(chr(lead))
            continue
        trail = 1 if 0xC2 <= lead <= 0xDF else 2 if 0xE0 <= lead <= 0xEF else 3 if 0xF0 <= lead <= 0xF4 else -1
        if trail < 0:
            continue
        code = lead & ((1 << (6 - trail)) - 1)
        valid = True
        for _ in range(trail):
            if pos >= end:
                valid = False
                break
            byte = data[pos]
            pos += 1
            if byte & 0xC0 != 0x80:
                valid = False
                break
            code = code << 6 | byte & 0x3F
        width = 1 if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4
        if valid and code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF and width == trail + 1:
            out.append(chr(code))
    return "".join(out)


def upper_with_accents(value: str) -> str:
    """Orthanc's case normalisation: each character made upper case on its own (a character whose
    upper case is several characters, such as `ß`, is kept)."""
    if value.isascii():
        return value.upper()
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # bytes of a request that are not UTF-8
        value = _decode_skipping(utf8(value))
    out: list[str] = []
    for char in value:
        upper = char.upper()
        out.append(upper if len(upper) == 1 else char)
    return "".join(out)


def normalize_identifier(value: str) -> str:
    """Orthanc's normalised identifier (the values of its `DicomIdentifiers` table): printable
    ASCII only (`%` and `_` become spaces, anything else is dropped), upper case, no surrounding
    spaces."""
    kept = [" " if c in "%_" else c for c in value if " " <= c <= "~"]
    return "".join(kept).upper().strip(" ")


@functools.lru_cache(maxsize=1024)
def wildcard_regex(pattern: str, case_sensitive: bool) -> re.Pattern[bytes]:
    """The regular expression of a wildcard value. It runs on UTF-8 bytes, as Orthanc's does: `?`
    matches one byte."""
    source = pattern if case_sensitive else upper_with_accents(pattern)
    parts: list[bytes] = []
    for char in source:
        if char == "*":
            parts.append(b".*")
        elif char == "?":
            parts.append(b".")
        else:
            parts.append(re.escape(utf8(char)))
    return re.compile(b"".join(parts), re.DOTALL)


@dataclass(frozen=True)
class Constraint:
    """One condition on one attribute (Orthanc's `DicomTagConstraint`). `values` holds one value,
    or the distinct alternatives of a LIST."""

    tag: int
    kind: ConstraintType
    values: tuple[str, ...]
    case_sensitive: bool
    mandatory: bool = True

    @property
    def value(self) -> str:
        return self.values[0]

    @functools.cached_property
    def _upper_values(self) -> tuple[str, ...]:
        return tuple(upper_with_accents(v) for v in self.values)

    @property
    def is_universal(self) -> bool:
        """`*`: matches any value, provided the attribute is there."""
        return self.kind is ConstraintType.WILDCARD and self.values == ("*",)

    def matches(self, value: str) -> bool:
        """Whether one attribute value satisfies the constraint."""
        if self.kind is ConstraintType.WILDCARD:
            source = value if self.case_sensitive else upper_with_accents(value)
            return wildcard_regex(self.value, self.case_sensitive).fullmatch(utf8(source)) is not None
        if self.case_sensitive:
            source, references = value, self.values
        else:
            source, references = upper_with_accents(value), self._upper_values
        if self.kind is ConstraintType.EQUAL:
            return source == references[0]
        if self.kind is ConstraintType.SMALLER_OR_EQUAL:
            return _utf8_order(source) <= _utf8_order(references[0])
        if self.kind is ConstraintType.GREATER_OR_EQUAL:
            return _utf8_order(source) >= _utf8_order(references[0])
        return source in references

    def matches_in(self, tags: Mapping[int, str]) -> bool:
        """Whether a resource (its attributes as strings; absent or non-string ones left out)
        satisfies the constraint."""
        value = tags.get(self.tag)
        if value is None:
            return not self.mandatory
        return self.matches(value)

    def describe(self) -> str:
        shown = " | ".join(self.values) if self.kind is ConstraintType.LIST else self.value
        return f"{format_tag(self.tag)} {self.kind.value} {shown}"


def _utf8_order(value: str) -> str:
    # Python compares code points, which orders strings as their UTF-8 bytes do (and as Orthanc's
    # std::string comparison does): nothing to convert.
    return value


def _refuse_wildcards(tag: int, value: str) -> None:
    if "*" in value or "?" in value:
        raise DicomVaultError(ErrorCode.PARAMETER_OUT_OF_RANGE, f"Wildcards are not allowed on tag {format_tag(tag)}")


def parse_constraints(tag: int, vr: str, query: str, case_sensitive: bool, mandatory: bool = True) -> list[Constraint]:
    """The constraints one query value stands for (none for a universal range such as `-`).

    The caller decides beforehand what an empty value means (the REST API ignores it)."""
    if vr in RANGE_VRS and "-" in query:
        lower, _, upper = query.partition("-")
        out: list[Constraint] = []
        for bound, kind in ((lower, ConstraintType.GREATER_OR_EQUAL), (upper, ConstraintType.SMALLER_OR_EQUAL)):
            if bound:
                _refuse_wildcards(tag, bound)
                out.append(Constraint(tag, kind, (bound,), case_sensitive, mandatory))
        return out
    if "\\" in query:
        # Orthanc keeps the alternatives in a set: duplicates collapse, empty ones are kept.
        return [Constraint(tag, ConstraintType.LIST, tuple(sorted(set(query.split("\\")))), case_sensitive, mandatory)]
    if vr in WILDCARD_VRS and ("*" in query or "?" in query):
        return [Constraint(tag, ConstraintType.WILDCARD, (query,), case_sensitive, mandatory)]
    _refuse_wildcards(tag, query)
    return [Constraint(tag, ConstraintType.EQUAL, (query,), case_sensitive, mandatory)]


def dicom_constraints(
    tag: int, vr: str, query: str, case_sensitive_pn: bool, mandatory: bool = True
) -> list[Constraint]:
    """The constraints of a DICOM query key (C-FIND): matching is case-sensitive except on PN
    attributes, where `CaseSensitivePN` decides (DICOM PS3.4 C.2.2.2.1); a sequence cannot be a
    key. (REST finds instead apply their `CaseSensitive` option to every attribute.)"""
    if vr == "SQ":
        raise DicomVaultError(ErrorCode.PARAMETER_OUT_OF_RANGE, f"sequence {format_tag(tag)} cannot be a query key")
    return parse_constraints(tag, vr, query, case_sensitive_pn if vr == "PN" else True, mandatory)


@dataclass(frozen=True)
class Lookup:
    """A conjunction of constraints (Orthanc's `DatabaseLookup`)."""

    constraints: tuple[Constraint, ...] = ()

    def matches(self, tags: Mapping[int, str]) -> bool:
        return all(c.matches_in(tags) for c in self.constraints)

    def tags(self) -> frozenset[int]:
        return frozenset(c.tag for c in self.constraints)

    def has_tag(self, tag: int) -> bool:
        return any(c.tag == tag for c in self.constraints)

    def without(self, tag: int) -> Lookup:
        return Lookup(tuple(c for c in self.constraints if c.tag != tag))

    def replace_tag(self, old: int, new: int) -> Lookup:
        """The same lookup with the constraints on `old` moved to `new` (ModalitiesInStudy ->
        Modality)."""
        return Lookup(
            tuple(
                Constraint(new, c.kind, c.values, c.case_sensitive, c.mandatory) if c.tag == old else c
                for c in self.constraints
            )
        )

    def describe(self) -> str:
        return "; ".join(c.describe() for c in self.constraints) or "(everything)"

    @classmethod
    def of(cls, constraints: Iterable[Constraint]) -> Lookup:
        return cls(tuple(constraints))
