"""The few places where the SQL of the index operations differs between backends.

The SQL of every operation is written once, for SQLite, with `?` placeholders; the PostgreSQL
backend rewrites the placeholders itself (`index/postgresql.py`). What cannot be rewritten
mechanically is said here, once per backend:

- case-insensitive comparisons: SQLite's `COLLATE NOCASE` folds ASCII letters only. PostgreSQL
  gets `lower()` under the "C" collation, which folds exactly the same letters whatever the
  database's locale (its text columns are declared `COLLATE "C"`, so that ordering and ranges are
  byte-wise, as in SQLite). SQLite's LIKE ignores ASCII case; PostgreSQL's does not;
- "no limit": SQLite's `LIMIT -1`, PostgreSQL's `LIMIT NULL`;
- the highest number a log table ever gave (`sqlite_sequence`, a counter table in PostgreSQL);
- SQLite's `CROSS JOIN ... ON`, which fixes the join order, is a plain join in PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Dialect:
    name: str
    no_limit: int | None
    forced_join: str  # a join whose left side the planner must start from (when it honours it)

    def nocase_compare(self, column: str, op: str, mark: str) -> str:
        """`column op value`, ignoring ASCII case (`op` is =, <=, >=)."""
        if self.name == "sqlite":
            return f"{column} {op} {mark} COLLATE NOCASE"
        return f'lower({column}) {op} lower({mark} COLLATE "C")'

    def nocase_in(self, column: str, marks: list[str]) -> str:
        if self.name == "sqlite":
            return f"{column} COLLATE NOCASE IN ({', '.join(marks)})"
        folded = ", ".join(f'lower({m} COLLATE "C")' for m in marks)
        return f"lower({column}) IN ({folded})"

    def like_nocase(self, column: str, mark: str) -> str:
        """SQL LIKE ignoring ASCII case, with `\\` as the escape character."""
        if self.name == "sqlite":
            return f"{column} LIKE {mark} ESCAPE '\\'"
        return f"lower({column}) LIKE lower({mark} COLLATE \"C\") ESCAPE '\\'"

    def bind_bytes(self, value: bytes, params: list[Any]) -> str:
        """A placeholder for a value that is not valid UTF-8: SQLite compares its bytes (as
        Orthanc's SQLite does); PostgreSQL text cannot hold it, so it matches nothing."""
        params.append(value if self.name == "sqlite" else None)
        return "CAST(? AS TEXT)"

    def sequence_value_sql(self, table: str) -> tuple[str, tuple[Any, ...]]:
        """The statement reading the highest number `table` ever gave (0 when none)."""
        if self.name == "sqlite":
            return "SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)
        return "SELECT value FROM Sequences WHERE name = ?", (table.lower(),)


SQLITE = Dialect("sqlite", no_limit=-1, forced_join="CROSS JOIN")
POSTGRESQL = Dialect("postgresql", no_limit=None, forced_join="JOIN")
