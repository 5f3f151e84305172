"""The index schema: the DDL of every released schema version, per backend, and the version this
code serves.

The SQL of every operation is written once (`transactions.py`); only this DDL differs between
backends. The version is stored in the global property `DICOMVAULT_SCHEMA_VERSION`; additive
changes that older code tolerates bump `SCHEMA_PATCH_LEVEL` only. A released DDL is never edited:
version N is `SCHEMA_1_DDL` followed by the DDL of the migrations 2..N (`index/migrations.py`), so
a new index and an upgraded one are built by the same statements.

While a migration that re-reads the DICOM files runs, the version property holds
`upgrading_marker(N)`: a value that no version of dicomvault, older ones included, serves.
"""

from __future__ import annotations

SCHEMA_VERSION = 3
SCHEMA_PATCH_LEVEL = 0
# The value Orthanc 1.10.1 reports as `DatabaseVersion` in /system (its schema 6): clients use it to
# detect features, and our schema offers what Orthanc's 6 offers.
ORTHANC_DATABASE_VERSION = 6

# Schema 1 (dicomvault 0.1.0). Frozen: never edit.
SCHEMA_1_DDL = """
CREATE TABLE GlobalProperties(
    property INTEGER PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE Resources(
    internalId INTEGER PRIMARY KEY AUTOINCREMENT,
    resourceType INTEGER NOT NULL,
    publicId TEXT NOT NULL,
    parentId INTEGER REFERENCES Resources(internalId) ON DELETE CASCADE
);
CREATE UNIQUE INDEX PublicIndex ON Resources(publicId);
CREATE INDEX ChildrenIndex ON Resources(parentId);
CREATE INDEX ResourceTypeIndex ON Resources(resourceType, internalId);
CREATE TABLE MainDicomTags(
    id INTEGER NOT NULL REFERENCES Resources(internalId) ON DELETE CASCADE,
    tagGroup INTEGER NOT NULL,
    tagElement INTEGER NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY(id, tagGroup, tagElement)
);
CREATE TABLE Metadata(
    id INTEGER NOT NULL REFERENCES Resources(internalId) ON DELETE CASCADE,
    type INTEGER NOT NULL,
    value TEXT NOT NULL,
    revision INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(id, type)
);
CREATE TABLE AttachedFiles(
    id INTEGER NOT NULL REFERENCES Resources(internalId) ON DELETE CASCADE,
    fileType INTEGER NOT NULL,
    uuid TEXT NOT NULL,
    compressedSize INTEGER NOT NULL,
    uncompressedSize INTEGER NOT NULL,
    compressionType INTEGER NOT NULL,
    uncompressedMD5 TEXT NOT NULL,
    compressedMD5 TEXT NOT NULL,
    revision INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(id, fileType)
);
CREATE UNIQUE INDEX AttachedFilesUuid ON AttachedFiles(uuid);
CREATE TABLE Changes(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    changeType INTEGER NOT NULL,
    internalId INTEGER NOT NULL REFERENCES Resources(internalId) ON DELETE CASCADE,
    resourceType INTEGER NOT NULL,
    date TEXT NOT NULL
);
CREATE INDEX ChangesIndex ON Changes(internalId);
CREATE TABLE ExportedResources(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    resourceType INTEGER NOT NULL,
    publicId TEXT NOT NULL,
    remoteModality TEXT NOT NULL,
    patientId TEXT,
    studyInstanceUid TEXT,
    seriesInstanceUid TEXT,
    sopInstanceUid TEXT,
    date TEXT NOT NULL
);
CREATE TABLE PatientRecyclingOrder(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    patientId INTEGER NOT NULL REFERENCES Resources(internalId) ON DELETE CASCADE
);
CREATE INDEX PatientRecyclingIndex ON PatientRecyclingOrder(patientId);
CREATE TABLE Protected(
    patientId INTEGER PRIMARY KEY REFERENCES Resources(internalId) ON DELETE CASCADE
);
-- Running totals of the attachments' sizes, kept by triggers (cascaded deletes fire them too), so
-- /statistics and the recycling check cost one row read whatever the archive size.
CREATE TABLE StorageTotals(
    id INTEGER PRIMARY KEY CHECK (id = 0),
    compressedSize INTEGER NOT NULL,
    uncompressedSize INTEGER NOT NULL
);
INSERT INTO StorageTotals(id, compressedSize, uncompressedSize) VALUES (0, 0, 0);
CREATE TRIGGER AttachedFilesInserted AFTER INSERT ON AttachedFiles BEGIN
    UPDATE StorageTotals SET compressedSize = compressedSize + new.compressedSize,
                             uncompressedSize = uncompressedSize + new.uncompressedSize WHERE id = 0;
END;
CREATE TRIGGER AttachedFilesDeleted AFTER DELETE ON AttachedFiles BEGIN
    UPDATE StorageTotals SET compressedSize = compressedSize - old.compressedSize,
                             uncompressedSize = uncompressedSize - old.uncompressedSize WHERE id = 0;
END;
CREATE TRIGGER AttachedFilesUpdated AFTER UPDATE OF compressedSize, uncompressedSize ON AttachedFiles BEGIN
    UPDATE StorageTotals SET compressedSize = compressedSize - old.compressedSize + new.compressedSize,
                             uncompressedSize = uncompressedSize - old.uncompressedSize + new.uncompressedSize
    WHERE id = 0;
END;
-- dicomvault's extension: every deletion, kept after the resource is gone (Orthanc's /changes
-- forgets a deleted resource), so that replication can mirror deletions.
CREATE TABLE DeletedResources(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    resourceType INTEGER NOT NULL,
    publicId TEXT NOT NULL,
    parentPublicId TEXT,
    date TEXT NOT NULL
);
-- Finds (issue 4). Orthanc's DicomIdentifiers: the identifier tags of each resource, normalised
-- (printable ASCII, upper case, trimmed), compared by /tools/find and /tools/lookup.
CREATE TABLE DicomIdentifiers(
    id INTEGER NOT NULL REFERENCES Resources(internalId) ON DELETE CASCADE,
    tagGroup INTEGER NOT NULL,
    tagElement INTEGER NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY(id, tagGroup, tagElement)
);
CREATE INDEX DicomIdentifiersValues ON DicomIdentifiers(tagGroup, tagElement, value);
-- Case-insensitive comparisons of finds (COLLATE NOCASE folds ASCII letters, as SQLite's lower()).
CREATE INDEX MainDicomTagsValues ON MainDicomTags(tagGroup, tagElement, value COLLATE NOCASE);
-- Candidates of a find come in public id order within a level.
CREATE INDEX ResourceTypePublicIndex ON Resources(resourceType, publicId);
"""

# Schema 2: Orthanc 1.12's labels, and the tags of each instance's file that finds often
# constrain (`dicom/main_tags.py`, INSTANCE_FIND_TAGS), so that /tools/find and C-FIND answer them
# from the index instead of opening one file per candidate. Schema 1 code would store instances
# without these rows (and finds would then miss them): the version is bumped to keep it out, and
# the upgrade re-reads every file.
SCHEMA_2_DDL = """
CREATE TABLE InstanceTags(
    id INTEGER NOT NULL REFERENCES Resources(internalId) ON DELETE CASCADE,
    tagGroup INTEGER NOT NULL,
    tagElement INTEGER NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY(id, tagGroup, tagElement)
);
-- Orthanc 1.12's labels of a resource; kept when an Orthanc index that has them is adopted.
CREATE TABLE Labels(
    id INTEGER NOT NULL REFERENCES Resources(internalId) ON DELETE CASCADE,
    label TEXT NOT NULL,
    PRIMARY KEY(id, label)
);
CREATE INDEX LabelsIndex ON Labels(label);
"""

# Schema 3: the change types stored with Orthanc's numbers (enums.ChangeType), as DESIGN.md wants
# for every enumeration on disk; schema 1 and 2 numbered them their own way. Older code would
# misread every change: the version is bumped. A plain migration: one UPDATE, in one transaction
# with the version bump (on a new index, an UPDATE of nothing).
SCHEMA_3_DDL = """
UPDATE Changes SET changeType = CASE changeType
    WHEN 2 THEN 4096 WHEN 3 THEN 4097 WHEN 4 THEN 2 WHEN 5 THEN 3 WHEN 6 THEN 4 WHEN 7 THEN 5
    WHEN 8 THEN 12 WHEN 9 THEN 14 WHEN 10 THEN 13 WHEN 11 THEN 15 WHEN 12 THEN 16 ELSE changeType END;
"""

_UPGRADING_PREFIX = "upgrading-to-"


def upgrading_marker(target: int) -> str:
    """The version property's value while the migration to `target` re-reads the files. Version
    checks compare for equality with a number, so every version refuses to serve it."""
    return f"{_UPGRADING_PREFIX}{target}"


def parse_version(value: str | None) -> tuple[int | None, int | None]:
    """(version, upgrading_to) of a version property's value; (None, None) if it is neither."""
    if value is None:
        return None, None
    if value.startswith(_UPGRADING_PREFIX):
        target = value[len(_UPGRADING_PREFIX) :]
        return (None, int(target)) if target.isdigit() else (None, None)
    return (int(value), None) if value.isdigit() else (None, None)
