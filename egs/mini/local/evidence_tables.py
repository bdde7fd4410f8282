#!/usr/bin/env python3
"""The converged track's evidence (local/evidence.sh): paired comparisons with intervals, and the
small facts the script needs from finished rounds.

    evidence_tables.py table --sets "test test2 test3" --system M0=exp_conv/decode/M0/{set} \\
        --system M1=exp_conv/decode/M1/{set} --pair M1-M0 --title "ILT rounds" --out rounds.md
    evidence_tables.py steps exp_conv/focus exp_conv/feedback exp_conv/fix   # steps they ran, summed
    evidence_tables.py best-dev exp_conv/control/lr1.0e-4/feedback ...       # the run of the lowest best dev WER

``table``: one row per ``--pair B-A``: both systems' error rates pooled over every test set (each
system's decodes of the sets pooled: ``ilt compare NAME=DIR,DIR,DIR``), the difference B - A in
points with its paired bootstrap 95% interval (utterances resampled, 10,000 draws) and the paired
permutation p-value, then the difference on each test set alone with its interval. A ``*`` marks an
interval that excludes 0. The full per-language tables of every pair go to ``<out>.detail.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    table = sub.add_parser("table", help="paired comparisons with intervals, pooled and per test set")
    table.add_argument("--sets", required=True, help="test set names, space separated")
    table.add_argument("--system", action="append", required=True, metavar="NAME=PATTERN",
                       help="a system's decode directory, {set} standing for the test set's name")
    table.add_argument("--pair", action="append", required=True, metavar="B-A", help="compare B with A")
    table.add_argument("--title", default="Comparisons")
    table.add_argument("--rounds", type=int, default=10000, help="bootstrap resamples")
    table.add_argument("--out", type=Path, required=True)
    steps = sub.add_parser("steps", help="the optimiser steps the given round directories ran, summed")
    steps.add_argument("rounds", nargs="+", type=Path)
    best = sub.add_parser("best-dev", help="the round directory whose best/ adapter has the lowest dev score")
    best.add_argument("rounds", nargs="+", type=Path)
    return parser.parse_args(argv)


def systems_of(specs: list[str], sets: list[str]) -> dict[str, list[Path]]:
    """NAME -> its decode directory per test set (every one must exist)."""
    out = {}
    for spec in specs:
        name, sep, pattern = spec.partition("=")
        if not sep or "{set}" not in pattern:
            sys.exit(f"--system {spec!r}: give NAME=PATTERN with {{set}} in PATTERN")
        paths = [Path(pattern.format(set=s)) for s in sets]
        missing = [str(p) for p in paths if not p.is_dir()]
        if missing:
            sys.exit(f"--system {name}: no decode directory {missing[0]}: run that part of local/evidence.sh first")
        out[name] = paths
    return out


def _cell(row: dict) -> str:
    mark = "*" if row["decided"] else ""
    low, high = row["ci95"]
    return f"{row['difference']:+.2f}{mark} [{low:+.2f}, {high:+.2f}]"


def table(args: argparse.Namespace) -> str:
    """The summary table (returned) and the per-language detail (written beside it)."""
    from ilt.asr.compare import compare_files

    sets = args.sets.split()
    systems = systems_of(args.system, sets)
    header = (f"| comparison | A % | B % | B - A, pooled over {len(sets)} test sets [95% CI] | p (perm.) | "
              + " | ".join(f"{s} [95% CI]" for s in sets) + " |")
    lines = [f"## {args.title}", "", header, "|---|---:|---:|---|---:|" + "---|" * len(sets)]
    detail = [f"# {args.title}: per language", ""]
    for pair in args.pair:
        b, sep, a = pair.partition("-")
        if not sep or a not in systems or b not in systems:
            sys.exit(f"--pair {pair!r}: give B-A with both named by --system ({', '.join(systems)})")
        md, pooled = compare_files([(a, systems[a]), (b, systems[b])], None, rounds=args.rounds)
        overall = pooled["systems"][b][-1]
        per_set = []
        for i, name in enumerate(sets):
            _, one = compare_files([(a, systems[a][i]), (b, systems[b][i])], None, rounds=args.rounds)
            per_set.append(_cell(one["systems"][b][-1]))
        lines.append(f"| {b} - {a} | {overall['rate_a']:.2f} | {overall['rate_b']:.2f} | {_cell(overall)} | "
                     f"{overall['p_permutation']:.3g} | " + " | ".join(per_set) + " |")
        detail += [f"Pooled over {', '.join(sets)}.", "", md, ""]
    lines += ["", f"Paired bootstrap over utterances ({args.rounds} resamples), B - A in points; * marks an "
                  f"interval that excludes 0. Per language: {args.out.name.replace('.md', '')}.detail.md.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".detail.md").write_text("\n".join(detail), encoding="utf-8")
    text = "\n".join(lines)
    args.out.write_text(text, encoding="utf-8")
    return text


def steps_run(round_dir: Path) -> int:
    """The last optimiser step in a round's train_log.jsonl."""
    log = round_dir / "train_log.jsonl"
    if not log.is_file():
        sys.exit(f"{log}: not found: train that round first")
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return max((r.get("step", 0) for r in records if r.get("event") == "step"), default=0)


def best_dev(round_dirs: list[Path]) -> Path:
    """The round directory whose best adapter's dev score is lowest (the first on a tie)."""
    scored = []
    for d in round_dirs:
        score = d / "best" / "score.json"
        if not score.is_file():
            sys.exit(f"{score}: not found: train that run first")
        value = json.loads(score.read_text()).get("value")
        if value is None:
            sys.exit(f"{score}: no dev score (value is null)")
        scored.append((value, d))
    return min(scored, key=lambda t: t[0])[1]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "table":
        print(table(args))
    elif args.command == "steps":
        print(sum(steps_run(d) for d in args.rounds))
    else:
        print(best_dev(args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
