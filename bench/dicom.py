"""`python -m bench.dicom [--quick] [--out FILE.json]`: dicomvault's DICOM server against Orthanc 1.10.1.

The DICOM counterpart of `bench.run`, with the same servers, data, rounds and report. One round
measures, for each server in turn, each time on a freshly started, empty server:

1. C-STORE ingest of the CT set over one association, then over 4 parallel associations
   (DCMTK's `storescu`, one process per association);
2. the same with the tiny set; after the 4-association ingest, the latency of study-level
   C-FINDs (wildcard PatientName, StudyDate range, ModalitiesInStudy: the variants of
   `bench.run`'s `/tools/find` queries) on one association kept open;
3. all along, the peak resident memory of the server's process tree.

After each ingest, the instances stored are counted over REST: a server (or a client) that
loses files is reported as an error, never silently timed. The order of the two servers
alternates between rounds and each ratio dicomvault/Orthanc is taken within one round; the
summary reports the median of those ratios.

Fairness: `storescu` runs with `TCP_NODELAY=1` in its environment, and so does Orthanc
(`bench.servers`); dicomvault's DICOM server must disable Nagle's algorithm on its own sockets.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from bench import data, dicom_load, run
from bench.dicom_load import FindQuery
from bench.report import Metric
from bench.servers import BENCH_AET, Server, bench_prologue

logger = logging.getLogger("bench")

HOST = "127.0.0.1"

FIND_QUERIES = tuple(FindQuery("c" + q.name, dicom_load.queries_from_rest(q.bodies)) for q in run.FIND_QUERIES)

METRICS = (
    Metric("cstore_ct_1", "rate", "C-STORE CT 525 KB, 1 association", "inst/s", ">= 0.8x", True),
    Metric("cstore_ct_4", "rate", "C-STORE CT 525 KB, 4 associations", "inst/s", ">= 1.0x", True),
    Metric("cstore_tiny_1", "rate", "C-STORE tiny, 1 association", "inst/s", ">= 0.8x", True),
    Metric("cstore_tiny_4", "rate", "C-STORE tiny, 4 associations", "inst/s", ">= 1.0x", True),
    Metric("cfind_name", "p50_ms", "C-FIND studies PatientName *X* p50", "ms", "<= 1.0x", False),
    Metric("cfind_name", "p99_ms", "C-FIND studies PatientName *X* p99", "ms", "<= 1.0x", False),
    Metric("cfind_date", "p50_ms", "C-FIND studies StudyDate range p50", "ms", "<= 1.0x", False),
    Metric("cfind_date", "p99_ms", "C-FIND studies StudyDate range p99", "ms", "<= 1.0x", False),
    Metric("cfind_modality", "p50_ms", "C-FIND studies ModalitiesInStudy p50", "ms", "<= 1.0x", False),
    Metric("cfind_modality", "p99_ms", "C-FIND studies ModalitiesInStudy p99", "ms", "<= 1.0x", False),
    Metric("memory", "peak_rss_mb", "peak RSS, process tree, whole round", "MB", "", False),
)
LOAD_KEYS = ("cstore_ct_1", "cstore_ct_4", "cstore_tiny_1", "cstore_tiny_4", "cfind_name", "cfind_modality")

FULL_PLAN = run.Plan(data.FULL, rounds=3, download_passes=0, find_repeats=200, expand_repeats=0, warmup=5)
QUICK_PLAN = run.Plan(data.QUICK, rounds=1, download_passes=0, find_repeats=60, expand_repeats=0, warmup=3)

# Below this, one association is paced by Nagle's algorithm (~40 ms per exchange), not by the server.
_NAGLE_SUSPECT_RATE = 30.0


def wait_dicom(server: Server, timeout: float = 15.0) -> str:
    """Wait until the server's DICOM port answers a C-ECHO (its HTTP port, already answering, may
    open first); "" once it does, else why not."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    command = ["echoscu", "-aet", BENCH_AET, "-aec", server.aet, HOST, str(server.dicom_port)]
    deadline = time.monotonic() + timeout
    while True:
        answer = subprocess.run(command, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL)
        if answer.returncode == 0:
            return ""
        if time.monotonic() > deadline:
            return (
                f"no C-ECHO answer on DICOM port {server.dicom_port} within {timeout:.0f}s: "
                f"{(answer.stdout + answer.stderr).strip()[-200:]}"
            )
        time.sleep(0.1)


class DicomBench(run.Bench):
    """`bench.run`'s rounds and phases (ct_1, ct_4, tiny_1, tiny_4), with DICOM loads in each."""

    def __init__(
        self, plan: run.Plan, ct: data.Pack, tiny: data.Pack, workdir: Path, profiler: run.Profiler | None, client: str
    ) -> None:
        super().__init__(plan, ct, tiny, workdir, profiler, client)
        self.files = {"ct": dicom_load.export_files(ct), "tiny": dicom_load.export_files(tiny)}

    def measure(self, server: Server, phase: str) -> dict[str, Any]:
        kind, associations = phase.split("_")
        name = f"cstore_{phase}"
        names = [name] + ([q.name for q in FIND_QUERIES] if phase == "tiny_4" else [])
        problem = wait_dicom(server)
        if problem:
            # A server without a DICOM front end is shown as "n/a", and the run goes on.
            logger.warning("  %-10s %-14s %s", server.name, phase, problem)
            return {n: {"unavailable": problem} for n in names}
        records = {name: self._store(server, self.files[kind], int(associations), name)}
        if phase == "tiny_4":
            for query in FIND_QUERIES:
                records[query.name] = self._find(server, query)
        return records

    def _store(self, server: Server, files: dicom_load.FileSet, associations: int, name: str) -> dict[str, Any]:
        logs = self.workdir / "storescu" / f"{server.name}-{name}"
        load = partial(dicom_load.store, files, associations, HOST, server.dicom_port, BENCH_AET, server.aet, logs)
        record = self._timed(server, name, load)
        self._check_stored(server, name, record, files.count, "storescu reported no error")
        if associations == 1 and record["rate"] < _NAGLE_SUSPECT_RATE:
            logger.warning(
                "%s %s: %.1f inst/s over one association looks paced by Nagle's algorithm: does the server set "
                "TCP_NODELAY on its DICOM sockets?",
                server.name,
                name,
                record["rate"],
            )
        logger.warning("  %-10s %-14s %8.1f inst/s", server.name, name, record["rate"])
        return record

    def _find(self, server: Server, query: FindQuery) -> dict[str, Any]:
        address = (HOST, server.dicom_port, BENCH_AET, server.aet)
        load = partial(dicom_load.find_latency, self.client, address, query, self.plan.find_repeats, self.plan.warmup)
        record = self._timed(server, query.name, load)
        if record.get("unavailable"):
            logger.warning("  %-10s %-14s %s", server.name, query.name, record["unavailable"])
        else:
            logger.warning("  %-10s %-14s p50 %8.1f ms  p99 %8.1f ms", server.name, query.name, record["p50_ms"],
                           record["p99_ms"])  # fmt: skip
        return record


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.dicom", description=__doc__.split("\n\n")[0])
    run.common_arguments(parser, "~1 min")
    parser.add_argument("--find-repeats", type=int, help="timed C-FINDs per query (default 200; 60 with --quick)")
    parser.add_argument(
        "--find-client",
        choices=("raw", "pynetdicom"),
        default="raw",
        help="C-FIND client: PDUs written on a socket (least client CPU, default) or pynetdicom (a cross-check)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if not bench_prologue():
        return 2
    missing = [tool for tool in ("storescu", "echoscu") if shutil.which(tool) is None]
    if missing:
        logger.error("%s missing: install Debian's dcmtk package (scripts/setup.sh --test)", ", ".join(missing))
        return 2
    plan = run.plan_from_arguments(args, QUICK_PLAN, FULL_PLAN)
    plan = replace(plan, find_repeats=args.find_repeats or plan.find_repeats)
    profiler = run.profiler_from_arguments(args)

    def run_rounds(ct: data.Pack, tiny: data.Pack, workdir: Path) -> list[dict[str, Any]]:
        return DicomBench(plan, ct, tiny, workdir, profiler, args.find_client).run()

    described = run.Report(
        "dicomvault / Orthanc 1.10.1 over DICOM",
        "dicomvault-bench-dicom",
        METRICS,
        LOAD_KEYS,
        machine={"storescu": _tool_version("storescu")},
        plan={
            "find_repeats": plan.find_repeats,
            "find_client": args.find_client,
            "find_queries": {q.name: [dict(v) for v in q.variants] for q in FIND_QUERIES},
            "find_return_keys": list(dicom_load.RETURN_KEYS),
        },
    )
    return run.run_and_report(args, plan, run_rounds, described)


def _tool_version(tool: str) -> str:
    with contextlib.suppress(OSError):
        answer = subprocess.run([tool, "--version"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        return answer.stdout.strip().splitlines()[0] if answer.stdout.strip() else ""
    return ""


if __name__ == "__main__":
    sys.exit(main())
