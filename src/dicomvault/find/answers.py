"""The answer of a find: public ids, or expanded descriptions (`resources.describe`) whose tags
are in Orthanc's Human (names), Short (`gggg,eeee`) or Full (`{"Name", "Type", "Value"}`) format,
plus `RequestedTags` when asked.

`RequestedTags` is newer than Orthanc 1.10.1 (which ignores it); it follows Orthanc's current
documentation: with `Expand`, each resource gets a `RequestedTags` object holding the requested
tags it has, from its main DICOM tags and those of its parents, from the tags Orthanc computes
(`ModalitiesInStudy`, `SOPClassesInStudy`, the `NumberOf...Related...` counts,
`InstanceAvailability`), and otherwise from the DICOM file of its first instance. A tag the
resource does not have is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from dicomvault.dicom.main_tags import MAIN_TAGS, PATIENT_TAGS, TAG_NAMES, format_tag
from dicomvault.dicom.tags_json import TagsFormat, tag_name
from dicomvault.enums import FileContentType, MetadataType, ResourceType
from dicomvault.find.finder import MODALITY, ReadFile, file_strings
from dicomvault.index.find import parents_of, tag_values
from dicomvault.index.transactions import ReadTx
from dicomvault.model import ResourceRef

_TAG_OF_NAME = {name: tag for tag, name in TAG_NAMES.items()}
_TAGGED_KEYS = ("MainDicomTags", "PatientMainDicomTags")

MODALITIES_IN_STUDY = 0x00080061
SOP_CLASSES_IN_STUDY = 0x00080062
INSTANCE_AVAILABILITY = 0x00080056
_COUNTS: dict[ResourceType, dict[int, ResourceType]] = {
    ResourceType.PATIENT: {
        0x00201200: ResourceType.STUDY,  # NumberOfPatientRelatedStudies
        0x00201202: ResourceType.SERIES,  # NumberOfPatientRelatedSeries
        0x00201204: ResourceType.INSTANCE,  # NumberOfPatientRelatedInstances
    },
    ResourceType.STUDY: {
        0x00201206: ResourceType.SERIES,  # NumberOfStudyRelatedSeries
        0x00201208: ResourceType.INSTANCE,  # NumberOfStudyRelatedInstances
    },
    ResourceType.SERIES: {0x00201209: ResourceType.INSTANCE},  # NumberOfSeriesRelatedInstances
    ResourceType.INSTANCE: {},
}


def format_tags(tags: dict[int, str], form: TagsFormat, names: Callable[[int], str] = tag_name) -> dict[str, Any]:
    """Tags in one of Orthanc's formats (Human uses `names`)."""
    if form is TagsFormat.SHORT:
        return {format_tag(tag): value for tag, value in tags.items()}
    if form is TagsFormat.FULL:
        return {
            format_tag(tag): {"Name": _human_name(tag), "Type": "String", "Value": value} for tag, value in tags.items()
        }
    return {names(tag): value for tag, value in tags.items()}


def _reformat(item: dict[str, Any], form: TagsFormat) -> dict[str, Any]:
    if form is TagsFormat.SIMPLIFY:
        return item
    for key in _TAGGED_KEYS:
        if key in item:
            by_tag = {_TAG_OF_NAME[name]: value for name, value in item[key].items()}
            item[key] = format_tags(by_tag, form)
    return item


def render(
    tx: ReadTx,
    refs: Sequence[ResourceRef],
    expand: bool,
    form: TagsFormat,
    requested: Sequence[int],
    describe_resources: Callable[[ReadTx, Sequence[ResourceRef]], list[dict[str, Any]]],
    read_file: ReadFile,
    default_encoding: str,
) -> list[Any]:
    """The JSON answer of a find for `refs` (all of one level)."""
    if not expand:
        return [ref.public_id for ref in refs]
    items = [_reformat(item, form) for item in describe_resources(tx, refs)]
    if requested and refs:
        values = requested_tags(tx, refs, requested, read_file, default_encoding)
        for item, ref in zip(items, refs, strict=True):
            item["RequestedTags"] = format_tags(values[ref.internal_id], form, _human_name)
    return items


def _human_name(tag: int) -> str:
    # Orthanc names its main DICOM tags itself (OtherPatientIDs, not DCMTK's RETIRED_ name).
    return TAG_NAMES.get(tag) or tag_name(tag)


def requested_tags(
    tx: ReadTx, refs: Sequence[ResourceRef], tags: Sequence[int], read_file: ReadFile, default_encoding: str
) -> dict[int, dict[int, str]]:
    """Internal id -> the requested tags each resource has (see the module docstring)."""
    level = refs[0].level
    ids = [ref.internal_id for ref in refs]
    out: dict[int, dict[int, str]] = {iid: {} for iid in ids}
    # Main DICOM tags of the resource and its parents (a study's copy of the patient tags first).
    chains: dict[int, list[int]] = {iid: [iid] for iid in ids}
    current = {iid: iid for iid in ids}
    for _ in range(level - ResourceType.PATIENT):
        parents = parents_of(tx, list(set(current.values())))
        current = {iid: parents[node].internal_id for iid, node in current.items()}
        for iid, node in current.items():
            chains[iid].append(node)
    visible = {tag for k in ResourceType if k <= level for tag, _ in MAIN_TAGS[k]}
    if level is not ResourceType.PATIENT:
        visible |= {tag for tag, _ in PATIENT_TAGS}
    wanted_main = [tag for tag in tags if tag in visible]
    if wanted_main:
        values = tag_values(tx, (node for chain in chains.values() for node in chain), wanted_main)
        for iid, chain in chains.items():
            for tag in wanted_main:
                found = next((values[node][tag] for node in chain if tag in values[node]), None)
                if found is not None:
                    out[iid][tag] = found
    computed = _computed(tx, level, ids, [tag for tag in tags if tag not in visible])
    for iid, found_tags in computed.items():
        out[iid].update(found_tags)
    missing = [tag for tag in tags if tag not in visible and not _is_computed(level, tag)]
    if missing:
        first = _first_instances(tx, level, ids)
        files = tx.attachments(list(first.values()), FileContentType.DICOM)
        for iid, instance in first.items():
            attached = files.get(instance) or []
            if attached:
                strings = file_strings(read_file(attached[0]), default_encoding)
                out[iid].update({tag: strings[tag] for tag in missing if tag in strings})
    return {iid: {tag: found[tag] for tag in tags if tag in found} for iid, found in out.items()}


def _is_computed(level: ResourceType, tag: int) -> bool:
    if tag in _COUNTS[level]:
        return True
    if level is ResourceType.STUDY and tag in (MODALITIES_IN_STUDY, SOP_CLASSES_IN_STUDY):
        return True
    return level is ResourceType.INSTANCE and tag == INSTANCE_AVAILABILITY


def _computed(tx: ReadTx, level: ResourceType, ids: list[int], tags: list[int]) -> dict[int, dict[int, str]]:
    out: dict[int, dict[int, str]] = {iid: {} for iid in ids}
    wanted = [tag for tag in tags if _is_computed(level, tag)]
    if not wanted:
        return out
    if level is ResourceType.INSTANCE:
        return {iid: {INSTANCE_AVAILABILITY: "ONLINE"} for iid in ids}
    # Descendants level by level: owner (a requested resource) -> its resources at each level.
    below: dict[ResourceType, dict[int, list[int]]] = {}
    frontier = {iid: [iid] for iid in ids}
    for k in range(level + 1, ResourceType.INSTANCE + 1):
        children = tx.children([node for nodes in frontier.values() for node in nodes])
        frontier = {iid: [c.internal_id for node in nodes for c in children[node]] for iid, nodes in frontier.items()}
        below[ResourceType(k)] = frontier
    for tag, counted in _COUNTS[level].items():
        if tag in wanted:
            for iid in ids:
                out[iid][tag] = str(len(below[counted][iid]))
    if MODALITIES_IN_STUDY in wanted:
        series = below[ResourceType.SERIES]
        modalities = tag_values(tx, (s for nodes in series.values() for s in nodes), [MODALITY])
        for iid in ids:
            found = {modalities[s][MODALITY] for s in series[iid] if modalities[s].get(MODALITY)}
            out[iid][MODALITIES_IN_STUDY] = "\\".join(sorted(found))
    if SOP_CLASSES_IN_STUDY in wanted:
        instances = below[ResourceType.INSTANCE]
        sop = MetadataType.INSTANCE_SOP_CLASS_UID
        classes = tx.metadata([i for nodes in instances.values() for i in nodes], [sop])
        for iid in ids:
            found = {classes[i][sop] for i in instances[iid] if classes[i].get(sop)}
            out[iid][SOP_CLASSES_IN_STUDY] = "\\".join(sorted(found))
    return out


def _first_instances(tx: ReadTx, level: ResourceType, ids: list[int]) -> dict[int, int]:
    """Resource -> its first instance (first child, recursively)."""
    current = {iid: iid for iid in ids}
    for _ in range(level, ResourceType.INSTANCE):
        children = tx.children(list(set(current.values())))
        current = {iid: children[node][0].internal_id for iid, node in current.items() if children[node]}
    return current
