"""CPU decoding: dynamic int8 and bf16 against the exact fp32 path, error rate next to speed (issue 18, part 3).

One process loads a real local Whisper once per path and decodes the same cuts
with ilt's own ``decode_cuts``, the paths taking turns ``--repeats`` times in a
rotating order (a b c, b c a, ...), so that a slow spell of the machine, or a
slot in the order, hits every path alike:

* ``fp32``: the exact path (ilt's default), the reference;
* ``int8``: ``quantize: int8`` (:func:`ilt.asr.decode.quantize_for_decoding`, the
  decoder's Linear layers and the output projection dynamically quantized to
  int8);
* ``int8-all``: ``quantize: int8`` with ``quantize_scope: all`` (the encoder's
  Linear layers too);
* ``bf16``: the weights loaded in bf16; by default only on a CPU with native
  bf16 (``avx512_bf16`` or ``amx_bf16``), elsewhere torch emulates it. Name it
  in ``--paths`` to run it anyway.

It reports each path's decode seconds (median, every run listed), RTFx (audio
seconds / decode seconds), speed / fp32 as the median of the per-round ratios
(fp32 seconds / path seconds in the same round) with their range, the error
rate per language (ilt's scorer: WER, CER for ja/ko/th) and how many
hypotheses are identical to fp32's. It prints a block to paste into
``bench/RESULTS.md`` (``--record`` appends it).

    .venv/bin/python bench/decode_quantized.py --repeats 5 -o compression_ratio_threshold=null --record
    .venv/bin/python bench/decode_quantized.py --tiny --limit 4 --repeats 1 --no-git \
        -o compression_ratio_threshold=null                                     # smoke run, not a measurement

The first decodes egs/mini's M0 (Whisper base) on the mini recipe's test cuts
with its greedy decode config, the sampling fallback off (see bench/README.md).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO_DIR, _cpu_name, fmt, git_revision, markdown_table, now, record

DEFAULT_MODEL = REPO_DIR / "egs" / "mini" / "exp_demo" / "M0"
DEFAULT_CUTS = REPO_DIR / "egs" / "mini" / "data_demo" / "manifests" / "mlc_slm_cuts_test.jsonl.gz"
DEFAULT_DECODE = REPO_DIR / "egs" / "mini" / "conf" / "decode.yaml"

#: path name -> (weight dtype, quantize_scope or None for no quantization)
PATHS: dict[str, tuple[str, str | None]] = {
    "fp32": ("fp32", None),
    "int8": ("fp32", "decoder"),
    "int8-all": ("fp32", "all"),
    "bf16": ("bf16", None),
}
REFERENCE = "fp32"
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help=f"a local Whisper directory (default: {DEFAULT_MODEL})")
    parser.add_argument("--tiny", action="store_true",
                        help="a tiny random multilingual Whisper instead of a real model (smoke runs only)")
    parser.add_argument("--cuts", type=Path, default=DEFAULT_CUTS, help="a cut manifest with reference text")
    parser.add_argument("--limit", type=int, help="decode only this many cuts, evenly spaced over the manifest")
    parser.add_argument("--decode-config", type=Path,
                        default=DEFAULT_DECODE if DEFAULT_DECODE.is_file() else None,
                        help="the decode YAML (default: the mini recipe's greedy conf/decode.yaml)")
    parser.add_argument("-o", "--override", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a decode config key, as `ilt decode -o` (repeatable)")
    parser.add_argument("--paths", default="auto",
                        help=f"comma-separated, from {', '.join(PATHS)}; auto: fp32, int8, int8-all, and bf16 "
                             f"when the CPU has native bf16")
    parser.add_argument("--repeats", type=int, default=3, help="timed decodes of all cuts per path, taking turns")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path,
                        help="write each path's hypotheses there (OUT/PATH/hyps.jsonl, hyp.trn, decode_config.yaml)")
    parser.add_argument("--record", action="store_true", help="append the run to bench/RESULTS.md")
    parser.add_argument("--no-git", action="store_true", help="do not ask git for the revision")
    args = parser.parse_args(argv)
    if args.tiny and args.model is not None:
        parser.error("--tiny and --model exclude each other")
    if args.repeats < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--repeats and --limit must be at least 1")
    return args


# --------------------------------------------------------------------------- setup


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16() -> bool:
    return bool(cpu_flags() & set(BF16_FLAGS))


def choose_paths(spec: str) -> list[str]:
    if spec == "auto":
        return [p for p in PATHS if p != "bf16" or native_bf16()]
    names = [p.strip() for p in spec.split(",") if p.strip()]
    unknown = [p for p in names if p not in PATHS]
    if unknown:
        sys.exit(f"--paths: unknown path(s) {', '.join(unknown)}; known: {', '.join(PATHS)}")
    if REFERENCE not in names:
        names.insert(0, REFERENCE)
    return list(dict.fromkeys(names))


def evenly_spaced(cuts: list[Any], limit: int | None) -> list[Any]:
    if limit is None or limit >= len(cuts):
        return cuts
    return [cuts[i * len(cuts) // limit] for i in range(limit)]


def load_models(model_dir: Path, config: Any, paths: list[str]) -> tuple[Any, dict[str, Any]]:
    """One backbone (features, tokenizer) and each path's model, every one
    made by ilt: loaded in its dtype, int8 ones quantized by
    :func:`ilt.asr.decode.quantize_for_decoding` from a copy of the fp32 model."""
    from ilt.asr.decode import quantize_for_decoding
    from ilt.core.registry import create

    backbone = create("backbone", config.backbone, model_dir, dtype="fp32", device="cpu")
    models: dict[str, Any] = {}
    for name in paths:
        dtype, scope = PATHS[name]
        if dtype == "fp32":
            model = backbone.model if scope is None else copy.deepcopy(backbone.model)
        else:
            model = create("backbone", config.backbone, model_dir, dtype=dtype, device="cpu").model
        if scope is not None:
            quantize_for_decoding(model, scope)
        models[name] = model.eval()
    return backbone, models


def path_config(config: Any, name: str) -> Any:
    dtype, scope = PATHS[name]
    if scope is None:
        return dataclasses.replace(config, quantize="none", quantize_scope="decoder", precision=dtype)
    return dataclasses.replace(config, quantize="int8", quantize_scope=scope, precision=dtype)


# --------------------------------------------------------------------------- measuring


def run(backbone: Any, models: dict[str, Any], configs: dict[str, Any], cuts: list[Any],
        repeats: int) -> dict[str, dict[str, Any]]:
    """Each path: one untimed warm-up cut, then ``repeats`` timed decodes of
    all cuts, the paths taking turns in a rotating order. Returns per path the
    seconds of each round, the first run's records, whether later runs gave
    the same text, and the model's numerics."""
    from ilt.asr.decode import decode_cuts, model_numerics

    names = list(models)
    out: dict[str, dict[str, Any]] = {
        n: {"seconds": [], "records": None, "stable": True, "numerics": model_numerics(models[n])} for n in names}
    for name in names:
        decode_cuts(backbone, models[name], cuts[:1], configs[name], progress=False)
    for turn in range(repeats):
        for name in names[turn % len(names):] + names[:turn % len(names)]:
            start = time.perf_counter()
            records = decode_cuts(backbone, models[name], cuts, configs[name], progress=False)
            out[name]["seconds"].append(time.perf_counter() - start)
            if out[name]["records"] is None:
                out[name]["records"] = records
            elif [r["text"] for r in records] != [r["text"] for r in out[name]["records"]]:
                out[name]["stable"] = False
            print(f"round {turn + 1}/{repeats} {name}: {out[name]['seconds'][-1]:.2f} s", file=sys.stderr, flush=True)
    return out


def _norm(text: str) -> str:
    return " ".join(text.split())


def summarise(results: dict[str, dict[str, Any]], refs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Speed, spread, error rates and agreement of each path against fp32."""
    from ilt.asr.score import score

    ref_run = results[REFERENCE]
    ref_hyps = {r["id"]: _norm(r["text"]) for r in ref_run["records"]}
    summary = {}
    for name, r in results.items():
        hyps = {rec["id"]: rec["text"] for rec in r["records"]}
        audio = sum(rec["duration"] for rec in r["records"])
        scored = score(refs, hyps, "language")
        ratios = [a / b for a, b in zip(ref_run["seconds"], r["seconds"])]  # > 1: faster than fp32
        median = statistics.median(r["seconds"])
        summary[name] = {
            "seconds": median, "runs": r["seconds"], "audio": audio, "rtfx": audio / median,
            "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "rows": {row.group: (row.unit, row.error_rate) for row in scored.rows},
            "overall": (scored.overall.unit, scored.overall.error_rate),
            "identical": sum(_norm(hyps.get(i, "")) == h for i, h in ref_hyps.items()), "of": len(ref_hyps),
            "stable": r["stable"], "numerics": r["numerics"], "hyps": hyps,
        }
    return summary


# --------------------------------------------------------------------------- report


def _weights(numerics: dict[str, Any] | None) -> str:
    if not numerics:
        return "n/a"
    if numerics["int8_linear"]:
        return (f"{numerics['int8_linear']} Linear int8 (dynamic), {numerics['float_linear']} Linear "
                f"{numerics['dtype']}")
    return f"{numerics['float_linear']} Linear {numerics['dtype']}"


def _rate(unit_rate: tuple[str, float | None]) -> str:
    unit, rate = unit_rate
    return f"{fmt(rate, '.2f')} ({'WER' if unit == 'word' else 'CER'})"


def tables(summary: dict[str, dict[str, Any]], repeats: int) -> str:
    speed_rows = []
    for name, s in summary.items():
        spread = "-" if name == REFERENCE else f"{s['ratio_min']:.3f}-{s['ratio_max']:.3f}"
        speed_rows.append([name, _weights(s["numerics"]), fmt(s["seconds"], ".2f"),
                           " ".join(f"{t:.2f}" for t in s["runs"]), fmt(s["rtfx"], ".2f"),
                           "1.000" if name == REFERENCE else fmt(s["ratio"], ".3f"), spread,
                           "-" if name == REFERENCE else f"{s['identical']}/{s['of']}",
                           "yes" if s["stable"] else "no"])
    speed = markdown_table(["path", "weights", "decode s (median)", "all runs s", "RTFx", "speed / fp32 (median)",
                            "range", "identical to fp32", "same text every run"], speed_rows)
    groups = sorted({g for s in summary.values() for g in s["rows"]})
    ref_overall = summary[REFERENCE]["overall"][1]
    error_rows = []
    for name, s in summary.items():
        delta = s["overall"][1] - ref_overall if s["overall"][1] is not None and ref_overall is not None else None
        error_rows.append([name, *[_rate(s["rows"][g]) if g in s["rows"] else "n/a" for g in groups],
                           _rate(s["overall"]), "-" if name == REFERENCE else fmt(delta, "+.2f")])
    errors = markdown_table(["path", *[f"{g} %" for g in groups], "Overall %", "Overall - fp32 (points)"],
                            error_rows)
    return (f"{speed}\n\nspeed / fp32: fp32 seconds / path seconds within each of the {repeats} round(s), "
            f"median and range.\n\nError rate per language (ilt's scorer, MLC-SLM normalisation):\n\n{errors}")


def info(query_git: bool) -> dict[str, Any]:
    import peft
    import torch
    import transformers

    flags = cpu_flags()
    bf16 = ", ".join(f for f in BF16_FLAGS if f in flags) or "no native bf16"
    return {"device": (f"{_cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
                       f"{bf16}, quantized engine "
                       f"{torch.backends.quantized.engine}"),
            "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "git": git_revision() if query_git else "not queried"}


def block(title: str, details: dict[str, Any], settings: str, text: str) -> str:
    """The run as ``common.record`` appends it to ``RESULTS.md``, to print."""
    import shlex

    command = shlex.join([".venv/bin/python", "bench/decode_quantized.py", *sys.argv[1:]])
    return "\n".join([
        f"## {now()}: {title}", "",
        f"- device: {details['device']}",
        (f"- software: torch {details['torch']}, transformers {details['transformers']}, peft {details['peft']}, "
         f"ilt git {details['git']}"),
        f"- settings: {settings}",
        f"- command: `{command}`", "", text, ""])


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    import torch

    from ilt.asr.score import references
    from ilt.config import DecodeConfig, load_with_overrides
    from ilt.data.manifests import load_cuts

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = choose_paths(args.paths)
    config = load_with_overrides(args.decode_config, DecodeConfig, args.overrides)
    cuts = evenly_spaced(list(load_cuts(args.cuts)), args.limit)
    refs = references(cuts, str(args.cuts))
    with tempfile.TemporaryDirectory(prefix="ilt-bench-quant-") as tmp:
        if args.tiny:
            from ilt.testing import tiny_whisper_dir

            model_dir = tiny_whisper_dir(Path(tmp) / "tiny", multilingual=True)
            model_name = "tiny random multilingual Whisper (smoke run, not a measurement)"
        else:
            model_dir = args.model or DEFAULT_MODEL
            if not (model_dir / "config.json").is_file():
                sys.exit(f"{model_dir}: no Whisper model there; pass --model DIR, or --tiny for a smoke run")
            model_name = str(model_dir.resolve().relative_to(REPO_DIR) if model_dir.resolve().is_relative_to(REPO_DIR)
                             else model_dir)
        backbone, models = load_models(model_dir, config, paths)
        configs = {name: path_config(config, name) for name in paths}
        results = run(backbone, models, configs, cuts, args.repeats)
    if args.out is not None:
        from ilt.asr.decode import write_outputs

        for name, result in results.items():
            write_outputs(result["records"], args.out / name, configs[name])
    summary = summarise(results, refs)
    languages = ", ".join(f"{lang} {n}" for lang, n in sorted(
        Counter(str(c.supervisions[0].language) for c in cuts if c.supervisions).items()))
    beams = ", ".join(f"{k} {v}" for k, v in config.beam_size.items())
    settings = (f"model {model_name}; {len(cuts)} cuts of {args.cuts.name} ({languages}; "
                f"{summary[REFERENCE]['audio']:.1f} s of audio); decode config "
                f"{args.decode_config.name if args.decode_config else 'defaults'}"
                f"{' with ' + ' '.join(args.overrides) if args.overrides else ''} (beam {beams}, batch "
                f"{config.batch_size}, max {config.max_new_tokens} new tokens, fallback "
                f"{'on' if config.compression_ratio_threshold and config.fallback_temperatures else 'off'}); paths "
                f"{', '.join(paths)}; {args.repeats} timed run(s) each, taking turns in a rotating order, after one "
                f"warm-up cut; int8: torch.ao dynamic quantization, int8 weights per output channel")
    if "bf16" in paths and not native_bf16():
        settings += "; bf16 without native CPU support (emulated)"
    text = tables(summary, args.repeats)
    details = info(not args.no_git)
    print("\n" + block("decode_quantized", details, settings, text))
    if args.record:
        record("decode_quantized", details, settings, text)


if __name__ == "__main__":
    main()
