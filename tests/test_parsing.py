"""Parsing one DICOM file: public ids as Orthanc computes them, main tags, and refusals."""

from __future__ import annotations

import io
import struct

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.uid import UID, ExplicitVRBigEndian, ImplicitVRLittleEndian

from dicomvault.dicom.parsing import parse_instance, public_id
from dicomvault.enums import ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from tests.dicomgen import Spec, make_bytes, make_dataset


def test_public_ids_match_orthanc() -> None:
    # Values answered by Orthanc 1.10.1 for this very file.
    parsed = parse_instance(make_bytes(seed=1))
    assert parsed.patient_id == "40048daa-ea797422-2c5d7c48-ee36c45c-83ed8e7b"
    assert parsed.study_id == "4e16caa3-61ada511-9ca4cef3-9a76a871-a9005480"
    assert parsed.series_id == "fcb5d03d-194a99b6-64483e20-5a7ad92f-d6f6ac29"
    assert parsed.instance_id == "889deaac-20f18edc-8e6fde36-ada71019-aab6861d"
    assert parsed.pixel_data_offset == 818
    assert parsed.transfer_syntax == "1.2.840.10008.1.2.1"


def test_missing_patient_id_hashes_empty_string() -> None:
    parsed = parse_instance(make_bytes(seed=4, patient_id=None))
    assert parsed.patient_id == "da39a3ee-5e6b4b0d-3255bfef-95601890-afd80709" == public_id("")


def test_main_tags_per_level() -> None:
    parsed = parse_instance(make_bytes(seed=1))
    series = dict(parsed.main_tags[ResourceType.SERIES])
    assert series[0x00080060] == "CT"
    assert series[0x00200037] == "1.0\\0.0\\0.0\\0.0\\1.0\\0.0"  # padding removed, values kept raw
    assert dict(parsed.main_tags[ResourceType.PATIENT])[0x00100010] == "Doe^John"


@pytest.mark.parametrize("missing", ["study_uid", "series_uid", "sop_uid"])
def test_missing_uid_is_inexistent_tag(missing: str) -> None:
    with pytest.raises(DicomVaultError) as info:
        parse_instance(make_bytes(Spec(seed=3, **{missing: ""})))  # type: ignore[arg-type]
    assert info.value.code is ErrorCode.INEXISTENT_TAG


@pytest.mark.parametrize("cut", [10, 100, 131, 500, -50, -1])
def test_truncated_is_bad_file_format(cut: int) -> None:
    raw = make_bytes(seed=6)
    with pytest.raises(DicomVaultError) as info:
        parse_instance(raw[:cut])
    assert info.value.code in (ErrorCode.BAD_FILE_FORMAT, ErrorCode.INEXISTENT_TAG)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", ErrorCode.BAD_FILE_FORMAT),
        (b"garbage\n", ErrorCode.BAD_FILE_FORMAT),
        (b"DICM" * 100, ErrorCode.BAD_FILE_FORMAT),
        # Zeros parse as an empty data set, in DCMTK too: Orthanc 1.10.1 answers "Inexistent tag".
        (b"\x00" * 1000, ErrorCode.INEXISTENT_TAG),
    ],
)
def test_garbage_and_empty(body: bytes, code: ErrorCode) -> None:
    with pytest.raises(DicomVaultError) as info:
        parse_instance(body)
    assert info.value.code is code


def test_element_claiming_four_gigabytes_is_refused() -> None:
    ds = make_dataset(Spec(seed=7))
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    raw = bytearray(out.getvalue())
    # Rewrite the PixelData length field (explicit VR OW: tag, VR, 2 reserved, 4-byte length).
    pos = raw.index(b"\xe0\x7f\x10\x00OW")
    raw[pos + 8 : pos + 12] = struct.pack("<I", 0xFFFFFFF0)
    with pytest.raises(DicomVaultError) as info:
        parse_instance(bytes(raw))
    assert info.value.code is ErrorCode.BAD_FILE_FORMAT


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_other_transfer_syntaxes(syntax: str) -> None:
    ds = make_dataset(Spec(seed=8))
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    out = io.BytesIO()
    ds.save_as(
        out,
        enforce_file_format=True,
        little_endian=syntax != ExplicitVRBigEndian,
        implicit_vr=syntax == ImplicitVRLittleEndian,
    )
    parsed = parse_instance(out.getvalue())
    assert parsed.transfer_syntax == syntax
    assert parsed.instance_id == parse_instance(make_bytes(seed=8)).instance_id


def test_file_without_part10_header() -> None:
    ds = make_dataset(Spec(seed=9))
    out = DicomBytesIO()
    out.is_implicit_VR = True
    out.is_little_endian = True
    pydicom.filewriter.write_dataset(out, ds)  # bare data set, as some modalities send
    parsed = parse_instance(out.getvalue())
    assert parsed.sop_uid == ds.SOPInstanceUID


def test_sequences_are_walked() -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    item = Dataset()
    item.CodeValue = "123"
    ds = make_dataset(Spec(seed=10))
    ds.ProcedureCodeSequence = Sequence([item, Dataset()])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    raw = out.getvalue()
    assert parse_instance(raw).sop_uid == ds.SOPInstanceUID


@pytest.mark.parametrize("encoding", ["Latin1", "Utf8"])
def test_find_tags_are_what_a_find_reading_the_file_sees(encoding: str) -> None:
    """Schema 2 indexes INSTANCE_FIND_TAGS at ingest: their values must equal what a find that
    reads the file compares (`file_strings`), for every file of the test corpora, so that answering
    from the index changes no answer."""
    from dicomvault.dicom.main_tags import INSTANCE_FIND_TAG_SET
    from dicomvault.find.finder import file_strings
    from tests.differential_cases import CORPUS
    from tests.find_corpus import FIND_CORPUS
    from tests.fixtures.generate_fixture import files

    corpus = [item.data for item in CORPUS + FIND_CORPUS] + files()
    extra = make_dataset(Spec(seed=3))
    extra.PatientAge = "042Y"
    extra.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    extra.PerformingPhysicianName = "Ünal^Özlem"
    extra.PatientWeight = "70.5"
    buffer = io.BytesIO()
    extra.save_as(buffer, enforce_file_format=True)
    corpus.append(buffer.getvalue())
    seen: set[int] = set()
    for data in corpus:
        parsed = parse_instance(data, encoding)
        expected = {tag: value for tag, value in file_strings(data, encoding).items() if tag in INSTANCE_FIND_TAG_SET}
        assert dict(parsed.find_tags) == expected
        seen |= set(expected)
    assert len(seen) >= 8  # the corpora exercise most of the list


def test_identify_instance_agrees_with_parse_instance() -> None:
    """The client-side identification (import's classifier) gives the same public id and pixel
    presence as the full parse, over every corpus, deflated and pixel-less files included."""
    from dicomvault.dicom.parsing import identify_instance
    from tests.differential_cases import CORPUS
    from tests.find_corpus import FIND_CORPUS
    from tests.fixtures.generate_fixture import files

    corpus = [item.data for item in CORPUS + FIND_CORPUS] + files()
    no_pixels = make_dataset(Spec(seed=8))
    del no_pixels.PixelData
    for ds in (no_pixels,):
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        corpus.append(buffer.getvalue())
    for data in corpus:
        parsed = parse_instance(data)
        identity = identify_instance(data)
        assert identity.instance_id == parsed.instance_id
        assert identity.transfer_syntax in ("", parsed.transfer_syntax)
        if parsed.transfer_syntax != "1.2.840.10008.1.2.1.99":
            assert identity.has_pixel_data == (parsed.pixel_data_offset is not None)
    assert not identify_instance(corpus[-1]).has_pixel_data
    with pytest.raises(DicomVaultError):
        identify_instance(b"not dicom at all" * 20)
