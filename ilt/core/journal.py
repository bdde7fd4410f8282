"""A resume journal: the finished part of a long job, so a killed run goes on where it stopped.

A job that produces one record per item (``ilt decode``: one hypothesis per
cut) appends each finished batch to a JSON-lines file beside its outputs,
flushed to disk (``fsync``) before the next batch starts. The first line is
the job's *key* (what the results depend on: model, data, config); a rerun
with the same key takes the journal's records and skips and does only the
rest, a rerun with another key starts afresh. A line cut short by a kill is
ignored (its batch is done again) and cut off the file before the next append.

The journal is keyed by item ID, not by process: under several processes
each process appends to its own file (``NAME.jsonl`` for rank 0,
``NAME.<rank>.jsonl`` for the others), and every process reads *all* the
files of the job with the same key, whatever number of processes wrote them.
So a run killed with 2 processes resumes with 1 or 3 and does only the items
that no file holds. Each entry holds the counters' *increments* of its batch,
so the counters of all files add up. The job removes every file of the
journal once its outputs are written atomically (:meth:`Journal.remove`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable

from ilt.core.runtime import Skips

log = logging.getLogger("ilt")

#: bumped when the layout of an entry changes: older journals start afresh
JOURNAL_VERSION = 2


def journal_files(directory: Path, name: str) -> list[Path]:
    """Every process's file of the journal ``name`` in ``directory`` (rank 0's first)."""
    pattern = re.compile(rf"{re.escape(name)}(\.(\d+))?\.jsonl")
    found = [(int(m.group(2) or 0), p) for p in directory.glob(f"{name}*.jsonl")
             if (m := pattern.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def rank_of(path: Path) -> int:
    """The rank that writes the journal file ``path`` (``NAME.jsonl``: 0, ``NAME.<rank>.jsonl``: rank)."""
    found = re.search(r"\.(\d+)\.jsonl$", path.name)
    return int(found.group(1)) if found else 0


def _read(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The entries of one journal file and the byte length of its whole lines."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    entries, good = [], 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # the last line, cut short by a kill
        try:
            entries.append(json.loads(line))
        except ValueError:
            break
        good += len(line)
    return entries, good


class Journal:
    """The finished batches of one job, kept in ``path`` (this process's file).

    :param key: JSON-serialisable identity of the job's inputs.
    :param shared: the other processes' files of the same job are read too
        (see the module docstring): ``path`` must be ``DIR/NAME.jsonl`` or
        ``DIR/NAME.<rank>.jsonl``.
    :param adopt: take the earlier records, skips and counters (the process
        that returns them: the main one); otherwise only :attr:`done` is read.
    """

    def __init__(self, path: str | Path, key: dict[str, Any], *, shared: bool = False, adopt: bool = True) -> None:
        self.path = Path(path)
        self.key = json.loads(json.dumps({**key, "journal": JOURNAL_VERSION}))
        self.shared, self.adopt = shared, adopt
        self.records: list[dict[str, Any]] = []
        self.skipped: list[tuple[str, str]] = []  # (reason, item)
        self.counters: dict[str, Any] = {}
        self._done: set[str] = set()
        self._fh: Any = None
        self._seen: dict[str, int] = {}
        self._last: dict[str, Any] = {}
        self._own_good: int | None = None  # bytes of this process's file to keep (None: start it afresh)
        self._stale: list[Path] = []

    @staticmethod
    def name_of(path: Path) -> str:
        """``NAME`` of ``DIR/NAME.jsonl`` or ``DIR/NAME.<rank>.jsonl``."""
        stem = path.name.removesuffix(".jsonl")
        return re.sub(r"\.\d+$", "", stem)

    def files(self) -> list[Path]:
        """The files this journal reads: this process's, or every process's when shared."""
        if not self.shared:
            return [self.path]
        files = journal_files(self.path.parent, self.name_of(self.path))
        return files if self.path in files else [self.path, *files]

    def load(self) -> Journal:
        """Read what earlier runs with the same key finished (every file when
        shared). A file of another key is left out; this process's own is
        started afresh at its first append, the others' at :meth:`drop_stale`
        (never here: another process may be reading them)."""
        for path in self.files():
            entries, good = _read(path)
            if not entries or entries[0] != {"key": self.key}:
                if entries:
                    log.info("%s: from a run with other inputs: starting afresh", path)
                    self._stale.append(path)
                continue
            if path == self.path:
                self._own_good = good
            for entry in entries[1:]:
                self._done.update(r["id"] for r in entry["records"])
                self._done.update(item for _, item in entry["skipped"])
                if self.adopt:
                    self.records.extend(entry["records"])
                    self.skipped.extend((reason, item) for reason, item in entry["skipped"])
                    self.counters = _add(self.counters, entry["counters"])
        if self._done:
            log.info("%s: resuming: %d record(s) and %d skip(s) done already", self.path, len(self.records),
                     len(self.skipped))
        return self

    def drop_stale(self, processes: int) -> None:
        """Remove the files of other keys that no process of this run writes
        (those of ranks ``processes`` and above: each process starts its own
        afresh); call it on one process, once every process has loaded."""
        for path in self._stale:
            if rank_of(path) >= processes:
                path.unlink(missing_ok=True)

    @property
    def done(self) -> set[str]:
        """IDs finished already (in any process's file): recorded or skipped."""
        return set(self._done)

    def restore(self, skips: Skips) -> None:
        """Count the earlier runs' skips in ``skips`` (they are not logged again)."""
        for reason, item in self.skipped:
            skips.items.setdefault(reason, []).append(item)
        self._seen = {reason: len(items) for reason, items in skips.items.items()}
        self._last = dict(self.counters)

    def append(self, records: Iterable[dict[str, Any]], skips: Skips, counters: dict[str, Any]) -> None:
        """Add one finished batch: its records, the skips counted since the last
        call, and the increments of the job's counters (``counters``: their
        totals so far); on disk before this returns."""
        new_skips = []
        for reason, items in skips.items.items():
            new_skips.extend([reason, item] for item in items[self._seen.get(reason, 0):])
            self._seen[reason] = len(items)
        if self._fh is None:
            self._open()
        increments = {k: (v - self._last.get(k, 0) if _number(v) else v) for k, v in counters.items()}
        self._last = dict(counters)
        entry = {"records": list(records), "skipped": new_skips, "counters": increments}
        self._fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def _open(self) -> None:
        """Open this process's file for appending: after its whole lines when it
        holds this key's entries, afresh (key line first) otherwise."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._own_good is None:
            self._fh = self.path.open("w", encoding="utf-8")
            self._fh.write(json.dumps({"key": self.key}) + "\n")
            return
        with self.path.open("r+b") as f:  # cut off a line a kill left half-written
            f.truncate(self._own_good)
        self._fh = self.path.open("a", encoding="utf-8")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def remove(self) -> None:
        """The job's outputs are written: the journal (every process's file, when
        shared) is no longer needed. Call it on one process, after all have finished."""
        self.close()
        for path in self.files():
            path.unlink(missing_ok=True)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _add(totals: dict[str, Any], increments: dict[str, Any]) -> dict[str, Any]:
    """``totals`` plus one entry's counter ``increments`` (other values: the latest)."""
    out = dict(totals)
    for key, value in increments.items():
        out[key] = out.get(key, 0) + value if _number(value) else value
    return out
