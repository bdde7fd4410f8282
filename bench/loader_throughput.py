"""The training input pipeline alone: samples per second of ilt's training
loader (``ilt.training.loader.make_loader``: Lhotse's sampler in the main
process, audio loading and Whisper log-mels in 0, 1, 2... worker processes),
set against what one H100 consumes.

No model runs: the loader's batches are drawn and dropped. The collator is a
Whisper collator with a 30 s window (3000 frames, ``--n-mels`` 128 as in
large-v3, 80 as in tiny..medium), from a tiny random Whisper directory; its
cost does not depend on the model's size. The data are ``--cuts`` synthetic
16 kHz wav cuts of 3 to 5 s (``ilt.testing.dummies.make_cuts``, the mini
corpus's kind of audio: short mono utterances), or ``--espeak`` English
espeak-ng sentences (``bench/common.bench_cuts``).

Each worker count runs ``--repeats`` times, the counts taking turns; the first
``--warmup`` batches of each run (worker start-up) are not timed.

What one H100 consumes is an *estimate* from FLOPs (no GPU here): Whisper
large-v3 trained with a LoRA on a frozen base, features padded to 30 s, a
forward of about 2.7 TFLOP per cut (:func:`large_v3_forward_flops`), the
backward through the frozen weights as much again, gradient checkpointing
one forward more; at ``--mfu`` of the H100 SXM's 989 bf16 TFLOP/s.

    .venv/bin/python bench/loader_throughput.py                  # 48 cuts, batch 8, workers 0 1 2
    .venv/bin/python bench/loader_throughput.py --record         # append to bench/RESULTS.md
    .venv/bin/python bench/loader_throughput.py --cuts 16 --batches 2 --repeats 1   # proves it runs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_CACHE, bench_cuts, device_info, markdown_table, record  # noqa: E402

#: H100 SXM dense bf16 peak, TFLOP/s (NVIDIA's data sheet; 1979 is with sparsity).
H100_BF16_TFLOPS = 989.0


def large_v3_forward_flops(decoder_tokens: int = 64) -> float:
    """FLOPs of one forward pass of Whisper large-v3 on one cut padded to 30 s
    (1500 encoder positions) with ``decoder_tokens`` label tokens: 2 FLOPs
    per weight and position for the linear layers, ``4 n^2 d`` per layer for
    self-attention, the cross-attention's keys and values over 1500 positions,
    the convolutional front end and the output projection."""
    d, ffn, layers, vocab, frames, mels = 1280, 5120, 32, 51866, 1500, 128
    t = decoder_tokens
    encoder = layers * (2 * (4 * d * d + 2 * d * ffn) * frames + 4 * frames * frames * d)
    front = 2 * mels * d * 3 * 2 * frames + 2 * d * d * 3 * frames
    cross_kv = layers * 2 * (2 * d * d) * frames
    decoder = layers * (2 * (6 * d * d + 2 * d * ffn) * t + 4 * t * t * d + 4 * t * frames * d)
    return float(encoder + front + cross_kv + decoder + 2 * d * vocab * t)


def h100_samples_per_second(mfu: float, checkpointing: bool) -> float:
    """Estimated cuts per second one H100 trains (see the module docstring)."""
    passes = 3.0 if checkpointing else 2.0  # forward, backward through frozen weights, [recompute]
    return H100_BF16_TFLOPS * 1e12 * mfu / (passes * large_v3_forward_flops())


def make_data(args: argparse.Namespace, tmp: Path) -> Path:
    """The bench manifest (with the sidecar ``save_manifest`` writes)."""
    import random

    from lhotse import CutSet

    from ilt.data.manifests import save_manifest
    from ilt.testing.dummies import make_cuts

    if args.espeak:
        cuts = CutSet.from_file(bench_cuts(args.cuts, args.cache_dir))
    else:
        rng = random.Random(0)
        cuts = make_cuts(tmp / "audio", [{"id": f"c{i:03d}", "text": "the quick brown fox jumps over the lazy dog",
                                          "duration": round(rng.uniform(3.0, 5.0), 2)} for i in range(args.cuts)])
    return save_manifest(cuts, tmp / "cuts.jsonl.gz")


def run_once(backbone, mix, workers: int, args: argparse.Namespace) -> dict[str, float]:
    """One loader with ``workers`` workers: start-up seconds and timed samples/s."""
    from ilt.config import RoundConfig, from_dict
    from ilt.training.loader import make_loader

    train = from_dict(RoundConfig, {"name": "bench", "train": {
        "micro_batch": args.batch, "num_buckets": 1, "num_workers": workers, "max_steps": 1, "eval_every": 1,
        "precision": "fp32"}}).train
    started = time.perf_counter()
    batches = iter(make_loader(backbone, mix, train).loader)
    for _ in range(args.warmup):
        next(batches)
    timed = time.perf_counter()
    cuts = 0
    for _ in range(args.batches):
        cuts += len(next(batches))
    end = time.perf_counter()
    del batches  # shuts the workers down
    return {"startup_s": timed - started, "samples_per_s": cuts / (end - timed), "cuts": cuts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cuts", type=int, default=48, help="cuts of 3-5 s in the bench set")
    parser.add_argument("--espeak", action="store_true", help="English espeak-ng sentences instead of tones")
    parser.add_argument("--batch", type=int, default=8, help="cuts per batch")
    parser.add_argument("--batches", type=int, default=12, help="timed batches per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first batches per run")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=3, help="runs per worker count, taking turns")
    parser.add_argument("--n-mels", type=int, default=128, help="128: large-v3; 80: tiny..medium")
    parser.add_argument("--mfu", type=float, nargs="+", default=[0.4, 0.6],
                        help="fractions of the H100's bf16 peak for the consumption estimate")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--record", action="store_true", help="append the run to bench/RESULTS.md")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    import torch

    from ilt.config import DataSource, RoundConfig
    from ilt.core.registry import create
    from ilt.core.runtime import Skips
    from ilt.data.mix import training_stream
    from ilt.testing.dummies import tiny_whisper_dir

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model_dir = tiny_whisper_dir(tmp / "whisper", max_source_positions=1500, num_mel_bins=args.n_mels)
        backbone = create("backbone", RoundConfig(name="bench").backbone, model_dir, dtype=torch.float32, device=None)
        mix = training_stream([DataSource(str(make_data(args, tmp)), 1.0)], 0, Skips("bench"))
        runs: dict[int, list[dict[str, float]]] = {w: [] for w in args.workers}
        for _ in range(args.repeats):
            for workers in args.workers:
                runs[workers].append(run_once(backbone, mix, workers, args))
                print(f"workers {workers}: {runs[workers][-1]}", file=sys.stderr)

    info = device_info("cpu")
    rows = []
    for workers, results in runs.items():
        rates = [r["samples_per_s"] for r in results]
        rows.append([workers, f"{statistics.median(rates):.1f}", ", ".join(f"{r:.1f}" for r in rates),
                     f"{statistics.median(r['startup_s'] for r in results):.2f}"])
    table = markdown_table(["workers", "samples/s (median)", "all runs", "start-up s (median)"], rows)
    flops = large_v3_forward_flops()
    estimates = [f"{h100_samples_per_second(m, False):.0f} without / {h100_samples_per_second(m, True):.0f} with "
                 f"gradient checkpointing at {m:.0%} MFU" for m in args.mfu]
    note = (f"One H100 training Whisper large-v3 (LoRA, frozen bf16 base, 30 s features) consumes, *estimated* "
            f"from FLOPs ({flops / 1e12:.2f} TFLOP per cut forward, x2 with the backward, x3 with "
            f"checkpointing, {H100_BF16_TFLOPS:.0f} TFLOP/s bf16 peak): about " + "; ".join(estimates)
            + " samples/s. Not measured: no GPU here.")
    print(table)
    print(note)
    settings = (f"{args.cuts} cuts ({'espeak-ng' if args.espeak else 'synthetic tones, 3-5 s'}), batch {args.batch}, "
                f"{args.batches} timed + {args.warmup} warm-up batches, {args.repeats} runs per worker count taking "
                f"turns, Whisper collator {args.n_mels} mels x 3000 frames, start method "
                f"{torch.multiprocessing.get_start_method()}, {os.cpu_count()} CPUs")
    if args.json:
        args.json.write_text(json.dumps({"info": info, "settings": settings, "runs": runs,
                                         "h100_estimates": estimates}, indent=2))
    if args.record:
        record("loader_throughput", info, settings, table, [note])


if __name__ == "__main__":
    main()
