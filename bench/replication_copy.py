"""The copies `bench.replication` times, and what it checks and measures around each of them.

- **Ours**: `dicomvault replicate SRC DST` / `dicomvault import DIR --to URL`, the command users
  run, as a subprocess with its default workers (`--json` for the checks, `--no-progress`, a state
  file in the benchmark's folder). Its wall time includes the interpreter's start; its CPU time is
  the kernel's account of the reaped process (`wait4`).
- **Sequential**: what Orthanc's sample scripts do, in this process over one keep-alive connection
  per server (`bench.client.RawConnection`, the cheapest client there is, so the baseline is not
  slowed by its client): Replicate.py's copy (`GET /instances`, then for each id `GET .../file`
  and `POST /instances` to the target, one at a time) and ImportDicomFiles.py's upload (read each
  file, `POST /instances`, one at a time).
- **Meter**: the cores used meanwhile by the source's and the target's process trees, by the tool
  and by the rest of the machine (`/proc`, as `bench.servers` reads them).
- **Checks**: the instance count the target holds, and the MD5 of a sample of instances (the
  target's `/instances/{id}/attachments/dicom/md5`, answered by Orthanc and dicomvault alike)
  against the MD5 of the generated files, whose public ids are computed from their UIDs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import data
from bench.client import RawConnection
from bench.servers import Server, machine_cpu, process_tree, tree_cpu
from dicomvault.dicom.parsing import public_id, read_dataset

logger = logging.getLogger("bench")


class Meter:
    """CPU seconds used by the source, the target, the tool and the machine during one copy."""

    def __init__(self, target: Server, source: Server | None) -> None:
        self.target = target
        self.source = source
        self._marks: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)

    def _cpu(self) -> tuple[float, float, float, float, float]:
        source = tree_cpu(process_tree(self.source.pid)) if self.source is not None else 0.0
        target = tree_cpu(process_tree(self.target.pid))
        return time.monotonic(), source, target, machine_cpu()[0], time.process_time()

    def start(self) -> None:
        self._marks = self._cpu()

    def stop(self, count: int, tool_cpu: float = 0.0, wall: float | None = None) -> dict[str, Any]:
        """The record of a copy of `count` instances; `tool_cpu`: the CPU of the tool's processes
        (this process's own CPU time is added: for the sequential copy it is the tool)."""
        now, source, target, machine, own = self._cpu()
        t0, source0, target0, machine0, own0 = self._marks
        # Cores over the metered interval (it may also hold the ingest's client processes
        # ending), the rate over the copy's own interval when the caller knows it.
        metered = max(now - t0, 1e-6)
        elapsed = wall if wall is not None else metered
        source, target, machine = source - source0, target - target0, machine - machine0
        tool = tool_cpu + own - own0
        return {
            "instances": count,
            "seconds": round(elapsed, 3),
            "rate": round(count / elapsed, 2) if elapsed > 0 else 0.0,
            "source_cores": round(source / metered, 3) if self.source is not None else None,
            "target_cores": round(target / metered, 3),
            "tool_cores": round(tool / metered, 3),
            "other_cores": round(max(0.0, machine - source - target - tool) / metered, 3),
            "tool_cpu_ms_per_instance": round(1000 * tool / max(count, 1), 3),
            "target_cpu_ms_per_instance": round(1000 * target / max(count, 1), 3),
        }


def dicomvault_command() -> list[str]:
    """The `dicomvault` command of this environment (the console script beside this Python)."""
    script = Path(sys.executable).with_name("dicomvault")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "dicomvault"]


def run_tool(arguments: list[str], folder: Path, meter: Meter, count: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run `dicomvault ARGUMENTS` in `folder` and time it; (record, its --json report)."""
    folder.mkdir(parents=True, exist_ok=True)
    out, err = folder / "stdout.json", folder / "stderr.txt"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        meter.start()
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [*dicomvault_command(), *arguments], stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, cwd=folder
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
    record = meter.stop(count, usage.ru_utime + usage.ru_stime, wall)
    record["exit_code"] = proc.returncode
    try:
        report: dict[str, Any] = json.loads(out.read_text())
    except ValueError:
        report = {}
    if proc.returncode != 0 or not report:
        tail = err.read_text(errors="replace").strip().splitlines()[-3:]
        record["problems"] = [f"dicomvault {arguments[0]} exited with {proc.returncode}: {' / '.join(tail)}"]
    return record, report


def sequential_copy(source_url: str, target_url: str) -> tuple[int, int, str]:
    """Replicate.py's way: list the source's instances, then download and upload each one in
    turn. Returns (instances copied, failures, the first failure)."""
    source, target = RawConnection(source_url), RawConnection(target_url)
    copied = failures = 0
    first = ""
    try:
        for instance in json.loads(source.request("GET", "/instances").body):
            answer = source.request("GET", f"/instances/{instance}/file")
            stored = target.request("POST", "/instances", answer.body, "application/dicom")
            if answer.status == 200 and stored.status == 200:
                copied += 1
            else:
                failures += 1
                first = first or f"{instance}: GET {answer.status}, POST {stored.status} {stored.body[:200]!r}"
    finally:
        source.close()
        target.close()
    return copied, failures, first


def sequential_import(folder: Path, names: tuple[str, ...], target_url: str) -> tuple[int, int, str]:
    """ImportDicomFiles.py's way: read each file and upload it, one at a time."""
    target = RawConnection(target_url)
    sent = failures = 0
    first = ""
    try:
        for name in names:
            answer = target.request("POST", "/instances", (folder / name).read_bytes(), "application/dicom")
            if answer.status == 200:
                sent += 1
            else:
                failures += 1
                first = first or f"{name}: {answer.status} {answer.body[:200]!r}"
    finally:
        target.close()
    return sent, failures, first


@dataclass(frozen=True)
class Sample:
    """MD5 of some instances of a pack, by public id (the same on every Orthanc-compatible server)."""

    md5: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, pack: data.Pack, size: int, seed: int) -> Sample:
        positions = sorted(random.Random(seed).sample(range(pack.count), min(size, pack.count)))
        items = data.load_items(pack.path, [pack.entries[p] for p in positions])
        found: list[tuple[str, str]] = []
        for raw in items:
            ds = read_dataset(raw)
            uids = (str(ds.PatientID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
            found.append((public_id(*uids), hashlib.md5(raw, usedforsecurity=False).hexdigest()))
        return cls(tuple(found))


def check_target(url: str, expected: int, sample: Sample) -> dict[str, Any]:
    """The count the target holds and the MD5s of the sample; "problems" lists what differs."""
    problems: list[str] = []
    with httpx.Client(base_url=url, timeout=60, headers={"Accept-Encoding": "identity"}) as client:
        held = int(client.get("/statistics").json()["CountInstances"])
        if held != expected:
            problems.append(f"the target holds {held} instances, expected {expected}")
        different = 0
        for instance, md5 in sample.md5:
            answer = client.get(f"/instances/{instance}/attachments/dicom/md5")
            if answer.status_code != 200 or answer.text.strip() != md5:
                different += 1
                if different <= 3:
                    problems.append(f"instance {instance}: MD5 {answer.status_code} {answer.text.strip()[:40]!r}")
        if different:
            problems.append(f"{different} of {len(sample.md5)} sampled MD5s differ from the files")
    return {"held": held, "md5_checked": len(sample.md5), "md5_different": different, "problems": problems}
