"""Differential tests of metadata and attachments against the real Orthanc 1.10.1 (harness:
`tests/differential.py`): every route, its error cases, writes with and without `CheckRevisions`,
compression.

Compared beyond what `Pair.compare` compares: the MD5 part of the `ETag` header, and answers that
hold attachment uuids (`info`) or timestamps as plain text (`metadata/ReceptionDate`), normalised
here. The revision part of ETags is not compared: Orthanc's SQLite index always reports revision
0, dicomvault keeps real revisions (see `dicomvault.find.metadata`); requests that send an ETag
back send each server the one it answered itself.

Known, deliberate differences are asserted as such (`test_known_deviations`), so that a change on
either side is noticed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.differential import SHARED_CONFIG, Pair, Processes, Side, _make_pair, dump
from tests.differential_cases import CORPUS, corpus_ids

pytestmark = [pytest.mark.orthanc]

ITEMS = [item for item in CORPUS if item.name in ("I_A1_CT_1", "I_A1_CT_2", "I_A1_MR_1", "I_B1_MF")]
IDS = corpus_ids(ITEMS)
CORPUS_NAME = "metadata-corpus"
STRICT_CONFIG: dict[str, Any] = {
    **SHARED_CONFIG,
    "CheckRevisions": True,
    "UserMetadata": {"Sample": 1024, "Other": 2000},
    "UserContentType": {"sample": 1025, "pdf": [1026, "application/pdf"]},
    # dicomvault's zlib level (Orthanc ignores the key and uses 6): compressed bytes then match.
    "StorageCompressionLevel": 6,
}
TIMESTAMP = re.compile(r"\d{8}T\d{6}")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ETAG = re.compile(r'^"[0-9]+-(.*)"$')
ERROR_KEYS = ("HttpStatus", "OrthancStatus", "Method", "Uri", "HttpError", "OrthancError", "Message")
I = "/instances/{I_A1_CT_1}"  # noqa: E741 - the instance most cases address
READINGS = ("data", "compressed-data", "md5", "compressed-md5", "size", "compressed-size", "info", "is-compressed")


@pytest.fixture(scope="session")
def strict_pair(processes: Processes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    yield from _make_pair(processes, tmp_path_factory, STRICT_CONFIG)


@pytest.fixture
def strict(strict_pair: Pair) -> Pair:
    strict_pair.failures.clear()
    return strict_pair


# ---- sending to both and comparing ------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    headers: httpx.Headers
    body: bytes


def send(side: Side, method: str, url: str, body: bytes | None, headers: Sequence[tuple[str, str]]) -> Reply:
    try:
        answer = side.client.request(method, url, content=body, headers=list(headers))
    except httpx.HTTPError as exc:
        return Reply(0, httpx.Headers(), f"no answer: {exc!r}".encode())
    return Reply(answer.status_code, answer.headers, answer.content)


def _normalise(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _normalise(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_normalise(item) for item in value]
    if isinstance(value, str):
        return UUID.sub("<uuid>", TIMESTAMP.sub("<timestamp>", value))
    return value


def _success_view(reply: Reply) -> dict[str, Any]:
    content_type = reply.headers.get("content-type", "")
    view: dict[str, Any] = {"status": reply.status, "content-type": content_type}
    if "content-disposition" in reply.headers:
        view["content-disposition"] = UUID.sub("<uuid>", reply.headers["content-disposition"])
    etag = reply.headers.get("etag")
    if etag is not None:
        match = ETAG.match(etag)
        view["etag"] = f"<revision>-{match.group(1)}" if match else etag
    if content_type.startswith("application/json"):
        try:
            view["json"] = _normalise(json.loads(reply.body))
        except ValueError:
            view["unparseable json"] = reply.body[:2000].decode("utf-8", "replace")
    elif content_type.startswith("text/plain"):
        text = reply.body.decode("utf-8", "replace")
        view["text"] = _normalise(text)
        if "etag" in view and TIMESTAMP.search(text):
            view["etag"] = "<revision>-<md5 of a timestamp>"
    else:
        view["bytes"] = {"size": len(reply.body), "sha256": hashlib.sha256(reply.body).hexdigest()}
    return view


def _error_view(reply: Reply, keys: Sequence[str]) -> dict[str, Any]:
    try:
        parsed = json.loads(reply.body)
    except ValueError:
        return {"status": reply.status, "body": reply.body[:500].decode("utf-8", "replace")}
    if not isinstance(parsed, dict):
        return {"status": reply.status, "body": parsed}
    return {"status": reply.status, "error": {key: parsed.get(key, "<absent>") for key in keys}}


def views(reference: Reply, candidate: Reply, loose_uri: bool = False) -> tuple[Any, Any]:
    if reference.status >= 400 or reference.status == 0:
        if not reference.body:  # Orthanc sends no body: the status alone is compared
            return {"status": reference.status}, {"status": candidate.status}
        keys = [k for k in ERROR_KEYS if not (loose_uri and k == "Uri")]
        return _error_view(reference, keys), _error_view(candidate, keys)
    return _success_view(reference), _success_view(candidate)


def exchange(
    pair: Pair,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Sequence[tuple[str, str]] = (),
    own: tuple[Sequence[tuple[str, str]], Sequence[tuple[str, str]]] = ((), ()),
    loose_uri: bool = False,
) -> tuple[Reply, Reply]:
    """Send one request to both (`own`: headers for each side), record any difference."""
    url = path.format(**IDS)
    reference = send(pair.reference, method, url, body, [*headers, *own[0]])
    candidate = send(pair.candidate, method, url, body, [*headers, *own[1]])
    expected, actual = views(reference, candidate, loose_uri)
    if dump(expected) != dump(actual):
        pair.failures.append(
            f"{method} {url}\n--- orthanc\n{dump(expected)}\n--- {pair.candidate.name}\n{dump(actual)}"
        )
    return reference, candidate


def own_etags(pair: Pair, path: str, header: str = "If-Match") -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """GET `path` on both (compared) and return, for each side, `header` set to its own ETag."""
    reference, candidate = exchange(pair, "GET", path)
    return (
        [(header, reference.headers.get("etag", '"missing"'))],
        [(header, candidate.headers.get("etag", '"missing"'))],
    )


def loaded(pair: Pair, mutates: bool = True) -> Pair:
    pair.load(CORPUS_NAME, ITEMS)
    if mutates:
        pair.state = None  # reloaded by the next test, whatever happens here
    return pair


# ---- read-only cases (shared pair, CheckRevisions off) ------------------------------------------


def _read_cases() -> Iterator[str]:
    for level, names in {
        "patients": ["P_A", "P_B", "UNKNOWN", "ST_A1"],
        "studies": ["ST_A1", "UNKNOWN", "P_A"],
        "series": ["SE_A1_CT", "SE_B1_MF", "UNKNOWN", "I_A1_CT_1"],
        "instances": ["I_A1_CT_1", "I_A1_MR_1", "I_B1_MF", "UNKNOWN", "SE_A1_CT"],
    }.items():
        for name in names:
            for suffix in ("metadata", "metadata?expand", "metadata?numeric", "metadata?expand&numeric"):
                yield f"/{level}/{{{name}}}/{suffix}"
            for suffix in ("attachments", "attachments?full", "attachments?expand", "attachments/dicom"):
                if (level, name, suffix) != ("series", "I_A1_CT_1", "attachments/dicom"):  # a deviation
                    yield f"/{level}/{{{name}}}/{suffix}"
    for name in (
        *("IndexInSeries", "ReceptionDate", "RemoteAET", "ExpectedNumberOfInstances", "ModifiedFrom"),
        *("AnonymizedFrom", "LastUpdate", "Origin", "TransferSyntax", "SopClassUid", "RemoteIP"),
        *("CalledAET", "HttpUsername", "PixelDataOffset", "MainDicomTagsSignature", "Sample"),
        *(str(n) for n in range(16)),
        *("02", "-0", "-1", "-", "+2", "1.5", "0x2", "1023", "1024", "65535", "65536", "2147483647"),
        *("2147483648", "-2147483648", "-2147483649", "99999999999", "%202", "2%20", "%092", "%20"),
        *("nope", "indexinseries", "SOPClassUID", "RemoteAet"),
    ):
        yield f"{I}/metadata/{name}"
    for level, name in (("series", "SE_A1_CT"), ("studies", "ST_A1"), ("patients", "P_A")):
        for metadata in ("LastUpdate", "RemoteAET", "ExpectedNumberOfInstances", "7", "3", "Origin", "nope"):
            yield f"/{level}/{{{name}}}/metadata/{metadata}"
    yield "/instances/{UNKNOWN}/metadata/2"
    yield "/instances/{UNKNOWN}/metadata/nope"
    yield "/series/{I_A1_CT_1}/metadata/Origin"
    for name in ("dicom", "1", "01", "DICOM", "dicom-as-json", "dicom-until-pixel-data", "unknown", "0", "2"):
        yield f"{I}/attachments/{name}"
        for reading in (*READINGS, "uuid", "nope"):
            yield f"{I}/attachments/{name}/{reading}"
    for name in ("3", "1023", "1024", "65535", "65536", "-1", "99999999999", "%201", "sample", "nope"):
        yield f"{I}/attachments/{name}"
        yield f"{I}/attachments/{name}/data"
    yield f"{I}/attachments/dicom/data/x"
    yield "/instances/{UNKNOWN}/attachments/dicom/data"
    yield "/instances/{UNKNOWN}/attachments/nope/size"
    yield "/patients/{P_A}/attachments/dicom/data"


READ_CASES = list(dict.fromkeys(_read_cases()))
WRONG_METHODS = [
    ("POST", f"{I}/metadata"),
    ("PUT", f"{I}/metadata"),
    ("DELETE", f"{I}/metadata"),
    ("POST", f"{I}/metadata/1024"),
    ("PUT", f"{I}/attachments"),
    ("DELETE", f"{I}/attachments"),
    ("POST", f"{I}/attachments/dicom"),
    ("POST", f"{I}/attachments/dicom/data"),
    ("PUT", f"{I}/attachments/dicom/data"),
    ("DELETE", f"{I}/attachments/dicom/md5"),
    ("GET", f"{I}/attachments/dicom/compress"),
    ("GET", f"{I}/attachments/dicom/verify-md5"),
    ("PUT", f"{I}/attachments/dicom/uncompress"),
]


@pytest.mark.parametrize("path", READ_CASES)
def test_read(checked: Pair, path: str) -> None:
    # A tab or a line feed in a path: dicomvault's `Uri` (from Starlette's URL) loses it.
    loose = "%09" in path or "%0A" in path
    exchange(loaded(checked, mutates=False), "GET", path, loose_uri=loose)
    checked.verdict()


@pytest.mark.parametrize(("method", "path"), WRONG_METHODS, ids=[f"{m} {p}" for m, p in WRONG_METHODS])
def test_wrong_method(checked: Pair, method: str, path: str) -> None:
    exchange(loaded(checked, mutates=False), method, path, b"x")
    checked.forget_if_changed()
    checked.verdict()


def test_range_and_if_none_match(checked: Pair) -> None:
    loaded(checked, mutates=False)
    for reading in ("", "/data", "/compressed-data", "/md5", "/size", "/info", "/is-compressed"):
        exchange(checked, "GET", f"{I}/attachments/dicom{reading}", headers=[("Range", "bytes=0-9")])
        own = own_etags(checked, f"{I}/attachments/dicom{reading}", "If-None-Match")
        exchange(checked, "GET", f"{I}/attachments/dicom{reading}", own=own)
        for value in ('"99-x"', "junk", "*", '"0"'):
            exchange(checked, "GET", f"{I}/attachments/dicom{reading}", headers=[("If-None-Match", value)])
    own = own_etags(checked, f"{I}/metadata/Origin", "If-None-Match")
    exchange(checked, "GET", f"{I}/metadata/Origin", own=own)
    unquoted = ([(k, v.strip('"')) for k, v in own[0]], [(k, v.strip('"')) for k, v in own[1]])
    exchange(checked, "GET", f"{I}/metadata/Origin", own=unquoted)
    for value in ('"0-x"', "junk", '""', 'W/"0-x"', '"-0-x"'):
        exchange(checked, "GET", f"{I}/metadata/Origin", headers=[("If-None-Match", value)])
    exchange(checked, "GET", f"{I}/metadata/1999", headers=[("If-None-Match", "junk")])
    checked.verdict()


@pytest.mark.parametrize(
    "path",
    [
        f"{I}/attachments/..%2F..%2Fetc/data",
        f"{I}/attachments/%2Fetc%2Fpasswd/data",
        f"{I}/attachments/..%2F..%2F..%2Fdicomvault.db/data",
        f"{I}/attachments/%2E%2E/data",
        f"{I}/metadata/..%2F..%2Fsystem",
    ],
)
def test_path_traversal(checked: Pair, path: str) -> None:
    # Orthanc resolves dot segments of the decoded URI before routing ("/instances/etc/data"), so
    # its `Uri` differs; the status and the error code must not.
    loaded(checked, mutates=False)
    for method in ("GET", "PUT", "DELETE"):
        exchange(checked, method, path, b"x")
    checked.forget_if_changed()
    checked.verdict()


# ---- writes with CheckRevisions off (shared pair) ------------------------------------------------


def test_metadata_writes(checked: Pair) -> None:
    loaded(checked)
    url = f"{I}/metadata/1024"
    exchange(checked, "PUT", url, b"hello")
    exchange(checked, "GET", url)
    exchange(checked, "PUT", url, b"hello2")  # replacing needs no If-Match here
    exchange(checked, "GET", url)
    exchange(checked, "PUT", url, b"hello3", own=own_etags(checked, url))
    exchange(checked, "PUT", url, b"hello4", headers=[("If-Match", '"0-0123456789abcdef0123456789abcdef"')])
    exchange(checked, "PUT", url, b"hello4", headers=[("If-Match", "junk")])
    exchange(checked, "PUT", f"{I}/metadata/1600", b"new", headers=[("If-Match", '"0-ignored-when-absent"')])
    for name, value in (("1500", b"unnamed"), ("65535", b"last"), ("1030", b""), ("1031", "Müller".encode())):
        exchange(checked, "PUT", f"{I}/metadata/{name}", value)
    exchange(checked, "GET", f"{I}/metadata")
    exchange(checked, "GET", f"{I}/metadata?expand")
    for level, name in (("patients", "P_A"), ("studies", "ST_A1"), ("series", "SE_A1_CT")):
        exchange(checked, "PUT", f"/{level}/{{{name}}}/metadata/1024", level.encode())
        exchange(checked, "GET", f"/{level}/{{{name}}}/metadata")
        exchange(checked, "GET", f"/{level}/{{{name}}}/metadata?expand")
        exchange(checked, "GET", f"/{level}/{{{name}}}/metadata/1024")
    for name in ("ReceptionDate", "2", "7", "1023", "65536", "0", "-1", "nope", "%201024", "99999999999"):
        exchange(checked, "PUT", f"{I}/metadata/{name}", b"x")
        exchange(checked, "DELETE", f"{I}/metadata/{name}")
    exchange(checked, "PUT", f"{I}/metadata/2", b"x", headers=[("If-Match", "junk")])
    exchange(checked, "PUT", "/instances/{UNKNOWN}/metadata/1024", b"x")
    exchange(checked, "PUT", "/instances/{UNKNOWN}/metadata/1024", b"x", headers=[("If-Match", "junk")])
    exchange(checked, "PUT", "/instances/{UNKNOWN}/metadata/2", b"x")
    exchange(checked, "DELETE", "/instances/{UNKNOWN}/metadata/1024")
    exchange(checked, "DELETE", url, headers=[("If-Match", '"0-0123456789abcdef0123456789abcdef"')])
    exchange(checked, "DELETE", url, headers=[("If-Match", "junk")])
    exchange(checked, "DELETE", url, own=own_etags(checked, url))
    exchange(checked, "GET", url)
    exchange(checked, "DELETE", url)
    exchange(checked, "DELETE", f"{I}/metadata/1500")
    exchange(checked, "DELETE", f"{I}/metadata/1500")
    exchange(checked, "GET", f"{I}/metadata?expand")
    exchange(checked, "GET", "/statistics")
    checked.verdict()


def test_attachment_writes(checked: Pair) -> None:
    loaded(checked)
    base = f"{I}/attachments"
    exchange(checked, "PUT", f"{base}/1025", b"hello attachment")
    exchange(checked, "PUT", f"{base}/1500", b"x1500")
    exchange(checked, "PUT", f"{base}/65535", b"")
    exchange(checked, "GET", base)
    exchange(checked, "GET", f"{base}?full")
    for name in ("1025", "1500", "65535"):
        exchange(checked, "GET", f"{base}/{name}")
        for reading in (*READINGS, "uuid"):
            exchange(checked, "GET", f"{base}/{name}/{reading}")
        exchange(checked, "POST", f"{base}/{name}/verify-md5")
    exchange(checked, "GET", "/statistics")
    exchange(checked, "PUT", f"{base}/1025", b"second version")  # replacing needs no If-Match here
    exchange(checked, "GET", f"{base}/1025/data")
    exchange(checked, "PUT", f"{base}/1025", b"third", own=own_etags(checked, f"{base}/1025/info"))
    exchange(checked, "PUT", f"{base}/1025", b"4", headers=[("If-Match", '"0-0123456789abcdef0123456789abcdef"')])
    exchange(checked, "PUT", f"{base}/1025", b"4", headers=[("If-Match", "junk")])
    exchange(checked, "GET", f"{base}/1025/data")
    for name in ("dicom", "1", "0", "-1", "3", "1023", "65536", "nope", "99999999999"):
        exchange(checked, "PUT", f"{base}/{name}", b"x")
        exchange(checked, "DELETE", f"{base}/{name}")
    exchange(checked, "PUT", f"{base}/1", b"x", headers=[("If-Match", "junk")])
    exchange(checked, "DELETE", f"{base}/1500", headers=[("If-Match", '"0-0123456789abcdef0123456789abcdef"')])
    exchange(checked, "DELETE", f"{base}/1500", headers=[("If-Match", "junk")])
    exchange(checked, "DELETE", f"{base}/1500", own=own_etags(checked, f"{base}/1500/md5"))
    exchange(checked, "DELETE", f"{base}/1500")
    exchange(checked, "DELETE", f"{base}/65535")
    exchange(checked, "DELETE", "/instances/{UNKNOWN}/attachments/1025")
    exchange(checked, "DELETE", "/instances/{UNKNOWN}/attachments/1025", headers=[("If-Match", "junk")])
    for action in ("compress", "uncompress", "verify-md5"):
        exchange(checked, "POST", f"{base}/1500/{action}")
        exchange(checked, "POST", f"{base}/nope/{action}")
        exchange(checked, "POST", "/instances/{UNKNOWN}/attachments/dicom/" + action)
    exchange(checked, "GET", base)
    for level, name in (("patients", "P_B"), ("studies", "ST_A1"), ("series", "SE_B1_MF")):
        exchange(checked, "PUT", f"/{level}/{{{name}}}/attachments/1025", level.encode())
        exchange(checked, "GET", f"/{level}/{{{name}}}/attachments?full")
        exchange(checked, "GET", f"/{level}/{{{name}}}/attachments/1025/info")
        exchange(checked, "GET", f"/{level}/{{{name}}}/attachments/1025/data")
    exchange(checked, "GET", "/statistics")
    exchange(checked, "DELETE", "/patients/{P_B}")  # its attachments go with it
    exchange(checked, "GET", "/statistics")
    checked.verdict()


def test_changes_logged(checked: Pair) -> None:
    """The `/changes` rows writes leave: UpdatedMetadata, UpdatedAttachment (user attachments only,
    none for a refused request or a compression with nothing to do)."""
    loaded(checked)
    sides = (checked.reference, checked.candidate)
    last = [side.client.get("/changes?last").json()["Last"] for side in sides]
    for method, path, body in (
        ("PUT", f"{I}/metadata/1024", b"a"),
        ("PUT", f"{I}/metadata/1024", b"b"),
        ("PUT", f"{I}/metadata/1024", b"c"),
        ("PUT", f"{I}/metadata/2", b"refused"),
        ("DELETE", f"{I}/metadata/1024", None),
        ("DELETE", f"{I}/metadata/1024", None),
        ("PUT", f"{I}/attachments/1025", b"a"),
        ("PUT", "/patients/{P_A}/attachments/1025", b"a"),
        ("POST", f"{I}/attachments/1025/compress", None),
        ("POST", f"{I}/attachments/1025/compress", None),
        ("POST", f"{I}/attachments/dicom/compress", None),
        ("POST", f"{I}/attachments/dicom/uncompress", None),
        ("POST", f"{I}/attachments/1025/uncompress", None),
        ("DELETE", f"{I}/attachments/1025", None),
        ("PUT", "/studies/{ST_A1}/metadata/1024", b"a"),
    ):
        exchange(checked, method, path, body)
    logged = [
        [
            (c["ChangeType"], c["ResourceType"], c["ID"])
            for c in side.client.get(f"/changes?since={since}").json()["Changes"]
        ]
        for side, since in zip(sides, last, strict=True)
    ]
    if logged[0] != logged[1]:
        checked.failures.append(
            f"/changes since the writes\n--- orthanc\n{dump(logged[0])}\n--- candidate\n{dump(logged[1])}"
        )
    checked.verdict()


# ---- CheckRevisions, configured names, compression (strict pair) --------------------------------


def test_configured_names(strict: Pair) -> None:
    loaded(strict)
    for url, body in ((f"{I}/metadata/Sample", b"s"), (f"{I}/metadata/Other", b"o")):
        exchange(strict, "PUT", url, body)
        exchange(strict, "GET", url)
    for url, body in ((f"{I}/attachments/sample", b"plain"), (f"{I}/attachments/pdf", b"%PDF-1.4")):
        exchange(strict, "PUT", url, body)
        exchange(strict, "GET", f"{url}/data")
        exchange(strict, "GET", f"{url}/info")
    exchange(strict, "PUT", f"{I}/metadata/1500", b"unnamed")
    exchange(strict, "PUT", f"{I}/attachments/1500", b"unnamed")
    for suffix in ("metadata", "metadata?expand", "attachments", "attachments?full"):
        exchange(strict, "GET", f"{I}/{suffix}")
    for name in ("1024", "2000", "sample", "SAMPLE", "Pdf"):
        exchange(strict, "GET", f"{I}/metadata/{name}")
        exchange(strict, "GET", f"{I}/attachments/{name}/size")
    strict.verdict()


def test_check_revisions(strict: Pair) -> None:
    loaded(strict)
    for url, info in (
        (f"{I}/metadata/Sample", f"{I}/metadata/Sample"),
        (f"{I}/attachments/sample", f"{I}/attachments/sample/info"),
    ):
        exchange(strict, "PUT", url, b"one")  # creating needs no If-Match
        exchange(strict, "PUT", url, b"two")  # replacing does
        exchange(strict, "DELETE", url)  # and deleting
        exchange(strict, "PUT", url, b"two", headers=[("If-Match", '"0-0123456789abcdef0123456789abcdef"')])
        exchange(strict, "PUT", url, b"two", headers=[("If-Match", "junk")])
        exchange(strict, "PUT", url, b"two", own=own_etags(strict, info))
        exchange(strict, "GET", info)
        exchange(strict, "DELETE", url, headers=[("If-Match", '"0-0123456789abcdef0123456789abcdef"')])
        exchange(strict, "DELETE", url, own=own_etags(strict, info))
        exchange(strict, "GET", info)
    for url in (f"{I}/metadata/1500", f"{I}/attachments/1500", "/instances/{UNKNOWN}/metadata/1500"):
        exchange(strict, "DELETE", url)  # refused before anything is looked up
        exchange(strict, "DELETE", url, headers=[("If-Match", '"0-x"')])
    exchange(strict, "DELETE", f"{I}/metadata/Origin")
    exchange(strict, "DELETE", f"{I}/attachments/dicom")
    exchange(strict, "PUT", f"{I}/attachments/sample", b"c" * 300)
    exchange(strict, "POST", f"{I}/attachments/sample/compress", headers=[("If-Match", '"5-x"')])
    exchange(strict, "GET", f"{I}/attachments/sample/info")
    strict.verdict()


def test_compression(strict: Pair) -> None:
    loaded(strict)
    base = f"{I}/attachments"
    exchange(strict, "PUT", f"{base}/sample", b"user content " * 40)
    exchange(strict, "PUT", f"{base}/1500", b"")
    for name in ("dicom", "sample", "1500"):
        for action in ("compress", "compress", "verify-md5"):
            exchange(strict, "POST", f"{base}/{name}/{action}")
        for reading in READINGS:
            exchange(strict, "GET", f"{base}/{name}/{reading}")
        exchange(strict, "GET", "/statistics")
        for action in ("uncompress", "uncompress", "verify-md5"):
            exchange(strict, "POST", f"{base}/{name}/{action}")
        for reading in READINGS:
            exchange(strict, "GET", f"{base}/{name}/{reading}")
    exchange(strict, "POST", f"{base}/dicom/compress")
    for url in (f"{I}/file", I, f"{I}/tags?simplify", f"{I}/metadata?expand", "/statistics"):
        exchange(strict, "GET", url)
    strict.verdict()


# ---- deliberate differences ---------------------------------------------------------------------


def test_known_deviations(checked: Pair) -> None:
    """Orthanc 1.10.1 answers 200 to a PUT of an attachment on an unknown id (storing nothing), and
    reads and writes through an id of another level (`/series/{instance id}/attachments/...` and
    `PUT /series/{instance id}/metadata/...` act on the instance). dicomvault answers 404 to all of
    them and changes nothing."""
    if checked.candidate.name != "dicomvault":
        pytest.skip("a deviation of dicomvault: nothing to check between two Orthancs")
    loaded(checked)
    requests = [
        ("PUT", "/instances/{UNKNOWN}/attachments/1500"),
        ("PUT", "/series/{I_A1_CT_1}/attachments/1500"),
        ("PUT", "/series/{I_A1_CT_1}/metadata/1500"),
        ("GET", "/series/{I_A1_CT_1}/attachments/dicom"),
        ("GET", "/series/{I_A1_CT_1}/attachments/1500/data"),
    ]
    for method, path in requests:
        url = path.format(**IDS)
        assert send(checked.reference, method, url, b"x", ()).status == 200, url
        assert send(checked.candidate, method, url, b"x", ()).status == 404, url
    instance = I.format(**IDS)
    assert send(checked.reference, "GET", f"{instance}/attachments/1500/data", None, ()).body == b"x"
    assert send(checked.candidate, "GET", f"{instance}/attachments/1500/data", None, ()).status == 404
    assert send(checked.reference, "GET", f"{instance}/metadata/1500", None, ()).body == b"x"
    assert send(checked.candidate, "GET", f"{instance}/metadata/1500", None, ()).status == 404
