"""The PostgreSQL backend of the index, configured as Orthanc's PostgreSQL plugin is (the
`PostgreSQL` section: EnableIndex, Host, Port, Database, Username, Password or ConnectionUri, Lock...).

Connections: reads borrow a connection from a psycopg pool for one transaction (REPEATABLE READ,
READ ONLY: a consistent snapshot, as SQLite's WAL readers have); writes run on the writer thread's
own connection (`IndexWriter`). Several dicomvault processes may share one database (`"Lock": false`,
as with Orthanc): every write transaction first takes one transaction-scoped advisory lock, so the
writers of every process run one after the other, exactly as the single SQLite writer does, and the
index operations (written for one writer) stay correct: the same instance arriving at two processes
at once is stored once, a delete never races an insert into the same series, and change numbers are
given in commit order. What runs in parallel is everything else: parsing, hashing, writing files,
reading. Serialization failures and deadlocks (a user's own isolation settings, a DBA's session)
are retried by the writer with backoff; a lost connection fails the requests of the moment with a
clear "database unavailable" error and the next transaction reconnects.

`"Lock": true` (Orthanc's default) keeps a session advisory lock for the server's lifetime: a second
process on the same database refuses to start.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import psycopg
import psycopg.conninfo
import psycopg.errors
from psycopg_pool import ConnectionPool, PoolTimeout

from dicomvault.enums import GlobalProperty
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.index.dialect import POSTGRESQL
from dicomvault.index.migrations import SchemaVersionError, create_schema_in
from dicomvault.index.schema import SCHEMA_VERSION, parse_version
from dicomvault.index.transactions import ReadTx, WriteTx
from dicomvault.index.writer import CommitUncertain

logger = logging.getLogger(__name__)

# Advisory lock keys (64-bit): "dicomvault writer" and "dicomvault exclusive" in ASCII.
WRITER_LOCK = 0x6476_5F77_7269_7465
EXCLUSIVE_LOCK = 0x6476_5F65_7863_6C75
_CONNECT_TIMEOUT_S = 10


@dataclass(frozen=True)
class PostgreSQLSettings:
    """The `PostgreSQL` section, checked. `conninfo` holds the password: never logged."""

    conninfo: str = field(repr=False)
    label: str  # host:port/database, for messages
    lock: bool = True
    readers: int = 8
    connection_retries: int = 10
    retry_interval: float = 5.0

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> PostgreSQLSettings | None:
        """None when the section does not enable the index (`EnableIndex` false or absent)."""
        if not section.get("EnableIndex", False):
            return None
        if section.get("EnableStorage", False):
            raise DicomVaultError(
                ErrorCode.BAD_PARAMETER_TYPE,
                'PostgreSQL "EnableStorage": dicomvault keeps the files in the storage area (StorageDirectory or '
                "AwsS3Storage), not in PostgreSQL: set EnableStorage to false",
            )
        params: dict[str, Any] = {"connect_timeout": _CONNECT_TIMEOUT_S, "application_name": "dicomvault"}
        uri = section.get("ConnectionUri")
        if uri:
            try:
                parsed = psycopg.conninfo.conninfo_to_dict(str(uri))
            except psycopg.ProgrammingError as exc:
                reason = str(exc).strip()
                raise DicomVaultError(
                    ErrorCode.BAD_PARAMETER_TYPE,
                    f'PostgreSQL "ConnectionUri" is not a valid connection string: {reason}',
                ) from None
            params = {**params, **parsed}
        else:
            params.update(
                host=str(section.get("Host", "localhost")),
                port=int(section.get("Port", 5432)),
                dbname=str(section.get("Database", "")) or None,
                user=str(section.get("Username", "")) or None,
                password=str(section.get("Password", "")) or None,
                sslmode="require" if section.get("EnableSsl", False) else "prefer",
            )
        params = {k: v for k, v in params.items() if v is not None}
        label = f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname', '')}"
        return cls(
            conninfo=psycopg.conninfo.make_conninfo(**params),
            label=f"PostgreSQL index {label}",
            lock=bool(section.get("Lock", True)),
            readers=max(1, int(section.get("IndexConnectionsCount", 8))),
            connection_retries=max(0, int(section.get("MaximumConnectionRetries", 10))),
            retry_interval=max(0.0, float(section.get("ConnectionRetryInterval", 5))),
        )


# -- SQL written for SQLite, as PostgreSQL reads it ---------------------------------------------------

_TOKENS = re.compile(r"'(?:[^']|'')*'|\?|%")


@lru_cache(maxsize=4096)
def translate(sql: str) -> str:
    """`?` placeholders become `%s`, a literal `%` becomes `%%` (psycopg's syntax); string literals
    are left alone."""

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        return "%s" if token == "?" else "%%" if token == "%" else token

    return _TOKENS.sub(replace, sql)


def unavailable(label: str, exc: BaseException) -> DicomVaultError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DicomVaultError(
        ErrorCode.DATABASE_UNAVAILABLE,
        f"the {label} is unreachable ({reason}); requests fail until it is back",
    )


def _is_transient(exc: BaseException) -> bool:
    """A conflict that re-running the whole transaction resolves."""
    return isinstance(exc, psycopg.errors.SerializationFailure | psycopg.errors.DeadlockDetected)


class PostgreSQLCursor:
    """The `Executor` the index operations use: SQL translated, connection errors made clear."""

    def __init__(self, conn: psycopg.Connection[Any], label: str) -> None:
        self._conn = conn
        self._label = label

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        try:
            return self._conn.execute(translate(sql), params if params else None)
        except psycopg.OperationalError as exc:
            if _is_transient(exc) or not self._conn.broken:
                raise
            raise unavailable(self._label, exc) from exc

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> None:
        rows = list(params)
        if not rows:
            return
        try:
            with self._conn.cursor() as cur:
                cur.executemany(translate(sql), rows)
        except psycopg.OperationalError as exc:
            if _is_transient(exc) or not self._conn.broken:
                raise
            raise unavailable(self._label, exc) from exc


def connect(settings: PostgreSQLSettings) -> psycopg.Connection[Any]:
    """A connection in autocommit mode (transactions are explicit)."""
    try:
        return psycopg.connect(settings.conninfo, autocommit=True)
    except psycopg.OperationalError as exc:
        raise unavailable(settings.label, exc) from exc


def connect_with_retries(settings: PostgreSQLSettings) -> psycopg.Connection[Any]:
    """At start-up: as Orthanc's plugin, `MaximumConnectionRetries` more attempts, every
    `ConnectionRetryInterval` seconds, then a refusal that says what to check."""
    attempts = settings.connection_retries + 1
    for attempt in range(1, attempts + 1):
        try:
            return connect(settings)
        except DicomVaultError as exc:
            if attempt == attempts:
                raise DicomVaultError(
                    ErrorCode.DATABASE_UNAVAILABLE,
                    f"{exc.details} (gave up after {attempts} attempt(s): check Host, Port, Database, Username "
                    'and Password in the "PostgreSQL" section, and that the server accepts connections)',
                ) from exc
            logger.warning(
                "cannot connect to the %s (attempt %d of %d), retrying in %.0f s: %s",
                settings.label,
                attempt,
                attempts,
                settings.retry_interval,
                exc.details,
            )
            time.sleep(settings.retry_interval)
    raise AssertionError("unreachable")


class _Reader:
    """One read transaction at a time, on a connection borrowed from the pool for its duration."""

    def __init__(self, backend: PostgreSQLBackend) -> None:
        self._backend = backend
        self._conn: psycopg.Connection[Any] | None = None

    def begin(self) -> ReadTx:
        conn = self._backend.borrow()
        try:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        except psycopg.OperationalError as exc:
            self._backend.give_back(conn)
            raise unavailable(self._backend.settings.label, exc) from exc
        self._conn = conn
        return ReadTx(PostgreSQLCursor(conn, self._backend.settings.label), POSTGRESQL)

    def end(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            if not conn.broken:
                conn.execute("ROLLBACK")  # read only: nothing to commit
        except psycopg.Error:
            logger.debug("ending a read transaction failed", exc_info=True)
        finally:
            self._backend.give_back(conn)

    def close(self) -> None:
        self.end()


class _Writer:
    """The writer thread's session: its own connection, reconnected when lost."""

    def __init__(self, backend: PostgreSQLBackend) -> None:
        self._backend = backend
        self._conn: psycopg.Connection[Any] | None = None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
                logger.warning("reconnecting the index writer to the %s", self._backend.settings.label)
            self._conn = self._backend.connect()
        return self._conn

    def begin(self) -> WriteTx:
        conn = self._connection()
        try:
            conn.execute("BEGIN")
            # Writers of every process, one after the other (see the module docstring).
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
        except psycopg.OperationalError as exc:
            if _is_transient(exc) or not conn.broken:
                raise
            raise unavailable(self._backend.settings.label, exc) from exc
        return WriteTx(PostgreSQLCursor(conn, self._backend.settings.label), POSTGRESQL)

    def _plain(self, sql: str) -> None:
        self._cursor().execute(sql)

    def _cursor(self) -> PostgreSQLCursor:
        assert self._conn is not None
        return PostgreSQLCursor(self._conn, self._backend.settings.label)

    def savepoint(self) -> None:
        self._plain("SAVEPOINT job")

    def release(self) -> None:
        self._plain("RELEASE SAVEPOINT job")

    def rollback_to_savepoint(self) -> None:
        self._plain("ROLLBACK TO SAVEPOINT job")

    def commit(self) -> None:
        assert self._conn is not None
        try:
            self._conn.execute("COMMIT")
        except psycopg.OperationalError as exc:
            if _is_transient(exc) or not self._conn.broken:
                raise
            raise CommitUncertain(
                ErrorCode.DATABASE_UNAVAILABLE,
                f"the {self._backend.settings.label} was lost during a commit ({exc}); its outcome is unknown",
            ) from exc

    def rollback(self) -> None:
        if self._conn is None or self._conn.closed or self._conn.broken:
            return
        if self._conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self._conn.execute("ROLLBACK")

    def is_serialization_failure(self, exc: BaseException) -> bool:
        return _is_transient(exc)

    def translate_error(self, exc: BaseException) -> BaseException:
        """The database server's disk full (SQLSTATE 53100) is Orthanc's FullStorage, not an internal error."""
        if isinstance(exc, psycopg.errors.DiskFull):
            label = self._backend.description
            return DicomVaultError(ErrorCode.FULL_STORAGE, f"the disk of the {label} is full: {exc}")
        return exc

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def schema_state(conn: psycopg.Connection[Any], label: str) -> tuple[int | None, int | None] | None:
    """(version, upgrading_to) of the dicomvault index in the database, None for an empty database;
    a database holding anything else is refused."""
    tables = {
        r[0]
        for r in conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
    }
    if "globalproperties" not in tables:
        if tables:
            raise DicomVaultError(
                ErrorCode.INCOMPATIBLE_DATABASE_VERSION,
                f"the {label} holds other tables ({', '.join(sorted(tables)[:5])}...) and no dicomvault index: give "
                "dicomvault a database of its own",
            )
        return None
    version = ReadTx(PostgreSQLCursor(conn, label), POSTGRESQL).global_property(
        GlobalProperty.DICOMVAULT_SCHEMA_VERSION
    )
    found, upgrading_to = parse_version(version)
    if found is None and upgrading_to is None:
        raise DicomVaultError(
            ErrorCode.INCOMPATIBLE_DATABASE_VERSION,
            f"the {label} has a GlobalProperties table but is not a dicomvault index (Orthanc's own PostgreSQL "
            "index?): give dicomvault a database of its own",
        )
    return found, upgrading_to


def claim_database(conn: psycopg.Connection[Any], label: str) -> None:
    """For a maintenance command (upgrade, copy-index): take the exclusive lock for this session
    (refused if a server started with `"Lock": true` holds it) and check that no other dicomvault
    session is connected (servers sharing the database with `"Lock": false`)."""
    locked = conn.execute("SELECT pg_try_advisory_lock(%s)", (EXCLUSIVE_LOCK,)).fetchone()
    if not (locked and locked[0]):
        raise DicomVaultError(
            ErrorCode.DATABASE_UNAVAILABLE,
            f'the {label} is in use by a dicomvault server ("Lock": true): stop it first',
        )
    others = conn.execute(
        "SELECT pid, coalesce(host(client_addr), 'local socket') FROM pg_stat_activity "
        "WHERE datname = current_database() AND application_name = 'dicomvault' AND pid <> pg_backend_pid()"
    ).fetchall()
    if others:
        clients = ", ".join(sorted({str(addr) for _, addr in others}))
        raise DicomVaultError(
            ErrorCode.DATABASE_UNAVAILABLE,
            f"the {label} is in use: {len(others)} dicomvault session(s) connected from {clients} (servers "
            'sharing it with "Lock": false): stop every server using this database first',
        )


class PostgreSQLBackend:
    """Connects (retrying as Orthanc's `MaximumConnectionRetries` / `ConnectionRetryInterval` say),
    creates or checks the schema, and lends connections."""

    def __init__(self, settings: PostgreSQLSettings, create: bool = True) -> None:
        self.settings = settings
        self.description = settings.label
        self._lock_conn: psycopg.Connection[Any] | None = None
        conn = self._connect_with_retries()
        try:
            self._prepare(conn, create)
            if settings.lock:
                self._take_exclusive_lock()
        finally:
            conn.close()
        self._pool = ConnectionPool(
            settings.conninfo,
            min_size=1,
            max_size=settings.readers,
            kwargs={"autocommit": True},
            check=ConnectionPool.check_connection,
            name="dicomvault-readers",
            open=True,
            timeout=5.0,
        )
        self._closed = threading.Event()

    # -- connections -------------------------------------------------------------------------
    def connect(self) -> psycopg.Connection[Any]:
        return connect(self.settings)

    def _connect_with_retries(self) -> psycopg.Connection[Any]:
        return connect_with_retries(self.settings)

    def borrow(self) -> psycopg.Connection[Any]:
        try:
            return self._pool.getconn()
        except (PoolTimeout, psycopg.OperationalError) as exc:
            raise unavailable(self.settings.label, exc) from exc

    def give_back(self, conn: psycopg.Connection[Any]) -> None:
        self._pool.putconn(conn)

    def _take_exclusive_lock(self) -> None:
        conn = self.connect()
        locked = conn.execute("SELECT pg_try_advisory_lock(%s)", (EXCLUSIVE_LOCK,)).fetchone()
        if not (locked and locked[0]):
            conn.close()
            raise DicomVaultError(
                ErrorCode.DATABASE_UNAVAILABLE,
                f'the {self.settings.label} is in use by another server process ("Lock": true): stop it, or set '
                '"Lock": false in the "PostgreSQL" section of every server sharing this database',
            )
        self._lock_conn = conn

    # -- schema ------------------------------------------------------------------------------
    def _prepare(self, conn: psycopg.Connection[Any], create: bool) -> None:
        state = schema_state(conn, self.settings.label)
        if state is None:
            if not create:
                raise DicomVaultError(ErrorCode.INEXISTENT_FILE, f"no dicomvault index in the {self.settings.label}")
            logger.info("creating a new index (schema %d) in the %s", SCHEMA_VERSION, self.settings.label)
            self.create(conn, SCHEMA_VERSION)
            return
        found, upgrading_to = state
        if found != SCHEMA_VERSION:
            raise SchemaVersionError(self.settings.label, found, upgrading_to)

    def create(self, conn: psycopg.Connection[Any], version: int) -> None:
        """Create schema `version` in an empty database, in one transaction (two processes starting
        on a new database at once: the second waits, then finds the tables)."""
        conn.execute("BEGIN")
        try:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))
            exists = conn.execute(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() "
                "AND table_name = 'globalproperties'"
            ).fetchone()
            if exists is None:
                create_schema_in(PostgreSQLCursor(conn, self.settings.label), version, POSTGRESQL)
            conn.execute("COMMIT")
        except BaseException:
            if not conn.broken:
                conn.execute("ROLLBACK")
            raise

    # -- the Backend protocol ------------------------------------------------------------------
    def open_reader(self) -> _Reader:
        return _Reader(self)

    def open_writer(self) -> _Writer:
        return _Writer(self)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._pool.close()
        if self._lock_conn is not None:
            self._lock_conn.close()
            self._lock_conn = None
