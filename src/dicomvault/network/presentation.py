"""The presentation contexts the DICOM server accepts: which abstract syntaxes (SOP classes) and
which transfer syntaxes, in which order of preference.

Facts mirrored from Orthanc 1.10.1 (measured by proposing every transfer syntax to the real
server, one association at a time):

* C-ECHO, C-FIND, C-MOVE and C-GET (Patient Root and Study Root) are accepted with the three
  uncompressed syntaxes only (Explicit VR Little Endian, Explicit VR Big Endian, Implicit VR
  Little Endian).
* Every storage SOP class is accepted with the storage syntaxes that `AcceptedTransferSyntaxes`
  (UIDs with the wildcards `?` and `*`; default `1.2.840.10008.1.*`) and then the
  `*TransferSyntaxAccepted` groups (true adds the group, false removes it) leave. Orthanc knows 40
  storage syntaxes; when a peer proposes several, it picks the first of this preference order:
  Explicit VR LE, Implicit VR LE, Deflated, Explicit VR BE, the JPEG processes, JPEG-LS, JPEG 2000,
  JPIP, MPEG-2, MPEG-4, HEVC, RLE. We accept the same ones in the same order, followed by the newer
  syntaxes pydicom knows (HTJ2K, JPEG XL, fragmentable MPEG, ...) which Orthanc 1.10.1 predates:
  instances are stored as received, never decoded, so accepting them costs nothing.
* `UnknownSopClassAccepted` ("promiscuous mode") accepts, with the same storage syntaxes, any
  proposed abstract syntax that has no name in the DICOM dictionary (DCMTK's test; pydicom's
  dictionary here), and handles C-STORE on it as on a storage SOP class.

Storage contexts accept both roles, so that a C-GET requestor can be the SCP of the C-STORE
sub-operations on the same association (Orthanc accepts the role the requestor proposes).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pydicom.uid import UID
from pynetdicom import AllStoragePresentationContexts
from pynetdicom.presentation import PresentationContext

from dicomvault.config import Config

logger = logging.getLogger(__name__)

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
UNCOMPRESSED = (EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE)

# Orthanc's order for C-ECHO/FIND/MOVE/GET (its "generic" syntaxes).
GENERIC_SYNTAXES = (EXPLICIT_LE, EXPLICIT_BE, IMPLICIT_LE)

_JPEG = tuple(f"1.2.840.10008.1.2.4.{n}" for n in (*range(50, 67), 70))
_MPEG4 = tuple(f"1.2.840.10008.1.2.4.{n}" for n in range(102, 107))

# (transfer syntax, group of `*TransferSyntaxAccepted` or None), most wanted first.
STORAGE_SYNTAXES: tuple[tuple[str, str | None], ...] = (
    (EXPLICIT_LE, None),
    (IMPLICIT_LE, None),
    (DEFLATED, "Deflated"),
    (EXPLICIT_BE, None),
    *((uid, "Jpeg") for uid in _JPEG),
    ("1.2.840.10008.1.2.4.80", "JpegLossless"),  # JPEG-LS (Orthanc's "JpegLossless" group)
    ("1.2.840.10008.1.2.4.81", "JpegLossless"),
    *((f"1.2.840.10008.1.2.4.{n}", "Jpeg2000") for n in range(90, 94)),
    ("1.2.840.10008.1.2.4.94", "Jpip"),
    ("1.2.840.10008.1.2.4.95", "Jpip"),
    ("1.2.840.10008.1.2.4.100", "Mpeg2"),
    ("1.2.840.10008.1.2.4.101", "Mpeg2"),
    *((uid, "Mpeg4") for uid in _MPEG4),
    ("1.2.840.10008.1.2.4.107", "H265"),
    ("1.2.840.10008.1.2.4.108", "H265"),
    ("1.2.840.10008.1.2.5", "Rle"),
    # Newer than Orthanc 1.10.1 (accepted as received all the same).
    ("1.2.840.10008.1.2.1.98", None),  # Encapsulated Uncompressed Explicit VR Little Endian
    ("1.2.840.10008.1.2.4.100.1", "Mpeg2"),
    ("1.2.840.10008.1.2.4.101.1", "Mpeg2"),
    *((f"{uid}.1", "Mpeg4") for uid in _MPEG4),
    ("1.2.840.10008.1.2.4.201", "Jpeg2000"),  # HTJ2K
    ("1.2.840.10008.1.2.4.202", "Jpeg2000"),
    ("1.2.840.10008.1.2.4.203", "Jpeg2000"),
    ("1.2.840.10008.1.2.4.204", "Jpip"),
    ("1.2.840.10008.1.2.4.205", "Jpip"),
    ("1.2.840.10008.1.2.4.110", None),  # JPEG XL
    ("1.2.840.10008.1.2.4.111", None),
    ("1.2.840.10008.1.2.4.112", None),
    ("1.2.840.10008.1.2.8.1", "Deflated"),  # Deflated Image Frame Compression
)

VERIFICATION = "1.2.840.10008.1.1"
# Query/retrieve models Orthanc 1.10.1 answers (Patient Root, Study Root; worklists are not served).
FIND_MODELS = ("1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.5.1.4.1.2.2.1")
MOVE_MODELS = ("1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.2.2")
GET_MODELS = ("1.2.840.10008.5.1.4.1.2.1.3", "1.2.840.10008.5.1.4.1.2.2.3")

STORAGE_SOP_CLASSES: frozenset[str] = frozenset(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)
STORAGE_SERVICE_CLASS = "1.2.840.10008.4.2"  # routes C-STORE on an unknown SOP class to the storage SCP

# An A-ASSOCIATE-AC may carry at most 255 presentation contexts (odd ids 1..255, PS3.8 9.3.2.2).
MAX_CONTEXTS = 128


def _wildcard(pattern: str) -> re.Pattern[str]:
    """Orthanc's wildcards: `*` any run, `?` one character, everything else literal."""
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern))


def accepted_storage_syntaxes(config: Config) -> tuple[str, ...]:
    """The storage transfer syntaxes the configuration accepts, most wanted first."""
    patterns = [_wildcard(p) for p in config.accepted_transfer_syntaxes]
    accepted = {uid for uid, _ in STORAGE_SYNTAXES if any(p.fullmatch(uid) for p in patterns)}
    groups = {uid: group for uid, group in STORAGE_SYNTAXES}
    for group in sorted({g for g in groups.values() if g is not None}):
        flag = config.option(f"{group}TransferSyntaxAccepted")
        if flag is True:
            accepted |= {uid for uid, g in groups.items() if g == group}
        elif flag is False:
            accepted -= {uid for uid, g in groups.items() if g == group}
    ordered = tuple(uid for uid, _ in STORAGE_SYNTAXES if uid in accepted)
    if not ordered:
        logger.warning(
            "AcceptedTransferSyntaxes and the *TransferSyntaxAccepted options leave no transfer syntax: "
            "the DICOM server will refuse every C-STORE"
        )
    return ordered


def is_unknown_sop_class(uid: str) -> bool:
    """A UID the DICOM dictionary does not name: what promiscuous mode accepts."""
    return UID(uid).name == uid  # pydicom names a UID by itself when its dictionary lacks it


def _context(abstract_syntax: str, syntaxes: Sequence[str], roles: bool = False) -> PresentationContext:
    cx = PresentationContext()
    cx.abstract_syntax = UID(abstract_syntax)
    cx.transfer_syntax = [UID(ts) for ts in syntaxes]
    if roles:
        # Either role: the requestor's SCU (C-STORE to us) or SCP (C-GET sub-operations to it).
        cx.scu_role = True
        cx.scp_role = True
    return cx


@dataclass(frozen=True)
class SupportedContexts:
    """What the server accepts, built once at start-up and shared (read-only) by associations."""

    contexts: tuple[PresentationContext, ...]
    storage_syntaxes: tuple[str, ...]
    unknown_sop_class_accepted: bool

    @classmethod
    def from_config(cls, config: Config) -> SupportedContexts:
        storage = accepted_storage_syntaxes(config)
        contexts = [_context(VERIFICATION, GENERIC_SYNTAXES)]
        contexts += [_context(uid, GENERIC_SYNTAXES) for uid in (*FIND_MODELS, *MOVE_MODELS, *GET_MODELS)]
        if storage:
            contexts += [_context(uid, storage, roles=True) for uid in sorted(STORAGE_SOP_CLASSES)]
        return cls(tuple(contexts), storage, bool(config.unknown_sop_class_accepted))

    def for_request(self, proposed: Iterable[str]) -> tuple[list[PresentationContext], list[str]]:
        """The contexts to negotiate against for one association request (the shared ones, plus
        promiscuous-mode contexts for the unknown SOP classes proposed), and those unknown UIDs."""
        contexts = list(self.contexts)
        if not self.unknown_sop_class_accepted or not self.storage_syntaxes:
            return contexts, []
        known = {str(cx.abstract_syntax) for cx in self.contexts}
        unknown = sorted({uid for uid in proposed if uid not in known and is_unknown_sop_class(uid)})
        contexts += [_context(uid, self.storage_syntaxes, roles=True) for uid in unknown]
        return contexts, unknown


UNCOMPRESSED_FALLBACK = (EXPLICIT_LE, IMPLICIT_LE)


def sending_syntaxes(stored: str) -> list[str]:
    """The transfer syntaxes an instance stored in `stored` may be sent in: that one, and for an
    uncompressed (or deflated) one the uncompressed alternatives, which pynetdicom converts to
    losslessly. A compressed instance is never transcoded: if the peer refuses its syntax, its
    C-STORE sub-operation fails."""
    if stored in UNCOMPRESSED or stored == DEFLATED:
        return [stored, *(ts for ts in UNCOMPRESSED_FALLBACK if ts != stored)]
    return [stored]
