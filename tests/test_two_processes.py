"""Two processes on CPU (gloo), as `accelerate launch` starts them (issue 16, part 3).

`accelerate launch --num_processes 2 --cpu` starts ONE process (Accelerate's
simple launcher; it needs an MPI host file for more), so these tests launch
with `accelerate launch --multi_gpu --num_processes 2`, which is torchrun
underneath and, on a machine without CUDA, gives two CPU processes talking
over gloo (see :func:`ilt.core.runtime.process_state`).

* Training: two processes with micro-batch 1 and one process with micro-batch
  1 and ``grad_accum 2`` see the same micro-batches (with one bucket, Lhotse's
  ``DynamicCutSampler`` gives rank r the batches r, r+2, ... of the one seeded
  stream; its bucketing sampler draws each rank's batches differently, so
  with buckets two processes train on another order) and the same mean
  gradient (DDP averages over ranks; Accelerate divides each accumulated
  micro-batch's loss by 2), so their loss curves differ only by the order of
  fp32 sums: all-reduce against accumulation. The tolerance, 1e-4 relative per
  step, leaves room for that order and Adam's amplification of it over 6 steps
  (measured here: 0.0, the curves are bitwise equal) and is two orders below
  what a different micro-batch order changes (1.8e-2 measured with buckets).
* A rank whose whole micro-batch is skipped (unreadable audio) while the
  other's is not draws its next micro-batch; the run must not hang (it did:
  a zero loss without a forward pass left DDP's all-reduce unmatched).
* Decoding: two processes give the same hypotheses as one.

The skipped micro-batch and decoding run in `make test` (marker
``two_processes``); the loss-curve comparison, the slowest, in `make reliability`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from reliability_table import check

from ilt.testing.configs import fast_decode_yaml, round_yaml

ILT = Path(sys.executable).parent / "ilt"
ACCELERATE = Path(sys.executable).parent / "accelerate"
DECODE = fast_decode_yaml(max_new_tokens=6, batch_size=2)
BAD = {"bad1", "bad2"}
REL_TOL = 1e-4

pytestmark = pytest.mark.two_processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(args: list[object], processes: int = 2) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of ``accelerate launch --multi_gpu
    --num_processes N ilt ARGS`` on the CPU (for :func:`launch`, or a Popen to kill)."""
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "--no_python", str(ILT), *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return cmd, env


def launch(args: list[object], timeout: float = 240) -> subprocess.CompletedProcess:
    """``accelerate launch --multi_gpu --num_processes 2 ilt ARGS`` on the CPU."""
    cmd, env = launch_command(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from ilt.data.manifests import save_manifest
    from ilt.testing.dummies import make_cuts, tiny_whisper_dir

    root = tmp_path_factory.mktemp("two")
    texts = ["hello world", "good morning", "thank you", "see you soon", "bonjour", "good night"]
    specs = [{"id": f"ok{i}", "text": t, "duration": 0.6 + 0.1 * i} for i, t in enumerate(texts)]
    specs += [{"id": b, "text": "broken", "corrupt": True} for b in sorted(BAD)]
    cuts = make_cuts(root / "train", specs)
    train = save_manifest(cuts, root / "train.jsonl.gz")
    good = save_manifest(cuts.filter(lambda c: c.id not in BAD), root / "good.jsonl.gz")
    dev = save_manifest(make_cuts(root / "dev", [{"id": f"d{i}", "text": t, "language": lang, "duration": 0.8 + 0.2 * i}
                                                 for i, (t, lang) in enumerate([("hello there", "en"), ("bonjour", "fr"),
                                                                                ("thank you", "en"), ("merci", "fr"),
                                                                                ("see you", "en")])]),
                        root / "dev.jsonl.gz")
    for accum in (1, 2):
        (root / f"round{accum}.yaml").write_text(round_yaml(lr=0.01, micro_batch=1, grad_accum=accum, max_steps=6,
                                                            seed=3, num_buckets=1))
    (root / "decode.yaml").write_text(DECODE)
    return {"root": root, "model": tiny_whisper_dir(root / "M0"), "train": train, "good": good, "dev": dev}


def _losses(out: Path) -> list[float | None]:
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in log if r["event"] == "step"]


def _fully_skipped_steps(train: Path) -> list[tuple[int, int]]:
    """``(step, rank)`` where that rank's micro-batch holds bad cuts only and the other rank's does not."""
    from ilt.config import DataSource, RoundConfig, from_dict
    from ilt.core.runtime import Skips
    from ilt.data.mix import make_sampler, training_stream

    cfg = from_dict(RoundConfig, {"name": "x", "train": {"micro_batch": 1, "max_steps": 6, "seed": 3,
                                                         "num_buckets": 1}})
    found = []
    per_rank = []
    for rank in (0, 1):
        mix = training_stream([DataSource(str(train), 1.0)], cfg.train.seed, Skips("probe"))
        sampler = make_sampler(mix, cfg.train, 2, rank)
        per_rank.append([{c.id for c in batch} for _, batch in zip(range(6), sampler)])
    for step, (a, b) in enumerate(zip(*per_rank), 1):
        for rank, (mine, other) in enumerate(((a, b), (b, a))):
            if mine <= BAD and not other <= BAD:
                found.append((step, rank))
    return found


def _launch_train(setup, out: Path, train: Path, *extra: str) -> tuple[bool, str]:
    proc = launch(["train", "--config", setup["root"] / "round1.yaml", "--model", setup["model"],
                   "--train", train, "--out", out, *extra])
    ok = proc.returncode == 0 and "Traceback" not in proc.stderr
    return ok, f"exit {proc.returncode}" + ("" if ok else f": {proc.stderr.strip().splitlines()[-3:]}")


@pytest.mark.reliability  # the slowest of the three (two trainings): `make reliability`
def test_two_process_training_matches_one_process(setup, tmp_path):
    from ilt.config import load_round
    from ilt.training.loop import train_round

    two = tmp_path / "two"
    ok, observed = _launch_train(setup, two, setup["good"])
    if ok:
        one = tmp_path / "one"
        train_round(load_round(setup["root"] / "round2.yaml"), setup["model"], one,
                    train_cuts=[(setup["good"], 1.0)])
        a, b = _losses(two), _losses(one)
        first = json.loads((two / "train_log.jsonl").read_text().splitlines()[0])
        worst = max(abs(x - y) / abs(y) for x, y in zip(a, b))
        ok = first["processes"] == 2 and len(a) == len(b) == 6 and worst <= REL_TOL
        observed = (f"2 processes: losses {[round(x, 5) for x in a]}; 1 process (grad_accum 2): "
                    f"{[round(x, 5) for x in b]}; max relative difference {worst:.2e}")
    check("two processes", "training: loss curve, 2 processes vs 1 (same global batch)",
          f"6 step losses equal within {REL_TOL:g} relative", observed, ok)


def test_a_fully_skipped_micro_batch_on_one_rank_does_not_hang(setup, tmp_path):
    skipped = _fully_skipped_steps(setup["train"])
    assert skipped, "the data must give one rank a micro-batch of bad cuts only"
    (step, rank), out = skipped[0], tmp_path / "skips"
    ok, observed = _launch_train(setup, out, setup["train"], "-o", f"train.max_steps={step}")
    if ok:
        steps = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        ok = [r["step"] for r in steps if r["event"] == "step"] == list(range(1, step + 1)) and (out / "best").is_dir()
        observed = (f"rank {rank}'s micro-batch at step {step} was all unreadable audio, the other's was not: "
                    f"{f'{step} steps done, best/ written' if ok else 'steps missing'}")
    check("two processes", "training: one rank's micro-batch fully skipped",
          "no hang: that rank draws its next micro-batch; the run finishes", observed, ok)


def test_two_process_decoding_gives_the_same_hypotheses(setup, tmp_path):
    from ilt.asr.decode import decode_files
    from ilt.config import load_decode

    proc = launch(["decode", "--model", setup["model"], "--cuts", setup["dev"], "--out", tmp_path / "two",
                   "--conf", setup["root"] / "decode.yaml"])
    ok = proc.returncode == 0 and "Traceback" not in proc.stderr
    observed = f"exit {proc.returncode}" + ("" if ok else f": {proc.stderr.strip().splitlines()[-3:]}")
    if ok:
        one = decode_files(setup["model"], setup["dev"], tmp_path / "one", load_decode(setup["root"] / "decode.yaml"),
                           progress=False)
        two = [json.loads(line) for line in (tmp_path / "two" / "hyps.jsonl").read_text().splitlines()]
        same = [(r["id"], r["text"]) for r in one] == [(r["id"], r["text"]) for r in two]
        shards = sorted(int(n) for n in re.findall(r"decode: (\d+) cut\(s\), ", proc.stderr))
        decoded_once = shards == [2, 3] and proc.stdout.count("decoded 5 cut(s)") == 1 and len(two) == 5
        ok = same and decoded_once and not list((tmp_path / "two").glob(".decode.journal*"))
        observed = (f"{len(two)} hypotheses, identical to one process: {same}; cuts decoded per process "
                    f"{shards} (before the fix for torchrun on CPU: 5 and 5)")
    check("two processes", "decoding: 2 processes vs 1", "the same hypotheses, each cut decoded once",
          observed, ok)
