"""The adapter directory: what a trained LoRA is on disk, written and read in one place.

An adapter directory (a round's ``best/`` and ``final/``, and the ``adapter/``
inside every checkpoint ``checkpoints/step-N/``) holds::

    adapter_config.json adapter_model.safetensors   PEFT save_pretrained
    round.yaml       the resolved round config: backbone, LoRA, task, training
    score.json       the dev score it was selected by, or {"step": N} for a checkpoint
    manifests.json   the data it was trained on: role, manifest, weight, languages, sha256
    input_mode.json  the encoder's input mode in training: padded or audio_length (ilt.models.encoder_length)

``round.yaml`` names the backbone, so an adapter directory is enough to rebuild
the PEFT model on top of its base (:func:`load_adapter`) or to merge it
(:func:`ilt.training.lora.merge_adapter`): any checkpoint of any step can serve as an
extra model (voting, history merges) without being merged first.

``manifests.json`` names each manifest as given in the config (relative paths
stay relative) plus its sha256: the data's identity, not where it lay.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from ilt.config import ConfigError, RoundConfig, dump_yaml, load_round
from ilt.core.files import (
    atomic_dir,
    read_json,
    sha256_file,
    write_json_atomic,
    write_text_atomic,
)
from ilt.errors import IltInputError
from ilt.models import lid
from ilt.models.encoder_length import model_input_mode
from ilt.models.lineage import INPUT_MODE_JSON, SHORT_HASH

log = logging.getLogger("ilt")

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ROUND_YAML = "round.yaml"
SCORE_JSON = "score.json"
MANIFESTS_JSON = "manifests.json"
#: the adapter directory inside a training checkpoint ``checkpoints/step-N/``
CHECKPOINT_ADAPTER = "adapter"


def describe_manifests(sources: Sequence[tuple[Any, ...]], role: str = "train") -> list[dict[str, Any]]:
    """``[{role, cuts, weight, languages, sha256}]`` for each ``(path, weight[,
    languages])``. ``cuts`` is the path as given; ``sha256`` is ``None`` for a
    file that cannot be read (noted, not fatal)."""
    out = []
    for path, weight, *rest in sources:
        try:
            digest = sha256_file(path)
        except OSError as exc:
            log.warning("cannot hash manifest %s: %s", path, exc)
            digest = None
        out.append({"role": role, "cuts": str(path), "weight": weight,
                    "languages": rest[0] if rest else None, "sha256": digest})
    return out


def save_adapter(model: Any, dst: str | Path, config: RoundConfig, manifests: list[dict[str, Any]] | None,
                 score: dict[str, Any], state_dict: dict[str, Any] | None = None) -> Path:
    """Write an adapter directory atomically: ``model`` (a PEFT model) saves its
    LoRA weights (from ``state_dict``, the model's whole state gathered from
    sharded processes, when given), then ``round.yaml``, ``score.json`` and ``manifests.json``."""
    dst = Path(dst)
    with atomic_dir(dst) as tmp:
        write_adapter_files(model, tmp, config, manifests, score, state_dict)
    return dst


def write_adapter_files(model: Any, directory: str | Path, config: RoundConfig,
                        manifests: list[dict[str, Any]] | None, score: dict[str, Any],
                        state_dict: dict[str, Any] | None = None) -> None:
    """The files of an adapter directory, written into an existing (temporary) ``directory``."""
    directory = Path(directory)
    model.save_pretrained(str(directory), safe_serialization=True, state_dict=state_dict)
    lid.save_trained(model, directory)  # language-ID embeddings this round trains (ilt.models.lid)
    write_json_atomic(directory / SCORE_JSON, score)
    write_text_atomic(directory / ROUND_YAML, dump_yaml(config))
    write_json_atomic(directory / INPUT_MODE_JSON, {"input_mode": model_input_mode(model)})
    if manifests is not None:
        write_json_atomic(directory / MANIFESTS_JSON, manifests)


def resolve_adapter_dir(path: str | Path) -> Path:
    """The adapter directory ``path`` names: itself, or the ``adapter/`` of a
    training checkpoint ``checkpoints/step-N``.

    :raises IltInputError: when neither holds ``adapter_config.json``.
    """
    path = Path(path)
    if (path / ADAPTER_CONFIG).is_file():
        return path
    if (path / CHECKPOINT_ADAPTER / ADAPTER_CONFIG).is_file():
        return path / CHECKPOINT_ADAPTER
    if not path.is_dir():
        raise IltInputError(f"{path}: adapter directory not found")
    raise IltInputError(f"{path}: not an adapter directory (no {ADAPTER_CONFIG}); give a round's best/ or "
                        f"final/, or a checkpoint checkpoints/step-N")


def read_adapter_round(adapter_dir: str | Path) -> RoundConfig:
    """The resolved round config saved beside an adapter (``round.yaml``)."""
    adapter_dir = resolve_adapter_dir(adapter_dir)
    path = adapter_dir / ROUND_YAML
    if not path.is_file():
        raise IltInputError(
            f"{adapter_dir}: no {ROUND_YAML} beside the adapter; it names the backbone and the round "
            f"(adapters and checkpoints written by `ilt train` have one)")
    try:
        return load_round(path)
    except ConfigError as exc:
        raise IltInputError(str(exc)) from None


def adapter_provenance(adapter_dir: str | Path) -> dict[str, Any]:
    """What an adapter is: its round config, its data and its dev score, plus a
    short hash of its weights (no local path)."""
    adapter_dir = resolve_adapter_dir(adapter_dir)
    config = read_adapter_round(adapter_dir)
    manifests = read_json(adapter_dir / MANIFESTS_JSON)
    if manifests is None:  # an adapter from elsewhere: hash what its config names
        manifests = describe_manifests([(d.cuts, d.weight, d.languages) for d in config.task.data])
    weights = adapter_dir / ADAPTER_WEIGHTS
    return {
        "config": config,
        "data": manifests,
        "dev_score": read_json(adapter_dir / SCORE_JSON),
        "sha256": sha256_file(weights)[:SHORT_HASH] if weights.is_file() else None,
    }


def load_adapter(backbone: Any, adapter_dir: str | Path, *, trainable: bool = False) -> Any:
    """``backbone.model`` wrapped in a PEFT model holding the adapter, unmerged.

    :raises IltInputError: a missing adapter, one trained for another backbone,
        or weights that do not fit the model.
    """
    from peft import PeftModel

    adapter_dir = resolve_adapter_dir(adapter_dir)
    config = read_adapter_round(adapter_dir)
    if config.backbone.name != backbone.name:
        raise IltInputError(f"{adapter_dir}: a LoRA for backbone {config.backbone.name!r}, not {backbone.name!r}")
    try:
        model = PeftModel.from_pretrained(backbone.model, str(adapter_dir), is_trainable=trainable)
    except (KeyError, RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise IltInputError(f"{adapter_dir}: the adapter does not fit this model: {type(exc).__name__}: "
                            f"{first}") from None
    embeddings = lid.attach_saved(backbone, adapter_dir)  # trained with this LoRA, if the round had them
    if embeddings is not None and trainable:
        embeddings.requires_grad_(True)
    return model


def load_adapters(base_model: Any, adapters: Mapping[str, str | Path], *,
                  labels: Mapping[str, str] | None = None, progress: str | None = None) -> Any:
    """``base_model`` wrapped in one PEFT model holding every adapter of
    ``adapters`` (``{adapter name: adapter directory}``) under its name, frozen,
    in eval mode: LoRA experts decoded together (:mod:`ilt.experts.train`) or
    fused (:mod:`ilt.experts.fusion`).

    :param labels: how errors name each adapter (default ``adapter 'name'``).
    :param progress: the description of a progress bar over the adapters (``None``: no bar).
    :raises IltInputError: weights that do not fit the model (the message names the directory).
    :raises ValueError: no adapters.
    """
    from peft import PeftModel
    from tqdm.auto import tqdm

    if not adapters:
        raise ValueError("load_adapters: no adapters to load")
    model = None
    for name, directory in tqdm(list(adapters.items()), desc=progress, unit="adapter",
                                disable=True if progress is None else None):
        try:
            if model is None:
                model = PeftModel.from_pretrained(base_model, str(directory), adapter_name=name)
            else:
                model.load_adapter(str(directory), adapter_name=name)
        except (KeyError, RuntimeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            label = (labels or {}).get(name, f"adapter {name!r}")
            raise IltInputError(f"{directory}: {label} does not fit this model: {type(exc).__name__}: "
                                f"{first}") from None
    model.eval()
    model.requires_grad_(False)
    return model
