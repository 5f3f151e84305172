"""Tests of `dicomvault.dicom.content.resolve_content`: Orthanc 1.10.1's `/instances/{id}/content/...`.

The files are those of `tests/test_tags_json.py` (built byte by byte there); the expected answers
are what the real Orthanc 1.10.1 sent for them: a list (JSON), the bytes of a value, or the HTTP
status of an error. `test_tags_json.test_matches_the_real_orthanc` also walks /content live.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.dataset import Dataset

from dicomvault.dicom.content import fragments, parse_tag, resolve_content
from dicomvault.errors import DicomVaultError, ErrorCode
from tests.test_tags_json import (
    NUMBERS,
    STRING_VRS,
    TRICKY_STRINGS,
    case_big_endian,
    case_encapsulated,
    case_implicit,
    case_structure,
    generated,
    part10,
    private,
    read,
    saved,
)


def answer(ds: Dataset, path: str) -> Any:
    """What resolve_content answers for a URI path, or the HTTP status of its error."""
    try:
        return resolve_content(ds, [segment for segment in path.split("/") if segment])
    except DicomVaultError as exc:
        return exc.http_status


def check_all(ds: Dataset, expected: dict[str, Any]) -> None:
    got = {path: answer(ds, path) for path in expected}
    assert got == expected


@pytest.fixture(scope="module")
def structure() -> Dataset:
    return read(case_structure())


def test_levels_sequences_items_and_values(structure: Dataset) -> None:
    check_all(structure, EXPECTED_STRUCTURE)


def test_errors_carry_orthanc_codes(structure: Dataset) -> None:
    with pytest.raises(DicomVaultError) as absent:
        resolve_content(structure, ["0008-9999"])
    assert absent.value.code is ErrorCode.UNKNOWN_RESOURCE
    with pytest.raises(DicomVaultError) as malformed:
        resolve_content(structure, ["8-1140"])
    assert malformed.value.code is ErrorCode.UNKNOWN_DICOM_TAG
    assert malformed.value.http_status == 500


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        ("0010-0020", 0x00100020),
        ("0010,0020", 0x00100020),
        ("00100020", 0x00100020),
        ("0040-A170", 0x0040A170),
        ("PatientID", 0x00100020),
        ("RETIRED_StudyComments", 0x00324000),
        ("OverlayRows", 0x60000010),
        ("CurrentFrameFunctionalGroupsSequence", 0x00060001),
    ],
)
def test_parse_tag(text: str, tag: int) -> None:
    assert parse_tag(text) == tag


@pytest.mark.parametrize(
    "text", ["StudyComments", "patientid", "0x00100020", "(0010,0020)", "8-1140", "ScopeOfInventorySequence"]
)
def test_parse_tag_refuses_what_dcmtk_does_not_know(text: str) -> None:
    with pytest.raises(DicomVaultError) as refused:
        parse_tag(text)
    assert refused.value.code is ErrorCode.UNKNOWN_DICOM_TAG


@pytest.mark.parametrize("vr", STRING_VRS)
def test_string_values_keep_dcmtk_padding(vr: str) -> None:
    ds = read(part10("1.2.3.9.112", private([(vr, value) for value in TRICKY_STRINGS])))
    got = [answer(ds, f"0019-{0x1000 + i:04x}") for i in range(len(TRICKY_STRINGS))]
    assert dict(zip(TRICKY_STRINGS, got, strict=True)) == dict(
        zip(TRICKY_STRINGS, EXPECTED_STRING_PADDING[vr], strict=True)
    )


def test_numbers_and_binary_values() -> None:
    ds = read(part10("1.2.3.9.102", private(NUMBERS)))
    got = [answer(ds, f"0019-{0x1000 + i:04x}") for i in range(len(NUMBERS))]
    assert got == EXPECTED_NUMBERS


def test_big_endian_values_are_answered_little_endian() -> None:
    check_all(read(case_big_endian()), EXPECTED_BIG_ENDIAN)


def test_implicit_vr() -> None:
    check_all(read(case_implicit(1)), EXPECTED_IMPLICIT)


def test_encapsulated_pixel_data_lists_the_offset_table_and_fragments() -> None:
    check_all(
        read(case_encapsulated([b"\xff\xd8abcdef", b"\xff\xd8gh", b"ij"], b"\0\0\0\0\x0a\0\0\0")), EXPECTED_ENCAPSULATED
    )
    check_all(read(case_encapsulated([])), EXPECTED_ENCAPSULATED_EMPTY)


def test_fragments_stop_at_the_sequence_delimiter() -> None:
    assert fragments(b"\xfe\xff\x00\xe0\x00\x00\x00\x00\xfe\xff\xdd\xe0\x00\x00\x00\x00trailing") == [b""]


def test_datasets_built_in_code() -> None:
    check_all(generated(1, None), EXPECTED_GENERATED)
    check_all(read(saved(generated(1, None))), EXPECTED_GENERATED)


# ---- Orthanc 1.10.1's answers for these files, as the real server sent them ----------------------

# fmt: off
# case_structure(): URI path -> answer
EXPECTED_STRUCTURE: dict[str, Any] = {
    '': [
        '0008-0001', '0008-0005', '0008-0016', '0008-0018', '0008-0402', '0008-1110', '0008-1140', '0009-0000',
        '0009-1010', '0010-0020', '0011-0010', '0011-0011', '0011-0100', '0011-1001', '0011-1002', '0011-1003',
        '0011-1101', '0013-0010', '0013-1010', '0018-6011', '0019-0010', '0019-1000', '0020-0000', '0020-000d',
        '0020-000e', '0020-3101', '0020-3102', '0028-0008', '0028-0010', '0028-0011', '0028-0100', '0028-0420',
        '0028-0800', '0032-4000', '0038-0004', '5002-0005', '6001-0010', '6002-0010', '7f02-0010', '7fe0-0010',
    ],
    '0008-1140': ['0', '1', '2'],
    '0008-1140/0': ['0008-1150', '0008-1155', '0040-a170'],
    '0008-1140/1': [],
    '0008-1140/2': ['0008-0005', '0008-1030'],
    '0008-1140/3': 404,
    '0008-1140/0/0040-a170': ['0', '1'],
    '0008-1140/0/0040-a170/0': ['0008-0100', '0008-0104'],
    '0008-1140/0/0040-a170/0/0008-0104': b'\xe9t\xe9\x00',
    '0008-1140/0/0040-a170/1': [],
    '0008-1140/2/0008-1030': b'\xc3\xa9\xc3\xa9',
    '0008-1110': ['0', '1'],
    '0008-1110/1/0008-1155': b'9.8\x00',
    '0018-6011': [],
    '0018-6011/0': 404,
    '0018-6011/-1': 404,
    '7fe0-0010': ['0'],
    '7fe0-0010/0': b'\x00\x01\x02\x03\x04\x05\x06\x07\x08\t\n\x0b',
    '7fe0-0010/1': 404,
    '7fe0-0010/0/0': 404,
    '0008-1140/0/0008-1150/0': 404,
    '0008-1140/x': 404,
    '0008-1140/-1': ['0008-0005', '0008-1030'],
    '0008-1140/-2': 404,
    '0008-1140/-0': ['0008-1150', '0008-1155', '0040-a170'],
    '0008-1140/+1': [],
    '0008-1140/00': ['0008-1150', '0008-1155', '0040-a170'],
    '0008-1140/18446744073709551615': ['0008-0005', '0008-1030'],
    '0008-1140/18446744073709551616': 404,
    '0008-1140/-18446744073709551615': [],
    '0008-1140/1.0': 404,
    '0008,1140': ['0', '1', '2'],
    '00081140': ['0', '1', '2'],
    '0008-1140/0/0040-A170/0': ['0008-0100', '0008-0104'],
    'PatientID': b'P9',
    'RETIRED_StudyComments': b'retired\x00',
    'OverlayRows': 404,
    'RETIRED_CodeLabel': b'CL',
    'CodeLabel': 500,
    'FileMetaInformationGroupLength': 404,
    '0008-9999': 404,
    '0002-0010': 404,
    '0019-1000/0/0019-1001': b'in private seq',
    '0009-1010': b'no creator',
    '0013-0010': b'1.2.840.113681 \x00',
    '0008-1140a': 500,
    '8-1140': 500,
    'patientid': 500,
    '0x00100020': 500,
    '(0010,0020)': 500,
    'ScopeOfInventorySequence': 500,
    '0010-0020/0': 404,
    '0008-0005': b'ISO_IR 100',
    '0028-0008': b'3 ',
    '0011-1003': b'\x01\x02',
    '0008-1140/0/0040-a170/-1': [],
    '0008-1140/1/-1': 500,
    '0009-0000': b'\x10\x00\x00\x00',
    '0020-0000': b'\x10\x00\x00\x00',
    'Item': 404,
    '0006-0001': 404,
}

# the value of each of TRICKY_STRINGS, per VR
EXPECTED_STRING_PADDING: dict[str, Any] = {
    'AE': [
        b' x', b' x \x00', b'x\x00', b'', b'x \\y \x00', b'\x00x', b'x\x00 \x00', b'x \x00\x00', b'x\t\r\n', b'ab',
        b'a\\b ',
    ],
    'AS': [
        b' x', b' x \x00', b'x\x00', b'', b'x \\y \x00', b'\x00x', b'x\x00 \x00', b'x \x00\x00', b'x\t\r\n', b'ab',
        b'a\\b ',
    ],
    'CS': [
        b' x', b' x \x00', b'x\x00', b'', b'x \\y \x00', b'\x00x', b'x\x00 \x00', b'x \x00\x00', b'x\t\r\n', b'ab',
        b'a\\b ',
    ],
    'DA': [
        b' x', b' x \x00', b'x\x00', b'', b'x \\y \x00', b'\x00x', b'x\x00 \x00', b'x \x00\x00', b'x\t\r\n', b'ab',
        b'a\\b ',
    ],
    'DS': [
        b' x', b' x \x00', b'x\x00', b'', b'x \\y \x00', b'\x00x', b'x\x00 \x00', b'x \x00\x00', b'x\t\r\n', b'ab',
        b'a\\b ',
    ],
    'DT': [
        b' x', b' x \x00', b'x\x00', b'', b'x \\y \x00', b'\x00x', b'x\x00 \x00', b'x \x00\x00', b'x\t\r\n', b'ab',
        b'a\\b ',
    ],
    'IS': [
        b' x', b' x \x00', b'x\x00', b'', b'x \\y \x00', b'\x00x', b'x\x00 \x00', b'x \x00\x00', b'x\t\r\n', b'ab',
        b'a\\b ',
    ],
    'LO': [
        b' x', b' x \x00', b'x\x00', b'', b'x \\y \x00', b'\x00x', b'x\x00 \x00', b'x \x00\x00', b'x\t\r\n', b'ab',
        b'a\\b ',
    ],
    'LT': [
        b' x', b' x \x00', b'x\x00', b'', b'x \\y \x00', b'\x00x', b'x\x00 \x00', b'x \x00\x00', b'x\t\r\n', b'ab',
        b'a\\b ',
    ],
    'PN': [
        b' x', b' x \x00', b'x\x00', b'', b'x \\y \x00', b'\x00x', b'x\x00 \x00', b'x \x00\x00', b'x\t\r\n', b'ab',
        b'a\\b ',
    ],
    'SH': [
        b' x', b' x \x00', b'x\x00', b'', b'x \\y \x00', b'\x00x', b'x\x00 \x00', b'x \x00\x00', b'x\t\r\n', b'ab',
        b'a\\b ',
    ],
    'ST': [
        b' x', b' x \x00', b'x\x00', b'', b'x \\y \x00', b'\x00x', b'x\x00 \x00', b'x \x00\x00', b'x\t\r\n', b'ab',
        b'a\\b ',
    ],
    'TM': [
        b' x', b' x \x00', b'x\x00', b'', b'x \\y \x00', b'\x00x', b'x\x00 \x00', b'x \x00\x00', b'x\t\r\n', b'ab',
        b'a\\b ',
    ],
    'UC': [
        b' x', b' x \x00', b'x\x00', b'', b'x \\y \x00', b'\x00x', b'x\x00 \x00', b'x \x00\x00', b'x\t\r\n', b'ab',
        b'a\\b ',
    ],
    'UI': [b'x\x00', b'x\x00', b'x\x00', b'', b'x\\y\x00', b'\x00x', b'x\x00', b'x\x00', b'x\x00', b'ab', b'a\\b\x00'],
    'UR': [
        b' x', b' x \x00', b'x\x00', b'', b'x \\y \x00', b'\x00x', b'x\x00 \x00', b'x \x00\x00', b'x\t\r\n', b'ab',
        b'a\\b ',
    ],
    'UT': [
        b' x', b' x \x00', b'x\x00', b'', b'x \\y \x00', b'\x00x', b'x\x00 \x00', b'x \x00\x00', b'x\t\r\n', b'ab',
        b'a\\b ',
    ],
}

# the value of each of NUMBERS
EXPECTED_NUMBERS: list[Any] = [
    b'\x00\x00\x00\x01\xff\xff\x07\x00', b'\x01\x00\x02\x00', b'', b'\x00\x80\xff\x7f\xfb\xff',
    b'\xff\xff\xff\xff\x00\x00\x00\x00', b'\xff\xff\xff\xff\xff\xff\xff\x7f\x00\x00\x00\x80', b'',
    b'\x00\x00\xc0?\xcd\xcc\xcc=\xbc\xa2\xb1[', b'\x00\x00\xc0\x7f',
    b'\x9a\x99\x99\x99\x99\x99\xb9?\x9a\x99\x99\x99\x99\x99\xc9\xbf#B\x92\x0c\xa1\x9c\xc7;',
    b'\x00\x00\x00\x00\x00@\x8f@\x00\x80\xe07y\xc3AC\x00\x00\x00T4o\x9dA\xf1h\xe3\x88\xb5\xf8\xe4>',
    b'\x92\xd5M\x06\xcf\xf0\x80D5X\x00f-\xebA~\x01\x00\x00\x00\x00\x00\x00\x00\xfbY\x8cB\xca\xc0\xf3?',
    b'\x00\x00\x00\x00\x00\x00\xf0\x7f\x00\x00\x00\x00\x00\x00\xf0\xff\x00\x00\x00\x00\x00\x00\x00\x80',
    b'\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00', b'', b' \x00S\x91\x18\x00c\x10', b'\xcd\xab\x01\xef', b'',
    b'\x01\x02\x03\x00', b'ab', b'\x00\x00\x80?', b'abcdefgh', b'abcd', b'abcd', b'\xfb\xff\xff\xff\xff\xff\xff\xff',
    b'\x05\x00\x00\x00\x00\x00\x00\x00', [],
]

# case_big_endian()
EXPECTED_BIG_ENDIAN: dict[str, Any] = {
    '': [
        '0008-0016', '0008-0018', '0008-1140', '0010-0010', '0010-0020', '0018-1310', '0018-9219', '0018-9240',
        '0018-9461', '0020-000d', '0020-000e', '0028-0009', '0028-0010', '0028-0011', '0028-0030', '0028-0100',
        '0028-0106', '0042-0011', '0072-0078', '0072-007c', '7fe0-0010',
    ],
    '0008-0016': b'1.2.840.10008.5.1.4.1.1.7\x00',
    '0008-0018': b'1.2.3.9.107\x00',
    '0008-1140': ['0'],
    '0010-0010': b'Doe^John',
    '0010-0020': b'P9',
    '0018-1310': b'\x00\x00\x00\x01\x00\x01\x00\x00',
    '0018-9219': b'\x00\x00\x00\x00\x00\x00\xf8?',
    '0018-9240': b'\x02\x01',
    '0018-9461': b'\x00\x00\xc0?\x00\x00\x00\xc0',
    '0020-000d': b'1.2.3.1\x00',
    '0020-000e': b'1.2.3.2\x00',
    '0028-0009': b'\x18\x00c\x10',
    '0028-0010': b'\x02\x00',
    '0028-0011': b'\x02\x00\x03\x00',
    '0028-0030': b'0.5\\0.5 ',
    '0028-0100': b'\x10\x00',
    '0028-0106': b'\xff\xff',
    '0042-0011': b'abcd',
    '0072-0078': b'\x07\x00\x00\x00',
    '0072-007c': b'\xf9\xff\xff\xff',
    '7fe0-0010': ['0'],
    '7fe0-0010/0': b'\x01\x00\x02\x00\x03\x00\x04\x00',
    '0008-1140/0/0028-0010': b'\t\x00',
}

# case_implicit(1)
EXPECTED_IMPLICIT: dict[str, Any] = {
    '': [
        '0004-1200', '0006-0001', '0008-0008', '0008-0016', '0008-0018', '0008-0400', '0008-0402', '0010-0020',
        '0011-0010', '0011-1000', '0013-1000', '0018-0050', '0018-9219', '0018-9810', '0020-0000', '0020-000d',
        '0020-000e', '0020-3100', '0022-1452', '0028-0103', '0028-0104', '0028-0106', '0028-0109', '0028-0121',
        '0028-0410', '0028-1101', '0028-1200', '0028-3002', '0028-3006', '0038-0004', '0040-9211', '0060-3004',
        '5000-0005', '6000-0010', '6000-3000', '7fe0-0010',
    ],
    '0004-1200': b'\x01\x00\x00\x00',
    '0006-0001': ['0'],
    '0008-0008': b'ORIGINAL\\PRIMARY \x00',
    '0008-0016': b'1.2.840.10008.5.1.4.1.1.7\x00',
    '0008-0018': b'1.2.3.9.106.1\x00',
    '0008-0400': b'\xfe\xff\x00\xe0\x0c\x00\x00\x00\x08\x00P\x11\x04\x00\x00\x001.1\x00',
    '0008-0402': b'newtag',
    '0010-0020': b'P9',
    '0011-0010': b'ACME',
    '0011-1000': b'private\x00',
    '0013-1000': b'no creator',
    '0018-0050': b'1.5 ',
    '0018-9219': b'\x00\x00\x00\x00\x00\x00\xf8?',
    '0018-9810': b'\xff\xff',
    '0020-0000': b'\x10\x00\x00\x00',
    '0020-000d': b'1.2.3.1\x00',
    '0020-000e': b'1.2.3.2\x00',
    '0020-3100': b'ABCD',
    '0022-1452': b'\xff\xff',
    '0028-0103': b'\x01\x00',
    '0028-0104': b'\xff\xff',
    '0028-0106': b'\xff\xff',
    '0028-0109': b'\xff\xff',
    '0028-0121': b'\xff\xff',
    '0028-0410': b'\x01\x00',
    '0028-1101': b'\xff\xff',
    '0028-1200': b'\xff\xff',
    '0028-3002': b'\xff\xff',
    '0028-3006': b'\xff\xff',
    '0038-0004': ['0'],
    '0040-9211': b'\xff\xff',
    '0060-3004': b'\xff\xff',
    '5000-0005': b'\x01\x00',
    '6000-0010': b'\x02\x00',
    '6000-3000': b'\x00\x00',
    '7fe0-0010': ['0'],
    '0006-0001/0': ['0008-1150'],
    '7fe0-0010/0': b'\x01\x00\x02\x00',
}

# three fragments and an offset table
EXPECTED_ENCAPSULATED: dict[str, Any] = {
    '7fe0-0010': ['0', '1', '2', '3'],
    '7fe0-0010/0': b'\x00\x00\x00\x00\n\x00\x00\x00',
    '7fe0-0010/1': b'\xff\xd8abcdef',
    '7fe0-0010/2': b'\xff\xd8gh',
    '7fe0-0010/3': b'ij',
    '7fe0-0010/4': 404,
    '7fe0-0010/-1': 404,
    '7fe0-0010/+1': b'\xff\xd8abcdef',
    '7fe0-0010/18446744073709551615': 404,
    '7fe0-0010/1/0': 404,
}

# an empty offset table, no fragment
EXPECTED_ENCAPSULATED_EMPTY: dict[str, Any] = {'7fe0-0010': ['0'], '7fe0-0010/0': b'', '7fe0-0010/1': 404}

# generated(1, None), saved by pydicom
EXPECTED_GENERATED: dict[str, Any] = {
    '': [
        '0008-0016', '0008-0018', '0008-0020', '0008-0030', '0008-0050', '0008-0060', '0008-0080', '0008-1030',
        '0008-103e', '0008-1140', '0009-1010', '0010-0010', '0010-0020', '0010-0030', '0010-0040', '0011-0010',
        '0011-1001', '0011-1002', '0011-1003', '0018-1164', '0018-1310', '0018-6011', '0018-9089', '0018-9461',
        '0020-000d', '0020-000e', '0020-0010', '0020-0011', '0020-0013', '0020-0032', '0020-0037', '0020-9158',
        '0028-0002', '0028-0004', '0028-0009', '0028-0010', '0028-0011', '0028-0030', '0028-0100', '0028-0101',
        '0028-0102', '0028-0103', '0028-0106', '0028-0107', '0028-1052', '0028-1053', '0032-4000', '0042-0011',
        '0072-0078', '0072-007e', '0072-0082', '7fe0-0010',
    ],
    '0010-0010': b'Doe^John',
    '0028-0030': b'0.1234567890123\\2.0 ',
    '0018-1310': b'\x00\x00\x00\x01\x00\x01\x00\x00',
    '0028-0106': b'\xfb\xff',
    '0020-9158': b'hello\r\nworld',
    '0008-1140': ['0', '1'],
    '0008-1140/0': ['0008-1150', '0008-1155', '0040-a170'],
    '0008-1140/0/0040-a170/0/0008-0104': b'Thing ',
    '7fe0-0010': ['0'],
    '7fe0-0010/0': (
        b'\x01\x00\x02\x00\x03\x00\x04\x00\x05\x00\x06\x00\x07\x00\x08\x00\t\x00\n\x00\x0b\x00\x0c\x00\r\x00\x0e'
        b'\x00\x0f\x00\x10\x00\x11\x00\x12\x00\x13\x00\x14\x00\x15\x00\x16\x00\x17\x00\x18\x00\x19\x00\x1a\x00\x1b'
        b'\x00\x1c\x00\x1d\x00\x1e\x00\x1f\x00 \x00!\x00"\x00#\x00$\x00%\x00&\x00\'\x00(\x00)\x00*\x00+\x00,\x00-'
        b'\x00.\x00/\x000\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00:\x00;\x00<\x00=\x00>\x00?\x00@\x00'
    ),
    '0011-1003': b'\x01\x02\x03\x04',
    '0028-0009': b'\x18\x00c\x10 \x00S\x91',
}
# fmt: on
