"""Small configs the test suites share: fast dev decoding and a short round.

A random tiny model loops when it decodes, so tests decode greedily, a few
tokens, without the temperature fallback; a test round trains a rank-4 LoRA
for a few steps in fp32.
"""

from __future__ import annotations

from typing import Any

import yaml

from ilt.config import DecodeConfig

#: Greedy decoding of a few tokens, no fallback: what dev scoring of a random model needs.
FAST_DECODE: dict[str, Any] = {"beam_size": {"default": 1}, "max_new_tokens": 4, "batch_size": 8,
                               "compression_ratio_threshold": None, "fallback_temperatures": []}


def fast_decode(**overrides: Any) -> DecodeConfig:
    """A :class:`ilt.config.DecodeConfig` of :data:`FAST_DECODE` with ``overrides``."""
    return DecodeConfig(**{**FAST_DECODE, **overrides})


def fast_decode_yaml(**overrides: Any) -> str:
    """:data:`FAST_DECODE` with ``overrides`` as the text of a decoding YAML."""
    return yaml.safe_dump({**FAST_DECODE, **overrides}, sort_keys=False)


def round_yaml(*, name: str = "focus", lora: dict[str, Any] | None = None, **train: Any) -> str:
    """The text of a round YAML: a rank-4 LoRA (``lora`` overrides), the ``ce``
    loss and ``train`` options (fp32 unless given)."""
    return yaml.safe_dump({"name": name, "lora": {"r": 4, "lora_dropout": 0.0, **(lora or {})},
                           "task": {"loss": "ce"}, "train": {"precision": "fp32", **train}}, sort_keys=False)
