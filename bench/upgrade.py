"""`python -m bench.upgrade [--quick] [--instances N] [--rounds R] [--compressed] [--out FILE]`: the
upgrade and adoption benchmark (issue 6).

One round measures, each time on a freshly started server with an empty folder:

1. **Re-read upgrade**: dicomvault ingests the first N instances of the tiny set over REST (4
   clients: the "REST ingest" figure of the same round), is stopped, its index is made schema 1
   (as `tests/upgrades.py: schema1_archive` does: schema 1's DDL is the prefix of schema 2's),
   then `upgrade()` runs in this process: the re-read rate (instances/s) against that ingest rate.
   The same with the CT set (525 KB files), since file size changes the picture.
2. **Adoption**: the real Orthanc 1.10.1 ingests the same N tiny instances (4 clients), is stopped,
   then `upgrade()` adopts its folder: seconds of index work (the adoption proper), of re-reading
   the files (filling InstanceTags) and of the storage verification, and the total. With
   `--compressed`, a second Orthanc with `StorageCompression` on is adopted too.

Each outcome is checked (counts per level against what the server held before it was stopped, no
problem reported) and differences are printed. The CPU used by the upgrade (this process and its
worker processes) and by the rest of the machine is recorded. Before each upgrade the stored files
are dropped from the page cache, as for an archive larger than memory (`--warm` keeps them).
Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
from tests.orthanc import OrthancServer
from tests.upgrades import make_schema1

from bench import data, run
from bench.servers import (
    DicomVault,
    Orthanc,
    Server,
    bench_prologue,
    load_average,
    machine,
    machine_cpu,
    remove_tree,
    write_results,
)
from bench.upgrade_report import ROWS, adoption_rows, cpu_lines, summarize, table
from dicomvault.config import Config, config_from_mapping, load_config
from dicomvault.errors import DicomVaultError
from dicomvault.index.schema import SCHEMA_VERSION
from dicomvault.upgrade.adoption import AdoptionReport
from dicomvault.upgrade.driver import UpgradeOutcome, upgrade
from dicomvault.upgrade.verify import VerificationReport

logger = logging.getLogger("bench")

FULL_INSTANCES = 10_000
QUICK_INSTANCES = 1_000
FULL_ROUNDS = 3
# Instances per study of the tiny pack (bench.data): a larger --instances asks for a larger pack.
LEVELS = ("patients", "studies", "series", "instances")


@dataclass(frozen=True)
class UpgradePlan:
    sizes: data.Sizes  # the packs to prepare (the first `instances` of the tiny one are used)
    instances: int
    ct: int
    rounds: int
    compressed: bool
    cold: bool  # drop the stored files from the page cache before each upgrade


class CompressedOrthanc(Orthanc):
    """Orthanc 1.10.1 with `StorageCompression` on: each DICOM file zlib-compressed, plus its
    'DICOM until pixel data' attachment (content type 3, Orthanc >= 1.9.1)."""

    def start(self, base: Path) -> None:
        settings = {"Name": "orthanc-bench", "DicomAet": self.aet, "StorageCompression": True}
        self.server = OrthancServer(base, settings, env={"TCP_NODELAY": "1"})
        self.server.start(timeout=60.0)


def first(pack: data.Pack, count: int) -> data.Pack:
    """The first `count` instances of a pack (all of it when it holds fewer)."""
    return replace(pack, entries=pack.entries[:count])


def counts(server: Server) -> dict[str, int]:
    """What a server holds, per level (from `/statistics`, the same on both servers)."""
    answer = httpx.get(server.url + "/statistics", timeout=60).json()
    return {level: int(answer[f"Count{level.capitalize()}"]) for level in LEVELS}


def evict(folder: Path) -> int:
    """Drop the files under `folder` from the kernel's page cache, so that the upgrade reads them
    from the disk as it would for an archive larger than memory. Each file is flushed first (only
    clean pages can be dropped); other programs' cached files are untouched, unlike writing to
    /proc/sys/vm/drop_caches. Returns the number of files."""
    count = 0
    for directory, _, names in os.walk(folder):
        for name in names:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
            count += 1
    return count


def _own_cpu() -> float:
    """CPU seconds of this process and of its reaped children (the upgrade's worker processes
    are joined when its pool shuts down, so their time lands here)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed_upgrade(config: Config, label: str, cold: bool) -> tuple[UpgradeOutcome, dict[str, Any]]:
    """`upgrade()` in this process, as an operator's `dicomvault upgrade CONFIG --no-backup`
    (without the progress bar), with its wall time and the CPU it and the machine used."""
    if cold:
        evict(config.storage_directory)
        if config.index_directory != config.storage_directory:
            evict(config.index_directory)
    cpu, machine, t0 = _own_cpu(), machine_cpu()[0], time.monotonic()
    outcome = upgrade(config, config_label=label, backup=False, progress=False)
    wall = time.monotonic() - t0
    cpu, machine = _own_cpu() - cpu, machine_cpu()[0] - machine
    instances = outcome.reread.instances if outcome.reread is not None else 0
    usage = {
        "upgrade_s": round(wall, 3),
        "upgrade_cores": round(cpu / wall, 3),
        "other_cores": round(max(0.0, machine - cpu) / wall, 3),
        "upgrade_cpu_ms_per_instance": round(1000 * cpu / max(instances, 1), 3),
    }
    return outcome, usage


def _count_tagged(index: Path) -> int:
    """Instances that have rows in InstanceTags (what the re-read fills)."""
    conn = sqlite3.connect(index.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(DISTINCT id) FROM InstanceTags").fetchone()[0])
    finally:
        conn.close()


def check_outcome(outcome: UpgradeOutcome, held: dict[str, int], adopted: bool) -> list[str]:
    """What differs from a clean upgrade of what the server held: an empty list when nothing."""
    problems: list[str] = []
    if outcome.version != SCHEMA_VERSION:
        problems.append(f"schema {outcome.version} after the upgrade, expected {SCHEMA_VERSION}")
    reread = outcome.reread
    if reread is None:
        problems.append("no re-read pass ran")
    else:
        if reread.instances != held["instances"]:
            problems.append(f"re-read counted {reread.instances} instances, the server held {held['instances']}")
        problems.extend(f"re-read: {p.problem} (instance {p.public_id})" for p in reread.problems[:10])
    tagged = _count_tagged(Path(outcome.index))
    if tagged != held["instances"]:
        problems.append(f"{tagged} instances have InstanceTags rows, the server held {held['instances']}")
    if not adopted:
        return problems
    adoption, verification = outcome.adoption, outcome.verification
    if not isinstance(adoption, AdoptionReport):
        return [*problems, "no adoption report"]
    for level in held:
        if getattr(adoption, level) != held[level]:
            problems.append(f"adoption copied {getattr(adoption, level)} {level}, Orthanc held {held[level]}")
    if adoption.warnings:
        problems.append(f"adoption warnings: {'; '.join(adoption.warnings)}")
    if not isinstance(verification, VerificationReport):
        return [*problems, "no verification report"]
    for level in held:
        if getattr(verification, level) != held[level]:
            problems.append(f"verification counted {getattr(verification, level)} {level}, Orthanc held {held[level]}")
    if not verification.ok:
        problems.extend(line.strip() for line in verification.render()[2:12])
    return problems


class UpgradeBench(run.Bench):
    """The rounds: `bench.run`'s timed REST ingest (`_ingest`), then an upgrade in this process."""

    def __init__(self, plan: UpgradePlan, ct: data.Pack, tiny: data.Pack, workdir: Path) -> None:
        rounds_plan = run.Plan(plan.sizes, plan.rounds, download_passes=0, find_repeats=0, expand_repeats=0, warmup=0)
        super().__init__(rounds_plan, first(ct, plan.ct), first(tiny, plan.instances), workdir, None, "raw")
        self.upgrade_plan = plan

    def _ingested(
        self, server: Server, base: Path, pack: data.Pack, name: str
    ) -> tuple[dict[str, Any], dict[str, int]]:
        """Start `server` on an empty folder, ingest `pack` with 4 clients, stop it."""
        server.start(base)
        try:
            record = self._ingest(server, pack, 4, name)
            held = counts(server)
        finally:
            server.stop()
        if record["failures"]:
            # The server's refusal, not the upgrade's: the upgrade is then checked against what it
            # held, and the refusal is printed as a note.
            record["note"] = (
                f"{server.name} refused {record['failures']} of {pack.count} uploads "
                f"(first: {record.get('first_failure', '?')[:160]})"
            )
        return record, held

    def _upgrade(
        self, config: Config, label: str, held: dict[str, int], adopted: bool
    ) -> tuple[UpgradeOutcome | None, dict[str, Any]]:
        """The timed upgrade and its check; a refusal is recorded as a problem, and the run goes on."""
        try:
            outcome, usage = timed_upgrade(config, label, self.upgrade_plan.cold)
        except DicomVaultError as exc:
            logger.error("the upgrade of %s failed: %s", label, exc.details)
            return None, {"problems": [f"the upgrade failed: {exc.details}"]}
        return outcome, {**usage, "problems": check_outcome(outcome, held, adopted)}

    def reread_upgrade(self, round_no: int, pack: data.Pack, kind: str) -> dict[str, Any]:
        """dicomvault ingests `pack`, its index goes back to schema 1, then `upgrade()` re-reads."""
        base = self.workdir / f"r{round_no}-reread-{kind}"
        try:
            ingest, held = self._ingested(DicomVault(), base, pack, f"ingest_{kind}_4")
            config_path = base / "dicomvault.json"
            config = load_config(config_path)
            make_schema1(config.index_directory / "dicomvault.db")
            outcome, measured = self._upgrade(config, str(config_path), held, adopted=False)
        finally:
            remove_tree(base)
        record: dict[str, Any] = {"ingest": ingest, "ingest_rate": ingest["rate"], "held": held, **measured}
        if outcome is None or outcome.reread is None:
            return record
        rate = outcome.reread.rate
        record["reread_rate"] = round(rate, 2)
        record["reread_s"] = round(outcome.reread.elapsed_s, 3)
        record["ratio"] = round(rate / ingest["rate"], 3) if ingest["rate"] else None
        logger.warning(
            "  %-10s %-14s %8.1f inst/s re-read (%.2fx the REST ingest), upgrade %.1f s, %.2f cores",
            "dicomvault",
            f"upgrade_{kind}",
            rate,
            record["ratio"] or 0.0,
            record["upgrade_s"],
            record["upgrade_cores"],
        )
        return record

    def adoption(self, round_no: int, compressed: bool) -> dict[str, Any]:
        """Orthanc ingests the tiny instances, then `upgrade()` adopts its folder."""
        kind = "adopt_compressed" if compressed else "adopt"
        base = self.workdir / f"r{round_no}-{kind}"
        server: Server = CompressedOrthanc() if compressed else Orthanc()
        try:
            name = "ingest_tiny_4_compressed" if compressed else "ingest_tiny_4"
            ingest, held = self._ingested(server, base, self.tiny, name)
            # Orthanc's own folder (tests.orthanc: index and files in base/storage), nothing else:
            # the keys dicomvault needs to find them, as an operator would write.
            storage = base / "storage"
            settings = {"StorageDirectory": str(storage), "IndexDirectory": str(storage)}
            config = config_from_mapping(settings, source=f"{kind} configuration")
            outcome, measured = self._upgrade(config, f"the configuration of {storage}", held, adopted=True)
        finally:
            remove_tree(base)
        record: dict[str, Any] = {"orthanc_ingest": ingest, "orthanc_ingest_rate": ingest["rate"], "held": held}
        record.update(measured)
        if outcome is None:
            return record
        adoption, verification, reread = outcome.adoption, outcome.verification, outcome.reread
        if isinstance(adoption, AdoptionReport):
            record["adoption_s"] = round(adoption.elapsed_s, 3)
            record["adoption_s_per_10k"] = round(adoption.elapsed_s * 10_000 / max(adoption.instances, 1), 3)
            record["attachments"] = {
                "dicom": adoption.dicom_attachments,
                "dicom_until_pixel_data": adoption.dicom_until_pixel_data_attachments,
                "dicom_as_json": adoption.dicom_as_json_attachments,
                "compressed_bytes": adoption.compressed_size,
                "uncompressed_bytes": adoption.uncompressed_size,
            }
        if reread is not None:
            record["reread_s"] = round(reread.elapsed_s, 3)
            record["reread_rate"] = round(reread.rate, 2)
        if isinstance(verification, VerificationReport):
            record["verification_s"] = round(verification.elapsed_s, 3)
        logger.warning(
            "  %-10s %-14s adoption %.2f s, re-read %.1f s (%.0f inst/s), verification %.2f s, total %.1f s",
            "dicomvault",
            kind,
            record.get("adoption_s", float("nan")),
            record.get("reread_s", float("nan")),
            record.get("reread_rate", float("nan")),
            record.get("verification_s", float("nan")),
            record["upgrade_s"],
        )
        return record

    def run(self) -> list[dict[str, Any]]:
        rounds: list[dict[str, Any]] = []
        for n in range(1, self.upgrade_plan.rounds + 1):
            logger.warning("round %d of %d", n, self.upgrade_plan.rounds)
            record: dict[str, Any] = {
                "tiny": self.reread_upgrade(n, self.tiny, "tiny"),
                "ct": self.reread_upgrade(n, self.ct, "ct"),
                "adopt": self.adoption(n, compressed=False),
            }
            if self.upgrade_plan.compressed:
                record["adopt_compressed"] = self.adoption(n, compressed=True)
            rounds.append(record)
        return rounds


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.upgrade", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 tiny and 100 CT instances, one round (~1 min)")
    parser.add_argument(
        "--instances", type=int, help=f"tiny instances (default {FULL_INSTANCES:,}; {QUICK_INSTANCES:,} with --quick)"
    )
    parser.add_argument("--ct", type=int, help="CT instances (default 1,000; 100 with --quick)")
    parser.add_argument("--rounds", type=int, help=f"rounds (default {FULL_ROUNDS}; 1 with --quick)")
    parser.add_argument(
        "--compressed", action="store_true", help="also adopt an Orthanc run with StorageCompression true"
    )
    parser.add_argument(
        "--warm",
        action="store_true",
        help="leave the stored files in the page cache (default: dropped before each upgrade, as for an archive "
        "larger than memory)",
    )
    parser.add_argument("--out", type=Path, help="where to write the JSON results (default: a file in the temp dir)")
    parser.add_argument("--cache-dir", type=Path, default=data.default_cache_dir(), help="generated data cache")
    return parser.parse_args(argv)


def plan_from_arguments(args: argparse.Namespace) -> UpgradePlan:
    base = data.QUICK if args.quick else data.FULL
    instances = args.instances or (QUICK_INSTANCES if args.quick else FULL_INSTANCES)
    ct = args.ct or base.ct
    sizes = data.Sizes.at_least(base, ct, instances)
    rounds = args.rounds or (1 if args.quick else FULL_ROUNDS)
    return UpgradePlan(sizes, instances, ct, rounds, args.compressed, cold=not args.warm)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if not bench_prologue():
        return 2
    # The upgrade's own log lines (adopting, re-reading, done) would interleave with the progress
    # lines; what matters is checked and printed here. Errors still show.
    logging.getLogger("dicomvault").setLevel(logging.ERROR)
    plan = plan_from_arguments(args)
    started = datetime.datetime.now(datetime.UTC)
    load_before = load_average()
    t0 = time.monotonic()
    ct, tiny = data.prepare(plan.sizes, args.cache_dir)
    workdir = Path(tempfile.mkdtemp(prefix="dicomvault-bench-upgrade-"))
    try:
        rounds = UpgradeBench(plan, ct, tiny, workdir).run()
    finally:
        remove_tree(workdir)
    rows = summarize(rounds, ROWS + (adoption_rows(compressed=True) if plan.compressed else ()))
    problems = [
        f"round {n}, {key}: {line}" for n, rnd in enumerate(rounds, 1) for key in rnd for line in rnd[key]["problems"]
    ]
    results: dict[str, Any] = {
        "started": started.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - t0, 1),
        "machine": machine(load_before),
        "plan": {
            "tiny": plan.instances,
            "ct": plan.ct,
            "ct_mb": round(first(ct, plan.ct).total_bytes / 1e6, 1),
            "tiny_mb": round(first(tiny, plan.instances).total_bytes / 1e6, 1),
            "rounds": plan.rounds,
            "compressed": plan.compressed,
            "page_cache": "files dropped before each upgrade" if plan.cold else "warm (--warm)",
            "ingest_clients": 4,
            "schema": SCHEMA_VERSION,
        },
        "summary": rows,
        "problems": problems,
        "rounds": rounds,
    }
    out = write_results(args.out, "dicomvault-bench-upgrade", started, results)
    print()
    print(
        f"dicomvault upgrade and Orthanc 1.10.1 adoption: {plan.instances} tiny instances, {plan.ct} CT slices, "
        f"{plan.rounds} round(s), {results['seconds']:.0f} s; load average before {load_before}, "
        f"after {results['machine']['load_average_after']}"
    )
    print(table(rows, plan.rounds))
    print()
    print(cpu_lines(rounds))
    for n, rnd in enumerate(rounds, 1):
        for key, part in rnd.items():
            note = (part.get("ingest") or part.get("orthanc_ingest") or {}).get("note")
            if note:
                print(f"note: round {n}, {key}: {note}")
    for line in problems:
        print("PROBLEM:", line)
    if not problems:
        print("\nevery upgrade ended at schema", SCHEMA_VERSION, "with the counts ingested and no problem reported")
    print(f"\nJSON: {out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
