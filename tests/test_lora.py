"""LoRA attach and merge: scope resolution, merge equivalence, lineage, Eq. 3."""

from __future__ import annotations

import json

import pytest
import torch

from ilt.config import LoraSection, RoundConfig, config_hash, dump_yaml, from_dict
from ilt.core.files import sha256_file
from ilt.core.registry import create
from ilt.errors import IltInputError
from ilt.models.lineage import weights_sha256
from ilt.training.lora import attach_lora, lora_config, merge_adapter


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

    lineage_text = (out / "lineage.json").read_text()
    lineage = json.loads(lineage_text)
    assert str(tmp_path) not in lineage_text and str(base_dir.parent) not in lineage_text  # identities, no paths
    assert lineage["base"] == {"name": "M0", "source": "local directory", "sha256": weights_sha256(base_dir)}
    assert lineage["model"] == {"name": "M1", "source": "ilt merge of round focus", "sha256": weights_sha256(out)}
    assert lineage["model"]["sha256"] != lineage["base"]["sha256"] and len(lineage["model"]["sha256"]) == 12
    assert lineage["adapter"] == {"round": "focus", "step": 7,
                                  "sha256": sha256_file(adapter / "adapter_model.safetensors")[:12]}
    assert lineage["round"] == "focus" and lineage["backbone"] == "whisper"
    assert lineage["config_hash"] == config_hash(config)
    assert lineage["config"]["lora"]["target_modules"] == "wide"
    assert lineage["data"] == [{"role": "train", "cuts": str(manifest), "weight": 1.0,
                                "languages": None, "sha256": sha256_file(manifest),
                                "hours": pytest.approx(2.0 / 3600)}]  # two 1 s cuts
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
    assert lineage2["base"] == lineage["model"]  # M2's base is M1, by identity

    with pytest.raises(IltInputError, match="not empty"):
        merge_adapter(base_dir, adapter, out)
    with pytest.raises(IltInputError, match="not an input"):
        merge_adapter(out, adapter2, out, overwrite=True)
    before = _weights(out)
    merge_adapter(base_dir, adapter, out, overwrite=True)
    assert all(torch.equal(before[k], v) for k, v in _weights(out).items())


def test_weighted_average_arithmetic_on_tiny_tensors():
    from ilt.training.lora import weighted_average

    new = {"w": torch.tensor([1.0, 2.0]), "h": torch.tensor([0.5], dtype=torch.bfloat16),
           "ids": torch.tensor([3, 4])}
    older = {"w": torch.tensor([3.0, -2.0]), "h": torch.tensor([1.5], dtype=torch.bfloat16),
             "ids": torch.tensor([3, 4])}
    oldest = {"w": torch.tensor([0.0, 10.0]), "h": torch.tensor([2.5], dtype=torch.bfloat16),
              "ids": torch.tensor([3, 4])}
    out = weighted_average(new, [older, oldest], [0.5, 0.3, 0.2], ["M1", "M0"])
    torch.testing.assert_close(out["w"], torch.tensor([0.5 + 0.9 + 0.0, 1.0 - 0.6 + 2.0]))
    assert out["h"].dtype == torch.bfloat16 and float(out["h"]) == pytest.approx(0.25 + 0.45 + 0.5, abs=1e-2)
    assert "ids" not in out  # integer tensors are not averaged ...
    with pytest.raises(IltInputError, match="M0: non-float tensor ids differs"):  # ... and must agree
        weighted_average(new, [older, {**oldest, "ids": torch.tensor([3, 5])}], [0.5, 0.3, 0.2], ["M1", "M0"])
    with pytest.raises(IltInputError, match="M1 has a different architecture"):
        weighted_average(new, [{"w": older["w"]}], [0.5, 0.5], ["M1"])


def test_history_merge_is_eq3_over_models_before_the_base(base_dir, manifest, tmp_path):
    """M_t = w0 (M_{t-1} + ΔM) + w1 M_{t-2}: the history starts before the base."""
    import shutil

    adapter1, adapter2 = tmp_path / "focus", tmp_path / "feedback"
    _trained_adapter(base_dir, adapter1, _config("focus", manifest), seed=3, wer=20.0)
    m1 = merge_adapter(base_dir, adapter1, tmp_path / "M1")
    _trained_adapter(m1, adapter2, _config("feedback", manifest), seed=6, wer=15.0)
    plain = _weights(merge_adapter(m1, adapter2, tmp_path / "M2"))

    same = _weights(merge_adapter(m1, adapter2, tmp_path / "one", weights=[1.0]))
    assert same.keys() == plain.keys() and all(torch.equal(same[k], plain[k]) for k in plain)

    out = merge_adapter(m1, adapter2, tmp_path / "M2h", history=[base_dir], weights=[0.8, 0.2])
    mixed, m0, m1w = _weights(out), _weights(base_dir), _weights(m1)
    changed = 0
    for key, value in plain.items():
        torch.testing.assert_close(mixed[key], 0.8 * value + 0.2 * m0[key], atol=1e-6, rtol=0)
        # not the scaled-down LoRA M_{t-1} + 0.8 ΔM that a history starting at M_{t-1} gives
        scaled = m1w[key] + 0.8 * (value - m1w[key])
        changed += int(not torch.allclose(mixed[key], scaled, atol=1e-6))
    assert changed > 0
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["history_merge"] == {"models": ["(this merge)", json.loads((tmp_path / "M1" / "lineage.json")
                                                                              .read_text())["base"]],
                                        "weights": [0.8, 0.2]}

    # the base itself (by path, or a copy with the same weights) is not history
    with pytest.raises(IltInputError, match="base model M_\\(t-1\\) itself"):
        merge_adapter(m1, adapter2, tmp_path / "bad", history=[m1], weights=[0.8, 0.2])
    shutil.copytree(m1, tmp_path / "M1copy")
    with pytest.raises(IltInputError, match="M1copy: this is the base model"):
        merge_adapter(m1, adapter2, tmp_path / "bad", history=[tmp_path / "M1copy"], weights=[0.8, 0.2])


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


def test_bf16_base_merges_layer_by_layer_as_a_whole_fp32_merge_would(base_dir, manifest, tmp_path):
    """A bf16 base: the merge loads it in bf16 and merges one layer at a time in
    fp32; the saved weights equal, bitwise, a whole-model fp32 merge cast to bf16
    at the end (the way every merge ran before); ``precision="fp32"`` saves fp32."""
    from peft import PeftModel

    bf16_dir = tmp_path / "M0bf16"
    create("backbone", "whisper", base_dir, dtype=torch.bfloat16).save(
        create("backbone", "whisper", base_dir, dtype=torch.bfloat16).model, bf16_dir)
    config = _config("feedback", manifest, target_modules="wide")
    adapter = tmp_path / "wide"
    _trained_adapter(base_dir, adapter, config, seed=2, wer=10.0)

    merged = _weights(merge_adapter(bf16_dir, adapter, tmp_path / "M1"))
    whole = PeftModel.from_pretrained(create("backbone", "whisper", bf16_dir, dtype=torch.float32).model,
                                      str(adapter)).merge_and_unload(safe_merge=True).to(torch.bfloat16)
    reference = whole.state_dict()
    assert merged and all(v.dtype == torch.bfloat16 for v in merged.values())
    for key, value in merged.items():
        assert torch.equal(value, reference[key]), key
    base = _weights(bf16_dir)
    changed = [k for k in merged if not torch.equal(merged[k], base[k])]
    assert any("fc1" in k for k in changed) and any("q_proj" in k for k in changed)

    fp32 = _weights(merge_adapter(bf16_dir, adapter, tmp_path / "M1fp32", precision="fp32"))
    assert all(v.dtype == torch.float32 for v in fp32.values())
    exact = PeftModel.from_pretrained(create("backbone", "whisper", bf16_dir, dtype=torch.float32).model,
                                      str(adapter)).merge_and_unload(safe_merge=True).state_dict()
    for key, value in fp32.items():
        torch.testing.assert_close(value, exact[key], atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="merge precision"):
        merge_adapter(bf16_dir, adapter, tmp_path / "bad", precision="fp16")
