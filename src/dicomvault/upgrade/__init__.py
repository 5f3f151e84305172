"""Schema upgrades: the driver (`dicomvault upgrade`), the re-read pass of migrations that parse
every stored file again, the backup copy, and the adoption of an Orthanc 1.x index."""
