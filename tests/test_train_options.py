"""Training options that depend on size or optional packages (ilt.training.sizing):
the gradient-checkpointing rule and the 8-bit optimiser."""

from __future__ import annotations

import builtins

import pytest

from ilt.config import RoundConfig, from_dict
from ilt.errors import IltInputError
from ilt.training.sizing import (
    CHECKPOINTING_AUTO_PARAMS,
    checkpointing_on,
    make_optimizer,
)


def _train(**train):
    return from_dict(RoundConfig, {"name": "r", "train": train}).train


def test_checkpointing_auto_decides_by_backbone_size():
    assert _train().gradient_checkpointing == "auto"
    auto = _train()
    # Whisper tiny.en (39M) and small (244M) off; medium (769M), large-v3 (1.55B), Qwen2-Audio-7B on
    assert [checkpointing_on(auto, n) for n in (39_000_000, 244_000_000, 769_000_000, 1_550_000_000,
                                                 8_400_000_000)] == [False, False, True, True, True]
    assert checkpointing_on(auto, CHECKPOINTING_AUTO_PARAMS) is False
    assert checkpointing_on(_train(gradient_checkpointing=True), 1000) is True
    assert checkpointing_on(_train(gradient_checkpointing=False), 10 ** 10) is False
    with pytest.raises(Exception, match="gradient_checkpointing"):
        _train(gradient_checkpointing="sometimes")


def test_tiny_backbone_trains_without_checkpointing_under_auto(base_dir):
    from ilt.training.loop import load_for_training

    _, model = load_for_training(from_dict(RoundConfig, {"name": "r", "lora": {"r": 2}}), base_dir, "no")
    base = model.get_base_model()
    assert not getattr(base, "is_activation_checkpointing", False)
    _, model = load_for_training(from_dict(RoundConfig, {"name": "r", "lora": {"r": 2},
                                                         "train": {"gradient_checkpointing": True}}), base_dir, "no")
    assert model.get_base_model().is_activation_checkpointing


def _tiny_step(optimizer_name: str):
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 64), torch.nn.Linear(64, 8))  # 8192 values: 8-bit state
    opt = make_optimizer(_train(optimizer=optimizer_name, lr=1e-2), model.parameters(), "cpu")
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(4, 128)
    for _ in range(2):
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return opt, model, before


def test_adamw8bit_runs_a_step_on_cpu_close_to_adamw():
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install 'ilt[opt8bit]')")
    import torch

    opt8, model8, before = _tiny_step("adamw8bit")
    opt32, model32, _ = _tiny_step("adamw")
    assert type(opt8).__name__ == "AdamW8bit" and isinstance(opt32, torch.optim.AdamW)
    big = model8[0].weight
    assert opt8.state[big]["state1"].dtype == torch.uint8  # the moments really are 8-bit
    moved = (big - before[0]).abs().max().item()
    assert moved > 1e-3  # two steps of lr 1e-2 moved the weights
    # same update as fp32 AdamW up to the quantised moments
    diff = (model8[0].weight - model32[0].weight).abs().max().item()
    assert diff < 0.1 * moved


def test_adamw8bit_without_bitsandbytes_is_one_line(monkeypatch):
    real_import = builtins.__import__

    def no_bnb(name, *args, **kwargs):
        if name.startswith("bitsandbytes"):
            raise ImportError("No module named 'bitsandbytes'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    with pytest.raises(IltInputError, match=r"adamw8bit needs bitsandbytes.*pip install 'ilt\[opt8bit\]'") as err:
        _tiny_step("adamw8bit")
    assert "\n" not in str(err.value)


def test_adamw8bit_round_checkpoints_and_resumes_bitwise(base_dir, tmp_path):
    """A round with the 8-bit optimiser: its uint8 state goes into the checkpoint
    (safetensors, no pickle) and a killed run resumes to the same adapter."""
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install 'ilt[opt8bit]')")
    from ilt.data.manifests import save_manifest
    from ilt.testing.dummies import make_cuts
    from ilt.training.loop import list_checkpoints, train_round

    cuts = save_manifest(make_cuts(tmp_path / "c", [{"id": f"t{i}", "text": "hello world", "duration": 1.0}
                                                    for i in range(4)]), tmp_path / "c.jsonl.gz")
    config = from_dict(RoundConfig, {"name": "r", "lora": {"r": 64, "lora_dropout": 0.0},  # LoRA A: 64 x 64 = 4096
                                     "train": {"lr": 1e-2, "micro_batch": 2, "precision": "fp32", "max_steps": 3,
                                               "save_every": 1, "optimizer": "adamw8bit"}})
    full = train_round(config, base_dir, tmp_path / "full", train_cuts=[(cuts, 1.0)])

    class Killed(Exception):
        pass

    def kill_at_2(step, record):
        if step == 2:
            raise Killed

    with pytest.raises(Killed):
        train_round(config, base_dir, tmp_path / "cut", train_cuts=[(cuts, 1.0)], on_step=kill_at_2)
    assert [s for s, _ in list_checkpoints(tmp_path / "cut")] == [1, 2]
    import torch
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "cut" / "checkpoints" / "step-2" / "state.safetensors")
    assert any(t.dtype == torch.uint8 for t in saved.values())  # the 8-bit moments are what the checkpoint holds
    resumed = train_round(config, base_dir, tmp_path / "cut", train_cuts=[(cuts, 1.0)])
    assert resumed.steps == full.steps == 3
    a = (tmp_path / "full" / "final" / "adapter_model.safetensors").read_bytes()
    b = (tmp_path / "cut" / "final" / "adapter_model.safetensors").read_bytes()
    assert a == b
