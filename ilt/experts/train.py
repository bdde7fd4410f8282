"""LoRA language experts (Li et al., Interspeech 2025, "Efficient Multilingual
ASR Finetuning via LoRA Language Experts"): one LoRA per language on one base
model, trained, loaded and routed here (fusion and distillation of the
experts build on :func:`load_experts`).

Training
    :func:`train_experts` trains each language's expert as one ILT round
    (:func:`ilt.training.loop.train_round`, the loop of ``ilt train``) on that
    language's training cuts only, scored on that language's dev cuts. Run
    again, a finished language is skipped and an interrupted one resumes from
    its checkpoints.

Routing
    :func:`route_cuts` gives each cut an expert: its own language's, or, for
    a cut without a language (or under ``language: detect``), the expert of
    the language the base model detects (the backbone's ``detect_language``,
    with every LoRA switched off). A language without an expert decodes with
    the base model (PEFT's ``"__base__"``).

Many experts in one batch
    :func:`decode_with_experts` decodes with every expert needed loaded into
    one PEFT model. ``batching="mixed"``: a batch holds cuts of several
    languages, each row decoded in its own language with its own LoRA in one
    pass (PEFT's ``adapter_names`` mixed-batch forward; beam search included,
    see :mod:`ilt.models.whisper_beam`); a batch never mixes beam sizes.
    ``batching="per-group"``: one language after another, with only its
    expert active (for comparison). Records come back in input order.

The experts directory::

    experts.json         format, name, backbone, base model, planned languages and, per
                         finished language, its adapter (relative), steps and dev score
    experts.yaml         the resolved experts config; command.txt the command
    <lang>/              that language's round (see ilt.training.loop): best/, final/, checkpoints/...
    dev/<lang>.jsonl.gz  the dev cuts its expert was scored on
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ilt.asr.decode import Decoder, cut_language, gather_in_order, write_outputs
from ilt.config import (
    DataSource,
    DecodeConfig,
    ExpertsConfig,
    ExpertsSection,
    config_hash,
    dump_yaml,
    to_dict,
)
from ilt.core.files import (
    log,
    read_json,
    safe_name,
    write_json_atomic,
    write_text_atomic,
)
from ilt.core.runtime import process_state
from ilt.errors import IltInputError
from ilt.models import lid
from ilt.models.adapter import ADAPTER_CONFIG, load_adapters, read_adapter_round

EXPERTS_JSON = "experts.json"
EXPERTS_YAML = "experts.yaml"
ROUTING_JSON = "routing.json"
FORMAT = "ilt-experts/1"
#: PEFT's adapter name for "no adapter" in a mixed batch: the base model.
BASE = "__base__"
BATCHING = ("mixed", "per-group")


# --------------------------------------------------------------------------- the experts directory


def _index_error(path: Path, key: str, problem: str) -> IltInputError:
    return IltInputError(f"{path}: {key}: {problem}; train the experts again with `ilt experts train ... "
                         f"--out {path.parent}`")


def load_experts(experts_dir: str | Path) -> tuple[Path, dict[str, Path]]:
    """``(base model directory, {language: adapter directory})`` of an experts
    directory written by ``ilt experts train`` (only finished experts).

    :raises IltInputError: no such directory, no or a broken ``experts.json``,
        no finished expert, an adapter directory that is gone.
    """
    experts_dir = Path(experts_dir)
    path = experts_dir / EXPERTS_JSON
    if not experts_dir.is_dir():
        raise IltInputError(f"{experts_dir}: no such experts directory; train experts into it with "
                            f"`ilt experts train --config conf/experts.yaml ... --out {experts_dir}`")
    index = read_json(path)
    if index is None:
        raise IltInputError(f"{path}: not found, so {experts_dir} is not an experts directory; train experts "
                            f"into it with `ilt experts train --config conf/experts.yaml ... --out {experts_dir}`")
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        found = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise _index_error(path, "format", f"expected {FORMAT!r}, got {found!r}")
    base = index.get("base_model")
    if not isinstance(base, str) or not base:
        raise _index_error(path, "base_model", "missing")
    entries = index.get("languages")
    if not isinstance(entries, dict) or not entries:
        raise _index_error(path, "languages", "no finished expert yet")
    adapters = {}
    for language, entry in entries.items():
        safe_name(language, "language code", f"{path}: languages")
        relative = entry.get("adapter") if isinstance(entry, dict) else None
        if not isinstance(relative, str) or not relative:
            raise _index_error(path, f"languages.{language}.adapter", "missing")
        adapter = experts_dir / relative
        if not adapter.resolve().is_relative_to(experts_dir.resolve()) or Path(relative).is_absolute():
            raise _index_error(path, f"languages.{language}.adapter", f"{relative!r} is not inside {experts_dir}")
        if not (adapter / ADAPTER_CONFIG).is_file():
            raise _index_error(path, f"languages.{language}.adapter", f"{adapter} holds no {ADAPTER_CONFIG}")
        adapters[str(language)] = adapter
    pending = [lang for lang in index.get("planned") or [] if lang not in adapters]
    if pending:
        log.warning("%s: %d planned expert(s) not trained yet (%s): their cuts decode with the base model",
                    path, len(pending), ", ".join(pending))
    base_dir = Path(base)
    return (base_dir if base_dir.is_absolute() else experts_dir / base_dir), adapters


def _open_index(out_dir: Path, config: ExpertsConfig, model_dir: Path, languages: list[str]) -> dict[str, Any]:
    """``experts.json`` for this run: the finished languages of an earlier run
    in ``out_dir`` kept (it must have trained on the same base model)."""
    path, base = out_dir / EXPERTS_JSON, str(model_dir.resolve())
    old = read_json(path)
    if old is not None and (not isinstance(old, dict) or old.get("base_model") != base):
        found = old.get("base_model") if isinstance(old, dict) else None
        raise IltInputError(f"{path}: base_model: the experts there were trained on {found}, not {base}; "
                            f"train into another --out, or remove {out_dir}")
    return {"format": FORMAT, "name": config.name, "backbone": to_dict(config)["backbone"], "base_model": base,
            "planned": languages, "languages": dict((old or {}).get("languages") or {})}


# --------------------------------------------------------------------------- training


@dataclass
class ExpertsResult:
    """What :func:`train_experts` did."""

    out_dir: Path
    #: every expert's language, in training order
    languages: list[str]
    #: the languages trained by this call, with their rounds' results (:class:`ilt.training.loop.TrainResult`)
    trained: dict[str, Any] = field(default_factory=dict)
    #: the languages an earlier run had finished (not trained again)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        """A few lines for the command line."""
        lines = []
        for language in self.languages:
            if language in self.trained:
                result = self.trained[language]
                best = "no dev score" if result.best_metric is None else f"best {result.best_metric:.4g}"
                lines.append(f"expert {language}: {result.steps} steps; {best} -> {result.best_dir}")
            else:
                lines.append(f"expert {language}: already trained, skipped")
        lines.append(f"{len(self.languages)} expert(s) in {self.seconds:.1f} s -> {self.out_dir / EXPERTS_JSON}")
        return "\n".join(lines)


def _training_sources(config: ExpertsConfig, train_cuts: Sequence[tuple[Any, ...]] | None,
                      where: str) -> list[DataSource]:
    sources = ([DataSource(str(item[0]), float(item[1]), *item[2:]) for item in train_cuts]
               if train_cuts is not None else list(config.task.data))
    if not sources:
        raise IltInputError(f"{where}: task.data: no training data; list cuts under task.data or pass --train CUTS")
    return sources


def _cut_language(cut: Any) -> str | None:
    language = cut_language(cut)
    return language.strip().lower() if language else None


def count_languages(sources: Sequence[DataSource]) -> Counter:
    """Training cuts per language (``None``: no language) over ``sources``,
    each source restricted to its own ``languages`` when it has them."""
    from ilt.data.manifests import load_cuts

    counts: Counter = Counter()
    for source in sources:
        allowed = {lang.lower() for lang in source.languages} if source.languages is not None else None
        for cut in load_cuts(source.cuts):
            language = _cut_language(cut)
            if allowed is None or language in allowed:
                counts[language] += 1
    return counts


def plan_languages(section: ExpertsSection, counts: Counter, where: str, sources: Sequence[DataSource]) -> list[str]:
    """The languages that get an expert: ``section.languages`` (each must have
    at least ``min_cuts`` training cuts), else every language of the cuts with
    that many, sorted.

    :raises IltInputError: a listed language without (enough) cuts; no language at all.
    """
    found = {lang: n for lang, n in counts.items() if lang is not None}
    names = ", ".join(s.cuts for s in sources)
    if counts.get(None):
        log.info("experts: %d training cut(s) without a language: no expert trains on them", counts[None])
    if section.languages is not None:
        for i, language in enumerate(section.languages):
            safe_name(language, "language code", f"{where}: experts.languages[{i}]")
            n = found.get(language, 0)
            if n == 0:
                raise IltInputError(f"{where}: experts.languages[{i}]: {language!r} has no cuts in the training "
                                    f"data ({names}); remove it from experts.languages or add its cuts")
            if n < section.min_cuts:
                raise IltInputError(f"{where}: experts.languages[{i}]: {language!r} has {n} training cut(s), fewer "
                                    f"than experts.min_cuts ({section.min_cuts}); lower min_cuts or remove it")
        return list(section.languages)
    chosen = sorted(lang for lang, n in found.items() if n >= section.min_cuts)
    for language in chosen:  # each names out_dir/<lang>/ and dev/<lang>.jsonl.gz: never a path
        safe_name(language, "language code", names)
    left = {lang: n for lang, n in sorted(found.items()) if n < section.min_cuts}
    if left:
        log.info("experts: languages with fewer than %d training cut(s) get no expert: %s", section.min_cuts,
                 ", ".join(f"{lang} ({n})" for lang, n in left.items()))
    if not chosen:
        raise IltInputError(f"{where}: no language of the training data ({names}) has experts.min_cuts "
                            f"({section.min_cuts}) cuts ({dict(sorted(found.items())) or 'no language at all'}); "
                            f"lower experts.min_cuts or add cuts with a language")
    return chosen


def _expert_data(sources: Sequence[DataSource], language: str) -> list[DataSource]:
    """The sources restricted to ``language`` (those that may hold it)."""
    return [dataclasses.replace(s, languages=[language]) for s in sources
            if s.languages is None or language in {lang.lower() for lang in s.languages}]


def _dev_manifests(dev_cuts: str | Path | None, languages: Sequence[str], out_dir: Path,
                   is_main: bool) -> dict[str, tuple[Path | None, int]]:
    """``{language: (its dev manifest under out_dir/dev, cuts)}``; ``(None, 0)``
    for a language without dev cuts (its ``best/`` is its final adapter)."""
    from lhotse import CutSet

    from ilt.data.manifests import load_cuts, save_manifest

    if dev_cuts is None:
        return {language: (None, 0) for language in languages}
    by_language: dict[str | None, list[Any]] = defaultdict(list)
    for cut in load_cuts(dev_cuts):
        by_language[_cut_language(cut)].append(cut)
    out: dict[str, tuple[Path | None, int]] = {}
    for language in languages:
        own = by_language.get(language)
        if not own:
            log.warning("expert %s: no dev cuts in this language in %s: its best/ is its final adapter",
                        language, dev_cuts)
            out[language] = (None, 0)
            continue
        path = out_dir / "dev" / f"{language}.jsonl.gz"
        if is_main:  # byte-reproducible: the same cuts give the same file (and sha256) on a rerun
            save_manifest(CutSet.from_cuts(own), path)
        out[language] = (path, len(own))
    return out


def _finished(out_dir: Path, entry: Any, digest: str) -> bool:
    return (isinstance(entry, dict) and entry.get("config_hash") == digest
            and (out_dir / str(entry.get("adapter")) / ADAPTER_CONFIG).is_file())


def _start(config: ExpertsConfig, out_dir: Path, model_dir: Path, languages: list[str], command: str | None,
           is_main: bool) -> dict[str, Any]:
    """``experts.json`` (finished languages of an earlier run kept), ``experts.yaml`` and ``command.txt``."""
    index = _open_index(out_dir, config, model_dir, languages)
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_dir / EXPERTS_YAML, dump_yaml(config))
        if command:
            write_text_atomic(out_dir / "command.txt", command.rstrip("\n") + "\n")
        write_json_atomic(out_dir / EXPERTS_JSON, index)
    return index


def train_experts(
    config: ExpertsConfig,
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    train_cuts: Sequence[tuple[Any, ...]] | None = None,
    dev_cuts: str | Path | None = None,
    decode_config: DecodeConfig | None = None,
    command: str | None = None,
    force_precision: bool = False,
    where: str = "<experts config>",
    on_step: Callable[[str, int, dict[str, Any]], None] | None = None,
) -> ExpertsResult:
    """Train one LoRA expert per language on ``model_dir`` into ``out_dir/<lang>/``.

    :param config: the experts config (a round plus ``experts:``).
    :param train_cuts: ``[(manifest, weight)]`` replacing ``config.task.data``.
    :param dev_cuts: a dev manifest; each expert is scored on its language's cuts.
    :param where: the config file, named in errors.
    :param on_step: called with the language, the step and its log record
        after each optimiser step (see :func:`ilt.training.loop.train_round`).
    :raises IltInputError: no training data, a listed language without cuts,
        ``out_dir`` holding experts of another base model, or any error of
        :func:`ilt.training.loop.train_round`.
    """
    from tqdm.auto import tqdm

    from ilt.training.loop import resolve_round, train_round

    started, out_dir, model_dir = time.monotonic(), Path(out_dir), Path(model_dir)
    sources = _training_sources(config, train_cuts, where)
    counts = count_languages(sources)
    languages = plan_languages(config.experts, counts, where, sources)
    state = process_state()
    index = _start(config, out_dir, model_dir, languages, command, state.is_main_process)
    devs = _dev_manifests(dev_cuts, languages, out_dir, state.is_main_process)
    state.wait_for_everyone()
    result = ExpertsResult(out_dir=out_dir, languages=languages)
    bar = tqdm(total=len(languages), desc="experts", unit="expert", disable=not state.is_local_main_process)
    try:
        for number, language in enumerate(languages, 1):
            progress = f"expert {number}/{len(languages)}: {language}"
            bar.set_description(progress)
            round_config = config.expert_round(language, _expert_data(sources, language))
            digest = config_hash(resolve_round(round_config, None))
            entry = index["languages"].get(language)
            if _finished(out_dir, entry, digest):
                log.info("%s: already trained (%s): skipped", progress, out_dir / entry["adapter"])
                result.skipped.append(language)
                bar.update(1)
                continue
            dev, dev_count = devs[language]
            log.info("%s: %d training cut(s), %d dev cut(s) -> %s", progress, counts[language], dev_count,
                     out_dir / language)
            step_hook = None if on_step is None else functools.partial(on_step, language)
            trained = train_round(round_config, model_dir, out_dir / language, dev_cuts=dev,
                                  decode_config=decode_config, command=command, force_precision=force_precision,
                                  on_step=step_hook)
            index["languages"][language] = {
                "adapter": f"{language}/{trained.best_dir.name}", "round": round_config.name, "config_hash": digest,
                "steps": trained.steps, "metric": config.select.metric, "best_metric": trained.best_metric,
                "train_cuts": counts[language], "dev_cuts": dev_count}
            if state.is_main_process:
                write_json_atomic(out_dir / EXPERTS_JSON, index)
            result.trained[language] = trained
            bar.update(1)
    finally:
        bar.close()
    result.seconds = time.monotonic() - started
    log.info("experts: %d trained, %d already trained, in %.1f s -> %s", len(result.trained), len(result.skipped),
             result.seconds, out_dir / EXPERTS_JSON)
    return result


# --------------------------------------------------------------------------- routing


@dataclass(frozen=True)
class Route:
    """How one cut decodes."""

    #: the language it decodes in (``None``: none known)
    language: str | None
    #: its expert: a language with an expert, or :data:`BASE`
    expert: str
    #: ``language`` (the cut's own) or ``detection`` (the base model's)
    by: str


@contextlib.contextmanager
def only_expert(model: Any, name: str) -> Iterator[None]:
    """Within the block, ``model`` (a PEFT model holding the experts) runs
    with the expert ``name`` alone, or with none for :data:`BASE`; a model
    without adapters runs as it is."""
    if not hasattr(model, "peft_config"):
        yield
        return
    if name == BASE:
        with model.disable_adapter():
            yield
        return
    previous = model.active_adapter
    model.set_adapter(name, inference_mode=True)
    try:
        yield
    finally:
        model.set_adapter(previous, inference_mode=True)


def route_cuts(backbone: Any, model: Any, cuts: Sequence[Any], config: DecodeConfig,
               experts: Collection[str]) -> tuple[dict[str, Route], dict[str, Any] | None]:
    """Each cut's :class:`Route` by cut ID, and the language-detection counts
    (``None`` when nothing was detected).

    A cut decodes in its own language with that language's expert. Under
    ``language: detect``, and for a cut without a language, the base model
    (every LoRA off) detects the language first, when the backbone can; a
    language without an expert decodes with the base model.
    """
    own = {cut.id: _cut_language(cut) for cut in cuts}
    detect = config.language == "detect"
    need = [cut for cut in cuts if detect or own[cut.id] is None]
    detected: dict[str, str | None] = {}
    detection = None
    if need and (detect or getattr(backbone, "detect_language", None) is not None):
        decoder = Decoder(backbone, model, config)
        with only_expert(model, BASE):
            detected = decoder.detect_languages(need)
        detection = decoder.stats.language_detection
    routes = {}
    for cut in cuts:
        by = "detection" if cut.id in detected else "language"
        language = detected[cut.id] if cut.id in detected else own[cut.id]
        routes[cut.id] = Route(language, language if language in experts else BASE, by)
    return routes, detection


def routing_summary(routes: dict[str, Route], batching: str) -> dict[str, Any]:
    """Counts of a routing: cuts per expert, base-model cuts per language, detected cuts."""
    by_expert = Counter(r.expert for r in routes.values() if r.expert != BASE)
    base = Counter(r.language or "none" for r in routes.values() if r.expert == BASE)
    return {"batching": batching, "cuts": len(routes), "experts": dict(sorted(by_expert.items())),
            "base_model": dict(sorted(base.items())),
            "detected": sum(r.by == "detection" for r in routes.values())}


def _log_routing(summary: dict[str, Any]) -> None:
    experts, base = summary["experts"], summary["base_model"]
    log.info("experts: %d cut(s): %d with their language's expert (%s), %d with the base model for want of an "
             "expert (%s); %d routed by the base model's language detection", summary["cuts"],
             sum(experts.values()), ", ".join(f"{k} {v}" for k, v in experts.items()) or "-",
             sum(base.values()), ", ".join(f"{k} {v}" for k, v in base.items()) or "-", summary["detected"])


def load_expert_model(backbone: Any, adapters: dict[str, Path]) -> Any:
    """``backbone.model`` wrapped in one PEFT model holding every adapter of
    ``adapters`` (``{language: adapter directory}``) under its language's
    name, in eval mode; ``backbone.model`` itself when there are none.

    :raises IltInputError: an expert of another backbone, one with language-ID
        embeddings, or weights that do not fit the model.
    """
    if not adapters:
        return backbone.model
    for language, directory in adapters.items():
        if read_adapter_round(directory).backbone.name != backbone.name:
            raise IltInputError(f"{directory}: the expert for {language!r} is a LoRA for another backbone than "
                                f"{backbone.name!r}")
        if (Path(directory) / lid.LID_FILE).is_file():
            raise IltInputError(f"{directory}: the expert for {language!r} has language-ID embeddings, which one "
                                f"batch of several experts cannot hold; train experts without lid_embeddings")
    return load_adapters(backbone.model, adapters,
                         labels={language: f"the expert for {language!r}" for language in adapters})


# --------------------------------------------------------------------------- decoding


class ExpertDecoder(Decoder):
    """A :class:`ilt.asr.decode.Decoder` that decodes each cut by its
    :class:`Route` (see :func:`decode_with_experts`): in the route's language,
    with the route's expert. ``per-group`` batches hold one expert and one
    language; ``mixed`` batches hold one beam size, each row with its own
    expert (PEFT's ``adapter_names``). A cut in a language the backbone does
    not have is a counted skip, and a refused batch skips that batch alone."""

    def __init__(self, backbone: Any, model: Any, routes: dict[str, Route], config: DecodeConfig,
                 batching: str = "mixed", scores: bool = False) -> None:
        super().__init__(backbone, model, config, scores=scores, mix_languages=batching == "mixed")
        self.routes, self.batching = routes, batching
        multilingual = getattr(backbone, "is_multilingual", False)
        self.supported = set(getattr(backbone, "languages", ())) if multilingual else None

    def language(self, cut: Any) -> str | None:
        return self.routes[cut.id].language

    def group_key(self, cut: Any) -> tuple[Any, ...]:
        """Per-group: one expert and one language per batch; mixed: as :class:`ilt.asr.decode.Decoder`'s."""
        if self.batching == "per-group":
            route = self.routes[cut.id]
            return (route.expert, route.language or "")
        return super().group_key(cut)

    def usable(self, batch: Sequence[Any]) -> list[Any]:
        """The cuts of ``batch`` in languages the backbone has; the others are counted skips."""
        kept = []
        for cut in batch:
            language = self.routes[cut.id].language
            if self.supported is not None and language is not None and language not in self.supported:
                self.skips.skip("unsupported language", cut.id, f"language {language!r} is not supported by "
                                                                f"this {self.backbone.name} model")
            else:
                kept.append(cut)
        return kept

    def decode_batch(self, batch: Sequence[Any]) -> list[dict[str, Any]]:
        """The records of one batch, each with its ``expert`` and ``routed_by``."""
        loaded = self.load_batch(self.usable(batch))
        rows = [self.routes[cut.id] for cut, chunks, _ in loaded for _ in chunks]
        flat = [chunk for _, chunks, _ in loaded for chunk in chunks]
        if not flat:
            return []
        languages, experts = [r.language for r in rows], [r.expert for r in rows]
        try:
            if self.batching == "mixed" and hasattr(self.model, "peft_config"):
                texts = self.decode(flat, languages, adapters=experts)
            else:  # per-group: one expert for the batch; or no adapter loaded at all
                with only_expert(self.model, experts[0]):
                    texts = self.decode(flat, languages)
        except IltInputError as exc:
            for cut, _, _ in loaded:
                self.skips.skip("unsupported language", cut.id, str(exc))
            return []
        chunk_scores = self.score_routes(flat, texts, rows) if self.scores else None
        records, pos = [], 0
        for item in loaded:
            n, route = len(item[1]), self.routes[item[0].id]
            own = chunk_scores[pos:pos + n] if chunk_scores is not None else None
            record = self.records([item], texts[pos:pos + n], route.language,
                                  None if own is None or None in own else own)[0]
            records.append({**record, "expert": None if route.expert == BASE else route.expert, "routed_by": route.by})
            pos += n
        return records

    def score_routes(self, flat: Sequence[Any], texts: Sequence[str], rows: Sequence[Route]) -> list[Any]:
        """Each chunk's confidence under its own expert and language (``None`` where the backbone cannot score)."""
        out: list[Any] = [None] * len(flat)
        groups: dict[tuple[str, str | None], list[int]] = defaultdict(list)
        for i, route in enumerate(rows):
            groups[(route.expert, route.language)].append(i)
        for (expert, language), idx in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
            with only_expert(self.model, expert):
                scored = self.score([flat[i] for i in idx], [texts[i] for i in idx], language)
            for i, value in zip(idx, scored or [None] * len(idx)):
                out[i] = value
        return out


def plan_batches(backbone: Any, cuts: Sequence[Any], routes: dict[str, Route], config: DecodeConfig,
                 batching: str) -> list[list[Any]]:
    """The batches :func:`decode_with_experts` decodes ``cuts`` in, in order
    (:meth:`ExpertDecoder.group_key`): at most ``config.batch_size`` cuts of
    similar duration; per-group, each of one language (and expert); mixed, each
    of one beam size (cuts without a language apart: their language cannot be
    forced per row)."""
    decoder = ExpertDecoder(backbone, backbone.model, routes, config, batching)
    return [batch for group in decoder.plan(cuts) for batch in group]


def decode_with_experts(backbone: Any, model: Any, cuts: Sequence[Any], routes: dict[str, Route],
                        config: DecodeConfig, *, batching: str = "mixed", out_dir: str | Path | None = None,
                        progress: bool = True, scores: bool = False,
                        detection: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Decode ``cuts`` with ``model`` (:func:`load_expert_model`), each by its
    route (:func:`route_cuts`), through an :class:`ExpertDecoder`; records as
    :func:`ilt.asr.decode.decode_cuts` gives them, in input order, plus
    ``expert`` (``None``: the base model) and ``routed_by``. With ``out_dir``,
    also writes ``routing.json``.

    :param batching: ``mixed`` (several experts per batch) or ``per-group``
        (one language group after another); a backbone without
        ``per_row_languages`` decodes per group.
    :param detection: the language-detection counts of :func:`route_cuts`, for ``decode_stats.json``.
    """
    if batching not in BATCHING:
        raise ValueError(f"batching {batching!r}: expected one of {', '.join(BATCHING)}")
    if batching == "mixed" and not getattr(backbone, "per_row_languages", False):
        log.warning("experts: the %s backbone takes one language per batch: decoding per group", backbone.name)
        batching = "per-group"
    cut_list = list(cuts)
    decoder = ExpertDecoder(backbone, model, routes, config, batching, scores)
    decoder.stats.language_detection = detection
    records = decoder.decode_batches(cut_list, progress=progress, desc=f"decode ({batching} experts)")
    if out_dir is not None:
        write_outputs(records, out_dir, config, decoder.stats)
        write_json_atomic(Path(out_dir) / ROUTING_JSON, routing_summary({c.id: routes[c.id] for c in cut_list},
                                                                        batching))
    return records


def decode_expert_files(experts_dir: str | Path, cuts_path: str | Path, out_dir: str | Path,
                        config: DecodeConfig | None = None, *, model_dir: str | Path | None = None,
                        batching: str = "mixed", device: Any = None, progress: bool = True,
                        scores: bool = False) -> list[dict[str, Any]]:
    """``ilt decode --experts``: load the base model (``model_dir``, default
    the one ``experts.json`` names) and the experts the cuts need, route and
    decode the manifest ``cuts_path``, write the outputs under ``out_dir``.

    Under ``accelerate launch`` each process decodes its shard and the main
    process writes the gathered records (as :func:`ilt.asr.decode.decode_files`).
    The manifest is read as a stream (:func:`ilt.data.cut_stream.shard_of`):
    a process holds its shard's cuts and every cut's ID only.
    """

    from ilt.core.registry import create
    from ilt.data.cut_stream import shard_of

    config = config or DecodeConfig()
    if config.quantize != "none":
        raise IltInputError(f"quantize: {config.quantize} cannot decode with LoRA experts (unmerged adapters): "
                            f"set quantize: none")
    base, adapters = load_experts(experts_dir)
    if model_dir is None and not base.is_dir():
        raise IltInputError(f"{Path(experts_dir) / EXPERTS_JSON}: base_model: {base} is not a directory here; "
                            f"pass the base model with --model DIR")
    state = process_state()
    # one streamed pass: every cut's ID (for the order) and this process's shard only
    ids, shard = shard_of(cuts_path, state.process_index, state.num_processes)
    device = state.device if device is None else device
    precision = config.precision
    if getattr(device, "type", str(device)).startswith("cpu") and precision != "fp32":
        log.warning("decode: precision %s on a CPU: decoding in fp32 instead", precision)
        precision = "fp32"
    backbone = create("backbone", config.backbone, Path(model_dir or base), dtype=precision, device=device)
    routes, detection = route_cuts(backbone, backbone.model, shard, config, set(adapters))
    summary = routing_summary(routes, batching)
    _log_routing(summary)
    model = load_expert_model(backbone, {lang: adapters[lang] for lang in summary["experts"]})
    records = decode_with_experts(backbone, model, shard, routes, config, batching=batching,
                                  out_dir=out_dir if state.num_processes == 1 else None,
                                  progress=progress and state.is_local_main_process, scores=scores,
                                  detection=detection)
    if state.num_processes > 1:
        records = gather_in_order(records, ids, out_dir, config, state)
    return records


__all__ = ["BASE", "EXPERTS_JSON", "ExpertDecoder", "ExpertsResult", "Route", "count_languages", "decode_expert_files",
           "decode_with_experts", "load_expert_model", "load_experts", "only_expert", "plan_batches",
           "plan_languages", "route_cuts", "routing_summary", "train_experts"]
