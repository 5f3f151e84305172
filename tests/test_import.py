"""`dicomvault import PATH... --to URL` against real servers: dicomvault over a socket and the real
Orthanc 1.10.1, from plain folders, zip files and Orthanc storage folders written by the real
Orthanc with StorageCompression on and off; resume after SIGKILL; bad input."""

from __future__ import annotations

import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import UID

from dicomvault.dicom.parsing import parse_instance
from dicomvault.replication.classify import Kind, classify
from dicomvault.replication.import_walk import STATE_FORMAT
from dicomvault.replication.importer import import_paths
from dicomvault.replication.options import ImportOptions
from dicomvault.storage.accessor import compress_zlib_with_size
from tests.dicomgen import Spec, make_bytes, make_dataset
from tests.orthanc import OrthancServer, delete_all_patients, missing_orthanc_reason, orthanc_available
from tests.servers import RunningServer, free_port
from tests.upgrades import REPO

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def instance_bytes(seed: int, pixels: int = 16) -> bytes:
    return make_bytes(Spec(seed=seed % 3, patient_id=f"P{seed % 2}", instance_number=seed, rows=pixels, columns=pixels))


def pixelless_bytes(seed: int) -> bytes:
    """An instance without PixelData nor image attributes (a structured report, say)."""
    ds = make_dataset(Spec(seed=seed, patient_id="SR", instance_number=seed))
    for keyword in ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation"):
        delattr(ds, keyword)
    ds.SOPClassUID = UID(BASIC_TEXT_SR)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.Modality = "SR"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def header_only(data: bytes) -> bytes:
    """What Orthanc's "DICOM until pixel data" attachment holds: the file cut before (7FE0,0010)."""
    offset = parse_instance(data).pixel_data_offset
    assert offset is not None
    return data[:offset]


def instance_id(data: bytes) -> str:
    return parse_instance(data).instance_id


def run_import(*args: str | Path, json_report: bool = True) -> tuple[int, dict[str, Any], str]:
    """The command line (--json --no-progress): exit code, report, stderr."""
    result = importer(*args, *(["--json"] if json_report else []), "--no-progress")
    report = json.loads(result.stdout) if json_report and result.stdout.strip() else {"stdout": result.stdout}
    return result.returncode, report, result.stderr


def importer(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomvault", "import", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )


def instances(url: str) -> set[str]:
    answer = httpx.get(f"{url}/instances", timeout=30)
    answer.raise_for_status()
    return set(answer.json())


def file_of(url: str, instance: str) -> bytes:
    answer = httpx.get(f"{url}/instances/{instance}/file", timeout=30)
    answer.raise_for_status()
    return answer.content


def reset(url: str) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        delete_all_patients(client)


@pytest.fixture(autouse=True)
def scratch_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every import from the test's folder: its default state file lands there."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One dicomvault over a socket for the module; each test empties it first."""
    srv = RunningServer(tmp_path_factory.mktemp("vault"), {})
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def target(vault: RunningServer) -> str:
    reset(vault.url)
    return vault.url


# ---------------------------------------------------------------- classification


def test_classify_every_kind() -> None:
    full = instance_bytes(1)
    found = classify(full)
    assert (found.kind, found.has_pixel_data, found.compressed) == (Kind.DICOM, True, False)
    assert found.instance_id == instance_id(full)

    header = classify(header_only(full))
    assert (header.kind, header.has_pixel_data, header.header_only) == (Kind.DICOM, False, True)
    assert header.instance_id == found.instance_id

    packed = classify(compress_zlib_with_size(full, 6))
    assert (packed.kind, packed.compressed, packed.payload) == (Kind.DICOM, True, full)

    report = classify(pixelless_bytes(5))
    assert (report.kind, report.has_pixel_data, report.header_only) == (Kind.DICOM, False, False)

    raw = make_dataset(Spec(seed=3))
    del raw.file_meta
    buffer = io.BytesIO()
    raw.save_as(buffer, implicit_vr=True, little_endian=True)  # no Part 10 header: Orthanc takes it
    assert classify(buffer.getvalue()).kind is Kind.DICOM

    summary = json.dumps({"0008,0018": {"Name": "SOPInstanceUID", "Type": "String", "Value": "1.2"}}).encode()
    assert classify(summary).kind is Kind.SUMMARY
    assert classify(compress_zlib_with_size(summary, 1)).kind is Kind.SUMMARY
    assert classify(b'{"a": 1}').kind is Kind.OTHER
    assert classify(b"SQLite format 3\x00" + bytes(100)).kind is Kind.OTHER
    assert classify(b"hello, world\n").kind is Kind.OTHER
    assert classify(b"").kind is Kind.OTHER
    assert classify(full[:200]).kind is Kind.INVALID  # DICM, then nothing usable
    assert classify(compress_zlib_with_size(full, 6)[:-20]).kind is Kind.INVALID

    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr("a.dcm", full)
    assert classify(archive.getvalue()).kind is Kind.ZIP


# ---------------------------------------------------------------- folders and zips


def test_folder_and_zip_into_dicomvault(target: str, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    originals = {}
    for seed in range(6):
        data = instance_bytes(seed)
        originals[instance_id(data)] = data
        (tree / ("a" if seed % 2 else "a/b") / f"{seed}.dcm").write_bytes(data)
    zipped = {}
    with zipfile.ZipFile(tree / "study.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for seed in range(6, 10):
            data = instance_bytes(seed)
            zipped[instance_id(data)] = data
            archive.writestr(f"DICOM/{seed}", data)
        archive.writestr("README.txt", "not DICOM")
    (tree / "notes.txt").write_text("a note")

    code, report, stderr = run_import(tree, "--to", target, "--workers", "3")
    assert code == 0, stderr
    assert report["sent_new"] == 10 and report["already_stored"] == 0
    assert report["other_skipped"] == 2 and report["failures"] == []
    assert report["files"] == 13  # 6 files, 5 zip members, the note, the zip's README
    assert instances(target) == set(originals) | set(zipped)
    for instance, data in {**originals, **zipped}.items():
        assert file_of(target, instance) == data

    code, again, _ = run_import(tree, "--to", target, json_report=False)  # the summary table
    assert code == 0
    assert re.search(r"DICOM already stored +10\n", again["stdout"]), again["stdout"]


def test_garbage_and_unreadable_files(target: str, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    good = instance_bytes(1)
    (tree / "good.dcm").write_bytes(good)
    (tree / "damaged.dcm").write_bytes(good[:300])  # DICM magic, then cut
    (tree / "broken.zip").write_bytes(b"PK\x03\x04" + os.urandom(200))
    os.mkfifo(tree / "pipe.dcm")  # reading would block: must be reported, never opened
    (tree / "gone.dcm").symlink_to(tmp_path / "removed-meanwhile.dcm")
    (tree / "random.bin").write_bytes(random.Random(7).randbytes(4000))

    code, report, stderr = run_import(tree, "--to", target)
    assert code == 1, stderr
    reasons = {Path(f["path"]).name: f["reason"] for f in report["failures"]}
    assert set(reasons) == {"damaged.dcm", "broken.zip", "pipe.dcm", "gone.dcm"}
    assert "FIFO" in reasons["pipe.dcm"]
    assert "zip" in reasons["broken.zip"]
    assert report["sent_new"] == 1 and report["other_skipped"] == 1
    assert instances(target) == {instance_id(good)}


def test_refused_files_are_failures_and_the_import_goes_on(tmp_path: Path) -> None:
    srv = RunningServer(tmp_path / "small", {"MaximumUploadSize": 20000})
    srv.start()
    try:
        tree = tmp_path / "tree"
        tree.mkdir()
        small, large = instance_bytes(1, pixels=16), instance_bytes(2, pixels=128)
        (tree / "1-small.dcm").write_bytes(small)
        (tree / "2-large.dcm").write_bytes(large)
        (tree / "3-missing-uid.dcm").write_bytes(make_bytes(Spec(seed=4, sop_uid="")))
        code, report, _ = run_import(tree, "--to", srv.url)
        assert code == 1
        reasons = {Path(f["path"]).name: f["reason"] for f in report["failures"]}
        assert set(reasons) == {"2-large.dcm", "3-missing-uid.dcm"}
        assert "413" in reasons["2-large.dcm"]
        assert instances(srv.url) == {instance_id(small)}
    finally:
        srv.stop()


# ---------------------------------------------------------------- bad input


def test_bad_url_unreachable_host_and_wrong_credentials(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a.dcm").write_bytes(instance_bytes(1))

    for url in ("localhost:8042", "ftp://localhost/"):
        result = importer(tree, "--to", url)
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "http" in result.stderr

    result = importer(tmp_path / "nowhere", "--to", "http://127.0.0.1:1/")
    assert result.returncode == 2 and "does not exist" in result.stderr

    closed = free_port()  # nothing listens there
    result = importer(tree, "--to", f"http://127.0.0.1:{closed}/")
    assert result.returncode == 3
    assert len(result.stderr.strip().splitlines()) == 1 and "cannot reach" in result.stderr

    srv = RunningServer(tmp_path / "auth", {"AuthenticationEnabled": True, "RegisteredUsers": {"alice": "secret"}})
    srv.start()
    try:
        wrong = srv.url.replace("http://", "http://alice:nope@")
        result = importer(tree, "--to", wrong)
        assert result.returncode == 3
        assert len(result.stderr.strip().splitlines()) == 1 and "credentials" in result.stderr
        assert "nope" not in result.stderr
        right = srv.url.replace("http://", "http://alice:secret@")
        code, report, stderr = run_import(tree, "--to", right)
        assert code == 0 and report["sent_new"] == 1, stderr
    finally:
        srv.stop()


# ---------------------------------------------------------------- resume after SIGKILL


def test_python_api_and_resume_skip_what_was_done(target: str, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for seed in range(8):
        (tree / f"{seed:02d}.dcm").write_bytes(instance_bytes(seed))
    state = tmp_path / "state.json"
    options = ImportOptions((tree,), target, workers=2, state=state, progress=False)
    first = import_paths(options)
    assert first.sent_new == 8 and first.state_file == str(state)
    saved = json.loads(state.read_text())
    assert saved["format"] == STATE_FORMAT and saved["finished"] and saved["retry"] == []
    (tree / "99.dcm").write_bytes(instance_bytes(99))
    resumed = import_paths(ImportOptions((tree,), target, resume=True, state=state, progress=False))
    assert (resumed.resumed_skipped, resumed.sent_new, resumed.already_stored) == (8, 1, 0)
    # A state of another import is refused, not used.
    code, _, stderr = run_import(tmp_path, "--to", target, "--resume", "--state", state)
    assert code == 2 and "cannot be used" in stderr


def test_resumed_header_only_file_whose_complete_file_went_before(target: str, tmp_path: Path) -> None:
    """A run stopped after sending an instance's complete file but before the end, where its
    header-only copy waited: the resumed run must not send that copy (nor count it as sent)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    full = instance_bytes(3)
    (tree / "1-header").write_bytes(compress_zlib_with_size(header_only(full), 6))
    (tree / "2-full").write_bytes(compress_zlib_with_size(full, 6))
    assert httpx.post(f"{target}/instances", content=full).status_code == 200  # the interrupted run sent it
    state = tmp_path / "state.json"
    state.write_text(
        json.dumps(
            {
                "format": STATE_FORMAT,
                "target": target,
                "paths": [str(tree)],
                "cursor": [0, ["2-full"]],
                "done": {},
                "retry": [str(tree / "1-header")],
                "finished": False,
            }
        )
    )
    code, report, stderr = run_import(tree, "--to", target, "--resume", "--state", state)
    assert code == 0, stderr
    assert (report["resumed_skipped"], report["until_pixel_data_skipped"]) == (1, 1)
    assert (report["sent_new"], report["already_stored"], report["pixelless_sent"]) == (0, 0, 0)
    assert file_of(target, instance_id(full)) == full
    assert json.loads(state.read_text())["retry"] == []


@pytest.mark.slow
def test_resume_after_sigkill_at_random_moments(target: str, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    expected: dict[str, bytes] = {}
    for seed in range(240):
        folder = tree / f"{seed // 40}"
        folder.mkdir(parents=True, exist_ok=True)
        data = make_bytes(Spec(seed=seed, patient_id=f"K{seed % 4}", instance_number=seed, rows=96, columns=96))
        expected[instance_id(data)] = data
        (folder / f"{seed:03d}.dcm").write_bytes(data)
    rng = random.Random(20240607)
    state = tmp_path / "state.json"
    # One uninterrupted run tells how long an import takes here: the kills land inside that time.
    started = time.monotonic()
    first = ImportOptions((tree,), target, workers=2, state=tmp_path / "first.json", progress=False)
    assert import_paths(first).sent_new == len(expected)
    duration = time.monotonic() - started
    for round_ in range(3):
        reset(target)
        state.unlink(missing_ok=True)
        # The Python API in a subprocess, saving its state often, so that kills land between saves.
        script = (
            "import sys; from pathlib import Path;"
            "from dicomvault.replication.importer import import_paths;"
            "from dicomvault.replication.options import ImportOptions;"
            f"import_paths(ImportOptions((Path({str(tree)!r}),), {target!r}, workers=2, state=Path({str(state)!r}),"
            " progress=False), save_interval_s=0.1)"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        )
        # Kill once the import is under way (its state file exists), at a random moment after.
        deadline = time.monotonic() + 60
        while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.05, 0.9) * duration)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        saved = json.loads(state.read_text())
        on_target = instances(target)
        code, report, stderr = run_import(tree, "--to", target, "--state", state, "--resume")
        assert code == 0, (round_, stderr)
        assert report["resumed_skipped"] + report["sent_new"] + report["already_stored"] == len(expected)
        # What the state recorded is not read again; everything else is, and only once.
        recorded = _recorded(saved, tree)
        assert report["resumed_skipped"] == recorded, round_
        print(
            f"round {round_} ({duration:.2f} s): {recorded} recorded, {len(on_target)} on the target at the kill, {report}"
        )
        # Files not on the target at the kill are sent once; the others only if the state missed them.
        assert report["sent_new"] == len(expected) - len(on_target)
        assert report["already_stored"] <= len(on_target) - recorded
        assert instances(target) == set(expected)
    for instance, data in list(expected.items())[::37]:
        assert file_of(target, instance) == data


def _recorded(saved: dict[str, Any], tree: Path) -> int:
    """How many files of `tree` the saved state counts as done."""
    cursor = saved["cursor"]
    count = 0
    for path in sorted(tree.rglob("*.dcm")):
        parts = path.relative_to(tree).parts
        before = cursor is not None and (0, parts) <= (cursor[0], tuple(cursor[1]))
        if str(path) not in saved["retry"] and (before or str(path) in saved["done"]):
            count += 1
    return count


# ---------------------------------------------------------------- Orthanc storage folders

pytest_orthanc = pytest.mark.skipif(not orthanc_available(), reason=missing_orthanc_reason())


def _orthanc_data() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """The instances every Orthanc storage folder is made of: with pixels, and pixel-less."""
    with_pixels = {}
    for seed in range(12):
        data = instance_bytes(seed, pixels=32)
        with_pixels[instance_id(data)] = data
    pixelless = {}
    for seed in range(2):
        data = pixelless_bytes(50 + seed)
        pixelless[instance_id(data)] = data
    return with_pixels, pixelless


@pytest.fixture(scope="module")
def orthanc_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    """Storage folders written by the real Orthanc 1.10.1, StorageCompression on and off (Orthanc
    stopped), with JSON summaries added as Orthanc < 1.9.1 wrote them (compressed or not)."""
    if not orthanc_available():
        pytest.skip(missing_orthanc_reason())
    base = tmp_path_factory.mktemp("orthancs")
    with_pixels, pixelless = _orthanc_data()
    servers = {
        compressed: OrthancServer(base / f"c{int(compressed)}", {"StorageCompression": compressed})
        for compressed in (True, False)
    }
    for compressed, server in servers.items():
        server.start()
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for data in [*with_pixels.values(), *pixelless.values()]:
                assert client.post("/instances", content=data).status_code == 200
            tags = client.get(f"/instances/{next(iter(with_pixels))}/tags").content
        summary = server.base / "storage" / "ab" / "cd" / "abcd0000-0000-0000-0000-000000000000"
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_bytes(compress_zlib_with_size(tags, 6) if compressed else tags)
    for server in servers.values():
        server.terminate()  # both stop at once: 3-4 s, not 8
    for server in servers.values():
        server.wait()
    return {compressed: server.base / "storage" for compressed, server in servers.items()}


@pytest.mark.orthanc
@pytest.mark.parametrize("compressed", [True, False], ids=["compressed", "plain"])
def test_orthanc_storage_folder_into_dicomvault(
    orthanc_folders: dict[bool, Path], target: str, compressed: bool
) -> None:
    with_pixels, pixelless = _orthanc_data()
    code, report, stderr = run_import(orthanc_folders[compressed], "--to", target, "--workers", "4")
    assert code == 0, stderr
    total = len(with_pixels) + len(pixelless)
    assert report["sent_new"] == total and report["already_stored"] == 0
    assert report["pixelless_sent"] == len(pixelless)
    assert report["summaries_skipped"] == 1
    assert report["other_skipped"] == 1  # Orthanc's SQLite index
    if compressed:
        # Every "dicom" attachment, every "dicom-until-pixel-data" one, and the summary.
        assert report["until_pixel_data_skipped"] == len(with_pixels)
        assert report["compressed_decompressed"] == total + len(with_pixels) + 1
    else:
        assert (report["until_pixel_data_skipped"], report["compressed_decompressed"]) == (0, 0)
    assert instances(target) == set(with_pixels) | set(pixelless)
    for instance, data in {**with_pixels, **pixelless}.items():
        assert file_of(target, instance) == data  # complete: nothing pixel-less where pixels exist

    code, again, _ = run_import(orthanc_folders[compressed], "--to", target)
    assert code == 0 and (again["sent_new"], again["already_stored"]) == (0, total)


@pytest.fixture(scope="module")
def orthanc_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    if not orthanc_available():
        pytest.skip(missing_orthanc_reason())
    server = OrthancServer(tmp_path_factory.mktemp("orthanc-target"))
    server.start()
    yield server
    server.stop()


@pytest.mark.orthanc
def test_compressed_orthanc_folder_and_zip_into_the_real_orthanc(
    orthanc_folders: dict[bool, Path], orthanc_target: OrthancServer, tmp_path: Path
) -> None:
    with_pixels, pixelless = _orthanc_data()
    extra = instance_bytes(77)
    with zipfile.ZipFile(tmp_path / "more.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x/77.dcm", extra)
    code, report, stderr = run_import(orthanc_folders[True], tmp_path / "more.zip", "--to", orthanc_target.url)
    assert code == 0, stderr
    assert report["sent_new"] == len(with_pixels) + len(pixelless) + 1
    everything = {**with_pixels, **pixelless, instance_id(extra): extra}
    assert instances(orthanc_target.url) == set(everything)
    for instance, data in everything.items():
        assert file_of(orthanc_target.url, instance) == data
