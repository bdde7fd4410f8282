"""Training under two processes on CPU (gloo): DDP and FSDP 2 (issue 24, items 3 and 7).

* The round's adapter: two processes with micro-batch 1 and one process with
  micro-batch 1 and ``grad_accum 2`` draw the same micro-batches (one bucket:
  see tests/test_two_processes.py) and average the same gradients, so their
  adapters differ only by the order of fp32 sums (all-reduce or
  reduce-scatter against accumulation) after Adam. Tolerance: 1e-5 absolute
  on each LoRA weight (the weights are about 0.1 and two Adam steps of lr
  0.01 move them by up to 0.02; a different micro-batch order moves them by
  more than 1e-3).
* FSDP 2: ``accelerate launch --use_fsdp --fsdp_version 2`` on CPU processes;
  Accelerate (1.16) runs them as MULTI_CPU, and ilt applies ``fully_shard``
  itself (ilt.training.sharding); the LoRA is gathered for saving and the
  parameters are whole during the sharded dev decoding.
* The dev evaluation during training is sharded over the two processes; its
  score equals one process's (the same WER; the dev loss within 1e-5).
* A sharded dev evaluation of one fixed adapter equals the single-process one
  exactly in the hypotheses and error rates (``tests/sharded_eval_main.py``
  run under both launches).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_two_processes import ACCELERATE, ILT, _free_port

from ilt.testing.configs import round_yaml

pytestmark = pytest.mark.two_processes

STEPS = 2
ATOL = 1e-5


def launch(args: list[object], *, fsdp: bool, python: bool = False, timeout: float = 300):
    """``accelerate launch`` of two CPU processes, DDP (``--multi_gpu``) or FSDP 2."""
    mode = (["--use_fsdp", "--fsdp_version", "2"] if fsdp else ["--multi_gpu"])
    program = [] if python else ["--no_python", str(ILT)]  # python: ARGS start with a script
    cmd = [str(ACCELERATE), "launch", *mode, "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           *program, *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from ilt.config import load_round
    from ilt.data.manifests import save_manifest
    from ilt.testing.dummies import make_cuts, tiny_whisper_dir
    from ilt.training.loop import train_round

    root = tmp_path_factory.mktemp("sharded")
    texts = ["hello world", "good morning", "thank you", "see you soon", "bonjour", "good night"]
    train = save_manifest(make_cuts(root / "train", [{"id": f"ok{i}", "text": t, "duration": 0.6 + 0.1 * i}
                                                     for i, t in enumerate(texts)]), root / "train.jsonl.gz")
    dev = save_manifest(make_cuts(root / "dev", [{"id": f"d{i}", "text": t, "language": lang, "duration": 0.8 + 0.2 * i}
                                                 for i, (t, lang) in enumerate([("hello there", "en"), ("bonjour", "fr"),
                                                                                ("thank you", "en"), ("merci", "fr"),
                                                                                ("see you", "en")])]),
                        root / "dev.jsonl.gz")
    dev_decode = {"beam_size": {"default": 1}, "max_new_tokens": 6, "batch_size": 2, "fallback_temperatures": [],
                  "compression_ratio_threshold": None}
    for accum in (1, 2):  # the dev decoding from the round YAML's select.decode
        config = yaml.safe_load(round_yaml(lr=0.01, micro_batch=1, grad_accum=accum, max_steps=STEPS,
                                           eval_every=STEPS, seed=3, num_buckets=1))
        config["select"] = {"decode": dev_decode}
        (root / f"round{accum}.yaml").write_text(yaml.safe_dump(config))
    model = tiny_whisper_dir(root / "M0")
    one = root / "one"
    train_round(load_round(root / "round2.yaml"), model, one, train_cuts=[(train, 1.0)], dev_cuts=dev)
    return {"root": root, "model": model, "train": train, "dev": dev, "one": one}


def _adapter(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(directory / "adapter_model.safetensors")


def _eval(out: Path) -> dict:
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()
            if json.loads(line)["event"] == "eval"][-1]


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_two_processes_train_the_adapter_one_process_trains(setup, tmp_path, fsdp):
    import torch

    out = tmp_path / "two"
    args = ["train", "--config", setup["root"] / "round1.yaml", "--model", setup["model"],
            "--train", setup["train"], "--dev", setup["dev"], "--out", out]
    proc = launch(args, fsdp=fsdp)
    if fsdp:
        assert "FSDP 2 (fully_shard) on CPU processes" in proc.stderr
    first = json.loads((out / "train_log.jsonl").read_text().splitlines()[0])
    assert first["processes"] == 2
    for name in ("final", "best"):
        two, one = _adapter(out / name), _adapter(setup["one"] / name)
        assert two.keys() == one.keys() and len(two) > 0
        worst = max((two[k] - one[k]).abs().max().item() for k in two)
        assert worst <= ATOL, (name, worst)
        assert any(v.abs().max().item() > 0 for k, v in two.items() if "lora_B" in k)  # trained, not zeros
    # the step's checkpoint holds the whole (gathered) LoRA and the optimiser state
    ckpt = _adapter(out / "checkpoints" / f"step-{STEPS}" / "adapter")
    assert all(torch.equal(ckpt[k], _adapter(out / "final")[k]) for k in ckpt)
    state = json.loads((out / "checkpoints" / f"step-{STEPS}" / "state.json").read_text())
    assert state["optimizer"]
    # the dev evaluation, sharded over the two processes, scores as one process does
    a, b = _eval(out), _eval(setup["one"])
    assert a["dev_wer"] == b["dev_wer"] and a["per_language"] == b["per_language"]
    assert a["dev_loss"] == pytest.approx(b["dev_loss"], abs=1e-5)
    assert json.loads((out / "best" / "score.json").read_text())["step"] == STEPS
    if fsdp:  # the same command again resumes from the checkpoint: the gathered LoRA and optimiser state load back
        before = _adapter(out / "final")
        launch(args, fsdp=True)
        events = [json.loads(line)["event"] for line in (out / "train_log.jsonl").read_text().splitlines()]
        after = _adapter(out / "final")
        assert events.count("resume") == 1 and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_sharded_dev_evaluation_equals_one_process(setup, tmp_path, fsdp):
    script = Path(__file__).with_name("sharded_eval_main.py")
    adapter = setup["one"] / "final"
    single = tmp_path / "single.json"
    subprocess.run([sys.executable, script, setup["model"], adapter, setup["dev"], single], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}, timeout=300)
    sharded = tmp_path / "sharded.json"
    launch([script, setup["model"], adapter, setup["dev"], sharded], fsdp=fsdp, python=True)
    one, two = json.loads(single.read_text()), json.loads(sharded.read_text())
    assert one["processes"] == 1 and two["processes"] == 2
    assert two["shards"] == [3, 2]  # each process decoded its share: cuts 0, 2, 4 and 1, 3
    assert two["score"]["rows"] == one["score"]["rows"] and two["score"]["overall"] == one["score"]["overall"]
    assert two["score"]["dev_loss"] == pytest.approx(one["score"]["dev_loss"], abs=1e-6)
    assert two["same_on_every_process"]
    assert (two["fsdp2_modules"] > 0) == fsdp  # FSDP 2: the parameters really were sharded
