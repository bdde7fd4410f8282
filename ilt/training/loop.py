"""One ILT round: a LoRA on the current model, trained on a knowledge task, the
best dev checkpoint kept.

It runs on Accelerate, so the same code runs on a CPU, one GPU or under
``accelerate launch`` (DDP). :func:`train_round` is the whole stage and a short
orchestration of the rooms that do the work; ``ilt train`` is a thin wrapper.

=======================  ==================================================
the data mix, sampler    :mod:`ilt.data.mix`
the data loader          :mod:`ilt.training.loader`
resumable state          :mod:`ilt.training.checkpoint`
dev loss and dev WER     :mod:`ilt.training.evaluate`
the adapter directory    :mod:`ilt.models.adapter`
the LoRA                 :mod:`ilt.training.lora`
=======================  ==================================================

An *epoch* is as many cuts as all sources of the mix hold together;
``max_steps``, when set, replaces ``epochs``.

Precision
    ``bf16`` and ``fp16`` are for GPUs: the frozen base weights are loaded in
    that precision (half the memory of fp32), the trainable LoRA weights stay
    fp32, and the forward pass runs under autocast. On a CPU both fall back
    to fp32 with a warning (CPU autocast is several times slower than fp32
    on most CPUs); ``force_precision=True`` keeps bf16 there. A GPU without
    bf16 support trains in fp32 instead of bf16.

Outputs in ``out_dir``::

    round.yaml          the resolved round config (data sources filled in)
    command.txt         the exact command, when given
    manifests.json      the data: path, weight and sha256 of each manifest
    train_log.jsonl     one JSON object per optimiser step and per evaluation
    <tensorboard run>/  TensorBoard events (``tensorboard --logdir out_dir``)
    checkpoints/step-N/ the last two checkpoints (see :mod:`ilt.training.checkpoint`)
    best/               the adapter with the lowest ``select.metric`` so far
    start/              the incoming model's adapter (the LoRA before any step, a no-op), scored at
                        step 0 (``select.include_start``); it becomes best/ at the end when no
                        trained checkpoint scored lower (the patience compares trained ones only)
    final/              the adapter after the last step

Re-running the same command resumes from the newest complete checkpoint and
ends with the same adapter an uninterrupted run would have (bitwise on CPU);
evaluation runs under its own forked RNG. A different config in the same
``out_dir`` is refused. A non-finite loss stops every process with
:class:`IltInputError` naming the step and the cuts of the batch; the
checkpoints before it stay untouched.

Several processes (``accelerate launch``, ``torchrun``): each draws its own
batches (the sampler is given the world size and rank) and decodes its share
of the dev cuts (:mod:`ilt.training.evaluate`: gathered, scored on the main
process, the score and the best-adapter decision broadcast to every process);
all writing happens on the main process; the step loss logged is the mean over
every process's micro-batches (the loss one process with the same global batch
logs). Sharded parameters (:mod:`ilt.training.sharding`): FSDP and ZeRO-3
gather the LoRA state for saving; FSDP 2 asked for on CPU processes (which
Accelerate runs as plain gloo processes) is applied here with ``fully_shard``.
Tested on CPU with two processes, DDP and FSDP 2 (tests/test_sharded_training.py);
DeepSpeed only through Accelerate, untested here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from ilt.config import (
    DataSource,
    DecodeConfig,
    RoundConfig,
    config_hash,
    dump_yaml,
    from_dict,
    load_round,
    to_dict,
)
from ilt.core.allocator import reuse_freed_memory
from ilt.core.files import write_json_atomic, write_text_atomic
from ilt.core.runtime import Skips, process_state
from ilt.data.mix import Mix, log_buckets, training_stream
from ilt.errors import IltInputError
from ilt.models.adapter import (
    MANIFESTS_JSON,
    ROUND_YAML,
    describe_manifests,
    save_adapter,
)
from ilt.training.checkpoint import (
    Checkpointer,
    TrainState,
    check_run_inputs,
    list_checkpoints,
    remove_partial_writes,
)
from ilt.training.loader import make_loader
from ilt.training.sharding import (
    apply_fully_shard,
    cpu_fsdp2_requested,
    full_state_dict,
    gathered_for_decoding,
)
from ilt.training.sizing import checkpointing_on, enable_checkpointing, make_optimizer

log = logging.getLogger("ilt")

TRAIN_LOG = "train_log.jsonl"
#: The incoming model's adapter (the LoRA before any step), scored at step 0 (``select.include_start``).
START_DIR = "start"
#: Training stops when this many micro-batches in a row had every cut skipped.
MAX_EMPTY_MICRO_BATCHES = 1000


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
    #: the step at which ``select.patience`` ended the round (``None``: it ran to its cap)
    stopped_early: int | None = None

    def summary(self) -> str:
        """A few lines for the command line."""
        metric = (self.best_score or {}).get("metric", "metric")
        best = ("no dev score" if self.best_metric is None
                else f"best {metric} {self.best_metric:.4g} at step {(self.best_score or {}).get('step')}")
        lines = [f"{self.steps} steps in {self.seconds:.1f} s"
                 + (f" (resumed from {self.resumed_from})" if self.resumed_from else "")
                 + (" (early stop)" if self.stopped_early is not None else "") + f"; {best}",
                 f"best adapter: {self.best_dir}", f"final adapter: {self.final_dir}"]
        if self.skipped:
            lines.append("skipped: " + ", ".join(f"{n} {reason}" for reason, n in self.skipped.items()))
        return "\n".join(lines)


# --------------------------------------------------------------------------- set-up


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (int, float, str, bool)):
        out[prefix] = value
    else:
        out[prefix] = json.dumps(value)
    return out


def resolve_precision(requested: str, device_type: str, force: bool) -> str:
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


def base_dtype(mixed_precision: str) -> Any:
    """The dtype the frozen base weights are loaded in for Accelerate's ``mixed_precision``."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)


def _warmup_linear_decay(warmup: int, total: int) -> Callable[[int], float]:
    """LR factor: linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def resolve_round(config: RoundConfig, train_cuts: Sequence[tuple[Any, ...]] | None) -> RoundConfig:
    """The round config with the data actually used, normalised through YAML
    (as ``round.yaml`` is read back) so that config hashes of a resumed run
    and of ``lineage.json`` match this one."""
    if train_cuts is not None:
        config = dataclasses.replace(config, task=dataclasses.replace(
            config.task, data=[DataSource(str(item[0]), float(item[1]), *item[2:]) for item in train_cuts]))
    if not config.task.data:
        raise IltInputError(f"round {config.name!r}: no training data: list cuts under task.data "
                            f"or pass training manifests")
    return from_dict(RoundConfig, yaml.safe_load(dump_yaml(config)), "<resolved round config>")


def _prepare_out_dir(config: RoundConfig, out_dir: Path, dev_cuts: str | Path | None, command: str | None,
                     is_main: bool) -> list[dict[str, Any]]:
    """Refuse another run's directory; write ``round.yaml``, ``command.txt``
    and ``manifests.json`` (main process); return the manifests."""
    if (out_dir / ROUND_YAML).is_file() and list_checkpoints(out_dir):
        if config_hash(load_round(out_dir / ROUND_YAML)) != config_hash(config):
            raise IltInputError(
                f"{out_dir}: holds checkpoints of a run with a different config "
                f"({out_dir / ROUND_YAML}); use another output directory or remove it")
    manifests = describe_manifests([(s.cuts, s.weight, s.languages) for s in config.task.data]) + (
        describe_manifests([(dev_cuts, 1.0)], role="dev") if dev_cuts else [])
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        remove_partial_writes(out_dir)  # left by a killed run: never complete, never read
        write_text_atomic(out_dir / ROUND_YAML, dump_yaml(config))
        if command:
            write_text_atomic(out_dir / "command.txt", command.rstrip("\n") + "\n")
        write_json_atomic(out_dir / MANIFESTS_JSON, manifests)
    return manifests


def load_for_training(config: RoundConfig, model_dir: Path, mixed_precision: str) -> tuple[Any, Any]:
    """The backbone (frozen weights in the round's precision) and the PEFT
    model with a fresh fp32 LoRA, in training mode."""
    from ilt.core.registry import create
    from ilt.training.lora import attach_lora

    backbone = create("backbone", config.backbone, model_dir, dtype=base_dtype(mixed_precision), device=None)
    model = attach_lora(backbone, config.lora)
    if config.train.lid_embeddings:  # trained fully beside the LoRA, saved with it (ilt.models.lid)
        from ilt.models.lid import train_embeddings

        train_embeddings(backbone)
    if checkpointing_on(config.train, sum(p.numel() for p in backbone.model.parameters())):
        enable_checkpointing(model)
    model.train()
    return backbone, model


# --------------------------------------------------------------------------- the run


class _Run:
    """One round's training run on Accelerate: the loop, evaluation and outputs."""

    def __init__(self, config: RoundConfig, out_dir: Path, accelerator: Any, backbone: Any, model: Any,
                 loss_fn: Any, mix: Mix, dev: Any, decode_config: DecodeConfig,
                 manifests: list[dict[str, Any]], skips: Skips) -> None:
        import torch

        self.config, self.train, self.out_dir = config, config.train, out_dir
        self.accelerator, self.backbone, self.loss_fn = accelerator, backbone, loss_fn
        self.dev, self.decode_config, self.manifests, self.skips = dev, decode_config, manifests, skips
        self.epoch_cuts = mix.epoch_cuts
        train = config.train
        feed = make_loader(backbone, mix, train, accelerator.num_processes, accelerator.process_index)
        sampler, steps_per_epoch, self.loader = feed.sampler, feed.steps_per_epoch, feed.loader
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = train.max_steps or train.epochs * steps_per_epoch
        self.eval_every = train.eval_every or steps_per_epoch
        self.save_every = train.save_every or self.eval_every
        # FSDP 2 asked for on CPU processes, which Accelerate runs as plain MULTI_CPU: shard here
        # (ilt.training.sharding), and prepare only the optimiser (no DDP around a sharded model)
        self.own_fsdp = cpu_fsdp2_requested(accelerator)
        if self.own_fsdp:
            apply_fully_shard(model)
        self.params = [p for p in model.parameters() if p.requires_grad]
        optimizer = make_optimizer(train, self.params, accelerator.device.type)
        # The scheduler steps once per optimiser step (not prepared: Accelerate
        # would step it once per process); it is checkpointed with the rest.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _warmup_linear_decay(train.warmup_steps, self.total_steps))
        if self.own_fsdp:
            self.model, self.optimizer = model, accelerator.prepare(optimizer)
        else:
            self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.state = TrainState(sampler)
        # saved as JSON + safetensors by the Checkpointer, never registered with
        # Accelerate (its save_state pickles them)
        self.checkpoints = Checkpointer(accelerator, out_dir, config, manifests, self.state, model=self.model,
                                        optimizer=self.optimizer, scheduler=self.scheduler)
        self.log_file = None

    # ---- bookkeeping
    def write_log(self, record: dict[str, Any]) -> None:
        if self.log_file is not None:
            self.log_file.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.log_file.flush()

    def resume(self) -> Path | None:
        def restore_skips(state: TrainState) -> None:
            for reason, ids in state.skipped.items():
                known = self.skips.items.setdefault(reason, [])
                have = set(known)  # a set: the lists may hold thousands of IDs
                for i in ids:
                    if i not in have:
                        have.add(i)
                        known.append(i)

        resumed = self.checkpoints.resume(restore_skips)
        if resumed is not None:
            log.info("resumed from %s", resumed)
        return resumed

    def start(self, mixed_precision: str) -> Path | None:
        """Resume from the newest checkpoint (if any), start the trackers and the
        log; return the checkpoint resumed from."""
        accelerator = self.accelerator
        resumed_from = self.resume()
        accelerator.init_trackers("tensorboard", config=_flat("", to_dict(self.config), {}))
        if accelerator.is_main_process:
            self.log_file = (self.out_dir / TRAIN_LOG).open("a", encoding="utf-8")
        self.write_log({"event": "resume" if resumed_from else "start", "step": self.state.step,
                        "total_steps": self.total_steps, "steps_per_epoch": self.steps_per_epoch,
                        "epoch_cuts": self.epoch_cuts,
                        "precision": mixed_precision if mixed_precision != "no" else "fp32",
                        "processes": accelerator.num_processes,
                        "checkpoint": str(resumed_from) if resumed_from else None})
        return resumed_from

    def count_skips(self, batch: Any, seen: set[str]) -> None:
        for cut_id, reason in batch.skipped.items():
            if cut_id not in seen:
                seen.add(cut_id)
                head, _, detail = reason.partition(":")
                self.skips.skip(head.strip(), cut_id, detail.strip())

    # ---- one optimiser step
    def optimiser_step(self, batches: Any, seen: set[str]) -> float | None:
        """Draw micro-batches until the gradients sync, then step; return the step's mean loss."""
        accelerator, state = self.accelerator, self.state
        # (loss, cut IDs) of the micro-batches of this optimiser step, losses kept
        # on the device: one host sync per optimiser step, not per micro-batch
        step_losses: list[tuple[Any, list[str]]] = []
        empty = 0
        while True:
            batch = next(batches)
            state.micro_batches += 1
            state.cuts += len(batch) + len(batch.skipped)
            self.count_skips(batch, seen)
            if not len(batch):
                # Every cut skipped: draw the next micro-batch. (A zero loss
                # without a forward pass leaves the other processes waiting in
                # DDP's gradient all-reduce forever.)
                empty += 1
                if empty >= MAX_EMPTY_MICRO_BATCHES:
                    raise IltInputError(
                        f"{empty} micro-batches in a row had no usable cut (skipped so far: "
                        f"{self.skips.counts()}); check the training manifests' audio and transcripts")
                continue
            empty = 0
            with accelerator.accumulate(self.model):
                loss = self.loss_fn(self.backbone, self.model, batch.to(accelerator.device))
                step_losses.append((loss.detach(), batch.cut_ids))
                accelerator.backward(loss)
                step_loss = None
                if accelerator.sync_gradients:
                    # before the optimiser step: a non-finite loss must not reach the weights
                    step_loss = _check_finite(accelerator, step_losses, state.step + 1, self.out_dir)
                    if self.train.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(self.params, self.train.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            if accelerator.sync_gradients:
                if not accelerator.optimizer_step_was_skipped:
                    self.scheduler.step()
                state.step += 1
                return step_loss

    # ---- evaluation
    def save_adapter_to(self, directory: Path, score: dict[str, Any]) -> None:
        """An adapter directory of the current LoRA, written by the main process;
        call on every process (sharded parameters are gathered first)."""
        full = full_state_dict(self.accelerator, self.model)
        if self.accelerator.is_main_process:
            save_adapter(self.accelerator.unwrap_model(self.model), directory, self.config, self.manifests, score,
                         state_dict=full)

    def evaluate(self, step: int) -> None:
        """Dev loss, decode and score, each process on its share of the dev cuts
        (:mod:`ilt.training.evaluate`); the score and the best-adapter decision
        are the main process's, on every process; keep the adapter if it is the best."""
        import torch

        from ilt.training.evaluate import Collective, evaluate

        accelerator, state, metric = self.accelerator, self.state, self.config.select.metric
        collective = Collective(accelerator)
        unwrapped = accelerator.unwrap_model(self.model)
        unwrapped.eval()
        # Decoding may reseed torch (sampling fallback): keep training's RNG
        # stream independent of evaluation.
        devices = [accelerator.device] if accelerator.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), gathered_for_decoding(accelerator, self.model):
                score = evaluate(self.backbone, unwrapped, self.loss_fn, self.dev, self.decode_config,
                                 metric=metric, micro_batch=self.train.micro_batch,
                                 device=accelerator.device, step=step, collective=collective)
        finally:
            unwrapped.train()
        rates = {row["group"]: row["error_rate"] for row in score["rows"]}
        overall = score["overall"]["error_rate"]
        values = {"dev/loss": score["dev_loss"], "dev/error_rate/Overall": overall,
                  **{f"dev/error_rate/{g}": r for g, r in rates.items()}}
        accelerator.log({k: v for k, v in values.items() if v is not None}, step=step)
        state.last_eval = score
        value, select = score["value"], self.config.select
        record = {"event": "eval", "step": step, "dev_loss": score["dev_loss"], "dev_error_rate": overall,
                  "per_language": rates, metric: value}
        if step == 0:  # the incoming model (select.include_start): its no-op LoRA kept aside in start/
            self.save_adapter_to(self.out_dir / START_DIR, score)
            state.start_metric, state.start_score = value, score
            self.write_log({**record, "start": True})
            accelerator.wait_for_everyone()
            return

        def below_best(margin: float) -> bool:
            return value is not None and (state.best_metric is None or value < state.best_metric - margin)

        # the main process decides, every process follows (the gather for saving is a collective):
        # a new best adapter, and whether it is lower by more than min_delta (the patience's reset)
        best, improved = collective.broadcast((below_best(0.0), below_best(select.min_delta)))
        if best:
            self.save_adapter_to(self.out_dir / "best", score)
            state.best_metric, state.best_step, state.best_score = value, step, score
            log.info("step %d: new best %s %.4f -> %s", step, metric, value, self.out_dir / "best")
        state.stale_evals = 0 if improved else state.stale_evals + 1
        if select.patience is not None and state.stale_evals >= select.patience:
            state.stopped_early = step
            log.info("step %d: early stop: %d dev evaluations without a %s below %.4f (select.patience %d)",
                     step, state.stale_evals, metric, state.best_metric - select.min_delta, select.patience)
        self.write_log({**record, "best": bool(best), "stale_evals": state.stale_evals,
                        **({"stopped_early": True} if state.stopped_early == step else {})})
        accelerator.wait_for_everyone()

    # ---- the loop
    def loop(self, on_step: Callable[[int, dict[str, Any]], None] | None, bar: Any) -> None:
        state, accelerator = self.state, self.accelerator
        seen = {i for ids in self.skips.items.values() for i in ids}
        batches = iter(self.loader)
        if self.dev is not None and self.config.select.include_start and state.step == 0:
            # the incoming model is a candidate for best/: the LoRA before any step is a no-op (B = 0)
            self.evaluate(0)
        while state.step < self.total_steps and state.stopped_early is None:
            step_loss = self.optimiser_step(batches, seen)
            step = state.step
            record = {"event": "step", "step": step,
                      "epoch": round(state.cuts * accelerator.num_processes / self.epoch_cuts, 4),
                      "loss": step_loss, "lr": self.scheduler.get_last_lr()[0]}
            self.write_log(record)
            accelerator.log({k: v for k, v in (("train/loss", step_loss), ("train/lr", record["lr"]))
                             if v is not None}, step=step)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}" if step_loss is not None else "-", lr=f"{record['lr']:.2e}")
            if self.dev is not None and (step % self.eval_every == 0 or step == self.total_steps):
                self.evaluate(step)
            if step % self.save_every == 0 or step == self.total_steps or state.stopped_early == step:
                state.skipped = {k: list(v) for k, v in self.skips.items.items()}
                self.checkpoints.save(step)
            if on_step is not None and accelerator.is_main_process:
                on_step(step, record)

    def keep_start_if_best(self) -> None:
        """``select.include_start``: when no trained checkpoint scored below the
        incoming model (ties go to it), ``best/`` becomes ``start/``, its no-op LoRA.
        The patience only ever compared trained checkpoints, so the round ran
        exactly as it would have without the start check."""
        state = self.state
        if state.start_metric is None or (state.best_metric is not None and state.best_metric < state.start_metric):
            return
        if self.accelerator.is_main_process:
            best = self.out_dir / "best"
            if best.exists():
                shutil.rmtree(best)
            shutil.copytree(self.out_dir / START_DIR, best)
        state.best_metric, state.best_step, state.best_score = state.start_metric, 0, state.start_score
        self.accelerator.wait_for_everyone()

    def save_final(self) -> Path:
        """``final/`` (and ``best/`` when no evaluation chose one), written by the main process."""
        self.keep_start_if_best()
        state, final_dir = self.state, self.out_dir / "final"
        last = state.last_eval if state.last_eval and state.last_eval["step"] == state.step else {}
        self.save_adapter_to(final_dir, {**last, "step": state.step})
        if state.best_step is None:  # no dev set, or no evaluation gave a score
            note = ("no dev set" if self.dev is None
                    else f"no dev evaluation gave a {self.config.select.metric}")
            self.save_adapter_to(self.out_dir / "best", {**last, "step": state.step,
                                                         "note": f"{note}: the final adapter"})
        self.accelerator.wait_for_everyone()
        return final_dir


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
    # [loss sum, micro-batches, any non-finite]: summed (the flag: max) over the
    # processes, so every process stops together and the step loss is the
    # mean over all processes' micro-batches (as one process would log it)
    count = torch.tensor(float(len(losses)), dtype=torch.float64, device=device)
    totals = torch.stack([values.double().sum(), count, bad.any().double()])
    if accelerator.num_processes > 1:
        every = accelerator.gather(totals.reshape(1, 3))
        totals = torch.cat([every[:, :2].sum(0), every[:, 2].amax().reshape(1)])
    host = torch.cat([values.double(), totals]).tolist()  # the one sync
    values_host, (loss_sum, count), any_bad = host[:-3], host[-3:-1], bool(host[-1])
    if any_bad:
        last = list_checkpoints(out_dir)
        local = [(value, ids) for value, (_, ids) in zip(values_host, losses) if not math.isfinite(value)]
        where = ("; ".join(f"the loss is {value} on the batch of cuts {', '.join(ids)}" for value, ids in local)
                 if local else "the loss is not finite on another process")
        raise IltInputError(f"step {step}: {where}; training stopped"
                            + (f" (the last good checkpoint is {last[-1][1]})" if last else ""))
    return loss_sum / count if count else None


# --------------------------------------------------------------------------- the stage


def _dev_decode_config(config: RoundConfig, decode_config: DecodeConfig | None) -> DecodeConfig:
    """The dev decode's configuration: ``decode_config`` (``--decode-config``), else
    the round's ``select.decode``, else greedy; a decoding-only option
    (``quantize: int8``) is refused before training starts, not at the first dev check."""
    decode_config = (decode_config or config.select.decode
                     or DecodeConfig(backbone=config.backbone, beam_size={"default": 1}))
    if decode_config.quantize != "none":
        raise IltInputError(f"--decode-config: quantize: {decode_config.quantize} is for decoding only (ilt decode); "
                            f"set quantize: none in the dev decode configuration")
    return decode_config


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
    :param decode_config: dev decoding options; default greedy.
    :param command: the exact command line, saved as ``command.txt``.
    :param force_precision: keep bf16 on a CPU instead of falling back to fp32.
    :param on_step: called on the main process after each optimiser step
        (after that step's evaluation and checkpoint) with the step and its
        log record; an exception from it stops training.
    :raises IltInputError: missing or empty data, a run of another config in
        ``out_dir``, a non-finite loss.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from ilt.core.registry import create
    from ilt.training.evaluate import load_dev

    started, out_dir, model_dir = time.monotonic(), Path(out_dir), Path(model_dir)
    config = resolve_round(config, train_cuts)
    train = config.train
    if dev_cuts is not None and not Path(dev_cuts).is_file():
        raise IltInputError(f"{dev_cuts}: dev cut manifest not found")
    decode_config = _dev_decode_config(config, decode_config)
    state = process_state()  # `accelerate launch --cpu`, and torchrun on a machine without CUDA
    if state.device.type == "cpu":
        reuse_freed_memory()  # large temporaries reuse the heap: no page faults each step (ilt.core.allocator)
    manifests = _prepare_out_dir(config, out_dir, dev_cuts, command, state.is_main_process)
    check_run_inputs(out_dir, model_dir, manifests, state.is_main_process)  # resume: same base model and data
    state.wait_for_everyone()
    mixed = resolve_precision(train.precision, state.device.type, force_precision)
    accelerator = Accelerator(mixed_precision=mixed, gradient_accumulation_steps=train.grad_accum,
                              log_with="tensorboard", project_dir=str(out_dir))

    skips = Skips("train")  # data first: bad data fails before the model loads
    mix = training_stream(config.task.data, train.seed, skips)
    log_buckets(train, mix)
    dev = load_dev(dev_cuts, train.max_dev_cuts) if dev_cuts is not None else None

    loss_fn = create("loss", config.task.loss)
    set_seed(train.seed)
    backbone, model = load_for_training(config, model_dir, mixed)
    run = _Run(config, out_dir, accelerator, backbone, model, loss_fn, mix, dev, decode_config, manifests, skips)
    resumed_from = run.start(mixed)
    bar = tqdm(total=run.total_steps, initial=run.state.step, disable=not accelerator.is_local_main_process,
               desc=f"train {config.name}", dynamic_ncols=True)
    try:
        run.loop(on_step, bar)
        final_dir = run.save_final()
    finally:
        bar.close()
        if run.log_file is not None:
            run.log_file.close()
        accelerator.end_training()

    progress, seconds = run.state, time.monotonic() - started
    log.info("round %s: %d steps in %.1f s; best %s %s at step %s", config.name, progress.step, seconds,
             config.select.metric, progress.best_metric, progress.best_step)
    if progress.best_step == 0:
        log.warning("round %s: no checkpoint beat the incoming model on dev (%s %.4g at step 0): best/ is the "
                    "untrained LoRA, which changes nothing when merged", config.name, config.select.metric,
                    progress.best_metric)
    return TrainResult(
        out_dir=out_dir, best_dir=out_dir / "best", final_dir=final_dir, best_metric=progress.best_metric,
        best_score=progress.best_score, steps=progress.step, seconds=seconds, skipped=skips.report(),
        resumed_from=resumed_from, stopped_early=progress.stopped_early)


__all__ = ["TrainResult", "train_round", "list_checkpoints", "resolve_round", "load_for_training"]
