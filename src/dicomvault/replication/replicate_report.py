"""The outcome of a `replicate` run: `ReplicateReport` (a frozen value: the Python API's answer,
the `--json` report, the exit code) built from the counters of a running replication (`Tally`),
and the summary table printed at the end."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dicomvault.replication.compare import VerifyReport
from dicomvault.replication.copy_queue import ALREADY_STORED, COPIED, FAILED, VANISHED, Outcome

EXIT_OK, EXIT_FAILURES, EXIT_USAGE, EXIT_REFUSED = 0, 1, 2, 3


@dataclass(frozen=True)
class Failure:
    instance: str
    reason: str


@dataclass(frozen=True)
class ReplicateReport:
    source: str
    target: str
    copied: int = 0
    already_stored: int = 0
    vanished: int = 0  # deleted at the source before it could be downloaded
    failures: tuple[Failure, ...] = ()
    deleted: int = 0  # deletions propagated to the target
    bytes: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    cursor: int | None = None
    verify: VerifyReport | None = None

    @property
    def exit_code(self) -> int:
        if self.verify is not None:
            return EXIT_OK if self.verify.matches else EXIT_FAILURES
        return EXIT_FAILURES if self.failures else EXIT_OK

    def to_json(self) -> dict[str, Any]:
        report: dict[str, Any] = {"Source": self.source, "Target": self.target, "Seconds": round(self.seconds, 3)}
        if self.verify is not None:
            report["Verify"] = self.verify.to_json()
        else:
            report.update(
                Copied=self.copied,
                AlreadyStored=self.already_stored,
                DeletedAtSource=self.vanished,
                Failed=[{"ID": f.instance, "Reason": f.reason} for f in self.failures],
                DeletionsPropagated=self.deleted,
                Bytes=self.bytes,
                Interrupted=self.interrupted,
                Cursor=self.cursor,
            )
        report["ExitCode"] = self.exit_code
        return report


@dataclass
class Tally:
    """Counters of a running replication (mutable; frozen into a `ReplicateReport` at the end)."""

    copied: int = 0
    already_stored: int = 0
    vanished: int = 0
    bytes: int = 0
    deleted: int = 0
    failures: dict[str, str] = field(default_factory=dict)

    def add(self, outcome: Outcome) -> None:
        self.bytes += outcome.size if outcome.kind in (COPIED, ALREADY_STORED) else 0
        if outcome.kind == COPIED:
            self.copied += 1
        elif outcome.kind == ALREADY_STORED:
            self.already_stored += 1
        elif outcome.kind == VANISHED:
            self.vanished += 1
        if outcome.kind == FAILED:
            self.failures[outcome.instance] = outcome.reason
        else:
            self.failures.pop(outcome.instance, None)


def summary(report: ReplicateReport) -> str:
    """The final table printed on stdout."""
    lines = [f"{report.source} -> {report.target}"]
    if report.verify is not None:
        v = report.verify
        rows = [
            ("instances at the source", str(v.source_count)),
            ("instances at the target", str(v.target_count)),
            ("missing at the target", str(len(v.missing))),
            ("only at the target", str(len(v.extra))),
        ]
        if v.md5_checked:
            rows += [("MD5 compared", str(v.md5_checked)), ("different", str(len(v.different)))]
        rows.append(("result", "match" if v.matches else "MISMATCH"))
        lines += [f"  {name:<26}{value:>12}" for name, value in rows]
        lines += [f"  missing   {i}" for i in v.missing[:50]]
        lines += [f"  different {i}" for i in v.different[:50]]
        return "\n".join(lines)
    rate = (report.copied + report.already_stored) / report.seconds if report.seconds > 0 else 0.0
    rows = [
        ("copied", str(report.copied)),
        ("already stored", str(report.already_stored)),
        ("deleted at the source", str(report.vanished)),
        ("failed", str(len(report.failures))),
        ("deletions propagated", str(report.deleted)),
        ("MB transferred", f"{report.bytes / 1e6:.1f}"),
        ("seconds", f"{report.seconds:.1f}"),
        ("instances/s", f"{rate:.1f}"),
    ]
    lines += [f"  {name:<26}{value:>12}" for name, value in rows]
    return "\n".join(lines)
