"""Which resources a find selects, in which order: Orthanc 1.10.1's `ServerContext::Apply`.

A find runs in two steps, as Orthanc's does, and a resource is found when both accept it:

1. The database pre-selects candidates on the main DICOM tags (`index/find.py`: Orthanc's SQL,
   patient tags compared on the study's copy below the patient level, identifiers normalised).
   `LimitFindResults` / `LimitFindInstances` (N) keep the first N + 1 candidates created: Orthanc
   asks its database for one more than the limit and answers them all over REST.
2. Each candidate is matched (`matching.py`) against the tags of "one instance" of it (its first
   child, recursively): when every constrained tag is a main DICOM tag, the main tags of that
   instance's chain that belong to the requested level or above (so a constraint on a tag of a
   lower level never matches, and a patient is matched on the patient tags of its first study);
   otherwise, with `StorageAccessOnFind` at "Always", the tags of that instance's DICOM file.

`Since` skips matches, `Limit` stops after that many. A study-level find constraining
ModalitiesInStudy is a series-level find on Modality whose studies are answered in the order of
their StudyInstanceUID, and Orthanc 1.10.1 then keeps indexes `Since <= i < Limit` (not
`Since + Limit`), or every study when `Limit` is 0.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from dicomvault.config import Config
from dicomvault.dicom.main_tags import ALL_MAIN_TAGS, INSTANCE_FIND_TAG_SET, MAIN_TAGS, PATIENT_TAGS
from dicomvault.dicom.parsing import read_dataset
from dicomvault.dicom.tags_json import TagsFormat, dataset_to_json
from dicomvault.enums import FileContentType, ResourceType
from dicomvault.find.matching import Constraint, ConstraintType, Lookup
from dicomvault.index.find import (
    TAG_LOCATIONS,
    Candidate,
    Comparison,
    DatabaseConstraint,
    iter_candidates,
    normalize_identifier,
    refs_with_tag,
)
from dicomvault.index.transactions import ReadTx
from dicomvault.model import FileInfo, ResourceRef

logger = logging.getLogger(__name__)

MODALITIES_IN_STUDY = 0x00080061
MODALITY = 0x00080060
STUDY_INSTANCE_UID = 0x0020000D

ReadFile = Callable[[FileInfo], bytes]
# The tags of the file of each candidate's "one instance", for a page of candidates.
FileTagsSource = Callable[[ReadTx, list[Candidate]], Callable[[Candidate], Mapping[int, str]]]

_COMPARISONS = {
    ConstraintType.EQUAL: Comparison.EQUAL,
    ConstraintType.SMALLER_OR_EQUAL: Comparison.SMALLER_OR_EQUAL,
    ConstraintType.GREATER_OR_EQUAL: Comparison.GREATER_OR_EQUAL,
    ConstraintType.WILDCARD: Comparison.WILDCARD,
    ConstraintType.LIST: Comparison.LIST,
}
# The tags each level's resources store: their main tags, and for a study the patient's too.
_STORED: dict[ResourceType, frozenset[int]] = {
    level: frozenset(tag for tag, _ in tags)
    | (frozenset(t for t, _ in PATIENT_TAGS) if level is ResourceType.STUDY else frozenset())
    for level, tags in MAIN_TAGS.items()
}
# The tags a level's matching sees: its own main tags and those of the levels above.
_VISIBLE: dict[ResourceType, frozenset[int]] = {
    level: frozenset(tag for k in ResourceType if k <= level for tag, _ in MAIN_TAGS[k]) for level in ResourceType
}
_MEMO = 4096  # distinct value combinations whose verdict a find remembers
_BOTTOM_UP = (ResourceType.INSTANCE, ResourceType.SERIES, ResourceType.STUDY, ResourceType.PATIENT)


@dataclass(frozen=True)
class FindSettings:
    """The configuration a find depends on."""

    limit_find_results: int = 0
    limit_find_instances: int = 0
    storage_access_on_find: str = "Always"
    default_encoding: str = "Latin1"

    @classmethod
    def from_config(cls, config: Config) -> FindSettings:
        return cls(
            limit_find_results=int(config.limit_find_results),
            limit_find_instances=int(config.limit_find_instances),
            storage_access_on_find=str(config.storage_access_on_find),
            default_encoding=str(config.default_encoding),
        )

    def database_limit(self, level: ResourceType) -> int:
        limit = self.limit_find_instances if level is ResourceType.INSTANCE else self.limit_find_results
        return limit + 1 if limit > 0 else 0


@dataclass(frozen=True)
class FindQuery:
    level: ResourceType
    lookup: Lookup
    since: int = 0
    limit: int = 0  # 0: no limit


def find(tx: ReadTx, query: FindQuery, settings: FindSettings, read_file: ReadFile) -> list[ResourceRef]:
    """The resources `query` selects, in Orthanc's order, `since`/`limit` applied."""
    if query.level is ResourceType.STUDY and query.lookup.has_tag(MODALITIES_IN_STUDY):
        return _find_by_modalities(tx, query, settings, read_file)
    found = _apply(tx, query.level, query.lookup, query.since, query.limit, settings, read_file)
    return [candidate.ref for candidate in found]


def _find_by_modalities(tx: ReadTx, query: FindQuery, settings: FindSettings, read_file: ReadFile) -> list[ResourceRef]:
    series_lookup = query.lookup.replace_tag(MODALITIES_IN_STUDY, MODALITY)
    series = _apply(tx, ResourceType.SERIES, series_lookup, 0, 0, settings, read_file, [ResourceType.STUDY])
    study_ids = [candidate.chain[ResourceType.STUDY] for candidate in series]
    with_uids = refs_with_tag(tx, study_ids, STUDY_INSTANCE_UID)
    # Orthanc gathers the studies in a map keyed by StudyInstanceUID: the first series seen of
    # each UID names the study (two patients' studies sharing a UID make one answer).
    studies: dict[str, ResourceRef] = {}
    for study in study_ids:
        ref, uid = with_uids[study]
        if uid is not None and uid not in studies:
            studies[uid] = ref
    ordered = [studies[uid] for uid in sorted(studies)]
    if query.limit == 0:
        return ordered
    return [study for index, study in enumerate(ordered) if query.since <= index < query.limit]


def _database_constraint(c: Constraint, level: ResourceType) -> DatabaseConstraint | None:
    location = TAG_LOCATIONS.get(c.tag)
    if location is None:
        return None  # not a main DICOM tag: only the file can tell
    tag_level, identifier = location
    if tag_level is ResourceType.PATIENT and level is not ResourceType.PATIENT:
        tag_level = ResourceType.STUDY  # the study keeps a copy of the patient tags
    if identifier:
        values = tuple(sorted({normalize_identifier(v) for v in c.values}))
        if c.kind is not ConstraintType.LIST:
            values = (normalize_identifier(c.value),)
        return DatabaseConstraint(tag_level, c.tag, True, _COMPARISONS[c.kind], values, True, c.mandatory)
    return DatabaseConstraint(tag_level, c.tag, False, _COMPARISONS[c.kind], c.values, c.case_sensitive, c.mandatory)


def _sources(tag: int, level: ResourceType) -> list[ResourceType]:
    """The levels of "one instance"'s chain that store `tag`, the first one winning."""
    if tag not in _VISIBLE[level]:
        return []
    return [k for k in _BOTTOM_UP if tag in _STORED[k]]


def _apply(
    tx: ReadTx,
    level: ResourceType,
    lookup: Lookup,
    since: int,
    limit: int,
    settings: FindSettings,
    read_file: ReadFile,
    chain: Sequence[ResourceType] = (),
) -> list[Candidate]:
    read_files = not lookup.tags() <= ALL_MAIN_TAGS and settings.storage_access_on_find == "Always"
    source: FileTagsSource | None = None
    if read_files:
        # Schema 2: the file values of the find tags are in the index; open files only for others.
        wanted = lookup.tags()
        if wanted <= ALL_MAIN_TAGS | INSTANCE_FIND_TAG_SET:
            source = functools.partial(_indexed_tags, tags=wanted)
        else:
            source = functools.partial(_file_tags, settings=settings, read_file=read_file)
    sources = {c.tag: _sources(c.tag, level) for c in lookup.constraints}
    if not read_files and any(c.mandatory and not sources[c.tag] for c in lookup.constraints):
        logger.debug("find at level %s: %s cannot match main DICOM tags", level.label, lookup.describe())
        return []
    constraints = [dc for c in lookup.constraints if (dc := _database_constraint(c, level)) is not None]
    if read_files:
        chain, values = [*chain, ResourceType.INSTANCE], {}
    else:
        values = {tag: found for tag, found in sources.items() if found}
    pages = iter_candidates(tx, level, constraints, settings.database_limit(level), chain, values)
    try:
        matched = _select(tx, lookup, pages, since, limit, sorted(values), source)
    finally:
        pages.close()
    logger.debug("find at level %s: %s -> %d resources", level.label, lookup.describe(), len(matched))
    return matched


def _select(
    tx: ReadTx,
    lookup: Lookup,
    pages: Iterator[list[Candidate]],
    since: int,
    limit: int,
    tags: list[int],
    source: FileTagsSource | None,
) -> list[Candidate]:
    """The candidates the lookup accepts, `since` skipped, at most `limit` (0: all). Without a
    `source` of file tags, candidates are matched on their stored `values` (of `tags`)."""
    matched: list[Candidate] = []
    skipped = 0
    verdicts: dict[tuple[str | None, ...], bool] = {}  # stored values -> match (values repeat a lot)
    for page in pages:
        files = source(tx, page) if source is not None else None
        for candidate in page:
            if files is not None:
                accepted = lookup.matches(files(candidate))
            else:
                key = tuple(candidate.values.get(tag) for tag in tags)
                verdict = verdicts.get(key)
                if verdict is None:
                    if len(verdicts) >= _MEMO:
                        verdicts.clear()
                    verdict = verdicts[key] = lookup.matches(candidate.values)
                accepted = verdict
            if not accepted:
                continue
            if skipped < since:
                skipped += 1
            elif limit and len(matched) >= limit:
                return matched
            else:
                matched.append(candidate)
    return matched


def _indexed_tags(tx: ReadTx, page: list[Candidate], tags: frozenset[int]) -> Callable[[Candidate], Mapping[int, str]]:
    """What reading the file of each candidate's "one instance" would give for `tags`, from the
    index: the instance's find tags (InstanceTags) and main tags first, then its series', then its
    study's (which hold the patient's copy), as the file has one value per tag."""
    samples = [c.chain[ResourceType.INSTANCE] for c in page if ResourceType.INSTANCE in c.chain]
    found: dict[int, dict[int, tuple[int, str]]] = {sample: {} for sample in samples}
    for start in range(0, len(samples), 500):
        chunk = samples[start : start + 500]
        marks = ",".join("?" * len(chunk))
        rows = tx.fetch_all(
            "SELECT i.internalId, CASE t.id WHEN i.internalId THEN 0 WHEN s.internalId THEN 1 ELSE 2 END, "
            "t.tagGroup, t.tagElement, t.value FROM Resources i JOIN Resources s ON s.internalId = i.parentId "
            f"JOIN MainDicomTags t ON t.id IN (i.internalId, s.internalId, s.parentId) WHERE i.internalId IN ({marks}) "
            f"UNION ALL SELECT id, 0, tagGroup, tagElement, value FROM InstanceTags WHERE id IN ({marks})",
            [*chunk, *chunk],
        )
        for sample, rank, group, element, value in rows:
            tag = int(group) << 16 | int(element)
            if tag not in tags:
                continue
            values = found[int(sample)]
            previous = values.get(tag)
            if previous is None or rank < previous[0]:
                values[tag] = (int(rank), str(value))

    def tags_of(candidate: Candidate) -> Mapping[int, str]:
        sample = candidate.chain.get(ResourceType.INSTANCE)
        values = found.get(sample, {}) if sample is not None else {}
        return {tag: value for tag, (_rank, value) in values.items()}

    return tags_of


def _file_tags(
    tx: ReadTx, page: list[Candidate], settings: FindSettings, read_file: ReadFile
) -> Callable[[Candidate], Mapping[int, str]]:
    samples = [c.chain[ResourceType.INSTANCE] for c in page if ResourceType.INSTANCE in c.chain]
    files = tx.attachments(samples, FileContentType.DICOM)

    def tags_of(candidate: Candidate) -> Mapping[int, str]:
        sample = candidate.chain.get(ResourceType.INSTANCE)
        attached = files.get(sample, []) if sample is not None else []
        if not attached:
            return {}
        return file_strings(read_file(attached[0]), settings.default_encoding)

    return tags_of


def file_strings(data: bytes, default_encoding: str) -> dict[int, str]:
    """The string attributes of a DICOM file's data set, as Orthanc's DICOM-as-JSON has them
    (values over 256 bytes, binary values and sequences left out)."""
    rendered = dataset_to_json(read_dataset(data, stop_before_pixels=True), TagsFormat.FULL, default_encoding)
    return {
        int(key.replace(",", ""), 16): item["Value"]
        for key, item in rendered.items()
        if item.get("Type") == "String" and isinstance(item.get("Value"), str)
    }
