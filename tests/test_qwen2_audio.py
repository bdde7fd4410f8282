"""The Qwen2-Audio backbone on a tiny random Qwen2-Audio (hidden 32, 2 + 2 layers, 2 s window), on CPU."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from ilt.config import DecodeConfig, RoundConfig, from_dict  # noqa: E402
from ilt.plugins.qwen2_audio import IGNORE_INDEX, INSTRUCTION, Qwen2AudioBackbone  # noqa: E402

FAST_DECODE = DecodeConfig(backbone="qwen2_audio", beam_size={"default": 1}, max_new_tokens=4, batch_size=8,
                           compression_ratio_threshold=None, fallback_temperatures=[])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from ilt.testing.tiny_qwen2_audio import tiny_qwen2_audio_dir

    return tiny_qwen2_audio_dir(tmp_path_factory.mktemp("q") / "Q0")


@pytest.fixture(scope="module")
def backbone(model_dir):
    from ilt.core.registry import create

    return create("backbone", "qwen2_audio", model_dir)


@pytest.fixture(scope="module")
def cuts(tmp_path_factory):
    from ilt.testing.dummies import make_cuts

    return make_cuts(tmp_path_factory.mktemp("cuts"), [
        {"id": "en", "text": "hello world", "duration": 1.0},
        {"id": "fr", "text": "bonjour le monde", "language": "fr", "duration": 1.7},
        {"id": "empty", "text": ""},
        {"id": "nolang", "text": "hello", "language": None},
        {"id": "xx", "text": "hello", "language": "xx"},
        {"id": "silent", "text": "hello", "silent": True},
    ])


def test_prompt_and_features_match_the_processor(backbone, cuts):
    """The collated prompt is exactly what Qwen2AudioProcessor makes of
    Qwen2-Audio's ASR prompt (audio tokens expanded), and the features too."""
    audio = cuts["fr"].load_audio()[0]
    prompt = f"<|audio_bos|><|AUDIO|><|audio_eos|>{INSTRUCTION}<|fr|>"
    ref = backbone.processor(text=[prompt], audio=[audio], sampling_rate=16000, return_tensors="pt")
    batch = backbone.collate([cuts["fr"]])
    text = backbone.text_ids("bonjour le monde")
    plen = ref["input_ids"].shape[1]
    assert batch.tensors["input_ids"][0].tolist() == ref["input_ids"][0].tolist() + text
    assert int((ref["input_ids"] == backbone.model.config.audio_token_id).sum()) == 42  # 1.7 s: 25 a second
    torch.testing.assert_close(batch.tensors["input_features"], ref["input_features"])
    assert batch.tensors["feature_attention_mask"].tolist() == ref["feature_attention_mask"].tolist()
    assert backbone.tokenize("hello world") == ["hello", " world"]
    assert plen > 42


def test_collate_masks_all_but_the_transcript(backbone, cuts):
    batch = backbone.collate(cuts)
    assert batch.cut_ids == ["en", "fr"]
    assert batch.skipped["empty"] == "empty transcript" and batch.skipped["nolang"] == "no language"
    assert "not supported" in batch.skipped["xx"] and "silent" in batch.skipped["silent"]
    eos = backbone.collator.eos_id
    for row, text in zip(range(2), ["hello world", "bonjour le monde"]):
        labels = batch.tensors["labels"][row]
        kept = labels[labels != IGNORE_INDEX].tolist()
        assert kept == backbone.text_ids(text) + [eos]  # the transcript and the end of text, nothing else
        n = int(batch.tensors["attention_mask"][row].sum())
        # teacher forcing: the input at each labelled position is the token before it
        ids = batch.tensors["input_ids"][row]
        first = int((labels != IGNORE_INDEX).nonzero()[0])
        assert ids[first + 1:n].tolist() == kept[:-1] and ids[first].item() == backbone.collator._tags[
            ["en", "fr"][row]][-1]
    # the loss is the mean cross-entropy over exactly those positions
    with torch.no_grad():
        logits = backbone._forward(backbone.model, batch.tensors, None)
        labels = batch.tensors["labels"]
        mask = labels != IGNORE_INDEX
        expected = torch.nn.functional.cross_entropy(logits[mask], labels[mask])
        assert torch.allclose(backbone.loss(backbone.model, batch), expected)
    assert batch.tensors["language_ids"].tolist() == [0, 6]  # en, fr rows of ilt.models.lid's table


def _manual_greedy(backbone, inputs, language, steps):
    """Greedy decoding by repeated full forward passes, one input at a time."""
    out = []
    for i in range(inputs["input_features"].shape[0]):
        n = backbone.collator.audio_tokens(inputs["feature_attention_mask"][i:i + 1])[0]
        ids = backbone.collator.prompt_ids(n, language)
        new = []
        for _ in range(steps):
            with torch.no_grad():
                logits = backbone.model(input_ids=torch.tensor([ids + new]),
                                        input_features=inputs["input_features"][i:i + 1],
                                        feature_attention_mask=inputs["feature_attention_mask"][i:i + 1]).logits
            token = int(logits[0, -1].argmax())
            new.append(token)
            if token == backbone.collator.eos_id:
                break
        out.append(backbone.tokenizer.decode(new, skip_special_tokens=True).strip())
    return out


def test_greedy_decoding_is_greedy_per_utterance(backbone, cuts):
    """Batched generate (left-padded prompts of different audio lengths) gives
    each utterance its own greedy hypothesis."""
    audios = [cuts["en"].load_audio()[0], cuts["fr"].load_audio()[0]]
    inputs = backbone.features(audios)
    hyps = backbone.generate(backbone.model, inputs, language="fr", max_new_tokens=6)
    assert hyps == _manual_greedy(backbone, inputs, "fr", 6)
    assert backbone.generate(backbone.model, backbone.features(audios[1:]), language="fr",
                             max_new_tokens=6) == hyps[1:]
    # a budget per utterance (ilt.models.generation): the first ends after 2 tokens
    short = backbone.generate(backbone.model, inputs, language="fr", max_new_tokens=[2, 6])
    assert short[1] == hyps[1] and short[0] == _manual_greedy(backbone, inputs, "fr", 2)[0]
    scores = backbone.score(backbone.model, inputs, hyps, language="fr")
    assert all(n >= 1 and m < 0 for m, n in scores)


def test_unknown_language_reads_the_models_tag(backbone, cuts, monkeypatch):
    """Without a language the model writes the tag itself: detect_language
    reads it and generate drops it from the text."""
    inputs = backbone.features([cuts["en"].load_audio()[0]])
    tag_then_text = backbone.tokenizer.encode("<|fr|>bonjour", add_special_tokens=False)
    prompts = []

    def run(model, inputs, languages, gen, limits, loop_tokens, extra):
        prompts.append(list(languages))
        return [tag_then_text]

    monkeypatch.setattr(backbone, "_run", run)
    assert backbone.detect_language(backbone.model, inputs) == ["fr"]
    assert backbone.generate(backbone.model, inputs, language=None) == ["bonjour"]
    assert prompts == [[None], [None]]  # no language-ID embeddings: one pass, the prompt without a tag


def test_scopes_cover_the_papers_feedback_modules(backbone):
    from ilt.config import LoraSection
    from ilt.training.lora import lora_config

    wide = lora_config(backbone, LoraSection(target_modules="wide")).target_modules
    assert wide == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "out_proj",
                    "fc1", "fc2"}
    assert backbone.target_modules("attention") == ["q_proj", "k_proj", "v_proj"]
    with pytest.raises(ValueError, match="proj_out"):
        backbone.target_modules(["proj_out"])


def test_train_merge_decode_through_the_ilt_commands(model_dir, cuts, tmp_path):
    """One training step through ilt.training.loop with ``backbone: qwen2_audio`` and a
    wide LoRA; the merged model equals the unmerged adapter (logits and
    greedy hypotheses), and decodes and scores through ilt.asr.decode."""
    from lhotse import CutSet

    from ilt.asr.decode import decode_files
    from ilt.core.registry import create
    from ilt.data.manifests import save_manifest
    from ilt.models.adapter import load_adapter
    from ilt.training.loop import train_round
    from ilt.training.lora import merge_adapter

    manifest = save_manifest(CutSet.from_cuts([cuts["en"], cuts["fr"]]), tmp_path / "train.jsonl.gz")
    config = from_dict(RoundConfig, {
        "name": "feedback", "backbone": "qwen2_audio",
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": "wide", "lora_dropout": 0.0},
        "train": {"lr": 0.05, "micro_batch": 2, "precision": "fp32", "max_steps": 1}})
    result = train_round(config, model_dir, tmp_path / "run", train_cuts=[(manifest, 1.0)])
    assert result.steps == 1
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log] == ["start", "step"] and log[1]["loss"] > 0
    assert not (tmp_path / "run" / "best" / "lid_embeddings.safetensors").exists()  # LID off: the LoRA alone

    merged = merge_adapter(model_dir, tmp_path / "run" / "best", tmp_path / "Q1")
    base = create("backbone", "qwen2_audio", model_dir)
    unmerged = load_adapter(base, tmp_path / "run" / "best").eval()
    full = create("backbone", "qwen2_audio", merged)
    batch = base.collate(CutSet.from_cuts([cuts["en"], cuts["fr"]]))
    fresh = create("backbone", "qwen2_audio", model_dir)
    with torch.no_grad():
        a = base._forward(unmerged, batch.tensors, None)
        b = full._forward(full.model.eval(), batch.tensors, None)
        before = fresh._forward(fresh.model.eval(), batch.tensors, None)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    assert (a - before).abs().max() > 1e-3  # the step changed the model
    records = decode_files(merged, manifest, tmp_path / "dec", FAST_DECODE, progress=False, scores=True)
    adapter_records = decode_files(model_dir, manifest, tmp_path / "dec-adapter", FAST_DECODE,
                                   adapter=tmp_path / "run" / "best", progress=False)
    assert [r["text"] for r in records] == [r["text"] for r in adapter_records]
    assert all(r["score_tokens"] >= 1 for r in records)
    assert isinstance(full, Qwen2AudioBackbone)  # the processor was saved beside the merged weights


# --------------------------------------------------------------------------- input_mode: audio_length (issue 26)


def test_audio_length_pads_to_the_longest_cut_and_keeps_the_audio_tokens(model_dir, backbone, cuts):
    """With ``input_mode: audio_length`` the features stop at the batch's
    longest cut (rounded up to ``pad_multiple`` frames), the feature mask and
    the prompt's audio-token count are those of the padded mode, and the
    whole model trains and decodes on them."""
    from ilt.core.registry import create

    short = create("backbone", "qwen2_audio", model_dir, input_mode="audio_length", pad_multiple=20)
    assert (backbone.input_mode, short.input_mode) == ("padded", "audio_length")
    pair = [cuts["en"], cuts["fr"]]  # 1.0 s and 1.7 s: 170 frames -> 180
    full, trimmed = backbone.collate(pair), short.collate(pair)
    assert full.tensors["input_features"].shape[-1] == 200 and trimmed.tensors["input_features"].shape[-1] == 180
    mask = trimmed.tensors["feature_attention_mask"]
    assert mask.shape == (2, 180) and mask.sum(-1).tolist() == full.tensors["feature_attention_mask"].sum(-1).tolist()
    audio_token = short.model.config.audio_token_id
    assert ((trimmed.tensors["input_ids"] == audio_token).sum(-1).tolist()
            == (full.tensors["input_ids"] == audio_token).sum(-1).tolist() == [25, 42])
    assert torch.equal(trimmed.tensors["labels"], full.tensors["labels"])
    short.model.train()
    loss = short.loss(short.model, trimmed)
    loss.backward()
    short.model.eval()
    assert torch.isfinite(loss)
    inputs = short.features([c.load_audio()[0] for c in pair])
    assert len(short.generate(short.model, inputs, language="en", max_new_tokens=2)) == 2
    assert len(short.generate(short.model, inputs, language="en", max_new_tokens=2, num_beams=2)) == 2


def test_audio_length_on_a_full_window_gives_the_padded_loss(model_dir, backbone, tmp_path):
    """A batch whose longest cut fills the window is the same tensor in both
    modes, and gives exactly the same loss."""
    from ilt.core.registry import create
    from ilt.testing.dummies import make_cuts

    window = make_cuts(tmp_path, [{"id": "full", "text": "hello world", "duration": 2.0},
                                  {"id": "half", "text": "bonjour", "language": "fr", "duration": 0.9}])
    short = create("backbone", "qwen2_audio", model_dir, input_mode="audio_length")
    pair = [window["full"], window["half"]]
    full, trimmed = backbone.collate(pair), short.collate(pair)
    assert trimmed.tensors["input_features"].shape[-1] == 200
    for key in ("input_features", "feature_attention_mask", "input_ids", "labels"):
        assert torch.equal(full.tensors[key], trimmed.tensors[key]), key
    with torch.no_grad():
        assert torch.equal(backbone.loss(backbone.model, full), short.loss(short.model, trimmed))


def test_audio_length_options_are_checked(model_dir):
    from ilt.errors import ConfigError
    from ilt.plugins.qwen2_audio import load_qwen2_audio

    with pytest.raises(ConfigError, match="input_mode: must be one of padded, audio_length"):
        load_qwen2_audio.validate({"input_mode": "trimmed"})
    with pytest.raises(ConfigError, match="pad_multiple"):
        load_qwen2_audio(model_dir, input_mode="audio_length", pad_multiple=7)
