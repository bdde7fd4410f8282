"""Built-in diarizers (Track 2): ``rttm``, ``pyannote`` and ``offline``.

* ``rttm``: the turns of any external system, read from its RTTM files.
* ``pyannote``: a pyannote.audio pipeline loaded from a local directory
  (``config.yaml`` and the models it names); pyannote.audio is not a
  dependency of ilt, and a missing library or directory is a one-line error.
* ``offline``: runs anywhere, on the CPU: voice activity (webrtcvad, or frame
  energy), resemblyzer speaker embeddings of sliding windows over the speech,
  and agglomerative clustering (scikit-learn) into ``num_speakers`` speakers
  or, without it, up to a cosine ``threshold``.

All three return :class:`ilt.components.Turn` lists (see
:class:`ilt.components.Diarizer`). docs/track2.md describes their options.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np

from ilt import hookimpl
from ilt.components import Turn
from ilt.config import ConfigError
from ilt.errors import IltInputError

log = logging.getLogger("ilt.diarize")

#: Sampling rate every built-in diarizer works at.
SAMPLING_RATE = 16000


def _session_audio(session: Any) -> np.ndarray:
    """The session's mono audio at 16 kHz; unreadable or empty audio is an error naming it."""
    from ilt.data.audio import AudioProblem, load_checked

    audio = load_checked(session, SAMPLING_RATE)
    if isinstance(audio, AudioProblem):
        raise IltInputError(f"session {session.id!r}: {audio.reason}" + (f" ({audio.detail})" if audio.detail else ""))
    return np.asarray(audio, dtype=np.float32).reshape(-1)


def _is_long(session: Any) -> bool:
    from ilt.data.audio import LONG_AUDIO_SECONDS

    return float(session.duration) > LONG_AUDIO_SECONDS


def _session_blocks(session: Any, margin: float = 0.0) -> Iterator[tuple[float, np.ndarray]]:
    """A long session's audio as ``(offset, samples)`` blocks of
    :data:`ilt.data.audio.LONG_AUDIO_SECONDS` (plus ``margin`` seconds of the
    next block), read one at a time: memory holds one block, whatever the
    session's length. Unreadable or non-finite audio is an error naming it."""
    from ilt.data.audio import (
        LONG_AUDIO_SECONDS,
        check_audio,
        error_detail,
        load_window,
    )

    duration, offset = float(session.duration), 0.0
    while offset < duration:
        try:
            audio = load_window(session, SAMPLING_RATE, offset, LONG_AUDIO_SECONDS + margin)
        except IltInputError:
            raise
        except Exception as exc:  # unreadable: name the session, as _session_audio does
            raise IltInputError(f"session {session.id!r}: unreadable audio ({error_detail(exc)})") from None
        problem = check_audio(audio, SAMPLING_RATE)
        if problem is not None:
            raise IltInputError(f"session {session.id!r}: {problem} at {offset:.0f} s")
        yield offset, audio
        offset += LONG_AUDIO_SECONDS


def _whole_file(session: Any) -> str | None:
    """The audio file of a session that is one whole single-file recording (pyannote reads it in windows itself)."""
    recording = getattr(session, "recording", None)
    sources = getattr(recording, "sources", None) or []
    if (len(sources) != 1 or sources[0].type != "file" or float(session.start) != 0.0
            or abs(float(session.duration) - float(recording.duration)) > 1e-3):
        return None
    return str(sources[0].source)


# --------------------------------------------------------------------------- rttm


class RttmDiarizer:
    """Turns made elsewhere: ``files`` are RTTM files (one path or a list) whose
    recording IDs are the session IDs. Recordings that are not sessions are an
    error; a session without any line in them has no turns (nobody spoke)."""

    def __init__(self, *, files: str | list[str] = "") -> None:
        from ilt.track2.formats import read_rttm

        paths = [files] if isinstance(files, str) else list(files)
        paths = [p for p in paths if p]
        if not paths:
            raise ConfigError("diarizer rttm: give its RTTM files: --diarizer '{name: rttm, files: [PATH.rttm]}'")
        self.files = [Path(p) for p in paths]
        self.turns = read_rttm(self.files)

    def _where(self) -> str:
        return ", ".join(map(str, self.files))

    def check_sessions(self, recording_ids: set[str]) -> None:
        unknown = sorted(set(self.turns) - set(recording_ids))
        if unknown:
            examples = ", ".join(repr(r) for r in unknown[:3])
            known = ", ".join(repr(r) for r in sorted(recording_ids)[:2])
            raise IltInputError(
                f"{self._where()}: {len(unknown)} recording(s) of the RTTM are not sessions (e.g. {examples}; "
                f"sessions e.g. {known}): give the RTTM of these sessions, or the sessions of this RTTM")

    def diarize(self, session: Any) -> list[Turn]:
        if session.id not in self.turns:
            log.warning("diarize rttm: session %r has no turn in %s: nobody speaks", session.id, self._where())
        return list(self.turns.get(session.id, []))


# --------------------------------------------------------------------------- pyannote


def _check_offline_models(config: Path) -> None:
    """When ``HF_HUB_OFFLINE``/``ILT_OFFLINE`` forbids the network, refuse a
    pipeline ``config.yaml`` that names a hub model (``ORG/NAME``) which is no
    local path: pyannote.audio would fetch it."""
    import yaml

    from ilt.models.hub import looks_like_hub_id, offline, offline_reason

    if not offline():
        return
    try:
        tree = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise IltInputError(f"{config}: cannot read the pyannote pipeline config: {exc}") from None
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str) and looks_like_hub_id(node) and not any(
                p.exists() for p in (Path(node), config.parent / node)):
            raise IltInputError(f"{config}: names the hub model {node!r}, and {offline_reason()} (no network); "
                                f"download it into a local directory and give its path in {config.name}")


class PyannoteDiarizer:
    """A pyannote.audio speaker-diarization pipeline from a local directory
    (``pipeline_dir/config.yaml``, the models it names available offline)."""

    def __init__(self, *, pipeline_dir: str = "", num_speakers: int | None = None,
                 min_speakers: int | None = None, max_speakers: int | None = None, device: str = "cpu") -> None:
        if not pipeline_dir:
            raise ConfigError("diarizer pyannote: give its local pipeline directory: "
                              "--diarizer '{name: pyannote, pipeline_dir: DIR}' (DIR holds config.yaml)")
        config = Path(pipeline_dir) / "config.yaml"
        if not config.is_file():
            raise IltInputError(f"{pipeline_dir}: no pyannote pipeline here (expected {config}); download the "
                                "pipeline and the models its config.yaml names into this directory first")
        _check_offline_models(config)
        try:
            from pyannote.audio import Pipeline
        except ImportError as exc:
            raise IltInputError(f"diarizer pyannote: pyannote.audio is not installed ({exc}); pip install "
                                "pyannote.audio, in an environment where its torch requirement fits") from None
        pipeline = Pipeline.from_pretrained(str(config))
        if pipeline is None:  # pyannote.audio 3 returns None instead of raising
            raise IltInputError(f"{config}: pyannote.audio could not load this pipeline (see its log above)")
        if device and hasattr(pipeline, "to"):
            import torch

            pipeline.to(torch.device(device))
        self.pipeline = pipeline
        self.options = {k: v for k, v in (("num_speakers", num_speakers), ("min_speakers", min_speakers),
                                          ("max_speakers", max_speakers)) if v is not None}

    def diarize(self, session: Any) -> list[Turn]:
        import torch

        from ilt.data.audio import check_sources

        path = _whole_file(session) if _is_long(session) else None
        if path is not None:  # a long recording: pyannote crops the windows it needs from the file
            check_sources(session)
            output = self.pipeline({"uri": session.id, "audio": path}, **self.options)
        else:
            audio = _session_audio(session)
            output = self.pipeline({"waveform": torch.from_numpy(audio)[None], "sample_rate": SAMPLING_RATE},
                                   **self.options)
        annotation = getattr(output, "speaker_diarization", output)  # pyannote.audio 4 wraps it
        turns = [Turn(segment.start, segment.end, str(label))
                 for segment, _, label in annotation.itertracks(yield_label=True) if segment.end > segment.start]
        return sorted(turns, key=lambda t: (t.start, t.end, t.speaker))


# --------------------------------------------------------------------------- offline


def _regions(speech: np.ndarray, frame: float, min_speech: float, min_silence: float) -> list[tuple[float, float]]:
    """Speech regions ``(start, end)`` in seconds from per-frame decisions: blips
    of fewer than 3 frames are dropped, gaps shorter than ``min_silence``
    bridged, and regions shorter than ``min_speech`` dropped."""
    padded = np.concatenate([[False], speech.astype(bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    regions: list[list[float]] = []
    for start, end in zip(edges[::2] * frame, edges[1::2] * frame):
        if end - start < 2.5 * frame:
            continue
        if regions and start - regions[-1][1] < min_silence:
            regions[-1][1] = end
        else:
            regions.append([start, end])
    return [(round(s, 3), round(e, 3)) for s, e in regions if e - s >= min_speech]


def energy_vad(audio: np.ndarray, sampling_rate: int, *, threshold_db: float = -30.0,
               frame: float = 0.03) -> np.ndarray:
    """Per-frame speech decisions: frame RMS within ``threshold_db`` of the loud
    frames (95th percentile) and above -60 dBFS."""
    n = int(frame * sampling_rate)
    frames = audio[: len(audio) // n * n].reshape(-1, n) if len(audio) >= n else np.zeros((0, n))
    db = 20 * np.log10(np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)) + 1e-10)
    if db.size == 0:
        return np.zeros(0, dtype=bool)
    return (db > np.percentile(db, 95) + threshold_db) & (db > -60.0)


def webrtc_vad(audio: np.ndarray, sampling_rate: int, *, aggressiveness: int = 2, frame: float = 0.03) -> np.ndarray:
    """Per-frame speech decisions of webrtcvad (30 ms frames of 16-bit PCM)."""
    try:
        import webrtcvad
    except ImportError as exc:
        raise IltInputError(f"diarizer offline: vad webrtc needs webrtcvad ({exc}): pip install 'ilt[track2]', "
                            "or use vad: energy") from None
    vad = webrtcvad.Vad(aggressiveness)
    n = int(frame * sampling_rate)
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    return np.array([vad.is_speech(pcm[i:i + n].tobytes(), sampling_rate)
                     for i in range(0, len(pcm) - n + 1, n)], dtype=bool)


@functools.lru_cache(maxsize=2)
def _voice_encoder(device: str) -> Any:
    try:
        from resemblyzer import VoiceEncoder
    except ImportError as exc:
        raise IltInputError(f"diarizer offline: resemblyzer is not installed ({exc}): "
                            "pip install 'ilt[track2]'") from None
    return VoiceEncoder(device=device, verbose=False)


def window_embeddings(audio: np.ndarray, windows: Sequence[tuple[float, float]], device: str = "cpu") -> np.ndarray:
    """One L2-normalised resemblyzer embedding (256 values) per ``(start, end)``
    window, in one batch; windows are zero-padded to resemblyzer's 1.6 s."""
    import torch
    from resemblyzer import hparams
    from resemblyzer.audio import normalize_volume, wav_to_mel_spectrogram

    encoder = _voice_encoder(device)
    audio = normalize_volume(audio, -30, increase_only=True)
    frames = hparams.partials_n_frames
    size = frames * hparams.mel_window_step * SAMPLING_RATE // 1000
    mels = []
    for start, end in windows:
        wav = audio[int(start * SAMPLING_RATE): int(end * SAMPLING_RATE)][:size]
        wav = np.pad(wav, (0, size - len(wav)))
        mels.append(wav_to_mel_spectrogram(wav)[:frames])
    with torch.no_grad():
        batch = torch.from_numpy(np.stack(mels)).to(encoder.device)
        return encoder(batch).cpu().numpy()


def cluster(embeddings: np.ndarray, num_speakers: int | None, threshold: float) -> np.ndarray:
    """Speaker index per embedding: agglomerative clustering (cosine, average
    linkage) into ``num_speakers`` clusters, or merging up to distance ``threshold``."""
    if len(embeddings) < 2:
        return np.zeros(len(embeddings), dtype=int)
    from sklearn.cluster import AgglomerativeClustering

    if num_speakers is not None:
        model = AgglomerativeClustering(n_clusters=min(num_speakers, len(embeddings)), metric="cosine",
                                        linkage="average")
    else:
        model = AgglomerativeClustering(n_clusters=None, distance_threshold=threshold, metric="cosine",
                                        linkage="average")
    return model.fit_predict(embeddings)


def _windows(regions: Sequence[tuple[float, float]], window: float, hop: float) -> list[tuple[int, float, float]]:
    """``(region index, start, end)`` windows covering each region."""
    out = []
    for n, (start, end) in enumerate(regions):
        t = start
        while True:
            out.append((n, t, min(t + window, end)))
            if t + window >= end:
                break
            t += hop
    return out


def turns_from_windows(regions: Sequence[tuple[float, float]], windows: Sequence[tuple[int, float, float]],
                       labels: Sequence[int]) -> list[Turn]:
    """Cut each region where the speaker of consecutive windows changes (at the
    midpoint between their centres); speakers are named ``spk<n>`` by first appearance."""
    names: dict[int, str] = {}
    turns: list[Turn] = []
    for n, (start, end) in enumerate(regions):
        own = [(w, int(label)) for w, label in zip(windows, labels) if w[0] == n]
        cut_start = start
        for (prev, label), (nxt, next_label) in zip(own, own[1:] + [(None, None)]):
            if nxt is not None and next_label == label:
                continue
            cut_end = end if nxt is None else round(((prev[1] + prev[2]) / 2 + (nxt[1] + nxt[2]) / 2) / 2, 3)
            if cut_end > cut_start:
                turns.append(Turn(cut_start, cut_end, names.setdefault(label, f"spk{len(names)}")))
            cut_start = cut_end
    return turns


class OfflineDiarizer:
    """Voice activity, resemblyzer window embeddings and agglomerative clustering.

    :param num_speakers: speakers per session (2 in MLC-SLM conversations);
        ``None``: as many as the clustering ``threshold`` gives.
    :param threshold: cosine distance below which clusters merge (without ``num_speakers``).
    :param vad: ``webrtc`` (webrtcvad) or ``energy`` (frame RMS).
    :param vad_aggressiveness: webrtcvad's 0-3.
    :param energy_db: the energy VAD's threshold, dB below the loud frames.
    :param min_speech: shortest speech region kept (s).
    :param min_silence: shortest pause that separates regions (s).
    :param window: embedding window (s, at most resemblyzer's 1.6).
    :param hop: step between windows (s).
    :param device: torch device of the speaker encoder.
    """

    def __init__(self, *, num_speakers: int | None = None, threshold: float = 0.25,
                 vad: Literal["webrtc", "energy"] = "webrtc", vad_aggressiveness: int = 2, energy_db: float = -30.0,
                 min_speech: float = 0.3, min_silence: float = 0.2, window: float = 1.5, hop: float = 0.5,
                 device: str = "cpu") -> None:
        if num_speakers is not None and num_speakers < 1:
            raise ConfigError(f"diarizer offline: num_speakers must be >= 1, got {num_speakers}")
        if not 0 < hop <= window <= 1.6:
            raise ConfigError(f"diarizer offline: need 0 < hop <= window <= 1.6 s, got hop {hop}, window {window}")
        if vad not in ("webrtc", "energy"):
            raise ConfigError(f"diarizer offline: vad must be webrtc or energy, got {vad!r}")
        self.num_speakers, self.threshold = num_speakers, threshold
        self.vad, self.vad_aggressiveness, self.energy_db = vad, vad_aggressiveness, energy_db
        self.min_speech, self.min_silence = min_speech, min_silence
        self.window, self.hop, self.device = window, hop, device
        _voice_encoder(device)  # fail now, not after the first session, when resemblyzer is missing

    def speech_regions(self, audio: np.ndarray) -> list[tuple[float, float]]:
        return _regions(self.speech_frames(audio), 0.03, self.min_speech, self.min_silence)

    def diarize(self, session: Any) -> list[Turn]:
        if _is_long(session):
            return self.diarize_long(session)
        audio = _session_audio(session)
        regions = self.speech_regions(audio)
        if not regions:
            return []
        windows = _windows(regions, self.window, self.hop)
        embeddings = window_embeddings(audio, [(s, e) for _, s, e in windows], self.device)
        labels = cluster(embeddings, self.num_speakers, self.threshold)
        return turns_from_windows(regions, windows, labels)

    def diarize_long(self, session: Any) -> list[Turn]:
        """:meth:`diarize` of a session over :data:`ilt.data.audio.LONG_AUDIO_SECONDS`,
        read block by block (voice activity per block, then each block's
        embedding windows from that block again): memory holds one block of
        audio and one block's windows, not the recording. The energy VAD's
        threshold and resemblyzer's volume normalisation are per block."""
        from ilt.data.audio import LONG_AUDIO_SECONDS

        frame = 0.03
        decisions, per_block = [], int(round(LONG_AUDIO_SECONDS / frame))
        for offset, audio in _session_blocks(session):
            speech = self.speech_frames(audio)
            if offset + LONG_AUDIO_SECONDS < float(session.duration):  # a full block: exactly its frames
                speech = np.pad(speech, (0, max(0, per_block - len(speech))))[:per_block]
            decisions.append(speech)
        regions = _regions(np.concatenate(decisions) if decisions else np.zeros(0, bool), frame,
                           self.min_speech, self.min_silence)
        if not regions:
            return []
        windows = _windows(regions, self.window, self.hop)
        embeddings = np.zeros((len(windows), 256), dtype=np.float32)
        for offset, audio in _session_blocks(session, margin=self.window):
            own = [i for i, (_, start, _end) in enumerate(windows) if offset <= start < offset + LONG_AUDIO_SECONDS]
            if own:
                embeddings[own] = window_embeddings(audio, [(windows[i][1] - offset, windows[i][2] - offset)
                                                            for i in own], self.device)
        labels = cluster(embeddings, self.num_speakers, self.threshold)
        return turns_from_windows(regions, windows, labels)

    def speech_frames(self, audio: np.ndarray) -> np.ndarray:
        """Per-frame (30 ms) speech decisions of ``audio`` (the configured VAD)."""
        if self.vad == "webrtc":
            return webrtc_vad(audio, SAMPLING_RATE, aggressiveness=self.vad_aggressiveness)
        return energy_vad(audio, SAMPLING_RATE, threshold_db=self.energy_db)


@hookimpl
def ilt_register_diarizers(register):
    register("rttm", RttmDiarizer)
    register("pyannote", PyannoteDiarizer)
    register("offline", OfflineDiarizer)
