"""Processes the tests run for real: `dicomvault serve` on a free port, and port allocation
(servers that need a number get one in 20000-32000, below Linux's ephemeral range)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

PORT_RANGE = (20000, 32000)


def free_port() -> int:
    """A port in 20000-32000 that is free right now (servers that need a number get one)."""
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


def terminate(proc: subprocess.Popen[Any], grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if the process is still there after `grace` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class RunningServer:
    """`dicomvault serve CONFIG` in a subprocess, on a free port."""

    def __init__(self, base: Path, overrides: dict[str, Any]) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
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
        if self.proc is not None:
            terminate(self.proc)
