"""Fuzzing of the REST inputs against the route table enumerated from the application (so routes
added later are fuzzed too): ids in every `{param}`, query arguments (limit, since, expand, ...),
JSON bodies of /tools/find, /tools/lookup, /modalities/*, metadata and attachment PUTs and archive
POSTs, and headers (Accept, Content-Type, Range, Content-Encoding).

Never a 500 (except the few Orthanc 1.10.1 itself answers with 500, listed in test_security.py),
always Orthanc's JSON error body on a 4xx. Case counts: the "ci" profile (test_fuzz_dicom.py) runs
>= 2,000 derandomized cases per input (marked slow); the fast selection 100.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from dicomvault.server import Server
from tests.orthanc import ORTHANC_BINARY, missing_orthanc_reason, orthanc_available
from tests.routes import (
    _PLACEHOLDER,
    Stored,
    assert_no_server_error,
    enumerate_routes,
    fill,
    populate,
    request_body,
    server_config,
    study_answer,
)
from tests.scu_peer import Peer
from tests.test_fuzz_dicom import PROFILES

pytestmark = [pytest.mark.timeout(600), pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture
def peer() -> Iterator[Peer]:
    with Peer() as started:
        started.find_answers = study_answer
        yield started


@pytest.fixture
def app(make_server: Callable[..., Server], peer: Peer) -> Iterator[tuple[Server, TestClient, Stored]]:
    server = make_server(**server_config(peer, DicomScuTimeout=5))
    server.context.accessor.area._fsync = False  # type: ignore[attr-defined]  # parsing is tested, not durability
    with TestClient(server.app(), raise_server_exceptions=False, client=("127.0.0.1", 1)) as client:  # type: ignore[arg-type]
        yield server, client, populate(client)


# Orthanc's deprecated `/modalities/{m}/find-*` answer a bad query with an empty 400 (rest/queries.py
# mirrors it): the one place a 4xx has no JSON body.
EMPTY_400_ROUTES = ("/find", "/find-patient", "/find-study", "/find-series", "/find-instance")


def check(answer: httpx.Response, method: str, url: str) -> None:
    assert_no_server_error(answer, method, url)
    if answer.status_code == 400 and not answer.content and url.startswith("/modalities/"):
        assert url.endswith(EMPTY_400_ROUTES), (method, url)
        return
    if answer.status_code >= 400 and method != "HEAD" and answer.status_code != 401:
        error = answer.json()
        assert error["HttpStatus"] == answer.status_code, (method, url, error)
        assert {"HttpError", "Message", "Method", "OrthancError", "OrthancStatus", "Uri"} <= set(error), error


def run_counted(profile: str, strategy: st.SearchStrategy[Any], body: Callable[[Any], None]) -> int:
    count = 0

    @settings(settings.get_profile(profile))
    @given(strategy)
    def case(value: Any) -> None:
        nonlocal count
        count += 1
        body(value)

    case()
    assert count >= settings.get_profile(profile).max_examples * 0.95
    return count


# Reads are fuzzed everywhere; writes only where a random input cannot reach the network for long.
SAFE_METHODS = ("GET", "HEAD", "PUT", "POST", "DELETE")
SLOW_ROUTES = ("/retrieve", "/move", "/echo", "/store", "/store-straight")


def fuzzable_routes(server: Server) -> list[tuple[str, str]]:
    return [
        (method, template)
        for method, template in enumerate_routes(server.app())
        if method in SAFE_METHODS and not (method == "POST" and template.endswith(SLOW_ROUTES))
    ]


id_text = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["..", ".", "%2e%2e", "%2F", "%00", "\\", "/etc/passwd", "a" * 5000, "-1", "0", "1e9", "nan"]),
    st.from_regex(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}", fullmatch=True),
)


@pytest.mark.parametrize("profile", PROFILES)
def test_ids_in_every_route(app: tuple[Server, TestClient, Stored], profile: str) -> None:
    server, client, ids = app
    routes = [r for r in fuzzable_routes(server) if "{" in r[1] and r[0] != "DELETE"]

    @st.composite
    def requests(draw: st.DrawFn) -> tuple[str, str]:
        method, template = draw(st.sampled_from(routes))
        names = [m.group(1) for m in _PLACEHOLDER.finditer(template)]
        name = draw(st.sampled_from(names))
        value = draw(id_text)
        encoded = quote(value, safe="") if draw(st.booleans()) else quote(value, safe="/%")
        return method, fill(template, ids, {name: encoded or "x"})

    def body(request: tuple[str, str]) -> None:
        method, url = request
        content, headers = request_body(method, "", ids)
        check(client.request(method, url, content=content, headers=headers), method, url)

    count = run_counted(profile, requests(), body)
    print(f"ids: {count} cases ({profile})")


ARGUMENTS = [
    "limit",
    "since",
    "expand",
    "simplify",
    "short",
    "full",
    "last",
    "requestedTags",
    "transcode",
    "filename",
    "quality",
    "lossless",
    "compress",
    "keep",
    "level",
    "dicom-as-json",
    "ignore-length",
]
arg_value = st.one_of(
    st.text(max_size=20),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(
        ["", "true", "false", "0", "-1", "1.5", "nan", "inf", "9" * 40, "0010,0010", "1.2.840.10008.1.2.4.50"]
    ),
)


@pytest.mark.parametrize("profile", PROFILES)
def test_query_arguments(app: tuple[Server, TestClient, Stored], profile: str) -> None:
    server, client, ids = app
    routes = [r for r in fuzzable_routes(server) if r[0] in ("GET", "HEAD")]

    @st.composite
    def requests(draw: st.DrawFn) -> tuple[str, str, list[tuple[str, str]]]:
        method, template = draw(st.sampled_from(routes))
        args = draw(st.lists(st.tuples(st.sampled_from(ARGUMENTS) | st.text(max_size=8), arg_value), max_size=4))
        return method, fill(template, ids), args

    def body(request: tuple[str, str, list[tuple[str, str]]]) -> None:
        method, url, args = request
        check(client.request(method, url, params=args), method, url)

    count = run_counted(profile, requests(), body)
    print(f"query arguments: {count} cases ({profile})")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)
TAG_NAMES = [
    "PatientName",
    "PatientID",
    "StudyDate",
    "Modality",
    "StudyInstanceUID",
    "0010,0010",
    "0008,0020",
    "SeriesDescription",
    "NotATag",
    "",
    "ffff,ffff",
    "0010-0010",
]
LEVELS = ["Patient", "Study", "Series", "Instance", "patient", "STUDY", "", "Nothing"]


@st.composite
def find_like(draw: st.DrawFn) -> Any:
    """Bodies shaped like /tools/find and /modalities/{m}/query ones, with fields of any type."""
    body: dict[str, Any] = {}
    if draw(st.booleans()):
        body["Level"] = draw(st.sampled_from(LEVELS) | json_values)
    if draw(st.booleans()):
        body["Query"] = draw(
            st.dictionaries(
                st.sampled_from(TAG_NAMES),
                st.text(max_size=20) | st.sampled_from(["*", "?", "-", "20200101-"]) | json_values,
                max_size=4,
            )
            | json_values
        )
    for key in (
        "Expand",
        "Limit",
        "Since",
        "CaseSensitive",
        "RequestedTags",
        "Resources",
        "Synchronous",
        "Asynchronous",
        "Transcode",
        "Normalize",
        "LocalAet",
        "Timeout",
        "AET",
        "Host",
        "Port",
    ):
        if draw(st.integers(0, 5)) == 0:
            body[key] = draw(json_values)
    return body


# Routes whose body is JSON (or text) we fuzz; the template picks the route in the table.
BODY_ROUTES = [
    ("POST", "/tools/find"),
    ("POST", "/tools/lookup"),
    ("POST", "/tools/create-archive"),
    ("POST", "/studies/{id}/archive"),
    ("POST", "/patients/{id}/archive"),
    ("PUT", "/modalities/{id}"),
    ("POST", "/modalities/{id}/query"),
    ("POST", "/modalities/{id}/find-study"),
    ("POST", "/modalities/{id}/find"),
    ("PUT", "/instances/{id}/metadata/{name}"),
    ("PUT", "/instances/{id}/attachments/{name}"),
    ("PUT", "/studies/{id}/metadata/{name}"),
    ("PUT", "/patients/{id}/protected"),
    ("POST", "/queries/{id}/answers/{index}/query-series"),
]


@pytest.mark.parametrize("profile", PROFILES)
def test_json_bodies(app: tuple[Server, TestClient, Stored], profile: str) -> None:
    server, client, ids = app
    table = set(enumerate_routes(server.app()))
    routes = [r for r in BODY_ROUTES if r in table]
    assert len(routes) == len(BODY_ROUTES), set(BODY_ROUTES) - table

    @st.composite
    def requests(draw: st.DrawFn) -> tuple[str, str, bytes]:
        method, template = draw(st.sampled_from(routes))
        override = {"name": draw(st.sampled_from(["1024", "1025", "9999", "Foo", "65535", "65536"]))}
        if template == "/modalities/{id}":
            override["id"] = draw(st.sampled_from(["peer", "new-one"]))  # keep `peer` reachable
        url = fill(template, ids, override)
        kind = draw(st.integers(0, 3))
        if kind == 0:
            content = json.dumps(draw(find_like())).encode()
        elif kind == 1:
            content = json.dumps(draw(json_values)).encode()
        elif kind == 2:
            content = draw(st.binary(max_size=200))
        else:
            content = draw(
                st.sampled_from([ids.instance, ids.study, f'["{ids.study}"]', "", "{", "[]", "null"])
            ).encode()
        return method, url, content

    def body(request: tuple[str, str, bytes]) -> None:
        method, url, content = request
        if url.startswith("/modalities/peer") and method == "PUT":
            return  # replacing `peer` by a random modality would send later requests nowhere
        check(client.request(method, url, content=content), method, url)

    count = run_counted(profile, requests(), body)
    print(f"JSON bodies: {count} cases ({profile})")


HEADER_VALUES = {
    "Accept": st.sampled_from(
        [
            "*/*",
            "application/json",
            "application/dicom",
            "image/png",
            "image/jpeg",
            "text/plain",
            "application/zip",
            "",
            ",,,;q=x",
            "a/b;q=0.0",
        ]
    )
    | st.text(max_size=30),
    "Content-Type": st.sampled_from(
        [
            "application/dicom",
            "application/json",
            "application/zip",
            "multipart/related",
            "text/plain; charset=utf-16",
            "",
        ]
    )
    | st.text(max_size=30),
    "Range": st.sampled_from(
        [
            "bytes=0-10",
            "bytes=-5",
            "bytes=10-",
            "bytes=5-1",
            "bytes=0-0,2-3",
            "bytes=999999-",
            "items=0-1",
            "bytes=",
            "bytes=-0",
            "bytes=18446744073709551616-",
        ]
    )
    | st.text(max_size=30),
    "Content-Encoding": st.sampled_from(["gzip", "deflate", "br", "identity", "gzip, gzip", "", "x"])
    | st.text(max_size=10),
}
HEADER_ROUTES = [
    ("GET", "/instances/{id}/file"),
    ("GET", "/instances/{id}/attachments/{name}/data"),
    ("GET", "/instances/{id}/attachments/{name}/compressed-data"),
    ("GET", "/studies/{id}/archive"),
    ("GET", "/instances/{id}/tags"),
    ("POST", "/instances"),
    ("POST", "/tools/find"),
    ("PUT", "/instances/{id}/attachments/{name}"),
]


@pytest.mark.parametrize("profile", PROFILES)
def test_headers(app: tuple[Server, TestClient, Stored], profile: str) -> None:
    server, client, ids = app
    table = set(enumerate_routes(server.app()))
    image_routes = [
        r for r in table if r[0] == "GET" and ("/frames/" in r[1] or r[1].endswith(("/preview", "/rendered")))
    ]
    routes = [r for r in HEADER_ROUTES if r in table] + sorted(image_routes)[:6]
    valid = (ids.instance + "\n").encode()

    @st.composite
    def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes]:
        method, template = draw(st.sampled_from(routes))
        headers = {}
        for name, values in HEADER_VALUES.items():
            if draw(st.booleans()):
                value = draw(values)
                if value.isprintable() and value.isascii() and "\n" not in value and "\r" not in value:
                    headers[name] = value
        content, _ = request_body(method, template, ids)
        if method != "GET" and draw(st.booleans()):
            content = draw(st.binary(max_size=64)) or valid
        return method, fill(template, ids), headers, content or b""

    def body(request: tuple[str, str, dict[str, str], bytes]) -> None:
        method, url, headers, content = request
        check(client.request(method, url, headers=headers, content=content or None), method, url)

    count = run_counted(profile, requests(), body)
    print(f"headers: {count} cases ({profile})")


# ---- schemathesis, on Orthanc 1.10.1's own OpenAPI description ------------------------------------------


def orthanc_openapi_for_our_routes(server: Server, folder: Path) -> dict[str, Any]:
    """`Orthanc --openapi` (generated now, never stored in the repository), restricted to the
    routes and methods dicomvault has."""
    path = folder / "orthanc-openapi.json"
    subprocess.run([str(ORTHANC_BINARY), f"--openapi={path}"], check=True, capture_output=True, timeout=60)
    description: dict[str, Any] = json.loads(path.read_text())

    def shape(template: str) -> str:
        return re.sub(r"\{[^}]*\}", "{}", template)

    ours: dict[str, set[str]] = {}
    for method, template in enumerate_routes(server.app()):
        ours.setdefault(shape(template), set()).add(method.lower())
    kept: dict[str, Any] = {}
    for template, operations in description["paths"].items():
        allowed = {m: op for m, op in operations.items() if m in ours.get(shape(template), set())}
        if allowed:
            kept[template] = allowed
    description["paths"] = kept
    return description


PER_OPERATION = 20  # x 130 operations: > 2,000 cases


@pytest.mark.orthanc
@pytest.mark.slow  # building the strategies of 130 operations alone takes ~10 s
def test_schemathesis_on_orthancs_openapi(app: tuple[Server, TestClient, Stored], tmp_path: Path) -> None:
    """Every operation Orthanc documents that dicomvault has, with schemathesis' generated
    parameters and bodies: half the cases keep its random path parameters, half use real ids so
    the handlers' logic is reached. No 500 (but Orthanc's own), Orthanc's error body on a 4xx."""
    schemathesis = pytest.importorskip("schemathesis")
    if not orthanc_available():
        pytest.skip(missing_orthanc_reason())
    server, client, ids = app
    description = orthanc_openapi_for_our_routes(server, tmp_path)
    schema = schemathesis.openapi.from_dict(description)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 100, len(operations)
    total = 0
    skipped: list[str] = []
    for operation in operations:
        if operation.method.upper() == "POST" and operation.path.endswith(SLOW_ROUTES):
            continue  # real associations to the peer: covered by the JSON body fuzzing above

        @settings(settings.get_profile("ci"), max_examples=PER_OPERATION)
        @given(case=operation.as_strategy(), real_ids=st.booleans())
        def run(case: Any, real_ids: bool) -> None:
            nonlocal total
            total += 1
            url = case.formatted_path
            if real_ids:
                with contextlib.suppress(AssertionError):
                    url = fill(case.path, ids)
            if url.startswith("/modalities/peer") and case.method.upper() in ("PUT", "DELETE"):
                return  # keep the peer modality for the other cases
            body = None if type(case.body).__name__ == "NotSet" else case.body  # schemathesis' "no body"
            content = None
            if body is not None and not isinstance(body, bytes | str):
                content = json.dumps(body).encode()
            elif body is not None:
                content = body if isinstance(body, bytes) else body.encode()
            headers = {
                k: v for k, v in (case.headers or {}).items() if isinstance(v, str) and v.isascii() and v.isprintable()
            }
            answer = client.request(case.method, url, params=case.query or None, content=content, headers=headers)
            check(answer, case.method, url)

        try:
            run()
        except schemathesis.core.errors.SerializationNotPossible:
            skipped.append(f"{operation.method.upper()} {operation.path}")  # DICOM/zip bodies: fuzzed elsewhere
    print(
        f"schemathesis: {total} cases over {len(operations)} operations of Orthanc's OpenAPI; not generated: {skipped}"
    )
