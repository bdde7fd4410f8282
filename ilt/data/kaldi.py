"""Import a Kaldi data directory (wav.scp, segments, text, utt2spk) as Lhotse manifests.

The conversion itself is Lhotse's :func:`lhotse.kaldi.load_kaldi_data_dir`; this
module checks the directory first so that bad input is an error naming the file
and line rather than an assertion deep inside Lhotse, sets the language on every
supervision and writes the manifests atomically.

A ``wav.scp`` entry ending in ``|`` is a shell command that Lhotse would run
on every load: it is refused (one line naming the file, line and recording)
unless ``ILT_ALLOW_AUDIO_COMMANDS=1`` (see :func:`ilt.data.audio.check_sources`).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

from lhotse import CutSet, RecordingSet, SupervisionSet
from lhotse.kaldi import load_kaldi_data_dir
from lhotse.utils import fastcopy

from ilt.core.files import safe_name
from ilt.core.runtime import Skips
from ilt.data.audio import ALLOW_AUDIO_COMMANDS, audio_commands_allowed
from ilt.data.languages import validate_language
from ilt.data.manifests import (
    load_cuts,
    manifest_paths,
    manifests_exist,
    save_manifests,
)
from ilt.errors import IltInputError

log = logging.getLogger(__name__)

REQUIRED = ("wav.scp", "text", "utt2spk")


def _read_table(path: Path, min_fields: int, max_fields: int | None = None) -> list[tuple[int, list[str]]]:
    """Non-blank lines of a Kaldi table as ``(line number, fields)``; checks the field count."""
    rows = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise IltInputError(f"{path}: cannot read: {exc}") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(None, max_fields - 1 if max_fields else -1)
        if len(fields) < min_fields or (max_fields and len(fields) > max_fields):
            raise IltInputError(f"{path}:{n}: expected {min_fields}"
                                f"{'' if max_fields == min_fields else '+'} field(s), got {len(fields)}: {line!r}")
        rows.append((n, fields))
    return rows


def _check_wav_scp(data_dir: Path, sampling_rate: int) -> int:
    """Check every file in wav.scp is readable audio; return the common sampling rate."""
    import soundfile as sf

    wav_scp = data_dir / "wav.scp"
    rates: dict[int, str] = {}
    seen: set[str] = set()
    for n, (rec_id, value) in _read_table(wav_scp, 2, 2):
        if rec_id in seen:
            raise IltInputError(f"{wav_scp}:{n}: recording {rec_id!r} listed twice")
        seen.add(rec_id)
        value = value.strip()
        if value.endswith("|"):  # a command: Lhotse runs it; the rate must be given
            if not audio_commands_allowed():
                raise IltInputError(f"{wav_scp}:{n}: recording {rec_id!r}: audio source of type 'command' is "
                                    f"refused (a wav.scp entry ending in '|' runs a shell); set "
                                    f"{ALLOW_AUDIO_COMMANDS}=1 to import it if you trust whoever wrote it")
            if not sampling_rate:
                raise IltInputError(f"{wav_scp}:{n}: {rec_id} is a command; pass sampling_rate (--sampling-rate)")
            continue
        try:
            info = sf.info(value)
        except Exception as exc:
            raise IltInputError(f"{wav_scp}:{n}: cannot read audio {value!r} of {rec_id}: {exc}") from None
        if info.frames == 0:
            raise IltInputError(f"{wav_scp}:{n}: audio {value!r} of {rec_id} is empty")
        rates.setdefault(info.samplerate, f"{wav_scp}:{n}")
    if not seen:
        raise IltInputError(f"{wav_scp}: no recordings")
    if sampling_rate:
        wrong = {sr: where for sr, where in rates.items() if sr != sampling_rate}
        if wrong:
            sr, where = next(iter(wrong.items()))
            raise IltInputError(f"{where}: audio is {sr} Hz, but sampling_rate is {sampling_rate}")
        return sampling_rate
    if len(rates) > 1:
        listed = ", ".join(f"{sr} Hz ({where})" for sr, where in rates.items())
        raise IltInputError(f"{wav_scp}: recordings have different sampling rates: {listed}")
    return next(iter(rates))


def _check_utterances(data_dir: Path, transcripts: bool = True) -> None:
    """segments (optional), text (when ``transcripts``) and utt2spk must agree;
    errors name file and line."""
    rec_ids = {fields[0] for _, fields in _read_table(data_dir / "wav.scp", 2, 2)}
    segments = data_dir / "segments"
    if segments.is_file():
        utts = []
        for n, (utt, rec, start, end) in _read_table(segments, 4, 4):
            where = f"{segments}:{n}"
            if rec not in rec_ids:
                raise IltInputError(f"{where}: recording {rec!r} is not in wav.scp")
            try:
                t0, t1 = float(start), float(end)
            except ValueError:
                raise IltInputError(f"{where}: non-numeric time {start!r} {end!r}") from None
            if t0 < 0 or (t1 != -1 and t1 <= t0):
                raise IltInputError(f"{where}: bad segment times {start} {end}: the start must be >= 0 and the "
                                    f"end after it (or -1: the end of the recording); fix the line")
            utts.append(utt)
    else:
        utts = sorted(rec_ids)
    dup = sorted(u for u, count in Counter(utts).items() if count > 1)
    if dup:
        raise IltInputError(f"{segments}: utterance(s) listed twice: {', '.join(dup[:5])}")
    for name in ("text", "utt2spk") if transcripts else ("utt2spk",):
        path = data_dir / name
        have = {fields[0] for _, fields in _read_table(path, 1 if name == "text" else 2)}
        missing = [u for u in utts if u not in have]
        if missing:
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise IltInputError(f"{path}: no entry for utterance(s) {', '.join(missing[:5])}{more}")


def _load_untranscribed(data_dir: Path, sampling_rate: int) -> tuple[RecordingSet, SupervisionSet]:
    """Lhotse's importer on a directory without ``text``: Lhotse reads ``text``
    whenever there are ``segments``, so it gets a view of the directory (links
    to its files) whose ``text`` lists each utterance with an empty transcript."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ilt-kaldi-") as tmp:
        view = Path(tmp)
        for item in data_dir.iterdir():
            if item.name != "text" and item.is_file():
                (view / item.name).symlink_to(item.resolve())
        if (data_dir / "segments").is_file():
            utts = [fields[0] for _, fields in _read_table(data_dir / "segments", 4, 4)]
            (view / "text").write_text("".join(f"{u}\n" for u in utts), encoding="utf-8")
        recordings, supervisions, _ = load_kaldi_data_dir(view, sampling_rate=sampling_rate)
    return recordings, supervisions


def _absolute_sources(recordings: RecordingSet) -> RecordingSet:
    """Kaldi resolves relative wav.scp paths from the working directory; store them absolute."""
    def fix(rec):
        sources = [
            fastcopy(s, source=os.path.abspath(s.source)) if s.type == "file" else s for s in rec.sources
        ]
        return fastcopy(rec, sources=sources)

    return RecordingSet.from_recordings(fix(r) for r in recordings)


def _usable_supervisions(data_dir: Path, name: str, recordings: RecordingSet, supervisions: SupervisionSet, *,
                         language: str, accent: str, tolerance: float, transcripts: bool) -> list:
    """The supervisions to keep, with ``language`` (and ``accent``) set and
    segments clipped to their audio; empty transcripts (when ``transcripts``)
    and segments past the end of the audio are counted skips."""
    skips = Skips(f"prepare kaldi {name}")
    kept = []
    for sup in supervisions:
        rec = recordings[sup.recording_id]
        where = f"{data_dir / 'text'} ({sup.id})"
        if transcripts and not (sup.text or "").strip():
            skips.skip("empty transcript", where)
            continue
        if sup.end > rec.duration + tolerance:
            skips.skip("segment past end of audio", where, f"ends at {sup.end} s, audio is {rec.duration} s")
            continue
        custom = dict(sup.custom or {})
        if accent:
            custom["accent"] = accent
        kept.append(fastcopy(sup, language=language, text=" ".join(sup.text.split()) if transcripts else None,
                             duration=round(min(sup.end, rec.duration) - sup.start, 6),
                             custom=custom or None))
    skips.report()
    if not kept:
        raise IltInputError(f"{data_dir}: no usable utterance ({skips.total} skipped)")
    return kept


def prepare_kaldi(
    data_dir: Path,
    out_dir: Path,
    *,
    language: str = "en",
    name: str | None = None,
    accent: str = "",
    sampling_rate: int = 0,
    tolerance: float = 0.05,
    transcripts: bool = True,
    force: bool = False,
) -> dict[str, CutSet]:
    """Kaldi data directory (wav.scp, text, utt2spk, optional segments).

    Writes ``<name>_{recordings,supervisions,cuts}.jsonl.gz`` under ``out_dir``
    with Lhotse's own Kaldi importer; every supervision gets ``language``.
    An evaluation set without transcripts (``--no-transcripts``) needs no
    ``text`` file: its supervisions have no text, so it is decoded but not
    scored.

    :param language: ISO 639-1 code of the speech (any language Whisper knows).
    :param name: manifest name prefix and the key of the result; the data
        directory's name by default.
    :param accent: if given, stored as ``custom["accent"]`` on every supervision.
    :param sampling_rate: the audio's rate; 0 reads it from the files (required
        when wav.scp holds commands).
    :param tolerance: seconds a segment may run past the end of its audio (it is
        then clipped); beyond that it is skipped.
    :param transcripts: the directory has a ``text`` file and utterances with
        an empty transcript are skipped; ``False``: an unlabelled set, any
        ``text`` file is ignored.
    :param force: rebuild manifests that already exist.
    :return: ``{name: CutSet}``.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    language = validate_language(language, "--language")
    name_given = bool(name)
    name = name or data_dir.resolve().name
    safe_name(name, "manifest name", "--name" if name_given else data_dir)
    paths = manifest_paths(out_dir, name)
    if manifests_exist(paths) and not force:
        log.info("kaldi: %s exists, skipping (use --overwrite to rebuild)", paths["cuts"])
        return {name: load_cuts(paths["cuts"])}

    if not data_dir.is_dir():
        raise IltInputError(f"{data_dir}: Kaldi data directory not found")
    missing = [f for f in REQUIRED if not (data_dir / f).is_file() and (transcripts or f != "text")]
    if missing:
        hint = " (an evaluation set without transcripts: pass --no-transcripts)" if missing == ["text"] else ""
        raise IltInputError(f"{data_dir}: missing Kaldi file(s): {', '.join(missing)}{hint}")
    rate = _check_wav_scp(data_dir, sampling_rate)
    _check_utterances(data_dir, transcripts)
    try:
        if transcripts:
            recordings, supervisions, _ = load_kaldi_data_dir(data_dir, sampling_rate=rate)
        else:
            recordings, supervisions = _load_untranscribed(data_dir, rate)
    except Exception as exc:  # anything our checks missed: still name the directory
        raise IltInputError(f"{data_dir}: cannot import Kaldi data directory: {type(exc).__name__}: {exc}") from None
    recordings = _absolute_sources(recordings)

    kept = _usable_supervisions(data_dir, name, recordings, supervisions, language=language, accent=accent,
                                tolerance=tolerance, transcripts=transcripts)
    sups = SupervisionSet.from_segments(kept)
    used = {s.recording_id for s in kept}
    recs = RecordingSet.from_recordings(r for r in recordings if r.id in used)
    cuts = CutSet.from_manifests(recordings=recs, supervisions=sups).trim_to_supervisions(
        keep_overlapping=False
    ).to_eager()
    save_manifests(paths, recs, sups, cuts)
    log.info("kaldi: %d utterances in %d recordings -> %s", len(cuts), len(recs), paths["cuts"])
    return {name: cuts}
