"""Pixel-decoding routes, as Orthanc 1.10.1 has them: `/instances/{id}/{preview,rendered,
image-uint8,image-uint16,image-int16,matlab,numpy}`, the same per frame under `/frames/{n}/` (plus
`raw` and `raw.gz`), the frame list, and `/series/{id}/numpy`.

Statuses mirror Orthanc's (checked against it): the image routes answer 415 for any image they
cannot produce (no pixel data, undecodable, color data for image-uint8, bad arguments), 404 for a
frame out of range or an Accept header naming no format they make; `numpy`, `matlab` and `raw`
answer 400 "Parameter out of range" for a bad frame and 400 "Bad file format" for a missing or
corrupt image. One deliberate deviation: a header declaring more pixels than the file holds or than
the decoding budget allows is a 400 (Orthanc 1.10.1 answers 500 "Not implemented" on numpy/matlab).
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dicomvault.context import ServerContext
from dicomvault.dicom.parsing import read_dataset
from dicomvault.dicom.pixels import (
    ImageInfo,
    check_decodable,
    check_frame_index,
    decode_frame,
    frame_count,
    image_info,
    raw_frame,
    raw_media_type,
    slice_order,
)
from dicomvault.dicom.rendering import (
    DEFAULT_JPEG_QUALITY,
    ImageFormat,
    PixelType,
    clamped,
    encode,
    matlab_text,
    npy_bytes,
    numpy_values,
    preview,
    rendered,
    resize,
)
from dicomvault.enums import ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.find.resources import require
from dicomvault.rest.instances import load_dicom
from dicomvault.rest.requests import context
from dicomvault.rest.responses import JsonResponse

logger = logging.getLogger(__name__)

FRAME_OPERATIONS = [
    "image-int16",
    "image-uint16",
    "image-uint8",
    "matlab",
    "numpy",
    "preview",
    "raw",
    "raw.gz",
    "rendered",
]
_PAM = ImageFormat.PAM.value


def _dataset(ctx: ServerContext, public_id: str, pixels: bool = True) -> Dataset:
    return read_dataset(load_dicom(ctx, public_id), stop_before_pixels=not pixels)


def _frame(request: Request) -> int | None:
    """The `{frame}` path segment; not an integer is no route at all (404), as in Orthanc."""
    raw = request.path_params.get("frame")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise DicomVaultError(ErrorCode.UNKNOWN_RESOURCE, f"not a frame number: {raw!r}") from exc


def negotiate(accept: str | None) -> ImageFormat | None:
    """The format an Accept header asks for, by decreasing q then order; PNG by default."""
    if not accept or not accept.strip():
        return ImageFormat.PNG
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            ranked.append((-quality, position, media.lower()))
    for _, _, media in sorted(ranked):
        if media in ("*/*", "image/*", ImageFormat.PNG.value):
            return ImageFormat.PNG
        if media == ImageFormat.JPEG.value:
            return ImageFormat.JPEG
        if media == _PAM:
            return ImageFormat.PAM
    return None


def _number(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError as exc:
        raise DicomVaultError(ErrorCode.BAD_PARAMETER_TYPE, f"argument {name} must be a number: {raw!r}") from exc


def _integer(request: Request, name: str) -> int | None:
    value = _number(request, name)
    if value is not None and not value.is_integer():
        raise DicomVaultError(ErrorCode.BAD_PARAMETER_TYPE, f"argument {name} must be an integer")
    return None if value is None else int(value)


def boolean(request: Request, name: str, default: bool) -> bool:
    """Orthanc's Boolean GET arguments: present and empty, `1` or `true` is true; `0` or `false`
    is false; anything else is 400 "Parameter out of range"."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in ("", "1", "true"):
        return True
    if value in ("0", "false"):
        return False
    raise DicomVaultError(
        ErrorCode.PARAMETER_OUT_OF_RANGE, f'Expected a Boolean for GET argument "{name}", found: {raw}'
    )


async def _image(
    request: Request, make: Callable[[Request, NDArray[Any], Any], NDArray[Any]], sixteen_bits: bool = False
) -> Response:
    ctx = context(request)
    public_id = request.path_params["id"]
    index = _frame(request)
    form = negotiate(request.headers.get("accept"))
    if form is None:
        # Orthanc 1.10.1 answers 404 (not 406) when no acceptable image format is named.
        raise DicomVaultError(ErrorCode.UNKNOWN_RESOURCE, "the Accept header names no image format produced here")
    if form is ImageFormat.JPEG and sixteen_bits:
        # JPEG carries 8 bits only: Orthanc answers 404 when it is the preferred format of a 16-bit route.
        raise DicomVaultError(ErrorCode.UNKNOWN_RESOURCE, "JPEG cannot carry 16-bit images: ask for PNG or PAM")

    def work() -> bytes:
        ds = _dataset(ctx, public_id)
        try:
            quality = _integer(request, "quality")
            info = image_info(ds)
            frame = index or 0
            if not 0 <= frame < info.frames:
                # Orthanc 1.10.1's image routes answer 404 here for native pixel data, but 415 for
                # compressed data (its decoder fails first); numpy, matlab and raw answer 400.
                code = ErrorCode.PARAMETER_OUT_OF_RANGE if info.encapsulated else ErrorCode.UNKNOWN_RESOURCE
                raise DicomVaultError(code, f"frame {frame} does not exist (the instance has {info.frames})")
            check_decodable(info)
            image = make(request, decode_frame(ds, info, frame), info)
            return encode(image, form, DEFAULT_JPEG_QUALITY if quality is None else quality)
        except DicomVaultError as exc:
            if exc.code == ErrorCode.UNKNOWN_RESOURCE:
                raise
            logger.warning("GET %s: cannot produce the image: %s", request.url.path, exc)
            # As Orthanc: whatever prevents the image is "415 Unsupported Media Type".
            raise DicomVaultError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, exc.details or str(exc)) from exc

    return Response(await run_in_threadpool(work), media_type=form.value)


def _preview(request: Request, frame: NDArray[Any], info: Any) -> NDArray[Any]:
    return preview(frame, info)


def _rendered(request: Request, frame: NDArray[Any], info: Any) -> NDArray[Any]:
    image = rendered(frame, info, _number(request, "window-center"), _number(request, "window-width"))
    width, height = _integer(request, "width"), _integer(request, "height")
    return resize(image, width, height, boolean(request, "smooth", False))


def _clamp(kind: PixelType) -> Callable[[Request, NDArray[Any], Any], NDArray[Any]]:
    def make(request: Request, frame: NDArray[Any], info: Any) -> NDArray[Any]:
        return clamped(frame, info, kind)

    return make


async def preview_route(request: Request) -> Response:
    return await _image(request, _preview)


async def rendered_route(request: Request) -> Response:
    return await _image(request, _rendered)


async def uint8_route(request: Request) -> Response:
    return await _image(request, _clamp(PixelType.UINT8))


async def uint16_route(request: Request) -> Response:
    return await _image(request, _clamp(PixelType.UINT16), sixteen_bits=True)


async def int16_route(request: Request) -> Response:
    return await _image(request, _clamp(PixelType.INT16), sixteen_bits=True)


def _check_frame(info: ImageInfo, index: int) -> None:
    """numpy and matlab: 400 "Parameter out of range" for a frame beyond native pixel data, but
    "Bad file format" for compressed data, where Orthanc 1.10.1's decoder fails first."""
    if info.encapsulated and not 0 <= index < info.frames:
        raise DicomVaultError(
            ErrorCode.BAD_FILE_FORMAT, f"frame {index} does not exist (the instance has {info.frames})"
        )
    check_frame_index(info, index)


def _decoded_frames(ds: Dataset, frames: list[int] | None, rescale: bool) -> NDArray[Any]:
    """The requested frames (all when None) stacked as (frames, rows, columns, samples)."""
    info = image_info(ds)
    wanted = list(range(info.frames)) if frames is None else frames
    for index in wanted:
        _check_frame(info, index)
    check_decodable(info, frames=len(wanted))
    out: NDArray[Any] | None = None
    for position, index in enumerate(wanted):
        values = numpy_values(decode_frame(ds, info, index), info, rescale)
        if out is None:
            out = np.empty((len(wanted), *values.shape), dtype=values.dtype)
        out[position] = values
    assert out is not None
    return out


async def numpy_route(request: Request) -> Response:
    ctx = context(request)
    public_id = request.path_params["id"]
    index = _frame(request)
    compress = boolean(request, "compress", False)
    rescale = boolean(request, "rescale", True)

    def work() -> bytes:
        ds = _dataset(ctx, public_id)
        if index is None:
            return npy_bytes(_decoded_frames(ds, None, rescale), compress)
        return npy_bytes(_decoded_frames(ds, [index], rescale)[0], compress)

    return Response(await run_in_threadpool(work), media_type="application/octet-stream")


async def series_numpy_route(request: Request) -> Response:
    ctx = context(request)
    public_id = request.path_params["id"]
    compress = boolean(request, "compress", False)
    rescale = boolean(request, "rescale", True)

    def work() -> bytes:
        refs = ctx.index.read(
            lambda tx: tx.descendants(require(tx, ResourceType.SERIES, public_id), ResourceType.INSTANCE)
        )
        datasets = [_dataset(ctx, ref.public_id) for ref in refs]
        budget = 0
        parts: list[NDArray[Any]] = []
        for position in slice_order(datasets):
            ds = datasets[position]
            info = image_info(ds)
            budget += info.frames
            check_decodable(info, frames=budget)
            part = _decoded_frames(ds, None, rescale)
            if parts and (part.shape[1:] != parts[0].shape[1:] or part.dtype != parts[0].dtype):
                logger.warning("GET %s: the series mixes frame sizes or pixel formats", request.url.path)
                raise DicomVaultError(
                    ErrorCode.INCOMPATIBLE_IMAGE_SIZE, "The size of the frames varies across the instance(s)"
                )
            parts.append(part)
        if not parts:
            raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, "the series has no instance")
        return npy_bytes(np.concatenate(parts), compress)

    return Response(await run_in_threadpool(work), media_type="application/octet-stream")


async def matlab_route(request: Request) -> Response:
    ctx = context(request)
    public_id = request.path_params["id"]
    index = _frame(request) or 0

    def work() -> str:
        ds = _dataset(ctx, public_id)
        info = image_info(ds)
        _check_frame(info, index)
        check_decodable(info)
        return matlab_text(decode_frame(ds, info, index), info)

    # Orthanc's exact Content-Type (Starlette would add a charset to a text/ type).
    return Response(await run_in_threadpool(work), headers={"Content-Type": "text/plain"})


async def _raw(request: Request, compressed: bool) -> Response:
    ctx = context(request)
    public_id = request.path_params["id"]
    index = _frame(request)
    assert index is not None

    def work() -> tuple[bytes, str]:
        ds = _dataset(ctx, public_id)
        # Orthanc checks the frame number against NumberOfFrames before looking at pixel data here.
        if not 0 <= index < frame_count(ds):
            raise DicomVaultError(ErrorCode.PARAMETER_OUT_OF_RANGE, f"frame {index} does not exist")
        info = image_info(ds)
        check_decodable(info)
        return raw_frame(ds, info, index), raw_media_type(info)

    body, media_type = await run_in_threadpool(work)
    if compressed:
        # Orthanc sends both: a gzip file, also announced as a gzip-encoded body.
        return Response(gzip.compress(body), media_type="application/gzip", headers={"Content-Encoding": "gzip"})
    return Response(body, media_type=media_type)


async def raw_route(request: Request) -> Response:
    return await _raw(request, compressed=False)


async def raw_gz_route(request: Request) -> Response:
    return await _raw(request, compressed=True)


async def frames_route(request: Request) -> Response:
    ctx = context(request)
    ds = await run_in_threadpool(_dataset, ctx, request.path_params["id"], False)
    return JsonResponse(list(range(frame_count(ds))))


async def frame_operations(request: Request) -> Response:
    ctx = context(request)
    _frame(request)
    await run_in_threadpool(_dataset, ctx, request.path_params["id"], False)
    return JsonResponse(FRAME_OPERATIONS)


def routes() -> list[Route]:
    instance = "/instances/{id}"
    frame = instance + "/frames/{frame}"
    get = ["GET"]
    return [
        Route(instance + "/preview", preview_route, methods=get),
        Route(instance + "/rendered", rendered_route, methods=get),
        Route(instance + "/image-uint8", uint8_route, methods=get),
        Route(instance + "/image-uint16", uint16_route, methods=get),
        Route(instance + "/image-int16", int16_route, methods=get),
        Route(instance + "/matlab", matlab_route, methods=get),
        Route(instance + "/numpy", numpy_route, methods=get),
        Route(instance + "/frames", frames_route, methods=get),
        Route(frame, frame_operations, methods=get),
        Route(frame + "/preview", preview_route, methods=get),
        Route(frame + "/rendered", rendered_route, methods=get),
        Route(frame + "/image-uint8", uint8_route, methods=get),
        Route(frame + "/image-uint16", uint16_route, methods=get),
        Route(frame + "/image-int16", int16_route, methods=get),
        Route(frame + "/matlab", matlab_route, methods=get),
        Route(frame + "/numpy", numpy_route, methods=get),
        Route(frame + "/raw", raw_route, methods=get),
        Route(frame + "/raw.gz", raw_gz_route, methods=get),
        Route("/series/{id}/numpy", series_numpy_route, methods=get),
    ]
