"""The filters of `replicate`: `--resource` (patients, studies, series or instances by public id),
`--study-date A-B` (a DICOM date range) and `--modality M` (repeatable: any of them). Filters of
different kinds must all match; with none, everything is selected.

Two ways to apply them, because the two walks differ in size:
* the initial copy asks the source once for the selected ids (`/tools/find` at instance level,
  which Orthanc matches against the study and series tags too, one request per modality; the
  `/instances` of each named resource), instead of inspecting every instance of the archive;
* the `/changes` walk inspects each new instance (its series and study, cached), in the worker
  thread that copies it, since a find per page of changes would scan the whole index each time.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

from dicomvault.replication.client import OrthancClient, ServerError
from dicomvault.replication.options import ReplicateOptions

logger = logging.getLogger(__name__)

_DATE_RANGE = re.compile(r"^(\d{8})?-(\d{8})?$|^(\d{8})$")
_LEVELS = ("instances", "series", "studies", "patients")


class SelectionError(ValueError):
    """A filter that cannot be understood (a usage error)."""


@dataclass(frozen=True)
class Selection:
    resources: tuple[str, ...] = ()
    date_from: str = ""
    date_to: str = "99999999"
    date_range: str | None = None  # as the user wrote it, for /tools/find
    modalities: tuple[str, ...] = ()

    @classmethod
    def of(cls, options: ReplicateOptions) -> Selection | None:
        """The selection the options ask for, or None for everything."""
        if not (options.resources or options.study_date or options.modalities):
            return None
        date_from, date_to, date_range = "", "99999999", None
        if options.study_date:
            match = _DATE_RANGE.match(options.study_date.strip())
            if not match or options.study_date.strip() == "-":
                raise SelectionError(
                    f"--study-date {options.study_date!r} is not a DICOM date range (YYYYMMDD-YYYYMMDD, "
                    "either end may be empty)"
                )
            single = match.group(3)
            date_from = single or match.group(1) or ""
            date_to = single or match.group(2) or "99999999"
            date_range = options.study_date.strip()
        return cls(
            tuple(options.resources),
            date_from,
            date_to,
            date_range,
            tuple(m.strip().upper() for m in options.modalities if m.strip()),
        )

    # ---------------------------------------------------------------- the initial copy

    def initial_ids(self, source: OrthancClient) -> list[str]:
        """The selected instances of the source, asked in bulk."""
        selected: list[str] | None = None
        if self.resources:
            selected = []
            for resource in self.resources:
                selected += _instances_of(source, resource)
        if self.date_range is not None or self.modalities:
            found: list[str] = []
            for modality in self.modalities or (None,):
                query: dict[str, str] = {}
                if self.date_range is not None:
                    query["StudyDate"] = self.date_range
                if modality is not None:
                    query["Modality"] = modality
                found += _find_instances(source, query)
            if selected is None:
                selected = found
            else:
                keep = set(found)
                selected = [i for i in selected if i in keep]
        assert selected is not None
        return list(dict.fromkeys(selected))  # without duplicates, in order


class Matcher:
    """Whether one new instance is selected, asked instance by instance during the `/changes`
    walk (thread-safe: the copying workers share it). Parents are cached: the instances of one
    series arrive together."""

    def __init__(self, selection: Selection, source: OrthancClient) -> None:
        self.selection = selection
        self.source = source
        self._lock = threading.Lock()
        self._cache: dict[str, dict[str, Any] | None] = {}

    def wants(self, instance: str) -> bool:
        s = self.selection
        info = self._get("instances", instance, cache=False)
        if info is None:
            return False  # gone already: nothing to copy
        series = self._get("series", str(info.get("ParentSeries")))
        study = None if series is None else self._get("studies", str(series.get("ParentStudy")))
        if series is None or study is None:
            return False
        if s.resources and not {instance, series.get("ID"), study.get("ID"), study.get("ParentPatient")} & set(
            s.resources
        ):
            return False
        if s.modalities and str(series.get("MainDicomTags", {}).get("Modality", "")).upper() not in s.modalities:
            return False
        if s.date_range is not None:
            date = str(study.get("MainDicomTags", {}).get("StudyDate", ""))
            if not date or not s.date_from <= date <= s.date_to:
                return False
        return True

    def _get(self, level: str, public_id: str, cache: bool = True) -> dict[str, Any] | None:
        key = f"{level}/{public_id}"
        if cache:
            with self._lock:
                if key in self._cache:
                    return self._cache[key]
        answer = self.source.request("GET", f"/{key}", ok_statuses=frozenset({200, 404}))
        value = answer.json() if answer.status_code == 200 else None
        result = value if isinstance(value, dict) else None
        if cache:
            with self._lock:
                if len(self._cache) > 10000:
                    self._cache.clear()
                self._cache[key] = result
        return result


def _instances_of(source: OrthancClient, resource: str) -> list[str]:
    """The instances of a resource of any level; a resource the source does not have selects
    nothing (with a warning: a typo should not go unnoticed)."""
    for level in _LEVELS:
        # The resource itself first: Orthanc 1.10.1 answers `/series/{id}/instances` with an empty
        # list, not 404, when the id is a patient's or a study's.
        if source.request("GET", f"/{level}/{resource}", ok_statuses=frozenset({200, 404})).status_code == 404:
            continue
        if level == "instances":
            return [resource]
        body = source.json(f"/{level}/{resource}/instances")
        return [str(item["ID"]) for item in body if isinstance(item, dict) and "ID" in item]
    logger.warning("--resource %s: %s has no such patient, study, series or instance", resource, source.url)
    return []


def _find_instances(source: OrthancClient, query: dict[str, str]) -> list[str]:
    body = json.dumps({"Level": "Instance", "Query": query, "Expand": False}).encode()
    answer = source.request("POST", "/tools/find", content=body)
    found = answer.json()
    if not isinstance(found, list):
        raise ServerError(f"{source.url}/tools/find did not answer a list")
    return [str(i) for i in found]
