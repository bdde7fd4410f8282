"""Training options that depend on the model's size or on optional packages:
gradient checkpointing and the optimiser.

Gradient checkpointing (``train.gradient_checkpointing``)
    ``true`` / ``false``, or ``auto`` (the default): on when the backbone has
    more than :data:`CHECKPOINTING_AUTO_PARAMS` parameters. Whisper tiny to
    small (39M-244M) train without it, as before the option existed;
    Whisper medium and large-v3 (769M, 1.55B) and Qwen2-Audio-7B (8.4B)
    recompute activations in the backward pass (about a third more compute,
    a fraction of the activation memory). :func:`checkpointing_on` is the
    one rule; ``ilt plan`` and the training loop both use it.

Optimiser (``train.optimizer``)
    ``adamw``: torch's AdamW (fused on CUDA), two fp32 moments per trainable
    parameter (8 bytes). ``adamw8bit``: bitsandbytes' block-wise 8-bit
    AdamW (``pip install 'ilt[opt8bit]'``), two uint8 moments plus one fp32
    scale per 256 values (about 2 bytes); it runs on CPU and CUDA
    (bitsandbytes >= 0.50; torchao's ``AdamW8bit`` was tried too, and its
    first step on CPU compiles for about 20 s). Tensors under
    :data:`MIN_8BIT_SIZE` values keep 32-bit state (bitsandbytes' default).
"""

from __future__ import annotations

from typing import Any, Iterable

from ilt.config import TrainSection
from ilt.errors import IltInputError

#: ``gradient_checkpointing: auto`` turns checkpointing on above this many backbone parameters.
CHECKPOINTING_AUTO_PARAMS = 300_000_000
#: Parameter tensors with fewer values keep 32-bit optimiser state under ``adamw8bit``.
MIN_8BIT_SIZE = 4096


def checkpointing_on(train: TrainSection, backbone_params: int) -> bool:
    """Whether a round trains with gradient checkpointing on a backbone of
    ``backbone_params`` parameters (``auto``: above :data:`CHECKPOINTING_AUTO_PARAMS`)."""
    return resolve_checkpointing(train.gradient_checkpointing, backbone_params)


def resolve_checkpointing(setting: bool | str, backbone_params: int) -> bool:
    """``true``/``false`` as given; ``"auto"``: above :data:`CHECKPOINTING_AUTO_PARAMS`."""
    if setting == "auto":
        return backbone_params > CHECKPOINTING_AUTO_PARAMS
    return bool(setting)


def enable_checkpointing(model: Any) -> None:
    """Gradient checkpointing (non-reentrant) on a PEFT model's base model."""
    base = model.get_base_model()
    enable = getattr(base, "activation_checkpointing_enable", None)  # transformers >= 5.x
    if enable is not None:
        enable({"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def make_optimizer(train: TrainSection, params: Iterable[Any], device_type: str) -> Any:
    """The optimiser ``train.optimizer`` names, over ``params``.

    :raises IltInputError: ``adamw8bit`` without bitsandbytes installed.
    """
    import torch

    params = list(params)
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay,
                                 fused=device_type == "cuda")
    try:
        from bitsandbytes.optim import AdamW8bit
    except ImportError:
        raise IltInputError("train.optimizer: adamw8bit needs bitsandbytes >= 0.50: pip install 'ilt[opt8bit]' "
                            "(or set train.optimizer: adamw)") from None
    return AdamW8bit(params, lr=train.lr, weight_decay=train.weight_decay, min_8bit_size=MIN_8BIT_SIZE)
