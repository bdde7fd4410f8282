"""CPU throughput and round trip of `ilt export ct2`: the same cuts decoded by
`ilt decode` (the Hugging Face model) and by its CTranslate2 exports.

The model (default: the mini recipe's M3, Whisper tiny.en after three ILT
rounds) is exported with ``ilt.models.export.export_ct2`` at each ``--quantizations``
(cached under ``--work``). Every side decodes the same cuts through
``ilt.asr.decode.decode_cuts`` with greedy search and the same token budgets and
loop stop (no sampling fallback: CTranslate2 samples with its own random
generator), so the hypotheses are comparable one by one. One process, each
side loaded once and warmed up on one batch; the sides then take turns,
``--repeats`` timed runs each, in a rotating order (this VM drifts 10-15%
between runs minutes apart). Reported: utterances/s and the real-time factor
(median and every run), the ratio to `ilt decode` (median of the per-repeat
ratios, with their range), WER with ``ilt.asr.score``, and how many hypotheses are
identical to `ilt decode`'s (the differing ones are listed). Last,
faster-whisper (``WhisperModel.transcribe``, greedy, no timestamps) decodes a
few cuts from the float32 export to show it loads and agrees.

    .venv/bin/python bench/export_throughput.py                      # all 144 mini test cuts
    .venv/bin/python bench/export_throughput.py --cuts-limit 32 --repeats 2 --record
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "egs" / "mini"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(MINI / "exp" / "M3"), help="a Hugging Face Whisper directory")
    parser.add_argument("--cuts", default=str(MINI / "data" / "manifests" / "mlc_slm_cuts_test.jsonl.gz"))
    parser.add_argument("--cuts-limit", type=int, default=0, help="decode N evenly spaced cuts (0: all)")
    parser.add_argument("--quantizations", default="float32,int8", help="comma-separated CTranslate2 types")
    parser.add_argument("--work", default=None,
                        help="where the exports go (reused when there); default: a fresh private "
                             "temporary directory (never a fixed /tmp path another user could plant)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--faster-whisper-cuts", type=int, default=4)
    parser.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    args = parser.parse_args(argv)
    if args.work is None:
        args.work = tempfile.mkdtemp(prefix="ilt-export-bench-")
    return args


def _sides(args: argparse.Namespace) -> dict[str, Any]:
    """``{name: (runner, model)}``: `ilt decode`'s backbone, then one CTranslate2 runner per export."""
    from ilt.core.registry import create
    from ilt.models.export import Ct2Whisper, export_ct2

    sides: dict[str, Any] = {"ilt decode (HF, fp32)": (create("backbone", "whisper", Path(args.model)), None)}
    for quantization in args.quantizations.split(","):
        out = Path(args.work) / f"{Path(args.model).name}-ct2-{quantization}"
        if not (out / "model.bin").is_file():
            export_ct2(args.model, out, quantization=quantization, overwrite=True)
        runner = Ct2Whisper(out, compute_type=quantization)
        sides[f"CTranslate2 {quantization}"] = (runner, runner.model)
    return sides


def _run(runner: Any, model: Any, cuts: list[Any], config: Any) -> tuple[float, list[dict[str, Any]]]:
    from ilt.asr.decode import decode_cuts

    start = time.perf_counter()
    records = decode_cuts(runner, model, cuts, config, progress=False)
    return time.perf_counter() - start, records


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from ilt.config import DecodeConfig
    from ilt.data.manifests import load_cuts

    cuts = list(load_cuts(args.cuts))
    if args.cuts_limit and args.cuts_limit < len(cuts):  # evenly spaced: every language and accent
        cuts = [cuts[i * len(cuts) // args.cuts_limit] for i in range(args.cuts_limit)]
    config = DecodeConfig(beam_size={"default": 1}, batch_size=args.batch, max_new_tokens=args.max_new_tokens,
                          fallback_temperatures=[])
    sides = _sides(args)
    for runner, model in sides.values():  # warm-up: one batch each, untimed
        _run(runner, model, cuts[:args.batch], config)
    names = list(sides)
    runs: dict[str, list[float]] = {n: [] for n in names}
    records: dict[str, list[dict[str, Any]]] = {}
    for repeat in range(args.repeats):
        for name in names[repeat % len(names):] + names[:repeat % len(names)]:
            seconds, recs = _run(*sides[name], cuts, config)
            runs[name].append(seconds)
            records.setdefault(name, recs)
            print(f"repeat {repeat + 1}: {name}: {seconds:.1f} s", flush=True)
    return {"cuts": cuts, "runs": runs, "records": records, "config": config,
            "audio_seconds": sum(c.duration for c in cuts)}


def faster_whisper_check(args: argparse.Namespace, result: dict[str, Any]) -> tuple[int, int]:
    """Texts of faster-whisper on the float32 export against `ilt decode`'s, for a few cuts."""
    from faster_whisper import WhisperModel

    out = Path(args.work) / f"{Path(args.model).name}-ct2-float32"
    model = WhisperModel(str(out), device="cpu", compute_type="float32")
    ours = {r["id"]: r["text"] for r in result["records"]["ilt decode (HF, fp32)"]}
    same = 0
    cuts = [c for c in result["cuts"] if c.duration <= 30][:args.faster_whisper_cuts]
    for cut in cuts:
        segments, _ = model.transcribe(cut.load_audio()[0], language="en", beam_size=1, temperature=0.0,
                                       without_timestamps=True, condition_on_previous_text=False)
        text = " ".join(s.text.strip() for s in segments).strip()
        same += text == ours[cut.id]
        print(f"faster-whisper {cut.id}: {'same' if text == ours[cut.id] else 'DIFFERS'}: {text!r}")
    return same, len(cuts)


def report(args: argparse.Namespace, result: dict[str, Any], fw: tuple[int, int]) -> str:
    from ilt.asr.score import references, score

    refs = references(result["cuts"])
    names = list(result["runs"])
    base = names[0]
    ours = {r["id"]: r["text"] for r in result["records"][base]}
    lines = ["| side | utt/s (median) | RTF | runs (s) | vs ilt decode (median, range) | WER % | identical to ilt |",
             "|---|---:|---:|---|---|---:|---:|"]
    diffs = []
    n = len(result["cuts"])
    for name in names:
        runs = result["runs"][name]
        ratios = [b / s for b, s in zip(result["runs"][base], runs)]
        hyps = {r["id"]: r["text"] for r in result["records"][name]}
        wer = score(refs, hyps).overall.error_rate
        same = sum(hyps[k] == v for k, v in ours.items())
        med = statistics.median(runs)
        lines.append(f"| {name} | {n / med:.2f} | {med / result['audio_seconds']:.3f} | "
                     f"{' '.join(f'{s:.1f}' for s in runs)} | {statistics.median(ratios):.2f}x "
                     f"({min(ratios):.2f}-{max(ratios):.2f}) | {wer:.2f} | {same}/{n} |")
        diffs += [f"- {name}, {k}: ilt {v!r} / export {hyps[k]!r}" for k, v in ours.items() if hyps[k] != v][:5]
    text = "\n".join(lines) + "\n"
    if diffs:
        text += "\nDiffering hypotheses (at most 5 per side):\n\n" + "\n".join(diffs) + "\n"
    text += f"\nfaster-whisper (float32 export, greedy, no timestamps): {fw[0]}/{fw[1]} texts identical to ilt decode.\n"
    return text


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    result = measure(args)
    fw = faster_whisper_check(args, result)
    table = report(args, result, fw)
    print(table)
    if not args.record:
        return
    import ctranslate2
    import torch

    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    head = (f"\n## {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC: `ilt export ct2` vs "
            f"`ilt decode`, CPU throughput and round trip\n\n"
            f"- device: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'default')}, torch threads {torch.get_num_threads()}\n"
            f"- software: torch {torch.__version__}, ctranslate2 {ctranslate2.__version__}, ilt git {git}\n"
            f"- settings: model {Path(args.model).name}, {len(result['cuts'])} cuts "
            f"({result['audio_seconds']:.0f} s of audio), greedy, batch {args.batch}, max {args.max_new_tokens} "
            f"new tokens, duration budgets and loop stop on, no sampling fallback, {args.repeats} runs per side "
            f"taking turns\n"
            f"- command: `.venv/bin/python bench/export_throughput.py {' '.join(sys.argv[1:])}`\n\n")
    with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as fh:
        fh.write(head + table)


if __name__ == "__main__":
    main()
