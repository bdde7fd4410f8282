"""Distillation of LoRA language experts (ilt.experts.distill, the `distill` loss) on a
tiny random Whisper: the loss against a hand computation, what one step
changes, the teacher cache, and `ilt experts distill` through the training loop."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from ilt.config import ComponentSpec, RoundConfig, from_dict
from ilt.core.registry import create

LANGUAGES = ("en", "fr")


@pytest.fixture(scope="module")
def experts_dir(base_dir, tmp_path_factory):
    """An experts directory (experts.json, <lang>/best) of random-weight experts for en and fr."""
    from ilt.experts.train import EXPERTS_JSON, FORMAT
    from ilt.testing.adapters import random_adapter

    root = tmp_path_factory.mktemp("experts")
    for seed, lang in enumerate(LANGUAGES, 1):
        config = from_dict(RoundConfig, {"name": f"expert-{lang}", "lora": {"r": 4, "lora_alpha": 8}})
        random_adapter(base_dir, root / lang / "best", config, seed=seed)
    (root / EXPERTS_JSON).write_text(json.dumps({
        "format": FORMAT, "base_model": str(base_dir), "planned": list(LANGUAGES),
        "languages": {lang: {"adapter": f"{lang}/best"} for lang in LANGUAGES}}))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from ilt.data.manifests import save_manifest
    from ilt.testing.dummies import make_cuts

    tmp = tmp_path_factory.mktemp("data")
    specs = [{"id": f"{lang}{i}", "text": text, "language": lang, "duration": 1.0}
             for i, (lang, text) in enumerate([("en", "hello world"), ("fr", "bonjour le monde"),
                                               ("en", "good morning"), ("fr", "merci beaucoup")])]
    cuts = make_cuts(tmp / "audio", specs)
    return {"cuts": cuts, "manifest": save_manifest(cuts, tmp / "train.jsonl.gz"), "tmp": tmp}


def _round(**loss) -> RoundConfig:
    return from_dict(RoundConfig, {"name": "distill", "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
                                   "task": {"loss": {"name": "distill", **loss}},
                                   "train": {"precision": "fp32", "lr": 1e-2}})


def _loss(base_dir, experts_dir, **options):
    from ilt.experts.distill import with_experts
    from ilt.experts.train import load_experts

    base, adapters = load_experts(experts_dir)
    assert base == base_dir
    return create("loss", with_experts(_round(**options), base, adapters).task.loss)


@pytest.fixture
def student(base_dir):
    """(backbone, student PEFT model with a fresh LoRA), as ilt train builds them."""
    from ilt.training.loop import load_for_training

    torch.manual_seed(0)
    return load_for_training(_round(), base_dir, "no")


def _expert_logits(base_dir, experts_dir, language, batch):
    """The base with one expert, loaded on its own, run on ``batch``: the teacher by hand."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(create("backbone", "whisper", base_dir).model,
                                      str(experts_dir / language / "best")).eval()
    with torch.no_grad():
        return model(input_features=batch.tensors["input_features"],
                     decoder_input_ids=batch.tensors["decoder_input_ids"]).logits


def test_the_loss_is_ce_plus_weighted_kl_to_each_cuts_expert(base_dir, experts_dir, data, student):
    backbone, model = student
    batch = backbone.collate(data["cuts"])
    assert batch.languages == ["en", "fr", "en", "fr"] and batch.to("cpu").languages == batch.languages
    ce = backbone.loss(model, batch)
    plain = _loss(base_dir, experts_dir, kl_weight=0.0)
    assert torch.equal(plain(backbone, model, batch), ce)  # kl_weight 0: exactly the ce loss

    loss = _loss(base_dir, experts_dir, temperature=2.0, kl_weight=0.5)
    value = loss(backbone, model, batch)
    # by hand: each row against its own language's expert, KL averaged over the label positions
    labels = batch.tensors["labels"]
    mask = labels != -100
    with torch.no_grad():
        s = model(input_features=batch.tensors["input_features"],
                  decoder_input_ids=batch.tensors["decoder_input_ids"]).logits
    teacher = {lang: _expert_logits(base_dir, experts_dir, lang, batch) for lang in LANGUAGES}
    t = torch.stack([teacher[lang][i] for i, lang in enumerate(batch.languages)])
    kl = F.kl_div(torch.log_softmax(s[mask] / 2.0, -1), torch.log_softmax(t[mask] / 2.0, -1), log_target=True,
                  reduction="batchmean")
    assert float(kl) > 1e-3  # the experts disagree with the student
    torch.testing.assert_close(value, ce + 0.5 * 4.0 * kl, rtol=1e-5, atol=1e-6)
    # the wrong teacher (languages swapped) gives another value
    swapped = torch.stack([teacher["fr" if lang == "en" else "en"][i] for i, lang in enumerate(batch.languages)])
    wrong = F.kl_div(torch.log_softmax(s[mask] / 2.0, -1), torch.log_softmax(swapped[mask] / 2.0, -1),
                     log_target=True, reduction="batchmean")
    assert abs(float(wrong) - float(kl)) > 1e-4

    # a cut of a language without an expert trains on cross-entropy alone
    only_en = create("loss", ComponentSpec("distill", {"temperature": 2.0, "kl_weight": 0.5, "teacher_model": str(
        base_dir), "experts": {"en": str(experts_dir / "en" / "best")}}))
    en_rows = [i for i, lang in enumerate(batch.languages) if lang == "en"]
    en_mask = mask[en_rows]
    kl_en = F.kl_div(torch.log_softmax(s[en_rows][en_mask] / 2.0, -1),
                     torch.log_softmax(t[en_rows][en_mask] / 2.0, -1), log_target=True, reduction="batchmean")
    torch.testing.assert_close(only_en(backbone, model, batch), ce + 2.0 * kl_en, rtol=1e-5, atol=1e-6)


def test_one_distillation_step_changes_only_the_student(base_dir, experts_dir, data, student):
    backbone, model = student
    batch = backbone.collate(data["cuts"])
    loss_fn = _loss(base_dir, experts_dir, temperature=2.0, kl_weight=0.5)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    loss = loss_fn(backbone, model, batch)  # loads the teachers
    teacher = loss_fn.teachers.model
    teacher_before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    assert any("lora_" in n for n in teacher_before) and not any(p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    loss.backward()
    optimizer.step()

    for name, p in teacher.named_parameters():
        assert p.grad is None and torch.equal(p, teacher_before[name]), name  # teacher: bit-identical
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert moved and all("lora_" in n for n in moved)  # the student's LoRA moved, its base did not
    assert {n.split(".lora_")[1].split(".")[0] for n in moved} == {"A", "B"}


@pytest.mark.parametrize("top_k", [None, 8])
def test_cache_round_trip_equals_on_the_fly(base_dir, experts_dir, data, student, tmp_path, top_k):
    from ilt.testing.dummies import make_cuts

    backbone, model = student
    batch = backbone.collate(data["cuts"])
    options = {"temperature": 2.0, "kl_weight": 0.5, "top_k": top_k}
    on_the_fly = _loss(base_dir, experts_dir, **options)(backbone, model, batch)
    cache_dir = tmp_path / "cache"

    cold = _loss(base_dir, experts_dir, cache_dir=str(cache_dir), **options)
    torch.testing.assert_close(cold(backbone, model, batch), on_the_fly, rtol=1e-6, atol=1e-7)
    assert (cold.cache.hits, cold.cache.misses) == (0, 4)
    files = sorted(cache_dir.glob("*/*.safetensors"))
    assert len(files) == 4 and {f.parent.name.split("-")[0] for f in files} == set(LANGUAGES)
    assert all(f.parent.name.endswith("top8" if top_k else "full") for f in files)
    assert not list(cache_dir.glob("*/.*"))  # written atomically: no temporary left

    warm = _loss(base_dir, experts_dir, cache_dir=str(cache_dir), **options)
    torch.testing.assert_close(warm(backbone, model, batch), on_the_fly, rtol=1e-6, atol=1e-7)
    assert (warm.cache.hits, warm.cache.misses) == (4, 0) and warm.teachers.model is None  # no teacher ran

    # a cut whose transcript changed under the same ID is recomputed, not read
    changed = make_cuts(data["tmp"] / "changed", [{"id": "en0", "text": "hello there world", "language": "en"}])
    other = backbone.collate(changed)
    again = _loss(base_dir, experts_dir, cache_dir=str(cache_dir), **options)
    fresh = _loss(base_dir, experts_dir, **options)(backbone, model, other)
    torch.testing.assert_close(again(backbone, model, other), fresh, rtol=1e-6, atol=1e-7)
    assert (again.cache.hits, again.cache.misses) == (0, 1)
    if top_k:  # top-k compares fewer tokens: another value than the full vocabulary
        full = _loss(base_dir, experts_dir, temperature=2.0, kl_weight=0.5)(backbone, model, batch)
        assert abs(float(full.detach()) - float(on_the_fly.detach())) > 1e-4


def test_bad_options_and_configs_are_one_clear_error(base_dir, experts_dir, tmp_path):
    from ilt.config import ConfigError
    from ilt.errors import IltInputError
    from ilt.experts.distill import with_experts

    for options, message in (({}, "task.loss.experts: the distill loss needs its teachers"),
                             ({"temperature": 0}, r"loss 'distill' \(package 'ilt'\): temperature: expected a finite number > 0"),
                             ({"kl_weight": -1, "experts": {"en": "x"}}, "kl_weight: expected a finite number >= 0"),
                             ({"top_k": 0, "experts": {"en": "x"}}, "top_k: expected a whole number >= 1")):
        with pytest.raises(ConfigError, match=message):
            create("loss", ComponentSpec("distill", options))
    with pytest.raises(IltInputError, match="adapter directory not found"):
        create("loss", ComponentSpec("distill", {"experts": {"en": str(tmp_path / "gone")}}))
    ce = from_dict(RoundConfig, {"name": "x"})
    with pytest.raises(IltInputError, match=r"focus.yaml: task.loss is 'ce'; distillation needs \{name: distill"):
        with_experts(ce, base_dir, {"en": experts_dir / "en" / "best"}, where="focus.yaml")


def test_ilt_experts_distill_trains_the_student_through_the_loop(base_dir, experts_dir, data, tmp_path):
    """`ilt experts distill` is `ilt train` with the experts filled into the loss:
    round.yaml records them, the loop logs finite losses, best/ is a student
    adapter on the experts' base, and the cache fills as the steps run."""
    from pathlib import Path

    from click.testing import CliRunner

    from ilt.cli.main import cli

    conf = Path(__file__).resolve().parents[1] / "egs" / "mini" / "conf" / "distill.yaml"
    out, cache = tmp_path / "student", tmp_path / "cache"
    runner = CliRunner()
    res = runner.invoke(cli, ["experts", "distill", "--config", str(conf), "--experts", str(experts_dir),
                              "--train", str(data["manifest"]), "--out", str(out), "-o", "train.max_steps=2",
                              "-o", "train.micro_batch=2", "-o", "lora.r=2", "-o", f"task.loss.cache_dir={cache}"])
    assert res.exit_code == 0, res.output
    assert "2 steps in" in res.output
    import yaml

    loss = yaml.safe_load((out / "round.yaml").read_text())["task"]["loss"]
    assert loss["name"] == "distill" and loss["kl_weight"] == 0.5 and loss["teacher_model"] == str(base_dir)
    assert loss["experts"] == {lang: str(experts_dir / lang / "best") for lang in LANGUAGES}
    steps = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["event"] == "step"] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in steps if r["event"] == "step")
    assert json.loads((out / "best" / "adapter_config.json").read_text())["r"] == 2
    assert len(list(cache.glob("*/*.safetensors"))) >= 2

    res = runner.invoke(cli, ["experts", "distill", "--config", str(conf.parent / "focus.yaml"), "--experts",
                              str(experts_dir), "--train", str(data["manifest"]), "--out", str(tmp_path / "ce")])
    assert res.exit_code == 1 and "task.loss is 'ce'; distillation needs" in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output


def test_distill_on_qwen2_audio_reads_its_logits_and_languages(data, tmp_path):
    """The other backbone: its collate gives the languages, its logits line up
    with its labels, and the loss is CE + 0.5 * T^2 * KL against the expert by hand."""
    from peft import PeftModel

    from ilt.testing.adapters import random_adapter
    from ilt.testing.tiny_qwen2_audio import tiny_qwen2_audio_dir
    from ilt.training.loop import load_for_training

    base = tiny_qwen2_audio_dir(tmp_path / "Q0", languages=list(LANGUAGES))
    expert = random_adapter(base, tmp_path / "en" / "best", from_dict(RoundConfig, {
        "name": "expert-en", "backbone": "qwen2_audio", "lora": {"r": 2, "lora_alpha": 4}}), seed=3)
    config = from_dict(RoundConfig, {"name": "distill", "backbone": "qwen2_audio",
                                     "lora": {"r": 2, "lora_alpha": 4, "lora_dropout": 0.0}})
    torch.manual_seed(0)
    backbone, model = load_for_training(config, base, "no")
    batch = backbone.collate(data["cuts"])
    assert batch.languages == ["en", "fr", "en", "fr"]
    loss = create("loss", ComponentSpec("distill", {"temperature": 2.0, "kl_weight": 0.5,
                                                    "experts": {"en": str(expert)}, "teacher_model": str(base)}))
    value = loss(backbone, model, batch)

    inputs = {k: batch.tensors[k] for k in ("input_ids", "attention_mask", "input_features",
                                            "feature_attention_mask")}
    teacher = PeftModel.from_pretrained(create("backbone", "qwen2_audio", base).model, str(expert)).eval()
    with torch.no_grad():
        s, t = model(**inputs).logits, teacher(**inputs).logits
    mask = batch.tensors["labels"] != -100
    rows = [0, 2]  # the en cuts: fr has no expert here and trains on CE alone
    kl = F.kl_div(torch.log_softmax(s[rows][mask[rows]] / 2.0, -1), torch.log_softmax(t[rows][mask[rows]] / 2.0, -1),
                  log_target=True, reduction="batchmean")
    assert float(kl) > 1e-4
    torch.testing.assert_close(value, backbone.loss(model, batch) + 2.0 * kl, rtol=1e-5, atol=1e-6)
