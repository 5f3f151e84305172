"""DICOM file handling: parsing, identifiers, and Orthanc's JSON renderings."""
