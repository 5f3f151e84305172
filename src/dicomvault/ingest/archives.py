"""Reading uploaded containers safely: gzip bodies and zip archives of DICOM files.

Both are classic bomb vectors, so every expansion is bounded while it happens, never trusting the
sizes a container declares: a total size limit (MaximumUploadSize), and a compression-ratio cap
measured against the compressed bytes actually consumed so far. Output is produced in small
pieces, so a bomb is refused after a few megabytes of inflation, not after gigabytes. A zip's
central directory is bounded too (its entry count), since parsing it costs memory per entry.
"""

from __future__ import annotations

import io
import logging
import struct
import zipfile
import zlib
from collections.abc import Iterator

from dicomvault.errors import DicomVaultError, ErrorCode

logger = logging.getLogger(__name__)

ZIP_MAGIC = b"PK\x03\x04"
MAX_RATIO = 200  # DICOM compresses far less than this; bombs compress far more (zlib reaches ~1030:1)
# Below this much output the ratio is not checked: a blank image legitimately deflates ~1000:1, and
# holding 16 MiB is harmless. Above it, a body must keep below MAX_RATIO.
RATIO_FREE_OUTPUT = 16 << 20
# Each ZipInfo costs a few hundred bytes of memory: a central directory of millions of 46-byte
# records would amplify a small upload into gigabytes before the first entry is read.
MAX_ZIP_ENTRIES = 100_000
_IN_CHUNK = 64 << 10
_OUT_CHUNK = 1 << 20
_ZIP_READ = 64 << 10


def too_large(limit: int) -> DicomVaultError:
    return DicomVaultError(
        ErrorCode.BAD_REQUEST, f"the request body exceeds MaximumUploadSize ({limit} bytes)", http_status=413
    )


def _bomb(what: str, produced: int, consumed: int) -> DicomVaultError:
    logger.warning(
        "refusing %s: %d bytes inflated from %d compressed bytes exceed the %d:1 compression ratio cap",
        what,
        produced,
        consumed,
        MAX_RATIO,
    )
    return DicomVaultError(
        ErrorCode.BAD_REQUEST,
        f"{what} expands beyond the allowed compression ratio ({MAX_RATIO}:1): refused as a decompression bomb",
        http_status=413,
    )


def _ratio_exceeded(produced: int, consumed: int) -> bool:
    return produced > RATIO_FREE_OUTPUT and produced > max(consumed, 1) * MAX_RATIO


def gunzip(body: bytes, limit: int) -> bytes:
    """Decode a `Content-Encoding: gzip` body, refusing more than `limit` bytes of output or a
    compression ratio over MAX_RATIO (past RATIO_FREE_OUTPUT), checked as the output grows."""
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = bytearray()
    fed = 0
    try:
        while fed < len(body) and not decoder.eof:
            pending = body[fed : fed + _IN_CHUNK]
            fed += len(pending)
            while pending and not decoder.eof:
                out += decoder.decompress(pending, _OUT_CHUNK)
                pending = decoder.unconsumed_tail
                if len(out) > limit:
                    logger.warning("refusing a gzip body that inflates beyond MaximumUploadSize (%d bytes)", limit)
                    raise too_large(limit)
                if _ratio_exceeded(len(out), fed - len(pending)):
                    raise _bomb("a gzip body", len(out), fed - len(pending))
    except zlib.error as exc:
        raise DicomVaultError(ErrorCode.BAD_REQUEST, f"invalid gzip body: {exc}") from exc
    if not decoder.eof:
        raise DicomVaultError(ErrorCode.BAD_REQUEST, "truncated gzip body")
    return bytes(out)


def is_zip(body: bytes) -> bool:
    return body[:4] == ZIP_MAGIC


def declared_zip_entries(body: bytes) -> int | None:
    """The entry count of a zip's end-of-central-directory record (zip64 included), read before
    zipfile builds one object per entry; None when no such record is found (zipfile then fails)."""
    eocd = body.rfind(b"PK\x05\x06", max(0, len(body) - (1 << 16) - 22))
    if eocd < 0 or eocd + 22 > len(body):
        return None
    (count,) = struct.unpack_from("<H", body, eocd + 10)
    locator = eocd - 20
    if count == 0xFFFF and locator >= 0 and body[locator : locator + 4] == b"PK\x06\x07":
        (record,) = struct.unpack_from("<Q", body, locator + 8)
        if record + 40 <= len(body) and body[record : record + 4] == b"PK\x06\x06":
            (count,) = struct.unpack_from("<Q", body, record + 32)
    return int(count)


def iter_zip(body: bytes, limit: int) -> Iterator[tuple[str, bytes]]:
    """Yield (name, bytes) for each file of a zip; total output bounded by `limit`, each entry's
    ratio by MAX_RATIO (measured on the compressed bytes read, not on the declared sizes)."""
    entries = declared_zip_entries(body)
    if entries is not None and entries > MAX_ZIP_ENTRIES:
        logger.warning("refusing a zip declaring %d entries (at most %d per upload)", entries, MAX_ZIP_ENTRIES)
        raise DicomVaultError(
            ErrorCode.BAD_REQUEST,
            f"the zip archive declares {entries} entries, more than {MAX_ZIP_ENTRIES}: upload it in parts",
            http_status=413,
        )
    source = io.BytesIO(body)
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, ValueError, struct.error) as exc:
        raise DicomVaultError(ErrorCode.BAD_FILE_FORMAT, f"invalid zip archive: {exc}") from exc
    total = 0
    with archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            try:
                data = _read_bounded(archive, source, info, limit - total)
            except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError, ValueError) as exc:
                logger.warning("skipping unreadable zip entry %r: %s", info.filename, exc)
                continue
            total += len(data)
            yield info.filename, data


def _read_bounded(archive: zipfile.ZipFile, source: io.BytesIO, info: zipfile.ZipInfo, room: int) -> bytes:
    """One entry's bytes, refused as soon as it outgrows `room` or the ratio cap. The compressed
    bytes consumed so far are where zipfile's reads left our buffer: an over-estimate (it reads
    ahead), so the check never refuses an honest entry, and it ignores the declared sizes, which
    a crafted archive can set to anything."""
    out = bytearray()
    with archive.open(info) as f:
        while True:
            chunk = f.read(_ZIP_READ)
            if not chunk:
                return bytes(out)
            out += chunk
            if len(out) > room:
                logger.warning("refusing zip entry %r: the upload inflates beyond MaximumUploadSize", info.filename)
                raise DicomVaultError(
                    ErrorCode.BAD_REQUEST,
                    f"zip entry {info.filename!r} expands beyond the allowed size (MaximumUploadSize)",
                    http_status=413,
                )
            consumed = max(0, source.tell() - info.header_offset)
            if _ratio_exceeded(len(out), consumed):
                raise _bomb(f"zip entry {info.filename!r}", len(out), consumed)
