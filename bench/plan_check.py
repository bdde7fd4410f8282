#!/usr/bin/env python3
"""`ilt plan` against a measurement: the peak memory of real training steps on CPU.

For a backbone config (``openai/whisper-base``, ``openai/whisper-large-v3``:
the configs that ship with ilt) and a round YAML, a fresh subprocess

1. builds the model from its config with random weights, in the round's
   precision (bf16 base weights built directly in bf16),
2. attaches the round's LoRA with ilt's own ``attach_lora`` (fp32 LoRA),
3. runs ``--steps`` optimiser steps of ilt's training arithmetic at
   ``--micro-batch`` cuts of ``--seconds`` of (random) audio: forward under
   bf16 autocast, the generative loss, backward, the round's optimiser
   (AdamW, or bitsandbytes' 8-bit AdamW), gradient checkpointing as asked,

and reports the growth of its peak resident memory over what it held before
the model was built (``VmHWM`` after ``/proc/self/clear_refs``), beside the
planner's peak for one process (no DDP buckets: one process has none). glibc
is told to return large blocks (``MALLOC_MMAP_THRESHOLD_``; FACTS.md: without
it CPU RSS is mostly heap fragmentation).

    python bench/plan_check.py --model openai/whisper-base --config egs/mlc_slm/conf/feedback.yaml
    python bench/plan_check.py --model openai/whisper-large-v3 --config egs/mlc_slm/conf/feedback.yaml \\
        --checkpointing --optimizer adamw8bit --record

Run it on a quiet machine, one model at a time: large-v3 with r=512 needs
about 20 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
GIB = 1024 ** 3


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def measure(args: argparse.Namespace) -> dict:
    """The child: build, attach, train; return bytes and seconds."""
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from ilt.config import load_round as load_round_config
    from ilt.training.lora import attach_lora
    from ilt.training.plan import read_backbone_config

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    _, config_dict = read_backbone_config(args.model)
    round_config = load_round_config(args.config)
    _reset_peak()
    before = _status("VmRSS")
    bf16 = args.precision == "bf16"
    torch.set_default_dtype(torch.bfloat16 if bf16 else torch.float32)
    model = WhisperForConditionalGeneration(WhisperConfig(**config_dict))
    torch.set_default_dtype(torch.float32)
    built = _status("VmRSS") - before

    class Holder:  # what attach_lora needs of a backbone: the model and its target names
        def __init__(self, model):
            self.model = model

        def target_modules(self, spec):
            from ilt.models.base import resolve_target_modules
            from ilt.models.scopes import WHISPER_SCOPES

            return resolve_target_modules(self.model, spec, WHISPER_SCOPES, "Whisper")

    peft_model = attach_lora(Holder(model), round_config.lora)
    if args.checkpointing:
        peft_model.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        peft_model.base_model.model.config.use_cache = False
    params = [p for p in peft_model.parameters() if p.requires_grad]
    if args.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(params, lr=1e-4)
    else:
        optimizer = torch.optim.AdamW(params, lr=1e-4)
    frames = int(config_dict["max_source_positions"]) * 2
    features = torch.randn(args.micro_batch, int(config_dict["num_mel_bins"]), frames)
    tokens = max(4, int(args.seconds * 4))
    labels = torch.randint(0, 1000, (args.micro_batch, tokens))
    peft_model.train()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = peft_model(input_features=features.to(torch.bfloat16 if bf16 else torch.float32),
                              labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return {"model_bytes": built, "peak_bytes": _status("VmHWM") - before, "step_seconds": times,
            "trainable": sum(p.numel() for p in params), "loss": float(loss)}


def predict(args: argparse.Namespace) -> dict:
    from ilt.config import load_round as load_round_config
    from ilt.training.plan import plan, setup_from_round

    round_config = load_round_config(args.config)
    setup = setup_from_round(round_config, processes=1, micro_batch=args.micro_batch, seconds=args.seconds,
                             precision=args.precision, checkpointing=args.checkpointing,
                             optimizer=args.optimizer, device_memory_gib=1024.0)
    model, plans, _ = plan(args.model, round_config, setup, ["ddp"])
    p = plans["ddp"]
    return {"trainable": model.trainable, "static": p.static - p.buckets, "activations": p.activations,
            "peak": p.peak - p.buckets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="openai/whisper-base")
    parser.add_argument("--config", default=str(REPO_DIR / "egs/mlc_slm/conf/feedback.yaml"))
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--optimizer", choices=["adamw", "adamw8bit"], default="adamw")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        return
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"}
    run = subprocess.run([sys.executable, __file__, "--child", *sys.argv[1:]], env=env, capture_output=True,
                         text=True)
    if run.returncode:
        sys.exit(f"the measuring process failed:\n{run.stderr[-3000:]}")
    got = json.loads(run.stdout.strip().splitlines()[-1])
    want = predict(args)
    ratio = got["peak_bytes"] / want["peak"]
    line = (f"{args.model} {Path(args.config).name} micro-batch {args.micro_batch} x {args.seconds:g} s, "
            f"{args.precision}, checkpointing {'on' if args.checkpointing else 'off'}, {args.optimizer}: "
            f"trainable {got['trainable']:,} (plan {want['trainable']:,}); measured peak growth "
            f"{got['peak_bytes'] / GIB:.2f} GiB (model built {got['model_bytes'] / GIB:.2f}), plan "
            f"{want['peak'] / GIB:.2f} GiB (static {want['static'] / GIB:.2f} + activations "
            f"{want['activations'] / GIB:.2f}); measured/plan {ratio:.2f}; step "
            f"{', '.join(f'{t:.1f}' for t in got['step_seconds'])} s")
    print(line)
    if args.record:
        import datetime
        import platform

        cpu = next((x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                    if x.startswith("model name")), platform.processor())
        with (BENCH_DIR / "RESULTS.md").open("a", encoding="utf-8") as fh:
            fh.write(f"\n- {datetime.date.today()} ({cpu}, {os.cpu_count()} cores), `bench/plan_check.py`: {line}\n")


if __name__ == "__main__":
    main()
