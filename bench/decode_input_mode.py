"""Decoding on the audio's own length against today's padded decoding (issue 26):
``ilt``'s ``decode_cuts`` (what ``ilt decode`` runs) with the Whisper backbone
in ``input_mode: padded`` (every input padded to 30 s) and ``input_mode:
audio_length`` (each batch padded to its longest cut, rounded up to
``--pad-multiple`` frames), on the same model, cuts, beam, token limit and
batch size.

Each run of a side is a fresh subprocess of this script: it loads the model,
decodes one batch untimed (warm-up), then decodes all cuts once, timed. The
sides take turns, ``--repeats`` runs each (padded, audio_length,
audio_length, padded, ...); the median run of each is reported with every
run's seconds (the spread), cuts/s, the real-time factor, WER
(``ilt.asr.score.score``) and how many hypotheses agree.

    .venv/bin/python bench/decode_input_mode.py                       # tiny.en, 48 cuts, greedy, 3 runs a side
    .venv/bin/python bench/decode_input_mode.py --utts 8 --repeats 1  # a quick check
    .venv/bin/python bench/decode_input_mode.py --beam 6 --max-new-tokens 440
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
    driver_start,
    fmt,
    fmt_bytes,
    load_backbone,
    markdown_table,
    median_run,
    model_dir,
    peak_memory,
    ratio,
    record,
    references,
    reset_peak_memory,
    resolve_device,
    run_alternating,
    sync,
)

SIDES = ("padded", "audio_length")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, batch=8)
    parser.add_argument("--utts", type=int, default=48, help="espeak-ng utterances to decode")
    parser.add_argument("--beam", type=int, default=1, help="beam size (1: greedy, as the issue's timing)")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="token limit per utterance")
    parser.add_argument("--pad-multiple", type=int, default=1000,
                        help="audio_length: pad each batch to a multiple of this many mel frames")
    parser.add_argument("--fallback", action="store_true", help="keep ilt's temperature fallback (off by default)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side (they take turns)")
    return parser.parse_args(argv)


def run_side(args: argparse.Namespace) -> dict[str, Any]:
    """One side (``--role padded`` or ``audio_length``): warm-up batch, then all cuts, timed."""
    from lhotse import CutSet

    from ilt.asr.decode import decode_cuts
    from ilt.asr.score import score
    from ilt.config import DecodeConfig
    from ilt.models.whisper_io import resolve_dtype

    device = resolve_device(args.device)
    cuts = CutSet.from_file(bench_cuts(args.utts, args.cache_dir)).to_eager()
    reset_peak_memory(device)
    backbone = load_backbone(args.model, args.cache_dir, dtype=resolve_dtype(args.precision), device=device)
    if args.role == "audio_length":
        backbone.use_audio_length(args.pad_multiple)
    config = DecodeConfig(beam_size={"default": args.beam}, batch_size=args.batch, precision=args.precision,
                          max_new_tokens=args.max_new_tokens,
                          **({} if args.fallback else {"compression_ratio_threshold": None,
                                                       "fallback_temperatures": []}))
    decode_cuts(backbone, None, cuts.subset(first=min(args.batch, len(cuts))), config, progress=False)
    sync(device)
    start = time.perf_counter()
    records = decode_cuts(backbone, None, cuts, config, progress=False)
    sync(device)
    seconds = time.perf_counter() - start
    hyps = {r["id"]: r["text"] for r in records}
    audio = sum(float(c.duration) for c in cuts)
    return {"side": args.role, "seconds": seconds, "utts": len(hyps), "audio_seconds": audio,
            "wer": score(references(cuts), hyps).overall.error_rate, "hyps": hyps,
            "peak_memory": peak_memory(device), "info": device_info(device)}


ROLES = {side: run_side for side in SIDES}


def main() -> None:
    args = parse_args()
    if driver_start(args, ROLES) is None:
        return
    bench_cuts(args.utts, args.cache_dir)
    model_dir(args.model, args.cache_dir)
    runs = run_alternating(__file__, list(SIDES), sys.argv[1:], args.repeats)
    med = {side: median_run(runs[side], "seconds") for side in SIDES}
    for r in med.values():
        r["cuts_per_s"], r["rtf"] = r["utts"] / r["seconds"], r["seconds"] / r["audio_seconds"]
    padded, short = med["padded"], med["audio_length"]
    same = sum(" ".join(padded["hyps"][k].split()) == " ".join(short["hyps"].get(k, "").split())
               for k in padded["hyps"])
    settings = (f"model {args.model}, {args.utts} espeak-ng utterances ({padded['audio_seconds']:.1f} s of audio), "
                f"batch {args.batch}, beam {args.beam}, max {args.max_new_tokens} new tokens, {args.precision}, "
                f"pad_multiple {args.pad_multiple}, fallback {'on' if args.fallback else 'off'}, "
                f"{args.repeats} run(s) per side, taking turns")
    header = ["", "cuts/s", "RTF", "WER %", f"peak memory ({padded['peak_memory']['kind']})",
              "decode s (median)", "all runs s"]
    rows = [[name, fmt(r["cuts_per_s"], ".2f"), fmt(r["rtf"], ".4f"), fmt(r["wer"], ".2f"),
             fmt_bytes(r["peak_memory"]["bytes"]), fmt(r["seconds"], ".2f"),
             " ".join(f"{t:.2f}" for t in r["runs_seconds"])]
            for name, r in (("padded (ilt decode today)", padded), ("audio_length", short))]
    rows.append(["audio_length / padded", fmt(ratio(short["cuts_per_s"], padded["cuts_per_s"]), ".2f"), "",
                 fmt(short["wer"] - padded["wer"], "+.2f") + " points", "", "", ""])
    text = markdown_table(header, rows) + f"\n\nIdentical hypotheses: {same}/{len(padded['hyps'])}."
    info = padded["info"]
    print(f"\n{info['device']}\n{settings}\n\n{text}\n")
    if args.record:
        record("decode_input_mode", info, settings, text)


if __name__ == "__main__":
    main()
