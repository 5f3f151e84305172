"""Generate DICOM test data in code (pydicom): small CT-like instances with controllable
identifiers, so that tests never depend on files copied from elsewhere."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

IMPLEMENTATION_UID = "1.2.826.0.1.3680043.10.1234.1"


@dataclass(frozen=True)
class Spec:
    """What one generated instance looks like; unspecified UIDs are derived from `seed`."""

    seed: int = 0
    patient_id: str | None = "P0001"
    patient_name: str = "Doe^John"
    study_uid: str | None = None
    series_uid: str | None = None
    sop_uid: str | None = None
    modality: str = "CT"
    study_date: str = "20200102"
    study_description: str = "Chest"
    series_description: str = "Axial"
    instance_number: int = 1
    rows: int = 8
    columns: int = 8
    extra: dict[str, object] = field(default_factory=dict)


def _uid(prefix: str, seed: int, suffix: str) -> str:
    return f"1.2.826.0.1.3680043.10.1234.{prefix}.{seed}.{suffix}"


def make_dataset(spec: Spec) -> Dataset:
    ds = Dataset()
    if spec.patient_id is not None:
        ds.PatientID = spec.patient_id
    ds.PatientName = spec.patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.StudyDate = spec.study_date
    ds.StudyTime = "101500"
    ds.StudyID = "S1"
    ds.AccessionNumber = f"ACC{spec.seed}"
    ds.StudyDescription = spec.study_description
    ds.SeriesDescription = spec.series_description
    ds.Modality = spec.modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = spec.instance_number
    ds.SOPClassUID = CTImageStorage
    if spec.study_uid != "":
        ds.StudyInstanceUID = spec.study_uid or _uid("1", spec.seed, "1")
    if spec.series_uid != "":
        ds.SeriesInstanceUID = spec.series_uid or _uid("2", spec.seed, "1")
    if spec.sop_uid != "":
        ds.SOPInstanceUID = spec.sop_uid or _uid("3", spec.seed, str(spec.instance_number))
    ds.ImagePositionPatient = [0.0, 0.0, float(spec.instance_number)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    count = spec.rows * spec.columns
    ds.PixelData = struct.pack(f"<{count}h", *(((i + spec.seed) % 2000) for i in range(count)))
    for keyword, value in spec.extra.items():
        setattr(ds, keyword, value)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = getattr(ds, "SOPInstanceUID", generate_uid())
    meta.TransferSyntaxUID = UID(ExplicitVRLittleEndian)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_UID)
    ds.file_meta = meta
    return ds


def make_bytes(spec: Spec | None = None, **kwargs: object) -> bytes:
    """Serialise one instance as a DICOM Part 10 file."""
    ds = make_dataset(spec or Spec(**kwargs))  # type: ignore[arg-type]
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
