"""The index side of finds: Orthanc's `DicomIdentifiers` (normalised copies of the identifier tags,
written at ingest), the SQL pre-selection of candidates from constraints (Orthanc's
`ISqlLookupFormatter`: the same comparisons, so SQLite accepts exactly what Orthanc's SQLite
accepts), and the reads the matching step needs (stored values, first child instances).

Orthanc compares identifiers (`IDENTIFIER_TAGS`) on their normalised value, always case-sensitively,
and every other main DICOM tag on its stored value, ignoring ASCII case when the search is
case-insensitive. Candidates come in Orthanc's order: public id order for patients, studies and
series (its `GROUP BY publicId`), creation order for instances. With a database limit (Orthanc's
`LimitFindResults` + 1), they are the resources of the first rows of Orthanc's SQL (creation order,
one row per matching descendant when lower levels are constrained), put in that order.

How it stays fast: one statement per find, starting from the rows of one constrained tag (an index
seek on `(tagGroup, tagElement, value)` for equalities and ranges) rather than from every resource
of the level; the values the matching step needs come in the same rows; rows are read in batches
from one cursor, so a find stopped by `Limit` reads little and none holds every candidate.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from dicomvault.dicom.main_tags import MAIN_TAGS
from dicomvault.enums import ResourceType
from dicomvault.index.dialect import Dialect
from dicomvault.model import ResourceRef

if TYPE_CHECKING:
    from dicomvault.index.transactions import ReadTx, WriteTx

PATIENT_ID = 0x00100020
PATIENT_NAME = 0x00100010
PATIENT_BIRTH_DATE = 0x00100030

# The tags Orthanc keeps normalised per level (its ServerToolbox identifiers): the study level
# repeats the patient's, as it repeats every patient main tag.
IDENTIFIER_TAGS: dict[ResourceType, tuple[int, ...]] = {
    ResourceType.PATIENT: (PATIENT_ID, PATIENT_NAME, PATIENT_BIRTH_DATE),
    ResourceType.STUDY: (
        PATIENT_ID,
        PATIENT_NAME,
        PATIENT_BIRTH_DATE,
        0x0020000D,  # StudyInstanceUID
        0x00080050,  # AccessionNumber
        0x00081030,  # StudyDescription
        0x00080020,  # StudyDate
    ),
    ResourceType.SERIES: (0x0020000E,),  # SeriesInstanceUID
    ResourceType.INSTANCE: (0x00080018,),  # SOPInstanceUID
}

_PAGE = 1000
_CHUNK = 500
_ALIASES = {
    ResourceType.PATIENT: "patients",
    ResourceType.STUDY: "studies",
    ResourceType.SERIES: "series",
    ResourceType.INSTANCE: "instances",
}


def normalize_identifier(value: str) -> str:
    """Orthanc's normalised identifier: printable ASCII only (`%` and `_` become spaces, anything
    else is dropped), upper case, no surrounding spaces."""
    kept = [" " if c in "%_" else c for c in value if " " <= c <= "~"]
    return "".join(kept).upper().strip(" ")


def add_identifiers(tx: WriteTx, internal_id: int, level: ResourceType, tags: Iterable[tuple[int, str]]) -> None:
    """Index the normalised identifiers of a new resource (called with its main DICOM tags)."""
    wanted = IDENTIFIER_TAGS[level]
    rows = [(internal_id, tag >> 16, tag & 0xFFFF, normalize_identifier(value)) for tag, value in tags if tag in wanted]
    if rows:
        tx.execute_many("INSERT INTO DicomIdentifiers(id, tagGroup, tagElement, value) VALUES (?, ?, ?, ?)", rows)


# ---- constraints as the database sees them ------------------------------------------------------


class Comparison(Enum):
    EQUAL = "="
    SMALLER_OR_EQUAL = "<="
    GREATER_OR_EQUAL = ">="
    WILDCARD = "LIKE"
    LIST = "IN"


@dataclass(frozen=True)
class DatabaseConstraint:
    """One constraint on the value a resource of `level` stores for `tag` (Orthanc's
    `DatabaseConstraint`). Identifier constraints carry normalised values and are case-sensitive.
    A WILDCARD value keeps DICOM's `*` and `?`."""

    level: ResourceType
    tag: int
    identifier: bool
    comparison: Comparison
    values: tuple[str, ...]
    case_sensitive: bool
    mandatory: bool = True


def like_pattern(value: str) -> str:
    out: list[str] = []
    for char in value:
        if char == "*":
            out.append("%")
        elif char == "?":
            out.append("_")
        elif char in "%_\\":
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


def _bind(value: str, params: list[Any], dialect: Dialect) -> str:
    """A placeholder for a value. A value that is not valid UTF-8 (bytes of a request body kept as
    surrogate escapes) is bound as its bytes, compared byte for byte as Orthanc's SQLite does."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = value.encode("utf-8", "surrogatepass")
        return dialect.bind_bytes(raw, params)
    params.append(value)
    return "?"


def _comparison(column: str, c: DatabaseConstraint, params: list[Any], dialect: Dialect) -> str | None:
    """The SQL condition of one constraint (None: only the presence of the row counts).

    Orthanc writes `lower(value) = lower(?)` for case-insensitive comparisons; SQLite's `COLLATE
    NOCASE` folds exactly the same characters (ASCII letters only, as SQLite's `lower()`) and lets
    SQLite use the index on `value COLLATE NOCASE` (`index/dialect.py` says it for each backend).
    LIKE ignores ASCII case: the matching step applies the case rules afterwards."""
    if c.comparison is Comparison.WILDCARD:
        if c.values[0] == "*":
            return None
        return dialect.like_nocase(column, _bind(like_pattern(c.values[0]), params, dialect))
    seekable = not c.identifier  # MainDicomTags has a case-insensitive index on value only
    if c.comparison is Comparison.LIST:
        marks = [_bind(v, params, dialect) for v in c.values]
        if not c.case_sensitive:
            return dialect.nocase_in(column, marks)
        if not seekable:
            return f"{column} IN ({', '.join(marks)})"
        again = ", ".join(_bind(v, params, dialect) for v in c.values)
        return f"({dialect.nocase_in(column, marks)} AND {column} IN ({again}))"
    op = c.comparison.value
    mark = _bind(c.values[0], params, dialect)
    if not c.case_sensitive:
        return dialect.nocase_compare(column, op, mark)
    if seekable and c.comparison is Comparison.EQUAL:
        again = _bind(c.values[0], params, dialect)
        return f"({dialect.nocase_compare(column, '=', mark)} AND {column} = {again})"
    return f"{column} {op} {mark}"


class _Clauses:
    """Joins and conditions being built, each with its parameters (joins come first in the
    statement, then conditions)."""

    def __init__(self, dialect: Dialect, first_alias: int = 0) -> None:
        self.dialect = dialect
        self.joins: list[str] = []
        self.join_params: list[Any] = []
        self.where: list[str] = []
        self.where_params: list[Any] = []
        self.aliases: dict[tuple[ResourceType, int], str] = {}  # (level, tag) -> a MainDicomTags join
        self._joined: dict[tuple[ResourceType, int, bool], str] = {}
        self._next = first_alias

    def constrain(self, owner: str, c: DatabaseConstraint, driver: bool = False) -> None:
        """Join the constraint's table; the driver is the first table of the statement instead."""
        if not c.mandatory and c.comparison is Comparison.WILDCARD and c.values[0] == "*":
            return  # universal match on an optional tag: no condition at all
        table = "DicomIdentifiers" if c.identifier else "MainDicomTags"
        key = (c.level, c.tag, c.identifier)
        if c.mandatory and key in self._joined:
            # A second condition on the same row (the two bounds of a range): one join, so that
            # SQLite scans the index between both bounds.
            self._condition(self._joined[key], c)
            return
        alias = f"t{self._next}"
        self._next += 1
        if c.mandatory:
            self._joined[key] = alias
        tag_params = [c.tag >> 16, c.tag & 0xFFFF]
        if driver:
            self.where.append(f"{alias}.tagGroup = ? AND {alias}.tagElement = ?")
            self.where_params += tag_params
        else:
            kind = "JOIN" if c.mandatory else "LEFT JOIN"
            self.joins.append(
                f"{kind} {table} {alias} ON {alias}.id = {owner}.internalId "
                f"AND {alias}.tagGroup = ? AND {alias}.tagElement = ?"
            )
            self.join_params += tag_params
        if not c.identifier and c.mandatory:
            self.aliases.setdefault((c.level, c.tag), alias)
        self._condition(alias, c)

    def _condition(self, alias: str, c: DatabaseConstraint) -> None:
        params: list[Any] = []
        condition = _comparison(f"{alias}.value", c, params, self.dialect)
        if condition is not None:
            self.where.append(condition if c.mandatory else f"({alias}.value IS NULL OR {condition})")
            self.where_params += params


@dataclass(frozen=True)
class Candidate:
    """A resource that passed the database pre-selection. `chain` holds the internal ids of the
    related resources asked for: ancestors, or first descendants (Orthanc's "one instance of the
    resource" is its first child, recursively, in creation order); `values` the stored value of
    each tag asked for, taken from the first of its levels that has it."""

    ref: ResourceRef
    chain: dict[ResourceType, int]
    values: dict[int, str]


def _first_child(expr: str) -> str:
    return f"(SELECT MIN(c.internalId) FROM Resources c WHERE c.parentId = {expr})"


def _descendant_joins(level: ResourceType, deepest: ResourceType) -> list[str]:
    return [
        f"JOIN Resources {_ALIASES[ResourceType(k)]} ON {_ALIASES[ResourceType(k)]}.parentId = "
        f"{_ALIASES[ResourceType(k - 1)]}.internalId"
        for k in range(level + 1, deepest + 1)
    ]


def _lower_levels(dialect: Dialect, level: ResourceType, lower: Sequence[DatabaseConstraint]) -> tuple[str, list[Any]]:
    """EXISTS over one chain of descendants satisfying every lower-level constraint (Orthanc
    joins one row per level, so they all hold on the same series, the same instance)."""
    clauses = _Clauses(dialect, first_alias=100)
    for c in lower:
        clauses.constrain(_ALIASES[c.level], c)
    child = _ALIASES[ResourceType(level + 1)]
    chain = _descendant_joins(ResourceType(level + 1), max(c.level for c in lower))
    conditions = " AND ".join([f"{child}.parentId = {_ALIASES[level]}.internalId", *clauses.where])
    sql = f"EXISTS (SELECT 1 FROM Resources {child} {' '.join(chain + clauses.joins)} WHERE {conditions})"
    return sql, [*clauses.join_params, *clauses.where_params]


_SEEK_ORDER = {
    Comparison.EQUAL: 0,
    Comparison.LIST: 0,
    Comparison.GREATER_OR_EQUAL: 1,
    Comparison.SMALLER_OR_EQUAL: 1,
    Comparison.WILDCARD: 2,
}


def _driver(level: ResourceType, constraints: Sequence[DatabaseConstraint]) -> DatabaseConstraint | None:
    """The constraint whose table the statement starts from: scanning the rows of one tag (an
    index seek for equalities) and sorting the matches is much faster than walking every resource
    of the level in public id order and probing its tags."""
    eligible = [c for c in constraints if c.level == level and c.mandatory]
    return min(eligible, key=lambda c: _SEEK_ORDER[c.comparison], default=None)


@dataclass(frozen=True)
class _Statement:
    select: str  # SELECT ... FROM ... JOIN ... WHERE ...
    params: list[Any]
    chain: list[ResourceType]  # levels of the id columns after internalId and publicId
    values: list[int]  # tags of the value columns after those
    row_order: str  # the creation order of the rows (descendants included when joined)


def _id_of(level: ResourceType, k: ResourceType) -> str:
    if k <= level:
        return f"{_ALIASES[k]}.internalId"
    expr = f"{_ALIASES[level]}.internalId"
    for _ in range(level, k):
        expr = _first_child(expr)
    return expr


def _candidate_sql(
    dialect: Dialect,
    level: ResourceType,
    constraints: Sequence[DatabaseConstraint],
    chain: Sequence[ResourceType],
    values: Mapping[int, Sequence[ResourceType]],
    join_lower: bool,
) -> _Statement:
    """The pre-selection statement. With `join_lower`, lower-level constraints are joins, one row
    per matching chain of descendants as in Orthanc's SQL (what its LIMIT counts); otherwise an
    EXISTS, one row per candidate."""
    me = _ALIASES[level]
    upper = [c.level for c in constraints if c.level < level]
    upper += [k for k in chain if k < level] + [k for found in values.values() for k in found if k < level]
    top = min(upper, default=level)
    joins = [
        f"JOIN Resources {_ALIASES[ResourceType(k)]} ON {_ALIASES[ResourceType(k)]}.internalId = "
        f"{_ALIASES[ResourceType(k + 1)]}.parentId"
        for k in range(level - 1, top - 1, -1)
    ]
    driver = _driver(level, constraints)
    clauses = _Clauses(dialect)
    if driver is not None:
        clauses.constrain(me, driver, driver=True)
        table = "DicomIdentifiers" if driver.identifier else "MainDicomTags"
        start = f"{table} t0 {dialect.forced_join} Resources {me} "
        start += f"ON {me}.internalId = t0.id"
    else:
        start = f"Resources {me}"
    for c in constraints:
        if c.level <= level and c is not driver:
            clauses.constrain(_ALIASES[c.level], c)
    lower = [c for c in constraints if c.level > level]
    descendants: list[ResourceType] = []
    if lower and join_lower:
        deepest = max(c.level for c in lower)
        descendants = [ResourceType(k) for k in range(level + 1, deepest + 1)]
        joins += _descendant_joins(level, deepest)
        for c in lower:
            clauses.constrain(_ALIASES[c.level], c)
    where = [*clauses.where, f"{me}.resourceType = ?"]
    where_params = [*clauses.where_params, int(level)]
    if lower and not join_lower:
        exists, exists_params = _lower_levels(dialect, level, lower)
        where.append(exists)
        where_params += exists_params
    columns = [f"{me}.internalId", f"{me}.publicId", *(_id_of(level, k) for k in chain)]
    for tag, levels in values.items():
        reused = clauses.aliases.get((levels[0], tag)) if levels else None
        if reused is not None:
            columns.append(f"{reused}.value")
            continue
        lookups = [
            f"(SELECT v.value FROM MainDicomTags v WHERE v.id = {_id_of(level, k)} "
            f"AND v.tagGroup = {tag >> 16} AND v.tagElement = {tag & 0xFFFF})"
            for k in levels
        ]
        columns.append(lookups[0] if len(lookups) == 1 else f"COALESCE({', '.join(lookups)})")
    row_order = ", ".join(f"{_ALIASES[k]}.internalId" for k in [level, *descendants])
    select = f"SELECT {', '.join(columns)} FROM {start} {' '.join(joins + clauses.joins)} WHERE {' AND '.join(where)}"
    return _Statement(select, [*clauses.join_params, *where_params], list(chain), list(values), row_order)


def iter_candidates(
    tx: ReadTx,
    level: ResourceType,
    constraints: Sequence[DatabaseConstraint],
    database_limit: int = 0,
    chain: Sequence[ResourceType] = (),
    values: Mapping[int, Sequence[ResourceType]] | None = None,
) -> Generator[list[Candidate], None, None]:
    """The resources of `level` the constraints pre-select, in batches, in Orthanc's order
    (public ids; creation for instances), read from one statement without holding them all.

    `database_limit` (0: none) keeps the resources of the first rows of Orthanc's SQL, in creation
    order. `chain` lists the levels whose related resource ids each candidate needs, `values` the
    tags whose stored value it needs (tag -> the levels that store it, the first one winning)."""
    statement = _candidate_sql(tx.dialect, level, constraints, chain, values or {}, join_lower=database_limit > 0)
    by_id = level is ResourceType.INSTANCE
    chain_columns = list(enumerate(statement.chain, start=2))
    value_columns = list(enumerate(statement.values, start=2 + len(statement.chain)))

    def candidates(rows: list[Any], seen: set[int]) -> list[Candidate]:
        out: list[Candidate] = []
        for row in rows:
            iid = row[0]
            if iid in seen:
                continue
            seen.add(iid)
            ids = {k: row[i] for i, k in chain_columns if row[i] is not None}
            found = {t: row[i] for i, t in value_columns if row[i] is not None}
            out.append(Candidate(ResourceRef(level, row[1], iid), ids, found))
        return out

    if database_limit > 0:
        sql = f"{statement.select} ORDER BY {statement.row_order} LIMIT ?"
        first = candidates(tx.fetch_all(sql, [*statement.params, database_limit]), set())
        yield first if by_id else sorted(first, key=lambda c: c.ref.public_id)
        return
    order = f"{_ALIASES[level]}.internalId" if by_id else f"{_ALIASES[level]}.publicId"
    for rows in tx.iterate(f"{statement.select} ORDER BY {order}", statement.params, _PAGE):
        yield candidates(rows, set())


def tag_values(tx: ReadTx, internal_ids: Iterable[int], tags: Iterable[int]) -> dict[int, dict[int, str]]:
    """The stored values of some main DICOM tags of some resources (id -> tag -> value)."""
    ids = sorted(set(internal_ids))
    wanted = sorted(set(tags))
    out: dict[int, dict[int, str]] = {i: {} for i in ids}
    if not ids or not wanted:
        return out
    tag_filter = " OR ".join("(tagGroup = ? AND tagElement = ?)" for _ in wanted)
    tag_params = [part for tag in wanted for part in (tag >> 16, tag & 0xFFFF)]
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i : i + _CHUNK]
        marks = ",".join("?" * len(chunk))
        for iid, group, element, value in tx.fetch_all(
            f"SELECT id, tagGroup, tagElement, value FROM MainDicomTags WHERE id IN ({marks}) AND ({tag_filter})",
            [*chunk, *tag_params],
        ):
            out[int(iid)][(int(group) << 16) | int(element)] = value
    return out


def lookup_identifier(tx: ReadTx, level: ResourceType, tag: int, value: str) -> list[ResourceRef]:
    """Resources of `level` whose normalised identifier `tag` equals the normalised `value`
    (Orthanc's exact identifier lookup, `/tools/lookup`), in creation order."""
    rows = tx.fetch_all(
        "SELECT r.internalId, r.publicId FROM Resources r JOIN DicomIdentifiers d ON d.id = r.internalId "
        "WHERE r.resourceType = ? AND d.tagGroup = ? AND d.tagElement = ? AND d.value = ? ORDER BY r.internalId",
        (int(level), tag >> 16, tag & 0xFFFF, normalize_identifier(value)),
    )
    return [ResourceRef(level, pid, int(iid)) for iid, pid in rows]


def _registry() -> dict[int, tuple[ResourceType, bool]]:
    # Orthanc's MainDicomTagsRegistry: levels from the patient down, identifiers before the other
    # main tags of a level; the first level to claim a tag keeps it (ImageOrientationPatient is a
    # series tag, PatientID a patient identifier).
    registry: dict[int, tuple[ResourceType, bool]] = {}
    for level in ResourceType:
        for tag in IDENTIFIER_TAGS[level]:
            registry.setdefault(tag, (level, True))
        for tag, _name in MAIN_TAGS[level]:
            registry.setdefault(tag, (level, False))
    return registry


# Where the database keeps a main DICOM tag: (level, whether it is compared as an identifier).
TAG_LOCATIONS: dict[int, tuple[ResourceType, bool]] = _registry()


def parents_of(tx: ReadTx, internal_ids: Sequence[int]) -> dict[int, ResourceRef]:
    """Child internal id -> its parent."""
    out: dict[int, ResourceRef] = {}
    ids = list(internal_ids)
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i : i + _CHUNK]
        for child, iid, rtype, pid in tx.fetch_all(
            "SELECT c.internalId, p.internalId, p.resourceType, p.publicId FROM Resources c "
            f"JOIN Resources p ON p.internalId = c.parentId WHERE c.internalId IN ({','.join('?' * len(chunk))})",
            chunk,
        ):
            out[int(child)] = ResourceRef(ResourceType(rtype), pid, int(iid))
    return out


def refs_with_tag(tx: ReadTx, internal_ids: Sequence[int], tag: int) -> dict[int, tuple[ResourceRef, str | None]]:
    """Internal id -> (the resource, its stored value of `tag`), in one query per 500 ids."""
    out: dict[int, tuple[ResourceRef, str | None]] = {}
    ids = sorted(set(internal_ids))
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i : i + _CHUNK]
        rows = tx.fetch_all(
            "SELECT r.internalId, r.resourceType, r.publicId, t.value FROM Resources r LEFT JOIN MainDicomTags t "
            "ON t.id = r.internalId AND t.tagGroup = ? AND t.tagElement = ? "
            f"WHERE r.internalId IN ({','.join('?' * len(chunk))})",
            [tag >> 16, tag & 0xFFFF, *chunk],
        )
        levels = {int(level): ResourceType(level) for level in ResourceType}
        for iid, level, public, value in rows:
            out[iid] = (ResourceRef(levels[level], public, iid), value)
    return out
