"""dicomvault: a DICOM archive server that speaks Orthanc's language (REST API, configuration,
storage layout, DICOM services)."""

from __future__ import annotations

__version__ = "0.1.0"
