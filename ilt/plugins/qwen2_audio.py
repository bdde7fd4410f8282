"""The Qwen2-Audio backbone: any ``Qwen2AudioForConditionalGeneration`` in a local directory.

Sequences follow Qwen2-Audio's own speech-recognition prompt (the one its
evaluation scripts give the base model)::

    <|audio_bos|> <|AUDIO|> x n <|audio_eos|> Detect the language and recognize the speech: <|en|> text <|endoftext|>

``n`` is the number of frames the audio tower gives for the audio's feature
frames (``Qwen2AudioProcessor`` expands ``<|AUDIO|>`` the same way:
``(((frames - 1) // 2 + 1) - 2) // 2 + 1``, 25 a second). The language tag
names the cut's language; the model reads the sequence without its last token
and the labels are the sequence without its first token with the prompt
positions and the padding masked (-100), so the loss is the mean
cross-entropy over the transcript tokens and the end-of-text token (the
paper's Eq. 1), as for Whisper.

Language unknown at decode time: the prompt ends after "speech: " and
Qwen2-Audio writes the language tag itself before the transcript (its own
language identification); :meth:`Qwen2AudioBackbone.detect_language` reads
that tag, and ``generate`` drops it from the text.

LoRA scopes (PEFT matches module leaf names in both towers): ``attention`` is
q/k/v_proj (the LLM's and the audio tower's); ``wide`` adds the LLM's
o_proj and gate/up/down_proj and the audio tower's out_proj, fc1 and fc2: the
paper's Feedback module list.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ilt.backbone import Batch
from ilt.data.audio import AudioProblem, load_checked
from ilt.data.languages import WHISPER_LANGUAGES
from ilt.errors import IltInputError
from ilt.hookspecs import hookimpl
from ilt.models import lid
from ilt.models.base import (
    HFBackbone,
    first_float_param,
    generating_model,
    read_model_config,
    split_generation_kwargs,
    unwrap_model,
)
from ilt.models.encoder_length import (
    AUDIO_LENGTH,
    DEFAULT_PAD_MULTIPLE,
    PADDED,
    check_options,
    padded_frames,
)
from ilt.models.scopes import QWEN2_AUDIO_SCOPES
from ilt.models.whisper_io import IGNORE_INDEX, readable_pieces, resolve_dtype

#: The instruction of Qwen2-Audio's speech-recognition prompt (the language tag follows it).
INSTRUCTION = "Detect the language and recognize the speech: "
AUDIO_BOS, AUDIO_EOS, END_OF_TEXT = "<|audio_bos|>", "<|audio_eos|>", "<|endoftext|>"

#: Module leaf names of each LoRA scope (matched in the LLM and the audio tower alike).
SCOPE_TARGETS: dict[str, tuple[str, ...]] = QWEN2_AUDIO_SCOPES

#: Feature frames every input is given at least: 2 audio tokens, so the model
#: recognises the prompt as already expanded (consecutive ``<|AUDIO|>``).
MIN_AUDIO_FRAMES = 10

_TAG = re.compile(r"<\|([a-z]{2,3})\|>")
_LEADING_TAG = re.compile(r"^\s*<\|[a-z]{2,3}\|>")
#: Tokens :meth:`Qwen2AudioBackbone.detect_language` lets the model write (the tag, maybe in pieces).
_DETECT_TOKENS = 8


def audio_token_count(frames: int) -> int:
    """The audio tower's output length for ``frames`` feature frames."""
    return (((int(frames) - 1) // 2 + 1) - 2) // 2 + 1


def check_qwen2_audio_dir(model_dir: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a Qwen2-Audio directory, or :class:`IltInputError`
    naming the directory and what it holds instead."""
    return read_model_config(model_dir, "qwen2_audio", "Qwen2-Audio")


def _token_id(tokenizer: Any, token: str) -> int:
    idx = tokenizer.convert_tokens_to_ids(token)
    if idx is None or (idx == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise IltInputError(f"the Qwen2-Audio tokenizer has no {token} token")
    return int(idx)


class Qwen2AudioCollator:
    """Cuts -> :class:`Batch` for one Qwen2-Audio checkpoint, without the model
    (cheap to send to data-loader workers), and the prompts of scoring and
    decoding."""

    def __init__(self, feature_extractor: Any, tokenizer: Any, *, audio_token_id: int, eos_id: int,
                 num_frames: int, max_positions: int) -> None:
        self.feature_extractor, self.tokenizer = feature_extractor, tokenizer
        self.sampling_rate = int(feature_extractor.sampling_rate)
        self.num_frames = int(num_frames)
        self.num_samples = int(num_frames * feature_extractor.hop_length)
        self.max_input_seconds = self.num_samples / self.sampling_rate
        self.max_positions = int(max_positions)
        self.audio_token_id, self.eos_id = int(audio_token_id), int(eos_id)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id)
        self.before_audio = [_token_id(tokenizer, AUDIO_BOS)]
        self.after_audio = [_token_id(tokenizer, AUDIO_EOS)] + self._encode(INSTRUCTION)
        self._tags: dict[str, list[int]] = {}
        #: ``None``: every input padded to the window (stock Qwen2-Audio); else
        #: the batch is padded to its longest cut rounded up to this many frames
        #: (:func:`ilt.models.encoder_length.padded_frames`)
        self.pad_multiple: int | None = None

    def padded_samples(self, arrays: Sequence[np.ndarray]) -> int:
        """How many samples the batch's features cover: the window, or with
        :attr:`pad_multiple` the longest array rounded up to that many frames
        (at least :data:`MIN_AUDIO_FRAMES`)."""
        if self.pad_multiple is None:
            return self.num_samples
        hop = int(self.feature_extractor.hop_length)
        frames = padded_frames([len(a) for a in arrays], hop=hop, window_frames=self.num_frames,
                               multiple=self.pad_multiple)
        return max(frames, MIN_AUDIO_FRAMES + MIN_AUDIO_FRAMES % 2) * hop

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def prompt_ids(self, audio_tokens: int, language: str | None) -> list[int]:
        """The prompt for ``audio_tokens`` audio frames, ending in the language
        tag (``None``: without one, the model writes it).

        :raises IltInputError: a language code ilt does not know.
        """
        ids = self.before_audio + [self.audio_token_id] * int(audio_tokens) + self.after_audio
        if language is None:
            return ids
        if language not in WHISPER_LANGUAGES:
            raise IltInputError(f"language {language!r} is not supported by Qwen2-Audio (no <|{language}|> tag)")
        if language not in self._tags:
            self._tags[language] = self._encode(f"<|{language}|>")
        return ids + self._tags[language]

    def text_ids(self, text: str, language: str | None = None) -> list[int]:
        """Token IDs of a transcript (it follows the language tag directly)."""
        return self._encode(text.strip())

    def features(self, audios: Sequence[np.ndarray], device: Any = None) -> dict[str, Any]:
        """Log-mel features of mono audio, padded (or cut) to the model's
        window (with :attr:`pad_multiple`: to the batch's longest audio, rounded
        up), and the frames that hold audio: ``{"input_features": (B,
        n_mels, frames), "feature_attention_mask": (B, frames)}`` (CPU
        tensors; ``device``: where the STFT runs)."""
        import torch

        arrays = [np.asarray(a, dtype=np.float32).reshape(-1) for a in audios]
        if not arrays:
            return {"input_features": torch.zeros(0, self.feature_extractor.feature_size, self.num_frames),
                    "feature_attention_mask": torch.zeros(0, self.num_frames, dtype=torch.long)}
        out = self.feature_extractor(
            arrays, sampling_rate=self.sampling_rate, return_tensors="pt", padding="max_length",
            max_length=self.padded_samples(arrays), truncation=True, return_attention_mask=True,
            device=str(device) if device is not None else "cpu")
        mask = out["attention_mask"].to(torch.long).cpu()
        mask[:, :MIN_AUDIO_FRAMES] = 1
        return {"input_features": out["input_features"].cpu(), "feature_attention_mask": mask}

    def audio_tokens(self, feature_attention_mask: Any) -> list[int]:
        """Audio frames of each input (from its feature frames)."""
        return [audio_token_count(n) for n in feature_attention_mask.sum(-1).tolist()]

    def teacher_forcing(self, seqs: Sequence[Sequence[int]], prompt_lens: Sequence[int]) -> dict[str, Any]:
        """``input_ids``, ``attention_mask`` (right padding) and ``labels``:
        each sequence shifted by one; the labels of the prompt and of the
        padding are ignored."""
        import torch

        longest = max((len(s) - 1 for s in seqs), default=0)
        input_ids = torch.full((len(seqs), longest), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(seqs), longest), dtype=torch.long)
        labels = torch.full((len(seqs), longest), IGNORE_INDEX, dtype=torch.long)
        for i, (seq, plen) in enumerate(zip(seqs, prompt_lens)):
            n = len(seq) - 1
            input_ids[i, :n] = torch.tensor(seq[:-1])
            attention_mask[i, :n] = 1
            labels[i, plen - 1:n] = torch.tensor(seq[plen:])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def left_padded(self, prompts: Sequence[Sequence[int]]) -> tuple[Any, Any]:
        """``(input_ids, attention_mask)`` of prompts padded on the left, for ``generate``."""
        import torch

        longest = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), longest), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), longest), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            input_ids[i, longest - len(prompt):] = torch.tensor(prompt)
            attention_mask[i, longest - len(prompt):] = 1
        return input_ids, attention_mask

    def _sequence(self, cut: Any, audio_tokens: int) -> tuple[list[int], int] | str:
        """``(sequence, prompt length)`` of a cut, or why it is skipped."""
        sup = cut.supervisions[0] if cut.supervisions else None
        text = (sup.text or "").strip() if sup is not None else ""
        if not text:
            return "empty transcript"
        if not sup.language:
            return "no language"
        try:
            prompt = self.prompt_ids(audio_tokens, sup.language)
        except IltInputError as exc:
            return str(exc)
        seq = prompt + self.text_ids(text, sup.language) + [self.eos_id]
        if len(seq) - 1 > self.max_positions:
            return f"transcript too long: {len(seq) - 1} tokens, the model takes at most {self.max_positions}"
        return seq, len(prompt)

    def __call__(self, cuts: Any) -> Batch:
        """Features, prompts with transcripts and masked labels of a batch of
        cuts. Cuts with an empty transcript, no or an unknown language,
        unreadable, empty, non-finite, silent or over-long audio, or more
        tokens than the model takes are left out and listed in
        ``Batch.skipped`` with the reason."""
        skipped: dict[str, str] = {}
        loaded, audios = [], []
        for cut in cuts:
            problem = self._sequence(cut, 0)  # the text and the language, before reading audio
            if isinstance(problem, str):
                skipped[cut.id] = problem
                continue
            audio = load_checked(cut, self.sampling_rate, reject_silent=True, max_samples=self.num_samples)
            if isinstance(audio, AudioProblem):
                skipped[cut.id] = str(audio)
                continue
            loaded.append(cut)
            audios.append(audio)
        features = self.features(audios)
        seqs, prompt_lens, kept = [], [], []
        for i, (cut, n) in enumerate(zip(loaded, self.audio_tokens(features["feature_attention_mask"]))):
            made = self._sequence(cut, n)
            if isinstance(made, str):
                skipped[cut.id] = made
                continue
            seqs.append(made[0])
            prompt_lens.append(made[1])
            kept.append(i)
        tensors = {k: v[kept] for k, v in features.items()}
        tensors.update(self.teacher_forcing(seqs, prompt_lens))
        languages = [loaded[i].supervisions[0].language for i in kept]
        tensors["language_ids"] = lid.language_ids(languages)
        return Batch(tensors=tensors, cut_ids=[loaded[i].id for i in kept], skipped=skipped, languages=languages)


class Qwen2AudioBackbone(HFBackbone):
    """A Qwen2-Audio model plus its processor (Whisper feature extractor and Qwen2 tokenizer).

    LoRA scopes (matched in the LLM and the audio tower alike): ``attention``
    is q/k/v_proj; ``wide`` also o_proj, gate/up/down_proj, out_proj, fc1, fc2.
    """

    name = "qwen2_audio"
    family = "Qwen2-Audio"
    scope_targets = SCOPE_TARGETS

    def __init__(self, model: Any, processor: Any) -> None:
        self.model, self.processor = model, processor
        tokenizer = processor.tokenizer
        gen = model.generation_config
        eos = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
        if eos is None or eos == tokenizer.unk_token_id and tokenizer.unk_token != END_OF_TEXT:
            gen_eos = gen.eos_token_id
            eos = (gen_eos[0] if isinstance(gen_eos, (list, tuple)) else gen_eos) or tokenizer.eos_token_id
        audio = model.config.audio_config
        self.collator = Qwen2AudioCollator(
            processor.feature_extractor, tokenizer, audio_token_id=model.config.audio_token_id, eos_id=int(eos),
            num_frames=audio.max_source_positions * 2,  # conv2 has stride 2
            max_positions=model.config.text_config.max_position_embeddings)
        self.tokenizer = tokenizer
        self.sampling_rate: int = self.collator.sampling_rate
        self.max_input_seconds: float = self.collator.max_input_seconds

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, *, dtype: Any = None, device: Any = None) -> "Qwen2AudioBackbone":
        """Load a Qwen2-Audio model and its processor from a local directory
        (``dtype``: torch dtype or name, default float32; ``device``: default CPU)."""
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

        model_dir = Path(model_dir)
        check_qwen2_audio_dir(model_dir)
        model = cls.load_weights(Qwen2AudioForConditionalGeneration, model_dir, resolve_dtype(dtype))
        try:
            processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise IltInputError(f"{model_dir}: cannot load the Qwen2-Audio processor: {exc}") from None
        return cls(model, processor).finish_loading(model_dir, device)

    def save_processor(self, out_dir: Path) -> None:
        """The processor: feature extractor and tokenizer (see :meth:`HFBackbone.save`)."""
        self.processor.save_pretrained(out_dir)

    def lid_modules(self) -> tuple[Any, Any]:
        """Where :mod:`ilt.models.lid` adds its vectors: the audio tower (output, before
        the projector) and the LM head (input)."""
        return self.model.model.audio_tower, self.model.lm_head

    @property
    def languages(self) -> list[str]:
        """Language codes the prompt can name (Qwen2-Audio's tags follow Whisper's codes)."""
        return sorted(WHISPER_LANGUAGES)

    def tokenize(self, text: str, language: str | None = None) -> list[str]:
        """The BPE pieces of :meth:`text_ids` as readable text (byte-level
        spelling for pieces holding part of a character)."""
        return readable_pieces(self.tokenizer, self.text_ids(text, language))

    def _forward(self, model: Any, tensors: dict[str, Any], languages: Any) -> Any:
        """Logits of a teacher-forced batch, with the language-ID vectors of ``languages``."""
        param = first_float_param(model)
        with lid.applied(model, languages):
            return model(input_ids=tensors["input_ids"].to(param.device),
                         attention_mask=tensors["attention_mask"].to(param.device),
                         input_features=tensors["input_features"].to(param.device, param.dtype),
                         feature_attention_mask=tensors["feature_attention_mask"].to(param.device),
                         use_cache=False).logits

    def loss(self, model: Any, batch: Batch, *, label_smoothing: float = 0.0) -> Any:
        """Mean token cross-entropy over the transcript tokens (the unmasked
        labels); only those positions' logits are cast to fp32."""
        import torch
        import torch.nn.functional as F

        param = first_float_param(model)
        labels = batch.tensors["labels"].to(param.device)
        mask = labels != IGNORE_INDEX
        if labels.numel() == 0 or not bool(mask.any()):
            return torch.zeros((), device=param.device, requires_grad=True)
        logits = self._forward(model, batch.tensors, batch.tensors.get("language_ids"))
        return F.cross_entropy(logits[mask].float(), labels[mask], label_smoothing=label_smoothing)

    def score(self, model: Any, inputs: dict[str, Any], texts: Sequence[str], *,
              language: str | None) -> list[tuple[float, int]]:
        """``(mean log-probability, tokens)`` of each text given its audio,
        teacher-forced over the tokens training would use (the transcript and
        the end of text, after the prompt in ``language``; ``None``: the
        prompt without a tag). An empty text scores the end of text alone."""
        import torch

        if not texts:
            return []
        seqs, plens = [], []
        for n, text in zip(self.collator.audio_tokens(inputs["feature_attention_mask"]), texts):
            prompt = self.collator.prompt_ids(n, language)
            body = self.text_ids(text, language) if text.strip() else []
            seqs.append((prompt + body)[:self.collator.max_positions] + [self.collator.eos_id])
            plens.append(len(prompt))
        tensors = {**inputs, **self.collator.teacher_forcing(seqs, plens)}
        with torch.inference_mode():
            logits = self._forward(model, tensors, [language] * len(seqs))
            labels = tensors["labels"].to(logits.device)
            mask = labels != IGNORE_INDEX
            logp = torch.log_softmax(logits.float(), dim=-1)
            token = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask
            counts = mask.sum(dim=1)
            means = (token.sum(dim=1) / counts.clamp(min=1)).tolist()
        return [(float(m), int(n)) for m, n in zip(means, counts.tolist())]

    # ------------------------------------------------------------------ decoding

    def _generation_config(self, base: Any, num_beams: int, temperature: float | None,
                           kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """The generation config of one call (search, not the checkpoint's
        sampling defaults) and the keyword arguments it does not hold."""
        gen = copy.deepcopy(base.generation_config)
        gen.num_beams, gen.do_sample = int(num_beams), False
        gen.temperature = gen.top_k = gen.top_p = None
        gen.repetition_penalty = 1.0
        if temperature is not None and temperature > 0:
            gen.num_beams, gen.do_sample, gen.temperature = 1, True, float(temperature)
        eos = gen.eos_token_id if isinstance(gen.eos_token_id, (list, tuple)) else [gen.eos_token_id]
        gen.eos_token_id = list(dict.fromkeys([self.collator.eos_id, *(e for e in eos if e is not None)]))
        gen.pad_token_id = self.collator.pad_id
        return gen, split_generation_kwargs(gen, kwargs)

    def _run(self, model: Any, inputs: dict[str, Any], languages: Sequence[str | None], gen: Any,
             limits: Sequence[int], loop_tokens: int | None, extra: dict[str, Any]) -> list[list[int]]:
        """Generated token IDs (prompt removed) of each input, prompted in its language."""
        import torch
        from transformers import LogitsProcessorList

        from ilt.models.generation import StopRules

        base, runner = unwrap_model(model), generating_model(model)
        param = first_float_param(base)
        prompts = [self.collator.prompt_ids(n, lang)
                   for n, lang in zip(self.collator.audio_tokens(inputs["feature_attention_mask"]), languages)]
        input_ids, attention_mask = self.collator.left_padded(prompts)
        gen.max_new_tokens = max(limits)
        processors = None
        if loop_tokens or min(limits) != max(limits):
            processors = LogitsProcessorList([StopRules(limits, input_ids.shape[1], self.collator.eos_id,
                                                        loop_tokens)])
        with torch.inference_mode(), lid.applied(base, languages):
            out = runner.generate(input_ids=input_ids.to(param.device),
                                  attention_mask=attention_mask.to(param.device),
                                  input_features=inputs["input_features"].to(param.device, param.dtype),
                                  feature_attention_mask=inputs["feature_attention_mask"].to(param.device),
                                  generation_config=gen, logits_processor=processors, **extra)
        sequences = out if torch.is_tensor(out) else out["sequences"]
        return sequences[:, input_ids.shape[1]:].tolist()

    def detect_language(self, model: Any, inputs: dict[str, Any]) -> list[str | None]:
        """The language tag Qwen2-Audio writes (greedy) after the prompt without
        one, per input; ``None`` where it writes none ilt knows."""
        rows = inputs["input_features"].shape[0]
        gen, extra = self._generation_config(unwrap_model(model), 1, None, {})
        generated = self._run(model, inputs, [None] * rows, gen, [_DETECT_TOKENS] * rows, None, extra)
        found = []
        for ids in generated:
            match = _TAG.search(self.tokenizer.decode(ids, skip_special_tokens=False))
            found.append(match.group(1) if match and match.group(1) in WHISPER_LANGUAGES else None)
        return found

    def generate(self, model: Any, inputs: dict[str, Any], *, language: str | None,
                 num_beams: int = 1, max_new_tokens: int | Sequence[int] = 440,
                 temperature: float | None = None, loop_tokens: int | None = None,
                 **kwargs: Any) -> list[str]:
        """Transcribe one batch of :meth:`features` output.

        The prompt names ``language``; with ``None`` the model writes the tag
        itself (or, with language-ID embeddings, :meth:`detect_language` picks
        it first and the prompt names it). ``max_new_tokens``: one limit, or
        one per input (:mod:`ilt.models.generation`); ``loop_tokens`` ends a looping
        hypothesis; ``temperature`` > 0 samples. Other keyword arguments go to
        the generation config or ``generate``. Returns
        :class:`ilt.models.generation.Hypotheses`: the texts, and which token
        sequences ended in a loop (none with ``loop_tokens`` ``None``).

        :raises IltInputError: a language ilt does not know.
        """
        from ilt.models.generation import Hypotheses, ended_in_loop

        rows = inputs["input_features"].shape[0]
        if rows == 0:
            return Hypotheses()
        if language is not None and language not in WHISPER_LANGUAGES:
            raise IltInputError(f"language {language!r} is not supported by Qwen2-Audio (no <|{language}|> tag)")
        limits = [int(max_new_tokens)] * rows if isinstance(max_new_tokens, int) else [int(n) for n in max_new_tokens]
        if len(limits) != rows:
            raise ValueError(f"{len(limits)} max_new_tokens for {rows} inputs")
        languages = lid.decode_languages(self, model, inputs, language, rows) or [language] * rows
        gen, extra = self._generation_config(unwrap_model(model), num_beams, temperature, kwargs)
        generated = self._run(model, inputs, languages, gen, [max(1, n) for n in limits], loop_tokens, extra)
        texts = self.tokenizer.batch_decode(generated, skip_special_tokens=True)
        # a finished row ends in one of gen's end-of-text tokens, then gen's padding
        looped = ended_in_loop(generated, [*gen.eos_token_id, gen.pad_token_id], loop_tokens)
        return Hypotheses([(_LEADING_TAG.sub("", t) if lang is None else t).strip()
                           for t, lang in zip(texts, languages)], looped=looped)

class Qwen2AudioTextTokenizer:
    """Only the tokenizer of a Qwen2-Audio directory (``tokenizer_only=True``):
    :meth:`tokenize` as the backbone does it, without reading the weights."""

    name = "qwen2_audio"
    model = None

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def text_ids(self, text: str, language: str | None = None) -> list[int]:
        return list(self.tokenizer.encode(text.strip(), add_special_tokens=False))

    def tokenize(self, text: str, language: str | None = None) -> list[str]:
        """See :meth:`Qwen2AudioBackbone.tokenize`."""
        return readable_pieces(self.tokenizer, self.text_ids(text, language))


def load_qwen2_audio(model_dir: str | Path, *, dtype: Any = None, device: Any = None,
                     tokenizer_only: bool = False, input_mode: str = PADDED,
                     pad_multiple: int = DEFAULT_PAD_MULTIPLE) -> Qwen2AudioBackbone | Qwen2AudioTextTokenizer:
    """The registered factory: :meth:`Qwen2AudioBackbone.from_pretrained`; with
    ``tokenizer_only``, a :class:`Qwen2AudioTextTokenizer` (no weights read).

    :param input_mode: ``padded`` (stock: every input padded to 30 s) or
        ``audio_length`` (the audio tower runs on each batch's own length,
        see :mod:`ilt.models.encoder_length`).
    :param pad_multiple: with ``audio_length``, batches are padded to their
        longest cut rounded up to this many mel frames (100 = 1 s; even;
        default 1000, see :data:`ilt.models.encoder_length.DEFAULT_PAD_MULTIPLE`).
    """
    check_options({"input_mode": input_mode, "pad_multiple": pad_multiple})
    if tokenizer_only:
        from transformers import AutoTokenizer

        check_qwen2_audio_dir(model_dir)
        try:
            return Qwen2AudioTextTokenizer(AutoTokenizer.from_pretrained(model_dir, local_files_only=True))
        except (OSError, ValueError) as exc:
            raise IltInputError(f"{model_dir}: cannot load the Qwen2-Audio tokenizer: {exc}") from None
    backbone = Qwen2AudioBackbone.from_pretrained(model_dir, dtype=dtype, device=device)
    if input_mode == AUDIO_LENGTH:
        backbone.use_audio_length(pad_multiple)
    return backbone


load_qwen2_audio.validate = check_options


@hookimpl
def ilt_register_backbones(register: Any) -> None:
    register("qwen2_audio", load_qwen2_audio)


__all__ = ["Qwen2AudioBackbone", "Qwen2AudioCollator", "Qwen2AudioTextTokenizer", "load_qwen2_audio",
           "check_qwen2_audio_dir", "audio_token_count", "INSTRUCTION", "SCOPE_TARGETS"]
