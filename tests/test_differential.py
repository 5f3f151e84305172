"""Differential tests of part 1's routes against the real Orthanc 1.10.1 (harness:
`tests/differential.py`; cases: `tests/differential_cases.py`)."""

from __future__ import annotations

import pytest

from tests.differential import Pair
from tests.differential_cases import (
    AFTER_DELETE,
    AUTH_CASES,
    CORPUS,
    CORPUS_IDS,
    DELETE_CORPUS,
    DELETE_IDS,
    DELETIONS,
    READ_CASES,
    UPLOADS,
    AuthCase,
    Case,
    Deletion,
    Upload,
)

pytestmark = [pytest.mark.orthanc]


# ---- the tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", READ_CASES, ids=[case.label for case in READ_CASES])
def test_read(checked: Pair, case: Case) -> None:
    checked.load("corpus", CORPUS)
    checked.compare(case.method, case.url(CORPUS_IDS), check=case.check, unordered=case.unordered)
    if case.method != "GET":  # refused by Orthanc, but a server that accepted it would spoil the corpus
        checked.forget_if_changed()
    checked.verdict()


@pytest.mark.parametrize("upload", UPLOADS, ids=[upload.name for upload in UPLOADS])
def test_upload(checked: Pair, upload: Upload) -> None:
    checked.reset()
    for earlier in upload.before:
        checked.compare("POST", "/instances", earlier)
    checked.compare("POST", "/instances", upload.body, upload.headers)
    checked.state = None
    for url in ("/statistics", "/patients?expand", "/studies", "/series", "/instances?expand"):
        checked.compare("GET", url)
    checked.verdict()


@pytest.mark.parametrize("deletion", DELETIONS, ids=[deletion.name for deletion in DELETIONS])
def test_delete(checked: Pair, deletion: Deletion) -> None:
    checked.load("delete-corpus", DELETE_CORPUS)
    checked.state = None  # mutated below, whatever happens
    checked.compare("GET", "/statistics")
    for target in deletion.targets:
        checked.compare("DELETE", target.format(**DELETE_IDS))
        checked.compare("GET", target.format(**DELETE_IDS))
        for url in AFTER_DELETE:
            checked.compare("GET", url.format(**DELETE_IDS))
    # The summaries a deletion changes (instances' own are compared by the read tests).
    for url in ("/patients?expand", "/studies?expand", "/series?expand"):
        checked.compare("GET", url)
    checked.verdict()


@pytest.mark.parametrize("case", AUTH_CASES, ids=[case.label for case in AUTH_CASES])
def test_authentication(auth_pair: Pair, case: AuthCase) -> None:
    auth_pair.failures.clear()
    auth_pair.compare(case.method, case.path, case.body, check=case.check, auth=case.user)
    auth_pair.verdict()
