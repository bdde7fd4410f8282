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

    A ``CutSet`` gets its sidecar ``<name>.stats.json`` too (:func:`write_cut_stats`):
    what training counts at start-up, so that it need not read the manifest.
    On any error the previous file at ``path`` (if any) is left untouched.
    """
    path = Path(path)
    if not (path.name.endswith(".jsonl.gz") or path.name.endswith(".jsonl")):
        raise ValueError(f"{path}: manifests are written as .jsonl or .jsonl.gz")
    stats = new_cut_stats() if isinstance(manifest, CutSet) else None
    with atomic_path(path) as tmp:
        dicts = manifest.to_dicts() if stats is None else (cut.to_dict() for cut in _counted(manifest, stats))
        _write_jsonl(dicts, tmp)
    if stats is not None:  # counted in the same pass: training reads these, not the manifest
        write_cut_stats(path, stats)
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


# --------------------------------------------------------------------------- lazy training sources

#: What a training cut manifest's sidecar ``<name>.stats.json`` holds (its layout's version).
STATS_FORMAT = 1
#: The prefix of a data source that is a Lhotse Shar directory (``cuts: shar:DIR``).
SHAR_PREFIX = "shar:"


def stats_path(path: str | Path) -> Path:
    """The sidecar of a cut manifest: ``a_cuts.jsonl.gz`` -> ``a_cuts.stats.json``."""
    path = Path(path)
    name = path.name
    for suffix in (".jsonl.gz", ".jsonl"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(name + ".stats.json")


def _fingerprint(path: Path) -> dict[str, Any]:
    """What identifies a manifest's content without reading it whole: its size
    and, for gzip, its trailer (CRC32 and length of the uncompressed text);
    for plain text, its modification time."""
    info = path.stat()
    if path.name.endswith(".gz") and info.st_size >= 8:
        with open(path, "rb") as f:
            f.seek(-8, 2)
            return {"bytes": info.st_size, "gzip_trailer": f.read(8).hex()}
    return {"bytes": info.st_size, "mtime_ns": info.st_mtime_ns}


def new_cut_stats() -> dict[str, Any]:
    """Empty counts for :func:`count_cut`."""
    return {"format": STATS_FORMAT, "cuts": 0, "languages": {}, "skipped": [], "duplicate_id": None}


def count_cut(stats: dict[str, Any], cut: Any) -> None:
    """Count one cut into ``stats``: a cut with one supervision and a
    transcript under its language (lower-cased; ``""`` for none) as ``[cuts,
    seconds]``; one without text or with several supervisions under
    ``skipped`` as ``[reason, cut ID, supervisions]``, in manifest order."""
    stats["cuts"] += 1
    sups = cut.supervisions
    if not (sups and (sups[0].text or "").strip()):
        stats["skipped"].append(["empty transcript", cut.id, len(sups)])
    elif len(sups) > 1:
        stats["skipped"].append(["several supervisions", cut.id, len(sups)])
    else:
        entry = stats["languages"].setdefault((sups[0].language or "").lower(), [0, 0.0])
        entry[0] += 1
        entry[1] += float(cut.duration)


def _counted(cuts: Iterable[Any], stats: dict[str, Any]) -> Iterable[Any]:
    ids: set[str] = set()
    for cut in cuts:
        if stats["duplicate_id"] is None and cut.id in ids:
            stats["duplicate_id"] = cut.id
        ids.add(cut.id)
        count_cut(stats, cut)
        yield cut


def write_cut_stats(path: str | Path, stats: dict[str, Any]) -> Path:
    """Write the sidecar of the cut manifest at ``path`` (which must exist):
    ``stats`` plus the manifest's fingerprint."""
    path = Path(path)
    out = stats_path(path)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps({**stats, "manifest": _fingerprint(path)}, ensure_ascii=False), encoding="utf-8")
    return out


def read_cut_stats(path: str | Path) -> dict[str, Any] | None:
    """The sidecar's counts of the cut manifest at ``path``, or ``None`` when
    there is none, or it is of another layout or another manifest content
    (then the caller counts by one pass over the manifest's metadata)."""
    path = Path(path)
    side = stats_path(path)
    try:
        stats = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(stats, dict) or stats.get("format") != STATS_FORMAT:
        return None
    try:
        if stats.get("manifest") != _fingerprint(path):
            return None
    except OSError:
        return None
    return stats


def shar_dir(spec: str | Path) -> Path | None:
    """The directory of a Lhotse Shar data source (``shar:DIR``, or a
    directory holding ``cuts.*.jsonl*`` shards), else ``None``."""
    text = str(spec)
    if text.startswith(SHAR_PREFIX):
        return Path(text[len(SHAR_PREFIX):])
    path = Path(text)
    if path.is_dir() and any(path.glob("cuts.*.jsonl*")):
        return path
    return None


class NamedReadErrors:
    """A lazy iterable over ``cuts`` whose read errors (a truncated gzip, a bad
    line met half-way through) are an :class:`IltInputError` naming ``where``."""

    def __init__(self, cuts: Iterable[Any], where: str) -> None:
        self.cuts, self.where = cuts, where

    def __iter__(self) -> Any:
        items = iter(self.cuts)
        while True:
            try:
                cut = next(items)
            except StopIteration:
                return
            except IltInputError:
                raise
            except Exception as exc:
                raise IltInputError(f"{self.where}: cannot read cut manifest: {type(exc).__name__}: {exc}") from None
            yield cut


def open_cuts_lazy(spec: str | Path) -> CutSet:
    """A lazy ``CutSet`` of a training source: a ``.jsonl(.gz)`` manifest
    (``load_manifest_lazy``, which reads its first line to learn its type) or
    a Lhotse Shar directory (``CutSet.from_shar``, audio read from its tar
    files as cuts are drawn); read errors name ``spec``."""
    from lhotse import load_manifest_lazy

    directory = shar_dir(spec)
    try:
        cuts = CutSet.from_shar(in_dir=directory) if directory is not None else load_manifest_lazy(spec)
    except Exception as exc:
        raise IltInputError(f"{spec}: cannot read cut manifest: {type(exc).__name__}: {exc}") from None
    return CutSet(NamedReadErrors(cuts, str(spec)))


def count_source(spec: str | Path) -> dict[str, Any]:
    """The counts of :func:`count_cut` over a training source by one lazy pass
    over its metadata (no audio; a Shar directory's ``cuts.*`` shards only),
    each cut's audio sources checked (:func:`ilt.data.audio.check_sources`).
    A repeated ID is an :class:`IltInputError`, as is an unreadable manifest."""
    from lhotse import load_manifest_lazy

    directory = shar_dir(spec)
    shards = sorted(p for p in directory.glob("cuts.*") if ".jsonl" in p.name) if directory is not None else []
    if directory is not None and not shards:
        raise IltInputError(f"{directory}: no Lhotse Shar cut shards (cuts.000000.jsonl.gz...) in it")
    stats = new_cut_stats()
    try:
        cuts = CutSet.from_shar(fields={"cuts": shards}) if directory is not None else load_manifest_lazy(spec)
        for cut in _counted(cuts, stats):
            if stats["duplicate_id"] is not None:
                break
            if directory is None:  # a Shar cut's audio comes from its tar file as it is read (type 'memory')
                check_sources(cut, spec)
    except IltInputError:
        raise
    except Exception as exc:  # corrupt gzip, bad JSON, not a cut manifest
        raise IltInputError(f"{spec}: cannot read cut manifest: {type(exc).__name__}: {exc}") from None
    return stats


def duplicate_error(spec: str | Path, cut_id: str) -> IltInputError:
    """The error for a cut ID that appears twice in a manifest."""
    return IltInputError(f"{spec}: cut ID {cut_id!r} appears more than once; IDs must be unique: "
                         f"remove the duplicates or rename them (e.g. lhotse's CutSet.modify_ids)")
