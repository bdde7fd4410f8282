"""bench/common.py: what RESULTS.md records of a benchmark's command line."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from common import REPO_DIR, portable_arg  # noqa: E402


def test_machine_paths_are_not_recorded():
    assert portable_arg("/tmp/work/dt3") == "<scratch>/dt3"
    assert portable_arg(str(REPO_DIR / "egs" / "mini" / "exp")) == "egs/mini/exp"
    assert portable_arg("--work") == "--work" and portable_arg("data/x.jsonl") == "data/x.jsonl"
    assert portable_arg("3") == "3" and portable_arg("compression_ratio_threshold=null") == "compression_ratio_threshold=null"
