"""Hostile DICOM files: fuzzing of the parser path, and the element declaring 4 GiB.

Fuzzing: mutations of valid files (byte flips, truncations, inserted
and duplicated elements, random length fields, VR changes, bad transfer syntax UIDs, huge VM
strings, deeply nested undefined-length sequences) fed to `dicom.parsing.parse_instance` (the
function the store path runs in its workers) and to the full in-process `POST /instances`.

Each input must end in a clean result or a `DicomVaultError` (a 4xx with Orthanc's JSON error body
over REST), never another exception, never a 500, never a hang (a per-case deadline and the
module's pytest-timeout).

The element declaring 4 GiB (explicit VR OB/OW/UN with 0xFFFFFFF0 or 0xFFFFFFFE, implicit VR, in the
meta header and in the data set): refused as a 400 over REST (in process; over a real socket with the
server's peak memory in test_security_network.py), a DIMSE failure over C-STORE, nothing stored.

Case counts: the "ci" profile runs >= 2,000 derandomized cases per input (marked slow); the fast
selection runs the same tests with 100. Each test prints how many cases it ran.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Callable, Iterator
from datetime import timedelta

import pydicom
import pynetdicom.association
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, JPEGBaseline8Bit
from starlette.testclient import TestClient

from dicomvault.dicom.parsing import identify_instance, parse_instance
from dicomvault.errors import DicomVaultError
from dicomvault.network.scp import DicomServer
from dicomvault.server import Server
from tests.dicomgen import Spec, make_bytes, make_dataset
from tests.dicomnet import CT_IMAGE_STORAGE, EXPLICIT_LE, IMPLICIT_LE, associate
from tests.routes import assert_no_server_error, enumerate_routes, observable_state

pytestmark = [pytest.mark.timeout(600), pytest.mark.filterwarnings("ignore::UserWarning")]  # pydicom on garbage

CI_CASES = 2000
READ_BACK = 25  # stored fuzzed instances read back through every GET route of an instance
FAST_CASES = 100
_COMMON = {
    "derandomize": True,  # the same cases on every run: a failure in CI reproduces locally
    "database": None,
    "deadline": timedelta(seconds=10),  # a hang shows as a DeadlineExceeded, not a stuck run
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    "print_blob": True,
}
settings.register_profile("ci", max_examples=CI_CASES, **_COMMON)  # type: ignore[arg-type]
settings.register_profile("fast", max_examples=FAST_CASES, **_COMMON)  # type: ignore[arg-type]
PROFILES = [
    pytest.param("fast", id="fast"),
    pytest.param("ci", id="ci", marks=pytest.mark.slow),
]


# ---- valid files to mutate --------------------------------------------------------------------------


def implicit_bytes(ds: Dataset) -> bytes:
    """The data set alone, implicit VR little endian (what a file without a Part 10 header holds)."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    write_dataset(fp, ds)
    return fp.getvalue()


def _explicit_le() -> bytes:
    return make_bytes(Spec(seed=11))


def _with_sequence() -> bytes:
    ds = make_dataset(Spec(seed=12))
    item = Dataset()
    item.CodeValue = "T-D3000"
    item.CodeMeaning = "Chest"
    ds.AnatomicRegionSequence = Sequence([item])
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _implicit_no_header() -> bytes:
    return implicit_bytes(make_dataset(Spec(seed=13)))


def _big_endian() -> bytes:
    ds = make_dataset(Spec(seed=14))
    ds.file_meta.TransferSyntaxUID = UID(ExplicitVRBigEndian)
    out = io.BytesIO()
    ds.save_as(out, implicit_vr=False, little_endian=False, enforce_file_format=True)
    return out.getvalue()


def _deflated() -> bytes:
    ds = make_dataset(Spec(seed=15))
    ds.file_meta.TransferSyntaxUID = UID(DeflatedExplicitVRLittleEndian)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


BASES = [_explicit_le(), _with_sequence(), _implicit_no_header(), _big_endian(), _deflated()]
VRS = [
    b"AE",
    b"CS",
    b"DA",
    b"DS",
    b"IS",
    b"LO",
    b"OB",
    b"OW",
    b"PN",
    b"SH",
    b"SQ",
    b"UI",
    b"UL",
    b"UN",
    b"US",
    b"UT",
    b"XX",
    b"\0\0",
]
SYNTAXES = [
    b"1.2.840.10008.1.2",
    b"1.2.840.10008.1.2.1",
    b"1.2.840.10008.1.2.2",
    b"1.2.840.10008.1.2.1.99",
    JPEGBaseline8Bit.encode(),
    b"1.2.3.4.5.6.7.8.9",
    b"",
    b"\xff\xfe garbage",
    b"1.2.840.10008.1.2.1" * 20,
]


def element_offsets(raw: bytes) -> list[int]:
    """Offsets of the top-level elements of a file (explicit VR little endian walk; good enough to
    aim mutations at element boundaries, even for the other encodings)."""
    pos = 132 if raw[128:132] == b"DICM" else 0
    out: list[int] = []
    while pos + 8 <= len(raw) and len(out) < 200:
        out.append(pos)
        vr = raw[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
            length = struct.unpack_from("<I", raw, pos + 8)[0]
            if length == 0xFFFFFFFF:
                break
            pos += 12 + length
        elif vr.isalpha():
            pos += 8 + struct.unpack_from("<H", raw, pos + 6)[0]
        else:
            pos += 8 + struct.unpack_from("<I", raw, pos + 4)[0]
    return out or [0]


OFFSETS = [element_offsets(b) for b in BASES]


def nested_sequences(depth: int, explicit: bool = True) -> bytes:
    """`depth` undefined-length sequences, one inside the other's item (ReferencedSeriesSequence)."""
    head = b"\x08\x00\x15\x11" + (b"SQ\x00\x00" if explicit else b"") + b"\xff\xff\xff\xff"
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    item_end = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    seq_end = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return (head + item) * depth + (item_end + seq_end) * depth


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    index = draw(st.integers(0, len(BASES) - 1))
    raw = bytearray(BASES[index])
    offsets = OFFSETS[index]
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "duplicate", "length", "vr", "syntax", "vm", "nest"]))
        at = draw(st.sampled_from(offsets)) if op in ("duplicate", "length", "vr", "vm", "nest") else 0
        if op == "flip" and raw:
            for _ in range(draw(st.integers(1, 8))):
                pos = draw(st.integers(0, len(raw) - 1))
                raw[pos] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            raw = raw[: draw(st.integers(0, len(raw)))]
        elif op == "insert":
            pos = draw(st.integers(0, len(raw)))
            raw[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "duplicate" and at < len(raw):
            size = draw(st.integers(8, 64))
            raw[at:at] = raw[at : at + size]
        elif op == "length" and at + 12 <= len(raw):
            if draw(st.booleans()):
                raw[at + 8 : at + 12] = struct.pack(
                    "<I",
                    draw(
                        st.sampled_from([0xFFFFFFFF, 0xFFFFFFF0, 0xFFFFFFFE, 0x7FFFFFFF, 0, 1, 3])
                        | st.integers(0, 2**32 - 1)
                    ),
                )
            else:
                raw[at + 6 : at + 8] = struct.pack("<H", draw(st.integers(0, 0xFFFF)))
        elif op == "vr" and at + 6 <= len(raw):
            raw[at + 4 : at + 6] = draw(st.sampled_from(VRS))
        elif op == "syntax":
            found = raw.find(b"\x02\x00\x10\x00UI")
            if found >= 0:
                uid = draw(st.sampled_from(SYNTAXES))
                uid += b"\0" * (len(uid) % 2)
                old = struct.unpack_from("<H", raw, found + 6)[0]
                raw[found + 6 : found + 8 + old] = struct.pack("<H", len(uid) & 0xFFFF) + uid
        elif op == "vm":
            count = draw(st.sampled_from([100, 1000, 30000]))
            value = b"\\".join([b"1.5"] * count)
            value += b" " * (len(value) % 2)
            element = b"\x18\x00\x50\x00DS" + struct.pack("<H", len(value) & 0xFFFF) + value[:0xFFFE]
            raw[at:at] = element
        elif op == "nest":
            raw[at:at] = nested_sequences(draw(st.sampled_from([1, 8, 63, 64, 65, 200, 2000])))
    return bytes(raw)


def run_counted(profile: str, body: Callable[[bytes], None]) -> int:
    """Run `body` on each generated input under `profile`; the number of cases run."""
    count = 0

    @settings(settings.get_profile(profile))
    @given(mutated())
    def case(raw: bytes) -> None:
        nonlocal count
        count += 1
        body(raw)

    case()
    return count


@pytest.mark.parametrize("profile", PROFILES)
def test_parser_refuses_cleanly(profile: str) -> None:
    def body(raw: bytes) -> None:
        try:
            parsed = parse_instance(raw)
        except DicomVaultError as exc:
            assert exc.http_status < 500, (exc.code, exc.details)
        else:
            assert parsed.sop_uid and parsed.study_uid and parsed.series_uid
        try:
            identify_instance(raw)
        except DicomVaultError as exc:
            assert exc.http_status < 500, (exc.code, exc.details)

    count = run_counted(profile, body)
    print(f"parse_instance/identify_instance: {count} cases ({profile})")
    assert count >= settings.get_profile(profile).max_examples * 0.95


@pytest.fixture
def rest(make_server: Callable[..., Server]) -> Iterator[tuple[Server, TestClient]]:
    # No fsync: the fuzz cases test parsing and refusal, not durability (and stay fast).
    server = make_server(StorageCompression=False)
    server.context.accessor.area._fsync = False  # type: ignore[attr-defined]
    with TestClient(server.app(), raise_server_exceptions=False, client=("127.0.0.1", 1)) as client:  # type: ignore[arg-type]
        yield server, client


@pytest.mark.parametrize("profile", PROFILES)
def test_rest_upload_never_answers_500(rest: tuple[Server, TestClient], profile: str) -> None:
    server, client = rest
    outcomes: dict[int, int] = {}

    def body(raw: bytes) -> None:
        answer = client.post("/instances", content=raw, headers={"Content-Type": "application/dicom"})
        outcomes[answer.status_code] = outcomes.get(answer.status_code, 0) + 1
        assert answer.status_code < 500, (answer.status_code, answer.text)
        if answer.status_code >= 400:
            error = answer.json()
            assert error["HttpStatus"] == answer.status_code and "OrthancStatus" in error
        else:
            stored = answer.json()
            assert client.get(f"/instances/{stored['ID']}/file").status_code == 200

    count = run_counted(profile, body)
    print(f"POST /instances: {count} cases ({profile}), statuses {sorted(outcomes.items())}")
    assert count >= settings.get_profile(profile).max_examples * 0.95
    # Whatever was stored is whole and readable (the index and the files agree), and every GET route
    # of an instance (tags, content, pixels, ...) answers the odd files accepted without a 500.
    stored_ids = client.get("/instances").json()
    for public_id in stored_ids:
        assert client.get(f"/instances/{public_id}/tags").status_code == 200
    routes = [t for m, t in enumerate_routes(server.app()) if m == "GET" and t.startswith("/instances/{id}/")]
    for public_id in stored_ids[:READ_BACK]:
        for template in routes:
            url = template.replace("{id}", public_id)
            url = re.sub(r"\{(frame|index)\}", "0", url)
            url = re.sub(r"\{name\}", "1", url)  # metadata / attachment 1 (the DICOM file's)
            url = re.sub(r"\{path(:path)?\}", "0010-0010", url)
            assert_no_server_error(client.get(url), "GET", url)


@pytest.mark.parametrize("depth", [64, 65, 5000])
def test_deep_sequences_are_refused_or_parsed_without_recursion_error(depth: int) -> None:
    raw = bytearray(_explicit_le())
    at = element_offsets(bytes(raw))[-2]  # before the pixel data
    raw[at:at] = nested_sequences(depth)
    try:
        parse_instance(bytes(raw))
    except DicomVaultError as exc:
        assert exc.http_status == 400


# ---- the DICOM element declaring 4 GiB -----------------------------------------------------------------


def huge_length_files() -> dict[str, bytes]:
    """Valid files with one length field rewritten to (almost) 4 GiB, in each encoding and place."""
    out: dict[str, bytes] = {}
    raw = bytearray(make_bytes(Spec(seed=90)))
    pixel = raw.index(b"\xe0\x7f\x10\x00OW")
    for name, length in [("explicit-OW-pixels", 0xFFFFFFF0), ("explicit-OW-undefined", 0xFFFFFFFE)]:
        changed = bytearray(raw)
        changed[pixel + 8 : pixel + 12] = struct.pack("<I", length)
        out[name] = bytes(changed)
    # An explicit VR UN element in the data set, before the identifiers.
    un = bytearray(raw)
    first = _dataset_offset(raw)
    un[first:first] = b"\x09\x00\x10\x00UN\x00\x00" + struct.pack("<I", 0xFFFFFFF0) + b"abcd"
    out["explicit-UN-dataset"] = bytes(un)
    # The meta header: an OB element (FileMetaInformationVersion) claiming 4 GiB.
    meta = bytearray(raw)
    version = meta.index(b"\x02\x00\x01\x00OB")
    meta[version + 8 : version + 12] = struct.pack("<I", 0xFFFFFFF0)
    out["meta-OB"] = bytes(meta)
    # Implicit VR little endian, no Part 10 header: a 4-byte length after each tag.
    ds = make_dataset(Spec(seed=91))
    body = bytearray(implicit_bytes(ds))
    tag = body.index(b"\xe0\x7f\x10\x00")
    for name, length in [("implicit-pixels", 0xFFFFFFFE), ("implicit-pixels-fff0", 0xFFFFFFF0)]:
        changed = bytearray(body)
        changed[tag + 4 : tag + 8] = struct.pack("<I", length)
        out[name] = bytes(changed)
    early = bytearray(body)
    early[0:0] = b"\x09\x00\x10\x00" + struct.pack("<I", 0xFFFFFFFE) + b"abcd"
    out["implicit-first-element"] = bytes(early)
    return out


def _dataset_offset(raw: bytes | bytearray) -> int:
    pos = 132
    while raw[pos : pos + 2] == b"\x02\x00":
        if raw[pos + 4 : pos + 6] in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
            pos += 12 + struct.unpack_from("<I", raw, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", raw, pos + 6)[0]
    return pos


HUGE = huge_length_files()


@pytest.mark.parametrize("case", sorted(HUGE))
def test_element_declaring_4_gib_over_rest(rest: tuple[Server, TestClient], case: str) -> None:
    server, client = rest
    before = observable_state(server, client, None)
    answer = client.post("/instances", content=HUGE[case])
    assert 400 <= answer.status_code < 500, (case, answer.status_code, answer.text)
    assert answer.json()["HttpStatus"] == answer.status_code
    assert observable_state(server, client, None) == before


@pytest.mark.parametrize("case", sorted(HUGE))
def test_element_declaring_4_gib_parsed_directly(case: str) -> None:
    with pytest.raises(DicomVaultError):
        parse_instance(HUGE[case])
    if "pixels" in case or "OW" in case:
        return  # identify_instance reads the header only (the server validates): pixels are not its business
    with pytest.raises(DicomVaultError):
        identify_instance(HUGE[case])


@pytest.mark.parametrize(
    ("case", "syntax"),
    [
        ("explicit-UN-dataset", EXPLICIT_LE),
        ("explicit-OW-pixels", EXPLICIT_LE),
        ("explicit-OW-undefined", EXPLICIT_LE),
        ("implicit-pixels", IMPLICIT_LE),
        ("implicit-first-element", IMPLICIT_LE),
    ],
)
def test_element_declaring_4_gib_over_c_store(
    rest: tuple[Server, TestClient], monkeypatch: pytest.MonkeyPatch, case: str, syntax: str
) -> None:
    server, client = rest
    dicom = DicomServer(server.context)
    port = dicom.start("127.0.0.1", 0)
    try:
        before = observable_state(server, client, None)
        raw = HUGE[case]
        data_set = raw[_dataset_offset(raw) :] if raw[128:132] == b"DICM" else raw
        monkeypatch.setattr(pynetdicom.association, "encode", lambda ds, *args: data_set)
        with associate(port, [(CT_IMAGE_STORAGE, [syntax])], called="VAULT") as assoc:
            assert assoc.is_established
            status = assoc.send_c_store(pydicom.dcmread(io.BytesIO(make_bytes(Spec(seed=90)))))
        assert "Status" not in status or 0xA000 <= int(status.Status) <= 0xCFFF, hex(int(status.Status))
        monkeypatch.undo()
        assert observable_state(server, client, None) == before
    finally:
        dicom.close()
