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
from pathlib import Path
from typing import Any, Sequence

from ilt.backbone import Batch
from ilt.errors import IltInputError
from ilt.hookspecs import hookimpl
from ilt.models import lid
from ilt.models.base import (
    HFBackbone,
    first_float_param,
    generating_model,
    split_generation_kwargs,
    unwrap_model,
)
from ilt.models.encoder_length import (
    AUDIO_LENGTH,
    DEFAULT_PAD_MULTIPLE,
    PADDED,
    check_options,
)
from ilt.models.scopes import WHISPER_SCOPES
from ilt.models.whisper_io import (
    IGNORE_INDEX,
    WhisperCollator,
    WhisperTextTokenizer,
    check_model_files,
    check_whisper_dir,
    find_language_ids,
    find_multilingual,
    load_whisper_tokenizer,
    readable_pieces,
    resolve_dtype,
)

#: Module leaf names of each LoRA scope (Whisper has no gate/up/down projections).
SCOPE_TARGETS: dict[str, tuple[str, ...]] = WHISPER_SCOPES


_unwrap, _generating, _first_float_param = unwrap_model, generating_model, first_float_param


class WhisperBackbone(HFBackbone):
    """A Whisper model plus its feature extractor and tokenizer.

    LoRA scopes: ``attention`` is q/k/v_proj; ``wide`` adds out_proj, fc1 and
    fc2 (Whisper has no gate/up/down projections).
    """

    name = "whisper"
    family = "Whisper"
    scope_targets = SCOPE_TARGETS

    #: Beam search computes each utterance's cross-attention keys and values
    #: once instead of once per beam (:mod:`ilt.models.whisper_beam`; the same
    #: hypotheses, several times faster). Set to False to decode with plain
    #: ``generate``, for comparison.
    share_cross_attention: bool = True

    #: :meth:`generate` takes one language per row (a batch mixing languages,
    #: as :mod:`ilt.experts.train` decodes), and PEFT's ``adapter_names`` (one
    #: adapter per row), with beam search too.
    per_row_languages: bool = True

    def __init__(self, model: Any, feature_extractor: Any, tokenizer: Any) -> None:
        self.model = model
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        gen = model.generation_config
        # The encoder takes exactly max_source_positions * (conv strides) frames.
        encoder = model.model.encoder
        stride = encoder.conv1.stride[0] * encoder.conv2.stride[0]
        multilingual = find_multilingual(gen, model.config)
        self.collator = WhisperCollator(
            feature_extractor, tokenizer, multilingual=multilingual,
            language_ids=find_language_ids(gen, tokenizer) if multilingual else {},
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
        from transformers import (
            WhisperFeatureExtractor,
            WhisperForConditionalGeneration,
            WhisperTokenizer,
        )

        model_dir = Path(model_dir)
        check_whisper_dir(model_dir)
        check_model_files(model_dir, tokenizer=False)
        model = cls.load_weights(WhisperForConditionalGeneration, model_dir, resolve_dtype(dtype))
        if not (model_dir / "preprocessor_config.json").is_file():
            raise IltInputError(f"{model_dir}: no preprocessor_config.json (the Whisper feature extractor)")
        check_model_files(model_dir, weights=False)
        try:
            feature_extractor = WhisperFeatureExtractor.from_pretrained(model_dir, local_files_only=True)
            tokenizer = WhisperTokenizer.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise IltInputError(f"{model_dir}: cannot load the Whisper tokenizer or feature extractor: {exc}") from None
        return cls(model, feature_extractor, tokenizer).finish_loading(model_dir, device)

    def save_processor(self, out_dir: Path) -> None:
        """The feature extractor and the tokenizer (see :meth:`HFBackbone.save`)."""
        self.feature_extractor.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)

    def lid_modules(self) -> tuple[Any, Any]:
        """Where :mod:`ilt.models.lid` adds its vectors: the encoder (output) and the LM head (input)."""
        return self.model.model.encoder, self.model.proj_out

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

    def tokenize(self, text: str, language: str | None = None) -> list[str]:
        """The byte-level BPE pieces of :meth:`text_ids`, decoded to readable
        text; a piece holding part of a multi-byte character (common in
        ja/ko/th) keeps its byte-level spelling, so distinct tokens stay distinct."""
        return readable_pieces(self.collator.tokenizer, self.text_ids(text, language))

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
        with lid.applied(model, batch.tensors.get("language_ids")):
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
        with torch.inference_mode(), lid.applied(model, [language] * len(seqs)):
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
                 num_beams: int = 1, max_new_tokens: int | Sequence[int] = 440,
                 temperature: float | None = None, loop_tokens: int | None = None,
                 **kwargs: Any) -> list[str]:
        """Transcribe one batch of :meth:`features` output, without timestamps.

        A multilingual model is forced to ``language`` (``None``: it detects the
        language; a list: one language per input); an English-only model
        ignores ``language``. ``adapter_names`` (one PEFT adapter name per
        input, ``"__base__"`` for none) decodes each input with its own LoRA
        of a PEFT model holding several, in one pass. ``temperature``
        > 0 samples instead of searching. ``max_new_tokens`` is one limit for
        the batch or one per input (each hypothesis ends at its own, see
        :mod:`ilt.models.generation`); ``loop_tokens`` ends a hypothesis once its last
        tokens repeat one pattern. Other keyword arguments (for example
        ``length_penalty``, ``no_repeat_ngram_size``) go to ``model.generate``.
        Returns :class:`ilt.models.generation.Hypotheses`: the stripped texts,
        and which token sequences ended in a loop (none with ``loop_tokens``
        ``None``). Raises :class:`IltInputError` for a language the model does
        not know.
        """
        import torch

        from ilt.models.generation import Hypotheses, ended_in_loop

        base = _unwrap(model)
        param = _first_float_param(base)
        features = inputs["input_features"].to(param.device, param.dtype)
        if features.shape[0] == 0:
            return Hypotheses()
        gen_config = copy.deepcopy(base.generation_config)
        gen_config.num_beams = int(num_beams)
        gen_config.max_new_tokens = None
        prompt_len = 4 if self.is_multilingual else 2  # see prompt_ids()
        processors = self._stop_rules(gen_config, features.shape[0], max_new_tokens, prompt_len, loop_tokens)
        whisper_options = self._whisper_options(gen_config, language, temperature, kwargs)
        # with language-ID embeddings, an unknown language is detected first (ilt.models.lid)
        languages = lid.decode_languages(self, model, inputs, language, features.shape[0])
        if languages is not None and self.is_multilingual and language is None:
            whisper_options["language"] = languages
        with torch.inference_mode(), lid.applied(base, languages):
            sequences = self._search(model, features, gen_config, processors, whisper_options,
                                     detect=self.is_multilingual and language is None)
        if not torch.is_tensor(sequences):
            sequences = sequences["sequences"]
        texts = self.tokenizer.batch_decode(sequences, skip_special_tokens=True)
        # Whisper pads a finished row with its end-of-text token
        looped = ended_in_loop(sequences, (self.collator.eos_id, gen_config.pad_token_id), loop_tokens)
        return Hypotheses([t.strip() for t in texts], looped=looped)

    def _whisper_options(self, gen_config: Any, language: str | Sequence[str | None] | None,
                         temperature: float | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments of Whisper's ``generate`` for one call: the
        language and task prompt (none for an English-only model, whose
        ``gen_config`` loses its language attributes), sampling, and the
        caller's ``kwargs`` that ``gen_config`` does not hold.

        :raises IltInputError: a language the model has no token for.
        """
        options: dict[str, Any] = {"return_timestamps": False}
        if self.is_multilingual:
            given = [language] if language is None or isinstance(language, str) else list(language)
            unknown = [lang for lang in given if lang is not None and lang not in self.collator.language_ids]
            if unknown:
                raise IltInputError(f"language {unknown[0]!r} is not supported by this Whisper model")
            if language is not None:  # one for the batch, or one per row
                options["language"] = language if isinstance(language, str) else given
            options["task"] = "transcribe"
        else:
            # English-only: no language token and no language detection.
            for attr in ("lang_to_id", "language", "task"):
                if hasattr(gen_config, attr):
                    delattr(gen_config, attr)
        if temperature is not None and temperature > 0:
            options["temperature"] = float(temperature)
            gen_config.num_beams = 1
        options.update(split_generation_kwargs(gen_config, kwargs))
        if options.get("adapter_names") is not None:  # one PEFT adapter per row (ilt.experts.train)
            # PEFT repeats each row's adapter name for its beams only when num_beams is an argument of generate
            options["num_beams"] = gen_config.num_beams
        return options

    def _search(self, model: Any, features: Any, gen_config: Any, processors: Any,
                whisper_options: dict[str, Any], *, detect: bool) -> Any:
        """Run ``generate``: beam search with the cross-attention shared by
        each utterance's beams (:mod:`ilt.models.whisper_beam`) when it
        applies, else plain ``generate``. ``detect``: the model detects the
        language, which reads the encoder states."""
        base, runner = _unwrap(model), _generating(model)
        shared = (self.share_cross_attention and gen_config.num_beams > 1
                  and base.config._attn_implementation == "sdpa")
        if not shared and self.input_mode == AUDIO_LENGTH:
            # Whisper's generate zero-pads input_features to 30 s before the
            # encoder (``_get_input_segment``): hand it the encoder's output instead
            from transformers.modeling_outputs import BaseModelOutput

            from ilt.models.whisper_beam import adapters_per_row

            with adapters_per_row(runner, whisper_options.get("adapter_names")):  # experts' mixed batches
                hidden = base.model.encoder(features).last_hidden_state
            return runner.generate(encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
                                   generation_config=gen_config, logits_processor=processors, **whisper_options)
        if not shared:
            return runner.generate(input_features=features, generation_config=gen_config,
                                   logits_processor=processors, **whisper_options)
        from ilt.models.whisper_beam import (
            adapters_per_row,
            beam_shared_attention,
            prefill,
        )

        with beam_shared_attention(base):
            with adapters_per_row(runner, whisper_options.get("adapter_names")):
                encoder_outputs, cache = prefill(base, features, keep_encoder_states=detect)
            return runner.generate(encoder_outputs=encoder_outputs, past_key_values=cache,
                                   generation_config=gen_config, logits_processor=processors, **whisper_options)

    def detect_language(self, model: Any, inputs: dict[str, Any]) -> list[str | None]:
        """The language Whisper detects for each input of one :meth:`features`
        batch: its most likely language token after ``<|startoftranscript|>``
        (``generate``'s own detection); ``en`` for an English-only model."""
        import torch

        rows = inputs["input_features"].shape[0]
        if not self.is_multilingual:
            return ["en"] * rows
        base = _unwrap(model)
        param = _first_float_param(base)
        with torch.inference_mode():
            ids = base.detect_language(input_features=inputs["input_features"].to(param.device, param.dtype),
                                       generation_config=base.generation_config,
                                       num_segment_frames=self.num_frames)
        by_id = {v: k for k, v in self.collator.language_ids.items()}
        return [by_id.get(int(i)) for i in ids.tolist()]

    def _stop_rules(self, gen_config: Any, rows: int, max_new_tokens: int | Sequence[int], prompt_len: int,
                    loop_tokens: int | None) -> Any:
        """Set ``gen_config.max_length`` to the largest limit; return the
        logits processors that end each hypothesis at its own limit or in a
        loop (:class:`ilt.models.generation.StopRules`), or ``None`` when not needed."""
        cap = self.max_target_positions - prompt_len
        limits = [int(max_new_tokens)] * rows if isinstance(max_new_tokens, int) else [int(n) for n in max_new_tokens]
        if len(limits) != rows:
            raise ValueError(f"{len(limits)} max_new_tokens for {rows} inputs")
        limits = [max(1, min(n, cap)) for n in limits]
        # Whisper's generate adds the prompt length to max_length itself; giving
        # max_length (not max_new_tokens) avoids a warning on every call when
        # the model's own generation config sets a max_length.
        gen_config.max_length = max(limits)
        if not loop_tokens and min(limits) == gen_config.max_length:
            return None
        from transformers import LogitsProcessorList

        from ilt.models.generation import StopRules

        return LogitsProcessorList([StopRules(limits, prompt_len, self.collator.eos_id, loop_tokens)])



def load_whisper(model_dir: str | Path, *, dtype: Any = None, device: Any = None,
                 tokenizer_only: bool = False, input_mode: str = PADDED,
                 pad_multiple: int = DEFAULT_PAD_MULTIPLE) -> WhisperBackbone | WhisperTextTokenizer:
    """The registered factory: :meth:`WhisperBackbone.from_pretrained`; with
    ``tokenizer_only``, a :class:`WhisperTextTokenizer` (no weights read).

    :param input_mode: ``padded`` (stock Whisper: every input padded to 30 s)
        or ``audio_length`` (the encoder runs on each batch's own length, see
        :mod:`ilt.models.encoder_length`; YAML: ``backbone: {name: whisper,
        input_mode: audio_length}``).
    :param pad_multiple: with ``audio_length``, batches are padded to their
        longest cut rounded up to this many mel frames (100 = 1 s; even;
        default 1000, see :data:`ilt.models.encoder_length.DEFAULT_PAD_MULTIPLE`).
    """
    validate_whisper_options({"input_mode": input_mode, "pad_multiple": pad_multiple})
    if tokenizer_only:
        return WhisperTextTokenizer(load_whisper_tokenizer(model_dir))
    backbone = WhisperBackbone.from_pretrained(model_dir, dtype=dtype, device=device)
    if input_mode == AUDIO_LENGTH:
        backbone.use_audio_length(pad_multiple)
    return backbone


def validate_whisper_options(options: dict[str, Any]) -> None:
    """Check-time validation of the backbone options (``ilt config check``)."""
    check_options(options)


load_whisper.validate = validate_whisper_options


@hookimpl
def ilt_register_backbones(register: Any) -> None:
    register("whisper", load_whisper)


__all__ = ["WhisperBackbone", "load_whisper", "SCOPE_TARGETS"]
