"""`python -m bench.postgresql [--quick] [--rounds R] [--instances N] [--find-instances M] [--out FILE]`:
the PostgreSQL benchmark (issue 8): dicomvault on PostgreSQL, with one and two server processes,
against dicomvault on SQLite and against Orthanc 1.10.1 with its PostgreSQL plugin (Debian's
`orthanc-postgresql`), all on one throwaway PostgreSQL cluster (`tests.postgres`, fsync on).

Each round measures:

1. **REST ingest** (`POST /instances`, 4 client processes, `bench.load`) of the first N tiny
   instances and of the CT set, each into a fresh, empty target: dicomvault with 1 process on
   PostgreSQL; dicomvault with 2 processes on the same database and storage folder (the clients
   dealt between the two URLs); dicomvault on SQLite; Orthanc + PostgreSQL. The CPU seconds of
   each party are recorded (the servers' process trees, PostgreSQL's processes, the clients, the
   rest of the machine), since all share the machine's 2 cores. No upload may fail and every
   target must hold every instance, with the same counts per level.
2. **`/tools/find` latency** (p50/p99) over M instances (100,000) held by dicomvault-PostgreSQL,
   dicomvault-SQLite and Orthanc-PostgreSQL: `bench.run`'s study-level queries and two at
   instance level (by SOPInstanceUID; by InstanceNumber within a year of StudyDate). The three
   indexes are loaded once and cached (`bench.postgresql_servers`); the answers are compared.

The order of the targets alternates between rounds; ratios are taken within a round before the
median. Differences and failures are printed as PROBLEM lines (exit status 1). Nothing here
asserts a time.
"""

from __future__ import annotations

import argparse
import datetime
import io
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from tests.postgres import PostgresCluster

from bench import data, load
from bench import postgresql_report as report
from bench.postgresql_servers import (
    ORTHANC_PLUGIN,
    FindData,
    Target,
    cluster_cpu,
    counts,
    ingest_target,
    open_find_data,
    start_cluster,
)
from bench.report import percentile
from bench.run import FIND_QUERIES
from bench.servers import (
    bench_prologue,
    load_average,
    machine,
    machine_cpu,
    remove_tree,
    write_results,
)
from bench.upgrade import first
from dicomvault.index.schema import SCHEMA_VERSION

logger = logging.getLogger("bench")

CLIENTS = 4
FULL_INSTANCES = 10_000
QUICK_INSTANCES = 1_000
FULL_FIND_INSTANCES = 100_000
QUICK_FIND_INSTANCES = 5_000
FULL_ROUNDS = 3


@dataclass(frozen=True)
class PgPlan:
    sizes: data.Sizes  # the packs of the ingest part (the first `tiny` and `ct` are used)
    tiny: int
    ct: int
    find_instances: int
    rounds: int
    find_repeats: int
    warmup: int
    bulk_clients: int
    rebuild_cache: bool


# -- the timed loads -----------------------------------------------------------------------------


class Meter:
    """CPU seconds used by the servers, PostgreSQL, the clients and the machine during one load."""

    def __init__(self, target: Target, cluster: PostgresCluster) -> None:
        self.target = target
        self.cluster = cluster
        self._marks: tuple[float, ...] = ()

    def _now(self) -> tuple[float, ...]:
        return (time.monotonic(), self.target.cpu(), cluster_cpu(self.cluster), machine_cpu()[0], time.process_time())

    def start(self) -> None:
        self._marks = self._now()

    def stop(self, result: load.LoadResult, sent: int | None = None) -> dict[str, Any]:
        """The record of a load; `sent`: the requests made in the metered interval, when it holds
        more than the timed ones (a latency load's probe, first answers and warm-up)."""
        now = self._now()
        elapsed, server, pg, busy, own = (b - a for a, b in zip(self._marks, now, strict=True))
        elapsed = max(elapsed, 1e-6)
        clients = result.client_cpu + own
        requests = max(sent or result.requests, 1)
        return {
            "requests": result.requests,
            "failures": result.failures,
            "seconds": round(result.wall, 3),
            "server_cores": round(server / elapsed, 3),
            "postgresql_cores": round(pg / elapsed, 3),
            "client_cores": round(clients / elapsed, 3),
            "other_cores": round(max(0.0, busy - server - pg - clients) / elapsed, 3),
            "server_cpu_s": round(server, 3),
            "postgresql_cpu_s": round(pg, 3),
            "client_cpu_s": round(clients, 3),
            "server_cpu_ms_per_request": round(1000 * server / requests, 3),
            "postgresql_cpu_ms_per_request": round(1000 * pg / requests, 3),
            "client_cpu_ms_per_request": round(1000 * clients / requests, 3),
        }


def timed_ingest(target: Target, cluster: PostgresCluster, pack: data.Pack, clients: int) -> dict[str, Any]:
    """`bench.load`'s ingest clients, dealt round-robin between the target's URLs."""
    urls = target.urls
    shares = [list(pack.entries[i::clients]) for i in range(clients)]
    arguments = [("raw", urls[i % len(urls)], str(pack.path), share) for i, share in enumerate(shares)]
    meter = Meter(target, cluster)
    result = load._run_clients(load._ingest_task, arguments, meter.start)
    record = meter.stop(result)
    record["rate"] = round(result.requests / result.wall, 2) if result.wall > 0 else 0.0
    record["clients"] = clients
    record["processes"] = len(urls)
    failure = next((c.notes["first_failure"] for c in result.clients if "first_failure" in c.notes), None)
    if failure is not None:
        record["first_failure"] = failure[:300]
    return record


# -- the queries ---------------------------------------------------------------------------------


def instance_queries(pack: data.Pack) -> tuple[load.Query, ...]:
    """Instance-level queries on identifiers read from the pack itself (5 spread instances)."""
    picks = [pack.entries[(pack.count - 1) * k // 4] for k in range(5)]
    uids: list[str] = []
    for raw in data.load_items(pack.path, picks):
        uids.append(str(pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True).SOPInstanceUID))
    # InstanceNumber is an instance-level main DICOM tag without an identifier index in Orthanc;
    # a year of StudyDate (a parent's tag) keeps the answers at a few hundred of 100,000.
    numbers = (
        ("3", "20180101-20181231"),
        ("7", "20120101-20121231"),
        ("1", "20230101-20231231"),
        ("10", "20150101-20151231"),
        ("5", "20200101-20201231"),
    )
    return (
        load.Query(
            "find_instance_uid",
            "POST",
            "/tools/find",
            tuple({"Level": "Instance", "Query": {"SOPInstanceUID": uid}} for uid in uids),
        ),
        load.Query(
            "find_instance_number",
            "POST",
            "/tools/find",
            tuple(
                {"Level": "Instance", "Query": {"InstanceNumber": number, "StudyDate": dates}}
                for number, dates in numbers
            ),
        ),
    )


# -- the rounds ----------------------------------------------------------------------------------


class PostgreSQLBench:
    def __init__(
        self,
        plan: PgPlan,
        packs: dict[str, data.Pack],
        cluster: PostgresCluster,
        find: FindData,
        queries: Sequence[load.Query],
        workdir: Path,
    ) -> None:
        self.plan = plan
        self.packs = packs
        self.cluster = cluster
        self.find = find
        self.queries = list(queries)
        self.workdir = workdir

    def ingest(self, round_no: int, kind: str, order: Sequence[str]) -> dict[str, Any]:
        """Every target ingests `pack`, each fresh and empty; then the counts are compared."""
        pack = self.packs[kind]
        record: dict[str, Any] = {"order": list(order), "problems": []}
        for name in order:
            base = self.workdir / f"r{round_no}-{kind}-{name}"
            database = self.cluster.new_database()
            target = ingest_target(name, base, self.cluster, database)
            target.start()
            try:
                measured = timed_ingest(target, self.cluster, pack, CLIENTS)
                measured["held"] = [counts(url) for url in target.urls]
            except Exception:
                logger.error("%s %s failed; the end of its logs:\n%s", kind, name, target.log_tails())
                raise
            finally:
                target.stop()
                self.cluster.drop_database(database)
                remove_tree(base)
            record[name] = measured
            logger.warning(
                "  %-6s %-10s %8.1f inst/s  (cores: servers %.2f, PostgreSQL %.2f, clients %.2f, other %.2f)",
                kind,
                name,
                measured["rate"],
                measured["server_cores"],
                measured["postgresql_cores"],
                measured["client_cores"],
                measured["other_cores"],
            )
            record["problems"].extend(self._check_ingest(name, measured, pack.count))
        helds = {name: record[name]["held"][0] for name in order}
        if len({tuple(h.values()) for h in helds.values()}) > 1:
            record["problems"].append(f"the targets hold different counts: {helds}")
        return record

    @staticmethod
    def _check_ingest(name: str, measured: dict[str, Any], expected: int) -> list[str]:
        problems: list[str] = []
        if measured["failures"]:
            problems.append(
                f"{name}: {measured['failures']} uploads failed (first: {measured.get('first_failure', '?')[:200]})"
            )
        for url_no, held in enumerate(measured["held"], 1):
            if held["instances"] != expected:
                problems.append(f"{name} (process {url_no}): {held['instances']} instances held of {expected} sent")
        if len({tuple(h.values()) for h in measured["held"]}) > 1:
            problems.append(f"{name}: its processes count differently: {measured['held']}")
        return problems

    def find_part(self, round_no: int, order: Sequence[str]) -> dict[str, Any]:
        """Each server of the find part started on the cached index, checked, queried, stopped."""
        record: dict[str, Any] = {"order": list(order), "problems": []}
        for name in order:
            target = self.find.target(name, self.workdir / f"r{round_no}-find-{name}", self.cluster)
            target.start()
            try:
                held = counts(target.urls[0])
                queries = {q.name: self._latency(target, q) for q in self.queries}
            except Exception:
                logger.error("find on %s failed; the end of its log:\n%s", name, target.log_tails())
                raise
            finally:
                target.stop()
            record[name] = {"held": held, **queries}
            if held != self.find.expected:
                record["problems"].append(f"{name} holds {held}, the cache was built with {self.find.expected}")
            for query, measured in queries.items():
                if measured.get("unavailable"):
                    record["problems"].append(f"{name} {query}: {measured['unavailable']}")
                elif measured["failures"]:
                    record["problems"].append(f"{name} {query}: {measured['failures']} requests failed")
        record["problems"].extend(report.find_mismatches(record, order, [q.name for q in self.queries]))
        return record

    def _latency(self, target: Target, query: load.Query) -> dict[str, Any]:
        meter = Meter(target, self.cluster)
        result = load.latency("raw", target.urls[0], query, self.plan.find_repeats, self.plan.warmup, meter.start)
        # Metered from the clients' start: the probe, one request per variant (the answers
        # compared), the warm-up, then the timed requests.
        record = meter.stop(result, sent=1 + len(query.bodies) + self.plan.warmup + self.plan.find_repeats)
        notes = result.clients[0].notes
        if notes.get("unavailable"):
            logger.warning("  %-18s %-20s %s", target.name, query.name, notes["unavailable"])
            return {"unavailable": notes["unavailable"]}
        lat = result.latencies
        record["p50_ms"] = round(1000 * percentile(lat, 0.5), 3)
        record["p99_ms"] = round(1000 * percentile(lat, 0.99), 3)
        record["mean_ms"] = round(1000 * sum(lat) / len(lat), 3)
        record["answers"] = notes.get("answers", {})
        logger.warning(
            "  %-10s %-20s p50 %8.2f ms  p99 %8.2f ms  (answers %s)",
            target.name,
            query.name,
            record["p50_ms"],
            record["p99_ms"],
            "/".join(str(a.get("count", "?")) for a in record["answers"].values()),
        )
        return record

    def run(self) -> list[dict[str, Any]]:
        rounds: list[dict[str, Any]] = []
        for n in range(1, self.plan.rounds + 1):
            forward = n % 2 == 1
            ingest_order = report.INGEST_TARGETS if forward else report.INGEST_TARGETS[::-1]
            find_order = report.FIND_SERVERS if forward else report.FIND_SERVERS[::-1]
            logger.warning("round %d of %d (ingest order: %s)", n, self.plan.rounds, ", ".join(ingest_order))
            record: dict[str, Any] = {}
            for kind in ("tiny", "ct"):
                record[kind] = self.ingest(n, kind, ingest_order)
            record["find"] = self.find_part(n, find_order)
            record["figures"] = report.figures(record, [q.name for q in self.queries])
            rounds.append(record)
        return rounds


# -- the command ---------------------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.postgresql", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and one round (a smoke run of ~3 min)")
    parser.add_argument("--rounds", type=int, help=f"rounds (default {FULL_ROUNDS}; 1 with --quick)")
    parser.add_argument(
        "--instances",
        type=int,
        help=f"tiny instances ingested (default {FULL_INSTANCES:,}; {QUICK_INSTANCES:,} with --quick)",
    )
    parser.add_argument("--ct", type=int, help="CT slices ingested (default 1,000; 100 with --quick)")
    parser.add_argument(
        "--find-instances",
        type=int,
        help=f"instances of the find index (default {FULL_FIND_INSTANCES:,}; {QUICK_FIND_INSTANCES:,} with --quick)",
    )
    parser.add_argument("--find-repeats", type=int, help="requests timed per query (default 200; 30 with --quick)")
    parser.add_argument(
        "--bulk-clients", type=int, default=8, help="client processes loading the find index (once; default 8)"
    )
    parser.add_argument("--rebuild-cache", action="store_true", help="load the find index again even if it is cached")
    parser.add_argument("--out", type=Path, help="where to write the JSON results (default: a file in the temp dir)")
    parser.add_argument("--cache-dir", type=Path, default=data.default_cache_dir(), help="generated data cache")
    return parser.parse_args(argv)


def plan_from_arguments(args: argparse.Namespace) -> PgPlan:
    base = data.QUICK if args.quick else data.FULL
    tiny = args.instances or (QUICK_INSTANCES if args.quick else FULL_INSTANCES)
    ct = args.ct or base.ct
    sizes = data.Sizes.at_least(base, ct, tiny)
    return PgPlan(
        sizes=sizes,
        tiny=tiny,
        ct=ct,
        find_instances=args.find_instances or (QUICK_FIND_INSTANCES if args.quick else FULL_FIND_INSTANCES),
        rounds=args.rounds or (1 if args.quick else FULL_ROUNDS),
        find_repeats=args.find_repeats or (30 if args.quick else 200),
        warmup=3 if args.quick else 5,
        bulk_clients=args.bulk_clients,
        rebuild_cache=args.rebuild_cache,
    )


def _missing_tools() -> str | None:
    if not ORTHANC_PLUGIN.is_file():
        return f"{ORTHANC_PLUGIN} is missing: install Debian's orthanc-postgresql package (scripts/setup.sh --test)"
    try:
        from tests.postgres import postgres_bin_dir

        postgres_bin_dir()
    except RuntimeError as exc:
        return str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if not bench_prologue():
        return 2
    missing = _missing_tools()
    if missing:
        logger.error("%s", missing)
        return 2
    plan = plan_from_arguments(args)
    started = datetime.datetime.now(datetime.UTC)
    load_before = load_average()
    t0 = time.monotonic()
    ct_pack, tiny_pack = data.prepare(plan.sizes, args.cache_dir)
    packs = {"tiny": first(tiny_pack, plan.tiny), "ct": first(ct_pack, plan.ct)}
    workdir = Path(tempfile.mkdtemp(prefix="dicomvault-bench-postgresql-"))
    cluster: PostgresCluster | None = None
    try:
        find = open_find_data(plan.find_instances, args.cache_dir, workdir / "find", plan.bulk_clients,
                              plan.rebuild_cache)  # fmt: skip
        queries = (*FIND_QUERIES, *instance_queries(find.pack))
        cluster = start_cluster(find.pgdata)
        rounds = PostgreSQLBench(plan, packs, cluster, find, queries, workdir).run()
    finally:
        if cluster is not None:
            cluster.destroy()
        remove_tree(workdir)
    return _report(args, plan, rounds, find, packs, started, load_before, t0, [q.name for q in queries])


def _report(
    args: argparse.Namespace,
    plan: PgPlan,
    rounds: list[dict[str, Any]],
    find: FindData,
    packs: dict[str, data.Pack],
    started: datetime.datetime,
    load_before: list[float],
    t0: float,
    query_names: list[str],
) -> int:
    summary = report.summarize(rounds, report.rows(query_names))
    problems = [
        f"round {n}, {part}: {line}" for n, rnd in enumerate(rounds, 1) for part in ("tiny", "ct", "find")
        for line in rnd[part]["problems"]
    ]  # fmt: skip
    pg_version = _postgres_version()
    results: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - t0, 1),
        "machine": machine(load_before, postgresql=pg_version, orthanc_plugin=str(ORTHANC_PLUGIN)),
        "plan": {
            "tiny": plan.tiny,
            "tiny_mb": round(packs["tiny"].total_bytes / 1e6, 1),
            "ct": plan.ct,
            "ct_mb": round(packs["ct"].total_bytes / 1e6, 1),
            "clients": CLIENTS,
            "find_instances": plan.find_instances,
            "find_repeats": plan.find_repeats,
            "rounds": plan.rounds,
            "schema": SCHEMA_VERSION,
            "find_cache": find.manifest,
        },
        "summary": summary,
        "problems": problems,
        "rounds": rounds,
    }
    out = write_results(args.out, "dicomvault-bench-postgresql", started, results)
    print()
    print(
        f"dicomvault on PostgreSQL ({pg_version}) / Orthanc 1.10.1 + PostgreSQL plugin 4.0: ingest of {plan.tiny:,} "
        f"tiny instances and {plan.ct:,} CT slices with {CLIENTS} clients, /tools/find over "
        f"{plan.find_instances:,} instances; {plan.rounds} round(s), {results['seconds']:.0f} s; load average "
        f"before {load_before}, after {results['machine']['load_average_after']}"
    )
    print(f"find index: {find.describe()}")
    print()
    print(report.tables(summary, plan.rounds))
    print()
    print(report.cpu_lines(rounds, query_names))
    for line in problems:
        print("PROBLEM:", line)
    if not problems:
        print(
            "\nno upload failed; every target held every instance; the find answers are the same on the three servers"
        )
    print(f"\nJSON: {out}")
    return 1 if problems else 0


def _postgres_version() -> str:
    import subprocess

    from tests.postgres import postgres_bin_dir

    done = subprocess.run([str(postgres_bin_dir() / "postgres"), "--version"], capture_output=True, text=True)
    words = done.stdout.split()  # "postgres (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)"
    return words[2] if len(words) > 2 else "?"


if __name__ == "__main__":
    sys.exit(main())
