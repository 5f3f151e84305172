"""The PostgreSQL DDL of every schema version: the same tables, columns and indexes as SQLite's
(`index/schema.py`), written in PostgreSQL's words. A released DDL is never edited.

Differences that matter:
- text columns are `COLLATE "C"`: comparisons, ranges and `ORDER BY publicId` are byte-wise, as
  in SQLite, whatever the database's default locale;
- the case-insensitive index of finds is on `lower(value)` (`index/dialect.py` compares the same
  expression);
- the log tables (Changes, ExportedResources, DeletedResources) take their numbers from the
  transactional counters of `Sequences` (a BEFORE INSERT trigger), not from PostgreSQL sequences: a
  sequence hands out numbers outside transactions, so a reader could see a number whose row is not
  committed yet and a follower of `/changes` would skip that change forever; a counter row is
  locked until commit, so numbers are given in commit order and a rolled-back one is given again,
  as SQLite's AUTOINCREMENT does;
- the running totals of StorageTotals are kept by PL/pgSQL trigger functions.
"""

from __future__ import annotations

PG_SCHEMA_1_DDL = """
CREATE TABLE GlobalProperties(
    property INTEGER PRIMARY KEY,
    value TEXT COLLATE "C" NOT NULL
);
CREATE TABLE Resources(
    internalId BIGSERIAL PRIMARY KEY,
    resourceType INTEGER NOT NULL,
    publicId TEXT COLLATE "C" NOT NULL,
    parentId BIGINT REFERENCES Resources(internalId) ON DELETE CASCADE
);
CREATE UNIQUE INDEX PublicIndex ON Resources(publicId);
CREATE INDEX ChildrenIndex ON Resources(parentId);
CREATE INDEX ResourceTypeIndex ON Resources(resourceType, internalId);
CREATE TABLE MainDicomTags(
    id BIGINT NOT NULL REFERENCES Resources(internalId) ON DELETE CASCADE,
    tagGroup INTEGER NOT NULL,
    tagElement INTEGER NOT NULL,
    value TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY(id, tagGroup, tagElement)
);
CREATE TABLE Metadata(
    id BIGINT NOT NULL REFERENCES Resources(internalId) ON DELETE CASCADE,
    type INTEGER NOT NULL,
    value TEXT COLLATE "C" NOT NULL,
    revision INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(id, type)
);
CREATE TABLE AttachedFiles(
    id BIGINT NOT NULL REFERENCES Resources(internalId) ON DELETE CASCADE,
    fileType INTEGER NOT NULL,
    uuid TEXT COLLATE "C" NOT NULL,
    compressedSize BIGINT NOT NULL,
    uncompressedSize BIGINT NOT NULL,
    compressionType INTEGER NOT NULL,
    uncompressedMD5 TEXT COLLATE "C" NOT NULL,
    compressedMD5 TEXT COLLATE "C" NOT NULL,
    revision INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY(id, fileType)
);
CREATE UNIQUE INDEX AttachedFilesUuid ON AttachedFiles(uuid);
CREATE TABLE Sequences(
    name TEXT COLLATE "C" PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO Sequences(name, value) VALUES ('changes', 0), ('exportedresources', 0), ('deletedresources', 0);
CREATE FUNCTION NextSequenceValue() RETURNS TRIGGER AS $$
BEGIN
    UPDATE Sequences SET value = value + 1 WHERE name = lower(TG_TABLE_NAME) RETURNING value INTO NEW.seq;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TABLE Changes(
    seq BIGINT PRIMARY KEY,
    changeType INTEGER NOT NULL,
    internalId BIGINT NOT NULL REFERENCES Resources(internalId) ON DELETE CASCADE,
    resourceType INTEGER NOT NULL,
    date TEXT COLLATE "C" NOT NULL
);
CREATE INDEX ChangesIndex ON Changes(internalId);
CREATE TRIGGER ChangesNumbered BEFORE INSERT ON Changes FOR EACH ROW EXECUTE FUNCTION NextSequenceValue();
CREATE TABLE ExportedResources(
    seq BIGINT PRIMARY KEY,
    resourceType INTEGER NOT NULL,
    publicId TEXT COLLATE "C" NOT NULL,
    remoteModality TEXT COLLATE "C" NOT NULL,
    patientId TEXT COLLATE "C",
    studyInstanceUid TEXT COLLATE "C",
    seriesInstanceUid TEXT COLLATE "C",
    sopInstanceUid TEXT COLLATE "C",
    date TEXT COLLATE "C" NOT NULL
);
CREATE TRIGGER ExportedResourcesNumbered BEFORE INSERT ON ExportedResources
    FOR EACH ROW EXECUTE FUNCTION NextSequenceValue();
CREATE TABLE PatientRecyclingOrder(
    seq BIGSERIAL PRIMARY KEY,
    patientId BIGINT NOT NULL REFERENCES Resources(internalId) ON DELETE CASCADE
);
CREATE INDEX PatientRecyclingIndex ON PatientRecyclingOrder(patientId);
CREATE TABLE Protected(
    patientId BIGINT PRIMARY KEY REFERENCES Resources(internalId) ON DELETE CASCADE
);
CREATE TABLE StorageTotals(
    id INTEGER PRIMARY KEY CHECK (id = 0),
    compressedSize BIGINT NOT NULL,
    uncompressedSize BIGINT NOT NULL
);
INSERT INTO StorageTotals(id, compressedSize, uncompressedSize) VALUES (0, 0, 0);
CREATE FUNCTION StorageTotalsUpdate() RETURNS TRIGGER AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE StorageTotals SET compressedSize = compressedSize + NEW.compressedSize,
                                 uncompressedSize = uncompressedSize + NEW.uncompressedSize WHERE id = 0;
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE StorageTotals SET compressedSize = compressedSize - OLD.compressedSize,
                                 uncompressedSize = uncompressedSize - OLD.uncompressedSize WHERE id = 0;
    ELSE
        UPDATE StorageTotals SET compressedSize = compressedSize - OLD.compressedSize + NEW.compressedSize,
                                 uncompressedSize = uncompressedSize - OLD.uncompressedSize + NEW.uncompressedSize
        WHERE id = 0;
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER AttachedFilesInserted AFTER INSERT ON AttachedFiles
    FOR EACH ROW EXECUTE FUNCTION StorageTotalsUpdate();
CREATE TRIGGER AttachedFilesDeleted AFTER DELETE ON AttachedFiles
    FOR EACH ROW EXECUTE FUNCTION StorageTotalsUpdate();
CREATE TRIGGER AttachedFilesUpdated AFTER UPDATE OF compressedSize, uncompressedSize ON AttachedFiles
    FOR EACH ROW EXECUTE FUNCTION StorageTotalsUpdate();
CREATE TABLE DeletedResources(
    seq BIGINT PRIMARY KEY,
    resourceType INTEGER NOT NULL,
    publicId TEXT COLLATE "C" NOT NULL,
    parentPublicId TEXT COLLATE "C",
    date TEXT COLLATE "C" NOT NULL
);
CREATE TRIGGER DeletedResourcesNumbered BEFORE INSERT ON DeletedResources
    FOR EACH ROW EXECUTE FUNCTION NextSequenceValue();
CREATE TABLE DicomIdentifiers(
    id BIGINT NOT NULL REFERENCES Resources(internalId) ON DELETE CASCADE,
    tagGroup INTEGER NOT NULL,
    tagElement INTEGER NOT NULL,
    value TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY(id, tagGroup, tagElement)
);
CREATE INDEX DicomIdentifiersValues ON DicomIdentifiers(tagGroup, tagElement, value);
CREATE INDEX MainDicomTagsValues ON MainDicomTags(tagGroup, tagElement, lower(value));
CREATE INDEX ResourceTypePublicIndex ON Resources(resourceType, publicId);
"""

PG_SCHEMA_2_DDL = """
CREATE TABLE InstanceTags(
    id BIGINT NOT NULL REFERENCES Resources(internalId) ON DELETE CASCADE,
    tagGroup INTEGER NOT NULL,
    tagElement INTEGER NOT NULL,
    value TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY(id, tagGroup, tagElement)
);
CREATE TABLE Labels(
    id BIGINT NOT NULL REFERENCES Resources(internalId) ON DELETE CASCADE,
    label TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY(id, label)
);
CREATE INDEX LabelsIndex ON Labels(label);
"""
