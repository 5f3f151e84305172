"""Helpers of the DICOM network tests: DCMTK tools run for real (with `TCP_NODELAY=1`), an
in-process DICOM server of dicomvault on a free port, and pynetdicom peers (echo, store, find,
move, get, and a storage SCP that records what it receives)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, build_role, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from starlette.testclient import TestClient

from dicomvault.network.scp import DicomServer
from dicomvault.server import Server

AET = "DICOMVAULT"  # DicomAet of the servers under test
PEER_AET = "PEER"  # the pynetdicom / DCMTK peers
VERIFICATION = "1.2.840.10008.1.1"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
UNCOMPRESSED = [EXPLICIT_LE, IMPLICIT_LE]

DCMTK_TOOLS = ("echoscu", "storescu", "findscu", "movescu", "getscu", "storescp")


def dcmtk_available() -> bool:
    return all(shutil.which(tool) for tool in DCMTK_TOOLS)


needs_dcmtk = pytest.mark.skipif(not dcmtk_available(), reason="DCMTK tools (Debian package dcmtk) are missing")


def dcmtk_env() -> dict[str, str]:
    """DCMTK's tools wait ~40 ms per exchange without TCP_NODELAY (Nagle)."""
    return {**os.environ, "TCP_NODELAY": "1"}


def run_dcmtk(tool: str, *args: str, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run one DCMTK tool; its output (stdout + stderr) is in `.stdout`."""
    return subprocess.run(
        [tool, *args],
        env=dcmtk_env(),
        capture_output=False,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


@contextlib.contextmanager
def storescp(folder: Path, aet: str = "STORESCP") -> Iterator[int]:
    """DCMTK's storescp writing what it receives (any transfer syntax) into `folder`, on a free
    port it already listens on; stopped on exit."""
    from tests.servers import free_port

    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["storescp", "-aet", aet, "-od", str(folder), "+xa", str(port)],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while run_dcmtk("echoscu", "-aec", aet, "127.0.0.1", str(port), timeout=10).returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, "storescp did not start"
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---- dicomvault's DICOM server in process -------------------------------------------------------


@dataclass
class DicomNode:
    """An in-process dicomvault: its `Server`, its DICOM server and a REST client."""

    server: Server
    dicom: DicomServer
    port: int
    client: TestClient
    aet: str = AET

    def rest(self) -> TestClient:
        return self.client


DicomNodeFactory = Callable[..., DicomNode]

# Configuration every node gets unless overridden: the test peer is a known modality.
BASE_CONFIG: dict[str, Any] = {
    "DicomAet": AET,
    "DicomScpTimeout": 10,
}


@pytest.fixture(name="dicom_node")
def dicom_node_fixture(make_server: Callable[..., Server], tmp_path: Path) -> Iterator[DicomNodeFactory]:
    """`dicom_node(**config)` starts dicomvault with its DICOM server on a free port (each node in
    its own storage folder)."""
    started: list[DicomNode] = []

    def factory(**overrides: Any) -> DicomNode:
        folder = str(tmp_path / f"node{len(started)}")
        server = make_server(**{**BASE_CONFIG, "StorageDirectory": folder, "IndexDirectory": folder, **overrides})
        dicom = DicomServer(server.context)
        port = dicom.start("127.0.0.1", 0)
        client = TestClient(server.app(), raise_server_exceptions=True, client=("127.0.0.1", 50000))  # type: ignore[arg-type]
        node = DicomNode(server, dicom, port, client.__enter__())
        started.append(node)
        return node

    yield factory
    for node in started:
        node.dicom.close()
        node.client.__exit__(None, None, None)


def modality(aet: str, port: int, host: str = "127.0.0.1", **permissions: Any) -> dict[str, Any]:
    """A DicomModalities entry in the object form."""
    return {"AET": aet, "Host": host, "Port": port, **permissions}


# ---- pynetdicom peers ---------------------------------------------------------------------------


def make_ae(aet: str = PEER_AET, timeout: float = 10) -> AE:
    ae = AE(ae_title=aet)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    return ae


@contextlib.contextmanager
def associate(
    port: int,
    contexts: Sequence[tuple[str, Sequence[str]]] = ((VERIFICATION, (EXPLICIT_LE,)),),
    *,
    calling: str = PEER_AET,
    called: str = AET,
    roles: Sequence[Any] = (),
    handlers: Sequence[Any] = (),
) -> Iterator[Association]:
    """An association to 127.0.0.1:port (possibly rejected or aborted: check `is_established`),
    released or aborted on exit."""
    ae = make_ae(calling)
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, list(syntaxes))
    assoc = ae.associate("127.0.0.1", port, ae_title=called, ext_neg=list(roles), evt_handlers=list(handlers))
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def echo(port: int, **kwargs: Any) -> int | None:
    """The C-ECHO status, None when the association failed or was aborted."""
    with associate(port, **kwargs) as assoc:
        if not assoc.is_established:
            return None
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else None


def store(
    port: int, files: Sequence[bytes], *, syntaxes: Sequence[str] | None = None, **kwargs: Any
) -> list[int | None]:
    """C-STORE each file (Part 10 bytes) on one association; their statuses (None: no answer)."""
    datasets = [pydicom.dcmread(io.BytesIO(raw)) for raw in files]
    pairs = dict.fromkeys((str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets)
    contexts = [(sop, syntaxes or [ts]) for sop, ts in pairs]
    with associate(port, contexts, **kwargs) as assoc:
        if not assoc.is_established:
            return [None] * len(files)
        out: list[int | None] = []
        for ds in datasets:
            if not assoc.is_established:
                out.append(None)
                continue
            status = assoc.send_c_store(ds)
            out.append(int(status.Status) if "Status" in status else None)
        return out


def query(model: str, **keys: Any) -> Dataset:
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def find(
    port: int, identifier: Dataset, model: str = STUDY_ROOT_FIND, **kwargs: Any
) -> tuple[list[int], list[Dataset]]:
    """C-FIND: the statuses of every response and the identifiers of the pending ones."""
    with associate(port, [(model, UNCOMPRESSED)], **kwargs) as assoc:
        if not assoc.is_established:
            return [], []
        statuses: list[int] = []
        answers: list[Dataset] = []
        for status, answer in assoc.send_c_find(identifier, model):
            if "Status" not in status:
                break
            statuses.append(int(status.Status))
            if answer is not None and int(status.Status) in (0xFF00, 0xFF01):
                answers.append(answer)
        return statuses, answers


def move(
    port: int, identifier: Dataset, destination: str, model: str = STUDY_ROOT_MOVE, **kwargs: Any
) -> list[Dataset]:
    """C-MOVE: every response (status datasets with the sub-operation counts; a response's
    identifier, such as the Failed SOP Instance UID List, is merged into it)."""
    with associate(port, [(model, UNCOMPRESSED)], **kwargs) as assoc:
        if not assoc.is_established:
            return []
        return [_merged(s, i) for s, i in assoc.send_c_move(identifier, destination, model) if "Status" in s]


def _merged(status: Dataset, identifier: Dataset | None) -> Dataset:
    if identifier is not None:
        for element in identifier:
            status.add(element)
    return status


@dataclass
class Received:
    """What a storage peer received: datasets as bytes (file meta + data set as sent)."""

    files: list[bytes] = field(default_factory=list)
    calling_aets: list[str] = field(default_factory=list)
    originators: list[tuple[str | None, int | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handler(self, event: Any) -> int:
        with self.lock:
            self.files.append(event.encoded_dataset())
            self.calling_aets.append(str(event.assoc.requestor.ae_title))
            request = event.request
            self.originators.append((request.MoveOriginatorApplicationEntityTitle, request.MoveOriginatorMessageID))
        return 0x0000

    def datasets(self) -> list[Dataset]:
        with self.lock:
            return [pydicom.dcmread(io.BytesIO(raw)) for raw in self.files]


def get(
    port: int, identifier: Dataset, sop_classes: Sequence[tuple[str, Sequence[str]]], model: str = STUDY_ROOT_GET
) -> tuple[list[Dataset], Received]:
    """C-GET: every response, and what was received on the same association."""
    received = Received()
    roles = [build_role(sop, scp_role=True) for sop, _ in sop_classes]
    contexts = [(model, UNCOMPRESSED), *sop_classes]
    with associate(port, contexts, roles=roles, handlers=[(evt.EVT_C_STORE, received.handler)]) as assoc:
        if not assoc.is_established:
            return [], received
        responses = [_merged(s, i) for s, i in assoc.send_c_get(identifier, model) if "Status" in s]
    return responses, received


@contextlib.contextmanager
def storage_peer(
    aet: str = "STORESCP", contexts: Sequence[PresentationContext] | None = None
) -> Iterator[tuple[int, Received]]:
    """A pynetdicom storage SCP on a free port (yields the port and what it receives)."""
    received = Received()
    ae = make_ae(aet)
    for cx in contexts if contexts is not None else AllStoragePresentationContexts:
        assert cx.abstract_syntax is not None
        ae.add_supported_context(cx.abstract_syntax, cx.transfer_syntax)
    ae.add_supported_context(VERIFICATION)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, received.handler)])
    assert server is not None
    try:
        yield int(server.server_address[1]), received
    finally:
        server.shutdown()
        ae.shutdown()


def instance_ids(client: TestClient | httpx.Client) -> list[str]:
    answer = client.get("/instances")
    assert answer.status_code == 200, answer.text
    return list(answer.json())
