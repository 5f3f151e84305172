"""Errors: the one exception type of dicomvault and the tables that translate it.

Hierarchy::

    Exception
     └── DicomVaultError(code: ErrorCode, details: str | None)
          raised anywhere below the front ends; the REST front end renders it as Orthanc's JSON
          error body with `http_status(code)`, the DICOM front end answers `dimse_status(code)`,
          the CLI prints `details` and exits non-zero.

Any other exception reaching a front end is a bug: it is logged with its traceback and shown as
`ErrorCode.INTERNAL_ERROR` (HTTP 500, DIMSE 0xC000) without details.

The numeric codes, their descriptions and their HTTP statuses are Orthanc 1.10.1's (as printed by
`Orthanc --errors` and its error table), so clients that read `OrthancStatus` keep working.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    """Orthanc's error codes (same numbers), restricted to those dicomvault raises."""

    INTERNAL_ERROR = -1
    SUCCESS = 0
    NOT_IMPLEMENTED = 2
    PARAMETER_OUT_OF_RANGE = 3
    NOT_ENOUGH_MEMORY = 4
    BAD_PARAMETER_TYPE = 5
    BAD_SEQUENCE_OF_CALLS = 6
    INEXISTENT_ITEM = 7
    BAD_REQUEST = 8
    NETWORK_PROTOCOL = 9
    DATABASE = 11
    URI_SYNTAX = 12
    INEXISTENT_FILE = 13
    CANNOT_WRITE_FILE = 14
    BAD_FILE_FORMAT = 15
    TIMEOUT = 16
    UNKNOWN_RESOURCE = 17
    INCOMPATIBLE_DATABASE_VERSION = 18
    FULL_STORAGE = 19
    CORRUPTED_FILE = 20
    INEXISTENT_TAG = 21
    READ_ONLY = 22
    INCOMPATIBLE_IMAGE_FORMAT = 23
    INCOMPATIBLE_IMAGE_SIZE = 24
    UNKNOWN_DICOM_TAG = 27
    BAD_JSON = 28
    UNAUTHORIZED = 29
    STORAGE_AREA_PLUGIN = 32  # Orthanc's code for a failing custom storage area (object storage)
    EMPTY_REQUEST = 33
    NOT_ACCEPTABLE = 34
    DATABASE_UNAVAILABLE = 36
    CANCELED_JOB = 37
    BAD_RANGE = 41
    DATABASE_CANNOT_SERIALIZE = 42
    REVISION = 43
    FORBIDDEN_ACCESS = 45
    SQLITE_CANNOT_OPEN = 1002
    DIRECTORY_OVER_FILE = 2000
    FILE_STORAGE_CANNOT_WRITE = 2001
    DIRECTORY_EXPECTED = 2002
    HTTP_PORT_IN_USE = 2003
    DICOM_PORT_IN_USE = 2004
    MAKE_DIRECTORY = 2008
    NO_CFIND_HANDLER = 2010
    NO_CMOVE_HANDLER = 2011
    NO_CSTORE_HANDLER = 2012
    NO_SOP_CLASS_OR_INSTANCE = 2014
    NO_PRESENTATION_CONTEXT = 2015
    DICOM_FIND_UNAVAILABLE = 2016
    DICOM_MOVE_UNAVAILABLE = 2017
    CANNOT_STORE_INSTANCE = 2018
    UNKNOWN_MODALITY = 2027
    UNSUPPORTED_MEDIA_TYPE = 3000


_DESCRIPTIONS: dict[ErrorCode, str] = {
    ErrorCode.INTERNAL_ERROR: "Internal error",
    ErrorCode.SUCCESS: "Success",
    ErrorCode.NOT_IMPLEMENTED: "Not implemented yet",
    ErrorCode.PARAMETER_OUT_OF_RANGE: "Parameter out of range",
    ErrorCode.NOT_ENOUGH_MEMORY: "The server hosting Orthanc is running out of memory",
    ErrorCode.BAD_PARAMETER_TYPE: "Bad type for a parameter",
    ErrorCode.BAD_SEQUENCE_OF_CALLS: "Bad sequence of calls",
    ErrorCode.INEXISTENT_ITEM: "Accessing an inexistent item",
    ErrorCode.BAD_REQUEST: "Bad request",
    ErrorCode.NETWORK_PROTOCOL: "Error in the network protocol",
    ErrorCode.DATABASE: "Error with the database engine",
    ErrorCode.URI_SYNTAX: "Badly formatted URI",
    ErrorCode.INEXISTENT_FILE: "Inexistent file",
    ErrorCode.CANNOT_WRITE_FILE: "Cannot write to file",
    ErrorCode.BAD_FILE_FORMAT: "Bad file format",
    ErrorCode.TIMEOUT: "Timeout",
    ErrorCode.UNKNOWN_RESOURCE: "Unknown resource",
    ErrorCode.INCOMPATIBLE_DATABASE_VERSION: "Incompatible version of the database",
    ErrorCode.FULL_STORAGE: "The file storage is full",
    ErrorCode.CORRUPTED_FILE: "Corrupted file (e.g. inconsistent MD5 hash)",
    ErrorCode.INEXISTENT_TAG: "Inexistent tag",
    ErrorCode.READ_ONLY: "Cannot modify a read-only data structure",
    ErrorCode.INCOMPATIBLE_IMAGE_FORMAT: "Incompatible format of the images",
    ErrorCode.INCOMPATIBLE_IMAGE_SIZE: "Incompatible size of the images",
    ErrorCode.UNKNOWN_DICOM_TAG: "Unknown DICOM tag",
    ErrorCode.BAD_JSON: "Cannot parse a JSON document",
    ErrorCode.UNAUTHORIZED: "Bad credentials were provided to an HTTP request",
    ErrorCode.STORAGE_AREA_PLUGIN: "Error in the plugin implementing a custom storage area",
    ErrorCode.EMPTY_REQUEST: "The request is empty",
    ErrorCode.NOT_ACCEPTABLE: "Cannot send a response which is acceptable according to the Accept HTTP header",
    ErrorCode.DATABASE_UNAVAILABLE: "The database is currently not available (probably a transient situation)",
    ErrorCode.CANCELED_JOB: "This job was canceled",
    ErrorCode.BAD_RANGE: "Incorrect range request",
    ErrorCode.DATABASE_CANNOT_SERIALIZE: (
        "Database could not serialize access due to concurrent update, the transaction should be retried"
    ),
    ErrorCode.REVISION: "A bad revision number was provided, which might indicate conflict between multiple writers",
    ErrorCode.FORBIDDEN_ACCESS: "Access to a resource is forbidden",
    ErrorCode.SQLITE_CANNOT_OPEN: "SQLite: Unable to open the database",
    ErrorCode.DIRECTORY_OVER_FILE: "The directory to be created is already occupied by a regular file",
    ErrorCode.FILE_STORAGE_CANNOT_WRITE: "Unable to create a subdirectory or a file in the file storage",
    ErrorCode.DIRECTORY_EXPECTED: "The specified path does not point to a directory",
    ErrorCode.HTTP_PORT_IN_USE: "The TCP port of the HTTP server is privileged or already in use",
    ErrorCode.DICOM_PORT_IN_USE: "The TCP port of the DICOM server is privileged or already in use",
    ErrorCode.MAKE_DIRECTORY: "Cannot create a directory",
    ErrorCode.NO_CFIND_HANDLER: "No request handler factory for DICOM C-FIND SCP",
    ErrorCode.NO_CMOVE_HANDLER: "No request handler factory for DICOM C-MOVE SCP",
    ErrorCode.NO_CSTORE_HANDLER: "No request handler factory for DICOM C-STORE SCP",
    ErrorCode.NO_SOP_CLASS_OR_INSTANCE: "DicomUserConnection: Unable to find the SOP class and instance",
    ErrorCode.NO_PRESENTATION_CONTEXT: "DicomUserConnection: No acceptable presentation context for modality",
    ErrorCode.DICOM_FIND_UNAVAILABLE: "DicomUserConnection: The C-FIND command is not supported by the remote SCP",
    ErrorCode.DICOM_MOVE_UNAVAILABLE: "DicomUserConnection: The C-MOVE command is not supported by the remote SCP",
    ErrorCode.CANNOT_STORE_INSTANCE: "Cannot store an instance",
    ErrorCode.UNKNOWN_MODALITY: "Unknown modality",
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: "Unsupported media type",
}

# Orthanc 1.10.1's HTTP status per error code; every code not listed answers 500.
_HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.SUCCESS: 200,
    ErrorCode.PARAMETER_OUT_OF_RANGE: 400,
    ErrorCode.BAD_PARAMETER_TYPE: 400,
    ErrorCode.INEXISTENT_ITEM: 404,
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.URI_SYNTAX: 400,
    ErrorCode.INEXISTENT_FILE: 404,
    ErrorCode.BAD_FILE_FORMAT: 400,
    ErrorCode.UNKNOWN_RESOURCE: 404,
    ErrorCode.INEXISTENT_TAG: 404,
    ErrorCode.BAD_JSON: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.NOT_ACCEPTABLE: 406,
    ErrorCode.DATABASE_UNAVAILABLE: 503,
    ErrorCode.BAD_RANGE: 416,
    ErrorCode.DATABASE_CANNOT_SERIALIZE: 503,
    ErrorCode.REVISION: 409,
    ErrorCode.FORBIDDEN_ACCESS: 403,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    # Not in Orthanc's table (it answers 500 with "The file storage is full"): 507 tells an HTTP
    # client precisely that retrying later, once space is freed, is the remedy.
    ErrorCode.FULL_STORAGE: 507,
}

# DIMSE statuses (PS3.7 Annex C) used when a DICOM front end must report a failure.
_DIMSE_STATUS: dict[ErrorCode, int] = {
    ErrorCode.SUCCESS: 0x0000,
    ErrorCode.FULL_STORAGE: 0xA700,  # Refused: out of resources
    ErrorCode.NOT_ENOUGH_MEMORY: 0xA700,
    ErrorCode.BAD_FILE_FORMAT: 0xA900,  # Error: data set does not match SOP class
    ErrorCode.FORBIDDEN_ACCESS: 0x0124,  # Refused: not authorized
    ErrorCode.UNKNOWN_RESOURCE: 0xA801,  # Refused: move destination unknown / no such item
    ErrorCode.UNKNOWN_MODALITY: 0xA801,
}
_DIMSE_DEFAULT_FAILURE = 0xC000  # Error: cannot understand


def description(code: ErrorCode) -> str:
    """Orthanc's text for an error code (the `OrthancError` and `Message` fields)."""
    return _DESCRIPTIONS.get(code, code.name.replace("_", " ").capitalize())


def http_status(code: ErrorCode) -> int:
    return _HTTP_STATUS.get(code, 500)


def dimse_status(code: ErrorCode) -> int:
    return _DIMSE_STATUS.get(code, _DIMSE_DEFAULT_FAILURE)


class DicomVaultError(Exception):
    """The one exception of dicomvault: an Orthanc error code plus an optional detail for people."""

    def __init__(self, code: ErrorCode, details: str | None = None, http_status: int | None = None) -> None:
        super().__init__(details or description(code))
        self.code = code
        self.details = details
        # Only for statuses Orthanc has no error code for (413: body over MaximumUploadSize).
        self._http_status = http_status

    @property
    def http_status(self) -> int:
        return self._http_status or http_status(self.code)

    @property
    def dimse_status(self) -> int:
        return dimse_status(self.code)

    def __reduce__(self) -> tuple[type[DicomVaultError], tuple[ErrorCode, str | None, int | None]]:
        # Raised inside ingest worker processes: must cross the process boundary intact.
        return (DicomVaultError, (self.code, self.details, self._http_status))

    def __repr__(self) -> str:
        return f"DicomVaultError({self.code.name}, {self.details!r})"
