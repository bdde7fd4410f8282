"""The Whisper backbone: any ``WhisperForConditionalGeneration`` in a local directory.

Training sequences follow Whisper's own prompt format::

    multilingual:  <|startoftranscript|> <|lang|> <|transcribe|> <|notimestamps|> text <|endoftext|>
    English-only:  <|startoftranscript|> <|notimestamps|> text <|endoftext|>

(OpenAI's ``.en`` checkpoints were trained without language and task tokens,
and ``generate`` prompts them the same way.) The decoder
reads the sequence without its last token; the labels are the sequence without
its first token, with the prompt positions and the padding masked (-100), so the
loss is the mean cross-entropy over the text tokens and the end-of-text token
(the paper's Eq. 1).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ilt.backbone import SCOPES, Batch
from ilt.data.audio import AudioProblem, load_checked
from ilt.data.languages import NO_SPACE_LANGUAGES
from ilt.errors import IltInputError
from ilt.hookspecs import hookimpl
from ilt.utils import atomic_dir, log

#: Label value ignored by the loss.
IGNORE_INDEX = -100

#: Module leaf names of each LoRA scope (Whisper has no gate/up/down projections).
SCOPE_TARGETS: dict[str, tuple[str, ...]] = {
    "attention": ("q_proj", "k_proj", "v_proj"),
    "wide": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
}


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
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise IltInputError(f"{model_dir}: no such model directory")
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        found = ", ".join(sorted(p.name for p in model_dir.iterdir())[:10]) or "nothing"
        hint = _ct2_hint(model_dir)
        raise IltInputError(f"{model_dir}: not a Whisper model directory: no config.json; found {found}{hint}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IltInputError(f"{config_file}: unreadable model config: {exc}") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type != "whisper":
        hint = _ct2_hint(model_dir)
        raise IltInputError(
            f"{model_dir}: not a Whisper model: config.json has model_type {model_type!r}, expected 'whisper'{hint}")
    return config


def _unwrap(model: Any) -> Any:
    """The transformers model under DDP/FSDP-style (``.module``) and PEFT
    wrappers; LoRA layers stay injected in it."""
    while not hasattr(model, "generation_config") and hasattr(model, "module"):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _generating(model: Any) -> Any:
    """The outermost wrapper that has ``generate`` (a PEFT model keeps its hooks)."""
    while not hasattr(model, "generate") and hasattr(model, "module"):
        model = model.module
    return model


def _first_float_param(model: Any) -> Any:
    for p in model.parameters():
        if p.is_floating_point():
            return p
    raise ValueError("model has no floating-point parameters")


def _find_language_ids(generation_config: Any, tokenizer: Any) -> dict[str, int]:
    ids = {}
    for token, idx in (getattr(generation_config, "lang_to_id", None) or {}).items():
        if m := _LANGUAGE_TOKEN.match(token):
            ids[m.group(1)] = int(idx)
    if not ids:
        for token, idx in tokenizer.get_added_vocab().items():
            if m := _LANGUAGE_TOKEN.match(token):
                ids[m.group(1)] = int(idx)
    return ids


def _find_multilingual(generation_config: Any, config: Any) -> bool:
    flag = getattr(generation_config, "is_multilingual", None)
    if flag is not None:
        return bool(flag)
    # OpenAI's English-only checkpoints have 51864 tokens, multilingual ones more.
    return int(config.vocab_size) >= 51865


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
        text = text.strip()
        if language not in NO_SPACE_LANGUAGES:
            text = " " + text
        return list(self.tokenizer.encode(text, add_special_tokens=False))

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
            max_length=self.num_samples, truncation=True, return_attention_mask=False,
            device=str(device) if device is not None else "cpu")
        return {"input_features": out["input_features"]}

    def __call__(self, cuts: Any) -> Batch:
        """Features, decoder inputs and masked labels of a batch of cuts.

        Cuts with an empty transcript, a missing or unsupported language (for
        a multilingual model), unreadable, empty, non-finite, silent or
        over-long audio (:func:`ilt.data.audio.load_checked`), or more tokens
        than the decoder takes are left out and listed in ``Batch.skipped``
        with the reason.
        """
        import torch

        skipped: dict[str, str] = {}
        ids: list[str] = []
        audios: list[np.ndarray] = []
        seqs: list[list[int]] = []
        prompt_lens: list[int] = []
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

        decoder_input_ids, labels = self.decoder_tensors(seqs, prompt_lens)
        tensors = {
            "input_features": self.features(audios)["input_features"],
            "decoder_input_ids": decoder_input_ids,
            "labels": labels,
        }
        return Batch(tensors=tensors, cut_ids=ids, skipped=skipped)

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


class WhisperBackbone:
    """A Whisper model plus its feature extractor and tokenizer."""

    name = "whisper"

    #: Beam search computes each utterance's cross-attention keys and values
    #: once instead of once per beam (:mod:`ilt.plugins.whisper_beam`; the same
    #: hypotheses, several times faster). Set to False to decode with plain
    #: ``generate``, for comparison.
    share_cross_attention: bool = True

    def __init__(self, model: Any, feature_extractor: Any, tokenizer: Any) -> None:
        self.model = model
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        gen = model.generation_config
        # The encoder takes exactly max_source_positions * (conv strides) frames.
        encoder = model.model.encoder
        stride = encoder.conv1.stride[0] * encoder.conv2.stride[0]
        multilingual = _find_multilingual(gen, model.config)
        self.collator = WhisperCollator(
            feature_extractor, tokenizer, multilingual=multilingual,
            language_ids=_find_language_ids(gen, tokenizer) if multilingual else {},
            decoder_start_token_id=gen.decoder_start_token_id,
            num_frames=model.config.max_source_positions * stride,
            max_target_positions=model.config.max_target_positions)
        self.sampling_rate: int = self.collator.sampling_rate
        self.max_input_seconds: float = self.collator.max_input_seconds
        self.num_frames: int = self.collator.num_frames
        self.num_samples: int = self.collator.num_samples
        self.max_target_positions: int = self.collator.max_target_positions

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, *, dtype: Any = None, device: Any = None) -> "WhisperBackbone":
        """Load a Whisper model and its processor from a local directory.

        :param dtype: torch dtype or name (``fp32``, ``bf16``, ``fp16``);
            default float32.
        :param device: torch device (default CPU).
        """
        from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer

        model_dir = Path(model_dir)
        check_whisper_dir(model_dir)
        torch_dtype = resolve_dtype(dtype)
        try:
            model = WhisperForConditionalGeneration.from_pretrained(
                model_dir, dtype=torch_dtype, attn_implementation="sdpa", local_files_only=True,
                use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise IltInputError(f"{model_dir}: cannot load the Whisper weights: {exc}") from None
        if not (model_dir / "preprocessor_config.json").is_file():
            raise IltInputError(f"{model_dir}: no preprocessor_config.json (the Whisper feature extractor)")
        try:
            feature_extractor = WhisperFeatureExtractor.from_pretrained(model_dir, local_files_only=True)
            tokenizer = WhisperTokenizer.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise IltInputError(f"{model_dir}: cannot load the Whisper tokenizer or feature extractor: {exc}") from None
        if device is not None:
            model.to(device)
        return cls(model, feature_extractor, tokenizer)

    @property
    def is_multilingual(self) -> bool:
        """True when the checkpoint takes a language token in its prompt."""
        return self.collator.multilingual

    @property
    def languages(self) -> list[str]:
        """ISO 639-1 codes this model has language tokens for (empty for English-only)."""
        return sorted(self.collator.language_ids)

    def prompt_ids(self, language: str | None) -> list[int]:
        """See :meth:`WhisperCollator.prompt_ids`."""
        return self.collator.prompt_ids(language)

    def text_ids(self, text: str, language: str | None = None) -> list[int]:
        """See :meth:`WhisperCollator.text_ids`."""
        return self.collator.text_ids(text, language)

    def tokenize(self, text: str, language: str | None = None) -> list[str]:
        """The byte-level BPE pieces of :meth:`text_ids`, decoded to readable
        text; a piece holding part of a multi-byte character (common in
        ja/ko/th) keeps its byte-level spelling, so distinct tokens stay distinct."""
        tok = self.collator.tokenizer
        pieces = []
        for i in self.text_ids(text, language):
            piece = tok.decode([i])
            pieces.append(tok.convert_ids_to_tokens(i) if "\ufffd" in piece else piece)
        return pieces

    # ------------------------------------------------------------------ LoRA targets

    def target_modules(self, spec: str | Sequence[str]) -> list[str]:
        """LoRA target module names for PEFT's ``target_modules``.

        ``spec`` is a scope (``attention``: q/k/v; ``wide``: q/k/v, out_proj,
        fc1, fc2) or explicit names (a list, or a comma-separated string), each a
        module leaf name (``fc1``) or a dotted suffix of a module path
        (``decoder.layers.0.fc1``) naming a layer PEFT's LoRA can wrap.
        """
        import torch.nn as nn

        wrappable = (nn.Linear, nn.Conv1d, nn.Embedding)
        modules = [(n, m) for n, m in _unwrap(self.model).named_modules()
                   if n and not n.endswith(".base_layer")]
        # A module already wrapped by PEFT (it has a base_layer) still counts.
        paths = [n for n, m in modules if isinstance(m, wrappable) or hasattr(m, "base_layer")]
        linear_leaves = sorted({n.rsplit(".", 1)[-1] for n, m in modules
                                if isinstance(m, nn.Linear) or isinstance(getattr(m, "base_layer", None), nn.Linear)})
        if isinstance(spec, str) and spec in SCOPES:
            names = list(SCOPE_TARGETS[spec])
        else:
            if isinstance(spec, str):
                names = [s.strip() for s in spec.split(",") if s.strip()]
            else:
                names = [str(s).strip() for s in spec]
            if not names:
                raise ValueError(f"no LoRA target modules given; use a scope ({', '.join(SCOPES)}) "
                                 f"or linear layer names: {', '.join(linear_leaves)}")
        unknown = [n for n in names if not any(p == n or p.endswith("." + n) for p in paths)]
        if unknown:
            raise ValueError(
                f"unknown LoRA target module(s) {', '.join(map(repr, unknown))} for Whisper; use a scope "
                f"({', '.join(SCOPES)}) or linear layer names: {', '.join(linear_leaves)}")
        return list(dict.fromkeys(names))

    # ------------------------------------------------------------------ data

    def features(self, audios: Sequence[np.ndarray]) -> dict[str, Any]:
        """See :meth:`WhisperCollator.features`; the STFT runs on the model's
        GPU when it has one (the CPU would otherwise hold the GPU up while
        decoding), else on the CPU."""
        device = _first_float_param(self.model).device
        return self.collator.features(audios, device=device if device.type == "cuda" else None)

    def collate(self, cuts: Any) -> Batch:
        """See :meth:`WhisperCollator.__call__`; ``self.collator`` is the same
        without the model (for data-loader workers)."""
        return self.collator(cuts)

    # ------------------------------------------------------------------ loss

    def loss(self, model: Any, batch: Batch, *, label_smoothing: float = 0.0) -> Any:
        """Mean token cross-entropy over the unmasked label positions;
        ``label_smoothing`` as in ``torch.nn.functional.cross_entropy``."""
        import torch
        import torch.nn.functional as F

        param = _first_float_param(model)
        labels = batch.tensors["labels"].to(param.device)
        if labels.numel() == 0 or not bool((labels != IGNORE_INDEX).any()):
            return torch.zeros((), device=param.device, requires_grad=True)
        out = model(
            input_features=batch.tensors["input_features"].to(param.device, param.dtype),
            decoder_input_ids=batch.tensors["decoder_input_ids"].to(param.device),
            use_cache=False,
        )
        logits = out.logits
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                               ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)

    def score(self, model: Any, inputs: dict[str, Any], texts: Sequence[str], *,
              language: str | None) -> list[tuple[float, int]]:
        """``(mean log-probability, tokens)`` of each text given its audio.

        Teacher-forced over the tokens training would use for that text (the
        text tokens and the end of text, after the prompt in ``language``):
        the confidence of a hypothesis as a label, whatever search produced
        it. An empty text scores the end of text alone. A multilingual model
        needs ``language``. One forward pass (encoder included) per batch.
        """
        import torch

        param = _first_float_param(model)
        prompt = self.prompt_ids(language)
        limit = self.collator.max_target_positions + 1
        seqs = [(prompt + (self.text_ids(t, language) if t.strip() else []))[:limit - 1] + [self.collator.eos_id]
                for t in texts]
        if not seqs:
            return []
        decoder_input_ids, labels = self.collator.decoder_tensors(seqs, [len(prompt)] * len(seqs))
        labels = labels.to(param.device)
        with torch.inference_mode():
            logits = model(input_features=inputs["input_features"].to(param.device, param.dtype),
                           decoder_input_ids=decoder_input_ids.to(param.device), use_cache=False).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            mask = labels != IGNORE_INDEX
            token = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
            counts = mask.sum(dim=1)
            means = (token.sum(dim=1) / counts.clamp(min=1)).tolist()
        return [(float(m), int(n)) for m, n in zip(means, counts.tolist())]

    # ------------------------------------------------------------------ decoding

    def generate(self, model: Any, inputs: dict[str, Any], *, language: str | None,
                 num_beams: int = 1, max_new_tokens: int = 440, temperature: float | None = None,
                 **kwargs: Any) -> list[str]:
        """Transcribe one batch of :meth:`features` output, without timestamps.

        A multilingual model is forced to ``language`` (``None``: it detects the
        language); an English-only model ignores ``language``. ``temperature``
        > 0 samples instead of searching. Other keyword arguments (for example
        ``length_penalty``, ``no_repeat_ngram_size``) go to ``model.generate``.
        Raises :class:`IltInputError` for a language the model does not know.
        """
        import torch

        base = _unwrap(model)
        runner = _generating(model)
        param = _first_float_param(base)
        features = inputs["input_features"].to(param.device, param.dtype)
        if features.shape[0] == 0:
            return []
        gen_config = copy.deepcopy(base.generation_config)
        multilingual = self.is_multilingual
        prompt_len = 4 if multilingual else 2  # see prompt_ids()
        gen_config.num_beams = int(num_beams)
        # Whisper's generate adds the prompt length to max_length itself; giving
        # max_length (not max_new_tokens) avoids a warning on every call when
        # the model's own generation config sets a max_length.
        gen_config.max_new_tokens = None
        gen_config.max_length = max(1, min(int(max_new_tokens), self.max_target_positions - prompt_len))
        whisper_options: dict[str, Any] = {"return_timestamps": False}
        if multilingual:
            if language is not None and language not in self.collator.language_ids:
                raise IltInputError(f"language {language!r} is not supported by this Whisper model")
            if language is not None:
                whisper_options["language"] = language
            whisper_options["task"] = "transcribe"
        else:
            # English-only: no language token and no language detection.
            for attr in ("lang_to_id", "language", "task"):
                if hasattr(gen_config, attr):
                    delattr(gen_config, attr)
        if temperature is not None and temperature > 0:
            whisper_options["temperature"] = float(temperature)
            gen_config.num_beams = 1
        for key, value in kwargs.items():
            if value is None:
                continue
            if hasattr(gen_config, key):
                setattr(gen_config, key, value)
            else:
                whisper_options[key] = value
        shared = (self.share_cross_attention and gen_config.num_beams > 1
                  and base.config._attn_implementation == "sdpa")
        with torch.inference_mode():
            if shared:
                from ilt.plugins.whisper_beam import beam_shared_attention, prefill

                with beam_shared_attention(base):
                    # language detection (a multilingual model, no language given) reads the encoder states
                    encoder_outputs, cache = prefill(base, features,
                                                     keep_encoder_states=multilingual and language is None)
                    sequences = runner.generate(encoder_outputs=encoder_outputs, past_key_values=cache,
                                                generation_config=gen_config, **whisper_options)
            else:
                sequences = runner.generate(input_features=features, generation_config=gen_config,
                                            **whisper_options)
        if not torch.is_tensor(sequences):
            sequences = sequences["sequences"]
        texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=True)
        return [t.strip() for t in texts]

    # ------------------------------------------------------------------ saving

    def save(self, model: Any, out_dir: str | Path) -> None:
        """Write the full model (safetensors), tokenizer, feature extractor and
        generation config to ``out_dir``, atomically. A PEFT-wrapped model must
        be merged first."""
        model = model.module if not hasattr(model, "save_pretrained") and hasattr(model, "module") else model
        if hasattr(model, "peft_config"):
            raise ValueError("save() writes a full model: merge the LoRA adapter into the model first "
                             "(peft's merge_and_unload)")
        with atomic_dir(out_dir) as tmp:
            model.save_pretrained(tmp)
            self.feature_extractor.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            model.generation_config.save_pretrained(tmp)
            if any(tmp.glob("*.bin")) or not any(tmp.glob("*.safetensors")):
                raise RuntimeError(f"{out_dir}: the model was not written as safetensors")
        log.info("saved Whisper model to %s", out_dir)


def load_whisper(model_dir: str | Path, *, dtype: Any = None, device: Any = None) -> WhisperBackbone:
    """The registered factory: :meth:`WhisperBackbone.from_pretrained`."""
    return WhisperBackbone.from_pretrained(model_dir, dtype=dtype, device=device)


@hookimpl
def ilt_register_backbones(register: Any) -> None:
    register("whisper", load_whisper)


__all__ = ["WhisperBackbone", "WhisperCollator", "load_whisper", "check_whisper_dir", "resolve_dtype",
           "SCOPE_TARGETS", "IGNORE_INDEX"]
