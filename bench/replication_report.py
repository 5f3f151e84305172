"""The summary of `bench.replication`: the scenarios and copies, the ratios of each round (ours
over the sequential copy, ours over the target's own REST ingest), the rows of the table with
issue 7's targets, and the CPU lines (cores of source, target, tool and the rest of the machine).

The table itself and the medians over rounds are `bench.upgrade_report`'s (`summarize`, `table`).
"""

from __future__ import annotations

import statistics
from typing import Any

from bench.upgrade_report import Row

SCENARIOS = ("replicate_orthanc", "replicate_dicomvault", "import_dicomvault", "import_orthanc")
METHODS = ("ours", "sequential", "ingest")

_TITLES = {
    "replicate_orthanc": "replicate Orthanc -> Orthanc",
    "replicate_dicomvault": "replicate dicomvault -> dicomvault",
    "import_dicomvault": "import a folder into dicomvault",
    "import_orthanc": "import a folder into Orthanc",
}


def ratios(record: dict[str, Any]) -> dict[str, Any]:
    """The figures of one scenario of one round: each copy's rate and the two ratios."""
    out: dict[str, Any] = {}
    for method in METHODS:
        if method in record:
            out[f"{method}_rate"] = record[method]["rate"]
    ours = record.get("ours", {})
    if "tool_reported_rate" in ours:
        out["ours_reported_rate"] = ours["tool_reported_rate"]
    for method, name in (("sequential", "ratio_sequential"), ("ingest", "ratio_ingest")):
        other = out.get(f"{method}_rate")
        if "ours_rate" in out and other:
            out[name] = round(out["ours_rate"] / other, 3)
    return out


def rows(replicate_workers: int, import_workers: int) -> tuple[Row, ...]:
    found: list[Row] = []
    for scenario in SCENARIOS:
        title = _TITLES[scenario]
        replicating = scenario.startswith("replicate")
        workers = replicate_workers if replicating else import_workers
        tool = "dicomvault replicate" if replicating else "dicomvault import"
        script = "Replicate.py" if replicating else "ImportDicomFiles.py"
        found += [
            Row(scenario, "ours_rate", f"{title}: {tool} ({workers} workers)", "inst/s"),
            Row(scenario, "ours_reported_rate", f"{title}: the same, as the tool counts it", "inst/s"),
            Row(scenario, "sequential_rate", f"{title}: sequential ({script}'s way)", "inst/s"),
            Row(scenario, "ingest_rate", f"{title}: target's REST ingest, {workers} clients", "inst/s"),
            Row(scenario, "ratio_sequential", f"{title}: ours / sequential", "x", ">= 2.0"),
            Row(scenario, "ratio_ingest", f"{title}: ours / target's REST ingest", "x", ">= 0.70"),
        ]
    return tuple(found)


def cpu_lines(rounds: list[dict[str, Any]]) -> str:
    """Medians over rounds of the cores used by the source, the target, the tool (our command's
    process, the sequential copy, or the ingest's client processes) and the rest of the machine
    during each copy, and the tool's and the target's CPU time per instance."""
    columns = ("source", "target", "tool", "rest", "tool ms/inst", "target ms/inst")
    fields = (
        "source_cores",
        "target_cores",
        "tool_cores",
        "other_cores",
        "tool_cpu_ms_per_instance",
        "target_cpu_ms_per_instance",
    )
    out = [f"{'cores used during each copy (medians)':<48}" + "".join(f"{c:>15}" for c in columns)]
    for scenario in SCENARIOS:
        for part in ("fill", *METHODS):
            records = [rnd[scenario][part] for rnd in rounds if part in rnd.get(scenario, {})]
            if not records:
                continue
            cells = []
            for f in fields:
                values = [float(r[f]) for r in records if isinstance(r.get(f), int | float)]
                cells.append(f"{statistics.median(values):>15.2f}" if values else f"{'-':>15}")
            name = {"fill": "filling the source", "ingest": "target's REST ingest"}.get(part, part)
            out.append(f"{_TITLES[scenario] + ': ' + name:<48}" + "".join(cells))
    return "\n".join(out)
