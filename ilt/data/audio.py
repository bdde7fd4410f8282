"""Audio loading and the bad-audio checks, shared by decoding, training and corpus preparation.

:func:`load_checked` turns a Lhotse cut into mono float32 samples at the
model's rate (resampled by Lhotse), or an :class:`AudioProblem` when the audio
is unreadable, empty, non-finite and, where the caller asks, silent or longer
than the model's window. :func:`open_recording` does the header-level checks
of corpus preparation (unreadable, empty) without reading the samples.

Every caller counts a problem as a logged skip: ``problem.reason`` is the
counted category, ``str(problem)`` the one-line ``"reason: detail"`` form.
Decoding does not reject silent audio and splits long audio into chunks;
training rejects both.

Audio sources are data, not code: only ``file`` and ``memory`` sources are
loaded. A Lhotse source of type ``command`` runs a shell command when loaded
and ``url`` fetches from the network, so any other type is refused
(:func:`check_sources`, an :class:`~ilt.errors.IltInputError` naming the cut
and the type) by every manifest reader and before every load, unless the
environment sets ``ILT_ALLOW_AUDIO_COMMANDS=1`` (see ``docs/security.md``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from ilt.errors import IltInputError

if TYPE_CHECKING:
    from lhotse import Recording

__all__ = [
    "EMPTY",
    "NON_FINITE",
    "SILENT",
    "TOO_LONG",
    "UNREADABLE",
    "AudioProblem",
    "ALLOW_AUDIO_COMMANDS",
    "SAFE_SOURCE_TYPES",
    "audio_commands_allowed",
    "check_audio",
    "check_sources",
    "error_detail",
    "load_checked",
    "load_checked_head",
    "load_mono",
    "load_window",
    "load_windows_checked",
    "open_recording",
    "AudioWindow",
    "LONG_AUDIO_SECONDS",
    "iter_windows",
    "window_bounds",
]

#: Skip reasons (the counted categories).
UNREADABLE = "unreadable audio"
EMPTY = "empty audio"
NON_FINITE = "non-finite audio"
SILENT = "silent audio (all zeros)"
TOO_LONG = "audio too long"


#: Audio source types loaded by default: a file, or bytes held in the manifest.
SAFE_SOURCE_TYPES = frozenset({"file", "memory"})
#: The environment variable that lets other source types (``command``, ``url``) load.
ALLOW_AUDIO_COMMANDS = "ILT_ALLOW_AUDIO_COMMANDS"


def audio_commands_allowed() -> bool:
    """True when ``ILT_ALLOW_AUDIO_COMMANDS=1`` (read at call time)."""
    return os.environ.get(ALLOW_AUDIO_COMMANDS, "").strip().lower() in ("1", "true", "yes", "on")


def _recordings_of(item: Any) -> Iterator[Any]:
    """The Lhotse recordings a recording or cut (mono, multi, mixed, with
    custom recordings such as a target audio) would read audio from."""
    if getattr(item, "sources", None) is not None:
        yield item
        return
    recording = getattr(item, "recording", None)
    if recording is not None:
        yield recording
    for track in getattr(item, "tracks", None) or ():
        yield from _recordings_of(track.cut)
    custom = getattr(item, "custom", None)
    for value in (custom.values() if isinstance(custom, dict) else ()):
        if getattr(value, "sources", None) is not None:
            yield value


def check_sources(item: Any, where: str | Path | None = None) -> None:
    """Refuse a cut or recording with an audio source other than ``file`` or
    ``memory`` (a ``command`` runs a shell, a ``url`` reaches the network),
    unless ``ILT_ALLOW_AUDIO_COMMANDS=1``.

    :param where: the manifest it came from, named first in the message.
    :raises IltInputError: ``"WHERE: cut 'ID': audio source of type 'command'
        is refused ..."``, one line naming the opt-in.
    """
    if audio_commands_allowed():
        return
    for recording in _recordings_of(item):
        for source in recording.sources:
            if source.type not in SAFE_SOURCE_TYPES:
                kind = "recording" if item is recording else "cut"
                prefix = f"{where}: " if where is not None else ""
                raise IltInputError(
                    f"{prefix}{kind} {item.id!r}: audio source of type {source.type!r} is refused (only 'file' "
                    f"and 'memory' are loaded: a 'command' runs a shell, a 'url' reaches the network); set "
                    f"{ALLOW_AUDIO_COMMANDS}=1 to load it if you trust whoever wrote the manifest")


@dataclass(frozen=True)
class AudioProblem:
    """Why a cut's or a file's audio is unusable: a counted ``reason`` and an optional ``detail``."""

    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


def error_detail(exc: BaseException) -> str:
    """``"LibsndfileError: <first line of the message>"``, at most 200 characters."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}"[:200] if first else type(exc).__name__


def load_mono(cut: Any, sampling_rate: int) -> np.ndarray:
    """A cut's samples as a 1-D float32 array at ``sampling_rate`` (channels averaged).

    Raises whatever Lhotse's loader raises for unreadable audio; see
    :func:`load_checked`; a refused source type is an :class:`IltInputError`
    (:func:`check_sources`).
    """
    check_sources(cut)
    if cut.sampling_rate != sampling_rate:
        cut = cut.resample(sampling_rate)
    audio = np.asarray(cut.load_audio(), dtype=np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=0)
    return audio.reshape(-1)


def check_audio(audio: np.ndarray, sampling_rate: int, *, reject_silent: bool = False,
                max_samples: int | None = None) -> AudioProblem | None:
    """The first problem of loaded ``audio``, or None when it is usable.

    Always checked: empty, non-finite samples. ``reject_silent``: all zeros is
    a problem. ``max_samples``: more samples than that (the model's window) is one.
    """
    if audio.size == 0:
        return AudioProblem(EMPTY)
    if not np.isfinite(audio).all():
        return AudioProblem(NON_FINITE)
    if reject_silent and not np.any(audio):
        return AudioProblem(SILENT)
    if max_samples is not None and audio.size > max_samples:
        return AudioProblem(TOO_LONG, f"{audio.size / sampling_rate:.2f} s, "
                                      f"the model window is {max_samples / sampling_rate:g} s")
    return None


def load_checked(cut: Any, sampling_rate: int, *, reject_silent: bool = False,
                 max_samples: int | None = None) -> np.ndarray | AudioProblem:
    """:func:`load_mono`, then :func:`check_audio`: the samples, or the problem to count as a skip.

    Any loader error (a missing, truncated or garbage file) is an
    :data:`UNREADABLE` problem with the error in its detail, never an exception.
    A cut whose duration is clearly over ``max_samples`` is not loaded at all
    (three hours of audio would take gigabytes only to be rejected). A
    refused source type (:func:`check_sources`) is raised, not counted.
    """
    check_sources(cut)
    if max_samples is not None and float(cut.duration) * sampling_rate > max_samples + sampling_rate / 10:
        return AudioProblem(TOO_LONG, f"{float(cut.duration):.2f} s, "
                                      f"the model window is {max_samples / sampling_rate:g} s")
    try:
        audio = load_mono(cut, sampling_rate)
    except Exception as exc:  # any decoder error is a counted skip, not a crash
        return AudioProblem(UNREADABLE, error_detail(exc))
    problem = check_audio(audio, sampling_rate, reject_silent=reject_silent, max_samples=max_samples)
    return audio if problem is None else problem


def open_recording(path: str | Path, recording_id: str) -> Recording | AudioProblem:
    """A Lhotse ``Recording`` of the audio file ``path``, or the :class:`AudioProblem` that makes it unusable.

    Reads the header only: an unreadable (corrupt, truncated, not audio) or
    empty file is a problem; the samples themselves are not checked.
    """
    import soundfile as sf
    from lhotse import Recording

    path = Path(path)
    try:
        sf.info(str(path))  # libsndfile's message is the clearest one
        recording = Recording.from_file(path.resolve(), recording_id=recording_id)
    except Exception as exc:  # corrupt, truncated or not audio at all
        return AudioProblem(UNREADABLE, error_detail(exc))
    if recording.num_samples == 0:
        return AudioProblem(EMPTY)
    return recording


# --------------------------------------------------------------------------- long audio, in windows

#: Audio longer than this is read window by window, never whole (decoding, the
#: diarizer, language ID); shorter audio is loaded at once as before. Ten
#: minutes of 16 kHz float32 is 38 MB.
LONG_AUDIO_SECONDS = 600.0


def window_bounds(duration: float, window_seconds: float) -> list[tuple[float, float]]:
    """``(offset, duration)`` of ``ceil(duration / window)`` equal windows covering ``duration`` seconds."""
    n = max(1, math.ceil(duration / window_seconds - 1e-9)) if window_seconds > 0 else 1
    step = duration / n
    return [(i * step, (duration - i * step) if i == n - 1 else step) for i in range(n)]


def load_window(cut: Any, sampling_rate: int, offset: float, duration: float) -> np.ndarray:
    """The samples of ``duration`` seconds of ``cut`` from ``offset`` (mono
    float32 at ``sampling_rate``); only that part of the file is read (Lhotse
    seeks in the file), and the source type is checked first (:func:`check_sources`)."""
    check_sources(cut)
    offset = max(0.0, min(float(offset), float(cut.duration)))
    duration = max(0.0, min(float(duration), float(cut.duration) - offset))
    part = cut.truncate(offset=offset, duration=duration, preserve_id=True)
    return load_mono(part, sampling_rate)


def iter_windows(cut: Any, sampling_rate: int, seconds: float) -> Iterator[np.ndarray]:
    """The samples of ``cut`` in equal windows of at most ``seconds`` (see
    :func:`window_bounds`), each read from the file when it is reached: the
    memory held is one window, whatever the recording's length."""
    for offset, duration in window_bounds(float(cut.duration), seconds):
        yield load_window(cut, sampling_rate, offset, duration)


class AudioWindow:
    """One window of a long cut, read from its file only when used:
    ``np.asarray(window)`` loads it (and drops it again once the caller does),
    ``shape``/``size``/``len`` are known without reading. A batch of chunks
    for the model then holds ``batch_size`` windows, not whole recordings."""

    def __init__(self, cut: Any, sampling_rate: int, offset: float, duration: float, samples: int) -> None:
        self.cut, self.sampling_rate, self.offset, self.duration = cut, sampling_rate, offset, duration
        self.shape = (int(samples),)
        self.size = int(samples)
        self.ndim = 1
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.size

    def load(self) -> np.ndarray:
        """The window's samples (exactly :attr:`size` of them)."""
        audio = load_window(self.cut, self.sampling_rate, self.offset, self.duration)
        if audio.size >= self.size:
            return audio[: self.size]
        return np.pad(audio, (0, self.size - audio.size))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        audio = self.load()
        return audio if dtype is None else audio.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"AudioWindow({self.cut.id!r}, {self.offset:.2f}+{self.duration:.2f} s)"


def load_windows_checked(cut: Any, sampling_rate: int,
                         window_seconds: float) -> tuple[list[AudioWindow], float] | AudioProblem:
    """A long cut as lazy :class:`AudioWindow` chunks and its duration in
    seconds, after one pass over the file window by window (so unreadable,
    empty and non-finite audio is found as :func:`load_checked` finds it,
    holding one window at a time); or the :class:`AudioProblem`."""
    check_sources(cut)
    windows, samples = [], 0
    try:
        for offset, duration in window_bounds(float(cut.duration), window_seconds):
            audio = load_window(cut, sampling_rate, offset, duration)
            problem = check_audio(audio, sampling_rate)
            if problem is not None and problem.reason != EMPTY:
                return problem
            windows.append(AudioWindow(cut, sampling_rate, offset, duration, audio.size))
            samples += audio.size
            del audio
    except IltInputError:
        raise
    except Exception as exc:  # any decoder error is a counted skip, not a crash
        return AudioProblem(UNREADABLE, error_detail(exc))
    if samples == 0:
        return AudioProblem(EMPTY)
    return [w for w in windows if w.size], samples / sampling_rate


def load_checked_head(cut: Any, sampling_rate: int, window_seconds: float) -> np.ndarray | AudioProblem:
    """:func:`load_checked` of what language identification looks at: the whole
    cut up to :data:`LONG_AUDIO_SECONDS`; of a longer cut only its first window
    (``window_bounds(duration, window_seconds)[0]``, the first chunk decoding
    would make), read alone from the file."""
    if float(cut.duration) <= LONG_AUDIO_SECONDS:
        return load_checked(cut, sampling_rate)
    check_sources(cut)
    _, duration = window_bounds(float(cut.duration), window_seconds)[0]
    return load_checked(cut.truncate(offset=0.0, duration=duration, preserve_id=True), sampling_rate)
