"""Speaker-similarity data selection (the ILT paper, section 3.2.2): ``ilt select``.

A selector plugin scores each candidate cut against the reference cuts (the
built-ins: SECS, the cosine similarity of speaker embeddings to the nearest
reference speaker, :mod:`ilt.plugins.selectors`); candidates scoring above the
threshold are kept. For a :class:`ilt.components.ScoringSelector` every
candidate's score is written and summarised as a histogram, so a user can
choose the threshold; any other selector is simply asked to ``select``.

Outputs in ``out_dir``::

    cuts.jsonl.gz    the kept candidates, in order, with ``custom["select_score"]``
    scores.jsonl     every scored candidate: id, score, language, speaker, kept
    histogram.md     counts per score bin, and how many a threshold at each bin keeps
    histogram.png    the same as a plot (``png=True``)
    summary.json     counts: candidates, scored, kept, skipped by reason; the quantiles

Candidates without speech (silence) or with unreadable audio are counted
skips; a reference without any cut with speech is an error.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

from ilt.components import SELECT_SCORE, ScoringSelector
from ilt.core.files import atomic_path, write_json_atomic, write_text_atomic
from ilt.core.runtime import Skips
from ilt.errors import IltInputError

log = logging.getLogger("ilt")

CUTS = "cuts.jsonl.gz"
SCORES = "scores.jsonl"
HISTOGRAM_MD = "histogram.md"
HISTOGRAM_PNG = "histogram.png"
SUMMARY_JSON = "summary.json"
BIN = 0.05


def histogram(scores: Sequence[float], threshold: float | None = None, width: float = BIN) -> list[dict[str, Any]]:
    """Bins of ``width`` from the lowest score's bin up to 1: ``low``, ``high``,
    ``count``, and ``kept_from``: how many scores are at or above ``low``."""
    if not scores:
        return []
    first = math.floor(min(scores) / width + 1e-9)
    last = max(first, math.ceil(max(1.0, max(scores)) / width - 1e-9) - 1)
    rows, total = [], len(scores)
    for k in range(first, last + 1):
        low, high = round(k * width, 6), round((k + 1) * width, 6)
        count = sum(1 for s in scores if low <= s < high or (k == last and s >= high))
        rows.append({"low": low, "high": high, "count": count})
    above = total
    for row in rows:
        row["kept_from"] = above
        above -= row["count"]
    return rows


def histogram_markdown(rows: Sequence[dict[str, Any]], threshold: float, kept: int, total: int,
                       title: str) -> str:
    """The histogram as a markdown table with a text bar per bin."""
    peak = max((r["count"] for r in rows), default=0) or 1
    lines = [f"# {title}", "", f"{total} candidate(s) scored; threshold {threshold:g} keeps {kept} "
             f"(score > {threshold:g}).", "", "| score | count | at or above low | |",
             "|---|---:|---:|---|"]
    for r in rows:
        mark = " <- threshold" if r["low"] <= threshold < r["high"] else ""
        bar = "#" * max(1 if r["count"] else 0, round(30 * r["count"] / peak))
        lines.append(f"| [{r['low']:.2f}, {r['high']:.2f}) | {r['count']} | {r['kept_from']} | `{bar}`{mark} |")
    return "\n".join(lines) + "\n"


def histogram_png(scores: Sequence[float], threshold: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    low = math.floor(min(scores) / BIN) * BIN
    ax.hist(scores, bins=[low + k * BIN for k in range(int(round((1.0 - low) / BIN)) + 1)], color="tab:blue")
    ax.axvline(threshold, color="tab:red", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_xlabel("similarity score (SECS)")
    ax.set_ylabel("candidates")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def quantiles(scores: Sequence[float]) -> dict[str, float]:
    import numpy as np

    if not scores:
        return {}
    qs = np.quantile(np.asarray(scores), [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
    return {k: round(float(v), 4) for k, v in zip(("min", "p10", "p25", "median", "p75", "p90", "max"), qs)}


def _build_selector(spec: Any, cache_dir: str | Path | None) -> Any:
    """The selector, given ``cache_dir`` when its factory takes one and the spec does not set it."""
    from ilt.core.registry import create, get_registry

    name = spec if isinstance(spec, str) else spec.name
    options = {} if isinstance(spec, str) else spec.options
    accepted = get_registry().get("selector", name).options()
    extra = {}
    if cache_dir is not None and "cache_dir" not in options and (accepted is None or "cache_dir" in accepted):
        extra["cache_dir"] = str(cache_dir)
    return create("selector", spec, **extra)


def _score_records(pool: Any, scores: dict[str, float], threshold: float) -> tuple[list[Any], list[dict]]:
    kept, records = [], []
    for cut in pool:
        if cut.id not in scores:
            continue
        score = round(scores[cut.id], 6)
        sup = cut.supervisions[0] if cut.supervisions else None
        keep = score > threshold
        records.append({"id": cut.id, "score": score, "language": sup.language if sup else None,
                        "speaker": sup.speaker if sup else None, "kept": keep})
        if keep:
            kept.append(cut.with_custom(SELECT_SCORE, score))
    return kept, records


def select_cuts(selector: Any, reference_path: str | Path, candidates_path: str | Path, out_dir: str | Path, *,
                threshold: float | None = 0.85, cache_dir: str | Path | None = None,
                png: bool = False) -> dict[str, Any]:
    """Keep the candidates close to the reference; write the outputs; return the summary.

    :param selector: a registered selector's name or :class:`ilt.config.ComponentSpec`.
    :param threshold: keep scores above it (scoring selectors); ``None`` for a
        selector that only ``select`` s (it applies its own options).
    :param cache_dir: handed to a selector that takes ``cache_dir`` (embedding cache).
    """
    from lhotse import CutSet

    from ilt.data.cut_stream import lazy_cuts
    from ilt.data.manifests import save_manifest

    out_dir = Path(out_dir)
    (reference, n_reference), (pool, n_pool) = lazy_cuts(reference_path), lazy_cuts(candidates_path)
    if n_reference == 0 or n_pool == 0:
        empty = reference_path if n_reference == 0 else candidates_path
        raise IltInputError(f"{empty}: no cuts")
    engine = _build_selector(selector, cache_dir)
    skips = Skips("select")
    summary: dict[str, Any] = {"selector": str(selector), "reference": n_reference, "candidates": n_pool}
    if isinstance(engine, ScoringSelector):
        threshold = 0.85 if threshold is None else threshold
        scores = engine.scores(pool, reference, skips)
        kept, records = _score_records(pool, scores, threshold)
        values = [r["score"] for r in records]
        rows = histogram(values, threshold)
        title = f"{selector} similarity of {Path(candidates_path).name} to {Path(reference_path).name}"
        with atomic_path(out_dir / SCORES) as tmp:
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        write_text_atomic(out_dir / HISTOGRAM_MD, histogram_markdown(rows, threshold, len(kept), len(values), title))
        if png and values:
            histogram_png(values, threshold, out_dir / HISTOGRAM_PNG, title)
        summary.update(threshold=threshold, scored=len(values), quantiles=quantiles(values), histogram=rows)
    else:
        if threshold is not None:
            raise IltInputError(f"selector {selector}: it does not score cuts, so --threshold does not apply; "
                                f"leave it out (its own options decide)")
        kept = list(engine.select(pool, reference))
    save_manifest(CutSet.from_cuts(kept), out_dir / CUTS)
    summary.update(kept=len(kept), kept_hours=round(sum(c.duration for c in kept) / 3600, 4), skipped=skips.report())
    write_json_atomic(out_dir / SUMMARY_JSON, summary)
    log.info("select: %d of %d candidate(s) kept -> %s", len(kept), n_pool, out_dir / CUTS)
    return summary
