"""Storage area (Orthanc's layout, atomic writes) and accessor (zlib-with-size, MD5)."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import pytest

from dicomvault.enums import CompressionType, FileContentType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.storage.accessor import (
    CompressionPolicy,
    StorageAccessor,
    compress_zlib_with_size,
    decompress_zlib_with_size,
)
from dicomvault.storage.area import FilesystemStorageArea, new_uuid


def test_layout_is_orthancs(tmp_path: Path) -> None:
    area = FilesystemStorageArea(tmp_path)
    uuid = new_uuid()
    area.create(uuid, b"hello")
    assert (tmp_path / uuid[:2] / uuid[2:4] / uuid).read_bytes() == b"hello"
    assert list(area.iter_uuids()) == [uuid]
    assert area.read_range(uuid, 1, 4) == b"ell"
    # no temporary file is left behind
    assert [p.name for p in (tmp_path / uuid[:2] / uuid[2:4]).iterdir()] == [uuid]


def test_remove_prunes_empty_folders_and_is_idempotent(tmp_path: Path) -> None:
    area = FilesystemStorageArea(tmp_path)
    uuid = new_uuid()
    area.create(uuid, b"x")
    area.remove(uuid)
    area.remove(uuid)
    assert not (tmp_path / uuid[:2]).exists()


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    area = FilesystemStorageArea(tmp_path)
    uuid = new_uuid()

    def chunks() -> object:
        yield b"partial"
        raise OSError(28, "No space left on device")

    with pytest.raises(DicomVaultError) as info:
        area.create(uuid, chunks())  # type: ignore[arg-type]
    assert info.value.code is ErrorCode.FULL_STORAGE
    assert not area.exists(uuid)
    assert list((tmp_path / uuid[:2] / uuid[2:4]).iterdir()) == []


def test_invalid_uuid_cannot_escape(tmp_path: Path) -> None:
    area = FilesystemStorageArea(tmp_path / "root")
    with pytest.raises(DicomVaultError):
        area.read("../../etc/passwd")


def test_missing_file_is_inexistent(tmp_path: Path) -> None:
    with pytest.raises(DicomVaultError) as info:
        FilesystemStorageArea(tmp_path).read(new_uuid())
    assert info.value.code is ErrorCode.INEXISTENT_FILE


@pytest.mark.parametrize("level", [1, 6, 9])
def test_zlib_with_size_format(level: int) -> None:
    data = bytes(range(256)) * 100
    packed = compress_zlib_with_size(data, level)
    assert struct.unpack("<Q", packed[:8])[0] == len(data)
    assert zlib.decompress(packed[8:]) == data
    assert decompress_zlib_with_size(packed) == data


def test_zlib_with_size_rejects_corruption() -> None:
    packed = compress_zlib_with_size(b"abc" * 1000, 6)
    for bad in (packed[:5], packed[:8] + b"garbage", struct.pack("<Q", 10) + packed[8:]):
        with pytest.raises(DicomVaultError) as info:
            decompress_zlib_with_size(bad)
        assert info.value.code is ErrorCode.CORRUPTED_FILE
    assert decompress_zlib_with_size(b"") == b""


@pytest.mark.parametrize("compress", [False, True])
def test_accessor_round_trip_and_md5(tmp_path: Path, compress: bool) -> None:
    area = FilesystemStorageArea(tmp_path)
    accessor = StorageAccessor(area, CompressionPolicy(enabled=compress, level=1))
    data = b"DICM" * 5000
    info = accessor.write(data, FileContentType.DICOM)
    assert accessor.read(info) == data
    assert info.uncompressed_size == len(data)
    assert info.uncompressed_md5 == hashlib.md5(data).hexdigest()
    stored = area.read(info.uuid)
    assert info.compressed_size == len(stored)
    assert info.compressed_md5 == hashlib.md5(stored).hexdigest()
    assert info.compression is (CompressionType.ZLIB_WITH_SIZE if compress else CompressionType.NONE)
    assert accessor.read_range(info, 4, 12) == data[4:12]


def test_policy_change_keeps_old_files_readable(tmp_path: Path) -> None:
    area = FilesystemStorageArea(tmp_path)
    compressed = StorageAccessor(area, CompressionPolicy(enabled=True)).write(b"a" * 1000, FileContentType.DICOM)
    plain_reader = StorageAccessor(area, CompressionPolicy(enabled=False))
    assert plain_reader.read(compressed) == b"a" * 1000


def test_md5_can_be_disabled(tmp_path: Path) -> None:
    info = StorageAccessor(FilesystemStorageArea(tmp_path), CompressionPolicy(store_md5=False)).write(b"x", 1)
    assert info.uncompressed_md5 == "" and info.compressed_md5 == ""


def test_writers_and_removers_sharing_a_folder_never_fail(tmp_path: Path) -> None:
    """Two writers (threads here, processes on a shared storage folder in production) whose files
    land in the same `xx/yy` folder: one's removal prunes the folder the other is writing into.
    Forced by giving every uuid the same first four characters."""
    import threading
    import uuid as uuidlib

    area = FilesystemStorageArea(tmp_path, fsync=False)
    failures: list[BaseException] = []

    def churn() -> None:
        for _ in range(2000):
            uuid = "abcd" + str(uuidlib.uuid4())[4:]
            try:
                area.create(uuid, b"x" * 100)
                assert area.read(uuid) == b"x" * 100
                area.remove(uuid)
            except BaseException as exc:
                failures.append(exc)

    threads = [threading.Thread(target=churn) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert list(area.iter_uuids()) == []
