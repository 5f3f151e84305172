"""Ingest: the one path by which DICOM instances enter the archive (REST, C-STORE, import)."""
