"""egs/mini/local/evidence_tables.py: the converged track's comparison tables, and the
step sum and dev choice that local/evidence.sh's control part reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "egs" / "mini" / "local" / "evidence_tables.py"


def _run(*args, check=True):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          check=check)


def _details(path: Path, rows):
    path.mkdir(parents=True)
    (path / "details.jsonl").write_text("".join(
        json.dumps({"id": i, "language": lang, "errors": e, "ref_units": u}) + "\n" for i, lang, e, u in rows))


def test_table_pools_the_test_sets_and_gives_each_alone(tmp_path):
    # A: 2 errors per 10 words everywhere; B: none on set s1, 2 per 10 on s2 (no change there)
    for s in ("s1", "s2"):
        _details(tmp_path / "A" / s, [(f"{s}-{i}", "en", 2, 10) for i in range(40)])
        _details(tmp_path / "B" / s, [(f"{s}-{i}", "en", 0 if s == "s1" else 2, 10) for i in range(40)])
    out = tmp_path / "ev" / "t.md"
    result = _run("table", "--sets", "s1 s2", "--system", f"A={tmp_path}/A/{{set}}",
                  "--system", f"B={tmp_path}/B/{{set}}", "--pair", "B-A", "--rounds", "500", "--out", out)
    row = next(line for line in out.read_text().splitlines() if line.startswith("| B - A |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == ["20.00", "10.00"]        # pooled over 80 utterances: 160/800, 80/800
    assert cells[3].startswith("-10.00*")          # pooled difference, interval excludes 0
    assert cells[5].startswith("-20.00*")          # s1 alone
    assert cells[6] == "+0.00 [+0.00, +0.00]"      # s2 alone: identical systems
    assert "| en | 80 |" in (tmp_path / "ev" / "t.detail.md").read_text()
    assert row in result.stdout


def test_table_names_a_missing_decode_and_a_bad_pair(tmp_path):
    _details(tmp_path / "A" / "s1", [("u", "en", 1, 5)])
    bad = _run("table", "--sets", "s1 s2", "--system", f"A={tmp_path}/A/{{set}}", "--pair", "A-A",
               "--out", tmp_path / "t.md", check=False)
    assert bad.returncode != 0 and "no decode directory" in bad.stderr and "A/s2" in bad.stderr
    bad = _run("table", "--sets", "s1", "--system", f"A={tmp_path}/A/{{set}}", "--pair", "A-Z",
               "--out", tmp_path / "t.md", check=False)
    assert bad.returncode != 0 and "give B-A" in bad.stderr


def _round(path: Path, steps: int, best: float | None):
    (path / "best").mkdir(parents=True)
    (path / "train_log.jsonl").write_text("".join(
        json.dumps({"event": "step", "step": s}) + "\n" + (json.dumps({"event": "eval", "step": s}) + "\n"
                                                          if s % 4 == 0 else "")
        for s in range(1, steps + 1)))
    (path / "best" / "score.json").write_text(json.dumps({"value": best}))


def test_steps_sum_the_rounds_and_best_dev_picks_the_lowest(tmp_path):
    for name, steps, best in (("a", 24, 0.30), ("b", 40, 0.25), ("c", 16, 0.25)):
        _round(tmp_path / name, steps, best)
    assert _run("steps", tmp_path / "a", tmp_path / "b", tmp_path / "c").stdout.strip() == "80"
    assert _run("best-dev", tmp_path / "a", tmp_path / "b", tmp_path / "c").stdout.strip() == str(tmp_path / "b")
    _round(tmp_path / "d", 8, None)
    bad = _run("best-dev", tmp_path / "a", tmp_path / "d", check=False)
    assert bad.returncode != 0 and "no dev score" in bad.stderr


@pytest.mark.parametrize("command", ["steps", "best-dev"])
def test_an_untrained_round_is_named(tmp_path, command):
    bad = _run(command, tmp_path / "nothing", check=False)
    assert bad.returncode != 0 and "nothing" in bad.stderr and "first" in bad.stderr
