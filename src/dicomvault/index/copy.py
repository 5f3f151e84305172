"""`dicomvault copy-index FROM_CONFIG TO_CONFIG`: copy a whole index from one backend to another
(SQLite -> PostgreSQL and back), keeping every number, then verify the copy before it is kept.

Every row of every table is copied with its own internal ids and seq numbers (changes, exported
and deleted resources, the recycling order), and the destination's counters are set to the
highest numbers the source ever gave, so that the numbering continues where it stopped (`/changes`
`Last` is the same, the next change is `Last + 1`). What is copied and how each backend is read is
`copy_tables.py`; the ends (`copy_ends.py`) guarantee that nothing serves the source meanwhile and
that the destination is all or nothing. Any pair of backends works (SQLite to SQLite, PostgreSQL
to PostgreSQL too).

Verification: every table's row count and a digest of its rows in key order (the digest of the
source is taken while copying, that of the destination by reading it back), the resources per level
and a digest of their public ids, a digest of the attachment uuids, every counter and the last
change. Any difference and the copy is dropped (rolled back, or the temporary file deleted).

The storage area is not copied: both configurations are meant to point at the same files; the
report says which area the copied index refers to, and warns when TO_CONFIG names another one.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg
import psycopg.conninfo
from tqdm import tqdm

from dicomvault.config import Config
from dicomvault.enums import ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.index.backends import postgresql_settings
from dicomvault.index.copy_ends import PostgreSQLDestination, PostgreSQLSource, SQLiteDestination, SQLiteSource
from dicomvault.index.copy_tables import TABLES, CopyRefused, Side, Table
from dicomvault.index.sqlite import INDEX_FILENAME

logger = logging.getLogger(__name__)

__all__ = ["Check", "CopyRefused", "CopyReport", "CopyUsageError", "copy_index"]


class CopyUsageError(DicomVaultError):
    """FROM_CONFIG and TO_CONFIG cannot go together (CLI exit code 2)."""


class _Source(Protocol):
    @property
    def side(self) -> Side: ...

    def close(self) -> None: ...


class _Destination(Protocol):
    label: str

    def load(self, table: Table, batches: Iterator[list[tuple[Any, ...]]]) -> None: ...
    def set_counters(self, counters: dict[str, int]) -> None: ...
    def finish(self) -> Side: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Check:
    """One comparison between the source and the copy: a number (rows, a counter), and for a
    stream of rows the digest of their contents."""

    name: str
    source: int
    destination: int
    source_digest: str = ""
    destination_digest: str = ""

    @property
    def ok(self) -> bool:
        return self.source == self.destination and self.source_digest == self.destination_digest

    def render(self) -> str:
        def side(count: int, digest: str) -> str:
            return f"{count} (digest {digest[:16]})" if digest else str(count)

        return (
            f"{self.name}: source {side(self.source, self.source_digest)}, "
            f"destination {side(self.destination, self.destination_digest)}"
        )

    def to_json(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"Name": self.name, "Source": self.source, "Destination": self.destination}
        if self.source_digest or self.destination_digest:
            answer.update(SourceDigest=self.source_digest, DestinationDigest=self.destination_digest)
        answer["Ok"] = self.ok
        return answer


def _check(name: str, source: tuple[int, str], destination: tuple[int, str]) -> Check:
    return Check(name, source[0], destination[0], source[1], destination[1])


@dataclass(frozen=True)
class CopyReport:
    source: str
    destination: str
    rows: int
    seconds: float
    checks: tuple[Check, ...]
    levels: tuple[tuple[str, int], ...]  # (plural, count) of the source
    attachments: int
    last_change: int
    storage: str  # the storage area the copied index refers to (FROM_CONFIG's)
    destination_storage: str  # the one TO_CONFIG names

    @property
    def verified(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def storage_shared(self) -> bool:
        return self.storage == self.destination_storage

    def render(self) -> list[str]:
        outcome = "" if self.verified else ", but the copy differs from its source: NOT kept"
        lines = [
            f"copied the {self.source} to the {self.destination}: {self.rows} rows of {len(TABLES)} tables "
            f"in {self.seconds:.1f} s{outcome}",
            "  "
            + ", ".join(f"{count} {plural}" for plural, count in self.levels)
            + f", {self.attachments} attachments, last change {self.last_change} "
            f"(the next one is {self.last_change + 1})",
        ]
        failed = [c for c in self.checks if not c.ok]
        if failed:
            lines.append(f"  MISMATCH in {len(failed)} of {len(self.checks)} checks:")
            lines += [f"    {c.render()}" for c in failed]
            lines.append(f"  the {self.destination} was left as it was")
        else:
            lines.append(
                f"  verified: {len(self.checks)} checks equal (row counts and contents of every table, public ids "
                "per level, attachment uuids, counters)"
            )
        lines.append(f"  storage not copied: the index lists the files of {self.storage}")
        if not self.storage_shared:
            lines.append(
                f"  WARNING: TO_CONFIG names another storage area ({self.destination_storage}): a server started "
                "on it will not find the files unless they are copied there too"
            )
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "Source": self.source,
            "Destination": self.destination,
            "Rows": self.rows,
            "Seconds": round(self.seconds, 3),
            "Resources": dict(self.levels),
            "Attachments": self.attachments,
            "LastChange": self.last_change,
            "Verified": self.verified,
            "Checks": [c.to_json() for c in self.checks],
            "Storage": {"Source": self.storage, "Destination": self.destination_storage, "Shared": self.storage_shared},
        }


class _Digest:
    """Row count and digest of a stream of rows; batch boundaries do not matter."""

    def __init__(self) -> None:
        self.count = 0
        self._hash = hashlib.blake2b(digest_size=16)

    def add(self, batch: list[tuple[Any, ...]]) -> None:
        if not batch:
            return
        self.count += len(batch)
        # Both drivers give tuples of int / str / None for every column of the schema, so repr() is
        # the same text for the same rows on either backend. "a, b" + ", " per batch: the text does
        # not depend on where batches start (one repr of the list: C speed).
        self._hash.update(repr(batch)[1:-1].encode("utf-8", "surrogatepass"))
        self._hash.update(b", ")

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def _digest(side: Side, sql: str) -> tuple[int, str]:
    digest = _Digest()
    for batch in side.stream(sql):
        digest.add(batch)
    return digest.count, digest.hexdigest()


# -- configuration -----------------------------------------------------------------------------------


def _storage(config: Config) -> str:
    section = config.aws_s3_storage
    if section is not None:
        return f"S3 bucket {section.get('BucketName', '?')} at {section.get('Endpoint', 'AWS')}" + (
            f", root {section['RootPath']}" if section.get("RootPath") else ""
        )
    return f"folder {Path(config.storage_directory).resolve()}"


def _where(config: Config) -> tuple[str, ...]:
    """Identifies the index a configuration names, to refuse copying an index onto itself."""
    settings = postgresql_settings(config)
    if settings is None:
        return ("sqlite", str((config.index_directory / INDEX_FILENAME).resolve()))
    params = psycopg.conninfo.conninfo_to_dict(settings.conninfo)
    return ("postgresql", str(params.get("host", "")), str(params.get("port", "5432")), str(params.get("dbname", "")))


def _open_source(config: Config, config_label: str) -> _Source:
    settings = postgresql_settings(config)
    return SQLiteSource(config, config_label) if settings is None else PostgreSQLSource(settings, config_label)


def _open_destination(config: Config, config_label: str) -> _Destination:
    settings = postgresql_settings(config)
    if settings is None:
        return SQLiteDestination(config, config_label)
    return PostgreSQLDestination(settings, config_label)


# -- the copy -------------------------------------------------------------------------------------------


def copy_index(
    source: Config,
    destination: Config,
    source_label: str = "FROM_CONFIG",
    destination_label: str = "TO_CONFIG",
    progress: bool = True,
) -> CopyReport:
    """Copy the index of `source` into the (empty) index of `destination`, verify it, and keep it
    only if the verification passes. Raises `CopyUsageError`, `CopyRefused` (nothing was
    written), or `DicomVaultError` / `KeyboardInterrupt` (the destination was left as it was)."""
    try:
        same = _where(source) == _where(destination)
    except DicomVaultError as exc:  # a "PostgreSQL" section that cannot be used
        raise CopyUsageError(exc.code, exc.details) from exc
    if same:
        raise CopyUsageError(
            ErrorCode.BAD_PARAMETER_TYPE, f"{source_label} and {destination_label} name the same index: nothing to copy"
        )
    started = time.monotonic()
    try:
        src = _open_source(source, source_label)
        try:
            dst = _open_destination(destination, destination_label)
            try:
                report = _copy(src, dst, progress, started, _storage(source), _storage(destination))
            finally:
                dst.close()
        finally:
            src.close()
    except (sqlite3.Error, psycopg.Error, OSError) as exc:
        # The destination's own failures are said by `_copy`; these come from opening either end.
        raise DicomVaultError(ErrorCode.DATABASE, _reason(exc)) from exc
    if report.verified:
        logger.info("copied %d rows from the %s to the %s", report.rows, report.source, report.destination)
    else:
        failed = ", ".join(c.name for c in report.checks if not c.ok)
        logger.error(
            "the copy in the %s differs from the %s (%s): it was not kept", report.destination, report.source, failed
        )
    if not report.storage_shared:
        logger.warning(
            "the storage area of %s (%s) is not the one of %s (%s): copy-index does not copy files",
            destination_label,
            report.destination_storage,
            source_label,
            report.storage,
        )
    return report


def _copy(
    src: _Source, dst: _Destination, progress: bool, started: float, storage: str, dst_storage: str
) -> CopyReport:
    try:
        sources: dict[str, tuple[int, str]] = {}
        counts = {t.name: int(src.side.query(f"SELECT COUNT(*) FROM {t.name}")[0][0]) for t in TABLES}
        with tqdm(
            total=sum(counts.values()),
            unit="row",
            unit_scale=True,
            desc="copying the index",
            disable=not progress,
            file=sys.stderr,
            dynamic_ncols=True,
        ) as bar:
            for table in TABLES:
                digest = _Digest()
                dst.load(table, _tracked(src.side, table, digest, bar))
                sources[table.name] = (digest.count, digest.hexdigest())
                logger.info("copied %d rows of %s", digest.count, table.name)
        counters = src.side.counters()
        dst.set_counters(counters)
        copied = dst.finish()
        checks = [_check(f"table {t.name}", sources[t.name], _digest(copied, t.select())) for t in TABLES]
        source_facts, copied_facts = _facts(src.side), _facts(copied)
        checks += [_check(name, fact, copied_facts[name]) for name, fact in source_facts.items()]
        checks += [Check(f"counter {name}", counters[name], value) for name, value in copied.counters().items()]
        report = CopyReport(
            source=src.side.label,
            destination=dst.label,
            rows=sum(count for count, _ in sources.values()),
            seconds=time.monotonic() - started,
            checks=tuple(checks),
            levels=tuple((level.plural, source_facts[f"{level.plural}"][0]) for level in ResourceType),
            attachments=source_facts["attachment uuids"][0],
            last_change=counters["changes"],
            storage=storage,
            destination_storage=dst_storage,
        )
        if report.verified:
            dst.commit()
        else:
            dst.abort()
        return report
    except (sqlite3.Error, psycopg.Error, OSError) as exc:
        dst.abort()
        raise DicomVaultError(ErrorCode.DATABASE, f"copying to the {dst.label} failed: {_reason(exc)}") from exc
    except BaseException:
        dst.abort()
        raise


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _tracked(side: Side, table: Table, digest: _Digest, bar: tqdm[Any]) -> Iterator[list[tuple[Any, ...]]]:
    for batch in side.stream(table.select()):
        digest.add(batch)
        bar.update(len(batch))
        yield batch


def _facts(side: Side) -> dict[str, tuple[int, str]]:
    """What the report names: public ids per level, attachment uuids, the last change."""
    facts = {
        level.plural: _digest(
            side, f"SELECT publicId FROM Resources WHERE resourceType = {int(level)} ORDER BY publicId"
        )
        for level in ResourceType
    }
    facts["attachment uuids"] = _digest(side, "SELECT uuid FROM AttachedFiles ORDER BY uuid")
    last = side.query("SELECT MAX(seq) FROM Changes")[0][0]
    facts["last change in the log"] = (int(last or 0), "")
    return facts
