"""Save and load Lhotse manifests (``*.jsonl.gz``) safely.

Writes are atomic (a temporary file beside the target, then a rename) and
byte-reproducible: the gzip header carries no timestamp and no file name, so the
same manifest always gives the same bytes.

Reads refuse, at load time, a recording or cut whose audio source is not a
file or in-memory bytes (a ``command`` source would run a shell when its
audio is loaded): :func:`ilt.data.audio.check_sources`, opt-in
``ILT_ALLOW_AUDIO_COMMANDS=1``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Iterable

from lhotse import CutSet, RecordingSet, SupervisionSet

from ilt.core.files import atomic_path, safe_name
from ilt.data.audio import check_sources
from ilt.errors import IltInputError


def _write_jsonl(items: Iterable[dict[str, Any]], path: Path) -> None:
    if path.name.endswith(".gz"):
        with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            for item in items:
                gz.write((json.dumps(item, ensure_ascii=False) + "\n").encode("utf-8"))
    else:
        with open(path, "w", encoding="utf-8") as f:
            for item in items:
                f.write(json.dumps(item, ensure_ascii=False) + "\n")


def save_manifest(manifest: RecordingSet | SupervisionSet | CutSet, path: str | Path) -> Path:
    """Write ``manifest`` to ``path`` (``.jsonl`` or ``.jsonl.gz``) atomically.

    On any error the previous file at ``path`` (if any) is left untouched.
    """
    path = Path(path)
    if not (path.name.endswith(".jsonl.gz") or path.name.endswith(".jsonl")):
        raise ValueError(f"{path}: manifests are written as .jsonl or .jsonl.gz")
    with atomic_path(path) as tmp:
        _write_jsonl(manifest.to_dicts(), tmp)
    return path


def _load(cls, path: str | Path, what: str):
    path = Path(path)
    if not path.is_file():
        raise IltInputError(f"{path}: {what} manifest not found")
    try:
        manifest = cls.from_jsonl(path)
    except Exception as exc:  # corrupt gzip, bad JSON, wrong manifest type
        raise IltInputError(f"{path}: cannot read {what} manifest: {type(exc).__name__}: {exc} (truncated or "
                            f"not a {what} manifest: write it again with the stage that made it)") from None
    check_unique_ids((item.id for item in manifest), path, what)
    for item in manifest:  # before anything downstream can load audio from it
        check_sources(item, path)
    return manifest


def check_unique_ids(ids: Iterable[str], path: str | Path, what: str = "cut") -> None:
    """Raise :class:`IltInputError` naming the manifest and the first repeated
    ID: outputs are keyed by ID, so a repeated one would silently drop or
    mix results."""
    seen: set[str] = set()
    for item_id in ids:
        if item_id in seen:
            raise IltInputError(f"{path}: {what} ID {item_id!r} appears more than once; IDs must be unique: "
                                f"remove the duplicates or rename them (e.g. lhotse's CutSet.modify_ids)")
        seen.add(item_id)


def load_cuts(path: str | Path) -> CutSet:
    """Read a ``CutSet`` eagerly; a missing or unreadable file, a repeated ID
    and an audio source other than a file or memory (:func:`ilt.data.audio.check_sources`)
    are an :class:`IltInputError` naming it."""
    return _load(CutSet, path, "cut")


def load_recordings(path: str | Path) -> RecordingSet:
    """Read a ``RecordingSet``; errors name the file; sources are checked as in :func:`load_cuts`."""
    return _load(RecordingSet, path, "recording")


def load_supervisions(path: str | Path) -> SupervisionSet:
    """Read a ``SupervisionSet``; errors name the file."""
    return _load(SupervisionSet, path, "supervision")


def manifest_paths(out_dir: str | Path, prefix: str, split: str | None = None) -> dict[str, Path]:
    """``{"recordings": ..., "supervisions": ..., "cuts": ...}`` for a corpus (and split).

    ``prefix_recordings_split.jsonl.gz`` with a split, ``prefix_recordings.jsonl.gz`` without.
    The prefix and the split pass :func:`ilt.core.files.safe_name` (they may come from data).
    """
    out_dir = Path(out_dir)
    safe_name(prefix, "manifest name")
    if split:
        safe_name(split, "split name")
    tail = f"_{split}" if split else ""
    return {kind: out_dir / f"{prefix}_{kind}{tail}.jsonl.gz" for kind in ("recordings", "supervisions", "cuts")}


def save_manifests(
    paths: dict[str, Path],
    recordings: RecordingSet,
    supervisions: SupervisionSet,
    cuts: CutSet,
) -> None:
    """Write the three manifests of one split; cuts last, so their presence means all three are done."""
    save_manifest(recordings, paths["recordings"])
    save_manifest(supervisions, paths["supervisions"])
    save_manifest(cuts, paths["cuts"])


def manifests_exist(paths: dict[str, Path]) -> bool:
    return all(p.is_file() for p in paths.values())
