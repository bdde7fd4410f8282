"""Cut manifests read as a stream (Lhotse's lazy loading), for the decoding paths.

``load_cuts`` (:mod:`ilt.data.manifests`) reads a whole manifest into memory;
decoding a pool of a few hundred hours needs only each process's share of the
cuts, plus the IDs of all of them to restore their order. The readers here go
through :meth:`lhotse.CutSet.from_jsonl_lazy` and keep the same checks as
``load_cuts``: a missing or unreadable file, a repeated ID and a refused
audio source are an :class:`ilt.errors.IltInputError` naming the manifest.
A manifest that fails half-way fails when the stream reaches the bad line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Iterator

from ilt.data.audio import check_sources
from ilt.errors import IltInputError


def stream_cuts(path: str | Path, *, check: bool = True) -> Iterator[Any]:
    """The cuts of the manifest ``path``, one at a time, in file order.

    :param check: refuse a repeated ID and an audio source other than a file
        or memory (as ``load_cuts``); the ID check holds the IDs seen so far.
    :raises IltInputError: naming ``path``.
    """
    from lhotse import CutSet

    path = Path(path)
    if not path.is_file():
        raise IltInputError(f"{path}: cut manifest not found")
    seen: set[str] = set()
    try:
        lazy = CutSet.from_jsonl_lazy(path)
        for cut in lazy:
            if check:
                if cut.id in seen:
                    raise IltInputError(f"{path}: cut ID {cut.id!r} appears more than once; IDs must be unique: "
                                        f"remove the duplicates or rename them (e.g. lhotse's CutSet.modify_ids)")
                seen.add(cut.id)
                check_sources(cut, path)
            yield cut
    except IltInputError:
        raise
    except Exception as exc:  # corrupt gzip, bad JSON, wrong manifest type
        raise IltInputError(f"{path}: cannot read cut manifest: {type(exc).__name__}: {exc} (truncated or "
                            f"not a cut manifest: write it again with the stage that made it)") from None


def shard_of(path: str | Path, rank: int, world: int, skip: set[str] | frozenset[str] = frozenset()
             ) -> tuple[list[str], list[Any]]:
    """One pass over the manifest ``path``: every cut's ID (file order) and this
    process's share of the cuts not in ``skip``: the ``rank``-th of every
    ``world`` of them (``rank`` 0 of 1: all). Only the share's cuts are held."""
    ids: list[str] = []
    share: list[Any] = []
    todo = 0
    for cut in stream_cuts(path):
        ids.append(cut.id)
        if cut.id in skip:
            continue
        if todo % world == rank:
            share.append(cut)
        todo += 1
    return ids, share


def lazy_cuts(path: str | Path) -> tuple[Any, int]:
    """A lazy ``CutSet`` of the manifest ``path`` (each pass reads the file
    again; nothing is held) and its number of cuts, after one checking pass
    (:func:`stream_cuts`): a bad manifest fails here, not half-way through a job.

    :raises IltInputError: naming ``path``.
    """
    from lhotse import CutSet

    count = sum(1 for _ in stream_cuts(path))
    return CutSet.from_jsonl_lazy(Path(path)), count


class Counted:
    """An iterable over ``items`` (once) that counts what it has given (``n``):
    a stream of cuts whose length is known only once it has been read."""

    def __init__(self, items: Iterable[Any]) -> None:
        self.items, self.n = items, 0

    def __iter__(self) -> Iterator[Any]:
        for item in self.items:
            self.n += 1
            yield item


__all__ = ["Counted", "lazy_cuts", "shard_of", "stream_cuts"]
