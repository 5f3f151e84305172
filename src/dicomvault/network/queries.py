"""Query/retrieve against remote modalities: C-FIND identifiers and answers as Orthanc 1.10.1 builds
and keeps them, the C-MOVE identifiers of a retrieve, and the registry behind `/queries`.

C-FIND (`find`), as Orthanc's SCU does it:

* with `Normalize` (the default), only the tags of the query's level and the levels above are kept
  (main DICOM tags, plus ModalitiesInStudy, SOPClassesInStudy and the NumberOf...Related...
  counters of the level), the others are dropped with a warning; the manufacturer's quirks are
  then applied (`GenericNoWildcardInDates`: a `*` date becomes empty; `GenericNoUniversalWildcard`:
  every `*` becomes empty);
* QueryRetrieveLevel is set (`IMAGE` for instances), SpecificCharacterSet is the one of
  `DefaultEncoding`, and the identifying tags of the level and above that are missing are added,
  empty (`*` for the `GE` manufacturer): PatientID; AccessionNumber and StudyInstanceUID;
  SeriesInstanceUID; SOPInstanceUID;
* the Patient Root model is used at the patient level, the Study Root model otherwise.

An answer is kept as Orthanc keeps it: a flat map of the top-level elements of the identifier
(sequences and private elements left out), with the QueryRetrieveLevel of the query when the
peer did not send one. Values longer than 256 bytes render as `TooLong` (Orthanc has no limit
there).

C-MOVE (`move_identifier`): only the identifying tags of the level (PatientID; StudyInstanceUID;
plus SeriesInstanceUID; plus SOPInstanceUID), a missing one being Orthanc's 400 "Bad request".

The registry (`QueryRegistry`) keeps at most `QueryRetrieveSize` queries in memory; reading a
query makes it the most recent, and the least recently used one is dropped when a new one comes.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from dicomvault.dicom.main_tags import MAIN_TAGS, format_tag
from dicomvault.dicom.tags_json import TagsFormat, dataset_to_json, tag_name
from dicomvault.enums import ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.find.query import vr_of
from dicomvault.network.modalities import RemoteModality
from dicomvault.network.scu import (
    PATIENT_ROOT_FIND,
    PATIENT_ROOT_MOVE,
    SPECIFIC_CHARACTER_SETS,
    STUDY_ROOT_FIND,
    STUDY_ROOT_MOVE,
    ScuAssociation,
    encode_identifier,
)

logger = logging.getLogger(__name__)

QUERY_RETRIEVE_LEVEL = 0x00080052
SPECIFIC_CHARACTER_SET = 0x00080005
PATIENT_ID = 0x00100020
ACCESSION_NUMBER = 0x00080050
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
SOP_INSTANCE_UID = 0x00080018
MODALITIES_IN_STUDY = 0x00080061

LEVEL_KEYWORDS: dict[ResourceType, str] = {
    ResourceType.PATIENT: "PATIENT",
    ResourceType.STUDY: "STUDY",
    ResourceType.SERIES: "SERIES",
    ResourceType.INSTANCE: "IMAGE",
}
_LEVEL_BY_KEYWORD = {keyword: level for level, keyword in LEVEL_KEYWORDS.items()} | {"INSTANCE": ResourceType.INSTANCE}

# Computed attributes a query may carry at one level (besides the main tags).
_LEVEL_EXTRAS: dict[ResourceType, tuple[int, ...]] = {
    ResourceType.PATIENT: (0x00201200, 0x00201202, 0x00201204),
    ResourceType.STUDY: (MODALITIES_IN_STUDY, 0x00201206, 0x00201208, 0x00080062),
    ResourceType.SERIES: (0x00201209,),
    ResourceType.INSTANCE: (),
}
# The identifying tags a C-FIND asks for when the query does not: Orthanc adds them, in order.
_REQUIRED: dict[ResourceType, tuple[int, ...]] = {
    ResourceType.PATIENT: (PATIENT_ID,),
    ResourceType.STUDY: (ACCESSION_NUMBER, STUDY_INSTANCE_UID, PATIENT_ID),
    ResourceType.SERIES: (SERIES_INSTANCE_UID, ACCESSION_NUMBER, STUDY_INSTANCE_UID, PATIENT_ID),
    ResourceType.INSTANCE: (SOP_INSTANCE_UID, SERIES_INSTANCE_UID, ACCESSION_NUMBER, STUDY_INSTANCE_UID, PATIENT_ID),
}
# What a C-MOVE identifies a resource with, per level.
IDENTIFYING: dict[ResourceType, tuple[int, ...]] = {
    ResourceType.PATIENT: (PATIENT_ID,),
    ResourceType.STUDY: (STUDY_INSTANCE_UID,),
    ResourceType.SERIES: (STUDY_INSTANCE_UID, SERIES_INSTANCE_UID),
    ResourceType.INSTANCE: (STUDY_INSTANCE_UID, SERIES_INSTANCE_UID, SOP_INSTANCE_UID),
}


def allowed_tags(level: ResourceType) -> frozenset[int]:
    """The tags a normalized query keeps at `level`."""
    tags = {SPECIFIC_CHARACTER_SET, *_LEVEL_EXTRAS[level]}
    for upper in ResourceType:
        if upper <= level:
            tags.update(tag for tag, _ in MAIN_TAGS[upper])
    return frozenset(tags)


def charset_of(default_encoding: str) -> str:
    return SPECIFIC_CHARACTER_SETS.get(default_encoding, "ISO_IR 100")


def _vr(tag: int) -> str:
    return vr_of(tag)[:2]  # "US or SS" -> "US"


def _manufacturer_fixes(query: dict[int, str], manufacturer: str) -> dict[int, str]:
    """Orthanc's work-arounds for peers that do not understand a universal `*`."""
    if manufacturer not in ("GenericNoWildcardInDates", "GenericNoUniversalWildcard"):
        return query
    fixed = dict(query)
    for tag, value in query.items():
        if value == "*" and (manufacturer == "GenericNoUniversalWildcard" or _vr(tag) == "DA"):
            fixed[tag] = ""
    return fixed


def find_identifier(
    level: ResourceType, query: Mapping[int, str], *, normalize: bool, manufacturer: str, charset: str
) -> Dataset:
    """The identifier of a C-FIND, built as Orthanc 1.10.1 builds it (see the module docstring)."""
    fields = dict(query)
    if normalize:
        allowed = allowed_tags(level)
        for tag in [t for t in fields if t not in allowed]:
            logger.warning("tag not allowed for this C-FIND level, will be ignored: (%s)", format_tag(tag))
            del fields[tag]
        fields = _manufacturer_fixes(fields, manufacturer)
    fields.pop(SPECIFIC_CHARACTER_SET, None)  # the charset of the encoding, never the query's
    fields[QUERY_RETRIEVE_LEVEL] = LEVEL_KEYWORDS[level]
    universal = "*" if manufacturer == "GE" else ""
    for tag in _REQUIRED[level]:
        fields.setdefault(tag, universal)
    return encode_identifier(((tag, _vr(tag), value) for tag, value in fields.items()), charset)


def move_identifier(level: ResourceType, resource: Mapping[int, str], *, manufacturer: str, charset: str) -> Dataset:
    """The identifier of a C-MOVE for one resource: its identifying tags only."""
    fields: dict[int, str] = {}
    for tag in IDENTIFYING[level]:
        if tag not in resource:
            raise DicomVaultError(ErrorCode.BAD_REQUEST, f"Missing tag {format_tag(tag)}")
        fields[tag] = resource[tag]
    fields = _manufacturer_fixes(fields, manufacturer)
    fields[QUERY_RETRIEVE_LEVEL] = LEVEL_KEYWORDS[level]
    return encode_identifier(((tag, _vr(tag), value) for tag, value in fields.items()), charset)


# ---- answers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FindAnswer:
    """One C-FIND answer: (tag, Orthanc's name, Type, value) for each kept element, by tag."""

    elements: tuple[tuple[int, str, str, str | None], ...]

    def get(self, tag: int) -> str | None:
        for candidate, _name, _kind, value in self.elements:
            if candidate == tag:
                return value
        return None

    def has(self, tag: int) -> bool:
        return any(candidate == tag for candidate, *_ in self.elements)

    def render(self, form: TagsFormat) -> dict[str, Any]:
        return render_elements(self.elements, form)

    def restricted(self, tags: Iterable[int]) -> FindAnswer:
        keep = frozenset(tags)
        return FindAnswer(tuple(e for e in self.elements if e[0] in keep))


def render_elements(elements: Iterable[tuple[int, str, str, str | None]], form: TagsFormat) -> dict[str, Any]:
    """Orthanc's DICOM-as-JSON formats of a flat map of tags."""
    if form is TagsFormat.SIMPLIFY:
        return {name: value for _tag, name, _kind, value in elements}
    if form is TagsFormat.SHORT:
        return {format_tag(tag): value for tag, _name, _kind, value in elements}
    return {format_tag(tag): {"Name": name, "Type": kind, "Value": value} for tag, name, kind, value in elements}


def answer_from_dataset(ds: Dataset, level: ResourceType, default_encoding: str) -> FindAnswer:
    rendered = dataset_to_json(ds, TagsFormat.FULL, default_encoding)
    elements: list[tuple[int, str, str, str | None]] = []
    for key, entry in rendered.items():
        tag = int(key.replace(",", ""), 16)
        if entry["Type"] == "Sequence" or (tag >> 16) & 1:
            continue
        elements.append((tag, entry["Name"], entry["Type"], entry["Value"]))
    if not any(tag == QUERY_RETRIEVE_LEVEL for tag, *_ in elements):
        elements.append((QUERY_RETRIEVE_LEVEL, tag_name(QUERY_RETRIEVE_LEVEL), "String", LEVEL_KEYWORDS[level]))
    return FindAnswer(tuple(sorted(elements)))


def query_elements(query: Mapping[int, str]) -> tuple[tuple[int, str, str, str | None], ...]:
    """A query as a flat map of strings (`/queries/{id}/query`)."""
    return tuple((tag, tag_name(tag), "String", value) for tag, value in sorted(query.items()))


def answer_level(answer: FindAnswer, default: ResourceType) -> ResourceType:
    keyword = (answer.get(QUERY_RETRIEVE_LEVEL) or "").strip().upper()
    return _LEVEL_BY_KEYWORD.get(keyword, default)


# ---- running them ----------------------------------------------------------------------------


def find(
    association: ScuAssociation,
    level: ResourceType,
    query: Mapping[int, str],
    *,
    normalize: bool,
    default_encoding: str,
) -> list[FindAnswer]:
    """One C-FIND on an association (opened if needed); its answers in the order received."""
    modality = association.params.modality
    identifier = find_identifier(
        level, query, normalize=normalize, manufacturer=modality.manufacturer, charset=charset_of(default_encoding)
    )
    model = PATIENT_ROOT_FIND if level is ResourceType.PATIENT else STUDY_ROOT_FIND
    found = association.find(model, identifier)
    logger.info('C-FIND SCU at level %s to AET "%s": %d answers', level.label, modality.aet, len(found))
    return [answer_from_dataset(ds, level, default_encoding) for ds in found]


def move(
    association: ScuAssociation,
    level: ResourceType,
    resource: Mapping[int, str],
    target_aet: str,
    *,
    default_encoding: str,
) -> None:
    """One C-MOVE of one resource to `target_aet`. Patient Root is used at the patient level when
    the peer accepts it (Orthanc always uses Study Root, which has no patient level)."""
    modality = association.params.modality
    identifier = move_identifier(
        level, resource, manufacturer=modality.manufacturer, charset=charset_of(default_encoding)
    )
    model = STUDY_ROOT_MOVE
    if level is ResourceType.PATIENT and association.accepted(PATIENT_ROOT_MOVE) is not None:
        model = PATIENT_ROOT_MOVE
    logger.info(
        'C-MOVE SCU at level %s to AET "%s", destination "%s": %s',
        level.label,
        modality.aet,
        target_aet,
        {format_tag(t): v for t, v in resource.items() if t in IDENTIFYING[level]},
    )
    association.move(model, identifier, target_aet)


# ---- the registry ----------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryRetrieve:
    """One `/modalities/{m}/query` and its answers."""

    modality_name: str
    modality: RemoteModality
    level: ResourceType
    query: tuple[tuple[int, str], ...]  # as asked, by tag
    normalize: bool
    local_aet: str | None
    timeout: int | None
    answers: tuple[FindAnswer, ...]

    def answer(self, index: int) -> FindAnswer:
        if not 0 <= index < len(self.answers):
            raise DicomVaultError(
                ErrorCode.PARAMETER_OUT_OF_RANGE, f"no answer {index} in a query of {len(self.answers)}"
            )
        return self.answers[index]


class QueryRegistry:
    """The queries of `/queries`, bounded by `QueryRetrieveSize`; safe from any thread."""

    def __init__(self, size: int) -> None:
        self._size = max(size, 1)
        self._lock = threading.Lock()
        self._items: OrderedDict[str, QueryRetrieve] = OrderedDict()

    def add(self, query: QueryRetrieve) -> str:
        query_id = str(uuid.uuid4())
        with self._lock:
            self._items[query_id] = query
            while len(self._items) > self._size:
                dropped, _ = self._items.popitem(last=False)
                logger.info("query %s dropped: QueryRetrieveSize (%d) reached", dropped, self._size)
        return query_id

    def get(self, query_id: str) -> QueryRetrieve:
        with self._lock:
            found = self._items.get(query_id)
            if found is not None:
                self._items.move_to_end(query_id)
        if found is None:
            raise DicomVaultError(ErrorCode.UNKNOWN_RESOURCE, f"unknown query: {query_id}")
        return found

    def ids(self) -> list[str]:
        with self._lock:
            return sorted(self._items)

    def remove(self, query_id: str) -> None:
        with self._lock:
            self._items.pop(query_id, None)


# ---- the older find routes (`/modalities/{m}/find-patient` ...) ------------------------------

# Tags of Orthanc's query templates, sent empty unless the request gives them.
_STUDY_TEMPLATE_LEFT_OUT = frozenset({0x00080080, 0x00321032, 0x00321060})  # not of the General Study module
_SERIES_TEMPLATE: tuple[int, ...] = (0x00080021, 0x00080031, 0x00080060, 0x0008103E, 0x00081070, 0x00180015)
_SERIES_TEMPLATE += (0x00181030, SERIES_INSTANCE_UID, 0x00200011, 0x00400254)
_INSTANCE_TEMPLATE = (0x00080012, 0x00080013, SOP_INSTANCE_UID, 0x00200013)
# Tags of the levels above that each level's query carries along.
_CARRIED: dict[ResourceType, tuple[int, ...]] = {
    ResourceType.PATIENT: (),
    ResourceType.STUDY: (PATIENT_ID, ACCESSION_NUMBER, MODALITIES_IN_STUDY),
    ResourceType.SERIES: (PATIENT_ID, ACCESSION_NUMBER, STUDY_INSTANCE_UID),
    ResourceType.INSTANCE: (PATIENT_ID, ACCESSION_NUMBER, STUDY_INSTANCE_UID, SERIES_INSTANCE_UID),
}


def legacy_template(level: ResourceType) -> dict[int, str]:
    """The empty query Orthanc starts from at `level`, before merging the request's tags."""
    if level is ResourceType.PATIENT:
        tags: tuple[int, ...] = tuple(tag for tag, _ in MAIN_TAGS[ResourceType.PATIENT])
    elif level is ResourceType.STUDY:
        tags = tuple(tag for tag, _ in MAIN_TAGS[level] if tag not in _STUDY_TEMPLATE_LEFT_OUT)
        tags += (ACCESSION_NUMBER, PATIENT_ID)
    elif level is ResourceType.SERIES:
        tags = (*_SERIES_TEMPLATE, ACCESSION_NUMBER, PATIENT_ID, STUDY_INSTANCE_UID)
    else:
        tags = (*_INSTANCE_TEMPLATE, ACCESSION_NUMBER, PATIENT_ID, STUDY_INSTANCE_UID, SERIES_INSTANCE_UID)
    return dict.fromkeys(tags, "")


def legacy_level_query(level: ResourceType, fields: Mapping[int, str]) -> dict[int, str]:
    """The part of a merged query that concerns `level`: its main tags and the carried ones."""
    keep = {tag for tag, _ in MAIN_TAGS[level]} | set(_CARRIED[level])
    return {tag: value for tag, value in fields.items() if tag in keep}


def legacy_query_accepted(level: ResourceType, fields: Mapping[int, str]) -> bool:
    """Orthanc answers nothing (an empty 400) unless the query narrows the search enough: a
    PatientID or AccessionNumber of 3 characters or more below the patient level, and the
    StudyInstanceUID (series) or also SeriesInstanceUID (instances)."""

    def given(tag: int) -> bool:
        return len(fields.get(tag, "")) > 2

    if level is ResourceType.PATIENT:
        return True
    if not (given(ACCESSION_NUMBER) or given(PATIENT_ID)):
        return False
    if level >= ResourceType.SERIES and not given(STUDY_INSTANCE_UID):
        return False
    return level is not ResourceType.INSTANCE or given(SERIES_INSTANCE_UID)
