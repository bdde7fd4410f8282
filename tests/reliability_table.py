"""Rows of the reliability table (docs/reliability.md): each reliability test
records ``(suite, case, expected, observed, passed)`` before it asserts, so a
failing case is in the table too. Rows go to the JSON-lines file named by
``ILT_RELIABILITY_TABLE`` (set by tools/reliability.py); without it nothing
is written."""

from __future__ import annotations

import json
import os

TABLE_ENV = "ILT_RELIABILITY_TABLE"


def record(suite: str, case: str, expected: str, observed: str, passed: bool) -> None:
    path = os.environ.get(TABLE_ENV)
    if not path:
        return
    row = {"suite": suite, "case": case, "expected": expected, "observed": " ".join(observed.split()),
           "pass": bool(passed)}
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def check(suite: str, case: str, expected: str, observed: str, passed: bool) -> None:
    """Record the row, then fail the test unless ``passed``."""
    record(suite, case, expected, observed, passed)
    assert passed, f"{case}: expected {expected}; observed {observed}"
