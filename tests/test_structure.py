"""The package's structure: layers, no import cycle, no private import across modules, no shared
file name, no function over 60 lines (docstring excluded).

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
    assert structure.upward_imports({"ilt.data.mix": {"ilt.training.loop"}, "ilt.training.loop": {"ilt.data.mix"}}) == [
        ("ilt.data.mix", "ilt.training.loop")]
    assert structure.layer_of("ilt.plugins.whisper") > structure.layer_of("ilt.core.registry")
    assert structure.layer_of("ilt.data.languages") < structure.layer_of("ilt.data.mix")


def test_imports_inside_functions_count(structure, tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("import os\n\ndef f():\n    from ilt.training.loop import train_round\n    import ilt.cli.main\n")
    known = {"ilt.training.loop": Path("x"), "ilt.cli.main": Path("y"), "ilt": Path("z")}
    assert structure.imports_of(source, known) == {"ilt.training.loop", "ilt.cli.main"}
    long = tmp_path / "long.py"
    long.write_text("def g():\n" + "    x = 1\n" * 90)
    assert structure.functions(long) == [("g", 91)]


def test_a_docstring_does_not_count_towards_the_length(structure, tmp_path):
    source = tmp_path / "doc.py"
    source.write_text('def f():\n    """One.\n\n    Two.\n    """\n    x = 1\n    return x\n\n\ndef g():\n    return 1\n')
    assert structure.functions(source) == [("f", 2), ("g", 2)]


def test_private_imports_and_shared_file_names_are_found(structure, tmp_path):
    a = tmp_path / "a.py"
    a.write_text("from ilt.asr.decode import _Decoder, decode_files\nfrom ilt.x import __version__\n")
    b = tmp_path / "sub" / "a.py"
    b.parent.mkdir()
    b.write_text("")
    found = structure.private_imports({"ilt.a": a})
    assert found == ["ilt.a:1 imports ilt.asr.decode._Decoder"]
    assert structure.shared_file_names({"ilt.a": a, "ilt.sub.a": b}) == ["a.py: ilt.a, ilt.sub.a"]
    assert structure.shared_file_names({"ilt.a": a}) == []


def test_the_layers_follow_the_packages(structure):
    order = ["ilt.core.files", "ilt.config", "ilt.data.mix", "ilt.models.adapter", "ilt.asr.decode",
             "ilt.training.loop", "ilt.experts.train", "ilt.plugins.whisper", "ilt.cli.main"]
    layers = [structure.layer_of(name) for name in order]
    assert layers == sorted(layers) and len(set(layers)) == len(layers)
    with pytest.raises(KeyError):
        structure.layer_of("ilt.newthing")  # a new top-level module must be placed on purpose
