"""The SQL of metadata: the `Metadata` table (one value per resource and metadata type), with the
revision that protects a value against concurrent writers (`ETag` / `If-Match`).

Functions take the caller's `ReadTx` / `WriteTx`; the business rules (which types may be written,
revision checks, the change log) live in `ingest/metadata.py`, the names in `find/metadata.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

from dicomvault.index.transactions import ReadTx, WriteTx


@dataclass(frozen=True)
class StoredMetadata:
    """One metadata row: its type (number), its value and its revision."""

    type: int
    value: str
    revision: int


def list_metadata(tx: ReadTx, internal_id: int) -> list[StoredMetadata]:
    """Every metadata of a resource, by increasing type (the order Orthanc lists them in)."""
    rows = tx.fetch_all("SELECT type, value, revision FROM Metadata WHERE id = ? ORDER BY type", (internal_id,))
    return [StoredMetadata(int(mtype), str(value), int(revision)) for mtype, value, revision in rows]


def get_metadata(tx: ReadTx, internal_id: int, mtype: int) -> StoredMetadata | None:
    row = tx.fetch_one(
        "SELECT value, revision FROM Metadata WHERE id = ? AND type = ?",
        (internal_id, int(mtype)),
    )
    return None if row is None else StoredMetadata(int(mtype), str(row[0]), int(row[1]))


def put_metadata(tx: WriteTx, internal_id: int, mtype: int, value: str, revision: int) -> None:
    """Create or replace one value, recording `revision`."""
    tx.execute("DELETE FROM Metadata WHERE id = ? AND type = ?", (internal_id, int(mtype)))
    tx.execute(
        "INSERT INTO Metadata(id, type, value, revision) VALUES (?, ?, ?, ?)",
        (internal_id, int(mtype), value, revision),
    )


def delete_metadata(tx: WriteTx, internal_id: int, mtype: int) -> None:
    tx.execute("DELETE FROM Metadata WHERE id = ? AND type = ?", (internal_id, int(mtype)))
