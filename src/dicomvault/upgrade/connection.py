"""The connection an upgrade works on, whatever the backend: statements with `?` placeholders,
explicit transactions, and the backend's dialect. SQLite: the index file's connection (`BEGIN
IMMEDIATE`); PostgreSQL: a connection of its own whose transactions take the writers' advisory lock,
so that no server process could write between two batches even if one were started meanwhile.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import psycopg

from dicomvault.index.dialect import POSTGRESQL, SQLITE, Dialect
from dicomvault.index.postgresql import WRITER_LOCK, PostgreSQLCursor


class Rows(Protocol):
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class MigrationConnection(Protocol):
    dialect: Dialect
    label: str  # the index, for messages

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows: ...
    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> Any: ...
    def begin(self) -> None: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def close(self) -> None: ...


class SQLiteMigrationConnection:
    dialect = SQLITE

    def __init__(self, conn: sqlite3.Connection, label: str) -> None:
        self.conn = conn
        self.label = label

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        return self.conn.execute(sql, params)

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> Any:
        return self.conn.executemany(sql, params)

    def begin(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()


class PostgreSQLMigrationConnection:
    dialect = POSTGRESQL

    def __init__(self, conn: psycopg.Connection[Any], label: str) -> None:
        self.conn = conn
        self.label = label
        self._cursor = PostgreSQLCursor(conn, label)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        return self._cursor.execute(sql, params)

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> Any:
        return self._cursor.executemany(sql, params)

    def begin(self) -> None:
        self.conn.execute("BEGIN")
        self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITER_LOCK,))

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        if not self.conn.broken and self.conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()


def in_transaction(conn: MigrationConnection, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
    """Run some statements in one transaction of their own."""
    conn.begin()
    try:
        for sql, params in statements:
            conn.execute(sql, params)
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
