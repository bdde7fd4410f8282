"""Where the time of one ilt training step (or one decoding batch) goes.

Runs the pieces of ``ilt.training.loop``'s step by hand on the benchmark model and
cuts: collate (audio, log-mel, tokens), forward (the loss), backward, clip and
AdamW step, and times each over ``--steps`` steps after one warm-up step; then
profiles one more step with ``torch.profiler`` and prints the operators that
take the most self time, with the share of the step they take. ``--decode``
profiles one decoding batch of ``WhisperBackbone.generate`` instead (beam
``--beam``), split into the encoder and the rest.

    .venv/bin/python bench/profile_step.py                       # tiny.en, batch 8, LoRA q/k/v r 16
    .venv/bin/python bench/profile_step.py --decode --beam 6
    .venv/bin/python bench/profile_step.py --model large-v3 --precision bf16 --r 512 --lora-scope wide --batch 16

The output is meant to be pasted under a run in ``RESULTS.md``; nothing is
recorded automatically.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    add_common_args,
    bench_cuts,
    device_info,
    load_backbone,
    resolve_device,
    sync,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser, batch=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up step")
    parser.add_argument("--decode", action="store_true", help="profile a decoding batch instead")
    parser.add_argument("--beam", type=int, default=6)
    parser.add_argument("--top", type=int, default=12, help="operators to list")
    return parser.parse_args()


def _table(prof: Any, total_s: float, top: int) -> str:
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    lines = ["| operator | calls | self CPU s | share of the step |", "|---|---:|---:|---:|"]
    for e in rows:
        seconds = e.self_cpu_time_total / 1e6
        lines.append(f"| `{e.key}` | {e.count} | {seconds:.3f} | {100 * seconds / total_s:.1f}% |")
    return "\n".join(lines)


def _autocast(device: str, precision: str) -> Any:
    import contextlib

    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def profile_train(args: argparse.Namespace, device: str) -> None:
    import torch
    from lhotse import CutSet
    from torch.profiler import ProfilerActivity, profile

    from ilt.config import LoraSection
    from ilt.training.lora import attach_lora

    cuts = list(CutSet.from_file(bench_cuts(max(32, args.batch), args.cache_dir)))
    backbone = load_backbone(args.model, args.cache_dir, dtype=torch.float32, device=device)
    torch.manual_seed(args.seed)
    model = attach_lora(backbone, LoraSection(r=args.r, lora_alpha=args.alpha, target_modules=args.lora_scope))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=device == "cuda")
    phases = {"collate": 0.0, "forward": 0.0, "backward": 0.0, "optimizer": 0.0}

    def step(n: int, timed: bool) -> None:
        chunk = [cuts[(n * args.batch + i) % len(cuts)] for i in range(args.batch)]
        marks = [time.perf_counter()]
        batch = backbone.collate(chunk).to(device)
        sync(device)
        marks.append(time.perf_counter())
        with _autocast(device, args.precision):
            loss = backbone.loss(model, batch)
        sync(device)
        marks.append(time.perf_counter())
        loss.backward()
        sync(device)
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        marks.append(time.perf_counter())
        if timed:
            for key, a, b in zip(phases, marks, marks[1:]):
                phases[key] += b - a

    step(0, False)
    for n in range(1, args.steps + 1):
        step(n, True)
    total = sum(phases.values())
    print(f"{device_info(device)['device']}; model {args.model}, batch {args.batch}, {args.precision}, "
          f"LoRA {args.lora_scope} r {args.r}; mean of {args.steps} steps: {total / args.steps:.2f} s/step\n")
    print("| phase | s/step | share |\n|---|---:|---:|")
    for key, value in phases.items():
        print(f"| {key} | {value / args.steps:.3f} | {100 * value / total:.1f}% |")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        step(args.steps + 1, False)
    print(f"\nOne profiled step ({time.perf_counter() - start:.2f} s with the profiler on):\n")
    print(_table(prof, time.perf_counter() - start, args.top))


def profile_decode(args: argparse.Namespace, device: str) -> None:
    import torch
    from lhotse import CutSet
    from torch.profiler import ProfilerActivity, profile

    cuts = list(CutSet.from_file(bench_cuts(max(16, args.batch), args.cache_dir)))[:args.batch]
    backbone = load_backbone(args.model, args.cache_dir, dtype=None if args.precision == "fp32" else args.precision,
                             device=device)
    model = backbone.model.eval()
    inputs = backbone.features([c.load_audio().mean(axis=0) for c in cuts])
    encoder_s = []
    original = model.model.encoder.forward

    def timed_encoder(*a: Any, **k: Any) -> Any:
        sync(device)
        t = time.perf_counter()
        out = original(*a, **k)
        sync(device)
        encoder_s.append(time.perf_counter() - t)
        return out

    model.model.encoder.forward = timed_encoder
    print(f"{device_info(device)['device']}; model {args.model}, batch {args.batch}, beam {args.beam}, "
          f"{args.precision}\n")
    print("| generate | s/batch | encoder s | rest s |\n|---|---:|---:|---:|")
    for shared in (False, True, False, True):
        backbone.share_cross_attention = shared
        encoder_s.clear()
        sync(device)
        t = time.perf_counter()
        backbone.generate(model, inputs, language="en", num_beams=args.beam)
        sync(device)
        total = time.perf_counter() - t
        name = "shared cross-attention (ilt)" if shared else "plain generate"
        print(f"| {name} | {total:.2f} | {sum(encoder_s):.2f} | {total - sum(encoder_s):.2f} |")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    for shared in (False, True):
        backbone.share_cross_attention = shared
        start = time.perf_counter()
        with torch.inference_mode(), profile(activities=activities) as prof:
            backbone.generate(model, inputs, language="en", num_beams=args.beam)
        total = time.perf_counter() - start
        print(f"\n{'Shared cross-attention' if shared else 'Plain generate'}, one profiled batch "
              f"({total:.2f} s with the profiler on):\n")
        print(_table(prof, total, args.top))


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    if args.model == "large-v3" and device != "cuda":
        sys.exit("--model large-v3 needs a GPU")
    (profile_decode if args.decode else profile_train)(args, device)


if __name__ == "__main__":
    main()
