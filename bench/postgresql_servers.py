"""The servers of the PostgreSQL benchmark (`bench.postgresql`), its cluster and its cached find index.

**Targets**: what clients upload to or query, one or two server processes on one index:
dicomvault on PostgreSQL (1 or 2 processes sharing a database and a storage folder, `"Lock":
false`), dicomvault on SQLite, Orthanc 1.10.1 with Debian's PostgreSQL index plugin.

**The find index** (M tiny instances, 100,000 by default) is loaded once and cached under
`$TMPDIR/dicomvault-bench-cache/pg-find-<M>-v<data>.<cache>-s<schema>/`, outside the repository:

- `pgdata/`: a stopped PostgreSQL cluster's data directory (owned by `postgres`) holding the
  database `orthanc` (Orthanc 1.10.1's index, through its PostgreSQL plugin) and `dicomvault`
  (dicomvault's PostgreSQL index);
- `dv-storage/`: dicomvault's SQLite-backed folder (`dicomvault.db` and the files);
- `orthanc-storage/`: Orthanc's files (its index is in `pgdata`);
- `dv-pg-storage/`: dicomvault-PostgreSQL's files, only when its index was loaded over REST (with
  `dicomvault copy-index`, it shares `dv-storage/`, as the command intends);
- `manifest.json`, written last (its presence means the cache is complete): how it was loaded,
  the counts per level, the seconds each load took.

Loading: the tiny instances are generated (`bench.data`, the same generator and shapes as the
other benchmarks: 10 per study, 2 studies per patient), then uploaded over REST (`POST
/instances`, several client processes, each failed upload retried) into dicomvault-SQLite and
into Orthanc-PostgreSQL, on a cluster with fsync off (the load is not what is measured). The
dicomvault-PostgreSQL index is then made by `dicomvault copy-index` from the SQLite one when
that command exists, otherwise by a third REST upload. The three must count the same.

**Each run** copies the cached data directory into a new throwaway cluster (`tests.postgres`,
fsync on: the measured configuration) that also holds the ingest part's fresh databases, and
gives each server a copy of its folder: files hard-linked (stored files are never rewritten in
place, only created and removed), SQLite index files copied. The cache is never written to.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from tests.orthanc import OrthancServer, log_tail
from tests.postgres import PostgresCluster

from bench import data, load
from bench.client import connect
from bench.replication_copy import dicomvault_command
from bench.servers import DicomVault, Orthanc, Server, process_tree, tree_cpu
from dicomvault.index.schema import SCHEMA_VERSION

logger = logging.getLogger("bench")

ORTHANC_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so")
CACHE_VERSION = 1  # bump when what is cached changes
ORTHANC_DATABASE = "orthanc"
DICOMVAULT_DATABASE = "dicomvault"
LEVELS = ("patients", "studies", "series", "instances")
_TICK = os.sysconf("SC_CLK_TCK")


class PostgreSQLOrthanc(Orthanc):
    """Orthanc 1.10.1 with Debian's PostgreSQL index plugin (4.0); files stay in its folder."""

    name = "orthanc_pg"

    def __init__(self, section: Mapping[str, Any], storage: Path | None = None) -> None:
        super().__init__()
        self.section = dict(section)
        self.storage = storage

    def start(self, base: Path) -> None:
        settings: dict[str, Any] = {
            "Name": "orthanc-bench",
            "DicomAet": self.aet,
            "Plugins": [str(ORTHANC_PLUGIN)],
            "PostgreSQL": {**self.section, "EnableStorage": False},
        }
        if self.storage is not None:
            settings["StorageDirectory"] = settings["IndexDirectory"] = str(self.storage)
        self.server = OrthancServer(base, settings, env={"TCP_NODELAY": "1"})
        self.server.start(timeout=120.0)


class Target:
    """One thing clients upload to or query: one or two server processes on one index."""

    def __init__(self, name: str, servers: Sequence[Server], bases: Sequence[Path]) -> None:
        self.name = name
        self.servers = list(servers)
        self.bases = list(bases)

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.servers]

    def cpu(self) -> float:
        """CPU seconds used so far by the processes of every server (ingest workers included)."""
        return tree_cpu([pid for s in self.servers for pid in process_tree(s.pid)])

    def start(self) -> None:
        started: list[Server] = []
        try:
            for server, base in zip(self.servers, self.bases, strict=True):
                server.start(base)
                started.append(server)
        except BaseException:
            for server in started:
                server.stop()
            raise

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def log_tails(self, lines: int = 15) -> str:
        """The end of each server's log (what to read when a server stopped answering)."""
        tails = []
        for server, base in zip(self.servers, self.bases, strict=True):
            log = base / ("orthanc.log" if isinstance(server, Orthanc) else "dicomvault.log")
            tails.append(f"--- {log} (exit status {_exit_status(server)}):\n{log_tail(log, lines)}")
        return "\n".join(tails)


def _exit_status(server: Server) -> int | None:
    proc = None
    if isinstance(server, DicomVault):
        proc = server.proc
    elif isinstance(server, Orthanc) and server.server is not None:
        proc = server.server.proc
    return None if proc is None else proc.poll()


def counts(url: str) -> dict[str, int]:
    """What a server holds per level (`GET /statistics`, the same fields on both servers)."""
    answer = httpx.get(url + "/statistics", timeout=300).json()
    return {level: int(answer[f"Count{level.capitalize()}"]) for level in LEVELS}


def ingest_target(name: str, base: Path, cluster: PostgresCluster, database: str) -> Target:
    """A fresh, empty target of the ingest part in `base` (`database`: a new, empty one)."""
    section = cluster.section(database)  # "Lock": false, as two processes need
    if name == "dv_pg1":
        return Target(name, [DicomVault({"StorageDirectory": str(base / "storage"), "PostgreSQL": section})], [base])
    if name == "dv_pg2":
        shared = {"StorageDirectory": str(base / "storage"), "PostgreSQL": section}
        return Target(name, [DicomVault(shared), DicomVault(shared)], [base / "p1", base / "p2"])
    if name == "dv_sqlite":
        return Target(name, [DicomVault()], [base])
    if name == "orthanc_pg":
        return Target(name, [PostgreSQLOrthanc(section)], [base])
    raise ValueError(name)


# -- the cluster ---------------------------------------------------------------------------------


def postmaster_pid(cluster: PostgresCluster) -> int:
    return int((cluster.data / "postmaster.pid").read_text().split()[0])


def cluster_cpu(cluster: PostgresCluster) -> float:
    """CPU seconds of PostgreSQL: its processes alive now, and the backends that already ended
    (the postmaster reaps them, so their time is in its children's account)."""
    pid = postmaster_pid(cluster)
    reaped = 0.0
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        reaped = (int(fields[13]) + int(fields[14])) / _TICK  # cutime, cstime (fields 16 and 17)
    except (OSError, ValueError, IndexError):
        pass
    return tree_cpu(process_tree(pid)) + reaped


def start_cluster(pgdata: Path | None, fsync: bool = True) -> PostgresCluster:
    """A new throwaway cluster, started; with a copy of the data directory `pgdata` if given."""
    cluster = PostgresCluster(fsync=fsync)
    try:
        if pgdata is not None:
            shutil.rmtree(cluster.data)
            # cp -a keeps the owner (postgres) and modes, which PostgreSQL checks.
            subprocess.run(["cp", "-a", str(pgdata), str(cluster.data)], check=True)
        cluster.start()
    except BaseException:
        cluster.destroy()
        raise
    return cluster


# -- the find index ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FindData:
    """The find index of this run: the generated pack, the cache and this run's folder copies."""

    pack: data.Pack
    cache: Path
    pgdata: Path
    dv_storage: Path
    dv_pg_storage: Path
    orthanc_storage: Path
    manifest: Mapping[str, Any]

    @property
    def expected(self) -> dict[str, int]:
        return dict(self.manifest["counts"])

    def describe(self) -> str:
        m = self.manifest
        return (
            f"{m['instances']:,} instances ({m['counts']['studies']:,} studies), cached in {self.cache}; loaded "
            f"{m['created']} over REST into dicomvault-SQLite ({m['seconds']['dv_sqlite']:.0f} s) and "
            f"Orthanc-PostgreSQL ({m['seconds']['orthanc_pg']:.0f} s) with {m['bulk_clients']} clients; "
            f"dicomvault-PostgreSQL by {m['dv_pg_method']} ({m['seconds']['dv_pg']:.0f} s)"
        )

    def target(self, name: str, base: Path, cluster: PostgresCluster) -> Target:
        if name == "dv_pg":
            settings = {
                "StorageDirectory": str(self.dv_pg_storage),
                "PostgreSQL": cluster.section(DICOMVAULT_DATABASE),
            }
            return Target(name, [DicomVault(settings)], [base])
        if name == "dv_sqlite":
            return Target(name, [DicomVault({"StorageDirectory": str(self.dv_storage)})], [base])
        if name == "orthanc_pg":
            server = PostgreSQLOrthanc(cluster.section(ORTHANC_DATABASE), self.orthanc_storage)
            return Target(name, [server], [base])
        raise ValueError(name)


def _size_label(instances: int) -> str:
    return f"{instances // 1000}k" if instances % 1000 == 0 else str(instances)


def cache_folder(cache_dir: Path, instances: int) -> Path:
    return cache_dir / f"pg-find-{_size_label(instances)}-v{data.DATA_VERSION}.{CACHE_VERSION}-s{SCHEMA_VERSION}"


def find_pack(instances: int, cache_dir: Path) -> data.Pack:
    """The tiny pack of the find index: 10 instances per study, as bench.run's tiny set."""
    studies = -(-instances // data.TINY_PER_STUDY)
    _, tiny = data.prepare(data.Sizes(ct=0, tiny=instances, tiny_studies=studies), cache_dir)
    return tiny


def open_find_data(instances: int, cache_dir: Path, workdir: Path, bulk_clients: int, rebuild: bool) -> FindData:
    """The cached find index (loaded first if missing), with this run's copies of its folders."""
    pack = find_pack(instances, cache_dir)
    cache = cache_folder(cache_dir, instances)
    if rebuild or not (cache / "manifest.json").is_file():
        build_cache(cache, pack, bulk_clients)
    manifest = json.loads((cache / "manifest.json").read_text())
    workdir.mkdir(parents=True, exist_ok=True)
    dv_storage = _link_copy(cache / "dv-storage", workdir / "dv-storage")
    orthanc_storage = _link_copy(cache / "orthanc-storage", workdir / "orthanc-storage")
    dv_pg_storage = dv_storage
    if (cache / "dv-pg-storage").is_dir():
        dv_pg_storage = _link_copy(cache / "dv-pg-storage", workdir / "dv-pg-storage")
    return FindData(pack, cache, cache / "pgdata", dv_storage, dv_pg_storage, orthanc_storage, manifest)


def _link_copy(source: Path, target: Path) -> Path:
    """A copy of a server's folder: stored files hard-linked, anything else (the SQLite index and
    its journal files, which the server writes) really copied."""
    subprocess.run(["cp", "-al", str(source), str(target)], check=True)
    for path in target.glob("dicomvault.db*"):
        path.unlink()
        shutil.copy2(source / path.name, path)
    return target


# -- loading the cache (once) ----------------------------------------------------------------------


def _bulk_task(url: str, pack_path: str, entries: list[tuple[int, int]], start: Any, out: Any) -> None:
    """One loading client: uploads its share, retrying a failed upload twice (Orthanc 1.10.1 was
    seen to refuse one upload in 10,000 when two create the same storage subfolder at once)."""
    items = data.load_items(Path(pack_path), entries)
    failures = 0
    notes: dict[str, Any] = {}
    conn = connect("raw", url)
    try:
        conn.request("GET", "/system")
        start.wait()
        started, cpu = time.monotonic(), time.process_time()
        for item in items:
            for _ in range(3):
                answer = conn.request("POST", "/instances", item, "application/dicom")
                if answer.status == 200:
                    break
                notes.setdefault("first_failure", f"{answer.status} {answer.body[:300]!r}")
                time.sleep(0.1)
            else:
                failures += 1
        ended, cpu = time.monotonic(), time.process_time() - cpu
    finally:
        conn.close()
    out.put(load.ClientResult(started, ended, cpu, len(items), failures, 0, [], notes))


def _bulk_load(name: str, url: str, pack: data.Pack, clients: int) -> tuple[float, dict[str, int]]:
    """Upload the whole pack to `url`; (seconds, counts held). Raises if anything is missing."""
    logger.warning("loading the find index: %d instances into %s (%d clients, once)", pack.count, name, clients)
    shares = [list(pack.entries[i::clients]) for i in range(clients)]
    result = load._run_clients(_bulk_task, [(url, str(pack.path), share) for share in shares], lambda: None)
    held = counts(url)
    logger.warning("  %s: %.0f s (%.0f inst/s), holds %s", name, result.wall, pack.count / result.wall, held)
    if result.failures or held["instances"] != pack.count:
        first = next((c.notes["first_failure"] for c in result.clients if c.notes), "?")
        raise RuntimeError(f"{name}: {result.failures} uploads failed (first: {first}), holds {held}")
    return result.wall, held


def copy_index_available() -> bool:
    """Whether this dicomvault has `dicomvault copy-index` (issue 8, written by another helper)."""
    done = subprocess.run(
        [*dicomvault_command(), "copy-index", "--help"], capture_output=True, stdin=subprocess.DEVNULL, timeout=120
    )
    return done.returncode == 0


def _copy_index(folder: Path, cluster: PostgresCluster) -> None:
    """`dicomvault copy-index FROM TO`: the SQLite index of `dv-storage` into the `dicomvault`
    database, the storage folder shared."""
    storage = str(folder / "dv-storage")
    source, destination = folder / "copy-from.json", folder / "copy-to.json"
    source.write_text(json.dumps({"StorageDirectory": storage}))
    section = cluster.section(DICOMVAULT_DATABASE)
    destination.write_text(json.dumps({"StorageDirectory": storage, "PostgreSQL": section}))
    done = subprocess.run(
        [*dicomvault_command(), "copy-index", "--no-progress", str(source), str(destination)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=3600,
    )
    source.unlink()
    destination.unlink()  # it holds the database's password
    if done.returncode != 0:
        raise RuntimeError(f"dicomvault copy-index failed ({done.returncode}): {done.stderr[-2000:]}")


def build_cache(folder: Path, pack: data.Pack, clients: int) -> None:
    """Load the three indexes of the find part once and keep them in `folder`."""
    building = folder.with_name(folder.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    building.mkdir(parents=True)
    seconds: dict[str, float] = {}
    held: dict[str, dict[str, int]] = {}
    # fsync off while loading: loading is not what is measured, and a cleanly stopped cluster is
    # complete on disk either way.
    cluster = start_cluster(None, fsync=False)
    try:
        with cluster.connect() as conn:
            for name in (ORTHANC_DATABASE, DICOMVAULT_DATABASE):
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        dv = DicomVault({"StorageDirectory": str(building / "dv-storage")})
        dv.start(building / "run-dv-sqlite")
        try:
            seconds["dv_sqlite"], held["dv_sqlite"] = _bulk_load("dicomvault-SQLite", dv.url, pack, clients)
        finally:
            dv.stop()
        orthanc = PostgreSQLOrthanc(cluster.section(ORTHANC_DATABASE), building / "orthanc-storage")
        orthanc.start(building / "run-orthanc")
        try:
            seconds["orthanc_pg"], held["orthanc_pg"] = _bulk_load("Orthanc-PostgreSQL", orthanc.url, pack, clients)
        finally:
            orthanc.stop()
        pg_settings: dict[str, Any] = {"PostgreSQL": cluster.section(DICOMVAULT_DATABASE)}
        if copy_index_available():
            method = "dicomvault copy-index (from the SQLite index; storage folder shared)"
            t0 = time.monotonic()
            _copy_index(building, cluster)
            seconds["dv_pg"] = time.monotonic() - t0
            dv = DicomVault({**pg_settings, "StorageDirectory": str(building / "dv-storage")})
            dv.start(building / "run-dv-pg")
            try:
                held["dv_pg"] = counts(dv.url)
            finally:
                dv.stop()
        else:
            method = "REST upload (dicomvault copy-index was not available; a storage folder of its own)"
            dv = DicomVault({**pg_settings, "StorageDirectory": str(building / "dv-pg-storage")})
            dv.start(building / "run-dv-pg")
            try:
                seconds["dv_pg"], held["dv_pg"] = _bulk_load("dicomvault-PostgreSQL", dv.url, pack, clients)
            finally:
                dv.stop()
        cluster.stop()
        shutil.move(str(cluster.data), str(building / "pgdata"))
    finally:
        cluster.destroy()
    for run in building.glob("run-*"):
        shutil.rmtree(run)
    if len({tuple(h.values()) for h in held.values()}) != 1:
        raise RuntimeError(f"the three find indexes hold different counts: {held}")
    manifest = {
        "instances": pack.count,
        "counts": held["dv_sqlite"],
        "held": held,
        "created": time.strftime("%Y-%m-%d %H:%M"),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "bulk_clients": clients,
        "dv_pg_method": method,
        "schema": SCHEMA_VERSION,
        "pack": str(pack.path),
    }
    (building / "manifest.json").write_text(json.dumps(manifest, indent=2))
    os.replace(building, folder)
    logger.warning("find index cached in %s", folder)
