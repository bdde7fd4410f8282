"""``ilt plan``: how much memory a round takes per device, before it runs.

Pure functions, no training. Given a backbone's ``config.json`` (a local model
directory, or a hub ID whose config ships with ilt: :data:`KNOWN_CONFIGS`), a
round (:class:`ilt.config.RoundConfig`) and a :class:`Setup` (processes,
strategy, micro-batch, precision, checkpointing, optimiser), :func:`plan`
returns the parameter counts and a :class:`Plan` per strategy. These are
**estimates**: the activation coefficients below were measured on CPU with
bf16 autocast (saved-tensor bytes, :func:`torch.autograd.graph.saved_tensors_hooks`),
and the whole model still has to be checked against ``max_memory_allocated``
of real training steps.

Parameters
    Counted exactly: the model is built from its config on the ``meta`` device
    (``from_config`` under ``torch.device("meta")``, no memory, no weights)
    and the round's LoRA is attached to it with PEFT (``get_peft_model`` works
    on meta), so total and trainable counts are PEFT's own. The scope names
    (``attention``, ``wide``) expand through the backbone's own table
    (:data:`ilt.models.scopes.BACKBONE_SCOPES`); explicit names are checked
    with :func:`ilt.models.base.resolve_target_modules`, as training does.
    ``train.lid_embeddings`` adds ``languages x (encoder width + decoder width)``.

Bytes per device (``P`` frozen parameters, ``T`` trainable, ``N`` processes)
    ========================  ======  ========  ========  ========
    what                      DDP     ZeRO-2    FSDP      ZeRO-3
    ========================  ======  ========  ========  ========
    frozen weights (bf16: 2)  2P      2P        2P/N      2P/N
    LoRA weights (fp32)       4T      4T        4T/N      4T/N
    gradients (fp32)          4T      4T/N      4T/N      4T/N
    AdamW states (2 x fp32)   8T      8T/N      8T/N      8T/N
    buckets                   4T      4Bz       0         4Bz
    gather buffers            0       0         G         G
    autocast copy of LoRA     2T      2T        0         0
    ========================  ======  ========  ========  ========

    An 8-bit optimiser keeps 2 bytes of state per parameter instead of 8.
    DDP's gradient buckets are a flat copy of the gradients (Accelerate
    leaves ``gradient_as_bucket_view`` off). ``Bz = min(T, 5e8)``: DeepSpeed's
    default ``reduce_bucket_size`` (Accelerate's ``auto`` sets hidden², which
    is smaller). ``G``: the unsharded parameters of the root unit (embeddings,
    heads, convolutions: everything outside the ``layers``) plus two layers
    (the one computing and the one prefetched), in the compute dtype. Under
    autocast the fp32 LoRA weights are cast to bf16 once per forward and the
    copies are cached until backward (``2T``; under sharding they are part of
    the gathered units).

Activations (saved for backward), per cut, bf16 autocast
    A transformer layer over ``s`` positions, width ``h``, feed-forward width
    ``f`` saves ``s (a h + b f)`` bytes for the frozen base, plus
    ``LORA_INPUT_BYTES x s x d_in`` for each LoRA-wrapped linear of input
    width ``d_in`` (its input cast to fp32, the dropout mask, the bf16 copy
    lora_A reads). Measured coefficients (:data:`LAYER_COEFFICIENTS`): a
    Whisper-style layer (LayerNorm, GELU; Whisper's encoder and Qwen2-Audio's
    audio tower) ``a=14, b=3``; a Whisper decoder layer ``a=20, b=15`` over
    its tokens plus ``CROSS_KV_BYTES=8`` bytes x S x h for the cross-attention
    over the encoder's ``S`` positions; a Qwen2 layer (RMSNorm, SwiGLU,
    rotary) ``a=21, b=10``; ``LORA_INPUT_BYTES=6``. The attention kernels
    (SDPA flash/memory-efficient) keep no ``s x s`` matrix. The logits keep
    ``LOGIT_BYTES=5`` bytes per position per vocabulary entry (fp32
    log-probabilities), and their gradient adds ``LOGIT_GRAD_BYTES=6`` at the
    start of backward. Full fp32 doubles every activation term.

    With gradient checkpointing each layer keeps only its input (``2 s h``
    bytes), and backward recomputes one layer at a time: the largest single
    layer's activations are added once. The logits are not checkpointed.

    Sequence lengths: both backbones pad the encoder input to the model's
    window (``max_source_positions`` = 1500 positions, 30 s, 50 per second
    after the convolutions' stride 2), so the encoder costs the same for any
    cut; the text has ``prompt + TOKENS_PER_SECOND x seconds`` tokens (capped
    at ``max_target_positions`` for Whisper); Qwen2-Audio's LLM also reads
    25 audio tokens per second (the tower's average pooling halves the 50).
    Activations per second of audio are the per-cut figure over the seconds
    per cut.

Peak and fit
    ``peak = static + micro_batch x per_cut + logit gradient``; a device fits
    when the peak is within ``device_memory x (1 - reserve)`` (the reserve
    covers the CUDA context and the allocator's fragmentation). The largest
    micro-batch is the largest ``b`` that fits; :func:`advice` says what to
    switch on when the chosen one does not.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ilt.config import RoundConfig
from ilt.errors import IltInputError
from ilt.training.sizing import resolve_checkpointing

GIB = 1024 ** 3

#: the strategies and, for each, what is sharded by the number of processes
STRATEGIES: dict[str, dict[str, bool]] = {
    "ddp": {"weights": False, "lora": False, "grads": False, "optim": False},
    "zero2": {"weights": False, "lora": False, "grads": True, "optim": True},
    "fsdp": {"weights": True, "lora": True, "grads": True, "optim": True},
    "zero3": {"weights": True, "lora": True, "grads": True, "optim": True},
}
STRATEGY_NAMES = {"ddp": "DDP", "zero2": "ZeRO-2", "fsdp": "FSDP (full shard)", "zero3": "ZeRO-3"}

#: hub IDs whose published ``config.json`` ships with ilt (``ilt/models/configs/``)
KNOWN_CONFIGS: dict[str, str] = {
    "openai/whisper-large-v3": "whisper-large-v3.json",
    "openai/whisper-base": "whisper-base.json",
    "Qwen/Qwen2-Audio-7B-Instruct": "Qwen2-Audio-7B-Instruct.json",
    "Qwen/Qwen2-Audio-7B": "Qwen2-Audio-7B-Instruct.json",  # the same architecture and vocabulary
}

#: bytes saved per position: (a per hidden unit, b per feed-forward unit), bf16 autocast
LAYER_COEFFICIENTS: dict[str, tuple[float, float]] = {
    "whisper_encoder": (14.0, 3.0),
    "whisper_decoder": (20.0, 15.0),
    "qwen2": (21.0, 10.0),
}
CROSS_KV_BYTES = 8.0       # per encoder position x width, per Whisper decoder layer
LORA_INPUT_BYTES = 6.0     # per position x input width, per LoRA-wrapped linear
LOGIT_BYTES = 5.0          # saved per position x vocabulary entry
LOGIT_GRAD_BYTES = 6.0     # the logits' gradient at the start of backward
STEM_BYTES = 6.0           # per encoder position x width: the convolutions before the layers
TOKENS_PER_SECOND = 4.0    # transcript tokens per second of speech (BPE, multilingual)
AUDIO_TOKENS_PER_SECOND = 25.0  # Qwen2-Audio's LLM positions per second of audio
WHISPER_PROMPT_TOKENS = 4  # <|startoftranscript|> <|lang|> <|transcribe|> <|notimestamps|>
QWEN2_AUDIO_PROMPT_TOKENS = 24  # the chat template around the audio and the instruction
ZERO_BUCKET_ELEMENTS = 5e8  # DeepSpeed's default reduce_bucket_size


@dataclass
class Setup:
    """What the user chose for one run (the round YAML gives the defaults)."""

    processes: int = 8
    micro_batch: int = 16
    grad_accum: int = 1
    seconds: float = 30.0
    precision: str = "bf16"
    checkpointing: bool | str = False  # "auto": resolved by plan() from the backbone's size
    optimizer: str = "adamw"          # adamw (fp32 states) or adamw8bit
    device_memory_gib: float = 80.0
    reserve: float = 0.1
    tokens_per_second: float = TOKENS_PER_SECOND


@dataclass
class Stack:
    """One stack of transformer layers and the LoRA-wrapped inputs of each layer."""

    name: str
    kind: str                          # a key of LAYER_COEFFICIENTS
    layers: int
    hidden: int
    ffn: int
    positions: int = 0                 # filled per setup by sequence_lengths()
    lora_self: list[int] = field(default_factory=list)   # per layer: sum of LoRA input widths over its own positions
    lora_cross: list[int] = field(default_factory=list)  # per layer: ... over the encoder's positions


@dataclass
class Model:
    """What the planner knows about a backbone with the round's LoRA attached."""

    source: str
    family: str                        # whisper or qwen2_audio
    config: dict[str, Any]
    base: int                          # the backbone's own parameters
    total: int                         # every parameter, the LoRA included
    trainable: int                     # LoRA (+ language-ID embeddings)
    lora: int
    lid: int
    targets: list[str]
    root_params: int                   # outside every layer (embeddings, heads, convolutions)
    largest_layer_params: int
    stacks: list[Stack]
    vocab: int


# --------------------------------------------------------------------------- reading the backbone


def read_backbone_config(source: str | Path) -> tuple[str, dict[str, Any]]:
    """``(label, config dict)`` of a backbone: a model directory holding
    ``config.json``, a ``config.json`` file, or a hub ID of :data:`KNOWN_CONFIGS`.

    :raises IltInputError: none of these, or an unreadable file.
    """
    from importlib import resources

    text = str(source)
    if text in KNOWN_CONFIGS:
        data = resources.files("ilt.models").joinpath("configs", KNOWN_CONFIGS[text]).read_text("utf-8")
        return text, json.loads(data)
    path = Path(text)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise IltInputError(f"{text}: no config.json here and not a known hub ID; give a model directory, its "
                            f"config.json, or one of {', '.join(sorted(KNOWN_CONFIGS))}")
    try:
        return text, json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise IltInputError(f"{path}: cannot read the model config: {exc}") from None


def _model_class(config: dict[str, Any]) -> tuple[str, Any, Any]:
    """``(family, model class, config object)`` of a Whisper or Qwen2-Audio config."""
    import transformers

    family = config.get("model_type")
    classes = {"whisper": ("WhisperForConditionalGeneration", "WhisperConfig"),
               "qwen2_audio": ("Qwen2AudioForConditionalGeneration", "Qwen2AudioConfig")}
    if family not in classes:
        raise IltInputError(f"config.json: model_type {family!r}; ilt plan knows "
                            f"{', '.join(sorted(classes))} backbones")
    model_cls, config_cls = (getattr(transformers, name) for name in classes[family])
    return family, model_cls, config_cls.from_dict(dict(config))


def _targets(model: Any, family: str, spec: Any) -> list[str]:
    """The round's ``lora.target_modules`` resolved as the backbone resolves them."""
    from ilt.models.base import resolve_target_modules
    from ilt.models.scopes import BACKBONE_SCOPES

    try:
        return resolve_target_modules(model, spec, BACKBONE_SCOPES[family], family)
    except ValueError as exc:
        raise IltInputError(f"lora.target_modules: {exc}") from None


@functools.lru_cache(maxsize=16)
def _meta_model(config_json: str, r: int, alpha: float, targets_spec: str) -> tuple[Any, list[str]]:
    """The PEFT model on ``meta`` (cached: the same backbone and LoRA for several plans)."""
    import torch
    from peft import LoraConfig, get_peft_model

    config = json.loads(config_json)
    family, model_cls, cfg = _model_class(config)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecation notes PEFT triggers
        model = model_cls._from_config(cfg)
        targets = _targets(model, family, json.loads(targets_spec))
        # on meta too: a rank-512 LoRA of a 7B model would otherwise take gigabytes of host memory
        peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets))
    return peft_model, targets


def _layer_key(name: str) -> tuple[str, int] | None:
    """``(stack prefix, layer index)`` of a module path inside ``...layers.N``."""
    match = re.search(r"^(.*?)\.layers\.(\d+)(\.|$)", name)
    return (match.group(1), int(match.group(2))) if match else None


def _stacks(family: str, config: dict[str, Any]) -> list[Stack]:
    """The transformer stacks of a backbone, by the ``layers`` path prefix PEFT shows."""
    if family == "whisper":
        h = config["d_model"]
        return [Stack("model.encoder", "whisper_encoder", config["encoder_layers"], h, config["encoder_ffn_dim"]),
                Stack("model.decoder", "whisper_decoder", config["decoder_layers"], h, config["decoder_ffn_dim"])]
    audio, text = config["audio_config"], config["text_config"]
    return [Stack("audio_tower", "whisper_encoder", audio["encoder_layers"], audio["d_model"],
                  audio["encoder_ffn_dim"]),
            Stack("language_model", "qwen2", text["num_hidden_layers"], text["hidden_size"],
                  text["intermediate_size"])]


def _lora_inputs(peft_model: Any, stacks: list[Stack]) -> None:
    """Fill each stack's per-layer sums of LoRA input widths (cross-attention
    keys and values read the encoder's positions)."""
    for stack in stacks:
        stack.lora_self, stack.lora_cross = [0] * stack.layers, [0] * stack.layers
    for name, module in peft_model.base_model.model.named_modules():
        key = _layer_key(name)
        if key is None or not hasattr(module, "lora_A") or not hasattr(module, "in_features"):
            continue
        stack = next((s for s in stacks if key[0] == s.name or key[0].endswith("." + s.name)), None)
        if stack is None:
            continue
        cross = ".encoder_attn." in name and name.rsplit(".", 1)[-1] in ("k_proj", "v_proj")
        (stack.lora_cross if cross else stack.lora_self)[key[1]] += module.in_features


def count_model(source: str | Path, round_config: RoundConfig) -> Model:
    """Parameter counts and shapes of ``source`` with the round's LoRA (see the module docstring)."""
    from ilt.models.lid import LANGUAGES

    label, config = read_backbone_config(source)
    family, _, _ = _model_class(config)
    lora = round_config.lora
    spec = lora.target_modules if isinstance(lora.target_modules, str) else list(lora.target_modules)
    peft_model, targets = _meta_model(json.dumps(config, sort_keys=True), lora.r, float(lora.lora_alpha),
                                      json.dumps(spec))
    trainable, total = peft_model.get_nb_trainable_parameters()
    per_layer: dict[tuple[str, int], int] = {}
    for name, param in peft_model.base_model.model.named_parameters():
        key = _layer_key(name)
        if key is not None:
            per_layer[key] = per_layer.get(key, 0) + param.numel()
    stacks = _stacks(family, config)
    _lora_inputs(peft_model, stacks)
    text = config.get("text_config", config)
    lid = 0
    if round_config.train.lid_embeddings:
        encoder_width = config.get("audio_config", config)["d_model"]
        lid = len(LANGUAGES) * (encoder_width + text.get("hidden_size", text.get("d_model")))
    return Model(source=label, family=family, config=config, base=total - trainable, total=total + lid, trainable=trainable + lid,
                 lora=trainable, lid=lid, targets=targets, root_params=total - sum(per_layer.values()),
                 largest_layer_params=max(per_layer.values(), default=0), stacks=stacks,
                 vocab=text["vocab_size"])


# --------------------------------------------------------------------------- activations


def sequence_lengths(model: Model, setup: Setup) -> dict[str, int]:
    """Positions per cut of each stack, for cuts of ``setup.seconds`` (see the module docstring)."""
    config, seconds = model.config, max(0.0, setup.seconds)
    text_tokens = math.ceil(setup.tokens_per_second * seconds)
    if model.family == "whisper":
        encoder = config["max_source_positions"]
        decoder = min(config["max_target_positions"], WHISPER_PROMPT_TOKENS + text_tokens)
        return {"model.encoder": encoder, "model.decoder": decoder}
    encoder = config["audio_config"]["max_source_positions"]
    audio_tokens = min(math.ceil(AUDIO_TOKENS_PER_SECOND * seconds), encoder // 2)
    return {"audio_tower": encoder, "language_model": QWEN2_AUDIO_PROMPT_TOKENS + audio_tokens + text_tokens}


def _layer_bytes(stack: Stack, index: int, positions: int, encoder_positions: int) -> float:
    """Bytes one layer saves for backward for one cut, without checkpointing (bf16 autocast)."""
    a, b = LAYER_COEFFICIENTS[stack.kind]
    saved = positions * (a * stack.hidden + b * stack.ffn) + LORA_INPUT_BYTES * positions * stack.lora_self[index]
    if stack.kind == "whisper_decoder":
        saved += encoder_positions * (CROSS_KV_BYTES * stack.hidden + LORA_INPUT_BYTES * stack.lora_cross[index])
    return saved


def activation_bytes(model: Model, setup: Setup, *, checkpointing: bool | None = None) -> dict[str, float]:
    """Activation bytes for **one cut**: ``saved`` (kept from forward to
    backward, including the logits) and ``logit_grad`` (the logits' gradient
    at the start of backward), with or without gradient checkpointing
    (default: ``setup.checkpointing``)."""
    checkpointing = resolve_checkpointing(setup.checkpointing if checkpointing is None else checkpointing,
                                          model.base)
    lengths = sequence_lengths(model, setup)
    encoder_positions = lengths[model.stacks[0].name]
    scale = 2.0 if setup.precision == "fp32" else 1.0
    stored, largest = 0.0, 0.0
    for stack in model.stacks:
        positions = lengths[stack.name]
        layers = [_layer_bytes(stack, i, positions, encoder_positions) for i in range(stack.layers)]
        largest = max(largest, *layers)
        stored += 2 * positions * stack.hidden * stack.layers if checkpointing else sum(layers)
    first = model.stacks[0]
    stored += STEM_BYTES * encoder_positions * first.hidden
    if checkpointing:
        stored += largest  # backward recomputes one layer at a time
    text_positions = lengths[model.stacks[-1].name]
    stored += LOGIT_BYTES * text_positions * model.vocab
    return {"saved": scale * stored, "logit_grad": scale * LOGIT_GRAD_BYTES * text_positions * model.vocab}


# --------------------------------------------------------------------------- memory per device


@dataclass
class Plan:
    """Bytes per device under one strategy (see the module docstring's table)."""

    strategy: str
    processes: int
    weights: float
    lora: float
    grads: float
    optimizer: float
    buckets: float
    gather: float
    autocast_copy: float
    activations_per_cut: float
    activations_per_second: float
    activations: float                 # for the micro-batch, the logits' gradient included
    static: float
    peak: float
    usable: float
    fits: bool
    micro_batch: int
    largest_micro_batch: int
    checkpointing: bool
    optimizer_kind: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def static_bytes(model: Model, setup: Setup, strategy: str) -> dict[str, float]:
    """The bytes that do not grow with the micro-batch, per device, by item."""
    if strategy not in STRATEGIES:
        raise IltInputError(f"strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    shard = STRATEGIES[strategy]
    n = max(1, setup.processes)
    per = {key: (n if sharded else 1) for key, sharded in shard.items()}
    weight_bytes = 4 if setup.precision == "fp32" else 2
    state_bytes = 2 if "8bit" in setup.optimizer else 8
    frozen, trainable = model.total - model.trainable, model.trainable
    buckets = {"ddp": 4.0 * trainable, "zero2": 4.0 * min(trainable, ZERO_BUCKET_ELEMENTS),
               "zero3": 4.0 * min(trainable, ZERO_BUCKET_ELEMENTS), "fsdp": 0.0}[strategy]
    gather = (weight_bytes * (model.root_params + 2 * model.largest_layer_params)
              if shard["weights"] and n > 1 else 0.0)
    copy = 2.0 * trainable if setup.precision != "fp32" and not shard["lora"] else 0.0
    return {"weights": weight_bytes * frozen / per["weights"], "lora": 4.0 * trainable / per["lora"],
            "grads": 4.0 * trainable / per["grads"], "optimizer": state_bytes * trainable / per["optim"],
            "buckets": buckets, "gather": gather, "autocast_copy": copy}


def largest_micro_batch(static: float, per_cut: float, logit_grad: float, usable: float) -> int:
    """The largest ``b`` with ``static + b * per_cut + logit_grad <= usable`` (0: not even one cut)."""
    room = usable - static - logit_grad
    if room < per_cut:
        return 0
    return int(room // per_cut)


def plan_strategy(model: Model, setup: Setup, strategy: str) -> Plan:
    """The :class:`Plan` of one strategy."""
    items = static_bytes(model, setup, strategy)
    static = sum(items.values())
    act = activation_bytes(model, setup)
    usable = setup.device_memory_gib * GIB * (1.0 - setup.reserve)
    activations = setup.micro_batch * act["saved"] + act["logit_grad"]
    peak = static + activations
    return Plan(strategy=strategy, processes=setup.processes, **items,
                activations_per_cut=act["saved"], activations_per_second=act["saved"] / max(setup.seconds, 1e-9),
                activations=activations, static=static, peak=peak, usable=usable, fits=peak <= usable,
                micro_batch=setup.micro_batch,
                largest_micro_batch=largest_micro_batch(static, act["saved"], act["logit_grad"], usable),
                checkpointing=resolve_checkpointing(setup.checkpointing, model.base), optimizer_kind=setup.optimizer)


# --------------------------------------------------------------------------- advice


def _keep_effective(setup: Setup, largest: int) -> tuple[int, int] | None:
    """``(micro_batch, grad_accum)`` with the same cuts per optimiser step per
    process and the largest micro-batch that fits (a divisor of that number)."""
    per_step = setup.micro_batch * setup.grad_accum
    for b in range(min(largest, per_step), 0, -1):
        if per_step % b == 0:
            return b, per_step // b
    return None


def advice(model: Model, setup: Setup, strategy: str) -> list[str]:
    """What to switch on when ``setup.micro_batch`` does not fit under
    ``strategy``, each with the largest micro-batch it allows (empty when it fits)."""
    current = plan_strategy(model, setup, strategy)
    if current.fits:
        return []
    tips: list[tuple[str, Setup, str]] = []
    if not resolve_checkpointing(setup.checkpointing, model.base):
        tips.append(("gradient checkpointing (train.gradient_checkpointing: true)",
                     dataclasses.replace(setup, checkpointing=True), strategy))
    if "8bit" not in setup.optimizer:
        tips.append(("an 8-bit optimiser (2 bytes of state per parameter)",
                     dataclasses.replace(setup, optimizer="adamw8bit"), strategy))
    if not STRATEGIES[strategy]["weights"] and setup.processes > 1:
        tips.append((("FSDP full shard (or ZeRO-3): weights, gradients and optimiser state / "
                     f"{setup.processes}"), setup, "fsdp"))
    lines = []
    for what, changed, strat in tips:
        fit = plan_strategy(model, changed, strat)
        lines.append(f"{what}: largest micro-batch {fit.largest_micro_batch}, peak "
                     f"{fit.peak / GIB:.1f} GiB at micro-batch {setup.micro_batch}")
    kept = _keep_effective(setup, current.largest_micro_batch)
    if kept is not None:
        lines.append(f"micro_batch {kept[0]} with grad_accum {kept[1]} (the same {setup.micro_batch * setup.grad_accum}"
                     f" cuts per process per optimiser step, x{setup.processes} processes)")
    else:
        combined = dataclasses.replace(setup, checkpointing=True, optimizer="adamw8bit")
        fit = plan_strategy(model, combined, "fsdp" if setup.processes > 1 else strategy)
        lines.append(f"not even one cut fits; all of the above together: largest micro-batch "
                     f"{fit.largest_micro_batch}")
    return lines


def plan(source: str | Path, round_config: RoundConfig, setup: Setup,
         strategies: list[str]) -> tuple[Model, dict[str, Plan], dict[str, list[str]]]:
    """The parameter counts, a :class:`Plan` and the :func:`advice` per strategy."""
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise IltInputError(f"strategy {unknown[0]!r}: use one of {', '.join(STRATEGIES)}")
    model = count_model(source, round_config)
    # train.gradient_checkpointing: auto, decided by size as training decides it; the caller's table shows it
    setup.checkpointing = resolve_checkpointing(setup.checkpointing, model.base)
    plans = {s: plan_strategy(model, setup, s) for s in strategies}
    return model, plans, {s: advice(model, setup, s) for s in strategies}


def setup_from_round(round_config: RoundConfig, **given: Any) -> Setup:
    """A :class:`Setup` with the round's training options, ``given`` (not
    ``None``) overriding them. With ``train.max_duration`` and no micro-batch
    given, the micro-batch is the cuts of ``seconds`` that fill it."""
    train = round_config.train
    given = {k: v for k, v in given.items() if v is not None}
    seconds = float(given.get("seconds", 30.0))
    micro_batch = train.micro_batch
    if train.max_duration:
        micro_batch = max(1, int(train.max_duration // seconds))
    optimizer = str(getattr(train, "optimizer", "adamw") or "adamw")
    defaults = {"micro_batch": micro_batch, "grad_accum": train.grad_accum, "seconds": seconds,
                "precision": train.precision, "checkpointing": train.gradient_checkpointing,
                "optimizer": "adamw8bit" if "8bit" in optimizer else "adamw"}
    return Setup(**{**defaults, **given})


# --------------------------------------------------------------------------- output


def _gib(value: float) -> str:
    return f"{value / GIB:.2f}"


ROWS: list[tuple[str, str]] = [
    ("weights", "frozen weights"), ("lora", "LoRA weights (fp32)"), ("grads", "gradients"),
    ("optimizer", "optimiser state"), ("buckets", "DDP/ZeRO buckets"), ("gather", "FSDP/ZeRO-3 gather"),
    ("autocast_copy", "autocast LoRA copy"), ("static", "= static"),
    ("activations_per_second", "activations / s of audio"), ("activations_per_cut", "activations / cut"),
    ("activations", "activations, micro-batch"), ("peak", "= peak per device"),
]


def format_table(model: Model, round_config: RoundConfig, setup: Setup, plans: dict[str, Plan],
                 tips: dict[str, list[str]]) -> str:
    """The plan as a plain-text table, GiB per device, one column per strategy."""
    lora = round_config.lora
    head = [
        f"backbone     {model.source} ({model.family})",
        f"round        {round_config.name}: LoRA r={lora.r} alpha={lora.lora_alpha:g} on {','.join(model.targets)}",
        (f"parameters   backbone {model.base:,}  trainable {model.trainable:,} (LoRA {model.lora:,}, "
        f"language-ID {model.lid:,})  total {model.total:,}"),
        (f"setup        {setup.processes} processes; micro-batch {setup.micro_batch} x {setup.seconds:g} s, "
        f"grad_accum {setup.grad_accum}; {setup.precision} base, fp32 LoRA; "
        f"{'AdamW 8-bit' if '8bit' in setup.optimizer else 'AdamW fp32'} states; "
        f"checkpointing {'on' if setup.checkpointing else 'off'}"),
        (f"device       {setup.device_memory_gib:g} GiB, {_gib(next(iter(plans.values())).usable)} usable "
        f"({100 * setup.reserve:g}% reserve)"),
        "",
    ]
    names = list(plans)
    width = max(10, *(len(STRATEGY_NAMES[s]) + 2 for s in names))
    lines = [f"{'GiB per device':<26}" + "".join(f"{STRATEGY_NAMES[s]:>{width}}" for s in names)]
    for key, label in ROWS:
        lines.append(f"{label:<26}" + "".join(f"{_gib(getattr(plans[s], key)):>{width}}" for s in names))
    lines.append(f"{'fits':<26}" + "".join(f"{'yes' if plans[s].fits else 'NO':>{width}}" for s in names))
    lines.append(f"{'largest micro-batch':<26}" + "".join(f"{plans[s].largest_micro_batch:>{width}}" for s in names))
    for s in names:
        if tips[s]:
            lines.append(f"\n{STRATEGY_NAMES[s]}: micro-batch {setup.micro_batch} does not fit; switch on one of:")
            lines.extend(f"  - {tip}" for tip in tips[s])
    return "\n".join(head + lines)


def to_json(model: Model, round_config: RoundConfig, setup: Setup, plans: dict[str, Plan],
            tips: dict[str, list[str]]) -> dict[str, Any]:
    """The plan as JSON-ready data (bytes, not GiB)."""
    return {
        "backbone": model.source, "family": model.family, "round": round_config.name,
        "parameters": {"backbone": model.base, "total": model.total, "trainable": model.trainable, "lora": model.lora,
                       "language_id": model.lid, "targets": model.targets},
        "setup": dataclasses.asdict(setup),
        "plans": {s: p.to_dict() for s, p in plans.items()},
        "advice": tips,
        "estimate": True,
    }


__all__ = ["GIB", "KNOWN_CONFIGS", "STRATEGIES", "Model", "Plan", "Setup", "Stack", "activation_bytes", "advice",
           "count_model", "format_table", "largest_micro_batch", "plan", "plan_strategy", "read_backbone_config",
           "sequence_lengths", "setup_from_round", "static_bytes", "to_json"]
