"""LoRA language experts (ilt.experts.train): training per language through the ILT
loop, routing, and many experts in one batch, on tiny random Whisper models."""

from __future__ import annotations

import json
import logging
from collections import Counter

import pytest
import torch
from click.testing import CliRunner

from ilt.config import ConfigError, DecodeConfig, ExpertsConfig, LoraSection, from_dict
from ilt.errors import IltInputError
from ilt.experts.train import (
    BASE,
    EXPERTS_JSON,
    FORMAT,
    decode_with_experts,
    load_expert_model,
    load_experts,
    route_cuts,
    train_experts,
)
from ilt.testing.configs import fast_decode

#: Greedy dev decoding of a few tokens: a random model loops, and dev WER only has to exist.
FAST_DEV = fast_decode()


def _decode_config(beam: int) -> DecodeConfig:
    return fast_decode(beam_size={"default": beam}, max_new_tokens=8, batch_size=4)


@pytest.fixture(scope="module")
def manifests(tmp_path_factory):
    """``train``: 3 de, 3 fr, 1 en; ``dev``: 1 de, 1 fr; ``mixed``: de/fr/ja/no-language cuts interleaved;
    ``labelled``: the same without the cut that has no language (it cannot be scored)."""
    from ilt.data.manifests import save_manifest
    from ilt.testing import make_cuts

    tmp = tmp_path_factory.mktemp("data")
    train = ([{"id": f"de{i}", "text": "guten tag", "language": "de"} for i in range(3)]
             + [{"id": f"fr{i}", "text": "bonjour", "language": "fr"} for i in range(3)]
             + [{"id": "en0", "text": "hello", "language": "en"}])
    dev = [{"id": "dev-de", "text": "guten tag", "language": "de"}, {"id": "dev-fr", "text": "salut", "language": "fr"}]
    languages = ["de", "fr", "ja", "de", None, "fr", "ja", "de", "fr"]
    mixed = [{"id": f"m{i}-{lang or 'none'}", "language": lang, "duration": 0.6 + 0.13 * i}
             for i, lang in enumerate(languages)]
    return {name: save_manifest(make_cuts(tmp / name, specs), tmp / f"{name}.jsonl.gz")
            for name, specs in (("train", train), ("dev", dev), ("mixed", mixed),
                                ("labelled", [spec for spec in mixed if spec["language"]]))}


def _experts_config(**experts) -> ExpertsConfig:
    return from_dict(ExpertsConfig, {
        "name": "experts", "lora": {"r": 4},
        "train": {"lr": 1e-3, "micro_batch": 2, "max_steps": 2, "eval_every": 2, "save_every": 1,
                  "precision": "fp32", "num_buckets": 1},
        "experts": experts})


def test_experts_train_per_language_and_resume(base_dir, manifests, tmp_path):
    config = _experts_config(min_cuts=2)  # en has 1 cut: no expert
    out = tmp_path / "experts"

    def stop_in_fr(language, step, record):  # a kill while the second expert trains
        if language == "fr" and step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_experts(config, base_dir, out, train_cuts=[(manifests["train"], 1.0)], dev_cuts=manifests["dev"],
                      decode_config=FAST_DEV, on_step=stop_in_fr)
    index = json.loads((out / EXPERTS_JSON).read_text())
    assert index["planned"] == ["de", "fr"] and list(index["languages"]) == ["de"]
    assert (out / "fr" / "checkpoints" / "step-1").is_dir() and not (out / "fr" / "final").exists()

    result = train_experts(config, base_dir, out, train_cuts=[(manifests["train"], 1.0)], dev_cuts=manifests["dev"],
                           decode_config=FAST_DEV)
    assert result.skipped == ["de"] and list(result.trained) == ["fr"]
    fr = result.trained["fr"]
    assert fr.resumed_from == out / "fr" / "checkpoints" / "step-1" and fr.steps == 2
    steps = [json.loads(line) for line in (out / "fr" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["event"] == "step"] == [1, 2]  # step 1 once, then step 2 after the resume

    base, adapters = load_experts(out)
    assert base == base_dir.resolve() and adapters == {"de": out / "de" / "best", "fr": out / "fr" / "best"}
    for language in ("de", "fr"):
        # each expert trained on its own language's cuts only, and was scored on its own dev cuts
        data = json.loads((out / language / "best" / "manifests.json").read_text())
        assert [(m["role"], m["languages"]) for m in data] == [("train", [language]), ("dev", None)]
        evals = [json.loads(line) for line in (out / language / "train_log.jsonl").read_text().splitlines()
                 if '"eval"' in line]
        assert evals and all(list(e["per_language"]) == [language] for e in evals)

    again = train_experts(config, base_dir, out, train_cuts=[(manifests["train"], 1.0)], dev_cuts=manifests["dev"],
                          decode_config=FAST_DEV)
    assert again.skipped == ["de", "fr"] and again.trained == {}
    assert "expert fr: already trained, skipped" in again.summary()


@pytest.fixture(scope="module")
def random_experts(base_dir, tmp_path_factory):
    """An experts directory with random, clearly non-zero de and fr LoRAs (q/k/v, r 4)."""
    from ilt.core.registry import create
    from ilt.models.adapter import save_adapter
    from ilt.training.lora import attach_lora

    out = tmp_path_factory.mktemp("random") / "experts"
    config = _experts_config()
    lora = LoraSection(r=4, lora_alpha=8, target_modules="attention", init_lora_weights=False)
    entries = {}
    for seed, language in enumerate(("de", "fr")):
        torch.manual_seed(seed)
        backbone = create("backbone", config.backbone, base_dir, dtype="fp32", device="cpu")
        model = attach_lora(backbone, lora)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, 0.3)
        save_adapter(model, out / language / "best", config.expert_round(language, []), None, {"step": 0})
        entries[language] = {"adapter": f"{language}/best"}
    (out / EXPERTS_JSON).write_text(json.dumps({"format": FORMAT, "base_model": str(base_dir), "planned": ["de", "fr"],
                                                "languages": entries}))
    return out


def _decode_alone(base_dir, adapter, cuts, config):
    """Reference hypotheses: plain ilt.asr.decode with one adapter (or the base model) on its own."""
    from ilt.asr.decode import decode_cuts
    from ilt.core.registry import create
    from ilt.models.adapter import load_adapter

    backbone = create("backbone", config.backbone, base_dir, dtype="fp32", device="cpu")
    model = load_adapter(backbone, adapter) if adapter is not None else None
    return {r["id"]: r["text"] for r in decode_cuts(backbone, model, cuts, config, progress=False)}


@pytest.mark.parametrize("beam", [1, 2])
def test_mixed_batches_match_per_group_and_each_expert_alone(base_dir, random_experts, manifests, beam):
    from ilt.core.registry import create
    from ilt.data.manifests import load_cuts

    config = _decode_config(beam)
    cuts = list(load_cuts(manifests["mixed"]))
    base, adapters = load_experts(random_experts)
    backbone = create("backbone", config.backbone, base, dtype="fp32", device="cpu")
    routes, detection = route_cuts(backbone, backbone.model, cuts, config, set(adapters))
    assert detection["cuts"] == 1  # the cut without a language, detected by the base model
    model = load_expert_model(backbone, adapters)
    runs = {batching: decode_with_experts(backbone, model, cuts, routes, config, batching=batching, progress=False)
            for batching in ("mixed", "per-group")}
    if beam > 1:  # plain generate (no shared cross-attention): PEFT repeats the adapter names per beam itself
        backbone.share_cross_attention = False
        runs["mixed-plain"] = decode_with_experts(backbone, model, cuts, routes, config, progress=False)
        backbone.share_cross_attention = True
    for records in runs.values():
        assert [r["id"] for r in records] == [c.id for c in cuts]  # input order, though batched by duration
    texts = {name: [r["text"] for r in records] for name, records in runs.items()}
    assert texts["mixed"] == texts["per-group"]
    assert texts.get("mixed-plain", texts["mixed"]) == texts["mixed"]

    by_id = {r["id"]: r for r in runs["mixed"]}
    assert {r["expert"] for r in by_id.values()} == {"de", "fr", None}
    for language in ("de", "fr"):
        own = [c for c in cuts if c.supervisions[0].language == language]
        alone = _decode_alone(base_dir, adapters[language], own, config)
        assert {c.id: by_id[c.id]["text"] for c in own} == alone
        assert all(by_id[c.id]["expert"] == language and by_id[c.id]["routed_by"] == "language" for c in own)
    base_rows = [c for c in cuts if routes[c.id].expert == BASE]
    assert {c.supervisions[0].language for c in base_rows} >= {"ja"}
    plain = _decode_alone(base_dir, None, [c for c in base_rows if c.supervisions[0].language], config)
    assert {i: by_id[i]["text"] for i in plain} == plain
    de_cuts = [c for c in cuts if c.supervisions[0].language == "de"]
    assert _decode_alone(base_dir, None, de_cuts, config) != {c.id: by_id[c.id]["text"] for c in de_cuts}


class _DetectingBackbone:
    """Only what routing uses: detects fr for audio of at most 1 s and de for longer."""

    name = "fake"
    sampling_rate = 16000
    max_input_seconds = 30.0

    def features(self, audios):
        return {"lengths": [len(a) for a in audios]}

    def detect_language(self, model, inputs):
        return ["fr" if n <= 16000 else "de" for n in inputs["lengths"]]


def test_routing_detects_missing_languages_and_falls_back_to_the_base_model(tmp_path):
    from ilt.testing import make_cuts

    cuts = list(make_cuts(tmp_path, [{"id": "none-long", "language": None, "duration": 2.0},
                                     {"id": "ja", "language": "ja"}, {"id": "fr", "language": "FR"},
                                     {"id": "none-short", "language": None}]))
    backbone, experts = _DetectingBackbone(), {"de", "fr"}
    routes, detection = route_cuts(backbone, object(), cuts, DecodeConfig(), experts)
    assert {i: (r.language, r.expert, r.by) for i, r in routes.items()} == {
        "none-long": ("de", "de", "detection"), "ja": ("ja", BASE, "language"), "fr": ("fr", "fr", "language"),
        "none-short": ("fr", "fr", "detection")}
    assert detection["cuts"] == 2

    routes, detection = route_cuts(backbone, object(), cuts, DecodeConfig(language="detect"), experts)
    assert {i: (r.language, r.expert, r.by) for i, r in routes.items()} == {
        "none-long": ("de", "de", "detection"), "ja": ("fr", "fr", "detection"), "fr": ("fr", "fr", "detection"),
        "none-short": ("fr", "fr", "detection")}
    assert detection["cuts"] == 4 and detection["confusions"]["ja->fr"] == 1

    class Deaf(_DetectingBackbone):
        detect_language = None

    routes, _ = route_cuts(Deaf(), object(), cuts, DecodeConfig(), experts)
    assert (routes["none-long"].language, routes["none-long"].expert) == (None, BASE)
    with pytest.raises(IltInputError, match="cannot detect the language"):
        route_cuts(Deaf(), object(), cuts, DecodeConfig(language="detect"), experts)


def test_decode_and_evaluate_with_experts_on_the_command_line(random_experts, manifests, tmp_path, caplog):
    from ilt.cli.main import cli

    conf = tmp_path / "decode.yaml"
    conf.write_text("beam_size: {default: 1}\nmax_new_tokens: 6\nbatch_size: 4\ncompression_ratio_threshold: null\n"
                    "fallback_temperatures: []\n")
    runner = CliRunner()
    with caplog.at_level(logging.INFO, logger="ilt"):
        result = runner.invoke(cli, ["decode", "--experts", str(random_experts), "--cuts", str(manifests["mixed"]),
                                     "--conf", str(conf), "--scores", "--out", str(tmp_path / "dec")])
    assert result.exit_code == 0, result.output
    assert "decoded 9 cut(s)" in result.output
    hyps = [json.loads(line) for line in (tmp_path / "dec" / "hyps.jsonl").read_text().splitlines()]
    assert [h["id"] for h in hyps] == [f"m{i}-{lang}" for i, lang in
                                       enumerate(["de", "fr", "ja", "de", "none", "fr", "ja", "de", "fr"])]
    assert all(h["score"] < 0 and h["score_tokens"] > 0 for h in hyps)  # each scored under its own expert
    routing = json.loads((tmp_path / "dec" / "routing.json").read_text())
    assert routing["batching"] == "mixed" and routing["detected"] == 1
    detected = hyps[4]["language"]  # the cut without a language: the base model's detection picked its expert
    assert hyps[4]["routed_by"] == "detection" and hyps[4]["expert"] == (detected if detected in ("de", "fr") else None)
    assert routing["experts"] == dict(Counter(h["expert"] for h in hyps if h["expert"]))
    assert routing["base_model"]["ja"] == 2 and sum(routing["base_model"].values()) == 9 - sum(routing["experts"].values())
    base = ", ".join(f"{k} {v}" for k, v in routing["base_model"].items())
    assert f"{9 - sum(routing['experts'].values())} with the base model for want of an expert ({base})" in caplog.text

    result = runner.invoke(cli, ["evaluate", "--experts", str(random_experts), "--expert-batching", "per-group",
                                 "--cuts", str(manifests["labelled"]), "--conf", str(conf), "--out",
                                 str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    scored = json.loads((tmp_path / "eval" / "scores.json").read_text())
    assert scored and (tmp_path / "eval" / "text").read_text().count("\n") == 8
    evaluated = [json.loads(line) for line in (tmp_path / "eval" / "hyps.jsonl").read_text().splitlines()]
    # per-group, and without the cut that has no language: the same hypotheses as the mixed batches
    assert [(h["id"], h["text"]) for h in evaluated] == [(h["id"], h["text"]) for h in hyps if h["routed_by"] != "detection"]


def test_bad_input_is_one_line(base_dir, manifests, random_experts, tmp_path):
    from ilt.cli.main import cli

    runner = CliRunner()
    empty = tmp_path / "not-experts"
    empty.mkdir()
    result = runner.invoke(cli, ["decode", "--experts", str(empty), "--cuts", str(manifests["mixed"]),
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert f"{empty / EXPERTS_JSON}: not found" in result.output and "ilt experts train" in result.output

    result = runner.invoke(cli, ["decode", "--cuts", str(manifests["mixed"]), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--experts DIR" in result.output  # a usage error

    conf = tmp_path / "experts.yaml"
    conf.write_text("name: experts\nexperts:\n  languages: [de, it]\n")
    result = runner.invoke(cli, ["experts", "train", "--config", str(conf), "--model", str(base_dir), "--train",
                                 str(manifests["train"]), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert f"{conf}: experts.languages[1]: 'it' has no cuts in the training data" in result.output
    assert "remove it from experts.languages or add its cuts" in result.output

    with pytest.raises(ConfigError, match=r"experts.languages\[0\]: unknown language code 'xx'"):
        from_dict(ExpertsConfig, {"name": "e", "experts": {"languages": ["xx"]}}, "e.yaml")
    with pytest.raises(ConfigError, match="train.lid_embeddings: not with language experts"):
        from_dict(ExpertsConfig, {"name": "e", "train": {"lid_embeddings": True}}, "e.yaml")

    broken = tmp_path / "broken"
    broken.mkdir()
    index = json.loads((random_experts / EXPERTS_JSON).read_text())
    index["base_model"] = str(base_dir)
    (broken / EXPERTS_JSON).write_text(json.dumps(index))  # its adapters are not there
    with pytest.raises(IltInputError, match=r"languages.de.adapter: .* holds no adapter_config.json"):
        load_experts(broken)


# --------------------------------------------------------------------------- untrusted language codes (docs/security.md)

BAD_CODES = ["../x", "/abs/x", "a\x00b", "a\nb", "x" * 300]


@pytest.mark.parametrize("code", BAD_CODES)
def test_a_language_code_that_is_a_path_never_names_a_directory(base_dir, tmp_path, code):
    """``languages: null``: the codes come from the cuts; one that is a path is
    refused before anything is written (``replace_dir`` of ``<out>/<lang>/best``
    could otherwise replace a directory outside ``--out``)."""
    from reliability_table import check

    from ilt.data.manifests import save_manifest
    from ilt.testing import make_cuts

    (tmp_path / "victim" / "best").mkdir(parents=True)  # what ../victim/best would have replaced
    spec = [{"id": f"c{i}", "text": "hello", "language": "en"} for i in range(2)]
    train = save_manifest(make_cuts(tmp_path / "cuts", spec), tmp_path / "train.jsonl.gz")
    from ilt.data.manifests import load_cuts

    cuts = list(load_cuts(train))
    for cut in cuts:
        cut.supervisions[0].language = code
    from lhotse import CutSet

    evil = tmp_path / "evil.jsonl.gz"
    CutSet.from_cuts(cuts).to_file(evil)
    out = tmp_path / "run" / "experts"
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(IltInputError) as err:
        train_experts(_experts_config(), base_dir, out, train_cuts=[(evil, 1.0)])
    message = str(err.value)
    shown = code[:12] + ("…" if len(code) > 12 else "")
    check("bad input", f"language code {shown!r} from the cuts (experts train, languages: null)", "error: one "
          "line naming the manifest and the code; nothing written", f"[in-process train_experts] "
          f"{message.replace(str(tmp_path), '…')[:160]}",
          "\n" not in message and "language code" in message and "cannot be part of a file name" in message
          and str(evil) in message and sorted(str(p) for p in tmp_path.rglob("*")) == before)


def test_an_experts_index_cannot_point_outside_its_directory(random_experts, tmp_path):
    import shutil

    experts = tmp_path / "experts"
    shutil.copytree(random_experts, experts)
    index = json.loads((experts / EXPERTS_JSON).read_text())
    shutil.copytree(random_experts / "de", tmp_path / "elsewhere")
    index["languages"]["de"]["adapter"] = "../elsewhere/best"
    (experts / EXPERTS_JSON).write_text(json.dumps(index))
    with pytest.raises(IltInputError, match=r"languages\.de\.adapter: '\.\./elsewhere/best' is not inside"):
        load_experts(experts)
    index["languages"]["de"]["adapter"] = "de/best"
    index["languages"]["../de"] = index["languages"].pop("fr")
    (experts / EXPERTS_JSON).write_text(json.dumps(index))
    with pytest.raises(IltInputError, match=r"language code '\.\./de' cannot be part of a file name"):
        load_experts(experts)


@pytest.mark.parametrize("beam", [1, 2])
def test_mixed_batches_on_the_audio_length_match_each_expert_alone(base_dir, random_experts, manifests, beam):
    """``input_mode: audio_length`` (issue 26): the encoder runs outside
    ``generate`` there too, under each row's own adapter."""
    from ilt.core.registry import create
    from ilt.data.manifests import load_cuts

    config = fast_decode(beam_size={"default": beam}, max_new_tokens=8, batch_size=4,
                         backbone={"name": "whisper", "input_mode": "audio_length", "pad_multiple": 180})
    cuts = list(load_cuts(manifests["mixed"]))
    base, adapters = load_experts(random_experts)
    backbone = create("backbone", config.backbone, base, dtype="fp32", device="cpu")
    assert backbone.input_mode == "audio_length"
    routes, _ = route_cuts(backbone, backbone.model, cuts, config, set(adapters))
    model = load_expert_model(backbone, adapters)
    by_id = {r["id"]: r for r in decode_with_experts(backbone, model, cuts, routes, config, batching="mixed",
                                                     progress=False)}
    for language in ("de", "fr"):
        own = [c for c in cuts if c.supervisions[0].language == language]
        assert {c.id: by_id[c.id]["text"] for c in own} == _decode_alone(base_dir, adapters[language], own, config)
