"""Attach a round's LoRA to a backbone; merge a trained adapter into a full model.

One source of truth: the ``lora:`` block of the round YAML holds PEFT
``LoraConfig`` arguments; :func:`attach_lora` resolves a scope (``attention``,
``wide``) to module names through the backbone and hands everything else to
PEFT unchanged. An adapter directory (:mod:`ilt.models.adapter`) carries the resolved
``round.yaml``, so :func:`merge_adapter` needs nothing else to know which
backbone and which round it merges.

History merge (the paper's Eq. 3, ``M_t = φ_t M_{t-1} + … + φ_{t-n+1} M_{t-n}``)
    ``φ_t M_{t-1}`` is the newly merged model ``M_{t-1} + ΔM`` (Eq. 2). The
    history is the models *before* ``M_{t-1}``: with ``history = [M_{t-2}, …,
    M_{t-n}]`` and ``weights = [w_0, w_1, …]`` summing to 1, the result is
    ``w_0 (M_{t-1} + ΔM) + w_1 M_{t-2} + …``, an average of whole models in
    fp64, saved in the base's dtype. ``M_{t-1}`` itself is not a history
    model: it is already inside the new one (``0.8 (M_{t-1} + ΔM) + 0.2
    M_{t-1}`` would only shrink ΔM), and naming it is refused.

Memory and precision of the merge
    The base is loaded in its stored dtype (bf16 for a 7B model: 2 bytes a
    parameter) and the LoRA is merged one layer at a time
    (:func:`merge_lora_layers`): each layer's update ``(alpha/r) B A`` and
    ``W + update`` are computed in fp32 and rounded once to the stored dtype,
    so no fp32 copy of the whole model is ever held (a 7B bf16 model with a
    rank-512 LoRA needs about 16 GB of weights, 3.3 GB of LoRA and one fp32
    layer). The result is the same as merging a whole fp32 copy and casting
    it at the end. ``precision="fp32"`` loads the base in fp32 and saves the
    merged model in fp32 (nothing of the update is lost to the final cast;
    twice the memory and disk). A history merge averages whole models and
    loads them in fp32, as before. How much of the update the bf16 cast loses:
    ``bench/merge_precision.py``.

A merged model directory holds the backbone's full model (safetensors), its
processor, ``lineage.json`` (see :mod:`ilt.models.lineage`) and a model card
``README.md`` (see :mod:`ilt.models.modelcard`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Sequence

from ilt.config import LoraSection
from ilt.core.files import atomic_dir, remove_stale_temporaries
from ilt.errors import IltInputError
from ilt.models.adapter import adapter_provenance, load_adapter, resolve_adapter_dir
from ilt.models.base import stored_dtype
from ilt.models.lid import zero_filled
from ilt.models.lineage import merge_lineage, model_identity, write_lineage
from ilt.models.modelcard import with_hours, write_card

log = logging.getLogger("ilt")

#: Tolerance on the sum of history-merge weights.
WEIGHT_SUM_TOLERANCE = 1e-6


def lora_config(backbone: Any, lora: LoraSection) -> Any:
    """The ``peft.LoraConfig`` of a round: the scope resolved by ``backbone``."""
    from peft import LoraConfig

    targets = backbone.target_modules(lora.target_modules)
    return LoraConfig(**lora.peft_kwargs(list(targets)))


def attach_lora(backbone: Any, lora: LoraSection) -> Any:
    """Wrap ``backbone.model`` in a PEFT model with a fresh LoRA per ``lora``.

    Only the LoRA weights are trainable afterwards, and they are fp32 even
    when the frozen base was loaded in bf16/fp16 (PEFT's
    ``autocast_adapter_dtype``). The LoRA initialisation draws from torch's
    global RNG: seed it first for a reproducible start.

    :raises ValueError: from the backbone when no module matches the targets.
    """
    from peft import get_peft_model

    model = get_peft_model(backbone.model, lora_config(backbone, lora), autocast_adapter_dtype=True)
    trainable, total = model.get_nb_trainable_parameters()
    log.info("LoRA r=%d on %s: %d trainable of %d parameters (%.3f%%)", lora.r,
             ",".join(sorted(model.peft_config["default"].target_modules)), trainable, total,
             100.0 * trainable / max(total, 1))
    return model


# --------------------------------------------------------------------------- merging


def check_weights(n_history: int, weights: Sequence[float] | None) -> list[float]:
    """The history-merge weights ``[w_0, w_1, …]``: one per model (the new one
    first), finite, non-negative, summing to 1; ``[1.0]`` without history."""
    n = n_history + 1
    if weights is None:
        if n_history:
            raise ValueError(f"a history merge needs {n} weights (the new model first, then "
                             f"{n_history} earlier model(s)); none given")
        return [1.0]
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"history merge: {len(weights)} weight(s) for {n} model(s) (the new model "
                         f"first, then {n_history} earlier model(s)); give one weight per model")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"history merge: weights must be finite and non-negative, got {weights}")
    if abs(sum(weights) - 1.0) > WEIGHT_SUM_TOLERANCE:
        raise ValueError(f"history merge: weights must sum to 1, got {weights} (sum {sum(weights):.6g})")
    return weights


def weighted_average(own: dict[str, Any], others: Sequence[dict[str, Any]], weights: Sequence[float],
                     names: Sequence[str]) -> dict[str, Any]:
    """``w_0 own + Σ w_k others[k]`` over the floating-point tensors, in fp64,
    cast back to each tensor's dtype; other tensors must be equal.

    :param names: what each of ``others`` is, for errors.
    :raises IltInputError: a model of another architecture.
    """
    import torch

    acc = {k: v.detach().to(torch.float64) * weights[0] for k, v in own.items() if v.is_floating_point()}
    for phi, theirs, name in zip(weights[1:], others, names):
        missing, extra = sorted(set(own) - set(theirs)), sorted(set(theirs) - set(own))
        if missing or extra:
            raise IltInputError(f"history merge: {name} has a different architecture: missing {missing[:3]}, "
                                f"unexpected {extra[:3]}")
        for key, value in own.items():
            if theirs[key].shape != value.shape:
                raise IltInputError(f"history merge: {name}: {key} has shape {tuple(theirs[key].shape)}, "
                                    f"the new model {tuple(value.shape)}")
            if key in acc:
                acc[key] += theirs[key].detach().to(torch.float64) * phi
            elif not torch.equal(theirs[key], value):
                raise IltInputError(f"history merge: {name}: non-float tensor {key} differs")
    return {k: v.to(own[k].dtype) for k, v in acc.items()}


def merge_lora_layers(peft_model: Any) -> Any:
    """Merge the active LoRA of ``peft_model`` into its base weights one layer
    at a time and return the base model without PEFT's layers.

    Each layer's update is computed in fp32 (whatever the LoRA's dtype), added
    to an fp32 view of that layer's weight, checked finite and rounded once
    to the weight's own dtype: peak memory is the model plus one fp32 layer.
    Layers PEFT merges in other ways (embeddings, convolutions) go through
    PEFT's own ``merge(safe_merge=True)``.

    :raises IltInputError: a merged weight that is not finite (the layer named).
    """
    import torch
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    with torch.no_grad():
        for name, module in peft_model.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            if not isinstance(module, LoraLinear):
                module.merge(safe_merge=True)
                continue
            weight = module.get_base_layer().weight
            for adapter in module.active_adapters:
                if adapter not in module.lora_A:
                    continue
                merged = weight.detach().to(torch.float32) + module.get_delta_weight(adapter).to(torch.float32)
                if not torch.isfinite(merged).all():
                    raise IltInputError(f"merge: the merged weight of {name} is not finite (adapter {adapter!r}); "
                                        f"the adapter is broken")
                weight.copy_(merged)  # one rounding to the stored dtype
                del merged
    return peft_model.unload()


def _history_average(backbone_spec: Any, merged: Any, history: Sequence[Path], weights: list[float]) -> None:
    """Set ``merged``'s floating-point weights to the Eq. 3 average, in place."""
    import torch

    from ilt.core.registry import create

    own = merged.state_dict()
    # a model from before language-ID embeddings were on is the model with zero embeddings (ilt.models.lid)
    others = [zero_filled(own, create("backbone", backbone_spec, d, dtype=torch.float32, device="cpu")
                          .model.state_dict()) for d in history]
    averaged = weighted_average(own, others, weights, [str(d) for d in history])
    with torch.no_grad():
        for key, value in averaged.items():
            own[key].copy_(value)


def _check_inputs(model_dir: Path, adapter_dir: Path, out_dir: Path, history: list[Path],
                  overwrite: bool) -> None:
    for path in [model_dir, *history]:
        if not path.is_dir():
            raise IltInputError(f"{path}: model directory not found")
    if out_dir.resolve() in {p.resolve() for p in [model_dir, adapter_dir, *history]}:
        raise IltInputError(f"{out_dir}: the output must be a new directory, not an input of the merge")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise IltInputError(f"{out_dir}: exists and is not empty; choose another --out or overwrite it")


def _check_history(model_dir: Path, base: dict[str, Any], history: list[Path],
                   identities: list[dict[str, Any]]) -> None:
    """The base model ``M_{t-1}`` (by path, or a copy: by weight hash) is not a history model."""
    for path, identity in zip(history, identities):
        if path.resolve() == model_dir.resolve() or (base["sha256"] and identity["sha256"] == base["sha256"]):
            raise IltInputError(
                f"--history {path}: this is the base model M_(t-1) itself, which the merged model already "
                f"contains; the history starts at M_(t-2) (the model the base was trained from)")


def merge_adapter(
    model_dir: str | Path,
    adapter_dir: str | Path,
    out_dir: str | Path,
    *,
    history: Sequence[str | Path] | None = None,
    weights: Sequence[float] | None = None,
    overwrite: bool = False,
    precision: str = "stored",
) -> Path:
    """Merge the LoRA in ``adapter_dir`` into the model in ``model_dir``; write a
    full model, ``lineage.json`` (with the hours of each training manifest that
    can be read) and the model card ``README.md`` to ``out_dir`` atomically;
    return ``out_dir``.

    The merge runs on the CPU layer by layer (see the module docstring): each
    weight is ``W + (alpha/r) B A`` computed in fp32 and saved in the base's
    stored dtype, or in fp32 with ``precision="fp32"``.

    :param adapter_dir: a round's ``best/`` or ``final/``, or a training
        checkpoint ``checkpoints/step-N``.
    :param history: earlier full models ``M_{t-2}, M_{t-3}, …`` for the history
        merge (see the module docstring); not ``M_{t-1}`` (= ``model_dir``).
    :param weights: ``w_0`` (the newly merged model) followed by one weight per
        ``history`` entry; non-negative, summing to 1.
    :param overwrite: replace an existing non-empty ``out_dir``.
    :param precision: ``stored`` (save in the base's dtype) or ``fp32`` (load,
        merge and save in fp32).
    :raises IltInputError: missing directories, an adapter without its round
        config, a history model of another architecture or equal to the base.
    :raises ValueError: bad weights.
    """
    import torch

    from ilt.core.registry import create

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    adapter_dir = resolve_adapter_dir(adapter_dir)
    history = [Path(h) for h in (history or [])]
    phis = check_weights(len(history), weights)
    _check_inputs(model_dir, adapter_dir, out_dir, history, overwrite)
    base, history_ids = model_identity(model_dir), [model_identity(h) for h in history]
    _check_history(model_dir, base, history, history_ids)
    adapter = adapter_provenance(adapter_dir)
    config = adapter["config"]

    if precision not in ("stored", "fp32"):
        raise ValueError(f"merge precision {precision!r}: use 'stored' or 'fp32'")
    stored = stored_dtype(model_dir) or torch.float32
    # the base in its stored dtype (no whole fp32 copy), unless fp32 is asked for or a history
    # merge averages whole models (in fp32, as it always has)
    load_dtype = torch.float32 if precision == "fp32" or history else stored
    backbone = create("backbone", config.backbone, model_dir, dtype=load_dtype, device="cpu")
    merged = merge_lora_layers(load_adapter(backbone, adapter_dir))
    merged.eval()
    if history:
        _history_average(config.backbone, merged, history, phis)
    if precision == "stored" and stored != load_dtype:  # merged in fp32, saved as the base was
        merged.to(stored)

    lineage = merge_lineage(
        config, base=base, parent_dir=model_dir,
        adapter={"round": config.name, "step": (adapter["dev_score"] or {}).get("step"), "sha256": adapter["sha256"]},
        data=with_hours(adapter["data"] or []), dev_score=adapter["dev_score"],
        history_merge={"models": ["(this merge)", *history_ids], "weights": phis} if history else None)
    remove_stale_temporaries(out_dir)  # a killed merge's partial copy
    with atomic_dir(out_dir) as tmp:  # an existing out_dir is replaced only once this one is complete
        backbone.save(merged, tmp)
        write_lineage(tmp, lineage, name=out_dir.resolve().name, source=f"ilt merge of round {config.name}")
        # tmp lies beside out_dir: the card finds the experiment's reports (a row matching these weights)
        write_card(tmp, name=out_dir.resolve().name)
    log.info("merged %s + %s -> %s", model_dir, adapter_dir, out_dir)
    return out_dir
