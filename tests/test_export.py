"""ilt export ct2: a tiny Whisper exported with CTranslate2's converter, loaded
back by ctranslate2 and faster-whisper, decodes to exactly what `ilt decode`
gives at float32 with greedy search; the export is atomic and carries its card."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("ctranslate2")

from ilt.asr.decode import decode_cuts  # noqa: E402
from ilt.config import DecodeConfig  # noqa: E402
from ilt.core.registry import create  # noqa: E402
from ilt.errors import IltInputError  # noqa: E402
from ilt.models.export import Ct2Whisper, export_ct2, loop_end, stop_where_rules_would  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random multilingual Whisper whose greedy output depends on its
    input (weights scaled up from the default init, which always says the
    same token) and that never emits timestamps (they are suppressed, as a
    trained model in no-timestamps mode does not emit them)."""
    from transformers import WhisperForConditionalGeneration

    from ilt.testing.dummies import tiny_whisper_dir

    path = tiny_whisper_dir(tmp_path_factory.mktemp("m") / "M1")
    model = WhisperForConditionalGeneration.from_pretrained(path)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.add_(torch.randn(p.shape, generator=gen) * 0.15)
    notimestamps = model.generation_config.no_timestamps_token_id
    timestamps = list(range(notimestamps + 1, model.config.vocab_size))
    model.generation_config.suppress_tokens = sorted(set(model.generation_config.suppress_tokens) | set(timestamps))
    model.config.suppress_tokens = model.generation_config.suppress_tokens
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def cuts(tmp_path_factory):
    from ilt.testing.dummies import make_cuts

    rng = np.random.default_rng(3)
    specs = [{"id": f"c{n}", "duration": d, "audio": 0.1 * rng.standard_normal(int(16000 * d)).astype(np.float32)}
             for n, d in enumerate([0.6, 1.0, 1.4, 1.9])]
    return make_cuts(tmp_path_factory.mktemp("audio"), specs)


@pytest.fixture(scope="module")
def exported(model_dir, tmp_path_factory):
    return export_ct2(model_dir, tmp_path_factory.mktemp("out") / "M1-ct2", quantization="float32")


def test_export_writes_a_loadable_ct2_dir_atomically_with_card(model_dir, exported):
    import ctranslate2
    import yaml
    from huggingface_hub import ModelCard

    names = {p.name for p in exported.iterdir()}
    assert {"model.bin", "config.json", "vocabulary.json", "tokenizer.json", "preprocessor_config.json",
            "export.json", "README.md"} <= names
    assert not list(exported.parent.glob(".M1-ct2*"))  # no temporary directory left
    info = json.loads((exported / "export.json").read_text())
    assert info["quantization"] == "float32" and info["multilingual"] is True
    assert info["source"]["name"] == "M1" and len(info["source"]["sha256"]) == 12
    assert ctranslate2.models.Whisper(str(exported)).n_mels == 80

    card = (exported / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["library_name"] == "ctranslate2" and "faster-whisper" in meta["tags"]
    assert ModelCard(card).data.library_name == "ctranslate2"
    assert str(model_dir.parent) not in card and str(exported.parent) not in card

    with pytest.raises(IltInputError, match="not empty"):
        export_ct2(model_dir, exported)
    with pytest.raises(IltInputError, match="quantization"):
        export_ct2(model_dir, exported.parent / "other", quantization="int3")
    with pytest.raises(IltInputError, match="not a Whisper model"):
        export_ct2(exported, exported.parent / "other")


def test_float32_greedy_decoding_is_identical_to_ilt_decode(model_dir, exported, cuts):
    backbone = create("backbone", "whisper", model_dir)
    runner = Ct2Whisper(exported)
    # greedy: no sampling fallback (CTranslate2 samples with its own random generator)
    config = DecodeConfig(beam_size={"default": 1}, max_new_tokens=40, batch_size=3, fallback_temperatures=[],
                          loop_tokens=6)

    # `ilt decode`'s own path (duration budgets, loop stop, batching) with both models
    ours = decode_cuts(backbone, None, cuts, config, progress=False)
    theirs = decode_cuts(runner, None, cuts, config, progress=False)
    assert [r["text"] for r in theirs] == [r["text"] for r in ours]
    budgets = config.token_budgets([cut.duration for cut in cuts], "en")
    # some hypotheses end before their budget (loop stop or end-of-text), others at it
    assert any(len(backbone.tokenizer(r["text"]).input_ids) < b - 2 for r, b in zip(ours, budgets))
    assert len({r["text"] for r in ours}) == len(ours) and all(len(r["text"]) > 10 for r in ours)

    # token IDs, without any stopping rule: generate() of transformers against CTranslate2
    audios = [cut.load_audio()[0] for cut in cuts]
    features = backbone.features(audios)
    sequences = backbone.model.generate(input_features=features["input_features"], language="en",
                                        task="transcribe", return_timestamps=False, max_length=30)
    eot, prompt = backbone.collator.eos_id, backbone.prompt_ids("en")
    hf_ids = []
    for row in sequences.tolist():
        row = row[len(prompt):] if row[:len(prompt)] == prompt else row
        hf_ids.append(row[:row.index(eot)] if eot in row else row)
    ct2_ids = runner.generate_ids(features, language="en", max_new_tokens=30)
    assert ct2_ids == hf_ids and all(len(ids) == 30 for ids in ct2_ids)


def test_faster_whisper_loads_the_export_offline(exported, monkeypatch):
    faster_whisper = pytest.importorskip("faster_whisper")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = faster_whisper.WhisperModel(str(exported), device="cpu", compute_type="float32")
    assert model.hf_tokenizer.token_to_id("<|startoftranscript|>") == 50258  # the exported tokenizer.json
    assert model.feature_extractor.n_samples == 32000  # the tiny model's 2 s window, from preprocessor_config.json


def test_stop_rules_match_ilt_generation():
    from ilt.models.generation import looping_rows

    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(1, 50))
        seq = [int(t) for t in rng.integers(0, 1 + trial % 3, n)] if trial % 2 else \
            [int(t) for t in rng.integers(0, 50, n // 2)] + [7, 8] * (n // 4)
        min_tokens = int(rng.integers(2, 14))
        expected = next((t for t in range(1, len(seq) + 1)
                         if bool(looping_rows(torch.tensor([seq[:t]]), min_tokens)[0])), None)
        assert loop_end(seq, min_tokens) == expected
    assert stop_where_rules_would([1, 2, 3, 4, 5], 3, None) == [1, 2, 3]
    assert stop_where_rules_would([9, 5, 5, 5, 5, 5, 6], 10, 4) == [9, 5, 5, 5, 5]


def test_ct2_decodes_on_the_audio_length_as_ilt_decode_does(model_dir, exported, cuts, tmp_path, caplog):
    """CTranslate2 takes features shorter than the window (issue 26): its
    greedy text on them equals ``ilt decode``'s with ``input_mode:
    audio_length``, and differs from the padded decode (the input changed).
    The export records the model's input mode and warns about
    faster-whisper's 30 s padding for a model trained on the audio length."""
    import logging
    import shutil

    short = create("backbone", "whisper", model_dir, input_mode="audio_length", pad_multiple=10)
    runner = Ct2Whisper(exported, input_mode="audio_length", pad_multiple=10)
    assert json.loads((exported / "export.json").read_text())["input_mode"] == "padded"
    assert Ct2Whisper(exported).input_mode == "padded"
    audios = [cut.load_audio()[0] for cut in cuts]
    assert runner.features(audios[:2])["input_features"].shape[-1] == 100  # 1.0 s: 100 of the window's 200
    config = DecodeConfig(beam_size={"default": 1}, max_new_tokens=20, batch_size=2, fallback_temperatures=[],
                          loop_tokens=6)
    ours = [r["text"] for r in decode_cuts(short, None, cuts, config, progress=False)]
    theirs = [r["text"] for r in decode_cuts(runner, None, cuts, config, progress=False)]
    padded = [r["text"] for r in decode_cuts(Ct2Whisper(exported), None, cuts, config, progress=False)]
    assert theirs == ours and theirs != padded
    with pytest.raises(IltInputError, match="input_mode 'short'"):
        Ct2Whisper(exported, input_mode="short")

    trained = tmp_path / "M2"
    shutil.copytree(model_dir, trained)
    (trained / "lineage.json").write_text(json.dumps({"backbone": {"name": "whisper", "input_mode": "audio_length"},
                                                      "input_mode": "audio_length"}))
    with caplog.at_level(logging.WARNING, logger="ilt"):
        out = export_ct2(trained, tmp_path / "M2-ct2", quantization="float32")
    assert json.loads((out / "export.json").read_text())["input_mode"] == "audio_length"
    assert Ct2Whisper(out).input_mode == "audio_length" and "faster-whisper's transcribe pads" in caplog.text
