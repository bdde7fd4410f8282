"""Done-markers of recipe steps: which steps finished, and from which inputs.

A directory's markers live in ``DIR/.done/<key>``, one file per finished step
(``egs/TEMPLATE/ilt.sh`` keeps one set per experiment and one per knowledge
directory). A marker is written only after its step succeeded. Its text is the
step's *fingerprint*: the exact command line of the step, followed by the
fingerprints of the steps whose outputs it reads, so a change of any input or
option upstream makes every step after it run again. A marker written without
a fingerprint (empty) only says that the step finished.

The recipe template calls these functions through ``ilt stage``
(:mod:`ilt.cli.recipe_commands`); Python code may call them directly.
"""

from __future__ import annotations

import enum
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

from ilt.core.files import write_text_atomic
from ilt.errors import IltInputError

#: the folder of a directory's markers
MARKERS = ".done"
#: separates a step's own command from the fingerprints of the steps it reads
UPSTREAM_SEPARATOR = " | "


class State(str, enum.Enum):
    """What a step is, against its marker."""

    DONE = "done"  #: finished, from the same fingerprint: skip it
    NEW = "new"  #: no marker: run it
    CHANGED = "changed"  #: finished from another fingerprint: its output holds another build; run it again
    FORCED = "forced"  #: redone on request, whatever its marker says


def marker(directory: str | Path, key: str) -> Path:
    """The marker file of step ``key`` in ``directory`` (``DIR/.done/KEY``)."""
    if not key or key in (".", "..") or "/" in key or "\0" in key:
        raise IltInputError(f"step key {key!r}: give a file name (no '/'), e.g. decode.M0.test")
    return Path(directory) / MARKERS / key


def fingerprint(command: Sequence[str], upstream: Sequence[str] = ()) -> str:
    """The fingerprint of a step: its command line, quoted as a shell would
    read it back, then ``" | "`` and the fingerprint of each step it reads."""
    return UPSTREAM_SEPARATOR.join([shlex.join(command), *upstream])


def read_mark(directory: str | Path, key: str) -> str | None:
    """The fingerprint a finished step recorded, or None when it has no marker."""
    path = marker(directory, key)
    return path.read_text() if path.is_file() else None


def upstream_fingerprints(directory: str | Path, keys: Sequence[str]) -> list[str]:
    """The recorded fingerprints of the steps ``keys`` of ``directory``, in
    order; each must have finished (a marker), since a step reading its output
    comes after it."""
    prints = []
    for key in keys:
        recorded = read_mark(directory, key)
        if recorded is None:
            raise IltInputError(f"{marker(directory, key)}: step {key!r} has not finished, "
                                f"so no step may read its output yet; run it first")
        prints.append(recorded)
    return prints


def check(directory: str | Path, key: str, fp: str | None = None, *, force: bool = False) -> State:
    """The :class:`State` of step ``key``. With ``fp`` None, any marker means
    done; otherwise the marker must hold ``fp``. ``force``: always FORCED."""
    if force:
        return State.FORCED
    recorded = read_mark(directory, key)
    if recorded is None:
        return State.NEW
    return State.DONE if fp is None or recorded == fp else State.CHANGED


def mark(directory: str | Path, key: str, fp: str = "") -> Path:
    """Record that step ``key`` finished (from ``fp``); returns the marker."""
    path = marker(directory, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, fp)
    return path


def clear(directory: str | Path, key: str) -> bool:
    """Forget that step ``key`` finished; True when it had a marker."""
    path = marker(directory, key)
    if not path.is_file():
        return False
    path.unlink()
    return True


def claim(directory: str | Path, key: str, value: str, *, force: bool = False) -> str | None:
    """Record that ``directory`` belongs to ``value`` (for example a base
    model's path) unless it belongs to another one: then return that one and
    write nothing. ``force``: take it over."""
    recorded = read_mark(directory, key)
    if recorded is not None and recorded.strip() != value and not force:
        return recorded.strip()
    mark(directory, key, value + "\n")
    return None


def reuse(source: str | Path, target: str | Path, key: str, paths: Sequence[str]) -> bool:
    """Take step ``key`` over from the finished experiment ``source``: when
    ``source`` marked it done and holds every one of ``paths``, link each
    ``source/PATH`` (resolved) as ``target/PATH`` and mark the step done in
    ``target``. A path that ``target`` holds for real (not a link) is never
    replaced: then nothing is linked and the step is not reused (False)."""
    source, target = Path(source), Path(target)
    if read_mark(source, key) is None:
        return False
    for path in paths:
        src, dst = source / path, target / path
        if not src.exists() or (dst.exists() and not dst.is_symlink()):
            return False
    for path in paths:
        dst = target / path
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink():
            dst.unlink()
        os.symlink(os.path.realpath(source / path), dst)
    mark(target, key)
    return True
