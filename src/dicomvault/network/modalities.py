"""The DICOM modalities this server knows (`DicomModalities`): their parameters, their
permissions, and the registry `/modalities` manages at run time.

A modality is configured in Orthanc's two forms: an array `["AET", "host", port]` (optionally a
fourth item, the manufacturer) or an object with `AET`, `Host`, `Port` and optional `Manufacturer`,
`AllowEcho`, `AllowFind`, `AllowFindWorklist`, `AllowGet`, `AllowMove`, `AllowStore`,
`AllowNAction`, `AllowEventReport`, `AllowTranscoding`, `LocalAet`, `Timeout`, `UseDicomTls`.
`GET /modalities?expand` renders every modality in the object form with every field, as Orthanc
1.10.1 does.

With `DicomModalitiesInDatabase`, the registry is kept in the index (global property
`Modalities`), so changes made over REST survive restarts; otherwise they last until the server
stops, and the configuration file alone decides at start-up.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from dicomvault.enums import GlobalProperty
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.index.database import Index
from dicomvault.index.transactions import ReadTx, WriteTx

logger = logging.getLogger(__name__)

MAX_AET_LENGTH = 16


@dataclass(frozen=True)
class RemoteModality:
    """One entry of `DicomModalities`. Field names are the JSON keys, in Orthanc's spelling."""

    aet: str
    host: str
    port: int
    manufacturer: str = "Generic"
    allow_echo: bool = True
    allow_find: bool = True
    allow_find_worklist: bool = True
    allow_get: bool = True
    allow_move: bool = True
    allow_store: bool = True
    allow_n_action: bool = True
    allow_event_report: bool = True
    allow_transcoding: bool = True
    local_aet: str = ""
    timeout: int = 0  # seconds, 0 = the global DicomScuTimeout
    use_dicom_tls: bool = False

    def to_json(self) -> dict[str, Any]:
        """Orthanc's object form, every field present."""
        return {_JSON_NAMES[f.name]: getattr(self, f.name) for f in fields(self)}

    def allows(self, permission: str) -> bool:
        """`permission` is one of "Echo", "Find", "FindWorklist", "Get", "Move", "Store"."""
        return bool(getattr(self, _PERMISSIONS[permission]))


_JSON_NAMES: dict[str, str] = {
    "aet": "AET",
    "host": "Host",
    "port": "Port",
    "manufacturer": "Manufacturer",
    "allow_echo": "AllowEcho",
    "allow_find": "AllowFind",
    "allow_find_worklist": "AllowFindWorklist",
    "allow_get": "AllowGet",
    "allow_move": "AllowMove",
    "allow_store": "AllowStore",
    "allow_n_action": "AllowNAction",
    "allow_event_report": "AllowEventReport",
    "allow_transcoding": "AllowTranscoding",
    "local_aet": "LocalAet",
    "timeout": "Timeout",
    "use_dicom_tls": "UseDicomTls",
}
_FIELDS_BY_JSON = {v: k for k, v in _JSON_NAMES.items()}
_PERMISSIONS = {
    "Echo": "allow_echo",
    "Find": "allow_find",
    "FindWorklist": "allow_find_worklist",
    "Get": "allow_get",
    "Move": "allow_move",
    "Store": "allow_store",
}
_BOOLEANS = frozenset(name for name in _JSON_NAMES if name.startswith("allow_") or name == "use_dicom_tls")


def _bad(name: str, why: str) -> DicomVaultError:
    return DicomVaultError(ErrorCode.BAD_FILE_FORMAT, f'bad definition of the DICOM modality "{name}": {why}')


def _port(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise _bad(name, f"the port must be an integer, not {value!r}")
    try:
        port = int(value)
    except (TypeError, ValueError) as exc:
        raise _bad(name, f"the port must be an integer, not {value!r}") from exc
    if not 1 <= port <= 65534:  # Orthanc 1.10.1's range, code 3 (observed)
        raise DicomVaultError(
            ErrorCode.PARAMETER_OUT_OF_RANGE,
            f'DICOM modality "{name}": a TCP port number must be in range [1..65534], but found: {port}',
        )
    return port


# Orthanc 1.10.1's manufacturers, and the obsolete names it still accepts in their place (observed:
# any other name, or another case, is refused with code 3).
MANUFACTURERS = ("Generic", "GenericNoWildcardInDates", "GenericNoUniversalWildcard", "Vitrea", "GE")
_OBSOLETE_MANUFACTURERS = {
    "ClearCanvas": "Generic",
    "Dcm4Chee": "Generic",
    "MedInria": "Generic",
    "EFilm2": "Generic",
    "SyngoVia": "GenericNoWildcardInDates",
    "AgfaImpax": "GenericNoWildcardInDates",
}


def _manufacturer(name: str, value: Any) -> str:
    if isinstance(value, str):
        if value in MANUFACTURERS:
            return value
        if value in _OBSOLETE_MANUFACTURERS:
            return _OBSOLETE_MANUFACTURERS[value]
    raise DicomVaultError(
        ErrorCode.PARAMETER_OUT_OF_RANGE,
        f'DICOM modality "{name}": unknown manufacturer {value!r} (known: {", ".join(MANUFACTURERS)})',
    )


def _aet(name: str, value: Any, what: str = "AET") -> str:
    if not isinstance(value, str):
        raise _bad(name, f"the {what} must be a string, not {value!r}")
    if len(value) > MAX_AET_LENGTH or (what == "AET" and not value):
        raise _bad(name, f"the {what} must have 1 to {MAX_AET_LENGTH} characters, not {value!r}")
    return value


def parse_modality(name: str, value: Any) -> RemoteModality:
    """A modality from either of Orthanc's two forms; a clear error (400 over REST) otherwise."""
    if isinstance(value, list | tuple):
        if len(value) not in (3, 4) or not all(isinstance(v, str | int) for v in value):
            raise _bad(name, 'expected ["AET", "host", port] or ["AET", "host", port, "manufacturer"]')
        manufacturer = _manufacturer(name, value[3]) if len(value) == 4 else "Generic"
        return RemoteModality(_aet(name, value[0]), _host(name, value[1]), _port(name, value[2]), manufacturer)
    if not isinstance(value, Mapping):
        raise _bad(name, "expected an array or an object")
    for key in ("AET", "Host", "Port"):
        if key not in value:
            raise _bad(name, f'the field "{key}" is missing')
    kwargs: dict[str, Any] = {}
    for key, item in value.items():
        attr = _FIELDS_BY_JSON.get(key)
        if attr is None:
            logger.warning('unknown field "%s" in the definition of the DICOM modality "%s" is ignored', key, name)
            continue
        if attr == "aet":
            kwargs[attr] = _aet(name, item)
        elif attr == "local_aet":
            kwargs[attr] = _aet(name, item, "LocalAet") if item else ""
        elif attr == "host":
            kwargs[attr] = _host(name, item)
        elif attr == "port":
            kwargs[attr] = _port(name, item)
        elif attr == "manufacturer":
            kwargs[attr] = _manufacturer(name, item)
        elif attr == "timeout":
            if isinstance(item, bool) or not isinstance(item, int) or item < 0:
                raise _bad(name, f"Timeout must be a non-negative integer, not {item!r}")
            kwargs[attr] = item
        elif attr in _BOOLEANS:
            if not isinstance(item, bool):
                raise _bad(name, f"{key} must be true or false, not {item!r}")
            kwargs[attr] = item
        else:
            if not isinstance(item, str):
                raise _bad(name, f"{key} must be a string, not {item!r}")
            kwargs[attr] = item
    return RemoteModality(**kwargs)


def _host(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _bad(name, f"the host must be a non-empty string, not {value!r}")
    return value


def same_aet(a: str, b: str, strict: bool) -> bool:
    """Orthanc's AET comparison: `StrictAetComparison` makes it case-sensitive."""
    return a == b if strict else a.upper() == b.upper()


class Modalities:
    """The modalities by symbolic name; safe to use from any thread."""

    def __init__(
        self,
        configured: Mapping[str, Any],
        *,
        strict_aet: bool = False,
        check_host: bool = False,
        index: Index | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._strict = strict_aet
        self._check_host = check_host
        self._index = index  # set when DicomModalitiesInDatabase is true
        stored = index.read(_load) if index is not None else None
        source = stored if stored is not None else configured
        self._by_name: dict[str, RemoteModality] = {name: parse_modality(name, v) for name, v in source.items()}
        if index is not None and stored is None:
            self._save()

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._by_name)

    def all(self) -> dict[str, RemoteModality]:
        with self._lock:
            return dict(self._by_name)

    def get(self, name: str) -> RemoteModality:
        """The modality called `name`; Orthanc's "Unknown modality" (404 over REST) otherwise."""
        with self._lock:
            modality = self._by_name.get(name)
        if modality is None:
            raise DicomVaultError(ErrorCode.INEXISTENT_ITEM, f"unknown DICOM modality: {name}")
        return modality

    def put(self, name: str, value: Any) -> RemoteModality:
        """Create or replace `name` from either configuration form."""
        if not name:
            raise DicomVaultError(ErrorCode.BAD_REQUEST, "a modality needs a non-empty symbolic name")
        modality = parse_modality(name, value)
        with self._lock:
            self._by_name[name] = modality
            self._save_locked()
        logger.info('DICOM modality "%s" is now %s', name, modality)
        return modality

    def delete(self, name: str) -> None:
        with self._lock:
            if self._by_name.pop(name, None) is None:
                raise DicomVaultError(ErrorCode.INEXISTENT_ITEM, f"unknown DICOM modality: {name}")
            self._save_locked()
        logger.info('DICOM modality "%s" was removed', name)

    def by_aet(self, aet: str, remote_ip: str | None = None) -> list[RemoteModality]:
        """The modalities whose AET is `aet` (and whose host is `remote_ip` with
        `DicomCheckModalityHost`): those a calling peer may be."""
        with self._lock:
            found = [m for m in self._by_name.values() if same_aet(m.aet, aet, self._strict)]
        if self._check_host and remote_ip is not None:
            found = [m for m in found if m.host == remote_ip]
        return found

    def by_aet_unique(self, aet: str) -> RemoteModality:
        """The modality a C-MOVE destination AET names; "Unknown modality" if none (or several
        disagreeing ones) has it."""
        matches = self.by_aet(aet)
        distinct = {(m.host, m.port) for m in matches}
        if len(distinct) != 1:
            why = "no modality has" if not matches else "several modalities with different addresses have"
            raise DicomVaultError(ErrorCode.UNKNOWN_MODALITY, f'{why} the AET "{aet}" in DicomModalities')
        return matches[0]

    def with_changes(self, name: str, **changes: Any) -> RemoteModality:
        """`name`'s parameters with some fields replaced (for a one-off `LocalAet` or `Timeout`)."""
        return replace(self.get(name), **changes)

    def _save(self) -> None:
        with self._lock:
            self._save_locked()

    def _save_locked(self) -> None:
        if self._index is None:
            return
        data = json.dumps({name: m.to_json() for name, m in self._by_name.items()}, sort_keys=True)

        def write(tx: WriteTx) -> None:
            tx.set_global_property(GlobalProperty.MODALITIES, data)

        self._index.write(write)


def _load(tx: ReadTx) -> dict[str, Any] | None:
    raw = tx.global_property(GlobalProperty.MODALITIES)
    if raw is None:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        logger.error("the modalities stored in the database are not valid JSON: the configuration file is used")
        return None
    return data if isinstance(data, dict) else None
