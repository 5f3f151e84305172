"""The real Orthanc 1.10.1 (Debian's `/usr/sbin/Orthanc`) as a test peer: started in a temporary
folder with a configuration written here, on ports from `tests.servers.free_port()`, and stopped
with SIGTERM. Also owns the cheap reset shared by every server the tests talk to over REST
(delete every patient instead of restarting), and reading the tail of a server's log.

Orthanc takes 3-4 s to stop, so callers share one instance per test session (or xdist worker).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tests.servers import free_port

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")

# What Orthanc prints when one of its two ports is taken; only then is a retry worth it.
_BIND_FAILURE_MARKERS = ("already in use", "cannot bind", "Address already in use")


def orthanc_available() -> bool:
    """Whether the Debian package's executable is installed here."""
    return ORTHANC_BINARY.is_file() and os.access(ORTHANC_BINARY, os.X_OK)


def missing_orthanc_reason() -> str:
    return (
        f"{ORTHANC_BINARY} is missing: install Debian's orthanc 1.10.1 package "
        "(scripts/setup.sh --test) to run the tests against the real Orthanc"
    )


def log_tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file (empty if it does not exist yet)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class OrthancError(RuntimeError):
    """Orthanc could not be started (the message carries the tail of its log)."""


class OrthancServer:
    """One Orthanc process with its own storage, index, configuration and log under `base`.

    `overrides` are configuration keys added to (or replacing) the defaults written here: no
    plugins, loopback access only, no authentication, no jobs saved between runs. `env` adds
    environment variables to Orthanc's (e.g. `TCP_NODELAY=1`, read by its DCMTK network layer).
    """

    def __init__(
        self, base: Path, overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        self.base = base
        self.overrides = dict(overrides or {})
        self.env = dict(env or {})
        self.config_path = base / "orthanc.json"
        self.log_path = base / "orthanc.log"
        self.http_port = 0
        self.dicom_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def configuration(self) -> dict[str, Any]:
        """The configuration written for the current ports."""
        storage = self.base / "storage"
        data: dict[str, Any] = {
            "Name": "orthanc-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            # Debian's packaged configuration loads /usr/share/orthanc/plugins; ours loads none.
            "Plugins": [],
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SaveJobs": False,
        }
        data.update(self.overrides)
        return data

    def start(self, timeout: float = 30.0, attempts: int = 5) -> None:
        """Start Orthanc and wait until `GET /system` answers; new ports if one was taken."""
        if not orthanc_available():
            raise OrthancError(missing_orthanc_reason())
        self.base.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, attempts + 1):
            self.http_port = free_port()
            self.dicom_port = free_port()
            while self.dicom_port == self.http_port:
                self.dicom_port = free_port()
            self.config_path.write_text(json.dumps(self.configuration(), indent=2))
            with open(self.log_path, "ab") as log:
                log.write(f"--- start attempt {attempt}: http {self.http_port}, dicom {self.dicom_port}\n".encode())
                log.flush()
                self.proc = subprocess.Popen(
                    [str(ORTHANC_BINARY), str(self.config_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.base,
                    env={**os.environ, **self.env},
                )
            if self._wait_ready(timeout):
                return
            tail = log_tail(self.log_path)
            if self.proc.poll() is None:
                self.stop()
                raise OrthancError(f"Orthanc did not answer GET /system within {timeout}s; log tail:\n{tail}")
            if not any(marker in tail for marker in _BIND_FAILURE_MARKERS):
                raise OrthancError(f"Orthanc exited with status {self.proc.returncode}; log tail:\n{tail}")
        raise OrthancError(f"Orthanc could not bind its ports after {attempts} attempts:\n{log_tail(self.log_path)}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/system", timeout=1.0).status_code in (200, 401):
                    return True
            time.sleep(0.05)
        return False

    def terminate(self) -> None:
        """Send SIGTERM without waiting (stopping takes Orthanc 3-4 s: stop several at once)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 20.0) -> None:
        """Wait for the end of the process; SIGKILL it if it is still there after `timeout` s."""
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL if Orthanc has not stopped after `timeout` seconds."""
        self.terminate()
        self.wait(timeout)

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> OrthancServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def delete_all_patients(client: httpx.Client) -> None:
    """Empty an Orthanc-compatible server over REST: `DELETE /patients/{id}` for each patient.

    Much cheaper than a restart; instances without a patient cannot exist, so this empties it all.
    """
    listing = client.get("/patients")
    listing.raise_for_status()
    for patient in listing.json():
        answer = client.delete(f"/patients/{patient}")
        if answer.status_code not in (200, 404):
            raise RuntimeError(f"DELETE /patients/{patient} answered {answer.status_code}: {answer.text}")
    remaining = client.get("/patients").json()
    if remaining:
        raise RuntimeError(f"patients left after the reset: {remaining}")
