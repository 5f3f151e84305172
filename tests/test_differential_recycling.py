"""Differential tests of protection and recycling against the real Orthanc 1.10.1: both servers
run with `MaximumPatientCount: 2`, receive the same uploads and protection changes, and must
keep exactly the same patients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dicomvault.dicom.parsing import public_id
from tests.dicomgen import Spec, make_bytes
from tests.differential import SHARED_CONFIG, Pair, Processes, _make_pair

pytestmark = [pytest.mark.orthanc]


@pytest.fixture(scope="session")
def recycling_pair(processes: Processes, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    yield from _make_pair(processes, tmp_path_factory, {**SHARED_CONFIG, "MaximumPatientCount": 2})


@pytest.fixture
def fresh(recycling_pair: Pair) -> Pair:
    recycling_pair.failures.clear()
    recycling_pair.reset()
    return recycling_pair


def _upload(pair: Pair, patient: str, seed: int) -> None:
    pair.compare("POST", "/instances", make_bytes(Spec(seed=seed, patient_id=patient)))


def _state(pair: Pair) -> None:
    for url in ("/patients?expand", "/statistics", "/instances"):
        pair.compare("GET", url)


def test_oldest_patient_recycled(fresh: Pair) -> None:
    for seed, patient in enumerate(("A", "B", "C")):
        _upload(fresh, patient, seed)
        _state(fresh)
    _upload(fresh, "B", 10)  # B becomes the most recent
    _upload(fresh, "D", 11)
    _state(fresh)
    fresh.verdict()


def test_protection_changes_the_victim(fresh: Pair) -> None:
    _upload(fresh, "A", 0)
    url = f"/patients/{public_id('A')}/protected"
    fresh.compare("GET", url)
    fresh.compare("PUT", url, b"1")
    fresh.compare("GET", url)
    _upload(fresh, "B", 1)
    _upload(fresh, "C", 2)
    _state(fresh)
    fresh.compare("PUT", url, b"0")  # back in the recycling order, as the most recent
    _upload(fresh, "D", 3)
    _state(fresh)
    fresh.verdict()


@pytest.mark.parametrize("body", [b"1", b" 1", b"true", b"false", b"0", b"2", b"abc", b""], ids=repr)
def test_protected_values(fresh: Pair, body: bytes) -> None:
    _upload(fresh, "A", 0)
    url = f"/patients/{public_id('A')}/protected"
    fresh.compare("PUT", url, body)
    fresh.compare("GET", url)
    fresh.verdict()


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_protected_unknown_patient_and_levels(fresh: Pair, method: str) -> None:
    _upload(fresh, "A", 0)
    fresh.compare(method, "/patients/nope/protected", b"1" if method == "PUT" else None)
    study = public_id("A", Spec(seed=0).study_uid or "1.2.826.0.1.3680043.10.1234.1.0.1")
    fresh.compare(method, f"/studies/{study}/protected", b"1" if method == "PUT" else None)
    fresh.verdict()
