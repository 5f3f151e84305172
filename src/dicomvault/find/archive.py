"""Zip archives of resources (`/{level}/{id}/archive`, `/tools/create-archive`): which instances go
in, in which order, under which names, and the streamed zip itself.

The layout is Orthanc 1.10.1's, measured against it (facts, not its code):

* Folders nest `patient/study/series/file`. A patient folder is named `PatientID PatientName`, a
  study folder `AccessionNumber StudyDescription`, a series folder `Modality SeriesDescription`,
  from the main DICOM tags of the resource (an absent tag counts as empty).
* A name is first reduced to ASCII (non-ASCII characters and control characters go, except the
  line feed) and trimmed; if nothing is left it becomes `Unknown Patient` / `Unknown Study` /
  `Unknown Series`. Then only letters, digits, `.` and `_` are kept; spaces, line feeds and `^`
  become one space per run; the result is trimmed again, and may end up empty (`- -` gives an
  empty folder name). No length limit.
* Within one folder, a name already used gets `-2`, `-3`... appended (case-sensitive comparison).
* Patients, studies and series come sorted by public id; the instances of a series in the order
  they were stored, numbered from 0 in each series folder. A file is named after the first two
  bytes of the series' Modality (upper-cased) followed by the counter, zero-padded so that both
  make 8 characters, plus `.dcm` (`CT000000.dcm`, `X0000000.dcm`, `00000000.dcm` without a
  modality), then filtered as the folder names are (`C-T` gives `C000000.dcm`).
* `/tools/create-archive` accepts ids of any level. A resource asked for whole (or below one that
  is) brings all its instances; instances asked for one by one come in the order asked, and an
  instance asked twice is written twice.

Streaming: the plan (folders, O(number of series)) is computed in one read transaction before the
answer starts, so an unknown id is still a clean 404; the instances of each series are listed when
that series' turn comes, and each file is read in bounded chunks when its own turn comes, so memory
stays bounded whatever the archive size (ZIP64 is used where sizes or offsets need it).

What if a file cannot be read once the answer has started (no error status can be sent then):

* the instance was deleted meanwhile (it is no longer in the index): it is left out, as if the
  archive had been asked a moment later, and the archive stays complete and valid;
* otherwise (file missing while still indexed, or corrupted): the error is logged with the instance
  and the attachment, and the answer ends without the zip's central directory (`ArchiveInterrupted`).
  The client then holds an unreadable zip and, over HTTP/1.1, an incomplete chunked transfer, which
  no client mistakes for a complete archive; a well-formed zip silently missing images would be
  the worst outcome for medical data.
"""

from __future__ import annotations

import functools
import logging
import string
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from zipstream import ZIP_DEFLATED, ZipStream

from dicomvault.enums import FileContentType, ResourceType
from dicomvault.errors import DicomVaultError, ErrorCode
from dicomvault.index.database import Index
from dicomvault.index.transactions import ReadTx
from dicomvault.model import FileInfo, ResourceRef
from dicomvault.storage.accessor import StorageAccessor

logger = logging.getLogger(__name__)

_MODALITY = 0x00080060
# The two main DICOM tags naming the folder of each level.
_FOLDER_TAGS: dict[ResourceType, tuple[int, int]] = {
    ResourceType.PATIENT: (0x00100020, 0x00100010),  # PatientID, PatientName
    ResourceType.STUDY: (0x00080050, 0x00081030),  # AccessionNumber, StudyDescription
    ResourceType.SERIES: (0x00080060, 0x0008103E),  # Modality, SeriesDescription
}
_KEPT = frozenset(string.ascii_letters + string.digits + "._")
_SPACES = frozenset(" \t\n\v\f\r^")
_FILE_NAME_WIDTH = 8  # modality prefix + zero-padded counter
# Deflate at level 1: most of the size gain of level 6 (Orthanc's) for a fraction of the CPU; the
# entries' bytes, which are what clients use, do not depend on the level.
_COMPRESS_LEVEL = 1
CHUNK_SIZE = 1 << 20  # bytes read from one file at a time
_SEND_SIZE = 256 << 10  # small zip pieces are gathered up to this size before being sent


class ArchiveInterrupted(Exception):
    """A file could not be read after the answer had started (already logged with its context)."""


# ---- names ---------------------------------------------------------------------------------------


def _ascii(text: str) -> str:
    return "".join(ch for ch in text if ch == "\n" or " " <= ch <= "~")


def filtered(text: str) -> str:
    """Keep letters, digits, `.` and `_`; one space for each run of spaces or `^`; trimmed."""
    out: list[str] = []
    after_space = False
    for ch in text:
        if ch in _SPACES:
            if not after_space:
                out.append(" ")
                after_space = True
        elif ch in _KEPT:
            out.append(ch)
            after_space = False
    return "".join(out).strip(" ")


def folder_name(level: ResourceType, tags: dict[int, str]) -> str:
    """The folder of one patient, study or series, before making it unique in its parent."""
    first, second = _FOLDER_TAGS[level]
    text = _ascii(f"{tags.get(first, '')} {tags.get(second, '')}").strip(" \n")
    return filtered(text) if text else f"Unknown {level.label}"


def file_name(modality: str, counter: int) -> str:
    """The file of the `counter`-th instance (from 0) of a series folder."""
    prefix = modality.encode("utf-8")[:2].upper()
    width = _FILE_NAME_WIDTH - len(prefix)
    # Bytes beyond ASCII (half of a multi-byte character, possibly) are dropped by the filter.
    return filtered(prefix.decode("latin-1") + f"{counter:0{width}d}") + ".dcm"


def unique(name: str, used: set[str]) -> str:
    candidate, suffix = name, 2
    while candidate in used:
        candidate = f"{name}-{suffix}"
        suffix += 1
    used.add(candidate)
    return candidate


# ---- which instances go where --------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesFolder:
    """One series folder of the archive. `instances` is None when the whole series goes in."""

    path: str
    series: ResourceRef
    modality: str
    instances: tuple[ResourceRef, ...] | None


@dataclass(frozen=True)
class ArchiveEntry:
    """One instance of a series folder; its file name is given when it is written."""

    instance: ResourceRef
    file: FileInfo


@dataclass
class _Node:
    """A patient, study or series of the archive: whole, or only the descendants asked for."""

    ref: ResourceRef
    whole: bool = False
    children: dict[str, _Node] = field(default_factory=dict)  # by public id
    instances: list[ResourceRef] = field(default_factory=list)  # series asked for instance by instance


def _lineage(tx: ReadTx, ref: ResourceRef) -> list[ResourceRef]:
    chain = [ref]
    while chain[0].level is not ResourceType.PATIENT:
        parent = tx.parent(chain[0])
        if parent is None:  # pragma: no cover - every resource has its full ancestry
            raise DicomVaultError(ErrorCode.INTERNAL_ERROR, f"broken hierarchy above {chain[0].public_id}")
        chain.insert(0, parent)
    return chain


def _add(roots: dict[str, _Node], chain: list[ResourceRef]) -> None:
    nodes, parent = roots, None
    for ref in chain:
        if ref.level is ResourceType.INSTANCE:
            assert parent is not None
            parent.instances.append(ref)
            return
        if ref is chain[-1]:
            nodes[ref.public_id] = _Node(ref, whole=True)  # replaces whatever was asked below it
            return
        node = nodes.get(ref.public_id)
        if node is None:
            node = nodes[ref.public_id] = _Node(ref)
        elif node.whole:
            return  # already complete
        parent, nodes = node, node.children


def _folders(tx: ReadTx, nodes: dict[str, _Node], parent_path: str | None) -> Iterator[SeriesFolder]:
    used: set[str] = set()
    for public_id in sorted(nodes):
        node = nodes[public_id]
        ref = node.ref
        tags = tx.main_tags([ref.internal_id])[ref.internal_id]
        name = unique(folder_name(ref.level, tags), used)
        path = name if parent_path is None else f"{parent_path}/{name}"
        if ref.level is ResourceType.SERIES:
            explicit = None if node.whole else tuple(node.instances)
            yield SeriesFolder(path, ref, tags.get(_MODALITY, ""), explicit)
            continue
        children = node.children
        if node.whole:
            children = {c.public_id: _Node(c, whole=True) for c in tx.children([ref.internal_id])[ref.internal_id]}
        yield from _folders(tx, children, path)


def plan(tx: ReadTx, resources: Sequence[ResourceRef]) -> list[SeriesFolder]:
    """The series folders of an archive of `resources` (of any levels), in zip order."""
    roots: dict[str, _Node] = {}
    for ref in resources:
        _add(roots, _lineage(tx, ref))
    return list(_folders(tx, roots, None))


def series_entries(tx: ReadTx, folder: SeriesFolder) -> list[ArchiveEntry]:
    """The files of one series folder, as the index holds them now."""
    if folder.instances is None:
        members = tx.children([folder.series.internal_id])[folder.series.internal_id]
    else:
        members = list(folder.instances)
    files = tx.attachments(sorted({m.internal_id for m in members}), FileContentType.DICOM)
    # An instance without DICOM file (deleted meanwhile) is left out, as Orthanc leaves it out.
    return [ArchiveEntry(m, files[m.internal_id][0]) for m in members if files.get(m.internal_id)]


# ---- the zip stream ------------------------------------------------------------------------------


def stream(
    index: Index,
    accessor: StorageAccessor,
    folders: Sequence[SeriesFolder],
    label: str,
    on_file: Callable[[ArchiveEntry], None] | None = None,
) -> Iterator[bytes]:
    """The zip, piece by piece. `label` names the archive in log messages; `on_file` is told of
    each file once it is in the zip (an archive job's progress)."""
    zipped = ZipStream(compress_type=ZIP_DEFLATED, compress_level=_COMPRESS_LEVEL)
    pending: list[bytes] = []
    size = written = 0
    for folder in folders:
        counter = 0  # numbers the files actually written, from 0 in each series folder
        for entry in index.read(functools.partial(series_entries, folder=folder)):
            name = f"{folder.path}/{file_name(folder.modality, counter)}"
            chunks = _open(index, accessor, entry, name, label)
            if chunks is None:
                continue
            zipped.add(chunks, name, size=entry.file.uncompressed_size)
            counter += 1
            try:
                for piece in zipped.all_files():
                    pending.append(piece)
                    size += len(piece)
                    if size >= _SEND_SIZE:
                        yield b"".join(pending)
                        pending.clear()
                        size = 0
            except (DicomVaultError, OSError) as exc:
                logger.error(
                    "archive %s: stopped at %s (instance %s, attachment %s): %s",
                    label,
                    name,
                    entry.instance.public_id,
                    entry.file.uuid,
                    exc,
                )
                raise ArchiveInterrupted(str(exc)) from exc
            written += 1
            if on_file is not None:
                on_file(entry)
    pending.extend(zipped.footer())
    yield b"".join(pending)
    logger.info("archive %s: %d files sent", label, written)


def _open(
    index: Index, accessor: StorageAccessor, entry: ArchiveEntry, name: str, label: str
) -> Iterator[bytes] | None:
    try:
        return accessor.stream(entry.file, CHUNK_SIZE)
    except (DicomVaultError, OSError) as exc:
        still_there = index.read(lambda tx: tx.lookup(entry.instance.public_id, ResourceType.INSTANCE))
        if still_there is None:
            logger.info("archive %s: instance %s deleted meanwhile, left out", label, entry.instance.public_id)
            return None
        logger.error(
            "archive %s: cannot read %s (instance %s, attachment %s): %s",
            label,
            name,
            entry.instance.public_id,
            entry.file.uuid,
            exc,
        )
        raise ArchiveInterrupted(str(exc)) from exc
