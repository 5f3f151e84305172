"""`python -m bench.replication [--quick] [--rounds R] [--out FILE]`: the replication benchmark
(issue 7): `dicomvault replicate` and `dicomvault import` against the sequential copies of
Orthanc's sample scripts and against the target server's own REST ingest.

On the CT set (1,000 slices of ~525 KB; `--quick`: 100), each round runs four scenarios, each
timed copy into a freshly started server with an empty folder (`bench.servers`):

1. **replicate, Orthanc -> Orthanc** and **dicomvault -> dicomvault**: a source is started and
   filled over REST (4 clients), then three copies, each into a fresh empty target: (a) ours,
   `dicomvault replicate SRC DST` as a subprocess with its default workers; (b) the sequential
   copy of Replicate.py (`bench.replication_copy`); (c) the target server's own REST ingest of
   the same files at the same concurrency (`bench.load.ingest` with as many clients as our
   tool has workers), the rate a perfect copier could at best reach.
2. **import into dicomvault** and **into Orthanc**: the CT set written as a folder of files
   (`bench.dicom_load.export_files`), then (a) `dicomvault import DIR --to URL`, (b)
   ImportDicomFiles.py's one-file-at-a-time upload, (c) the target's REST ingest as above.

Ratios ours/sequential (target >= 2x) and ours/target ingest (target >= 0.70) are taken within
each round before the median. The order of the scenarios and of the three copies alternates
between rounds. The source, the target and the tool share the machine's 2 cores: the cores each
used are recorded. Every copy is checked (instance count, sampled MD5s); a difference is printed
as a PROBLEM line and the command exits with status 1. Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import data, load
from bench.dicom_load import FileSet, export_files
from bench.replication_copy import (
    Meter,
    Sample,
    check_target,
    run_tool,
    sequential_copy,
    sequential_import,
)
from bench.replication_report import METHODS, SCENARIOS, cpu_lines, ratios, rows
from bench.servers import DicomVault, Orthanc, Server, bench_prologue, load_average, machine, remove_tree, write_results
from bench.upgrade import first
from bench.upgrade_report import summarize, table
from dicomvault.cli import import_command, replicate_command

logger = logging.getLogger("bench")

FULL_ROUNDS = 3
SAMPLE = 50  # instances whose MD5 is checked after each copy


def default_workers(command: Any) -> int:
    """The `--workers` default of a dicomvault command, as users get it."""
    return int(next(p.default for p in command.params if p.name == "workers"))


@dataclass(frozen=True)
class ReplicationPlan:
    sizes: data.Sizes  # the packs to prepare (the first `ct` CT slices are used)
    ct: int
    rounds: int
    replicate_workers: int
    import_workers: int


SERVERS: dict[str, Callable[[], Server]] = {"orthanc": Orthanc, "dicomvault": DicomVault}


class ReplicationBench:
    def __init__(self, plan: ReplicationPlan, ct: data.Pack, files: FileSet, workdir: Path) -> None:
        self.plan = plan
        self.ct = ct
        self.files = files
        self.workdir = workdir

    def _ingest(self, target: Server, clients: int, source: Server | None = None) -> dict[str, Any]:
        """The target's own REST ingest of the pack, `clients` processes (bench.load)."""
        meter = Meter(target, source)
        result = load.ingest("raw", target.url, self.ct, clients, meter.start)
        record = meter.stop(result.requests - result.failures, result.client_cpu, result.wall)
        record["clients"] = clients
        if result.failures:
            first_failure = next((c.notes["first_failure"] for c in result.clients if c.notes), "?")
            record["problems"] = [f"{result.failures} uploads refused (first: {first_failure[:200]})"]
        return record

    def _copy(self, scenario: str, method: str, round_no: int, sample: Sample, source: Server | None) -> dict[str, Any]:
        """One timed copy of `method` into a freshly started, empty target; checked afterwards."""
        kind = scenario.rsplit("_", 1)[1]
        target = SERVERS[kind]()
        base = self.workdir / f"r{round_no}-{scenario}-{method}"
        target.start(base / "target")
        try:
            record = self._timed(scenario, method, base, target, source)
            check = check_target(target.url, self.ct.count, sample)
        finally:
            target.stop()
            remove_tree(base)
        record["held"] = check["held"]
        record["md5_checked"], record["md5_different"] = check["md5_checked"], check["md5_different"]
        record["problems"] = record.get("problems", []) + check["problems"]
        logger.warning(
            "  %-22s %-10s %7.1f inst/s  (source %s, target %.2f, tool %.2f, other %.2f cores)%s",
            scenario,
            method,
            record["rate"],
            "-" if record["source_cores"] is None else f"{record['source_cores']:.2f}",
            record["target_cores"],
            record["tool_cores"],
            record["other_cores"],
            "  PROBLEM" if record["problems"] else "",
        )
        return record

    def _timed(self, scenario: str, method: str, base: Path, target: Server, source: Server | None) -> dict[str, Any]:
        count = self.ct.count
        replicating = scenario.startswith("replicate")
        workers = self.plan.replicate_workers if replicating else self.plan.import_workers
        if method == "ingest":
            return self._ingest(target, workers, source)
        meter = Meter(target, source)
        if method == "ours":
            state = str(base / "state.json")
            options = ["--json", "--no-progress", "--state", state]
            if replicating:
                assert source is not None
                arguments = ["replicate", source.url, target.url, *options]
            else:
                arguments = ["import", str(self.files.root), "--to", target.url, *options]
            record, report = run_tool(arguments, base / "tool", meter, count)
            record["workers"] = workers
            done = report.get("Copied", report.get("sent_new"))
            failed = report.get("Failed", report.get("failures"))
            reported = report.get("Seconds", report.get("seconds"))
            if isinstance(reported, int | float) and reported > 0:
                record["tool_reported_s"] = round(float(reported), 3)
                record["tool_reported_rate"] = round(count / float(reported), 2)
            if report and (done != count or failed):
                record.setdefault("problems", []).append(f"the tool reports {done} copied, failures: {failed!r:.200}")
            return record
        meter.start()
        if replicating:
            assert source is not None
            done, failures, first_failure = sequential_copy(source.url, target.url)
        else:
            done, failures, first_failure = sequential_import(self.files.root, self.files.names, target.url)
        record = meter.stop(done)
        if failures:
            record["problems"] = [f"{failures} copies failed (first: {first_failure})"]
        return record

    def scenario(self, scenario: str, round_no: int, methods: tuple[str, ...]) -> dict[str, Any]:
        """The three copies of one scenario; for a replication, its source started and filled first."""
        sample = Sample.of(self.ct, SAMPLE, seed=round_no * 100 + SCENARIOS.index(scenario))
        record: dict[str, Any] = {"order": list(methods)}
        source: Server | None = None
        base = self.workdir / f"r{round_no}-{scenario}-source"
        try:
            if scenario.startswith("replicate"):
                source = SERVERS[scenario.rsplit("_", 1)[1]]()
                source.start(base)
                fill = self._ingest(source, 4)
                check = check_target(source.url, self.ct.count, sample)
                fill["problems"] = fill.get("problems", []) + check["problems"]
                record["fill"] = fill
                logger.warning("  %-22s %-10s %7.1f inst/s (4 clients)", scenario, "fill", fill["rate"])
            for method in methods:
                record[method] = self._copy(scenario, method, round_no, sample, source)
        finally:
            if source is not None:
                source.stop()
            remove_tree(base)
        record.update(ratios(record))
        parts = ("fill", *METHODS)
        record["problems"] = [f"{part}: {p}" for part in parts for p in record.get(part, {}).get("problems", [])]
        return record

    def run(self) -> list[dict[str, Any]]:
        rounds: list[dict[str, Any]] = []
        for n in range(1, self.plan.rounds + 1):
            forward = n % 2 == 1
            scenarios = SCENARIOS if forward else SCENARIOS[::-1]
            methods = METHODS if forward else METHODS[::-1]
            logger.warning("round %d of %d (copies in the order: %s)", n, self.plan.rounds, ", ".join(methods))
            rounds.append({s: self.scenario(s, n, methods) for s in scenarios})
        return rounds


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.replication", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 CT slices, one round (a smoke run of ~1-2 min)")
    parser.add_argument("--rounds", type=int, help=f"rounds (default {FULL_ROUNDS}; 1 with --quick)")
    parser.add_argument("--ct", type=int, help="CT slices (default 1,000; 100 with --quick)")
    parser.add_argument("--out", type=Path, help="where to write the JSON results (default: a file in the temp dir)")
    parser.add_argument("--cache-dir", type=Path, default=data.default_cache_dir(), help="generated data cache")
    return parser.parse_args(argv)


def plan_from_arguments(args: argparse.Namespace) -> ReplicationPlan:
    base = data.QUICK if args.quick else data.FULL
    ct = args.ct or base.ct
    # bench.run's cached packs when the CT one is large enough.
    sizes = data.Sizes(ct=max(ct, base.ct), tiny=base.tiny, tiny_studies=base.tiny_studies)
    rounds = args.rounds or (1 if args.quick else FULL_ROUNDS)
    return ReplicationPlan(sizes, ct, rounds, default_workers(replicate_command), default_workers(import_command))


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if not bench_prologue():
        return 2
    plan = plan_from_arguments(args)
    started = datetime.datetime.now(datetime.UTC)
    load_before = load_average()
    t0 = time.monotonic()
    ct_pack, _ = data.prepare(plan.sizes, args.cache_dir)
    ct = first(ct_pack, plan.ct)
    exported = export_files(ct_pack)
    files = FileSet(exported.root, exported.names[: plan.ct], exported.sizes[: plan.ct])
    if plan.ct < ct_pack.count:
        # `dicomvault import` takes a folder: one holding only the first `ct` files (hard links).
        folder = Path(tempfile.mkdtemp(prefix="dicomvault-bench-import-"))
        for name in files.names:
            os.link(files.root / name, folder / name)
        files = FileSet(folder, files.names, files.sizes)
    workdir = Path(tempfile.mkdtemp(prefix="dicomvault-bench-replication-"))
    try:
        rounds = ReplicationBench(plan, ct, files, workdir).run()
    finally:
        remove_tree(workdir)
        if files.root != exported.root:
            remove_tree(files.root)
    summary = summarize(rounds, rows(plan.replicate_workers, plan.import_workers))
    problems = [f"round {n}, {s}: {p}" for n, rnd in enumerate(rounds, 1) for s in rnd for p in rnd[s]["problems"]]
    results: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - t0, 1),
        "machine": machine(load_before),
        "plan": {
            "ct": plan.ct,
            "ct_mb": round(ct.total_bytes / 1e6, 1),
            "rounds": plan.rounds,
            "replicate_workers": plan.replicate_workers,
            "import_workers": plan.import_workers,
            "md5_sample": SAMPLE,
        },
        "summary": summary,
        "problems": problems,
        "rounds": rounds,
    }
    out = write_results(args.out, "dicomvault-bench-replication", started, results)
    print()
    print(
        f"dicomvault replicate / import: {plan.ct} CT slices ({results['plan']['ct_mb']} MB), {plan.rounds} round(s), "
        f"{results['seconds']:.0f} s; load average before {load_before}, "
        f"after {results['machine']['load_average_after']}"
    )
    print(
        f"The source server, the target server and the tool share this machine's {os.cpu_count()} cores; ours: "
        f"replicate --workers {plan.replicate_workers}, import --workers {plan.import_workers} (the defaults), "
        "run as subprocesses (their wall time includes the interpreter's start)."
    )
    print(table(summary, plan.rounds))
    print()
    print(cpu_lines(rounds))
    for line in problems:
        print("PROBLEM:", line)
    if not problems:
        print(f"\nevery copy complete: instance counts and {SAMPLE} sampled MD5s per copy match the files")
    print(f"\nJSON: {out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
