"""Strict configuration: unknown keys, wrong types and bad ranges name the key and the file."""

import dataclasses
from pathlib import Path
from typing import Literal

import pytest
from click.testing import CliRunner

from ilt.cli.main import cli
from ilt.config import (
    ComponentSpec,
    ConfigError,
    DecodeConfig,
    RoundConfig,
    check_components,
    check_file,
    config_hash,
    dump_yaml,
    from_dict,
    load_decode,
    load_round,
    load_with_overrides,
    to_dict,
)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "egs" / "mlc_slm" / "conf"  # the paper's round configs, in their recipe


def write(tmp_path, text, name="round.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_paper_round_values():
    focus, feedback, fix = (load_round(CONF / f"{n}.yaml") for n in ("focus", "feedback", "fix"))
    assert (focus.lora.r, focus.lora.lora_alpha, focus.lora.target_modules, focus.train.epochs) == (16, 32, "attention", 6)
    assert (feedback.lora.r, feedback.lora.lora_alpha, feedback.lora.target_modules, feedback.train.epochs) == (512, 2048, "wide", 10)
    assert (fix.lora.r, fix.lora.lora_alpha, fix.lora.target_modules, fix.train.epochs) == (32, 64, "wide", 6)
    for cfg in (focus, feedback, fix):
        assert (cfg.train.lr, cfg.train.precision, cfg.train.micro_batch, cfg.train.grad_accum) == (1e-5, "bf16", 16, 4)
        assert cfg.select.metric == "dev_wer"


def test_decode_beam_per_language():
    cfg = load_decode(CONF / "decode.yaml")
    assert [cfg.beam_for(lang) for lang in ("en", "ja", "th", "vi", "fr", None)] == [6, 1, 1, 1, 6, 6]
    assert load_decode(None) == DecodeConfig()


def test_unknown_key_names_key_file_and_suggestion(tmp_path):
    path = write(tmp_path, "name: x\ntrain:\n  lr_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_round(path)
    msg = str(err.value)
    assert str(path) in msg and "train.lr_rate" in msg and "did you mean 'lr'" in msg


def test_unknown_nested_list_key(tmp_path):
    path = write(tmp_path, "name: x\ntask:\n  data:\n    - {cuts: a.jsonl.gz, wieght: 2}\n")
    with pytest.raises(ConfigError, match=r"task\.data\[0\]\.wieght: unknown key \(did you mean 'weight'"):
        load_round(path)


@pytest.mark.parametrize("text, key, what", [
    ("name: x\nlora: {r: sixteen}\n", "lora.r", "expected an integer"),
    ("name: x\nlora: {r: 0}\n", "lora.r", "below the minimum 1"),
    ("name: x\nlora: {r: true}\n", "lora.r", "expected an integer"),
    ("name: x\nlora: {lora_dropout: 1.5}\n", "lora.lora_dropout", "above the maximum"),
    ("name: x\ntrain: {precision: fp8}\n", "train.precision", "expected one of"),
    ("name: x\ntrain: {max_steps: -1}\n", "train.max_steps", "below the minimum"),
    ("name: x\ntask: {data: [{cuts: a, weight: -1}]}\n", "task.data[0].weight", "below the minimum"),
    ("name: x\ntask: {data: {cuts: a}}\n", "task.data", "expected list"),
    ("lora: {r: 4}\n", "name", "required key is missing"),
])
def test_bad_values_name_the_key(tmp_path, text, key, what):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_round(path)
    assert f"{path}: {key}: " in str(err.value)
    assert what in str(err.value)


def test_decode_beam_must_be_positive(tmp_path):
    path = write(tmp_path, "beam_size: {default: 4, ja: 0}\n", "decode.yaml")
    with pytest.raises(ConfigError, match=r"beam_size\.ja: 0 is below the minimum 1"):
        check_file(path)


def test_yaml_syntax_and_empty_files(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        check_file(write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(ConfigError, match="file is empty"):
        check_file(write(tmp_path, ""))
    with pytest.raises(ConfigError, match="no such file"):
        check_file(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        check_file(write(tmp_path, "- a\n- b\n"))


def test_round_trip_and_hash(tmp_path):
    cfg = load_round(CONF / "focus.yaml")
    again = from_dict(RoundConfig, __import__("yaml").safe_load(dump_yaml(cfg)), "dumped")
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
    changed = from_dict(RoundConfig, {**__import__("yaml").safe_load(dump_yaml(cfg)), "name": "other"})
    assert config_hash(changed) != config_hash(cfg)


def test_lora_section_is_peft_lora_config():
    from peft import LoraConfig

    cfg = load_round(CONF / "feedback.yaml")
    peft_cfg = LoraConfig(**cfg.lora.peft_kwargs(["q_proj", "v_proj"]))
    assert (peft_cfg.r, peft_cfg.lora_alpha, set(peft_cfg.target_modules)) == (512, 2048, {"q_proj", "v_proj"})


def test_cli_config_check(tmp_path):
    good = sorted(str(p) for p in CONF.glob("*.yaml"))
    bad = write(tmp_path, "name: x\ntrain: {epoch: 3}\n")
    runner = CliRunner()
    ok = runner.invoke(cli, ["config", "check", *good])
    assert ok.exit_code == 0, ok.output
    assert ok.output.count("ok ") == len(good)
    res = runner.invoke(cli, ["config", "check", good[0], str(bad)])
    assert res.exit_code == 1
    assert "train.epoch: unknown key (did you mean 'epochs'?)" in res.output
    assert "1 of 2 file(s) invalid" in res.output


# ---------------------------------------------------------------- components with options


def test_component_yaml_forms_round_trip(tmp_path):
    import yaml

    path = write(tmp_path, "name: x\nbackbone: whisper\ntask:\n  loss: {name: ce, label_smoothing: 0.1}\n")
    cfg = load_round(path)
    assert cfg.backbone == ComponentSpec("whisper") and str(cfg.backbone) == "whisper"
    assert cfg.task.loss == ComponentSpec("ce", {"label_smoothing": 0.1})
    dumped = yaml.safe_load(dump_yaml(cfg))
    assert dumped["backbone"] == "whisper"  # no options: the plain name, as before
    assert dumped["task"]["loss"] == {"name": "ce", "label_smoothing": 0.1}
    again = from_dict(RoundConfig, dumped, "dumped")
    assert again == cfg and config_hash(again) == config_hash(cfg)
    assert config_hash(again) != config_hash(load_round(write(tmp_path, "name: x\n", "plain.yaml")))
    # built in code from a plain string, the same config
    assert RoundConfig(name="x", backbone="whisper") == load_round(write(tmp_path, "name: x\n", "plain.yaml"))
    assert DecodeConfig(backbone="whisper").backbone == ComponentSpec("whisper")


def test_option_less_configs_are_written_and_hashed_as_before():
    import hashlib
    import json

    cfg = load_round(CONF / "focus.yaml")
    plain = to_dict(cfg)
    assert plain["backbone"] == "whisper" and plain["task"]["loss"] == "ce"
    assert "backbone: whisper" in dump_yaml(cfg) and "loss: ce" in dump_yaml(cfg)
    # the hash of a config with plain component names, as it was computed before options existed
    legacy = dataclasses.asdict(cfg)
    legacy["backbone"], legacy["task"]["loss"] = "whisper", "ce"
    if legacy["select"].get("decode"):  # the round's dev decoding (its backbone: the round's)
        legacy["select"]["decode"]["backbone"] = "whisper"
    assert config_hash(cfg) == hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()[:16]


@pytest.mark.parametrize("text, where, what", [
    ("name: x\nbackbone: 3\n", "backbone", "expected a component name or a mapping"),
    ("name: x\ntask: {loss: {label_smoothing: 0.1}}\n", "task.loss", "needs a 'name' key"),
    ("name: x\ntask: {loss: {name: ''}}\n", "task.loss.name", "expected a non-empty string"),
])
def test_bad_component_forms_name_the_key(tmp_path, text, where, what):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_round(path)
    assert f"{path}: {where}: " in str(err.value) and what in str(err.value)


@pytest.mark.parametrize("text, name, message", [
    ("name: x\ntask: {loss: ce-smoth}\n", "round.yaml",
     "task.loss: unknown loss 'ce-smoth'; known: ce"),
    ("name: x\ntask: {loss: {name: ce, label_smothing: 0.1}}\n", "round.yaml",
     ("task.loss.label_smothing: unknown option of loss 'ce' (package 'ilt') (did you mean 'label_smoothing'?); "
      "accepted options: label_smoothing")),
    ("name: x\ntask: {loss: {name: ce, label_smoothing: lots}}\n", "round.yaml",
     "task.loss.label_smoothing: expected a number, got 'lots'"),
    # the factories' own range checks (validate), which used to wait for the training run
    ("name: x\ntask: {loss: {name: ce, label_smoothing: 1.5}}\n", "round.yaml",
     "task.loss.label_smoothing: expected a number in [0, 1), got 1.5"),
    ("name: x\ntask: {loss: {name: distill, temperature: 0, kl_weight: 0}}\n", "round.yaml",
     "task.loss.temperature: expected a finite number > 0, got 0"),
    ("name: x\nbackbone: {name: whisper, dtype: bf16}\n", "round.yaml",
     "backbone.dtype: set by ilt itself, not in the config; remove it"),
    ("backbone: {name: whisper, beam: 3}\nbatch_size: 4\n", "decode.yaml",
     ("backbone.beam: unknown option of backbone 'whisper' (package 'ilt'); accepted options: input_mode, "
      "pad_multiple")),
    ("backbone: {name: whisper, input_mode: short}\nbatch_size: 4\n", "decode.yaml",
     "backbone.input_mode: must be one of padded, audio_length, not 'short'"),
    ("backbone: wisper\n", "decode.yaml", "backbone: unknown backbone 'wisper' (did you mean 'whisper'?)"),
])
def test_cli_config_check_checks_component_names_and_options(tmp_path, text, name, message):
    path = write(tmp_path, text, name)
    res = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert res.exit_code == 1
    assert f"FAIL {path}: {message}" in res.output
    assert "1 of 1 file(s) invalid" in res.output


def test_cli_config_check_accepts_component_options(tmp_path):
    path = write(tmp_path, "name: x\ntask:\n  loss: {name: ce, label_smoothing: 0.1}\n")
    res = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert res.exit_code == 0, res.output
    assert f"ok   {path} (RoundConfig)" in res.output


def test_every_shipped_config_passes_config_check():
    files = sorted(str(p) for pattern in ("egs/*/conf/*.yaml", "egs/*/conf/*/*.yaml", "egs/*/conf_*/*.yaml",
                                          "tests/data/mini_ci_conf/*.yaml")
                   for p in ROOT.glob(pattern))
    assert len(files) >= 8 and any("/qwen2_audio/" in f for f in files)
    res = CliRunner().invoke(cli, ["config", "check", *files])
    assert res.exit_code == 0, res.output
    assert res.output.count("ok ") == len(files)


def test_override_gives_options_to_a_plain_name(tmp_path):
    path = write(tmp_path, "name: x\ntask: {loss: ce}\n")
    cfg = load_with_overrides(path, RoundConfig, ["task.loss.label_smoothing=0.2"])
    assert cfg.task.loss == ComponentSpec("ce", {"label_smoothing": 0.2})


def test_options_are_checked_against_any_factory(monkeypatch):
    import types

    from ilt import hookspecs
    from ilt.core import registry as ilt_plugins

    def strict(*, threshold: float, mode: Literal["a", "b"] = "a", names: list[str] | None = None):
        return None

    def loose(**options):
        return None

    module = types.ModuleType("inline")
    module.ilt_register_losses = hookspecs.hookimpl(lambda register: (register("strict", strict),
                                                                      register("loose", loose)))
    pm = ilt_plugins.build_plugin_manager(load_entry_points=False)
    pm.register(module, name="third-party:inline")
    registry = ilt_plugins.Registry.from_plugin_manager(pm)
    monkeypatch.setattr(ilt_plugins, "get_registry", lambda: registry)

    def check(loss):
        check_components(from_dict(RoundConfig, {"name": "x", "task": {"loss": loss}}), registry, "r.yaml")

    check({"name": "strict", "threshold": 1, "mode": "b", "names": ["x"]})
    check({"name": "loose", "anything": [1, 2]})
    with pytest.raises(ConfigError, match=r"r\.yaml: task\.loss: loss 'strict' \(package 'third-party'\) needs "
                                          r"option\(s\) threshold"):
        check("strict")
    with pytest.raises(ConfigError, match=r"r\.yaml: task\.loss\.mode: expected one of 'a', 'b', got 'c'"):
        check({"name": "strict", "threshold": 1, "mode": "c"})
    with pytest.raises(ConfigError, match=r"task\.loss\.names\[0\]: expected a string, got 3"):
        check({"name": "strict", "threshold": 1, "names": [3]})
