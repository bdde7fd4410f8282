"""ilt compare: paired bootstrap intervals and paired tests, checked on cases
whose answer is known in closed form or by exact enumeration."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from ilt.asr.compare import (
    Counts,
    compare_counts,
    compare_files,
    paired_bootstrap,
    permutation_p,
    sign_test,
)
from ilt.errors import IltInputError


def _counts(errors, units):
    return Counts(np.asarray(errors), np.asarray(units))


def test_identical_systems_differ_by_exactly_nothing():
    a = _counts([1, 0, 3, 2], [5, 4, 6, 5])
    d = compare_counts("Overall", a, a, rounds=500)
    assert d.difference == 0 and (d.low, d.high) == (0.0, 0.0)
    assert d.p_permutation == 1.0 and d.p_sign == 1.0 and not d.decided


def test_bootstrap_interval_matches_the_binomial_answer():
    """400 utterances of 10 words; A makes no error, B one error in half of them.
    B - A = 100 * 200 / 4000 = 5 points; a resample's difference is
    100 / 4000 * Binomial(400, 1/2), whose sd is 0.25 points: the 95% interval
    is 5 -/+ 1.96 * 0.25 = [4.51, 5.49]."""
    a = _counts([0] * 400, [10] * 400)
    b = _counts([1, 0] * 200, [10] * 400)
    low, high = paired_bootstrap(a, b, rounds=20000, seed=3)
    assert low == pytest.approx(4.51, abs=0.08) and high == pytest.approx(5.49, abs=0.08)
    assert permutation_p(a, b, rounds=2000) == pytest.approx(1 / 2001)  # no swap reaches 5 points


def test_permutation_p_matches_exact_enumeration():
    errors_a = np.array([2, 0, 1, 3, 0, 2, 1, 4])
    errors_b = np.array([1, 0, 2, 1, 0, 1, 0, 2])
    units = np.array([5, 3, 4, 6, 2, 5, 3, 7])
    observed = abs(errors_b.sum() - errors_a.sum()) / units.sum()
    hits = 0
    for swap in itertools.product([False, True], repeat=8):
        swap = np.array(swap)
        sa, sb = np.where(swap, errors_b, errors_a), np.where(swap, errors_a, errors_b)
        hits += abs(sb.sum() - sa.sum()) / units.sum() >= observed - 1e-12
    exact = hits / 256
    estimate = permutation_p(_counts(errors_a, units), _counts(errors_b, units), rounds=40000, seed=7)
    assert estimate == pytest.approx(exact, abs=0.01)
    assert 0.05 < exact < 0.5  # a case that is neither trivial nor decided


def test_sign_test_is_the_exact_binomial():
    a = _counts([1] * 10, [5] * 10)
    b = _counts([0] * 9 + [2], [5] * 10)
    better, worse, p = sign_test(a, b)
    assert (better, worse) == (9, 1)
    assert p == pytest.approx(2 * (1 + 10) / 1024)


def test_resampling_clusters_of_copies_equals_resampling_the_originals():
    """Each utterance copied three times inside its own cluster: resampling the
    clusters gives the interval of resampling the originals (same draws, sums x3)."""
    rng = np.random.default_rng(0)
    ea, eb, units = rng.integers(0, 4, 50), rng.integers(0, 4, 50), rng.integers(3, 9, 50)
    plain = paired_bootstrap(_counts(ea, units), _counts(eb, units), rounds=3000, seed=5)
    copies = lambda x: np.repeat(x, 3)  # noqa: E731
    clustered = paired_bootstrap(_counts(copies(ea), copies(units)), _counts(copies(eb), copies(units)),
                                 np.repeat(np.arange(50), 3), rounds=3000, seed=5)
    assert clustered == pytest.approx(plain)
    # ...and treating the copies as independent utterances narrows the interval, wrongly
    naive = paired_bootstrap(_counts(copies(ea), copies(units)), _counts(copies(eb), copies(units)),
                             rounds=3000, seed=5)
    assert naive[1] - naive[0] < 0.7 * (plain[1] - plain[0])


def _details(path, rows):
    path.mkdir()
    (path / "details.jsonl").write_text("".join(
        json.dumps({"id": i, "language": lang, "errors": e, "ref_units": u}) + "\n" for i, lang, e, u in rows))
    return path


def test_compare_files_writes_per_language_and_overall_rows(tmp_path):
    a = _details(tmp_path / "A", [(f"u{i}", "en" if i < 30 else "de", 2, 10) for i in range(60)])
    b = _details(tmp_path / "B", [(f"u{i}", "en" if i < 30 else "de", 0 if i < 30 else 2, 10) for i in range(60)])
    markdown, data = compare_files([("M0", a), ("M1", b)], tmp_path / "out", rounds=1000)
    rows = {r["group"]: r for r in data["systems"]["M1"]}
    assert list(rows) == ["de", "en", "Overall"]
    assert rows["en"]["difference"] == pytest.approx(-20.0) and rows["en"]["decided"]
    assert rows["de"]["difference"] == 0 and not rows["de"]["decided"]
    assert rows["Overall"]["difference"] == pytest.approx(-10.0)
    assert "| en | 30 | 20.00 | 0.00 | -20.00* |" in markdown
    assert json.loads((tmp_path / "out" / "compare.json").read_text())["baseline"] == "M0"


def test_systems_on_different_cuts_are_refused(tmp_path):
    a = _details(tmp_path / "A", [("u1", "en", 1, 5), ("u2", "en", 0, 5)])
    b = _details(tmp_path / "B", [("u1", "en", 1, 5), ("u3", "en", 0, 5)])
    with pytest.raises(IltInputError, match="not scored on the same cuts"):
        compare_files([("A", a), ("B", b)], None, rounds=100)
    with pytest.raises(IltInputError, match="give --ref"):
        compare_files([("A", a), ("B", b)], None, cluster_by="recording")


def test_the_command_scores_hypotheses_on_the_reference_cuts(tmp_path):
    """End to end through `ilt compare`: hypotheses scored on a CutSet, clustered by recording."""
    from click.testing import CliRunner

    from ilt.cli.compare_commands import compare
    from ilt.testing import make_cuts

    specs = [{"id": f"c{i}", "text": "one two three four", "language": "en"} for i in range(12)]
    cuts = make_cuts(tmp_path / "audio", specs)
    cuts.to_file(tmp_path / "cuts.jsonl.gz")
    for name, wrong in (("A", 6), ("B", 0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "hyps.jsonl").write_text("".join(
            json.dumps({"id": f"c{i}", "text": "one two three five" if i < wrong else "one two three four"}) + "\n"
            for i in range(12)))
    result = CliRunner().invoke(compare, [str(tmp_path / "A"), f"best={tmp_path / 'B'}", "--ref",
                                          str(tmp_path / "cuts.jsonl.gz"), "--cluster-by", "recording",
                                          "--rounds", "500", "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    overall = data["systems"]["best"][-1]
    assert overall["group"] == "Overall" and overall["difference"] == pytest.approx(-12.5)  # 6 of 48 words
    assert overall["clusters"] == 12 and overall["better"] == 6 and overall["worse"] == 0
    bad = CliRunner().invoke(compare, [str(tmp_path / "A")])
    assert bad.exit_code == 2 and "at least two systems" in bad.output


def test_pooled_test_sets_count_every_utterance_once(tmp_path):
    """A system given as the decodes of two disjoint test sets is one system of their
    utterances together: the pooled rate is total errors over total units (not the mean of
    the two sets' rates); a cut in both decodes is refused; the command pools PATH,PATH."""
    from click.testing import CliRunner

    from ilt.cli.compare_commands import compare

    a1 = _details(tmp_path / "A1", [(f"s1-{i}", "en", 1, 10) for i in range(10)])   # 10.0%
    a2 = _details(tmp_path / "A2", [(f"s2-{i}", "en", 3, 30) for i in range(10)])   # 10.0%
    b1 = _details(tmp_path / "B1", [(f"s1-{i}", "en", 0, 10) for i in range(10)])   # 0%
    b2 = _details(tmp_path / "B2", [(f"s2-{i}", "en", 6, 30) for i in range(10)])   # 20%
    _, data = compare_files([("A", [a1, a2]), ("B", [b1, b2])], None, rounds=500)
    overall = data["systems"]["B"][-1]
    assert overall["utterances"] == 20
    assert overall["rate_a"] == pytest.approx(10.0) and overall["rate_b"] == pytest.approx(15.0)  # 60/400
    with pytest.raises(IltInputError, match="in another of its decodes"):
        compare_files([("A", [a1, a1]), ("B", [b1, b2])], None, rounds=100)
    result = CliRunner().invoke(compare, [f"A={a1},{a2}", f"{b1},{b2}", "--rounds", "200",
                                          "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert list(data["systems"]) == ["B1"] and data["systems"]["B1"][-1]["rate_b"] == pytest.approx(15.0)
