"""Summaries of one resource: `/{level}/{id}/statistics` (from the index), and `/shared-tags`,
`/module`, `/module-patient` and `/instances-tags` (from the DICOM files of its instances).

Facts mirrored, all measured against Orthanc 1.10.1:

* These routes accept an id of any level at any level in the URL (`/patients/{series}/statistics`
  describes the series), except `/instances/{id}/module`, which wants an instance. Statistics show
  the counts below the resource's own level (`CountStudies` for a patient...), and sizes summed over
  every attachment of the resource and its descendants: `DiskSize` (as stored) and
  `UncompressedSize` of all of them, `DicomDiskSize` and `DicomUncompressedSize` of the DICOM
  files. Sizes are strings, their `...MB` counterparts integers (whole mebibytes, rounded down).
* Orthanc renders an instance for these routes without the elements whose tag follows (7FE0,0010)
  PixelData, whether the file has pixel data or not; the pixel data itself shows as null.
* `/shared-tags` keeps the top-level elements whose rendering is a string (no sequence, no null,
  no value over 256 bytes) equal in every instance; an instance that cannot be read is skipped.
* `/module` shows the elements of one DICOM module (the lists below) as present in *one* instance:
  Orthanc walks the descendants with a stack, so it is the last stored child at every level.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from dicomvault.dicom.main_tags import format_tag
from dicomvault.dicom.parsing import read_dataset
from dicomvault.dicom.tags_json import PIXEL_DATA, TagsFormat, dataset_to_json, drop_after_pixel_data
from dicomvault.enums import CompressionType, FileContentType, MetadataType, ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.index.database import Index
from dicomvault.index.transactions import ReadTx
from dicomvault.model import FileInfo, ResourceRef
from dicomvault.storage.accessor import StorageAccessor

logger = logging.getLogger(__name__)

_MEGABYTE = 1024 * 1024
_DEFLATED = "1.2.840.10008.1.2.1.99"


def _tags(text: str) -> frozenset[int]:
    return frozenset(int(tag, 16) for tag in text.split())


# The elements of each module, as Orthanc 1.10.1 answers them (found by asking it for the module
# of an instance holding every element of the DICOM dictionary).
MODULES: dict[ResourceType, frozenset[int]] = {
    ResourceType.PATIENT: _tags(
        "00081120 00100010 00100020 00100021 00100024 00100030 00100032 00100040 00101000 00101001 "
        "00101002 00102160 00102201 00102202 00102292 00102293 00102294 00102297 00102298 00102299 "
        "00104000 00120062 00120063 00120064"
    ),
    ResourceType.STUDY: _tags(
        "00080020 00080030 00080050 00080051 00080090 00080096 00081030 00081032 00081048 00081049 "
        "00081060 00081062 00081110 0020000d 00200010 00321034 00401012"
    ),
    ResourceType.SERIES: _tags(
        "00080021 00080031 00080060 0008103e 0008103f 00081050 00081052 00081070 00081072 00081111 "
        "00081250 00102210 00180015 00181030 00185100 0020000e 00200011 00200060 00280108 00400244 "
        "00400245 00400253 00400254 00400260 00400275 00400280"
    ),
    ResourceType.INSTANCE: _tags(
        "00080005 00080012 00080013 00080014 00080016 00080018 0008001a 0008001b 00080110 00080201 "
        "0018a001 00200013 00280303 0040a390 01000410 01000420 01000424 01000426 04000500 04000561 "
        "4ffe0001"
    ),
}


# ---- statistics (index only) ---------------------------------------------------------------------


def statistics(tx: ReadTx, ref: ResourceRef) -> dict[str, Any]:
    """`/{level}/{id}/statistics` of any resource."""
    ids = [ref.internal_id]
    counts: dict[ResourceType, int] = {}
    current = [ref.internal_id]
    level = ref.level
    while level.child is not None and current:
        level = level.child
        children = tx.children(current)
        current = [c.internal_id for kids in children.values() for c in kids]
        counts[level] = len(current)
        ids.extend(current)
    disk = plain = dicom_disk = dicom_plain = 0
    for files in tx.attachments(ids).values():
        for info in files:
            disk += info.compressed_size
            plain += info.uncompressed_size
            if info.content_type == FileContentType.DICOM:
                dicom_disk += info.compressed_size
                dicom_plain += info.uncompressed_size
    out: dict[str, Any] = {
        f"Count{level.plural.capitalize()}": counts.get(level, 0)
        for level in (ResourceType.STUDY, ResourceType.SERIES, ResourceType.INSTANCE)
        if level > ref.level
    }
    for key, value in (
        ("DiskSize", disk),
        ("UncompressedSize", plain),
        ("DicomDiskSize", dicom_disk),
        ("DicomUncompressedSize", dicom_plain),
    ):
        # As `/statistics`: byte counts as strings (they may exceed 2^53), MB as integers.
        out[key] = str(value)
        out[f"{key}MB"] = value // _MEGABYTE
    return out


# ---- which instances ------------------------------------------------------------------------------


def child_instances(tx: ReadTx, ref: ResourceRef) -> list[ResourceRef]:
    """The instances below `ref` (itself if an instance), in Orthanc's order: depth first, the
    last stored child first at every level."""
    out: list[ResourceRef] = []
    stack = [ref]
    while stack:
        top = stack.pop()
        if top.level is ResourceType.INSTANCE:
            out.append(top)
        else:
            stack.extend(tx.children([top.internal_id])[top.internal_id])
    return out


def first_instance(tx: ReadTx, ref: ResourceRef) -> ResourceRef:
    """The first of `child_instances` without listing them all: the last stored child each time."""
    current = ref
    while current.level is not ResourceType.INSTANCE:
        kids = tx.children([current.internal_id])[current.internal_id]
        if not kids:
            raise DicomVaultError(ErrorCode.UNKNOWN_RESOURCE, f"no instance below {ref.public_id}")
        current = kids[-1]
    return current


# ---- reading instances as Orthanc does -----------------------------------------------------------


@dataclass(frozen=True)
class _Located:
    """What reading one instance needs from the index: its DICOM file and where its pixels start."""

    instance: ResourceRef
    info: FileInfo
    pixel_offset: int | None
    deflated: bool


def _locate(tx: ReadTx, instances: list[ResourceRef]) -> list[_Located]:
    ids = [i.internal_id for i in instances]
    files = tx.attachments(ids, FileContentType.DICOM)
    meta = tx.metadata(ids, [MetadataType.INSTANCE_PIXEL_DATA_OFFSET, MetadataType.INSTANCE_TRANSFER_SYNTAX])
    out: list[_Located] = []
    for instance in instances:
        found = files.get(instance.internal_id)
        if not found:
            continue
        values = meta[instance.internal_id]
        offset_text = values.get(MetadataType.INSTANCE_PIXEL_DATA_OFFSET)
        offset = int(offset_text) if offset_text and offset_text.isdigit() else None
        deflated = values.get(MetadataType.INSTANCE_TRANSFER_SYNTAX) == _DEFLATED
        out.append(_Located(instance, found[0], offset, deflated))
    return out


def _dataset(accessor: StorageAccessor, located: _Located) -> Dataset:
    """The instance as Orthanc reads it for these routes: nothing after the pixel data element,
    which is kept (empty: rendered as null) when the file has one."""
    info, offset = located.info, located.pixel_offset
    if located.deflated:  # no offset into the inflated data set: read it all, then cut
        ds = read_dataset(accessor.read(info), stop_before_pixels=False)
    else:
        uncompressed = info.compression == CompressionType.NONE
        raw = accessor.read_range(info, 0, offset) if offset is not None and uncompressed else accessor.read(info)
        ds = read_dataset(raw, stop_before_pixels=True)  # the pixels are never parsed
        if offset is not None:
            ds.add_new(PIXEL_DATA, "OB", None)
    return drop_after_pixel_data(ds)


def _full_json(accessor: StorageAccessor, located: _Located, encoding: str) -> dict[str, Any]:
    return dataset_to_json(_dataset(accessor, located), TagsFormat.FULL, encoding)


def reformat(full: dict[str, Any], form: TagsFormat) -> dict[str, Any]:
    """A full rendering (`/tags`) turned into `?simplify` or `?short`."""
    if form is TagsFormat.FULL:
        return full
    out: dict[str, Any] = {}
    for key, entry in full.items():
        value = entry["Value"]
        if entry["Type"] == "Sequence":
            value = [reformat(item, form) for item in value]
        out[entry["Name"] if form is TagsFormat.SIMPLIFY else key] = value
    return dict(sorted(out.items())) if form is TagsFormat.SIMPLIFY else out


def _instances(index: Index, level: ResourceType | None, public_id: str) -> list[_Located]:
    def read(tx: ReadTx) -> list[_Located]:
        return _locate(tx, child_instances(tx, _require_any(tx, level, public_id)))

    return index.read(read)


def _require_any(tx: ReadTx, level: ResourceType | None, public_id: str) -> ResourceRef:
    ref = tx.lookup(public_id, level)
    if ref is None:
        raise DicomVaultError(ErrorCode.UNKNOWN_RESOURCE, f"unknown resource: {public_id}")
    return ref


# ---- the answers ---------------------------------------------------------------------------------


def shared_tags(
    index: Index, accessor: StorageAccessor, public_id: str, form: TagsFormat, encoding: str
) -> dict[str, Any]:
    """`/{level}/{id}/shared-tags`."""
    shared: dict[str, Any] | None = None
    for located in _instances(index, None, public_id):
        try:
            tags = _full_json(accessor, located, encoding)
        except DicomVaultError as exc:
            # As Orthanc: an instance that cannot be read (deleted meanwhile...) is skipped.
            logger.warning("shared tags of %s: instance %s skipped: %s", public_id, located.instance.public_id, exc)
            continue
        strings = {key: entry for key, entry in tags.items() if entry["Type"] == "String"}
        if shared is None:
            shared = strings
        else:
            shared = {
                key: entry
                for key, entry in shared.items()
                if key in strings and strings[key]["Value"] == entry["Value"]
            }
        if not shared:
            break  # nothing can be shared any more
    return reformat(shared or {}, form)


def module(
    index: Index,
    accessor: StorageAccessor,
    public_id: str,
    module_level: ResourceType,
    form: TagsFormat,
    encoding: str,
    resource_level: ResourceType | None = None,
) -> dict[str, Any]:
    """`/{level}/{id}/module` (and `/studies/{id}/module-patient`): the elements of the module of
    `module_level` in one instance of the resource; `resource_level` restricts the id's level."""

    def read(tx: ReadTx) -> list[_Located]:
        return _locate(tx, [first_instance(tx, _require_any(tx, resource_level, public_id))])

    found = index.read(read)
    if not found:
        raise DicomVaultError(ErrorCode.UNKNOWN_RESOURCE, f"no DICOM file below {public_id}")
    wanted = {format_tag(tag) for tag in MODULES[module_level]}
    full = _full_json(accessor, found[0], encoding)
    return reformat({key: entry for key, entry in full.items() if key in wanted}, form)


def instances_tags(
    index: Index, accessor: StorageAccessor, public_id: str, form: TagsFormat, encoding: str
) -> dict[str, Any]:
    """`/{level}/{id}/instances-tags`: the tags of every instance, by instance id."""
    return {
        located.instance.public_id: reformat(_full_json(accessor, located, encoding), form)
        for located in _instances(index, None, public_id)
    }
