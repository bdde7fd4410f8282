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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from lhotse import Recording

__all__ = [
    "EMPTY",
    "NON_FINITE",
    "SILENT",
    "TOO_LONG",
    "UNREADABLE",
    "AudioProblem",
    "check_audio",
    "error_detail",
    "load_checked",
    "load_mono",
    "open_recording",
]

#: Skip reasons (the counted categories).
UNREADABLE = "unreadable audio"
EMPTY = "empty audio"
NON_FINITE = "non-finite audio"
SILENT = "silent audio (all zeros)"
TOO_LONG = "audio too long"


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

    Raises whatever Lhotse's loader raises for unreadable audio; see :func:`load_checked`.
    """
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
    (three hours of audio would take gigabytes only to be rejected).
    """
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
