"""Built-in speaker-similarity selectors (ILT paper, section 3.2.2): keep the
third-party cuts whose speaker embedding is close to the real speakers.

Both compute the **SECS** of each pool cut: the cosine similarity of its
speaker embedding to the nearest reference speaker's mean embedding (the mean
of that speaker's L2-normalised utterance embeddings, normalised again).
Reference cuts are grouped by their supervision's ``speaker`` (a cut without
one is its own speaker). ``select`` keeps the pool cuts whose SECS is above
``threshold`` (default 0.85, the paper's) and stores it in
``cut.custom["select_score"]``; ``scores`` gives every candidate's SECS (the
:class:`ilt.components.ScoringSelector` protocol), which ``ilt select`` turns
into a histogram.

``resemblyzer`` (default)
    Resemblyzer's GE2E voice encoder (``pip install 'ilt[speaker]'``), whose
    17 MB weights ship inside the package, so it works offline. Its own
    preprocessing (volume normalisation, webrtcvad silence trimming) is applied.
``wavlm``
    transformers' ``WavLMForXVector`` and its feature extractor, from the
    local directory ``model_dir`` (e.g. a copy of ``microsoft/wavlm-base-plus-sv``).

Audio is read at 16 kHz and embedded in batches of ``batch_size`` cuts of
similar duration (resemblyzer's batched embeddings equal its one-at-a-time
ones; a WavLM with group norm in its feature encoder sees the zero padding of
the shorter cuts of a batch, a small difference: ``batch_size: 1`` avoids it). A cut
with less than ``min_speech`` seconds of speech (frames above -50 dBFS; for
resemblyzer, what its voice activity detector keeps) is skipped as "no
speech", as is unreadable audio; skips are counted, never fatal.

Embeddings are cached in ``cache_dir`` (when given; ``ilt select`` gives
``--cache-dir``): one ``.npz`` per selector and model identity (resemblyzer's
version and weights hash; the sha256 of WavLM's safetensors weights and config,
a ``.bin``-only WavLM being refused), keyed by cut ID and
checked against the cut's recording, start, duration and channel, so a changed
cut is embedded again. The cache is saved every few batches: a killed run
resumes with what it had embedded.
"""

from __future__ import annotations

import abc
import hashlib
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ilt.components import SELECT_SCORE
from ilt.config import ConfigError
from ilt.core.runtime import Skips
from ilt.errors import IltInputError
from ilt.hookspecs import hookimpl

log = logging.getLogger("ilt.plugins.selectors")

SAMPLING_RATE = 16000
NO_SPEECH = "no speech"
#: frames quieter than this (dBFS) are not speech, for the energy check
SPEECH_DBFS = -50.0
#: save the embedding cache after this many batches
SAVE_EVERY = 20


def speech_seconds(audio: np.ndarray, rate: int = SAMPLING_RATE, frame: float = 0.025) -> float:
    """Seconds of ``audio`` in 25 ms frames whose RMS is above :data:`SPEECH_DBFS`."""
    n = int(rate * frame)
    if audio.size < n:
        return 0.0
    frames = audio[: audio.size // n * n].reshape(-1, n).astype(np.float64)
    rms = np.sqrt(np.mean(frames ** 2, axis=1))
    return float(np.count_nonzero(rms > 10 ** (SPEECH_DBFS / 20)) * frame)


def cut_fingerprint(cut: Any) -> str:
    return f"{cut.recording_id}|{cut.start:.4f}|{cut.duration:.4f}|{cut.channel}"


class EmbeddingCache:
    """Embeddings (and no-speech verdicts) of one selector and model, by cut ID, in one ``.npz``."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.vectors: dict[str, tuple[str, np.ndarray]] = {}
        self.empty: dict[str, str] = {}  # cut ID -> fingerprint of a cut without speech
        if path is not None and path.is_file():
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as data:
                ids, prints, vectors = data["ids"], data["fingerprints"], data["vectors"]
                self.vectors = {str(i): (str(p), v) for i, p, v in zip(ids, prints, vectors)}
                self.empty = {str(i): str(p) for i, p in zip(data["empty_ids"], data["empty_fingerprints"])}
        except Exception as exc:  # a damaged cache is rebuilt, never trusted
            log.warning("%s: unreadable embedding cache, embedding again (%s)", path, exc)
            self.vectors, self.empty = {}, {}

    def get(self, cut: Any) -> np.ndarray | str | None:
        """The cached embedding, :data:`NO_SPEECH`, or ``None`` when not cached (or stale)."""
        fp = cut_fingerprint(cut)
        hit = self.vectors.get(cut.id)
        if hit is not None and hit[0] == fp:
            return hit[1]
        return NO_SPEECH if self.empty.get(cut.id) == fp else None

    def put(self, cut: Any, vector: np.ndarray | None) -> None:
        if vector is None:
            self.empty[cut.id] = cut_fingerprint(cut)
        else:
            self.vectors[cut.id] = (cut_fingerprint(cut), np.asarray(vector, dtype=np.float32))

    def save(self) -> None:
        if self.path is None:
            return
        from ilt.core.files import atomic_path

        ids = sorted(self.vectors)
        dim = len(next(iter(self.vectors.values()))[1]) if ids else 0
        vectors = np.stack([self.vectors[i][1] for i in ids]) if ids else np.zeros((0, dim), np.float32)
        empty = sorted(self.empty)
        with atomic_path(self.path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, ids=np.array(ids, dtype=str), fingerprints=np.array([self.vectors[i][0] for i in ids],
                         dtype=str), vectors=vectors, empty_ids=np.array(empty, dtype=str),
                         empty_fingerprints=np.array([self.empty[i] for i in empty], dtype=str))


def normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


class SpeakerSimilarity(abc.ABC):
    """What both selectors share: loading, speech check, batching, cache, SECS, threshold.

    A subclass sets :attr:`name`, and defines :meth:`identity` (its model, for
    the cache), :meth:`embed_batch` and, optionally, :meth:`prepare`.
    """

    name = "speaker-similarity"

    def __init__(self, *, threshold: float = 0.85, batch_size: int = 32, cache_dir: str | None = None,
                 min_speech: float = 0.3) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ConfigError(f"selector {self.name}: threshold must be a cosine similarity in [-1, 1], "
                              f"got {threshold}")
        if batch_size < 1:
            raise ConfigError(f"selector {self.name}: batch_size must be at least 1, got {batch_size}")
        self.threshold, self.batch_size, self.min_speech = threshold, batch_size, min_speech
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._cache: EmbeddingCache | None = None

    @abc.abstractmethod
    def identity(self) -> str:
        """The embedding model's identity, part of the cache key."""

    @abc.abstractmethod
    def embed_batch(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        """One L2-normalised embedding per (prepared) audio, as a ``(n, dim)`` array."""

    def prepare(self, audio: np.ndarray) -> np.ndarray | None:
        """The audio to embed, or ``None`` when it holds no speech."""
        return audio if speech_seconds(audio) >= self.min_speech else None

    def cache(self) -> EmbeddingCache:
        if self._cache is None:
            path = None
            if self.cache_dir is not None:
                key = hashlib.sha256(self.identity().encode("utf-8")).hexdigest()[:16]
                path = self.cache_dir / f"{self.name}-{key}.npz"
            self._cache = EmbeddingCache(path)
        return self._cache

    def _embed_batch_of_cuts(self, batch: Sequence[Any], cache: EmbeddingCache, skips: Skips) -> None:
        from ilt.data.audio import LONG_AUDIO_SECONDS, AudioProblem, load_checked

        ready, audios = [], []
        for cut in batch:  # a cut over LONG_AUDIO_SECONDS is a counted skip, never loaded (not one speaker's turn)
            audio = load_checked(cut, SAMPLING_RATE, max_samples=int(LONG_AUDIO_SECONDS * SAMPLING_RATE))
            if isinstance(audio, AudioProblem):
                skips.skip(audio.reason, cut.id, audio.detail)  # not cached: the file may be fixed
                continue
            prepared = self.prepare(audio)
            if prepared is None:
                cache.put(cut, None)
            else:
                ready.append(cut)
                audios.append(prepared)
        if audios:
            for cut, vector in zip(ready, self.embed_batch(audios)):
                cache.put(cut, vector)

    def embeddings(self, cuts: Any, skips: Skips, what: str = "cuts") -> dict[str, np.ndarray]:
        """Each cut's embedding (cached ones reused, the rest computed in batches), by cut ID."""
        from tqdm import tqdm

        cache = self.cache()
        cuts = list(cuts)
        # similar lengths together: less padding, which WavLM's group norm would see
        todo = sorted((c for c in cuts if cache.get(c) is None), key=lambda c: (c.duration, c.id))
        batches = [todo[i:i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
        for n, batch in enumerate(tqdm(batches, desc=f"embed {what} ({self.name})", unit="batch",
                                       disable=not batches, dynamic_ncols=True)):
            self._embed_batch_of_cuts(batch, cache, skips)
            if (n + 1) % SAVE_EVERY == 0:
                cache.save()
        if batches:
            cache.save()
        out = {}
        for cut in cuts:
            got = cache.get(cut)
            if isinstance(got, np.ndarray):
                out[cut.id] = got
            elif got == NO_SPEECH:
                skips.skip(NO_SPEECH, cut.id, f"less than {self.min_speech:g} s of speech")
        return out

    def speaker_means(self, reference: Any, skips: Skips) -> tuple[list[str], np.ndarray]:
        """The reference speakers and their mean embeddings (normalised), one row each."""
        vectors = self.embeddings(reference, skips, "reference")
        by_speaker: dict[str, list[np.ndarray]] = {}
        for cut in reference:
            if cut.id in vectors:
                speaker = (cut.supervisions[0].speaker if cut.supervisions else None) or cut.id
                by_speaker.setdefault(speaker, []).append(vectors[cut.id])
        if not by_speaker:
            raise IltInputError(f"selector {self.name}: no reference cut with speech ({len(reference)} cut(s))")
        names = sorted(by_speaker)
        return names, normalize(np.stack([normalize(np.stack(by_speaker[s])).mean(axis=0) for s in names]))

    def scores(self, pool: Any, reference: Any, skips: Skips | None = None) -> dict[str, float]:
        """SECS of each pool cut with speech: cosine similarity to the nearest reference speaker."""
        skips = skips if skips is not None else Skips(f"select ({self.name})")
        reference_skips = Skips(f"select ({self.name}) reference")
        _, means = self.speaker_means(reference, reference_skips)
        for reason, items in reference_skips.items.items():  # reported with the candidates' skips
            skips.items.setdefault(f"reference: {reason}", []).extend(items)
        vectors = self.embeddings(pool, skips, "candidates")
        if not vectors:
            return {}
        ids = list(vectors)
        secs = normalize(np.stack([vectors[i] for i in ids])) @ means.T
        return {i: float(s) for i, s in zip(ids, secs.max(axis=1))}

    def select(self, pool: Any, reference: Any) -> Any:
        from lhotse import CutSet

        scores = self.scores(pool, reference)
        kept = []
        for cut in pool:
            score = scores.get(cut.id)
            if score is not None and score > self.threshold:
                kept.append(cut.with_custom(SELECT_SCORE, round(score, 6)))
        return CutSet.from_cuts(kept)


class ResemblyzerSelector(SpeakerSimilarity):
    """SECS with Resemblyzer's bundled GE2E voice encoder (offline)."""

    name = "resemblyzer"

    def __init__(self, *, threshold: float = 0.85, batch_size: int = 32, cache_dir: str | None = None,
                 min_speech: float = 0.3, device: str = "cpu") -> None:
        super().__init__(threshold=threshold, batch_size=batch_size, cache_dir=cache_dir, min_speech=min_speech)
        try:
            import warnings

            with warnings.catch_warnings():  # webrtcvad's pkg_resources deprecation warning
                warnings.simplefilter("ignore")
                import resemblyzer
                from resemblyzer import VoiceEncoder
        except Exception as exc:
            raise ConfigError(f"selector resemblyzer: cannot import resemblyzer ({type(exc).__name__}: {exc}); "
                              f"pip install 'ilt[speaker]' (resemblyzer, and setuptools<81 for webrtcvad)") from None
        self.module = resemblyzer
        self.encoder = VoiceEncoder(device, verbose=False)
        self.weights = Path(resemblyzer.__file__).with_name("pretrained.pt")

    def identity(self) -> str:
        from ilt.core.files import sha256_file

        version = getattr(self.module, "__version__", "")
        return f"resemblyzer {version} {sha256_file(self.weights) if self.weights.is_file() else '?'}"

    def prepare(self, audio: np.ndarray) -> np.ndarray | None:
        from resemblyzer import preprocess_wav

        if speech_seconds(audio) < self.min_speech:
            return None
        wav = preprocess_wav(audio)  # its volume normalisation and VAD trimming
        return wav if wav.size >= self.min_speech * SAMPLING_RATE else None

    def embed_batch(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        """``VoiceEncoder.embed_utterance`` for a whole batch: every utterance's 1.6 s
        partials go through the LSTM in one forward pass, then are averaged per utterance."""
        import torch
        from resemblyzer.audio import wav_to_mel_spectrogram

        mels, owners = [], []
        for n, wav in enumerate(audios):
            wav_slices, mel_slices = self.encoder.compute_partial_slices(len(wav), rate=1.3, min_coverage=0.75)
            if wav_slices[-1].stop >= len(wav):
                wav = np.pad(wav, (0, wav_slices[-1].stop - len(wav)))
            mel = wav_to_mel_spectrogram(wav)
            mels.extend(mel[s] for s in mel_slices)
            owners.extend([n] * len(mel_slices))
        with torch.no_grad():
            partials = self.encoder(torch.from_numpy(np.stack(mels)).to(self.encoder.device)).cpu().numpy()
        owners_arr = np.asarray(owners)
        return normalize(np.stack([partials[owners_arr == n].mean(axis=0) for n in range(len(audios))]))


class WavLMSelector(SpeakerSimilarity):
    """SECS with transformers' ``WavLMForXVector`` from a local directory."""

    name = "wavlm"

    def __init__(self, *, model_dir: str = "", threshold: float = 0.85, batch_size: int = 8,
                 cache_dir: str | None = None, min_speech: float = 0.3, device: str = "cpu") -> None:
        super().__init__(threshold=threshold, batch_size=batch_size, cache_dir=cache_dir, min_speech=min_speech)
        if not model_dir or not (Path(model_dir) / "config.json").is_file():
            raise IltInputError(f"selector wavlm: model_dir {model_dir or '(not given)'!r} is not a local model "
                                f"directory with config.json; give a WavLMForXVector directory (e.g. a copy of "
                                f"microsoft/wavlm-base-plus-sv): --selector '{{name: wavlm, model_dir: DIR}}'")
        if not list(Path(model_dir).glob("*.safetensors")):
            raise IltInputError(
                f"selector wavlm: {model_dir} holds no *.safetensors weights (a pytorch_model.bin is a pickle, which "
                f"can run code when loaded, and gives no weight hash for the embedding cache); save the model "
                f"once with save_pretrained(DIR, safe_serialization=True) where you trust it, and give that DIR")
        from transformers import AutoFeatureExtractor, WavLMForXVector

        self.model_dir, self.device = Path(model_dir), device
        self.extractor = AutoFeatureExtractor.from_pretrained(model_dir, local_files_only=True)
        self.model = WavLMForXVector.from_pretrained(model_dir, use_safetensors=True,
                                                     local_files_only=True).to(device).eval()

    def identity(self) -> str:
        """The sha256 of the weights files (and of ``config.json``): two
        models never share an embedding cache, whatever their folders' names."""
        from ilt.core.files import sha256_file
        from ilt.models.lineage import weights_sha256

        return f"wavlm {weights_sha256(self.model_dir)} {sha256_file(self.model_dir / 'config.json')[:12]}"

    def embed_batch(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        inputs = self.extractor(list(audios), sampling_rate=SAMPLING_RATE, padding=True, return_tensors="pt",
                                return_attention_mask=True)
        with torch.no_grad():
            out = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
        return normalize(out.embeddings.float().cpu().numpy())


@hookimpl
def ilt_register_selectors(register):
    register("resemblyzer", ResemblyzerSelector)
    register("wavlm", WavLMSelector)
