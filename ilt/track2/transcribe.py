"""Track 2: diarize whole conversations, transcribe their speaker segments, score by tcpWER.

* :func:`diarize_sessions` runs a diarizer plugin over a session manifest
  (:mod:`ilt.track2.formats`) and writes ``diarization.rttm``; each session's
  turns are kept in ``per_session/`` so a killed run resumes.
* :func:`speaker_segments` cuts sessions into one cut per turn, a turn longer
  than ``max_seconds`` split evenly into ``ceil(duration / max_seconds)``
  pieces, each piece its own timed segment.
* :func:`transcribe_sessions` decodes those cuts with :func:`ilt.asr.decode.decode_files`
  and writes the per-speaker hypotheses with times as meeteval SegLST
  (``hyp.seglst.json``) and STM (``hyp.stm``).
* :func:`score_sessions` computes tcpWER (collar 5 s, as the MLC-SLM challenge
  does) and cpWER with meeteval, per language and pooled, after the
  challenge's normalisation (:func:`ilt.data.text.tokens_for_scoring`:
  characters for ja/ko/th), and the diarization error rate with pyannote.metrics.
  The normalised files it scores are written beside the scores, so
  ``meeteval-wer tcpwer -r ref.seglst.json -h hyp.seglst.json --collar 5``
  gives the same numbers.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ilt.components import Diarizer, Turn
from ilt.core.files import (
    log,
    read_json,
    safe_name,
    sha256_file,
    write_json_atomic,
    write_text_atomic,
)
from ilt.core.runtime import Skips, process_state
from ilt.data.text import tokens_for_scoring, unit_of
from ilt.errors import IltInputError
from ilt.track2.formats import (
    read_rttm,
    read_segments,
    reference_segments,
    session_language,
    turns_to_rttm,
    write_seglst,
    write_stm,
)

#: The challenge's tcpWER collar (seconds).
COLLAR = 5.0
#: The fingerprint of the decode in ``decode/`` (:func:`decode_fingerprint`), beside it.
DECODE_FINGERPRINT = "decode.fingerprint.json"
#: Longest speaker segment decoded as one piece (Whisper's window).
MAX_SECONDS = 30.0


def load_sessions(path: str | Path) -> Any:
    """A session manifest (whole-recording cuts); errors name the file."""
    from ilt.data.manifests import load_cuts

    sessions = load_cuts(path)
    ids = [cut.id for cut in sessions]
    if not ids:
        raise IltInputError(f"{path}: no session in this manifest")
    for session_id in ids:  # a session ID names its per_session/ file: never a path
        safe_name(session_id, "session ID", path)
    if len(set(ids)) != len(ids):
        raise IltInputError(f"{path}: session IDs repeat; a session manifest has one cut per recording")
    return sessions


def check_recordings(turns: Mapping[str, Any], session_ids: Iterable[str], where: str) -> None:
    """An RTTM naming recordings that are not sessions is an error naming it."""
    session_ids = set(session_ids)
    unknown = sorted(set(turns) - session_ids)
    if unknown:
        examples = ", ".join(repr(r) for r in unknown[:3])
        raise IltInputError(f"{where}: {len(unknown)} recording(s) are not sessions of the manifest (e.g. "
                            f"{examples}; sessions e.g. {sorted(session_ids)[0]!r}): is this the RTTM of these sessions?")


# --------------------------------------------------------------------------- diarize


def _clean_turns(turns: Any, session: Any, name: str) -> list[Turn]:
    if not isinstance(turns, list) or not all(isinstance(t, Turn) for t in turns):
        raise TypeError(f"diarizer {name!r} returned {type(turns).__name__} for session {session.id!r}, "
                        "not a list of ilt.components.Turn")
    out = []
    for t in turns:
        end = min(t.end, float(session.duration))
        if end > t.start:
            out.append(Turn(t.start, end, t.speaker))
    return sorted(out, key=lambda t: (t.start, t.end, t.speaker))


def session_fingerprint(session: Any, spec: Mapping[str, Any]) -> str:
    """16 hex digits of the sha256 of a session cut (recording, sources,
    times) and the diarizer spec that made its turns: the key of its
    ``per_session/`` file, so turns of another recording or diarizer are never reused."""
    import hashlib

    made_of = json.dumps({"session": session.to_dict(), "diarizer": spec}, sort_keys=True, default=str)
    return hashlib.sha256(made_of.encode("utf-8")).hexdigest()[:16]


def diarize_sessions(sessions_path: str | Path, diarizer: Any, out_dir: str | Path) -> dict[str, list[Turn]]:
    """Diarize every session with the diarizer ``diarizer`` (a name or
    :class:`ilt.config.ComponentSpec`); write ``out_dir/diarization.rttm``.

    Each session's turns go to ``out_dir/per_session/<id>.<fingerprint>.rttm``
    as soon as it is done; a re-run reuses a file only when its name carries
    the fingerprint of the same session (its cut: recording, sources, times)
    and the same diarizer and options (:func:`session_fingerprint`), and it
    names no other session. Another diarizer, or other options, starts over.
    """
    from tqdm import tqdm

    from ilt.core.registry import create

    sessions = load_sessions(sessions_path)
    out_dir = Path(out_dir)
    spec = {"name": getattr(diarizer, "name", diarizer), "options": dict(getattr(diarizer, "options", {}) or {})}
    cache = out_dir / "per_session"
    if read_json(out_dir / "diarizer.json") != spec and cache.is_dir():
        for stale in cache.glob("*.rttm"):
            stale.unlink()
    model: Diarizer = create("diarizer", diarizer)
    if hasattr(model, "check_sessions"):
        model.check_sessions({cut.id for cut in sessions})
    write_json_atomic(out_dir / "diarizer.json", spec)
    result: dict[str, list[Turn]] = {}
    for session in tqdm(sessions, desc="diarize", unit="session"):
        done = cache / f"{session.id}.{session_fingerprint(session, spec)}.rttm"
        kept = read_rttm(done) if done.is_file() else None
        if kept is not None and set(kept) <= {session.id}:
            result[session.id] = kept.get(session.id, [])
            continue
        result[session.id] = _clean_turns(model.diarize(session), session, spec["name"])
        write_text_atomic(done, turns_to_rttm({session.id: result[session.id]}))
    write_text_atomic(out_dir / "diarization.rttm", turns_to_rttm(result))
    speakers = sum(len({t.speaker for t in turns}) for turns in result.values())
    log.info("diarize: %d session(s), %d turn(s), %d speaker(s) -> %s", len(result),
             sum(map(len, result.values())), speakers, out_dir / "diarization.rttm")
    return result


# --------------------------------------------------------------------------- segments


def split_evenly_times(start: float, end: float, max_seconds: float) -> list[tuple[float, float]]:
    """``[start, end)`` in ``ceil(duration / max_seconds)`` equal pieces (one when it fits)."""
    n = max(1, math.ceil((end - start) / max_seconds - 1e-9))
    step = (end - start) / n
    return [(round(start + k * step, 3), round(end if k == n - 1 else start + (k + 1) * step, 3)) for k in range(n)]


def segment_id(session: str, speaker: str, start: float, end: float) -> str:
    """``<session>-<speaker>-<start ms>-<end ms>``, times as 8 digits."""
    return f"{session}-{speaker}-{int(round(start * 1000)):08d}-{int(round(end * 1000)):08d}"


def speaker_segments(sessions: Iterable[Any], turns: Mapping[str, Sequence[Turn]],
                     max_seconds: float = MAX_SECONDS, where: str = "<turns>") -> Any:
    """One cut per turn (pieces of at most ``max_seconds``), in session and time
    order, each with one supervision: the session's language and accent, the
    speaker label, and ``custom`` ``{"session", "speaker", "accent"}``.

    :raises IltInputError: a speaker label (from ``where``, the RTTM) that
        could not be part of a cut ID (:func:`ilt.core.files.safe_name`)."""
    from lhotse import CutSet, SupervisionSegment
    from lhotse.cut import MonoCut

    cuts, seen = [], set()
    for session in sessions:
        language = session_language(session)
        accent = next(((s.custom or {}).get("accent") for s in session.supervisions if s.custom), None)
        for turn in turns.get(session.id, []):
            safe_name(turn.speaker, "speaker label", where)  # part of the segment (cut) IDs
            for start, end in split_evenly_times(turn.start, min(turn.end, session.duration), max_seconds):
                cut_id = segment_id(session.id, turn.speaker, start, end)
                if end <= start or cut_id in seen:
                    continue
                seen.add(cut_id)
                sup = SupervisionSegment(id=cut_id, recording_id=session.recording_id, start=0.0,
                                         duration=round(end - start, 3), channel=session.channel,
                                         language=language, speaker=turn.speaker,
                                         custom={"session": session.id, "speaker": turn.speaker, "accent": accent})
                cuts.append(MonoCut(id=cut_id, start=session.start + start, duration=round(end - start, 3),
                                    channel=session.channel, recording=session.recording, supervisions=[sup]))
    return CutSet.from_cuts(cuts)


def hypothesis_segments(segments: Any, texts: Mapping[str, str]) -> list[dict[str, Any]]:
    """SegLST hypothesis segments: one per segment cut, its decoded text (``""``
    when it was not decoded: unreadable audio is counted by the decoder)."""
    out = []
    for cut in segments:
        sup = cut.supervisions[0]
        out.append({"session_id": sup.custom["session"], "speaker": sup.custom["speaker"],
                    "start_time": round(cut.start, 3), "end_time": round(cut.end, 3),
                    "words": " ".join(texts.get(cut.id, "").split()), "language": sup.language})
    return out


def decode_fingerprint(model_dir: str | Path, adapter: str | Path | None, config: Any,
                       segments: Path) -> dict[str, Any] | None:
    """What a decode of ``segments`` is made of: the sha256 of the model's
    weights files, of the adapter's, the decoding config's hash and the
    segments manifest's sha256; ``None`` (never reused) when the model
    directory holds no safetensors to hash."""
    from ilt.config import DecodeConfig, config_hash
    from ilt.models.adapter import resolve_adapter_dir
    from ilt.models.lineage import weights_sha256

    model = weights_sha256(model_dir) if Path(model_dir).is_dir() else None
    if model is None:
        return None
    return {"model": model, "adapter": None if adapter is None else weights_sha256(resolve_adapter_dir(adapter)),
            "decode_config": config_hash(config or DecodeConfig()), "segments": sha256_file(segments)[:16]}


def _decoded(out_dir: Path, ids: set[str]) -> dict[str, str] | None:
    """The texts of an earlier complete decode of exactly these segments, else ``None``."""
    path = out_dir / "hyps.jsonl"
    if not path.is_file() or not (out_dir / "decode_stats.json").is_file():
        return None
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    skipped = sum((read_json(out_dir / "decode_stats.json") or {}).get("skips", {}).values())
    texts = {r["id"]: r["text"] for r in records}
    return texts if set(texts) <= ids and len(texts) + skipped == len(ids) else None


def oracle_turns(sessions: Iterable[Any]) -> dict[str, list[Turn]]:
    """The reference turns of each session (its supervisions), as a perfect diarizer would give them."""
    turns: dict[str, list[Turn]] = {}
    for s in reference_segments(sessions):
        turns.setdefault(s["session_id"], []).append(Turn(s["start_time"], s["end_time"], s["speaker"]))
    return turns


def transcribe_sessions(model_dir: str | Path, sessions_path: str | Path, rttm: str | Path | None,
                        out_dir: str | Path,
                        config: Any = None, *, adapter: str | Path | None = None,
                        max_seconds: float = MAX_SECONDS) -> list[dict[str, Any]]:
    """Decode the speaker turns ``rttm`` (from ``ilt diarize``; ``None``: the
    sessions' own reference turns, oracle segments) of the sessions with the model; write
    ``segments.jsonl.gz`` (the cuts decoded), ``decode/`` (``ilt decode``'s
    outputs), ``hyp.seglst.json`` and ``hyp.stm`` under ``out_dir``. A finished
    decode is reused only when its fingerprint (:func:`decode_fingerprint`:
    model weights, adapter, decoding config, segments) is this run's.
    Returns the hypothesis segments."""
    from ilt.asr.decode import decode_files
    from ilt.data.manifests import save_manifest

    out_dir = Path(out_dir)
    sessions = load_sessions(sessions_path)
    turns = oracle_turns(sessions) if rttm is None else read_rttm(rttm)
    where = str(rttm or sessions_path)
    check_recordings(turns, (cut.id for cut in sessions), where)
    if not any(turns.values()):
        raise IltInputError(f"{where}: no speaker turn for any session")
    missing = [cut.id for cut in sessions if not turns.get(cut.id)]
    if missing:
        log.warning("transcribe-sessions: %d session(s) have no turn in %s (e.g. %s): empty hypotheses",
                    len(missing), where, ", ".join(missing[:3]))
    segments = speaker_segments(sessions, turns, max_seconds, where)
    state = process_state()  # under accelerate launch: the main process writes, every process decodes its shard
    if state.is_main_process:
        save_manifest(segments, out_dir / "segments.jsonl.gz")
    state.wait_for_everyone()
    fingerprint = decode_fingerprint(model_dir, adapter, config, out_dir / "segments.jsonl.gz")
    texts = None
    if fingerprint is not None and read_json(out_dir / DECODE_FINGERPRINT) == fingerprint:
        texts = _decoded(out_dir / "decode", {cut.id for cut in segments})
    state.wait_for_everyone()  # every process has chosen (reuse or decode) before the fingerprint goes
    if texts is None:
        if state.is_main_process:
            (out_dir / DECODE_FINGERPRINT).unlink(missing_ok=True)
        records = decode_files(model_dir, out_dir / "segments.jsonl.gz", out_dir / "decode", config, adapter=adapter)
        texts = {r["id"]: r["text"] for r in records}
        if fingerprint is not None and state.is_main_process:
            write_json_atomic(out_dir / DECODE_FINGERPRINT, fingerprint)
    else:
        log.info("transcribe-sessions: reusing the decode in %s (same model, adapter, config and segments)",
                 out_dir / "decode")
    hyps = hypothesis_segments(segments, texts)
    if state.is_main_process:
        write_seglst(hyps, out_dir / "hyp.seglst.json")
        write_stm(hyps, out_dir / "hyp.stm")
    state.wait_for_everyone()
    log.info("transcribe-sessions: %d segment(s) of %d session(s) -> %s", len(hyps), len(sessions),
             out_dir / "hyp.seglst.json")
    return hyps


# --------------------------------------------------------------------------- score


def load_reference(path: str | Path) -> list[dict[str, Any]]:
    """Reference segments with ``language``: from a session manifest
    (``*.jsonl.gz`` / ``*.jsonl``) or a SegLST JSON whose segments carry ``language``."""
    path = Path(path)
    if path.name.endswith((".jsonl.gz", ".jsonl")):
        return reference_segments(load_sessions(path), str(path))
    segments = read_segments(path)
    if any(not s.get("language") for s in segments):
        raise IltInputError(f"{path}: reference segments need a 'language' (scoring units depend on it); "
                            "give the session manifest (mlc_slm_sessions_<split>.jsonl.gz) instead")
    return segments


def _normalised(segments: Iterable[Mapping[str, Any]], languages: Mapping[str, str]) -> list[dict[str, Any]]:
    out = []
    for s in segments:
        language = languages[s["session_id"]]
        out.append({"session_id": s["session_id"], "speaker": str(s["speaker"]),
                    "start_time": float(s["start_time"]), "end_time": float(s["end_time"]),
                    "words": " ".join(tokens_for_scoring(s["words"], language))})
    return out


def _match(ref: list[dict[str, Any]], hyp: list[dict[str, Any]], hyp_path: Path,
           skips: Skips) -> list[dict[str, Any]]:
    """Hypothesis segments of reference sessions; a reference session without any
    gets one empty segment (all deletions, as meeteval asks)."""
    ref_ids = {s["session_id"] for s in ref}
    hyp_ids = {s["session_id"] for s in hyp}
    if hyp and not hyp_ids & ref_ids:
        raise IltInputError(f"{hyp_path}: none of its {len(hyp_ids)} session(s) is a reference session "
                            f"(e.g. {sorted(hyp_ids)[0]!r}; references e.g. {sorted(ref_ids)[0]!r})")
    for session in sorted(hyp_ids - ref_ids):
        skips.skip("hypothesis session without reference", session)
    kept = [s for s in hyp if s["session_id"] in ref_ids]
    for session in sorted(ref_ids - hyp_ids):
        skips.skip("reference session without hypothesis", session, "scored as all deletions")
        kept.append({"session_id": session, "speaker": "none", "start_time": 0.0, "end_time": 0.0, "words": ""})
    return kept


def _der_components(ref: Sequence[Mapping[str, Any]], hyp: Sequence[Mapping[str, Any]],
                    collar: float) -> dict[str, dict[str, float]] | None:
    """pyannote.metrics DER components per session (``None`` when it is not installed)."""
    try:
        from pyannote.core import Annotation, Segment, Timeline
        from pyannote.metrics.diarization import DiarizationErrorRate
    except ImportError as exc:
        log.warning("score --sessions: no DER: pyannote.metrics is not installed (%s): pip install 'ilt[track2]'",
                    exc)
        return None

    def annotations(segments: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = defaultdict(Annotation)
        for n, s in enumerate(segments):
            if float(s["end_time"]) > float(s["start_time"]):
                out[s["session_id"]][Segment(float(s["start_time"]), float(s["end_time"])), n] = str(s["speaker"])
        return out

    refs, hyps = annotations(ref), annotations(hyp)
    metric = DiarizationErrorRate(collar=collar, skip_overlap=False)
    result = {}
    for session in sorted({s["session_id"] for s in ref}):
        r, h = refs.get(session, Annotation()), hyps.get(session, Annotation())
        extent = (r.get_timeline() | h.get_timeline()).extent() if (r or h) else Segment(0, 0)
        components = metric.compute_components(r, h, uem=Timeline([extent]))
        result[session] = {k: float(v) for k, v in components.items()}
    return result


def _row(group: str, unit: str, tcp: Any, cp: Any, sessions: int,
         der: Sequence[Mapping[str, float]] | None) -> dict[str, Any]:
    row = {"group": group, "unit": unit, "sessions": sessions,
           "tcpwer": 100.0 * tcp.error_rate if tcp.length else None,
           "cpwer": 100.0 * cp.error_rate if cp.length else None,
           "errors": tcp.errors, "ins": tcp.insertions, "del": tcp.deletions, "sub": tcp.substitutions,
           "ref_units": tcp.length, "cp_errors": cp.errors, "der": None}
    if der:
        total = sum(c["total"] for c in der)
        wrong = sum(c["confusion"] + c["missed detection"] + c["false alarm"] for c in der)
        row["der"] = 100.0 * wrong / total if total else None
    return row


def _markdown(rows: Sequence[Mapping[str, Any]], collar: float) -> str:
    head = ["language", "unit", f"tcpWER % (collar {collar:g} s)", "cpWER %", "DER %", "ins", "del", "sub",
            "ref units", "sessions"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * 8) + "|"]
    for r in rows:
        cells = [r["group"], r["unit"]] + ["n/a" if r[k] is None else f"{r[k]:.2f}" for k in ("tcpwer", "cpwer", "der")]
        cells += [r["ins"], r["del"], r["sub"], r["ref_units"], r["sessions"]]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def score_sessions(ref_path: str | Path, hyp_path: str | Path, out_dir: str | Path, *, collar: float = COLLAR,
                   der_collar: float = 0.0) -> dict[str, Any]:
    """Score hypothesis segments (SegLST JSON or STM) against references (a
    session manifest, or SegLST with ``language``): tcpWER, cpWER and DER per
    language and pooled (``Overall``: all errors / all reference units).

    Writes ``ref_norm.seglst.json`` and ``hyp_norm.seglst.json`` (normalised
    scoring units, exactly what meeteval scores), ``per_session.json``,
    ``scores.json`` and ``scores.md`` under ``out_dir``.
    """
    import meeteval
    from meeteval.wer import combine_error_rates

    out_dir, hyp_path = Path(out_dir), Path(hyp_path)
    ref = load_reference(ref_path)
    skips = Skips("score --sessions")
    hyp = _match(ref, read_segments(hyp_path), hyp_path, skips)
    languages = {s["session_id"]: s["language"] for s in ref}
    ref_file, hyp_file = out_dir / "ref_norm.seglst.json", out_dir / "hyp_norm.seglst.json"
    write_seglst(_normalised(ref, languages), ref_file)
    write_seglst(_normalised(hyp, languages), hyp_file)
    # meeteval reads times as Decimal and cannot subtract a float collar: give an int or a Decimal
    exact = int(collar) if float(collar).is_integer() else Decimal(str(collar))
    tcp = meeteval.wer.tcpwer(str(ref_file), str(hyp_file), collar=exact)
    cp = meeteval.wer.cpwer(str(ref_file), str(hyp_file))
    der = _der_components(ref, hyp, der_collar)
    groups: dict[str, list[str]] = defaultdict(list)
    for session in sorted(languages):
        groups[languages[session]].append(session)

    def row(group: str, ids: Sequence[str], unit: str) -> dict[str, Any]:
        return _row(group, unit, combine_error_rates(*(tcp[i] for i in ids)),
                    combine_error_rates(*(cp[i] for i in ids)), len(ids), der and [der[i] for i in ids])

    rows = [row(lang, ids, unit_of(lang)) for lang, ids in sorted(groups.items())]
    units = {r["unit"] for r in rows}
    rows.append(row("Overall", sorted(languages), units.pop() if len(units) == 1 else "mixed"))
    per_session = {i: {"language": languages[i], "tcpwer": tcp[i].error_rate, "cpwer": cp[i].error_rate,
                       "errors": tcp[i].errors, "ref_units": tcp[i].length,
                       "assignment": [list(map(str, a)) for a in (cp[i].assignment or [])],
                       "der": der[i] if der else None} for i in sorted(languages)}
    result = {"collar": collar, "der_collar": der_collar, "ref": str(ref_path), "hyp": str(hyp_path),
              "normalisation": "MLC-SLM challenge: lowercase, punctuation deleted; ja/ko/th scored by character",
              "rows": rows, "skipped": skips.report(), "der": "pyannote.metrics" if der else None}
    write_json_atomic(out_dir / "per_session.json", per_session)
    write_json_atomic(out_dir / "scores.json", result)
    write_text_atomic(out_dir / "scores.md", _markdown(rows, collar))
    overall = rows[-1]
    log.info("score --sessions: %d session(s): tcpWER %.2f%%, cpWER %.2f%% -> %s", overall["sessions"],
             overall["tcpwer"] or 0.0, overall["cpwer"] or 0.0, out_dir)
    return result


def has_session_references(path: str | Path) -> bool:
    """Whether a session manifest has reference text to score (an eval set has none)."""
    return any(s["words"] for s in load_reference(path))
