"""The data set of the `/tools/find` tests: patients, studies and series chosen to exercise Orthanc's
matching rules (case, accents, wildcards next to SQL's `%` and `_`, date and time ranges, lists,
absent and empty tags, several studies per patient with differing copies of the patient tags, a
StudyInstanceUID shared by two patients, an instance without PatientID).

`FIND_CORPUS` lists the instances in upload order (creation order matters: Orthanc applies
`LimitFindResults` to the first resources created); `FIND_IDS` names every resource's public id,
as in `tests.differential_cases` (`{P_DOE}`, `{ST_DOE_1}`, `{SE_DOE_1_CT}`, `{I_DOE_1_CT_1}`...).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import MRImageStorage

from tests.dicomgen import Spec, make_dataset
from tests.differential_cases import Item, _item, corpus_ids


def _uid(*parts: object) -> str:
    return "1.2.826.0.1.3680043.10.1234.77." + ".".join(str(p) for p in parts)


@dataclass(frozen=True)
class _Series:
    name: str  # "SE_DOE_1_CT"
    modality: str | None
    count: int = 1
    description: str | None = "Axial"
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class _Study:
    name: str  # "ST_DOE_1"
    patient: str  # "P_DOE"
    patient_id: str | None
    patient_name: str | None
    series: tuple[_Series, ...]
    extra: dict[str, object] = field(default_factory=dict)  # study and patient tags
    charset: str | None = None
    uid: str | None = None


def _charset(value: str) -> Callable[[Dataset], None]:
    def apply(ds: Dataset) -> None:
        ds.SpecificCharacterSet = value

    return apply


_STUDIES: tuple[_Study, ...] = (
    _Study(
        "ST_DOE_1",
        "P_DOE",
        "FIND-1",
        "Doe^John",
        (
            _Series("SE_DOE_1_CT", "CT", 2, extra={"BodyPartExamined": "CHEST", "ProtocolName": "Thorax std"}),
            _Series("SE_DOE_1_MR", "MR", 1, "T1 sag", extra={"OperatorsName": "Tech^Tom"}),
        ),
        {
            "StudyDate": "20200115",
            "StudyTime": "093000",
            "StudyDescription": "Chest CT",
            "AccessionNumber": "A-100",
            "ReferringPhysicianName": "Smith^Ref",
            "InstitutionName": "General Hospital",
            "PatientBirthDate": "19600101",
            "PatientSex": "M",
            "PatientWeight": "80",
        },
    ),
    _Study(
        "ST_DOE_2",
        "P_DOE",
        "FIND-1",
        "DOE^JOHN",
        (_Series("SE_DOE_2_US", "US", 1, "Liver"),),
        {
            "StudyDate": "20201231",
            "StudyTime": "120000",
            "StudyDescription": "abdomen",
            "AccessionNumber": "a-101",
            "PatientBirthDate": "19600101",
            "PatientSex": "M",
        },
    ),
    _Study(
        "ST_MUL_L1",
        "P_MUL_L1",
        "find-2",
        "Müller^Jörg",
        (_Series("SE_MUL_L1_PT", "PT", 2, "Coupes axiales à plat"),),
        {
            "StudyDate": "20210101",
            "StudyTime": "000000",
            "StudyDescription": "Étude thoracique",
            "InstitutionName": "Hôpital Saint-Éloi",
            "PatientSex": "F",
        },
        charset="ISO_IR 100",
    ),
    _Study(
        "ST_MUL_U8",
        "P_MUL_U8",
        "FIND-3",
        "müller^jörg",
        (_Series("SE_MUL_U8_SR", "SR", 1, "Report", extra={"SeriesDate": "19991231", "SeriesTime": "2359"}),),
        {
            "StudyDate": "19991231",
            "StudyTime": "235959.123456",
            "StudyDescription": "50%_done [x]",
            "OtherPatientIDs": ["X1", "X2"],
            "PatientBirthDate": "",
            "AccessionNumber": "ACC_3",
        },
        charset="ISO_IR 192",
    ),
    _Study(
        "ST_OBR",
        "P_OBR",
        "FIND-4",
        "O'Brien^Pat",
        (
            _Series("SE_OBR_CT1", "CT", 1, ""),
            _Series("SE_OBR_CT2", "CT", 1, "Axial 2mm", extra={"BodyPartExamined": "HEAD"}),
            _Series("SE_OBR_NOMOD", None, 1, "No modality"),
        ),
        {"StudyDate": None, "StudyDescription": None, "StudyTime": "080000"},
    ),
    _Study(
        "ST_OMEGA",
        "P_OMEGA",
        "FIND-5",
        "Ωmega^Ölaf",
        (
            _Series("SE_OMEGA_MR", "MR", 2, "DWI b1000", extra={"Manufacturer": "ACME Medical"}),
            _Series("SE_OMEGA_OT", "OT", 1, "Screenshot?"),
        ),
        {"StudyDate": "20200229", "StudyDescription": "Brain? MRI*", "PatientSex": "O"},
        charset="ISO_IR 192",
    ),
    _Study(
        "ST_NOID",
        "P_NOID",
        None,
        "NoId^Patient",
        (_Series("SE_NOID_DX", "DX", 1, "Hand"),),
        {"StudyDate": "20190505", "StudyDescription": "Hand"},
    ),
    # Two patients sharing one StudyInstanceUID: distinct studies for Orthanc (the public id hashes
    # the PatientID too), one entry of the map Orthanc's ModalitiesInStudy search keys by UID.
    _Study(
        "ST_TWIN_A",
        "P_TWIN_A",
        "TWIN-A",
        "Twin^Alpha",
        (_Series("SE_TWIN_A_CR", "CR", 1),),
        {"StudyDate": "20220202", "StudyDescription": "Twin"},
        uid=_uid(1, 99),
    ),
    _Study(
        "ST_TWIN_B",
        "P_TWIN_B",
        "TWIN-B",
        "Twin^Beta",
        (_Series("SE_TWIN_B_MG", "MG", 1),),
        {"StudyDate": "20220203", "StudyDescription": "Twin"},
        uid=_uid(1, 99),
    ),
    _Study(
        "ST_DOE_3",
        "P_DOE",
        "FIND-1",
        "Doe^Johnny",
        (_Series("SE_DOE_3_CT", "CT", 1, "Axial"), _Series("SE_DOE_3_CT2", "CT", 1, "Coronal")),
        {"StudyDate": "20230310", "StudyDescription": "Chest CT follow-up", "AccessionNumber": "A-102"},
    ),
)


def _build() -> list[Item]:
    items: list[Item] = []
    for s_index, study in enumerate(_STUDIES):
        study_uid = study.uid or _uid(1, s_index)
        for r_index, series in enumerate(study.series):
            for number in range(1, series.count + 1):
                spec = Spec(
                    seed=700 + s_index * 10 + r_index,
                    patient_id=study.patient_id,
                    patient_name=study.patient_name or "",
                    study_uid=study_uid,
                    series_uid=_uid(2, s_index, r_index),
                    sop_uid=_uid(3, s_index, r_index, number),
                    modality=series.modality or "OT",
                    instance_number=number,
                    series_description=series.description or "",
                )
                ds = make_dataset(spec)
                if series.modality is None:
                    del ds.Modality
                if series.description is None:
                    del ds.SeriesDescription
                if study.charset:
                    ds.SpecificCharacterSet = study.charset
                ds.SeriesNumber = r_index + 1
                ds.ContentDate = f"2020010{number}"
                ds.AcquisitionDateTime = f"2020010{number}120000"
                if series.modality == "MR":
                    ds.SOPClassUID = MRImageStorage
                    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
                for keyword, value in {**study.extra, **series.extra}.items():
                    if value is None:
                        if keyword in ds:
                            delattr(ds, keyword)
                    else:
                        setattr(ds, keyword, value)
                name = f"I_{series.name[3:]}_{number}"
                items.append(_item(name, series.name, study.name, study.patient, ds))
    return items


FIND_CORPUS: list[Item] = _build()
FIND_IDS: dict[str, str] = corpus_ids(FIND_CORPUS)
