"""`replicate --copy-metadata`: what Orthanc's own Replicate.py leaves behind, copied with each
instance: its user metadata, its user attachments and its labels.

* User metadata are those outside Orthanc's reserved names (listed below: Orthanc 1.10.1's
  MetadataType names plus later ones), read with `/instances/{id}/metadata?expand` and written with
  `PUT /instances/{id}/metadata/{name}`. A name must be declared at the target too (`UserMetadata`);
  an undeclared one is refused there and reported as a failure with Orthanc's reason.
* User attachments are those other than `dicom`, `dicom-as-json` and `dicom-until-pixel-data`:
  `GET .../attachments/{name}/data`, then `PUT .../attachments/{name}`.
* Labels (`/instances/{id}/labels`, a newer Orthanc feature) are copied only when both servers
  have the route: Orthanc 1.10.1 answers 404 to it, and so does the target then.
Only instance-level metadata and attachments are copied: those of series, studies and patients
are not (yet).
"""

from __future__ import annotations

import logging
import urllib.parse

from dicomvault.replication.client import OrthancClient, ServerError

logger = logging.getLogger(__name__)

RESERVED_METADATA = frozenset(
    {
        "IndexInSeries",
        "ReceptionDate",
        "RemoteAET",
        "ExpectedNumberOfInstances",
        "ModifiedFrom",
        "AnonymizedFrom",
        "LastUpdate",
        "Origin",
        "TransferSyntax",
        "SopClassUid",
        "RemoteIP",
        "CalledAET",
        "HttpUsername",
        "PixelDataOffset",
        "MainDicomTagsSignature",
        "MainDicomSequences",
        "PixelDataVR",
    }
)
SYSTEM_ATTACHMENTS = frozenset({"dicom", "dicom-as-json", "dicom-until-pixel-data"})

_FOUND_OR_NOT = frozenset({200, 404})


def copy_extras(source: OrthancClient, target: OrthancClient, instance: str) -> str | None:
    """Copy the user metadata, user attachments and labels of an instance both servers hold; the
    reason of the first refusal, or None when all was copied."""
    base = f"/instances/{instance}"
    try:
        answer = source.request("GET", f"{base}/metadata", params={"expand": ""}, ok_statuses=_FOUND_OR_NOT)
        metadata = answer.json() if answer.status_code == 200 else {}
        for name, value in sorted(metadata.items() if isinstance(metadata, dict) else ()):
            if name in RESERVED_METADATA:
                continue
            target.request("PUT", f"{base}/metadata/{_quote(name)}", content=str(value).encode())
        answer = source.request("GET", f"{base}/attachments", ok_statuses=_FOUND_OR_NOT)
        attachments = answer.json() if answer.status_code == 200 else []
        for name in attachments if isinstance(attachments, list) else ():
            if name in SYSTEM_ATTACHMENTS:
                continue
            data = source.request("GET", f"{base}/attachments/{_quote(name)}/data", ok_statuses=_FOUND_OR_NOT)
            if data.status_code == 200:
                target.request("PUT", f"{base}/attachments/{_quote(name)}", content=data.content)
        answer = source.request("GET", f"{base}/labels", ok_statuses=_FOUND_OR_NOT)
        labels = answer.json() if answer.status_code == 200 else []
        for label in labels if isinstance(labels, list) else ():
            target.request("PUT", f"{base}/labels/{_quote(label)}", content=b"")
    except ServerError as exc:
        logger.warning("instance %s: its metadata, attachments or labels were not all copied: %s", instance, exc)
        return str(exc)
    return None


def _quote(name: object) -> str:
    return urllib.parse.quote(str(name), safe="")
