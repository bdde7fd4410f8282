"""Fusion of LoRA language experts (ilt.experts.fusion) on a tiny random Whisper:
which methods give the exact weighted sum of the experts' updates, checked
on the weights, and the outputs as adapters and full models."""

from __future__ import annotations

import json

import pytest
import torch

from ilt.config import RoundConfig, from_dict
from ilt.core.registry import create
from ilt.errors import IltInputError
from ilt.experts.fusion import fuse_experts, parse_weight_spec

#: expert language -> (r, lora_alpha, target_modules, use_rslora): mixed ranks, scopes and scalings
SPECS = {
    "en": (4, 8, "attention", False),
    "de": (4, 16, "wide", False),
    "fr": (2, 4, ["fc1", "q_proj"], True),
}
WEIGHTS = {"en": 0.5, "de": 0.3, "fr": 0.2}


def _expert(base_dir, out, language, seed):
    """A LoRA expert with random non-zero weights, saved as `ilt train` saves best/."""
    from ilt.testing.adapters import random_adapter

    r, alpha, targets, rslora = SPECS[language]
    config = from_dict(RoundConfig, {
        "name": f"expert-{language}",
        "lora": {"r": r, "lora_alpha": alpha, "target_modules": targets, "use_rslora": rslora},
        "task": {"data": [{"cuts": f"train_{language}.jsonl.gz", "weight": 1.0, "languages": [language]}]}})
    return random_adapter(base_dir, out, config, seed=seed, score=10.0 + seed)


@pytest.fixture(scope="module")
def experts(base_dir, tmp_path_factory):
    """{language: adapter dir} under an experts directory with experts.json, as `ilt experts train` leaves it."""
    from ilt.experts.train import EXPERTS_JSON, FORMAT

    root = tmp_path_factory.mktemp("experts")
    adapters = {lang: _expert(base_dir, root / lang / "best", lang, seed) for seed, lang in enumerate(SPECS, 1)}
    (root / EXPERTS_JSON).write_text(json.dumps({
        "format": FORMAT, "base_model": str(base_dir), "planned": list(SPECS),
        "languages": {lang: {"adapter": f"{lang}/best"} for lang in SPECS}}))
    return adapters


def _weights(model_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _adapter_merged(base_dir, adapter_dir) -> dict[str, torch.Tensor]:
    """The base with an adapter merged by PEFT, as a state dict."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(create("backbone", "whisper", base_dir).model, str(adapter_dir))
    return {k: v.detach().clone() for k, v in model.merge_and_unload().state_dict().items()}


@pytest.fixture(scope="module")
def reference(base_dir, experts):
    """W0 + Σ w_i ΔW_i with each ΔW_i taken from PEFT's own merge of expert i
    alone: a path independent of ilt.experts.fusion's arithmetic."""
    base = create("backbone", "whisper", base_dir).model.state_dict()
    merged = {lang: _adapter_merged(base_dir, path) for lang, path in experts.items()}

    def weighted(weights):
        return {k: v + sum(w * (merged[lang][k] - v) for lang, w in weights.items()) for k, v in base.items()}

    return weighted


def _max_diff(a, b) -> float:
    assert a.keys() >= b.keys() or b.keys() >= a.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a.keys() & b.keys())


def test_full_cat_and_full_rank_svd_are_the_exact_weighted_sum(base_dir, experts, reference, tmp_path):
    from transformers import WhisperForConditionalGeneration

    expected = reference(WEIGHTS)
    base = create("backbone", "whisper", base_dir).model.state_dict()
    full_dir = fuse_experts(base_dir, experts, tmp_path / "full", method="full", weights=WEIGHTS)
    full = _weights(full_dir)
    assert _max_diff(full, expected) < 1e-6
    assert _max_diff(full, base) > 1e-2  # the experts did move the weights

    # cat: an adapter of rank 4 + 4 + 2 whose update is the same sum (an rsLoRA expert included)
    cat_dir = fuse_experts(base_dir, experts, tmp_path / "cat", method="cat", weights=WEIGHTS)
    assert json.loads((cat_dir / "adapter_config.json").read_text())["r"] == 10
    assert _max_diff(_adapter_merged(base_dir, cat_dir), full) < 1e-5
    record = json.loads((cat_dir / "fusion.json").read_text())
    assert (record["method"], record["exact"], record["rank"], record["weights"]) == ("cat", True, 10, WEIGHTS)
    assert [e["language"] for e in record["experts"]] == ["de", "en", "fr"]

    # svd at the default rank (it covers the update's rank) is exact too
    svd_dir = fuse_experts(base_dir, experts, tmp_path / "svd", method="svd", weights=WEIGHTS)
    assert json.loads((svd_dir / "fusion.json").read_text())["exact"] is True
    assert _max_diff(_adapter_merged(base_dir, svd_dir), full) < 1e-5
    # ... and a truncated svd is not
    svd2 = fuse_experts(base_dir, experts, tmp_path / "svd2", method="svd", svd_rank=2, weights=WEIGHTS)
    assert json.loads((svd2 / "fusion.json").read_text())["exact"] is False
    assert _max_diff(_adapter_merged(base_dir, svd2), full) > 1e-3

    # --merged: a full model that the stock transformers class loads, with lineage and card
    merged_dir = fuse_experts(base_dir, experts, tmp_path / "cat-merged", method="cat", weights=WEIGHTS,
                              merged=True)
    stock = WhisperForConditionalGeneration.from_pretrained(merged_dir)
    assert _max_diff({k: v for k, v in stock.state_dict().items()}, full) < 1e-5
    lineage = json.loads((merged_dir / "lineage.json").read_text())
    assert lineage["fusion"]["method"] == "cat" and lineage["round"] == "fusion-cat"
    assert lineage["model"]["source"] == "ilt experts fuse (cat)" and lineage["base"]["name"] == "M0"
    assert {d["cuts"] for d in lineage["data"]} == {f"train_{lang}.jsonl.gz" for lang in SPECS}
    assert "fusion-cat" in (merged_dir / "README.md").read_text()
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written left


def test_fused_adapter_is_an_ilt_adapter(base_dir, experts, tmp_path):
    """The fused adapter decodes like its merged model: `ilt decode --adapter`
    and `ilt merge` take it (round.yaml names the backbone)."""
    from ilt.models.adapter import load_adapter
    from ilt.training.lora import merge_adapter

    adapter = fuse_experts(base_dir, experts, tmp_path / "cat", method="cat")  # equal weights
    assert json.loads((adapter / "fusion.json").read_text())["weights"] == {k: pytest.approx(1 / 3) for k in SPECS}
    merged = merge_adapter(base_dir, adapter, tmp_path / "M1")
    features = {"input_features": torch.randn(1, 80, 200, generator=torch.Generator().manual_seed(0)),
                "decoder_input_ids": torch.tensor([[50258, 50259, 50360, 50364, 23748]])}
    with torch.no_grad():
        unmerged = load_adapter(create("backbone", "whisper", base_dir), adapter).eval()(**features).logits
        full = create("backbone", "whisper", merged).model.eval()(**features).logits
    torch.testing.assert_close(full, unmerged, atol=1e-5, rtol=1e-5)
    assert json.loads((merged / "lineage.json").read_text())["round"] == "fusion-cat"


def test_linear_ties_and_dare_are_not_the_weighted_sum(base_dir, experts, reference, tmp_path):
    two = {lang: experts[lang] for lang in ("en", "de")}  # one rank (4), as these methods need
    weights = {"en": 0.6, "de": 0.4}
    expected = reference(weights)
    full = _weights(fuse_experts(base_dir, two, tmp_path / "full", method="full", weights=weights))
    assert _max_diff(full, expected) < 1e-6

    # linear mixes A and B separately: B A has cross terms B_en A_de
    linear = _adapter_merged(base_dir, fuse_experts(base_dir, two, tmp_path / "linear", method="linear",
                                                     weights=weights))
    assert _max_diff(linear, full) > 1e-3
    ties = _adapter_merged(base_dir, fuse_experts(base_dir, two, tmp_path / "ties", method="ties",
                                                   weights=weights, density=0.5))
    assert _max_diff(ties, full) > 1e-3
    dare = [fuse_experts(base_dir, two, tmp_path / f"dare{seed}-{n}", method="dare_ties", weights=weights,
                         density=0.7, seed=seed) for n, seed in enumerate((0, 0, 1))]
    tensors = [(d / "adapter_model.safetensors").read_bytes() for d in dare]
    assert tensors[0] == tensors[1] and tensors[0] != tensors[2]  # random, reproducible by seed
    assert _max_diff(_adapter_merged(base_dir, dare[0]), full) > 1e-3
    for path in (tmp_path / "linear", tmp_path / "ties", dare[0]):
        assert json.loads((path / "fusion.json").read_text())["exact"] is False

    # one expert left (the other at weight 0) is exact whatever the method
    alone = {"en": 1.0, "de": 0.0}
    only_en = _adapter_merged(base_dir, fuse_experts(base_dir, two, tmp_path / "alone", method="linear",
                                                      weights=alone))
    assert _max_diff(only_en, reference(alone)) < 1e-5
    assert json.loads((tmp_path / "alone" / "fusion.json").read_text())["experts"][0]["language"] == "en"


def test_bad_input_is_one_clear_error(base_dir, experts, tmp_path):
    def fails(match, **options):
        args = {"method": "cat", **options}
        with pytest.raises(IltInputError, match=match) as err:
            fuse_experts(base_dir, args.pop("experts", experts), args.pop("out", tmp_path / "out"), **args)
        assert "\n" not in str(err.value)

    fails(r"unknown fusion method 'mean'; use one of cat, svd, linear, ties, dare_ties, full", method="mean")
    fails(r"--weights: no expert for language\(s\) it; the experts are de, en, fr",
          weights={"en": 0.5, "it": 0.5, "de": 0, "fr": 0})
    fails(r"no weight for expert\(s\) fr", weights={"en": 0.5, "de": 0.5})
    fails(r"finite and non-negative", weights={"en": 1.5, "de": -0.5, "fr": 0.0})
    fails(r"every weight is 0", weights={"en": 0.0, "de": 0.0, "fr": 0.0})
    fails(r"--density applies to ties and dare_ties only, not cat", density=0.5)
    fails(r"--density 1.5: must be in \(0, 1\]", method="ties", density=1.5,
          experts={k: experts[k] for k in ("en", "de")})
    fails(r"--svd-rank applies to --method svd only", svd_rank=4)
    fails(r"--svd-rank 999: above the smallest adapted layer's width 64", method="svd", svd_rank=999)
    fails(r"--method linear needs experts of one LoRA rank, got de r=4, en r=4, fr r=2; use cat or svd",
          method="linear")
    fails(r"the output must be a new directory", out=experts["en"])
    fails(r"adapter directory not found", experts={"en": tmp_path / "nope"})
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    fails(r"exists and is not empty", out=tmp_path / "full")

    assert parse_weight_spec("en=0.5, de=0.5") == {"en": 0.5, "de": 0.5}
    assert parse_weight_spec(None) is None
    for spec, match in (("en=0.5,de", "'de' is not LANG=NUMBER"), ("en=x", "not LANG=NUMBER"),
                        ("en=1,en=2", "'en' given twice")):
        with pytest.raises(IltInputError, match=match):
            parse_weight_spec(spec)


def test_ilt_experts_fuse(base_dir, experts, reference, tmp_path):
    from click.testing import CliRunner

    from ilt.cli.main import cli

    root = experts["en"].parent.parent
    runner = CliRunner()
    out = tmp_path / "svd"
    res = runner.invoke(cli, ["experts", "fuse", "--experts", str(root), "--method", "svd", "--weights",
                              "en=0.5,de=0.3,fr=0.2", "--out", str(out), "--merged"])
    assert res.exit_code == 0, res.output
    assert f"fused 3 expert(s) (de, en, fr) with svd -> model {out}" in res.output
    assert _max_diff(_weights(out), reference(WEIGHTS)) < 1e-5
    assert (out / "command.txt").read_text().split()[0] == "ilt"  # the command is saved (argv: the runner's)

    for args, message in ((["--method", "mean"], "unknown fusion method 'mean'"),
                          (["--weights", "en=1,it=0"], "no expert for language(s) it"),
                          (["--weights", "en=lots"], "'en=lots' is not LANG=NUMBER"),
                          (["--method", "ties", "--density", "0"], "--density 0.0: must be in (0, 1]")):
        res = runner.invoke(cli, ["experts", "fuse", "--experts", str(root), *args, "--out", str(tmp_path / "bad")])
        assert res.exit_code == 1 and message in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
    res = runner.invoke(cli, ["experts", "fuse", "--experts", str(tmp_path / "none"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "no such experts directory" in res.output
    assert not (tmp_path / "bad").exists()
