"""The encoder on the audio's own length (ilt.models.encoder_length): exact on
30 s, shapes on shorter inputs, one model instance only."""

from __future__ import annotations

import pytest
import torch

from ilt.models.encoder_length import (
    AUDIO_LENGTH,
    PADDED,
    input_mode,
    padded_frames,
    use_audio_length,
)


def _tiny_whisper(tmp_path=None):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    config = WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, num_mel_bins=80,
                           max_source_positions=100, max_target_positions=32, vocab_size=100,
                           pad_token_id=1, bos_token_id=2, eos_token_id=2, decoder_start_token_id=3)
    return WhisperForConditionalGeneration(config).eval()


def _tiny_qwen_tower(tmp_path):
    from transformers import Qwen2AudioForConditionalGeneration

    from ilt.testing.tiny_qwen2_audio import tiny_qwen2_audio_dir

    return Qwen2AudioForConditionalGeneration.from_pretrained(tiny_qwen2_audio_dir(tmp_path / "q")).eval().model.audio_tower


@pytest.mark.parametrize("build", [_tiny_whisper, _tiny_qwen_tower])
def test_on_the_full_window_it_computes_what_the_stock_encoder_computes(build, tmp_path):
    model = build(tmp_path)
    encoder = model.model.encoder if hasattr(model, "model") else model
    frames = encoder.embed_positions.num_embeddings * 2
    features = torch.randn(2, encoder.conv1.in_channels, frames)
    with torch.no_grad():
        stock = encoder(features).last_hidden_state
        use_audio_length(encoder)
        trimmed = encoder(features).last_hidden_state
    assert torch.equal(stock, trimmed)
    assert input_mode(encoder) == AUDIO_LENGTH


def test_shorter_inputs_give_shorter_outputs_and_other_models_stay_stock():
    model, other = _tiny_whisper(), _tiny_whisper()
    encoder = use_audio_length(model.model.encoder)
    with torch.no_grad():
        out = encoder(torch.randn(1, 80, 60)).last_hidden_state
        assert out.shape == (1, 30, 32)
        with pytest.raises(ValueError, match="expects the mel input features to be of length 200"):
            other.model.encoder(torch.randn(1, 80, 60))  # the class is untouched
        with pytest.raises(ValueError, match="at most 200 mel frames, a multiple of 2; got 61"):
            encoder(torch.randn(1, 80, 61))
    assert input_mode(other.model.encoder) == PADDED


def test_the_whole_model_trains_and_generates_on_short_inputs():
    model = _tiny_whisper()
    use_audio_length(model.model.encoder)
    features = torch.randn(2, 80, 40)
    labels = torch.randint(0, 100, (2, 5))
    model.train()
    loss = model(input_features=features, labels=labels).loss
    loss.backward()
    assert torch.isfinite(loss) and model.model.encoder.conv1.weight.grad is not None


def test_padded_frames_rounds_up_to_the_multiple_within_the_window():
    assert padded_frames([16000, 32000], hop=160, window_frames=3000, multiple=100) == 200
    assert padded_frames([32001], hop=160, window_frames=3000, multiple=100) == 300
    assert padded_frames([16000 * 40], hop=160, window_frames=3000, multiple=100) == 3000
    assert padded_frames([], hop=160, window_frames=3000, multiple=100) == 100
    with pytest.raises(ValueError, match="even"):
        padded_frames([1], hop=160, window_frames=3000, multiple=3)


# --------------------------------------------------------------------------- the whisper backbone option


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    from ilt.testing import tiny_whisper_dir

    return tiny_whisper_dir(tmp_path_factory.mktemp("enc") / "m")


def test_the_backbone_option_pads_each_batch_to_its_longest_cut(whisper_dir):
    import numpy as np

    from ilt.plugins import create

    padded = create("backbone", "whisper", whisper_dir)
    trimmed = create("backbone", "whisper", whisper_dir, input_mode="audio_length", pad_multiple=20)
    audio = [np.random.default_rng(0).standard_normal(n).astype(np.float32) for n in (3000, 5000)]
    full, short = padded.features(audio)["input_features"], trimmed.features(audio)["input_features"]
    assert full.shape[-1] == padded.num_frames and short.shape[-1] == 40  # 5000 samples = 31.25 frames -> 40
    assert (padded.input_mode, trimmed.input_mode) == ("padded", "audio_length")
    # the features of the short batch are the start of the padded ones, but for the last frames' STFT padding
    assert torch.allclose(short[..., :30], full[..., :30], atol=1e-5)
    hyps = trimmed.generate(trimmed.model, trimmed.features(audio), language=None, max_new_tokens=3)
    beams = trimmed.generate(trimmed.model, trimmed.features(audio), language=None, max_new_tokens=3, num_beams=2)
    assert len(hyps) == len(beams) == 2


def test_the_backbone_option_is_checked_at_config_time(whisper_dir):
    from ilt.errors import ConfigError
    from ilt.plugins.whisper import validate_whisper_options

    with pytest.raises(ConfigError, match="input_mode: must be one of padded, audio_length"):
        validate_whisper_options({"input_mode": "short"})
    with pytest.raises(ConfigError, match="pad_multiple"):
        validate_whisper_options({"pad_multiple": 3})
    validate_whisper_options({"input_mode": "audio_length", "pad_multiple": 50})


# --------------------------------------------------------------------------- training, lineage, decoding


def test_train_dev_merge_and_decode_on_the_audio_length_and_the_mode_check(whisper_dir, tmp_path, caplog):
    """A round with ``input_mode: audio_length`` trains and scores its dev set;
    its adapter and the merged model's lineage record the mode; decoding
    (greedy and beam, chunked long audio) works in it, and decoding in the
    other mode warns, naming both modes and the fix."""
    import json
    import logging

    from lhotse import CutSet

    from ilt.asr.decode import decode_files
    from ilt.config import RoundConfig, from_dict
    from ilt.data.manifests import save_manifest
    from ilt.models.lineage import trained_input_mode
    from ilt.testing.configs import fast_decode
    from ilt.testing.dummies import make_cuts
    from ilt.training.loop import train_round
    from ilt.training.lora import merge_adapter

    cuts = make_cuts(tmp_path / "audio", [{"id": "a", "text": "hello", "duration": 0.6},
                                          {"id": "b", "text": "hello world", "duration": 1.2},
                                          {"id": "long", "text": "hello world", "duration": 5.0}])
    train = save_manifest(CutSet.from_cuts([cuts["a"], cuts["b"]]), tmp_path / "train.jsonl.gz")
    every = save_manifest(cuts, tmp_path / "all.jsonl.gz")
    short = {"name": "whisper", "input_mode": "audio_length", "pad_multiple": 20}
    config = from_dict(RoundConfig, {
        "name": "feedback", "backbone": short, "lora": {"r": 4, "lora_dropout": 0.0},
        "train": {"lr": 0.01, "micro_batch": 2, "precision": "fp32", "max_steps": 2, "eval_every": 2}})
    train_round(config, whisper_dir, tmp_path / "run", train_cuts=[(train, 1.0)], dev_cuts=train,
                decode_config=fast_decode(backbone=short))
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log].count("step") == 2 and any(r["event"] == "eval" for r in log)
    best = tmp_path / "run" / "best"
    assert json.loads((best / "input_mode.json").read_text()) == {"input_mode": "audio_length"}
    merged = merge_adapter(whisper_dir, best, tmp_path / "M1")
    assert json.loads((merged / "lineage.json").read_text())["input_mode"] == "audio_length"
    assert trained_input_mode(merged)[0] == trained_input_mode(whisper_dir, best)[0] == "audio_length"
    assert trained_input_mode(whisper_dir)[0] == "padded"  # a model ilt did not train

    with caplog.at_level(logging.WARNING, logger="ilt"):
        for beam in (1, 2):
            records = decode_files(merged, every, tmp_path / f"dec{beam}", fast_decode(
                backbone=short, beam_size={"default": beam}), progress=False)
            assert {r["id"]: r["num_chunks"] for r in records} == {"a": 1, "b": 1, "long": 3}  # 2 s window
        assert "input mode mismatch" not in caplog.text
        decode_files(merged, every, tmp_path / "padded", fast_decode(), progress=False)
    assert ("trained with input_mode audio_length" in caplog.text and "decodes with input_mode padded" in caplog.text
            and "input_mode: audio_length}" in caplog.text)


def test_pseudo_labelling_on_the_audio_length(whisper_dir, tmp_path):
    """Pseudo-labelling decodes through the backbone: with ``input_mode:
    audio_length`` in its decoding config every cut is decoded (a long one in
    chunks) and voted on."""
    from ilt.asr.pseudo import pseudo_label, voting_models
    from ilt.data.manifests import save_manifest
    from ilt.testing.configs import fast_decode
    from ilt.testing.dummies import make_cuts

    pool = save_manifest(make_cuts(tmp_path / "audio", [{"id": "a", "text": None, "duration": 0.7},
                                                        {"id": "long", "text": None, "duration": 4.5}]),
                         tmp_path / "pool.jsonl.gz")
    config = fast_decode(backbone={"name": "whisper", "input_mode": "audio_length", "pad_multiple": 20})
    summary = pseudo_label(voting_models([whisper_dir]), pool, tmp_path / "out", voter="majority",
                           decode_config=config)
    assert summary["cuts"] == 2 and summary["kept"] + sum(summary["left_out"].values()) == 2


@pytest.mark.parametrize("beams", [1, 2])
def test_generate_runs_the_encoder_on_the_short_features(whisper_dir, beams):
    """Whisper's ``generate`` zero-pads ``input_features`` to the window
    (``_get_input_segment``); in ``audio_length`` mode the backbone runs the
    encoder itself, on the batch's frames, for greedy and beam search alike."""
    import numpy as np

    from ilt.plugins import create

    trimmed = create("backbone", "whisper", whisper_dir, input_mode="audio_length", pad_multiple=20)
    audio = [np.random.default_rng(1).standard_normal(n).astype(np.float32) for n in (3000, 5000)]
    seen = []
    handle = trimmed.model.model.encoder.register_forward_hook(
        lambda module, args, output: seen.append((args[0].shape[-1], output.last_hidden_state.shape[1])))
    try:
        trimmed.generate(trimmed.model, trimmed.features(audio), language="en", max_new_tokens=3, num_beams=beams)
    finally:
        handle.remove()
    assert seen == [(40, 20)]
