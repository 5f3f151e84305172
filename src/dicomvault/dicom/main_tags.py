"""Orthanc's main DICOM tags per level (the default list of Orthanc 1.4.2 to 1.10.x).

These are the tags the index keeps per resource and returns as `MainDicomTags`; the study level
also answers the patient's ones as `PatientMainDicomTags`. The list is a fact of Orthanc's
behaviour and a part of our schema: changing it requires a schema migration that re-reads files.
"""

from __future__ import annotations

from dicomvault.enums import ResourceType

# (group << 16 | element, keyword), in Orthanc's order within each level.
PATIENT_TAGS: tuple[tuple[int, str], ...] = (
    (0x00100010, "PatientName"),
    (0x00100030, "PatientBirthDate"),
    (0x00100040, "PatientSex"),
    (0x00101000, "OtherPatientIDs"),
    (0x00100020, "PatientID"),
)
STUDY_TAGS: tuple[tuple[int, str], ...] = (
    (0x00080020, "StudyDate"),
    (0x00080030, "StudyTime"),
    (0x00200010, "StudyID"),
    (0x00081030, "StudyDescription"),
    (0x00080050, "AccessionNumber"),
    (0x0020000D, "StudyInstanceUID"),
    (0x00321060, "RequestedProcedureDescription"),
    (0x00080080, "InstitutionName"),
    (0x00321032, "RequestingPhysician"),
    (0x00080090, "ReferringPhysicianName"),
)
SERIES_TAGS: tuple[tuple[int, str], ...] = (
    (0x00080021, "SeriesDate"),
    (0x00080031, "SeriesTime"),
    (0x00080060, "Modality"),
    (0x00080070, "Manufacturer"),
    (0x00081010, "StationName"),
    (0x0008103E, "SeriesDescription"),
    (0x00180015, "BodyPartExamined"),
    (0x00180024, "SequenceName"),
    (0x00181030, "ProtocolName"),
    (0x00200011, "SeriesNumber"),
    (0x00181090, "CardiacNumberOfImages"),
    (0x00201002, "ImagesInAcquisition"),
    (0x00200105, "NumberOfTemporalPositions"),
    (0x00541081, "NumberOfSlices"),
    (0x00540101, "NumberOfTimeSlices"),
    (0x0020000E, "SeriesInstanceUID"),
    (0x00200037, "ImageOrientationPatient"),
    (0x00541000, "SeriesType"),
    (0x00081070, "OperatorsName"),
    (0x00400254, "PerformedProcedureStepDescription"),
    (0x00181400, "AcquisitionDeviceProcessingDescription"),
    (0x00180010, "ContrastBolusAgent"),
)
INSTANCE_TAGS: tuple[tuple[int, str], ...] = (
    (0x00080012, "InstanceCreationDate"),
    (0x00080013, "InstanceCreationTime"),
    (0x00200012, "AcquisitionNumber"),
    (0x00541330, "ImageIndex"),
    (0x00200013, "InstanceNumber"),
    (0x00280008, "NumberOfFrames"),
    (0x00200100, "TemporalPositionIdentifier"),
    (0x00080018, "SOPInstanceUID"),
    (0x00200032, "ImagePositionPatient"),
    (0x00204000, "ImageComments"),
    (0x00200037, "ImageOrientationPatient"),
)

MAIN_TAGS: dict[ResourceType, tuple[tuple[int, str], ...]] = {
    ResourceType.PATIENT: PATIENT_TAGS,
    ResourceType.STUDY: STUDY_TAGS,
    ResourceType.SERIES: SERIES_TAGS,
    ResourceType.INSTANCE: INSTANCE_TAGS,
}

# Schema 2: tags of an instance's file, outside the main DICOM tags, that the index also keeps
# (table InstanceTags) because finds often constrain them: with `StorageAccessOnFind` at "Always",
# a find on these (and main tags) is answered from the index instead of reading one file per
# candidate. Changing this list requires a migration that re-reads the files.
INSTANCE_FIND_TAGS: tuple[tuple[int, str], ...] = (
    (0x00080008, "ImageType"),
    (0x00080016, "SOPClassUID"),
    (0x00080022, "AcquisitionDate"),
    (0x00080023, "ContentDate"),
    (0x00080032, "AcquisitionTime"),
    (0x00080033, "ContentTime"),
    (0x00080064, "ConversionType"),
    (0x00081050, "PerformingPhysicianName"),
    (0x00081090, "ManufacturerModelName"),
    (0x00101010, "PatientAge"),
    (0x00101020, "PatientSize"),
    (0x00101030, "PatientWeight"),
    (0x00180050, "SliceThickness"),
    (0x00185100, "PatientPosition"),
    (0x00201041, "SliceLocation"),
)
INSTANCE_FIND_TAG_SET: frozenset[int] = frozenset(tag for tag, _ in INSTANCE_FIND_TAGS)

TAG_NAMES: dict[int, str] = {tag: name for tags in MAIN_TAGS.values() for tag, name in tags}

ALL_MAIN_TAGS: frozenset[int] = frozenset(TAG_NAMES)


def format_tag(tag: int) -> str:
    """`0x00100010` -> `"0010,0010"` (Orthanc's key format in JSON)."""
    return f"{tag >> 16:04x},{tag & 0xFFFF:04x}"
