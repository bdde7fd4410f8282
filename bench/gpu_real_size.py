"""Real-size training steps: Whisper-large-v3 and Qwen2-Audio-7B with the Feedback round's LoRA.

Both models are built from their real configurations (written here and in
``bench/common.py``, nothing from a hub) with random weights, directly on the
GPU in bf16, and get the paper's Feedback LoRA (``r=512, lora_alpha=2048``,
scope ``wide``) through ilt's own code (:func:`ilt.training.lora.attach_lora`), plus
the language-ID embeddings with ``--lid`` (:mod:`ilt.models.lid`). One batch of
synthetic cuts (``--batch`` cuts of ``--seconds`` seconds, multilingual
transcripts) is collated once by the backbone (``Backbone.collate``) and
trained on for ``--steps`` optimiser steps: bf16 autocast, ``Backbone.loss``,
backward, gradient clipping, fused AdamW over the fp32 LoRA (and LID)
weights, as ``ilt train`` does. The data loader is not part of the timing.

Per model it records: parameters (total, trainable), peak GPU memory
(``torch.cuda.max_memory_allocated`` from the start of the build), the
median step time over steps 2..N (step 1 warms up) and samples/s = batch /
median step time; an out-of-memory is recorded as such. Everything goes into
``--out`` (``results.json``, ``results.md``); ``--record`` also appends the
table to ``bench/RESULTS.md`` with the date and the device.

    .venv/bin/python bench/gpu_real_size.py --out bench/out/real-size             # GPU: both models
    .venv/bin/python bench/gpu_real_size.py --out bench/out/real-size --lid --record
    .venv/bin/python bench/gpu_real_size.py --tiny --out /tmp/real-size-smoke     # CPU: the code path only

``--tiny`` builds the same two architectures at hidden size 32 and 2 layers
and runs on the CPU in fp32: a check of the code path, not a measurement.

``--input-modes padded,audio_length`` (issue 26) trains each model twice: with
the encoder padded to 30 s (stock) and on the batch's own length
(``input_mode: audio_length``, padded to ``--pad-multiple`` frames), and the
table gives each one's mel frames, step time and peak memory. The large-v3
comparison at the mini corpus's utterance length, in well under 8 minutes on
one H100:

    .venv/bin/python bench/gpu_real_size.py --out bench/out/input-mode --models whisper-large-v3 \
        --input-modes padded,audio_length --seconds 3 --batch 8 --record

``--checkpointing both`` trains each model without and with gradient
checkpointing; every padded row also carries ``ilt plan``'s predicted peak for
one process (``PLAN_SOURCES``: the shipped config and the round YAML) and the
ratio measured / plan. All the GPU checks, in two calls that fit 8 minutes on
one H100 (about 3 + 2 minutes, estimated, not yet run):

    .venv/bin/python bench/gpu_real_size.py --out bench/out/real-size --checkpointing both --batch 4 --steps 4 --record
    .venv/bin/python bench/gpu_real_size.py --out bench/out/input-mode --models whisper-large-v3 \
        --input-modes padded,audio_length --seconds 3 --batch 8 --steps 4 --record
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import LARGE_V3, device_info, fmt_bytes, markdown_table, now, record  # noqa: E402

#: Qwen/Qwen2-Audio-7B's config.json (audio tower: Whisper-large-v3's encoder; LLM: Qwen-7B).
QWEN2_AUDIO_7B = {
    "audio_config": {"model_type": "qwen2_audio_encoder", "num_mel_bins": 128, "encoder_layers": 32,
                     "encoder_attention_heads": 20, "encoder_ffn_dim": 5120, "d_model": 1280,
                     "activation_function": "gelu", "scale_embedding": False, "max_source_positions": 1500},
    "text_config": {"model_type": "qwen2", "vocab_size": 156032, "hidden_size": 4096, "intermediate_size": 11008,
                    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                    "max_position_embeddings": 8192, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
                    "bos_token_id": 151643, "eos_token_id": 151643, "tie_word_embeddings": False},
    "audio_token_index": 151646,
}
#: The paper's Feedback round LoRA (section 3.2.2).
FEEDBACK_LORA = {"r": 512, "lora_alpha": 2048.0, "lora_dropout": 0.05, "target_modules": "wide"}
TINY_LORA = {"r": 8, "lora_alpha": 32.0, "lora_dropout": 0.05, "target_modules": "wide"}

#: Transcripts of the synthetic cuts: (language, text), about 2.5 words a second when repeated.
TEXTS = (("en", "the quick brown fox jumps over the lazy dog"), ("fr", "le renard brun saute par dessus le chien"),
         ("de", "der schnelle braune fuchs springt über den hund"), ("es", "el rápido zorro marrón salta sobre el perro"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output directory (results.json, results.md)")
    parser.add_argument("--models", default="whisper-large-v3,qwen2-audio-7b",
                        help="comma-separated: whisper-large-v3, qwen2-audio-7b")
    parser.add_argument("--batch", type=int, default=4, help="cuts per step (one micro-batch)")
    parser.add_argument("--seconds", type=float, default=30.0, help="audio seconds per cut (at most 30)")
    parser.add_argument("--steps", type=int, default=5, help="optimiser steps (the first is not timed)")
    parser.add_argument("--lid", action="store_true", help="also train the language-ID embeddings (ilt.models.lid)")
    parser.add_argument("--checkpointing", choices=["off", "on", "both"], default="off",
                        help="gradient checkpointing; both: each model trains once without and once with it")
    parser.add_argument("--gradient-checkpointing", action="store_const", const="on", dest="checkpointing",
                        help=argparse.SUPPRESS)  # the old flag: --checkpointing on
    parser.add_argument("--input-modes", default="padded",
                        help="comma-separated: padded (30 s, stock), audio_length (issue 26); each model runs in each")
    parser.add_argument("--pad-multiple", type=int, default=1000,
                        help="audio_length: pad each batch to a multiple of this many mel frames (1000 = 10 s)")
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU: the code path only")
    parser.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- models


def _on_device(build: Any, dtype: Any, device: Any) -> Any:
    """Call ``build()`` with ``device`` and ``dtype`` as the defaults (random
    weights made in place, no fp32 copy on the host); seeded."""
    import torch

    previous = torch.get_default_dtype()
    torch.manual_seed(0)
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = build()
    finally:
        torch.set_default_dtype(previous)
    return model.to(dtype)


def whisper_backbone(tiny: bool, dtype: Any, device: Any) -> Any:
    """An ilt ``WhisperBackbone`` of large-v3's architecture (``tiny``: d_model 32, 2 layers)."""
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    from ilt.models.convert import (
        build_generation_config,
        special_token_config,
        special_token_ids,
    )
    from ilt.plugins.whisper import WhisperBackbone
    from ilt.testing.dummies import whisper_tokenizer

    tokenizer = whisper_tokenizer(multilingual=True)  # large-v3's layout up to <|yue|>, which it does not use
    ids = special_token_ids(tokenizer)
    sizes = dict(LARGE_V3)
    if tiny:
        sizes.update(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                     decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=100)
    config = WhisperConfig(**sizes, **special_token_config(ids), attn_implementation="sdpa")
    model = _on_device(lambda: WhisperForConditionalGeneration(config), dtype, device)
    model.generation_config = build_generation_config(tokenizer, multilingual=True)
    samples = sizes["max_source_positions"] * 2 * 160
    extractor = WhisperFeatureExtractor(feature_size=sizes["num_mel_bins"], chunk_length=samples // 16000)
    return WhisperBackbone(model, extractor, tokenizer)


def qwen2_audio_backbone(tiny: bool, dtype: Any, device: Any) -> Any:
    """An ilt ``Qwen2AudioBackbone`` of Qwen2-Audio-7B's architecture with a
    small local tokenizer (its IDs lie inside the real vocabulary; the
    ``<|AUDIO|>`` ID is the tokenizer's)."""
    from transformers import (
        GenerationConfig,
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    from ilt.plugins.qwen2_audio import Qwen2AudioBackbone
    from ilt.testing.tiny_qwen2_audio import qwen2_tokenizer

    tokenizer = qwen2_tokenizer(corpus=[text for _, text in TEXTS])
    sizes = json.loads(json.dumps(QWEN2_AUDIO_7B))
    if tiny:
        sizes["audio_config"].update(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
                                     max_source_positions=100)
        sizes["text_config"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer))
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    sizes["text_config"].update(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    sizes["audio_token_index"] = tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    config = Qwen2AudioConfig(**sizes)
    config._attn_implementation = "sdpa"
    model = _on_device(lambda: Qwen2AudioForConditionalGeneration(config), dtype, device)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=eos)
    samples = sizes["audio_config"]["max_source_positions"] * 2 * 160
    extractor = WhisperFeatureExtractor(feature_size=128, chunk_length=samples // 16000)
    return Qwen2AudioBackbone(model, Qwen2AudioProcessor(feature_extractor=extractor, tokenizer=tokenizer))


BUILDERS = {"whisper-large-v3": whisper_backbone, "qwen2-audio-7b": qwen2_audio_backbone}


# --------------------------------------------------------------------------- one model


def make_batch(backbone: Any, batch: int, seconds: float, tmp: Path) -> Any:
    """One collated batch of synthetic cuts (``seconds`` each, at most the model's window)."""
    from ilt.testing.dummies import make_cuts

    seconds = min(seconds, backbone.max_input_seconds - 0.01)
    words = max(1, int(2.5 * seconds))
    specs = []
    for i in range(batch):
        language, text = TEXTS[i % len(TEXTS)]
        specs.append({"id": f"cut{i}", "language": language, "duration": seconds,
                      "text": " ".join((text.split() * (words // len(text.split()) + 1))[:words])})
    collated = backbone.collate(make_cuts(tmp, specs))
    if len(collated) != batch:
        raise RuntimeError(f"collate kept {len(collated)} of {batch} cuts: {collated.skipped}")
    return collated


def train_steps(backbone: Any, model: Any, batch: Any, steps: int, device: str, dtype: Any) -> list[float]:
    """Seconds of each optimiser step (bf16 autocast on a GPU), as ilt's loop does one."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device == "cuda")
    batch = batch.to(device)
    times = []
    for _ in range(steps):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype != torch.float32):
            loss = backbone.loss(model, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if not torch.isfinite(loss.detach()):
            raise RuntimeError(f"non-finite loss {loss.item()}")
    return times


#: the round YAML and the shipped config ``ilt plan`` predicts each model from
PLAN_SOURCES = {"whisper-large-v3": ("openai/whisper-large-v3", "egs/mlc_slm/conf/feedback.yaml"),
                "qwen2-audio-7b": ("Qwen/Qwen2-Audio-7B-Instruct", "egs/mlc_slm/conf/qwen2_audio/feedback.yaml")}


def plan_prediction(name: str, args: argparse.Namespace, checkpointing: bool) -> dict[str, Any]:
    """``ilt plan``'s peak for this row on one process (no DDP buckets: one
    process has none), from the shipped config and the round YAML, with the
    bench's micro-batch, seconds, bf16 and AdamW; ``{}`` for the tiny configs."""
    if args.tiny:
        return {}
    from ilt.config import load_round
    from ilt.training.plan import plan, setup_from_round

    source, round_yaml = PLAN_SOURCES[name]
    round_config = load_round(Path(__file__).resolve().parents[1] / round_yaml)
    setup = setup_from_round(round_config, processes=1, micro_batch=args.batch, seconds=args.seconds,
                             precision="bf16", checkpointing=checkpointing, optimizer="adamw",
                             device_memory_gib=1024.0)
    _, plans, _ = plan(source, round_config, setup, ["ddp"])
    p = plans["ddp"]
    return {"plan_peak_bytes": int(p.peak - p.buckets)}


def run_model(name: str, args: argparse.Namespace, device: str, tmp: Path,
              input_mode: str = "padded", checkpointing: bool = False) -> dict[str, Any]:
    """Build, attach the LoRA (and LID), train ``args.steps`` steps with the
    encoder in ``input_mode``; the row of the table."""
    import torch

    from ilt.config import LoraSection
    from ilt.models import lid
    from ilt.training.lora import attach_lora

    dtype = torch.float32 if args.tiny else torch.bfloat16
    row: dict[str, Any] = {"model": name, "batch": args.batch, "seconds": args.seconds, "lid": args.lid,
                           "input_mode": input_mode, "checkpointing": checkpointing}
    if input_mode == "padded":  # the planner models the padded 30 s encoder
        row.update(plan_prediction(name, args, checkpointing))
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        backbone = BUILDERS[name](args.tiny, dtype, device)
        if input_mode == "audio_length":
            backbone.use_audio_length(args.pad_multiple)
        model = attach_lora(backbone, LoraSection(**(TINY_LORA if args.tiny else FEEDBACK_LORA)))
        if args.lid:
            lid.train_embeddings(backbone)
        if checkpointing:
            model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        trainable, total = model.get_nb_trainable_parameters()
        row.update(params=total, trainable=trainable)
        batch = make_batch(backbone, args.batch, args.seconds, tmp / name)
        row["tokens"] = int(batch.tensors["labels"].ne(-100).sum())  # transcript tokens in the batch
        row["frames"] = int(batch.tensors["input_features"].shape[-1])
        row["seconds"] = round(min(args.seconds, backbone.max_input_seconds - 0.01), 2)
        times = train_steps(backbone, model, batch, args.steps, device, dtype)
    except torch.cuda.OutOfMemoryError as exc:
        row["error"] = f"out of memory: {str(exc).splitlines()[0][:200]}"
        times = []
    timed = times[1:] or times
    if timed:
        step = statistics.median(timed)
        row.update(step_seconds=step, samples_per_second=args.batch / step, all_steps=times)
    if device == "cuda":
        row["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated())
    backbone = model = None
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


# --------------------------------------------------------------------------- report


def table(rows: list[dict[str, Any]]) -> str:
    header = ["model", "input mode (mel frames)", "checkpointing", "params",
              "trainable (LoRA" + (" + LID" if rows and rows[0]["lid"] else "") + ")",
              "batch x s", "peak GPU memory", "ilt plan peak", "measured / plan", "step time (median 2..N)",
              "samples/s"]
    out = []
    for r in rows:
        ratio = (f"{r['peak_gpu_bytes'] / r['plan_peak_bytes']:.2f}"
                 if r.get("peak_gpu_bytes") and r.get("plan_peak_bytes") else "n/a")
        out.append([r["model"], f"{r.get('input_mode', 'padded')} ({r.get('frames', '?')})",
                    "on" if r.get("checkpointing") else "off",
                    f"{r.get('params', 0) / 1e9:.2f} B", f"{r.get('trainable', 0) / 1e6:.0f} M",
                    f"{r['batch']} x {r['seconds']:g}", fmt_bytes(r.get("peak_gpu_bytes")),
                    fmt_bytes(r.get("plan_peak_bytes")), ratio,
                    f"{r['step_seconds']:.3f} s" if "step_seconds" in r else r.get("error", "n/a"),
                    f"{r['samples_per_second']:.2f}" if "samples_per_second" in r else "n/a"])
    return markdown_table(header, out)


def main(argv: list[str] | None = None) -> None:
    import tempfile

    import torch

    args = parse_args(argv)
    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run on a GPU, or pass --tiny to check the code path on the CPU")
    args.out.mkdir(parents=True, exist_ok=True)
    info = device_info(device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            if name not in BUILDERS:
                sys.exit(f"--models: unknown model {name!r}; known: {', '.join(BUILDERS)}")
            for mode in [m.strip() for m in args.input_modes.split(",") if m.strip()]:
                if mode not in ("padded", "audio_length"):
                    sys.exit(f"--input-modes: unknown mode {mode!r}; known: padded, audio_length")
                for checkpointing in {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]:
                    rows.append(run_model(name, args, device, Path(tmp) / f"{mode}-{checkpointing}", mode,
                                          checkpointing))
                    print(json.dumps(rows[-1]), flush=True)
    settings = (f"{'tiny configs, CPU fp32 (code path only)' if args.tiny else 'real configs, random weights, bf16'}"
                f"; LoRA {'r=8' if args.tiny else 'r=512 alpha=2048'} wide; batch {args.batch} x "
                f"{args.seconds:g} s; input modes {args.input_modes} (pad_multiple {args.pad_multiple}); {args.steps} steps; LID {'on' if args.lid else 'off'}; gradient checkpointing "
                f"{args.checkpointing}")
    result = {"date": now(), **info, "settings": settings, "rows": rows}
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    text = table(rows)
    (args.out / "results.md").write_text(f"# {now()}: real-size training steps\n\n- device: {info['device']}\n"
                                         f"- settings: {settings}\n\n{text}\n", encoding="utf-8")
    print(text)
    if args.record and not args.tiny:
        record("real-size LoRA training steps (bench/gpu_real_size.py)", info, settings, text)


if __name__ == "__main__":
    main()
