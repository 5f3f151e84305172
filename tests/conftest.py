"""Shared fixtures: configurations in temporary folders, in-process servers (one worker-process
pool per test session), servers over a real socket (the `dicomvault serve` command), and ports."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from dicomvault.config import Config, config_from_mapping
from dicomvault.server import Server, build, default_executor

REPO = Path(__file__).resolve().parent.parent
PORT_RANGE = (20000, 32000)


def free_port() -> int:
    """A port in 20000-32000 that is free right now (servers that need a number get one)."""
    import random

    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for _ in range(200):
        port = rng.randrange(*PORT_RANGE)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found in 20000-32000")


@pytest.fixture(scope="session")
def worker_pool() -> Iterator[Executor]:
    pool = default_executor(2)
    yield pool
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    def factory(**overrides: Any) -> Config:
        data: dict[str, Any] = {
            "StorageDirectory": str(tmp_path / "storage"),
            "IndexDirectory": str(tmp_path / "storage"),
            "HttpPort": 0,
            "DicomPort": 0,
        }
        data.update(overrides)
        return config_from_mapping(data, source="<test>")

    return factory


@pytest.fixture
def make_server(make_config: Callable[..., Config], worker_pool: Executor) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def factory(**overrides: Any) -> Server:
        server = build(make_config(**overrides), executor=worker_pool)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.close()


@pytest.fixture
def server(make_server: Callable[..., Server]) -> Server:
    return make_server()


@pytest.fixture
def client(server: Server) -> Iterator[TestClient]:
    with TestClient(server.app(), raise_server_exceptions=False) as c:  # type: ignore[arg-type]
        yield c


class RunningServer:
    """`dicomvault serve CONFIG` in a subprocess, on a free port."""

    def __init__(self, base: Path, overrides: dict[str, Any]) -> None:
        self.base = base
        self.port = free_port()
        self.config_path = base / "config.json"
        data = {
            "Name": "dicomvault-test",
            "StorageDirectory": str(base / "storage"),
            "HttpPort": self.port,
            "DicomPort": free_port(),
            **overrides,
        }
        self.config_path.write_text(json.dumps(data, indent=2))
        self.log_path = base / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dicomvault", "serve", str(self.config_path), "--verbose"],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dicomvault exited with {self.proc.returncode}: {self.log_path.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/system", timeout=1.0).status_code in (200, 401):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"dicomvault did not answer in {timeout}s: {self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def running_server(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    started: list[RunningServer] = []

    def factory(**overrides: Any) -> RunningServer:
        srv = RunningServer(tmp_path / f"srv{len(started)}", overrides)
        srv.base.mkdir(parents=True, exist_ok=True)
        started.append(srv)
        srv.start()
        return srv

    yield factory
    for srv in started:
        srv.stop()
