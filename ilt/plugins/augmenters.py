"""Built-in TTS augmenters (ILT paper, section 3.2.2): new speech for rare-token texts,
in the voice of a prompt recording.

``espeak``
    The espeak-ng engine (``apt-get install espeak-ng``): real, if robotic,
    speech, offline. **It ignores the prompt audio and transcript**: espeak
    cannot clone a voice. Instead its voices and variants act as speakers: the
    prompt's speaker label (else the prompt cut's ID) is mapped, by a hash, to
    one espeak voice of the target's language, one variant (``m1``-``m7``,
    ``f1``-``f5`` by default), a speed and a pitch, so every prompt speaker
    always gets the same synthetic voice and different speakers mostly get
    different ones. Options: ``voices`` (espeak voice names to choose from,
    those of the target's language; default every non-MBROLA voice of the
    language), ``accent_voices`` (the voice for prompts whose supervision's
    ``custom["accent"]`` is a key, e.g. ``{American: en-us, Scottish:
    en-gb-scotland}``; otherwise the new cut keeps the prompt's accent label
    although its voice may be any of the language's), ``variants``, ``seed``
    (changes the mapping), ``sampling_rate``.
``f5tts``
    F5-TTS (``f5_tts.api.F5TTS``), zero-shot voice cloning from the prompt's
    audio and transcript. It needs local files, given as options:
    ``ckpt_file`` (e.g. ``F5TTS_v1_Base/model_1250000.safetensors`` of the hub
    repository ``SWivid/F5-TTS``), ``vocab_file`` (its ``vocab.txt``) and
    ``vocoder_dir`` (a local copy of ``charactr/vocos-mel-24khz``), and the
    ``f5-tts`` package (``pip install f5-tts``, see below). Without them it is
    a one-line error naming what is missing; it never downloads.
``sparktts``
    Spark-TTS (``cli/SparkTTS.py`` of the SparkAudio/Spark-TTS repository,
    ``SparkTTS(model_dir, device).inference(text, prompt_speech_path,
    prompt_text)``), which is not on PyPI: options ``repo_dir`` (a clone of
    the repository, first on ``sys.path`` only while its modules import,
    build and run) and ``model_dir`` (a local
    ``Spark-TTS-0.5B`` checkpoint).

Every augmenter writes 16 kHz mono 16-bit wav files (``sampling_rate``),
resampled with Lhotse's resampler (no torchaudio), each written atomically, and
returns one cut per target it produced, with the prompt's speaker, the target's
text and language, the prompt supervision's ``custom`` (the accent) and
``cut.custom``: ``prompt_id`` and ``tts`` (the engine and, for espeak, the
voice). A target it cannot produce (no voice for the language, a prompt it
cannot read, a failed synthesis) is left out and logged; the caller counts it.

Installing ``f5-tts`` beside this package's pinned CPU torch is not supported:
it pulls a torchaudio built for another torch (which fails to import, and
with it ``f5_tts.api``) and downgrades ``huggingface_hub`` and ``rich``. Use a
separate environment whose torch matches its torchaudio (``pip install ilt[tts]``
on a GPU machine with a matching torch/torchaudio pair).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ilt.components import PROMPT_ID, AugmentTarget
from ilt.config import ConfigError
from ilt.core.files import safe_name
from ilt.hookspecs import hookimpl

log = logging.getLogger("ilt.plugins.augmenters")

#: ``cut.custom`` key with the engine (and voice) that made a cut.
TTS_INFO = "tts"
#: espeak-ng's classic variants (male 1-7, female 1-5), the default speaker pool.
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")


# --------------------------------------------------------------------------- shared helpers


def resample(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Mono float32 ``audio`` at ``target`` Hz (Lhotse's sox-like resampler)."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 2:  # (samples, channels) as soundfile reads it
        audio = audio.mean(axis=1)
    if rate == target:
        return audio
    from lhotse.augmentation import Resample

    return Resample(rate, target)(audio[None, :])[0].astype(np.float32)


def write_wav(path: Path, audio: np.ndarray, rate: int) -> None:
    """16-bit mono wav, written to a temporary file and renamed (never half-written)."""
    import soundfile as sf

    from ilt.core.files import atomic_path

    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > 0.99:  # never clip: scale to just below full scale
        audio = audio * (0.99 / peak)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), audio, rate, subtype="PCM_16", format="WAV")


def prompt_supervision(cut: Any) -> Any:
    return cut.supervisions[0] if cut is not None and cut.supervisions else None


def target_language(target: AugmentTarget, prompt: Any) -> str | None:
    sup = prompt_supervision(prompt)
    return target.language or (sup.language if sup is not None else None)


def speaker_of(prompt: Any) -> str | None:
    sup = prompt_supervision(prompt)
    return (sup.speaker if sup is not None else None) or (prompt.id if prompt is not None else None)


def make_cut(target: AugmentTarget, path: Path, prompt: Any, language: str | None, info: dict[str, Any]) -> Any:
    """The cut of one produced target: its own recording, one supervision."""
    from lhotse import Recording, SupervisionSegment

    recording = Recording.from_file(path.resolve(), recording_id=target.id)
    sup = prompt_supervision(prompt)
    custom = dict(sup.custom or {}) if sup is not None and sup.custom else {}
    cut = recording.to_cut()
    cut.id = target.id
    cut.supervisions = [SupervisionSegment(
        id=target.id, recording_id=target.id, start=0.0, duration=recording.duration, text=target.text,
        language=language, speaker=speaker_of(prompt), custom=custom or None)]
    cut.custom = {TTS_INFO: info, **({PROMPT_ID: prompt.id} if prompt is not None else {})}
    return cut


def run_targets(name: str, prompts: Any, targets: Sequence[AugmentTarget], out_dir: Path,
                produce: Callable[[AugmentTarget, Any, Path], dict[str, Any]]) -> Any:
    """Call ``produce(target, prompt_cut, wav_path)`` per target (it writes the wav and
    returns the ``tts`` info); a target that raises is left out with one log line."""
    from lhotse import CutSet

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_id = {c.id: c for c in prompts} if prompts is not None else {}
    cuts = []
    for target in targets:
        prompt = by_id.get(target.prompt_id) if target.prompt_id is not None else None
        if target.prompt_id is not None and prompt is None:
            log.warning("%s: %s left out: prompt cut %r is not among the prompts", name, target.id, target.prompt_id)
            continue
        path = out_dir / f"{safe_name(target.id, 'target ID', name)}.wav"
        try:
            info = produce(target, prompt, path)
        except _LeftOut as exc:
            log.warning("%s: %s left out: %s", name, target.id, exc)
            continue
        except Exception as exc:  # one failed synthesis must not lose the others
            log.warning("%s: %s left out: synthesis failed: %s: %s", name, target.id, type(exc).__name__,
                        " ".join(str(exc).split())[:200])
            path.unlink(missing_ok=True)
            continue
        cuts.append(make_cut(target, path, prompt, target_language(target, prompt), {"augmenter": name, **info}))
    return CutSet.from_cuts(cuts)


class _LeftOut(Exception):
    """A target this augmenter cannot produce (counted by the caller, not fatal)."""


#: The longest prompt a voice-cloning engine is given (seconds): F5-TTS and
#: Spark-TTS clone from a few seconds of one speaker; a longer prompt cut is
#: left out without reading its audio (a recording of hours would otherwise be
#: loaded whole, and its transcript would not match a clipped prompt).
MAX_PROMPT_SECONDS = 30.0


def prompt_wav(prompt: Any, directory: Path, rate: int = 16000) -> Path:
    """The prompt cut's audio as a wav file (engines take a path), or
    :class:`_LeftOut` (unusable audio, or longer than :data:`MAX_PROMPT_SECONDS`:
    not read at all). ``directory`` is this run's own temporary directory, and
    the prompt ID names the file only after :func:`ilt.core.files.safe_name`."""
    from ilt.data.audio import AudioProblem, load_checked

    name = safe_name(prompt.id, "prompt ID")
    audio = load_checked(prompt, rate, reject_silent=True, max_samples=int(MAX_PROMPT_SECONDS * rate))
    if isinstance(audio, AudioProblem):
        raise _LeftOut(f"prompt {prompt.id}: {audio}")
    path = directory / f"{name}.prompt.wav"
    if not path.is_file():
        write_wav(path, audio, rate)
    return path


def prompt_text(prompt: Any) -> str:
    sup = prompt_supervision(prompt)
    text = (sup.text or "").strip() if sup is not None else ""
    if not text:
        raise _LeftOut(f"prompt {prompt.id} has no transcript (a voice-cloning prompt needs one)")
    return text


def target_seed(seed: int, target_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{target_id}".encode()).digest()[:4], "little")


# --------------------------------------------------------------------------- espeak


def espeak_voices(language: str) -> list[str]:
    """espeak-ng's voice names whose language is ``language`` or a variety of it
    (``en`` -> ``en-029, en-gb, ..., en-us``), MBROLA voices left out (they need extra data)."""
    from ilt.data.languages import base_language

    out = subprocess.run(["espeak-ng", f"--voices={base_language(language)}"], capture_output=True, text=True,
                         check=True).stdout
    voices = set()
    for line in out.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 5 and not fields[4].startswith("mb/") and base_language(fields[1]) == base_language(language):
            voices.add(fields[1])
    return sorted(voices)


class EspeakAugmenter:
    """TTS with espeak-ng; the prompt's speaker picks a voice, the prompt audio is not used."""

    def __init__(self, *, voices: list[str] | None = None, variants: list[str] | None = None,
                 accent_voices: dict[str, str] | None = None, sampling_rate: int = 16000, seed: int = 0) -> None:
        if shutil.which("espeak-ng") is None:
            raise ConfigError("augmenter espeak: espeak-ng is not on PATH; install it (apt-get install espeak-ng)")
        if sampling_rate <= 0:
            raise ConfigError(f"augmenter espeak: sampling_rate must be positive, got {sampling_rate}")
        self.voices = list(voices) if voices else None
        self.variants = list(variants) if variants else list(ESPEAK_VARIANTS)
        self.accent_voices = dict(accent_voices or {})
        self.sampling_rate = sampling_rate
        self.seed = seed
        self._by_language: dict[str, list[str]] = {}

    def voices_for(self, language: str) -> list[str]:
        if language not in self._by_language:
            found = espeak_voices(language)
            chosen = [v for v in (self.voices or []) if v in found]
            self._by_language[language] = chosen or found
        return self._by_language[language]

    def speaker_voice(self, speaker: str, language: str, accent: str | None = None) -> tuple[str, int, int]:
        """``("en-gb-scotland+f3", speed, pitch)``: the same speaker always gets the same voice
        (of the accent's voice in ``accent_voices``, if any)."""
        voices = [self.accent_voices[accent]] if accent in self.accent_voices else self.voices_for(language)
        if not voices:
            raise _LeftOut(f"espeak-ng has no voice for language {language!r}")
        h = hashlib.sha256(f"{self.seed}/{speaker}".encode("utf-8")).digest()
        voice = f"{voices[h[0] % len(voices)]}+{self.variants[h[1] % len(self.variants)]}"
        return voice, 150 + h[2] % 36, 35 + h[3] % 31

    def synthesize(self, text: str, voice: str, speed: int, pitch: int) -> np.ndarray:
        import soundfile as sf

        proc = subprocess.run(["espeak-ng", "-b", "1", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout"],
                              input=text.encode("utf-8"), capture_output=True)
        if proc.returncode != 0 or not proc.stdout:
            raise _LeftOut(f"espeak-ng failed ({voice}): {proc.stderr.decode(errors='replace').strip()[:200]}")
        audio, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
        audio = resample(audio, rate, self.sampling_rate)
        if not np.any(np.abs(audio) > 1e-3):
            raise _LeftOut(f"espeak-ng produced silence ({voice})")
        return audio

    def _produce(self, target: AugmentTarget, prompt: Any, path: Path) -> dict[str, Any]:
        language = target_language(target, prompt)
        if not language:
            raise _LeftOut("no language (neither the target nor its prompt has one)")
        sup = prompt_supervision(prompt)
        accent = (sup.custom or {}).get("accent") if sup is not None else None
        voice, speed, pitch = self.speaker_voice(speaker_of(prompt) or target.id, language, accent)
        write_wav(path, self.synthesize(target.text, voice, speed, pitch), self.sampling_rate)
        return {"voice": voice, "speed": speed, "pitch": pitch}

    def augment(self, prompts: Any, targets: Sequence[AugmentTarget], out_dir: Path) -> Any:
        return run_targets("espeak", prompts, targets, Path(out_dir), self._produce)


# --------------------------------------------------------------------------- voice cloning engines


class _Quiet:
    """A stand-in for the tqdm module F5-TTS reports batches to (``progress.tqdm(it)``): no inner bars."""

    @staticmethod
    def tqdm(iterable: Any, *args: Any, **kwargs: Any) -> Any:
        return iterable


def missing_paths(name: str, required: dict[str, tuple[str, str]], kinds: dict[str, str]) -> None:
    """A :class:`ConfigError` naming every option whose local path is unset or absent.

    :param required: option -> (value, what it should hold).
    :param kinds: option -> ``"file"`` or ``"dir"``.
    """
    problems = []
    for option, (value, what) in required.items():
        ok = bool(value) and (Path(value).is_file() if kinds[option] == "file" else Path(value).is_dir())
        if not ok:
            problems.append(f"{option} ({what}{', not found: ' + str(value) if value else ''})")
    if problems:
        raise ConfigError(f"augmenter {name} runs from local files only; missing: {'; '.join(problems)}. "
                          f"Give them as options, e.g. --augmenter '{{name: {name}, "
                          f"{list(required)[0]}: PATH, ...}}'")


@contextlib.contextmanager
def on_sys_path(directory: str) -> Iterator[None]:
    """``directory`` first on ``sys.path`` within the block only: a TTS
    repository's modules import as its own scripts expect, and ``sys.path``
    is as it was afterwards (no module of that folder shadows another later)."""
    before = list(sys.path)
    sys.path.insert(0, directory)
    try:
        yield
    finally:
        sys.path[:] = before


def import_engine(name: str, module: str, attribute: str, hint: str) -> Any:
    try:
        return getattr(importlib.import_module(module), attribute)
    except Exception as exc:  # not installed, or its own imports fail (torchaudio)
        raise ConfigError(f"augmenter {name}: cannot import {module}.{attribute} "
                          f"({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); {hint}") from None


class _VoiceCloning:
    """What the prompted engines share: the engine loads before any target (a
    model that cannot load is an error, not N left-out targets), and each
    prompt's audio is written to a temporary file for the engine to read.
    A subclass sets :attr:`name` and defines ``engine()`` and ``_produce()``."""

    name = ""

    def augment(self, prompts: Any, targets: Sequence[AugmentTarget], out_dir: Path) -> Any:
        self.engine()
        with tempfile.TemporaryDirectory(prefix=".prompts.", dir=_made(out_dir)) as tmp:
            return run_targets(self.name, prompts, targets, Path(out_dir),
                               lambda t, p, path: self._produce(t, p, path, Path(tmp)))


class F5TTSAugmenter(_VoiceCloning):
    """Voice cloning with F5-TTS from local checkpoint, vocabulary and vocoder files."""

    name = "f5tts"

    def __init__(self, *, ckpt_file: str = "", vocab_file: str = "", vocoder_dir: str = "",
                 model: str = "F5TTS_v1_Base", device: str = "cpu", nfe_step: int = 32, speed: float = 1.0,
                 sampling_rate: int = 16000, seed: int = 0) -> None:
        missing_paths("f5tts", {
            "ckpt_file": (ckpt_file, f"the {model} checkpoint, e.g. model_1250000.safetensors of SWivid/F5-TTS"),
            "vocab_file": (vocab_file, "its vocab.txt"),
            "vocoder_dir": (vocoder_dir, "a local copy of charactr/vocos-mel-24khz"),
        }, {"ckpt_file": "file", "vocab_file": "file", "vocoder_dir": "dir"})
        self.engine_cls = import_engine("f5tts", "f5_tts.api", "F5TTS",
                                        "pip install f5-tts in an environment whose torch matches its torchaudio")
        self.options = dict(model=model, ckpt_file=str(ckpt_file), vocab_file=str(vocab_file),
                            vocoder_local_path=str(vocoder_dir), device=device)
        self.nfe_step, self.speed, self.sampling_rate, self.seed = nfe_step, speed, sampling_rate, seed
        self._engine: Any = None

    def engine(self) -> Any:
        if self._engine is None:
            self._engine = self.engine_cls(**self.options)
        return self._engine

    def _produce(self, target: AugmentTarget, prompt: Any, path: Path, prompt_dir: Path) -> dict[str, Any]:
        if prompt is None:
            raise _LeftOut("f5tts needs a prompt cut (target.prompt_id)")
        ref_text, ref_file = prompt_text(prompt), prompt_wav(prompt, prompt_dir)
        wav, rate, _ = self.engine().infer(ref_file=str(ref_file), ref_text=ref_text, gen_text=target.text,
                                           show_info=log.debug, progress=_Quiet, nfe_step=self.nfe_step,
                                           speed=self.speed, seed=target_seed(self.seed, target.id))
        write_wav(path, resample(np.asarray(wav), int(rate), self.sampling_rate), self.sampling_rate)
        return {"model": self.options["model"], "checkpoint": Path(self.options["ckpt_file"]).name}



def _made(directory: Path) -> Path:
    Path(directory).mkdir(parents=True, exist_ok=True)
    return Path(directory)


class SparkTTSAugmenter(_VoiceCloning):
    """Voice cloning with Spark-TTS from a local clone of its repository and a local checkpoint."""

    name = "sparktts"

    #: Spark-TTS's BiCodec output rate (``SparkTTS.sample_rate`` from its config).
    DEFAULT_RATE = 16000

    def __init__(self, *, repo_dir: str = "", model_dir: str = "", module: str = "cli.SparkTTS",
                 device: str = "cpu", temperature: float = 0.8, top_k: int = 50, top_p: float = 0.95,
                 sampling_rate: int = 16000, seed: int = 0) -> None:
        missing_paths("sparktts", {
            "repo_dir": (repo_dir, "a clone of github.com/SparkAudio/Spark-TTS, whose cli/SparkTTS.py is imported"),
            "model_dir": (model_dir, "a local Spark-TTS-0.5B checkpoint directory (config.yaml, LLM/, BiCodec/)"),
        }, {"repo_dir": "dir", "model_dir": "dir"})
        self.repo = str(Path(repo_dir).resolve())
        with on_sys_path(self.repo):
            self.engine_cls = import_engine("sparktts", module, "SparkTTS",
                                            f"install the requirements of {repo_dir} (requirements.txt)")
        self.model_dir, self.device = str(model_dir), device
        self.sample_args = dict(temperature=temperature, top_k=top_k, top_p=top_p)
        self.sampling_rate, self.seed = sampling_rate, seed
        self._engine: Any = None

    def engine(self) -> Any:
        if self._engine is None:
            with on_sys_path(self.repo):  # its modules may import more of the repository when built
                self._engine = self.engine_cls(Path(self.model_dir), self.device)
        return self._engine

    def _produce(self, target: AugmentTarget, prompt: Any, path: Path, prompt_dir: Path) -> dict[str, Any]:
        if prompt is None:
            raise _LeftOut("sparktts needs a prompt cut (target.prompt_id)")
        ref_text, ref_file = prompt_text(prompt), prompt_wav(prompt, prompt_dir)
        engine = self.engine()
        _seed_torch(target_seed(self.seed, target.id))
        with on_sys_path(self.repo):
            wav = engine.inference(target.text, prompt_speech_path=ref_file, prompt_text=ref_text,
                                   **self.sample_args)
        wav = wav.detach().cpu().numpy() if hasattr(wav, "detach") else np.asarray(wav)
        rate = int(getattr(engine, "sample_rate", self.DEFAULT_RATE))
        write_wav(path, resample(wav.reshape(-1), rate, self.sampling_rate), self.sampling_rate)
        return {"model_dir": Path(self.model_dir).name}



def _seed_torch(seed: int) -> None:
    """Spark-TTS samples its tokens: seed torch so a target's audio is reproducible."""
    import torch

    torch.manual_seed(seed)


@hookimpl
def ilt_register_augmenters(register):
    register("espeak", EspeakAugmenter)
    register("f5tts", F5TTSAugmenter)
    register("sparktts", SparkTTSAugmenter)
