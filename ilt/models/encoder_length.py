"""The Whisper encoder on the audio's own length, instead of 30 s of padding.

Whisper's encoder (and Qwen2-Audio's audio tower, the same architecture)
refuses any input other than ``max_source_positions * 2`` mel frames (30 s),
so a 3 s utterance costs the encoder as much as 30 s. icefall's Whisper
recipes lift the restriction (``--remove-whisper-encoder-input-length-restriction``):
the encoder runs on the real number of frames and adds only the first
positional embeddings. This module does the same **for one model instance**:
:func:`use_audio_length` replaces that encoder's ``forward`` (an instance
attribute, never the class), so every other model in the process keeps stock
Whisper, and PEFT's LoRA layers, gradient checkpointing, forward hooks (the
language-ID embeddings) and FSDP wrapping all work as before.

On a full 30 s input the replacement computes exactly what the stock forward
computes (tested). On shorter inputs it changes what the model sees (no
trailing padding to attend to); what that does to accuracy is measured, not
assumed: the backbones keep 30 s padding by default until the mini tracks have measured both.
A pretrained model needs some trailing silence to end its hypothesis, hence
:data:`DEFAULT_PAD_MULTIPLE` (10 s) rather than 1 s.

:func:`padded_frames` chooses how far a batch is padded: to its longest cut,
rounded up to ``multiple`` frames (``100`` = 1 s), never past the window.
"""

from __future__ import annotations

import math
import types
from typing import Any

#: the mode names recorded in lineage and checked at decoding
PADDED, AUDIO_LENGTH = "padded", "audio_length"
INPUT_MODES = (PADDED, AUDIO_LENGTH)
#: mel frames per second of audio (hop 160 at 16 kHz)
FRAMES_PER_SECOND = 100
#: Batches are padded to a multiple of 10 s by default: a pretrained Whisper
#: needs trailing silence to end its hypothesis. tiny.en, greedy (2026-12-06),
#: on 6 espeak sentences of 2.2-2.8 s: padded 10.9% WER; on the audio's length
#: padded to 1 s 65.5% (it loops), to 5 s 12.7%, to 10 s 12.7%; on 8 bench
#: cuts (4 voices) of 2.4-2.9 s: padded 15.2%, to 5 s 57.6% (loops), to 10 s
#: 15.2% at 2.5x the decoding speed, to 15 s 15.2%.
DEFAULT_PAD_MULTIPLE = 1000
_MARK = "_ilt_input_mode"


def _encode_on_length(self: Any, input_features: Any, attention_mask: Any = None, **kwargs: Any) -> Any:
    """The encoder's forward without the fixed-length check: the positional
    embeddings are sliced to the frames the convolutions give. Mirrors
    ``WhisperEncoder.forward`` / ``Qwen2AudioEncoder.forward`` of transformers 5."""
    import torch
    from torch import nn
    from transformers.modeling_outputs import BaseModelOutput

    stride = self.conv1.stride[0] * self.conv2.stride[0]
    limit = self.embed_positions.num_embeddings * stride
    frames = input_features.shape[-1]
    if frames > limit or frames % stride:
        raise ValueError(f"the encoder takes at most {limit} mel frames, a multiple of {stride}; got {frames}")
    pooled = hasattr(self, "avg_pooler")  # Qwen2-Audio's tower: cast inputs, mask, pool
    if pooled:
        input_features = input_features.to(dtype=self.conv1.weight.dtype, device=self.conv1.weight.device)
    hidden = nn.functional.gelu(self.conv2(nn.functional.gelu(self.conv1(input_features)))).permute(0, 2, 1)
    hidden = hidden + self.embed_positions.weight[: hidden.shape[1]]
    hidden = nn.functional.dropout(hidden, p=self.dropout, training=self.training)
    for layer in self.layers:
        if self.training and self.layerdrop > 0.0 and torch.rand([]) < self.layerdrop:
            continue  # LayerDrop, as the stock forward
        hidden = layer(hidden, attention_mask if pooled else None, **kwargs)
    if pooled:
        hidden = self.avg_pooler(hidden.permute(0, 2, 1)).permute(0, 2, 1)
    return BaseModelOutput(last_hidden_state=self.layer_norm(hidden))


def use_audio_length(encoder: Any) -> Any:
    """Let ``encoder`` (a Whisper encoder or Qwen2-Audio audio tower) run on
    any number of frames up to its window. Idempotent; returns ``encoder``."""
    if getattr(encoder, _MARK, PADDED) != AUDIO_LENGTH:
        encoder.forward = types.MethodType(_encode_on_length, encoder)
        setattr(encoder, _MARK, AUDIO_LENGTH)
    return encoder


def input_mode(encoder: Any) -> str:
    """:data:`AUDIO_LENGTH` when :func:`use_audio_length` was applied, else :data:`PADDED`."""
    return getattr(encoder, _MARK, PADDED)


def model_input_mode(model: Any) -> str:
    """The input mode ``model`` (any torch module holding the encoder: a
    backbone's model, a PEFT model around it) runs its encoder in."""
    for module in (model.modules() if hasattr(model, "modules") else ()):
        if hasattr(module, _MARK):
            return getattr(module, _MARK)
    return PADDED


def check_options(options: dict[str, Any]) -> None:
    """Check-time validation of a backbone's ``input_mode`` and ``pad_multiple``
    options (``ilt config check`` and the factories), one line naming the key."""
    from ilt.errors import ConfigError

    if "input_mode" in options and options["input_mode"] not in INPUT_MODES:
        raise ConfigError(f"input_mode: must be one of {', '.join(INPUT_MODES)}, not {options['input_mode']!r}")
    multiple = options.get("pad_multiple", DEFAULT_PAD_MULTIPLE)
    if not isinstance(multiple, int) or isinstance(multiple, bool) or multiple <= 0 or multiple % 2:
        raise ConfigError(f"pad_multiple: must be a positive even number of mel frames, not {multiple!r}")


def padded_frames(samples: list[int], *, hop: int, window_frames: int, multiple: int) -> int:
    """Frames to pad a batch to: its longest cut (``samples`` per cut, at
    ``hop`` samples per frame), rounded up to ``multiple`` frames (an even
    number, for the encoder's stride), at most ``window_frames``."""
    if multiple <= 0 or multiple % 2:
        raise ValueError(f"pad multiple must be a positive even number of frames, got {multiple}")
    longest = max(samples, default=0)
    frames = max(multiple, math.ceil(math.ceil(longest / hop) / multiple) * multiple)
    return min(window_frames, frames)
