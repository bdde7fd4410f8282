"""Strict configuration: every YAML the project reads is loaded into dataclasses.

An unknown or misspelled key, a wrong type or an out-of-range value raises
:class:`ConfigError` naming the file and the dotted key. Constraints live next
to each field in ``metadata`` (``min``, ``max``, ``choices``) so the schema is
read in one place.

The ``lora:`` block's keys are PEFT ``LoraConfig`` arguments; ``target_modules``
may also be a scope name (``attention`` or ``wide``) that the backbone expands.

A component chosen by name (``backbone``, ``task.loss``) is a
:class:`ComponentSpec`, written either as a plain name (``loss: ce``) or as a
mapping of the name plus the factory's options (``loss: {name: ce,
label_smoothing: 0.1}``). The schema only checks the form;
:func:`check_components` (run by ``ilt config check``) checks the name and the
options against the registered factory.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import inspect
import json
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ilt.core.specs import split_component
from ilt.errors import ConfigError  # noqa: F401  (re-exported: ilt.config.ConfigError is public)


def _field(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
           help: str = "", **constraints: Any) -> Any:
    return field(default=default, default_factory=default_factory,
                 metadata={"help": help, **constraints})


# ---------------------------------------------------------------------------
# Components


@dataclass(frozen=True)
class ComponentSpec:
    """A component chosen in YAML: a registered ``name`` plus its factory's ``options``.

    YAML forms: ``loss: ce`` (no options) or ``loss: {name: ce, label_smoothing:
    0.1}`` (every key but ``name`` is an option, so no factory option may be
    called ``name``). :meth:`to_yaml` writes the plain name back when there are
    no options, so configs and their hashes look as they did before options
    existed. ``str(spec)`` is the name, for logs; JSON and YAML use
    :func:`to_dict`.
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.name

    def to_yaml(self) -> str | dict[str, Any]:
        """The plain name without options, else ``{name: ..., **options}``."""
        if not self.options:
            return self.name
        return {"name": self.name, **copy.deepcopy(self.options)}

    @classmethod
    def from_yaml(cls, value: Any, where: str = "component") -> ComponentSpec:
        """Parse either YAML form (:func:`ilt.core.specs.split_component`, the
        one parser of specs); a :class:`ConfigError` names ``where``."""
        if isinstance(value, cls):
            return value
        name, options = split_component(value, where)
        return cls(name, copy.deepcopy(options))


def _spec_field(default: str, kind: str, help: str) -> Any:
    return _field(default_factory=lambda: ComponentSpec(default), kind=kind,
                  help=f"{help}: a name, or {{name: NAME, OPTION: VALUE, ...}}")


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


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(value: str, key: str) -> str:
    """``${NAME}`` and ``${NAME:-default}`` in a path, from the environment
    (a recipe exports, e.g., ``ILT_EXP_DIR`` so a round YAML can name what an
    earlier stage of the same experiment wrote). An unset name without a
    default is a :class:`ConfigError`."""
    def value_of(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise ConfigError(f"{key}: {match.group(0)} is not set in the environment; export {name} "
                              f"or write ${{{name}:-DEFAULT}}")
        return default

    return _ENV_REFERENCE.sub(value_of, value) if isinstance(value, str) else value


@dataclass
class DataSource:
    """One entry of a knowledge task's data mix."""

    cuts: str = _field(help="path of a Lhotse CutSet manifest (jsonl.gz), or shar:DIR for a Lhotse Shar directory")
    weight: float = _field(1.0, min=0.0, help="sampling weight in CutSet.mux")
    languages: Union[list[str], None] = _field(
        None, help="keep only cuts in these ISO 639-1 languages (default: all)")
    weight_by: Literal["share", "hours"] = _field(
        "share", help="share: weight is the source's share of the stream; hours: its audio comes out in "
                      "proportion to weight x its hours (every source of a mix says the same)")

    def __post_init__(self) -> None:
        self.cuts = expand_env(self.cuts, "cuts")


@dataclass
class TaskSection:
    """A knowledge task: a loss plus a weighted data mix."""

    loss: ComponentSpec = _spec_field("ce", "loss", "a registered loss")
    data: list[DataSource] = _field(default_factory=list)

    def __post_init__(self) -> None:
        self.loss = ComponentSpec.from_yaml(self.loss, "task.loss")
        kinds = [source.weight_by for source in self.data]
        for i, kind in enumerate(kinds):
            if kind != kinds[0]:  # a share and a number of hours are not comparable
                raise ConfigError(f"task.data[{i}].weight_by: {kind!r}, but task.data[0] has {kinds[0]!r}; "
                                  f"weight every source of a mix the same way")


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
    max_cuts: Union[int, None] = _field(
        None, min=1, help="with max_duration: at most this many cuts per micro-batch (a padded Whisper costs "
                          "30 s per cut, however short); null: no limit")
    grad_accum: int = _field(1, min=1)
    max_grad_norm: float = _field(1.0, min=0.0)
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    seed: int = 0
    eval_every: Union[int, None] = _field(None, min=1, help="optimiser steps between dev evaluations; default once per epoch")
    save_every: Union[int, None] = _field(None, min=1, help="optimiser steps between checkpoints; default eval_every")
    num_buckets: int = _field(10, min=1, help="duration buckets of the sampler; fewer when the data cannot fill each "
                              "with 2 full micro-batches; 1: no bucketing")
    num_workers: int = _field(0, min=0, help="data-loader worker processes that load audio and compute "
                                         "features (ilt.training.loader); 0: the training process itself")
    gradient_checkpointing: Union[bool, Literal["auto"]] = _field(
        "auto", help="recompute activations in the backward pass; auto: on when the backbone has more than "
                     "300M parameters (ilt.training.sizing)")
    optimizer: Literal["adamw", "adamw8bit"] = _field(
        "adamw", help="adamw: torch's AdamW; adamw8bit: bitsandbytes' 8-bit AdamW (pip install 'ilt[opt8bit]')")
    lid_embeddings: bool = _field(
        False, help="learn one vector per language added to the encoder output and to the decoder's last "
                    "hidden state (paper 3.2.3; ilt.models.lid), trained fully and saved with the adapter")
    max_dev_cuts: Union[int, None] = _field(
        None, min=1, help="decode at most this many dev cuts (evenly spaced over the set) per evaluation")


@dataclass
class SelectSection:
    """How the best adapter is chosen: the metric, and the dev decoding that scores it."""

    metric: Literal["dev_wer", "dev_loss"] = "dev_wer"
    patience: Union[int, None] = _field(
        None, min=1, help="early stopping: end the round after this many dev evaluations in a row without a new "
                          "best (by more than min_delta); max_steps (or epochs) stays the cap; null: no early stop")
    min_delta: float = _field(
        0.0, min=0.0, help="with patience: how much lower than the best the metric must be to reset the patience "
                           "(the best adapter is still the lowest value)")
    include_start: bool = _field(
        True, help="score the incoming model on dev before the first step (its LoRA is PEFT's initialisation, "
                   "which changes nothing); when no trained checkpoint scores lower, best/ is that no-op adapter "
                   "and merging the round changes nothing. The patience compares trained checkpoints only; "
                   "false: only trained checkpoints compete")
    decode: Union[DecodeConfig, None] = _field(
        None, help="the dev decoding's options (conf/decode.yaml's keys; its backbone is the round's); "
                   "null: greedy. ilt train --decode-config replaces it")


@dataclass
class RoundConfig:
    """One ILT round (Focus, Feedback, Fix): a LoRA, a knowledge task, training."""

    name: str = _field(help="round name, used in lineage")
    backbone: ComponentSpec = _spec_field("whisper", "backbone", "a registered backbone")
    lora: LoraSection = _field(default_factory=LoraSection)
    task: TaskSection = _field(default_factory=TaskSection)
    train: TrainSection = _field(default_factory=TrainSection)
    select: SelectSection = _field(default_factory=SelectSection)

    def __post_init__(self) -> None:
        self.backbone = ComponentSpec.from_yaml(self.backbone, "backbone")
        if self.select.decode is not None:  # the dev decoding runs the round's own backbone
            self.select.decode.backbone = self.backbone


@dataclass
class ExpertsSection:
    """Which languages get a LoRA expert (``ilt experts train``, :mod:`ilt.experts.train`)."""

    languages: Union[list[str], None] = _field(
        None, help="train an expert for each of these ISO 639-1 languages (each must have training cuts); "
                   "default: every language of the training cuts with at least min_cuts cuts")
    min_cuts: int = _field(1, min=1, help="a language of the training cuts with fewer cuts gets no expert")

    def __post_init__(self) -> None:
        if self.languages is not None:
            from ilt.data.languages import validate_language
            from ilt.errors import ConfigError, IltInputError

            try:
                codes = [validate_language(code, f"experts.languages[{i}]") for i, code in enumerate(self.languages)]
            except IltInputError as exc:
                raise ConfigError(str(exc)) from None
            twice = sorted({c for c in codes if codes.count(c) > 1})
            if twice:
                raise ConfigError(f"experts.languages: {', '.join(twice)} listed twice; list each language once")
            if not codes:
                raise ConfigError("experts.languages: empty; list languages, or remove the key for every "
                                  "language of the training cuts")
            self.languages = codes


@dataclass
class ExpertsConfig(RoundConfig):
    """LoRA language experts (``conf/experts.yaml``): one round per language,
    each on that language's cuts, plus the ``experts:`` section."""

    experts: ExpertsSection = _field(default_factory=ExpertsSection)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.train.lid_embeddings:
            raise ConfigError("train.lid_embeddings: not with language experts (each expert is one language, "
                              "and one decoding batch mixes experts); set it to false")

    def expert_round(self, language: str, data: list[DataSource]) -> RoundConfig:
        """The round config of one language's expert: named ``<name>-<language>``, on ``data``."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(RoundConfig)}
        task = dataclasses.replace(self.task, data=data)
        return RoundConfig(**{**fields, "name": f"{self.name}-{language}", "task": task})


@dataclass
class DecodeConfig:
    """Decoding options (``conf/decode.yaml``)."""

    backbone: ComponentSpec = _spec_field("whisper", "backbone", "a registered backbone")
    beam_size: dict[str, int] = _field(
        default_factory=lambda: {"default": 6, "ja": 1, "th": 1, "vi": 1},
        help="beam size per ISO 639-1 language; 'default' for the rest", min=1)
    batch_size: int = _field(16, min=1, help="most cuts per batch (and per generate call)")
    max_batch_seconds: Union[float, None] = _field(
        None, min=1.0, help="most padded audio per batch, in seconds: the batch's cut count times its longest cut "
                            "(cuts are sorted by duration, so batches of short cuts hold more of them, up to "
                            "batch_size); a longer cut decodes alone; null: batches count cuts only (batch_size)")
    max_new_tokens: int = _field(440, min=1)
    chunk_seconds: float = _field(30.0, min=1.0, help="split longer audio evenly into chunks of at most this")
    length_penalty: float = 1.0
    compression_ratio_threshold: Union[float, None] = _field(
        2.4, min=1.0, help="gzip compression ratio above which a hypothesis counts as a repetition loop")
    fallback_temperatures: list[float] = _field(
        default_factory=lambda: [0.2, 0.4, 0.6], min=0.0,
        help="sampling temperatures tried in turn when a hypothesis loops")
    no_repeat_ngram_size: int = _field(0, min=0)
    tokens_per_second: dict[str, float] = _field(
        default_factory=lambda: {"default": 15.0, "ja": 30.0, "ko": 30.0, "th": 30.0, "zh": 30.0}, min=0.1,
        help="most text tokens per second of audio, per language ('default' for the rest): a hypothesis ends "
             "after ceil(rate x seconds) + token_slack tokens (at most max_new_tokens); {} for max_new_tokens only")
    token_slack: int = _field(16, min=0, help="tokens allowed beyond the duration-based budget")
    loop_tokens: Union[int, None] = _field(
        12, min=2, help="end a hypothesis once its last N (or more) tokens repeat one pattern at least three "
                        "times; null to switch off")
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    language: Literal["given", "detect"] = _field(
        "given", help="given: each cut decodes in its own language; detect: in the language the model detects "
                      "(the cut's own is kept as given_language; decode_stats.json counts the confusions)")
    quantize: Literal["none", "int8"] = _field(
        "none", help="none: the exact path; int8: dynamic int8 quantization of the Linear layers when the model "
                     "is loaded for decoding (CPU only, no unmerged adapter; not for training's dev decoding); "
                     "decode_stats.json records it under numerics")
    quantize_scope: Literal["decoder", "all"] = _field(
        "decoder", help="with quantize: int8, which Linear layers: decoder (every one outside the encoder, the "
                        "output projection included) or all (the encoder's too)")

    def __post_init__(self) -> None:
        self.backbone = ComponentSpec.from_yaml(self.backbone, "backbone")
        if self.quantize == "none" and self.quantize_scope != "decoder":
            raise ConfigError(f"quantize_scope: {self.quantize_scope!r} needs quantize: int8 "
                              f"(quantize is 'none', so nothing is quantized)")

    def beam_for(self, language: str | None) -> int:
        return self.beam_size.get(language or "", self.beam_size.get("default", 1))

    def token_budgets(self, seconds: list[float], language: str | None) -> list[int]:
        """Each input's ``max_new_tokens``: bounded by its duration (see :mod:`ilt.models.generation`)."""
        from ilt.models.generation import token_budget

        rate = self.tokens_per_second.get(language or "", self.tokens_per_second.get("default"))
        if rate is None:
            return [self.max_new_tokens] * len(seconds)
        return [token_budget(s, rate, self.token_slack, self.max_new_tokens) for s in seconds]


#: Which schema a file is checked against, by the top-level keys it has.
SCHEMAS: dict[str, type] = {"round": RoundConfig, "decode": DecodeConfig, "experts": ExpertsConfig}


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
    """``value`` read from YAML as the schema type ``tp``, checked against the
    field's constraints ``meta`` (``min``, ``max``, ``choices``).

    :param where: the dotted key, for errors.
    :raises ConfigError: naming ``where``: a wrong type or an out-of-range value.
    """
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return _convert_union(value, tp, where, meta)
    if origin in (Literal, list, dict):
        return _convert_container(value, tp, where, meta)
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if tp is ComponentSpec:
        return ComponentSpec.from_yaml(value, where)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    value = _convert_scalar(value, tp, where)
    return value if tp is bool else _check_range(value, where, meta)


def _convert_union(value: Any, tp: Any, where: str, meta: dict[str, Any]) -> Any:
    """The first member of the union ``tp`` that ``value`` converts to; an
    ``Optional[X]`` reports ``X``'s own error (range, type)."""
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    candidates = [a for a in args if a is not type(None)]
    if len(candidates) == 1:
        return _convert(value, candidates[0], where, meta)
    for arg in candidates:
        try:
            return _convert(value, arg, where, meta)
        except ConfigError:
            continue
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _convert_container(value: Any, tp: Any, where: str, meta: dict[str, Any]) -> Any:
    """A ``Literal`` value, or a list or mapping converted item by item."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return value
    if not isinstance(value, origin):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{where}[{i}]", meta) for i, v in enumerate(value)]
    _, item = typing.get_args(tp)
    return {str(k): _convert(v, item, f"{where}.{k}", meta) for k, v in value.items()}


def _convert_scalar(value: Any, tp: Any, where: str) -> Any:
    """A ``bool``, ``int``, ``float`` (an integer is widened) or ``str``; YAML's
    ``true`` is no number."""
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
    elif tp is int:
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
    return value


def _check_range(value: Any, where: str, meta: dict[str, Any]) -> Any:
    """``value`` when it meets the field's ``min``, ``max`` and ``choices``."""
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
            if isinstance(child, str):  # a plain component name gains options: task.loss.label_smoothing=0.1
                child = node[part] = {"name": child}
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
    if "experts" in data:  # a round plus the experts: section
        return ExpertsConfig
    if data.keys() & {"name", "lora", "task", "train", "select"}:  # keys only a round has
        return RoundConfig
    return DecodeConfig


def check_file(path: str | Path, *, registry: Any = None) -> Any:
    """Validate any project YAML, choosing its schema from its content.

    :param registry: an :class:`ilt.core.registry.Registry` (``get_registry()``):
        also check component names and options against the registered
        factories (:func:`check_components`).
    """
    data = read_yaml(path)
    config = from_dict(schema_for(data), data, path)
    if registry is not None:
        check_components(config, registry, path)
    return config


# ---------------------------------------------------------------------------
# Components against the plugin registry


def component_specs(config: Any, where: str = "") -> list[tuple[str, str, ComponentSpec]]:
    """Every ``(dotted key, kind, spec)`` in a loaded config, in field order."""
    found = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{where}{f.name}"
        if isinstance(value, ComponentSpec):
            found.append((key, f.metadata["kind"], value))
        elif dataclasses.is_dataclass(value):
            found.extend(component_specs(value, f"{key}."))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    found.extend(component_specs(item, f"{key}[{i}]."))
    return found


def check_components(config: Any, registry: Any, source: str | Path = "<config>") -> None:
    """Check each component's name and options against its factory in
    ``registry`` (an :class:`ilt.core.registry.Registry`; this module does not import
    the plugin layer, the caller hands the registry down).

    Raises :class:`ConfigError` naming ``source`` and the dotted key for an
    unknown name (listing the known ones), an unknown option (listing the
    accepted ones), an option the caller sets itself (a backbone's ``dtype``),
    a missing required option, a value of the wrong type where the factory
    annotates a simple type (``bool``, ``int``, ``float``, ``str``, their
    ``Optional``, ``Literal``, lists and mappings of them), or a value the
    factory's ``validate(options)`` rejects (its range checks: ``conf/fix.yaml:
    pseudo.voter.epsilon: must be in [0, 1], got 1.5``). The components are not built.
    """
    for key, kind, spec in component_specs(config):
        try:
            component = registry.get(kind, spec.name)
        except Exception as exc:  # the registry's PluginError: an unknown name
            raise ConfigError(f"{source}: {key}: {exc}") from None
        problem = _option_problem(component, spec, key)
        if problem:
            raise ConfigError(f"{source}: {problem}")
        try:  # the factory's own range checks, if it has validate(options)
            component.check_options(spec.options, key)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None


def _option_problem(component: Any, spec: ComponentSpec, key: str) -> str | None:
    """The first problem of ``spec``'s options for ``component``, as ``key...: why``."""
    what = f"{component.kind} {component.name!r} (package {component.package!r})"
    accepted = component.options()
    for option, value in spec.options.items():
        if option in component.caller_options():
            return f"{key}.{option}: set by ilt itself, not in the config; remove it"
        if accepted is None:
            continue
        if option not in accepted:
            close = _suggest(option, list(accepted))
            hint = f" (did you mean {close!r}?)" if close else ""
            known = f"accepted options: {', '.join(accepted)}" if accepted else f"{what} takes no options"
            return f"{key}.{option}: unknown option of {what}{hint}; {known}"
        hint_type = component.option_types().get(option)
        if hint_type is not None and _simple_type(hint_type):
            try:
                _convert(value, hint_type, f"{key}.{option}", {})
            except ConfigError as exc:
                return str(exc)
    missing = [name for name, p in (accepted or {}).items()
               if p.default is inspect.Parameter.empty and name not in spec.options]
    if missing:
        return f"{key}: {what} needs option(s) {', '.join(missing)}; write {{name: {spec.name}, {missing[0]}: ...}}"
    return None


def _simple_type(tp: Any) -> bool:
    """Whether :func:`_convert` can check values of ``tp`` (scalars and containers of them)."""
    if tp in (bool, int, float, str, type(None)):
        return True
    origin = typing.get_origin(tp)
    if origin is Literal:
        return True
    if origin in (Union, types.UnionType, list, dict):
        args = typing.get_args(tp)
        if origin is dict and args and args[0] is not str:
            return False
        return bool(args) and all(_simple_type(a) for a in args)
    return False


def _plain(value: Any) -> Any:
    if isinstance(value, ComponentSpec):
        return value.to_yaml()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return copy.deepcopy(value)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain data (for JSON and YAML): components as a name, or ``{name, **options}``."""
    return _plain(config)


def config_hash(config: Any) -> str:
    """A stable short hash of a resolved config, for lineage."""
    blob = json.dumps(to_dict(config), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)
