"""The MLC-SLM challenge corpus (Task I) as Lhotse manifests.

Layout, per split (``train/``, ``dev/``, ... or the corpus directory itself)::

    <split>/<Language>/<Accent>/<conversation>.wav   # English: accent directories
    <split>/<Language>/<conversation>.wav            # other languages may have none
    <conversation>.txt                               # beside each wav

Each ``.txt`` line is ``start<TAB>end<TAB>speaker<TAB>text`` (seconds). The
evaluation set has no text column. Utterance IDs follow the challenge baseline
(``examples/mlcslm/asr/local/prepare_segments.py`` of MLC-SLM-Baseline): the
wav path relative to the split directory, without extension, its parts joined
by ``-``, then ``-<speaker>-<start>-<end>`` with times in centiseconds, six
digits: ``English-American-0517_001-A-000123-000456``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from lhotse import CutSet, Recording, RecordingSet, SupervisionSegment, SupervisionSet
from tqdm.auto import tqdm

from ilt.core.runtime import Skips
from ilt.data.audio import AudioProblem, open_recording
from ilt.data.manifests import (
    load_cuts,
    load_recordings,
    load_supervisions,
    manifest_paths,
    manifests_exist,
    save_manifests,
)
from ilt.errors import IltInputError
from ilt.track2.formats import session_paths, write_session_manifests

log = logging.getLogger(__name__)

PREFIX = "mlc_slm"

#: The challenge's 11 language directory names -> ISO 639-1 code. A directory
#: with another name is not a language: it is skipped and counted.
LANGUAGES: dict[str, str] = {
    "English": "en",
    "French": "fr",
    "German": "de",
    "Italian": "it",
    "Japanese": "ja",
    "Korean": "ko",
    "Portuguese": "pt",
    "Russian": "ru",
    "Spanish": "es",
    "Thai": "th",
    "Vietnamese": "vi",
}


def centiseconds(t: float) -> str:
    """A time as the baseline writes it in IDs: ``int(round(t, 2) * 100)``, six digits.

    This keeps the baseline's float truncation (``0.29`` -> ``000028``) so our IDs
    equal the keys of files the baseline produced.
    """
    return str(int(round(t, 2) * 100)).zfill(6)


def utterance_id(recording_id: str, speaker: str, start: float, end: float) -> str:
    """``<recording_id>-<speaker>-<start cs>-<end cs>``, as in the challenge baseline."""
    return f"{recording_id}-{speaker}-{centiseconds(start)}-{centiseconds(end)}"


@dataclass
class _Conversation:
    stem: Path  # path without suffix
    rel_parts: tuple[str, ...]  # relative to the split directory, without suffix
    language: str  # directory name
    accent: str
    wav: Path | None = None
    txt: Path | None = None
    lines: list[tuple[int, list[str]]] = field(default_factory=list)

    @property
    def recording_id(self) -> str:
        return "-".join(self.rel_parts)


def _language_dirs(directory: Path) -> list[Path]:
    return sorted(d for d in directory.iterdir() if d.is_dir() and d.name in LANGUAGES)


def find_splits(corpus_dir: Path, default_split: str = "train") -> dict[str, Path]:
    """Split name -> directory.

    A corpus whose top level holds language directories (``English/``...) is one
    split named ``default_split``; otherwise every sub-directory that holds
    language directories is a split named after it.
    """
    corpus_dir = Path(corpus_dir)
    if not corpus_dir.is_dir():
        raise IltInputError(f"{corpus_dir}: corpus directory not found")
    subdirs = sorted(d for d in corpus_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if any(d.name in LANGUAGES for d in subdirs):
        return {default_split: corpus_dir}
    splits = {}
    for d in subdirs:
        if _language_dirs(d):
            splits[d.name] = d
        else:
            log.warning("mlc-slm: %s holds no language directory (%s): not a split, ignored",
                        d, ", ".join(LANGUAGES))
    if not splits:
        raise IltInputError(
            f"{corpus_dir}: no MLC-SLM data found: expected <Language>/... or <split>/<Language>/... "
            f"with Language one of {', '.join(LANGUAGES)}"
        )
    return splits


def _discover(split_dir: Path, skips: Skips) -> list[_Conversation]:
    """Pair every ``.wav`` with its ``.txt`` under the language directories of a split."""
    for d in sorted(split_dir.iterdir()):
        if d.is_dir() and not d.name.startswith(".") and d.name not in LANGUAGES:
            skips.skip("unknown language directory", str(d), f"known: {', '.join(LANGUAGES)}")
    convs: dict[Path, _Conversation] = {}
    for lang_dir in _language_dirs(split_dir):
        for f in sorted(lang_dir.rglob("*")):
            if not f.is_file() or f.suffix not in (".wav", ".txt") or f.name.startswith("."):
                continue
            stem = f.with_suffix("")
            if stem not in convs:
                rel = stem.relative_to(split_dir).parts
                accent = rel[1] if len(rel) > 2 else lang_dir.name
                convs[stem] = _Conversation(stem, rel, lang_dir.name, accent)
            setattr(convs[stem], f.suffix[1:], f)
    result = []
    for conv in convs.values():
        if conv.wav is None:
            skips.skip("missing wav", str(conv.txt), f"no {conv.stem.name}.wav beside it")
        elif conv.txt is None:
            skips.skip("missing transcript file", str(conv.wav), f"no {conv.stem.name}.txt beside it")
        else:
            result.append(conv)
    return result


def _read_lines(conv: _Conversation, skips: Skips) -> bool:
    try:
        text = conv.txt.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        skips.skip("unreadable transcript file", str(conv.txt), str(exc))
        return False
    conv.lines = [(n, line.split(None, 3)) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not conv.lines:
        skips.skip("empty transcript file", str(conv.txt))
        return False
    return True


def _read_recording(conv: _Conversation, skips: Skips) -> Recording | None:
    rec = open_recording(conv.wav, conv.recording_id)
    if isinstance(rec, AudioProblem):
        skips.skip(rec.reason, str(conv.wav), rec.detail)
        return None
    return rec


def _supervisions(
    conv: _Conversation,
    rec: Recording,
    transcribed: bool,
    tolerance: float,
    seen: set[str],
    skips: Skips,
) -> list[SupervisionSegment]:
    iso = LANGUAGES[conv.language]
    sups = []
    for lineno, parts in conv.lines:
        where = f"{conv.txt}:{lineno}"
        if len(parts) < 3:
            skips.skip("malformed line", where, f"{len(parts)} column(s), expected start, end, speaker[, text]")
            continue
        try:
            start, end = float(parts[0]), float(parts[1])
        except ValueError:
            skips.skip("malformed line", where, f"non-numeric time in {parts[0]!r} {parts[1]!r}")
            continue
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0:
            skips.skip("malformed line", where, f"invalid time {parts[0]!r} {parts[1]!r}")
            continue
        if start >= end:
            skips.skip("start >= end", where, f"{start} >= {end}")
            continue
        if start >= rec.duration or end > rec.duration + tolerance:
            skips.skip("segment past end of audio", where, f"ends at {end} s, audio is {rec.duration:.3f} s")
            continue
        speaker = parts[2]
        text = " ".join(parts[3].split()) if len(parts) > 3 else ""
        if transcribed and not text:
            skips.skip("empty transcript", where)
            continue
        uid = utterance_id(conv.recording_id, speaker, start, end)
        if uid in seen:
            skips.skip("duplicate utterance id", where, uid)
            continue
        seen.add(uid)
        sups.append(
            SupervisionSegment(
                id=uid,
                recording_id=rec.id,
                start=start,
                duration=round(min(end, rec.duration) - start, 6),
                channel=0,
                text=text if transcribed else None,
                language=iso,
                speaker=f"{conv.recording_id}-{speaker}",
                custom={"accent": conv.accent, "conversation": conv.stem.name},
            )
        )
    return sups


def _prepare_split(
    split: str, split_dir: Path, tolerance: float, skips: Skips
) -> tuple[RecordingSet, SupervisionSet, CutSet]:
    convs = [c for c in _discover(split_dir, skips) if _read_lines(c, skips)]
    # A split in which no line has a text column is evaluation data: kept without text.
    transcribed = any(len(parts) > 3 for c in convs for _, parts in c.lines)
    if convs and not transcribed:
        log.info("mlc-slm: split %r has no transcripts: supervisions are written without text", split)
    recordings, supervisions, seen = [], [], set()
    for conv in tqdm(convs, desc=f"mlc-slm {split}", unit="conv", leave=False):
        rec = _read_recording(conv, skips)
        if rec is None:
            continue
        sups = _supervisions(conv, rec, transcribed, tolerance, seen, skips)
        if sups:
            recordings.append(rec)
            supervisions.extend(sups)
    if not supervisions:
        raise IltInputError(
            f"{split_dir}: split {split!r} has no usable utterance "
            f"({skips.total} item(s) skipped so far, see the warnings above)"
        )
    recs = RecordingSet.from_recordings(recordings)
    sups = SupervisionSet.from_segments(supervisions)
    cuts = CutSet.from_manifests(recordings=recs, supervisions=sups).trim_to_supervisions(
        keep_overlapping=False
    ).to_eager()
    return recs, sups, cuts


def prepare_mlc_slm(
    corpus_dir: Path,
    out_dir: Path,
    *,
    splits: tuple[str, ...] = (),
    default_split: str = "train",
    tolerance: float = 0.05,
    sessions: bool = False,
    force: bool = False,
) -> dict[str, CutSet]:
    """MLC-SLM challenge corpus. Layout: [<split>/]<Language>/[<Accent>/]<conv>.wav beside <conv>.txt.

    Writes ``mlc_slm_{recordings,supervisions,cuts}_<split>.jsonl.gz`` under
    ``out_dir``: one cut per utterance, its ID following the challenge baseline,
    its supervision carrying the ISO language code, the speaker and
    ``custom={"accent", "conversation"}``.

    :param splits: splits to prepare (sub-directories of ``corpus_dir``); all by default.
    :param default_split: the split name when ``corpus_dir`` holds language
        directories directly.
    :param tolerance: seconds a segment may run past the end of its audio (it is
        then clipped); beyond that it is skipped.
    :param sessions: also write the conversation-level manifests of Track 2
        (``mlc_slm_sessions_<split>.jsonl.gz``: one cut per whole recording with
        its reference speaker turns) and the reference turns as
        ``mlc_slm_ref_<split>.{rttm,stm,seglst.json}`` (docs/track2.md).
    :param force: rebuild manifests that already exist.
    :return: split name -> ``CutSet``.

    Bad input (missing or unreadable files, malformed lines, bad times, empty
    transcripts in a transcribed split, unknown language directories) is skipped,
    logged with file and line, and counted in a report at the end. A split left
    without utterances is an :class:`IltInputError`; nothing is written then.
    """
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    found = find_splits(corpus_dir, default_split)
    wanted = list(splits) or list(found)
    unknown = [s for s in wanted if s not in found]
    if unknown:
        raise IltInputError(f"{corpus_dir}: no split {', '.join(map(repr, unknown))}; found: {', '.join(found)}")

    skips = Skips("prepare mlc-slm")
    result: dict[str, CutSet] = {}
    todo: dict[str, tuple[RecordingSet, SupervisionSet, CutSet]] = {}
    for split in wanted:
        paths = manifest_paths(out_dir, PREFIX, split)
        if manifests_exist(paths) and not force:
            log.info("mlc-slm: %s exists, skipping split %r (use --overwrite to rebuild)", paths["cuts"], split)
            result[split] = load_cuts(paths["cuts"])
            continue
        todo[split] = _prepare_split(split, found[split], tolerance, skips)
    # Write only once every split succeeded: an error above leaves all old manifests as they were.
    for split, (recs, sups, cuts) in todo.items():
        save_manifests(manifest_paths(out_dir, PREFIX, split), recs, sups, cuts)
        hours = sum(c.duration for c in cuts) / 3600
        log.info("mlc-slm: split %r: %d utterances (%.2f h) in %d recordings -> %s",
                 split, len(cuts), hours, len(recs), out_dir)
        result[split] = cuts
    if sessions:
        _write_sessions(out_dir, wanted, todo, force)
    skips.report()
    return {split: result[split] for split in wanted}


def _write_sessions(out_dir: Path, splits: list[str], built: dict, force: bool) -> None:
    """Session manifests of ``splits`` from the recordings and supervisions just
    built (``built``) or already on disk; existing ones are kept unless ``force``."""
    for split in splits:
        paths = session_paths(out_dir, PREFIX, split)
        if split not in built and not force and all(p.is_file() for p in paths.values()):
            continue
        if split in built:
            recs, sups, _ = built[split]
        else:
            split_paths = manifest_paths(out_dir, PREFIX, split)
            recs, sups = load_recordings(split_paths["recordings"]), load_supervisions(split_paths["supervisions"])
        sessions = write_session_manifests(recs, sups, out_dir, PREFIX, split)
        log.info("mlc-slm: split %r: %d session(s) -> %s", split, len(sessions), paths["sessions"])
