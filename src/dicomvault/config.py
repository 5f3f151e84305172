"""Configuration: reading Orthanc-format JSON files into one immutable `Config`.

This module owns how configuration is read and checked; the table of keys (names, defaults, help
texts, accepted shapes) lives in `config_keys.py`. Behaviour mirrors Orthanc 1.10.1, checked against
the real binary:

- The path is one JSON file, or a folder whose `*.json` files (extension in any case, not
  recursive) are merged key by key. A top-level key defined in two files is refused, as Orthanc
  refuses it; our message names both files. Files are read in name order so that messages are
  stable (Orthanc takes directory order, which cannot change the result since duplicates are
  refused). Unlike Orthanc, a folder without any `*.json` file is refused: it is almost always a
  wrong path, and Orthanc would silently start with every default.
- Comments (`//`, `/* */`) and trailing commas are accepted (Orthanc's parser accepts both; json5
  accepts a little more). A key repeated inside one file keeps its last value, with a warning.
- `${VAR}` and `${VAR:-default}` are replaced before parsing, anywhere in the text, so that
  `"HttpPort": ${PORT}` works as in Orthanc. The default applies only when VAR is unset (an empty
  VAR stays empty, as in Orthanc, unlike the shell); an unset VAR without default becomes the empty
  string, with a warning. One improvement: inside a quoted string the value is inserted escaped,
  so a value holding `"` or `\\` (a Windows path) is taken literally, where Orthanc fails to parse.
- Relative paths are taken from the folder of the configuration file (the folder itself when a
  folder is given, the working directory without configuration), which is what Orthanc does.
- Types are strict, as in Orthanc: `"HttpPort": "8042"`, `8042.0` or `null` are refused with
  BAD_PARAMETER_TYPE, a negative count with PARAMETER_OUT_OF_RANGE. Unlike Orthanc, which checks
  many keys only when it first uses them, every known key is checked at load time.
- Unknown keys are logged (with a suggestion for near misses) and otherwise ignored.
- `AuthenticationEnabled`, when absent, equals `RemoteAccessAllowed`; with authentication on, remote
  access allowed and no registered user, Orthanc creates the user orthanc/orthanc, and so does
  `Config.registered_users` (with the same loud warning).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import json5

from dicomvault.config_keys import KEYS, KEYS_BY_NAME, Key, Kind
from dicomvault.errors import DicomVaultError, ErrorCode

logger = logging.getLogger(__name__)

DEFAULT_USER = ("orthanc", "orthanc")  # Orthanc's fallback account (see the module docstring)
MAX_AET_LENGTH = 16


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole configuration, parsed once. Build it with `load_config` or `config_from_mapping`.

    Values that may hold secrets (passwords, keys) are left out of `repr`, so logging a Config is safe.

    Typed attributes cover the keys dicomvault acts on; every other known key is available, checked,
    through `option(name)`. Paths are absolute.
    """

    # General
    name: str
    storage_directory: Path
    index_directory: Path  # StorageDirectory when absent
    temporary_directory: Path | None
    storage_compression: bool
    storage_compression_level: int
    maximum_upload_size: int  # bytes, 0 = unlimited
    maximum_storage_size: int  # MB, 0 = unlimited
    maximum_patient_count: int
    maximum_storage_mode: str
    maximum_storage_cache_size: int
    concurrent_jobs: int
    # HTTP server
    http_server_enabled: bool
    http_port: int
    http_describe_errors: bool
    http_compression_enabled: bool
    remote_access_allowed: bool
    authentication_enabled: bool  # effective value (see the module docstring)
    registered_users: Mapping[str, str] = field(repr=False)  # effective value (module docstring)
    keep_alive: bool
    tcp_no_delay: bool
    http_threads_count: int
    http_request_timeout: int
    metrics_enabled: bool
    execute_lua_enabled: bool
    rest_api_write_to_file_system_enabled: bool
    # DICOM server
    dicom_server_enabled: bool
    dicom_aet: str
    dicom_port: int
    dicom_check_called_aet: bool
    default_encoding: str
    accepted_transfer_syntaxes: tuple[str, ...]
    unknown_sop_class_accepted: bool
    dicom_scp_timeout: int
    dicom_always_allow_echo: bool
    dicom_always_allow_store: bool
    dicom_always_allow_find: bool
    dicom_always_allow_find_worklist: bool
    dicom_always_allow_get: bool
    dicom_always_allow_move: bool
    dicom_check_modality_host: bool
    dicom_threads_count: int
    maximum_pdu_length: int
    strict_aet_comparison: bool
    case_sensitive_pn: bool
    synchronous_cmove: bool
    deidentify_logs: bool
    # Network topology
    dicom_modalities: Mapping[str, Any]
    dicom_modalities_in_database: bool
    dicom_echo_checks_find: bool
    dicom_scu_timeout: int
    dicom_scu_preferred_transfer_syntax: str
    orthanc_peers: Mapping[str, Any]
    orthanc_peers_in_database: bool
    http_proxy: str
    http_verbose: bool
    http_timeout: int  # seconds, 0 = none
    https_verify_peers: bool
    # Index and storage behaviour
    user_metadata: Mapping[str, int]
    user_content_type: Mapping[str, Any]
    stable_age: int
    store_md5_for_attachments: bool
    store_dicom: bool
    sync_storage_area: bool
    overwrite_instances: bool
    limit_find_results: int
    limit_find_instances: int
    log_exported_resources: bool
    storage_access_on_find: str
    check_revisions: bool
    # Jobs and archives
    jobs_history_size: int
    save_jobs: bool
    media_archive_size: int
    query_retrieve_size: int
    synchronous_zip_stream: bool
    zip_loader_threads: int
    # Backends (Orthanc plugin sections, None when absent)
    aws_s3_storage: Mapping[str, Any] | None = field(repr=False)  # holds secrets
    postgresql: Mapping[str, Any] | None = field(repr=False)
    # Provenance
    raw: Mapping[str, Any] = field(repr=False)  # merged JSON after ${VAR} substitution, read-only
    source: str  # "<defaults>", "<mapping>", a file or a folder: for log lines
    files: tuple[Path, ...]  # the files read, in merge order
    base_directory: Path  # relative paths are taken from here

    def option(self, name: str) -> Any:
        """The value of any known key (checked at load time), or its default when absent.

        Objects come back as read-only mappings and lists as tuples. An unknown name is a
        programming error (KeyError).
        """
        if name not in KEYS_BY_NAME:
            raise KeyError(f"{name!r} is not a configuration key known to dicomvault")
        if name in self.raw:
            return self.raw[name]
        return _freeze(KEYS_BY_NAME[name].default)

    def path(self, value: str | Path) -> Path:
        """Interpret a path from the configuration as Orthanc does (relative to its folder)."""
        return self.base_directory / value

    @property
    def is_http_server_secure(self) -> bool:
        """Orthanc's `IsHttpServerSecure` of GET /system: not reachable from elsewhere unauthenticated."""
        return self.authentication_enabled or not self.remote_access_allowed


def documented_keys() -> Mapping[str, str]:
    """Every key dicomvault recognises, mapped to its help text (for `serve --help-config`)."""
    return MappingProxyType({k.name: k.help for k in KEYS})


def load_config(path: Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read a configuration file or folder (None: every default). `env` defaults to os.environ."""
    environment = os.environ if env is None else env
    if path is None:
        return _build({}, {}, source="<defaults>", files=(), base=Path.cwd())
    path = Path(path)
    if path.is_dir():
        files = _folder_files(path)
        base = path.absolute()
    elif path.exists():
        files = [path]
        base = path.absolute().parent
    else:
        raise DicomVaultError(ErrorCode.INEXISTENT_FILE, f"configuration file or folder {path} does not exist")
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for file in files:
        logger.info("reading the configuration from %s", file)
        for name, value in _read_file(file, environment).items():
            if name in merged:
                raise DicomVaultError(
                    ErrorCode.BAD_FILE_FORMAT,
                    f'configuration key "{name}" is defined both in {origins[name]} and in {file}; '
                    "a key may appear in only one file of a configuration folder",
                )
            merged[name] = value
            origins[name] = str(file)
    return _build(merged, origins, source=str(path), files=tuple(files), base=base)


def config_from_mapping(
    data: Mapping[str, Any],
    source: str = "<mapping>",
    env: Mapping[str, str] | None = None,
    base_directory: Path | None = None,
) -> Config:
    """Build a Config from already parsed JSON (tests, code). `${VAR}` is replaced in strings;
    relative paths are taken from `base_directory` (default: the working directory)."""
    environment = os.environ if env is None else env
    missing: set[str] = set()
    substituted = {
        _substitute_plain(k, environment, missing): _substitute_tree(v, environment, missing) for k, v in data.items()
    }
    _warn_missing(missing, source)
    base = (base_directory or Path.cwd()).absolute()
    return _build(substituted, {}, source=source, files=(), base=base)


# --- Reading files ---------------------------------------------------------------------------


def _folder_files(folder: Path) -> list[Path]:
    logger.info("scanning folder %s for configuration files", folder)
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise DicomVaultError(
            ErrorCode.INEXISTENT_FILE, f"cannot list configuration folder {folder}: {exc.strerror}"
        ) from exc
    files = [p for p in entries if p.suffix.lower() == ".json" and p.is_file()]
    if not files:
        raise DicomVaultError(ErrorCode.INEXISTENT_FILE, f"configuration folder {folder} contains no *.json file")
    return files


def _read_file(file: Path, env: Mapping[str, str]) -> dict[str, Any]:
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DicomVaultError(
            ErrorCode.BAD_JSON, f"configuration file {file} is not UTF-8 text ({exc.reason})"
        ) from exc
    except OSError as exc:
        raise DicomVaultError(
            ErrorCode.INEXISTENT_FILE, f"cannot read configuration file {file}: {exc.strerror}"
        ) from exc
    missing: set[str] = set()
    text = _substitute_text(text, env, missing)
    _warn_missing(missing, str(file))
    duplicates: list[str] = []
    try:
        data = json5.loads(text, object_pairs_hook=lambda pairs: _object(pairs, duplicates))
    except ValueError as exc:
        raise DicomVaultError(ErrorCode.BAD_JSON, _syntax_message(file, exc, missing)) from exc
    for name in duplicates:
        logger.warning('key "%s" appears twice in one object of %s: the last value wins', name, file)
    if not isinstance(data, dict):
        raise DicomVaultError(ErrorCode.BAD_JSON, f"configuration file {file} must hold a JSON object {{...}}")
    return data


def _object(pairs: Iterable[tuple[str, Any]], duplicates: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            duplicates.append(name)
        result[name] = value
    return result


_JSON5_POSITION = re.compile(r"^<string>:(\d+) (.*)$", re.DOTALL)


def _syntax_message(file: Path, exc: ValueError, missing: set[str]) -> str:
    match = _JSON5_POSITION.match(str(exc))
    where = f"line {match[1]}: {match[2]}" if match else str(exc)
    message = f"configuration file {file} is not valid JSON: {where}"
    if missing:
        names = ", ".join(sorted(missing))
        message += f" (unset environment variables replaced by nothing: {names})"
    return message


# --- ${VAR} substitution -----------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\{([^}]*)\}")
# Strings, comments and variables of JSON/JSON5 text; everything else is left as it is.
_TOKENS = re.compile(
    r"""(?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
    r"|(?P<comment>//[^\n]*|/\*.*?\*/)"
    r"|(?P<variable>\$\{[^}]*\})",
    re.DOTALL,
)


def _lookup(variable: str, env: Mapping[str, str], missing: set[str]) -> tuple[str, bool]:
    """(replacement, came_from_env) for the inside of `${...}`."""
    name, has_default, default = variable.partition(":-")
    if name in env:
        return env[name], True
    if has_default:
        return default, False
    missing.add(name)
    return "", True


def _substitute_text(text: str, env: Mapping[str, str], missing: set[str]) -> str:
    """Replace `${VAR}` / `${VAR:-default}` in JSON text, as Orthanc does before parsing.

    Outside strings the value goes in verbatim (so it can be a number); inside a string an
    environment value is escaped for that string (a default, written in the file, is already
    JSON text). Comments are left alone. Names of unset variables are added to `missing`.
    """

    def in_string(match: re.Match[str], quote: str) -> str:
        value, from_env = _lookup(match[1], env, missing)
        if not from_env:
            return value
        escaped = json.dumps(value, ensure_ascii=False)[1:-1]
        return escaped.replace("'", "\\'") if quote == "'" else escaped

    def token(match: re.Match[str]) -> str:
        if match["string"] is not None:
            text = match["string"]
            return _VARIABLE.sub(lambda m: in_string(m, text[0]), text)
        if match["variable"] is not None:
            return _lookup(match["variable"][2:-1], env, missing)[0]
        return match[0]

    return _TOKENS.sub(token, text)


def _substitute_plain(text: str, env: Mapping[str, str], missing: set[str]) -> str:
    return _VARIABLE.sub(lambda m: _lookup(m[1], env, missing)[0], text)


def _substitute_tree(value: Any, env: Mapping[str, str], missing: set[str]) -> Any:
    if isinstance(value, str):
        return _substitute_plain(value, env, missing)
    if isinstance(value, Mapping):
        return {_substitute_plain(k, env, missing): _substitute_tree(v, env, missing) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_substitute_tree(v, env, missing) for v in value]
    return value


def _warn_missing(missing: set[str], where: str) -> None:
    for name in sorted(missing):
        logger.warning('environment variable "%s" used in %s is not set: replaced by an empty string', name, where)


# --- Checking ---------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({json.dumps(value)})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a number ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({json.dumps(shown)})"
    if isinstance(value, list):
        return "a list"
    return "an object"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


_SHAPE_CHECKS: Mapping[Kind, Callable[[Any], bool]] = MappingProxyType(
    {
        Kind.BOOL: lambda v: isinstance(v, bool),
        Kind.INT: _is_int,
        Kind.UINT: _is_int,
        Kind.STR: lambda v: isinstance(v, str),
        Kind.PATH: lambda v: isinstance(v, str),
        Kind.STRINGS: _is_strings,
        Kind.PATHS: _is_strings,
        Kind.STRING_OR_STRINGS: lambda v: isinstance(v, str) or _is_strings(v),
        Kind.OBJECT: lambda v: isinstance(v, dict),
        Kind.OBJECT_OF_STRINGS: lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
        Kind.OBJECT_OF_INTS: lambda v: isinstance(v, dict) and all(_is_int(x) for x in v.values()),
        Kind.ANY: lambda v: True,
    }
)


def _check(key: Key, value: Any, where: str) -> None:
    option = f'configuration option "{key.name}" in {where}'
    if not _SHAPE_CHECKS[key.kind](value):
        article = "an" if key.kind.value[0] in "aeiou" else "a"
        raise DicomVaultError(
            ErrorCode.BAD_PARAMETER_TYPE,
            f"{option} must be {article} {key.kind.value}, not {_describe(value)}",
        )
    if key.kind in (Kind.INT, Kind.UINT, Kind.OBJECT_OF_INTS):
        low = 0 if key.kind is Kind.UINT and key.minimum is None else key.minimum
        high = key.maximum
        for number in value.values() if isinstance(value, dict) else (value,):
            if (low is not None and number < low) or (high is not None and number > high):
                raise DicomVaultError(
                    ErrorCode.PARAMETER_OUT_OF_RANGE,
                    f"{option} must be {_bounds(low, high)}, not {number}",
                )
    if key.choices and value not in key.choices:
        allowed = ", ".join(f'"{c}"' for c in key.choices)
        raise DicomVaultError(
            ErrorCode.PARAMETER_OUT_OF_RANGE, f"{option} must be one of {allowed}, not {_describe(value)}"
        )


def _bounds(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"between {low} and {high}"
    return f"at least {low}" if low is not None else f"at most {high}"


def _warn_unknown(name: str, where: str) -> None:
    lowered = {k.lower(): k for k in KEYS_BY_NAME}
    guess = lowered.get(name.lower()) or next(
        iter(difflib.get_close_matches(name, KEYS_BY_NAME, n=1, cutoff=0.8)), None
    )
    hint = f' (did you mean "{guess}"?)' if guess else ""
    logger.warning('unknown configuration key "%s" in %s is ignored%s', name, where, hint)


# --- Building ---------------------------------------------------------------------------------


def _freeze(value: Any) -> Any:
    """A read-only deep copy of JSON data: objects become mappings, lists become tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


def _convert(key: Key, value: Any, base: Path) -> Any:
    if value is None:
        return None
    if key.kind is Kind.PATH:
        return base / value
    if key.kind is Kind.STRING_OR_STRINGS and isinstance(value, str):
        return (value,)
    return _freeze(value)


def _build(
    raw: dict[str, Any], origins: Mapping[str, str], *, source: str, files: tuple[Path, ...], base: Path
) -> Config:
    for name, value in raw.items():
        where = origins.get(name, source)
        if name in KEYS_BY_NAME:
            _check(KEYS_BY_NAME[name], value, where)
        else:
            _warn_unknown(name, where)
    fields = {k.field: _convert(k, raw.get(k.name, k.default), base) for k in KEYS if k.field}
    if fields["index_directory"] is None:
        fields["index_directory"] = fields["storage_directory"]
    fields["authentication_enabled"], fields["registered_users"] = _effective_authentication(
        raw, fields["registered_users"]
    )
    aet = fields["dicom_aet"]
    if fields["dicom_server_enabled"] and not 1 <= len(aet) <= MAX_AET_LENGTH:
        raise DicomVaultError(
            ErrorCode.PARAMETER_OUT_OF_RANGE,
            f'configuration option "DicomAet" in {origins.get("DicomAet", source)} must have 1 to '
            f"{MAX_AET_LENGTH} characters, not {len(aet)} ({aet!r})",
        )
    return Config(**fields, raw=_freeze(raw), source=source, files=files, base_directory=base)


def _effective_authentication(raw: Mapping[str, Any], users: Mapping[str, str]) -> tuple[bool, Mapping[str, str]]:
    """Orthanc's rules (>= 1.5.8), observed on 1.10.1: see the module docstring."""
    remote = bool(raw.get("RemoteAccessAllowed", False))
    explicit = raw.get("AuthenticationEnabled")
    enabled = remote if explicit is None else bool(explicit)
    if remote and explicit is False:
        logger.warning("remote HTTP access is allowed with authentication explicitly disabled: insecure")
    if enabled and not users:
        if remote:
            logger.warning(
                'HTTP authentication is on but "RegisteredUsers" is empty: creating the default user '
                '"%s" (password "%s"), as Orthanc does. This setup is INSECURE: declare users.',
                *DEFAULT_USER,
            )
            return True, MappingProxyType({DEFAULT_USER[0]: DEFAULT_USER[1]})
        logger.warning('HTTP authentication is on but "RegisteredUsers" is empty: every request will be refused')
    return enabled, users
