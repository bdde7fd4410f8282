"""Whisper's files and inputs, apart from the backbone plugin: model-directory checks, the tokenizer, the collator (log-mel features and prompts)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ilt.backbone import Batch
from ilt.data.audio import AudioProblem, load_checked
from ilt.data.languages import NO_SPACE_LANGUAGES
from ilt.errors import IltInputError
from ilt.models import lid
from ilt.models.base import read_model_config

IGNORE_INDEX = -100


_LANGUAGE_TOKEN = re.compile(r"^<\|([a-z]{2,3})\|>$")


_DTYPES = {
    "fp32": "float32", "float32": "float32", "float": "float32",
    "bf16": "bfloat16", "bfloat16": "bfloat16",
    "fp16": "float16", "float16": "float16", "half": "float16",
}


def resolve_dtype(dtype: Any) -> Any:
    """A ``torch.dtype`` from ``None`` (float32), a torch dtype or a name
    (``fp32``, ``bf16``, ``fp16``, ``float32``...)."""
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = _DTYPES.get(str(dtype).lower().removeprefix("torch."))
    if name is None:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(_DTYPES))}")
    return getattr(torch, name)


def _ct2_hint(model_dir: Path) -> str:
    if (model_dir / "model.bin").exists():
        return " (a CTranslate2 model: convert it with tools/ct2_to_hf.py)"
    return ""


def check_whisper_dir(model_dir: str | Path) -> dict[str, Any]:
    """Return the ``config.json`` of a Whisper model directory, or raise
    :class:`IltInputError` naming the directory and what it holds instead."""
    return read_model_config(model_dir, "whisper", "Whisper", _ct2_hint(Path(model_dir)))


TOKENIZER_FILES = (("tokenizer.json",), ("vocab.json", "merges.txt"))


def check_model_files(model_dir: Path, *, weights: bool = True, tokenizer: bool = True) -> None:
    """Raise :class:`IltInputError` naming the directory, the missing files and
    the fix when the tokenizer files or the safetensors weights are missing
    (transformers' own errors would point elsewhere)."""
    if tokenizer and not any(all((model_dir / name).is_file() for name in names) for names in TOKENIZER_FILES):
        raise IltInputError(
            f"{model_dir}: the Whisper tokenizer files are missing (tokenizer.json, or vocab.json and "
            f"merges.txt); copy them from the model this one was made from (the tokenizer does not change "
            f"with training)")
    if weights and not list(model_dir.glob("*.safetensors")):
        bins = sorted(p.name for p in model_dir.glob("*.bin"))
        if bins:
            raise IltInputError(
                f"{model_dir}: has PyTorch weights only ({', '.join(bins[:3])}); ilt reads safetensors only: "
                f"convert once with python -c \"from transformers import WhisperForConditionalGeneration as W; "
                f"W.from_pretrained('{model_dir}', use_safetensors=False).save_pretrained('{model_dir}')\"")


def find_language_ids(generation_config: Any, tokenizer: Any) -> dict[str, int]:
    ids = {}
    for token, idx in (getattr(generation_config, "lang_to_id", None) or {}).items():
        if m := _LANGUAGE_TOKEN.match(token):
            ids[m.group(1)] = int(idx)
    if not ids:
        for token, idx in tokenizer.get_added_vocab().items():
            if m := _LANGUAGE_TOKEN.match(token):
                ids[m.group(1)] = int(idx)
    return ids


def find_multilingual(generation_config: Any, config: Any) -> bool:
    flag = getattr(generation_config, "is_multilingual", None)
    if flag is not None:
        return bool(flag)
    # OpenAI's English-only checkpoints have 51864 tokens, multilingual ones more.
    return int(config.vocab_size) >= 51865


def text_token_ids(tokenizer: Any, text: str, language: str | None = None) -> list[int]:
    """Token IDs of a transcript, with Whisper's leading space except for
    languages written without spaces (:data:`ilt.data.languages.NO_SPACE_LANGUAGES`)."""
    text = text.strip()
    if language not in NO_SPACE_LANGUAGES:
        text = " " + text
    return list(tokenizer.encode(text, add_special_tokens=False))


def readable_pieces(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each ID decoded to text; a piece holding part of a multi-byte character
    keeps its byte-level spelling, so distinct tokens stay distinct."""
    pieces = []
    for i in ids:
        piece = tokenizer.decode([i])
        pieces.append(tokenizer.convert_ids_to_tokens(i) if "\ufffd" in piece else piece)
    return pieces


def load_whisper_tokenizer(model_dir: str | Path) -> Any:
    """The ``WhisperTokenizer`` of a Whisper model directory, or an
    :class:`IltInputError` naming the directory."""
    from transformers import WhisperTokenizer

    model_dir = Path(model_dir)
    check_whisper_dir(model_dir)
    check_model_files(model_dir, weights=False)
    try:
        return WhisperTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise IltInputError(f"{model_dir}: cannot load the Whisper tokenizer: {exc}") from None


class WhisperTextTokenizer:
    """Only the tokenizer of a Whisper directory (``load_whisper(...,
    tokenizer_only=True)``): :meth:`tokenize` as the backbone does it, without
    reading the weights, for token-frequency analysis."""

    name = "whisper"
    model = None

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def text_ids(self, text: str, language: str | None = None) -> list[int]:
        return text_token_ids(self.tokenizer, text, language)

    def tokenize(self, text: str, language: str | None = None) -> list[str]:
        """See :meth:`WhisperBackbone.tokenize`."""
        return readable_pieces(self.tokenizer, self.text_ids(text, language))


class WhisperCollator:
    """Cuts -> :class:`Batch` for one Whisper checkpoint, without the model.

    Holds only the tokenizer, the feature extractor and a few numbers, so it is
    cheap to send to data-loader worker processes.
    """

    def __init__(self, feature_extractor: Any, tokenizer: Any, *, multilingual: bool,
                 language_ids: dict[str, int], decoder_start_token_id: int, num_frames: int,
                 max_target_positions: int) -> None:
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.multilingual = multilingual
        self.language_ids = dict(language_ids)
        self.sampling_rate = int(feature_extractor.sampling_rate)
        self.num_frames = int(num_frames)
        self.num_samples = int(num_frames * feature_extractor.hop_length)
        self.max_input_seconds = self.num_samples / self.sampling_rate
        self.max_target_positions = int(max_target_positions)
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id)
        self.sot_id = int(decoder_start_token_id or self._token_id("<|startoftranscript|>"))
        self.transcribe_id = self._token_id("<|transcribe|>") if multilingual else None
        self.notimestamps_id = self._token_id("<|notimestamps|>")
        #: ``None``: every input padded to the window (stock Whisper); else the
        #: batch is padded to its longest cut rounded up to this many frames
        #: (:func:`ilt.models.encoder_length.padded_frames`)
        self.pad_multiple: int | None = None

    def _token_id(self, token: str) -> int:
        idx = self.tokenizer.convert_tokens_to_ids(token)
        if idx is None or (idx == self.tokenizer.unk_token_id and token != self.tokenizer.unk_token):
            raise ValueError(f"the Whisper tokenizer has no {token} token")
        return int(idx)

    def prompt_ids(self, language: str | None) -> list[int]:
        """The decoder prompt for transcription without timestamps.

        Multilingual: ``<|startoftranscript|> <|lang|> <|transcribe|>
        <|notimestamps|>``. English-only checkpoints were trained without
        language and task tokens (OpenAI's ``.en`` models, and what
        ``generate`` feeds them): ``<|startoftranscript|> <|notimestamps|>``.

        Raises :class:`IltInputError` for a language the (multilingual) model
        has no token for; English-only models ignore ``language``.
        """
        ids = [self.sot_id]
        if self.multilingual:
            if not language:
                raise IltInputError("a multilingual Whisper needs a language to build its prompt")
            if language not in self.language_ids:
                raise IltInputError(f"language {language!r} is not supported by this Whisper model")
            ids += [self.language_ids[language], self.transcribe_id]
        ids.append(self.notimestamps_id)
        return ids

    def text_ids(self, text: str, language: str | None = None) -> list[int]:
        """Token IDs of a transcript, with Whisper's leading space except for
        languages written without spaces (:data:`ilt.data.languages.NO_SPACE_LANGUAGES`)."""
        return text_token_ids(self.tokenizer, text, language)

    def features(self, audios: Sequence[np.ndarray], device: Any = None) -> dict[str, Any]:
        """Log-mel features of mono audio at :attr:`sampling_rate`, padded (or
        cut) to the model's window: ``{"input_features": (B, n_mels, frames)}``
        (a CPU tensor). ``device`` (``"cuda"``...): where the STFT runs
        (default: the CPU)."""
        arrays = [np.asarray(a, dtype=np.float32).reshape(-1) for a in audios]
        if not arrays:
            import torch

            return {"input_features": torch.zeros(0, self.feature_extractor.feature_size, self.num_frames)}
        out = self.feature_extractor(
            arrays, sampling_rate=self.sampling_rate, return_tensors="pt", padding="max_length",
            max_length=self.padded_samples(arrays), truncation=True, return_attention_mask=False,
            device=str(device) if device is not None else "cpu")
        return {"input_features": out["input_features"]}

    def padded_samples(self, arrays: Sequence[np.ndarray]) -> int:
        """How many samples the batch's features cover: the window, or with
        :attr:`pad_multiple` the longest array rounded up to that many frames."""
        if self.pad_multiple is None:
            return self.num_samples
        from ilt.models.encoder_length import padded_frames

        hop = int(self.feature_extractor.hop_length)
        frames = padded_frames([len(a) for a in arrays], hop=hop, window_frames=self.num_frames,
                               multiple=self.pad_multiple)
        return frames * hop

    def __call__(self, cuts: Any) -> Batch:
        """Features, decoder inputs and masked labels of a batch of cuts.

        Cuts with an empty transcript, a missing or unsupported language (for
        a multilingual model), unreadable, empty, non-finite, silent or
        over-long audio (:func:`ilt.data.audio.load_checked`), or more tokens
        than the decoder takes are left out and listed in ``Batch.skipped``
        with the reason.
        """

        skipped: dict[str, str] = {}
        ids: list[str] = []
        audios: list[np.ndarray] = []
        seqs: list[list[int]] = []
        prompt_lens: list[int] = []
        languages: list[str | None] = []
        for cut in cuts:
            sup = cut.supervisions[0] if cut.supervisions else None
            text = (sup.text or "").strip() if sup is not None else ""
            if not text:
                skipped[cut.id] = "empty transcript"
                continue
            language = sup.language
            if self.multilingual and not language:
                skipped[cut.id] = "no language"
                continue
            try:
                prompt = self.prompt_ids(language)
            except IltInputError as exc:
                skipped[cut.id] = str(exc)
                continue
            seq = prompt + self.text_ids(text, language) + [self.eos_id]
            if len(seq) - 1 > self.max_target_positions:
                skipped[cut.id] = (f"transcript too long: {len(seq) - 1} decoder tokens, "
                                   f"the model takes at most {self.max_target_positions}")
                continue
            audio = load_checked(cut, self.sampling_rate, reject_silent=True, max_samples=self.num_samples)
            if isinstance(audio, AudioProblem):
                skipped[cut.id] = str(audio)
                continue
            ids.append(cut.id)
            audios.append(audio)
            seqs.append(seq)
            prompt_lens.append(len(prompt))
            languages.append(language)

        decoder_input_ids, labels = self.decoder_tensors(seqs, prompt_lens)
        tensors = {
            "input_features": self.features(audios)["input_features"],
            "decoder_input_ids": decoder_input_ids,
            "labels": labels,
            "language_ids": lid.language_ids(languages),  # rows of the language-ID embeddings (ilt.models.lid)
        }
        return Batch(tensors=tensors, cut_ids=ids, skipped=skipped, languages=languages)

    def decoder_tensors(self, seqs: Sequence[Sequence[int]], prompt_lens: Sequence[int]) -> tuple[Any, Any]:
        """``(decoder_input_ids, labels)`` for teacher forcing: each sequence
        (prompt, text, end of text) shifted by one and padded; the labels of
        the prompt positions and of the padding are ignored."""
        import torch

        longest = max((len(s) - 1 for s in seqs), default=0)
        decoder_input_ids = torch.full((len(seqs), longest), self.pad_id, dtype=torch.long)
        labels = torch.full((len(seqs), longest), IGNORE_INDEX, dtype=torch.long)
        for i, (seq, plen) in enumerate(zip(seqs, prompt_lens)):
            n = len(seq) - 1
            decoder_input_ids[i, :n] = torch.tensor(seq[:-1])
            # labels[j] is the token after position j; the first plen-1 are prompt tokens.
            labels[i, plen - 1:n] = torch.tensor(seq[plen:])
        return decoder_input_ids, labels
