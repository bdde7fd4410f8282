"""Beam search for Whisper that computes each utterance's cross-attention keys
and values once, not once per beam.

Hugging Face ``generate`` runs beam search on ``batch x beams`` rows: it copies
the encoder output once per beam, so the decoder's first step projects the same
encoder states to cross-attention keys and values ``beams`` times over, and at
every later step ``EncoderDecoderCache.reorder_cache`` re-gathers all of them
(``index_select`` over ``batch x beams x 1500`` frames per layer) although a
beam only ever moves within its own utterance, where every row is the same.
On tiny.en (CPU, 8 utterances, beam 6) that gather alone was 38% of the
decoding time.

Here, per batch:

1. the encoder runs once on the ``batch`` utterances (as in ``generate``);
2. each decoder layer's cross-attention ``k_proj``/``v_proj`` runs once on
   them and fills the cross-attention cache with ``batch`` rows (LoRA layers,
   merged or not, are applied as in the normal forward);
3. ``generate`` runs with that cache (:class:`BeamSharedCrossCache`: its
   ``reorder_cache`` reorders the self-attention cache only) and the attention
   function :func:`beam_shared_sdpa`, which attends the ``beams`` query rows of
   an utterance to its one row of keys and values by folding the beams into
   the query length of a single SDPA call.

The arithmetic is the same as ``generate``'s (the same projections and the same
SDPA on the same values); the tests check that the hypotheses equal plain
``generate``'s, merged or not, English-only or multilingual.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator

#: The name :func:`beam_shared_sdpa` is registered under in transformers'
#: ``AttentionInterface``.
ATTENTION_NAME = "ilt_beam_sdpa"


def beam_shared_sdpa(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                     **kwargs: Any) -> tuple[Any, None]:
    """transformers' SDPA attention, plus cross-attention from ``B x beams``
    query rows to ``B`` key/value rows (beam ``j`` of utterance ``b`` is query
    row ``b * beams + j``, as ``generate`` lays beams out).

    Any other call (self-attention, the encoder, equal batch sizes) is plain
    ``sdpa_attention_forward``.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rows, kv_rows = query.shape[0], key.shape[0]
    if rows == kv_rows or kv_rows == 0 or rows % kv_rows or attention_mask is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    beams = rows // kv_rows
    heads, q_len, dim = query.shape[1:]
    kwargs.pop("is_causal", None)
    # (B*beams, H, q, D) -> (B, H, beams*q, D): one utterance's beams become query positions
    folded = (query.reshape(kv_rows, beams, heads, q_len, dim).transpose(1, 2)
              .reshape(kv_rows, heads, beams * q_len, dim))
    out, _ = sdpa_attention_forward(module, folded, key, value, None, is_causal=False, **kwargs)
    # out: (B, beams*q, H, D), row-major as (B, beams, q, H, D) -> (B*beams, q, H, D), the
    # layout attention callers expect
    return out.reshape(rows, q_len, heads, out.shape[-1]), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, beam_shared_sdpa)  # a dict entry: repeating it is harmless


@functools.cache
def _cache_class() -> type:
    from transformers.cache_utils import EncoderDecoderCache

    class BeamSharedCrossCache(EncoderDecoderCache):
        """An ``EncoderDecoderCache`` whose cross-attention part holds one row
        per utterance: beam search reorders only the self-attention part."""

        def reorder_cache(self, beam_idx: Any) -> None:
            self.self_attention_cache.reorder_cache(beam_idx)

    return BeamSharedCrossCache


def prefill(model: Any, input_features: Any, *, keep_encoder_states: bool = True) -> tuple[Any, Any]:
    """Run the encoder once and fill a cross-attention cache with one row per
    utterance. Returns ``(encoder_outputs, past_key_values)`` for ``generate``.

    ``model`` is the ``WhisperForConditionalGeneration`` (LoRA layers may be
    injected in it). With ``keep_encoder_states=False`` the encoder output
    handed to ``generate`` keeps its batch and frame sizes (from which
    ``generate`` reads the batch size and the input length) but only one
    feature: the decoder reads keys and values from the cache and never the
    encoder states, so ``generate``'s copy of them for every beam shrinks from
    ``batch x beams x frames x d_model`` to ``batch x beams x frames``. Keep
    them when ``generate`` must detect the language from them.
    """
    from transformers.cache_utils import DynamicCache
    from transformers.modeling_outputs import BaseModelOutput

    hidden = model.model.encoder(input_features).last_hidden_state
    config = model.config.get_text_config(decoder=True)
    cross = DynamicCache(config=config)
    rows = hidden.shape[0]
    for index, layer in enumerate(model.model.decoder.layers):
        attention = layer.encoder_attn
        shape = (rows, -1, attention.num_heads, attention.head_dim)
        keys = attention.k_proj(hidden).view(shape).transpose(1, 2).contiguous()
        values = attention.v_proj(hidden).view(shape).transpose(1, 2).contiguous()
        cross.update(keys, values, index)
    states = hidden if keep_encoder_states else hidden[..., :1]
    return BaseModelOutput(last_hidden_state=states), _cache_class()(DynamicCache(config=config), cross)


@contextlib.contextmanager
def beam_shared_attention(model: Any) -> Iterator[None]:
    """Within the block, ``model`` (a ``WhisperForConditionalGeneration``) uses
    :func:`beam_shared_sdpa`; its attention implementation is restored after."""
    _register()
    previous = model.config._attn_implementation
    model.set_attn_implementation(ATTENTION_NAME)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def adapters_per_row(model: Any, adapter_names: Any) -> Any:
    """A context in which the LoRA layers of ``model`` (a PEFT model holding
    several adapters) apply adapter ``adapter_names[i]`` to row ``i`` (PEFT's
    mixed-batch forward, entered as PEFT's own ``generate`` enters it), for
    :func:`prefill`: the encoder and the cross-attention projections run on
    one row per utterance, outside ``generate``. A null context without names."""
    if adapter_names is None:
        return contextlib.nullcontext()
    return model._enable_peft_forward_hooks(adapter_names=list(adapter_names))
