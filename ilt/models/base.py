"""What every backbone plugin shares: LoRA target names, model unwrapping,
config reading, generation keywords, and :class:`HFBackbone`, the base of the
built-in ``transformers`` backbones (loading, placing, saving)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from ilt.backbone import SCOPES, Batch
from ilt.core.files import atomic_dir, log, read_json
from ilt.errors import IltInputError
from ilt.models import lid
from ilt.models.encoder_length import DEFAULT_PAD_MULTIPLE, input_mode, use_audio_length


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


def stored_dtype(model_dir: str | Path) -> Any:
    """The floating-point ``torch.dtype`` a Hugging Face checkpoint was saved
    in (``config.json``'s ``dtype`` or ``torch_dtype``), or ``None`` when it
    does not say (no ``config.json``, no such key, not a floating-point type)."""
    import torch

    config = read_json(Path(model_dir) / "config.json")
    name = (config.get("dtype") or config.get("torch_dtype")) if isinstance(config, dict) else None
    dtype = getattr(torch, str(name), None) if name else None
    return dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else None


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


class HFBackbone:
    """The part of a :class:`ilt.backbone.Backbone` that any ``transformers``
    speech model with a collator shares: loading safetensors weights, placing
    the model, LoRA targets, features, collating and saving.

    A subclass sets :attr:`name`, :attr:`family` and :attr:`scope_targets`,
    gives itself ``model`` and ``collator`` (an object with ``features(audios,
    device=None)``, ``text_ids(text, language)`` and ``__call__(cuts) ->
    Batch``), and implements :meth:`save_processor` plus the model-specific
    methods (``loss``, ``score``, ``generate``, ``tokenize``).
    """

    #: the registered name (``whisper``)
    name: str = ""
    #: the model family, for messages (``Whisper``)
    family: str = "model"
    #: module leaf names of each LoRA scope of :data:`ilt.backbone.SCOPES`
    scope_targets: dict[str, tuple[str, ...]] = {}
    model: Any
    collator: Any

    # ------------------------------------------------------------------ loading

    @classmethod
    def load_weights(cls, model_class: Any, model_dir: Path, torch_dtype: Any) -> Any:
        """``model_class.from_pretrained`` on a local directory: safetensors
        only, SDPA attention, nothing downloaded.

        :raises IltInputError: weights that cannot be loaded, naming the directory.
        """
        try:
            return model_class.from_pretrained(model_dir, dtype=torch_dtype, attn_implementation="sdpa",
                                               local_files_only=True, use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise IltInputError(f"{model_dir}: cannot load the {cls.family} weights: {exc}") from None

    def finish_loading(self, model_dir: str | Path, device: Any) -> "HFBackbone":
        """Move the model to ``device`` (``None``: leave it on the CPU), then
        attach the language-ID embeddings saved beside it, if any
        (:func:`ilt.models.lid.attach_saved`); return ``self``."""
        if device is not None:
            self.model.to(device)
        lid.attach_saved(self, model_dir)
        return self

    # ------------------------------------------------------------------ LoRA targets, data

    def target_modules(self, spec: str | Sequence[str]) -> list[str]:
        """LoRA target module names for PEFT's ``target_modules``: a scope of
        :attr:`scope_targets` or explicit names (see :func:`resolve_target_modules`)."""
        return resolve_target_modules(unwrap_model(self.model), spec, self.scope_targets, self.family)

    # ------------------------------------------------------------------ encoder input length

    @property
    def input_mode(self) -> str:
        """``padded`` or ``audio_length`` (see :mod:`ilt.models.encoder_length`)
        of the audio encoder (the first of :meth:`lid_modules`)."""
        return input_mode(self.lid_modules()[0])

    def use_audio_length(self, pad_multiple: int | None = None) -> "HFBackbone":
        """Run the audio encoder (Whisper's encoder, Qwen2-Audio's tower) on
        each batch's own length, padded to a multiple of ``pad_multiple``
        frames (default :data:`ilt.models.encoder_length.DEFAULT_PAD_MULTIPLE`),
        instead of 30 s; the collator pads to match (for Qwen2-Audio the
        feature mask and the prompt's audio tokens follow the real length, as
        in the padded mode). Returns ``self``."""
        use_audio_length(self.lid_modules()[0])
        self.collator.pad_multiple = int(DEFAULT_PAD_MULTIPLE if pad_multiple is None else pad_multiple)
        return self

    def features(self, audios: Sequence[Any]) -> dict[str, Any]:
        """The collator's features of raw mono audio; the STFT runs on the
        model's GPU when it has one (the CPU would otherwise hold the GPU up
        while decoding), else on the CPU."""
        device = first_float_param(self.model).device
        return self.collator.features(audios, device=device if device.type == "cuda" else None)

    def collate(self, cuts: Any) -> Batch:
        """The collator's batch of ``cuts``; ``self.collator`` does the same
        without the model (for data-loader workers)."""
        return self.collator(cuts)

    def text_ids(self, text: str, language: str | None = None) -> list[int]:
        """The collator's token IDs of a transcript."""
        return self.collator.text_ids(text, language)

    # ------------------------------------------------------------------ saving

    def save_processor(self, out_dir: Path) -> None:
        """Write what reads the audio and the text (processor, tokenizer...) to ``out_dir``."""
        raise NotImplementedError(f"{type(self).__name__} must define save_processor")

    def save(self, model: Any, out_dir: str | Path) -> None:
        """Write the full model (safetensors), the processor
        (:meth:`save_processor`) and the generation config to ``out_dir``
        atomically, plus the language-ID embeddings
        (:data:`ilt.models.lid.LID_FILE`) when it has them.

        :raises ValueError: a PEFT-wrapped model (merge it first).
        :raises RuntimeError: the weights were not written as safetensors.
        """
        model = model.module if not hasattr(model, "save_pretrained") and hasattr(model, "module") else model
        if hasattr(model, "peft_config"):
            raise ValueError("save() writes a full model: merge the LoRA adapter into the model first "
                             "(peft's merge_and_unload)")
        with atomic_dir(out_dir) as tmp:
            with lid.detached(model) as embeddings:  # the stock checkpoint, plus ilt.models.lid's own file
                model.save_pretrained(tmp)
            if embeddings is not None:
                lid.save(embeddings, tmp)
            self.save_processor(tmp)
            model.generation_config.save_pretrained(tmp)
            if any(tmp.glob("*.bin")) or not any(tmp.glob("*.safetensors")):
                raise RuntimeError(f"{out_dir}: the model was not written as safetensors")
        log.info("saved %s model to %s", self.family, out_dir)
