"""`python -m bench.soak --minutes N`: the soak of the fault tests (`tests/faults/test_soak.py`),
run longer. 8 clients (threads) mix uploads, finds, file and archive downloads, deletes and
listings against a fresh `dicomvault serve`, each checking every answer against its own model of
the archive (`tests.faults.workload`); the resident memory of the server's process tree is
sampled meanwhile. At the end the REST view is compared with the models and the index and the
folder are checked (no missing, corrupt or orphan file).

Prints the requests per kind and their rates, the failures, and the memory curve (one line per
sample group). Not a benchmark of speed against Orthanc: a check that nothing degrades over time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx
from tests.faults.integrity import check_api_files, inspect_sqlite, run_check
from tests.faults.workload import KINDS, RssSampler, expected_instances, run_soak, summary

from bench.servers import DicomVault, remove_tree

MB = 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="duration of the load (default 10)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the clients' choices")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between memory samples (default 5)")
    parser.add_argument("--keep", action="store_true", help="keep the server's folder (its path is printed)")
    args = parser.parse_args(argv)

    base = Path(tempfile.mkdtemp(prefix="dicomvault-soak-"))
    server = DicomVault()
    server.start(base)
    seconds = args.minutes * 60
    print(f"soak: {args.clients} clients for {seconds:.0f} s against {server.url} (folder {base})", flush=True)
    try:
        started = time.monotonic()
        with RssSampler(server.pid, args.interval) as rss:
            clients = run_soak(server.url, args.clients, seconds, args.seed)
        elapsed = time.monotonic() - started
        figures = summary(clients)
        expected = expected_instances(clients)
        with httpx.Client(timeout=120) as http:
            files = check_api_files(http, server.url)
        view_ok = set(files) == set(expected) and all(files[i] == item.data for i, item in expected.items())
    finally:
        server.stop()
    storage = base / "storage"
    stored = inspect_sqlite(storage / "dicomvault.db", storage)
    check = run_check(base / "dicomvault.json")

    print(f"\n{'kind':<16} {'requests':>9} {'per s':>8}")
    for kind in KINDS:
        count = figures["counts"].get(kind, 0)
        print(f"{kind:<16} {count:>9} {count / elapsed:>8.1f}")
    print(f"{'total':<16} {figures['total']:>9} {figures['total'] / elapsed:>8.1f}")
    print(f"\ninstances kept: {len(expected)}; REST view equals the clients' models: {view_ok}")
    print(f"index and folder: damaged {stored.damaged[:5]}, orphans {len(stored.orphans)}")
    if check is not None:
        print(f"dicomvault check: exit {check.returncode}")
    print(f"failures: {len(figures['failures'])}")
    for failure in figures["failures"][:20]:
        print(f"  {failure}")
    print("\nRSS of the server's process tree (serve + ingest workers):")
    step = max(1, len(rss.samples) // 30)
    for at, value in rss.samples[::step]:
        print(f"  {at:7.0f} s {value / MB:8.1f} MB")
    first, last = rss.thirds()
    print(f"first third max {first / MB:.1f} MB, last third max {last / MB:.1f} MB ({last / first:.2f}x)")
    if not args.keep:
        remove_tree(base)
    ok = view_ok and not figures["failures"] and not stored.damaged and not stored.orphans
    ok = ok and (check is None or check.returncode == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
