"""Paired comparison of decodes of the same cuts: differences with confidence.

``ilt compare`` answers "is B better than A, and by how much?" for two or
more systems decoded on the same cuts. Every system is scored per utterance
(:func:`ilt.asr.score.score`, the challenge normalisation), and each later
system is compared with the first one (the baseline):

* the pooled error rate of each (total errors / total reference units, as
  ``ilt score`` pools), per language and overall, and the difference
  ``B - A`` in points;
* a **paired bootstrap** 95% interval of that difference (Koehn 2004;
  Bisani & Ney 2004): utterances are drawn with replacement, the same draw
  for both systems, and the pooled rates are recomputed on each draw. When the
  test set has conversations (or speakers), ``cluster_by`` resamples whole
  clusters instead, since utterances of one conversation are not independent;
* a two-sided **paired permutation** p-value (approximate randomisation):
  for each utterance (cluster) the two systems' counts are swapped with
  probability 1/2; the p-value is the share of swaps whose absolute pooled
  difference reaches the observed one, ``(hits + 1) / (rounds + 1)``;
* the **sign test**: utterances where B has fewer errors vs more (ties
  dropped), exact two-sided binomial p-value.

All of it is deterministic for a given ``seed``. A difference whose interval
excludes 0 is marked; nothing else is claimed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ilt.asr.score import Reference, load_hypotheses, load_references, score
from ilt.core.files import write_json_atomic, write_text_atomic
from ilt.errors import IltInputError

#: what ``cluster_by`` may name: each utterance alone, or the cut's recording / first speaker
CLUSTERS = ("utterance", "recording", "speaker")
OVERALL = "Overall"


@dataclass(frozen=True)
class Counts:
    """One system's per-utterance errors and reference units, in a shared order."""

    errors: np.ndarray  # int, one per utterance
    units: np.ndarray  # int, one per utterance

    @property
    def rate(self) -> float:
        """The pooled error rate in percent (``nan`` without units)."""
        total = int(self.units.sum())
        return 100.0 * int(self.errors.sum()) / total if total else float("nan")


@dataclass(frozen=True)
class Difference:
    """``B - A`` on one group of utterances, with its uncertainty."""

    group: str
    utterances: int
    clusters: int
    rate_a: float
    rate_b: float
    low: float
    high: float
    p_permutation: float
    better: int  # utterances where B has fewer errors than A
    worse: int
    p_sign: float

    @property
    def difference(self) -> float:
        return self.rate_b - self.rate_a

    @property
    def decided(self) -> bool:
        """The 95% interval excludes zero."""
        return self.low > 0 or self.high < 0

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "utterances": self.utterances, "clusters": self.clusters,
                "rate_a": self.rate_a, "rate_b": self.rate_b, "difference": self.difference,
                "ci95": [self.low, self.high], "p_permutation": self.p_permutation,
                "better": self.better, "worse": self.worse, "p_sign": self.p_sign, "decided": self.decided}


def _cluster_sums(values: np.ndarray, clusters: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(clusters, weights=values, minlength=n)


def paired_bootstrap(a: Counts, b: Counts, clusters: np.ndarray | None = None, *, rounds: int = 10000,
                     seed: int = 0, level: float = 0.95, chunk: int = 500) -> tuple[float, float]:
    """The ``level`` percentile interval of ``rate(b) - rate(a)`` (points) over
    ``rounds`` paired resamples of the utterances, or of the ``clusters``
    (an int cluster index per utterance) when given."""
    index = np.arange(len(a.errors)) if clusters is None else clusters
    n = int(index.max()) + 1 if len(index) else 0
    if n == 0:
        raise ValueError("nothing to resample: no scored utterance")
    sums = [_cluster_sums(x.astype(np.float64), index, n) for x in (a.errors, a.units, b.errors, b.units)]
    rng = np.random.default_rng(seed)
    diffs = []
    for start in range(0, rounds, chunk):
        draw = rng.integers(0, n, size=(min(chunk, rounds - start), n))
        ea, ua, eb, ub = (s[draw].sum(axis=1) for s in sums)
        with np.errstate(invalid="ignore", divide="ignore"):
            diffs.append(100.0 * (eb / ub - ea / ua))
    values = np.concatenate(diffs)
    values = values[np.isfinite(values)]
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def permutation_p(a: Counts, b: Counts, clusters: np.ndarray | None = None, *, rounds: int = 10000,
                  seed: int = 0, chunk: int = 500) -> float:
    """Two-sided p-value of the pooled difference under random per-utterance
    (per-cluster) swaps of the two systems: ``(hits + 1) / (rounds + 1)``."""
    index = np.arange(len(a.errors)) if clusters is None else clusters
    n = int(index.max()) + 1
    ea, ua, eb, ub = (_cluster_sums(x.astype(np.float64), index, n) for x in (a.errors, a.units, b.errors, b.units))
    observed = abs(100.0 * (eb.sum() / ub.sum() - ea.sum() / ua.sum()))
    rng = np.random.default_rng(seed + 1)
    hits = 0
    for start in range(0, rounds, chunk):
        swap = rng.random((min(chunk, rounds - start), n)) < 0.5
        sa_e = np.where(swap, eb, ea).sum(axis=1)
        sa_u = np.where(swap, ub, ua).sum(axis=1)
        sb_e = np.where(swap, ea, eb).sum(axis=1)
        sb_u = np.where(swap, ua, ub).sum(axis=1)
        stat = np.abs(100.0 * (sb_e / sb_u - sa_e / sa_u))
        hits += int((stat >= observed - 1e-12).sum())
    return (hits + 1) / (rounds + 1)


def sign_test(a: Counts, b: Counts) -> tuple[int, int, float]:
    """``(better, worse, p)``: utterances where B has fewer / more errors than
    A, and the exact two-sided binomial p-value (ties dropped)."""
    better = int((b.errors < a.errors).sum())
    worse = int((b.errors > a.errors).sum())
    n = better + worse
    if n == 0:
        return 0, 0, 1.0
    k = min(better, worse)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return better, worse, min(1.0, 2.0 * tail)


def compare_counts(group: str, a: Counts, b: Counts, clusters: np.ndarray | None = None, *,
                   rounds: int = 10000, seed: int = 0) -> Difference:
    """Every statistic of one group: rates, bootstrap interval, p-values."""
    if clusters is not None:
        _, clusters = np.unique(clusters, return_inverse=True)
    low, high = paired_bootstrap(a, b, clusters, rounds=rounds, seed=seed)
    better, worse, p_sign = sign_test(a, b)
    return Difference(group=group, utterances=len(a.errors),
                      clusters=len(a.errors) if clusters is None else int(clusters.max()) + 1,
                      rate_a=a.rate, rate_b=b.rate, low=low, high=high,
                      p_permutation=permutation_p(a, b, clusters, rounds=rounds, seed=seed),
                      better=better, worse=worse, p_sign=p_sign)


# --------------------------------------------------------------------------- systems on disk


@dataclass(frozen=True)
class System:
    """One decode: its name and ``{cut ID: (language, errors, reference units)}``."""

    name: str
    utterances: dict[str, tuple[str, int, int]]


def _details(path: Path) -> dict[str, tuple[str, int, int]]:
    out = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out[row["id"]] = (row["language"], int(row["errors"]), int(row["ref_units"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise IltInputError(f"{path}:{lineno}: not a line of ilt score's details.jsonl ({exc})") from None
    return out


def _hypothesis_file(path: Path) -> Path | None:
    if path.is_file():
        return path
    for name in ("hyps.jsonl", "hyps.jsonl.gz", "hyp.trn"):
        if (path / name).is_file():
            return path / name
    return None


def load_system(name: str, path: str | Path, refs: Mapping[str, Reference] | None) -> System:
    """A system from a decode directory (``hyps.jsonl``), a hypothesis file,
    or a scored directory (``details.jsonl`` of ``ilt score``). With ``refs``
    the hypotheses are scored against them (a scored directory is rescored
    from its hypotheses when it has them); without, ``details.jsonl`` is read."""
    path = Path(path)
    if not path.exists():
        raise IltInputError(f"{path}: no such decode directory or hypothesis file (system {name!r})")
    hyp_file = _hypothesis_file(path)
    if refs is not None and hyp_file is not None:
        result = score(refs, load_hypotheses(hyp_file, refs))
        return System(name, {u.id: (u.language, u.errors, u.ref_units) for u in result.utterances})
    if path.is_dir() and (path / "details.jsonl").is_file():
        return System(name, _details(path / "details.jsonl"))
    need = "--ref CUTS to score its hypotheses" if hyp_file else "hyps.jsonl, hyp.trn or details.jsonl"
    raise IltInputError(f"{path}: cannot read system {name!r}: give {need}")


def load_pooled(name: str, paths: Sequence[str | Path], refs: Mapping[str, Reference] | None) -> System:
    """One system from several decodes of disjoint cut sets (one per test set, say),
    pooled as one set of utterances; a cut ID found in two of them is an error."""
    pooled: dict[str, tuple[str, int, int]] = {}
    for path in paths:
        part = load_system(name, path, refs)
        twice = sorted(set(part.utterances) & set(pooled))
        if twice:
            raise IltInputError(f"{path}: system {name!r} has cuts {twice[:3]} in another of its decodes too; "
                                f"pool decodes of disjoint test sets only")
        pooled.update(part.utterances)
    return System(name, pooled)


def _shared_ids(systems: Sequence[System]) -> list[str]:
    ids = set(systems[0].utterances)
    for system in systems[1:]:
        if set(system.utterances) != ids:
            only_a = sorted(ids - set(system.utterances))[:3]
            only_b = sorted(set(system.utterances) - ids)[:3]
            raise IltInputError(
                f"systems {systems[0].name!r} and {system.name!r} were not scored on the same cuts "
                f"(only in the first: {only_a or '-'}; only in the second: {only_b or '-'}); "
                f"compare decodes of one manifest, or pass --ref CUTS to score both on it")
    return sorted(ids)


def cluster_keys(cuts_path: str | Path, cluster_by: str) -> dict[str, str]:
    """Cut ID -> its cluster (recording or first speaker) from a CutSet."""
    from lhotse import load_manifest_lazy

    keys = {}
    for cut in load_manifest_lazy(Path(cuts_path)):
        if cluster_by == "recording":
            keys[cut.id] = str(cut.recording_id)
        else:
            sups = list(cut.supervisions)
            keys[cut.id] = str(sups[0].speaker) if sups and sups[0].speaker else cut.id
    return keys


def compare_systems(systems: Sequence[System], *, clusters: Mapping[str, str] | None = None,
                    rounds: int = 10000, seed: int = 0) -> list[tuple[str, list[Difference]]]:
    """For each system after the first: its :class:`Difference` from the first,
    per language (sorted) then ``Overall``."""
    if len(systems) < 2:
        raise IltInputError("ilt compare needs at least two systems (the first is the baseline)")
    ids = _shared_ids(systems)
    languages = np.array([systems[0].utterances[i][0] for i in ids])
    cluster = None if clusters is None else np.array([clusters.get(i, i) for i in ids])
    base = systems[0]
    out = []
    for system in systems[1:]:
        a = Counts(np.array([base.utterances[i][1] for i in ids]), np.array([base.utterances[i][2] for i in ids]))
        b = Counts(np.array([system.utterances[i][1] for i in ids]), np.array([system.utterances[i][2] for i in ids]))
        rows = []
        for group in [*sorted(set(languages.tolist())), OVERALL]:
            mask = np.ones(len(ids), bool) if group == OVERALL else languages == group
            pick = Counts(a.errors[mask], a.units[mask]), Counts(b.errors[mask], b.units[mask])
            rows.append(compare_counts(group, *pick, None if cluster is None else cluster[mask],
                                       rounds=rounds, seed=seed))
        out.append((system.name, rows))
    return out


def _p(value: float) -> str:
    return "<0.001" if value < 0.001 else f"{value:.3f}"


def to_markdown(baseline: str, results: Sequence[tuple[str, list[Difference]]], cluster_by: str,
                rounds: int) -> str:
    """One table per compared system: rates, difference, 95% interval, p-values."""
    lines = [f"Baseline: **{baseline}**. Paired bootstrap over {cluster_by}s ({rounds} resamples), "
             f"95% interval of B - A in points; p: paired permutation test, sign test. "
             f"* marks an interval that excludes 0.", ""]
    for name, rows in results:
        lines += [f"### {name} - {baseline}", "",
                  "| group | utts | A % | B % | B - A | 95% CI | p (perm.) | better / worse | p (sign) |",
                  "|---|---:|---:|---:|---:|---|---:|---:|---:|"]
        for r in rows:
            mark = "*" if r.decided else ""
            lines.append(f"| {r.group} | {r.utterances} | {r.rate_a:.2f} | {r.rate_b:.2f} | "
                         f"{r.difference:+.2f}{mark} | [{r.low:+.2f}, {r.high:+.2f}] | {_p(r.p_permutation)} | "
                         f"{r.better} / {r.worse} | {_p(r.p_sign)} |")
        lines.append("")
    return "\n".join(lines)


def compare_files(named_paths: Sequence[tuple[str, str | Path | Sequence[str | Path]]],
                  out_dir: str | Path | None, *, ref: str | Path | Sequence[str | Path] | None = None,
                  cluster_by: str = "utterance", rounds: int = 10000,
                  seed: int = 0) -> tuple[str, dict[str, Any]]:
    """Read the systems, compare each with the first, write ``compare.md`` and
    ``compare.json`` to ``out_dir`` (when given); return the markdown and the JSON.
    A system given as a list of paths pools them (:func:`load_pooled`: several
    test sets); ``ref`` may be a list of cut manifests too."""
    if cluster_by not in CLUSTERS:
        raise IltInputError(f"--cluster-by must be one of {', '.join(CLUSTERS)}, not {cluster_by!r}")
    refs_paths = [] if ref is None else [ref] if isinstance(ref, (str, Path)) else list(ref)
    if cluster_by != "utterance" and not refs_paths:
        raise IltInputError(f"--cluster-by {cluster_by} reads the clusters from the cuts: give --ref CUTS")
    if rounds < 100:
        raise IltInputError(f"--rounds {rounds}: use at least 100 resamples (10000 is the default)")
    refs = {k: v for path in refs_paths for k, v in load_references(path).items()} if refs_paths else None
    systems = [load_system(name, path, refs) if isinstance(path, (str, Path)) else load_pooled(name, path, refs)
               for name, path in named_paths]
    clusters = ({k: v for path in refs_paths for k, v in cluster_keys(path, cluster_by).items()}
                if cluster_by != "utterance" else None)
    results = compare_systems(systems, clusters=clusters, rounds=rounds, seed=seed)
    markdown = to_markdown(systems[0].name, results, cluster_by, rounds)
    data = {"baseline": systems[0].name, "cluster_by": cluster_by, "rounds": rounds, "seed": seed,
            "systems": {name: [r.to_dict() for r in rows] for name, rows in results}}
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_dir / "compare.md", markdown)
        write_json_atomic(out_dir / "compare.json", data)
    return markdown, data
