"""The summary of `bench.postgresql`: the figures of each round, their medians over rounds, the
ratios with issue 8's targets, the printed tables and CPU lines, and the comparison of the find
answers between the servers.

Every ratio is taken within one round (the targets measured minutes apart under the same machine
load), and only then is the median taken over rounds.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.report import grid

INGEST_TARGETS = ("dv_pg1", "dv_pg2", "dv_sqlite", "orthanc_pg")
FIND_SERVERS = ("dv_pg", "dv_sqlite", "orthanc_pg")
LABELS = {
    "dv_pg1": "dicomvault-PG, 1 process",
    "dv_pg2": "dicomvault-PG, 2 processes",
    "dv_sqlite": "dicomvault-SQLite",
    "orthanc_pg": "Orthanc-PG",
    "dv_pg": "dicomvault-PG",
}
SETS = {"tiny": "tiny", "ct": "CT 525 KB"}
QUERY_LABELS = {
    "find_name": "studies, PatientName wildcards",
    "find_date": "studies, StudyDate ranges",
    "find_modality": "studies, ModalitiesInStudy",
    "find_instance_uid": "instances, SOPInstanceUID",
    "find_instance_number": "instances, InstanceNumber + StudyDate",
}
# (figure, numerator, denominator, label, target)
_INGEST_RATIOS = (
    ("pg2_over_pg1", "dv_pg2", "dv_pg1", "dicomvault-PG 2 processes / 1 process", ">= 1.0"),
    ("pg1_over_orthanc", "dv_pg1", "orthanc_pg", "dicomvault-PG 1 process / Orthanc-PG", ""),
    ("pg2_over_orthanc", "dv_pg2", "orthanc_pg", "dicomvault-PG 2 processes / Orthanc-PG", ""),
    ("pg1_over_sqlite", "dv_pg1", "dv_sqlite", "dicomvault-PG 1 process / dicomvault-SQLite", ""),
)
_FIND_RATIOS = (
    ("pg_over_orthanc", "dv_pg", "orthanc_pg", "dicomvault-PG / Orthanc-PG", "<= 1.0"),
    ("sqlite_over_orthanc", "dv_sqlite", "orthanc_pg", "dicomvault-SQLite / Orthanc-PG", ""),
)


def _ratio(numerator: Any, denominator: Any) -> float | None:
    if isinstance(numerator, int | float) and isinstance(denominator, int | float) and denominator > 0:
        return round(float(numerator) / float(denominator), 3)
    return None


def figures(record: dict[str, Any], query_names: Sequence[str]) -> dict[str, float | None]:
    """The flat figures of one round (what the summary takes medians of)."""
    out: dict[str, float | None] = {}
    for kind in SETS:
        part = record.get(kind, {})
        for target in INGEST_TARGETS:
            out[f"{kind}.{target}.rate"] = (part.get(target) or {}).get("rate")
        for name, num, den, _, _ in _INGEST_RATIOS:
            out[f"{kind}.{name}"] = _ratio(out[f"{kind}.{num}.rate"], out[f"{kind}.{den}.rate"])
    find = record.get("find", {})
    for query in query_names:
        for server in FIND_SERVERS:
            measured = (find.get(server) or {}).get(query) or {}
            for q in ("p50", "p99"):
                out[f"{query}.{server}.{q}"] = measured.get(f"{q}_ms")
        for name, num, den, _, _ in _FIND_RATIOS:
            for q in ("p50", "p99"):
                out[f"{query}.{name}.{q}"] = _ratio(out[f"{query}.{num}.{q}"], out[f"{query}.{den}.{q}"])
    return out


@dataclass(frozen=True)
class Row:
    figure: str  # key in a round's "figures"
    label: str
    unit: str
    target: str = ""  # ">= 1.0", "<= 1.0", or "" when issue 8 sets none

    def met(self, value: float) -> bool | None:
        if not self.target:
            return None
        bound = float(self.target.lstrip("<>= "))
        return value >= bound if self.target.startswith(">=") else value <= bound


def rows(query_names: Sequence[str]) -> list[Row]:
    """Every figure of the summary: the rates, the latencies, then the ratios."""
    out: list[Row] = []
    for kind, label in SETS.items():
        for target in INGEST_TARGETS:
            out.append(Row(f"{kind}.{target}.rate", f"ingest {label}: {LABELS[target]}", "inst/s"))
    for query in query_names:
        for server in FIND_SERVERS:
            for q in ("p50", "p99"):
                out.append(Row(f"{query}.{server}.{q}", f"find {QUERY_LABELS[query]}: {LABELS[server]} {q}", "ms"))
    for kind, label in SETS.items():
        for name, _, _, text, target in _INGEST_RATIOS:
            out.append(Row(f"{kind}.{name}", f"ingest {label}: {text}", "x", target))
    for query in query_names:
        for name, _, _, text, target in _FIND_RATIOS:
            for q in ("p50", "p99"):
                out.append(Row(f"{query}.{name}.{q}", f"find {QUERY_LABELS[query]} {q}: {text}", "x", target))
    return out


def summarize(rounds: list[dict[str, Any]], table_rows: Sequence[Row]) -> list[dict[str, Any]]:
    """One entry per row: the median over rounds, each round's value, the target, whether met."""
    out: list[dict[str, Any]] = []
    for row in table_rows:
        values = [float(v) for rnd in rounds if isinstance(v := rnd["figures"].get(row.figure), int | float)]
        median = round(statistics.median(values), 3) if values else None
        out.append(
            {
                "metric": row.figure,
                "label": row.label,
                "unit": row.unit,
                "median": median,
                "per_round": [round(v, 3) for v in values],
                "target": row.target or None,
                "met": None if median is None or not row.target else row.met(median),
            }
        )
    return out


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def tables(summary: list[dict[str, Any]], rounds: int) -> str:
    """Three tables: ingest rates, find latencies (medians over rounds), then every ratio with
    its per-round values and target."""
    by_metric = {row["metric"]: row for row in summary}

    def median(key: str) -> float | None:
        row = by_metric.get(key)
        return None if row is None else row["median"]

    ingest: list[tuple[str, ...]] = [
        (f"REST ingest, inst/s (median of {rounds})", *(LABELS[t] for t in INGEST_TARGETS))
    ]
    for kind, label in SETS.items():
        ingest.append((label, *(_fmt(median(f"{kind}.{t}.rate"), 1) for t in INGEST_TARGETS)))
    queries = sorted({k.split(".")[0] for k in by_metric if k.startswith("find_")}, key=list(QUERY_LABELS).index)
    find: list[tuple[str, ...]] = [
        (f"/tools/find, ms (median of {rounds})", *(f"{LABELS[s]} {q}" for s in FIND_SERVERS for q in ("p50", "p99")))
    ]
    for query in queries:
        cells = (_fmt(median(f"{query}.{s}.{q}"), 2) for s in FIND_SERVERS for q in ("p50", "p99"))
        find.append((QUERY_LABELS[query], *cells))
    ratios: list[tuple[str, ...]] = [("ratio", f"median of {rounds}", "per round", "target", "")]
    for row in summary:
        if row["unit"] != "x":
            continue
        ratios.append(
            (
                row["label"],
                _fmt(row["median"], 2) + ("x" if row["median"] is not None else ""),
                " ".join(_fmt(v, 2) for v in row["per_round"]),
                row["target"] or "(none)",
                {True: "ok", False: "MISSED", None: ""}[row["met"]],
            )
        )
    right_ingest = set(range(1, len(INGEST_TARGETS) + 1))
    right_find = set(range(1, 2 * len(FIND_SERVERS) + 1))
    return "\n\n".join((grid(ingest, right_ingest), grid(find, right_find), grid(ratios, {1})))


def _median_cell(records: list[dict[str, Any]], field: str, width: int) -> str:
    values = [float(r[field]) for r in records if isinstance(r.get(field), int | float)]
    return f"{statistics.median(values):>{width}.2f}" if values else f"{'-':>{width}}"


def cpu_lines(rounds: list[dict[str, Any]], query_names: Sequence[str]) -> str:
    """Medians over rounds of the cores used during each ingest by the servers (their process
    trees), PostgreSQL (the cluster's processes), the clients and the rest of the machine, and
    the CPU time per instance of the servers and of PostgreSQL; for the finds, the CPU time per
    request of the server and of PostgreSQL."""
    fields = (
        "server_cores",
        "postgresql_cores",
        "client_cores",
        "other_cores",
        "server_cpu_ms_per_request",
        "postgresql_cpu_ms_per_request",
    )
    columns = ("servers", "PostgreSQL", "clients", "rest", "servers ms/inst", "PG ms/inst")
    out = [f"{'cores used during each ingest (medians)':<58}" + "".join(f"{c:>16}" for c in columns)]
    for kind, label in SETS.items():
        for target in INGEST_TARGETS:
            records = [rnd[kind][target] for rnd in rounds if target in rnd.get(kind, {})]
            out.append(f"{label + ': ' + LABELS[target]:<58}" + "".join(_median_cell(records, f, 16) for f in fields))
    out.append("")
    out.append(f"{'CPU per /tools/find request (medians)':<58}" + "".join(f"{c:>16}" for c in ("server ms", "PG ms")))
    for query in query_names:
        for server in FIND_SERVERS:
            records = [rnd["find"][server][query] for rnd in rounds if query in rnd["find"].get(server, {})]
            cells = "".join(_median_cell(records, f, 16) for f in fields[4:])
            out.append(f"{QUERY_LABELS[query] + ': ' + LABELS[server]:<58}" + cells)
    return "\n".join(out)


def find_mismatches(record: dict[str, Any], servers: Sequence[str], query_names: Sequence[str]) -> list[str]:
    """Find answers (count and digest of the sorted ids, per variant) that differ from Orthanc's."""
    problems: list[str] = []
    reference = "orthanc_pg"
    for query in query_names:
        expected = ((record.get(reference) or {}).get(query) or {}).get("answers")
        if expected is None:
            continue
        for server in servers:
            if server == reference:
                continue
            answers = ((record.get(server) or {}).get(query) or {}).get("answers")
            if answers is None:
                continue
            for variant, answer in answers.items():
                if answer != expected.get(variant):
                    problems.append(
                        f"{query} variant {variant}: {LABELS[server]} {answer}, Orthanc-PG {expected.get(variant)}"
                    )
    return problems
