"""The LoRA scopes of the built-in backbones: the module leaf names each
scope (``attention``, ``wide``; :data:`ilt.models.base.SCOPES`) expands to.

They live here, below the plugins, so that code which must not import a
plugin (the planner, :mod:`ilt.training.plan`) reads the same table as the
backbone that trains (:mod:`ilt.plugins.whisper`, :mod:`ilt.plugins.qwen2_audio`).
"""

from __future__ import annotations

#: Whisper: q/k/v; wide adds out_proj and fc1/fc2 (Whisper has no gate/up/down projections).
WHISPER_SCOPES: dict[str, tuple[str, ...]] = {
    "attention": ("q_proj", "k_proj", "v_proj"),
    "wide": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
}

#: Qwen2-Audio, matched in the LLM and the audio tower alike: wide adds the
#: LLM's o_proj and gate/up/down_proj and the tower's out_proj and fc1/fc2.
QWEN2_AUDIO_SCOPES: dict[str, tuple[str, ...]] = {
    "attention": ("q_proj", "k_proj", "v_proj"),
    "wide": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "out_proj", "fc1", "fc2"),
}

#: The scope table of each built-in backbone, by its registered name (= the
#: ``model_type`` of its ``config.json``).
BACKBONE_SCOPES: dict[str, dict[str, tuple[str, ...]]] = {
    "whisper": WHISPER_SCOPES,
    "qwen2_audio": QWEN2_AUDIO_SCOPES,
}

__all__ = ["BACKBONE_SCOPES", "QWEN2_AUDIO_SCOPES", "WHISPER_SCOPES"]
