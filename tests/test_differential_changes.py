"""Differential tests of the logs against the real Orthanc 1.10.1: `/changes` after uploads,
AlreadyStored re-uploads and deletions, with `since`/`limit`/`last` variants and bad arguments;
`DELETE /changes`; `/exports` (empty) and its arguments; and, with a short `StableAge` (marked
slow), the Stable* changes, `IsStable` and `OverwriteInstances`.

`Seq` and `Last` are compared exactly, so they must have followed the same history on both
sides: these tests use pairs of their own (the shared `pair` also serves modules whose requests
could, through a difference of their own, shift the numbering).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.differential import SHARED_CONFIG, Pair, Processes, _make_pair
from tests.differential_cases import CORPUS, DELETE_CORPUS, DELETE_IDS, DELETIONS, Deletion

pytestmark = [pytest.mark.orthanc]

STABLE_CONFIG: dict[str, Any] = {**SHARED_CONFIG, "StableAge": 2, "OverwriteInstances": True}
SETTLE_TIMEOUT = 15.0  # seconds to wait for every resource to become stable on both sides

# Sent after every mutation: the whole log (`limit=-2` is "no limit" in Orthanc's arithmetic).
WHOLE_LOG = "/changes?limit=-2"
CHANGES_QUERIES = [
    "/changes",
    "/changes?since=0&limit=3",
    "/changes?since=3&limit=3",
    "/changes?since=20&limit=1000",
    "/changes?since=100000",
    "/changes?limit=0",
    "/changes?since=100000&limit=0",
    "/changes?limit=-1",
    WHOLE_LOG,
    "/changes?limit=4294967295",
    "/changes?limit=4294967296",
    "/changes?limit=2147483648",
    "/changes?limit=-4294967295",
    "/changes?since=-5&limit=2",
    "/changes?since=+5&limit=+2",
    "/changes?since=abc",
    "/changes?limit=abc",
    "/changes?since=5&limit=1.0",
    "/changes?since=1e2&limit=5",
    "/changes?since=&limit=",
    "/changes?since=%35&limit=2",
    "/changes?since=5%20&limit=2",
    "/changes?since=99999999999999999999&limit=2",
    "/changes?since=9223372036854775807&limit=2",
    "/changes?since=10&since=2&limit=1",
    "/changes?limit",
    "/changes?Since=10",
    "/changes?last",
    "/changes?last=3",
    "/changes?since=2&limit=1&last",
]
EXPORTS_QUERIES = [
    "/exports",
    "/exports?last",
    "/exports?since=5",
    "/exports?since=-5",
    "/exports?since=4294967297",
    "/exports?since=2147483648",
    "/exports?limit=0",
    "/exports?limit=-1",
    "/exports?since=abc&limit=3",
    "/exports?since=3&limit=abc",
]


@pytest.fixture(scope="module")
def changes_pair(processes: Processes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    yield from _make_pair(processes, tmp_path_factory, SHARED_CONFIG)


@pytest.fixture(scope="module")
def stable_pair(processes: Processes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    yield from _make_pair(processes, tmp_path_factory, STABLE_CONFIG)


@pytest.fixture
def logs(changes_pair: Pair) -> Pair:
    changes_pair.failures.clear()
    return changes_pair


def _compare_all(pair: Pair, urls: list[str]) -> None:
    for url in urls:
        pair.compare("GET", url)


def test_changes_after_uploads(logs: Pair) -> None:
    logs.load("corpus", CORPUS)  # patient C's series complete, miss, or are inconsistent
    _compare_all(logs, CHANGES_QUERIES)
    logs.verdict()


def test_already_stored_logs_nothing(logs: Pair) -> None:
    logs.load("corpus", CORPUS)
    for item in (CORPUS[0], CORPUS[-1]):
        logs.compare("POST", "/instances", item.data)
    _compare_all(logs, [WHOLE_LOG, "/changes?last", "/changes?since=100000"])
    logs.verdict()


@pytest.mark.parametrize("deletion", DELETIONS, ids=[deletion.name for deletion in DELETIONS])
def test_changes_after_deletion(logs: Pair, deletion: Deletion) -> None:
    logs.load("delete-corpus", DELETE_CORPUS)
    logs.state = None  # mutated below, whatever happens
    for target in deletion.targets:
        logs.compare("DELETE", target.format(**DELETE_IDS))
        _compare_all(logs, [WHOLE_LOG, "/changes?last", "/changes?since=100000", "/changes?since=4&limit=2"])
    logs.verdict()


def test_delete_changes(logs: Pair) -> None:
    logs.load("corpus", CORPUS)
    logs.compare("DELETE", "/changes")
    _compare_all(logs, ["/changes", "/changes?last", "/changes?limit=0", "/changes?since=3&limit=2"])
    logs.compare("DELETE", f"/patients/{DELETE_IDS['P_A']}")
    logs.state = None
    logs.compare("POST", "/instances", DELETE_CORPUS[0].data)
    _compare_all(logs, [WHOLE_LOG, "/changes?last"])
    logs.verdict()


def test_exports_empty_and_arguments(logs: Pair) -> None:
    logs.compare("DELETE", "/exports")
    _compare_all(logs, EXPORTS_QUERIES)
    logs.verdict()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/changes"),
        ("POST", "/changes"),
        ("PUT", "/exports"),
        ("POST", "/exports"),
        ("GET", "/changes/1"),
        ("DELETE", "/changes/1"),
        ("GET", "/exports/1"),
    ],
)
def test_wrong_routes(logs: Pair, method: str, path: str) -> None:
    logs.compare(method, path)
    logs.verdict()


# ---- stability (StableAge 2: a few seconds of waiting) -------------------------------------------


def _unstable_count(pair: Pair) -> int:
    count = 0
    for side in (pair.reference, pair.candidate):
        for level in ("patients", "studies", "series"):
            answer = side.send("GET", f"/{level}?expand")
            if answer.status != 200:
                raise AssertionError(f"{side.name} GET /{level}?expand: {answer.status}")
            count += sum(1 for resource in answer.parsed()[1] if not resource["IsStable"])
    return count


def _settle(pair: Pair) -> None:
    """Wait until every patient, study and series is stable on both sides (bounded)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while _unstable_count(pair):
        if time.monotonic() > deadline:
            pytest.fail(f"resources still unstable after {SETTLE_TIMEOUT}s", pytrace=False)
        time.sleep(0.2)


STABILITY_VIEWS = [WHOLE_LOG, "/patients?expand", "/studies?expand", "/series?expand"]


@pytest.mark.slow
def test_stable_changes(stable_pair: Pair) -> None:
    stable_pair.failures.clear()
    stable_pair.reset()
    items = [*[item for item in DELETE_CORPUS if item.patient == "P_A"][:3], DELETE_CORPUS[-1]]
    for item in items:
        stable_pair.compare("POST", "/instances", item.data)
    # Just stored: unstable on both sides (StableAge 2 leaves two seconds at least).
    _compare_all(stable_pair, ["/patients?expand", "/series?expand"])
    _settle(stable_pair)
    _compare_all(stable_pair, STABILITY_VIEWS)
    # A new instance makes its series, study and patient unstable again.
    stable_pair.compare("POST", "/instances", DELETE_CORPUS[3].data)
    _settle(stable_pair)
    _compare_all(stable_pair, STABILITY_VIEWS)
    stable_pair.verdict()


@pytest.mark.slow
def test_overwrite_instances(stable_pair: Pair) -> None:
    stable_pair.failures.clear()
    stable_pair.reset()
    first, second = DELETE_CORPUS[0], DELETE_CORPUS[1]
    for item in (first, second):
        stable_pair.compare("POST", "/instances", item.data)
    _settle(stable_pair)
    stable_pair.compare("POST", "/instances", second.data)  # Success again: replaced
    _settle(stable_pair)
    _compare_all(stable_pair, STABILITY_VIEWS)
    # the only instance of a patient: the whole chain is replaced
    stable_pair.compare("POST", "/instances", DELETE_CORPUS[-1].data)
    _settle(stable_pair)
    stable_pair.compare("POST", "/instances", DELETE_CORPUS[-1].data)
    _settle(stable_pair)
    _compare_all(stable_pair, STABILITY_VIEWS)
    stable_pair.verdict()
