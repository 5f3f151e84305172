"""The DICOM network front end: the server (SCP), the client (SCU), modalities, and their jobs."""
