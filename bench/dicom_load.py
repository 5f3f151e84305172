"""The DICOM load generator: C-STORE with DCMTK's `storescu`, C-FIND latency over one open association.

- **C-STORE**: the instances of a pack are written once as files (`storescu` reads files), then
  dealt round-robin to N `storescu` processes, one association each, all started together. Each
  runs with `TCP_NODELAY=1` in its environment (Debian's DCMTK leaves Nagle's algorithm on without
  it, which costs ~40 ms per exchange) and `--no-halt` (a failed store does not stop the others).
  The timed interval runs from the first process started to the last one reaped; it includes each
  process's start and association negotiation (~0.2 s for 20,000 file names, ~10 ms for 250),
  the same for both servers. Client CPU comes from the kernel's accounting of each reaped process.
- **C-FIND**: one client process opens one association (Study Root Query/Retrieve - FIND,
  Implicit VR Little Endian) before the starting line, then times repeated study-level queries,
  each from the request sent to the final response received. The default client (`raw`) speaks
  the few PDUs it needs directly on a socket (TCP_NODELAY): pynetdicom as a client spends ~0.5 ms
  of CPU per pending answer in its own Python (measured: 16-60 ms per query of 26-126 answers
  against Orthanc, more than Orthanc took to answer), which would time the client, not the
  servers. `--find-client pynetdicom` runs the same queries through pynetdicom, to cross-check.

The client processes and their starting line are those of `bench.load`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from bench.data import Pack, load_items
from bench.load import ClientResult, LoadResult, _run_clients, _Start

logger = logging.getLogger(__name__)

STORESCU = "storescu"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
_IMPLEMENTATION_UID = "1.2.826.0.1.3680043.10.1234.99"
_MAX_PDU = 16384  # what we accept; the answers of a study-level C-FIND are far smaller
_PENDING = (0xFF00, 0xFF01)
_STUDY_INSTANCE_UID = (0x0020, 0x000D)


# --- C-STORE with storescu ------------------------------------------------------------------


@dataclass(frozen=True)
class FileSet:
    """A pack written out as one file per instance (named in pack order), for `storescu`."""

    root: Path
    names: tuple[str, ...]
    sizes: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.names)


def export_files(pack: Pack) -> FileSet:
    """The files of `pack` beside it (`NAME.files/`), written on first use."""
    root = pack.path.with_name(f"{pack.name}.files")
    marker = root / "complete.json"
    names = tuple(f"{n:06d}.dcm" for n in range(pack.count))
    sizes = tuple(length for _, length in pack.entries)
    done = marker.is_file() and json.loads(marker.read_text()).get("count") == pack.count
    if not done:
        logger.warning("writing the %d instances of %s as files for storescu in %s (once)", pack.count, pack.name, root)
        root.mkdir(parents=True, exist_ok=True)
        chunk = 200
        for first in range(0, pack.count, chunk):
            items = load_items(pack.path, list(pack.entries[first : first + chunk]))
            for n, item in enumerate(items, first):
                (root / names[n]).write_bytes(item)
        marker.write_text(json.dumps({"count": pack.count}))  # last: its presence means complete
    return FileSet(root, names, sizes)


def _storescu_failures(log: Path) -> tuple[int, str]:
    """Files storescu reports as not stored, and the first error line of its log."""
    failures, first = 0, ""
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(("E:", "F:")) and not first:
            first = line
        if line.startswith("E: Store Failed, file:") or line.startswith("E: Bad DICOM file:"):
            failures += 1
    return failures, first


def store(
    files: FileSet,
    associations: int,
    host: str,
    port: int,
    calling_aet: str,
    called_aet: str,
    logs: Path,
    on_start: Callable[[], None],
) -> LoadResult:
    """Send every file once over `associations` parallel associations (one storescu each)."""
    shares = [list(range(files.count))[i::associations] for i in range(associations)]
    arguments = sum(len(files.names[n]) + 1 for n in shares[0])
    if arguments > os.sysconf("SC_ARG_MAX") // 2:
        raise RuntimeError(f"{files.count} file names are too many for one storescu command line: use fewer")
    env = {**os.environ, "TCP_NODELAY": "1"}
    logs.mkdir(parents=True, exist_ok=True)
    on_start()
    running: list[tuple[subprocess.Popen[bytes], float, Path, list[int]]] = []
    for k, share in enumerate(shares):
        log = logs / f"storescu-{associations}-{k}.log"
        command = [STORESCU, "--no-halt", "-aet", calling_aet, "-aec", called_aet, host, str(port)]
        with open(log, "wb") as out:
            started = time.monotonic()
            proc = subprocess.Popen(
                [*command, *(files.names[n] for n in share)],
                cwd=files.root,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        running.append((proc, started, log, share))
    results: list[ClientResult] = []
    for proc, started, log, share in running:
        # wait4 rather than Popen.wait: it also gives the CPU time the process used.
        _, status, usage = os.wait4(proc.pid, 0)
        ended = time.monotonic()
        proc.returncode = os.waitstatus_to_exitcode(status)
        failures, first = _storescu_failures(log)
        notes: dict[str, Any] = {}
        if first:
            notes["first_failure"] = f"storescu: {first} (log: {log})"
        if proc.returncode != 0:
            notes["storescu_exit"] = proc.returncode
        cpu = usage.ru_utime + usage.ru_stime
        size = sum(files.sizes[n] for n in share)
        results.append(ClientResult(started, ended, cpu, len(share), failures, size, [], notes))
    return LoadResult(min(r.started for r in results), max(r.ended for r in results), results)


# --- C-FIND: queries ------------------------------------------------------------------------------

# What a viewer's study list asks back (the same for every query and both servers).
RETURN_KEYS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedInstances",
)


@dataclass(frozen=True)
class FindQuery:
    """One kind of study-level C-FIND, cycling through several variants (constraints)."""

    name: str
    variants: tuple[Mapping[str, str], ...]

    def identifiers(self) -> list[bytes]:
        """Each variant's identifier, encoded in Implicit VR Little Endian."""
        encoded = []
        for constraints in self.variants:
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            for keyword in RETURN_KEYS:
                setattr(ds, keyword, "")
            for keyword, value in constraints.items():
                setattr(ds, keyword, value)
            fp = DicomBytesIO()
            fp.is_little_endian = True
            fp.is_implicit_VR = True
            write_dataset(fp, ds)
            encoded.append(fp.getvalue())
        return encoded


@dataclass(frozen=True)
class FindAnswer:
    status: int
    study_uids: list[str]


# --- C-FIND: the raw client ---------------------------------------------------------------------


def _item(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(payload)) + payload


def _uid(value: str) -> bytes:
    raw = value.encode()
    return raw + b"\0" if len(raw) % 2 else raw


def _element(group: int, element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, element, len(value)) + value


def _elements(data: bytes) -> dict[tuple[int, int], bytes]:
    """The top-level elements of an Implicit VR Little Endian data set, up to the first one of
    undefined length (a sequence: none is asked for here)."""
    found: dict[tuple[int, int], bytes] = {}
    pos = 0
    while pos + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHI", data, pos)
        pos += 8
        if length == 0xFFFFFFFF:
            break
        found[(group, element)] = data[pos : pos + length]
        pos += length
    return found


class DicomError(RuntimeError):
    """The peer refused, aborted, or sent something this client does not expect."""


class RawFindAssociation:
    """One association on which C-FIND requests are sent one after the other."""

    def __init__(self, host: str, port: int, calling_aet: str, called_aet: str, timeout: float = 60.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader = self.sock.makefile("rb")
        self.message_id = 0
        context = bytes([1, 0, 0, 0]) + _item(0x30, STUDY_ROOT_FIND.encode()) + _item(0x40, IMPLICIT_VR_LE.encode())
        user = _item(0x51, struct.pack(">I", _MAX_PDU)) + _item(0x52, _IMPLEMENTATION_UID.encode())
        body = (
            struct.pack(">HH", 1, 0)
            + called_aet.encode().ljust(16)
            + calling_aet.encode().ljust(16)
            + bytes(32)
            + _item(0x10, _APPLICATION_CONTEXT.encode())
            + _item(0x20, context)
            + _item(0x50, user)
        )
        self.sock.sendall(struct.pack(">BBI", 0x01, 0, len(body)) + body)
        kind, answer = self._read_pdu()
        if kind == 0x03:
            raise DicomError(f"association rejected (result {answer[1]}, source {answer[2]}, reason {answer[3]})")
        if kind != 0x02:
            raise DicomError(f"unexpected PDU type {kind:#x} in answer to A-ASSOCIATE-RQ")
        pos, accepted = 68, False
        while pos + 4 <= len(answer):
            item_type, _, length = struct.unpack_from(">BBH", answer, pos)
            if item_type == 0x21 and answer[pos + 4] == 1:
                accepted = answer[pos + 6] == 0
            pos += 4 + length
        if not accepted:
            self.close()
            raise DicomError("Study Root C-FIND in Implicit VR Little Endian was not accepted")

    def _read_exact(self, n: int) -> bytes:
        data = self.reader.read(n)
        if len(data) != n:
            raise DicomError("connection closed by the peer")
        return data

    def _read_pdu(self) -> tuple[int, bytes]:
        kind, _, length = struct.unpack(">BBI", self._read_exact(6))
        return kind, self._read_exact(length)

    def find(self, identifier: bytes) -> FindAnswer:
        """Send one C-FIND-RQ and read every answer up to the final status."""
        self.message_id = self.message_id % 0xFFFF + 1
        command = (
            _element(0x0000, 0x0002, _uid(STUDY_ROOT_FIND))
            + _element(0x0000, 0x0100, struct.pack("<H", 0x0020))  # C-FIND-RQ
            + _element(0x0000, 0x0110, struct.pack("<H", self.message_id))
            + _element(0x0000, 0x0700, struct.pack("<H", 0))  # medium priority
            + _element(0x0000, 0x0800, struct.pack("<H", 0x0001))  # a data set follows
        )
        command = _element(0x0000, 0x0000, struct.pack("<I", len(command))) + command
        # Two P-DATA-TF PDUs (command, then identifier; each its own last fragment) in one write.
        pdus = b""
        for control, payload in ((0x03, command), (0x02, identifier)):
            pdv = struct.pack(">IBB", len(payload) + 2, 1, control) + payload
            pdus += struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv
        self.sock.sendall(pdus)
        uids: list[str] = []
        command_part, data_part = b"", b""
        expect_data = False
        while True:
            kind, pdu = self._read_pdu()
            if kind != 0x04:
                raise DicomError(f"unexpected PDU type {kind:#x} during C-FIND (0x07: A-ABORT)")
            pos = 0
            while pos < len(pdu):
                (length,) = struct.unpack_from(">I", pdu, pos)
                control = pdu[pos + 5]
                value = pdu[pos + 6 : pos + 4 + length]
                pos += 4 + length
                if control & 0x01:
                    command_part += value
                    if not control & 0x02:
                        continue
                    elements = _elements(command_part)
                    command_part = b""
                    (status,) = struct.unpack("<H", elements.get((0x0000, 0x0900), b"\xff\xff"))
                    (data_type,) = struct.unpack("<H", elements.get((0x0000, 0x0800), b"\x01\x01"))
                    expect_data = data_type != 0x0101
                    if status not in _PENDING and not expect_data:
                        return FindAnswer(status, uids)
                else:
                    data_part += value
                    if not control & 0x02:
                        continue
                    uid = _elements(data_part).get(_STUDY_INSTANCE_UID, b"")
                    uids.append(uid.rstrip(b"\0 ").decode(errors="replace"))
                    data_part, expect_data = b"", False
                    if status not in _PENDING:
                        return FindAnswer(status, uids)

    def release(self) -> None:
        try:
            self.sock.sendall(struct.pack(">BBI", 0x05, 0, 4) + bytes(4))
            self._read_pdu()
        except (OSError, DicomError):
            pass
        self.close()

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class PynetdicomFindAssociation:
    """The same through pynetdicom (a cross-check: its own CPU cost per answer is high)."""

    def __init__(self, host: str, port: int, calling_aet: str, called_aet: str) -> None:
        from pynetdicom import AE

        ae = AE(ae_title=calling_aet)
        ae.add_requested_context(STUDY_ROOT_FIND, [IMPLICIT_VR_LE])
        self.assoc = ae.associate(host, port, ae_title=called_aet)
        if not self.assoc.is_established:
            raise DicomError("association rejected or aborted")
        # pynetdicom leaves Nagle's algorithm on.
        self.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]

    def find(self, identifier: bytes) -> FindAnswer:
        from pydicom import dcmread

        query = dcmread(DicomBytesIO(identifier), force=True)  # pynetdicom wants a Dataset
        uids: list[str] = []
        status = 0xFFFF
        for reply, answer in self.assoc.send_c_find(query, STUDY_ROOT_FIND):
            if reply is None or "Status" not in reply:
                raise DicomError("no answer (DIMSE timeout, abort or invalid response)")
            status = int(reply.Status)
            if answer is not None and status in _PENDING:
                uids.append(str(answer.get("StudyInstanceUID", "")))
        return FindAnswer(status, uids)

    def release(self) -> None:
        self.assoc.release()


def _summary(uids: list[str]) -> dict[str, Any]:
    """What is compared between the servers: the number of answers and a digest of the sorted
    study UIDs (as `bench.load` does for REST answers)."""
    return {"count": len(uids), "digest": hashlib.sha1("\n".join(sorted(uids)).encode()).hexdigest()}


def _find_task(
    kind: str,
    address: tuple[str, int, str, str],
    query: FindQuery,
    repeats: int,
    warmup: int,
    start: _Start,
    out: Any,
) -> None:
    host, port, _, called = address
    latencies: list[float] = []
    notes: dict[str, Any] = {}
    answers: dict[str, dict[str, Any]] = {}
    failures = total = 0
    identifiers = query.identifiers()
    assoc: RawFindAssociation | PynetdicomFindAssociation | None = None
    try:
        assoc = RawFindAssociation(*address) if kind == "raw" else PynetdicomFindAssociation(*address)
    except (OSError, DicomError) as exc:
        notes["unavailable"] = f"association to {called}@{host}:{port} failed: {exc}"
    start.wait()
    if assoc is None:
        now = time.monotonic()
        out.put(ClientResult(now, now, 0.0, 0, 1, 0, [], notes))
        return
    try:
        # A probe first: a server that refuses C-FIND is reported, not timed.
        probe = assoc.find(identifiers[0])
        if probe.status != 0x0000:
            notes["unavailable"] = f"C-FIND answered status {probe.status:#06x}"
            now = time.monotonic()
            out.put(ClientResult(now, now, 0.0, 0, 1, 0, [], notes))
            return
        for i, identifier in enumerate(identifiers):
            answers[str(i)] = _summary(assoc.find(identifier).study_uids)
        for i in range(warmup):
            assoc.find(identifiers[i % len(identifiers)])
        started, cpu = time.monotonic(), time.process_time()
        for i in range(repeats):
            t = time.perf_counter()
            answer = assoc.find(identifiers[i % len(identifiers)])
            latencies.append(time.perf_counter() - t)
            total += len(answer.study_uids)
            if answer.status != 0x0000:
                failures += 1
                notes.setdefault("first_failure", f"C-FIND final status {answer.status:#06x}")
        ended, cpu = time.monotonic(), time.process_time() - cpu
    finally:
        assoc.release()
    notes["answers"] = answers
    notes["answers_per_query"] = round(total / max(repeats, 1), 1)
    out.put(ClientResult(started, ended, cpu, repeats, failures, 0, latencies, notes))


def find_latency(
    kind: str,
    address: tuple[str, int, str, str],
    query: FindQuery,
    repeats: int,
    warmup: int,
    on_start: Callable[[], None],
) -> LoadResult:
    """Time `repeats` C-FINDs on one association (host, port, calling AET, called AET), one client process."""
    return _run_clients(_find_task, [(kind, address, query, repeats, warmup)], on_start)


def queries_from_rest(bodies: Sequence[Mapping[str, Any] | None]) -> tuple[Mapping[str, str], ...]:
    """The constraints of `/tools/find` bodies (`{"Level": ..., "Query": {...}}`) as C-FIND keys."""
    return tuple(dict(body["Query"]) for body in bodies if body is not None)
