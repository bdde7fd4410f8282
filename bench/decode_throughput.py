"""Decoding throughput: ilt's ``decode_cuts`` against the transformers ASR
pipeline (``pipeline("automatic-speech-recognition", ..., batch_size=B)``) on
the same model, cuts, beam size, token limit and forced language/task; then a
merged LoRA model against the base model and the unmerged PEFT model.

Each run of a side is a fresh subprocess of this script: it loads the model,
decodes one batch untimed (warm-up), then decodes all cuts once, timed. The
two sides take turns, ``--repeats`` runs each (ilt, pipeline, pipeline, ilt,
...), and the median run of each is reported: utterances/s, the real-time
factor (decode seconds / audio seconds), WER (``ilt.asr.score.score``), peak
memory (the largest of the side's runs), ilt / pipeline, and how many
hypotheses agree.

A last process decodes variants with ilt, taking turns ``--repeats`` times in
a rotating order: the base model with shared cross-attention (ilt's default),
the same with plain ``generate`` (``share_cross_attention`` off: what the
sharing gives), and, unless ``--no-lora``, a random non-zero LoRA
(``init_lora_weights=False``, its B scaled by ``--lora-noise`` so that the
hypotheses, and with them the work, stay close to the base model's) unmerged
(PEFT) and merged into a copy (``merge_and_unload``). Last, ``--pairs``
back-to-back pairs of one batch, base and merged, give merged / base as the
median of the per-pair ratios: it should be 1.00 +- 0.03.

    .venv/bin/python bench/decode_throughput.py                   # CPU: tiny.en, 16 utterances
    .venv/bin/python bench/decode_throughput.py --model large-v3 --precision bf16 \\
        --r 512 --lora-scope wide --batch 16                      # GPU
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
    large_v3_parts,
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
    run_role,
    sync,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, batch=8)
    parser.add_argument("--utts", type=int, default=16, help="espeak-ng utterances to decode")
    parser.add_argument("--beam", type=int, default=6, help="beam size (ilt's default is 6)")
    parser.add_argument("--max-new-tokens", type=int, default=440, help="token limit per utterance")
    parser.add_argument("--fallback", action="store_true",
                        help="keep ilt's repetition-loop fallback (the pipeline has none; off by default)")
    parser.add_argument("--no-lora", action="store_true", help="skip the merged/unmerged LoRA variants")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per side and per variant (the median is reported; they take turns)")
    parser.add_argument("--pairs", type=int, default=12,
                        help="back-to-back base/merged pairs of one batch for the merged / base ratio (0: none)")
    parser.add_argument("--lora-noise", type=float, default=0.01,
                        help="scale of the random LoRA's B matrices (1: PEFT's plain random init)")
    return parser.parse_args(argv)


def _load_cuts(args: argparse.Namespace) -> Any:
    from lhotse import CutSet

    return CutSet.from_file(bench_cuts(args.utts, args.cache_dir)).to_eager()


def _dtype(args: argparse.Namespace) -> Any:
    from ilt.models.whisper_io import resolve_dtype

    return resolve_dtype(args.precision)


def _token_limit(model: Any, multilingual: bool, max_new_tokens: int) -> int:
    """New tokens both sides may generate: ilt's ``generate`` caps its limit at
    the decoder length minus the prompt (4 tokens multilingual, 2 English-only)."""
    return max(1, min(max_new_tokens, model.config.max_target_positions - (4 if multilingual else 2)))


def _wer(cuts: Any, hyps: dict[str, str]) -> float | None:
    from ilt.asr.score import score

    return score(references(cuts), hyps).overall.error_rate


def _summary(cuts: Any, hyps: dict[str, str], seconds: float) -> dict[str, Any]:
    audio = sum(float(c.duration) for c in cuts)
    return {"utts": len(hyps), "seconds": seconds, "audio_seconds": audio, "utt_per_s": len(hyps) / seconds,
            "rtf": seconds / audio, "wer": _wer(cuts, hyps), "hyps": hyps}


# --------------------------------------------------------------------------- ilt


def _decode_ilt(backbone: Any, model: Any, cuts: Any, config: Any, device: str) -> tuple[dict[str, str], float]:
    from ilt.asr.decode import decode_cuts

    sync(device)
    start = time.perf_counter()
    records = decode_cuts(backbone, model, cuts, config, progress=False)
    sync(device)
    return {r["id"]: r["text"] for r in records}, time.perf_counter() - start


def _random_lora(backbone: Any, args: argparse.Namespace) -> Any:
    """A PEFT model with a random, non-zero LoRA of the benchmark's shape."""
    import torch
    from peft import LoraConfig, get_peft_model

    from ilt.plugins.whisper import SCOPE_TARGETS

    torch.manual_seed(args.seed)
    model = get_peft_model(backbone.model, LoraConfig(
        r=args.r, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=list(SCOPE_TARGETS[args.lora_scope]),
        init_lora_weights=False))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(args.lora_noise)
    model.eval()
    return model


def _median(values: list[float]) -> float:
    import statistics

    return statistics.median(values)


def _timed(backbone: Any, models: dict[str, tuple[Any, bool]], cuts: Any, config: Any, device: str,
           repeats: int) -> dict[str, dict[str, Any]]:
    """Decode ``cuts`` with each ``(model, share_cross_attention)`` ``repeats``
    times, taking turns in a rotating order (a b c, b c a, c a b, ...) so that
    a slow spell of the machine, or a slot in the order, hits all of them
    alike; per name: the median seconds, every run's seconds, and the
    hypotheses (the same in every run: decoding is deterministic)."""
    warm = cuts.subset(first=min(config.batch_size, len(cuts)))

    def decode(name: str, subset: Any) -> tuple[dict[str, str], float]:
        model, shared = models[name]
        backbone.share_cross_attention = shared
        try:
            return _decode_ilt(backbone, model, subset, config, device)
        finally:
            backbone.share_cross_attention = True

    for name in models:
        decode(name, warm)
    runs: dict[str, list[float]] = {name: [] for name in models}
    hyps: dict[str, dict[str, str]] = {}
    names = list(models)
    for turn in range(repeats):
        for name in names[turn % len(names):] + names[:turn % len(names)]:
            hyps[name], seconds = decode(name, cuts)
            runs[name].append(seconds)
    return {name: {**_summary(cuts, hyps[name], _median(runs[name])), "runs": runs[name]} for name in models}


def _ilt_setup(args: argparse.Namespace) -> tuple[Any, Any, Any, str]:
    from ilt.config import DecodeConfig

    device = resolve_device(args.device)
    cuts = _load_cuts(args)
    reset_peak_memory(device)
    backbone = load_backbone(args.model, args.cache_dir, dtype=_dtype(args), device=device)
    config = DecodeConfig(
        beam_size={"default": args.beam}, batch_size=args.batch, precision=args.precision,
        max_new_tokens=_token_limit(backbone.model, backbone.is_multilingual, args.max_new_tokens),
        **({} if args.fallback else {"compression_ratio_threshold": None, "fallback_temperatures": []}))
    return backbone, cuts, config, device


def run_ilt(args: argparse.Namespace) -> dict[str, Any]:
    """One timed ``decode_cuts`` of all cuts, after a warm-up batch."""
    backbone, cuts, config, device = _ilt_setup(args)
    main = _timed(backbone, {"ilt": (backbone.model, True)}, cuts, config, device, 1)["ilt"]
    return {"side": "ilt", **main, "peak_memory": peak_memory(device), "info": device_info(device)}


def run_variants(args: argparse.Namespace) -> dict[str, Any]:
    """In one process, taking turns ``--repeats`` times: the base model with
    shared cross-attention (ilt's default) and with plain ``generate``; unless
    ``--no-lora``, a random LoRA unmerged (PEFT) and merged into a copy."""
    import copy

    backbone, cuts, config, device = _ilt_setup(args)
    base = copy.deepcopy(backbone.model).eval()
    models: dict[str, tuple[Any, bool]] = {"base": (base, True), "plain": (base, False)}
    if not args.no_lora:
        peft_model = _random_lora(backbone, args)
        models["unmerged"] = (peft_model, True)
        models["merged"] = (copy.deepcopy(peft_model).merge_and_unload().eval(), True)
    out = {"side": "variants", "variants": _timed(backbone, models, cuts, config, device, args.repeats),
           "info": device_info(device)}
    if not args.no_lora and args.pairs:
        out["pairs"] = _paired(backbone, base, models["merged"][0], cuts, config, device, args.pairs)
    return out


def _paired(backbone: Any, base: Any, merged: Any, cuts: Any, config: Any, device: str,
            pairs: int) -> dict[str, Any]:
    """Merged / base speed from back-to-back decodes of one batch: ``pairs``
    pairs, the order within a pair alternating (base first, then merged
    first), the ratio taken within each pair (seconds apart, so a slow spell
    of a shared machine hits both of its halves) and its median reported."""
    import statistics

    batch = cuts.subset(first=min(config.batch_size, len(cuts)))
    ratios = []
    for i in range(pairs):
        order = [("base", base), ("merged", merged)]
        seconds = {}
        for name, model in (order if i % 2 == 0 else order[::-1]):
            seconds[name] = _decode_ilt(backbone, model, batch, config, device)[1]
        ratios.append(seconds["base"] / seconds["merged"])  # = merged utt/s / base utt/s
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else [ratios[0]] * 3
    return {"median": statistics.median(ratios), "q1": quartiles[0], "q3": quartiles[2], "ratios": ratios,
            "utts": len(batch)}


# --------------------------------------------------------------------------- the transformers pipeline


def run_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    from transformers import (
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizer,
        pipeline,
    )

    device = resolve_device(args.device)
    cuts = _load_cuts(args)
    dtype = _dtype(args)
    reset_peak_memory(device)
    if args.model == "large-v3":
        model, feature_extractor, tokenizer = large_v3_parts(dtype, device)
    else:
        src = model_dir(args.model, args.cache_dir)
        model = WhisperForConditionalGeneration.from_pretrained(
            src, dtype=dtype, attn_implementation="sdpa", local_files_only=True, use_safetensors=True)
        feature_extractor = WhisperFeatureExtractor.from_pretrained(src, local_files_only=True)
        tokenizer = WhisperTokenizer.from_pretrained(src, local_files_only=True)
    model.to(device).eval()
    multilingual = getattr(model.generation_config, "is_multilingual", None)
    if multilingual is None:
        multilingual = model.config.vocab_size >= 51865
    asr = pipeline("automatic-speech-recognition", model=model, tokenizer=tokenizer,
                   feature_extractor=feature_extractor, device=device, batch_size=args.batch)
    generate_kwargs: dict[str, Any] = {
        "num_beams": args.beam, "max_new_tokens": _token_limit(model, multilingual, args.max_new_tokens)}
    if multilingual:
        generate_kwargs.update(language="en", task="transcribe")
    rate = int(feature_extractor.sampling_rate)

    def transcribe(subset: Any) -> tuple[dict[str, str], float]:
        sync(device)
        start = time.perf_counter()
        items = list(subset)
        inputs = []
        for cut in items:
            c = cut if cut.sampling_rate == rate else cut.resample(rate)
            inputs.append({"raw": np.asarray(c.load_audio(), dtype=np.float32).mean(axis=0), "sampling_rate": rate})
        outputs = asr(inputs, batch_size=args.batch, generate_kwargs=generate_kwargs)
        sync(device)
        return ({cut.id: out["text"].strip() for cut, out in zip(items, outputs)}, time.perf_counter() - start)

    transcribe(cuts.subset(first=min(args.batch, len(cuts))))
    hyps, seconds = transcribe(cuts)
    return {"side": "pipeline", **_summary(cuts, hyps, seconds), "peak_memory": peak_memory(device),
            "info": device_info(device)}


ROLES = {"ilt": run_ilt, "pipeline": run_pipeline, "variants": run_variants}


# --------------------------------------------------------------------------- driver


def _same(a: dict[str, str], b: dict[str, str]) -> str:
    return f"{sum(' '.join(a[k].split()) == ' '.join(b.get(k, '').split()) for k in a)}/{len(a)}"


def main() -> None:
    args = parse_args()
    device = driver_start(args, ROLES)
    if device is None:
        return
    bench_cuts(args.utts, args.cache_dir)
    model_dir(args.model, args.cache_dir)
    runs = run_alternating(__file__, ["ilt", "pipeline"], sys.argv[1:], args.repeats)
    ilt, ref = median_run(runs["ilt"], "seconds"), median_run(runs["pipeline"], "seconds")
    for r in (ilt, ref):  # from the median seconds
        r["utt_per_s"], r["rtf"] = r["utts"] / r["seconds"], r["seconds"] / r["audio_seconds"]
    extra = run_role(__file__, "variants", sys.argv[1:])
    variants = extra["variants"]

    settings = (f"model {args.model}, {args.utts} espeak-ng utterances ({ilt['audio_seconds']:.1f} s of audio), "
                f"batch {args.batch}, beam {args.beam}, max {args.max_new_tokens} new tokens, {args.precision}, "
                f"ilt fallback {'on' if args.fallback else 'off'}, {args.repeats} run(s) per side")
    header = ["", "utt/s", "RTF", "WER %", f"peak memory ({ilt['peak_memory']['kind']})", "decode s (median)",
              "all runs s"]
    rows = []
    for name, r in (("ilt (decode_cuts)", ilt), ("transformers pipeline", ref)):
        rows.append([name, fmt(r["utt_per_s"], ".2f"), fmt(r["rtf"], ".4f"), fmt(r["wer"], ".2f"),
                     fmt_bytes(r["peak_memory"]["bytes"]), fmt(r["seconds"], ".2f"),
                     " ".join(f"{t:.2f}" for t in r["runs_seconds"])])
    rows.append(["ilt / pipeline", fmt(ratio(ilt["utt_per_s"], ref["utt_per_s"]), ".2f"),
                 fmt(ratio(ilt["rtf"], ref["rtf"]), ".2f"), "",
                 fmt(ratio(ilt["peak_memory"]["bytes"], ref["peak_memory"]["bytes"]), ".2f"),
                 fmt(ratio(ilt["seconds"], ref["seconds"]), ".2f"), ""])
    tables = [markdown_table(header, rows),
              (f"Each side ran {args.repeats} time(s), one fresh process per run, ilt and the pipeline taking "
               f"turns. Identical hypotheses, ilt vs pipeline: {_same(ilt['hyps'], ref['hyps'])}.")]
    base = variants["base"]
    variant_rows = []
    names = {"base": "base, shared cross-attention (ilt)", "plain": "base, plain `generate`",
             "unmerged": "unmerged PEFT LoRA", "merged": "merged LoRA (merge_and_unload)"}
    for key, name in names.items():
        if key not in variants:
            continue
        r = variants[key]
        variant_rows.append([name, fmt(r["utt_per_s"], ".2f"), fmt(ratio(r["utt_per_s"], base["utt_per_s"]), ".3f"),
                             fmt(r["wer"], ".2f"), "-" if key == "base" else _same(r["hyps"], base["hyps"]),
                             " ".join(f"{t:.2f}" for t in r["runs"])])
    lora = "" if args.no_lora else (f"; the LoRA is random, {args.lora_scope} r {args.r} alpha {args.alpha:g}, "
                                    f"its B scaled by {args.lora_noise:g}")
    tables += [(f"Variants decoded by ilt in one process, taking turns {args.repeats} times in a rotating order "
                f"(median){lora}:"),
               markdown_table(["", "utt/s", "/ base", "WER %", "identical to base", "all runs s"], variant_rows)]
    if not args.no_lora:
        tables.append(f"Identical hypotheses, merged vs unmerged: "
                      f"{_same(variants['merged']['hyps'], variants['unmerged']['hyps'])}.")
    if pairs := extra.get("pairs"):
        tables.append(
            f"Merged / base utt/s from {len(pairs['ratios'])} back-to-back pairs of one {pairs['utts']}-utterance "
            f"batch (order alternating within the pairs): median {pairs['median']:.3f}, quartiles "
            f"{pairs['q1']:.3f}-{pairs['q3']:.3f}; every pair: {' '.join(f'{r:.3f}' for r in pairs['ratios'])}.")
    info = ilt["info"]
    text = "\n\n".join(tables)
    print(f"\n{info['device']}\n{settings}\n\n{text}\n")
    if args.record:
        record("decode_throughput", info, settings, text)


if __name__ == "__main__":
    main()
