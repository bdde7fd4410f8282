"""LoRA attach and merge: scope resolution, merge equivalence, lineage, Eq. 3."""

from __future__ import annotations

import json

import pytest
import torch

from ilt.config import LoraSection, RoundConfig, config_hash, dump_yaml, from_dict
from ilt.errors import IltInputError
from ilt.lora import attach_lora, lora_config, merge_adapter, sha256_file
from ilt.plugins import create


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from ilt.testing.dummies import tiny_whisper_dir

    return tiny_whisper_dir(tmp_path_factory.mktemp("m0") / "M0")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from ilt.data.manifests import save_manifest
    from ilt.testing.dummies import make_cuts

    tmp = tmp_path_factory.mktemp("data")
    cuts = make_cuts(tmp / "audio", ["hello world", "good morning"])
    return save_manifest(cuts, tmp / "train.jsonl.gz")


def _features(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"input_features": torch.randn(2, 80, 200, generator=gen),
            "decoder_input_ids": torch.tensor([[50258, 50259, 50360, 50364, 23748],
                                               [50258, 50259, 50360, 50364, 995]])}


def _logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**_features(), use_cache=False).logits


def _config(name: str, manifest, target_modules="attention") -> RoundConfig:
    return from_dict(RoundConfig, {
        "name": name,
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": target_modules},
        "task": {"data": [{"cuts": str(manifest), "weight": 1.0}]},
    })


def _trained_adapter(base_dir, adapter_dir, config: RoundConfig, seed: int, wer: float):
    """A LoRA with random (non-zero) weights saved like `ilt train` saves `best/`;
    returns the PEFT model's logits."""
    backbone = create("backbone", "whisper", base_dir)
    torch.manual_seed(seed)
    model = attach_lora(backbone, config.lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.2)
    model.save_pretrained(str(adapter_dir))
    (adapter_dir / "round.yaml").write_text(dump_yaml(config))
    (adapter_dir / "score.json").write_text(json.dumps({"step": 7, "metric": "dev_wer", "value": wer}))
    return _logits(model)


def _weights(model_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_scope_resolves_into_lora_config(base_dir):
    backbone = create("backbone", "whisper", base_dir)
    assert set(lora_config(backbone, LoraSection(target_modules="attention")).target_modules) == {
        "q_proj", "k_proj", "v_proj"}
    wide = lora_config(backbone, LoraSection(target_modules="wide", r=8, lora_alpha=16))
    assert set(wide.target_modules) == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
    assert (wide.r, wide.lora_alpha) == (8, 16)
    assert set(lora_config(backbone, LoraSection(target_modules=["fc1"])).target_modules) == {"fc1"}
    with pytest.raises(ValueError, match="no_such_proj"):
        lora_config(backbone, LoraSection(target_modules=["no_such_proj"]))

    model = attach_lora(backbone, LoraSection(r=2, target_modules="attention"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == {"q_proj", "k_proj", "v_proj"}


def test_merge_equals_peft_model_and_writes_lineage(base_dir, manifest, tmp_path):
    config = _config("focus", manifest, target_modules="wide")
    adapter = tmp_path / "focus_best"
    peft_logits = _trained_adapter(base_dir, adapter, config, seed=1, wer=12.5)

    out = merge_adapter(base_dir, adapter, tmp_path / "M1")
    merged = create("backbone", "whisper", out)
    assert not hasattr(merged.model, "peft_config")
    merged_logits = _logits(merged.model)
    torch.testing.assert_close(merged_logits, peft_logits, atol=1e-5, rtol=1e-5)
    base_logits = _logits(create("backbone", "whisper", base_dir).model)
    assert (base_logits - peft_logits).abs().max() > 1e-3  # the LoRA did change the model

    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["base"] == str(base_dir.resolve())
    assert lineage["adapter"] == str(adapter.resolve())
    assert lineage["round"] == "focus" and lineage["backbone"] == "whisper"
    assert lineage["config_hash"] == config_hash(config)
    assert lineage["config"]["lora"]["target_modules"] == "wide"
    assert lineage["data"] == [{"role": "train", "cuts": str(manifest.resolve()), "weight": 1.0,
                                "languages": None, "sha256": sha256_file(manifest)}]
    assert lineage["dev_score"]["value"] == 12.5
    assert lineage["parent"] is None and lineage["history_merge"] is None
    assert lineage["created_at"]
    assert not list(tmp_path.glob(".M1*"))  # no temporary directory left behind

    # The next round: its lineage nests the parent's.
    config2 = _config("feedback", manifest)
    adapter2 = tmp_path / "feedback_best"
    _trained_adapter(out, adapter2, config2, seed=2, wer=10.0)
    out2 = merge_adapter(out, adapter2, tmp_path / "M2")
    lineage2 = json.loads((out2 / "lineage.json").read_text())
    assert lineage2["round"] == "feedback"
    assert lineage2["parent"]["round"] == "focus"
    assert lineage2["parent"]["config_hash"] == config_hash(config)
    assert lineage2["parent"]["parent"] is None

    with pytest.raises(IltInputError, match="not empty"):
        merge_adapter(base_dir, adapter, out)
    with pytest.raises(IltInputError, match="not an input"):
        merge_adapter(out, adapter2, out, overwrite=True)
    before = _weights(out)
    merge_adapter(base_dir, adapter, out, overwrite=True)
    assert all(torch.equal(before[k], v) for k, v in _weights(out).items())


def test_history_weighted_merge(base_dir, manifest, tmp_path):
    config = _config("focus", manifest)
    adapter = tmp_path / "best"
    _trained_adapter(base_dir, adapter, config, seed=3, wer=20.0)
    plain = _weights(merge_adapter(base_dir, adapter, tmp_path / "plain"))

    same = _weights(merge_adapter(base_dir, adapter, tmp_path / "one", weights=[1.0]))
    assert same.keys() == plain.keys()
    assert all(torch.equal(same[k], plain[k]) for k in plain)

    out = merge_adapter(base_dir, adapter, tmp_path / "half", history=[base_dir], weights=[0.5, 0.5])
    half, base = _weights(out), _weights(base_dir)
    for key, value in plain.items():
        torch.testing.assert_close(half[key], 0.5 * value + 0.5 * base[key], atol=1e-6, rtol=0)
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["history_merge"]["weights"] == [0.5, 0.5]
    assert lineage["history_merge"]["models"][1] == str(base_dir.resolve())


def test_history_merge_rejects_bad_weights_and_models(base_dir, manifest, tmp_path):
    from ilt.testing.dummies import tiny_whisper_dir

    config = _config("focus", manifest)
    adapter = tmp_path / "best"
    _trained_adapter(base_dir, adapter, config, seed=4, wer=20.0)
    with pytest.raises(ValueError, match="sum to 1"):
        merge_adapter(base_dir, adapter, tmp_path / "a", history=[base_dir], weights=[0.6, 0.6])
    with pytest.raises(ValueError, match="one weight per model"):
        merge_adapter(base_dir, adapter, tmp_path / "b", history=[base_dir], weights=[1.0])
    with pytest.raises(ValueError, match="non-negative"):
        merge_adapter(base_dir, adapter, tmp_path / "c", history=[base_dir], weights=[1.5, -0.5])
    with pytest.raises(ValueError, match="needs 2 weights"):
        merge_adapter(base_dir, adapter, tmp_path / "d", history=[base_dir])
    other = tiny_whisper_dir(tmp_path / "wider", d_model=32, ffn_dim=64)
    with pytest.raises(IltInputError, match="wider.*shape"):
        merge_adapter(base_dir, adapter, tmp_path / "e", history=[other], weights=[0.5, 0.5])
    assert not (tmp_path / "e").exists()


def test_merge_needs_the_round_config(base_dir, manifest, tmp_path):
    config = _config("focus", manifest)
    adapter = tmp_path / "best"
    _trained_adapter(base_dir, adapter, config, seed=5, wer=1.0)
    (adapter / "round.yaml").unlink()
    with pytest.raises(IltInputError, match="round.yaml"):
        merge_adapter(base_dir, adapter, tmp_path / "M1")
    with pytest.raises(IltInputError, match="not an adapter directory"):
        merge_adapter(base_dir, tmp_path, tmp_path / "M1")
