"""Generate DICOM test data in code (pydicom): small CT-like instances with controllable
identifiers, so that tests never depend on files copied from elsewhere."""

from __future__ import annotations

import io
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
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


def to_bytes(ds: Dataset) -> bytes:
    """Serialise a dataset (e.g. one from `make_dataset`, then changed) as a DICOM Part 10 file."""
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def with_pixels(
    ds: Dataset,
    pixels: np.ndarray[Any, Any],
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    planar: bool = False,
) -> Dataset:
    """Replace the image of `ds` by `pixels`, native little endian: shaped (rows, columns),
    (rows, columns, 3) for color, or with a leading frame axis when `ds.NumberOfFrames` > 1 is
    wanted (set here from the array). The integer dtype decides BitsAllocated and signedness."""
    color = photometric in ("RGB", "YBR_FULL")
    frame_axis = pixels.ndim == (4 if color else 3)
    frames = pixels.shape[0] if frame_axis else 1
    shape = pixels.shape[1:] if frame_axis else pixels.shape
    bits = pixels.dtype.itemsize * 8
    ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
    ds.SamplesPerPixel = 3 if color else 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = (bits_stored or bits) - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if color:
        ds.PlanarConfiguration = 1 if planar else 0
    elif "PlanarConfiguration" in ds:
        del ds.PlanarConfiguration
    if frame_axis:
        ds.NumberOfFrames = frames
    data = np.ascontiguousarray(pixels.astype(pixels.dtype.newbyteorder("<")))
    if color and planar:
        # Planar: per frame, all red values, then all green, then all blue.
        data = np.ascontiguousarray(np.moveaxis(data.reshape(frames, *shape), -1, 1))
    raw = data.tobytes()
    ds.PixelData = raw + (b"\0" if len(raw) % 2 else b"")
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    return ds


def with_encapsulated(ds: Dataset, frames: list[bytes], transfer_syntax: str) -> Dataset:
    """Replace the pixel data of `ds` by encapsulated `frames` (one fragment each) of a compressed
    transfer syntax; the image attributes must already describe the decoded frames."""
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    return ds


def dcmtk_compress(data: bytes, tool: str, *arguments: str) -> bytes:
    """`data` (a Part 10 file) recompressed by one of DCMTK's converters, e.g. `dcmcjpeg +e1`
    (lossless JPEG, process 14 SV1), `dcmcjpeg +el` (process 14), `dcmcjpls` (JPEG-LS lossless) or
    `dcmcjpls +en` (near-lossless): encoders other than the decoders under test."""
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "in.dcm", Path(folder) / "out.dcm"
        source.write_bytes(data)
        subprocess.run([tool, *arguments, str(source), str(target)], check=True, capture_output=True)
        return target.read_bytes()
