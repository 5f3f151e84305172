"""The `dicomvault` command line. Each command parses its options, calls one function of the
core, and maps the outcome to the exit codes of DESIGN.md: 0 ok, 1 finished with failures,
2 usage error, 3 refused (schema too old or too new, index locked, database unreachable)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from dicomvault import __version__
from dicomvault.errors import DicomVaultError

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
        raise click.UsageError("--upgrade is not available in this version: the schema has a single version so far")
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


if __name__ == "__main__":  # pragma: no cover
    main()
