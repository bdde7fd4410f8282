"""Training throughput: ilt's loop (``ilt.training.loop.train_round``) against the
standard Hugging Face recipe (``Seq2SeqTrainer`` + PEFT ``get_peft_model`` + a
speech seq2seq padding collator) on the same model, cuts, LoRA, precision,
batch size, learning rate and warm-up, and number of optimiser steps.

Each run of a side is a fresh subprocess of this script; with ``--repeats N``
the sides take turns (ilt, reference, reference, ilt, ...) and the median run
of each is reported. Prints samples/s (over the steady-state steps 2..N-1: the
first step warms up and ilt writes its final checkpoint inside step N), peak
memory (GPU: ``max_memory_allocated``; CPU: peak RSS of the process) and the
final loss of each, and ilt / reference.

``--input-mode audio_length`` trains ilt's side with the Whisper encoder on
each batch's own length (``backbone: {name: whisper, input_mode:
audio_length}``); the reference stays padded to 30 s, as users run it. The
loss "same definition" scores each side's adapter in the input mode it was
trained in.

    .venv/bin/python bench/train_throughput.py                    # CPU: tiny.en, batch 8, 10 steps
    .venv/bin/python bench/train_throughput.py --input-mode audio_length --repeats 3   # issue 26
    .venv/bin/python bench/train_throughput.py --model large-v3 --precision bf16 \\
        --r 512 --lora-scope wide --batch 16                      # GPU
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BENCH_BACKBONE,
    add_common_args,
    bench_cuts,
    device_info,
    driver_start,
    effective_precision,
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
    register_bench_backbone,
    reset_peak_memory,
    resolve_device,
    run_alternating,
    sync,
    text_token_loss,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, batch=8)
    parser.add_argument("--steps", type=int, default=10, help="optimiser steps (at least 3 for a steady-state rate)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=0,
                        help="linear warm-up steps (0: both sides have the same schedule; with warm-up the "
                             "Trainer's first step has learning rate 0, ilt's lr/(warm-up+1))")
    parser.add_argument("--dropout", type=float, default=0.05,
                        help="LoRA dropout of both sides (ilt's default 0.05; 0 leaves no randomness in training)")
    parser.add_argument("--score-prompt", action="store_true",
                        help="the reference's loss also scores the prompt tokens (the recipe's collator as is)")
    parser.add_argument("--bare-text", action="store_true",
                        help="the reference tokenizes the bare text, without Whisper's leading space")
    parser.add_argument("--shuffle-reference", action="store_true",
                        help="let the Trainer shuffle the cuts itself instead of replaying ilt's batches")
    parser.add_argument("--cuts", type=int, default=32, help="distinct espeak-ng training utterances")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs per side, one process each, the sides taking turns (the median is reported)")
    parser.add_argument("--input-mode", choices=("padded", "audio_length"), default="padded",
                        help="ilt's input mode (the reference always pads to 30 s)")
    parser.add_argument("--pad-multiple", type=int, default=1000,
                        help="with --input-mode audio_length: pad each batch to a multiple of this many frames")
    parser.add_argument("--force-precision", action="store_true",
                        help="keep bf16 on a CPU (ilt's force_precision; the reference gets bf16 too)")
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- shared by both sides


def _throughput(marks: list[dict[str, Any]], first: float | None) -> dict[str, Any]:
    """Samples/s from per-step marks ``{"step", "t", "samples"}`` (taken after
    each optimiser step, device synchronised). With 3+ steps: steps 2..N-1;
    otherwise steps 1..N from the first batch (warm-up and final save included)."""
    if len(marks) >= 3:
        a, b = marks[0], marks[-2]
        return {"samples_per_s": (b["samples"] - a["samples"]) / (b["t"] - a["t"]),
                "timed_steps": f"{a['step'] + 1}..{b['step']}"}
    if marks and first is not None:
        b = marks[-1]
        return {"samples_per_s": b["samples"] / (b["t"] - first),
                "timed_steps": f"1..{b['step']} (incl. warm-up, ilt's final save)"}
    return {"samples_per_s": None, "timed_steps": "none"}


def _lora_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The LoRA both sides train: PEFT ``LoraConfig`` arguments (ilt's defaults
    for what the flags leave open: no bias)."""
    from ilt.config import LoraSection
    from ilt.plugins.whisper import SCOPE_TARGETS

    section = LoraSection(r=args.r, lora_alpha=args.alpha, lora_dropout=args.dropout, target_modules=args.lora_scope)
    return section.peft_kwargs(list(SCOPE_TARGETS[args.lora_scope]))


def _round_config(args: argparse.Namespace, precision: str) -> Any:
    """The round ilt trains (and whose batches the reference replays)."""
    from ilt.config import RoundConfig, from_dict

    lora = _lora_kwargs(args)
    return from_dict(RoundConfig, {
        "name": "bench", "backbone": {"name": BENCH_BACKBONE, **({} if args.input_mode == "padded" else {
            "input_mode": args.input_mode, "pad_multiple": args.pad_multiple})},
        "lora": {"r": lora["r"], "lora_alpha": lora["lora_alpha"], "lora_dropout": lora["lora_dropout"],
                 "target_modules": args.lora_scope},
        "train": {"max_steps": args.steps, "lr": args.lr, "warmup_steps": args.warmup,
                  "micro_batch": args.batch, "precision": precision, "seed": args.seed,
                  "eval_every": args.steps, "save_every": args.steps},
    }, "<bench>")


def ilt_batch_order(args: argparse.Namespace, cuts_path: Path, precision: str) -> list[str]:
    """The cut IDs of ilt's first ``--steps`` micro-batches, in the order its
    sampler draws them (ilt's own data code, metadata only)."""
    from ilt.config import DataSource
    from ilt.core.runtime import Skips
    from ilt.data.mix import make_sampler, training_stream

    train = _round_config(args, precision).train
    mix = training_stream([DataSource(str(cuts_path), 1.0)], train.seed, Skips("bench"))
    sampler = make_sampler(mix, train, world_size=1, rank=0)
    order = []
    for _, batch in zip(range(args.steps), sampler):
        if len(batch) != args.batch:
            sys.exit(f"ilt drew a batch of {len(batch)} cuts, not {args.batch}: the reference cannot replay it")
        order += [cut.id for cut in batch]
    return order


# --------------------------------------------------------------------------- ilt


def _preimport() -> None:
    """Import what both sides load lazily, before their timers start, so that
    the wall time compares work rather than import order."""
    import importlib

    for name in ("accelerate", "peft", "transformers.models.whisper.modeling_whisper",
                 "torch.utils.tensorboard"):  # the last: Accelerate's tracker, used by ilt
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def run_ilt(args: argparse.Namespace) -> dict[str, Any]:
    from ilt.training.loop import train_round

    _preimport()

    device = resolve_device(args.device)
    if device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "1"  # as `accelerate launch --cpu` does
    precision = effective_precision(args.precision, device, args.force_precision)
    cuts = bench_cuts(args.cuts, args.cache_dir)
    src = model_dir(args.model, args.cache_dir)
    register_bench_backbone(args.model, args.cache_dir)
    config = _round_config(args, precision)
    marks: list[dict[str, Any]] = []

    def on_step(step: int, rec: dict[str, Any]) -> None:
        # every micro-batch holds --batch cuts (ilt_batch_order checks it); the loop collates in
        # its loader with the backbone's model-free collator, so the backbone cannot count them
        sync(device)
        marks.append({"step": step, "t": time.perf_counter(), "samples": step * args.batch, "loss": rec["loss"]})

    work = Path(tempfile.mkdtemp(prefix="ilt-bench-train-"))
    try:
        reset_peak_memory(device)
        start = time.perf_counter()
        result = train_round(config, src or work / "large-v3-in-memory", work / "run",
                             train_cuts=[(str(cuts), 1.0)], on_step=on_step,
                             force_precision=precision == "bf16" and device == "cpu")
        wall = time.perf_counter() - start
        memory = peak_memory(device)
        # the final adapter, on a freshly loaded model, under the shared loss definition
        from peft import PeftModel

        backbone = load_backbone(args.model, args.cache_dir, dtype=None, device=device)
        if args.input_mode == "audio_length":
            backbone.use_audio_length(args.pad_multiple)
        trained = PeftModel.from_pretrained(backbone.model, str(result.final_dir))
        same_loss = text_token_loss(backbone, trained, cuts, args.batch)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    losses = [m["loss"] for m in marks]
    return {"side": "ilt", "same_loss": same_loss, "precision": precision, "steps": result.steps, "wall_s": wall,
            "samples": result.steps * args.batch, "first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None, "peak_memory": memory,
            **_throughput(marks, start), "info": device_info(device)}


# --------------------------------------------------------------------------- the reference


class CutsDataset:
    """A map-style torch dataset over Lhotse cuts, ``datasets``-free: log-mel
    features from the feature extractor (padded to the 30 s window, as it does
    by default) and the tokenizer's label ids (with its prefix tokens).

    The text gets Whisper's leading space (``" " + text``, as ilt's targets
    and Whisper's own transcripts have it), unless ``leading_space`` is off:
    the recipe's bare ``tokenizer(text)`` trains another target sequence
    ("the" instead of " the"), and the two trained models could not be
    compared on one loss."""

    def __init__(self, cuts: Any, feature_extractor: Any, tokenizer: Any, leading_space: bool = True) -> None:
        self.cuts = list(cuts)
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.prefix = " " if leading_space else ""

    def __len__(self) -> int:
        return len(self.cuts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        cut = self.cuts[index]
        audio = cut.load_audio().mean(axis=0)
        features = self.feature_extractor(audio, sampling_rate=self.feature_extractor.sampling_rate)
        return {"input_features": features.input_features[0],
                "labels": self.tokenizer(self.prefix + cut.supervisions[0].text.strip()).input_ids}


@dataclass
class DataCollatorSpeechSeq2SeqWithPadding:
    """The collator of the Hugging Face Whisper fine-tuning recipe: pad the
    features and the labels, mask label padding with -100 and drop a leading
    decoder start token (the model prepends it again when it shifts the labels
    right into decoder inputs).

    ``masked_prompt`` > 0 (the benchmark's default, ilt's objective) also
    masks the first ``masked_prompt`` labels, the prompt tokens after the
    start token (no-timestamps; language and task on a multilingual model),
    and passes the decoder inputs explicitly: the model's own right shift
    would turn masked labels into padding in its inputs."""

    feature_extractor: Any
    tokenizer: Any
    decoder_start_token_id: int
    masked_prompt: int = 0

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.feature_extractor.pad([{"input_features": it["input_features"]} for it in items],
                                           return_tensors="pt")
        padded = self.tokenizer.pad([{"input_ids": it["labels"]} for it in items], return_tensors="pt")
        labels = padded["input_ids"].masked_fill(padded["attention_mask"] != 1, -100)
        if bool((labels[:, 0] == self.decoder_start_token_id).all()):
            if self.masked_prompt:
                batch["decoder_input_ids"] = padded["input_ids"][:, :-1]
            labels = labels[:, 1:]
        elif self.masked_prompt:
            raise ValueError("masked_prompt needs labels that start with the decoder start token")
        if self.masked_prompt:
            labels = labels.clone()
            labels[:, :self.masked_prompt] = -100
        batch["labels"] = labels
        return batch


def run_reference(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from lhotse import CutSet
    from peft import LoraConfig, get_peft_model
    from transformers import (
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        TrainerCallback,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperTokenizer,
        set_seed,
    )

    _preimport()
    device = resolve_device(args.device)
    precision = effective_precision(args.precision, device, args.force_precision)
    cuts = CutSet.from_file(bench_cuts(args.cuts, args.cache_dir)).to_eager()
    if not args.shuffle_reference:  # replay ilt's batches, in ilt's order
        cuts = [cuts[cut_id] for cut_id in ilt_batch_order(args, bench_cuts(args.cuts, args.cache_dir), precision)]
    work = Path(tempfile.mkdtemp(prefix="ilt-bench-hf-"))
    marks: list[dict[str, Any]] = []

    class CountingTrainer(Seq2SeqTrainer):
        samples = 0
        first: float | None = None

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            if args.shuffle_reference:
                return super()._get_train_sampler(train_dataset)
            return torch.utils.data.SequentialSampler(self.train_dataset if train_dataset is None else train_dataset)

        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            if CountingTrainer.first is None:
                CountingTrainer.first = time.perf_counter()
            CountingTrainer.samples += int(inputs["labels"].shape[0])
            return super().training_step(model, inputs, num_items_in_batch)

    class Marks(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            sync(device)
            marks.append({"step": state.global_step, "t": time.perf_counter(), "samples": CountingTrainer.samples})

    try:
        reset_peak_memory(device)
        start = time.perf_counter()
        set_seed(args.seed)  # as ilt does before loading the model and attaching the LoRA
        if args.model == "large-v3":
            model, feature_extractor, tokenizer = large_v3_parts(torch.float32, device)
        else:
            src = model_dir(args.model, args.cache_dir)
            model = WhisperForConditionalGeneration.from_pretrained(
                src, dtype=torch.float32, attn_implementation="sdpa", local_files_only=True, use_safetensors=True)
            feature_extractor = WhisperFeatureExtractor.from_pretrained(src, local_files_only=True)
            tokenizer = WhisperTokenizer.from_pretrained(src, local_files_only=True)
        multilingual = getattr(model.generation_config, "is_multilingual", None)
        if multilingual is None:
            multilingual = model.config.vocab_size >= 51865
        if multilingual:
            tokenizer.set_prefix_tokens(language="en", task="transcribe", predict_timestamps=False)
        model = get_peft_model(model, LoraConfig(**_lora_kwargs(args)))
        training_args = Seq2SeqTrainingArguments(
            output_dir=str(work), per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
            max_steps=args.steps, learning_rate=args.lr, warmup_steps=args.warmup, lr_scheduler_type="linear",
            weight_decay=0.0, max_grad_norm=1.0,
            optim="adamw_torch_fused" if device == "cuda" else "adamw_torch",  # what ilt uses
            bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=device == "cpu",
            logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none",
            remove_unused_columns=False, label_names=["labels"], dataloader_num_workers=0,
            seed=args.seed, disable_tqdm=True)
        trainer = CountingTrainer(
            model=model, args=training_args, train_dataset=CutsDataset(cuts, feature_extractor, tokenizer,
                                                                       leading_space=not args.bare_text),
            data_collator=DataCollatorSpeechSeq2SeqWithPadding(
                feature_extractor, tokenizer, model.get_base_model().config.decoder_start_token_id,
                masked_prompt=0 if args.score_prompt else len(tokenizer.prefix_tokens) - 1),
            callbacks=[Marks()])
        trainer.train()
        wall = time.perf_counter() - start
        memory = peak_memory(device)
        from ilt.plugins.whisper import WhisperBackbone

        same_loss = text_token_loss(WhisperBackbone(model.get_base_model(), feature_extractor, tokenizer), model,
                                    bench_cuts(args.cuts, args.cache_dir), args.batch)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"side": "reference", "same_loss": same_loss, "precision": precision, "steps": trainer.state.global_step, "wall_s": wall,
            "samples": CountingTrainer.samples, "first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None, "peak_memory": memory,
            **_throughput(marks, CountingTrainer.first), "info": device_info(device)}


ROLES = {"ilt": run_ilt, "reference": run_reference}


# --------------------------------------------------------------------------- driver


def main() -> None:
    args = parse_args()
    device = driver_start(args, ROLES)
    if device is None:
        return
    if args.steps < 3:
        print("note: fewer than 3 steps: samples/s includes the warm-up step and ilt's final checkpoint",
              file=sys.stderr)
    # made once, before the timed runs (both sides read the cache)
    bench_cuts(args.cuts, args.cache_dir)
    model_dir(args.model, args.cache_dir)
    runs = run_alternating(__file__, ["ilt", "reference"], sys.argv[1:], args.repeats)
    ilt, ref = median_run(runs["ilt"], "samples_per_s"), median_run(runs["reference"], "samples_per_s")

    precision = ilt["precision"]
    settings = (f"model {args.model}, ilt input_mode {args.input_mode}"
                f"{f' (pad_multiple {args.pad_multiple})' if args.input_mode != 'padded' else ''}, "
                f"batch {args.batch}, {args.steps} steps, {precision}"
                f"{f' (asked {args.precision})' if precision != args.precision else ''}, "
                f"LoRA {args.lora_scope} r {args.r} alpha {args.alpha:g} dropout {args.dropout:g}, lr {args.lr:g}, "
                f"warm-up {args.warmup}, {args.cuts} espeak-ng cuts, seed {args.seed}, {args.repeats} run(s) per side")
    header = ["", "samples/s (median)", "all runs", "timed steps", f"peak memory ({ilt['peak_memory']['kind']})",
              "final loss (same definition)", "last step loss (own)", "first step loss (own)", "wall s"]
    rows = []
    for name, r in (("ilt (train_round)", ilt), ("reference (Seq2SeqTrainer + PEFT)", ref)):
        rows.append([name, fmt(r["samples_per_s"], ".2f"), " ".join(fmt(v, ".2f") for v in r["runs_samples_per_s"]),
                     r["timed_steps"], fmt_bytes(r["peak_memory"]["bytes"]),
                     fmt(r["same_loss"], ".4f"), fmt(r["final_loss"], ".4f"), fmt(r["first_loss"], ".4f"),
                     fmt(r["wall_s"], ".1f")])
    rows.append(["ilt / reference", fmt(ratio(ilt["samples_per_s"], ref["samples_per_s"]), ".2f"), "", "",
                 fmt(ratio(ilt["peak_memory"]["bytes"], ref["peak_memory"]["bytes"]), ".2f"),
                 fmt(ratio(ilt["same_loss"], ref["same_loss"]), ".3f"), "", "",
                 fmt(ratio(ilt["wall_s"], ref["wall_s"]), ".2f")])
    table = markdown_table(header, rows)
    info = ilt["info"]
    print(f"\n{info['device']}\n{settings}\n\n{table}\n")
    notes = [("Final loss (same definition): each side's trained LoRA scored after training, in eval mode, on all "
              f"{args.cuts} training cuts with ilt's loss (text tokens and end-of-text, prompt masked, "
              "token-weighted). The reference's labels are the tokenizer's, of the text with Whisper's leading "
              f"space{' (off: --bare-text)' if args.bare_text else ''}, with the prompt tokens "
              f"{'scored (--score-prompt)' if args.score_prompt else 'masked as ilt masks them'}. Both sides "
              "train on the same batches in the same order"
              f"{' (not: --shuffle-reference)' if args.shuffle_reference else ''}."),
             "Wall s includes model loading and, for ilt, its checkpoint and adapter writes."]
    if args.record:
        record("train_throughput", info, settings, table, notes=notes)


if __name__ == "__main__":
    main()
