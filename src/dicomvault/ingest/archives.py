"""Reading uploaded containers safely: gzip bodies and zip archives of DICOM files.

Both are classic bomb vectors, so every expansion is bounded: by a total size limit, and for zip
entries by a per-entry size and a compression-ratio cap, checked while decompressing (never
trusting the sizes the archive declares).
"""

from __future__ import annotations

import io
import logging
import zipfile
import zlib
from collections.abc import Iterator

from dicomvault.errors import DicomVaultError, ErrorCode

logger = logging.getLogger(__name__)

ZIP_MAGIC = b"PK\x03\x04"
MAX_RATIO = 200  # DICOM compresses far less than this; bombs compress far more
_CHUNK = 1 << 20


def too_large(limit: int) -> DicomVaultError:
    return DicomVaultError(
        ErrorCode.BAD_REQUEST, f"the request body exceeds MaximumUploadSize ({limit} bytes)", http_status=413
    )


def gunzip(body: bytes, limit: int) -> bytes:
    """Decode a `Content-Encoding: gzip` body, refusing more than `limit` bytes of output."""
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = decoder.decompress(body, limit + 1)
    except zlib.error as exc:
        raise DicomVaultError(ErrorCode.BAD_REQUEST, f"invalid gzip body: {exc}") from exc
    if len(out) > limit or decoder.unconsumed_tail:
        raise too_large(limit)
    if not decoder.eof:
        raise DicomVaultError(ErrorCode.BAD_REQUEST, "truncated gzip body")
    return out


def is_zip(body: bytes) -> bool:
    return body[:4] == ZIP_MAGIC


def iter_zip(body: bytes, limit: int) -> Iterator[tuple[str, bytes]]:
    """Yield (name, bytes) for each file of a zip; total output bounded by `limit`."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(body))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, f"invalid zip archive: {exc}") from exc
    total = 0
    with archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            cap = min(limit - total, max(info.compress_size, 1) * MAX_RATIO)
            try:
                data = _read_bounded(archive, info, cap)
            except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError) as exc:
                logger.warning("skipping unreadable zip entry %r: %s", info.filename, exc)
                continue
            if data is None:
                raise DicomVaultError(
                    ErrorCode.BAD_REQUEST,
                    f"zip entry {info.filename!r} expands beyond the allowed size "
                    f"(MaximumUploadSize or ratio {MAX_RATIO}:1)",
                    http_status=413,
                )
            total += len(data)
            yield info.filename, data


def _read_bounded(archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes | None:
    out = bytearray()
    with archive.open(info) as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                return bytes(out)
            out += chunk
            if len(out) > cap:
                return None
