"""From decoded frames to what Orthanc's image routes answer: the value mappings (preview,
rendered, the clamped image-uint8/uint16/int16), the encodings (PNG, JPEG, PAM), numpy's `.npy`
and `.npz`, and Octave/Matlab text.

Every mapping mirrors what Orthanc 1.10.1 answers for the same file (checked against it):
- preview: grayscale values stretched from their [min, max] to [0, 255] (rounded), inverted for
  MONOCHROME1; a constant image is black. Color images are left as they are.
- rendered: rescale (slope, intercept), then a window (the `window-center`/`window-width` arguments,
  else the file's WindowCenter/WindowWidth, else the whole BitsStored range 2^n centred on 2^n/2),
  value = floor((x - (center - width/2)) * 255 / width) clamped, inverted for MONOCHROME1; then an
  optional resize inside `width` x `height` keeping the aspect ratio.
- image-uint8/uint16/int16: the stored values (no rescale, no inversion) clamped to the type's range;
  grayscale only.
- numpy: (frames, rows, columns, samples); grayscale rescaled to float32 unless `rescale` is false.
- matlab: the stored values of one frame as a `double([...])` expression.
"""

from __future__ import annotations

import io
import logging
import math
from enum import Enum
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from dicomvault.dicom.pixels import ImageInfo
from dicomvault.errors import DicomVaultError, ErrorCode

logger = logging.getLogger(__name__)

DEFAULT_JPEG_QUALITY = 90


class ImageFormat(Enum):
    """The encodings an image route can answer, by the media type that selects each."""

    PNG = "image/png"
    JPEG = "image/jpeg"
    PAM = "image/x-portable-arbitrarymap"


class PixelType(Enum):
    """The three clamping routes, by their numpy type."""

    UINT8 = "uint8"
    UINT16 = "uint16"
    INT16 = "int16"


def _incompatible(reason: str) -> DicomVaultError:
    return DicomVaultError(ErrorCode.INCOMPATIBLE_IMAGE_FORMAT, reason)


def _color_to_uint8(frame: NDArray[Any], info: ImageInfo) -> NDArray[np.uint8]:
    if frame.dtype == np.uint8:
        return frame
    shifted = np.right_shift(frame.astype(np.int64), max(info.bits_stored - 8, 0))
    out: NDArray[np.uint8] = np.clip(shifted, 0, 255).astype(np.uint8)
    return out


def _gray(frame: NDArray[Any]) -> NDArray[np.float64]:
    return frame[..., 0].astype(np.float64)


def preview(frame: NDArray[Any], info: ImageInfo) -> NDArray[np.uint8]:
    if not info.grayscale:
        return _color_to_uint8(frame, info)
    values = _gray(frame)
    low, high = float(values.min()), float(values.max())
    # Rounded to nearest; a constant image has no range to stretch and is black, as in Orthanc.
    out = np.floor((values - low) * (255.0 / (high - low)) + 0.5) if high > low else np.zeros_like(values)
    if info.inverted:
        out = 255.0 - out
    return out.astype(np.uint8)


def rendered(
    frame: NDArray[Any],
    info: ImageInfo,
    center: float | None = None,
    width: float | None = None,
) -> NDArray[np.uint8]:
    """The windowed 8-bit rendering of one frame (no resize: see `resize`)."""
    if not info.grayscale:
        return _color_to_uint8(frame, info)
    default_center, default_width = info.window or (2.0 ** (info.bits_stored - 1), 2.0**info.bits_stored)
    center = default_center if center is None else center
    width = default_width if width is None else width
    if not width > 0 or not math.isfinite(width) or not math.isfinite(center):
        raise DicomVaultError(ErrorCode.PARAMETER_OUT_OF_RANGE, f"invalid window: center {center}, width {width}")
    values = _gray(frame) * info.slope + info.intercept
    # Multiply, then divide: 255 / width first would round (x - low) = width to just under 255
    # (width 100: 254.99999...), where Orthanc 1.10.1 answers 255 (checked against it).
    out = np.clip(np.floor((values - (center - width / 2.0)) * 255.0 / width), 0, 255)
    if info.inverted:
        out = 255.0 - out
    return out.astype(np.uint8)


def fitted_size(columns: int, rows: int, width: int | None, height: int | None) -> tuple[int, int]:
    """(width, height) of an image scaled to fit inside the requested box, aspect ratio kept; a
    missing or zero bound does not constrain (Orthanc ignores `width=0`)."""
    if (width or 0) < 0 or (height or 0) < 0:
        raise DicomVaultError(ErrorCode.PARAMETER_OUT_OF_RANGE, "width and height must not be negative")
    ratios = [bound / size for bound, size in ((width, columns), (height, rows)) if bound]
    if not ratios:
        return columns, rows
    scale = min(ratios)
    return max(1, int(columns * scale + 0.5)), max(1, int(rows * scale + 0.5))


def resize(image: NDArray[np.uint8], width: int | None, height: int | None, smooth: bool) -> NDArray[np.uint8]:
    rows, columns = image.shape[0], image.shape[1]
    size = fitted_size(columns, rows, width, height)
    if size == (columns, rows):
        return image
    picture = Image.fromarray(image)
    method = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
    return np.asarray(picture.resize(size, method))


def clamped(frame: NDArray[Any], info: ImageInfo, kind: PixelType) -> NDArray[Any]:
    """The stored values clamped to the type's range (image-uint8, image-uint16, image-int16)."""
    if not info.grayscale:
        raise _incompatible(f"{kind.value} images are for grayscale data, this one is {info.photometric}")
    limits = np.iinfo(np.dtype(kind.value))
    return np.clip(frame[..., 0].astype(np.int64), limits.min, limits.max).astype(kind.value)


def encode(image: NDArray[Any], form: ImageFormat, quality: int = DEFAULT_JPEG_QUALITY) -> bytes:
    """PNG, JPEG (8-bit only) or PAM bytes of a (rows, columns) or (rows, columns, 3) array."""
    if not 1 <= quality <= 100:
        raise DicomVaultError(ErrorCode.PARAMETER_OUT_OF_RANGE, f"JPEG quality must be within 1-100: {quality}")
    if image.dtype == np.int16:
        image = image.view(np.uint16)  # two's complement, as Orthanc sends int16 images
    if form is ImageFormat.PAM:
        return _pam(image)
    if form is ImageFormat.JPEG and image.dtype != np.uint8:
        raise _incompatible("JPEG can only carry 8-bit images")
    out = io.BytesIO()
    picture = Image.fromarray(image)
    if form is ImageFormat.JPEG:
        picture.save(out, format="JPEG", quality=quality)
    else:
        picture.save(out, format="PNG")
    return out.getvalue()


def _pam(image: NDArray[Any]) -> bytes:
    depth = 3 if image.ndim == 3 else 1
    maxval = 255 if image.dtype == np.uint8 else 65535
    header = (
        f"P7\nWIDTH {image.shape[1]}\nHEIGHT {image.shape[0]}\nDEPTH {depth}\nMAXVAL {maxval}\n"
        f"TUPLTYPE {'RGB' if depth == 3 else 'GRAYSCALE'}\nENDHDR\n"
    )
    body = image.astype(">u2" if maxval == 65535 else np.uint8, copy=False).tobytes()
    return header.encode("ascii") + body


def numpy_values(frame: NDArray[Any], info: ImageInfo, rescale: bool) -> NDArray[Any]:
    """One frame as `/numpy` carries it: rescaled float32 for grayscale, else the stored type."""
    if rescale and info.grayscale:
        values = frame.astype(np.float32)
        if info.slope != 1.0:
            values *= np.float32(info.slope)
        if info.intercept != 0.0:
            values += np.float32(info.intercept)
        return values
    return frame.astype(frame.dtype.newbyteorder("<"), copy=False)


def npy_bytes(array: NDArray[Any], compress: bool) -> bytes:
    """numpy's own format: `.npy`, or `.npz` with the array named `arr_0` when compressed."""
    out = io.BytesIO()
    if compress:
        np.savez_compressed(out, array)
    else:
        np.save(out, array, allow_pickle=False)
    return out.getvalue()


def matlab_text(frame: NDArray[Any], info: ImageInfo) -> str:
    """One frame's stored values as an Octave/Matlab expression, in Orthanc's layout: rows separated
    by `;` for grayscale; for color, the interleaved values reshaped and permuted."""
    if info.grayscale or info.samples == 1:
        rows = (" ".join(str(int(v)) for v in row) for row in frame[..., 0])
        return "double([ " + " ; ".join(rows) + " ])"
    values = " ".join(str(int(v)) for v in frame.reshape(-1))
    return f"double(permute(reshape([ {values} ], [ {info.samples} {info.rows} {info.columns} ]), [ 3 2 1 ]))"
