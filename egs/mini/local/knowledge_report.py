#!/usr/bin/env python3
"""What recipe stage 2 kept for the knowledge tasks, from its outputs (markdown on stdout).

    python local/knowledge_report.py [KNOWLEDGE_DIR]     # default: data/extra/knowledge

Reads the ``summary.json``/``stats.json`` that each step of ``../TEMPLATE/ilt.sh``
stage 2 writes under the knowledge directory and prints, per step, what it read
and what it kept:

* token_stats: per language, utterances, tokens, distinct tokens, how many are
  rare (low) and frequent (high);
* rare_text: third-party sentences kept / read, per language, and why the others
  were rejected;
* hard_cases: cuts with frequent tokens, how many M0 decoded, how many it got
  wrong enough to keep, per language;
* tts: sentences, utterances asked and produced, minutes of audio;
* select: candidates scored and kept, the SECS quantiles and histogram.

A step whose marker (``.done/<step>``) is missing was skipped by the last stage 2
run; the report says so (a round YAML naming its set would stop). Only the
standard library is used, so it runs in a fraction of a second.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

STEPS = ("token_stats", "rare_text", "hard_cases", "tts", "select")


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        sys.exit(f"{path}: cannot read it as JSON ({exc}); run recipe stage 2 again")


def skips(counts: dict | None) -> str:
    return ", ".join(f"{n} {why}" for why, n in (counts or {}).items()) or "none"


def token_stats(stats: dict, _: Path) -> list[str]:
    t = stats["thresholds"]
    lines = [(f"Rare: counted fewer than {t['low']} times; frequent: more than {t['high']} "
              f"(tokenizer of {stats.get('model', '?')}, text of {stats.get('cuts', '?')})."), "",
             "| language | utterances | tokens | distinct | rare | frequent |", "|---|---:|---:|---:|---:|---:|"]
    for lang, row in stats["languages"].items():
        lines.append(f"| {lang} | {row['utterances']} | {row['tokens']} | {row['distinct']} | "
                     f"{len(row['low'])} | {len(row['high'])} |")
    return lines


def rare_text(s: dict, _: Path) -> list[str]:
    lines = [(f"Kept **{s['kept']} of {s['sentences']}** sentences (rare tokens > {s['min_ratio']} of a "
              f"sentence's tokens); rejected: {skips(s['rejected'])}."), "", "| language | read | kept |",
             "|---|---:|---:|"]
    lines += [f"| {lang} | {row['read']} | {row['kept']} |" for lang, row in s["per_language"].items()]
    return lines


def hard_cases(s: dict, _: Path) -> list[str]:
    cap = f" (at most {s['max_candidates']})" if s.get("max_candidates") else ""
    lines = [(f"Of {s['cuts']} cuts, {s['candidates']} hold frequent tokens; M0 decoded **{s['decoded']}**{cap} "
              f"and kept **{s['kept']}** (error rate above {s['max_error_rate']}); skipped: "
              f"{skips(s['skipped'])}."), "", "| language | with frequent tokens | kept |", "|---|---:|---:|"]
    lines += [f"| {lang} | {row['candidates']} | {row['kept']} |" for lang, row in s["per_language"].items()]
    return lines


def tts(s: dict, _: Path) -> list[str]:
    return [(f"{s['augmenter']}: {s['sentences']} sentences, {s['targets']} utterances asked, **{s['produced']} "
             f"written** ({s['hours'] * 60:.1f} min), in the voices of {s['prompt_speakers']} prompt speakers; "
             f"skipped: {skips(s['skipped'])}.")]


def select_per_language(scores: Path) -> list[str]:
    """Candidates and kept per language, from ``scores.jsonl`` (one line per scored candidate)."""
    rows: dict[str, list[int]] = {}
    try:
        lines = scores.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    for n, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError as exc:
            sys.exit(f"{scores}:{n}: not a JSON line ({exc}); run recipe stage 2 again")
        row = rows.setdefault(str(record.get("language")), [0, 0])
        row[0] += 1
        row[1] += bool(record.get("kept"))
    return ["", "| language | scored | kept |", "|---|---:|---:|",
            *(f"| {lang} | {n} | {k} |" for lang, (n, k) in sorted(rows.items()))]


def select(s: dict, directory: Path) -> list[str]:
    lines = [(f"{s['selector']}: kept **{s['kept']} of {s['candidates']}** candidates "
              f"({s.get('scored', '?')} scored, {s.get('kept_hours', 0) * 60:.1f} min kept) with SECS above "
              f"{s.get('threshold', '?')}; skipped: {skips(s['skipped'])}.")]
    if s.get("quantiles"):
        lines += ["", "SECS quantiles: " + ", ".join(f"{k} {v:.3f}" for k, v in s["quantiles"].items()) + "."]
    if s.get("histogram"):
        lines += ["", "| SECS | candidates | kept from here up |", "|---|---:|---:|"]
        lines += [f"| [{r['low']:.2f}, {r['high']:.2f}) | {r['count']} | {r['kept_from']} |"
                  for r in s["histogram"] if r["count"] or r["low"] >= s.get("threshold", 1.0) - 1e-9]
    return lines + select_per_language(directory / "scores.jsonl")


RENDER = {"token_stats": ("stats.json", token_stats), "rare_text": ("summary.json", rare_text),
          "hard_cases": ("summary.json", hard_cases), "tts": ("summary.json", tts),
          "select": ("summary.json", select)}


def report(knowledge_dir: Path) -> str:
    if not knowledge_dir.is_dir():
        sys.exit(f"{knowledge_dir}: no such directory; run recipe stage 2 first (or give the --knowledge-dir it used)")
    lines = [f"# Knowledge sets in {knowledge_dir}", ""]
    base = knowledge_dir / ".done" / "base_model"
    if base.is_file():
        lines += [f"Base model: {base.read_text(encoding='utf-8').strip()}.", ""]
    for step in STEPS:
        name, render = RENDER[step]
        data = read_json(knowledge_dir / step / name)
        built = (knowledge_dir / ".done" / step).is_file()
        lines.append(f"## {step}")
        lines.append("")
        if not built:
            lines.append("Not built by the last stage 2 run (skipped: see its log)"
                         + (f"; {knowledge_dir / step} holds an earlier build." if data else "."))
        elif data is None:
            sys.exit(f"{knowledge_dir / step / name}: missing, but .done/{step} says it was built; "
                     f"run recipe stage 2 again")
        else:
            try:
                lines += render(data, knowledge_dir / step)
            except (KeyError, TypeError, AttributeError) as exc:
                sys.exit(f"{knowledge_dir / step / name}: not what `ilt` writes there (no {exc}); "
                         f"run recipe stage 2 again")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("knowledge_dir", nargs="?", type=Path, default=Path("data/extra/knowledge"),
                   help="the knowledge directory of recipe stage 2 (default: %(default)s)")
    print(report(p.parse_args(argv).knowledge_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
