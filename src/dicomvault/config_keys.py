"""The table of configuration keys: every key dicomvault recognises, its default and its help text.

This module owns the declarative part of the configuration (`config.py` owns reading, checking and
building `Config`). Key names and defaults are Orthanc 1.10.1's, as printed by `Orthanc --config=-`,
except where the *effective* default of Orthanc (what it does when the key is absent) differs from
the value written in that sample file; those cases say so in their help text. The help texts are
our own.

An entry whose `field` is set fills the `Config` attribute of that name; the others are still known
(no "unknown key" warning), type-checked, and readable with `Config.option(name)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Any

# Immutable stand-ins for `{}` and `[]` defaults, so that the table holds no mutable state.
EMPTY_OBJECT: Mapping[str, Any] = MappingProxyType({})
EMPTY_LIST: tuple[Any, ...] = ()

GIB = 1024**3


class Kind(Enum):
    """The JSON shape a key accepts (and how `Config` converts it)."""

    BOOL = "boolean"
    INT = "integer"
    UINT = "non-negative integer"
    STR = "string"
    PATH = "string (a path)"
    STRINGS = "list of strings"
    STRING_OR_STRINGS = "string or list of strings"
    PATHS = "list of strings (paths)"
    OBJECT = "object"
    OBJECT_OF_STRINGS = "object whose values are strings"
    OBJECT_OF_INTS = "object whose values are integers"
    ANY = "any JSON value"


@dataclass(frozen=True)
class Key:
    """One configuration key: Orthanc's name, its default (None: absent), help, accepted shape."""

    name: str
    default: Any
    help: str
    kind: Kind
    field: str | None = None
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()

    def default_as_json(self) -> Any:
        """The default as a plain JSON value (for `--help-config` and documentation)."""
        if isinstance(self.default, Mapping):
            return dict(self.default)
        if isinstance(self.default, tuple):
            return list(self.default)
        return self.default


def _infer(default: Any) -> Kind:
    if isinstance(default, bool):
        return Kind.BOOL
    if isinstance(default, int):
        return Kind.UINT
    if isinstance(default, str):
        return Kind.STR
    if isinstance(default, tuple):
        return Kind.STRINGS
    if isinstance(default, Mapping):
        return Kind.OBJECT
    raise TypeError(f"cannot infer the kind of default {default!r}: give kind=")


def key(
    name: str,
    default: Any,
    help: str,
    *,
    kind: Kind | None = None,
    field: str | None = None,
    minimum: int | None = None,
    maximum: int | None = None,
    choices: tuple[str, ...] = (),
) -> Key:
    """Build a table entry; the kind is inferred from the default unless given."""
    return Key(name, default, help, kind or _infer(default), field, minimum, maximum, choices)


_ENCODINGS = (
    "Ascii", "Utf8", "Latin1", "Latin2", "Latin3", "Latin4", "Latin5", "Cyrillic", "Windows1251",
    "Arabic", "Greek", "Hebrew", "Thai", "Japanese", "Chinese", "JapaneseKanji", "Korean",
    "SimplifiedChinese",
)  # fmt: skip

_TS_GROUP_HELP = (
    "Accept or refuse, as a group, the {} transfer syntaxes in the C-STORE SCP; applied after "
    "AcceptedTransferSyntaxes. Absent: that list alone decides."
)


def _ts_group(name: str, label: str) -> Key:
    return key(name, None, _TS_GROUP_HELP.format(label), kind=Kind.BOOL)


def _plugin(name: str, plugin: str) -> Key:
    return key(
        name,
        None,
        f"Section of Orthanc's {plugin} plugin. Known so that Orthanc configuration folders load "
        "without warnings; dicomvault does not implement that plugin and ignores the section.",
        kind=Kind.ANY,
    )


KEYS: tuple[Key, ...] = (
    # --- General --------------------------------------------------------------------------------
    key("Name", "", "Name of this server, shown by GET /system. Orthanc's sample file sets "
        "\"MyOrthanc\", but a configuration without the key gives an empty name.", field="name"),
    key("StorageDirectory", "OrthancStorage", "Folder of the stored files (Orthanc's layout "
        "uu/id/uuid). A relative path is taken from the folder of the configuration file (the "
        "working directory when there is none).", kind=Kind.PATH, field="storage_directory"),
    key("IndexDirectory", None, "Folder of the index database (dicomvault.db). Absent: the "
        "storage folder. Putting it on a fast disk speeds up every request.", kind=Kind.PATH,
        field="index_directory"),
    key("TemporaryDirectory", None, "Folder for large temporary files (archives being built). "
        "Absent: the system's temporary folder.", kind=Kind.PATH, field="temporary_directory"),
    key("StorageCompression", False, "Compress new files with zlib before writing them (Orthanc's "
        "\"zlib with size\" format). Existing files are read whatever their compression.",
        field="storage_compression"),
    key("StorageCompressionLevel", 1, "dicomvault only. zlib level (1-9) used when "
        "StorageCompression is on. Level 1 is several times faster than Orthanc's 6 and keeps most "
        "of the gain on DICOM pixel data; every level is readable by Orthanc.", minimum=1,
        maximum=9, field="storage_compression_level"),
    key("MaximumUploadSize", 4 * GIB, "dicomvault only. Largest accepted HTTP request body in "
        "bytes (a DICOM file or a zip of them), and largest data set one C-STORE may send; 0 "
        "removes the limit. The 4 GiB default is above any single DICOM file yet stops a runaway "
        "upload from filling the disk.",
        field="maximum_upload_size"),
    key("MaximumStorageSize", 0, "Limit of the storage in megabytes (0: none); what happens when "
        "it is reached is set by MaximumStorageMode.", field="maximum_storage_size"),
    key("MaximumPatientCount", 0, "Limit of the number of stored patients (0: none).",
        field="maximum_patient_count"),
    key("MaximumStorageMode", "Recycle", "When a storage limit is reached: \"Recycle\" deletes "
        "the least recently stored unprotected patients, \"Reject\" refuses new instances. Added "
        "in Orthanc 1.11.2 (1.10.1 always recycles).", choices=("Recycle", "Reject"),
        field="maximum_storage_mode"),
    key("MaximumStorageCacheSize", 128, "Size in megabytes of the in-memory cache of recently "
        "read or written files (0 disables it).", field="maximum_storage_cache_size"),
    key("LuaScripts", EMPTY_LIST, "Lua scripts Orthanc loads at startup. dicomvault does not run "
        "Lua.", kind=Kind.PATHS),
    key("Plugins", EMPTY_LIST, "Orthanc plugins (shared libraries or folders of them) to load. "
        "dicomvault does not load Orthanc plugins.", kind=Kind.PATHS),
    key("ConcurrentJobs", 2, "How many jobs run at the same time (0: one per CPU core).",
        field="concurrent_jobs"),
    # --- HTTP server ----------------------------------------------------------------------------
    key("HttpServerEnabled", True, "Serve the REST API. Off: DICOM only.",
        field="http_server_enabled"),
    key("OrthancExplorerEnabled", True, "Serve Orthanc Explorer, the built-in web interface."),
    key("HttpPort", 8042, "TCP port of the REST API.", maximum=65535, field="http_port"),
    key("HttpDescribeErrors", True, "Put a JSON description of the error in error answers of the "
        "REST API.", field="http_describe_errors"),
    key("HttpCompressionEnabled", True, "Compress HTTP answers (gzip or deflate) when the client "
        "asks for it.", field="http_compression_enabled"),
    key("WebDavEnabled", True, "Publish the archive as a WebDAV share under /webdav."),
    key("WebDavDeleteAllowed", False, "Allow deleting resources through the WebDAV share."),
    key("WebDavUploadAllowed", True, "Allow storing files through the WebDAV share."),
    # --- DICOM server ---------------------------------------------------------------------------
    key("DicomServerEnabled", True, "Run the DICOM server (C-ECHO, C-STORE, C-FIND, C-MOVE, "
        "C-GET). Off: REST only.", field="dicom_server_enabled"),
    key("DicomAet", "ORTHANC", "Application Entity Title of this server (1 to 16 characters).",
        field="dicom_aet"),
    key("DicomCheckCalledAet", False, "Refuse associations whose called AET is not DicomAet.",
        field="dicom_check_called_aet"),
    key("DicomPort", 4242, "TCP port of the DICOM server.", maximum=65535, field="dicom_port"),
    key("DefaultEncoding", "Latin1", "Character set assumed for DICOM files without "
        "SpecificCharacterSet, and used in C-FIND answers.", choices=_ENCODINGS,
        field="default_encoding"),
    key("AcceptedTransferSyntaxes", ("1.2.840.10008.1.*",), "Transfer syntax UIDs the C-STORE SCP "
        "accepts; each may contain the wildcards ? and *. A single string is accepted too.",
        kind=Kind.STRING_OR_STRINGS, field="accepted_transfer_syntaxes"),
    _ts_group("DeflatedTransferSyntaxAccepted", "deflated"),
    _ts_group("JpegTransferSyntaxAccepted", "JPEG"),
    _ts_group("Jpeg2000TransferSyntaxAccepted", "JPEG 2000"),
    _ts_group("JpegLosslessTransferSyntaxAccepted", "JPEG lossless"),
    _ts_group("JpipTransferSyntaxAccepted", "JPIP"),
    _ts_group("Mpeg2TransferSyntaxAccepted", "MPEG-2"),
    _ts_group("RleTransferSyntaxAccepted", "RLE"),
    _ts_group("Mpeg4TransferSyntaxAccepted", "MPEG-4"),
    _ts_group("H265TransferSyntaxAccepted", "HEVC/H.265"),
    key("UnknownSopClassAccepted", False, "Accept C-STORE of SOP classes the server does not know "
        "(promiscuous mode).", field="unknown_sop_class_accepted"),
    key("DicomScpTimeout", 30, "Seconds of silence after which the DICOM server closes an "
        "association (0: never).", field="dicom_scp_timeout"),
    # --- HTTP security --------------------------------------------------------------------------
    key("RemoteAccessAllowed", False, "Accept HTTP connections from other hosts (otherwise only "
        "from localhost).", field="remote_access_allowed"),
    key("SslEnabled", False, "Serve HTTPS instead of HTTP."),
    key("SslCertificate", "certificate.pem", "PEM file holding both the certificate and the "
        "private key of the HTTPS server.", kind=Kind.PATH),
    key("SslMinimumProtocolVersion", 4, "Oldest accepted SSL/TLS version, as civetweb numbers "
        "them (4: TLS 1.2 only, 0: everything from SSL 2).", maximum=4),
    key("SslCiphersAccepted", None, "Cipher suites accepted by the HTTPS server. Absent: the FIPS "
        "140-2 ones.", kind=Kind.STRINGS),
    key("SslVerifyPeers", False, "Require HTTPS clients to present a trusted certificate."),
    key("SslTrustedClientCertificates", "trustedClientCertificates.pem", "PEM file of the client "
        "certificates trusted when SslVerifyPeers is on.", kind=Kind.PATH),
    key("AuthenticationEnabled", None, "Require HTTP Basic authentication (RegisteredUsers). "
        "Absent: on exactly when RemoteAccessAllowed is on (Orthanc >= 1.5.8).", kind=Kind.BOOL),
    key("RegisteredUsers", EMPTY_OBJECT, "HTTP Basic users, as {\"name\": \"password\"} in plain "
        "text. If authentication is on only because RemoteAccessAllowed is on and this is empty, "
        "the user orthanc/orthanc is created, as Orthanc does: set users.",
        kind=Kind.OBJECT_OF_STRINGS, field="registered_users"),
    # --- DICOM security -------------------------------------------------------------------------
    key("DicomTlsEnabled", False, "Use DICOM TLS in the DICOM server."),
    key("DicomTlsCertificate", None, "PEM certificate of this server for DICOM TLS (both "
        "directions).", kind=Kind.PATH),
    key("DicomTlsPrivateKey", None, "PEM private key matching DicomTlsCertificate.",
        kind=Kind.PATH),
    key("DicomTlsTrustedCertificates", None, "PEM file of the certificates trusted for DICOM TLS.",
        kind=Kind.PATH),
    key("DicomTlsRemoteCertificateRequired", True, "Refuse DICOM TLS peers that present no "
        "certificate."),
    key("DicomAlwaysAllowEcho", True, "Answer C-ECHO from any caller, not only DicomModalities.",
        field="dicom_always_allow_echo"),
    key("DicomAlwaysAllowStore", True, "Accept C-STORE from any caller, not only DicomModalities.",
        field="dicom_always_allow_store"),
    key("DicomAlwaysAllowFind", False, "Answer C-FIND (patient to instance levels) from any "
        "caller; a security risk.", field="dicom_always_allow_find"),
    key("DicomAlwaysAllowFindWorklist", False, "Answer worklist C-FIND from any caller; a "
        "security risk.", field="dicom_always_allow_find_worklist"),
    key("DicomAlwaysAllowGet", False, "Answer C-GET from any caller; a security risk.",
        field="dicom_always_allow_get"),
    key("DicomAlwaysAllowMove", False, "Answer C-MOVE from any caller; a security risk.",
        field="dicom_always_allow_move"),
    key("DicomCheckModalityHost", False, "Also check the IP address or host name of a calling "
        "modality, not only its AET.", field="dicom_check_modality_host"),
    # --- Network topology -----------------------------------------------------------------------
    key("DicomModalities", EMPTY_OBJECT, "Known remote modalities: name -> [AET, host, port(, "
        "manufacturer)] or an object (AET, Host, Port, Manufacturer, Allow*, UseDicomTls, "
        "LocalAet, Timeout).", field="dicom_modalities"),
    key("DicomModalitiesInDatabase", False, "Keep modalities in the database (managed over REST) "
        "instead of DicomModalities.", field="dicom_modalities_in_database"),
    key("DicomEchoChecksFind", False, "When testing a modality, follow the C-ECHO with a C-FIND.",
        field="dicom_echo_checks_find"),
    key("DicomScuTimeout", 10, "Seconds to wait for a remote DICOM server's answer (0: forever).",
        field="dicom_scu_timeout"),
    key("DicomScuPreferredTransferSyntax", "1.2.840.10008.1.2.1", "Transfer syntax to transcode to "
        "when a C-STORE destination refuses the original one.",
        field="dicom_scu_preferred_transfer_syntax"),
    key("DicomThreadsCount", 4, "Threads of the DICOM server (concurrent DIMSE operations).",
        minimum=1, field="dicom_threads_count"),
    key("OrthancPeers", EMPTY_OBJECT, "Known Orthanc peers: name -> [url(, user, password)] or an "
        "object (Url, Username, Password, HttpHeaders, Certificate*, Pkcs11, Timeout).",
        field="orthanc_peers"),
    key("OrthancPeersInDatabase", False, "Keep peers in the database (managed over REST) instead "
        "of OrthancPeers.", field="orthanc_peers_in_database"),
    key("HttpProxy", "", "Proxy for outgoing HTTP requests, as host:port or user:password@host:"
        "port; empty: none.", field="http_proxy"),
    key("HttpVerbose", False, "Log the details of outgoing HTTP requests.", field="http_verbose"),
    key("HttpTimeout", 0, "Timeout in seconds of outgoing HTTP requests. Orthanc's sample file "
        "sets 60; a configuration without the key means no timeout (0).", field="http_timeout"),
    key("HttpsVerifyPeers", True, "Check the certificates of HTTPS servers contacted (turn off "
        "only for self-signed test servers).", field="https_verify_peers"),
    key("HttpsCACertificates", "", "PEM bundle of certificate authorities for outgoing HTTPS "
        "(e.g. /etc/ssl/certs/ca-certificates.crt).", kind=Kind.STR),
    # --- Advanced -------------------------------------------------------------------------------
    key("UserMetadata", EMPTY_OBJECT, "Names of user-defined metadata: name -> number in "
        "1024..65535.", kind=Kind.OBJECT_OF_INTS, minimum=1024, maximum=65535,
        field="user_metadata"),
    key("UserContentType", EMPTY_OBJECT, "Names of user-defined attachment types: name -> number "
        "in 1024..65535, or [number, MIME type].", field="user_content_type"),
    key("StableAge", 60, "Seconds without a new instance after which a patient, study or series "
        "becomes stable.", field="stable_age"),
    key("StrictAetComparison", False, "Compare AETs case-sensitively.",
        field="strict_aet_comparison"),
    key("StoreMD5ForAttachments", True, "Compute and keep the MD5 of stored files, to detect disk "
        "corruption.", field="store_md5_for_attachments"),
    key("LimitFindResults", 0, "Most answers of one C-FIND or find at patient, study or series "
        "level (0: no limit).", field="limit_find_results"),
    key("LimitFindInstances", 0, "Most answers of one C-FIND or find at instance level (0: no "
        "limit).", field="limit_find_instances"),
    key("LogExportedResources", False, "Record resources sent to modalities and peers in "
        "/exports (grows the index without bound on routing servers).",
        field="log_exported_resources"),
    key("KeepAlive", True, "Keep HTTP connections open between requests.", field="keep_alive"),
    key("TcpNoDelay", True, "Disable Nagle's algorithm on HTTP sockets (lower latency).",
        field="tcp_no_delay"),
    key("HttpThreadsCount", 50, "Threads (concurrent requests) of the HTTP server.", minimum=1,
        field="http_threads_count"),
    key("StoreDicom", True, "Keep the DICOM files. Off: index-only mode, only main DICOM tags are "
        "kept.", field="store_dicom"),
    key("DicomAssociationCloseDelay", 5, "Seconds an association opened by a Lua script stays "
        "open when idle."),
    key("QueryRetrieveSize", 100, "Number of remote query results kept for later retrieval.",
        field="query_retrieve_size"),
    key("CaseSensitivePN", False, "Match person names (PN) case-sensitively in C-FIND, as the "
        "DICOM standard says; off by default.", field="case_sensitive_pn"),
    key("Pkcs11", None, "PKCS#11 module (hardware key, smart card) for HTTPS client "
        "authentication: Module, Pin, Verbose.", kind=Kind.OBJECT),
    key("LoadPrivateDictionary", True, "Load Orthanc's built-in dictionary of private tags."),
    key("Locale", None, "Locale for case-insensitive string comparison. Absent: detected.",
        kind=Kind.STR),
    key("Dictionary", EMPTY_OBJECT, "Extra DICOM tags: \"gggg,eeee\" -> [VR, name(, min, max(, "
        "private creator))]."),
    key("ExternalDictionaries", None, "DCMTK dictionary files replacing the default ones, in "
        "order.", kind=Kind.PATHS),
    key("SynchronousCMove", True, "Run an incoming C-MOVE in the association instead of as a "
        "background job.", field="synchronous_cmove"),
    key("JobsHistorySize", 10, "Finished jobs kept in memory (0: none, which breaks synchronous "
        "REST calls).", field="jobs_history_size"),
    key("SaveJobs", True, "Store jobs in the database so they resume after a restart (turn off "
        "when several servers share one database).", field="save_jobs"),
    key("OverwriteInstances", False, "When an instance with an already stored SOP Instance UID "
        "arrives: replace the stored one (true) or keep it and drop the new one (false).",
        field="overwrite_instances"),
    key("MediaArchiveSize", 1, "Archives created by asynchronous jobs kept for download.",
        field="media_archive_size"),
    key("StorageAccessOnFind", "Always", "Whether finds may read stored files: \"Always\", "
        "\"Answers\" (only to build answers) or \"Never\" (index only, fastest).",
        choices=("Always", "Answers", "Never"), field="storage_access_on_find"),
    key("MetricsEnabled", True, "Collect metrics served at /tools/metrics-prometheus.",
        field="metrics_enabled"),
    key("ExecuteLuaEnabled", False, "Allow POST /tools/execute-script.",
        field="execute_lua_enabled"),
    key("RestApiWriteToFileSystemEnabled", False, "Allow REST routes that write files on the "
        "server (e.g. /instances/{id}/export); off for security (CVE-2023-33466, backported to "
        "Debian's 1.10.1).", field="rest_api_write_to_file_system_enabled"),
    key("HttpRequestTimeout", 30, "Seconds a client may take to send a request's headers, or "
        "pause while sending its body, before its connection is closed (0: no bound).",
        field="http_request_timeout"),
    key("DefaultPrivateCreator", "", "Private creator assumed when looking up or writing private "
        "tags."),
    key("StorageCommitmentReportsSize", 100, "Storage commitment reports kept in memory."),
    key("TranscodeDicomProtocol", True, "Transcode to an uncompressed syntax when a DICOM peer "
        "does not accept the stored one."),
    key("BuiltinDecoderTranscoderOrder", "After", "Whether the built-in decoder runs \"Before\" or "
        "\"After\" plugin decoders, or is \"Disabled\".", choices=("After", "Before", "Disabled")),
    key("IngestTranscoding", None, "Transfer syntax UID every incoming instance is transcoded to "
        "before storage. Absent: stored as received.", kind=Kind.STR),
    key("IngestTranscodingOfUncompressed", True, "Apply IngestTranscoding to uncompressed "
        "instances."),
    key("IngestTranscodingOfCompressed", True, "Apply IngestTranscoding to compressed instances."),
    key("DicomLossyTranscodingQuality", 90, "Quality (1-100) of lossy JPEG transcoding.",
        minimum=1, maximum=100),
    key("SyncStorageArea", True, "fsync every written file before acknowledging it.",
        field="sync_storage_area"),
    key("MallocArenaMax", 5, "glibc malloc arena limit set by Orthanc at startup (0: untouched)."),
    key("DeidentifyLogs", True, "Anonymise patient data in logged DICOM queries.",
        field="deidentify_logs"),
    key("DeidentifyLogsDicomVersion", "2021b", "DICOM edition of the anonymisation profile used "
        "for logs.", choices=("2008", "2017c", "2021b")),
    key("MaximumPduLength", 16384, "Largest PDU in bytes, for both directions of DICOM "
        "associations.", minimum=4096, maximum=131072, field="maximum_pdu_length"),
    key("DatabaseServerIdentifier", None, "Identifier of this server among several sharing one "
        "database. Absent: derived from the network interfaces, AET and ports.", kind=Kind.STR),
    key("CheckRevisions", False, "Protect metadata and attachments with revisions (ETag, If-Match) "
        "against concurrent writers.", field="check_revisions"),
    key("SynchronousZipStream", True, "Stream zip archives to the client while building them.",
        field="synchronous_zip_stream"),
    key("ZipLoaderThreads", 0, "Threads reading files while a zip archive is built (0: read and "
        "write in turn).", field="zip_loader_threads"),
    # --- Plugin sections (object storage and database backends are acted upon later) ----------
    key("AwsS3Storage", None, "Object storage, in the form of Orthanc's S3 plugin section "
        "(BucketName, Region, Endpoint, AccessKey, SecretKey, ...).", kind=Kind.OBJECT,
        field="aws_s3_storage"),
    key("PostgreSQL", None, "PostgreSQL index, in the form of Orthanc's PostgreSQL plugin section "
        "(EnableIndex, Host, Port, Database, Username, Password, ...).", kind=Kind.OBJECT,
        field="postgresql"),
    _plugin("DicomWeb", "DICOMweb"),
    _plugin("Worklists", "modality worklists"),
    _plugin("ServeFolders", "serve-folders"),
    _plugin("WebViewer", "Web viewer"),
    _plugin("Transfers", "transfers accelerator"),
    _plugin("Gdcm", "GDCM decoder"),
    _plugin("MySQL", "MySQL"),
    _plugin("Odbc", "ODBC"),
    _plugin("AzureBlobStorage", "Azure Blob Storage"),
    _plugin("GoogleCloudStorage", "Google Cloud Storage"),
    _plugin("PythonScript", "Python"),
    _plugin("PythonVerbose", "Python"),
    _plugin("OrthancExplorer2", "Orthanc Explorer 2"),
    _plugin("StoneWebViewer", "Stone Web viewer"),
    _plugin("Authorization", "advanced authorization"),
)  # fmt: skip

KEYS_BY_NAME: Mapping[str, Key] = MappingProxyType({k.name: k for k in KEYS})
