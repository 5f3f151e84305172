"""`replicate --propagate-deletes`: delete at the target what was deleted at the source, and only
that: never data the target holds on its own.

Orthanc's `/changes` records no deletion (it even drops the entries of a deleted resource), so:

* From a dicomvault source, its deletion log (`GET /dicomvault/deleted?since=&limit=`, one entry
  per resource of each removed subtree) is read with its own cursor (`deleted` in the state),
  starting where it stood when propagation was first asked for. Each deleted instance is looked up
  at the source first: deleted then stored again (an overwrite, a new upload) means it stays.
* From an Orthanc source, the instance id lists are compared: the ids the source had at the
  previous comparison (plus those copied since), minus those it has now, are the deletions. That
  snapshot lives in a sidecar of the state file (`<state>.ids.json`, replaced atomically): it can
  be large and is rewritten once per comparison, not at every cursor save. The first comparison
  of a replication only takes the snapshot. Each comparison lists every instance of the source:
  with `--follow`, one listing per poll.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from dicomvault.replication.client import OrthancClient
from dicomvault.replication.state import load_state, save_state

logger = logging.getLogger(__name__)

DELETED_PAGE = 1000


class DeletionMirror:
    def __init__(self, source: OrthancClient, target: OrthancClient, state: dict[str, Any], state_path: Path) -> None:
        self.source = source
        self.target = target
        self.state = state  # the replication's state: `deleted` (the deletion-log cursor) lives in it
        self.sidecar = state_path.with_name(state_path.name + ".ids.json")
        self.has_log: bool | None = None  # whether the source keeps dicomvault's deletion log
        self.copied: set[str] = set()

    def start(self) -> None:
        """Called before anything is copied: with a dicomvault source, deletions are propagated
        from this moment of its deletion log on (earlier ones are not this replication's)."""
        page = self.source.deleted_log(0, 1)
        self.has_log = page is not None
        if page is not None and "deleted" not in self.state:
            self.state["deleted"] = int(page["Last"])
        logger.info(
            "deletions at %s are detected %s",
            self.source.url,
            "from its deletion log" if self.has_log else "by comparing instance lists",
        )

    def note_copied(self, instance: str) -> None:
        """An instance this replication copied (or found already stored) since the last comparison."""
        if not self.has_log:
            self.copied.add(instance)

    def remember(self, source_ids: list[str]) -> None:
        """The source's instance list, read by the initial comparison of a run."""
        if not self.has_log:
            self._save_known(set(source_ids) | self.copied)
            self.copied.clear()

    def propagate(self, stop: threading.Event) -> int:
        """Delete at the target what the source deleted since the last call; the number deleted."""
        if self.has_log is None:
            self.start()
        return self._from_log(stop) if self.has_log else self._from_lists(stop)

    def _from_log(self, stop: threading.Event) -> int:
        deleted = 0
        since = int(self.state.get("deleted", 0))
        while not stop.is_set():
            page = self.source.deleted_log(since, DELETED_PAGE)
            if page is None:
                return deleted
            last = int(page["Last"])
            if last < since:
                logger.warning("the deletion log of %s restarted (a new index?): reading it from 0", self.source.url)
                since = 0
                continue
            for entry in page["Deleted"]:
                if entry.get("ResourceType") == "Instance":
                    deleted += self._delete(str(entry["ID"]))
            since = last
            self.state["deleted"] = since
            if page.get("Done", True) or not page["Deleted"]:
                break
        return deleted

    def _delete(self, instance: str) -> int:
        if self.source.has_instance(instance):
            logger.info("instance %s was deleted then stored again at the source: kept", instance)
            return 0
        if self.target.delete_instance(instance):
            logger.info("instance %s deleted at the target (deleted at the source)", instance)
            return 1
        return 0

    def _from_lists(self, stop: threading.Event) -> int:
        now = set(self.source.instance_ids())
        known = self._load_known()
        if known is None:
            self._save_known(now)
            self.copied.clear()
            return 0
        deleted = 0
        for instance in sorted((known | self.copied) - now):
            if stop.is_set():
                # What was not handled yet stays known, for the next comparison.
                now.add(instance)
                continue
            if self.target.delete_instance(instance):
                logger.info("instance %s deleted at the target (gone from the source)", instance)
                deleted += 1
        self._save_known(now)
        self.copied.clear()
        return deleted

    def _load_known(self) -> set[str] | None:
        saved = load_state(self.sidecar)
        return None if saved is None else set(saved.get("instances", []))

    def _save_known(self, ids: set[str]) -> None:
        save_state(self.sidecar, {"instances": sorted(ids)})
