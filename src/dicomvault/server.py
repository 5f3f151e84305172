"""The composition root: `build(config) -> Server` wires storage, index, ingest and front ends;
`Server.serve()` runs the HTTP server until stopped.

Start-up refusals (exit code 3 in the CLI) happen here, before anything is created: an Orthanc
index without ours (an older schema: adopt it with `dicomvault upgrade`), a schema of another
version, an index locked by another process.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dicomvault.config import Config
from dicomvault.context import ServerContext
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.index.backends import open_backend, postgresql_settings
from dicomvault.index.database import Index
from dicomvault.index.migrations import SchemaVersionError
from dicomvault.index.recycling import StorageLimits, enforce
from dicomvault.index.sqlite import orthanc_index_only
from dicomvault.index.transactions import WriteTx
from dicomvault.ingest.pool import WorkerPool
from dicomvault.ingest.stability import StabilityMonitor
from dicomvault.ingest.store import Ingest, now_iso
from dicomvault.ingest.worker import StorageSettings
from dicomvault.jobs.engine import JobsEngine
from dicomvault.model import FileInfo
from dicomvault.network.modalities import Modalities
from dicomvault.network.queries import QueryRegistry
from dicomvault.rest.http_timeouts import request_deadline_protocol
from dicomvault.storage.accessor import CompressionPolicy, StorageAccessor
from dicomvault.storage.factory import area_settings, open_storage_area
from dicomvault.upgrade.rollback import RollbackWatch

if TYPE_CHECKING:
    from dicomvault.network.scp import DicomServer

logger = logging.getLogger(__name__)


class StartupRefused(DicomVaultError):
    """A refusal to start that the operator must act on (CLI exit code 3)."""


def _check_not_orthanc_only(config: Config, config_label: str) -> None:
    if postgresql_settings(config) is not None:
        return  # the index is not a file in IndexDirectory
    refusal = orthanc_index_only(config.index_directory, config_label)
    if refusal is not None:
        raise StartupRefused(refusal.code, refusal.details)


@dataclass
class Server:
    context: ServerContext
    workers: WorkerPool
    owns_workers: bool = True
    _closed: bool = field(default=False, repr=False)
    # The DICOM server (C-ECHO/STORE/FIND/MOVE/GET), while `serve()` runs it.
    dicom: DicomServer | None = field(default=None, repr=False)

    @property
    def config(self) -> Config:
        return self.context.config

    def app(self) -> object:
        from dicomvault.rest.app import create_app

        return create_app(self.context)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.dicom is not None:
            self.dicom.close()  # no new C-STORE reaches the ingest being closed below
            self.dicom = None
        self.context.jobs.close()  # running jobs pause at their next step
        if self.context.stability is not None:
            self.context.stability.close()  # its passes write to the index
        self.context.ingest.close()
        if self.owns_workers:
            self.workers.shutdown()
        self.context.index.close()

    def bind_http(self, host: str = "0.0.0.0", port: int | None = None) -> socket.socket:
        port = self.config.http_port if port is None else port
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit TCP_NODELAY from the listening socket on Linux; without it,
        # a response written in two parts waits ~40 ms for the client's delayed ACK (Nagle).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise StartupRefused(
                ErrorCode.HTTP_PORT_IN_USE, f"cannot listen on HTTP port {port}: {exc.strerror}"
            ) from exc
        sock.listen(1024)
        sock.set_inheritable(True)
        return sock

    def start_dicom(self, host: str = "0.0.0.0", port: int | None = None) -> int:
        """Start the DICOM server (port None: DicomPort); returns its port. A port in use is a
        start-up refusal."""
        from dicomvault.network.scp import DicomServer

        if self.dicom is None:
            self.dicom = DicomServer(self.context)
        try:
            return self.dicom.start(host, port)
        except DicomVaultError as exc:
            if exc.code is ErrorCode.DICOM_PORT_IN_USE:
                raise StartupRefused(exc.code, exc.details) from exc
            raise

    def serve(self, sock: socket.socket | None = None) -> None:
        """Run the HTTP server (and the DICOM server if `DicomServerEnabled`) until SIGINT/SIGTERM."""
        import anyio.to_thread
        import uvicorn

        sock = sock or self.bind_http()
        if self.config.dicom_server_enabled and self.dicom is None:
            try:
                self.start_dicom()
            except BaseException:
                sock.close()
                raise
        port = sock.getsockname()[1]
        uv_config = uvicorn.Config(
            self.app(),  # type: ignore[arg-type]
            loop="uvloop",
            http=request_deadline_protocol(self.config.http_request_timeout),
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_keep_alive=30,
            # The client address is the TCP peer's, as in Orthanc: RemoteAccessAllowed and the
            # RemoteIP metadata never trust an X-Forwarded-For header (uvicorn would, from 127.0.0.1).
            proxy_headers=False,
        )
        server = uvicorn.Server(uv_config)
        storage = self.context.accessor.area.describe()
        logger.warning("dicomvault has started: HTTP on port %d, storage %s", port, storage)
        threads = self.config.http_threads_count

        async def run() -> None:
            # Orthanc's HttpThreadsCount bounds the requests processed at once; here the async
            # handlers are cheap and the blocking work (index, files) runs in anyio's thread pool,
            # so that pool's limiter is what the key sizes.
            anyio.to_thread.current_default_thread_limiter().total_tokens = threads
            await server.serve(sockets=[sock])

        try:
            asyncio.run(run())
        finally:
            sock.close()
            if self.dicom is not None:
                self.dicom.close()
                self.dicom = None
            logger.warning("dicomvault has stopped")


def build(
    config: Config,
    workers: WorkerPool | None = None,
    config_label: str | None = None,
    clock: Callable[[], float] = time.time,
) -> Server:
    """Create every service for `config`. The caller owns the result and must `close()` it.
    `clock` is for tests (a fake clock drives timestamps and stability)."""
    _check_not_orthanc_only(config, config_label or config.source)
    try:
        area_config = area_settings(config)
        area = open_storage_area(area_config)
    except DicomVaultError as exc:
        if config.aws_s3_storage is None:
            raise
        raise StartupRefused(exc.code, exc.details) from exc  # as an unreachable database: exit 3
    policy = CompressionPolicy(
        enabled=config.storage_compression,
        level=config.storage_compression_level,
        store_md5=config.store_md5_for_attachments,
    )
    accessor = StorageAccessor(area, policy)
    try:
        index = Index(open_backend(config))
    except SchemaVersionError as exc:
        raise StartupRefused(exc.code, exc.describe(config_label or config.source)) from exc
    except DicomVaultError as exc:
        if exc.code in (ErrorCode.INCOMPATIBLE_DATABASE_VERSION, ErrorCode.DATABASE_UNAVAILABLE):
            raise StartupRefused(exc.code, exc.details) from exc
        raise
    settings = StorageSettings(
        area=area_config,
        compression=policy,
        default_encoding=str(config.default_encoding),
    )
    owns = workers is None
    pool = workers or WorkerPool()
    limits = StorageLimits.from_config(
        config.maximum_storage_size, config.maximum_patient_count, config.maximum_storage_mode
    )
    stability = StabilityMonitor(index, config.stable_age, clock)
    ingest = Ingest(
        index,
        accessor,
        settings,
        pool,
        overwrite=config.overwrite_instances,
        limits=limits,
        clock=clock,
        after_store=stability.instance_stored,
    )
    RollbackWatch.install(index, accessor)
    _recycle_at_start(index, accessor, limits)
    modalities = Modalities(
        config.dicom_modalities,
        strict_aet=config.strict_aet_comparison,
        check_host=config.dicom_check_modality_host,
        index=index if config.dicom_modalities_in_database else None,
    )
    jobs = JobsEngine(config.concurrent_jobs, config.jobs_history_size, clock)
    context = ServerContext(
        config=config,
        index=index,
        accessor=accessor,
        ingest=ingest,
        jobs=jobs,
        modalities=modalities,
        queries=QueryRegistry(config.query_retrieve_size),
        clock=clock,
        stability=stability,
    )
    stability.start()
    return Server(context=context, workers=pool, owns_workers=owns)


def _recycle_at_start(index: Index, accessor: StorageAccessor, limits: StorageLimits) -> None:
    """As Orthanc: limits lowered since the last run are enforced before serving."""
    if not limits.active:
        return
    if limits.reject:
        return  # Reject mode never deletes: it only refuses new instances

    def write(tx: WriteTx) -> list[FileInfo]:
        return enforce(tx, limits, None, now_iso())

    try:
        files = index.write(write)
    except DicomVaultError as exc:
        logger.warning("cannot bring the archive within its limits at start-up: %s", exc)
        return
    for info in files:
        accessor.remove(info)


def install_signal_logging() -> None:
    """SIGTERM behaves as SIGINT (uvicorn's graceful shutdown), as service managers expect."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
