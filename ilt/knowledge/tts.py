"""TTS audio augmentation (the ILT paper, section 3.2.2): ``ilt augment tts``.

Each sentence of a text file (the rare-token sentences of ``ilt augment
select-text``: ``LANG<TAB>sentence`` lines, or bare lines in ``language``) is
spoken by an augmenter plugin (``espeak``, ``f5tts``, ``sparktts``...) in the
voice of a prompt cut: a real recording and its transcript, of the sentence's
language. Prompts are dealt out in turn from a seeded shuffle of the prompts of
that language, so every prompt speaker is used about equally.

Outputs in ``out_dir``::

    audio/<id>.wav       one file per produced utterance (written atomically)
    parts/part-NNNNN.jsonl.gz
                         the cuts of each finished chunk of targets: a rerun
                         after a kill skips these chunks (resume)
    plan.json            what was asked (augmenter, targets' hash): a rerun
                         with other inputs is refused unless ``force``
    cuts.jsonl.gz        all produced cuts, written at the end
    summary.json         counts: sentences, prompts, targets, produced, skipped by reason
    .done                written last; a rerun with the same plan does nothing

Bad input: an empty text file or prompts without any usable cut is an
:class:`ilt.errors.IltInputError`; a prompt without a transcript (a voice
cloning engine needs it), a sentence whose language no prompt speaks and a
target the augmenter could not produce are counted, logged skips.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any, Sequence

from ilt.components import AugmentTarget
from ilt.core.files import (
    read_json,
    safe_name,
    sha256_file,
    write_json_atomic,
    write_text_atomic,
)
from ilt.core.runtime import Skips
from ilt.errors import IltInputError

log = logging.getLogger("ilt")

AUDIO_DIR = "audio"
PARTS_DIR = "parts"
PLAN_JSON = "plan.json"
CUTS = "cuts.jsonl.gz"
SUMMARY_JSON = "summary.json"
DONE = ".done"

#: skip reasons
NO_TRANSCRIPT = "prompt without transcript"
NO_LANGUAGE = "prompt without language"
NO_PROMPT = "sentence in a language no prompt speaks"
NOT_PRODUCED = "not produced by the augmenter"
NOT_ASKED = "sentence in a language not asked for (--languages)"


def usable_prompts(prompts: Any, skips: Skips, where: str | Path | None = None) -> dict[str, list[Any]]:
    """The prompt cuts by language, those without a transcript or a language
    skipped (counted). A prompt ID that could not name a file (its audio is
    written as ``<id>.prompt.wav``) is an error naming ``where`` (:func:`ilt.core.files.safe_name`)."""
    from ilt.data.languages import base_language

    by_language: dict[str, list[Any]] = {}
    for cut in prompts:
        safe_name(cut.id, "prompt ID", where)
        sup = cut.supervisions[0] if cut.supervisions else None
        if sup is None or not (sup.text or "").strip():
            skips.skip(NO_TRANSCRIPT, cut.id)
        elif not sup.language:
            skips.skip(NO_LANGUAGE, cut.id)
        else:
            by_language.setdefault(base_language(sup.language), []).append(cut)
    return by_language


def plan_targets(sentences: Sequence[Any], by_language: dict[str, list[Any]], skips: Skips, *,
                 per_sentence: int = 1, seed: int = 0, prefix: str = "tts") -> list[AugmentTarget]:
    """One target per sentence and prompt turn: ``per_sentence`` different prompts
    (as far as there are) per sentence, dealt out in turn per language."""
    from ilt.data.languages import base_language

    order = {}
    for language, cuts in sorted(by_language.items()):
        ids = sorted(c.id for c in cuts)
        random.Random(f"{seed}/{language}").shuffle(ids)
        order[language] = ids
    turn = dict.fromkeys(order, 0)
    targets = []
    for n, sentence in enumerate(sentences):
        language = base_language(sentence.language)
        ids = order.get(language)
        if not ids:
            skips.skip(NO_PROMPT, sentence.where, f"language {sentence.language!r}")
            continue
        for k in range(per_sentence):
            targets.append(AugmentTarget(id=f"{prefix}-{n:06d}-{k}", text=sentence.text, language=sentence.language,
                                         prompt_id=ids[turn[language] % len(ids)]))
            turn[language] += 1
    return targets


def _plan_record(augmenter: Any, targets: Sequence[AugmentTarget], chunk_size: int,
                 prompts_path: str | Path) -> dict[str, Any]:
    """What the set is made of (its fingerprint): the augmenter, the targets
    (texts, languages, prompt IDs) and the prompt manifest's bytes."""
    blob = json.dumps([[t.id, t.text, t.language, t.prompt_id] for t in targets], ensure_ascii=False)
    spec = augmenter.to_yaml() if hasattr(augmenter, "to_yaml") else str(augmenter)
    return {"augmenter": spec, "targets": len(targets), "chunk_size": chunk_size,
            "targets_sha256": hashlib.sha256(blob.encode("utf-8")).hexdigest(),
            "prompts_sha256": sha256_file(prompts_path)}


def _start(out_dir: Path, plan: dict[str, Any], force: bool) -> bool:
    """Prepare ``out_dir`` for ``plan``; True when it is finished already."""
    old = read_json(out_dir / PLAN_JSON)
    if old is not None and old != plan:
        if not force:
            raise IltInputError(f"{out_dir}: made from other inputs or options ({out_dir / PLAN_JSON}); "
                                f"use another --out, or --overwrite to start it again")
        old = None
    if force or old is None:
        for name in (PARTS_DIR, AUDIO_DIR):
            shutil.rmtree(out_dir / name, ignore_errors=True)
        for name in (CUTS, SUMMARY_JSON, DONE):
            (out_dir / name).unlink(missing_ok=True)
        write_json_atomic(out_dir / PLAN_JSON, plan)
        return False
    return (out_dir / DONE).is_file() and (out_dir / CUTS).is_file()


def _run_chunks(engine: Any, name: str, prompts: Any, targets: Sequence[AugmentTarget], out_dir: Path,
                chunk_size: int) -> list[Any]:
    """Synthesise chunk by chunk; a chunk whose part manifest exists is read back, not redone."""
    from lhotse import CutSet
    from tqdm import tqdm

    from ilt.data.manifests import load_cuts, save_manifest

    by_id = {c.id: c for c in prompts}
    produced: list[Any] = []
    chunks = [targets[i:i + chunk_size] for i in range(0, len(targets), chunk_size)]
    with tqdm(total=len(targets), desc=f"tts ({name})", unit="utt", dynamic_ncols=True) as bar:
        for n, chunk in enumerate(chunks):
            part = out_dir / PARTS_DIR / f"part-{n:05d}.jsonl.gz"
            if part.is_file():
                cuts = list(load_cuts(part))
            else:
                used = CutSet.from_cuts([by_id[i] for i in sorted({t.prompt_id for t in chunk})])
                cuts = list(engine.augment(used, chunk, out_dir / AUDIO_DIR))
                wanted = {t.id for t in chunk}
                strange = [c.id for c in cuts if c.id not in wanted]
                if strange:
                    raise RuntimeError(f"augmenter {name} returned cut(s) it was not asked for: {strange[:3]}")
                save_manifest(CutSet.from_cuts(cuts), part)
            produced.extend(cuts)
            bar.update(len(chunk))
    return produced


def synthesize(augmenter: Any, prompts_path: str | Path, texts_path: str | Path, out_dir: str | Path, *,
               language: str | None = None, per_sentence: int = 1, chunk_size: int = 16, seed: int = 0,
               prefix: str | None = None, force: bool = False,
               languages: Sequence[str] | None = None) -> dict[str, Any]:
    """Speak every sentence of ``texts_path`` in the voice of prompts of ``prompts_path``; return the summary.

    :param augmenter: a registered augmenter's name or :class:`ilt.config.ComponentSpec`.
    :param per_sentence: how many prompts (voices) speak each sentence.
    :param prefix: of the new cut IDs (``<prefix>-<sentence>-<k>``; default the augmenter's name).
    :param languages: speak only the sentences in these languages (the paper: English); the others
        are counted skips. Default: every language.
    """
    from lhotse import CutSet

    from ilt.core.registry import create
    from ilt.data.manifests import load_cuts, save_manifest
    from ilt.knowledge.text_tasks import read_sentences

    if per_sentence < 1 or chunk_size < 1:
        raise IltInputError(f"--per-sentence {per_sentence}, --chunk-size {chunk_size}: both must be at least 1")
    out_dir, name = Path(out_dir), str(augmenter)
    if prefix is not None:
        safe_name(prefix, "cut ID prefix", "--prefix")  # it starts every new cut's ID and wav file name
    sentences = read_sentences(texts_path, language)  # an empty file is an error naming it
    prompts = load_cuts(prompts_path)
    skips = Skips("augment tts")
    if languages:
        from ilt.data.languages import base_language, validate_language

        wanted = {base_language(validate_language(code, "--languages")) for code in languages}
        for sentence in sentences:
            if base_language(sentence.language) not in wanted:
                skips.skip(NOT_ASKED, sentence.where, f"language {sentence.language!r}")
        sentences = [s for s in sentences if base_language(s.language) in wanted]
    by_language = usable_prompts(prompts, skips, prompts_path)
    if not by_language:
        raise IltInputError(f"{prompts_path}: no usable prompt cut ({len(prompts)} cut(s), none with a transcript "
                            f"and a language)")
    targets = plan_targets(sentences, by_language, skips, per_sentence=per_sentence, seed=seed,
                           prefix=prefix or name)
    engine = create("augmenter", augmenter)  # an unknown name or bad option fails before any work
    plan = _plan_record(augmenter, targets, chunk_size, prompts_path)
    if _start(out_dir, plan, force):
        summary = read_json(out_dir / SUMMARY_JSON)
        log.info("augment tts: %s is finished already (%s produced)", out_dir, summary.get("produced"))
        return summary
    produced = _run_chunks(engine, name, prompts, targets, out_dir, chunk_size)
    done = {c.id for c in produced}
    for target in targets:
        if target.id not in done:
            skips.skip(NOT_PRODUCED, target.id)
    save_manifest(CutSet.from_cuts(produced), out_dir / CUTS)
    summary = {"augmenter": name, "sentences": len(sentences), "prompts": len(prompts),
               "prompt_speakers": len({c.supervisions[0].speaker for cs in by_language.values() for c in cs}),
               "targets": len(targets), "produced": len(produced),
               "hours": round(sum(c.duration for c in produced) / 3600, 4), "skipped": skips.report()}
    write_json_atomic(out_dir / SUMMARY_JSON, summary)
    write_text_atomic(out_dir / DONE, json.dumps(plan) + "\n")
    log.info("augment tts: %d of %d target(s) produced -> %s", len(produced), len(targets), out_dir / CUTS)
    return summary
