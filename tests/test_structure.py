"""The package's structure: no import cycle, no upward import, no function over 80 lines.

The checks live in tools/structure.py (which also prints the module table);
these tests also make sure the checks themselves can fail.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def structure():
    spec = importlib.util.spec_from_file_location("structure", ROOT / "tools" / "structure.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_package_has_no_cycle_no_upward_import_and_short_functions(structure):
    assert structure.problems() == []


def test_every_module_has_a_layer(structure):
    for name in structure.modules():
        structure.layer_of(name)  # raises KeyError for a module left out of LAYERS


def test_the_checks_can_fail(structure):
    assert structure.find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert structure.find_cycle({"a": {"b"}, "b": set()}) is None
    assert structure.upward_imports({"ilt.data.mix": {"ilt.train"}, "ilt.train": {"ilt.data.mix"}}) == [
        ("ilt.data.mix", "ilt.train")]
    assert structure.layer_of("ilt.plugins.whisper") > structure.layer_of("ilt.plugins")
    assert structure.layer_of("ilt.data.languages") < structure.layer_of("ilt.data.mix")


def test_imports_inside_functions_count(structure, tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("import os\n\ndef f():\n    from ilt.train import train_round\n    import ilt.cli\n")
    known = {"ilt.train": Path("x"), "ilt.cli": Path("y"), "ilt": Path("z")}
    assert structure.imports_of(source, known) == {"ilt.train", "ilt.cli"}
    long = tmp_path / "long.py"
    long.write_text("def g():\n" + "    x = 1\n" * 90)
    assert structure.functions(long) == [("g", 91)]
