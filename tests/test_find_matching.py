"""Orthanc's matching rules (`find/matching.py`) and the normalisations of the find's database
step (`index/find.py`): wildcards, ranges, lists, case, accents, identifier normalisation, and
properties checked with hypothesis (including agreement with SQLite's LIKE on ASCII text)."""

from __future__ import annotations

import sqlite3

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.find.matching import (
    Constraint,
    ConstraintType,
    Lookup,
    dicom_constraints,
    parse_constraints,
    upper_with_accents,
    wildcard_regex,
)
from dicomvault.index.find import like_pattern, normalize_identifier

PATIENT_NAME = 0x00100010
STUDY_DATE = 0x00080020
STUDY_TIME = 0x00080030
MODALITY = 0x00080060
UID = 0x0020000D


def one(tag: int, vr: str, query: str, case_sensitive: bool = False) -> Constraint:
    constraints = parse_constraints(tag, vr, query, case_sensitive)
    assert len(constraints) == 1
    return constraints[0]


# ---- turning a query value into constraints ------------------------------------------------------


def test_kinds_of_constraint() -> None:
    assert one(PATIENT_NAME, "PN", "DOE^JOHN").kind is ConstraintType.EQUAL
    assert one(PATIENT_NAME, "PN", "DOE*").kind is ConstraintType.WILDCARD
    assert one(PATIENT_NAME, "PN", "D?E").kind is ConstraintType.WILDCARD
    assert one(MODALITY, "CS", "CT\\MR").kind is ConstraintType.LIST
    # a list takes precedence over wildcards, which then count as plain characters
    listed = one(MODALITY, "CS", "C*\\MR")
    assert listed.kind is ConstraintType.LIST and listed.matches("C*") and not listed.matches("CT")
    # "-" is a range on dates and times only
    assert one(PATIENT_NAME, "PN", "A-B").kind is ConstraintType.EQUAL


def test_ranges() -> None:
    both = parse_constraints(STUDY_DATE, "DA", "20200101-20201231", False)
    assert [c.kind for c in both] == [ConstraintType.GREATER_OR_EQUAL, ConstraintType.SMALLER_OR_EQUAL]
    assert Lookup.of(both).matches({STUDY_DATE: "20200615"})
    assert Lookup.of(both).matches({STUDY_DATE: "20201231"})
    assert not Lookup.of(both).matches({STUDY_DATE: "20210101"})
    assert [c.kind for c in parse_constraints(STUDY_DATE, "DA", "2020-", False)] == [ConstraintType.GREATER_OR_EQUAL]
    assert [c.kind for c in parse_constraints(STUDY_DATE, "DA", "-2020", False)] == [ConstraintType.SMALLER_OR_EQUAL]
    assert parse_constraints(STUDY_DATE, "DA", "-", False) == []
    # split at the first "-": the upper bound keeps the rest
    assert parse_constraints(STUDY_TIME, "TM", "10-11-12", False)[1].value == "11-12"
    # a range takes precedence over a list
    assert parse_constraints(STUDY_DATE, "DA", "2020\\2021-", False)[0].value == "2020\\2021"
    # plain string comparisons: a shorter prefix sorts first
    assert Lookup.of(parse_constraints(STUDY_TIME, "TM", "2359-", False)).matches({STUDY_TIME: "235959.123"})


@pytest.mark.parametrize(
    ("tag", "vr", "query"),
    [
        (STUDY_DATE, "DA", "*"),
        (STUDY_DATE, "DA", "2020*"),
        (STUDY_DATE, "DA", "2020?101"),
        (STUDY_DATE, "DA", "*-2020"),
        (UID, "UI", "1.2.*"),
        (0x00200011, "IS", "1?"),
    ],
)
def test_wildcards_refused_outside_text_vrs(tag: int, vr: str, query: str) -> None:
    with pytest.raises(DicomVaultError) as caught:
        parse_constraints(tag, vr, query, False)
    assert caught.value.code is ErrorCode.PARAMETER_OUT_OF_RANGE
    assert caught.value.details == f"Wildcards are not allowed on tag {tag >> 16:04x},{tag & 0xFFFF:04x}"


def test_lists_are_sets_and_keep_empty_alternatives() -> None:
    listed = one(MODALITY, "CS", "MR\\CT\\MR\\")
    assert listed.values == ("", "CT", "MR")
    assert listed.matches("") and listed.matches("CT") and not listed.matches("US")


# ---- matching -----------------------------------------------------------------------------------


def test_case_and_accents() -> None:
    insensitive = one(PATIENT_NAME, "PN", "müller^jörg")
    assert insensitive.matches("MÜLLER^JÖRG")
    assert insensitive.matches("Müller^Jörg")
    assert not insensitive.matches("Muller^Jorg")  # accents are not removed
    sensitive = one(PATIENT_NAME, "PN", "müller^jörg", case_sensitive=True)
    assert sensitive.matches("müller^jörg") and not sensitive.matches("MÜLLER^JÖRG")
    assert upper_with_accents("straße") == "STRAßE"  # per character: no "SS"
    assert upper_with_accents("ωmega") == "ΩMEGA"


def test_bytes_that_are_not_utf8() -> None:
    """Request bodies may hold them: upper-casing skips each invalid sequence with the byte that
    revealed it, as Orthanc's conversion does; case-sensitive matching compares bytes."""
    assert upper_with_accents("M\udcc3*") == "M"
    assert upper_with_accents("*\udcc3") == "*"
    assert upper_with_accents("x\udcffy") == "XY"
    assert one(PATIENT_NAME, "PN", "*\udcc3").matches("anything")
    assert not one(PATIENT_NAME, "PN", "M\udcc3*").matches("Müller")
    assert one(PATIENT_NAME, "PN", "M\udcc3*", case_sensitive=True).matches("Müller")


def test_wildcards() -> None:
    star = one(PATIENT_NAME, "PN", "*")
    assert star.is_universal and star.matches("") and star.matches("anything")
    assert one(PATIENT_NAME, "PN", "doe*").matches("DOE^JOHN")
    assert not one(PATIENT_NAME, "PN", "doe*", case_sensitive=True).matches("DOE^JOHN")
    assert one(PATIENT_NAME, "PN", "*^J?HN").matches("Doe^John")
    # "?" is one byte of UTF-8: a two-byte letter needs two
    assert not one(PATIENT_NAME, "PN", "M?ller").matches("Müller")
    assert one(PATIENT_NAME, "PN", "M??ller").matches("Müller")
    # regular expression characters are plain characters
    assert one(0x00081030, "LO", "50%_done [x]*").matches("50%_done [x] (final)")
    assert not one(0x00081030, "LO", "a.c*").matches("abc")
    assert one(0x00081030, "LO", "*").matches("multi\nline")


def test_absent_and_optional() -> None:
    mandatory = one(PATIENT_NAME, "PN", "*")
    assert not mandatory.matches_in({})
    optional = parse_constraints(PATIENT_NAME, "PN", "DOE", False, mandatory=False)[0]
    assert optional.matches_in({}) and not optional.matches_in({PATIENT_NAME: "SMITH"})


def test_lookup_helpers() -> None:
    lookup = Lookup.of([*parse_constraints(0x00080061, "CS", "CT\\MR", False), one(PATIENT_NAME, "PN", "D*")])
    assert lookup.has_tag(0x00080061) and lookup.tags() == {0x00080061, PATIENT_NAME}
    moved = lookup.replace_tag(0x00080061, MODALITY)
    assert moved.has_tag(MODALITY) and not moved.has_tag(0x00080061)
    assert moved.matches({MODALITY: "MR", PATIENT_NAME: "Doe"})
    assert "0008,0060 IN CT | MR" in moved.describe()
    assert lookup.without(PATIENT_NAME).tags() == {0x00080061}
    assert Lookup().describe() == "(everything)"


def test_dicom_query_keys_follow_case_sensitive_pn() -> None:
    (pn,) = dicom_constraints(PATIENT_NAME, "PN", "doe*", case_sensitive_pn=False)
    assert pn.matches("DOE^JOHN")
    (pn_sensitive,) = dicom_constraints(PATIENT_NAME, "PN", "doe*", case_sensitive_pn=True)
    assert not pn_sensitive.matches("DOE^JOHN")
    (other,) = dicom_constraints(0x00081030, "LO", "chest*", case_sensitive_pn=False)
    assert not other.matches("CHEST CT")  # only PN may ignore case
    with pytest.raises(DicomVaultError):
        dicom_constraints(0x00081140, "SQ", "x", case_sensitive_pn=False)


# ---- the database's normalisations ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "normalised"),
    [
        ("Doe^John", "DOE^JOHN"),
        ("  find-1 \t", "FIND-1"),
        ("Müller^Jörg", "MLLER^JRG"),
        ("ACC_3", "ACC 3"),
        ("50%", "50"),
        ("a\x00b\nc", "ABC"),
        ("", ""),
    ],
)
def test_normalize_identifier(value: str, normalised: str) -> None:
    assert normalize_identifier(value) == normalised


def test_like_pattern_escapes_sql_wildcards() -> None:
    assert like_pattern("50%_x*?\\") == "50\\%\\_x%_\\\\"


# ---- properties -----------------------------------------------------------------------------------

TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
ASCII = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)


@given(TEXT)
def test_a_value_matches_itself(value: str) -> None:
    if "\\" in value or "*" in value or "?" in value:
        return
    assert one(PATIENT_NAME, "PN", value or "x").matches(value or "x")
    assert one(PATIENT_NAME, "PN", value or "x", case_sensitive=True).matches(value or "x")


@given(TEXT, TEXT)
def test_case_insensitive_equality_is_equality_of_upper_case(a: str, b: str) -> None:
    constraint = Constraint(PATIENT_NAME, ConstraintType.EQUAL, (a,), False)
    assert constraint.matches(b) == (upper_with_accents(a) == upper_with_accents(b))


@given(st.text(alphabet="abcXYZ09", min_size=1, max_size=10), st.data())
def test_a_pattern_made_from_a_value_matches_it(value: str, data: st.DataObject) -> None:
    chars = list(value)
    for i in range(len(chars)):
        if data.draw(st.booleans()):
            chars[i] = data.draw(st.sampled_from(["?", "*"]))
    pattern = "".join(chars)
    assert wildcard_regex(pattern, True).fullmatch(value.encode()) is not None


@given(st.text(alphabet="0123456789", min_size=0, max_size=8), st.text(alphabet="0123456789", max_size=8))
def test_a_range_is_two_inclusive_bounds(bound: str, value: str) -> None:
    lower = parse_constraints(STUDY_DATE, "DA", f"{bound}-", False)
    upper = parse_constraints(STUDY_DATE, "DA", f"-{bound}", False)
    assert Lookup.of(lower).matches({STUDY_DATE: value}) == (not bound or value >= bound)
    assert Lookup.of(upper).matches({STUDY_DATE: value}) == (not bound or value <= bound)


@settings(max_examples=300)
@given(ASCII, st.text(alphabet=st.sampled_from("aAbB%_*?\\x"), min_size=1, max_size=6))
def test_sqlite_like_agrees_with_matching_on_ascii(value: str, pattern: str) -> None:
    """Orthanc's SQL (`lower(value) LIKE lower(pattern)`) and its matching accept the same ASCII
    values: the escaping of `%`, `_` and `\\` is right."""
    if "\\" in pattern:
        return  # a backslash makes a list, never a wildcard
    db = sqlite3.connect(":memory:")
    (sql,) = db.execute("SELECT lower(?) LIKE lower(?) ESCAPE '\\'", (value, like_pattern(pattern))).fetchone()
    assert bool(sql) == Constraint(PATIENT_NAME, ConstraintType.WILDCARD, (pattern,), False).matches(value)
