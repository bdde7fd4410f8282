"""Batched decoding of Lhotse cuts through any backbone.

* Cuts are grouped by the language of their first supervision; each group is
  decoded with that language forced and the beam size
  ``DecodeConfig.beam_for(language)``.
* Within a group, cuts are sorted by duration and decoded ``batch_size`` at a
  time, so a batch holds audio of similar length; with ``max_batch_seconds``,
  a batch also holds at most that much padded audio (:func:`bounded_batches`).
* :func:`decode_files` shards the cuts over the processes of ``accelerate
  launch`` (or torchrun), reading the manifest as a stream, and resumes a
  killed run from a journal of finished cuts that every process reads,
  whatever number of processes wrote it (:func:`decode_journal`).
* Audio longer than the window (``chunk_seconds``, at most the backbone's
  ``max_input_seconds``) is split evenly into ``ceil(duration / window)``
  chunks; their hypotheses are joined with a space (without one for languages
  written without spaces).
* Repetition-loop guard: a chunk whose hypothesis has a gzip compression ratio
  above ``compression_ratio_threshold``, or whose token sequence the backbone
  flags as ending in a loop (:class:`ilt.models.generation.Hypotheses`: a loop
  the loop stop ended may be whitespace, stripped from the text, or too short
  to raise the ratio), is decoded again by sampling at each
  ``fallback_temperatures`` in turn (seeded) until one passes; the result
  kept is one that does not loop, if any, and of those the lowest ratio.
* Unreadable, empty or non-finite audio (:func:`ilt.data.audio.load_checked`)
  and unsupported languages are counted, logged skips.
* ``quantize: int8`` (decoding only, on a CPU): :func:`decode_files` replaces
  the model's Linear layers by dynamically quantized int8 ones after loading
  it (:func:`quantize_for_decoding`); ``decode_stats.json`` records what the
  model decoded with under ``numerics`` (:func:`model_numerics`).

Only the :class:`ilt.backbone.Backbone` protocol is used (``features``,
``generate``, ``sampling_rate``, ``max_input_seconds``).

The batch loop is the public :class:`Decoder` (``Decoder(backbone, model,
config).decode_batches(cuts)``): :func:`decode_cuts` and :func:`decode_files`
decode through it, and so do LoRA experts (:class:`ilt.experts.train.ExpertDecoder`,
a subclass), pseudo-labels, hard cases and Track 2 (through :func:`decode_files`).
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ilt.config import DecodeConfig, dump_yaml
from ilt.core.files import log, write_json_atomic, write_text_atomic
from ilt.core.runtime import Skips, process_state
from ilt.data.audio import AudioProblem, load_checked, load_checked_head
from ilt.data.languages import NO_SPACE_LANGUAGES
from ilt.errors import IltInputError
from ilt.models.generation import Hypotheses

#: Base seed of the sampling fallback (one seed per temperature step).
FALLBACK_SEED = 1234


def compression_ratio(text: str) -> float:
    """``len(utf8) / len(zlib(utf8))``: high for repetition loops (0 for empty text)."""
    data = text.encode("utf-8")
    if not data:
        return 0.0
    return len(data) / len(zlib.compress(data))


def split_evenly(audio: np.ndarray, sampling_rate: int, window_seconds: float) -> list[np.ndarray]:
    """Split ``audio`` into ``ceil(duration / window)`` chunks of equal length."""
    window = int(round(window_seconds * sampling_rate))
    n = max(1, math.ceil(audio.shape[-1] / window)) if window > 0 else 1
    return list(np.array_split(audio, n)) if n > 1 else [audio]


def join_chunks(texts: Sequence[str], language: str | None) -> str:
    """Join chunk hypotheses: with a space, or without one for :data:`NO_SPACE_LANGUAGES`."""
    sep = "" if language in NO_SPACE_LANGUAGES else " "
    return sep.join(t.strip() for t in texts if t.strip())


@dataclass
class DecodeStats:
    """Counters of one decoding run."""

    cuts: int = 0
    chunks: int = 0
    audio_seconds: float = 0.0
    #: chunks whose first hypothesis the backbone flagged as ending in a loop (``loop_tokens``)
    loop_stopped: int = 0
    fallback_chunks: int = 0
    fallback_decodes: int = 0
    still_looping: int = 0
    seconds: float = 0.0
    skips: dict[str, int] = field(default_factory=dict)
    #: ``language: detect`` only: cuts detected, how many differ from their own language, and as what
    language_detection: dict[str, Any] | None = None
    #: what the model decoded with (:func:`model_numerics`): weight dtype, int8-quantized Linear layers
    numerics: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["real_time_factor"] = self.seconds / self.audio_seconds if self.audio_seconds else None
        return out


def _supervision(cut: Any) -> Any:
    return cut.supervisions[0] if cut.supervisions else None


def cut_language(cut: Any) -> str | None:
    """The language of ``cut``'s first supervision, as given (``None``: none)."""
    sup = _supervision(cut)
    return sup.language if sup is not None and sup.language else None


def _accent(cut: Any) -> str | None:
    sup = _supervision(cut)
    custom = (sup.custom or {}) if sup is not None else {}
    return custom.get("accent")


#: A cut loaded for decoding (:meth:`Decoder.load_batch`): ``(cut, its audio chunks, its duration in seconds)``.
Loaded = tuple[Any, list[np.ndarray], float]


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def bounded_batches(cuts: Sequence[Any], size: int, max_seconds: float | None = None) -> list[list[Any]]:
    """``cuts`` (sorted by duration) in order, cut into batches of at most
    ``size`` cuts and, unless ``max_seconds`` is ``None``, at most
    ``max_seconds`` of padded audio: the batch's cut count times its longest
    cut's duration (each row of a batch is padded to the longest). A cut
    longer than ``max_seconds`` alone makes a batch of one."""
    if max_seconds is None:
        return [list(batch) for batch in _batches(cuts, size)]
    out: list[list[Any]] = []
    batch: list[Any] = []
    longest = 0.0
    for cut in cuts:
        grown = max(longest, float(cut.duration))
        if batch and (len(batch) >= size or (len(batch) + 1) * grown > max_seconds):
            out.append(batch)
            batch, grown = [], float(cut.duration)
        batch.append(cut)
        longest = grown
    if batch:
        out.append(batch)
    return out


class UnsupportedLanguage(IltInputError):
    """The backbone refused a batch's language (:meth:`Decoder.decode_batch`): the
    batch's cuts are counted skips already, and :meth:`Decoder.decode_batches`
    skips the rest of the batch's group without loading it."""


class Decoder:
    """Decodes cuts with one model and one :class:`ilt.config.DecodeConfig`: the
    batch loop that plain decoding (:func:`decode_cuts`, :func:`decode_files`),
    LoRA experts (:class:`ilt.experts.train.ExpertDecoder`), pseudo-labels,
    hard cases and Track 2 all decode through.

    :meth:`decode_batches` groups the cuts by :meth:`group_key`, sorts each
    group by duration and decodes it ``batch_size`` cuts at a time
    (:meth:`decode_batch`: :meth:`load_batch`, :meth:`decode`, :meth:`score`,
    :meth:`records`). Counts go to :attr:`stats`, skipped cuts to :attr:`skips`.

    A subclass may change what language a cut decodes in (:meth:`language`),
    which cuts share a batch (:meth:`group_key`) and how one batch decodes
    (:meth:`decode_batch`).

    :param model: the model to decode with (``None``: ``backbone.model``).
    :param scores: give each record its confidence (see :func:`decode_cuts`).
    :param mix_languages: a batch may hold cuts of several languages, each row
        decoded in its own (backbones with ``per_row_languages``); batches
        still hold one beam size.
    """

    def __init__(self, backbone: Any, model: Any, config: DecodeConfig, *, scores: bool = False,
                 mix_languages: bool = False) -> None:
        self.backbone = backbone
        self.model = backbone.model if model is None else model
        self.config = config
        self.scores = scores
        self.mix_languages = mix_languages
        self.stats = DecodeStats(numerics=model_numerics(self.model))
        self.skips = Skips("decode")
        self.sampling_rate = int(backbone.sampling_rate)
        #: the longest piece of audio decoded at once (longer audio is split evenly)
        self.window = min(float(config.chunk_seconds), float(backbone.max_input_seconds))
        #: cut ID -> the language the cut decodes in instead of its own (:meth:`detect_languages`)
        self.languages: dict[str, str | None] | None = None

    # ----------------------------------------------------------------- what decodes with what

    def beam_size(self, language: str | None) -> int:
        """The beam size of ``language``: ``beam_size`` of the decoding config (the one place it is read)."""
        return self.config.beam_for(language)

    def language(self, cut: Any) -> str | None:
        """The language ``cut`` decodes in: the detected one, else its own."""
        return cut_language(cut) if self.languages is None else self.languages.get(cut.id)

    def group_key(self, cut: Any) -> tuple[Any, ...]:
        """Cuts of one key may share a batch; groups decode in key order. One
        language per batch (cuts without a language last); with
        ``mix_languages``, one beam size per batch, cuts without a language
        apart (their language cannot be forced per row)."""
        language = self.language(cut)
        if self.mix_languages:
            return (self.beam_size(language), language is None)
        return (language is None, language or "")

    def plan(self, cuts: Iterable[Any]) -> list[list[list[Any]]]:
        """The batches of ``cuts``, by group (in :meth:`group_key` order): each
        group sorted by duration (then ID) and split into batches of at most
        ``batch_size`` cuts and, with ``max_batch_seconds``, at most that much
        padded audio (see :func:`bounded_batches`)."""
        groups: dict[tuple[Any, ...], list[Any]] = defaultdict(list)
        for cut in cuts:
            groups[self.group_key(cut)].append(cut)
        return [bounded_batches(sorted(groups[key], key=lambda c: (c.duration, c.id)), self.config.batch_size,
                                self.config.max_batch_seconds)
                for key in sorted(groups)]

    def detect_languages(self, cuts: Sequence[Any]) -> dict[str, str | None]:
        """``language: detect``: each cut's language as the model detects it from
        its first window of audio (:meth:`ilt.models.lid.SupportsLanguageId.detect_language`).
        Counts, in ``stats.language_detection``, how often it differs from the
        cut's own language, and as what. Set :attr:`languages` to the result
        to decode the cuts in it.

        :raises IltInputError: a backbone that cannot detect the language.
        """
        from collections import Counter

        from tqdm import tqdm

        backbone = self.backbone
        detect = getattr(backbone, "detect_language", None)
        if detect is None:
            raise IltInputError(f"the {backbone.name} backbone cannot detect the language: decode with "
                                f"language: given")
        out: dict[str, str | None] = {}
        rate = int(backbone.sampling_rate)
        for batch in tqdm(list(_batches(list(cuts), self.config.batch_size)), desc="detect language",
                          unit="batch", disable=None):
            audios = []
            for cut in batch:
                audio = load_checked_head(cut, rate, self.window)  # a long cut: its first window only
                if isinstance(audio, AudioProblem):  # decoding counts it as a skip
                    continue
                audios.append((cut.id, split_evenly(audio, rate, self.window)[0]))
            if audios:
                found = detect(self.model, backbone.features([a for _, a in audios]))
                out.update(zip([i for i, _ in audios], found))
        confusions = Counter(f"{cut_language(c) or '?'}->{out[c.id] or '?'}" for c in cuts
                             if c.id in out and out[c.id] != cut_language(c))
        self.stats.language_detection = {"cuts": len(out), "confused": sum(confusions.values()),
                                         "confusions": dict(confusions.most_common())}
        return out

    # ----------------------------------------------------------------- one batch

    def load_batch(self, batch: Sequence[Any]) -> list[Loaded]:
        """Each cut of ``batch`` with usable audio, split into chunks of at most
        :attr:`window`; unreadable, empty and non-finite audio is a counted skip
        (silent audio is decoded).

        A cut longer than :data:`ilt.data.audio.LONG_AUDIO_SECONDS` is read
        window by window (:func:`ilt.data.audio.load_windows_checked`): its
        chunks are :class:`ilt.data.audio.AudioWindow` objects that read their
        part of the file when the model's features are made, so memory holds
        ``batch_size`` windows, not the whole recording."""
        from ilt.data.audio import LONG_AUDIO_SECONDS, load_windows_checked

        loaded: list[Loaded] = []
        for cut in batch:
            if float(cut.duration) > LONG_AUDIO_SECONDS:
                windows = load_windows_checked(cut, self.sampling_rate, self.window)
                if isinstance(windows, AudioProblem):
                    self.skips.skip(windows.reason, cut.id, windows.detail)
                else:
                    loaded.append((cut, *windows))
                continue
            audio = load_checked(cut, self.sampling_rate)
            if isinstance(audio, AudioProblem):
                self.skips.skip(audio.reason, cut.id, audio.detail)
                continue
            loaded.append((cut, split_evenly(audio, self.sampling_rate, self.window),
                           audio.size / self.sampling_rate))
        return loaded

    def _generate(self, chunks: Sequence[np.ndarray], languages: Sequence[str | None],
                  adapters: Sequence[str] | None, **options: Any) -> Hypotheses:
        """The backbone's hypotheses of ``chunks``, ``batch_size`` at a time,
        with its loop flags (none from a backbone that returns a plain list)."""
        texts: list[str] = []
        looped: list[bool] = []
        rate = float(self.backbone.sampling_rate)
        size = self.config.batch_size
        for start in range(0, len(chunks), size):
            part, rows = list(chunks[start:start + size]), list(languages[start:start + size])
            inputs = self.backbone.features(part)
            budgets = [self.config.token_budgets([c.shape[-1] / rate], lang)[0] for c, lang in zip(part, rows)]
            # one language for the batch, or one per row (a batch that mixes languages)
            language = rows[0] if all(lang == rows[0] for lang in rows) else rows
            if adapters is not None:  # one PEFT adapter per row (ilt.experts.train' mixed batches)
                options["adapter_names"] = list(adapters[start:start + size])
            out = self.backbone.generate(self.model, inputs, language=language, max_new_tokens=budgets,
                                         loop_tokens=self.config.loop_tokens, **options)
            flags = getattr(out, "looped", None)
            texts.extend(out)
            looped.extend([False] * len(out) if flags is None else flags)
        return Hypotheses(texts, looped=looped)

    def decode(self, chunks: Sequence[np.ndarray], language: str | None | Sequence[str | None],
               adapters: Sequence[str] | None = None) -> list[str]:
        """Hypotheses of ``chunks`` (beam search, then the loop guard).

        ``language``: one for every chunk, or one per chunk (a batch that
        mixes languages; their beam sizes must agree); ``adapters``: the PEFT
        adapter of each chunk (``"__base__"`` for none), for a model holding
        several (:mod:`ilt.experts.train`). Returns
        :class:`ilt.models.generation.Hypotheses`, whose flags say which
        final hypotheses still end in a loop.

        :raises IltInputError: a language the backbone does not know.
        """
        config = self.config
        rows = [language] * len(chunks) if language is None or isinstance(language, str) else list(language)
        beams = {self.beam_size(lang) for lang in rows} or {self.beam_size(None)}
        if len(beams) > 1:
            raise ValueError(f"one batch mixes beam sizes {sorted(beams)}: batch languages of one beam size")
        beam_options: dict[str, Any] = {"num_beams": beams.pop(), "length_penalty": config.length_penalty}
        if config.no_repeat_ngram_size:
            beam_options["no_repeat_ngram_size"] = config.no_repeat_ngram_size
        texts = self._generate(chunks, rows, adapters, **beam_options)
        self.stats.loop_stopped += sum(texts.looped)
        threshold = config.compression_ratio_threshold
        if threshold is None or not config.fallback_temperatures:
            return texts
        self._fall_back(texts, chunks, rows, adapters, threshold)
        return texts

    def _fall_back(self, texts: Hypotheses, chunks: Sequence[np.ndarray], rows: Sequence[str | None],
                   adapters: Sequence[str] | None, threshold: float) -> None:
        """The loop guard: decode the looping chunks of ``texts`` (compression
        ratio above ``threshold``, or flagged in ``texts.looped``) again by
        sampling, one seeded temperature after another, until each passes;
        keep, in place, each chunk's best hypothesis by ``(loops, ratio)``:
        one that does not loop beats one that does, then the lower ratio wins."""
        keys = [(flag or ratio > threshold, ratio)
                for flag, ratio in zip(texts.looped, (compression_ratio(t) for t in texts))]
        looping = [i for i, (loops, _) in enumerate(keys) if loops]
        self.stats.fallback_chunks += len(looping)
        for step, temperature in enumerate(self.config.fallback_temperatures):
            if not looping:
                break
            import torch

            torch.manual_seed(FALLBACK_SEED + step)
            retried = self._generate([chunks[i] for i in looping], [rows[i] for i in looping],
                                     None if adapters is None else [adapters[i] for i in looping],
                                     num_beams=1, temperature=temperature)
            self.stats.fallback_decodes += len(looping)
            still = []
            for i, text, flag in zip(looping, retried, retried.looped):
                ratio = compression_ratio(text)
                key = (flag or ratio > threshold, ratio)
                if key < keys[i]:
                    texts[i], texts.looped[i], keys[i] = text, flag, key
                if key[0]:
                    still.append(i)
            looping = still
        self.stats.still_looping += len(looping)

    def score(self, chunks: Sequence[np.ndarray], texts: Sequence[str],
              language: str | None) -> list[tuple[float, int]] | None:
        """``(mean token log-probability, tokens)`` of each chunk's final
        hypothesis (:meth:`ilt.backbone.Backbone.score`); ``None`` when the
        backbone cannot score without a language."""
        scored: list[tuple[float, int]] = []
        size = self.config.batch_size
        try:
            for part, part_texts in zip(_batches(list(chunks), size), _batches(list(texts), size)):
                inputs = self.backbone.features(list(part))
                scored.extend(self.backbone.score(self.model, inputs, part_texts, language=language))
        except IltInputError as exc:
            log.warning("decode: no scores for language %s: %s", language, exc)
            return None
        return scored

    def records(self, loaded: Sequence[Loaded], texts: Sequence[str], language: str | None,
                scores: Sequence[tuple[float, int]] | None = None) -> list[dict[str, Any]]:
        """One output record per loaded cut, its chunk hypotheses (in ``texts``, in
        order) joined; with ``scores`` (per chunk), the cut's ``score`` is the mean
        log-probability over all its chunks' tokens and ``score_tokens`` their
        number. Counts the chunks and the audio in :attr:`stats`."""
        records, pos = [], 0
        for cut, chunks, duration in loaded:
            parts = texts[pos:pos + len(chunks)]
            record = {
                "id": cut.id,
                "text": join_chunks(parts, language),
                "language": language,
                "accent": _accent(cut),
                "duration": round(duration, 3),
                "num_chunks": len(chunks),
            }
            if scores is not None:
                own = scores[pos:pos + len(chunks)]
                tokens = sum(n for _, n in own)
                record["score"] = round(sum(m * n for m, n in own) / tokens, 6) if tokens else None
                record["score_tokens"] = tokens
            records.append(record)
            pos += len(chunks)
            self.stats.chunks += len(chunks)
            self.stats.audio_seconds += duration
        return records

    def decode_batch(self, batch: Sequence[Any]) -> list[dict[str, Any]]:
        """The records of one batch (see :meth:`records`), each cut decoded in
        its :meth:`language` (one for the batch, unless ``mix_languages``).

        :raises UnsupportedLanguage: the backbone refused a language of the
            batch (the batch's cuts counted as skips).
        """
        loaded = self.load_batch(batch)
        rows = [self.language(cut) for cut, chunks, _ in loaded for _ in chunks]
        flat = [chunk for _, chunks, _ in loaded for chunk in chunks]
        try:
            texts = self.decode(flat, rows) if flat else []
        except IltInputError as exc:
            for cut, _, _ in loaded:
                self.skips.skip("unsupported language", cut.id, str(exc))
            raise UnsupportedLanguage(str(exc)) from None
        chunk_scores = self._score_rows(flat, texts, rows) if self.scores and flat else None
        records, pos = [], 0
        for item in loaded:
            n = len(item[1])
            own = chunk_scores[pos:pos + n] if chunk_scores is not None else None
            records.extend(self.records([item], texts[pos:pos + n], rows[pos],
                                        None if own is None or None in own else own))
            pos += n
        if self.languages is not None:  # language: detect (kept in the journal with the record)
            for record, (cut, _, _) in zip(records, loaded):
                record["given_language"] = cut_language(cut)
        return records

    def _score_rows(self, chunks: Sequence[np.ndarray], texts: Sequence[str],
                    rows: Sequence[str | None]) -> list[tuple[float, int] | None]:
        """Each chunk's confidence in its own language (:meth:`score`, once per
        language); ``None`` where the backbone cannot score."""
        out: list[tuple[float, int] | None] = [None] * len(chunks)
        for language in dict.fromkeys(rows):
            idx = [i for i, row in enumerate(rows) if row == language]
            scored = self.score([chunks[i] for i in idx], [texts[i] for i in idx], language)
            for i, value in zip(idx, scored or [None] * len(idx)):
                out[i] = value
        return out

    # ----------------------------------------------------------------- the loop

    def decode_batches(self, cuts: Iterable[Any], *, journal: Any = None, progress: bool = True,
                       desc: str = "decode") -> list[dict[str, Any]]:
        """Decode ``cuts`` batch by batch (:meth:`plan`, :meth:`decode_batch`);
        return their records in input order and log a summary. The model is
        in eval mode meanwhile (train mode is restored after).

        With ``journal`` (an :class:`ilt.core.journal.Journal`), each finished
        batch is kept there and the batches a killed run finished are not
        decoded again. A batch whose language the backbone refuses is skipped
        with the rest of its group.
        """
        from tqdm import tqdm

        cut_list = list(cuts)
        model = self.model
        was_training = bool(getattr(model, "training", False))
        if hasattr(model, "eval"):
            model.eval()
        start = time.perf_counter()
        records, done = self._resume(journal)
        bar = tqdm(total=len(cut_list), initial=sum(c.id in done for c in cut_list), desc=desc, unit="cut", disable=None if progress else True)
        try:
            # one process's finished cuts are whole batches at the start of a group: the rest batch as
            # before; after a change of process count the rest is planned anew (see decode_files)
            for group in self.plan(c for c in cut_list if c.id not in done):
                self._decode_group(group, records, journal, bar)
        finally:
            bar.close()
            if journal is not None:
                journal.close()
            if was_training and hasattr(model, "train"):
                model.train()
        stats = self.stats
        stats.seconds, stats.cuts, stats.skips = time.perf_counter() - start, len(records), self.skips.report()
        order = {cut.id: n for n, cut in enumerate(cut_list)}
        records.sort(key=lambda r: order.get(r["id"], -1))  # a journal's records of other shards first
        _log_summary(stats, self.config)
        return records

    def _decode_group(self, group: Sequence[Sequence[Any]], records: list[dict[str, Any]], journal: Any,
                      bar: Any) -> None:
        """Decode one group's batches into ``records``; after a refused
        language, its other batches are counted skips, not loaded."""
        unsupported: str | None = None
        for batch in group:
            if unsupported is not None:
                for cut in batch:
                    self.skips.skip("unsupported language", cut.id, unsupported)
                bar.update(len(batch))
                continue
            try:
                new = self.decode_batch(batch)
            except UnsupportedLanguage as exc:
                unsupported = str(exc)
                bar.update(len(batch))
                continue
            records.extend(new)
            if journal is not None:
                journal.append(new, self.skips, _counters(self.stats))
            bar.update(len(batch))

    def _resume(self, journal: Any) -> tuple[list[dict[str, Any]], set[str]]:
        """The records and the finished cut IDs of a killed run's journal (skips
        and counters restored into :attr:`skips` and :attr:`stats`)."""
        if journal is None:
            return [], set()
        journal.restore(self.skips)
        for key, value in journal.counters.items():
            setattr(self.stats, key, value)
        return list(journal.records), journal.done


def _counters(stats: DecodeStats) -> dict[str, Any]:
    return {k: v for k, v in stats.__dict__.items() if k not in ("seconds", "skips", "cuts", "numerics")}


def decode_cuts(backbone: Any, model: Any, cuts: Iterable[Any], config: DecodeConfig,
                out_dir: str | Path | None = None, *, progress: bool = True,
                scores: bool = False, journal: Any = None) -> list[dict[str, Any]]:
    """Decode ``cuts`` with ``model`` (``None``: ``backbone.model``) through a :class:`Decoder`.

    Returns one record per decoded cut, in input order: ``{"id", "text",
    "language", "accent", "duration", "num_chunks"}``; with ``scores``, also
    the hypothesis' confidence ``score`` (mean token log-probability, see
    :meth:`ilt.backbone.Backbone.score`; one more forward pass per batch) and
    ``score_tokens``; under ``language: detect``, also ``given_language``,
    the cut's own. With ``out_dir``, writes
    ``hyps.jsonl``, ``hyp.trn`` (``text (id)`` lines), ``decode_config.yaml``
    and ``decode_stats.json`` there, each atomically. With ``journal`` (an
    :class:`ilt.core.journal.Journal`), each finished batch is kept there and the
    batches a killed run finished are not decoded again (a journal's records
    of cuts not in ``cuts`` come first).
    """
    records, stats = _decode_shard(backbone, model, list(cuts), config, progress, scores, journal)
    if out_dir is not None:
        write_outputs(records, out_dir, config, stats)
    return records


def _decode_shard(backbone: Any, model: Any, cut_list: list[Any], config: DecodeConfig, progress: bool,
                  scores: bool, journal: Any) -> tuple[list[dict[str, Any]], DecodeStats]:
    """:func:`decode_cuts` without writing: the records and the decoder's stats."""
    decoder = Decoder(backbone, model, config, scores=scores)
    _check_quantized(config, decoder.stats.numerics)
    if config.language == "detect":
        decoder.languages = decoder.detect_languages(cut_list)
    records = decoder.decode_batches(cut_list, journal=journal, progress=progress)
    _keep_given_languages(records, cut_list, decoder.languages)
    return records, decoder.stats


def _keep_given_languages(records: list[dict[str, Any]], cuts: Sequence[Any],
                          detected: dict[str, str | None] | None) -> None:
    """Under ``language: detect``, each record keeps its cut's own language as ``given_language``."""
    if detected is not None:
        given = {cut.id: cut_language(cut) for cut in cuts}
        for record in records:  # a journal's records of other shards have theirs already
            if record["id"] in given:
                record["given_language"] = given[record["id"]]


def _log_summary(stats: DecodeStats, config: DecodeConfig) -> None:
    if stats.loop_stopped:
        log.info("decode: %d chunk(s) ended in a loop of %s+ tokens (loop_tokens)", stats.loop_stopped,
                 config.loop_tokens)
    if stats.fallback_chunks:
        log.info("decode: %d chunk(s) looped (compression ratio > %s or ended in a loop); %d still loop "
                 "after fallback", stats.fallback_chunks, config.compression_ratio_threshold, stats.still_looping)
    if stats.language_detection:
        log.info("decode: language detected for %d cut(s); %d differ from their own", stats.language_detection["cuts"],
                 stats.language_detection["confused"])
    log.info("decode: %d cut(s), %d chunk(s), %.1f s of audio in %.1f s", stats.cuts, stats.chunks,
             stats.audio_seconds, stats.seconds)


def write_outputs(records: Sequence[dict[str, Any]], out_dir: str | Path, config: DecodeConfig,
                  stats: DecodeStats | None = None) -> None:
    """Write ``hyps.jsonl``, ``hyp.trn``, ``decode_config.yaml`` (and
    ``decode_stats.json``) under ``out_dir``, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "hyps.jsonl",
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    write_text_atomic(out_dir / "hyp.trn",
                      "".join(f"{' '.join(r['text'].split())} ({r['id']})\n" for r in records))
    write_text_atomic(out_dir / "decode_config.yaml", dump_yaml(config))
    if stats is not None:
        write_json_atomic(out_dir / "decode_stats.json", stats.as_dict())


def gather_in_order(records: list[dict[str, Any]], cuts: Sequence[Any], out_dir: str | Path,
                    config: DecodeConfig, state: Any, stats: DecodeStats | None = None) -> list[dict[str, Any]]:
    """Under several processes: every process's records, in the order of ``cuts``
    (cuts or their IDs: the IDs are all it needs); the main process writes the
    outputs (with ``stats``, every process's counters added up, see
    :func:`merge_stats`), and every process waits for it."""
    from accelerate.utils import gather_object

    records = gather_object(records)
    every_stats = gather_object([stats]) if stats is not None else []
    if state.num_processes == 1:  # gather_object gives one process's own list back
        records = list(records)
    order = {(cut if isinstance(cut, str) else cut.id): n for n, cut in enumerate(cuts)}
    records.sort(key=lambda r: order[r["id"]])
    if state.is_main_process:
        write_outputs(records, out_dir, config, merge_stats(every_stats) if every_stats else None)
    state.wait_for_everyone()
    return records


def merge_stats(parts: Sequence[DecodeStats]) -> DecodeStats:
    """The stats of several processes' shards as one: counts and seconds of
    audio added up, skips added up by reason, ``seconds`` the slowest
    process's, language detection added up; ``numerics`` the first's."""
    if len(parts) == 1:
        return parts[0]
    out = DecodeStats(numerics=parts[0].numerics)
    for part in parts:
        for name in ("cuts", "chunks", "audio_seconds", "loop_stopped", "fallback_chunks", "fallback_decodes",
                     "still_looping"):
            setattr(out, name, getattr(out, name) + getattr(part, name))
        out.seconds = max(out.seconds, part.seconds)
        for reason, n in (part.skips or {}).items():
            out.skips[reason] = out.skips.get(reason, 0) + n
        if part.language_detection:
            found = out.language_detection or {"cuts": 0, "confused": 0, "confusions": {}}
            found["cuts"] += part.language_detection["cuts"]
            found["confused"] += part.language_detection["confused"]
            for pair, n in part.language_detection["confusions"].items():
                found["confusions"][pair] = found["confusions"].get(pair, 0) + n
            out.language_detection = found
    return out


def decode_files(model_dir: str | Path, cuts_path: str | Path, out_dir: str | Path,
                 config: DecodeConfig | None = None, *, adapter: str | Path | None = None,
                 device: Any = None, progress: bool = True, scores: bool = False) -> list[dict[str, Any]]:
    """Load the backbone ``config.backbone`` from ``model_dir``, decode the
    CutSet manifest ``cuts_path`` and write the outputs under ``out_dir``.

    With ``adapter`` (a round's ``best/`` or ``final/``, or a training
    checkpoint ``checkpoints/step-N``), the LoRA is put on top of the model
    unmerged: a checkpoint of any step decodes without being merged first.
    ``scores`` adds each hypothesis' confidence to the records (see
    :func:`decode_cuts`).

    Under ``accelerate launch`` (or torchrun) every process decodes its own
    shard of the cuts on its own device; the main process gathers the
    records and writes the outputs (``decode_stats.json``: every shard's
    counts added up). The manifest is read as a stream
    (:func:`ilt.data.cut_stream.shard_of`): a process holds its shard's cuts
    and every cut's ID, never the whole manifest.

    A killed run resumes from the journal of finished cuts (:func:`decode_journal`),
    shared by all processes: a rerun with another number of processes decodes
    only the cuts that no process finished, sharded anew. Its batches then
    differ from an uninterrupted run's, and so do the hypotheses wherever a
    row depends on its batch-mates: a looping chunk's sampling fallback
    (seeded per batch) and, with the Whisper backbone's ``input_mode:
    audio_length``, the padding to the batch's longest cut. With batches of
    one cut they are the same (``tests/test_sharded_decoding.py``).

    ``device`` defaults to Accelerate's
    choice (the process's GPU, else the CPU); bf16/fp16 on a CPU falls back
    to fp32 with a warning. ``config.quantize: int8`` quantizes the loaded
    model's Linear layers (:func:`quantize_for_decoding`); it is refused, before
    the model loads, on a GPU and with an ``adapter``.
    """
    from ilt.core.registry import create
    from ilt.models.lineage import warn_on_input_mode

    config = config or DecodeConfig()
    state = process_state()  # under torchrun on CPU too: each process decodes its shard only
    device = state.device if device is None else device
    precision = config.precision
    on_cpu = getattr(device, "type", str(device)).startswith("cpu")
    _check_quantize_applies(config, device, on_cpu, adapter)
    if on_cpu and precision != "fp32":
        log.warning("decode: precision %s on a CPU: decoding in fp32 instead", precision)
        precision = "fp32"
    journal, ids, shard = _plan_shard(model_dir, adapter, cuts_path, out_dir, config, scores, state)
    backbone = create("backbone", config.backbone, Path(model_dir), dtype=precision, device=device)
    warn_on_input_mode(model_dir, adapter, backbone)  # trained in one input mode, decoded in the other
    model = backbone.model
    if config.quantize != "none":
        count = quantize_for_decoding(model, config.quantize_scope)
        log.info("decode: %d Linear layer(s) (%s) quantized to dynamic int8", count, config.quantize_scope)
    if adapter is not None:
        from ilt.models.adapter import load_adapter

        model = load_adapter(backbone, adapter)
        model.eval()
    records, stats = _decode_shard(backbone, model, shard, config, progress and state.is_local_main_process,
                                   scores, journal)
    records = gather_in_order(records, ids, out_dir, config, state, stats)
    if state.is_main_process:
        journal.remove()  # the outputs are complete
    state.wait_for_everyone()
    return records


def _plan_shard(model_dir: str | Path, adapter: str | Path | None, cuts_path: str | Path, out_dir: str | Path,
                config: DecodeConfig, scores: bool, state: Any) -> tuple[Any, list[str], list[Any]]:
    """The journal (every process's file read), every cut's ID and this
    process's shard of the cuts no journal file holds. All processes read the
    journal before any writes to it, so they agree on what is left."""
    from ilt.data.cut_stream import shard_of

    journal = decode_journal(model_dir, adapter, cuts_path, out_dir, config, scores, state.process_index,
                             adopt=state.is_main_process)
    state.wait_for_everyone()
    if state.is_main_process:
        journal.drop_stale(state.num_processes)
    ids, shard = shard_of(cuts_path, state.process_index, state.num_processes, journal.done)
    if journal.done:
        log.info("decode: %d of %d cut(s) finished already; %d left for this process", len(journal.done),
                 len(ids), len(shard))
    return journal, ids, shard


def _check_quantize_applies(config: DecodeConfig, device: Any, on_cpu: bool, adapter: Any) -> None:
    """Refuse ``quantize`` where it does not apply, before the model loads."""
    if config.quantize == "none":
        return
    if not on_cpu:
        raise IltInputError(f"quantize: {config.quantize} decodes on a CPU only (torch's dynamic int8 kernels), "
                            f"but this process decodes on {device}: set quantize: none")
    if adapter is not None:
        raise IltInputError(f"quantize: {config.quantize} cannot decode with an unmerged adapter ({adapter}): "
                            f"merge it first (ilt merge) and decode the merged model, or set quantize: none")


def quantize_for_decoding(model: Any, scope: str = "decoder") -> int:
    """Replace ``model``'s ``torch.nn.Linear`` layers, in place, by dynamically
    quantized int8 ones, for decoding on a CPU; return how many were replaced.

    The weights are stored in int8 per output channel; each input is quantized
    per batch at run time and the products run in torch's int8 CPU kernels
    (fbgemm or oneDNN), with fp32 outputs. ``scope`` ``decoder``: every Linear
    outside ``model.get_encoder()`` (the decoder layers and the output
    projection, where autoregressive decoding spends its steps); ``all``: the
    encoder's too. Other modules (convolutions, embeddings, layer norms) stay
    as they are.

    This uses ``torch.ao.quantization.quantize_dynamic``: torch marks it
    deprecated in favour of torchao, but torchao 0.18's eager
    ``Int8DynamicActivationInt8WeightConfig`` ran a Whisper-sized Linear about
    10x slower than fp32 on a CPU, where ``quantize_dynamic`` ran it about 3x
    faster, so its deprecation warnings are silenced here.

    :raises IltInputError: a PEFT model (merge the adapter first), no Linear
        layer in ``scope``, ``decoder`` on a model without an encoder, or a
        torch without dynamic int8 kernels.
    """
    import warnings

    import torch

    if scope not in ("decoder", "all"):
        raise IltInputError(f"quantize_scope: {scope!r} is not one of 'decoder', 'all'")
    if hasattr(model, "peft_config") or any(hasattr(m, "lora_A") for m in model.modules()):
        raise IltInputError("quantize: int8 cannot quantize a model with LoRA layers: merge the adapter first")
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError as exc:
        raise IltInputError(f"quantize: int8 needs torch.ao.quantization.quantize_dynamic, which torch "
                            f"{torch.__version__} does not have ({exc}): set quantize: none") from None
    if torch.backends.quantized.engine in (None, "none"):
        raise IltInputError(f"quantize: int8: torch {torch.__version__} has no quantized CPU engine here "
                            f"(supported: {torch.backends.quantized.supported_engines}): set quantize: none")
    skip: set[int] = set()
    if scope == "decoder":
        encoder = model.get_encoder() if hasattr(model, "get_encoder") else None
        if encoder is None or encoder is model:
            raise IltInputError(f"quantize_scope: decoder: {type(model).__name__} has no separate encoder; "
                                f"use quantize_scope: all")
        skip = {id(m) for m in encoder.modules()}
    names = [name for name, m in model.named_modules() if type(m) is torch.nn.Linear and id(m) not in skip]
    dtypes = {str(model.get_submodule(name).weight.dtype).removeprefix("torch.") for name in names}
    if dtypes - {"float32"}:
        raise IltInputError(f"quantize: int8 quantizes fp32 Linear layers, and this model's are "
                            f"{', '.join(sorted(dtypes))}: load it in fp32")
    if not names:
        raise IltInputError(f"quantize: int8: {type(model).__name__} has no torch.nn.Linear layer in scope "
                            f"{scope!r}: nothing to quantize; set quantize: none")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel")
        quantize_dynamic(model, {name: per_channel_dynamic_qconfig for name in names}, inplace=True)
    model.eval()
    return sum(_is_int8_linear(m) for m in model.modules())


def _is_int8_linear(module: Any) -> bool:
    """Whether ``module`` is a dynamically quantized int8 Linear (checked by
    class, without importing the deprecated ``torch.ao`` modules)."""
    cls = type(module)
    return cls.__name__ == "Linear" and cls.__module__.startswith("torch.ao.nn.quantized.dynamic")


def model_numerics(model: Any) -> dict[str, Any] | None:
    """What ``model`` decodes with, for ``decode_stats.json``: ``{"dtype"``: its
    floating-point weights' dtype, ``"int8_linear"``: Linear layers quantized
    to dynamic int8, ``"float_linear"``: Linear layers left in ``dtype``,
    ``"device"}``; ``None`` for an object that is not a torch module."""
    if not hasattr(model, "named_modules") or not hasattr(model, "parameters"):
        return None
    import torch

    floats = [p for p in model.parameters() if p.is_floating_point()]
    modules = list(model.modules())
    return {"dtype": str(floats[0].dtype).removeprefix("torch.") if floats else None,
            "int8_linear": sum(_is_int8_linear(m) for m in modules),
            "float_linear": sum(isinstance(m, torch.nn.Linear) for m in modules),
            "device": str(floats[0].device) if floats else None}


def _check_quantized(config: DecodeConfig, numerics: dict[str, Any] | None) -> None:
    """``quantize`` is applied where a model is loaded for decoding
    (:func:`decode_files`); refuse a config that asks for it with a model that
    was not quantized (training's dev decoding, a model loaded another way)."""
    if config.quantize != "none" and not (numerics or {}).get("int8_linear"):
        raise IltInputError(f"quantize: {config.quantize} applies to a model loaded for decoding (ilt decode), "
                            f"and this model is not quantized (training's dev decoding?): set quantize: none")


def decode_journal(model_dir: str | Path, adapter: str | Path | None, cuts_path: str | Path,
                   out_dir: str | Path, config: DecodeConfig, scores: bool, rank: int = 0, *,
                   adopt: bool = True) -> Any:
    """The resume journal of a decoding into ``out_dir`` (see :mod:`ilt.core.journal`),
    loaded: keyed by the model's and adapter's weights, the cuts, the config
    and ``scores``, not by the process: process ``rank`` appends to
    ``.decode.journal.jsonl`` (rank 0) or ``.decode.journal.<rank>.jsonl``, and
    reads every process's file. ``adopt``: take the finished records (the
    main process), else only their IDs."""
    from ilt.config import config_hash
    from ilt.core.files import sha256_file
    from ilt.core.journal import Journal
    from ilt.models.adapter import ADAPTER_WEIGHTS, resolve_adapter_dir
    from ilt.models.lineage import model_identity

    key = {"model": model_identity(model_dir).get("sha256"), "cuts": sha256_file(cuts_path)[:16],
           "adapter": sha256_file(resolve_adapter_dir(adapter) / ADAPTER_WEIGHTS)[:16] if adapter else None,
           "config": config_hash(config), "scores": scores}
    name = ".decode.journal.jsonl" if rank == 0 else f".decode.journal.{rank}.jsonl"
    return Journal(Path(out_dir) / name, key, shared=True, adopt=adopt).load()


def write_submission(records: Iterable[dict[str, Any]], path: str | Path) -> Path:
    """Write hypotheses as a Kaldi-style ``text`` file, the challenge's submission format.

    One ``<utterance-id> <hypothesis>`` line per record, sorted by ID (byte
    order, as ``LC_ALL=C sort``), the hypothesis on one line with its
    whitespace collapsed; an empty hypothesis leaves the ID alone on its
    line. The MLC-SLM baseline scores from such a file. Written atomically.

    :raises IltInputError: an ID with whitespace, or an ID seen twice.
    """
    lines: dict[str, str] = {}
    for record in records:
        utt_id, text = str(record["id"]), " ".join(str(record.get("text") or "").split())
        if not utt_id or any(c.isspace() for c in utt_id):
            raise IltInputError(f"utterance ID {utt_id!r} is empty or has whitespace: "
                                "it cannot go in a Kaldi text file")
        if utt_id in lines:
            raise IltInputError(f"utterance ID {utt_id!r} appears twice")
        lines[utt_id] = f"{utt_id} {text}" if text else utt_id
    write_text_atomic(path, "".join(lines[k] + "\n" for k in sorted(lines)))
    return Path(path)
