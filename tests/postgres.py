"""A throwaway PostgreSQL cluster for the tests: Debian's `postgresql` binaries, a cluster created in a
temporary folder, listening on 127.0.0.1 on a free port (20000-32000), removed at the end.

PostgreSQL refuses to run as root: when the tests run as root, the cluster belongs to the `postgres` user
(created by Debian's package) and its binaries run through `runuser`. Clients connect over TCP with a
password (scram-sha-256), as a real deployment would. Each test gets a database of its own
(`new_database()`), created from a template: cheap enough to run the whole index contract on PostgreSQL.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from tests.servers import free_port

SUPERUSER = "postgres"
PASSWORD = "vault-test-pw"
_counter = itertools.count()


def postgres_bin_dir() -> Path:
    """`/usr/lib/postgresql/<version>/bin` of the newest installed version."""
    base = Path("/usr/lib/postgresql")
    versions = sorted((p for p in base.glob("*/bin") if (p / "initdb").exists()), key=lambda p: int(p.parent.name))
    if not versions:
        raise RuntimeError("PostgreSQL is not installed (Debian package postgresql): run scripts/setup.sh --test")
    return versions[-1]


class PostgresCluster:
    """One cluster; `start()`, `stop(mode)`, `restart()` (to simulate losing the database), `destroy()`."""

    def __init__(self, fsync: bool = False) -> None:
        self.bin = postgres_bin_dir()
        self.as_root = os.geteuid() == 0
        # pytest's tmp_path base is mode 0700 to root: the cluster lives in its own mkdtemp folder.
        self.base = Path(tempfile.mkdtemp(prefix="dicomvault-pg-"))
        self.data = self.base / "data"
        self.socket_dir = self.base / "sock"
        self.socket_dir.mkdir()
        self.log = self.base / "postgres.log"
        self.port = 0
        self.fsync = fsync
        if self.as_root:
            owner = pwd.getpwnam("postgres")
            for path in (self.base, self.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        pwfile = self.base / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.as_root:
            os.chown(pwfile, pwd.getpwnam("postgres").pw_uid, -1)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            # Not the C locale on purpose: dicomvault must compare strings as SQLite does whatever
            # the database's default collation.
            "--locale=C.UTF-8",
        )
        pwfile.unlink()

    def _run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / tool), *args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        options = [
            "-c listen_addresses=127.0.0.1",
            f"-k {self.socket_dir}",
            "-c max_connections=200",
            "-c shared_buffers=64MB",
            f"-c fsync={'on' if self.fsync else 'off'}",
            "-c full_page_writes=off" if not self.fsync else "",
        ]
        for attempt in range(20):
            port = self.port or free_port()
            done = self._run(
                "pg_ctl",
                "-D",
                str(self.data),
                "-l",
                str(self.log),
                "-w",
                "-t",
                "60",
                "-o",
                " ".join([f"-p {port}", *options]),
                "start",
                check=False,
            )
            if done.returncode == 0:
                self.port = port
                return
            if self.port or attempt == 19:
                raise RuntimeError(f"PostgreSQL did not start: {done.stdout}{done.stderr}\n{self._log_tail()}")
            time.sleep(0.1)  # the port was taken meanwhile: another one

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    # -- clients --------------------------------------------------------------------------------
    def uri(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(self.uri(database), autocommit=True)

    def new_database(self) -> str:
        name = f"vault_{os.getpid()}_{next(_counter)}"
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 STRATEGY FILE_COPY')
        return name

    def drop_database(self, name: str) -> None:
        with contextlib.suppress(psycopg.Error), self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def section(self, database: str, **extra: Any) -> dict[str, Any]:
        """The `PostgreSQL` configuration section of Orthanc's plugin for `database`."""
        return {
            "EnableIndex": True,
            "Host": "127.0.0.1",
            "Port": self.port,
            "Database": database,
            "Username": SUPERUSER,
            "Password": PASSWORD,
            "Lock": False,
            **extra,
        }
