"""`dicomvault serve` for real: a subprocess on a socket, configured by a file or a folder of
Orthanc-style JSON files, used by an unchanged Orthanc client (pyorthanc), and its refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from pyorthanc import Orthanc, Patient

from dicomvault.index.sqlite import INDEX_FILENAME
from tests.dicomgen import Spec, make_bytes
from tests.servers import RunningServer, free_port


def test_upload_and_download_over_http(running_server: Callable[..., RunningServer]) -> None:
    srv = running_server()
    raw = make_bytes(seed=1, rows=128, columns=128)
    with httpx.Client(base_url=srv.url) as http:
        answer = http.post("/instances", content=raw)
        assert answer.status_code == 200 and answer.json()["Status"] == "Success"
        assert http.get(f"/instances/{answer.json()['ID']}/file").content == raw
        assert http.post("/instances", content=b"junk").status_code == 400
        assert http.get("/statistics").json()["CountInstances"] == 1
    assert (srv.base / "storage" / INDEX_FILENAME).is_file()


def test_pyorthanc_client_unchanged(running_server: Callable[..., RunningServer]) -> None:
    srv = running_server(AuthenticationEnabled=True, RegisteredUsers={"alice": "secret"})
    orthanc = Orthanc(srv.url, username="alice", password="secret")
    for number in (1, 2):
        orthanc.post_instances(make_bytes(Spec(seed=5, instance_number=number)))
    (patient_id,) = orthanc.get_patients()
    patient = Patient(patient_id, orthanc)
    assert patient.patient_id == "P0001" and patient.name == "Doe^John"
    (study,) = patient.studies
    (series,) = study.series
    assert series.modality == "CT" and len(series.instances) == 2
    assert series.instances[0].get_dicom_file_content() == make_bytes(Spec(seed=5, instance_number=1))
    with pytest.raises(httpx.HTTPError, match="401"):
        Orthanc(srv.url, username="alice", password="nope").get_patients()


def test_folder_configuration_with_comments(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    port = free_port()
    (folder / "a.json").write_text(
        '{\n  // the storage\n  "StorageDirectory": "' + str(tmp_path / "store") + '", /* inline */\n'
        f'  "HttpPort": {port}\n}}\n'
    )
    (folder / "b.json").write_text(
        '{ "Name": "from-folder", "SomethingUnknown": 1, "DicomPort": ' + str(free_port()) + " }"
    )
    srv = RunningServer.__new__(RunningServer)
    srv.base, srv.port, srv.config_path, srv.log_path, srv.proc = tmp_path, port, folder, tmp_path / "log", None
    srv.start()
    try:
        assert httpx.get(srv.url + "/system").json()["Name"] == "from-folder"
    finally:
        srv.stop()
    log = srv.log_path.read_text()
    assert "SomethingUnknown" in log  # unknown keys are warned about, not fatal


def _serve(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicomvault", "serve", str(config)], capture_output=True, text=True, timeout=60, cwd=cwd
    )


def test_refuses_orthanc_index_without_ours(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    storage.mkdir()
    (storage / "index").write_bytes(b"SQLite format 3\x00")
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"StorageDirectory": str(storage), "HttpPort": free_port()}))
    result = _serve(config, tmp_path)
    assert result.returncode == 3
    assert f"dicomvault upgrade {config}" in result.stderr
    assert not (storage / INDEX_FILENAME).exists()  # never creates an empty index beside an archive


def test_bad_configuration_exits_non_zero(tmp_path: Path) -> None:
    config = tmp_path / "c.json"
    config.write_text('{ "HttpPort": "not a number" }')
    result = _serve(config, tmp_path)
    assert result.returncode != 0 and "HttpPort" in result.stderr


def test_port_in_use_is_refused(running_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    srv = running_server()
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"StorageDirectory": str(tmp_path / "s2"), "HttpPort": srv.port}))
    result = _serve(config, tmp_path)
    assert result.returncode == 3 and f"HTTP port {srv.port}" in result.stderr


def test_sigterm_stops_cleanly(running_server: Callable[..., RunningServer]) -> None:
    srv = running_server()
    assert srv.proc is not None
    srv.proc.terminate()
    assert srv.proc.wait(timeout=15) == 0
    assert "dicomvault has stopped" in srv.log_path.read_text()
