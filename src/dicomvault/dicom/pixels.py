"""Pixel data: reading an image's geometry from its header, the memory limits every decoder call
must pass first, decoding one frame (pydicom's pixel handlers, one chosen plugin per transfer
syntax), and a frame's raw bytes.

Nothing here allocates in proportion to what a header *declares*: a file may claim 65535 x 65535
pixels x 100,000 frames of 32 bits over 64 bytes of pixel data (Orthanc stores such files as
received, and so do we). Before any decoder runs, `check_decodable` compares the declared frame
size with the pixel data actually present (native transfer syntaxes) and with a decoding budget
(every syntax), in Python integers, which cannot overflow; then `decode_frame` checks that a
compressed frame's own codestream declares no larger image than the header (the decoders allocate
from the codestream).

Decoders (all permissively licensed): numpy for native data, pydicom's own RLE decoder, Pillow for
JPEG baseline/extended and JPEG 2000, GDCM (python-gdcm) for lossless JPEG, CharLS (pyjpegls) for
JPEG-LS.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.encaps import get_frame
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID

from dicomvault.dicom.codestreams import codestream_geometry
from dicomvault.errors import DicomVaultError, ErrorCode

logger = logging.getLogger(__name__)

MAX_FRAME_BYTES = 512 << 20  # one decoded frame, as declared by its header
MAX_ANSWER_BYTES = 1 << 30  # everything one request decodes (e.g. `/numpy` of a multi-frame instance)
_GRAYSCALE = frozenset({"MONOCHROME1", "MONOCHROME2"})
_PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")

# Orthanc 1.10.1's Content-Type for `/frames/{n}/raw` (checked against it: JPEG baseline and
# JPEG 2000 are named; lossless JPEG, JPEG-LS and RLE are application/octet-stream).
_RAW_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
}


# The pydicom plugin that decodes each compressed syntax, named rather than left to pydicom's
# order, which puts GDCM first for every JPEG and JPEG 2000 syntax once it is installed: Pillow
# keeps what it decoded before GDCM came (same answers as before), GDCM takes lossless JPEG (the one
# non-GPL decoder pydicom drives for it: pylibjpeg-libjpeg is GPLv3), CharLS takes JPEG-LS (pydicom
# refuses some JPEG-LS precisions through GDCM). Native syntaxes have no plugin ("").
_PLUGINS = {
    "1.2.840.10008.1.2.4.50": "pillow",
    "1.2.840.10008.1.2.4.51": "pillow",
    "1.2.840.10008.1.2.4.57": "gdcm",
    "1.2.840.10008.1.2.4.70": "gdcm",
    "1.2.840.10008.1.2.4.80": "pyjpegls",
    "1.2.840.10008.1.2.4.81": "pyjpegls",
    "1.2.840.10008.1.2.4.90": "pillow",
    "1.2.840.10008.1.2.4.91": "pillow",
    "1.2.840.10008.1.2.5": "pydicom",
}


@dataclass(frozen=True)
class PixelLimits:
    """The decoding budget: the largest frame, and the largest decoded answer, in bytes."""

    max_frame_bytes: int = MAX_FRAME_BYTES
    max_answer_bytes: int = MAX_ANSWER_BYTES


@dataclass(frozen=True)
class ImageInfo:
    """An image's geometry and value mapping, as its header declares them."""

    rows: int
    columns: int
    samples: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str
    frames: int
    transfer_syntax: str
    encapsulated: bool
    pixel_data_length: int
    slope: float
    intercept: float
    window: tuple[float, float] | None

    @property
    def frame_bytes(self) -> int:
        """The decoded size of one frame, as stored natively (bits rounded up to bytes)."""
        return (self.rows * self.columns * self.samples * self.bits_allocated + 7) // 8

    @property
    def grayscale(self) -> bool:
        return self.samples == 1 and self.photometric in _GRAYSCALE

    @property
    def inverted(self) -> bool:
        return self.photometric == "MONOCHROME1"

    @property
    def pixel_count(self) -> int:
        return self.rows * self.columns * self.samples


def frame_count(ds: Dataset) -> int:
    """NumberOfFrames, 1 when absent or unreadable (as Orthanc lists frame 0 of any instance)."""
    try:
        value = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1
    return max(value, 1)


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    try:
        value = ds.get(keyword, default)
        if value is None:
            raise ValueError("missing")
        return int(value)
    except (TypeError, ValueError) as exc:
        raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, f"{keyword} is missing or not an integer") from exc


def _float(ds: Dataset, keyword: str, default: float) -> float:
    value: Any = ds.get(keyword)
    if value is None or value == "":
        return default
    if not isinstance(value, str | bytes) and hasattr(value, "__getitem__"):
        value = value[0] if len(value) else default
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def image_info(ds: Dataset) -> ImageInfo:
    """The header's image description; 400 "Bad file format" without pixel data or with a
    geometry no decoder can honour."""
    element = next((ds[k] for k in _PIXEL_DATA_KEYWORDS if k in ds), None)
    if element is None or element.value is None:
        raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, "the instance has no pixel data")
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    samples = _int(ds, "SamplesPerPixel", 1)
    bits_allocated = _int(ds, "BitsAllocated")
    bits_stored = _int(ds, "BitsStored", bits_allocated)
    if rows <= 0 or columns <= 0 or samples not in (1, 3) or bits_allocated not in (1, 8, 16, 32, 64):
        raise DicomVaultError(
            ErrorCode.BAD_FILE_FORMAT,
            f"unsupported image geometry: {rows} x {columns}, {samples} samples, {bits_allocated} bits allocated",
        )
    if not 0 < bits_stored <= bits_allocated:
        raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, f"BitsStored {bits_stored} exceeds BitsAllocated")
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "") if meta is not None else "") or "1.2.840.10008.1.2"
    window = None
    if "WindowCenter" in ds and "WindowWidth" in ds:
        width = _float(ds, "WindowWidth", 0.0)
        if width > 0:
            window = (_float(ds, "WindowCenter", 0.0), width)
    value = element.value
    return ImageInfo(
        rows=rows,
        columns=columns,
        samples=samples,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        signed=_int(ds, "PixelRepresentation", 0) == 1,
        photometric=str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper(),
        frames=frame_count(ds),
        transfer_syntax=syntax,
        encapsulated=UID(syntax).is_encapsulated,
        pixel_data_length=len(value) if isinstance(value, bytes | bytearray) else 0,
        slope=_float(ds, "RescaleSlope", 1.0) or 1.0,
        intercept=_float(ds, "RescaleIntercept", 0.0),
        window=window,
    )


def check_frame_index(info: ImageInfo, index: int) -> None:
    if not 0 <= index < info.frames:
        raise DicomVaultError(
            ErrorCode.PARAMETER_OUT_OF_RANGE, f"frame {index} does not exist (the instance has {info.frames})"
        )


def check_decodable(info: ImageInfo, frames: int = 1, limits: PixelLimits = PixelLimits()) -> None:
    """Refuse, before any allocation, a header whose frames cannot be in the file or would not fit
    the decoding budget. `frames` is how many frames the request decodes into one answer (of 32-bit
    floats at most)."""
    # The transforms work on 64-bit floats: 8 bytes per value is the frame's true working set.
    working = info.pixel_count * 8
    if working > limits.max_frame_bytes:
        _refuse(
            info,
            f"one frame of {info.rows} x {info.columns} x {info.samples} values needs {working} bytes to decode, "
            f"over the {limits.max_frame_bytes}-byte budget",
        )
    answer = info.pixel_count * 4 * frames
    if answer > limits.max_answer_bytes:
        _refuse(
            info, f"decoding {frames} frame(s) needs {answer} bytes, over the {limits.max_answer_bytes}-byte budget"
        )
    if not info.encapsulated:
        needed = (info.rows * info.columns * info.samples * info.bits_allocated * info.frames + 7) // 8
        if info.pixel_data_length < needed:
            _refuse(
                info,
                f"the header declares {needed} bytes of pixel data ({info.frames} frame(s) of {info.rows} x "
                f"{info.columns} x {info.samples} x {info.bits_allocated} bits), the file holds "
                f"{info.pixel_data_length}",
            )


def check_codestream(info: ImageInfo, frame: bytes) -> None:
    """Refuse a compressed frame whose codestream declares a larger image than the header that
    `check_decodable` budgeted (or declares none), before a decoder sizes its buffers from it."""
    try:
        declared = codestream_geometry(frame, info.transfer_syntax)
    except ValueError as exc:
        _refuse(info, f"unreadable codestream header: {exc}")
    if declared is None:
        return
    if declared.rows > info.rows or declared.columns > info.columns or declared.components > info.samples:
        _refuse(
            info,
            f"the codestream declares {declared.rows} x {declared.columns} x {declared.components} values, the "
            f"header {info.rows} x {info.columns} x {info.samples}",
        )


def _refuse(info: ImageInfo, reason: str) -> NoReturn:
    logger.warning("refusing to decode an image (%s, %s): %s", info.transfer_syntax, info.photometric, reason)
    raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, f"cannot decode this image: {reason}")


def decode_frame(ds: Dataset, info: ImageInfo, index: int) -> NDArray[Any]:
    """One frame as an array (rows, columns, samples) in its stored type, color converted to RGB.
    The caller has passed `check_frame_index` and `check_decodable` (for all the frames it decodes);
    the one-frame budget and the codestream's own header are checked again here, so that no
    decoder ever runs unchecked."""
    if not decoder_available(info.transfer_syntax):
        logger.warning("no decoder installed here for transfer syntax %s (frame %d)", info.transfer_syntax, index)
        raise DicomVaultError(
            ErrorCode.NOT_IMPLEMENTED, f"no decoder available for transfer syntax {info.transfer_syntax}"
        )
    check_decodable(info)
    if info.encapsulated:
        check_codestream(info, raw_frame(ds, info, index))
    try:
        array = pixel_array(
            ds, index=index if info.frames > 1 else None, decoding_plugin=_PLUGINS.get(info.transfer_syntax, "")
        )
    except Exception as exc:  # decoders raise anything on corrupt streams (RuntimeError, ValueError, OSError)
        logger.warning("cannot decode frame %d (%s): %s", index, info.transfer_syntax, exc)
        raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, f"cannot decode the pixel data: {exc}") from exc
    expected = info.rows * info.columns * info.samples
    if array.size != expected:
        raise DicomVaultError(
            ErrorCode.BAD_FILE_FORMAT, f"the decoded frame has {array.size} values, the header declares {expected}"
        )
    return array.reshape(info.rows, info.columns, info.samples)


def decoder_available(transfer_syntax: str) -> bool:
    """Whether the decoder chosen for this transfer syntax is installed here (native, RLE, JPEG
    baseline/extended, lossless JPEG, JPEG-LS, JPEG 2000; not HTJ2K, which needs pylibjpeg)."""
    try:
        decoder = get_decoder(UID(transfer_syntax))
    except NotImplementedError:
        return False
    plugin = _PLUGINS.get(transfer_syntax)
    return plugin in decoder.available_plugins if plugin else bool(decoder.is_available)


def raw_frame(ds: Dataset, info: ImageInfo, index: int) -> bytes:
    """A frame's bytes as stored: a slice of native pixel data, or an encapsulated frame."""
    value = ds.PixelData
    if info.encapsulated:
        try:
            return bytes(get_frame(value, index, number_of_frames=info.frames))
        except (ValueError, KeyError, IndexError) as exc:
            raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, f"cannot access encapsulated frame {index}") from exc
    if info.bits_allocated == 1 and (info.rows * info.columns * info.samples) % 8:
        raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, "bit-packed frames that do not start on a byte boundary")
    size = info.frame_bytes
    return bytes(value[index * size : (index + 1) * size])


def raw_media_type(info: ImageInfo) -> str:
    return _RAW_MEDIA_TYPES.get(info.transfer_syntax, "application/octet-stream")


def _vector(ds: Dataset, keyword: str, length: int) -> tuple[float, ...] | None:
    value: Any = ds.get(keyword)
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == length else None


def slice_order(datasets: list[Dataset]) -> list[int]:
    """Positions of a series' instances in slice order, as Orthanc stacks `/series/{id}/numpy`:
    along the normal of a shared ImageOrientationPatient when every instance has a position
    (checked against Orthanc 1.10.1: ascending), else by InstanceNumber, else as listed."""
    orientations = [_vector(ds, "ImageOrientationPatient", 6) for ds in datasets]
    positions = [_vector(ds, "ImagePositionPatient", 3) for ds in datasets]
    first = orientations[0] if orientations else None
    if first is not None and all(o == first for o in orientations) and all(p is not None for p in positions):
        row, column = np.array(first[:3]), np.array(first[3:])
        normal = np.cross(row, column)
        depths = [float(np.dot(normal, np.array(p))) for p in positions]
        return sorted(range(len(datasets)), key=lambda i: (depths[i], i))

    def number(i: int) -> tuple[int, int]:
        try:
            return int(datasets[i].get("InstanceNumber", 0) or 0), i
        except (TypeError, ValueError):
            return 0, i

    return sorted(range(len(datasets)), key=number)
