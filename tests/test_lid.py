"""Language-ID embeddings (ilt.models.lid) on tiny random Whisper and Qwen2-Audio models, on CPU."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from ilt.config import DecodeConfig, RoundConfig, from_dict  # noqa: E402
from ilt.models import lid  # noqa: E402
from ilt.training.loop import list_checkpoints, train_round  # noqa: E402

BACKBONES = ["whisper", "qwen2_audio"]


def _decode_config(name: str) -> DecodeConfig:
    return DecodeConfig(backbone=name, beam_size={"default": 1}, max_new_tokens=4, batch_size=8,
                        compression_ratio_threshold=None, fallback_temperatures=[])


def _config(name: str, **train) -> RoundConfig:
    return from_dict(RoundConfig, {
        "name": "focus", "backbone": name, "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
        "train": {"lr": 0.05, "micro_batch": 4, "num_buckets": 1, "precision": "fp32", "max_steps": 1, **train}})


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    from ilt.testing.dummies import tiny_whisper_dir
    from ilt.testing.tiny_qwen2_audio import tiny_qwen2_audio_dir

    tmp = tmp_path_factory.mktemp("models")
    return {"whisper": tiny_whisper_dir(tmp / "whisper"), "qwen2_audio": tiny_qwen2_audio_dir(tmp / "qwen")}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from ilt.data.manifests import save_manifest
    from ilt.testing.dummies import make_cuts

    tmp = tmp_path_factory.mktemp("data")
    train = make_cuts(tmp / "train", [{"id": f"{lang}{i}", "text": text, "language": lang, "duration": 1.0 + 0.2 * i}
                                      for lang, text in (("en", "hello world"), ("fr", "bonjour le monde"))
                                      for i in range(2)])
    unknown = make_cuts(tmp / "unknown", [{"id": f"u{i}", "text": "hello", "language": None, "duration": 1.2}
                                          for i in range(2)])
    return {"train": save_manifest(train, tmp / "train.jsonl.gz"),
            "unknown": save_manifest(unknown, tmp / "unknown.jsonl.gz")}


def _documented_hooks(model, model_dir, language):
    """docs/lid.md's recipe for a merged model without ilt, verbatim in substance."""
    import json

    from safetensors import safe_open

    with safe_open(str(model_dir / "lid_embeddings.safetensors"), framework="pt") as f:
        info = json.loads(f.metadata()["ilt_lid"])
        encoder_table, decoder_table = f.get_tensor("encoder"), f.get_tensor("decoder")
    row = info["languages"].index(language)

    def add_encoder_vector(module, args, output):
        output.last_hidden_state = output.last_hidden_state + encoder_table[row].to(output.last_hidden_state)
        return output

    def add_decoder_vector(module, args):
        return (args[0] + decoder_table[row].to(args[0]),)

    model.get_submodule(info["encoder_module"]).register_forward_hook(add_encoder_vector)
    model.get_submodule(info["head_module"]).register_forward_pre_hook(add_decoder_vector)
    return model


@pytest.fixture(scope="module")
def lid_runs(model_dirs, data, tmp_path_factory):
    """One training step with LID on, per backbone: the run directories."""
    tmp = tmp_path_factory.mktemp("runs")
    for name in BACKBONES:
        train_round(_config(name, lid_embeddings=True), model_dirs[name], tmp / name, train_cuts=[(data["train"], 1.0)])
    return {name: tmp / name for name in BACKBONES}


@pytest.mark.parametrize("name", BACKBONES)
def test_on_trains_saves_merges_and_decodes_like_the_adapter(name, model_dirs, data, lid_runs, tmp_path):
    """LID on (off: tests/test_qwen2_audio.py): the round's step trains the vectors of the languages it saw
    (only those), saves them with the adapter; the merged model is the stock
    checkpoint plus lid_embeddings.safetensors, and decodes (given and
    detected language) exactly as the unmerged adapter does."""
    from safetensors.torch import load_file

    from ilt.asr.decode import decode_files
    from ilt.core.registry import create
    from ilt.data.manifests import load_cuts
    from ilt.models.adapter import load_adapter
    from ilt.training.lora import merge_adapter

    base_dir = model_dirs[name]
    best = lid_runs[name] / "best"
    languages, encoder, decoder = lid.read(best / lid.LID_FILE)
    moved = {languages[i] for i in range(len(languages)) if encoder[i].abs().sum() > 0 and decoder[i].abs().sum() > 0}
    untouched = [i for i in range(len(languages)) if languages[i] not in moved]
    assert moved and moved <= {"en", "fr"}  # trained fully, only the languages of the step's batch
    assert encoder[untouched].abs().sum() == 0 and decoder[untouched].abs().sum() == 0

    merged = merge_adapter(base_dir, best, tmp_path / "M1")
    stock = load_file(str(merged / "model.safetensors"))
    assert not any("ilt_lid" in k for k in stock)  # the stock class loads it as it is
    assert set(stock) == set(load_file(str(base_dir / "model.safetensors")))
    assert (merged / lid.LID_FILE).read_bytes() == (best / lid.LID_FILE).read_bytes()

    full = create("backbone", name, merged)
    unmerged_backbone = create("backbone", name, base_dir)
    unmerged = load_adapter(unmerged_backbone, best).eval()
    batch = full.collate(load_cuts(data["train"]))
    with torch.no_grad():
        with_lid = full.loss(full.model.eval(), batch)
        assert torch.allclose(with_lid, unmerged_backbone.loss(unmerged, batch), atol=1e-5)
        batch.tensors["language_ids"][:] = -1  # no vectors
        assert (full.loss(full.model, batch) - with_lid).abs() > 1e-4  # the vectors change the model

    # the stock class plus the two hooks of docs/lid.md is the model ilt's loader gives
    fr = full.collate(load_cuts(data["train"]).filter(lambda cut: cut.supervisions[0].language == "fr"))
    stock = _documented_hooks(type(full.model).from_pretrained(merged).eval(), merged, "fr")
    with torch.no_grad():
        torch.testing.assert_close(full.loss(stock, fr), full.loss(full.model, fr))

    for cuts in ("train", "unknown"):  # the cut's language, then the model's own detection
        adapter = decode_files(base_dir, data[cuts], tmp_path / f"a-{cuts}", _decode_config(name), adapter=best,
                               progress=False)
        merged_records = decode_files(merged, data[cuts], tmp_path / f"m-{cuts}", _decode_config(name),
                                      progress=False)
        assert [r["text"] for r in merged_records] == [r["text"] for r in adapter]


@pytest.mark.parametrize("name", BACKBONES)
def test_unknown_language_is_detected_then_decoded_with_its_vectors(name, model_dirs):
    """With embeddings and no language, generate decodes each input as if its
    detected language had been given."""
    import numpy as np

    from ilt.core.registry import create

    backbone = create("backbone", name, model_dirs[name])
    embeddings = lid.attach(backbone)
    with torch.no_grad():
        embeddings.encoder.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
        embeddings.decoder.normal_(0, 1.0, generator=torch.Generator().manual_seed(1))
    rng = np.random.default_rng(0)
    inputs = backbone.features([0.1 * rng.standard_normal(16000 + 4000 * i).astype(np.float32) for i in range(2)])
    detected = backbone.detect_language(backbone.model, inputs)
    hyps = backbone.generate(backbone.model, inputs, language=None, max_new_tokens=4)
    assert len(detected) == len(hyps) == 2  # one decision per input: the loop below runs twice
    for i, language in enumerate(detected):
        one = {k: v[i:i + 1] for k, v in inputs.items()}
        assert backbone.generate(backbone.model, one, language=language, max_new_tokens=4) == hyps[i:i + 1]
    if name == "whisper":
        assert all(language in backbone.languages for language in detected)


def test_resume_continues_the_embeddings(model_dirs, data, tmp_path):
    """A run killed after a checkpoint and resumed ends with the same LoRA and
    the same embeddings as an uninterrupted one (the embeddings and their
    optimiser state are in every checkpoint)."""
    config = _config("whisper", lid_embeddings=True, max_steps=2, save_every=1, micro_batch=2)
    kwargs = dict(train_cuts=[(data["train"], 1.0)])
    train_round(config, model_dirs["whisper"], tmp_path / "full", **kwargs)

    class Killed(Exception):
        pass

    def kill_at_1(step, record):
        if step == 1:
            raise Killed

    with pytest.raises(Killed):
        train_round(config, model_dirs["whisper"], tmp_path / "cut", on_step=kill_at_1, **kwargs)
    checkpoint = list_checkpoints(tmp_path / "cut")[-1][1]
    assert (checkpoint / "adapter" / lid.LID_FILE).is_file()
    resumed = train_round(config, model_dirs["whisper"], tmp_path / "cut", **kwargs)
    assert resumed.resumed_from == checkpoint
    for file in ("adapter_model.safetensors", lid.LID_FILE):
        assert (tmp_path / "full" / "final" / file).read_bytes() == (tmp_path / "cut" / "final" / file).read_bytes()


def test_history_merge_treats_a_model_without_embeddings_as_zero(model_dirs, lid_runs, tmp_path):
    """Eq. 3 with a history model from before LID was on: its vectors count as zero."""
    from ilt.testing.dummies import tiny_whisper_dir
    from ilt.training.lora import merge_adapter

    base, best = model_dirs["whisper"], lid_runs["whisper"] / "best"
    plain = merge_adapter(base, best, tmp_path / "M1")
    history = tiny_whisper_dir(tmp_path / "older", seed=1)  # same architecture, no embeddings
    averaged = merge_adapter(base, best, tmp_path / "M1h", history=[history], weights=[0.5, 0.5])
    _, enc_plain, dec_plain = lid.read(plain / lid.LID_FILE)
    _, enc_avg, dec_avg = lid.read(averaged / lid.LID_FILE)
    torch.testing.assert_close(enc_avg, 0.5 * enc_plain)
    torch.testing.assert_close(dec_avg, 0.5 * dec_plain)


@pytest.mark.parametrize("name", BACKBONES)
def test_the_encoder_hook_works_on_the_audio_length(name, model_dirs, data, tmp_path):
    """With ``input_mode: audio_length`` (issue 26) the encoder's output is
    shorter than the window, and the language vector is still added to every
    frame of it; a round with LID trains on the short inputs, and an
    unknown language is detected and decoded on them."""
    import numpy as np

    from ilt.core.registry import create

    backbone = create("backbone", name, model_dirs[name], input_mode="audio_length", pad_multiple=20)
    embeddings = lid.attach(backbone)
    with torch.no_grad():
        embeddings.encoder.normal_(0, 1.0, generator=torch.Generator().manual_seed(0))
    encoder = backbone.lid_modules()[0]
    rng = np.random.default_rng(0)
    inputs = backbone.features([0.1 * rng.standard_normal(8000 + 4000 * i).astype(np.float32) for i in range(2)])
    assert inputs["input_features"].shape[-1] == 80  # 0.75 s -> 75 frames -> 80, of the window's 200
    with torch.no_grad():
        plain = encoder(inputs["input_features"]).last_hidden_state
        with lid.applied(backbone.model, ["en", "fr"]):
            shifted = encoder(inputs["input_features"]).last_hidden_state
    assert plain.shape[1] == {"whisper": 40, "qwen2_audio": 20}[name]  # conv stride 2 (and Qwen's pooling)
    rows = lid.language_ids(["en", "fr"])
    torch.testing.assert_close(shifted - plain, embeddings.encoder[rows].unsqueeze(1).expand_as(plain))
    hyps = backbone.generate(backbone.model, inputs, language=None, max_new_tokens=3)
    assert len(hyps) == 2
    config = from_dict(RoundConfig, {
        "name": "focus", "backbone": {"name": name, "input_mode": "audio_length", "pad_multiple": 20},
        "lora": {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
        "train": {"lr": 0.05, "micro_batch": 4, "num_buckets": 1, "precision": "fp32", "max_steps": 1,
                  "lid_embeddings": True}})
    train_round(config, model_dirs[name], tmp_path / "run", train_cuts=[(data["train"], 1.0)])
    assert (tmp_path / "run" / "best" / "lid_embeddings.safetensors").is_file()
