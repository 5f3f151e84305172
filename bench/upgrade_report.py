"""The summary of `bench.upgrade`: which figures of each round are reported, their medians over
rounds, the targets of issue 6, the printed table and the CPU lines.

Unlike `bench.report` (dicomvault against Orthanc, a ratio per round), most figures here belong to
one system; the one ratio with a target, re-read rate over REST ingest rate, is taken within each
round (both measured minutes apart under the same machine load) before the median.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dicomvault.index.schema import SCHEMA_VERSION


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


@dataclass(frozen=True)
class Row:
    key: str  # the part of a round's record: "tiny", "ct", "adopt", "adopt_compressed"
    field: str  # the figure in that part
    label: str
    unit: str
    target: str = ""  # ">= 1.0", "< 10", or "" when issue 6 sets none

    def met(self, value: float) -> bool | None:
        if not self.target:
            return None
        bound = float(self.target.lstrip("<>= "))
        if self.target.startswith(">="):
            return value >= bound
        return value < bound


def _reread_rows(kind: str, label: str) -> tuple[Row, ...]:
    return (
        Row(kind, "ingest_rate", f"dicomvault REST ingest {label}, 4 clients", "inst/s"),
        Row(kind, "reread_rate", f"re-read upgrade 1 -> {SCHEMA_VERSION}, {label}", "inst/s"),
        Row(kind, "ratio", f"re-read rate / REST ingest rate, {label}", "x", ">= 1.0"),
        Row(kind, "upgrade_s", f"upgrade wall time, {label}", "s"),
    )


def adoption_rows(compressed: bool) -> tuple[Row, ...]:
    kind = "adopt_compressed" if compressed else "adopt"
    which = "Orthanc, StorageCompression" if compressed else "Orthanc"
    return (
        Row(kind, "orthanc_ingest_rate", f"{which} REST ingest tiny, 4 clients", "inst/s"),
        Row(kind, "adoption_s", f"adopt {which}: index work", "s"),
        Row(kind, "adoption_s_per_10k", f"adopt {which}: index work per 10,000 inst.", "s", "< 10"),
        Row(kind, "reread_rate", f"adopt {which}: re-read of the files", "inst/s"),
        Row(kind, "reread_s", f"adopt {which}: re-read of the files", "s"),
        Row(kind, "verification_s", f"adopt {which}: storage verification", "s"),
        Row(kind, "upgrade_s", f"adopt {which}: total wall time", "s"),
    )


ROWS = (*_reread_rows("tiny", "tiny"), *_reread_rows("ct", "CT 525 KB"), *adoption_rows(compressed=False))


def summarize(rounds: list[dict[str, Any]], rows: Sequence[Row]) -> list[dict[str, Any]]:
    """One entry per row: the median over rounds, each round's value, the target and whether the
    median meets it."""
    out: list[dict[str, Any]] = []
    for row in rows:
        values = [
            float(v)
            for rnd in rounds
            if isinstance(v := (rnd.get(row.key) or {}).get(row.field), int | float) and not isinstance(v, bool)
        ]
        median = round(statistics.median(values), 3) if values else None
        out.append(
            {
                "metric": f"{row.key}.{row.field}",
                "label": row.label,
                "unit": row.unit,
                "median": median,
                "per_round": [round(v, 3) for v in values],
                "target": row.target or None,
                "met": None if median is None else row.met(median),
            }
        )
    return out


def table(rows: list[dict[str, Any]], rounds: int) -> str:
    """The readable summary printed at the end of a run."""
    header = ("figure", "unit", f"median of {rounds}", "per round", "target", "")
    lines: list[tuple[str, ...]] = [header]
    for row in rows:
        digits = 2 if row["unit"] in ("x", "s") else 1
        lines.append(
            (
                row["label"],
                row["unit"],
                _fmt(row["median"], digits),
                " ".join(_fmt(v, digits) for v in row["per_round"]),
                row["target"] or "(none)",
                {True: "ok", False: "MISSED", None: ""}[row["met"]],
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        cells = [c.rjust(w) if i == 2 else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def cpu_lines(rounds: list[dict[str, Any]]) -> str:
    """Medians over rounds of the cores used during each upgrade (this process and its worker
    processes) and by the rest of the machine, the upgrade's CPU time per instance, and the same
    for the REST ingests (server, clients, rest of the machine)."""
    columns = ("cores used", "rest of machine", "CPU ms/instance")
    out = [f"{'timed work (medians)':<42}" + "".join(f"{c:>18}" for c in columns)]

    def line(name: str, records: list[dict[str, Any]], fields: tuple[str, str, str]) -> None:
        cells = []
        for f in fields:
            values = [float(r[f]) for r in records if isinstance(r.get(f), int | float)]
            cells.append(f"{statistics.median(values):>18.2f}" if values else f"{'-':>18}")
        out.append(f"{name:<42}" + "".join(cells))

    upgrade_fields = ("upgrade_cores", "other_cores", "upgrade_cpu_ms_per_instance")
    ingest_fields = ("server_cores", "other_cores", "server_cpu_ms_per_request")
    for key in ("tiny", "ct", "adopt", "adopt_compressed"):
        parts = [rnd[key] for rnd in rounds if key in rnd]
        if not parts:
            continue
        ingest = "ingest" if key in ("tiny", "ct") else "orthanc_ingest"
        server = "dicomvault" if key in ("tiny", "ct") else "Orthanc"
        line(f"{key}: REST ingest ({server})", [p[ingest] for p in parts], ingest_fields)
        line(f"{key}: upgrade", parts, upgrade_fields)
    return "\n".join(out)
