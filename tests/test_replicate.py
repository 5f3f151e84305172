"""`dicomvault replicate`: server-to-server copies against real servers only (dicomvault over a
socket, the real Orthanc 1.10.1), through the command line as an operator runs it, and through
the Python API where a test needs to act in the middle of a run."""

from __future__ import annotations

import http.server
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dicomvault.replication.client import OrthancClient
from dicomvault.replication.options import ReplicateOptions
from dicomvault.replication.replicator import replicate
from dicomvault.replication.state import load_state
from tests.dicomgen import Spec, make_bytes
from tests.orthanc import OrthancServer, delete_all_patients, missing_orthanc_reason, orthanc_available
from tests.servers import RunningServer, free_port
from tests.upgrades import REPO, dicomvault

needs_orthanc = pytest.mark.skipif(not orthanc_available(), reason=missing_orthanc_reason())


# ---------------------------------------------------------------- servers (one of each per module)


# User metadata and attachments declared alike everywhere, for --copy-metadata.
USER_TYPES: dict[str, Any] = {"UserMetadata": {"Note": 1024}, "UserContentType": {"report": 1025}}


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    if not orthanc_available():
        pytest.skip(missing_orthanc_reason())
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"), USER_TYPES)
    server.start()
    yield server
    server.stop()


def _dicomvault(tmp_path_factory: pytest.TempPathFactory, name: str, **overrides: Any) -> Iterator[RunningServer]:
    server = RunningServer(tmp_path_factory.mktemp(name), overrides)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dv_a(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from _dicomvault(tmp_path_factory, "dv_a", **USER_TYPES)


@pytest.fixture(scope="module")
def dv_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from _dicomvault(tmp_path_factory, "dv_b", **USER_TYPES)


@pytest.fixture(scope="module")
def dv_small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A dicomvault that refuses any upload above 4 KB (413): a target refusing some files."""
    yield from _dicomvault(tmp_path_factory, "dv_small", MaximumUploadSize=4096)


@pytest.fixture(scope="module")
def dv_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    yield from _dicomvault(tmp_path_factory, "dv_auth", AuthenticationEnabled=True, RegisteredUsers={"alice": "secret"})


@pytest.fixture
def servers(request: pytest.FixtureRequest) -> Callable[..., str]:
    """`servers("dv_a")`: the URL of that module server, emptied first."""

    def get(name: str) -> str:
        server = request.getfixturevalue(name)
        with httpx.Client(base_url=server.url) as c:
            delete_all_patients(c)
        return str(server.url)

    return get


# ---------------------------------------------------------------- helpers


def specs(count: int, start: int = 0, rows: int = 8) -> list[Spec]:
    """`count` instances over a few patients, studies and series."""
    return [
        Spec(
            seed=(start + i) % 5,
            patient_id=f"P{(start + i) % 3}",
            instance_number=start + i + 1,
            rows=rows,
            columns=rows,
            modality="CT" if i % 2 else "MR",
        )
        for i in range(count)
    ]


def upload(url: str, items: list[Spec]) -> list[str]:
    with httpx.Client(base_url=url) as c:
        ids = []
        for spec in items:
            answer = c.post("/instances", content=make_bytes(spec))
            answer.raise_for_status()
            ids.append(answer.json()["ID"])
    return ids


def instance_ids(url: str) -> set[str]:
    return set(httpx.get(url + "/instances").json())


def count_instances(url: str) -> int:
    return int(httpx.get(url + "/statistics").json()["CountInstances"])


def run(src: str, dst: str, state: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    """The command line with `--json`: exit code, report, stderr."""
    result = dicomvault("replicate", src, dst, "--state", state, "--json", "--no-progress", *extra)
    report = json.loads(result.stdout) if result.stdout.strip().startswith("{") else {}
    return result.returncode, report, result.stderr


PAIRS = [
    pytest.param("dv_a", "orthanc", id="dicomvault-to-orthanc", marks=pytest.mark.orthanc),
    pytest.param("orthanc", "dv_a", id="orthanc-to-dicomvault", marks=pytest.mark.orthanc),
    pytest.param("dv_a", "dv_b", id="dicomvault-to-dicomvault"),
]


# ---------------------------------------------------------------- 1. copy


@pytest.mark.parametrize(("source_name", "target_name"), PAIRS)
def test_full_copy_then_rerun_copies_only_what_is_new(
    servers: Callable[..., str], tmp_path: Path, source_name: str, target_name: str
) -> None:
    src, dst = servers(source_name), servers(target_name)
    ids = upload(src, specs(12))
    # Instances no change mentions (a cleared log; Orthanc also drops the changes of deleted
    # resources) are copied too: the first run compares the id lists.
    assert httpx.delete(src + "/changes").status_code == 200
    ids += upload(src, specs(3, start=12))
    state = tmp_path / "state.json"

    code, report, stderr = run(src, dst, state)
    assert code == 0, stderr
    assert report["Copied"] == 15 and report["Failed"] == [] and report["AlreadyStored"] == 0
    assert instance_ids(dst) == set(ids)
    for instance in ids:
        assert (
            httpx.get(f"{dst}/instances/{instance}/file").content
            == httpx.get(f"{src}/instances/{instance}/file").content
        )
    saved = load_state(state)
    assert saved is not None and saved["initial_done"] is True

    code, report, stderr = run(src, dst, state)
    assert code == 0, stderr
    assert (report["Copied"], report["AlreadyStored"]) == (0, 0)

    new = upload(src, specs(4, start=100))
    code, report, stderr = run(src, dst, state)
    assert code == 0, stderr
    assert (report["Copied"], report["AlreadyStored"]) == (4, 0)
    assert instance_ids(dst) == set(ids) | set(new)


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["initial", "changes"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_then_resume_leaves_nothing_missing(
    servers: Callable[..., str], tmp_path: Path, phase: str, seed: int
) -> None:
    src, dst = servers("dv_a"), servers("dv_b")
    rng = random.Random(seed)
    state = tmp_path / "state.json"
    total = 120
    if phase == "changes":
        # A first complete run; the kill happens while walking /changes for what came later.
        upload(src, specs(10, start=1000))
        assert run(src, dst, state)[0] == 0
    ids = set(upload(src, specs(total, rows=48)))
    before = count_instances(dst)
    threshold = before + rng.randrange(1, total - 10)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicomvault", "replicate", src, dst, "--state", str(state), "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    try:
        deadline = time.monotonic() + 60
        while count_instances(dst) < threshold and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(rng.uniform(0.0, 0.02))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed half-way, not finished
    # Uploads the killed process had already sent may still be completing at the target (a loaded
    # machine): count once the target has settled.
    at_kill = settled_count(dst)
    code, report, stderr = run(src, dst, state)
    assert code == 0, stderr
    assert instance_ids(src) <= instance_ids(dst)
    assert ids <= instance_ids(dst)
    assert count_instances(dst) == count_instances(src)  # no duplicates
    # The resumed run copied exactly what was missing; what the killed run had sent unrecorded
    # is found AlreadyStored.
    assert report["Copied"] == count_instances(src) - at_kill
    code, report, stderr = run(src, dst, state)
    assert (code, report["Copied"], report["AlreadyStored"]) == (0, 0, 0)


def settled_count(url: str) -> int:
    """The target's instance count once it stopped changing (three equal reads 0.3 s apart)."""
    seen = [count_instances(url)]
    while len(seen) < 3 or len(set(seen[-3:])) > 1:
        time.sleep(0.3)
        seen.append(count_instances(url))
    return seen[-1]


class DeletingSource(OrthancClient):
    """A real source at which some instances are really deleted between the listing and their
    download (the moment a concurrent deletion hurts)."""

    def __init__(self, url: str, victims: list[str]) -> None:
        super().__init__(url)
        self.victims = victims

    def instance_ids(self) -> list[str]:
        listed = super().instance_ids()
        for victim in self.victims:
            self.request("DELETE", f"/instances/{victim}")
        return listed


def test_instances_deleted_at_the_source_during_the_copy_are_skipped(
    servers: Callable[..., str], tmp_path: Path
) -> None:
    src, dst = servers("dv_a"), servers("dv_b")
    ids = upload(src, specs(10))
    victims = ids[2:5]
    options = ReplicateOptions(src, dst, state=tmp_path / "state.json", progress=False)
    with DeletingSource(src, victims) as source:
        report = replicate(options, source=source)
    assert report.exit_code == 0
    assert (report.copied, report.vanished, report.failures) == (7, 3, ())
    assert instance_ids(dst) == set(ids) - set(victims)


def test_a_target_refusing_files_is_a_failure_and_the_run_goes_on(servers: Callable[..., str], tmp_path: Path) -> None:
    src, dst = servers("dv_a"), servers("dv_small")
    small = upload(src, specs(4))
    big = upload(src, specs(3, start=50, rows=64))  # 8 KB of pixels: over MaximumUploadSize
    state = tmp_path / "state.json"
    code, report, stderr = run(src, dst, state)
    assert code == 1
    assert report["Copied"] == 4
    assert {f["ID"] for f in report["Failed"]} == set(big)
    assert all("413" in f["Reason"] for f in report["Failed"])
    assert instance_ids(dst) == set(small)
    assert "not copied" in stderr
    # The failures are remembered and retried by the next run (and still fail).
    saved = load_state(state)
    assert saved is not None and set(saved["failed"]) == set(big)
    code, report, _ = run(src, dst, state)
    assert code == 1 and {f["ID"] for f in report["Failed"]} == set(big)


# ---------------------------------------------------------------- bad input


class NotOrthanc(http.server.BaseHTTPRequestHandler):
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def not_orthanc() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotOrthanc)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_bad_servers_get_one_line_and_a_non_zero_exit(
    servers: Callable[..., str], dv_auth: RunningServer, not_orthanc: str, tmp_path: Path
) -> None:
    src = servers("dv_a")
    state = tmp_path / "state.json"
    port = dv_auth.port
    cases = [
        (f"http://alice:wrong@127.0.0.1:{port}", 3, "refused the credentials"),
        (f"http://127.0.0.1:{free_port()}", 3, "cannot reach"),
        (f"127.0.0.1:{port}", 2, "not an http:// or https:// URL"),
        (not_orthanc, 3, "not an Orthanc-compatible server"),
    ]
    for url, expected_code, message in cases:
        for args in ((src, url), (url, src)):
            code, _, stderr = run(*args, state)
            lines = stderr.strip().splitlines()
            assert code == expected_code, (url, stderr)
            assert len(lines) == 1 and message in lines[0] and "wrong" not in lines[0], (url, stderr)
    # The right credentials work.
    code, _, stderr = run(src, f"http://alice:secret@127.0.0.1:{port}", state)
    assert code == 0, stderr


# ---------------------------------------------------------------- 2. verify


@pytest.mark.orthanc
def test_verify_reports_missing_and_different_files(servers: Callable[..., str], tmp_path: Path) -> None:
    src, dst = servers("dv_a"), servers("orthanc")
    ids = upload(src, specs(6))
    assert run(src, dst, tmp_path / "state.json")[0] == 0

    result = dicomvault("replicate", "--verify", "--md5", src, dst, "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "match" in result.stdout

    extra = upload(dst, specs(1, start=500))
    assert httpx.delete(f"{dst}/instances/{ids[0]}").status_code == 200
    # Same UIDs and PatientID (so the same public id), other content: a different file.
    changed = specs(6)[1]
    httpx.delete(f"{dst}/instances/{ids[1]}")
    altered = Spec(**{**changed.__dict__, "study_description": "Altered"})
    assert upload(dst, [altered]) == [ids[1]]

    code, report, stderr = run(src, dst, tmp_path / "unused.json", "--verify", "--md5")
    assert code == 1, stderr
    verdict = report["Verify"]
    assert verdict["Missing"] == [ids[0]]
    assert verdict["Extra"] == extra
    assert verdict["Different"] == [ids[1]]
    assert not (tmp_path / "unused.json").exists()  # --verify copies nothing and saves nothing

    code, report, _ = run(src, dst, tmp_path / "unused.json", "--verify")  # ids only
    assert code == 1 and report["Verify"]["Different"] == []


# ---------------------------------------------------------------- 3. follow


def test_follow_mirrors_new_instances_and_stops_cleanly(servers: Callable[..., str], tmp_path: Path) -> None:
    src, dst = servers("dv_a"), servers("dv_b")
    upload(src, specs(2))
    state = tmp_path / "state.json"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "dicomvault", "replicate", src, dst, "--state", str(state), "--follow"),
            *("--poll-interval", "0.2", "--no-progress", "--json"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    try:
        new = upload(src, specs(3, start=20))
        deadline = time.monotonic() + 30
        while not set(new) <= instance_ids(dst) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert set(new) <= instance_ids(dst)
        assert proc.poll() is None  # still mirroring
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["Copied"] == 5
    saved = load_state(state)
    last = httpx.get(src + "/changes", params={"since": 0, "limit": 0}).json()["Last"]
    assert saved is not None and saved["changes"] == last


# ---------------------------------------------------------------- 4. deletions


@pytest.mark.parametrize(
    "source_name", [pytest.param("orthanc", marks=pytest.mark.orthanc, id="orthanc-source"), "dv_a"]
)
def test_propagate_deletes_removes_only_what_the_source_deleted(
    servers: Callable[..., str], tmp_path: Path, source_name: str
) -> None:
    src, dst = servers(source_name), servers("dv_b")
    ids = upload(src, specs(6))
    target_only = upload(dst, specs(1, start=700))
    state = tmp_path / "state.json"
    code, report, stderr = run(src, dst, state, "--propagate-deletes")
    assert code == 0, stderr
    assert report["DeletionsPropagated"] == 0

    for victim in ids[:2]:
        assert httpx.delete(f"{src}/instances/{victim}").status_code == 200
    # Deleted, then stored again: it must stay at the target.
    httpx.delete(f"{src}/instances/{ids[2]}")
    upload(src, [specs(6)[2]])
    code, report, stderr = run(src, dst, state, "--propagate-deletes")
    assert code == 0, stderr
    assert report["DeletionsPropagated"] == 2
    assert instance_ids(dst) == set(ids[2:]) | set(target_only)


# ---------------------------------------------------------------- 5. filters and extras


def study(seed: int, date: str, modality: str, count: int = 3, patient: str = "P0") -> list[Spec]:
    return [
        Spec(seed=seed, patient_id=patient, study_date=date, modality=modality, instance_number=n + 1)
        for n in range(count)
    ]


Rule = Callable[[str, str, str], bool]  # (study date, modality, patient id) -> selected
FILTER_CASES: list[tuple[str, tuple[str, ...], Rule]] = [
    ("modality", ("--modality", "CT"), lambda date, modality, patient: modality == "CT"),
    ("modalities", ("--modality", "ct", "--modality", "US"), lambda date, modality, patient: modality in ("CT", "US")),
    ("date-range", ("--study-date", "20200101-20201231"), lambda date, modality, patient: date.startswith("2020")),
    ("date-from", ("--study-date", "20210101-"), lambda date, modality, patient: date >= "20210101"),
    (
        "date-and-modality",
        ("--study-date", "-20201231", "--modality", "MR"),
        lambda date, modality, patient: date <= "20201231" and modality == "MR",
    ),
    ("patient", ("--resource", "PATIENT:PB"), lambda date, modality, patient: patient == "PB"),
]
# Every case from a dicomvault source, a sample from Orthanc (the time budget of this file).
FILTER_PARAMS = [pytest.param("dv_a", args, rule, id=name) for name, args, rule in FILTER_CASES] + [
    pytest.param("orthanc", args, rule, id=f"orthanc-{name}", marks=pytest.mark.orthanc)
    for name, args, rule in FILTER_CASES
    if name in ("modalities", "date-and-modality", "patient")
]


@pytest.mark.parametrize(("source_name", "args", "wanted"), FILTER_PARAMS)
def test_filters_select_in_the_initial_copy_and_in_the_changes(
    servers: Callable[..., str], tmp_path: Path, source_name: str, args: tuple[str, ...], wanted: Rule
) -> None:
    src, dst = servers(source_name), servers("dv_b")
    layout = [("20200105", "CT", "PA"), ("20200610", "MR", "PA"), ("20210301", "CT", "PB"), ("20220101", "US", "PB")]
    later = [("20200720", "CT", "PA"), ("20210915", "MR", "PB")]

    def load(rows: list[tuple[str, str, str]], first_seed: int) -> dict[str, bool]:
        selected = {}
        for seed, (date, modality, patient) in enumerate(rows, start=first_seed):
            for instance in upload(src, study(seed, date, modality, patient=patient)):
                selected[instance] = wanted(date, modality, patient)
        return selected

    expected = load(layout, 10)
    patient_b = httpx.post(src + "/tools/lookup", content=b"PB").json()
    if args[0] == "--resource":
        args = ("--resource", next(r["ID"] for r in patient_b if r["Type"] == "Patient"))
    state = tmp_path / "state.json"
    code, report, stderr = run(src, dst, state, *args)
    assert code == 0, stderr
    assert instance_ids(dst) == {i for i, keep in expected.items() if keep}
    assert report["Copied"] == sum(expected.values())

    expected.update(load(later, 30))
    code, report, stderr = run(src, dst, state, *args)
    assert code == 0, stderr
    assert instance_ids(dst) == {i for i, keep in expected.items() if keep}


def test_a_bad_filter_is_a_usage_error(tmp_path: Path) -> None:
    result = dicomvault("replicate", "http://127.0.0.1:1", "http://127.0.0.1:2", "--study-date", "2020")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "--study-date" in result.stderr


@pytest.mark.parametrize(("source_name", "target_name"), PAIRS)
def test_copy_metadata_copies_user_metadata_and_attachments(
    servers: Callable[..., str], tmp_path: Path, source_name: str, target_name: str
) -> None:
    src, dst = servers(source_name), servers(target_name)
    ids = upload(src, specs(3))
    for n, instance in enumerate(ids):
        assert httpx.put(f"{src}/instances/{instance}/metadata/Note", content=f"note {n}".encode()).status_code == 200
        report_bytes = f"%PDF-fake report {n}".encode()
        assert httpx.put(f"{src}/instances/{instance}/attachments/report", content=report_bytes).status_code == 200
    # The first instance is already at the target, without its extras: they are copied anyway.
    httpx.post(dst + "/instances", content=httpx.get(f"{src}/instances/{ids[0]}/file").content)

    code, report, stderr = run(src, dst, tmp_path / "state.json", "--copy-metadata")
    assert code == 0, stderr
    assert (report["Copied"], report["AlreadyStored"]) == (2, 1)
    for n, instance in enumerate(ids):
        assert httpx.get(f"{dst}/instances/{instance}/metadata/Note").text == f"note {n}"
        data = httpx.get(f"{dst}/instances/{instance}/attachments/report/data").content
        assert data == f"%PDF-fake report {n}".encode()
        # The reception metadata are the target's own, never overwritten.
        assert httpx.get(f"{dst}/instances/{instance}/metadata/Origin").text == "RestApi"
