"""What a backbone is: the only model-specific code in ``ilt``.

A backbone plugin registers a factory ``factory(model_dir, *, dtype=None,
device=None) -> Backbone`` through ``ilt_register_backbones`` (optionally
with ``tokenizer_only=True``: a light object with only ``name`` and
:meth:`Backbone.tokenize`, no weights read). Everything else
(training loop, merging, decoding orchestration, voting, scoring) only talks to
this protocol, so a new model family is one plugin module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from ilt.errors import IltInputError

#: LoRA scopes every backbone understands (the round YAML's ``target_modules``).
SCOPES = ("attention", "wide")


@dataclass
class Batch:
    """A collated training or evaluation batch.

    ``tensors`` goes to the model (features, labels, attention masks...);
    ``cut_ids`` lists the cuts it holds, in order; ``skipped`` maps the IDs of
    cuts dropped while collating to the reason (unreadable audio, text too
    long...), for counting and logging by the caller. ``languages`` is each
    held cut's language (its first supervision's), in order: what a loss
    that treats languages apart reads (``distill``: each cut's teacher); a
    backbone that does not fill it leaves it empty.
    """

    tensors: dict[str, Any]
    cut_ids: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    languages: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.cut_ids)

    def to(self, device: Any) -> "Batch":
        moved = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in self.tensors.items()}
        return Batch(moved, self.cut_ids, self.skipped, self.languages)


@runtime_checkable
class Backbone(Protocol):
    """A loaded speech foundation model plus its processor."""

    #: the registered name (``whisper``)
    name: str
    #: the underlying ``transformers`` model (a ``torch.nn.Module``)
    model: Any
    #: audio sampling rate the model expects
    sampling_rate: int
    #: longest audio (seconds) the model takes in one window; longer audio is
    #: chunked by the caller
    max_input_seconds: float

    def target_modules(self, spec: str | Sequence[str]) -> list[str]:
        """Module names for a LoRA: ``spec`` is a scope from :data:`SCOPES` or
        explicit names. Raises ``ValueError`` listing what exists when nothing
        matches."""

    def collate(self, cuts: Any) -> Batch:
        """Turn a Lhotse ``CutSet`` (with text and language on the first
        supervision) into a training batch with masked label padding."""

    def loss(self, model: Any, batch: Batch, *, label_smoothing: float = 0.0) -> Any:
        """The generative cross-entropy loss of ``batch`` under ``model`` (a
        scalar tensor, the mean over label tokens); ``model`` may be the
        PEFT-wrapped model. ``label_smoothing`` in ``[0, 1)`` is the weight of
        the uniform distribution mixed into the targets, as in
        ``torch.nn.functional.cross_entropy`` (the ``ce`` loss's option); at 0
        the loss is the plain cross-entropy."""

    def features(self, audios: Sequence[np.ndarray]) -> dict[str, Any]:
        """Model inputs for raw mono audio at :attr:`sampling_rate`, each at
        most :attr:`max_input_seconds` long."""

    def generate(self, model: Any, inputs: dict[str, Any], *, language: str | None,
                 num_beams: int = 1, max_new_tokens: int = 440, **kwargs: Any) -> list[str]:
        """Decode one batch of ``features()`` output in ``language`` (``None``:
        let the model decide) and return the hypothesis texts."""

    def score(self, model: Any, inputs: dict[str, Any], texts: Sequence[str], *,
              language: str | None) -> list[tuple[float, int]]:
        """The confidence of hypotheses: for each text, its mean token
        log-probability given its audio (one batch of ``features()`` output,
        in order) and the number of tokens scored, teacher-forced over the
        tokens training would use for that text (so any search method's
        output, and any pseudo-label, is scored alike)."""

    def tokenize(self, text: str, language: str | None = None) -> list[str]:
        """The tokenizer's pieces for a transcript, exactly the text tokens
        training would use for it (no prompt or special tokens), as readable
        strings: what token-frequency analysis counts."""

    def save(self, model: Any, out_dir: str | Path) -> None:
        """Write a full model (safetensors) plus its processor to ``out_dir``."""


@runtime_checkable
class SupportsLanguageId(Protocol):
    """What a backbone adds for language-ID embeddings (:mod:`ilt.lid`; both
    built-in backbones have it). A backbone without it trains and decodes as
    usual; a round with ``train.lid_embeddings: true`` on it is refused."""

    def lid_modules(self) -> tuple[Any, Any]:
        """``(encoder, lm_head)`` of :attr:`Backbone.model`: the module whose
        output (``last_hidden_state``, width ``config.d_model`` or
        ``config.hidden_size``) gets the encoder-side vector, and the linear
        LM head whose input gets the decoder-side vector."""

    def detect_language(self, model: Any, inputs: dict[str, Any]) -> list[str | None]:
        """The model's own language decision for each input of one
        ``features()`` batch (an ISO 639-1 code, ``None`` when it gives none),
        without language-ID embeddings."""


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
