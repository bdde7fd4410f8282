"""The plugin contract: built-ins, a real third-party entry point, duplicates, unknown names."""

import inspect
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from ilt import hookspecs
from ilt.cli import cli
from ilt.plugins import (DEFAULT_PLUGINS, KINDS, PluginError, Registry, build_plugin_manager, create,
                         get_registry)

ROOT = Path(__file__).resolve().parents[1]
FAKE_SRC = Path(__file__).parent / "data" / "ilt_fake_plugin"
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("ilt_")]


@pytest.fixture(scope="module")
def fake_site(tmp_path_factory):
    """Build and install the fake third-party package into a private directory."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(FAKE_SRC)],
        check=True, capture_output=True,
    )
    assert (target / "ilt_fake_plugin.py").exists()
    return target


@pytest.fixture
def with_fake(fake_site, monkeypatch, fresh_registry):
    monkeypatch.syspath_prepend(str(fake_site))
    monkeypatch.delenv("ILT_LOAD_PLUGINS", raising=False)
    return fresh_registry


def test_builtins_are_listed(fresh_registry):
    registry = fresh_registry()
    assert "mlc-slm" in registry.names("corpus") and "kaldi" in registry.names("corpus")
    for component in registry:
        assert component.package == "ilt"
    # every built-in module is also declared as an entry point of the ilt distribution
    setup_text = (ROOT / "setup.py").read_text()
    for module in DEFAULT_PLUGINS:
        assert f"= {module}\"" in setup_text, module


def test_third_party_entry_point_shows_up_and_can_be_chosen(with_fake):
    registry = with_fake()
    expected = {"backbone": "fake-backbone", "augmenter": "fake-augmenter", "selector": "fake-selector",
                "voter": "longest", "loss": "zero", "corpus": "fake-corpus"}
    for kind, name in expected.items():
        component = registry.get(kind, name)
        assert component.package == "ilt-fake-plugin"
    assert create("voter", "longest")(["a b", "a b c", "a"]) == "a b c"
    assert create("backbone", "fake-backbone", "/some/dir").model_dir == "/some/dir"


def test_ilt_load_plugins_restricts_external(with_fake, monkeypatch):
    monkeypatch.setenv("ILT_LOAD_PLUGINS", "")
    registry = with_fake()
    assert "longest" not in registry.names("voter")
    assert "mlc-slm" in registry.names("corpus")  # built-ins always load
    monkeypatch.setenv("ILT_LOAD_PLUGINS", "ilt-fake-plugin")
    with_fake.cache_clear()
    assert "longest" in with_fake().names("voter")


def test_cli_lists_third_party_plugin(fake_site):
    env = {**os.environ, "PYTHONPATH": str(fake_site)}
    env.pop("ILT_LOAD_PLUGINS", None)
    out = subprocess.run([sys.executable, "-m", "ilt.cli", "plugins"], env=env, capture_output=True,
                         text=True, check=True).stdout
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["kind", "name", "package"]
    assert ["voter", "longest", "ilt-fake-plugin"] in rows
    assert ["corpus", "mlc-slm", "ilt"] in rows


def test_cli_prepare_runs_third_party_corpus(with_fake, tmp_path):
    res = CliRunner().invoke(cli, ["prepare", "fake-corpus", str(tmp_path), str(tmp_path / "out"),
                                   "--split", "dev", "--repeat", "3"])
    assert res.exit_code == 0, res.output
    assert "fake-corpus: dev: 3 cuts" in res.output


def _plugin(**hooks):
    module = types.ModuleType("test_inline_plugin")
    for name, fn in hooks.items():
        setattr(module, name, hookspecs.hookimpl(fn))
    return module


def test_duplicate_name_names_both_packages():
    pm = build_plugin_manager(load_entry_points=False)
    plugin = _plugin(ilt_register_corpora=lambda register: register("mlc-slm", lambda *a: {}))
    pm.register(plugin, name="other-package:dup")
    try:
        with pytest.raises(PluginError) as err:
            Registry.from_plugin_manager(pm)
        assert "corpus 'mlc-slm' is registered twice" in str(err.value)
        assert "'ilt'" in str(err.value) and "'other-package'" in str(err.value)
    finally:
        pm.unregister(plugin)


def test_unknown_name_lists_known():
    with pytest.raises(PluginError) as err:
        get_registry().get("corpus", "librispeech-typo")
    assert "unknown corpus 'librispeech-typo'" in str(err.value)
    assert "mlc-slm" in str(err.value)
    with pytest.raises(PluginError, match="unknown component kind"):
        get_registry().get("vocoder", "x")


def test_bad_registrations_are_errors():
    pm = build_plugin_manager(load_entry_points=False)
    plugin = _plugin(ilt_register_voters=lambda register: register("", print))
    pm.register(plugin, name="bad-pkg:x")
    try:
        with pytest.raises(PluginError, match="'bad-pkg' registered a voter with an invalid name"):
            Registry.from_plugin_manager(pm)
    finally:
        pm.unregister(plugin)


def test_misspelled_hook_fails_loudly():
    pm = build_plugin_manager(load_entry_points=False)
    with pytest.raises(Exception, match="ilt_register_voter"):
        pm.register(_plugin(ilt_register_voter=lambda register: None), name="typo:x")
        pm.check_pending()


def test_no_import_time_side_effects():
    code = "import ilt.plugins, ilt.hookspecs, ilt.config, ilt.cli, sys; print('ilt.plugins.corpora' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ---------------------------------------------------------------- meta-tests


def test_every_hook_has_a_kind_and_nothing_else():
    assert sorted(KINDS.values()) == sorted(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert ":param register:" in doc and "factory" in doc, f"{hook} docstring must describe register and factory"
    assert f"### {hook}" in (ROOT / "docs" / "plugins.md").read_text(), f"{hook} missing from docs/plugins.md"
    sig = inspect.signature(getattr(hookspecs, hook))
    assert list(sig.parameters) == ["register"]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_tested(hook):
    """The fake third-party plugin implements every hook, and the entry-point test asserts each kind."""
    fake_source = (FAKE_SRC / "ilt_fake_plugin.py").read_text()
    assert f"def {hook}(register)" in fake_source
    kind = next(k for k, h in KINDS.items() if h == hook)
    test_source = inspect.getsource(test_third_party_entry_point_shows_up_and_can_be_chosen)
    assert f'"{kind}"' in test_source
