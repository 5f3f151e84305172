"""The pixel-decoding routes against the real Orthanc 1.10.1: the same files uploaded to both, the
same requests, then the same status, the same Content-Type, and the same pixels (PNG decoded with
Pillow, `.npy` loaded with numpy, Matlab text compared as text, raw frames as bytes).

Every syntax Orthanc 1.10.1 decodes is compared: native, RLE, JPEG baseline (within a step: two
libjpeg builds), and exactly, lossless JPEG (processes 14 and 14 SV1, encoded by DCMTK) and JPEG-LS
(lossless and near-lossless, encoded by DCMTK and by CharLS through pydicom), whose decoders here
(GDCM, CharLS) are not Orthanc's (DCMTK's). Frames whose codestream declares a larger image than
their header are refused before decoding (Orthanc refuses them too, after).

Tested on dicomvault alone: the codestream headers; a syntax no installed decoder handles (HTJ2K);
JPEG 2000, which we decode (Orthanc 1.10.1 as packaged does not); and one deliberate deviation:
JPEG-LS of signed pixels stored on fewer bits than allocated is sign-extended here (Orthanc 1.10.1
answers the unsigned bit pattern).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.uid import JPEGLSLossless, RLELossless
from starlette.testclient import TestClient

from dicomvault.dicom.codestreams import CodestreamGeometry, codestream_geometry
from dicomvault.dicom.pixels import decode_frame, image_info
from dicomvault.errors import DicomVaultError, ErrorCode
from tests.dicomgen import Spec, dcmtk_compress, make_dataset, to_bytes, with_encapsulated, with_pixels
from tests.orthanc import OrthancServer, orthanc_available
from tests.servers import RunningServer

LOSSLESS_JPEG_SV1 = "1.2.840.10008.1.2.4.70"
LOSSLESS_JPEG = "1.2.840.10008.1.2.4.57"
JPEG_LS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR = "1.2.840.10008.1.2.4.81"
HTJ2K = "1.2.840.10008.1.2.4.201"


def _ct(seed: int, rows: int = 4, columns: int = 5, **extra: Any) -> Any:
    return make_dataset(Spec(seed=seed, rows=rows, columns=columns, extra=extra))


def _jpeg(array: np.ndarray[Any, Any]) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG", quality=95)
    return out.getvalue()


RAMP = np.arange(20, dtype=np.uint16).reshape(4, 5)
GRAY8 = ((np.arange(256) * 3) % 256).astype(np.uint8).reshape(16, 16)
COLOR = ((np.arange(16 * 16 * 3) * 7) % 256).astype(np.uint8).reshape(16, 16, 3)
SIGNED12 = np.array([[-2000, -5, 0], [300, 1000, 2047]], dtype=np.int16)


def _cases() -> dict[str, bytes]:
    ramp, gray8, color = RAMP, GRAY8, COLOR
    cases: dict[str, bytes] = {
        "ct16s": to_bytes(_ct(101)),
        "u8": to_bytes(with_pixels(_ct(102, RescaleIntercept=0), (ramp * 13).astype(np.uint8))),
        "m1u16": to_bytes(with_pixels(_ct(103), ramp * 100, photometric="MONOCHROME1")),
        "rgb": to_bytes(with_pixels(_ct(104), color[:4, :5], photometric="RGB")),
        "rgb-planar": to_bytes(with_pixels(_ct(105), color[:4, :5], photometric="RGB", planar=True)),
        "multiframe": to_bytes(with_pixels(_ct(106), (np.arange(60, dtype=np.uint16) * 50).reshape(3, 4, 5))),
        "signed12-window": to_bytes(
            with_pixels(
                _ct(107, WindowCenter=40, WindowWidth=400),
                np.array([[-2000, -5, 0], [300, 1000, 2047]], dtype=np.int16),
                bits_stored=12,
            )
        ),
        "constant": to_bytes(with_pixels(_ct(108), np.full((2, 2), 7, dtype=np.int16))),
        "no-pixels": _without_pixels(109),
    }
    rle = _ct(110)
    rle.compress("1.2.840.10008.1.2.5")
    cases["rle"] = to_bytes(rle)
    rle_rgb = with_pixels(_ct(111), color, photometric="RGB")
    rle_rgb.compress("1.2.840.10008.1.2.5")
    cases["rle-rgb"] = to_bytes(rle_rgb)
    jpeg = with_pixels(_ct(112, RescaleIntercept=0), gray8)
    cases["jpeg-gray"] = to_bytes(with_encapsulated(jpeg, [_jpeg(gray8)], "1.2.840.10008.1.2.4.50"))
    jpeg_color = with_pixels(_ct(113), color, photometric="RGB")
    jpeg_color.PhotometricInterpretation = "YBR_FULL_422"
    cases["jpeg-color"] = to_bytes(with_encapsulated(jpeg_color, [_jpeg(color)], "1.2.840.10008.1.2.4.50"))
    return cases | _lossless_cases()


def _encoded(ds: Dataset, syntax: str, tool: str, *arguments: str) -> bytes:
    """`ds` compressed by a DCMTK converter, checked to be in `syntax` (DCMTK falls back to
    another syntax rather than fail for some inputs)."""
    data = dcmtk_compress(to_bytes(ds), tool, *arguments)
    assert dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax, tool
    return data


def _charls(ds: Dataset) -> bytes:
    """`ds` compressed to JPEG-LS lossless by CharLS (pyjpegls) through pydicom."""
    ds.compress(JPEGLSLossless, encoding_plugin="pyjpegls")
    return to_bytes(ds)


def _frame_of(data: bytes) -> bytes:
    ds = dcmread(io.BytesIO(data))
    return bytes(get_frame(ds.PixelData, 0, number_of_frames=1))


def _lossless_cases() -> dict[str, bytes]:
    """Lossless JPEG and JPEG-LS: the names start neither with `jpeg` (no tolerance: same pixels
    exactly) nor share a SOP instance UID with another case (seeds 120+)."""
    frames = (np.arange(60, dtype=np.uint16) * 50).reshape(3, 4, 5)
    sv1, p14, jls, near = (
        (LOSSLESS_JPEG_SV1, "dcmcjpeg", "+e1"),
        (LOSSLESS_JPEG, "dcmcjpeg", "+el"),
        (JPEG_LS, "dcmcjpls"),
        (JPEG_LS_NEAR, "dcmcjpls", "+en"),
    )
    cases = {
        "ljpeg-sv1-ct16s": _encoded(_ct(120), *sv1),
        "ljpeg-sv1-m1u16": _encoded(with_pixels(_ct(121), RAMP * 100, photometric="MONOCHROME1"), *sv1),
        "ljpeg-sv1-rgb": _encoded(with_pixels(_ct(122), COLOR, photometric="RGB"), *sv1),
        "ljpeg-sv1-multiframe": _encoded(with_pixels(_ct(123), frames), *sv1),
        "ljpeg-sv1-signed12-window": _encoded(
            with_pixels(_ct(124, WindowCenter=40, WindowWidth=400), SIGNED12, bits_stored=12), *sv1
        ),
        "ljpeg-p14-ct16s": _encoded(_ct(125), *p14),
        "ljpeg-p14-u8": _encoded(with_pixels(_ct(126, RescaleIntercept=0), GRAY8), *p14),
        "jls-ct16s": _encoded(_ct(130), *jls),
        "jls-signed12-window": _encoded(
            with_pixels(_ct(131, WindowCenter=40, WindowWidth=400), SIGNED12, bits_stored=12), *jls
        ),
        "jls-rgb": _encoded(with_pixels(_ct(132), COLOR, photometric="RGB"), *jls),
        "jls-multiframe": _encoded(with_pixels(_ct(133), frames), *jls),
        # Near-lossless decodes exactly too: JPEG-LS defines the reconstruction, not just a bound.
        "jls-near-u8": _encoded(with_pixels(_ct(134, RescaleIntercept=0), GRAY8), *near),
        "jls-near-rgb": _encoded(with_pixels(_ct(135), COLOR, photometric="RGB"), *near),
        "jls-charls-ct16s": _charls(_ct(136, rows=16, columns=16)),
        "jls-charls-rgb": _charls(with_pixels(_ct(137), COLOR, photometric="RGB")),
    }
    # A 16 x 16 codestream under a 4 x 5 header: refused by both (Orthanc: 415 / 400 "Bad file format").
    big_jls, big_ljpeg = (
        _frame_of(_encoded(_ct(138, rows=16, columns=16), *jls)),
        _frame_of(_encoded(_ct(139, rows=16, columns=16), *sv1)),
    )
    cases["jls-stream-larger-than-header"] = to_bytes(with_encapsulated(_ct(140), [big_jls], JPEG_LS))
    cases["ljpeg-stream-larger-than-header"] = to_bytes(with_encapsulated(_ct(141), [big_ljpeg], LOSSLESS_JPEG_SV1))
    return cases


def _without_pixels(seed: int) -> bytes:
    ds = _ct(seed)
    del ds.PixelData
    return to_bytes(ds)


ROUTES = [
    "preview",
    "rendered",
    "image-uint8",
    "image-uint16",
    "image-int16",
    "numpy",
    "numpy?rescale=0",
    "numpy?compress",
    "matlab",
    "frames",
    "frames/0",
    "frames/0/raw",
    "frames/0/preview",
    "frames/0/numpy?rescale=false",
    "frames/1/preview",
    "frames/1/raw",
    "frames/2/numpy",
    "frames/3/matlab",
    "frames/-1/raw",
    "frames/x/raw",
    "rendered?window-center=0&window-width=100",
    "rendered?width=8",
    "rendered?height=3&smooth=1",
    "preview?quality=0",
    "numpy?rescale=maybe",
]


class Pair:
    """Orthanc and dicomvault over HTTP, each with the case files uploaded (same ids on both)."""

    def __init__(self, orthanc: httpx.Client, vault: httpx.Client, ids: dict[str, str]) -> None:
        self.orthanc = orthanc
        self.vault = vault
        self.ids = ids


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    if not orthanc_available():
        pytest.skip("Orthanc 1.10.1 is not installed")
    base = tmp_path_factory.mktemp("images")
    orthanc = OrthancServer(base / "orthanc")
    vault = RunningServer(base / "vault", {})
    orthanc.start()
    try:
        vault.start()
        with httpx.Client(base_url=orthanc.url, timeout=60) as o, httpx.Client(base_url=vault.url, timeout=60) as v:
            ids: dict[str, str] = {}
            for name, data in _cases().items():
                first, second = o.post("/instances", content=data), v.post("/instances", content=data)
                assert first.status_code == second.status_code == 200, (name, first.text, second.text)
                assert first.json()["ID"] == second.json()["ID"]
                ids[name] = first.json()["ID"]
            yield Pair(o, v, ids)
    finally:
        vault.stop()
        orthanc.stop()


def _media(answer: httpx.Response) -> str:
    return str(answer.headers.get("content-type", "")).split(";")[0].strip()


def _pixels(answer: httpx.Response) -> np.ndarray[Any, Any]:
    return np.asarray(Image.open(io.BytesIO(answer.content)))


def _assert_same_body(route: str, name: str, expected: httpx.Response, actual: httpx.Response) -> None:
    media = _media(expected)
    where = f"{name} {route}"
    if media.startswith("image/"):
        ours, theirs = _pixels(actual), _pixels(expected)
        assert ours.shape == theirs.shape, where
        if not route.startswith("rendered?width") and not route.startswith("rendered?height"):
            # Lossy sources are decoded by two libjpeg builds: a step of difference is allowed there.
            tolerance = 2 if name.startswith("jpeg") else 0
            diff = np.abs(ours.astype(np.int64) - theirs.astype(np.int64))
            assert diff.max() <= tolerance, (where, ours.tolist(), theirs.tolist())
    elif "numpy" in route:
        loaded = [np.load(io.BytesIO(a.content)) for a in (expected, actual)]
        if "compress" in route:
            assert [f.files for f in loaded] == [["arr_0"], ["arr_0"]], where
            loaded = [f["arr_0"] for f in loaded]
        theirs, ours = loaded
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, (where, ours.dtype, theirs.dtype)
        tolerance = 2 if name.startswith("jpeg") else 0
        assert np.abs(ours.astype(np.float64) - theirs.astype(np.float64)).max() <= tolerance, where
    elif media == "application/json":
        assert actual.json() == expected.json(), where
    else:
        assert actual.content == expected.content, where


@pytest.mark.orthanc
@pytest.mark.parametrize("route", ROUTES)
def test_same_answers_as_orthanc(pair: Pair, route: str) -> None:
    for name, public_id in pair.ids.items():
        uri = f"/instances/{public_id}/{route}"
        expected, actual = pair.orthanc.get(uri), pair.vault.get(uri)
        assert actual.status_code == expected.status_code, (name, route, expected.text, actual.text)
        if expected.status_code != 200:
            if expected.content:
                assert actual.json()["OrthancStatus"] == expected.json()["OrthancStatus"], (name, route)
            continue
        assert _media(actual) == _media(expected), (name, route)
        _assert_same_body(route, name, expected, actual)


@pytest.mark.orthanc
@pytest.mark.parametrize(
    "accept",
    ["image/jpeg", "*/*", "image/*", "text/html", "image/x-portable-arbitrarymap", "image/png;q=0.1, image/jpeg"],
)
def test_accept_header_chooses_the_format(pair: Pair, accept: str) -> None:
    for name in ("ct16s", "u8", "rgb"):
        for route in ("preview", "image-uint16", "rendered"):
            uri = f"/instances/{pair.ids[name]}/{route}"
            expected = pair.orthanc.get(uri, headers={"Accept": accept})
            actual = pair.vault.get(uri, headers={"Accept": accept})
            assert actual.status_code == expected.status_code, (name, route, accept)
            if expected.status_code != 200:
                continue
            assert _media(actual) == _media(expected), (name, route, accept)
            if _media(expected) == "image/x-portable-arbitrarymap":
                assert actual.content == expected.content, (name, route)
            elif _media(expected) == "image/jpeg":
                ours, theirs = _pixels(actual).astype(int), _pixels(expected).astype(int)
                assert ours.shape == theirs.shape and np.abs(ours - theirs).mean() < 3, (name, route)


@pytest.mark.orthanc
def test_jpeg_quality_argument(pair: Pair) -> None:
    uri = f"/instances/{pair.ids['jpeg-gray']}/preview"
    low = pair.vault.get(uri + "?quality=5", headers={"Accept": "image/jpeg"})
    high = pair.vault.get(uri + "?quality=100", headers={"Accept": "image/jpeg"})
    assert low.status_code == high.status_code == 200
    assert len(low.content) < len(high.content)


@pytest.mark.orthanc
def test_series_numpy_is_stacked_in_slice_order(pair: Pair) -> None:
    study, series = "1.2.826.0.1.3680043.10.1234.77", "1.2.826.0.1.3680043.10.1234.77.1"
    for number, z in ((1, 30.0), (2, 10.0), (3, 20.0)):
        ds = make_dataset(Spec(seed=200 + number, rows=2, columns=2, study_uid=study, series_uid=series))
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [0.0, 0.0, z]
        data = to_bytes(with_pixels(ds, np.full((2, 2), number, dtype=np.int16)))
        for client in (pair.orthanc, pair.vault):
            assert client.post("/instances", content=data).status_code == 200
    series_id = pair.vault.get("/series").json()
    for sid in series_id:
        uri = f"/series/{sid}/numpy?rescale=0"
        expected, actual = pair.orthanc.get(uri), pair.vault.get(uri)
        assert actual.status_code == expected.status_code
        if expected.status_code == 200:
            theirs, ours = np.load(io.BytesIO(expected.content)), np.load(io.BytesIO(actual.content))
            assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs), sid
    stacked = [s for s in series_id if len(pair.vault.get(f"/series/{s}").json()["Instances"]) == 3]
    answer = np.load(io.BytesIO(pair.vault.get(f"/series/{stacked[0]}/numpy?rescale=0").content))
    assert answer[:, 0, 0, 0].tolist() == [2, 3, 1]  # z 10, 20, 30


@pytest.mark.orthanc
def test_every_lossless_syntax_is_compared(pair: Pair) -> None:
    """The lossless cases above reach the comparison in their syntaxes, decoded (no refusal)."""
    seen = set()
    for name, public_id in pair.ids.items():
        if name.startswith(("ljpeg-", "jls-")) and "larger-than-header" not in name:
            tags = pair.vault.get(f"/instances/{public_id}/metadata?expand").json()
            seen.add(tags["TransferSyntax"])
            assert pair.vault.get(f"/instances/{public_id}/numpy").status_code == 200, name
    assert seen == {LOSSLESS_JPEG_SV1, LOSSLESS_JPEG, JPEG_LS, JPEG_LS_NEAR}


@pytest.mark.orthanc
def test_a_codestream_larger_than_its_header_is_refused_before_decoding(pair: Pair) -> None:
    for name in ("jls-stream-larger-than-header", "ljpeg-stream-larger-than-header"):
        uri = f"/instances/{pair.ids[name]}"
        assert pair.vault.get(f"{uri}/preview").status_code == 415
        answer = pair.vault.get(f"{uri}/numpy")
        assert answer.status_code == 400 and answer.json()["OrthancStatus"] == 15
        assert "the codestream declares 16 x 16 x 1 values, the header 4 x 5 x 1" in answer.json()["Details"], name


@pytest.mark.orthanc
def test_signed_jpeg_ls_below_16_bits_is_sign_extended_unlike_orthanc(pair: Pair) -> None:
    """CharLS codes signed values as their BitsStored-bit pattern. Deliberate deviation: we answer the
    signed values the file holds; Orthanc 1.10.1 answers the pattern read as unsigned (-2048 -> 2048)."""
    values = np.arange(256, dtype=np.int16).reshape(16, 16) * 16 - 2048
    data = _charls(with_pixels(_ct(150), values, bits_stored=12))
    answers = [client.post("/instances", content=data) for client in (pair.orthanc, pair.vault)]
    assert [a.status_code for a in answers] == [200, 200]
    uri = f"/instances/{answers[0].json()['ID']}"
    try:
        theirs, ours = (
            np.load(io.BytesIO(c.get(f"{uri}/numpy?rescale=0").content)) for c in (pair.orthanc, pair.vault)
        )
    finally:
        # Out of the other tests' way (the series comparison walks every series).
        for client in (pair.orthanc, pair.vault):
            client.delete(uri)
    assert ours.dtype == theirs.dtype == np.int16
    assert np.array_equal(ours[0, :, :, 0], values)
    assert np.array_equal(theirs[0, :, :, 0], values & 0xFFF)


def test_no_decoder_for_the_syntax_answers_not_implemented(client: TestClient) -> None:
    """A syntax no installed decoder handles (HTJ2K: only pylibjpeg-openjpeg has it) answers as
    Orthanc 1.10.1 does for a syntax it knows and cannot decode (JPEG 2000 there): 415 on image
    routes, 500 "Not implemented" on numpy and matlab; raw still works."""
    ds = with_encapsulated(_ct(160), [b"\xff\x4f\xff\x51" + bytes(60)], HTJ2K)
    answer = client.post("/instances", content=to_bytes(ds))
    assert answer.status_code == 200
    public_id = answer.json()["ID"]
    for route in ("preview", "rendered", "image-uint16"):
        assert client.get(f"/instances/{public_id}/{route}").status_code == 415
    for route in ("numpy", "matlab"):
        failure = client.get(f"/instances/{public_id}/{route}")
        assert failure.status_code == 500 and failure.json()["OrthancStatus"] == 2
    assert client.get(f"/instances/{public_id}/frames/0/raw").status_code == 200


def _j2k(array: np.ndarray[Any, Any]) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG2000", irreversible=False)
    return out.getvalue()


def test_codestream_geometry_of_each_encoder() -> None:
    gray16 = _ct(170, rows=16, columns=16)
    jls_color = with_pixels(_ct(171), COLOR, photometric="RGB")
    streams = {
        "baseline": (_jpeg(GRAY8), "1.2.840.10008.1.2.4.50", CodestreamGeometry(16, 16, 1, 8)),
        "baseline-color": (_jpeg(COLOR), "1.2.840.10008.1.2.4.50", CodestreamGeometry(16, 16, 3, 8)),
        "lossless": (
            _frame_of(_encoded(gray16, LOSSLESS_JPEG_SV1, "dcmcjpeg", "+e1")),
            LOSSLESS_JPEG_SV1,
            CodestreamGeometry(16, 16, 1, 16),
        ),
        "jpeg-ls": (_frame_of(_charls(jls_color)), JPEG_LS, CodestreamGeometry(16, 16, 3, 8)),
        "jpeg-2000": (_j2k(GRAY8[:, :12]), "1.2.840.10008.1.2.4.90", CodestreamGeometry(16, 12, 1, 8)),
    }
    for name, (frame, syntax, expected) in streams.items():
        assert codestream_geometry(frame, syntax) == expected, name
    rle = _ct(172)
    rle.compress(RLELossless)
    assert codestream_geometry(_frame_of(to_bytes(rle)), RLELossless) is None
    assert codestream_geometry(b"anything", "1.2.840.10008.1.2.1") is None


@pytest.mark.parametrize(
    ("frame", "syntax"),
    [
        (b"", JPEG_LS),
        (b"\xff\xd8", LOSSLESS_JPEG_SV1),
        (b"\x00\xff\xd8\xff\xc3\x00\x0b", LOSSLESS_JPEG_SV1),  # no SOI first
        (b"\xff\xd8\xff\xda\x00\x08" + bytes(8), LOSSLESS_JPEG_SV1),  # scan before any frame header
        (b"\xff\xd8\xff\xf7\x00\x0b\x08\x00", JPEG_LS),  # truncated SOF55
        (b"\xff\xd8\xff\xe0\x00\x01", JPEG_LS),  # impossible segment length
        (b"\xff\xd8\x12\x34", JPEG_LS),  # no marker where one must be
        (b"\xff\x4f\xff\x51\x00\x29", "1.2.840.10008.1.2.4.90"),  # truncated SIZ
        (b"\x00" * 64, "1.2.840.10008.1.2.4.91"),  # no SIZ at all
    ],
)
def test_codestream_geometry_refuses_what_no_decoder_would_take(frame: bytes, syntax: str) -> None:
    with pytest.raises(ValueError):
        codestream_geometry(frame, syntax)


def _with_sof_size(frame: bytes, rows: int, columns: int) -> bytes:
    at = frame.index(b"\xff\xf7")
    return frame[: at + 5] + rows.to_bytes(2, "big") + columns.to_bytes(2, "big") + frame[at + 9 :]


def test_decode_frame_checks_the_codestream_before_the_decoder() -> None:
    """A 16 x 16 header over a codestream claiming 4096 x 4096 (CharLS would allocate 32 MiB from it):
    refused by `decode_frame` itself, whatever route calls it; an honest one decodes."""
    data = _charls(_ct(180, rows=16, columns=16))
    ds = dcmread(io.BytesIO(data))
    info = image_info(ds)
    assert decode_frame(ds, info, 0).shape == (16, 16, 1)
    with_encapsulated(ds, [_with_sof_size(_frame_of(data), 4096, 4096)], JPEG_LS)
    with pytest.raises(DicomVaultError) as refused:
        decode_frame(ds, image_info(ds), 0)
    assert refused.value.code == ErrorCode.BAD_FILE_FORMAT
    assert "the codestream declares 4096 x 4096 x 1 values, the header 16 x 16 x 1" in str(refused.value)
