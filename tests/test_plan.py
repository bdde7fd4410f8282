"""``ilt plan`` (ilt.training.plan, ilt.cli.plan_commands): exact parameter
counts on tiny models, sharding, the largest micro-batch, the shipped configs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from ilt.cli.plan_commands import COMMANDS
from ilt.cli.plan_commands import plan as plan_cmd
from ilt.config import LoraSection, RoundConfig, TrainSection
from ilt.errors import IltInputError
from ilt.training import plan

ROOT = Path(__file__).resolve().parents[1]
FEEDBACK = ROOT / "egs" / "mlc_slm" / "conf" / "feedback.yaml"
if not FEEDBACK.is_file():  # before the MLC-SLM configs moved into the recipe
    FEEDBACK = ROOT / "conf" / "feedback.yaml"


def round_config(r: int = 4, targets="attention", **train) -> RoundConfig:
    return RoundConfig(name="t", lora=LoraSection(r=r, lora_alpha=2 * r, target_modules=targets),
                       train=TrainSection(**train))


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory):
    from ilt.testing import tiny_whisper_dir

    return tiny_whisper_dir(tmp_path_factory.mktemp("plan") / "whisper")


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    from ilt.testing.tiny_qwen2_audio import tiny_qwen2_audio_dir

    return tiny_qwen2_audio_dir(tmp_path_factory.mktemp("plan") / "qwen")


def trained_counts(model_dir: Path, name: str, config: RoundConfig) -> tuple[int, int, int]:
    """(backbone parameters, trainable, total) of the real model with the LoRA training attaches."""
    import torch

    from ilt.plugins import create
    from ilt.training.lora import attach_lora

    backbone = create("backbone", name, model_dir, dtype=torch.float32, device=None)
    base = sum(p.numel() for p in backbone.model.parameters())
    trainable, total = attach_lora(backbone, config.lora).get_nb_trainable_parameters()
    return base, trainable, total


@pytest.mark.parametrize("scope", ["attention", "wide"])
def test_counts_equal_the_real_tiny_whisper(tiny_whisper, scope):
    config = round_config(r=4, targets=scope)
    model = plan.count_model(tiny_whisper, config)
    base, trainable, total = trained_counts(tiny_whisper, "whisper", config)
    assert (model.base, model.lora, model.total) == (base, trainable, total)
    assert model.trainable == trainable > 0


@pytest.mark.parametrize("scope", ["attention", "wide", ["fc1", "down_proj"]])
def test_counts_equal_the_real_tiny_qwen2_audio(tiny_qwen, scope):
    config = round_config(r=8, targets=scope)
    model = plan.count_model(tiny_qwen, config)
    base, trainable, total = trained_counts(tiny_qwen, "qwen2_audio", config)
    assert (model.base, model.lora, model.total) == (base, trainable, total)
    # the LoRA inputs per layer: r * (in + out) per target, and the widths the activations use
    assert sum(sum(s.lora_self) + sum(s.lora_cross) for s in model.stacks) > 0


def test_lora_inputs_split_whisper_cross_attention(tiny_whisper):
    model = plan.count_model(tiny_whisper, round_config(targets="attention"))
    encoder, decoder = model.stacks
    d = encoder.hidden
    assert encoder.lora_self == [3 * d] * encoder.layers and encoder.lora_cross == [0] * encoder.layers
    # decoder: q/k/v of self-attention and q of cross-attention read the tokens; cross k/v the encoder output
    assert decoder.lora_self == [4 * d] * decoder.layers and decoder.lora_cross == [2 * d] * decoder.layers


def test_language_id_embeddings_are_trainable(tiny_whisper):
    from ilt.models.lid import LANGUAGES

    plain = plan.count_model(tiny_whisper, round_config())
    with_lid = plan.count_model(tiny_whisper, round_config(lid_embeddings=True))
    assert with_lid.trainable - plain.trainable == with_lid.lid == len(LANGUAGES) * 2 * plain.stacks[0].hidden


def test_unknown_target_and_unknown_model(tiny_whisper, tmp_path):
    with pytest.raises(IltInputError, match="lora.target_modules: unknown LoRA target module.*gate_proj"):
        plan.count_model(tiny_whisper, round_config(targets=["gate_proj"]))
    with pytest.raises(IltInputError, match="not a known hub ID.*openai/whisper-large-v3"):
        plan.count_model("openai/whisper-huge", round_config())
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(IltInputError, match="model_type 'llama'"):
        plan.count_model(tmp_path, round_config())


def test_sharding_divides_what_it_should(tiny_whisper):
    model = plan.count_model(tiny_whisper, round_config(r=16, targets="wide"))
    setup = plan.Setup(processes=8)
    ddp, zero2, fsdp, zero3 = (plan.static_bytes(model, setup, s) for s in ("ddp", "zero2", "fsdp", "zero3"))
    frozen, trainable = model.total - model.trainable, model.trainable
    assert ddp["weights"] == 2 * frozen and ddp["lora"] == ddp["grads"] == ddp["buckets"] == 4 * trainable
    assert ddp["optimizer"] == 8 * trainable
    assert zero2["weights"] == ddp["weights"] and zero2["lora"] == ddp["lora"]
    for key in ("grads", "optimizer"):
        assert zero2[key] == fsdp[key] == zero3[key] == pytest.approx(ddp[key] / 8)
    for key in ("weights", "lora"):
        assert fsdp[key] == zero3[key] == pytest.approx(ddp[key] / 8)
    assert fsdp["gather"] > 0 and ddp["gather"] == zero2["gather"] == 0
    one = plan.static_bytes(model, plan.Setup(processes=1), "fsdp")
    assert one["weights"] == ddp["weights"] and one["gather"] == 0
    eight_bit = plan.static_bytes(model, dataclasses.replace(setup, optimizer="adamw8bit"), "ddp")
    assert eight_bit["optimizer"] == 2 * trainable
    with pytest.raises(IltInputError, match="strategy 'fsdp2'"):
        plan.static_bytes(model, setup, "fsdp2")


def test_largest_micro_batch_is_monotone_and_fits(tiny_whisper):
    model = plan.count_model(tiny_whisper, round_config())
    previous = 0
    for gib in (0.001, 0.01, 0.05, 0.1, 0.5, 1, 4):
        setup = plan.Setup(processes=2, device_memory_gib=gib)
        p = plan.plan_strategy(model, setup, "ddp")
        assert p.largest_micro_batch >= previous
        previous = p.largest_micro_batch
        if p.largest_micro_batch:  # the largest fits, one more does not
            at = plan.plan_strategy(model, dataclasses.replace(setup, micro_batch=p.largest_micro_batch), "ddp")
            over = plan.plan_strategy(model, dataclasses.replace(setup, micro_batch=p.largest_micro_batch + 1),
                                      "ddp")
            assert at.fits and not over.fits
    assert previous > 0
    assert plan.largest_micro_batch(static=10.0, per_cut=5.0, logit_grad=1.0, usable=12.0) == 0


def test_checkpointing_cuts_activations_and_advice_names_it():
    from ilt.config import load_round

    config = load_round(FEEDBACK)
    model = plan.count_model("Qwen/Qwen2-Audio-7B-Instruct", config)
    setup = plan.setup_from_round(config, processes=8, checkpointing=False)  # the round without checkpointing
    off = plan.activation_bytes(model, setup, checkpointing=False)
    on = plan.activation_bytes(model, setup, checkpointing=True)
    assert on["saved"] < off["saved"] / 4 and on["logit_grad"] == off["logit_grad"]
    # longer cuts cost more in the LLM (25 audio tokens a second), the encoder is padded to 30 s anyway
    short = plan.activation_bytes(model, dataclasses.replace(setup, seconds=5.0))
    assert short["saved"] < off["saved"]
    tips = plan.advice(model, setup, "ddp")
    assert not plan.plan_strategy(model, setup, "ddp").fits
    assert any(t.startswith("gradient checkpointing") for t in tips)
    assert any(t.startswith("FSDP full shard") for t in tips)
    kept = [t for t in tips if t.startswith("micro_batch")]
    assert kept and f"the same {setup.micro_batch * setup.grad_accum} cuts" in kept[0]
    roomy = dataclasses.replace(setup, checkpointing=True, micro_batch=1, device_memory_gib=200)
    assert plan.advice(model, roomy, "fsdp") == []


def test_published_sizes():
    whisper = plan.count_model("openai/whisper-large-v3", round_config(r=16))
    qwen = plan.count_model("Qwen/Qwen2-Audio-7B-Instruct", round_config(r=16))
    assert whisper.base == pytest.approx(1.55e9, rel=0.02)
    assert qwen.base == pytest.approx(8.4e9, rel=0.02)
    # the figure: the Feedback LoRA (r=512, wide) on Qwen2-Audio-7B has about 1.66B parameters
    feedback = plan.count_model("Qwen/Qwen2-Audio-7B-Instruct", round_config(r=512, targets="wide"))
    assert feedback.lora == pytest.approx(1.66e9, rel=0.01)


def test_setup_from_round_reads_the_round():
    config = round_config(micro_batch=8, grad_accum=2, gradient_checkpointing=True, precision="fp32")
    setup = plan.setup_from_round(config, processes=4, seconds=None)
    assert (setup.micro_batch, setup.grad_accum, setup.checkpointing, setup.precision) == (8, 2, True, "fp32")
    assert plan.setup_from_round(config, checkpointing=False).checkpointing is False
    by_duration = round_config(max_duration=200.0)
    assert plan.setup_from_round(by_duration, seconds=20.0).micro_batch == 10


def test_command_table_json_and_errors(tiny_whisper, tmp_path):
    assert COMMANDS == [plan_cmd]
    conf = tmp_path / "round.yaml"
    conf.write_text("name: t\nlora: {r: 4, lora_alpha: 8, target_modules: wide}\ntrain: {micro_batch: 2}\n")
    runner = CliRunner()
    result = runner.invoke(plan_cmd, ["--model", str(tiny_whisper), "--config", str(conf), "-n", "2",
                                      "--strategy", "ddp,zero3", "--device-memory", "1"])
    assert result.exit_code == 0, result.output
    assert "DDP" in result.output and "ZeRO-3" in result.output and "largest micro-batch" in result.output
    result = runner.invoke(plan_cmd, ["--model", str(tiny_whisper), "--config", str(conf), "--json",
                                      "-o", "lora.r=8", "--checkpointing", "--micro-batch", "3"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data["plans"]) == {"ddp", "fsdp", "zero2"} and data["estimate"] is True
    assert data["setup"]["micro_batch"] == 3 and data["setup"]["checkpointing"] is True
    model = plan.count_model(tiny_whisper, round_config(r=8, targets="wide"))
    assert data["parameters"]["trainable"] == model.trainable
    ddp = data["plans"]["ddp"]
    assert ddp["peak"] == pytest.approx(ddp["static"] + ddp["activations"])
    bad = runner.invoke(plan_cmd, ["--model", str(tiny_whisper), "--config", str(conf), "--strategy", "fsdp2"])
    assert bad.exit_code == 2 and "'fsdp2'" in bad.output
