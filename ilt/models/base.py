"""What every backbone plugin shares: LoRA target names, model unwrapping, config reading, generation keywords."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ilt.backbone import SCOPES
from ilt.errors import IltInputError


def resolve_target_modules(model: Any, spec: str | Sequence[str], scope_targets: dict[str, Sequence[str]],
                           family: str) -> list[str]:
    """LoRA target module names for PEFT's ``target_modules``, for any
    ``torch`` model.

    ``spec`` is a scope of :data:`SCOPES` (expanded to ``scope_targets[spec]``,
    module leaf names) or explicit names (a list, or a comma-separated string),
    each a leaf name (``fc1``) or a dotted suffix of a module path
    (``decoder.layers.0.fc1``) naming a layer PEFT's LoRA can wrap (``Linear``,
    ``Conv1d``, ``Embedding``; modules PEFT already wrapped count).

    :raises ValueError: nothing given, or a name no module has; the message
        lists the model's linear layer names (``family`` names the model).
    """
    import torch.nn as nn

    wrappable = (nn.Linear, nn.Conv1d, nn.Embedding)
    while not hasattr(model, "named_modules") and hasattr(model, "module"):
        model = model.module
    modules = [(n, m) for n, m in model.named_modules() if n and not n.endswith(".base_layer")]
    paths = [n for n, m in modules if isinstance(m, wrappable) or hasattr(m, "base_layer")]
    linear_leaves = sorted({n.rsplit(".", 1)[-1] for n, m in modules
                            if isinstance(m, nn.Linear) or isinstance(getattr(m, "base_layer", None), nn.Linear)})
    if isinstance(spec, str) and spec in SCOPES:
        names = list(scope_targets[spec])
    else:
        names = ([s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str)
                 else [str(s).strip() for s in spec])
        if not names:
            raise ValueError(f"no LoRA target modules given; use a scope ({', '.join(SCOPES)}) "
                             f"or linear layer names: {', '.join(linear_leaves)}")
    unknown = [n for n in names if not any(p == n or p.endswith("." + n) for p in paths)]
    if unknown:
        raise ValueError(
            f"unknown LoRA target module(s) {', '.join(map(repr, unknown))} for {family}; use a scope "
            f"({', '.join(SCOPES)}) or linear layer names: {', '.join(linear_leaves)}")
    return list(dict.fromkeys(names))


def unwrap_model(model: Any) -> Any:
    """The ``transformers`` model under DDP/FSDP-style (``.module``) and PEFT
    wrappers; LoRA layers stay injected in it."""
    while not hasattr(model, "generation_config") and hasattr(model, "module"):
        model = model.module
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def generating_model(model: Any) -> Any:
    """The outermost wrapper that has ``generate`` (a PEFT model keeps its hooks)."""
    while not hasattr(model, "generate") and hasattr(model, "module"):
        model = model.module
    return model


def first_float_param(model: Any) -> Any:
    """The first floating-point parameter of ``model`` (its device and dtype
    are the model's)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p
    raise ValueError("model has no floating-point parameters")


def read_model_config(model_dir: str | Path, model_type: str, family: str, hint: str = "") -> dict[str, Any]:
    """The ``config.json`` of a model directory whose ``model_type`` must be
    ``model_type``, or an :class:`IltInputError` naming the directory and what
    it holds instead (``family``: the model family for the message; ``hint``:
    appended to the message, e.g. how to convert another format)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise IltInputError(f"{model_dir}: no such model directory")
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        found = ", ".join(sorted(p.name for p in model_dir.iterdir())[:10]) or "nothing"
        raise IltInputError(f"{model_dir}: not a {family} model directory: no config.json; found {found}{hint}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IltInputError(f"{config_file}: unreadable model config: {exc}") from None
    found_type = config.get("model_type") if isinstance(config, dict) else None
    if found_type != model_type:
        raise IltInputError(f"{model_dir}: not a {family} model: config.json has model_type {found_type!r}, "
                            f"expected {model_type!r}{hint}")
    return config


def split_generation_kwargs(gen_config: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Set each non-``None`` keyword that ``gen_config`` (a ``GenerationConfig``)
    has as an attribute on it; return the others, for ``generate`` itself."""
    extra = {}
    for key, value in kwargs.items():
        if value is None:
            continue
        if hasattr(gen_config, key):
            setattr(gen_config, key, value)
        else:
            extra[key] = value
    return extra
