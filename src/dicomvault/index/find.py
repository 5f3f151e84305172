"""The index side of finds: Orthanc's `DicomIdentifiers` (normalised copies of the identifier tags,
written at ingest), the SQL pre-selection of candidates from constraints (Orthanc's
`ISqlLookupFormatter`, same comparisons, so SQLite answers exactly what Orthanc's SQLite answers),
and the batched reads the matching step needs (tag values, first child instances).

Orthanc compares identifiers (`IDENTIFIER_TAGS`) on their normalised value, always case-sensitively,
and every other main DICOM tag on its stored value, with `lower()` on both sides when the search
is case-insensitive. Candidates come in Orthanc's order: public id order for patients, studies
and series (its `GROUP BY publicId`), creation order for instances. With a database limit (Orthanc's
`LimitFindResults` + 1), the candidates are the first ones created, then put in that order.

Every function reads inside the caller's transaction with a number of queries that does not
depend on the number of resources (candidates are read in pages).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from dicomvault.dicom.main_tags import MAIN_TAGS
from dicomvault.enums import ResourceType
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


def _comparison(column: str, c: DatabaseConstraint, params: list[Any]) -> str | None:
    """The SQL condition of one constraint (None: only the presence of the row counts)."""
    sensitive = c.case_sensitive
    if c.comparison is Comparison.LIST:
        params.extend(c.values)
        marks = ", ".join("?" if sensitive else "lower(?)" for _ in c.values)
        return f"{column} IN ({marks})" if sensitive else f"lower({column}) IN ({marks})"
    if c.comparison is Comparison.WILDCARD:
        if c.values[0] == "*":
            return None
        params.append(like_pattern(c.values[0]))
        if sensitive:
            return f"{column} LIKE ? ESCAPE '\\'"
        return f"lower({column}) LIKE lower(?) ESCAPE '\\'"
    params.append(c.values[0])
    op = c.comparison.value
    return f"{column} {op} ?" if sensitive else f"lower({column}) {op} lower(?)"


class _Clauses:
    """JOIN and WHERE clauses being built, each with its own parameters (they appear in that
    order in the statement)."""

    def __init__(self, first_alias: int = 0) -> None:
        self.joins: list[str] = []
        self.join_params: list[Any] = []
        self.where: list[str] = []
        self.where_params: list[Any] = []
        self._next = first_alias

    def constrain(self, owner: str, c: DatabaseConstraint) -> None:
        if not c.mandatory and c.comparison is Comparison.WILDCARD and c.values[0] == "*":
            return  # universal match on an optional tag: no condition at all
        alias = f"t{self._next}"
        self._next += 1
        table = "DicomIdentifiers" if c.identifier else "MainDicomTags"
        kind = "JOIN" if c.mandatory else "LEFT JOIN"
        self.joins.append(
            f"{kind} {table} {alias} ON {alias}.id = {owner}.internalId "
            f"AND {alias}.tagGroup = ? AND {alias}.tagElement = ?"
        )
        self.join_params += [c.tag >> 16, c.tag & 0xFFFF]
        params: list[Any] = []
        condition = _comparison(f"{alias}.value", c, params)
        if condition is not None:
            self.where.append(condition if c.mandatory else f"({alias}.value IS NULL OR {condition})")
            self.where_params += params


@dataclass(frozen=True)
class Candidate:
    """A resource that passed the database pre-selection, with the internal ids of the resources
    the matching step reads: `chain[level]` for its ancestors, itself, and its first descendants
    (Orthanc's "one instance of the resource": first child, recursively, in creation order)."""

    ref: ResourceRef
    chain: dict[ResourceType, int]


def _first_child(expr: str) -> str:
    return f"(SELECT MIN(c.internalId) FROM Resources c WHERE c.parentId = {expr})"


def _descendant_joins(level: ResourceType, deepest: ResourceType) -> list[str]:
    return [
        f"JOIN Resources {_ALIASES[ResourceType(k)]} ON {_ALIASES[ResourceType(k)]}.parentId = "
        f"{_ALIASES[ResourceType(k - 1)]}.internalId"
        for k in range(level + 1, deepest + 1)
    ]


def _lower_levels(level: ResourceType, lower: Sequence[DatabaseConstraint]) -> tuple[str, list[Any]]:
    """EXISTS over one chain of descendants satisfying every lower-level constraint (Orthanc
    joins one row per level, so they all hold on the same series, the same instance)."""
    clauses = _Clauses(first_alias=100)
    for c in lower:
        clauses.constrain(_ALIASES[c.level], c)
    child = _ALIASES[ResourceType(level + 1)]
    chain = _descendant_joins(ResourceType(level + 1), max(c.level for c in lower))
    conditions = " AND ".join([f"{child}.parentId = {_ALIASES[level]}.internalId", *clauses.where])
    sql = f"EXISTS (SELECT 1 FROM Resources {child} {' '.join(chain + clauses.joins)} WHERE {conditions})"
    return sql, [*clauses.join_params, *clauses.where_params]


@dataclass(frozen=True)
class _Statement:
    select: str  # SELECT ... FROM ... JOIN ...
    where: str
    params: list[Any]
    levels: list[ResourceType]  # levels of the id columns after internalId and publicId
    row_order: str  # the creation order of the rows (descendants included when joined)


def _candidate_sql(
    level: ResourceType, constraints: Sequence[DatabaseConstraint], down_to: ResourceType, join_lower: bool
) -> _Statement:
    """The pre-selection statement. With `join_lower`, lower-level constraints are joins, one row
    per matching chain of descendants as in Orthanc's SQL (what its LIMIT counts); otherwise an
    EXISTS, one row per candidate."""
    me = _ALIASES[level]
    ancestors = [ResourceType(k) for k in range(level - 1, 0, -1)]
    joins = [
        f"JOIN Resources {_ALIASES[k]} ON {_ALIASES[k]}.internalId = {_ALIASES[ResourceType(k + 1)]}.parentId"
        for k in ancestors
    ]
    clauses = _Clauses()
    for c in constraints:
        if c.level <= level:
            clauses.constrain(_ALIASES[c.level], c)
    lower = [c for c in constraints if c.level > level]
    descendants: list[ResourceType] = []
    if lower and join_lower:
        deepest = max(c.level for c in lower)
        descendants = [ResourceType(k) for k in range(level + 1, deepest + 1)]
        clauses.joins[:0] = _descendant_joins(level, deepest)
        for c in lower:
            clauses.constrain(_ALIASES[c.level], c)
    where = [f"{me}.resourceType = ?", *clauses.where]
    params: list[Any] = [*clauses.join_params, int(level), *clauses.where_params]
    if lower and not join_lower:
        exists, exists_params = _lower_levels(level, lower)
        where.append(exists)
        params += exists_params
    columns = [f"{me}.internalId", f"{me}.publicId", *(f"{_ALIASES[k]}.internalId" for k in ancestors)]
    levels: list[ResourceType] = list(ancestors)
    expr = f"{me}.internalId"
    for k in range(level + 1, down_to + 1):
        expr = _first_child(expr)
        columns.append(expr)
        levels.append(ResourceType(k))
    row_order = ", ".join(f"{_ALIASES[k]}.internalId" for k in [level, *descendants])
    select = f"SELECT {', '.join(columns)} FROM Resources {me} {' '.join(joins + clauses.joins)}"
    return _Statement(select, " AND ".join(where), params, levels, row_order)


def iter_candidates(
    tx: ReadTx,
    level: ResourceType,
    constraints: Sequence[DatabaseConstraint],
    database_limit: int = 0,
    down_to: ResourceType | None = None,
) -> Iterator[list[Candidate]]:
    """The resources of `level` the constraints pre-select, page by page, in Orthanc's order.

    `database_limit` (0: none) keeps the resources of the first rows of Orthanc's SQL, in
    creation order. `down_to` asks for the ids of the first descendants down to that level in
    `Candidate.chain`."""
    statement = _candidate_sql(level, constraints, down_to or level, join_lower=database_limit > 0)
    me = _ALIASES[level]
    by_id = level is ResourceType.INSTANCE

    def candidates(rows: list[Any]) -> list[Candidate]:
        out: list[Candidate] = []
        seen: set[int] = set()
        for row in rows:
            iid = int(row[0])
            if iid in seen:
                continue
            seen.add(iid)
            chain = {level: iid}
            for k, value in zip(statement.levels, row[2:], strict=True):
                if value is not None:
                    chain[k] = int(value)
            out.append(Candidate(ResourceRef(level, row[1], iid), chain))
        return out

    if database_limit > 0:
        rows = tx.fetch_all(
            f"{statement.select} WHERE {statement.where} ORDER BY {statement.row_order} LIMIT ?",
            [*statement.params, database_limit],
        )
        found = candidates(rows)
        yield found if by_id else sorted(found, key=lambda c: c.ref.public_id)
        return
    order = f"{me}.internalId" if by_id else f"{me}.publicId"
    last: Any = None
    while True:
        where = statement.where if last is None else f"{statement.where} AND {order} > ?"
        params = statement.params if last is None else [*statement.params, last]
        rows = tx.fetch_all(f"{statement.select} WHERE {where} ORDER BY {order} LIMIT {_PAGE}", params)
        if rows:
            yield candidates(rows)
        if len(rows) < _PAGE:
            return
        last = rows[-1][0] if by_id else rows[-1][1]


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
