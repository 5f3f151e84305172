"""The differential harness: the same uploads and the same requests sent to the real Orthanc 1.10.1 and to
dicomvault, whose answers must be identical.

Compared exactly: status codes, Content-Type, JSON bodies (as sorted, indented JSON text, so that
`1`, `1.0` and `true` stay distinct) and binary bodies byte for byte. Normalised first, and nothing
else: timestamps (`YYYYMMDDTHHMMSS` strings), attachment uuids (`FileUuid`, the uuid of a
Content-Disposition file name). For errors: the status alone where Orthanc sends no body (dicomvault
sends Orthanc's JSON error body there by design), otherwise the fields of Orthanc's error body except
`Details`. A failure prints a unified diff of both answers and the tail of both servers' logs.

One Orthanc and one dicomvault per pytest session (or xdist worker); between tests both are emptied
over REST. Read-only requests share one upload of the corpus (`tests.differential_cases`).

`DICOMVAULT_DIFF_AGAINST=orthanc` compares Orthanc with a second Orthanc instead of dicomvault:
every test must pass then, which checks that the normalisation hides nothing but run-specific data.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.differential_cases import Check, Item
from tests.orthanc import OrthancServer, delete_all_patients, log_tail, missing_orthanc_reason, orthanc_available
from tests.servers import RunningServer

# Configuration given to both servers (each adds its own folders and ports). A long StableAge keeps
# `IsStable` false for the whole session, on both sides, whatever the run time.
SHARED_CONFIG: dict[str, Any] = {
    "DicomAet": "ORTHANC",
    "RemoteAccessAllowed": False,
    "AuthenticationEnabled": False,
    "StorageCompression": False,
    "OverwriteInstances": False,
    "MaximumStorageSize": 0,
    "MaximumPatientCount": 0,
    "StableAge": 3600,
    "DefaultEncoding": "Latin1",
    "CheckRevisions": False,
    "HttpCompressionEnabled": True,
    "SaveJobs": False,
    "Plugins": [],
}
AUTH_CONFIG: dict[str, Any] = {**SHARED_CONFIG, "AuthenticationEnabled": True, "RegisteredUsers": {"alice": "secret"}}
SYSTEM_KEYS = (
    "ApiVersion",
    "DatabaseVersion",
    "DicomAet",
    "Version",
    "CheckRevisions",
    "DatabaseBackendPlugin",
    "StorageAreaPlugin",
)
TIMESTAMP = re.compile(r"^\d{8}T\d{6}$")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
DICOM_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
ERROR_KEYS = ("HttpStatus", "OrthancStatus", "Method", "Uri", "HttpError", "OrthancError", "Message")


# ---- answers and their comparison -------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int  # 0: no HTTP answer at all (connection refused, server crashed...)
    content_type: str
    disposition: str
    body: bytes
    authenticate: str = ""  # WWW-Authenticate

    def parsed(self) -> tuple[bool, Any]:
        try:
            return True, json.loads(self.body)
        except ValueError:
            return False, None


def normalise(value: Any) -> Any:
    """Hide what legitimately differs between two runs: timestamps and attachment uuids."""
    if isinstance(value, dict):
        return {key: "<uuid>" if key == "FileUuid" else normalise(item) for key, item in value.items()}
    if isinstance(value, list):
        return [normalise(item) for item in value]
    if isinstance(value, str) and TIMESTAMP.match(value):
        return "<timestamp>"
    return value


def _body_view(answer: Answer) -> dict[str, Any]:
    ok, parsed = answer.parsed()
    if answer.content_type.startswith("application/json"):
        if ok:
            return {"json": normalise(parsed)}
        return {"unparseable json": answer.body[:2000].decode("utf-8", "replace")}
    digest = hashlib.sha256(answer.body).hexdigest()
    return {"bytes": {"size": len(answer.body), "sha256": digest, "start": answer.body[:64].hex()}}


def _sort_key(item: Any) -> str:
    return str(item.get("ID")) if isinstance(item, dict) else json.dumps(item, sort_keys=True)


def _success_view(answer: Answer, unordered: bool) -> dict[str, Any]:
    view: dict[str, Any] = {"status": answer.status, "content-type": answer.content_type}
    if answer.disposition:
        view["content-disposition"] = UUID.sub("<uuid>", answer.disposition)
    view.update(_body_view(answer))
    if unordered and isinstance(view.get("json"), list):
        view["json"] = sorted(view["json"], key=_sort_key)
    return view


def _error_view(answer: Answer) -> dict[str, Any]:
    ok, parsed = answer.parsed()
    if ok and isinstance(parsed, dict):
        return {"status": answer.status, "error": {key: parsed.get(key, "<absent>") for key in ERROR_KEYS}}
    return {"status": answer.status, "body": answer.body[:2000].decode("utf-8", "replace")}


def _special_view(check: Check, answer: Answer) -> dict[str, Any]:
    view: dict[str, Any] = {"status": answer.status, "content-type": answer.content_type}
    text = answer.body.decode("utf-8", "replace")
    if check is Check.SYSTEM:
        ok, parsed = answer.parsed()
        view["json"] = {key: parsed.get(key, "<absent>") for key in SYSTEM_KEYS} if ok else text
    elif check is Check.NOW:
        view["format"] = "YYYYMMDDTHHMMSS" if TIMESTAMP.match(text) else text
    else:
        # Orthanc makes a DICOM UID, except at the patient level: a UUID (PatientID is no UID).
        if DICOM_UID.match(text) and len(text) <= 64:
            view["syntax"] = "DICOM UID"
        elif UUID.fullmatch(text):
            view["syntax"] = "UUID"
        else:
            view["syntax"] = text
    return view


def views(reference: Answer, candidate: Answer, check: Check = Check.EXACT, unordered: bool = False) -> tuple[Any, Any]:
    """What is compared of each answer, given Orthanc's (the reference) kind of answer."""
    if reference.status == 401:
        # Clients (browsers, scripts) react to the challenge: compare it, beyond the status.
        return (
            {"status": reference.status, "www-authenticate": reference.authenticate},
            {"status": candidate.status, "www-authenticate": candidate.authenticate},
        )
    if reference.status >= 400 or reference.status == 0:
        if not reference.body:
            # Orthanc sends no body with some errors (unknown id, wrong method): status only.
            return {"status": reference.status}, {"status": candidate.status}
        return _error_view(reference), _error_view(candidate)
    if check is not Check.EXACT:
        return _special_view(check, reference), _special_view(check, candidate)
    return _success_view(reference, unordered), _success_view(candidate, unordered)


def dump(view: Any) -> str:
    return json.dumps(view, sort_keys=True, indent=2, ensure_ascii=False)


def _first_difference(a: bytes, b: bytes) -> str:
    at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"first differing byte at offset {at}: {a[at : at + 32].hex()} vs {b[at : at + 32].hex()}"


# ---- the two servers --------------------------------------------------------------------------


@dataclass
class Side:
    name: str
    client: httpx.Client
    log: Callable[[], str]

    def send(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: Sequence[tuple[str, str]] = (),
        auth: tuple[str, str] | None = None,
    ) -> Answer:
        try:
            response = self.client.request(method, url, content=body, headers=list(headers), auth=auth)
        except httpx.HTTPError as exc:
            return Answer(0, "", "", f"no answer: {exc!r}".encode())
        return Answer(
            response.status_code,
            response.headers.get("content-type", ""),
            response.headers.get("content-disposition", ""),
            response.content,
            response.headers.get("www-authenticate", ""),
        )


@dataclass
class Pair:
    """Orthanc (the reference) and the server under test, fed and queried identically."""

    reference: Side
    candidate: Side
    state: str | None = None  # name of the data set both hold now (None: unknown or mutated)
    failures: list[str] = field(default_factory=list)
    loaded: tuple[bytes, bytes] = (b"", b"")  # both `/statistics` right after `load()`

    def reset(self) -> None:
        self.state = None
        for side in (self.reference, self.candidate):
            delete_all_patients(side.client)

    def load(self, name: str, items: Sequence[Item]) -> None:
        """Make both servers hold exactly `items` (uploaded in order), unless they already do."""
        if self.state == name:
            return
        self.reset()
        for item in items:
            answer = self.reference.send("POST", "/instances", item.data)
            if answer.status != 200:
                raise RuntimeError(f"Orthanc refused {item.name}: {answer.status} {answer.body[:300]!r}")
            # A refusal by the candidate is left to the tests that read the instance to report.
            self.candidate.send("POST", "/instances", item.data)
        self.state = name
        self.loaded = self._statistics()

    def _statistics(self) -> tuple[bytes, bytes]:
        return self.reference.send("GET", "/statistics").body, self.candidate.send("GET", "/statistics").body

    def forget_if_changed(self) -> None:
        """After a request that should have changed nothing: reload next time if something did."""
        if self._statistics() != self.loaded:
            self.state = None

    def compare(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: Sequence[tuple[str, str]] = (),
        check: Check = Check.EXACT,
        auth: tuple[str, str] | None = None,
        unordered: bool = False,
    ) -> None:
        """Send the request to both; record a readable report if the answers differ."""
        reference = self.reference.send(method, url, body, headers, auth)
        candidate = self.candidate.send(method, url, body, headers, auth)
        expected, actual = views(reference, candidate, check, unordered)
        text_expected, text_actual = dump(expected), dump(actual)
        if text_expected == text_actual:
            return
        diff = "\n".join(
            difflib.unified_diff(
                text_expected.splitlines(),
                text_actual.splitlines(),
                fromfile=f"{self.reference.name} {method} {url}",
                tofile=f"{self.candidate.name} {method} {url}",
                lineterm="",
            )
        )
        if "bytes" in expected and "bytes" in actual:
            diff += "\n" + _first_difference(reference.body, candidate.body)
        self.failures.append(f"{method} {url}\n{diff}")

    def verdict(self) -> None:
        """Fail the test with every difference recorded since the last verdict."""
        failures, self.failures = self.failures, []
        if failures:
            logs = "\n".join(
                f"--- tail of the {side.name} log ---\n{side.log()}" for side in (self.reference, self.candidate)
            )
            pytest.fail("\n\n".join(failures) + "\n\n" + logs, pytrace=False)


def _require_orthanc() -> None:
    if not orthanc_available():
        if os.environ.get("CI"):
            pytest.fail(missing_orthanc_reason(), pytrace=False)
        pytest.skip(missing_orthanc_reason())


@dataclass
class Processes:
    """Every server this module started, stopped together at the end of the session (Orthanc takes
    3-4 s to stop: SIGTERM to all of them first, then wait)."""

    orthancs: list[OrthancServer] = field(default_factory=list)
    others: list[RunningServer] = field(default_factory=list)

    def start_orthanc(self, base: Path, config: dict[str, Any]) -> Side:
        server = OrthancServer(base, config)
        self.orthancs.append(server)
        server.start()
        return Side("orthanc", httpx.Client(base_url=server.url, timeout=30.0), lambda: server.log_tail(20))

    def start_candidate(self, base: Path, config: dict[str, Any]) -> Side:
        against = os.environ.get("DICOMVAULT_DIFF_AGAINST", "dicomvault")
        if against == "orthanc":
            side = self.start_orthanc(base, config)
            side.name = "orthanc-2"
            return side
        if against != "dicomvault":
            raise ValueError(f"DICOMVAULT_DIFF_AGAINST must be 'dicomvault' or 'orthanc', not {against!r}")
        server = RunningServer(base, config)
        self.others.append(server)
        try:
            server.start()
        except RuntimeError as exc:  # the message holds the server's log
            pytest.fail(f"dicomvault did not start: {exc}", pytrace=False)
        return Side(
            "dicomvault", httpx.Client(base_url=server.url, timeout=30.0), lambda: log_tail(server.log_path, 20)
        )

    def stop_all(self) -> None:
        for orthanc in self.orthancs:
            orthanc.terminate()
        for other in self.others:
            other.stop()
        for orthanc in self.orthancs:
            orthanc.wait()


@pytest.fixture(scope="session")
def processes() -> Iterator[Processes]:
    started = Processes()
    yield started
    started.stop_all()


def _make_pair(processes: Processes, factory: pytest.TempPathFactory, config: dict[str, Any]) -> Iterator[Pair]:
    _require_orthanc()
    with ThreadPoolExecutor(2) as pool:  # start both at once: dicomvault's start-up is the slower
        reference = pool.submit(processes.start_orthanc, factory.mktemp("orthanc"), config)
        candidate = pool.submit(processes.start_candidate, factory.mktemp("candidate"), config)
        sides = reference.result(), candidate.result()
    yield Pair(*sides)
    for side in sides:
        side.client.close()


@pytest.fixture(scope="session")
def pair(processes: Processes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    yield from _make_pair(processes, tmp_path_factory, SHARED_CONFIG)


@pytest.fixture(scope="session")
def auth_pair(processes: Processes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    yield from _make_pair(processes, tmp_path_factory, AUTH_CONFIG)


@pytest.fixture
def checked(pair: Pair) -> Pair:
    """The pair, with no difference recorded yet (each test ends with `verdict()`)."""
    pair.failures.clear()
    return pair


__all__ = ["Pair", "auth_pair", "checked", "pair", "processes"]
