"""From the raw measurements of every round to the summary: each server's median figure, the
median of the per-round ratios dicomvault/Orthanc, the target, and the printed table.

A ratio is computed within one round (both servers measured minutes apart under the same machine
load) and only then is the median taken over rounds: that is what makes the figures comparable
on a machine whose load changes.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DV = "dicomvault"
ORTHANC = "orthanc"
NOT_IMPLEMENTED = "n/a (not implemented)"


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile (0-1) by linear interpolation between the closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass(frozen=True)
class Metric:
    key: str  # phase name in each round's record
    field: str  # field of that phase's record
    label: str
    unit: str
    target: str  # "" when the brief sets none
    higher_is_better: bool

    def met(self, ratio: float) -> bool | None:
        if not self.target:
            return None
        bound = float(self.target.strip("<>= x"))
        return ratio >= bound if self.target.startswith(">=") else ratio <= bound


METRICS = (
    Metric("ingest_ct_1", "rate", "REST ingest CT 525 KB, 1 client", "inst/s", ">= 1.0x", True),
    Metric("ingest_ct_4", "rate", "REST ingest CT 525 KB, 4 clients", "inst/s", ">= 1.0x", True),
    Metric("ingest_tiny_1", "rate", "REST ingest tiny, 1 client", "inst/s", ">= 1.0x", True),
    Metric("ingest_tiny_4", "rate", "REST ingest tiny, 4 clients", "inst/s", ">= 1.0x", True),
    Metric("download_ct_4", "mb_per_s", "download CT /file, 4 clients", "MB/s", "", True),
    Metric("find_name", "p50_ms", "find studies PatientName *X* p50", "ms", "<= 0.5x", False),
    Metric("find_name", "p99_ms", "find studies PatientName *X* p99", "ms", "<= 0.5x", False),
    Metric("find_date", "p50_ms", "find studies StudyDate range p50", "ms", "<= 0.5x", False),
    Metric("find_date", "p99_ms", "find studies StudyDate range p99", "ms", "<= 0.5x", False),
    Metric("find_modality", "p50_ms", "find studies ModalitiesInStudy p50", "ms", "<= 0.5x", False),
    Metric("find_modality", "p99_ms", "find studies ModalitiesInStudy p99", "ms", "<= 0.5x", False),
    Metric("expand_studies", "p50_ms", "GET /studies?expand p50", "ms", "<= 0.5x", False),
    Metric("expand_studies", "p99_ms", "GET /studies?expand p99", "ms", "<= 0.5x", False),
    Metric("memory", "peak_rss_mb", "peak RSS, process tree, whole round", "MB", "<= 1.0x", False),
    Metric("memory", "peak_uss_mb", "peak USS (private pages only), sampled", "MB", "", False),
)


def _value(round_record: dict[str, Any], server: str, metric: Metric) -> float | str | None:
    record = round_record[server].get(metric.key)
    if record is None:
        return None
    if record.get("unavailable"):
        return NOT_IMPLEMENTED
    value = record.get(metric.field)
    return float(value) if isinstance(value, int | float) else None


def summarize(rounds: list[dict[str, Any]], metrics: Sequence[Metric] = METRICS) -> list[dict[str, Any]]:
    """One row per metric: both servers' median figures, per-round ratios, their median, the target."""
    rows: list[dict[str, Any]] = []
    for metric in metrics:
        row: dict[str, Any] = {
            "metric": f"{metric.key}.{metric.field}",
            "label": metric.label,
            "unit": metric.unit,
            "target": metric.target or None,
        }
        per_server: dict[str, list[float]] = {DV: [], ORTHANC: []}
        ratios: list[float] = []
        unavailable = False
        for rnd in rounds:
            dv, ref = _value(rnd, DV, metric), _value(rnd, ORTHANC, metric)
            if dv == NOT_IMPLEMENTED:
                unavailable = True
            if isinstance(dv, float):
                per_server[DV].append(dv)
            if isinstance(ref, float):
                per_server[ORTHANC].append(ref)
            if isinstance(dv, float) and isinstance(ref, float) and ref > 0:
                ratios.append(dv / ref)
        row[DV] = NOT_IMPLEMENTED if unavailable else _median(per_server[DV])
        row[ORTHANC] = _median(per_server[ORTHANC])
        row["ratios"] = [round(r, 3) for r in ratios]
        if unavailable or not ratios:
            row["ratio"] = NOT_IMPLEMENTED if unavailable else None
            row["met"] = None
        else:
            row["ratio"] = round(statistics.median(ratios), 3)
            row["met"] = metric.met(row["ratio"])
        rows.append(row)
    return rows


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return f"{value:,.{digits}f}"


def table(rows: list[dict[str, Any]], rounds: int) -> str:
    """The readable summary printed at the end of a run."""
    header = ("metric", "unit", "dicomvault", "Orthanc", f"ratio (median of {rounds})", "per round", "target", "")
    lines: list[tuple[str, ...]] = [header]
    for row in rows:
        ratio = row["ratio"]
        met = {True: "ok", False: "MISSED", None: ""}[row["met"]]
        lines.append(
            (
                row["label"],
                row["unit"],
                _fmt(row[DV]),
                _fmt(row[ORTHANC]),
                ratio if isinstance(ratio, str) else (f"{ratio:.2f}x" if ratio is not None else "-"),
                " ".join(f"{r:.2f}" for r in row["ratios"]),
                row["target"] or "(none)",
                met,
            )
        )
    return grid(lines, right={2, 3, 4})


def grid(lines: list[tuple[str, ...]], right: set[int]) -> str:
    """Text columns under a header line (the first of `lines`); columns in `right` align right."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for n, line in enumerate(lines):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


LOAD_KEYS = ("ingest_ct_1", "ingest_ct_4", "ingest_tiny_1", "ingest_tiny_4", "download_ct_4", "expand_studies")


def load_lines(rounds: list[dict[str, Any]], keys: Sequence[str] = LOAD_KEYS) -> str:
    """Per timed load, medians over rounds: cores used by the server, by the load generator and by
    the rest of the machine (other programs), and the server's CPU time per request, a figure that
    depends little on the machine's load."""
    columns = ("server cores", "client cores", "rest of machine", "server CPU ms/request")
    fields = ("server_cores", "client_cores", "other_cores", "server_cpu_ms_per_request")
    out = [f"{'timed load (medians)':<28}" + "".join(f"{c:>23}" for c in columns)]
    for key in keys:
        for server in (DV, ORTHANC):
            records = [rnd[server].get(key) or {} for rnd in rounds]
            cells = []
            for name in fields:
                values = [float(r[name]) for r in records if isinstance(r.get(name), int | float)]
                cells.append(f"{statistics.median(values):>23.2f}" if values else f"{'-':>23}")
            out.append(f"{key + ' ' + server:<28}" + "".join(cells))
    return "\n".join(out)


def answer_mismatches(rounds: list[dict[str, Any]]) -> list[str]:
    """Latency queries whose answers differ between the two servers (same ids expected)."""
    problems = []
    for n, rnd in enumerate(rounds, 1):
        for key, rec in rnd[DV].items():
            other = rnd[ORTHANC].get(key)
            if not isinstance(rec, dict) or not isinstance(other, dict) or "answers" not in rec:
                continue
            if rec.get("unavailable") or "answers" not in other:
                continue
            for variant, answer in rec["answers"].items():
                expected = other["answers"].get(variant)
                if answer != expected:
                    problems.append(f"round {n}, {key} variant {variant}: dicomvault {answer}, Orthanc {expected}")
    return problems
