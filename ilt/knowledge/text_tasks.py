"""Text augmentation for the knowledge tasks (the ILT paper, section 3.2.1).

1. **Token frequencies** (:func:`count_tokens`): the backbone tokenizer's
   tokens (:meth:`ilt.backbone.Backbone.tokenize`, the text tokens training
   uses) counted over the supervisions of the training cuts, per language. A
   token counted fewer than ``low`` times (20) in a language is
   low-frequency there, one counted more than ``high`` times (200)
   high-frequency; a token never seen counts 0, so it is low-frequency.
2. **Rare-token selection** (:func:`select_sentences`): third-party sentences
   in which low-frequency tokens are more than ``min_ratio`` (0.5) of the
   tokens, to be synthesised or added as text data.
3. **Hard cases** (:func:`hard_cases`): the cuts whose text holds a
   high-frequency token are decoded (:func:`ilt.asr.decode.decode_files`) and
   kept when their utterance error rate, scored as ``ilt score`` does (words;
   characters for Japanese, Korean and Thai), is above ``max_error_rate``
   (0.05).

The tokenizer is loaded through the backbone registry; a backbone factory
that takes ``tokenizer_only`` reads no weights for steps 1 and 2.

Third-party text (:func:`read_sentences`) is a UTF-8 file with one sentence
per line, either ``LANG<TAB>sentence`` or a bare sentence in the language
given by the caller, or a cut manifest (``.jsonl``/``.jsonl.gz``) whose
supervision texts are the sentences. Blank lines are skipped; a file without
any sentence is an error; a sentence seen twice is counted once.

Bad input: a supervision without text or language is a counted, logged skip;
an unreadable file, a line without a language and a language code Whisper
does not know are :class:`~ilt.errors.IltInputError` naming the file and
line. When no sentence passes the selection, the (empty) outputs are still
written and a warning says which threshold to lower: it is a result, not an
error.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ilt.config import ComponentSpec, DecodeConfig, config_hash
from ilt.core.files import read_json, sha256_file, write_json_atomic, write_text_atomic
from ilt.core.runtime import Skips, process_state
from ilt.data.languages import validate_language
from ilt.errors import IltInputError

log = logging.getLogger("ilt")

STATS_JSON = "stats.json"
REPORT_MD = "report.md"
SELECTED_TXT = "selected.txt"
SELECTED_JSONL = "selected.jsonl"
SUMMARY_JSON = "summary.json"
CANDIDATES = "candidates.jsonl.gz"
HARD_CUTS = "cuts.jsonl.gz"
#: ``cut.custom`` key of a hard case: its error rate, scoring unit and hypothesis.
HARD_CASE = "hard_case"
DONE = ".done"

#: Why a sentence is not selected.
DUPLICATE, NO_TOKENS, TOO_FEW_RARE = "duplicate", "no tokens", "rare tokens at most min_ratio"


# --------------------------------------------------------------------------- the tokenizer


def load_text_tokenizer(model_dir: str | Path, backbone: str | ComponentSpec = "whisper") -> Any:
    """An object with the backbone's ``tokenize(text, language)`` for the model in ``model_dir``.

    A backbone factory that takes ``tokenizer_only`` loads only its tokenizer;
    any other backbone is loaded fully, in fp32 on the CPU.
    """
    from ilt.core.registry import create, get_registry

    spec = ComponentSpec.from_yaml(backbone, "backbone")
    factory = get_registry().get("backbone", spec.name).factory
    try:
        light = "tokenizer_only" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        light = False
    if light:
        return create("backbone", spec, Path(model_dir), tokenizer_only=True)
    log.info("backbone %s has no tokenizer-only load: loading the whole model from %s", spec.name, model_dir)
    return create("backbone", spec, Path(model_dir), dtype="fp32", device="cpu")


# --------------------------------------------------------------------------- token statistics


def _check_thresholds(low: int, high: int) -> None:
    if low < 0 or high < 0 or low > high:
        raise IltInputError(f"token thresholds low={low}, high={high}: expected 0 <= low <= high "
                            f"(low-frequency: fewer than low; high-frequency: more than high)")


@dataclass
class TokenStats:
    """Token counts of the training text per language, and the two thresholds.

    ``counts[language][token]`` is how often ``token`` occurs in the
    supervisions of that language; ``utterances[language]`` how many
    supervisions were counted.
    """

    low: int = 20
    high: int = 200
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    utterances: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def count(self, language: str, token: str) -> int:
        return self.counts.get(language, {}).get(token, 0)

    def is_low(self, language: str, token: str) -> bool:
        """Counted fewer than ``low`` times (a token never seen counts 0)."""
        return self.count(language, token) < self.low

    def is_high(self, language: str, token: str) -> bool:
        return self.count(language, token) > self.high

    def low_tokens(self, language: str) -> list[str]:
        """The seen tokens below ``low``, rarest first (unseen ones are low too)."""
        return [t for t, n in _by_count(self.counts.get(language, {}), rarest=True) if n < self.low]

    def high_tokens(self, language: str) -> list[str]:
        return [t for t, n in _by_count(self.counts.get(language, {})) if n > self.high]

    def to_json(self) -> dict[str, Any]:
        languages = {}
        for language in sorted(self.counts):
            counts = self.counts[language]
            languages[language] = {
                "utterances": self.utterances.get(language, 0), "tokens": sum(counts.values()),
                "distinct": len(counts), "counts": dict(_by_count(counts)),
                "low": self.low_tokens(language), "high": self.high_tokens(language)}
        return {**self.info, "thresholds": {"low": self.low, "high": self.high}, "languages": languages}

    @classmethod
    def load(cls, path: str | Path) -> "TokenStats":
        """Read ``stats.json`` (or the ``ilt augment token-stats`` directory holding it)."""
        path = Path(path)
        path = path / STATS_JSON if path.is_dir() else path
        data = read_json(path)
        try:
            thresholds = data["thresholds"]
            languages = data["languages"]
            stats = cls(int(thresholds["low"]), int(thresholds["high"]),
                        {lang: {str(t): int(n) for t, n in v["counts"].items()} for lang, v in languages.items()},
                        {lang: int(v.get("utterances", 0)) for lang, v in languages.items()},
                        {k: v for k, v in data.items() if k not in ("thresholds", "languages")})
        except (TypeError, KeyError, ValueError, AttributeError):
            what = "no such file" if data is None else "not a token statistics file (thresholds, languages)"
            raise IltInputError(f"{path}: {what}; write it with `ilt augment token-stats`") from None
        _check_thresholds(stats.low, stats.high)
        return stats


def _by_count(counts: dict[str, int], rarest: bool = False) -> list[tuple[str, int]]:
    """Tokens by count (most frequent first, or rarest first), ties by token."""
    sign = 1 if rarest else -1
    return sorted(counts.items(), key=lambda item: (sign * item[1], item[0]))


def _supervisions(cuts: Iterable[Any]) -> Iterable[tuple[Any, Any]]:
    """``(cut, supervision)`` pairs, each supervision ID once (cuts of one
    recording may share a supervision)."""
    seen: set[str] = set()
    for cut in cuts:
        for sup in cut.supervisions:
            if sup.id not in seen:
                seen.add(sup.id)
                yield cut, sup


def count_tokens(cuts: Iterable[Any], tokenizer: Any, *, low: int = 20, high: int = 200,
                 skips: Skips | None = None, progress: bool = True) -> TokenStats:
    """Count ``tokenizer.tokenize(text, language)`` over the supervisions of
    ``cuts``, per language; supervisions without text or language are counted
    skips (in ``skips``)."""
    from tqdm import tqdm

    _check_thresholds(low, high)
    skips = skips or Skips("token-stats")
    counts: dict[str, Counter] = {}
    utterances: Counter = Counter()
    for cut, sup in tqdm(_supervisions(cuts), desc="token-stats", unit="utt", disable=None if progress else True):
        text = (sup.text or "").strip()
        language = (sup.language or "").strip().lower()
        if not text:
            skips.skip("empty transcript", sup.id, f"cut {cut.id}")
            continue
        if not language:
            skips.skip("no language", sup.id, f"cut {cut.id}")
            continue
        counts.setdefault(language, Counter()).update(tokenizer.tokenize(text, language))
        utterances[language] += 1
    return TokenStats(low, high, {lang: dict(c) for lang, c in counts.items()}, dict(utterances))


def _show(token: str) -> str:
    """A token in a markdown table: its JSON spelling (spaces visible), in a code span."""
    return "`` " + json.dumps(token, ensure_ascii=False).replace("|", "\\|") + " ``"


def stats_report(stats: TokenStats, top: int = 30) -> str:
    """Markdown: per language, the counts and the ``top`` most and least frequent tokens."""
    lines = [f"# Token frequencies of {stats.info.get('cuts', 'the training text')}", "",
             f"Tokenizer: backbone {stats.info.get('backbone', '?')}, model {stats.info.get('model', '?')}. "
             f"Low-frequency: fewer than {stats.low} occurrences; high-frequency: more than {stats.high}. "
             "Tokens are shown as JSON strings (a leading space is part of the token).", "",
             "| language | utterances | tokens | distinct | low | high |", "|---|---:|---:|---:|---:|---:|"]
    for language in sorted(stats.counts):
        counts = stats.counts[language]
        lines.append(f"| {language} | {stats.utterances.get(language, 0)} | {sum(counts.values())} | "
                     f"{len(counts)} | {len(stats.low_tokens(language))} | {len(stats.high_tokens(language))} |")
    for language in sorted(stats.counts):
        ranked = _by_count(stats.counts[language])
        for title, rows in ((f"most frequent {top}", ranked[:top]),
                            (f"least frequent {top}", _by_count(stats.counts[language], rarest=True)[:top])):
            lines += ["", f"## {language}: {title}", "", "| token | count |", "|---|---:|"]
            lines += [f"| {_show(t)} | {n} |" for t, n in rows]
    return "\n".join(lines) + "\n"


def token_stats(cuts_path: str | Path, model_dir: str | Path, out_dir: str | Path, *,
                backbone: str | ComponentSpec = "whisper", low: int = 20, high: int = 200,
                top: int = 30) -> TokenStats:
    """Count the tokens of the training cuts ``cuts_path`` with the tokenizer of
    ``model_dir``; write ``stats.json`` and ``report.md`` under ``out_dir``."""
    from ilt.data.manifests import load_cuts

    _check_thresholds(low, high)
    cuts = load_cuts(cuts_path)
    tokenizer = load_text_tokenizer(model_dir, backbone)
    skips = Skips("token-stats")
    stats = count_tokens(cuts, tokenizer, low=low, high=high, skips=skips)
    if not stats.counts:
        raise IltInputError(f"{cuts_path}: no supervision has both text and a language: nothing to count")
    stats.info = {"cuts": str(cuts_path), "model": str(model_dir), "backbone": ComponentSpec.from_yaml(backbone).to_yaml(),
                  "skipped": skips.report()}
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / STATS_JSON, stats.to_json())
    write_text_atomic(out_dir / REPORT_MD, stats_report(stats, top))
    for language in sorted(stats.counts):
        log.info("token-stats %s: %d utterance(s), %d token(s), %d distinct, %d low, %d high", language,
                 stats.utterances[language], sum(stats.counts[language].values()), len(stats.counts[language]),
                 len(stats.low_tokens(language)), len(stats.high_tokens(language)))
    return stats


# --------------------------------------------------------------------------- rare-token sentences


@dataclass(frozen=True)
class Sentence:
    """One third-party sentence and where it came from (``file:line`` or ``file:cut``)."""

    language: str
    text: str
    where: str


def _is_manifest(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz"))


def _manifest_sentences(path: Path, language: str | None) -> list[Sentence]:
    from ilt.data.manifests import load_cuts

    out = []
    for cut, sup in _supervisions(load_cuts(path)):
        text = " ".join((sup.text or "").split())
        if not text:
            continue
        lang = sup.language or language
        if not lang:
            raise IltInputError(f"{path}: cut {cut.id!r}: supervision without a language; pass --language")
        out.append(Sentence(validate_language(lang, f"{path}: cut {cut.id!r}"), text, f"{path}:{cut.id}"))
    return out


def _text_sentences(path: Path, language: str | None) -> list[Sentence]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise IltInputError(f"{path}: no such text file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise IltInputError(f"{path}: cannot read it as UTF-8 text: {exc}") from None
    out = []
    for n, line in enumerate(lines, 1):
        where = f"{path}:{n}"
        lang, tab, rest = line.partition("\t")
        if tab:
            lang, text = validate_language(lang, f"{where} (LANG<TAB>sentence)"), rest
        elif language is not None:
            lang, text = language, line
        elif line.strip():
            raise IltInputError(f"{where}: no language: write LANG<TAB>sentence or pass --language")
        else:
            continue
        text = " ".join(text.split())
        if text:
            out.append(Sentence(lang, text, where))
    return out


def read_sentences(path: str | Path, language: str | None = None) -> list[Sentence]:
    """The sentences of a text file or cut manifest (see the module docstring);
    ``language`` is the language of lines without one. A source without any
    sentence is an :class:`IltInputError`."""
    path = Path(path)
    language = validate_language(language, "--language") if language else None
    sentences = _manifest_sentences(path, language) if _is_manifest(path) else _text_sentences(path, language)
    if not sentences:
        raise IltInputError(f"{path}: no sentences (empty, or only blank lines / supervisions without text)")
    return sentences


def select_sentences(sentences: Iterable[Sentence], stats: TokenStats, tokenizer: Any, *,
                     min_ratio: float = 0.5) -> tuple[list[dict[str, Any]], Counter]:
    """The sentences in which low-frequency tokens are more than ``min_ratio``
    of the tokens, as records (language, text, counts, the rare tokens), and
    the rejected ones counted by reason."""
    from tqdm import tqdm

    if not 0.0 <= min_ratio < 1.0:
        raise IltInputError(f"--min-ratio {min_ratio}: expected a number in [0, 1)")
    kept, rejected, seen, unseen_languages = [], Counter(), set(), set()
    for sentence in tqdm(list(sentences), desc="select-text", unit="sentence", disable=None):
        key = (sentence.language, sentence.text)
        if key in seen:
            rejected[DUPLICATE] += 1
            continue
        seen.add(key)
        if sentence.language not in stats.counts and sentence.language not in unseen_languages:
            unseen_languages.add(sentence.language)
            log.warning("select-text: language %s has no training text in the statistics: every token of it "
                        "counts as unseen, so rare (first at %s)", sentence.language, sentence.where)
        tokens = tokenizer.tokenize(sentence.text, sentence.language)
        if not tokens:
            rejected[NO_TOKENS] += 1
            continue
        rare = [t for t in tokens if stats.is_low(sentence.language, t)]
        ratio = len(rare) / len(tokens)
        if ratio <= min_ratio:
            rejected[TOO_FEW_RARE] += 1
            continue
        kept.append({"language": sentence.language, "text": sentence.text, "tokens": len(tokens),
                     "low_tokens": len(rare), "ratio": round(ratio, 4), "rare": sorted(set(rare)),
                     "source": sentence.where})
    return kept, rejected


def select_text(stats_path: str | Path, text_paths: Sequence[str | Path], out_dir: str | Path, *,
                language: str | None = None, min_ratio: float = 0.5, model_dir: str | Path | None = None,
                backbone: str | ComponentSpec | None = None) -> dict[str, Any]:
    """Select the rare-token sentences of ``text_paths`` (see
    :func:`select_sentences`) with the statistics ``stats_path`` and the
    tokenizer they were counted with (or ``model_dir``/``backbone``); write
    ``selected.txt`` (``LANG<TAB>sentence`` lines, readable by
    :func:`read_sentences`), ``selected.jsonl`` and ``summary.json``; return the summary."""
    stats = TokenStats.load(stats_path)
    model_dir = model_dir or stats.info.get("model")
    if not model_dir:
        raise IltInputError(f"{stats_path}: names no model: pass --model")
    sentences = [s for path in text_paths for s in read_sentences(path, language)]
    tokenizer = load_text_tokenizer(model_dir, backbone or stats.info.get("backbone") or "whisper")
    kept, rejected = select_sentences(sentences, stats, tokenizer, min_ratio=min_ratio)
    out_dir = Path(out_dir)
    write_text_atomic(out_dir / SELECTED_TXT, "".join(f"{r['language']}\t{r['text']}\n" for r in kept))
    write_text_atomic(out_dir / SELECTED_JSONL, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    per_language: dict[str, dict[str, int]] = {}
    for s in sentences:
        per_language.setdefault(s.language, {"read": 0, "kept": 0})["read"] += 1
    for r in kept:
        per_language[r["language"]]["kept"] += 1
    summary = {"sentences": len(sentences), "kept": len(kept), "rejected": dict(rejected),
               "per_language": dict(sorted(per_language.items())), "min_ratio": min_ratio,
               "low_threshold": stats.low, "stats": str(stats_path), "model": str(model_dir),
               "texts": [str(p) for p in text_paths]}
    write_json_atomic(out_dir / SUMMARY_JSON, summary)
    if not kept:
        log.warning("select-text: none of the %d sentence(s) has more than %g of its tokens counted fewer than "
                    "%d times: %s is empty; lower --min-ratio or raise the low threshold (token-stats --low)",
                    len(sentences), min_ratio, stats.low, out_dir / SELECTED_TXT)
    return summary


# --------------------------------------------------------------------------- hard cases


def hard_case_candidates(cuts: Iterable[Any], stats: TokenStats, tokenizer: Any,
                         skips: Skips) -> list[Any]:
    """The cuts whose text (their supervisions joined, as scored) holds a
    token that is high-frequency in its language; cuts without text or
    language are counted skips."""
    from ilt.asr.score import reference_of

    found = []
    for cut in cuts:
        language, text, _ = reference_of(cut)
        if not (text or "").strip():
            skips.skip("empty transcript", cut.id)
        elif not language:
            skips.skip("no language", cut.id)
        elif any(stats.is_high(language.lower(), t) for t in tokenizer.tokenize(text, language.lower())):
            found.append(cut)
    return found


def _decode_cached(model_dir: Path, cuts_path: Path, out_dir: Path, config: DecodeConfig) -> dict[str, dict]:
    """Records of :func:`ilt.asr.decode.decode_files` by cut ID, decoded again only
    when the model, the cuts or the decoding config changed."""
    from ilt.asr.decode import decode_files
    from ilt.models.lineage import model_identity

    fingerprint = {"model": model_identity(model_dir).get("sha256"), "cuts": sha256_file(cuts_path)[:12],
                   "decode_config": config_hash(config)}
    if read_json(out_dir / DONE) == fingerprint:
        log.info("hard-cases: %s decoded already (%s)", cuts_path, out_dir)
    else:  # under accelerate launch every process decodes its shard, the main one writes
        state = process_state()
        decode_files(model_dir, cuts_path, out_dir, config)
        if state.is_main_process:
            write_json_atomic(out_dir / DONE, fingerprint)
        state.wait_for_everyone()
    lines = (out_dir / "hyps.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


def _mark(cut: Any, error_rate: float, unit: str, hyp: str) -> Any:
    from lhotse.utils import fastcopy

    return fastcopy(cut, custom={**(cut.custom or {}),
                                 HARD_CASE: {"error_rate": round(error_rate, 6), "unit": unit, "hyp": hyp}})


def keep_hard(candidates: Sequence[Any], records: dict[str, dict], max_error_rate: float,
              skips: Skips) -> list[Any]:
    """The candidates whose utterance error rate (:func:`ilt.asr.score.score`) is
    above ``max_error_rate``, marked with ``custom["hard_case"]``; cuts without
    a hypothesis or with an empty normalised reference are counted skips."""
    from ilt.asr.score import references, score

    decoded = [c for c in candidates if c.id in records]
    for cut in candidates:
        if cut.id not in records:
            skips.skip("not decoded", cut.id, "see decode/decode_stats.json")
    if not decoded:
        return []
    result = score(references(decoded), {c.id: records[c.id]["text"] for c in decoded})
    for utt_id in result.skipped.get("empty_reference", []):
        skips.skip("empty reference after normalisation", utt_id)
    by_id = {u.id: u for u in result.utterances}
    kept = []
    for cut in decoded:
        utt = by_id.get(cut.id)
        if utt is not None and utt.ref_units and utt.errors / utt.ref_units > max_error_rate:
            kept.append(_mark(cut, utt.errors / utt.ref_units, utt.unit, records[cut.id]["text"]))
    return kept


def sample_candidates(candidates: Sequence[Any], max_candidates: int | None) -> list[Any]:
    """At most ``max_candidates`` of ``candidates`` (all when ``None``), in their
    order: those whose ID hashes lowest, so the sample is spread over the
    languages and speakers and does not depend on the manifest's order."""
    if max_candidates is None or len(candidates) <= max_candidates:
        return list(candidates)
    ranked = sorted(candidates, key=lambda c: hashlib.sha256(c.id.encode("utf-8")).hexdigest())
    chosen = {c.id for c in ranked[:max_candidates]}
    return [c for c in candidates if c.id in chosen]


def hard_cases(model_dir: str | Path, cuts_path: str | Path, stats_path: str | Path, out_dir: str | Path, *,
               max_error_rate: float = 0.05, decode_config: DecodeConfig | None = None,
               max_candidates: int | None = None) -> dict[str, Any]:
    """Mine hard cases (see the module docstring) and write, under ``out_dir``:
    ``candidates.jsonl.gz`` (the cuts with high-frequency tokens, at most
    ``max_candidates`` of them: decoding is the cost), ``decode/`` (their
    decoding, reused on a rerun), ``cuts.jsonl.gz`` (the hard cases) and
    ``summary.json``; return the summary."""
    from lhotse import CutSet

    from ilt.asr.score import reference_of
    from ilt.data.cut_stream import Counted, stream_cuts
    from ilt.data.manifests import save_manifest

    if not max_error_rate >= 0:
        raise IltInputError(f"--max-error-rate {max_error_rate}: expected a number >= 0")
    if max_candidates is not None and max_candidates < 1:
        raise IltInputError(f"--max-candidates {max_candidates}: expected at least 1 (leave it out for all)")
    config = decode_config or DecodeConfig()
    stats = TokenStats.load(stats_path)
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    cuts = Counted(stream_cuts(cuts_path))  # a stream: only the candidates are held
    tokenizer = load_text_tokenizer(model_dir, config.backbone)
    skips = Skips("hard-cases")
    found = hard_case_candidates(cuts, stats, tokenizer, skips)
    if not found:
        log.warning("hard-cases: no cut of %s holds a token counted more than %d times in %s: nothing to decode; "
                    "lower the high threshold (token-stats --high)", cuts_path, stats.high, stats_path)
    candidates = sample_candidates(found, max_candidates)
    if len(candidates) < len(found):
        log.info("hard-cases: decoding %d of the %d cut(s) with high-frequency tokens (--max-candidates)",
                 len(candidates), len(found))
    state = process_state()  # under accelerate launch: every process decodes its shard, the main one writes
    if state.is_main_process:
        save_manifest(CutSet.from_cuts(candidates), out_dir / CANDIDATES)
    state.wait_for_everyone()
    records = _decode_cached(model_dir, out_dir / CANDIDATES, out_dir / "decode", config) if candidates else {}
    if not state.is_main_process:
        state.wait_for_everyone()
        return read_json(out_dir / SUMMARY_JSON)
    kept = keep_hard(candidates, records, max_error_rate, skips)
    save_manifest(CutSet.from_cuts(kept), out_dir / HARD_CUTS)
    per_language: dict[str, dict[str, int]] = {}
    for key, group in (("candidates", found), ("kept", kept)):
        for cut in group:
            row = per_language.setdefault(str(reference_of(cut)[0]).lower(), {"candidates": 0, "kept": 0})
            row[key] += 1
    summary = {"cuts": cuts.n, "candidates": len(found), "sampled": len(candidates), "decoded": len(records),
               "kept": len(kept), "max_candidates": max_candidates,
               "skipped": skips.report(), "per_language": dict(sorted(per_language.items())),
               "max_error_rate": max_error_rate, "high_threshold": stats.high, "model": str(model_dir),
               "cuts_path": str(cuts_path), "stats": str(stats_path)}
    write_json_atomic(out_dir / SUMMARY_JSON, summary)
    log.info("hard-cases: %d of %d cut(s) hold high-frequency tokens, %d decoded; %d above error rate %g -> %s",
             len(found), cuts.n, len(records), len(kept), max_error_rate, out_dir / HARD_CUTS)
    state.wait_for_everyone()
    return summary
