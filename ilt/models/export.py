"""Export a Hugging Face Whisper (an ILT model) for CTranslate2 and faster-whisper.

faster-whisper cannot load LoRA adapters, and ``ilt merge`` writes full
Hugging Face models; :func:`export_ct2` turns one into a CTranslate2 model
directory with CTranslate2's own Transformers converter. The glue here:

* the files CTranslate2 and faster-whisper read besides ``model.bin``:
  ``tokenizer.json`` (faster-whisper would otherwise fetch a tokenizer from
  the hub) and ``preprocessor_config.json`` (the mel settings);
* the output is written atomically (a temporary directory, renamed when
  complete) and loaded back by ``ctranslate2.models.Whisper`` before the rename;
* ``export.json`` (the source model's identity, the quantization, versions),
  the source's ``lineage.json`` and a model card ``README.md``.

:class:`Ct2Whisper` decodes with the exported model through
:func:`ilt.asr.decode.decode_cuts` (same features, prompts, chunking and output
files as ``ilt decode``), for round trips and benchmarks. CTranslate2 halves
its ``max_length`` for Whisper (``whisper.cc``: ``decoding_options.max_length
= options.max_length / 2``), so ``max_new_tokens`` is passed doubled.

Input mode (:mod:`ilt.models.encoder_length`): CTranslate2's Whisper (4.8.5)
takes features shorter than 30 s (a multiple of 2 frames, at most 3000) and
runs its encoder on them, adding the first positional embeddings, exactly as
``input_mode: audio_length`` does (its encoder output equals ours within
6e-5, and its greedy text equals ``ilt decode``'s). faster-whisper's
``transcribe`` always pads to 30 s (``pad_or_trim``), so a model trained on
the audio's length is decoded there padded: the export records the model's
input mode in ``export.json`` and says so in one line; :class:`Ct2Whisper`
decodes in the recorded mode unless told otherwise.
"""

from __future__ import annotations

import datetime
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ilt import __version__
from ilt.core.files import atomic_dir, log, read_json, write_json_atomic
from ilt.errors import IltInputError
from ilt.models.convert import (
    language_token_ids,
    load_tokenizer_file,
    special_token_ids,
)
from ilt.models.encoder_length import AUDIO_LENGTH, DEFAULT_PAD_MULTIPLE, INPUT_MODES
from ilt.models.lineage import LINEAGE_JSON, model_identity, trained_input_mode
from ilt.models.modelcard import write_card
from ilt.models.whisper_io import WhisperCollator, check_whisper_dir

#: CTranslate2 weight types ``--quantization`` accepts.
QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16",
                 "float32")
#: Files copied beside ``model.bin`` (tokenizer.json is required).
CT2_FILES = ("tokenizer.json", "preprocessor_config.json")
EXPORT_JSON = "export.json"
#: Whisper's decoder length when ``export.json`` does not say.
DEFAULT_MAX_TARGET_POSITIONS = 448


def _require_ctranslate2() -> Any:
    try:
        import ctranslate2
    except ImportError:
        raise IltInputError("ilt export ct2 needs CTranslate2: pip install 'ilt[export]' "
                            "(ctranslate2 and faster-whisper)") from None
    return ctranslate2


def _check_export(model_dir: Path, out_dir: Path, quantization: str, overwrite: bool) -> dict[str, Any]:
    config = check_whisper_dir(model_dir)
    if quantization not in QUANTIZATIONS:
        raise IltInputError(f"--quantization {quantization!r}: use one of {', '.join(QUANTIZATIONS)}")
    if not (model_dir / "tokenizer.json").is_file():
        raise IltInputError(f"{model_dir}: no tokenizer.json; faster-whisper needs it beside the model "
                            f"(save the tokenizer with transformers, or re-run `ilt merge`)")
    if out_dir.resolve() == model_dir.resolve():
        raise IltInputError(f"{out_dir}: the export must go to a new directory, not the model's own")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise IltInputError(f"{out_dir}: exists and is not empty; choose another OUT or pass --overwrite")
    return config


def _hf_multilingual(model_dir: Path, config: dict[str, Any]) -> bool:
    """Whether the Hugging Face Whisper takes language tokens (as its backbone decides)."""
    gen = read_json(model_dir / "generation_config.json") or {}
    if gen.get("is_multilingual") is not None:
        return bool(gen["is_multilingual"])
    return int(config.get("vocab_size") or 0) >= 51865


def export_ct2(model_dir: str | Path, out_dir: str | Path, *, quantization: str = "float16",
               overwrite: bool = False, license_: str | None = None) -> Path:
    """Convert the Hugging Face Whisper in ``model_dir`` into a CTranslate2
    model directory ``out_dir`` (written atomically) and return ``out_dir``.

    :param quantization: CTranslate2 weight type (:data:`QUANTIZATIONS`);
        ``float16`` is what faster-whisper's published models use, and
        CTranslate2 converts weights again at load time (``compute_type``).
    :param overwrite: replace an existing non-empty ``out_dir``.
    :param license_: the card's license (default: the base model's).
    :raises IltInputError: not a Whisper directory, no tokenizer.json, an
        unknown quantization, an existing output, CTranslate2 missing.
    """
    ctranslate2 = _require_ctranslate2()
    from ctranslate2.converters import TransformersConverter

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    config = _check_export(model_dir, out_dir, quantization, overwrite)
    start = time.perf_counter()
    copy = [name for name in CT2_FILES if (model_dir / name).is_file()]
    identity = model_identity(model_dir)
    with atomic_dir(out_dir) as tmp:
        TransformersConverter(str(model_dir), copy_files=copy).convert(str(tmp), quantization=quantization,
                                                                        force=True)
        loaded = ctranslate2.models.Whisper(str(tmp), device="cpu")  # it must load before it is published
        multilingual = _hf_multilingual(model_dir, config)
        if bool(loaded.is_multilingual) != multilingual:
            log.warning("%s: CTranslate2 %s reads this %s Whisper as %s", model_dir, ctranslate2.__version__,
                        "multilingual" if multilingual else "English-only",
                        "multilingual" if loaded.is_multilingual else "English-only")
        info = {
            "format": "CTranslate2",
            "quantization": quantization,
            "source": identity,
            "multilingual": multilingual,
            "max_target_positions": int(config.get("max_target_positions") or DEFAULT_MAX_TARGET_POSITIONS),
            "input_mode": trained_input_mode(model_dir)[0],
            "ctranslate2_version": ctranslate2.__version__,
            "ilt_version": __version__,
            "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        del loaded
        if info["input_mode"] == AUDIO_LENGTH:
            log.warning("%s was trained with input_mode audio_length: CTranslate2 takes shorter features "
                        "(ilt.models.export.Ct2Whisper decodes so), but faster-whisper's transcribe pads every "
                        "input to 30 s, which this model was not trained on", model_dir)
        write_json_atomic(tmp / EXPORT_JSON, info)
        if (model_dir / LINEAGE_JSON).is_file():
            shutil.copyfile(model_dir / LINEAGE_JSON, tmp / LINEAGE_JSON)
        write_card(model_dir, tmp, name=out_dir.resolve().name, library="ctranslate2", export=info,
                   license_=license_, tags=["ctranslate2", "faster-whisper"])
    log.info("exported %s -> %s (CTranslate2 %s) in %.1f s", model_dir, out_dir, quantization,
             time.perf_counter() - start)
    return out_dir


def loop_end(tokens: Sequence[int], min_tokens: int) -> int | None:
    """The shortest prefix length ``t`` at which ``tokens[:t]`` ends in a loop
    by :func:`ilt.models.generation.looping_rows`' rule (its last ``max(min_tokens,
    3 p)`` tokens repeat a pattern of ``p`` tokens), or ``None``."""
    from ilt.models.generation import MAX_LOOP_PERIOD

    seq = np.asarray(tokens)
    best = None
    for period in range(1, MAX_LOOP_PERIOD + 1):
        span = max(int(min_tokens), 3 * period)
        if span > len(seq):
            break
        # same[j]: token j + period repeats token j; run[j]: how many such in a row end at j
        same = seq[period:] == seq[:-period]
        index = np.arange(len(same))
        run = index - np.maximum.accumulate(np.where(same, -1, index))
        hits = np.flatnonzero(run >= span - period)
        if hits.size:
            t = int(hits[0]) + period + 1
            best = t if best is None else min(best, t)
    return best


def stop_where_rules_would(tokens: list[int], limit: int, loop_tokens: int | None) -> list[int]:
    """``tokens`` cut where :class:`ilt.models.generation.StopRules` would have
    forced end-of-text: after ``limit`` tokens, or once the text loops."""
    tokens = tokens[:limit]
    end = loop_end(tokens, loop_tokens) if loop_tokens else None
    return tokens[:end] if end is not None else tokens


class Ct2Whisper:
    """A CTranslate2 Whisper directory (from :func:`export_ct2`) with the parts
    of the :class:`ilt.backbone.Backbone` protocol that decoding uses
    (``features``, ``generate``, ``sampling_rate``, ``max_input_seconds``), so
    :func:`ilt.asr.decode.decode_cuts` runs it exactly as it runs ``ilt decode``.

    Features and prompts come from :class:`ilt.models.whisper_io.WhisperCollator`
    built from the exported tokenizer and feature extractor: the same inputs
    as the Hugging Face model gets.
    """

    name = "ct2-whisper"

    def __init__(self, ct2_dir: str | Path, *, device: str = "cpu", compute_type: str = "default",
                 inter_threads: int = 1, intra_threads: int = 0, input_mode: str | None = None,
                 pad_multiple: int = DEFAULT_PAD_MULTIPLE) -> None:
        ctranslate2 = _require_ctranslate2()
        from transformers import WhisperFeatureExtractor

        ct2_dir = Path(ct2_dir)
        if not (ct2_dir / "model.bin").is_file():
            raise IltInputError(f"{ct2_dir}: not a CTranslate2 model directory (no model.bin)")
        self.model = ctranslate2.models.Whisper(str(ct2_dir), device=device, compute_type=compute_type,
                                                inter_threads=inter_threads, intra_threads=intra_threads)
        self.tokenizer = load_tokenizer_file(ct2_dir / "tokenizer.json")
        feature_extractor = WhisperFeatureExtractor.from_pretrained(ct2_dir, local_files_only=True)
        info = read_json(ct2_dir / EXPORT_JSON) or {}
        multilingual = bool(info.get("multilingual", self.model.is_multilingual))
        self.collator = WhisperCollator(
            feature_extractor, self.tokenizer, multilingual=multilingual,
            language_ids={tok.strip("<|>"): i for tok, i in language_token_ids(self.tokenizer).items()}
            if multilingual else {},
            decoder_start_token_id=special_token_ids(self.tokenizer)["sot"],
            num_frames=feature_extractor.nb_max_frames,
            max_target_positions=int(info.get("max_target_positions") or DEFAULT_MAX_TARGET_POSITIONS))
        self.sampling_rate: int = self.collator.sampling_rate
        self.max_input_seconds: float = self.collator.max_input_seconds
        #: ``padded`` or ``audio_length``: given, else what ``export.json`` recorded
        self.input_mode = str(input_mode or info.get("input_mode") or "padded")
        if self.input_mode not in INPUT_MODES:
            raise IltInputError(f"input_mode {self.input_mode!r}: use one of {', '.join(INPUT_MODES)}")
        if self.input_mode == AUDIO_LENGTH:  # CTranslate2's encoder takes the shorter features as they are
            self.collator.pad_multiple = int(pad_multiple)

    def features(self, audios: Sequence[np.ndarray]) -> dict[str, Any]:
        """Log-mel features, as the Hugging Face backbone computes them."""
        return self.collator.features(audios)

    def generate_ids(self, inputs: dict[str, Any], *, language: str | None, num_beams: int = 1,
                     max_new_tokens: int | Sequence[int] = 440, temperature: float | None = None,
                     length_penalty: float | None = None, no_repeat_ngram_size: int | None = None,
                     loop_tokens: int | None = None, **_: Any) -> list[list[int]]:
        """Token IDs (without the prompt and end of text) of one batch.

        ``max_new_tokens`` (one limit, or one per input) and ``loop_tokens``
        end hypotheses as :class:`ilt.models.generation.StopRules` does in the
        Hugging Face backbone; CTranslate2 has no per-row rule, so the batch
        runs to its longest limit and each hypothesis is cut where the rule
        would have ended it (exactly the same result under greedy search).
        """
        import ctranslate2

        features = np.ascontiguousarray(np.asarray(inputs["input_features"], dtype=np.float32))
        if features.shape[0] == 0:
            return []
        prompt = self.collator.prompt_ids(language)
        room = self.collator.max_target_positions - len(prompt)
        limits = ([int(max_new_tokens)] * len(features) if isinstance(max_new_tokens, (int, np.integer))
                  else [int(n) for n in max_new_tokens])
        if len(limits) != len(features):
            raise ValueError(f"{len(limits)} max_new_tokens for {len(features)} inputs")
        limits = [max(1, min(n, room)) for n in limits]
        options: dict[str, Any] = {"beam_size": int(num_beams), "max_length": 2 * max(limits)}
        if length_penalty is not None:
            options["length_penalty"] = float(length_penalty)
        if no_repeat_ngram_size:
            options["no_repeat_ngram_size"] = int(no_repeat_ngram_size)
        if temperature is not None and temperature > 0:
            options.update(beam_size=1, sampling_topk=0, sampling_temperature=float(temperature))
        results = self.model.generate(ctranslate2.StorageView.from_array(features), [prompt] * len(features),
                                      **options)
        return [stop_where_rules_would(list(r.sequences_ids[0]), limit, loop_tokens)
                for r, limit in zip(results, limits)]

    def generate(self, model: Any, inputs: dict[str, Any], *, language: str | None, **options: Any) -> list[str]:
        """Hypothesis texts of one batch (``model`` is ignored: it is :attr:`model`)."""
        ids = self.generate_ids(inputs, language=language, **options)
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def score(self, model: Any, inputs: dict[str, Any], texts: Sequence[str], *,
              language: str | None) -> list[tuple[float, int]]:
        raise IltInputError("a CTranslate2 export does not score hypotheses; decode with the "
                            "Hugging Face model for --scores")
