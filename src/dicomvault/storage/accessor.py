"""The storage accessor: compression and MD5 above the storage area.

Compression is Orthanc's "zlib with size": an 8-byte little-endian uncompressed size followed by
a zlib stream (any level reads back). The compression recorded per attachment in the index, not
the configuration flag, decides how a file is read, so turning `StorageCompression` on or off
never makes older files unreadable. Hashes are computed while the bytes pass, never by re-reading.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from dicomvault.enums import CompressionType, FileContentType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.model import FileInfo
from dicomvault.storage.area import StorageArea, new_uuid

_SIZE_HEADER = struct.Struct("<Q")


def compress_zlib_with_size(data: bytes, level: int) -> bytes:
    if not data:
        return b""  # Orthanc stores an empty buffer as an empty file
    return _SIZE_HEADER.pack(len(data)) + zlib.compress(data, level)


def decompress_zlib_with_size(data: bytes, limit: int | None = None) -> bytes:
    """Inverse of `compress_zlib_with_size`; `limit` bounds the announced size (zip-bomb guard)."""
    if not data:
        return b""
    if len(data) < _SIZE_HEADER.size:
        raise DicomVaultError(ErrorCode.CORRUPTED_FILE, "compressed attachment shorter than its size header")
    (size,) = _SIZE_HEADER.unpack_from(data)
    if limit is not None and size > limit:
        raise DicomVaultError(ErrorCode.CORRUPTED_FILE, f"compressed attachment announces {size} bytes")
    try:
        out = zlib.decompressobj().decompress(data[_SIZE_HEADER.size :], size + 1)
    except zlib.error as exc:
        raise DicomVaultError(ErrorCode.CORRUPTED_FILE, f"bad zlib stream: {exc}") from exc
    if len(out) != size:
        raise DicomVaultError(
            ErrorCode.CORRUPTED_FILE, f"compressed attachment holds {len(out)} bytes, header says {size}"
        )
    return out


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class CompressionPolicy:
    enabled: bool = False
    level: int = 6
    store_md5: bool = True


class StorageAccessor:
    """Writes and reads attachments, applying compression and checking what the index recorded."""

    def __init__(self, area: StorageArea, policy: CompressionPolicy) -> None:
        self.area = area
        self.policy = policy
        # Called before a stored file is removed (the composition root watches the removal of
        # files an adopted Orthanc index still references).
        self.before_remove: Callable[[FileInfo], None] | None = None

    def write(
        self, data: bytes, content_type: FileContentType | int, compression: CompressionType | None = None
    ) -> FileInfo:
        """Store `data` as a new file, compressed as configured unless `compression` says otherwise."""
        uuid = new_uuid()
        md5 = md5_hex if self.policy.store_md5 else (lambda _data: "")
        compress = self.policy.enabled if compression is None else compression == CompressionType.ZLIB_WITH_SIZE
        if compress:
            stored, compression = compress_zlib_with_size(data, self.policy.level), CompressionType.ZLIB_WITH_SIZE
        else:
            stored, compression = data, CompressionType.NONE
        self.area.create(uuid, stored, content_type=int(content_type))
        plain_md5 = md5(data)
        return FileInfo(
            uuid=uuid,
            content_type=content_type,
            uncompressed_size=len(data),
            uncompressed_md5=plain_md5,
            compression=compression,
            compressed_size=len(stored),
            compressed_md5=plain_md5 if stored is data else md5(stored),
        )

    def read(self, info: FileInfo) -> bytes:
        """The attachment's uncompressed bytes."""
        stored = self.area.read(info.uuid, content_type=int(info.content_type))
        if info.compression == CompressionType.ZLIB_WITH_SIZE:
            return decompress_zlib_with_size(stored, limit=info.uncompressed_size)
        return stored

    def stream(self, info: FileInfo, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The attachment's uncompressed bytes in chunks of at most `chunk_size`, so that sending a
        file of any size takes bounded memory. The file is opened before this returns: a missing
        file raises `INEXISTENT_FILE` here, not halfway through an answer. A file whose content
        does not match the sizes recorded in the index raises `CORRUPTED_FILE` while iterating."""
        handle = self.area.open(info.uuid, content_type=int(info.content_type))
        if info.compression == CompressionType.ZLIB_WITH_SIZE:
            return _inflate_chunks(handle, info, chunk_size)
        return _plain_chunks(handle, info, chunk_size)

    def read_raw(self, info: FileInfo) -> bytes:
        """The bytes as stored (compressed if the attachment is)."""
        return self.area.read(info.uuid, content_type=int(info.content_type))

    def read_range(self, info: FileInfo, start: int, end: int) -> bytes:
        if info.compression == CompressionType.NONE:
            return self.area.read_range(info.uuid, start, end, content_type=int(info.content_type))
        return self.read(info)[start:end]

    def remove(self, info: FileInfo) -> None:
        if self.before_remove is not None:
            self.before_remove(info)
        self.area.remove(info.uuid, content_type=int(info.content_type))


def _plain_chunks(handle: BinaryIO, info: FileInfo, chunk_size: int) -> Iterator[bytes]:
    with handle:
        sent = 0
        while chunk := handle.read(chunk_size):
            sent += len(chunk)
            if sent > info.uncompressed_size:
                break
            yield chunk
    if sent != info.uncompressed_size:
        raise DicomVaultError(
            ErrorCode.CORRUPTED_FILE,
            f"attachment {info.uuid}: {sent} bytes on disk, index says {info.uncompressed_size}",
        )


def _inflate_chunks(handle: BinaryIO, info: FileInfo, chunk_size: int) -> Iterator[bytes]:
    with handle:
        header = handle.read(_SIZE_HEADER.size)
        if not header and info.uncompressed_size == 0:
            return  # an empty buffer is stored as an empty file
        if len(header) < _SIZE_HEADER.size or _SIZE_HEADER.unpack(header)[0] != info.uncompressed_size:
            raise DicomVaultError(ErrorCode.CORRUPTED_FILE, f"attachment {info.uuid}: bad size header")
        inflater = zlib.decompressobj()
        sent = 0
        try:
            while not inflater.eof:
                # `max_length` bounds what one step may produce, whatever the compression ratio.
                pending = inflater.unconsumed_tail or handle.read(chunk_size)
                if not pending:
                    break
                out = inflater.decompress(pending, chunk_size)
                sent += len(out)
                if sent > info.uncompressed_size:
                    break
                if out:
                    yield out
        except zlib.error as exc:
            raise DicomVaultError(ErrorCode.CORRUPTED_FILE, f"attachment {info.uuid}: bad zlib stream: {exc}") from exc
    if sent != info.uncompressed_size:
        raise DicomVaultError(
            ErrorCode.CORRUPTED_FILE,
            f"attachment {info.uuid}: inflates to {sent} bytes, index says {info.uncompressed_size}",
        )
