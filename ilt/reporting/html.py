"""The page of ``ilt report``: one self-contained HTML file to look at.

:func:`write_html` renders a :class:`ilt.reporting.report.Report` (passed in, not
imported, so ``ilt.reporting.report`` can call this module) into one file that needs
nothing else: no script, no stylesheet or font from elsewhere, the plot an
inline SVG. It holds

- the error rate table of ``report_<split>.md`` (same numbers, same rounding)
  and a plot of the rates from M0 to Mn per language and, for a language with
  several accents, per accent;
- the lineage of the models as a chain: base model -> round (LoRA r, alpha,
  scope, loss, data mix, dev score) -> merged model (identity and sha256) ...;
- per language, the most frequent substitutions, deletions and insertions of
  every model, and the utterances that got worse from one model to the next,
  with the reference, both hypotheses (errors marked) and their error counts.

Errors are counted on the units the table scores (:func:`ilt.asr.score.score`:
normalised words, or characters for :data:`ilt.data.languages.CER_LANGUAGES`),
aligned by ``jiwer.process_words`` as the scorer aligns them, so each
language's substitution, deletion and insertion counts add up to the
table's. All text is escaped with :func:`html.escape`.
"""

from __future__ import annotations

import html
import io
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ilt.core.files import write_text_atomic
from ilt.models.lineage import root_identity

__all__ = ["ErrorCounts", "chain_of", "error_counts", "plot_svg", "render", "worse_utterances", "write_html"]

#: entries per substitution / deletion / insertion list
TOP = 15
#: utterances listed per language and pair of models (all are counted)
WORST = 25

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:80em;
  padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em}h2{margin-top:2em;border-bottom:1px solid #ccc}h3{margin-top:1.5em}
table{border-collapse:collapse;margin:.5em 0}th,td{padding:.2em .6em;border:1px solid #ddd;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.better{background:#e3f4e1}td.worse{background:#fbe3e1}tr.overall td{font-weight:bold}
small.ci{font-weight:normal;color:#666}small.ci.decided{color:#000}
.figure svg{max-width:100%;height:auto}
ol.chain{list-style:none;padding:0;display:flex;flex-wrap:wrap;align-items:stretch;gap:.3em}
ol.chain li{border:1px solid #bbb;border-radius:.4em;padding:.4em .6em;max-width:22em;font-size:.9em}
ol.chain li.model{background:#eef3fb}ol.chain li.round{background:#fdf6e7}
ol.chain li.branch{background:none;border-style:dashed}ol.chain li.arrow{border:none;padding:.4em 0;align-self:center;font-size:1.2em}
.lists{display:flex;flex-wrap:wrap;align-items:flex-start;gap:1.5em}.lists table{font-size:.9em}
span.sub{background:#fde2b6}span.ins{background:#f7c5c5}span.del{background:#f7c5c5;text-decoration:line-through}
td.text{max-width:28em}code{font-size:.9em}.muted{color:#777}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> Any:
    """``32.0`` -> ``32``; anything else unchanged."""
    return f"{value:g}" if isinstance(value, float) else value


# --------------------------------------------------------------------------- alignment and counts


@dataclass
class ErrorCounts:
    """One model's errors on one language, per scoring unit."""

    unit: str
    substitutions: Counter  # (ref unit, hyp unit) -> count
    deletions: Counter  # ref unit -> count
    insertions: Counter  # hyp unit -> count


def _alignments(utts: list[Any]) -> dict[str, list[Any]]:
    """Utterance ID -> jiwer alignment chunks of its scoring units (one batched call)."""
    import jiwer

    if not utts:
        return {}
    out = jiwer.process_words([" ".join(u.ref) for u in utts], [" ".join(u.hyp) for u in utts])
    return {u.id: chunks for u, chunks in zip(utts, out.alignments)}


def error_counts(utts: Iterable[Any], chunks: dict[str, list[Any]]) -> dict[str, ErrorCounts]:
    """Language -> :class:`ErrorCounts` of the scored utterances (``ilt.asr.score.UttScore``).

    A substitution chunk of n units pairs the i-th reference unit with the
    i-th hypothesis unit (jiwer's substitution chunks have equal lengths), so
    every count is of single units, as in sclite's confusion pairs.
    """
    out: dict[str, ErrorCounts] = {}
    for u in utts:
        counts = out.setdefault(u.language, ErrorCounts(u.unit, Counter(), Counter(), Counter()))
        for c in chunks[u.id]:
            ref, hyp = u.ref[c.ref_start_idx:c.ref_end_idx], u.hyp[c.hyp_start_idx:c.hyp_end_idx]
            if c.type == "substitute":
                counts.substitutions.update(zip(ref, hyp))
            elif c.type == "delete":
                counts.deletions.update(ref)
            elif c.type == "insert":
                counts.insertions.update(hyp)
    return out


def worse_utterances(before: Iterable[Any], after: Iterable[Any]) -> list[tuple[Any, Any]]:
    """``(before, after)`` UttScore pairs of the utterances with more errors after;
    most added errors first, then by ID. Utterances scored on one side only are left out."""
    first = {u.id: u for u in before}
    pairs = [(first[u.id], u) for u in after if u.id in first and u.errors > first[u.id].errors]
    return sorted(pairs, key=lambda p: (p[0].errors - p[1].errors, p[1].id))


# --------------------------------------------------------------------------- lineage


def _round_step(node: dict[str, Any]) -> dict[str, Any]:
    cfg = node.get("config") or {}
    lora = cfg.get("lora") or {}
    dev = node.get("dev_score") or {}
    value = dev.get("value")
    if value is None:
        value = (dev.get("overall") or {}).get("error_rate")
    data = [{"cuts": Path(str(d.get("cuts", "?"))).name, "role": d.get("role", "train"),
             "weight": d.get("weight"), "languages": d.get("languages"), "sha256": (d.get("sha256") or "")[:12]}
            for d in node.get("data") or []]
    history = node.get("history_merge") or None
    return {"kind": "round", "round": node.get("round") or cfg.get("name") or "?",
            "lora": {k: lora.get(k) for k in ("r", "lora_alpha", "target_modules", "lora_dropout") if k in lora},
            "loss": (cfg.get("task") or {}).get("loss"), "data": data,
            "dev": None if value is None else {"metric": dev.get("metric", "dev"), "value": value},
            "step": (node.get("adapter") or {}).get("step"),
            "history_weights": history.get("weights") if isinstance(history, dict) else None,
            "history_models": [h.get("name", "?") if isinstance(h, dict) else str(h)
                               for h in (history.get("models") or [])] if isinstance(history, dict) else None}


def chain_of(lineage: dict[str, Any]) -> list[dict[str, Any]]:
    """A ``lineage.json`` as a chain, oldest first: the base model, then per
    round a ``round`` step and the ``model`` it produced (identity: name,
    source, sha256). No local path: data manifests are named by file name."""
    nodes = []
    node: Any = lineage
    while isinstance(node, dict):
        nodes.append(node)
        node = node.get("parent")
    root = root_identity(lineage) or {}
    chain = [{"kind": "model", **root}]
    for node in reversed(nodes):
        chain.append(_round_step(node))
        chain.append({"kind": "model", **(node.get("model") or {"name": "?"})})
    return chain


def _chain_key(chain: list[dict[str, Any]]) -> list[Any]:
    return [(s.get("name"), s.get("sha256")) if s["kind"] == "model" else (s["round"], str(s.get("history_weights")))
            for s in chain]


def _chains(models: list[Any]) -> list[tuple[int, list[dict[str, Any]]]]:
    """The chains of the reported models as ``(shared, chain)``, leaving out a
    chain that another extends; ``shared``: how many leading steps an earlier
    chain already shows (a branch is drawn from its last shared model)."""
    chains = [chain_of(m.lineage) for m in models if isinstance(m.lineage, dict)]
    keys = [_chain_key(c) for c in chains]
    kept = [i for i, k in enumerate(keys)
            if not any(len(o) > len(k) and o[:len(k)] == k for o in keys) and k not in keys[:i]]
    out = []
    for n, i in enumerate(kept):
        shared = 0
        for j in kept[:n]:
            common = next((p for p, (a, b) in enumerate(zip(keys[i], keys[j])) if a != b),
                          min(len(keys[i]), len(keys[j])))
            shared = max(shared, common - (common % 2 == 0))  # end on a model (even index)
        out.append((max(shared, 0), chains[i]))
    return out


def _step_html(step: dict[str, Any], reported: set[str]) -> str:
    if step["kind"] == "model":
        name = _e(step.get("name", "?"))
        name = f"<strong>{name}</strong>" if step.get("name") in reported else name
        sha = f"<br><code>sha256 {_e(step['sha256'])}</code>" if step.get("sha256") else ""
        source = f"<br><span class='muted'>{_e(step['source'])}</span>" if step.get("source") else ""
        return f"<li class='model'>{name}{source}{sha}</li>"
    lora = step["lora"]
    lines = [f"round <strong>{_e(step['round'])}</strong>"]
    if lora:
        lines.append("LoRA " + ", ".join(
            f"{label}={_e(_num(lora[k]))}" for k, label in (("r", "r"), ("lora_alpha", "alpha"),
                                                      ("target_modules", "scope"), ("lora_dropout", "dropout"))
            if k in lora))
    if step.get("loss"):
        lines.append(f"loss {_e(step['loss'])}" + (f", best at step {_e(step['step'])}" if step.get("step") else ""))
    for d in step["data"]:
        langs = f" [{_e(', '.join(d['languages']))}]" if d.get("languages") else ""
        weight = f" &times;{_e(_num(d['weight']))}" if d.get("weight") is not None else ""
        lines.append(f"{_e(d['role'])}: <code>{_e(d['cuts'])}</code>{weight}{langs}"
                     + (f" <code class='muted'>{_e(d['sha256'])}</code>" if d.get("sha256") else ""))
    if step.get("dev"):
        lines.append(f"{_e(step['dev']['metric'])} {step['dev']['value']:.2f}%")
    if step.get("history_weights"):
        models = step.get("history_models") or []
        terms = [f"{_e(_num(w))} &times; {_e(models[i]) if i < len(models) else '?'}"
                 for i, w in enumerate(step["history_weights"])]
        lines.append("history merge: " + " + ".join(terms))
    return "<li class='round'>" + "<br>".join(lines) + "</li>"


def _lineage_html(report: Any) -> str:
    chains = _chains(report.models)
    if not chains:
        return "<p class='muted'>No model has a <code>lineage.json</code>.</p>"
    reported = {m.model for m in report.models}
    out = []
    for shared, chain in chains:
        start = max(shared - 1, 0)
        items = [_step_html(s, reported) for s in chain[start:]]
        if start:  # a branch: its first model is drawn above
            items[0] = f"<li class='model branch'>from {_e(chain[start].get('name', '?'))}</li>"
        out.append("<ol class='chain'>" + "<li class='arrow'>&rarr;</li>".join(items) + "</ol>")
    return "\n".join(out)


# --------------------------------------------------------------------------- table and plot


def _rate_cell(report: Any, m: Any, label: str, previous: float | None, change: Any = None) -> str:
    rate = report.rate(m, label)
    if rate is None:
        return "<td class='num muted'>n/a</td>"
    interval = ""
    if change is not None:
        mark = " decided" if change.decided else ""
        interval = (f"<br><small class='ci{mark}' title='change from the model to the left, paired bootstrap "
                    f"95% interval; p (permutation) {change.p_permutation:.3f}'>{change.difference:+.2f} "
                    f"[{change.low:+.2f}, {change.high:+.2f}]</small>")
    cls = "num"
    if previous is not None and round(rate, 2) != round(previous, 2):
        cls += " better" if rate < previous else " worse"
    row = next((r for res in (m.by_language, m.by_accent) for r in [*res.rows, res.overall]
                if r.group == label), None)
    title = (f" title='{row.sub} sub, {row.dele} del, {row.ins} ins / {row.ref_units} {row.unit} units, "
             f"{row.utts} utts'") if row is not None else ""
    return f"<td class='{cls}'{title}>{rate:.2f}{interval}</td>"


def _table_html(report: Any) -> str:
    names = [m.model for m in report.models]
    head = "<tr><th>group</th><th>unit</th>" + "".join(f"<th>{_e(n)}</th>" for n in names) + "</tr>"
    rows = []
    for label in report.rows():
        cells, previous = [], None
        for i, m in enumerate(report.models):
            cells.append(_rate_cell(report, m, label, previous, report.change(i, label)))
            previous = report.rate(m, label)
        cls = " class='overall'" if label == "Overall" else ""
        rows.append(f"<tr{cls}><th scope='row'>{_e(label)}</th><td>{_e(report.unit(label))}</td>"
                    + "".join(cells) + "</tr>")
    return f"<table id='rates'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _panels(report: Any) -> list[tuple[str, list[str]]]:
    """(title, row labels) per plot panel: languages and Overall, then each language's accents."""
    labels = report.rows()
    panels = [("languages", [lb for lb in labels if "-" not in lb])]
    for lang in [lb for lb in labels if "-" not in lb and lb != "Overall"]:
        accents = [lb for lb in labels if lb.startswith(f"{lang}-")]
        if accents:
            panels.append((f"{lang} by accent", accents + [lang]))
    return panels


def plot_svg(report: Any) -> str:
    """The error rates of every model per language and accent, as an inline ``<svg>``
    (text drawn as paths, so no font is needed; ids fixed so the page is reproducible)."""
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    names = [m.model for m in report.models]
    panels = _panels(report)
    with matplotlib.rc_context({"svg.hashsalt": "ilt-report", "svg.fonttype": "path"}):
        fig, axes = plt.subplots(1, len(panels), figsize=(max(5.0, 0.9 * len(names) + 3) * len(panels), 4),
                                 squeeze=False)
        for ax, (title, labels) in zip(axes[0], panels):
            for label in labels:
                rates = [report.rate(m, label) for m in report.models]
                strong = label == "Overall" or (title != "languages" and "-" not in label)
                style = dict(linewidth=3, color="black") if strong else {}
                ax.plot(names, [float("nan") if r is None else r for r in rates], marker="o", label=label, **style)
            ax.set_title(title)
            ax.set_ylabel("error rate (%)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small", ncol=2)
        fig.suptitle(f"{report.exp_dir.name}: {report.split}")
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
        plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


# --------------------------------------------------------------------------- per language


def _aligned_html(u: Any, chunks: list[Any]) -> str:
    """The hypothesis with its errors marked: substitutions (the reference unit
    in the tooltip), insertions, and deletions (the reference unit struck out)."""
    if u.missing_hyp:
        return "<span class='muted'>(no hypothesis)</span>"
    sep = "" if u.unit == "char" else " "
    parts = []
    for c in chunks:
        ref, hyp = u.ref[c.ref_start_idx:c.ref_end_idx], u.hyp[c.hyp_start_idx:c.hyp_end_idx]
        if c.type == "equal":
            parts += [_e(w) for w in hyp]
        elif c.type == "substitute":
            parts += [f"<span class='sub' title='{_e(r)}'>{_e(h)}</span>" for r, h in zip(ref, hyp)]
        elif c.type == "insert":
            parts += [f"<span class='ins'>{_e(h)}</span>" for h in hyp]
        elif c.type == "delete":
            parts += [f"<span class='del'>{_e(r)}</span>" for r in ref]
    return sep.join(parts)


def _counts_html(counts: ErrorCounts | None, top: int) -> str:
    if counts is None:
        return "<p class='muted'>no scored utterance</p>"
    lists = [("substitutions", "reference &rarr; hypothesis",
              [(f"{_e(r)} &rarr; {_e(h)}", n) for (r, h), n in counts.substitutions.most_common(top)],
              counts.substitutions),
             ("deletions", "reference", [(_e(r), n) for r, n in counts.deletions.most_common(top)], counts.deletions),
             ("insertions", "hypothesis", [(_e(h), n) for h, n in counts.insertions.most_common(top)],
              counts.insertions)]
    tables = []
    for kind, column, items, counter in lists:
        body = "".join(f"<tr><td>{text}</td><td class='num'>{n}</td></tr>" for text, n in items)
        body = body or "<tr><td colspan='2' class='muted'>none</td></tr>"
        tables.append(f"<table class='{kind}'><caption>{kind}: {sum(counter.values())} ({counts.unit}s)</caption>"
                      f"<thead><tr><th>{column}</th><th>count</th></tr></thead><tbody>{body}</tbody></table>")
    return "<div class='lists'>" + "".join(tables) + "</div>"


def _worse_html(before: Any, after: Any, lang: str, chunks: dict[str, dict[str, list[Any]]], worst: int) -> str:
    old = [u for u in before.by_language.utterances if u.language == lang]
    new = [u for u in after.by_language.utterances if u.language == lang]
    pairs = worse_utterances(old, new)
    first = {u.id: u.errors for u in old}
    common = [u for u in new if u.id in first]
    better = sum(u.errors < first[u.id] for u in common)
    summary = (f"<p>{_e(before.model)} &rarr; {_e(after.model)}: <strong>{len(pairs)}</strong> of {len(common)} "
               f"utterance(s) got worse, {better} better"
               + (f"; the {worst} with the most added errors:" if len(pairs) > worst else ".") + "</p>")
    if not pairs:
        return summary
    sep = "" if pairs[0][1].unit == "char" else " "
    rows = []
    for a, b in pairs[:worst]:
        accent = f" <span class='muted'>({_e(b.accent)})</span>" if b.accent else ""
        rows.append(
            f"<tr class='worse-utt' data-id='{_e(b.id)}'><td><code>{_e(b.id)}</code>{accent}</td>"
            f"<td class='num errors-before'>{a.errors}</td><td class='num errors-after'>{b.errors}</td>"
            f"<td class='text ref'>{_e(sep.join(b.ref))}</td>"
            f"<td class='text hyp-before'>{_aligned_html(a, chunks[before.model][a.id])}</td>"
            f"<td class='text hyp-after'>{_aligned_html(b, chunks[after.model][b.id])}</td></tr>")
    head = (f"<tr><th>utterance</th><th>errors {_e(before.model)}</th><th>errors {_e(after.model)}</th>"
            f"<th>reference</th><th>{_e(before.model)}</th><th>{_e(after.model)}</th></tr>")
    return summary + f"<table class='worse'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def _language_html(report: Any, lang: str, chunks: dict[str, dict[str, list[Any]]],
                   counts: dict[str, dict[str, ErrorCounts]], top: int, worst: int) -> str:
    out = [f"<section class='language' id='lang-{_e(lang)}'><h3>{_e(lang)}</h3>",
           "<h4>Most frequent errors</h4>"]
    for i, m in enumerate(report.models):
        is_last = i == len(report.models) - 1
        out.append(f"<details class='errors' data-model='{_e(m.model)}'{' open' if is_last else ''}>"
                   f"<summary>{_e(m.model)}</summary>{_counts_html(counts[m.model].get(lang), top)}</details>")
    if len(report.models) > 1:
        out.append("<h4>Utterances that got worse</h4>")
        for before, after in zip(report.models, report.models[1:]):
            out.append(f"<div class='pair' data-before='{_e(before.model)}' data-after='{_e(after.model)}'>"
                       f"{_worse_html(before, after, lang, chunks, worst)}</div>")
    out.append("</section>")
    return "\n".join(out)


# --------------------------------------------------------------------------- page


def render(report: Any, top: int = TOP, worst: int = WORST) -> str:
    """The whole page for ``report`` (an :class:`ilt.reporting.report.Report`)."""
    chunks = {m.model: _alignments(m.by_language.utterances) for m in report.models}
    counts = {m.model: error_counts(m.by_language.utterances, chunks[m.model]) for m in report.models}
    languages = sorted({u.language for m in report.models for u in m.by_language.utterances})
    title = f"ilt report: {report.exp_dir.name} ({report.split})"
    nav = " &middot; ".join(f"<a href='#lang-{_e(lang)}'>{_e(lang)}</a>" for lang in languages)
    body = [
        f"<h1>{_e(title)}</h1>",
        f"<p>Models: {_e(', '.join(m.model for m in report.models))}. Error rate (%): WER, or CER for "
        "ja/ko/th, after the MLC-SLM normalisation; Overall is pooled over utterances. Languages: "
        f"{nav}</p>",
        "<h2 id='rates-heading'>Error rates</h2>",
        "<p class='muted'>Green: lower than the previous model; red: higher. "
        "Hover a cell for its counts.</p>",
        _table_html(report),
        f"<div class='figure' id='plot'>{plot_svg(report)}</div>",
        "<h2 id='lineage'>Lineage</h2>",
        _lineage_html(report),
        "<h2 id='languages'>Errors per language</h2>",
        f"<p class='muted'>Counted on the scoring units (words; characters for ja/ko/th), top {top} per list. "
        "In hypotheses: <span class='sub'>substitution</span> (reference in the tooltip), "
        "<span class='ins'>insertion</span>, <span class='del'>deletion</span>.</p>",
        *(_language_html(report, lang, chunks, counts, top, worst) for lang in languages),
    ]
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")


def write_html(report: Any, path: str | Path, top: int = TOP, worst: int = WORST) -> Path:
    """Write :func:`render`'s page to ``path`` atomically."""
    path = Path(path)
    write_text_atomic(path, render(report, top, worst))
    return path
