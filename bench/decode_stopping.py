"""Per-hypothesis stopping (``ilt.models.generation``): the worst decoding batch, before and after.

One looping hypothesis keeps its whole batch (times the beams) generating up to
``max_new_tokens``. This decodes the same cuts in the same batches (sorted by
duration, as ``ilt decode`` does) twice per batch, alternating which goes first:

* **before**: ``max_new_tokens`` only (``tokens_per_second: {}``, ``loop_tokens: null``);
* **after**: ilt's defaults, a token budget per hypothesis from its audio
  duration and the loop stop.

Both use the same beam size and limit (the issue's case: beam 6, 440 tokens)
and no compression-ratio fallback, so the difference is the stopping alone. It
reports the worst batch's time (the point of the change), the total, the WER of
each, and how many hypotheses are identical.

    .venv/bin/python bench/decode_stopping.py                          # tiny.en, bench utterances
    .venv/bin/python bench/decode_stopping.py --cuts egs/mini/data/manifests/mlc_slm_cuts_test.jsonl.gz \\
        --language en
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    DEFAULT_CACHE,
    bench_cuts,
    device_info,
    fmt,
    load_backbone,
    markdown_table,
    record,
    references,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny.en", choices=("tiny", "tiny.en"))
    parser.add_argument("--cuts", type=Path, help="a cut manifest (default: the bench's espeak utterances)")
    parser.add_argument("--language", help="keep only cuts in this language")
    parser.add_argument("--utts", type=int, default=32, help="bench utterances when --cuts is not given")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--beam", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=440)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    return parser.parse_args(argv)


def _configs(args: argparse.Namespace):
    from ilt.config import DecodeConfig

    common = dict(beam_size={"default": args.beam}, batch_size=args.batch, max_new_tokens=args.max_new_tokens,
                  compression_ratio_threshold=None, precision="fp32")
    return {"before": DecodeConfig(**common, tokens_per_second={}, loop_tokens=None),
            "after": DecodeConfig(**common)}


def main(argv: list[str] | None = None) -> None:
    import torch

    from ilt.asr.decode import decode_cuts
    from ilt.asr.score import score
    from ilt.data.manifests import load_cuts

    args = parse_args(argv)
    torch.manual_seed(0)
    cuts = load_cuts(args.cuts or bench_cuts(args.utts, args.cache_dir))
    if args.language:
        cuts = cuts.filter(lambda c: c.supervisions and c.supervisions[0].language == args.language)
    cuts = sorted(cuts, key=lambda c: (c.duration, c.id))
    backbone = load_backbone(args.model, args.cache_dir, dtype=torch.float32, device="cpu")
    configs = _configs(args)
    times = {name: [] for name in configs}
    hyps = {name: {} for name in configs}
    batches = [cuts[i:i + args.batch] for i in range(0, len(cuts), args.batch)]
    for n, batch in enumerate(batches):
        order = list(configs) if n % 2 == 0 else list(reversed(configs))
        for name in order:
            start = time.perf_counter()
            records = decode_cuts(backbone, None, batch, configs[name], progress=False)
            times[name].append(time.perf_counter() - start)
            hyps[name].update({r["id"]: r["text"] for r in records})
        print(f"batch {n}: " + ", ".join(f"{k} {times[k][-1]:.1f} s" for k in configs), file=sys.stderr)

    refs = references(cuts)
    worst = max(range(len(batches)), key=lambda i: times["before"][i])
    same = sum(hyps["before"][c.id] == hyps["after"][c.id] for c in cuts)
    rows = []
    for name in configs:
        rows.append([name, fmt(times[name][worst], ".1f"), fmt(max(times[name]), ".1f"), fmt(sum(times[name]), ".1f"),
                     fmt(score(refs, hyps[name]).overall.error_rate, ".2f")])
    table = markdown_table(["stopping", "batch slowest before (s)", "slowest batch (s)", "total (s)", "WER %"], rows)
    audio = sum(c.duration for c in batches[worst])
    notes = [f"{len(cuts)} cuts in {len(batches)} batches of {args.batch}; the slowest batch before holds "
             f"{len(batches[worst])} cuts, {audio:.1f} s of audio. Identical hypotheses: {same} of {len(cuts)}. "
             f"Speed-up on that batch: {times['before'][worst] / times['after'][worst]:.1f}x; "
             f"total: {sum(times['before']) / sum(times['after']):.2f}x."]
    print(table + "\n" + notes[0])
    if not args.no_record:
        settings = (f"model {args.model}, cuts {args.cuts or 'bench espeak'}"
                    f"{' (' + args.language + ')' if args.language else ''}, beam {args.beam}, "
                    f"max_new_tokens {args.max_new_tokens}, batch {args.batch}, fp32, no fallback; "
                    f"after = default tokens_per_second/token_slack/loop_tokens")
        record("decoding: per-hypothesis stopping, worst batch before and after", device_info("cpu"), settings,
               table, notes)


if __name__ == "__main__":
    main()
