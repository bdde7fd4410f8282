"""Strict configuration: unknown keys, wrong types and bad ranges name the key and the file."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from ilt.cli import cli
from ilt.config import (ConfigError, DecodeConfig, RoundConfig, check_file, config_hash, dump_yaml,
                        from_dict, load_decode, load_round)

CONF = Path(__file__).resolve().parents[1] / "conf"


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
