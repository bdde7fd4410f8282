#!/usr/bin/env python3
"""Frozen base weights in the round's precision vs the old fp32 load.

Both sides train the same LoRA (fp32 weights) on the same batch under bf16
(or fp16) autocast; they differ only in the dtype the frozen base is loaded
in: ``fp32-load`` (what ilt did before) and ``round-load`` (bf16/fp16, what
``ilt.training.loop.load_for_training`` does now). Each run is a fresh process, the
sides take turns (``--repeats``). Prints the parameter memory, peak memory,
the median training step time and the losses, and the ratios round/fp32.

    .venv/bin/python bench/precision_load.py                  # CPU: tiny.en, batch 2, 2 steps, bf16 autocast
    .venv/bin/python bench/precision_load.py --model large-v3 --r 512 --lora-scope wide --batch 16   # GPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    add_common_args,
    bench_cuts,
    device_info,
    driver_start,
    fmt,
    fmt_bytes,
    load_backbone,
    markdown_table,
    median_run,
    peak_memory,
    ratio,
    record,
    reset_peak_memory,
    resolve_device,
    run_alternating,
    sync,
)

ROLES = ("fp32-load", "round-load")


def _one_side(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from lhotse import CutSet

    from ilt.config import LoraSection
    from ilt.training.lora import attach_lora

    device = args.device_used
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    load_dtype = torch.float32 if args.role == "fp32-load" else autocast
    reset_peak_memory(device)
    backbone = load_backbone(args.model, args.cache_dir, dtype=load_dtype, device=device)
    torch.manual_seed(args.seed)
    model = attach_lora(backbone, LoraSection(r=args.r, lora_alpha=args.alpha, lora_dropout=0.0,
                                              target_modules=args.lora_scope))
    model.to(device).train()
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() * p.element_size() for p in params)
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    cuts = CutSet.from_file(bench_cuts(args.batch, args.cache_dir)).subset(first=args.batch)
    batch = backbone.collate(cuts).to(device)
    times, losses = [], []
    for _ in range(args.steps):
        sync(device)
        start = time.perf_counter()
        with torch.autocast(device_type=device, dtype=autocast):
            loss = backbone.loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
    return {"role": args.role, "load_dtype": str(load_dtype).replace("torch.", ""),
            "frozen_bytes": frozen, "trainable_bytes": trainable,
            "step_seconds": statistics.median(times[1:] if len(times) > 1 else times),
            "first_loss": losses[0], "last_loss": losses[-1], "peak_memory": peak_memory(device)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # CPU defaults: bf16 autocast training is slow on a CPU (about 49 s a step at batch 2 for tiny.en)
    add_common_args(parser, batch=2)
    parser.add_argument("--steps", type=int, default=2, help="training steps per run (the first is warm-up)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per side, taking turns")
    parser.set_defaults(precision="bf16")
    args = parser.parse_args(argv)
    if args.precision == "fp32":
        sys.exit("--precision fp32: nothing to compare (both sides would load fp32)")
    args.device_used = resolve_device(args.device)
    device = driver_start(args, {role: _one_side for role in ROLES})
    if device is None:
        return
    passthrough = list(argv if argv is not None else sys.argv[1:])
    runs = run_alternating(__file__, ROLES, passthrough + ["--device", device], args.repeats)
    sides = {role: median_run(results, "step_seconds") for role, results in runs.items()}
    old, new = sides["fp32-load"], sides["round-load"]
    rows = [[role, s["load_dtype"], fmt_bytes(s["frozen_bytes"]), fmt_bytes(s["trainable_bytes"]),
             fmt_bytes(s["peak_memory"]["bytes"]), fmt(s["step_seconds"]),
             " ".join(fmt(v, ".2f") for v in s["runs_step_seconds"]), fmt(s["first_loss"], ".4f"),
             fmt(s["last_loss"], ".4f")] for role, s in sides.items()]
    rows.append(["round / fp32", "", fmt(ratio(new["frozen_bytes"], old["frozen_bytes"])),
                 fmt(ratio(new["trainable_bytes"], old["trainable_bytes"])),
                 fmt(ratio(new["peak_memory"]["bytes"], old["peak_memory"]["bytes"])),
                 fmt(ratio(new["step_seconds"], old["step_seconds"])), "", "", ""])
    table = markdown_table(["side", "base dtype", "frozen params", "LoRA params",
                            f"peak ({new['peak_memory']['kind']})", "step s (median)", "runs", "first loss",
                            "last loss"], rows)
    print(table)
    if args.record:
        settings = (f"model {args.model}, batch {args.batch}, LoRA r={args.r} {args.lora_scope}, "
                    f"{args.precision} autocast, {args.steps} steps per run, {args.repeats} runs per side")
        record("frozen base in the round's precision vs fp32 load", device_info(device), settings, table)


if __name__ == "__main__":
    main()
