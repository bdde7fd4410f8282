#!/usr/bin/env python3
"""How good are the pool's pseudo-labels? Everything here is measured against the
held-aside true text, from the hypotheses stage 5 cached (no model is run again):

* each voting model alone, and the ``majority`` and ``rover`` votes over all of them;
* ``rover`` at several agreement thresholds: WER on the cuts kept, and how many;
* ``rover`` with confidence weighting (alpha < 1, SCTK's "avgconf");
* SCTK's own ``rover`` (``-m avgconf -a 1``, i.e. plain word voting) on the same
  hypotheses, in every order of the models: its WER, how often its label equals
  ours, and how often its output changes with the order (ours cannot).

    python local/pseudo_label_report.py --pseudo exp/pseudo \\
        --truth data/extra/mlc_slm_cuts_pool_truth.jsonl.gz --out exp/pseudo/report.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from ilt.asr.score import load_references, score
from ilt.components import Hypothesis
from ilt.core.registry import create
from ilt.data.text import tokens_for_scoring

SCTK_ROVER = "/usr/lib/sctk/bin/rover"
THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def load_hyps(pseudo: Path) -> dict[str, dict[str, dict]]:
    """model name -> cut ID -> record (text, score), from stage 5's cache."""
    out = {}
    for path in sorted((pseudo / "hyps").glob("*/hyps.jsonl")):
        out[path.parent.name] = {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}
    return out


def wer(refs, hyps: dict[str, str], ids=None) -> tuple[float | None, int]:
    """Pooled error rate (%) over ``ids`` (default: every reference) and the utterance count."""
    keep = {i: refs[i] for i in (ids if ids is not None else refs)}
    if not keep:
        return None, 0
    result = score(keep, {i: hyps.get(i, "") for i in keep})
    return result.overall.error_rate, len(keep)


def votes(voter, models: dict[str, dict[str, dict]], refs) -> dict[str, tuple[str, float]]:
    out = {}
    for cut_id, ref in refs.items():
        hyps = [Hypothesis(m[cut_id]["text"], m[cut_id].get("score"), name) for name, m in models.items()]
        vote = voter.vote(hyps, ref[0])
        out[cut_id] = (vote.text, vote.agreement)
    return out


def sctk_rover(models: dict[str, dict[str, dict]], refs, order: list[str]) -> dict[str, str]:
    """SCTK rover's labels, the models given in ``order``: one CTM per model, one
    "word" per scoring unit at made-up times (rover aligns by words unless -T)."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [SCTK_ROVER]
        for name in order:
            lines = []
            for cut_id, ref in sorted(refs.items()):
                units = tokens_for_scoring(models[name][cut_id]["text"], ref[0])
                for k, unit in enumerate(units):
                    lines.append(f"{cut_id} 1 {k * 0.1:.2f} 0.10 {unit} 1.0\n")
            path = Path(tmp) / f"{name}.ctm"
            path.write_text("".join(lines), encoding="utf-8")
            args += ["-h", str(path), "ctm"]
        out = Path(tmp) / "rover.ctm"
        subprocess.run(args + ["-o", str(out), "-m", "avgconf", "-a", "1.0", "-c", "0.7"], check=True,
                       capture_output=True)
        labels: dict[str, list[str]] = {i: [] for i in refs}
        by_lower = {i.lower(): i for i in refs}  # rover writes IDs in lower case
        for line in out.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[4] != "@":
                labels[by_lower.get(parts[0], parts[0])].append(parts[4])
    # units joined by spaces: scoring splits ja/ko/th into characters and ignores spaces
    return {i: " ".join(units) for i, units in labels.items()}


def same(a: str, b: str, language: str) -> bool:
    return tokens_for_scoring(a, language) == tokens_for_scoring(b, language)


def fmt(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate:.2f}"


def report(pseudo: Path, truth: Path) -> str:
    refs = load_references(truth)
    models = load_hyps(pseudo)
    if not models:
        raise SystemExit(f"{pseudo}/hyps: no cached hypotheses; run recipe stage 5 first")
    refs = {i: r for i, r in refs.items() if all(i in m for m in models.values())}
    lines = [f"Pseudo-labels of {len(refs)} pool cuts against their held-aside text "
             f"({', '.join(models)} voting; WER, CER for ja/ko/th):", "",
             "| labels | error % | cuts |", "|---|---:|---:|"]
    for name, m in models.items():
        lines.append(f"| {name} alone | {fmt(wer(refs, {i: r['text'] for i, r in m.items()})[0])} | {len(refs)} |")
    voted = {}
    for label, voter in [("majority", create("voter", "majority")), ("rover", create("voter", "rover")),
                         ("rover, alpha 0.5 (confidence-weighted)", create("voter", "rover", alpha=0.5))]:
        voted[label] = votes(voter, models, refs)
        lines.append(f"| {label} | {fmt(wer(refs, {i: t for i, (t, _) in voted[label].items()})[0])} | {len(refs)} |")

    lines += ["", "Rover at agreement thresholds (the cuts kept, and their error rate):", "",
              "| min agreement | cuts kept | error % on kept |", "|---:|---:|---:|"]
    rover = voted["rover"]
    for t in THRESHOLDS:
        kept = [i for i, (text, a) in rover.items() if a >= t and text.strip()]
        rate, n = wer(refs, {i: rover[i][0] for i in kept}, kept)
        lines.append(f"| {t:.1f} | {n} | {fmt(rate)} |")

    if shutil.which(SCTK_ROVER) or Path(SCTK_ROVER).exists():
        orders = list(itertools.permutations(models))
        sctk = [sctk_rover(models, refs, list(order)) for order in orders]
        agree = sum(same(sctk[0][i], rover[i][0], refs[i][0]) for i in refs)
        unstable = sum(any(not same(s[i], sctk[0][i], refs[i][0]) for s in sctk[1:]) for i in refs)
        rates = [wer(refs, s)[0] for s in sctk]
        lines += ["", f"SCTK rover (`-m avgconf -a 1.0 -c 0.7`, plain word voting) on the same hypotheses, "
                      f"in all {len(orders)} orders of the models:", "",
                  f"- error %: {fmt(min(rates))} to {fmt(max(rates))} over the orders "
                  f"(ilt rover: {fmt(wer(refs, {i: t for i, (t, _) in rover.items()})[0])}, the same in every order)",
                  f"- its label equals ilt rover's (after normalisation) on {agree} of {len(refs)} cuts "
                  f"(first order: {', '.join(orders[0])})",
                  f"- its label changes with the order of the models on {unstable} of {len(refs)} cuts"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pseudo", type=Path, required=True, help="stage 5's output directory (exp/pseudo)")
    parser.add_argument("--truth", type=Path, required=True, help="the pool with its true text (cuts)")
    parser.add_argument("--out", type=Path, help="markdown file to write (default: print only)")
    args = parser.parse_args()
    text = report(args.pseudo, args.truth)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    print(text, end="")


if __name__ == "__main__":
    main()
