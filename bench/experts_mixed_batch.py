"""LoRA language experts: mixed-batch decoding (several languages and experts
in one batch, PEFT's ``adapter_names``) against per-group decoding (one
language after another, only its expert active), on the same model, experts,
cuts and settings, in one process.

Both go through ``ilt.experts.train.decode_with_experts`` with the same routes;
only ``batching`` differs. Each side decodes the cuts once untimed (warm-up),
then the two take turns ``--repeats`` times (mixed, per-group, per-group,
mixed, ...: this VM drifts 10-15% within minutes), and the median run of each
is reported: utterances/s, seconds, batches, and how many hypotheses are
identical between the two (they should all be: the same arithmetic row by
row; a difference is a float tie broken differently by another batch shape).

Defaults: a tiny random multilingual Whisper (``ilt.testing.tiny_whisper_dir``,
2 s window) with one random non-zero LoRA per language (``init_lora_weights=False``,
B drawn with std ``--lora-noise``), and synthetic cuts, ``--utts`` per language.

    .venv/bin/python bench/experts_mixed_batch.py                      # tiny random model, CPU, seconds
    .venv/bin/python bench/experts_mixed_batch.py --model exp/M0 --experts exp/experts \\
        --cuts data/manifests/dev.jsonl.gz --beam 6 --batch 16 --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import device_info, fmt, markdown_table, ratio, record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a local Whisper directory (default: a tiny random one)")
    parser.add_argument("--experts", type=Path,
                        help="trained experts (`ilt experts train --out DIR`); default: random LoRAs on --model")
    parser.add_argument("--cuts", type=Path, help="a CutSet manifest (default: synthetic cuts, --utts per language)")
    parser.add_argument("--languages", default="de,fr,es,it",
                        help="random experts and synthetic cuts: these languages (comma-separated)")
    parser.add_argument("--no-expert-languages", default="ja",
                        help="synthetic cuts in these languages too, which have no expert (the base model decodes them)")
    parser.add_argument("--utts", type=int, default=6, help="synthetic cuts per language")
    parser.add_argument("--batch", type=int, default=8, help="cuts per batch")
    parser.add_argument("--beam", type=int, default=1, help="beam size (every language)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--r", type=int, default=8, help="rank of the random experts")
    parser.add_argument("--lora-noise", type=float, default=0.3, help="std of the random experts' B weights")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each side, taking turns")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--record", action="store_true", help="append the run to bench/RESULTS.md")
    return parser.parse_args(argv)


def synthetic_cuts(tmp: Path, languages: list[str], per_language: int, window: float) -> Any:
    """Cuts of 0.4 s to the model's window, languages interleaved."""
    from ilt.testing import make_cuts

    n = len(languages) * per_language
    specs = [{"id": f"u{i:03d}-{languages[i % len(languages)]}", "language": languages[i % len(languages)],
              "duration": round(0.4 + (window - 0.5) * ((i * 7) % n) / max(1, n - 1), 2)} for i in range(n)]
    return list(make_cuts(tmp / "cuts", specs))


def random_experts(backbone: Any, languages: list[str], r: int, noise: float) -> Any:
    """One PEFT model holding a random non-zero LoRA (q/k/v) per language."""
    import torch
    from peft import get_peft_model

    from ilt.config import LoraSection
    from ilt.training.lora import lora_config

    lora = LoraSection(r=r, lora_alpha=2.0 * r, target_modules="attention", init_lora_weights=False)
    model = None
    for seed, language in enumerate(languages):
        torch.manual_seed(seed)
        if model is None:
            model = get_peft_model(backbone.model, lora_config(backbone, lora), adapter_name=language)
        else:
            model.add_adapter(language, lora_config(backbone, lora))
        with torch.no_grad():
            for name, param in model.named_parameters():
                if f"lora_B.{language}." in name:
                    param.normal_(0.0, noise)
    model.eval()
    return model


def load(args: argparse.Namespace, tmp: Path) -> tuple[Any, Any, list[Any], dict[str, Any]]:
    """The backbone, the PEFT model holding the experts, the cuts and their routes."""
    from ilt.config import DecodeConfig
    from ilt.core.registry import create
    from ilt.data.manifests import load_cuts
    from ilt.experts.train import load_expert_model, load_experts, route_cuts
    from ilt.testing import tiny_whisper_dir

    config = DecodeConfig(beam_size={"default": args.beam}, batch_size=args.batch, max_new_tokens=args.max_new_tokens,
                          compression_ratio_threshold=None, fallback_temperatures=[], precision=args.precision)
    adapters = None
    model_dir = args.model
    if args.experts is not None:
        base, adapters = load_experts(args.experts)
        model_dir = model_dir or base
    model_dir = model_dir or tiny_whisper_dir(tmp / "tiny")
    backbone = create("backbone", config.backbone, model_dir, dtype=args.precision, device=args.device)
    languages = [lang for lang in args.languages.split(",") if lang]
    if args.cuts is not None:
        cuts = list(load_cuts(args.cuts))
    else:
        extra = [lang for lang in args.no_expert_languages.split(",") if lang]
        cuts = synthetic_cuts(tmp, languages + extra, args.utts, float(backbone.max_input_seconds))
    experts = set(adapters) if adapters is not None else set(languages)
    routes, _ = route_cuts(backbone, backbone.model, cuts, config, experts)
    model = (load_expert_model(backbone, adapters) if adapters is not None
             else random_experts(backbone, languages, args.r, args.lora_noise))
    return backbone, model, cuts, {"config": config, "routes": routes}


def run_side(backbone: Any, model: Any, cuts: list[Any], setup: dict[str, Any], batching: str,
             device: str) -> tuple[float, list[str]]:
    import torch

    from ilt.experts.train import decode_with_experts

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    records = decode_with_experts(backbone, model, cuts, setup["routes"], setup["config"], batching=batching,
                                  progress=False)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, [r["text"] for r in records]


def main(argv: list[str] | None = None) -> None:
    from ilt.experts.train import plan_batches, routing_summary

    args = parse_args(argv)
    sides = ("mixed", "per-group")
    with tempfile.TemporaryDirectory(prefix="ilt-bench-experts-") as tmp:
        backbone, model, cuts, setup = load(args, Path(tmp))
        summary = routing_summary(setup["routes"], "mixed")
        print(f"{len(cuts)} cuts; experts {summary['experts']}; base model {summary['base_model']}", file=sys.stderr)
        warm = {side: run_side(backbone, model, cuts[:args.batch], setup, side, args.device) for side in sides}
        times: dict[str, list[float]] = {side: [] for side in sides}
        texts: dict[str, list[str]] = {}
        for turn in range(args.repeats):
            for side in (sides if turn % 2 == 0 else sides[::-1]):
                seconds, texts[side] = run_side(backbone, model, cuts, setup, side, args.device)
                times[side].append(seconds)
                print(f"run {turn + 1}/{args.repeats} {side}: {seconds:.2f} s", file=sys.stderr)
        batches = {side: len(plan_batches(backbone, cuts, setup["routes"], setup["config"], side)) for side in sides}
    same = sum(a == b for a, b in zip(texts["mixed"], texts["per-group"]))
    median = {side: statistics.median(times[side]) for side in sides}
    rows = [[side, batches[side], fmt(median[side], ".2f"), fmt(len(cuts) / median[side], ".2f"),
             fmt(ratio(median["per-group"], median[side]), ".2f")] for side in sides]
    table = markdown_table(["batching", "batches", "median s", "utt/s", "speed-up vs per-group"], rows)
    identical = f"identical hypotheses: {same}/{len(cuts)} ({same / max(1, len(cuts)):.3f})"
    print(table)
    print(identical)
    print("warm-up (first batch): " + ", ".join(f"{s} {warm[s][0]:.2f} s" for s in sides), file=sys.stderr)
    if args.record:
        settings = (f"{len(cuts)} cuts, batch {args.batch}, beam {args.beam}, max {args.max_new_tokens} new tokens, "
                    f"{args.precision}, experts {summary['experts']}, base model {summary['base_model']}, "
                    f"{args.repeats} runs each, taking turns")
        record("LoRA language experts: mixed-batch vs per-group decoding", device_info(args.device), settings,
               table, [identical])


if __name__ == "__main__":
    main()
