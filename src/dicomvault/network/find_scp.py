"""The C-FIND SCP (Patient Root and Study Root): a DICOM identifier in, the find core's answers out.

The identifier is translated into a `FindQuery` (Orthanc's matching of `find/matching.py`,
case-sensitive except PN values, which follow `CaseSensitivePN`); the resources are selected by
`find/finder.py` and their values read by `find/answers.py`. Facts mirrored from Orthanc 1.10.1
(its OrthancFindRequestHandler, compared with the real server by tests/test_dicom_find.py):

* Elements of groups below 0008 and group lengths (gggg,0000) are ignored; SpecificCharacterSet
  and QueryRetrieveLevel are no keys; an empty value is universal matching (no constraint).
* A missing QueryRetrieveLevel, an unknown level, a value Orthanc refuses (a wildcard on a
  non-string VR, ...) or an identifier that cannot be decoded answer 0xC000 (Unable to process).
* Each answer holds every key of the request (empty when the resource has no value), plus
  QueryRetrieveLevel as requested, RetrieveAETitle (our AET) and SpecificCharacterSet of
  `DefaultEncoding`, in which the values are encoded.
* When every key is a main DICOM tag (of any level) or a computed one, values are the main DICOM
  tags of the resource and its parents (a series' SeriesDescription is empty in a study answer);
  otherwise they come from the DICOM file of one instance of the resource (all levels' tags).
  Computed keys at their level: NumberOfPatientRelatedStudies/Series/Instances,
  NumberOfStudyRelatedSeries/Instances, ModalitiesInStudy, SOPClassesInStudy,
  NumberOfSeriesRelatedInstances.
* A sequence key is answered with that sequence of one instance's file (no sequence matching).
* `LimitFindResults` / `LimitFindInstances` (N > 0): N answers at most, then a final status
  0xFE00 (matching terminated) instead of success when more resources matched.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydicom.charset import python_encoding
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom.events import Event

from dicomvault.context import ServerContext
from dicomvault.dicom.main_tags import ALL_MAIN_TAGS, MAIN_TAGS, PATIENT_TAGS
from dicomvault.dicom.parsing import read_dataset
from dicomvault.enums import FileContentType, ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode, dimse_status
from dicomvault.find.answers import requested_tags
from dicomvault.find.finder import FindQuery, FindSettings, find
from dicomvault.find.matching import Constraint, Lookup, dicom_constraints
from dicomvault.find.query import parse_level, vr_of
from dicomvault.index.transactions import ReadTx
from dicomvault.model import ResourceRef
from dicomvault.network.scu import SPECIFIC_CHARACTER_SETS

if TYPE_CHECKING:
    from dicomvault.network.scp import Guard

logger = logging.getLogger(__name__)

SPECIFIC_CHARACTER_SET = 0x00080005
QUERY_RETRIEVE_LEVEL = 0x00080052
RETRIEVE_AE_TITLE = 0x00080054
_PENDING = 0xFF00
_CANCEL = 0xFE00

# The tags Orthanc computes, per level; they never send a find to the DICOM files.
COMPUTED_TAGS: dict[ResourceType, frozenset[int]] = {
    ResourceType.PATIENT: frozenset({0x00201200, 0x00201202, 0x00201204}),
    ResourceType.STUDY: frozenset({0x00201206, 0x00201208, 0x00080061, 0x00080062}),
    ResourceType.SERIES: frozenset({0x00201209}),
    ResourceType.INSTANCE: frozenset(),
}
_ALL_COMPUTED = frozenset().union(*COMPUTED_TAGS.values())
# The main DICOM tags a resource's answer shows: its level's, those above, the patient's copy.
_VISIBLE: dict[ResourceType, frozenset[int]] = {
    level: frozenset(tag for k in ResourceType if k <= level for tag, _ in MAIN_TAGS[k])
    | frozenset(tag for tag, _ in PATIENT_TAGS)
    for level in ResourceType
}
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
_INT_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV"})
_FLOAT_VRS = frozenset({"FL", "FD"})


@dataclass(frozen=True)
class FindKey:
    tag: int
    vr: str


@dataclass(frozen=True)
class CFindRequest:
    level: ResourceType
    level_text: str  # QueryRetrieveLevel as the peer wrote it (echoed in answers)
    lookup: Lookup
    keys: tuple[FindKey, ...]
    sequences: tuple[int, ...]


def _text(value: Any) -> str | None:
    """An element value as Orthanc's string (multiple values joined by `\\`); None if binary."""
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return None
    if isinstance(value, MultiValue | list | tuple):
        parts = [_text(v) for v in value]
        return None if any(p is None for p in parts) else "\\".join(p or "" for p in parts)
    return str(value)


def decoded_identifier(event: Event) -> Dataset:
    """The request's identifier; BAD_REQUEST when its bytes cannot be decoded."""
    try:
        return event.identifier
    except Exception as exc:  # untrusted bytes: any decoding error is the peer's
        raise DicomVaultError(ErrorCode.BAD_REQUEST, f"the identifier cannot be decoded: {exc}") from exc


def parse_identifier(identifier: Dataset, case_sensitive_pn: bool) -> CFindRequest:
    """A C-FIND identifier as Orthanc reads it (see the module docstring)."""
    keys: list[FindKey] = []
    sequences: list[int] = []
    constraints: list[Constraint] = []
    level_text: str | None = None
    try:
        elements = list(identifier)
        for element in elements:
            tag = int(element.tag)
            if tag >> 16 < 0x0008 or tag & 0xFFFF == 0 or tag == SPECIFIC_CHARACTER_SET:
                continue
            if element.VR == "SQ":
                if element.value:
                    logger.warning("C-FIND: sequence matching is not supported; key %s is only returned", element.tag)
                sequences.append(tag)
                continue
            value = _text(element.value)
            if tag == QUERY_RETRIEVE_LEVEL:
                level_text = (value or "").strip()
                continue
            vr = vr_of(tag)
            keys.append(FindKey(tag, vr if vr != "UN" else str(element.VR)))
            if value:
                constraints += dicom_constraints(tag, vr, value, case_sensitive_pn)
    except DicomVaultError:
        raise
    except Exception as exc:  # untrusted bytes: any decoding error is the peer's
        raise DicomVaultError(ErrorCode.BAD_REQUEST, f"the C-FIND identifier cannot be decoded: {exc}") from exc
    if not level_text:
        raise DicomVaultError(ErrorCode.BAD_REQUEST, "C-FIND request without the tag 0008,0052 (QueryRetrieveLevel)")
    level = parse_level(level_text)
    return CFindRequest(level, level_text, Lookup.of(constraints), tuple(keys), tuple(sequences))


class FindScp:
    """The handler of `evt.EVT_C_FIND` (a generator of (status, identifier) pairs)."""

    def __init__(self, context: ServerContext, guard: Guard, operations: threading.BoundedSemaphore) -> None:
        self._context = context
        self._guard = guard
        self._operations = operations

    def handle(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        peer = self._guard(event, "Find")
        if peer is None:
            return
        config = self._context.config
        try:
            request = parse_identifier(decoded_identifier(event), bool(config.case_sensitive_pn))
            with self._operations:
                answers, complete = self._context.index.read(lambda tx: self._answers(tx, request))
        except DicomVaultError as exc:
            logger.warning("C-FIND from %s failed: %s", peer.describe(), exc)
            yield exc.dimse_status, None
            return
        except Exception:
            logger.exception("C-FIND from %s failed (internal error)", peer.describe())
            yield dimse_status(ErrorCode.INTERNAL_ERROR), None
            return
        logger.info(
            "C-FIND from %s at level %s with %d constraints: %d answers%s",
            peer.describe(),
            request.level.label,
            len(request.lookup.constraints),
            len(answers),
            "" if complete else " (more matched: LimitFindResults/LimitFindInstances)",
        )
        for answer in answers:
            if event.is_cancelled:
                logger.info("C-FIND from %s canceled by the peer", peer.describe())
                yield _CANCEL, None
                return
            yield _PENDING, answer
        if not complete:
            yield _CANCEL, None  # Orthanc: "too many results", matching terminated

    def _answers(self, tx: ReadTx, request: CFindRequest) -> tuple[list[Dataset], bool]:
        context = self._context
        settings = FindSettings.from_config(context.config)
        level = request.level
        limit = settings.limit_find_instances if level is ResourceType.INSTANCE else settings.limit_find_results
        query = FindQuery(level, request.lookup, 0, limit + 1 if limit > 0 else 0)
        refs = find(tx, query, settings, context.accessor.read)
        complete = limit <= 0 or len(refs) <= limit
        if not complete:
            refs = refs[:limit]
        if not refs:
            return [], complete
        values = self._values(tx, refs, request, settings.default_encoding)
        sequences = self._sequences(tx, refs, request.sequences) if request.sequences else {}
        charset = SPECIFIC_CHARACTER_SETS.get(settings.default_encoding, "ISO_IR 100")
        answers = [
            self._dataset(request, values.get(ref.internal_id, {}), sequences.get(ref.internal_id, []), charset)
            for ref in refs
        ]
        return answers, complete

    def _values(
        self, tx: ReadTx, refs: Sequence[ResourceRef], request: CFindRequest, encoding: str
    ) -> dict[int, dict[int, str]]:
        level = request.level
        tags = [key.tag for key in request.keys]
        only_main = not request.sequences and all(t in ALL_MAIN_TAGS or t in _ALL_COMPUTED for t in tags)
        computed = COMPUTED_TAGS[level]
        if only_main:
            wanted = [t for t in tags if t in _VISIBLE[level] or t in computed]
        else:
            # Computed tags of another level are answered empty, never looked up in files.
            wanted = [t for t in tags if t not in _ALL_COMPUTED or t in computed]
        if not wanted:
            return {}
        return requested_tags(tx, refs, wanted, self._context.accessor.read, encoding)

    def _sequences(self, tx: ReadTx, refs: Sequence[ResourceRef], tags: Sequence[int]) -> dict[int, list[DataElement]]:
        out: dict[int, list[DataElement]] = {}
        for ref in refs:
            instance = ref.internal_id
            for _ in range(ref.level, ResourceType.INSTANCE):
                children = tx.children([instance])[instance]
                if not children:
                    break
                instance = children[0].internal_id
            info = tx.attachment(instance, FileContentType.DICOM)
            if info is None:
                continue
            dataset = read_dataset(self._context.accessor.read(info), stop_before_pixels=True)
            out[ref.internal_id] = [dataset[tag] for tag in tags if tag in dataset and dataset[tag].VR == "SQ"]
        return out

    def _dataset(
        self, request: CFindRequest, values: dict[int, str], sequences: list[DataElement], charset: str
    ) -> Dataset:
        answer = Dataset()
        answer.SpecificCharacterSet = charset
        answer.QueryRetrieveLevel = request.level_text
        answer.RetrieveAETitle = self._context.config.dicom_aet
        codec = _single_byte_codec(charset)
        for key in request.keys:
            value = values.get(key.tag, "")
            if codec is not None and key.vr in _TEXT_VRS:
                # As Orthanc converting to DefaultEncoding: characters it cannot hold are dropped.
                value = value.encode(codec, "ignore").decode(codec)
            answer.add(_element(key, value))
        for element in sequences:
            answer.add(element)
        return answer


def _single_byte_codec(charset: str) -> str | None:
    """Python's codec for a SpecificCharacterSet without code extensions (None otherwise)."""
    if charset.startswith("ISO 2022"):
        return None
    return python_encoding.get(charset)


def _element(key: FindKey, value: str) -> DataElement:
    """An answer element of the key's VR from Orthanc's string value (empty when unconvertible)."""
    vr = key.vr
    try:
        if vr in _TEXT_VRS:
            return DataElement(key.tag, vr, value)
        if vr in _INT_VRS and value:
            numbers: list[int] = [int(v) for v in value.split("\\")]
            return DataElement(key.tag, vr, numbers if len(numbers) > 1 else numbers[0])
        if vr in _FLOAT_VRS and value:
            reals = [float(v) for v in value.split("\\")]
            return DataElement(key.tag, vr, reals if len(reals) > 1 else reals[0])
    except (ValueError, TypeError, OverflowError):
        pass
    if vr in _TEXT_VRS:
        return DataElement(key.tag, vr, "")
    if vr in _INT_VRS or vr in _FLOAT_VRS or vr in ("AT", "SQ"):
        return DataElement(key.tag, vr, None)
    return DataElement(key.tag, vr if vr != "UN" else "UN", b"")
