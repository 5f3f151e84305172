"""The `dicomvault` command line. Each command parses its options, calls one function of the
core, and maps the outcome to the exit codes of DESIGN.md: 0 ok, 1 finished with failures,
2 usage error, 3 refused (schema too old or too new, index locked, database unreachable)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from dicomvault import __version__
from dicomvault.errors import DicomVaultError, ErrorCode

logger = logging.getLogger("dicomvault")

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3


def _setup_logging(verbose: bool, trace: bool) -> None:
    level = logging.DEBUG if trace else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=level,
        format="%(levelname).1s%(asctime)s.%(msecs)03d %(process)d %(name)s] %(message)s",
        datefmt="%m%d %H:%M:%S",
        stream=sys.stderr,
    )


@click.group()
@click.version_option(__version__, prog_name="dicomvault")
def main() -> None:
    """dicomvault: a DICOM archive server speaking Orthanc's REST API."""


@main.command()
@click.argument("config_path", metavar="CONFIG", required=False, type=click.Path(path_type=Path))
@click.option("--upgrade", is_flag=True, help="Upgrade the database schema if needed, then exit (as `upgrade CONFIG`).")
@click.option("--verbose", is_flag=True, help="Log at INFO level.")
@click.option("--trace", is_flag=True, help="Log at DEBUG level.")
def serve(config_path: Path | None, upgrade: bool, verbose: bool, trace: bool) -> None:
    """Run the server. CONFIG is an Orthanc-style JSON file or a folder of them (default: built-in
    defaults, storage in ./OrthancStorage, HTTP on port 8042)."""
    from dicomvault.config import load_config
    from dicomvault.server import StartupRefused, build, install_signal_logging

    _setup_logging(verbose, trace)
    if upgrade:
        sys.exit(_run_upgrade(config_path, backup=True))
    try:
        config = load_config(config_path)
        server = build(config, config_label=str(config_path) if config_path else "CONFIG")
    except StartupRefused as exc:
        logger.error("refusing to start: %s", exc)
        sys.exit(EXIT_REFUSED)
    except DicomVaultError as exc:
        logger.error("cannot start: %s", exc)
        sys.exit(EXIT_FAILURES)
    install_signal_logging()
    try:
        sock = server.bind_http()
        server.serve(sock)
    except StartupRefused as exc:
        logger.error("refusing to start: %s", exc)
        sys.exit(EXIT_REFUSED)
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


@main.command("upgrade")
@click.argument("config_path", metavar="CONFIG", type=click.Path(path_type=Path))
@click.option("--no-backup", is_flag=True, help="Do not keep a backup copy of the SQLite index before upgrading.")
@click.option("--no-progress", is_flag=True, help="No progress bar (log lines only).")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 100_000),
    default=512,
    show_default=True,
    help="Instances re-read per committed transaction (an interrupted upgrade resumes after the last one).",
)
@click.option("--verbose", is_flag=True, help="Log at INFO level.")
@click.option("--trace", is_flag=True, help="Log at DEBUG level.")
def upgrade_command(
    config_path: Path, no_backup: bool, no_progress: bool, batch_size: int, verbose: bool, trace: bool
) -> None:
    """Upgrade the index schema of CONFIG (or adopt the Orthanc index found in its IndexDirectory),
    report, and exit. Safe to interrupt: run it again to resume."""
    _setup_logging(verbose, trace)
    sys.exit(_run_upgrade(config_path, backup=not no_backup, progress=not no_progress, batch_size=batch_size))


def _run_upgrade(config_path: Path | None, backup: bool, progress: bool = True, batch_size: int = 512) -> int:
    from dicomvault.config import load_config
    from dicomvault.index.migrations import SchemaVersionError
    from dicomvault.upgrade.driver import upgrade

    label = str(config_path) if config_path else "CONFIG"
    try:
        config = load_config(config_path)
        outcome = upgrade(config, config_label=label, backup=backup, progress=progress, batch_size=batch_size)
    except SchemaVersionError as exc:
        logger.error("refusing to upgrade: %s", exc.describe(label))
        return EXIT_REFUSED
    except DicomVaultError as exc:
        if exc.code in (ErrorCode.DATABASE_UNAVAILABLE, ErrorCode.INCOMPATIBLE_DATABASE_VERSION):
            logger.error("refusing to upgrade: %s", exc.details)
            return EXIT_REFUSED
        logger.error("the upgrade failed: %s", exc.details)
        return EXIT_FAILURES
    except KeyboardInterrupt:
        logger.error("the upgrade was interrupted: run the same command again to resume it")
        return EXIT_FAILURES
    for line in outcome.render():
        click.echo(line)
    return EXIT_FAILURES if outcome.problems else EXIT_OK


@main.command("import")
@click.argument("paths", metavar="PATH...", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--to", "target", required=True, metavar="URL", help="Target server, e.g. http://user:password@host:8042/"
)
@click.option("--workers", type=click.IntRange(1, 64), default=4, show_default=True, help="Parallel uploads.")
@click.option("--resume", is_flag=True, help="Skip the files a previous run of the same import already sent.")
@click.option("--state", type=click.Path(path_type=Path), help="State file of --resume (default: beside the command).")
@click.option("--json", "json_report", is_flag=True, help="Print the final report as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--verbose", is_flag=True, help="Log at INFO level.")
def import_command(
    paths: tuple[Path, ...],
    target: str,
    workers: int,
    resume: bool,
    state: Path | None,
    json_report: bool,
    no_progress: bool,
    verbose: bool,
) -> None:
    """Send every DICOM file under PATH... (folders, zip files, Orthanc storage folders, compressed
    or not) to the Orthanc-compatible server at URL."""
    from dicomvault.replication.importer import run_import
    from dicomvault.replication.options import ImportOptions

    _setup_logging(verbose, False)
    options = ImportOptions(paths, target, workers, resume, state, json_report, not no_progress)
    sys.exit(run_import(options))


@main.command("replicate")
@click.argument("source", metavar="SRC")
@click.argument("target", metavar="DST")
@click.option("--workers", type=click.IntRange(1, 64), default=4, show_default=True, help="Parallel copies.")
@click.option("--follow", is_flag=True, help="Keep mirroring new instances until SIGINT/SIGTERM.")
@click.option(
    "--poll-interval",
    type=click.FloatRange(0.1, 3600),
    default=2.0,
    show_default=True,
    help="Seconds between polls with --follow.",
)
@click.option("--propagate-deletes", is_flag=True, help="Delete at DST what was deleted at SRC.")
@click.option("--copy-metadata", is_flag=True, help="Also copy user metadata, user attachments and labels.")
@click.option("--study-date", metavar="A-B", help="Only studies of this DICOM date range (YYYYMMDD-YYYYMMDD).")
@click.option("--modality", "modalities", multiple=True, metavar="M", help="Only series of this modality (repeatable).")
@click.option(
    "--resource", "resources", multiple=True, metavar="ID", help="Only this patient/study/series/instance (repeatable)."
)
@click.option("--state", type=click.Path(path_type=Path), help="State file (the source's /changes cursor).")
@click.option("--verify", is_flag=True, help="Compare only, copy nothing: exit 0 when DST has everything of SRC.")
@click.option("--md5", is_flag=True, help="With --verify: compare the MD5 of every file too.")
@click.option("--json", "json_report", is_flag=True, help="Print the final report as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--verbose", is_flag=True, help="Log at INFO level.")
def replicate_command(
    source: str,
    target: str,
    workers: int,
    follow: bool,
    poll_interval: float,
    propagate_deletes: bool,
    copy_metadata: bool,
    study_date: str | None,
    modalities: tuple[str, ...],
    resources: tuple[str, ...],
    state: Path | None,
    verify: bool,
    md5: bool,
    json_report: bool,
    no_progress: bool,
    verbose: bool,
) -> None:
    """Copy every instance of the Orthanc-compatible server SRC to DST (resumable), or mirror it
    with --follow, or compare the two with --verify."""
    from dicomvault.replication.options import ReplicateOptions
    from dicomvault.replication.replicator import run_replicate

    _setup_logging(verbose, False)
    if md5 and not verify:
        raise click.UsageError("--md5 goes with --verify")
    options = ReplicateOptions(
        source=source,
        target=target,
        workers=workers,
        follow=follow,
        poll_interval_s=poll_interval,
        propagate_deletes=propagate_deletes,
        copy_metadata=copy_metadata,
        study_date=study_date,
        modalities=modalities,
        resources=resources,
        state=state,
        verify=verify,
        md5=md5,
        json_report=json_report,
        progress=not no_progress,
    )
    sys.exit(run_replicate(options))


@main.command("copy-index")
@click.argument("from_config", metavar="FROM_CONFIG", type=click.Path(exists=True, path_type=Path))
@click.argument("to_config", metavar="TO_CONFIG", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "json_report", is_flag=True, help="Print the report as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--verbose", is_flag=True, help="Log at INFO level.")
def copy_index_command(from_config: Path, to_config: Path, json_report: bool, no_progress: bool, verbose: bool) -> None:
    """Copy the whole index of FROM_CONFIG (SQLite or PostgreSQL) into the empty index of TO_CONFIG
    (PostgreSQL or SQLite), keeping every id and number, and verify it. The storage area is not
    copied: both configurations should name the same one. No server may run on either meanwhile."""
    _setup_logging(verbose, False)
    sys.exit(_run_copy_index(from_config, to_config, json_report, progress=not no_progress))


def _run_copy_index(from_config: Path, to_config: Path, json_report: bool, progress: bool) -> int:
    import json

    from dicomvault.config import load_config
    from dicomvault.index.copy import CopyRefused, CopyUsageError, copy_index

    try:
        source, destination = load_config(from_config), load_config(to_config)
    except DicomVaultError as exc:
        logger.error("%s", exc.details)
        return EXIT_USAGE
    try:
        report = copy_index(source, destination, str(from_config), str(to_config), progress=progress)
    except CopyRefused as exc:
        logger.error("refusing to copy: %s", exc.details)
        return EXIT_REFUSED
    except CopyUsageError as exc:
        logger.error("%s", exc.details)
        return EXIT_USAGE
    except DicomVaultError as exc:
        logger.error("the copy failed: %s; the destination was left as it was", exc.details)
        return EXIT_FAILURES
    except KeyboardInterrupt:
        logger.error("the copy was interrupted: the destination was left as it was")
        return EXIT_FAILURES
    click.echo(json.dumps(report.to_json(), indent=2) if json_report else "\n".join(report.render()))
    return EXIT_OK if report.verified else EXIT_FAILURES


@main.command("check")
@click.argument("config_path", metavar="CONFIG", type=click.Path(exists=True, path_type=Path))
@click.option("--repair", is_flag=True, help="Remove orphan files and recompute the counters (never deletes a row).")
@click.option("--json", "json_report", is_flag=True, help="Print the report as one JSON object.")
@click.option("--verbose", is_flag=True, help="Log at INFO level.")
def check_command(config_path: Path, repair: bool, json_report: bool, verbose: bool) -> None:
    """Check the installation of CONFIG offline: every attachment has its file, of the recorded size
    and MD5; every stored file is referenced; the resource tree and counters are consistent. Each
    problem is named missing, corrupt or orphan. No server may run on the index meanwhile."""
    _setup_logging(verbose, False)
    sys.exit(_run_check(config_path, repair, json_report, progress=sys.stderr.isatty() and not json_report))


def _run_check(config_path: Path, repair: bool, json_report: bool, progress: bool) -> int:
    import json

    from dicomvault.check.command import CheckRefused, CheckUsageError, run_check
    from dicomvault.config import load_config

    try:
        config = load_config(config_path)
    except DicomVaultError as exc:
        logger.error("%s", exc.details)
        return EXIT_USAGE
    try:
        report = run_check(config, str(config_path), repair=repair, progress=progress)
    except CheckRefused as exc:
        logger.error("refusing to check: %s", exc.details)
        return EXIT_REFUSED
    except CheckUsageError as exc:
        logger.error("%s", exc.details)
        return EXIT_USAGE
    except DicomVaultError as exc:
        logger.error("the check could not finish: %s", exc.details)
        return EXIT_FAILURES
    except KeyboardInterrupt:
        logger.error("the check was interrupted")
        return EXIT_FAILURES
    click.echo(json.dumps(report.to_json(), indent=2) if json_report else "\n".join(report.render()))
    return EXIT_OK if report.ok else EXIT_FAILURES


if __name__ == "__main__":  # pragma: no cover
    main()
