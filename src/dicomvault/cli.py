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


if __name__ == "__main__":  # pragma: no cover
    main()
