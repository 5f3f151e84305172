"""The two servers under test, started fresh in temporary folders, and what is read about them
from `/proc`: the memory and CPU time of a server's whole process tree (dicomvault's ingest
workers are child processes), and the machine's total CPU time (to tell how busy the machine was
apart from the server and the clients).

dicomvault runs as `python -m dicomvault serve CONFIG`; Orthanc as `/usr/sbin/Orthanc CONFIG`
through the test suite's launcher (`tests.orthanc.OrthancServer`: no plugins, loopback only).
Both get nothing but their folders, a name, free ports, an AET and the benchmark's DICOM client
declared as a modality (Orthanc 1.10.1 refuses C-FIND from unknown AETs: `DicomAlwaysAllowFind`
is false by default): every other setting is the default (SQLite index, no compression, fsync
on). Orthanc runs with `TCP_NODELAY=1` in its environment, which its DCMTK network layer reads:
as shipped, Nagle's algorithm caps it near 20 C-STORE/s per association, which would compare
nothing. dicomvault gets no such variable: its DICOM server must disable Nagle itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import httpx
from tests.orthanc import OrthancServer
from tests.servers import free_port

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICK = os.sysconf("SC_CLK_TCK")

BENCH_AET = "BENCHSCU"  # the calling AET of the benchmark's DICOM clients
_DICOM_SETTINGS: dict[str, Any] = {"DicomModalities": {"bench": [BENCH_AET, "127.0.0.1", 104]}}


class Server(Protocol):
    """A server process the benchmark can start on an empty folder and stop."""

    name: str
    aet: str

    @property
    def url(self) -> str: ...

    @property
    def dicom_port(self) -> int: ...

    @property
    def pid(self) -> int: ...

    def start(self, base: Path) -> None: ...

    def stop(self) -> None: ...


class DicomVault:
    name = "dicomvault"
    aet = "DICOMVAULT"

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        # Added to (or replacing) the configuration written at start: e.g. a `PostgreSQL` section
        # and a `StorageDirectory` shared with another process (bench.postgresql).
        self.settings = dict(settings or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self._dicom_port = 0

    @property
    def dicom_port(self) -> int:
        return self._dicom_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, base: Path, timeout: float = 60.0, attempts: int = 5) -> None:
        base.mkdir(parents=True, exist_ok=True)
        config = base / "dicomvault.json"
        log = base / "dicomvault.log"
        for _ in range(attempts):
            self.port = free_port()
            self._dicom_port = free_port()
            settings = {
                "Name": "dicomvault-bench",
                "StorageDirectory": str(base / "storage"),
                "HttpPort": self.port,
                "DicomPort": self._dicom_port,
                "DicomAet": self.aet,
                **_DICOM_SETTINGS,
                **self.settings,
            }
            config.write_text(json.dumps(settings, indent=2))
            with open(log, "ab") as out:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "dicomvault", "serve", str(config)],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=base,
                )
            if _wait_ready(self.proc, self.url, timeout):
                return
            if self.proc.poll() is None:
                self.stop()
                raise RuntimeError(f"dicomvault did not answer within {timeout}s; see {log}")
            if self.proc.returncode != 3:  # 3: refused, e.g. the port was taken meanwhile
                raise RuntimeError(f"dicomvault exited with {self.proc.returncode}; see {log}")
        raise RuntimeError(f"dicomvault could not start after {attempts} attempts; see {log}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Orthanc:
    name = "orthanc"
    aet = "ORTHANC"

    def __init__(self) -> None:
        self.server: OrthancServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    @property
    def pid(self) -> int:
        assert self.server is not None and self.server.proc is not None
        return self.server.proc.pid

    @property
    def dicom_port(self) -> int:
        assert self.server is not None
        return self.server.dicom_port

    def start(self, base: Path) -> None:
        settings = {"Name": "orthanc-bench", "DicomAet": self.aet, **_DICOM_SETTINGS}
        self.server = OrthancServer(base, settings, env={"TCP_NODELAY": "1"})
        self.server.start(timeout=60.0)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


def _wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/system", timeout=1.0).status_code == 200:
                return True
        time.sleep(0.05)
    return False


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# --- /proc ------------------------------------------------------------------------------------


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants still alive."""
    found: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo.extend(int(x) for x in f.read().split())
            except OSError:
                continue
    return found


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def tree_rss(pids: list[int]) -> int:
    """Resident memory of these processes, in bytes (summed: each process counted in full)."""
    total = 0
    for pid in pids:
        statm = _read(f"/proc/{pid}/statm")
        if statm:
            total += int(statm.split()[1]) * _PAGE
    return total


def tree_hwm(pids: list[int]) -> int:
    """The sum of each process's own peak resident memory (VmHWM): an upper bound of the tree's peak."""
    total = 0
    for pid in pids:
        status = _read(f"/proc/{pid}/status") or ""
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) * 1024
    return total


def tree_cpu(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes."""
    total = 0
    for pid in pids:
        stat = _read(f"/proc/{pid}/stat")
        if stat:
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / _TICK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores added."""
    first = (_read("/proc/stat") or "cpu 0 0 0 0").splitlines()[0].split()[1:]
    values = [int(x) for x in first[:8]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / _TICK, sum(values) / _TICK


def load_average() -> list[float]:
    return [float(x) for x in (_read("/proc/loadavg") or "0 0 0").split()[:3]]


def bench_prologue() -> bool:
    """What every benchmark command does first: log warnings with the time, and check that the
    reference Orthanc is installed (False, with the instruction logged, when it is not)."""
    import logging

    from tests.orthanc import orthanc_available

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if not orthanc_available():
        logging.getLogger("bench").error(
            "/usr/sbin/Orthanc is missing: install Debian's orthanc package (scripts/setup.sh --test)"
        )
        return False
    return True


def write_results(out: Path | None, prefix: str, started: Any, results: dict[str, Any]) -> Path:
    """Write a benchmark's results as JSON to `out`, or to a dated file in the temporary folder."""
    import tempfile

    path = out or Path(tempfile.gettempdir()) / f"{prefix}-{started:%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(results, indent=2))
    return path


def machine(load_before: list[float], **extra: Any) -> dict[str, Any]:
    """The "machine" record of a benchmark's results: cores, load before and after, Python."""
    import platform

    return {
        "cores": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "python": platform.python_version(),
        **extra,
    }


def tree_uss(pids: list[int]) -> int:
    """Unique set size of these processes, in bytes: their private pages only (what stopping them
    would free). Unlike RSS it does not count twice the interpreter and libraries that spawned
    worker processes map again, and unlike PSS it does not depend on other programs running."""
    total = 0
    for pid in pids:
        for line in (_read(f"/proc/{pid}/smaps_rollup") or "").splitlines():
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1]) * 1024
    return total


def _label(pid: int) -> str:
    command = (_read(f"/proc/{pid}/cmdline") or "").replace("\0", " ").strip()
    if "resource_tracker" in command:
        return "multiprocessing resource tracker"
    if "multiprocessing" in command:
        return "worker process"
    return command.split(" ")[0].rsplit("/", 1)[-1] or "?"


class MemorySampler:
    """Samples the summed RSS of a process tree every `interval` seconds (and its USS every
    `uss_every` samples: reading smaps costs more), in a thread."""

    def __init__(self, root: int, interval: float = 0.05, uss_every: int = 10) -> None:
        self.root = root
        self.interval = interval
        self.uss_every = uss_every
        self.peak = 0
        self.peak_uss = 0
        self.peak_hwm = 0
        self.peak_processes = 0
        self.peak_detail: list[tuple[int, str, int]] = []  # (pid, role, RSS) at the peak
        self._count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample(uss=True)  # the last look, before the server is stopped
        self.peak_hwm = tree_hwm(process_tree(self.root))

    def sample(self, uss: bool = False) -> None:
        pids = process_tree(self.root)
        self.peak_processes = max(self.peak_processes, len(pids))
        rss = tree_rss(pids)
        if rss > self.peak:
            self.peak = rss
            self.peak_detail = [(pid, _label(pid), tree_rss([pid])) for pid in pids]
        self._count += 1
        if uss or self._count % self.uss_every == 0:
            self.peak_uss = max(self.peak_uss, tree_uss(pids))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()
