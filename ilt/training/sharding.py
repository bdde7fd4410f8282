"""Training under several processes whose parameters may be sharded: FSDP 2
(``fully_shard``), Accelerate's FSDP and DeepSpeed ZeRO-3.

=================================  ===================================================
what                               how
=================================  ===================================================
FSDP 2 on CPU processes            Accelerate (1.16) runs CPU processes as
                                   ``MULTI_CPU`` (gloo) and applies its FSDP plugin
                                   only on GPUs; when ``accelerate launch`` asked for
                                   FSDP version 2 (an FSDP config) on CPU processes,
                                   :func:`apply_fully_shard` shards every
                                   transformer layer and the root with torch's
                                   ``fully_shard`` itself, and the model is not
                                   wrapped in DDP (:func:`cpu_fsdp2_requested`)
the LoRA state for saving          :func:`full_state_dict`: FSDP 2
                                   ``get_model_state_dict(full_state_dict,
                                   cpu_offload)``; Accelerate's FSDP and DeepSpeed
                                   ``accelerator.get_state_dict``; a collective on
                                   every process, the main process gets the tensors
decoding with sharded parameters   :func:`gathered_for_decoding`: FSDP 2 modules are
                                   unsharded once (one all-gather per module) and
                                   kept whole until the context ends, so each
                                   process can decode its own number of batches (a
                                   forward would otherwise all-gather, and processes
                                   generating different numbers of tokens would
                                   wait on each other forever); ZeRO-3 gathers
                                   through ``deepspeed.zero.GatheredParameters``
=================================  ===================================================

DDP and single processes need none of this: every function is a no-op there.
DeepSpeed paths are written against DeepSpeed's documented API but untested
here (DeepSpeed needs a GPU).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

from ilt.core.runtime import launched_fsdp_version

log = logging.getLogger("ilt")


def cpu_fsdp2_requested(accelerator: Any) -> bool:
    """Whether ``accelerate launch`` asked for FSDP 2 on CPU processes (which
    Accelerate runs as plain ``MULTI_CPU``): ilt applies ``fully_shard`` itself."""
    from accelerate.utils import DistributedType

    return (accelerator.num_processes > 1 and accelerator.distributed_type == DistributedType.MULTI_CPU
            and launched_fsdp_version() == 2)


def layer_classes(model: Any) -> set[str]:
    """The transformer layer class names of a (PEFT-wrapped) Hugging Face model
    (its ``_no_split_modules``: ``WhisperEncoderLayer``, ``Qwen2DecoderLayer``, ...)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names: set[str] = set()
    for module in base.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return names


def apply_fully_shard(model: Any) -> int:
    """Shard ``model`` with FSDP 2 (``fully_shard``): each transformer layer,
    then the root; return the number of layers sharded."""
    from torch.distributed.fsdp import fully_shard

    classes = layer_classes(model)
    layers = [m for m in model.modules() if type(m).__name__ in classes]
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    log.info("FSDP 2 (fully_shard) on CPU processes: %d layers (%s) and the root", len(layers),
             ", ".join(sorted(classes)))
    return len(layers)


def fsdp2_modules(model: Any) -> list[Any]:
    """The modules of ``model`` that ``fully_shard`` manages (empty: not FSDP 2)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - every pinned torch has it
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def _zero3(accelerator: Any) -> bool:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and getattr(plugin, "zero_stage", 0) == 3


def is_sharded(accelerator: Any, model: Any) -> bool:
    """Whether ``model``'s parameters are sharded over the processes."""
    from accelerate.utils import DistributedType

    return bool(fsdp2_modules(model)) or accelerator.distributed_type == DistributedType.FSDP or _zero3(accelerator)


def full_state_dict(accelerator: Any, model: Any) -> dict[str, Any] | None:
    """The model's whole state dict on the main process (CPU tensors), ``{}``
    on the others; ``None`` when nothing is sharded (save the model as it is).
    Call it on every process: it is a collective."""
    if not is_sharded(accelerator, model):
        return None
    if fsdp2_modules(model):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:  # Accelerate's FSDP (1 or 2 on GPUs) and DeepSpeed: gathered by Accelerate
        state = accelerator.get_state_dict(model)
    return state if accelerator.is_main_process else {}


@contextlib.contextmanager
def gathered_for_decoding(accelerator: Any, model: Any) -> Iterator[None]:
    """Whole parameters on every process for the duration (see the module
    docstring); a no-op when nothing is sharded. Enter it on every process."""
    modules = fsdp2_modules(model)
    if modules:
        for module in modules:
            module.set_reshard_after_forward(False, recurse=False)
            module.unshard()
        try:
            yield
        finally:
            after = getattr(getattr(accelerator.state, "fsdp_plugin", None), "reshard_after_forward", True)
            for module in modules:
                module.reshard()
                # the root stays whole after forward, as FSDP 2 keeps it by default
                module.set_reshard_after_forward(bool(after) and module is not model, recurse=False)
        return
    if _zero3(accelerator):  # pragma: no cover - DeepSpeed needs a GPU
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            yield
        return
    yield


def full_optimizer_state(accelerator: Any, model: Any, optimizer: Any) -> dict[str, Any]:
    """The optimiser's state dict to checkpoint: under FSDP 2 gathered whole
    (keyed by parameter name) on the main process; else the optimiser's own.
    Call it on every process."""
    if not fsdp2_modules(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
    )

    inner = getattr(optimizer, "optimizer", optimizer)  # Accelerate's AcceleratedOptimizer
    return get_optimizer_state_dict(model, inner, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: Any, optimizer: Any, state: dict[str, Any]) -> None:
    """Restore what :func:`full_optimizer_state` saved (every process reads the same file)."""
    if not fsdp2_modules(model):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_optimizer_state_dict,
    )

    inner = getattr(optimizer, "optimizer", optimizer)
    set_optimizer_state_dict(model, inner, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))


def load_full_adapter(model: Any, path: Any) -> bool:
    """Under FSDP 2, load a saved adapter's LoRA weights (PEFT's file names,
    without the adapter name) into the sharded model and return ``True``;
    ``False`` (nothing done) when the model is not FSDP 2."""
    if not fsdp2_modules(model):
        return False
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
    )

    from ilt.errors import IltInputError

    saved = load_file(str(path))
    names = {key.replace(".default.", ".").replace(".default", ""): key for key in model.state_dict()
             if ".default" in key}
    missing = [k for k in saved if k not in names]
    if missing:
        raise IltInputError(f"{path}: adapter weights do not fit this LoRA: {missing[:3]}")
    set_model_state_dict(model, {names[k]: v for k, v in saved.items()},
                         options=StateDictOptions(full_state_dict=True, strict=False))
    return True
