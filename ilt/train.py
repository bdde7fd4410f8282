"""One ILT round's training loop: a LoRA on the current model, trained on a
knowledge task, the best dev checkpoint kept.

It runs on Accelerate, so the same code runs on a CPU, one GPU or under
``accelerate launch`` (DDP). :func:`train_round` is the whole stage; ``ilt
train`` is a thin wrapper around it.

Data
    Each source of the task's data mix is read lazily, cuts without text are
    dropped (counted), cuts outside the source's ``languages`` (when given)
    are left out, each source is repeated endlessly and the sources are
    interleaved with ``CutSet.mux`` by their weights: a weight is the share
    of the training stream drawn from that source, so a small source with a
    large weight is seen several times per epoch. An *epoch* is as many cuts as
    all sources hold together; its length in optimiser steps is counted once
    by a dry run of the sampler (batches are formed by Lhotse's
    ``DynamicBucketingSampler``: ``max_duration`` seconds per micro-batch, or
    ``micro_batch`` cuts when no duration is set; a small training set gets
    fewer duration buckets than ``num_buckets``, so that each can fill two
    micro-batches, and one bucket means Lhotse's ``DynamicCutSampler``).
    ``max_steps``, when set, replaces ``epochs``.

Precision
    ``bf16`` and ``fp16`` are for GPUs. On a CPU both fall back to fp32 with a
    warning (CPU autocast works in torch but is several times slower than fp32
    on most CPUs); ``force_precision=True`` keeps bf16 there. A GPU without
    bf16 support trains in fp32 instead of bf16.

Outputs in ``out_dir``::

    round.yaml          the resolved round config (data sources filled in)
    command.txt         the exact command, when given
    manifests.json      the data: path, weight and sha256 of each manifest
    train_log.jsonl     one JSON object per optimiser step and per evaluation
    <tensorboard run>/  TensorBoard events (``tensorboard --logdir out_dir``)
    checkpoints/step-N/ the last two checkpoints (adapter, optimiser,
                        scheduler, sampler position, RNG states, counters)
    best/               the adapter with the lowest ``select.metric`` so far,
                        with score.json, round.yaml and manifests.json
    final/              the adapter after the last step, same files

Re-running the same command resumes from the newest complete checkpoint and
ends with the same adapter an uninterrupted run would have (bitwise on CPU):
the sampler is restored to the last *consumed* batch, the RNG states, the
optimiser and scheduler with it, and evaluation runs under its own forked RNG.
A different config in the same ``out_dir`` is refused. A non-finite loss
stops every process with :class:`IltInputError` naming the step and the cuts
of the batch; the checkpoints before it stay untouched.

Several processes (``accelerate launch``, ``torchrun``): each draws its own
batches (the sampler is given the world size and rank), evaluation and all
writing happen on the main process, the step loss logged is the main
process's. Checkpoints hold only the LoRA weights (an Accelerate save hook),
FSDP and DeepSpeed go through Accelerate but are untested.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from ilt.config import (DataSource, DecodeConfig, RoundConfig, config_hash, dump_yaml, from_dict,
                        load_round, to_dict)
from ilt.errors import IltInputError
from ilt.lora import (MANIFESTS_JSON, ROUND_YAML, SCORE_JSON, attach_lora, describe_manifests)
from ilt.utils import Skips, atomic_dir, replace_dir, write_json_atomic, write_text_atomic

log = logging.getLogger("ilt")

CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2
TRAIN_LOG = "train_log.jsonl"
ADAPTER_SUBDIR = "adapter"
_CKPT_NAME = re.compile(r"^step-(\d+)$")


@dataclass
class TrainResult:
    """What :func:`train_round` produced."""

    out_dir: Path
    best_dir: Path
    final_dir: Path
    #: ``select.metric`` of the best adapter (``None`` without a dev set)
    best_metric: float | None
    #: the best adapter's ``score.json`` content
    best_score: dict[str, Any] | None
    #: optimiser steps done in total (including those before a resume)
    steps: int
    #: wall-clock seconds of this call
    seconds: float
    #: counted skips of bad training cuts, by reason
    skipped: dict[str, int] = field(default_factory=dict)
    #: the checkpoint this call resumed from, if any
    resumed_from: Path | None = None

    def summary(self) -> str:
        """A few lines for the command line."""
        metric = (self.best_score or {}).get("metric", "metric")
        best = ("no dev score" if self.best_metric is None
                else f"best {metric} {self.best_metric:.4g} at step {(self.best_score or {}).get('step')}")
        lines = [f"{self.steps} steps in {self.seconds:.1f} s"
                 + (f" (resumed from {self.resumed_from})" if self.resumed_from else "") + f"; {best}",
                 f"best adapter: {self.best_dir}", f"final adapter: {self.final_dir}"]
        if self.skipped:
            lines.append("skipped: " + ", ".join(f"{n} {reason}" for reason, n in self.skipped.items()))
        return "\n".join(lines)


# --------------------------------------------------------------------------- small helpers


def _has_text(cut: Any) -> bool:
    return bool(cut.supervisions) and bool((cut.supervisions[0].text or "").strip())


def _identity(batch: Any) -> Any:
    return batch


class _CollateDataset:
    """Map-style dataset over sampler output: ``dataset[cuts] -> Batch``."""

    def __init__(self, backbone: Any) -> None:
        self.backbone = backbone

    def __getitem__(self, cuts: Any) -> Any:
        return self.backbone.collate(cuts)


def list_checkpoints(out_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first (temporary ones are hidden)."""
    root = Path(out_dir) / CHECKPOINTS
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = _CKPT_NAME.match(p.name)
            if m and p.is_dir():
                found.append((int(m.group(1)), p))
    return sorted(found)


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (int, float, str, bool)):
        out[prefix] = value
    else:
        out[prefix] = json.dumps(value)
    return out


def _resolve_precision(requested: str, device_type: str, force: bool) -> str:
    """Accelerate's ``mixed_precision`` for a requested precision on a device."""
    import torch

    if requested == "fp32":
        return "no"
    if device_type == "cpu":
        if requested == "bf16" and force:
            return "bf16"
        warnings.warn(f"precision {requested} requested on a CPU: training in fp32 instead "
                      f"({'fp16 is not supported on CPU' if requested == 'fp16' else 'bf16 autocast is slow on most CPUs; pass force_precision to keep it'})",
                      stacklevel=3)
        return "no"
    if device_type == "cuda" and requested == "bf16" and not torch.cuda.is_bf16_supported():
        warnings.warn("precision bf16 requested but this GPU does not support it: training in fp32", stacklevel=3)
        return "no"
    return requested


def _warmup_linear_decay(warmup: int, total: int) -> Callable[[int], float]:
    """LR factor: linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


# --------------------------------------------------------------------------- data


def _in_languages(cut: Any, languages: frozenset[str] | None) -> bool:
    return languages is None or (cut.supervisions[0].language or "").lower() in languages


def _keep(cut: Any, languages: frozenset[str] | None) -> bool:
    return _has_text(cut) and _in_languages(cut, languages)


def _open_source(source: DataSource, skips: Skips) -> tuple[Any, int, float]:
    """A lazy CutSet of the cuts of ``source`` to train on (with text, in its
    ``languages``), their number and total duration; cuts without text are
    counted as skips, cuts in other languages are left out silently."""
    from lhotse import CutSet

    path = Path(source.cuts)
    languages = frozenset(lang.lower() for lang in source.languages) if source.languages is not None else None
    if not path.is_file():
        raise IltInputError(f"{path}: training cut manifest not found")
    n, seconds, other = 0, 0.0, 0
    try:
        cuts = CutSet.from_jsonl_lazy(path)
        for cut in cuts:
            if not _has_text(cut):
                skips.skip("empty transcript", cut.id, str(path))
            elif not _in_languages(cut, languages):
                other += 1
            else:
                n += 1
                seconds += float(cut.duration)
    except IltInputError:
        raise
    except Exception as exc:  # corrupt gzip, bad JSON, not a cut manifest
        raise IltInputError(f"{path}: cannot read cut manifest: {type(exc).__name__}: {exc}") from None
    if n == 0:
        where = f" in languages {sorted(languages)}" if languages is not None else ""
        raise IltInputError(f"{path}: training source has no cuts with a transcript{where}")
    if other:
        log.info("train source %s: %d cut(s) in other languages than %s left out", path, other, sorted(languages))
    return cuts.filter(functools.partial(_keep, languages=languages)), n, seconds


def _training_stream(sources: Sequence[DataSource], seed: int, skips: Skips) -> tuple[Any, int, float]:
    """The endless weighted mix of the sources, and the number of cuts and
    seconds of audio per epoch."""
    from lhotse import CutSet

    weights = [s.weight for s in sources]
    if not sum(weights) > 0:
        raise IltInputError(f"the data mix weights {weights} sum to zero: give at least one source a weight")
    opened = [_open_source(source, skips) for source in sources]
    for source, (_, n, seconds) in zip(sources, opened):
        log.info("train source %s: %d cuts, %.1f h, weight %g", source.cuts, n, seconds / 3600, source.weight)
    repeated = [cuts.repeat(preserve_id=True) for cuts, _, _ in opened]
    stream = repeated[0] if len(repeated) == 1 else CutSet.mux(*repeated, weights=weights, seed=seed)
    return stream, sum(n for _, n, _ in opened), sum(seconds for _, _, seconds in opened)


#: Lhotse's bucketing sampler keeps at most this many cuts in its buffer.
_BUFFER_CUTS = 20000
#: Each duration bucket should hold at least this many full micro-batches of
#: the buffer: a bucket that cannot fill one yields short batches.
_BATCHES_PER_BUCKET = 2


def _buffer_cuts(epoch_cuts: int) -> int:
    """Cuts in the bucketing sampler's buffer: one epoch, at most :data:`_BUFFER_CUTS`."""
    return max(1, min(_BUFFER_CUTS, epoch_cuts))


def _bucket_count(train: Any, epoch_cuts: int, epoch_seconds: float) -> int:
    """``train.num_buckets``, reduced so that each bucket of the sampler's
    buffer holds :data:`_BATCHES_PER_BUCKET` full micro-batches.

    Lhotse draws a batch from one bucket only; with more buckets than the
    buffer can fill (a small training set), most batches come out short (on
    32 cuts, 10 buckets and micro-batch 8, batches of 1 to 8 cuts, mean 4.4).
    """
    buffer_cuts = _buffer_cuts(epoch_cuts)
    if train.max_duration:
        mean_seconds = epoch_seconds / max(1, epoch_cuts)
        cuts_per_batch = max(1.0, train.max_duration / mean_seconds) if mean_seconds > 0 else 1.0
    else:
        cuts_per_batch = float(train.micro_batch)
    fits = int(buffer_cuts // (_BATCHES_PER_BUCKET * cuts_per_batch))
    return max(1, min(train.num_buckets, fits))


def _make_sampler(stream: Any, train: Any, epoch_cuts: int, epoch_seconds: float, world_size: int,
                  rank: int) -> Any:
    """Lhotse's ``DynamicBucketingSampler`` (``DynamicCutSampler`` when the
    data fill a single bucket)."""
    from lhotse.dataset import DynamicBucketingSampler, DynamicCutSampler

    common = dict(max_duration=train.max_duration, max_cuts=None if train.max_duration else train.micro_batch,
                  shuffle=True, drop_last=False, seed=train.seed, world_size=world_size, rank=rank)
    buckets = _bucket_count(train, epoch_cuts, epoch_seconds)
    if buckets < 2:
        return DynamicCutSampler(stream, **common)
    return DynamicBucketingSampler(
        stream, num_buckets=buckets, buffer_size=_buffer_cuts(epoch_cuts),
        num_cuts_for_bins_estimate=max(1, min(10000, epoch_cuts)), **common)


def _batches_per_epoch(stream: Any, train: Any, epoch_cuts: int, epoch_seconds: float) -> int:
    """Micro-batches one process draws for one epoch of cuts (a dry run, metadata only)."""
    sampler = _make_sampler(stream, train, epoch_cuts, epoch_seconds, world_size=1, rank=0)
    seen = batches = 0
    for batch in sampler:
        seen += len(batch)
        batches += 1
        if seen >= epoch_cuts:
            break
    return batches


def _references(cuts: Any) -> dict[str, tuple[str, str, str | None]]:
    refs = {}
    for cut in cuts:
        sup = cut.supervisions[0]
        refs[cut.id] = (sup.language, sup.text, (sup.custom or {}).get("accent"))
    return refs


# --------------------------------------------------------------------------- trainer state


class _State:
    """Counters saved in every checkpoint (with Accelerate's own state)."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.step = 0            # optimiser steps done
        self.micro_batches = 0   # micro-batches consumed (not merely prefetched)
        self.cuts = 0            # cuts consumed, for the epoch counter
        self.best_metric: float | None = None
        self.best_step: int | None = None
        self.best_score: dict[str, Any] | None = None
        self.last_eval: dict[str, Any] | None = None
        self.skipped: dict[str, list[str]] = {}

    def sampler_state(self) -> dict[str, Any]:
        """The sampler's state at the last *consumed* batch: a DataLoader with
        workers prefetches, so the sampler itself has run ahead."""
        sd = self.sampler.state_dict()
        diag = sd["diagnostics"]
        epoch = diag["current_epoch"]
        stats = dict(diag["stats_per_epoch"][epoch])
        stats.update(kept_batches=self.micro_batches, discarded_batches=0)
        diag["stats_per_epoch"] = {**diag["stats_per_epoch"], epoch: stats}
        return sd

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step, "micro_batches": self.micro_batches, "cuts": self.cuts,
            "best_metric": self.best_metric, "best_step": self.best_step, "best_score": self.best_score,
            "last_eval": self.last_eval,
            "skipped": self.skipped, "sampler": self.sampler_state(),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        sd = dict(sd)
        self.sampler.load_state_dict(sd.pop("sampler"))  # fast-forwards to the saved position
        for key, value in sd.items():
            setattr(self, key, value)


# --------------------------------------------------------------------------- the loop


def train_round(
    config: RoundConfig,
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    train_cuts: Sequence[tuple[Any, ...]] | None = None,
    dev_cuts: str | Path | None = None,
    decode_config: DecodeConfig | None = None,
    command: str | None = None,
    force_precision: bool = False,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train one ILT round's LoRA on ``model_dir`` and keep the best adapter.

    :param config: the round (LoRA, knowledge task, training, selection).
    :param model_dir: the current full model ``M_{t-1}`` (its backbone is ``config.backbone``).
    :param out_dir: where everything goes (see the module docstring); an
        existing run there with the same resolved config is resumed.
    :param train_cuts: ``[(manifest, weight)]`` or ``[(manifest, weight,
        languages)]`` replacing ``config.task.data``.
    :param dev_cuts: dev manifest, decoded and scored every ``eval_every``
        steps; without one, ``best/`` is the final adapter.
    :param decode_config: dev decoding options; default greedy
        (``DecodeConfig(beam_size={"default": 1})``).
    :param command: the exact command line, saved as ``command.txt``.
    :param force_precision: keep bf16 on a CPU instead of falling back to fp32.
    :param on_step: called on the main process after each optimiser step
        (after that step's evaluation and checkpoint) with the step and its
        log record; an exception from it stops training.
    :raises IltInputError: missing or empty data, a run of another config in
        ``out_dir``, a non-finite loss.
    """
    import torch
    from accelerate import Accelerator, PartialState
    from accelerate.utils import parse_flag_from_env, set_seed
    from tqdm.auto import tqdm

    from ilt.plugins import create

    started = time.monotonic()
    out_dir, model_dir = Path(out_dir), Path(model_dir)

    # ---- the resolved config: the data actually used
    if train_cuts is not None:
        config = dataclasses.replace(config, task=dataclasses.replace(
            config.task, data=[DataSource(str(item[0]), float(item[1]), *item[2:]) for item in train_cuts]))
    if not config.task.data:
        raise IltInputError(f"round {config.name!r}: no training data: list cuts under task.data "
                            f"or pass training manifests")
    # Normalise through YAML (as round.yaml will be read back) so that the
    # config hash of a resumed run and of lineage.json match this one.
    config = from_dict(RoundConfig, yaml.safe_load(dump_yaml(config)), "<resolved round config>")
    train = config.train
    sources = config.task.data
    if dev_cuts is not None and not Path(dev_cuts).is_file():
        raise IltInputError(f"{dev_cuts}: dev cut manifest not found")
    if decode_config is None:
        decode_config = DecodeConfig(backbone=config.backbone, beam_size={"default": 1})

    # As Accelerate's own state does: `accelerate launch --cpu` sets ACCELERATE_USE_CPU.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    checkpoints = list_checkpoints(out_dir)
    if (out_dir / ROUND_YAML).is_file() and checkpoints:
        previous = load_round(out_dir / ROUND_YAML)
        if config_hash(previous) != config_hash(config):
            raise IltInputError(
                f"{out_dir}: holds checkpoints of a run with a different config "
                f"({out_dir / ROUND_YAML}); use another output directory or remove it")
    if state.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out_dir / ROUND_YAML, dump_yaml(config))
        if command:
            write_text_atomic(out_dir / "command.txt", command.rstrip("\n") + "\n")
        manifests = describe_manifests([(s.cuts, s.weight, s.languages) for s in sources]) + (
            describe_manifests([(dev_cuts, 1.0)], role="dev") if dev_cuts else [])
        write_json_atomic(out_dir / MANIFESTS_JSON, manifests)
    state.wait_for_everyone()

    mixed = _resolve_precision(train.precision, state.device.type, force_precision)
    accelerator = Accelerator(
        mixed_precision=mixed,
        gradient_accumulation_steps=train.grad_accum,
        log_with="tensorboard",
        project_dir=str(out_dir),
    )
    device = accelerator.device

    # ---- data (read first: bad data fails before the model loads)
    skips = Skips("train")
    stream, epoch_cuts, epoch_seconds = _training_stream(sources, train.seed, skips)
    buckets = _bucket_count(train, epoch_cuts, epoch_seconds)
    if buckets < train.num_buckets:
        log.info("%d duration bucket(s) instead of num_buckets %d: %d training cuts fill only %d bucket(s) "
                 "with %d full micro-batches each", buckets, train.num_buckets, epoch_cuts, buckets,
                 _BATCHES_PER_BUCKET)

    dev = None
    if dev_cuts is not None:
        from ilt.data.manifests import load_cuts

        dev = load_cuts(dev_cuts).filter(_has_text).to_eager()
        if train.max_dev_cuts is not None and len(dev) > train.max_dev_cuts:
            # evenly spaced, so every language and accent of the dev set stays in
            stride = len(dev) / train.max_dev_cuts
            keep = {int(i * stride) for i in range(train.max_dev_cuts)}
            from lhotse import CutSet

            dev = CutSet.from_cuts(c for i, c in enumerate(dev) if i in keep)
        if len(dev) == 0:
            raise IltInputError(f"{dev_cuts}: dev set has no cuts with a transcript")

    # ---- model, LoRA, loss
    loss_fn = create("loss", config.task.loss)
    set_seed(train.seed)
    backbone = create("backbone", config.backbone, model_dir, dtype=torch.float32, device=None)
    model = attach_lora(backbone, config.lora)
    if train.gradient_checkpointing:
        base = model.get_base_model()
        enable = getattr(base, "activation_checkpointing_enable", None)  # transformers >= 5.x
        if enable is not None:
            enable({"use_reentrant": False})
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()

    sampler = _make_sampler(stream, train, epoch_cuts, epoch_seconds, accelerator.num_processes,
                            accelerator.process_index)
    steps_per_epoch = None
    if train.max_steps is None or train.eval_every is None:
        per_process = math.ceil(_batches_per_epoch(stream, train, epoch_cuts, epoch_seconds)
                                / accelerator.num_processes)
        steps_per_epoch = max(1, math.ceil(per_process / train.grad_accum))
    total_steps = train.max_steps or train.epochs * steps_per_epoch
    eval_every = train.eval_every or steps_per_epoch
    save_every = train.save_every or eval_every
    loader = torch.utils.data.DataLoader(
        _CollateDataset(backbone), sampler=sampler, batch_size=None, collate_fn=_identity,
        num_workers=train.num_workers, generator=torch.Generator().manual_seed(train.seed),
        persistent_workers=False)

    # ---- optimiser, schedule
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay,
                                  fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _warmup_linear_decay(train.warmup_steps, total_steps))
    model, optimizer = accelerator.prepare(model, optimizer)
    progress = _State(sampler)
    # The scheduler steps once per optimiser step (not prepared: Accelerate
    # would step it once per process); it is checkpointed with the rest.
    accelerator.register_for_checkpointing(scheduler, progress)
    accelerator.register_save_state_pre_hook(_save_adapter_hook(accelerator))
    accelerator.register_load_state_pre_hook(_load_adapter_hook(accelerator))

    resumed_from = None
    if checkpoints:
        resumed_from = checkpoints[-1][1]
        log.info("resuming from %s", resumed_from)
        accelerator.load_state(str(resumed_from))
        for reason, ids in progress.skipped.items():
            skips.items.setdefault(reason, [])
            skips.items[reason].extend(i for i in ids if i not in skips.items[reason])

    accelerator.init_trackers("tensorboard", config=_flat("", to_dict(config), {}))
    main = accelerator.is_main_process
    log_file = (out_dir / TRAIN_LOG).open("a", encoding="utf-8") if main else None

    def write_log(record: dict[str, Any]) -> None:
        if log_file is not None:
            log_file.write(json.dumps(record, ensure_ascii=False) + "\n")
            log_file.flush()

    write_log({"event": "resume" if resumed_from else "start", "step": progress.step,
               "total_steps": total_steps, "steps_per_epoch": steps_per_epoch, "epoch_cuts": epoch_cuts,
               "precision": mixed if mixed != "no" else "fp32", "processes": accelerator.num_processes,
               "checkpoint": str(resumed_from) if resumed_from else None})

    seen_skips = {i for ids in skips.items.values() for i in ids}
    bar = tqdm(total=total_steps, initial=progress.step, disable=not accelerator.is_local_main_process,
               desc=f"train {config.name}", dynamic_ncols=True)
    # (loss, cut IDs) of the micro-batches of the current optimiser step, losses
    # kept on the device: one host sync per optimiser step, not per micro-batch
    step_losses: list[tuple[Any, list[str]]] = []
    batches = iter(loader)
    try:
        while progress.step < total_steps:
            batch = next(batches)
            progress.micro_batches += 1
            progress.cuts += len(batch) + len(batch.skipped)
            for cut_id, reason in batch.skipped.items():
                if cut_id not in seen_skips:
                    seen_skips.add(cut_id)
                    head, _, detail = reason.partition(":")
                    skips.skip(head.strip(), cut_id, detail.strip())
            with accelerator.accumulate(model):
                if len(batch):
                    loss = loss_fn(backbone, model, batch.to(device))
                    step_losses.append((loss.detach(), batch.cut_ids))
                else:  # every cut skipped: a zero loss keeps the processes in step
                    loss = sum((p * 0).sum() for p in params)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    # before the optimiser step: a non-finite loss must not reach the weights
                    step_loss = _check_finite(accelerator, step_losses, progress.step + 1, out_dir)
                    step_losses = []
                    if train.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(params, train.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            if not accelerator.optimizer_step_was_skipped:
                scheduler.step()
            progress.step += 1
            step = progress.step
            record = {
                "event": "step", "step": step,
                "epoch": round(progress.cuts * accelerator.num_processes / epoch_cuts, 4),
                "loss": step_loss,
                "lr": scheduler.get_last_lr()[0],
            }
            write_log(record)
            accelerator.log({k: v for k, v in (("train/loss", record["loss"]), ("train/lr", record["lr"]))
                             if v is not None}, step=step)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4f}" if record["loss"] is not None else "-",
                            lr=f"{record['lr']:.2e}")

            if dev is not None and (step % eval_every == 0 or step == total_steps):
                _evaluate(accelerator, backbone, model, loss_fn, dev, decode_config, config, out_dir,
                          progress, step, train.micro_batch, write_log)
            if step % save_every == 0 or step == total_steps:
                progress.skipped = {k: list(v) for k, v in skips.items.items()}
                _save_checkpoint(accelerator, out_dir, step)
            if on_step is not None and main:
                on_step(step, record)
        # ---- the final adapter (and best/ when there is no dev set to choose by)
        final_dir = out_dir / "final"
        if main:
            last = progress.last_eval if progress.last_eval and progress.last_eval["step"] == progress.step else {}
            _save_adapter(accelerator.unwrap_model(model), final_dir, config, out_dir,
                          {**last, "step": progress.step})
            if progress.best_step is None:  # no dev set, or no evaluation gave a score
                note = "no dev set" if dev is None else f"no dev evaluation gave a {config.select.metric}"
                _save_adapter(accelerator.unwrap_model(model), out_dir / "best", config, out_dir,
                              {**last, "step": progress.step, "note": f"{note}: the final adapter"})
        accelerator.wait_for_everyone()
    finally:
        bar.close()
        if log_file is not None:
            log_file.close()
        accelerator.end_training()

    counts = skips.report()
    seconds = time.monotonic() - started
    log.info("round %s: %d steps in %.1f s; best %s %s at step %s", config.name, progress.step, seconds,
             config.select.metric, progress.best_metric, progress.best_step)
    return TrainResult(
        out_dir=out_dir, best_dir=out_dir / "best", final_dir=final_dir,
        best_metric=progress.best_metric, best_score=progress.best_score, steps=progress.step,
        seconds=seconds, skipped=counts, resumed_from=resumed_from)


def _check_finite(accelerator: Any, losses: Sequence[tuple[Any, list[str]]], step: int,
                  out_dir: Path) -> float | None:
    """The mean loss of an optimiser step's micro-batches (``None`` when all
    were empty), after one host sync; raises :class:`IltInputError` naming
    the step and the cuts of each non-finite micro-batch, on every process
    when any process has one."""
    import torch

    device = accelerator.device
    values = torch.stack([loss.float() for loss, _ in losses]) if losses else torch.zeros(0, device=device)
    bad = ~torch.isfinite(values)
    flag = bad.any().reshape(1).int()
    if accelerator.num_processes > 1:  # every process stops together
        flag = accelerator.gather(flag).amax().reshape(1)
    host = torch.cat([values.double(), flag.double()]).tolist()  # the one sync
    values_host, any_bad = host[:-1], bool(host[-1])
    if any_bad:
        last = list_checkpoints(out_dir)
        local = [(value, ids) for value, (_, ids) in zip(values_host, losses) if not math.isfinite(value)]
        where = ("; ".join(f"the loss is {value} on the batch of cuts {', '.join(ids)}" for value, ids in local)
                 if local else "the loss is not finite on another process")
        raise IltInputError(f"step {step}: {where}; training stopped"
                            + (f" (the last good checkpoint is {last[-1][1]})" if last else ""))
    return sum(values_host) / len(values_host) if values_host else None


# --------------------------------------------------------------------------- evaluation


def _dev_loss(backbone: Any, model: Any, loss_fn: Any, dev: Any, micro_batch: int, device: Any) -> float | None:
    import torch
    from lhotse import CutSet

    total = weight = 0.0
    cuts = list(dev)
    with torch.no_grad():
        for i in range(0, len(cuts), micro_batch):
            batch = backbone.collate(CutSet.from_cuts(cuts[i:i + micro_batch]))
            if not len(batch):
                continue
            loss = float(loss_fn(backbone, model, batch.to(device)))
            total += loss * len(batch)
            weight += len(batch)
    return total / weight if weight else None


def _evaluate(accelerator: Any, backbone: Any, model: Any, loss_fn: Any, dev: Any, decode_config: DecodeConfig,
              config: RoundConfig, out_dir: Path, progress: _State, step: int, micro_batch: int,
              write_log: Callable[[dict[str, Any]], None]) -> None:
    """Dev loss, decode and score on the main process; keep the adapter if it is the best."""
    import torch

    from ilt.decode import decode_cuts
    from ilt.score import score

    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.eval()
        # Decoding may reseed torch (sampling fallback): keep training's RNG
        # stream independent of evaluation.
        devices = [accelerator.device] if accelerator.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                dev_loss = _dev_loss(backbone, unwrapped, loss_fn, dev, micro_batch, accelerator.device)
                records = decode_cuts(backbone, unwrapped, dev, decode_config, progress=False)
        finally:
            unwrapped.train()
        hyps = {r["id"]: r.get("text") or "" for r in records}
        result = score(_references(dev), hyps, group_by="language")
        rates = {row.group: row.error_rate for row in result.rows}
        overall = result.overall.error_rate
        metric = dev_loss if config.select.metric == "dev_loss" else overall
        record = {"event": "eval", "step": step, "dev_loss": dev_loss, "dev_error_rate": overall,
                  "per_language": rates, config.select.metric: metric}
        write_log(record)
        values = {"dev/loss": dev_loss, "dev/error_rate/Overall": overall,
                  **{f"dev/error_rate/{g}": r for g, r in rates.items()}}
        accelerator.log({k: v for k, v in values.items() if v is not None}, step=step)
        log.info("step %d: dev loss %s, error rate %s (%s)", step,
                 f"{dev_loss:.4f}" if dev_loss is not None else "n/a",
                 f"{overall:.2f}" if overall is not None else "n/a",
                 ", ".join(f"{g} {r:.2f}" for g, r in rates.items() if r is not None))
        score_json = {"step": step, "metric": config.select.metric, "value": metric, "dev_loss": dev_loss,
                      **result.to_dict()}
        progress.last_eval = score_json
        if metric is not None and (progress.best_metric is None or metric < progress.best_metric):
            _save_adapter(unwrapped, out_dir / "best", config, out_dir, score_json)
            progress.best_metric, progress.best_step, progress.best_score = metric, step, score_json
            log.info("step %d: new best %s %.4f -> %s", step, config.select.metric, metric, out_dir / "best")
    accelerator.wait_for_everyone()


def _save_adapter(model: Any, dst: Path, config: RoundConfig, out_dir: Path, score_json: dict[str, Any]) -> None:
    """An adapter directory (PEFT safetensors + score.json, round.yaml,
    manifests.json), written to a temporary directory and renamed."""
    with atomic_dir(dst) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        write_json_atomic(tmp / SCORE_JSON, score_json)
        write_text_atomic(tmp / ROUND_YAML, dump_yaml(config))
        if (out_dir / MANIFESTS_JSON).is_file():
            shutil.copyfile(out_dir / MANIFESTS_JSON, tmp / MANIFESTS_JSON)


# --------------------------------------------------------------------------- checkpoints


def _save_adapter_hook(accelerator: Any) -> Callable[..., None]:
    """Accelerate save hook: write only the LoRA weights (not the full model)."""

    def hook(models: list[Any], weights: list[Any], output_dir: str) -> None:
        if accelerator.is_main_process:
            for i, model in enumerate(models):
                name = ADAPTER_SUBDIR if i == 0 else f"{ADAPTER_SUBDIR}_{i}"
                accelerator.unwrap_model(model).save_pretrained(
                    os.path.join(output_dir, name), safe_serialization=True)
        weights.clear()

    return hook


def _load_adapter_hook(accelerator: Any) -> Callable[..., None]:
    def hook(models: list[Any], input_dir: str) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        for i, model in enumerate(models):
            name = ADAPTER_SUBDIR if i == 0 else f"{ADAPTER_SUBDIR}_{i}"
            path = os.path.join(input_dir, name, "adapter_model.safetensors")
            if not os.path.isfile(path):
                raise IltInputError(f"{input_dir}: checkpoint has no adapter weights ({path})")
            result = set_peft_model_state_dict(accelerator.unwrap_model(model), load_file(path))
            unexpected = getattr(result, "unexpected_keys", None)
            if unexpected:
                raise IltInputError(f"{path}: adapter weights do not fit this LoRA: {unexpected[:3]}")
        models.clear()

    return hook


def _save_checkpoint(accelerator: Any, out_dir: Path, step: int) -> None:
    """``checkpoints/step-N``: written under a temporary name, then renamed;
    the last :data:`KEEP_CHECKPOINTS` are kept."""
    root = out_dir / CHECKPOINTS
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replace_dir(tmp, final)
        for _, old in list_checkpoints(out_dir)[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


__all__ = ["TrainResult", "train_round", "list_checkpoints"]
