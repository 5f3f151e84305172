"""Protected patients and recycling (`MaximumStorageSize`, `MaximumPatientCount`,
`MaximumStorageMode`).

As Orthanc: patients are ordered by their last reception (PatientRecyclingOrder); when storing
an instance would exceed a limit, the oldest unprotected patients other than the instance's own
are deleted in the same transaction until it fits. If nothing more can be deleted, or in
`Reject` mode, the store fails with "The file storage is full" and the transaction (hence the new
instance) is rolled back. Sizes are the stored (compressed) sizes, read from the running totals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from dicomvault.enums import ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.index.transactions import ReadTx, WriteTx
from dicomvault.model import FileInfo, ResourceRef

logger = logging.getLogger(__name__)

MB = 1024 * 1024


@dataclass(frozen=True)
class StorageLimits:
    maximum_size: int = 0  # bytes; 0 = unlimited
    maximum_patients: int = 0  # 0 = unlimited
    reject: bool = False  # MaximumStorageMode "Reject": refuse instead of recycling

    @classmethod
    def from_config(cls, maximum_storage_size_mb: int, maximum_patient_count: int, mode: str) -> StorageLimits:
        return cls(maximum_storage_size_mb * MB, maximum_patient_count, mode.strip().lower() == "reject")

    @property
    def active(self) -> bool:
        return self.maximum_size > 0 or self.maximum_patients > 0


def storage_totals(tx: ReadTx) -> tuple[int, int]:
    """(stored bytes, uncompressed bytes) of every attachment."""
    row = tx.fetch_one("SELECT compressedSize, uncompressedSize FROM StorageTotals WHERE id = 0")
    return (int(row[0]), int(row[1])) if row else (0, 0)


def _patient_count(tx: ReadTx) -> int:
    return int(tx.fetch_one("SELECT COUNT(*) FROM Resources WHERE resourceType = ?", (int(ResourceType.PATIENT),))[0])


def _over(tx: ReadTx, limits: StorageLimits) -> str | None:
    if limits.maximum_size and storage_totals(tx)[0] > limits.maximum_size:
        return f"MaximumStorageSize ({limits.maximum_size // MB} MB)"
    if limits.maximum_patients and _patient_count(tx) > limits.maximum_patients:
        return f"MaximumPatientCount ({limits.maximum_patients})"
    return None


def _oldest_recyclable(tx: ReadTx, keep: int | None) -> ResourceRef | None:
    row = tx.fetch_one(
        "SELECT o.patientId, r.publicId FROM PatientRecyclingOrder o JOIN Resources r ON r.internalId = o.patientId "
        "WHERE o.patientId NOT IN (SELECT patientId FROM Protected) AND o.patientId != ? ORDER BY o.seq LIMIT 1",
        (keep if keep is not None else -1,),
    )
    return None if row is None else ResourceRef(ResourceType.PATIENT, row[1], int(row[0]))


def enforce(tx: WriteTx, limits: StorageLimits, keep: int | None, now: str) -> list[FileInfo]:
    """Bring the archive back within `limits` (the instance just added counts); return the files of
    the recycled patients, to remove once committed. Raises FULL_STORAGE when impossible."""
    if not limits.active:
        return []
    reason = _over(tx, limits)
    if reason is None:
        return []
    if limits.reject:
        raise DicomVaultError(
            ErrorCode.FULL_STORAGE, f"the storage is full ({reason}) and MaximumStorageMode is Reject"
        )
    files: list[FileInfo] = []
    while reason is not None:
        victim = _oldest_recyclable(tx, keep)
        if victim is None:
            raise DicomVaultError(
                ErrorCode.FULL_STORAGE, f"the storage is full ({reason}) and no unprotected patient is left to recycle"
            )
        logger.warning("recycling patient %s to respect %s", victim.public_id, reason)
        files.extend(tx.delete(victim, now).files)
        reason = _over(tx, limits)
    return files


def is_protected(tx: ReadTx, patient: ResourceRef) -> bool:
    return tx.fetch_one("SELECT 1 FROM Protected WHERE patientId = ?", (patient.internal_id,)) is not None


def set_protected(tx: WriteTx, patient: ResourceRef, protected: bool) -> None:
    """As Orthanc: protecting takes a patient out of the recycling order; unprotecting puts it
    back as the most recent one."""
    if protected == is_protected(tx, patient):
        return
    tx.execute("DELETE FROM PatientRecyclingOrder WHERE patientId = ?", (patient.internal_id,))
    if protected:
        tx.execute("INSERT INTO Protected(patientId) VALUES (?)", (patient.internal_id,))
    else:
        tx.execute("DELETE FROM Protected WHERE patientId = ?", (patient.internal_id,))
        tx.execute("INSERT INTO PatientRecyclingOrder(patientId) VALUES (?)", (patient.internal_id,))
