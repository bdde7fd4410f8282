"""Attach a round's LoRA to a backbone, merge a trained adapter into a full model.

One source of truth: the ``lora:`` block of the round YAML holds PEFT
``LoraConfig`` arguments; :func:`attach_lora` resolves a scope (``attention``,
``wide``) to module names through the backbone and hands everything else to
PEFT unchanged. The adapter directory written by :mod:`ilt.train` carries the
resolved ``round.yaml``, so :func:`merge_adapter` needs nothing else to know
which backbone and which round it merges.

An adapter directory (``exp/focus/best``) holds::

    adapter_config.json adapter_model.safetensors   PEFT save_pretrained
    round.yaml       the resolved round config
    score.json       the dev score it was selected by (written by train)
    manifests.json   the data it was trained on: paths, weights, sha256

A merged model directory holds the backbone's full model (safetensors), its
processor and ``lineage.json``: base, adapter, round, config hash, resolved
config, data manifests with their sha256, dev score, the optional history
merge and, nested, the base model's own lineage (the chain M0 -> M1 -> ...).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

from ilt import __version__
from ilt.config import ConfigError, LoraSection, RoundConfig, config_hash, load_round, to_dict
from ilt.errors import IltInputError
from ilt.utils import atomic_dir, write_json_atomic

log = logging.getLogger("ilt")

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ROUND_YAML = "round.yaml"
SCORE_JSON = "score.json"
MANIFESTS_JSON = "manifests.json"
LINEAGE_JSON = "lineage.json"

#: Tolerance on the sum of history-merge weights.
WEIGHT_SUM_TOLERANCE = 1e-6


def lora_config(backbone: Any, lora: LoraSection) -> Any:
    """The ``peft.LoraConfig`` of a round: the scope resolved by ``backbone``."""
    from peft import LoraConfig

    targets = backbone.target_modules(lora.target_modules)
    return LoraConfig(**lora.peft_kwargs(list(targets)))


def attach_lora(backbone: Any, lora: LoraSection) -> Any:
    """Wrap ``backbone.model`` in a PEFT model with a fresh LoRA per ``lora``.

    Only the LoRA weights are trainable afterwards. The LoRA initialisation
    draws from torch's global RNG: seed it first for a reproducible start.

    :raises ValueError: from the backbone when no module matches the targets.
    """
    from peft import get_peft_model

    model = get_peft_model(backbone.model, lora_config(backbone, lora))
    trainable, total = model.get_nb_trainable_parameters()
    log.info("LoRA r=%d on %s: %d trainable of %d parameters (%.3f%%)", lora.r,
             ",".join(sorted(model.peft_config["default"].target_modules)), trainable, total,
             100.0 * trainable / max(total, 1))
    return model


# --------------------------------------------------------------------------- adapter dirs


def read_adapter_round(adapter_dir: str | Path) -> RoundConfig:
    """The resolved round config saved beside an adapter (``round.yaml``)."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise IltInputError(f"{adapter_dir}: not an adapter directory (no {ADAPTER_CONFIG})")
    path = adapter_dir / ROUND_YAML
    if not path.is_file():
        raise IltInputError(
            f"{adapter_dir}: no {ROUND_YAML} beside the adapter; it names the backbone and the round "
            f"(adapters written by `ilt train` have one)")
    try:
        return load_round(path)
    except ConfigError as exc:
        raise IltInputError(str(exc)) from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe_manifests(sources: Sequence[tuple[Any, ...]], role: str = "train") -> list[dict[str, Any]]:
    """``[{role, cuts, weight, languages, sha256}]`` for each ``(path, weight[,
    languages])``; ``sha256`` is ``None`` for a file that cannot be read
    (noted, not fatal)."""
    out = []
    for path, weight, *rest in sources:
        path = Path(path)
        try:
            digest = sha256_file(path)
        except OSError as exc:
            log.warning("cannot hash manifest %s: %s", path, exc)
            digest = None
        out.append({"role": role, "cuts": str(path.resolve()), "weight": weight,
                    "languages": rest[0] if rest else None, "sha256": digest})
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise IltInputError(f"{path}: cannot read JSON: {exc}") from None


# --------------------------------------------------------------------------- merging


def _stored_dtype(model_dir: Path) -> Any:
    """The floating-point dtype a Hugging Face checkpoint was saved in
    (``config.json``'s ``dtype`` or ``torch_dtype``), if it says."""
    import torch

    config = _read_json(model_dir / "config.json") or {}
    name = config.get("dtype") or config.get("torch_dtype") if isinstance(config, dict) else None
    dtype = getattr(torch, str(name), None) if name else None
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else None



def _check_weights(history: Sequence[Any], weights: Sequence[float] | None) -> list[float]:
    n = len(history) + 1
    if weights is None:
        if history:
            raise ValueError(f"a history merge needs {n} weights (the new model first, then "
                             f"{len(history)} previous model(s)); none given")
        return [1.0]
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"history merge: {len(weights)} weight(s) for {n} model(s) (the new model "
                         f"first, then {len(history)} previous model(s)); give one weight per model")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"history merge: weights must be finite and non-negative, got {weights}")
    if abs(sum(weights) - 1.0) > WEIGHT_SUM_TOLERANCE:
        raise ValueError(f"history merge: weights must sum to 1, got {weights} (sum {sum(weights):.6g})")
    return weights


def _history_average(backbone_name: str, merged: Any, history: Sequence[Path], weights: list[float]) -> None:
    """Set ``merged``'s floating-point weights to ``Σ φ_k M_{t-k}`` in place (paper Eq. 3)."""
    import torch

    from ilt.plugins import create

    own = merged.state_dict()
    acc = {k: v.detach().to(torch.float64) * weights[0] for k, v in own.items() if v.is_floating_point()}
    for phi, model_dir in zip(weights[1:], history):
        other = create("backbone", backbone_name, model_dir, dtype=torch.float32, device="cpu")
        theirs = other.model.state_dict()
        missing = sorted(set(own) - set(theirs))
        extra = sorted(set(theirs) - set(own))
        if missing or extra:
            raise IltInputError(
                f"history merge: {model_dir} has a different architecture: "
                f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}")
        for key, value in own.items():
            if theirs[key].shape != value.shape:
                raise IltInputError(f"history merge: {model_dir}: {key} has shape "
                                    f"{tuple(theirs[key].shape)}, the new model {tuple(value.shape)}")
            if key in acc:
                acc[key] += theirs[key].detach().to(torch.float64) * phi
            elif not torch.equal(theirs[key], value):
                raise IltInputError(f"history merge: {model_dir}: non-float tensor {key} differs")
        del other, theirs
    with torch.no_grad():
        for key, value in acc.items():
            own[key].copy_(value.to(own[key].dtype))


def merge_adapter(
    model_dir: str | Path,
    adapter_dir: str | Path,
    out_dir: str | Path,
    *,
    history: Sequence[str | Path] | None = None,
    weights: Sequence[float] | None = None,
    overwrite: bool = False,
) -> Path:
    """Merge the LoRA in ``adapter_dir`` into the model in ``model_dir``; write a
    full model and ``lineage.json`` to ``out_dir`` atomically; return ``out_dir``.

    :param history: previous full model directories ``M_{t-1}, M_{t-2}, ...``
        for the paper's history-weighted merge ``M_t = Σ_k φ_k M_{t-k}``.
    :param weights: ``φ_0`` (the newly merged model) followed by one weight per
        ``history`` entry; non-negative, summing to 1. ``[1.0]`` with no
        history is the plain merge.
    :param overwrite: replace an existing non-empty ``out_dir``.
    :raises IltInputError: missing directories, an adapter without its round
        config, a history model of another architecture.
    :raises ValueError: bad weights.
    """
    import torch
    from peft import PeftModel

    from ilt.plugins import create

    model_dir, adapter_dir, out_dir = Path(model_dir), Path(adapter_dir), Path(out_dir)
    history = [Path(h) for h in (history or [])]
    phis = _check_weights(history, weights)
    for path in [model_dir, *history]:
        if not path.is_dir():
            raise IltInputError(f"{path}: model directory not found")
    if not adapter_dir.is_dir():
        raise IltInputError(f"{adapter_dir}: adapter directory not found")
    if out_dir.resolve() in {p.resolve() for p in [model_dir, adapter_dir, *history]}:
        raise IltInputError(f"{out_dir}: the output must be a new directory, not an input of the merge")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise IltInputError(f"{out_dir}: exists and is not empty; choose another --out or overwrite it")
    config = read_adapter_round(adapter_dir)

    backbone = create("backbone", config.backbone, model_dir, dtype=torch.float32, device="cpu")
    model = PeftModel.from_pretrained(backbone.model, str(adapter_dir))
    merged = model.merge_and_unload(safe_merge=True)
    merged.eval()
    if len(history):
        _history_average(config.backbone, merged, history, phis)
    stored = _stored_dtype(model_dir)
    if stored is not None and stored != torch.float32:  # merged in fp32, saved as the base was
        merged.to(stored)

    manifests = _read_json(adapter_dir / MANIFESTS_JSON)
    if manifests is None:  # an adapter from elsewhere: hash what its config names
        manifests = describe_manifests([(d.cuts, d.weight, d.languages) for d in config.task.data])
    lineage = {
        "ilt_version": __version__,
        "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "base": str(model_dir.resolve()),
        "adapter": str(adapter_dir.resolve()),
        "round": config.name,
        "backbone": config.backbone,
        "config_hash": config_hash(config),
        "config": to_dict(config),
        "data": manifests,
        "dev_score": _read_json(adapter_dir / SCORE_JSON),
        "history_merge": (
            {"models": ["(this merge)", *(str(h.resolve()) for h in history)], "weights": phis}
            if history else None),
        "parent": _read_json(model_dir / LINEAGE_JSON),
    }

    with atomic_dir(out_dir) as tmp:  # an existing out_dir is replaced only once this one is complete
        backbone.save(merged, tmp)
        write_json_atomic(tmp / LINEAGE_JSON, lineage)
    log.info("merged %s + %s -> %s", model_dir, adapter_dir, out_dir)
    return out_dir
