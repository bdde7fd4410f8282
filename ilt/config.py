"""Strict configuration: every YAML the project reads is loaded into dataclasses.

An unknown or misspelled key, a wrong type or an out-of-range value raises
:class:`ConfigError` naming the file and the dotted key. Constraints live next
to each field in ``metadata`` (``min``, ``max``, ``choices``) so the schema is
read in one place.

The ``lora:`` block's keys are PEFT ``LoraConfig`` arguments; ``target_modules``
may also be a scope name (``attention`` or ``wide``) that the backbone expands.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A configuration file is invalid. The message names the file and the key."""


def _field(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
           help: str = "", **constraints: Any) -> Any:
    return field(default=default, default_factory=default_factory,
                 metadata={"help": help, **constraints})


# ---------------------------------------------------------------------------
# Schemas


@dataclass
class LoraSection:
    """PEFT ``LoraConfig`` arguments for one round."""

    r: int = _field(16, min=1, help="LoRA rank")
    lora_alpha: float = _field(32.0, min=0, help="LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = _field(0.05, min=0.0, max=1.0)
    target_modules: Union[str, list[str]] = _field(
        "attention", help="a backbone scope (attention, wide) or explicit module names")
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = False
    init_lora_weights: bool = True

    def peft_kwargs(self, target_modules: list[str]) -> dict[str, Any]:
        kwargs = dataclasses.asdict(self)
        kwargs["target_modules"] = target_modules
        return kwargs


@dataclass
class DataSource:
    """One entry of a knowledge task's data mix."""

    cuts: str = _field(help="path of a Lhotse CutSet manifest (jsonl.gz)")
    weight: float = _field(1.0, min=0.0, help="sampling weight in CutSet.mux")
    languages: Union[list[str], None] = _field(
        None, help="keep only cuts in these ISO 639-1 languages (default: all)")


@dataclass
class TaskSection:
    """A knowledge task: a loss plus a weighted data mix."""

    loss: str = _field("ce", help="name of a registered loss")
    data: list[DataSource] = _field(default_factory=list)


@dataclass
class TrainSection:
    epochs: int = _field(1, min=1)
    max_steps: Union[int, None] = _field(None, min=1, help="stop after this many optimiser steps")
    lr: float = _field(1e-5, min=0.0)
    weight_decay: float = _field(0.0, min=0.0)
    warmup_steps: int = _field(0, min=0)
    micro_batch: int = _field(16, min=1, help="cuts per forward pass")
    max_duration: Union[float, None] = _field(
        None, min=0.0, help="seconds of audio per micro-batch (dynamic bucketing); overrides micro_batch")
    grad_accum: int = _field(1, min=1)
    max_grad_norm: float = _field(1.0, min=0.0)
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    seed: int = 0
    eval_every: Union[int, None] = _field(None, min=1, help="optimiser steps between dev evaluations; default once per epoch")
    save_every: Union[int, None] = _field(None, min=1, help="optimiser steps between checkpoints; default eval_every")
    num_buckets: int = _field(10, min=1, help="duration buckets of the sampler; fewer when the data cannot fill each "
                              "with 2 full micro-batches; 1: no bucketing")
    num_workers: int = _field(0, min=0)
    gradient_checkpointing: bool = False
    max_dev_cuts: Union[int, None] = _field(
        None, min=1, help="decode at most this many dev cuts (evenly spaced over the set) per evaluation")


@dataclass
class SelectSection:
    metric: Literal["dev_wer", "dev_loss"] = "dev_wer"


@dataclass
class RoundConfig:
    """One ILT round (Focus, Feedback, Fix): a LoRA, a knowledge task, training."""

    name: str = _field(help="round name, used in lineage")
    backbone: str = _field("whisper", help="name of a registered backbone")
    lora: LoraSection = _field(default_factory=LoraSection)
    task: TaskSection = _field(default_factory=TaskSection)
    train: TrainSection = _field(default_factory=TrainSection)
    select: SelectSection = _field(default_factory=SelectSection)


@dataclass
class DecodeConfig:
    """Decoding options (``conf/decode.yaml``)."""

    backbone: str = _field("whisper", help="name of a registered backbone")
    beam_size: dict[str, int] = _field(
        default_factory=lambda: {"default": 6, "ja": 1, "th": 1, "vi": 1},
        help="beam size per ISO 639-1 language; 'default' for the rest", min=1)
    batch_size: int = _field(16, min=1)
    max_new_tokens: int = _field(440, min=1)
    chunk_seconds: float = _field(30.0, min=1.0, help="split longer audio evenly into chunks of at most this")
    length_penalty: float = 1.0
    compression_ratio_threshold: Union[float, None] = _field(
        2.4, min=1.0, help="gzip compression ratio above which a hypothesis counts as a repetition loop")
    fallback_temperatures: list[float] = _field(
        default_factory=lambda: [0.2, 0.4, 0.6], min=0.0,
        help="sampling temperatures tried in turn when a hypothesis loops")
    no_repeat_ngram_size: int = _field(0, min=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"

    def beam_for(self, language: str | None) -> int:
        return self.beam_size.get(language or "", self.beam_size.get("default", 1))


#: Which schema a file is checked against, by the top-level keys it has.
SCHEMAS: dict[str, type] = {"round": RoundConfig, "decode": DecodeConfig}


# ---------------------------------------------------------------------------
# Loading


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"mapping of {_type_name(typing.get_args(tp)[1])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str, meta: dict[str, Any]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        if len(candidates) == 1:  # Optional[X]: report X's own error (range, type)
            return _convert(value, candidates[0], where, meta)
        for arg in candidates:
            try:
                return _convert(value, arg, where, meta)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{where}[{i}]", meta) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        _, item = typing.get_args(tp)
        return {str(k): _convert(v, item, f"{where}.{k}", meta) for k, v in value.items()}
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
    else:  # pragma: no cover - a schema bug, not a user error
        raise TypeError(f"unsupported schema type {tp!r} at {where}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{where}: {value!r} is below the minimum {meta['min']!r}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{where}: {value!r} is above the maximum {meta['max']!r}")
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{where}: {value!r} is not one of {meta['choices']!r}")
    return value


def _suggest(key: str, known: list[str]) -> str | None:
    """The known key a typo most likely meant: shared word parts first, then spelling."""
    parts = set(key.lower().replace("-", "_").split("_"))
    by_parts = [k for k in known if parts & set(k.split("_")) and (k in key or key in k)]
    if by_parts:
        return min(by_parts, key=lambda k: abs(len(k) - len(key)))
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return close[0] if close else None


def _build(cls: type, data: Any, where: str) -> Any:
    prefix = f"{where}." if where else ""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'top level'}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            close = _suggest(str(key), list(fields))
            hint = f" (did you mean {close!r}?)" if close else ""
            raise ConfigError(
                f"{prefix}{key}: unknown key{hint}; known keys: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], f"{prefix}{name}", dict(f.metadata))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{prefix}{name}: required key is missing")
    return cls(**kwargs)


def from_dict(cls: type, data: dict[str, Any], source: str | Path = "<dict>") -> Any:
    """Build ``cls`` from ``data``; errors are prefixed with ``source``."""
    try:
        return _build(cls, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open() as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        raise ConfigError(f"{path}: file is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load(path: str | Path, cls: type) -> Any:
    """Load and validate one YAML file into ``cls``."""
    return from_dict(cls, read_yaml(path), path)


def apply_overrides(data: dict[str, Any], overrides: Any, source: str = "--override") -> dict[str, Any]:
    """Set dotted keys (``train.max_steps=10``) in a parsed config; values are YAML."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{source}: {item!r} is not KEY=VALUE")
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{source}: {key}: {part!r} is not a mapping")
            node = child
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: {key}: value {raw!r} is not valid YAML: {exc}") from None
    return data


def load_with_overrides(path: str | Path | None, cls: type, overrides: Any = ()) -> Any:
    """Load ``path`` (or the defaults when ``None``) with command-line overrides applied."""
    data = read_yaml(path) if path is not None else {}
    source = f"{path} (with overrides {' '.join(overrides)})" if overrides else (path or "<defaults>")
    return from_dict(cls, apply_overrides(data, overrides), source)


def load_round(path: str | Path) -> RoundConfig:
    return load(path, RoundConfig)


def load_decode(path: str | Path | None) -> DecodeConfig:
    return DecodeConfig() if path is None else load(path, DecodeConfig)


def schema_for(data: dict[str, Any]) -> type:
    """The schema of a parsed file, recognised by its top-level keys."""
    if "lora" in data or "task" in data or "train" in data:
        return RoundConfig
    return DecodeConfig


def check_file(path: str | Path) -> Any:
    """Validate any project YAML, choosing its schema from its content."""
    data = read_yaml(path)
    return from_dict(schema_for(data), data, path)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_hash(config: Any) -> str:
    """A stable short hash of a resolved config, for lineage."""
    blob = json.dumps(to_dict(config), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)
