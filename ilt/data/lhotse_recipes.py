"""Third-party corpora through Lhotse's own recipes (``ilt prepare lhotse``).

The extra data of the Feedback and Fix knowledge tasks (LibriSpeech,
Common Voice, MLS, GigaSpeech, VoxPopuli, ...) is prepared by the matching
``lhotse.recipes.prepare_<recipe>`` function; this module only turns whatever
nesting of ``{"recordings", "supervisions"}`` that recipe returns into ilt's
manifest naming, with the ISO language set on every supervision, and writes
the cuts atomically.
"""

from __future__ import annotations

import inspect
import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Sequence

from lhotse import CutSet, RecordingSet, SupervisionSet

from ilt.data.languages import WHISPER_LANGUAGES, validate_language
from ilt.data.manifests import manifest_paths, manifests_exist, save_manifests
from ilt.errors import IltInputError

log = logging.getLogger("ilt")


def _parse_options(options: Sequence[str]) -> dict[str, Any]:
    import yaml

    parsed = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise IltInputError(f"--option {item!r}: expected KEY=VALUE")
        parsed[key.replace("-", "_")] = yaml.safe_load(value)
    return parsed


def _walk(manifests: Any, keys: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], dict[str, Any]]]:
    """Yield ``(key path, {"recordings", "supervisions"})`` from a recipe's nested result."""
    if isinstance(manifests, dict) and "recordings" in manifests and "supervisions" in manifests:
        yield keys, manifests
        return
    if isinstance(manifests, dict):
        for key, value in manifests.items():
            yield from _walk(value, keys + (str(key),))


def _recipe(recipe: str) -> Any:
    """``lhotse.recipes.prepare_<recipe>``.

    :raises IltInputError: no recipe given, or one lhotse does not have (listing those it has).
    """
    import lhotse.recipes

    if not recipe:
        raise IltInputError("--recipe is required (a lhotse.recipes.prepare_<recipe> name, e.g. librispeech)")
    prepare = getattr(lhotse.recipes, f"prepare_{recipe}", None)
    if prepare is None:
        known = sorted(n[len("prepare_"):] for n in dir(lhotse.recipes) if n.startswith("prepare_"))
        raise IltInputError(f"--recipe {recipe!r}: lhotse has no prepare_{recipe}; known: {', '.join(known)}")
    return prepare


def _recipe_kwargs(prepare: Any, recipe: str, option: Sequence[str]) -> dict[str, Any]:
    """The ``--option KEY=VALUE`` arguments, each a parameter of ``prepare``."""
    kwargs = _parse_options(option)
    params = inspect.signature(prepare).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise IltInputError(f"--option: prepare_{recipe} takes no {', '.join(unknown)}; it takes: "
                            f"{', '.join(p for p in params if p not in ('corpus_dir', 'output_dir'))}")
    return kwargs


def _split_of(keys: tuple[str, ...], default_language: str | None) -> tuple[str, str | None]:
    """``(split name, language)`` of one part of a recipe's result: a language
    key (Common Voice, MLS) names the language and prefixes the split."""
    lang = next((k for k in keys if k in WHISPER_LANGUAGES), default_language)
    split = "_".join(k for k in keys if k not in WHISPER_LANGUAGES) or "all"
    if len(keys) > 1 and any(k in WHISPER_LANGUAGES for k in keys):
        split = f"{lang}_{split}"
    return split, lang


def _save_split(parts: dict[str, Any], lang: str | None, paths: dict[str, Path], where: str) -> CutSet:
    """Cuts of one split (one per supervision, every supervision with an ISO
    language), saved with their recordings and supervisions.

    :param where: ``corpus_dir: recipe split 'x'``, for the error.
    """
    recordings: RecordingSet = parts["recordings"]
    # Recipes write names ("English") or nothing; ilt needs ISO 639-1 codes.
    supervisions = SupervisionSet.from_segments(
        s if s.language in WHISPER_LANGUAGES else replace(s, language=lang)
        for s in parts["supervisions"])
    if any(s.language is None for s in supervisions):
        raise IltInputError(f"{where} has no ISO language; pass --language (ISO 639-1)")
    cuts = CutSet.from_manifests(recordings=recordings, supervisions=supervisions)
    cuts = cuts.trim_to_supervisions(keep_overlapping=False).to_eager()
    save_manifests(paths, recordings, supervisions, cuts)
    return cuts


def prepare_lhotse(corpus_dir: Path, out_dir: Path, *, recipe: str = "", language: str = "",
                   name: str = "", option: Sequence[str] = (), force: bool = False) -> dict[str, CutSet]:
    """Prepare a third-party corpus with Lhotse's own recipe ``--recipe`` (librispeech, commonvoice, mls, ...).

    Every split the recipe returns becomes ``{name}_cuts_{split}.jsonl.gz``
    (``name`` defaults to the recipe). ``--language`` sets the ISO 639-1 code on
    supervisions that have none; a recipe keyed by language (Common Voice, MLS)
    uses its keys. ``--option KEY=VALUE`` passes extra arguments to the recipe.
    """
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    prepare = _recipe(recipe)
    name = name or recipe.replace("-", "_")
    default_language = validate_language(language, "--language") if language else None
    kwargs = _recipe_kwargs(prepare, recipe, option)
    out: dict[str, CutSet] = {}
    with tempfile.TemporaryDirectory(prefix=f"ilt-{name}-") as scratch:
        if "output_dir" in inspect.signature(prepare).parameters:
            kwargs["output_dir"] = scratch
        try:
            result = prepare(corpus_dir, **kwargs)
        except (FileNotFoundError, AssertionError, ValueError) as exc:
            raise IltInputError(f"{corpus_dir}: lhotse prepare_{recipe} failed: {exc}") from None
        for keys, parts in _walk(result):
            split, lang = _split_of(keys, default_language)
            paths = manifest_paths(out_dir, name, split)
            if manifests_exist(paths) and not force:
                log.info("prepare %s: %s exists, skipped (use --overwrite to redo)", name, paths["cuts"])
                out[split] = CutSet.from_jsonl_lazy(paths["cuts"])
                continue
            out[split] = _save_split(parts, lang, paths, f"{corpus_dir}: {recipe} split {split!r}")
            log.info("prepare %s: %s: %d cuts -> %s", name, split, len(out[split]), paths["cuts"])
    if not out:
        raise IltInputError(f"{corpus_dir}: lhotse prepare_{recipe} returned no manifests")
    return out
