"""Conversation-level (session) manifests and the files of Track 2: RTTM, STM, SegLST.

A *session* is one whole recording, a conversation. Its manifest is a Lhotse
``CutSet`` with one cut per recording: the cut's ID is the recording ID, it
spans the whole recording, and its supervisions are the reference speaker
turns (start, duration, speaker, text, language, ``custom["accent"]``) in
time order. :func:`write_session_manifests` writes, per split::

    <prefix>_sessions_<split>.jsonl.gz   the session cuts
    <prefix>_ref_<split>.rttm            reference turns (NIST RTTM, for DER)
    <prefix>_ref_<split>.stm             reference turns with text (NIST STM)
    <prefix>_ref_<split>.seglst.json     the same as meeteval SegLST, plus "language"

SegLST (meeteval's "segment-wise long-form speech transcription") is a JSON
list of segments ``{"session_id", "speaker", "start_time", "end_time",
"words"}``; ilt adds ``"language"`` (ISO 639-1), which meeteval ignores.
STM lines are ``<session> 1 <speaker> <start> <end> <words>``; RTTM lines are
``SPEAKER <session> 1 <start> <duration> <NA> <NA> <speaker> <NA> <NA>``.
Session IDs and speaker labels must not contain whitespace. docs/track2.md
describes the whole Track 2 flow.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from lhotse import CutSet, RecordingSet, SupervisionSet

from ilt.components import Turn
from ilt.core.files import write_text_atomic
from ilt.data.manifests import save_manifest
from ilt.errors import IltInputError

__all__ = [
    "SEGLST_KEYS",
    "read_rttm",
    "read_segments",
    "reference_segments",
    "session_cuts",
    "session_language",
    "session_paths",
    "turns_to_rttm",
    "write_rttm",
    "write_seglst",
    "write_session_manifests",
    "write_stm",
]

#: The keys every SegLST segment has (meeteval's required ones).
SEGLST_KEYS = ("session_id", "speaker", "start_time", "end_time", "words")


def session_paths(out_dir: str | Path, prefix: str, split: str) -> dict[str, Path]:
    """The four files :func:`write_session_manifests` writes for one split
    (``prefix`` and ``split`` checked by :func:`ilt.core.files.safe_name`)."""
    from ilt.core.files import safe_name

    out_dir = Path(out_dir)
    safe_name(prefix, "manifest name")
    safe_name(split, "split name")
    return {
        "sessions": out_dir / f"{prefix}_sessions_{split}.jsonl.gz",
        "rttm": out_dir / f"{prefix}_ref_{split}.rttm",
        "stm": out_dir / f"{prefix}_ref_{split}.stm",
        "seglst": out_dir / f"{prefix}_ref_{split}.seglst.json",
    }


def session_cuts(recordings: RecordingSet, supervisions: SupervisionSet) -> CutSet:
    """One cut per recording (ID = recording ID, the whole recording) with all its supervisions."""
    by_recording: dict[str, list[Any]] = {}
    for sup in supervisions:
        by_recording.setdefault(sup.recording_id, []).append(sup)
    cuts = []
    for recording in recordings:
        cut = recording.to_cut()
        cut.supervisions = sorted(by_recording.get(recording.id, []), key=lambda s: (s.start, s.id))
        cuts.append(cut)
    return CutSet.from_cuts(cuts)


def session_language(cut: Any, where: str = "") -> str | None:
    """The one language of a session's supervisions (``None`` if none has one); mixed is an error."""
    languages = {s.language for s in cut.supervisions if s.language}
    if len(languages) > 1:
        prefix = f"{where}: " if where else ""
        raise IltInputError(f"{prefix}session {cut.id!r} mixes languages {sorted(languages)}; "
                            "Track 2 scores one language per session")
    return languages.pop() if languages else None


def _check_label(value: str, what: str, where: str) -> str:
    value = str(value)
    if not value or any(c.isspace() for c in value):
        raise IltInputError(f"{where}: {what} {value!r} is empty or has whitespace; RTTM/STM cannot hold it")
    return value


def reference_segments(sessions: Iterable[Any], where: str = "sessions") -> list[dict[str, Any]]:
    """SegLST segments of the reference turns of ``sessions`` (with ``language``), in time order.

    A supervision without a speaker gets the label ``<session>-unknown``; one
    without text has empty ``words`` (it still counts for DER).
    """
    segments = []
    for cut in sessions:
        session = _check_label(cut.id, "session ID", where)
        language = session_language(cut, where)
        for sup in sorted(cut.supervisions, key=lambda s: (s.start, s.id)):
            start = round(max(0.0, float(sup.start)), 3)
            end = round(min(float(cut.duration), float(sup.end)), 3)
            if end <= start:
                continue
            speaker = _check_label(sup.speaker or f"{session}-unknown", "speaker", f"{where}: {sup.id}")
            segments.append({"session_id": session, "speaker": speaker, "start_time": start,
                             "end_time": end, "words": " ".join((sup.text or "").split()),
                             "language": language})
    return segments


def _sorted(segments: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return sorted(segments, key=lambda s: (s["session_id"], float(s["start_time"]), float(s["end_time"]),
                                           str(s["speaker"])))


def write_seglst(segments: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write SegLST JSON (sorted by session and time, words' whitespace squeezed), atomically."""
    rows = [{**s, "words": " ".join(str(s["words"]).split())} for s in _sorted(segments)]
    write_text_atomic(path, json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    return Path(path)


def write_stm(segments: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write NIST STM lines ``session 1 speaker start end words``, atomically."""
    lines = []
    for s in _sorted(segments):
        session = _check_label(s["session_id"], "session ID", str(path))
        speaker = _check_label(s["speaker"], "speaker", str(path))
        words = " ".join(str(s["words"]).split())
        lines.append(f"{session} 1 {speaker} {float(s['start_time']):.3f} {float(s['end_time']):.3f}"
                     + (f" {words}" if words else ""))
    write_text_atomic(path, "".join(line + "\n" for line in lines))
    return Path(path)


def turns_to_rttm(turns: Mapping[str, Sequence[Turn]]) -> str:
    """RTTM text of ``session ID -> turns`` (sessions sorted, turns by start)."""
    lines = []
    for session in sorted(turns):
        _check_label(session, "session ID", "rttm")
        for t in sorted(turns[session], key=lambda t: (t.start, t.end, t.speaker)):
            lines.append(f"SPEAKER {session} 1 {t.start:.3f} {t.duration:.3f} <NA> <NA> {t.speaker} <NA> <NA>")
    return "".join(line + "\n" for line in lines)


def write_rttm(turns: Mapping[str, Sequence[Turn]], path: str | Path) -> Path:
    """Write ``session ID -> turns`` as RTTM, atomically."""
    write_text_atomic(path, turns_to_rttm(turns))
    return Path(path)


def _rttm_turn(parts: list[str], where: str) -> Turn | None:
    if len(parts) < 8 or parts[0] != "SPEAKER":
        raise IltInputError(f"{where}: expected 'SPEAKER <recording> <channel> <start> <duration> <NA> <NA> "
                            f"<speaker> ...', got {' '.join(parts)[:80]!r}")
    try:
        start, duration = float(parts[3]), float(parts[4])
    except ValueError:
        raise IltInputError(f"{where}: start {parts[3]!r} or duration {parts[4]!r} is not a number") from None
    if not (math.isfinite(start) and math.isfinite(duration)) or start < 0 or duration < 0:
        raise IltInputError(f"{where}: invalid start {parts[3]!r} or duration {parts[4]!r}")
    return Turn(start, start + duration, parts[7]) if duration > 0 else None


def read_rttm(paths: str | Path | Sequence[str | Path]) -> dict[str, list[Turn]]:
    """``recording ID -> turns`` (sorted by start) from one or more RTTM files.

    Only ``SPEAKER`` lines count; other record types (``SPKR-INFO``...) and
    ``;;`` comments are ignored; zero-length turns are dropped. A missing
    file or a malformed ``SPEAKER`` line is an :class:`IltInputError` naming
    the file and line.
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    turns: dict[str, list[Turn]] = {}
    for path in map(Path, paths):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise IltInputError(f"{path}: cannot read RTTM: {exc}") from None
        for lineno, line in enumerate(text.splitlines(), 1):
            parts = line.split()
            if not parts or parts[0].startswith(";;") or parts[0] != "SPEAKER":
                continue
            turn = _rttm_turn(parts, f"{path}:{lineno}")
            turns.setdefault(parts[1], [])
            if turn is not None:
                turns[parts[1]].append(turn)
    for value in turns.values():
        value.sort(key=lambda t: (t.start, t.end, t.speaker))
    return turns


def _read_stm(path: Path, text: str) -> list[dict[str, Any]]:
    segments = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split(maxsplit=5)
        if not parts or parts[0].startswith(";;"):
            continue
        if len(parts) < 5:
            raise IltInputError(f"{path}:{lineno}: expected '<session> <channel> <speaker> <start> <end> [words]'")
        try:
            start, end = float(parts[3]), float(parts[4])
        except ValueError:
            raise IltInputError(f"{path}:{lineno}: start {parts[3]!r} or end {parts[4]!r} is not a number") from None
        segments.append({"session_id": parts[0], "speaker": parts[2], "start_time": start, "end_time": end,
                         "words": parts[5].strip() if len(parts) > 5 else ""})
    return segments


def _check_segments(path: Path, segments: Any) -> list[dict[str, Any]]:
    if not isinstance(segments, list):
        raise IltInputError(f"{path}: a SegLST file is a JSON list of segments, found {type(segments).__name__}")
    for n, segment in enumerate(segments):
        missing = [k for k in SEGLST_KEYS if not isinstance(segment, dict) or k not in segment]
        if missing:
            raise IltInputError(f"{path}: segment {n} lacks {', '.join(missing)} (SegLST needs "
                                f"{', '.join(SEGLST_KEYS)})")
        try:
            segment["start_time"], segment["end_time"] = float(segment["start_time"]), float(segment["end_time"])
        except (TypeError, ValueError):
            raise IltInputError(f"{path}: segment {n}: start_time/end_time must be numbers") from None
        segment["session_id"], segment["speaker"] = str(segment["session_id"]), str(segment["speaker"])
        segment["words"] = " ".join(str(segment["words"] or "").split())
    return segments


def read_segments(path: str | Path) -> list[dict[str, Any]]:
    """Read SegLST JSON (``*.json``) or STM (any other name) into SegLST dicts.

    Errors name the file (and line or segment number).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise IltInputError(f"{path}: cannot read segments: {exc}") from None
    if path.suffix != ".json":
        return _read_stm(path, text)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IltInputError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    return _check_segments(path, data)


def write_session_manifests(recordings: RecordingSet, supervisions: SupervisionSet, out_dir: str | Path,
                            prefix: str, split: str) -> CutSet:
    """Write the session manifest and the reference RTTM/STM/SegLST of one split
    (see the module docstring), each atomically, the manifest last."""
    paths = session_paths(out_dir, prefix, split)
    sessions = session_cuts(recordings, supervisions)
    segments = reference_segments(sessions, str(paths["sessions"]))
    turns: dict[str, list[Turn]] = {cut.id: [] for cut in sessions}
    for s in segments:
        turns[s["session_id"]].append(Turn(s["start_time"], s["end_time"], s["speaker"]))
    write_rttm(turns, paths["rttm"])
    write_stm(segments, paths["stm"])
    write_seglst(segments, paths["seglst"])
    save_manifest(sessions, paths["sessions"])
    return sessions
