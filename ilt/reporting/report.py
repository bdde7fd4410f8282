"""``ilt report``: every model of an experiment side by side.

It looks for decoded and scored sets under ``EXP/decode/<model>/<split>/``
(``scores.json`` from ``ilt score``), re-scores each from its reference and
hypothesis files by language and by accent, and writes ``report_<split>.md``,
``.json``, ``.png`` (error rate per language across the models) and ``.html``
(one self-contained page: table, plot, lineage chain, frequent errors and
utterances that got worse; :mod:`ilt.reporting.html`) into ``EXP/report/``, with
the lineage of every model (``EXP/<model>/lineage.json``).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ilt.asr.score import ScoreResult, load_hypotheses, load_references, score
from ilt.core.files import atomic_path, write_json_atomic, write_text_atomic
from ilt.errors import IltInputError
from ilt.models.lineage import describe as lineage_describe
from ilt.models.lineage import root_identity

log = logging.getLogger("ilt")


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


@dataclass
class ModelScores:
    model: str
    split: str
    by_language: ScoreResult
    by_accent: ScoreResult
    lineage: dict[str, Any] | None = None


def _row_utterances(m: ModelScores, label: str) -> dict[str, Any] | None:
    """The scored utterances of row ``label`` (a language, an accent, or Overall), by cut ID."""
    for result in (m.by_language, m.by_accent):
        if label == result.overall.group:
            return {u.id: u for u in result.utterances}
        if any(r.group == label for r in result.rows):
            return {u.id: u for u in result.utterances if u.group == label}
    return None


def _difference(before: ModelScores, after: ModelScores, label: str) -> Any:
    """``after - before`` on row ``label`` over the utterances both scored, with
    :func:`ilt.asr.compare.compare_counts` (2000 resamples: enough for a
    report's two decimals; ``ilt compare`` defaults to 10000)."""
    import numpy as np

    from ilt.asr.compare import Counts, compare_counts

    a, b = _row_utterances(before, label), _row_utterances(after, label)
    shared = sorted(set(a or ()) & set(b or ()))
    if not shared or not sum(a[i].ref_units for i in shared):
        return None
    counts = [Counts(np.array([u[i].errors for i in shared]), np.array([u[i].ref_units for i in shared]))
              for u in (a, b)]
    return compare_counts(label, *counts, rounds=2000, seed=0)


def _change_text(d: Any) -> str:
    if d is None:
        return ""
    return f" ({d.difference:+.2f} [{d.low:+.2f}, {d.high:+.2f}]{'*' if d.decided else ''})"


@dataclass
class Report:
    exp_dir: Path
    split: str
    models: list[ModelScores] = field(default_factory=list)
    _changes: dict[tuple[int, str], Any] = field(default_factory=dict, repr=False)

    def rows(self) -> list[str]:
        """Row labels: accents of multi-accent languages, then languages, then Overall."""
        labels: list[str] = []
        for m in self.models:
            languages = [r.group for r in m.by_language.rows]
            for lang in languages:
                accents = [r.group for r in m.by_accent.rows if r.group.startswith(f"{lang}-")]
                for label in (accents if len(accents) > 1 else []) + [lang]:
                    if label not in labels:
                        labels.append(label)
        return labels + ["Overall"]

    def rate(self, m: ModelScores, label: str) -> float | None:
        for result in (m.by_language, m.by_accent):
            try:
                return result.row(label).error_rate
            except KeyError:
                continue
        return None

    def unit(self, label: str) -> str:
        for m in self.models:
            for result in (m.by_language, m.by_accent):
                try:
                    return result.row(label).unit
                except KeyError:
                    continue
        return "-"

    def change(self, index: int, label: str) -> Any:
        """The :class:`ilt.asr.compare.Difference` of model ``index`` from the
        model before it on row ``label`` (paired over the utterances both
        scored), or ``None`` for the first model or a row either lacks."""
        if index == 0:
            return None
        key = (index, label)
        if key not in self._changes:
            self._changes[key] = _difference(self.models[index - 1], self.models[index], label)
        return self._changes[key]

    def to_markdown(self) -> str:
        names = [m.model for m in self.models]
        lines = [f"Error rate (%) on `{self.split}`: WER, or CER for ja/ko/th; Overall is pooled. "
                 f"In brackets: the change from the model to the left and its paired bootstrap 95% interval "
                 f"(`ilt compare`); * marks an interval that excludes 0.", "",
                 "| group | unit | " + " | ".join(names) + " |",
                 "|---|---|" + "---:|" * len(names)]
        for label in self.rows():
            cells = []
            for i, m in enumerate(self.models):
                rate = self.rate(m, label)
                cells.append("n/a" if rate is None else f"{rate:.2f}{_change_text(self.change(i, label))}")
            name = f"**{label}**" if label == "Overall" else label
            lines.append(f"| {name} | {self.unit(label)} | " + " | ".join(cells) + " |")
        lineage = [m for m in self.models if m.lineage]
        if lineage:
            lines += ["", "Lineage:", ""]
            for m in lineage:
                lines.append(f"- {m.model}: {describe_lineage(m.lineage)}")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        rows = self.rows()
        return {
            "exp_dir": str(self.exp_dir),
            "split": self.split,
            "rows": rows,
            "models": [
                {
                    "model": m.model,
                    "error_rates": {label: self.rate(m, label) for label in rows},
                    "change_from_previous": {label: (d.to_dict() if (d := self.change(i, label)) else None)
                                             for label in rows},
                    "by_language": m.by_language.to_dict(),
                    "by_accent": m.by_accent.to_dict(),
                    "lineage": m.lineage,
                }
                for i, m in enumerate(self.models)
            ],
        }


def describe_lineage(lineage: dict[str, Any]) -> str:
    """One line per model: its round, LoRA and parent, from ``lineage.json``,
    ending with the identity of the chain's first model (no local paths)."""
    parts = []
    chain = lineage
    while chain:
        cfg = chain.get("config") or {}
        lora = cfg.get("lora", {})
        dev = chain.get("dev_score") or {}
        overall = (dev.get("overall") or {}).get("error_rate") if isinstance(dev, dict) else None
        piece = str(chain.get("round") or cfg.get("name") or "?")
        if lora:
            piece += f" (r={lora.get('r')}, alpha={lora.get('lora_alpha'):g}, {lora.get('target_modules')})"
        if overall is not None:
            piece += f" dev {overall:.2f}%"
        history = chain.get("history_merge")
        if history:
            piece += f" history merge {history.get('weights')}"
        parts.append(piece)
        chain = chain.get("parent")
    return " <- ".join(parts) + f" <- {lineage_describe(root_identity(lineage))}"


def collect(exp_dir: str | Path, split: str = "test", models: list[str] | None = None) -> Report:
    exp_dir = Path(exp_dir)
    decode_root = exp_dir / "decode"
    if not decode_root.is_dir():
        raise IltInputError(f"{exp_dir}: no decode/ directory; decode and score the models first")
    found = sorted((p.parent.parent.name for p in decode_root.glob(f"*/{split}/scores.json")),
                   key=_natural_key)
    if models:
        missing = [m for m in models if m not in found]
        if missing:
            raise IltInputError(f"{decode_root}: no scored {split!r} set for model(s) {', '.join(missing)}; "
                                f"found: {', '.join(found) or 'none'}")
        found = models
    if not found:
        unscored = sorted(p.parent.parent.name for p in decode_root.glob(f"*/{split}/hyps.jsonl"))
        if unscored:
            raise IltInputError(f"{decode_root}: the {split!r} set of {', '.join(unscored)} was decoded but not scored "
                                f"(no reference text): nothing to report; its submissions are "
                                f"{decode_root}/*/{split}/text")
        raise IltInputError(f"{decode_root}: no */{split}/scores.json; run `ilt score` first")
    report = Report(exp_dir, split)
    for model in found:
        meta = json.loads((decode_root / model / split / "scores.json").read_text())
        refs = load_references(meta["ref"])
        hyps = load_hypotheses(meta["hyp"], refs)
        lineage_path = exp_dir / model / "lineage.json"
        lineage = json.loads(lineage_path.read_text()) if lineage_path.exists() else None
        report.models.append(ModelScores(model, split, score(refs, hyps, "language"),
                                         score(refs, hyps, "accent"), lineage))
    return report


def plot(report: Report, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    names = [m.model for m in report.models]
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(names) + 3), 4))
    for label in report.rows():
        if "-" in label:  # accents clutter the plot; the table has them
            continue
        rates = [report.rate(m, label) for m in report.models]
        style = dict(linewidth=3, color="black") if label == "Overall" else {}
        ax.plot(names, [float("nan") if r is None else r for r in rates], marker="o", label=label, **style)
    ax.set_ylabel("error rate (%)")
    ax.set_title(f"{report.exp_dir.name}: {report.split}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_report(exp_dir: str | Path, split: str = "test", models: list[str] | None = None,
                 out_dir: str | Path | None = None) -> Report:
    report = collect(exp_dir, split, models)
    out = Path(out_dir) if out_dir else Path(exp_dir) / "report"
    write_text_atomic(out / f"report_{split}.md", report.to_markdown())
    write_json_atomic(out / f"report_{split}.json", report.to_dict())
    plot(report, out / f"report_{split}.png")
    from ilt.reporting.html import write_html

    page = write_html(report, out / f"report_{split}.html")
    log.info("report: %d model(s) -> %s (page: %s)", len(report.models), out, page)
    return report


def ablation_table(exp_dirs: list[str | Path], split: str = "test") -> str:
    """The paper's Table 2 shape: one row per experiment (its last model), one
    column per language/accent, plus the base model M0 as the first row."""
    reports = [collect(d, split) for d in exp_dirs]
    labels: list[str] = []
    for rep in reports:
        labels += [label for label in rep.rows() if label not in labels]
    head = ["configuration", "model", *labels]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * len(labels)]

    def row(name: str, rep: Report, m: ModelScores) -> str:
        cells = ["n/a" if (r := rep.rate(m, label)) is None else f"{r:.2f}" for label in labels]
        return f"| {name} | {m.model} | " + " | ".join(cells) + " |"

    base = next(((rep, m) for rep in reports for m in rep.models if m.model == "M0"), None)
    if base is not None:
        lines.append(row("base (M0)", *base))
    for path, rep in zip(exp_dirs, reports):
        last = rep.models[-1]
        if last.model == "M0":
            raise IltInputError(f"{path}: only M0 is decoded; run the rounds first")
        lines.append(row(Path(path).name, rep, last))
    return (f"Error rate (%) on `{split}` of the last model of each configuration "
            "(WER, CER for ja/ko/th; Overall pooled).\n\n" + "\n".join(lines) + "\n")
