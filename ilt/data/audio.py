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
    "load_mono",
    "open_recording",
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
