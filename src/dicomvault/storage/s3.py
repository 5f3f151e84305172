"""The object-storage area: attachments as objects of an S3-compatible bucket (boto3).

Configured as Orthanc's AWS S3 storage plugin is, with its `AwsS3Storage` section, and naming
objects as that plugin does so that one bucket serves both:

- `StorageStructure: "flat"` (default): `RootPath/uuid` plus an extension from the content type
  (`.dcm` DICOM, `.json` DICOM-as-JSON, `.dcm.head` DICOM-until-pixel-data, `.unk` anything
  else). With `EnableLegacyUnknownFiles`, a DICOM-until-pixel-data attachment is also looked for
  as `.unk` (some plugin versions wrote it so).
- `StorageStructure: "legacy"`: `RootPath/uu/id/uuid`, the filesystem layout, no extension.

Settings (`S3Settings`) are a frozen, picklable value: the ingest worker processes receive them
and build their own area; the boto3 client is created lazily, once per process (a client is
thread-safe but must not cross a process boundary). Retries use botocore's "standard" mode.
The secret key is never logged and never part of a `repr`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from dicomvault.enums import FileContentType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.storage.area import is_valid_uuid

logger = logging.getLogger(__name__)

SECTION = "AwsS3Storage"
FLAT = "flat"
LEGACY = "legacy"

# Orthanc's plugin (flat structure) appends these; every other content type gets `.unk`.
_EXTENSIONS: dict[int, str] = {
    int(FileContentType.DICOM): ".dcm",
    int(FileContentType.DICOM_AS_JSON): ".json",
    int(FileContentType.DICOM_UNTIL_PIXEL_DATA): ".dcm.head",
}
_UNKNOWN_EXTENSION = ".unk"
_FLAT_NAME = re.compile(r"^([0-9a-f-]{36})(\.dcm|\.json|\.dcm\.head|\.unk)$")
_READ_BUFFER = 1 << 20

# The plugin's keys dicomvault implements; the others it knows are accepted with a warning.
_KNOWN_KEYS = frozenset(
    {
        "BucketName",
        "Region",
        "Endpoint",
        "AccessKey",
        "SecretKey",
        "VirtualAddressing",
        "StorageStructure",
        "RootPath",
        "ConnectionTimeout",  # as the Orthanc Book names it
        "ConnectTimeout",  # as the plugin's code reads it
        "RequestTimeout",
        "EnableLegacyUnknownFiles",
        "StorageEncryption",
        "HybridMode",
        "MigrationFromFileSystemEnabled",
        "UseTransferManager",
        "TransferPoolSize",
        "TransferBufferSize",
        "EnableAwsSdkLogs",
    }
)
# Not implemented: (key, value meaning "off"); any other value earns a warning.
_UNIMPLEMENTED: tuple[tuple[str, object], ...] = (
    ("HybridMode", "Disabled"),
    ("MigrationFromFileSystemEnabled", False),
    ("UseTransferManager", False),
)
_IGNORED = ("TransferPoolSize", "TransferBufferSize")  # only meaningful with the transfer manager

_MISSING_OBJECT_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_AUTH_CODES = frozenset(
    {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
)


def _refuse(message: str, code: ErrorCode = ErrorCode.BAD_PARAMETER_TYPE) -> DicomVaultError:
    return DicomVaultError(code, f"{SECTION}: {message}")


def _string(section: Mapping[str, Any], key: str, default: str | None = None) -> str | None:
    value = section.get(key, default)
    if value is not None and not isinstance(value, str):
        raise _refuse(f'"{key}" must be a string')
    return value


def _boolean(section: Mapping[str, Any], key: str, default: bool) -> bool:
    value = section.get(key, default)
    if not isinstance(value, bool):
        raise _refuse(f'"{key}" must be true or false')
    return value


def _seconds(section: Mapping[str, Any], keys: tuple[str, ...], default: float) -> float:
    for key in keys:
        if key in section:
            value = section[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise _refuse(f'"{key}" must be a positive number of seconds', ErrorCode.PARAMETER_OUT_OF_RANGE)
            return float(value)
    return default


@dataclass(frozen=True)
class S3Settings:
    """The `AwsS3Storage` section, checked; picklable (worker processes get a copy)."""

    bucket: str
    region: str
    endpoint: str | None = None  # a URL; None: AWS's own endpoint for the region
    access_key: str | None = None  # None (with secret_key): boto3's default credential chain
    secret_key: str | None = field(default=None, repr=False)
    virtual_addressing: bool = True
    structure: str = FLAT
    root_path: str = ""
    connect_timeout: float = 30.0
    request_timeout: float = 1200.0
    legacy_unknown_files: bool = False
    sdk_logs: bool = False  # EnableAwsSdkLogs: let botocore's own log lines through

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> S3Settings:
        """Check the section as Orthanc's plugin reads it; refuse what would store files
        somewhere other than the operator expects, warn about what is accepted but ignored."""
        bucket = _string(section, "BucketName")
        if not bucket:
            raise _refuse('"BucketName" is missing: name the bucket that holds the storage area')
        region = _string(section, "Region")
        if not region:
            # Orthanc's plugin refuses too; S3-compatible servers accept any region name.
            raise _refuse('"Region" is missing (any region your endpoint accepts, e.g. "us-east-1")')
        access_key = _string(section, "AccessKey") or None
        secret_key = _string(section, "SecretKey") or None
        if (access_key is None) != (secret_key is None):
            raise _refuse('"AccessKey" and "SecretKey" go together: set both, or neither for the default credentials')
        structure = _string(section, "StorageStructure", FLAT)
        if structure not in (FLAT, LEGACY):
            raise _refuse(f'"StorageStructure" must be "flat" or "legacy", not {structure!r}', ErrorCode.BAD_REQUEST)
        root = _string(section, "RootPath", "") or ""
        if root.startswith("/"):
            raise _refuse(f'"RootPath" must not start with "/" ({root!r})', ErrorCode.BAD_REQUEST)
        encryption = section.get("StorageEncryption")
        if encryption is not None and not (isinstance(encryption, Mapping) and encryption.get("Enable", True) is False):
            # Storing in clear what the operator asked to encrypt would be worse than not starting.
            raise _refuse(
                '"StorageEncryption" (client-side encryption) is not implemented: remove the section or set its '
                '"Enable" to false',
                ErrorCode.NOT_IMPLEMENTED,
            )
        for key in sorted(set(section) - _KNOWN_KEYS):
            logger.warning('%s: unknown key "%s" ignored', SECTION, key)
        for key, off in _UNIMPLEMENTED:
            if key in section and section[key] != off:
                logger.warning('%s: "%s" is not implemented by dicomvault and is ignored', SECTION, key)
        for key in _IGNORED:
            if key in section:
                logger.warning('%s: "%s" is ignored (dicomvault has no transfer manager)', SECTION, key)
        endpoint = _string(section, "Endpoint", "") or None
        if endpoint is not None and "://" not in endpoint:
            endpoint = "https://" + endpoint  # the plugin's default scheme
        return cls(
            bucket=bucket,
            region=region,
            endpoint=endpoint,
            access_key=access_key,
            secret_key=secret_key,
            virtual_addressing=_boolean(section, "VirtualAddressing", True),
            structure=structure,
            root_path=root.rstrip("/"),
            connect_timeout=_seconds(section, ("ConnectionTimeout", "ConnectTimeout"), 30.0),
            request_timeout=_seconds(section, ("RequestTimeout",), 1200.0),
            legacy_unknown_files=_boolean(section, "EnableLegacyUnknownFiles", False),
            sdk_logs=_boolean(section, "EnableAwsSdkLogs", False),
        )

    def describe(self) -> str:
        where = self.endpoint or f"AWS region {self.region}"
        root = f"/{self.root_path}" if self.root_path else ""
        return f"S3 bucket {self.bucket!r}{root} at {where}"


def object_key(settings: S3Settings, uuid: str, content_type: int, alternate: bool = False) -> str:
    """The object name Orthanc's plugin gives an attachment (`alternate`: the `.unk` spelling
    some plugin versions used for DICOM-until-pixel-data)."""
    if not is_valid_uuid(uuid):
        raise DicomVaultError(ErrorCode.PARAMETER_OUT_OF_RANGE, f"not a valid attachment uuid: {uuid!r}")
    if settings.structure == LEGACY:
        name = f"{uuid[0:2]}/{uuid[2:4]}/{uuid}"
    elif alternate:
        name = uuid + _UNKNOWN_EXTENSION
    else:
        name = uuid + _EXTENSIONS.get(int(content_type), _UNKNOWN_EXTENSION)
    return f"{settings.root_path}/{name}" if settings.root_path else name


def _make_client(settings: S3Settings) -> Any:
    import boto3
    from botocore.config import Config as BotoConfig

    # botocore logs dozens of DEBUG lines per request (object names, headers, signing steps), which
    # would bury `--trace` output: below WARNING only with EnableAwsSdkLogs, as in Orthanc's plugin.
    for name in ("botocore", "boto3", "s3transfer"):
        logging.getLogger(name).setLevel(logging.NOTSET if settings.sdk_logs else logging.WARNING)

    config = BotoConfig(
        region_name=settings.region,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.request_timeout,
        retries={"mode": "standard"},
        s3={"addressing_style": "virtual" if settings.virtual_addressing else "path"},
        max_pool_connections=32,  # REST threads, ingest pipeline threads and archive loaders share it
        # Content-MD5 (as Orthanc's plugin sends) protects uploads; the newer CRC trailers are not
        # understood by every S3-compatible server.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = boto3.session.Session()  # one per client: the default session is not thread-safe
    return session.client(
        "s3",
        endpoint_url=settings.endpoint,
        aws_access_key_id=settings.access_key,
        aws_secret_access_key=settings.secret_key,
        config=config,
    )


class S3StorageArea:
    """A `StorageArea` in an S3 bucket; one object per attachment, written in one PUT (atomic)."""

    def __init__(self, settings: S3Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._client: Any = None
        self._client_pid = 0
        self.list_page_size = 1000  # objects per listing request (S3's maximum)

    # ---- plumbing ----------------------------------------------------------------------------
    def describe(self) -> str:
        return self.settings.describe()

    def _s3(self) -> Any:
        pid = os.getpid()
        if self._client is None or self._client_pid != pid:
            with self._lock:
                if self._client is None or self._client_pid != pid:
                    self._client = _make_client(self.settings)
                    self._client_pid = pid
        return self._client

    def _keys(self, uuid: str, content_type: int) -> list[str]:
        keys = [object_key(self.settings, uuid, content_type)]
        if (
            self.settings.legacy_unknown_files
            and self.settings.structure == FLAT
            and int(content_type) == FileContentType.DICOM_UNTIL_PIXEL_DATA
        ):
            keys.append(object_key(self.settings, uuid, content_type, alternate=True))
        return keys

    def _error(self, exc: Exception, action: str, uuid: str | None = None, key: str | None = None) -> DicomVaultError:
        """A `DicomVaultError` for a boto3/botocore failure, naming the bucket and endpoint."""
        from botocore.exceptions import ClientError

        where = self.describe()
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _MISSING_OBJECT_CODES and uuid is not None:
                return DicomVaultError(ErrorCode.INEXISTENT_FILE, f"missing attachment file {uuid} (object {key})")
            if code == "InvalidRange":  # a range past the end: the caller decides, nothing to log
                return DicomVaultError(ErrorCode.BAD_RANGE, f"{action}: range past the end of {key}")
            if code == "NoSuchBucket" or (code == "404" and uuid is None):
                text = f"{where}: the bucket does not exist (create it, or fix {SECTION}.BucketName)"
            elif code in _AUTH_CODES or status == 403:
                who = f"access key {self.settings.access_key!r}" if self.settings.access_key else "default credentials"
                text = (
                    f"{where} refused {action} with the {who} ({code or status}): check {SECTION}.AccessKey and "
                    f"SecretKey and the bucket's permissions"
                )
            elif code in ("301", "PermanentRedirect", "AuthorizationHeaderMalformed"):
                text = f"{where} is in another region than {self.settings.region!r} ({code}): fix {SECTION}.Region"
            else:
                text = f"{where}: {action} failed: {code or status} {error.get('Message', '')}".rstrip()
        else:
            text = f"{where}: {action} failed: cannot reach the object store ({type(exc).__name__}: {exc})"
        logger.error("object storage: %s", text)
        return DicomVaultError(ErrorCode.STORAGE_AREA_PLUGIN, text)

    def _get(self, uuid: str, content_type: int, byte_range: str | None = None) -> tuple[str, dict[str, Any]]:
        """(key, get_object response) of the first existing spelling of the object."""
        from botocore.exceptions import BotoCoreError, ClientError

        keys = self._keys(uuid, content_type)
        for i, key in enumerate(keys):
            kwargs: dict[str, Any] = {"Bucket": self.settings.bucket, "Key": key}
            if byte_range is not None:
                kwargs["Range"] = byte_range
            try:
                return key, self._s3().get_object(**kwargs)
            except (BotoCoreError, ClientError) as exc:
                error = self._error(exc, f"reading {key}", uuid, key)
                if error.code is ErrorCode.INEXISTENT_FILE and i + 1 < len(keys):
                    continue
                raise error from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def check(self) -> None:
        """Refuse (STORAGE_AREA_PLUGIN, naming bucket and endpoint) an unreachable endpoint,
        refused credentials or a missing bucket: called once at start-up."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._s3().head_bucket(Bucket=self.settings.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, "access to the bucket") from exc
        logger.info("storage area: %s (%s structure)", self.describe(), self.settings.structure)

    # ---- the StorageArea contract -------------------------------------------------------------
    def create(self, uuid: str, chunks: Iterator[bytes] | bytes, *, content_type: int) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        key = object_key(self.settings, uuid, content_type)
        # One PUT is atomic: a reader never sees a partial object. A generator that fails
        # part-way leaves nothing behind since nothing is sent before it is exhausted.
        body = bytes(chunks) if isinstance(chunks, bytes | bytearray | memoryview) else b"".join(chunks)
        digest = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode("ascii")
        try:
            self._s3().put_object(Bucket=self.settings.bucket, Key=key, Body=body, ContentMD5=digest)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, f"writing {key}") from exc

    def read(self, uuid: str, *, content_type: int) -> bytes:
        key, response = self._get(uuid, content_type)
        with _translated(self, f"reading {key}", uuid, key):
            data: bytes = response["Body"].read()
        return data

    def open(self, uuid: str, *, content_type: int) -> BinaryIO:
        key, response = self._get(uuid, content_type)
        return io.BufferedReader(_ObjectReader(self, uuid, key, response), _READ_BUFFER)

    def read_range(self, uuid: str, start: int, end: int, *, content_type: int) -> bytes:
        """Bytes [start, end) with one ranged GET (HTTP Range); past the end: what exists."""
        if end <= start:
            self.size(uuid, content_type=content_type)  # a missing file is still an error
            return b""
        try:
            key, response = self._get(uuid, content_type, f"bytes={start}-{end - 1}")
        except DicomVaultError as exc:
            if exc.code is ErrorCode.BAD_RANGE:
                return b""  # `start` is past the end of the object, as reading past a file's end
            raise
        with _translated(self, f"reading {key}", uuid, key):
            data: bytes = response["Body"].read()
        return data

    def size(self, uuid: str, *, content_type: int) -> int:
        _key, response = self._head(uuid, content_type)
        return int(response["ContentLength"])

    def _head(self, uuid: str, content_type: int) -> tuple[str, dict[str, Any]]:
        from botocore.exceptions import BotoCoreError, ClientError

        keys = self._keys(uuid, content_type)
        for i, key in enumerate(keys):
            try:
                return key, self._s3().head_object(Bucket=self.settings.bucket, Key=key)
            except (BotoCoreError, ClientError) as exc:
                error = self._error(exc, f"reading {key}", uuid, key)
                if error.code is ErrorCode.INEXISTENT_FILE and i + 1 < len(keys):
                    continue
                raise error from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def remove(self, uuid: str, *, content_type: int) -> None:
        """Delete the object (every spelling of it); a missing object is not an error."""
        from botocore.exceptions import BotoCoreError, ClientError

        for key in self._keys(uuid, content_type):
            try:
                self._s3().delete_object(Bucket=self.settings.bucket, Key=key)
            except (BotoCoreError, ClientError) as exc:
                raise self._error(exc, f"deleting {key}") from exc

    def exists(self, uuid: str, *, content_type: int) -> bool:
        try:
            self._head(uuid, content_type)
        except DicomVaultError as exc:
            if exc.code is ErrorCode.INEXISTENT_FILE:
                return False
            raise
        return True

    def iter_uuids(self) -> Iterator[str]:
        """Every uuid stored under RootPath in the configured structure (paginated listing)."""
        from botocore.exceptions import BotoCoreError, ClientError

        prefix = f"{self.settings.root_path}/" if self.settings.root_path else ""
        paginator = self._s3().get_paginator("list_objects_v2")
        last = None
        try:
            pages = paginator.paginate(
                Bucket=self.settings.bucket, Prefix=prefix, PaginationConfig={"PageSize": self.list_page_size}
            )
            for page in pages:
                for item in page.get("Contents", ()):
                    uuid = self._uuid_of(str(item["Key"])[len(prefix) :])
                    if uuid is not None and uuid != last:  # a uuid's spellings are listed together
                        last = uuid
                        yield uuid
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, "listing the bucket") from exc

    def _uuid_of(self, name: str) -> str | None:
        if self.settings.structure == LEGACY:
            parts = name.split("/")
            if len(parts) == 3 and is_valid_uuid(parts[2]) and parts[0] == parts[2][0:2] and parts[1] == parts[2][2:4]:
                return parts[2]
            return None
        match = _FLAT_NAME.match(name)
        return match.group(1) if match is not None and is_valid_uuid(match.group(1)) else None


@contextlib.contextmanager
def _translated(area: S3StorageArea, action: str, uuid: str, key: str) -> Iterator[None]:
    """Turns a failure while reading a response body into the area's error."""
    try:
        yield
    except DicomVaultError:
        raise
    except Exception as exc:
        raise area._error(exc, action, uuid, key) from exc


class _ObjectReader(io.RawIOBase):
    """A seekable, read-only view of one object: reads continue the open GET; a seek elsewhere
    re-opens with a ranged GET when the next read comes (never before)."""

    def __init__(self, area: S3StorageArea, uuid: str, key: str, response: dict[str, Any]) -> None:
        super().__init__()
        self._area = area
        self._uuid = uuid
        self._key = key
        self._size = int(response["ContentLength"])
        self._body: Any = response["Body"]
        self._body_pos = 0
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        if self._pos >= self._size:
            return 0
        view = memoryview(buffer).cast("B")
        with _translated(self._area, f"reading {self._key}", self._uuid, self._key):
            if self._body is None or self._body_pos != self._pos:
                self._drop_body()
                response = self._area._s3().get_object(
                    Bucket=self._area.settings.bucket, Key=self._key, Range=f"bytes={self._pos}-"
                )
                self._body, self._body_pos = response["Body"], self._pos
            data = self._body.read(min(len(view), self._size - self._pos))
        if not data:
            raise DicomVaultError(
                ErrorCode.CORRUPTED_FILE, f"object {self._key} ended at {self._pos} of {self._size} bytes"
            )
        view[: len(data)] = data
        self._pos += len(data)
        self._body_pos += len(data)
        return len(data)

    def _drop_body(self) -> None:
        if self._body is not None:
            try:
                self._body.close()
            except Exception:  # closing a broken connection must not hide the real error
                logger.debug("closing the response of %s failed", self._key, exc_info=True)
            self._body = None

    def close(self) -> None:
        self._drop_body()
        super().close()
