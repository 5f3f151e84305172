"""`python -m bench.run [--quick] [--out FILE.json]`: dicomvault against the real Orthanc 1.10.1.

Both servers run side by side on free ports, each in its own temporary folder with its default
settings, on the same generated data (`bench.data`). One round measures, for each server in turn:

1. REST ingest of the CT set with 1 client, then with 4 (each on a fresh, empty server);
   after the 4-client ingest, download MB/s of the CT files with 4 clients;
2. REST ingest of the tiny set with 1 client, then with 4 (fresh servers again); after the
   4-client ingest, the latency of `/tools/find` at study level (wildcard PatientName, StudyDate
   range, ModalitiesInStudy) and of `GET /studies?expand`;
3. all along, the peak resident memory of the server's process tree (sampled every 50 ms).

Each measurement runs on one server then the other before the next one starts, and the order
of the two servers alternates between rounds, so that both see the same machine load. The
ratio dicomvault/Orthanc is taken within each round; the summary reports its median.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from bench import data, load, report
from bench.servers import (
    DicomVault,
    MemorySampler,
    Orthanc,
    Server,
    bench_prologue,
    load_average,
    machine,
    machine_cpu,
    process_tree,
    remove_tree,
    tree_cpu,
    write_results,
)

logger = logging.getLogger("bench")

FIND_QUERIES = (
    load.Query(
        "find_name",
        "POST",
        "/tools/find",
        tuple(
            {"Level": "Study", "Query": {"PatientName": pattern}}
            for pattern in ("*SMITH*", "*SON*", "JO*", "*ILL*", "BROWN*")
        ),
    ),
    load.Query(
        "find_date",
        "POST",
        "/tools/find",
        tuple(
            {"Level": "Study", "Query": {"StudyDate": dates}}
            for dates in ("20180101-20181231", "20150601-20160531", "20230701-", "-20100630", "20120301-20120930")
        ),
    ),
    load.Query(
        "find_modality",
        "POST",
        "/tools/find",
        tuple(
            {"Level": "Study", "Query": {"ModalitiesInStudy": modalities}}
            for modalities in ("MR", "PT", "US\\MG", "SR", "NM\\DX")
        ),
    ),
)
EXPAND_QUERY = load.Query("expand_studies", "GET", "/studies?expand", (None,))


@dataclass(frozen=True)
class Plan:
    sizes: data.Sizes
    rounds: int
    download_passes: int
    find_repeats: int
    expand_repeats: int
    warmup: int


FULL_PLAN = Plan(data.FULL, rounds=3, download_passes=3, find_repeats=200, expand_repeats=60, warmup=5)
QUICK_PLAN = Plan(data.QUICK, rounds=1, download_passes=5, find_repeats=60, expand_repeats=30, warmup=3)


class Profiler:
    """py-spy attached to dicomvault (and its worker processes) during each timed load."""

    def __init__(self, folder: Path, binary: str) -> None:
        self.folder = folder
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self, pid: int, name: str) -> None:
        out = self.folder / f"{name}.txt"
        options = ["record", "--subprocesses", "--threads", "--rate", "200", "--format", "raw"]
        with open(self.folder / f"{name}.log", "wb") as log:
            self.proc = subprocess.Popen(
                [self.binary, *options, "--pid", str(pid), "--output", str(out)],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


class Bench:
    def __init__(
        self, plan: Plan, ct: data.Pack, tiny: data.Pack, workdir: Path, profiler: Profiler | None, client: str
    ) -> None:
        self.plan = plan
        self.client = client
        self.ct = ct
        self.tiny = tiny
        self.workdir = workdir
        self.profiler = profiler

    def _timed(self, server: Server, name: str, run: Callable[[Callable[[], None]], load.LoadResult]) -> dict[str, Any]:
        """Run one load and add what the server, the clients and the machine used meanwhile."""
        marks: dict[str, Any] = {}

        def on_start() -> None:
            marks["t"] = time.monotonic()
            marks["server_cpu"] = tree_cpu(process_tree(server.pid))
            marks["machine"] = machine_cpu()[0]
            marks["self"] = time.process_time()
            if self.profiler is not None and server.name == report.DV:
                self.profiler.start(server.pid, name)

        result = run(on_start)
        elapsed = time.monotonic() - marks["t"]
        server_cpu = tree_cpu(process_tree(server.pid)) - marks["server_cpu"]
        machine = machine_cpu()[0] - marks["machine"]
        own = time.process_time() - marks["self"]
        if self.profiler is not None and server.name == report.DV:
            self.profiler.stop()
        record: dict[str, Any] = {
            "requests": result.requests,
            "failures": result.failures,
            "seconds": round(result.wall, 3),
            "bytes": result.bytes,
            "server_cores": round(server_cpu / elapsed, 3),
            "client_cores": round((result.client_cpu + own) / result.wall, 3) if result.wall > 0 else 0.0,
            "other_cores": round(max(0.0, (machine - server_cpu - result.client_cpu - own) / elapsed), 3),
            "server_cpu_ms_per_request": round(1000 * server_cpu / max(result.requests, 1), 3),
            "client_cpu_ms_per_request": round(1000 * result.client_cpu / max(result.requests, 1), 3),
        }
        lat = result.latencies
        if lat:
            record["p50_ms"] = round(1000 * report.percentile(lat, 0.5), 3)
            record["p99_ms"] = round(1000 * report.percentile(lat, 0.99), 3)
            record["mean_ms"] = round(1000 * sum(lat) / len(lat), 3)
        for client in result.clients:
            for key, value in client.notes.items():
                record.setdefault(key, value)
        return record

    def _ingest(self, server: Server, pack: data.Pack, clients: int, name: str) -> dict[str, Any]:
        record = self._timed(server, name, partial(load.ingest, self.client, server.url, pack, clients))
        self._check_stored(server, name, record, pack.count, "")
        logger.warning("  %-10s %-14s %8.1f inst/s", server.name, name, record["rate"])
        return record

    def _check_stored(self, server: Server, name: str, record: dict[str, Any], expected: int, no_failure: str) -> None:
        """Add the rates and the count the server holds to an ingest's record; log what is missing."""
        record["rate"] = round(record["requests"] / record["seconds"], 2)
        record["mb_per_s"] = round(record["bytes"] / 1e6 / record["seconds"], 2)
        count = httpx.get(server.url + "/statistics", timeout=60).json()["CountInstances"]
        record["stored"] = count
        if count != expected or record["failures"]:
            logger.error(
                "%s %s: %d failures, %d instances stored of %d sent (%s)",
                server.name,
                name,
                record["failures"],
                count,
                expected,
                record.get("first_failure", no_failure),
            )

    def _download(self, server: Server) -> dict[str, Any]:
        ids = httpx.get(server.url + "/instances", timeout=60).json()
        passes, clients = self.plan.download_passes, 4
        record = self._timed(
            server,
            "download_ct_4",
            partial(load.download, self.client, server.url, ids, passes, clients),
        )
        record["mb_per_s"] = round(record["bytes"] / 1e6 / record["seconds"], 2)
        logger.warning("  %-10s %-14s %8.1f MB/s", server.name, "download_ct_4", record["mb_per_s"])
        return record

    def _latency(self, server: Server, query: load.Query, repeats: int) -> dict[str, Any]:
        record = self._timed(
            server,
            query.name,
            partial(load.latency, self.client, server.url, query, repeats, self.plan.warmup),
        )
        if record.get("unavailable"):
            logger.warning("  %-10s %-14s %s", server.name, query.name, record["unavailable"])
        else:
            logger.warning("  %-10s %-14s p50 %8.1f ms  p99 %8.1f ms", server.name, query.name, record["p50_ms"],
                           record["p99_ms"])  # fmt: skip
        return record

    def measure(self, server: Server, phase: str) -> dict[str, Any]:
        """The timed loads of one phase on a freshly started `server` (bench.dicom overrides it)."""
        records: dict[str, Any] = {}
        if phase == "ct_1":
            records["ingest_ct_1"] = self._ingest(server, self.ct, 1, "ingest_ct_1")
        elif phase == "ct_4":
            records["ingest_ct_4"] = self._ingest(server, self.ct, 4, "ingest_ct_4")
            records["download_ct_4"] = self._download(server)
        elif phase == "tiny_1":
            records["ingest_tiny_1"] = self._ingest(server, self.tiny, 1, "ingest_tiny_1")
        elif phase == "tiny_4":
            records["ingest_tiny_4"] = self._ingest(server, self.tiny, 4, "ingest_tiny_4")
            for query in FIND_QUERIES:
                records[query.name] = self._latency(server, query, self.plan.find_repeats)
            records[EXPAND_QUERY.name] = self._latency(server, EXPAND_QUERY, self.plan.expand_repeats)
        return records

    def phase(self, server: Server, round_no: int, phase: str) -> dict[str, Any]:
        """Start `server` on an empty folder, run one phase, stop it; returns the phase's records."""
        base = self.workdir / f"r{round_no}-{server.name}-{phase}"
        records: dict[str, Any] = {}
        server.start(base)
        try:
            with MemorySampler(server.pid) as sampler:
                records.update(self.measure(server, phase))
        finally:
            server.stop()
            remove_tree(base)
        records["memory_" + phase] = {
            "peak_rss_mb": round(sampler.peak / 1e6, 1),
            "peak_uss_mb": round(sampler.peak_uss / 1e6, 1),
            "sum_vmhwm_mb": round(sampler.peak_hwm / 1e6, 1),
            "processes": sampler.peak_processes,
            "at_peak": [
                {"pid": pid, "role": role, "rss_mb": round(rss / 1e6, 1)} for pid, role, rss in sampler.peak_detail
            ],
        }
        return records

    def run(self) -> list[dict[str, Any]]:
        servers: list[Server] = [DicomVault(), Orthanc()]
        rounds: list[dict[str, Any]] = []
        for n in range(1, self.plan.rounds + 1):
            order = servers if n % 2 else servers[::-1]
            logger.warning("round %d of %d (order: %s)", n, self.plan.rounds, ", ".join(s.name for s in order))
            record: dict[str, Any] = {s.name: {} for s in servers}
            for phase in ("ct_1", "ct_4", "tiny_1", "tiny_4"):
                for server in order:
                    record[server.name].update(self.phase(server, n, phase))
            for server in servers:
                phases = [v for k, v in record[server.name].items() if k.startswith("memory_")]
                record[server.name]["memory"] = {
                    "peak_rss_mb": max(v["peak_rss_mb"] for v in phases),
                    "peak_uss_mb": max(v["peak_uss_mb"] for v in phases),
                }
            rounds.append(record)
        return rounds


def common_arguments(parser: argparse.ArgumentParser, quick_minutes: str) -> None:
    """The options every benchmark command shares (sizes, rounds, cache, profiling)."""
    quick = f"small sizes and one round (a smoke run of {quick_minutes})"
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--out", type=Path, help="where to write the JSON results (default: a file in the temp dir)")
    parser.add_argument("--rounds", type=int, help="rounds alternating the two servers (default 3; 1 with --quick)")
    parser.add_argument("--ct", type=int, help="number of CT slices (default 1000; 100 with --quick)")
    parser.add_argument("--tiny", type=int, help="number of tiny instances (default 20000; 1000 with --quick)")
    parser.add_argument("--studies", type=int, help="studies of the tiny set (default 2000; 100 with --quick)")
    parser.add_argument("--cache-dir", type=Path, default=data.default_cache_dir(), help="generated data cache")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="record py-spy profiles of dicomvault's timed loads into DIR"
    )
    parser.add_argument("--py-spy", default=shutil.which("py-spy"), help="py-spy executable (for --profile)")


def plan_from_arguments(args: argparse.Namespace, quick: Plan, full: Plan) -> Plan:
    """The plan the common options ask for (sizes and rounds over the quick or full defaults)."""
    plan = quick if args.quick else full
    sizes = replace(
        plan.sizes,
        ct=args.ct or plan.sizes.ct,
        tiny=args.tiny or plan.sizes.tiny,
        tiny_studies=args.studies or plan.sizes.tiny_studies,
    )
    return replace(plan, sizes=sizes, rounds=args.rounds or plan.rounds)


def profiler_from_arguments(args: argparse.Namespace) -> Profiler | None:
    """The py-spy recorder `--profile` asks for; exits with status 2 when py-spy is missing."""
    if args.profile is None:
        return None
    if not args.py_spy:
        logger.error(
            "--profile needs py-spy (e.g. pip install --target /tmp/pyspy py-spy; --py-spy /tmp/pyspy/bin/py-spy)"
        )
        raise SystemExit(2)
    return Profiler(args.profile, args.py_spy)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    common_arguments(parser, "1-2 min")
    parser.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default="raw",
        help="HTTP client of the load generator: raw sockets (least client CPU, default) or httpx",
    )
    return parser.parse_args(argv)


@dataclass(frozen=True)
class Report:
    """How one benchmark command names and describes its run."""

    title: str  # "dicomvault / Orthanc 1.10.1"
    prefix: str  # temporary folder and default JSON file name
    metrics: Sequence[report.Metric] = report.METRICS
    load_keys: Sequence[str] = report.LOAD_KEYS
    machine: Mapping[str, Any] = field(default_factory=dict)  # extra facts about the machine's tools
    plan: Mapping[str, Any] = field(default_factory=dict)  # extra facts about the plan


RunRounds = Callable[[data.Pack, data.Pack, Path], list[dict[str, Any]]]


def run_and_report(args: argparse.Namespace, plan: Plan, run_rounds: RunRounds, described: Report) -> int:
    """Prepare the data, run the rounds in a temporary folder, write the JSON results and print
    the summary (shared by every benchmark command)."""
    sizes = plan.sizes
    started = datetime.datetime.now(datetime.UTC)
    load_before = load_average()
    t0 = time.monotonic()
    ct, tiny = data.prepare(sizes, args.cache_dir)
    workdir = Path(tempfile.mkdtemp(prefix=f"{described.prefix}-"))
    try:
        rounds = run_rounds(ct, tiny, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = report.summarize(rounds, described.metrics)
    mismatches = report.answer_mismatches(rounds)
    results: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - t0, 1),
        "machine": machine(load_before, **described.machine),
        "plan": {
            "ct": sizes.ct,
            "ct_mb": round(ct.total_bytes / 1e6, 1),
            "tiny": sizes.tiny,
            "tiny_studies": sizes.tiny_studies,
            "rounds": plan.rounds,
            **described.plan,
        },
        "summary": rows,
        "answer_mismatches": mismatches,
        "rounds": rounds,
    }
    out = write_results(args.out, described.prefix, started, results)
    print()
    print(
        f"{described.title}: {sizes.ct} CT slices, {sizes.tiny} tiny instances over {sizes.tiny_studies} "
        f"studies, {plan.rounds} round(s), {results['seconds']:.0f} s; load average before {load_before}, "
        f"after {results['machine']['load_average_after']}"
    )
    print(report.table(rows, plan.rounds))
    print()
    print(report.load_lines(rounds, described.load_keys))
    for line in mismatches:
        print("answers differ:", line)
    print(f"\nJSON: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if not bench_prologue():
        return 2
    plan = plan_from_arguments(args, QUICK_PLAN, FULL_PLAN)
    profiler = profiler_from_arguments(args)

    def run_rounds(ct: data.Pack, tiny: data.Pack, workdir: Path) -> list[dict[str, Any]]:
        return Bench(plan, ct, tiny, workdir, profiler, args.client).run()

    described = Report(
        "dicomvault / Orthanc 1.10.1",
        "dicomvault-bench",
        plan={
            "download_passes": plan.download_passes,
            "find_repeats": plan.find_repeats,
            "expand_repeats": plan.expand_repeats,
            "client": args.client,
        },
    )
    return run_and_report(args, plan, run_rounds, described)


if __name__ == "__main__":
    sys.exit(main())
