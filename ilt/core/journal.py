"""A resume journal: the finished part of a long job, so a killed run goes on where it stopped.

A job that produces one record per item (``ilt decode``: one hypothesis per
cut) appends each finished batch to a JSON-lines file beside its outputs,
flushed to disk before the next batch starts. The first line is the job's
*key* (what the results depend on: model, data, config); a rerun with the
same key takes the journal's records and skips and does only the rest, a
rerun with another key starts afresh. A line cut short by a kill is ignored
(its batch is done again). The job removes the journal once its outputs are
written atomically.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

from ilt.core.runtime import Skips

log = logging.getLogger("ilt")


class Journal:
    """The finished batches of one job, kept in ``path``.

    :param key: JSON-serialisable identity of the job's inputs.
    """

    def __init__(self, path: str | Path, key: dict[str, Any]) -> None:
        self.path, self.key = Path(path), json.loads(json.dumps(key))
        self.records: list[dict[str, Any]] = []
        self.skipped: list[tuple[str, str]] = []  # (reason, item)
        self.counters: dict[str, Any] = {}
        self._fh: Any = None
        self._seen: dict[str, int] = {}

    def load(self) -> Journal:
        """Read what an earlier run with the same key finished; drop a journal of another key."""
        lines = self.path.read_text(encoding="utf-8").splitlines() if self.path.is_file() else []
        entries = []
        for line in lines:
            try:
                entries.append(json.loads(line))
            except ValueError:  # the last line, cut short by a kill
                break
        if not entries or entries[0] != {"key": self.key}:
            if lines:
                log.info("%s: from a run with other inputs: starting afresh", self.path)
            self.path.unlink(missing_ok=True)
            return self
        for entry in entries[1:]:
            self.records.extend(entry["records"])
            self.skipped.extend((reason, item) for reason, item in entry["skipped"])
            self.counters = entry["counters"]
        if len(entries) > 1:
            log.info("%s: resuming: %d record(s) and %d skip(s) done already", self.path, len(self.records),
                     len(self.skipped))
        return self

    @property
    def done(self) -> set[str]:
        """IDs finished already: recorded or skipped."""
        return {r["id"] for r in self.records} | {item for _, item in self.skipped}

    def restore(self, skips: Skips) -> None:
        """Count the earlier run's skips in ``skips`` (they are not logged again)."""
        for reason, item in self.skipped:
            skips.items.setdefault(reason, []).append(item)
        self._seen = {reason: len(items) for reason, items in skips.items.items()}

    def append(self, records: Iterable[dict[str, Any]], skips: Skips, counters: dict[str, Any]) -> None:
        """Add one finished batch: its records, the skips counted since the last
        call, and the job's counters so far; on disk before this returns."""
        new_skips = []
        for reason, items in skips.items.items():
            new_skips.extend([reason, item] for item in items[self._seen.get(reason, 0):])
            self._seen[reason] = len(items)
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fresh = not self.path.is_file()
            self._fh = self.path.open("a", encoding="utf-8")
            if fresh:
                self._fh.write(json.dumps({"key": self.key}) + "\n")
        entry = {"records": list(records), "skipped": new_skips, "counters": counters}
        self._fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def remove(self) -> None:
        """The job's outputs are written: the journal is no longer needed."""
        self.close()
        self.path.unlink(missing_ok=True)
