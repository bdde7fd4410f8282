"""Where greedy ``ilt decode`` spends its time next to the transformers ASR
pipeline (issue 26: ``ilt decode`` was 0.85-0.9x the pipeline at greedy).

On a handful of cuts, in one process, each piece timed ``--repeats`` times in
turns (median and every run reported):

* features: ilt's collator (one batched call, torch STFT) against the
  pipeline's way (the feature extractor once per utterance, numpy STFT);
* the attention implementation each side's model was loaded with;
* generation on the same features: ilt's ``WhisperBackbone.generate`` with
  the per-cut token budgets ``decode_cuts`` gives (the ``StopRules`` logits
  processor checks every step), the same with one limit (no per-step
  processor), and plain ``model.generate`` as the pipeline calls it;
* ``decode_cuts`` end to end (load, features, budgets, generate, fallback
  checks, records) against the sum of its pieces.

    .venv/bin/python bench/decode_pieces.py                  # tiny.en, 8 cuts, batch 8
    .venv/bin/python bench/decode_pieces.py --model base --utts 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    add_common_args,
    bench_cuts,
    device_info,
    load_backbone,
    markdown_table,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, batch=8)
    parser.add_argument("--utts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def timed(pieces: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Each piece ``repeats`` times, taking turns in a rotating order; the seconds of each run."""
    for fn in pieces.values():
        fn()  # warm-up
    runs: dict[str, list[float]] = {name: [] for name in pieces}
    names = list(pieces)
    for turn in range(repeats):
        for name in names[turn % len(names):] + names[:turn % len(names)]:
            start = time.perf_counter()
            pieces[name]()
            runs[name].append(time.perf_counter() - start)
    return runs


def main() -> None:
    import torch
    from lhotse import CutSet

    from ilt.asr.decode import decode_cuts
    from ilt.config import DecodeConfig

    args = parse_args()
    cuts = CutSet.from_file(bench_cuts(args.utts, args.cache_dir)).to_eager()
    backbone = load_backbone(args.model, args.cache_dir, dtype=torch.float32, device="cpu")
    model = backbone.model.eval()
    fe = backbone.feature_extractor
    audios = [c.load_audio().mean(axis=0) for c in cuts]
    config = DecodeConfig(beam_size={"default": 1}, batch_size=args.batch, max_new_tokens=args.max_new_tokens,
                          compression_ratio_threshold=None, fallback_temperatures=[])
    language = "en" if backbone.is_multilingual else None
    budgets = config.token_budgets([float(c.duration) for c in cuts], "en")
    batches = [slice(i, i + args.batch) for i in range(0, len(audios), args.batch)]
    features = [backbone.features(audios[b]) for b in batches]

    def ilt_features() -> None:
        for b in batches:
            backbone.features(audios[b])

    def pipeline_features() -> None:
        for a in audios:
            fe(a, sampling_rate=fe.sampling_rate, return_tensors="pt")

    def generate(limits: bool) -> Callable[[], None]:
        def run() -> None:
            for b, f in zip(batches, features):
                backbone.generate(model, f, language=language, max_new_tokens=budgets[b] if limits
                                  else args.max_new_tokens)
        return run

    def plain_generate() -> None:
        kwargs = {"language": "en", "task": "transcribe"} if backbone.is_multilingual else {}
        with torch.inference_mode():
            for f in features:
                model.generate(input_features=f["input_features"], max_new_tokens=args.max_new_tokens,
                               return_timestamps=False, **kwargs)

    pieces = {"features: ilt (batched, torch STFT)": ilt_features,
              "features: pipeline's way (per utterance, numpy)": pipeline_features,
              "generate: ilt, per-cut budgets (StopRules)": generate(True),
              "generate: ilt, one limit": generate(False),
              "generate: plain model.generate": plain_generate,
              "decode_cuts end to end": lambda: decode_cuts(backbone, None, cuts, config, progress=False)}
    runs = timed(pieces, args.repeats)
    rows = [[name, f"{statistics.median(r):.2f}", " ".join(f"{t:.2f}" for t in r)] for name, r in runs.items()]
    audio = sum(float(c.duration) for c in cuts)
    print(f"\n{device_info('cpu')['device']}; model {args.model}, {len(cuts)} cuts ({audio:.1f} s), batch "
          f"{args.batch}, greedy, max {args.max_new_tokens} new tokens; attention implementation of ilt's model: "
          f"{model.config._attn_implementation} (the pipeline benchmark loads sdpa)\n")
    print(markdown_table(["piece", "s (median)", "all runs s"], rows))


if __name__ == "__main__":
    main()
