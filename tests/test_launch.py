"""How the recipe starts its multi-process steps (issue 24, deliverable 1).

* The shipped Accelerate configs (conf/accelerate/) are read by Accelerate's own
  loader and hold what their names say. DeepSpeed is not installed (it needs
  CUDA): its YAML is parsed and checked for ZeRO stage 2, nothing is launched.
* No path of the recipe forces a distributed type on ``accelerate launch``.
* ``ilt.core.launch.launch_command`` passes the config file and the multi-node
  options through, and refuses a ``--ngpu`` that disagrees with the config.
* The template runs its rounds and decoding through that command: a fake
  ``accelerate`` on PATH records the arguments it was given.
* Two machines for real, on this host: two torchrun agents of one CPU process
  each run stages 3-4 in step.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ilt.core.launch import DEFAULT_CONFIG, launch_command
from ilt.errors import IltInputError

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf" / "accelerate"
TEMPLATE = ROOT / "egs" / "TEMPLATE" / "ilt.sh"
WHISPER_LAYERS = "WhisperEncoderLayer,WhisperDecoderLayer"


def load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    return load_config_from_file(str(CONF / name))


# name: (distributed type, processes, machines, use_cpu)
SHIPPED = {
    "ddp_8gpu.yaml": ("MULTI_GPU", 8, 1, False),
    "fsdp2_8gpu.yaml": ("FSDP", 8, 1, False),
    "fsdp2_qwen2audio_8gpu.yaml": ("FSDP", 8, 1, False),
    "deepspeed_zero2_8gpu.yaml": ("DEEPSPEED", 8, 1, False),
    "ddp_2nodes_8gpu.yaml": ("MULTI_GPU", 16, 2, False),
    "ddp_2cpu.yaml": ("MULTI_GPU", 2, 1, True),
    "fsdp2_2cpu.yaml": ("FSDP", 2, 1, True),
}


def test_every_shipped_config_is_listed():
    assert sorted(p.name for p in CONF.glob("*.yaml")) == sorted(SHIPPED)
    assert sorted(p.name for p in (ROOT / "conf").iterdir()) == ["accelerate"]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_config_reads_with_accelerates_loader(name):
    config = load(name)
    kind, processes, machines, use_cpu = SHIPPED[name]
    assert config.distributed_type.value == kind
    assert (config.num_processes, config.num_machines, config.use_cpu) == (processes, machines, use_cpu)
    assert config.machine_rank == 0 and config.gpu_ids == "all"
    # the round YAML's train.precision decides; the config adds no autocast of its own
    assert config.mixed_precision == "no"
    assert config.compute_environment.value == "LOCAL_MACHINE"


@pytest.mark.parametrize("name, layers", [("fsdp2_8gpu.yaml", WHISPER_LAYERS), ("fsdp2_2cpu.yaml", WHISPER_LAYERS),
                                          ("fsdp2_qwen2audio_8gpu.yaml", "Qwen2AudioEncoderLayer,Qwen2DecoderLayer")])
def test_fsdp2_configs_shard_fully_by_layer_and_save_a_full_state_dict(name, layers):
    fsdp = load(name).fsdp_config
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_reshard_after_forward"] is True  # FSDP 2's full shard
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == layers
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    assert fsdp["fsdp_offload_params"] is False


def test_fsdp2_layer_classes_exist_in_the_backbones():
    """Accelerate refuses a layer class the model does not have: the names must be the models' own."""
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer
    from transformers.models.qwen2_audio.modeling_qwen2_audio import (
        Qwen2AudioEncoderLayer,
    )
    from transformers.models.whisper.modeling_whisper import (
        WhisperDecoderLayer,
        WhisperEncoderLayer,
    )

    classes = {c.__name__ for c in (Qwen2DecoderLayer, Qwen2AudioEncoderLayer, WhisperDecoderLayer,
                                    WhisperEncoderLayer)}
    for name in ("fsdp2_8gpu.yaml", "fsdp2_2cpu.yaml", "fsdp2_qwen2audio_8gpu.yaml"):
        assert set(load(name).fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(",")) <= classes


def test_fsdp2_plugin_builds_from_the_config_on_cpu(monkeypatch):
    """What `accelerate launch` exports for the FSDP config, read back by Accelerate's FSDP plugin."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    fsdp = load("fsdp2_2cpu.yaml").fsdp_config
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", str(fsdp["fsdp_version"]))
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", str(fsdp["fsdp_reshard_after_forward"]).lower())
    monkeypatch.setenv("FSDP_AUTO_WRAP_POLICY", fsdp["fsdp_auto_wrap_policy"])
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", fsdp["fsdp_transformer_layer_cls_to_wrap"])
    monkeypatch.setenv("FSDP_STATE_DICT_TYPE", fsdp["fsdp_state_dict_type"])
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.transformer_cls_names_to_wrap == WHISPER_LAYERS.split(",")
    assert str(plugin.state_dict_type).endswith("FULL_STATE_DICT")


def test_deepspeed_config_is_zero2_and_leaves_accumulation_to_the_round():
    """Not exercised: DeepSpeed itself (not installed; it needs CUDA). Checked: what the launcher reads."""
    ds = load("deepspeed_zero2_8gpu.yaml").deepspeed_config
    assert ds["zero_stage"] == 2
    assert ds["offload_optimizer_device"] == ds["offload_param_device"] == "none"
    # an explicit value would reach the Accelerator as ACCELERATE_GRADIENT_ACCUMULATION_STEPS and
    # override train.grad_accum
    assert "gradient_accumulation_steps" not in ds and "deepspeed_config_file" not in ds


def test_two_node_config_needs_the_main_address_from_the_command_line():
    config = load("ddp_2nodes_8gpu.yaml")
    assert config.main_process_ip is None and config.main_process_port == 29500


# --------------------------------------------------------------------------- nothing forces a distributed type

FORCING = ("--multi_gpu", "--use_fsdp", "--use_deepspeed", "--distributed_type", "--use_megatron_lm", "--tpu")


def recipe_scripts():
    return sorted(ROOT.glob("egs/*/*.sh")) + sorted(ROOT.glob("egs/*/local/*.sh"))


def test_no_recipe_path_forces_a_distributed_type():
    scripts = recipe_scripts()
    assert TEMPLATE in scripts and len(scripts) >= 3
    found = [(p.relative_to(ROOT), flag) for p in scripts + [ROOT / "ilt" / "core" / "launch.py"]
             for flag in FORCING if re.search(rf"{flag}\b", p.read_text())]
    assert not found, f"a distributed type forced on the command line: {found}"


# --------------------------------------------------------------------------- launch_command


def test_one_process_without_options():
    assert launch_command().command == ["ilt"]
    assert launch_command(ngpu="1").command == ["ilt"]


def test_bare_ngpu_launches_the_shipped_ddp_config():
    launch = launch_command(ngpu=4)
    assert launch.command == ["accelerate", "launch", "--config_file", str(DEFAULT_CONFIG), "--num_processes", "4",
                              "-m", "ilt.cli.main"]
    assert DEFAULT_CONFIG == CONF / "ddp_8gpu.yaml"


def test_config_file_is_passed_through_and_decides():
    fsdp = str(CONF / "fsdp2_8gpu.yaml")
    assert launch_command(fsdp).command == ["accelerate", "launch", "--config_file", fsdp, "-m", "ilt.cli.main"]
    assert launch_command(fsdp, ngpu=8).command == launch_command(fsdp).command  # agrees: nothing to add
    with pytest.raises(IltInputError, match="--ngpu 2 .* disagrees with num_processes 8"):
        launch_command(fsdp, ngpu=2)


def test_use_cpu_config_runs_its_processes_on_the_cpu():
    cpu = str(CONF / "fsdp2_2cpu.yaml")
    assert launch_command(cpu, ngpu=2).command == ["env", "ACCELERATE_USE_CPU=true", "accelerate", "launch",
                                                   "--config_file", cpu, "-m", "ilt.cli.main"]


def test_multi_node_options_pass_through():
    nodes = str(CONF / "ddp_2nodes_8gpu.yaml")
    launch = launch_command(nodes, machine_rank=1, main_process_ip="10.0.0.1", main_process_port="29501")
    assert launch.machines == 2
    assert launch.command == ["accelerate", "launch", "--config_file", nodes, "--machine_rank", "1",
                              "--main_process_ip", "10.0.0.1", "--main_process_port", "29501", "-m", "ilt.cli.main"]
    assert launch_command(nodes, ngpu=8, main_process_ip="h0").command[4:6] == ["--main_process_ip", "h0"]
    bare = launch_command(ngpu=8, num_machines=2, machine_rank=0, main_process_ip="h0")
    assert bare.command[3:12] == [str(DEFAULT_CONFIG), "--num_processes", "16", "--num_machines", "2",
                                  "--machine_rank", "0", "--main_process_ip", "h0"]


@pytest.mark.parametrize("kwargs, message", [
    ({"accelerate_config": "nope.yaml"}, "--accelerate-config nope.yaml: no such file"),
    ({"ngpu": "two"}, "--ngpu two: not a whole number"),
    ({"ngpu": 0}, "--ngpu 0: at least 1"),
    ({"accelerate_config": CONF / "ddp_2nodes_8gpu.yaml"}, "2 machines need --main-process-ip"),
    ({"accelerate_config": CONF / "ddp_2nodes_8gpu.yaml", "machine_rank": 2, "main_process_ip": "h"},
     "--machine-rank 2: the machines are numbered 0..1"),
])
def test_launch_errors_name_the_option(kwargs, message):
    with pytest.raises(IltInputError, match=re.escape(message)):
        launch_command(**kwargs)


def test_a_config_accelerate_cannot_read_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("distributed_type: MULTI_GPU\nnum_processes: 2\nnum_gpus: 2\n")
    with pytest.raises(IltInputError, match=r"bad.yaml: Accelerate cannot read it: .*num_gpus"):
        launch_command(bad)
    nproc = tmp_path / "noproc.yaml"
    nproc.write_text("distributed_type: MULTI_GPU\n")
    with pytest.raises(IltInputError, match="has no num_processes: give --ngpu N"):
        launch_command(nproc)
    assert launch_command(nproc, ngpu=3).command[4:6] == ["--num_processes", "3"]


# --------------------------------------------------------------------------- the template launches through it

FAKE = """#!/usr/bin/env bash
printf '%s\\n' "ACCELERATE_USE_CPU=${ACCELERATE_USE_CPU:-}" "$@" > "$FAKE_LOG.$(ls "$FAKE_LOG".* 2>/dev/null | wc -l)"
[ -z "${FAKE_MARK:-}" ] || { sleep 1; touch "$FAKE_MARK"; }  # machine 0 finishing the step
"""


FAKE_ILT = """#!/usr/bin/env bash
printf '%s\\n' ilt "$@" > "$FAKE_LOG.$(ls "$FAKE_LOG".* 2>/dev/null | wc -l)"
"""


@pytest.fixture()
def fake(tmp_path):
    """A fake `accelerate` (and `ilt`, for the one-process steps) recording each call in calls.N."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("accelerate", FAKE), ("ilt", FAKE_ILT)):
        script = bin_dir / name
        script.write_text(text)
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "M0").mkdir()
    (tmp_path / "M0" / "config.json").write_text("{}")
    (tmp_path / "t.jsonl.gz").write_bytes(b"")
    env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "FAKE_LOG": str(tmp_path / "calls")}
    return tmp_path, env


def run_template(tmp_path, env, *args):
    return subprocess.run(["bash", str(TEMPLATE), "--stage", "1", "--stop-stage", "1", "--base-model", "M0",
                           "--test-sets", "t=t.jsonl.gz", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)


def calls(tmp_path):
    return [p.read_text().splitlines() for p in sorted(tmp_path.glob("calls.*"))]


def test_template_launches_evaluate_with_the_config_file(fake):
    tmp_path, env = fake
    cpu = str(CONF / "fsdp2_2cpu.yaml")
    proc = run_template(tmp_path, env, "--ngpu", "2", "--accelerate-config", cpu)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [argv] = calls(tmp_path)
    assert argv[:8] == ["ACCELERATE_USE_CPU=true", "launch", "--config_file", cpu, "-m", "ilt.cli.main", "evaluate",
                        "--model"]
    assert (tmp_path / "exp" / ".done" / "decode.M0.t").is_file()
    assert f"multi-process steps run as: env ACCELERATE_USE_CPU=true accelerate launch --config_file {cpu}" in proc.stderr


def test_template_refuses_a_disagreeing_ngpu_before_any_stage(fake):
    tmp_path, env = fake
    proc = run_template(tmp_path, env, "--ngpu", "4", "--accelerate-config", str(CONF / "ddp_2cpu.yaml"))
    assert proc.returncode != 0 and "--ngpu 4 (4 processes on 1 machine(s)) disagrees" in proc.stderr
    assert "Stage 1" not in proc.stderr and not calls(tmp_path)


def test_template_on_machine_1_joins_and_waits_for_machine_0(fake):
    tmp_path, env = fake
    env["FAKE_MARK"] = str(tmp_path / "exp" / ".done" / "decode.M0.t")
    (tmp_path / "exp" / ".done").mkdir(parents=True)
    proc = run_template(tmp_path, env, "--accelerate-config", str(CONF / "ddp_2nodes_8gpu.yaml"), "--machine-rank",
                        "1", "--main-process-ip", "127.0.0.1", "--stop-stage", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [argv] = calls(tmp_path)
    assert argv[1:9] == ["launch", "--config_file", str(CONF / "ddp_2nodes_8gpu.yaml"), "--machine_rank", "1",
                         "--main_process_ip", "127.0.0.1", "-m"]
    assert "waiting for machine 0 to finish it" in proc.stderr
    assert "Stage 2: machine 0 builds the knowledge sets" in proc.stderr


def test_template_decodes_pools_under_the_launcher(fake):
    """pseudo-label (stage 5), hard cases (stage 2) and transcribe-sessions (stage 7) get the
    processes too; stage 2's fingerprint stays the `ilt` command, whatever launches it."""
    tmp_path, env = fake
    cpu = str(CONF / "ddp_2cpu.yaml")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "fix.yaml").write_text("name: fix\n")
    common = ["--base-model", "M0", "--accelerate-config", cpu, "--conf-dir", "conf"]
    launcher = ["ACCELERATE_USE_CPU=true", "launch", "--config_file", cpu, "-m", "ilt.cli.main"]

    proc = run_template(tmp_path, env, *common, "--stage", "2", "--stop-stage", "2", "--knowledge-train-cuts",
                        "t.jsonl.gz", "--hard-cases-cuts", "t.jsonl.gz")
    assert proc.returncode == 0, proc.stderr[-3000:]
    token_stats, hard_cases = calls(tmp_path)
    assert token_stats[:3] == ["ilt", "augment", "token-stats"]  # one process
    assert hard_cases[:9] == launcher + ["augment", "hard-cases", "--model"]
    fingerprint = (tmp_path / "data" / "extra" / "knowledge" / ".done" / "hard_cases").read_text()
    assert fingerprint.startswith("ilt augment hard-cases") and "accelerate" not in fingerprint

    for p in tmp_path.glob("calls.*"):
        p.unlink()
    proc = run_template(tmp_path, env, *common, "--stage", "5", "--stop-stage", "5", "--rounds", "fix",
                        "--unlabeled-cuts", "t.jsonl.gz")
    assert proc.returncode == 0, proc.stderr[-3000:]
    pseudo, fix = calls(tmp_path)
    assert pseudo[:9] == launcher + ["pseudo-label", "--models", "M0"]
    assert fix[:8] == launcher + ["round", "--config"]
    assert (tmp_path / "exp" / ".done" / "pseudo.M0").is_file() and (tmp_path / "exp" / ".done" / "M1.fix").is_file()

    for p in tmp_path.glob("calls.*"):
        p.unlink()
    (tmp_path / "exp" / "M1").mkdir()
    (tmp_path / "exp" / "M1" / "config.json").write_text("{}")
    proc = run_template(tmp_path, env, *common, "--stage", "7", "--stop-stage", "7", "--rounds", "fix",
                        "--session-sets", "s=t.jsonl.gz", "--track2-turns", "oracle", "--track2-models", "last")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [transcribe] = calls(tmp_path)
    assert transcribe[:9] == launcher + ["transcribe-sessions", "--model", "exp/M1"]


def test_hard_cases_and_track2_stay_one_process_on_several_machines(fake):
    """A launch of a 2-machine config from machine 0 alone would wait for the other machine."""
    tmp_path, env = fake
    (tmp_path / "exp" / "M1").mkdir(parents=True)
    (tmp_path / "exp" / "M1" / "config.json").write_text("{}")
    proc = run_template(tmp_path, env, "--accelerate-config", str(CONF / "ddp_2nodes_8gpu.yaml"), "--machine-rank",
                        "0", "--main-process-ip", "127.0.0.1", "--stage", "7", "--stop-stage", "7", "--rounds", "fix",
                        "--session-sets", "s=t.jsonl.gz", "--track2-turns", "oracle", "--track2-models", "last")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [transcribe] = calls(tmp_path)
    assert transcribe[:2] == ["ilt", "transcribe-sessions"]


# --------------------------------------------------------------------------- two machines, for real (on one host)


def tiny_recipe_inputs(root: Path) -> None:
    """What the template's rounds need, tiny: M0 (a random Whisper), train/dev cuts, conf/ of
    2-step rounds and greedy 3-token decoding."""
    from ilt.data.manifests import save_manifest
    from ilt.testing import make_cuts, tiny_whisper_dir
    from ilt.testing.configs import fast_decode_yaml, round_yaml

    tiny_whisper_dir(root / "M0")
    texts = ["hello world", "good morning", "thank you", "see you soon"]
    save_manifest(make_cuts(root / "a_train", [{"id": f"t{i}", "text": t, "duration": 0.6 + 0.1 * i}
                                               for i, t in enumerate(texts)]), root / "train.jsonl.gz")
    save_manifest(make_cuts(root / "a_dev", [{"id": f"d{i}", "text": t, "duration": 0.7}
                                             for i, t in enumerate(["hello there", "thank you"])]),
                  root / "dev.jsonl.gz")
    conf = root / "conf"
    conf.mkdir()
    for name in ("focus", "feedback", "fix"):
        (conf / f"{name}.yaml").write_text(round_yaml(name=name, lr=0.01, micro_batch=1, max_steps=2, eval_every=2,
                                                      save_every=2, num_buckets=1))
    (conf / "decode.yaml").write_text(fast_decode_yaml(max_new_tokens=3, batch_size=2))


@pytest.mark.two_processes  # 45 s and 71 s measured on 2 busy cores: in `make test`
def test_two_machines_run_the_rounds_in_step(tmp_path):
    """Two torchrun agents on this host as machines 0 and 1 (one CPU process each, static
    rendezvous): both run the same template command with their --machine-rank; machine 1
    waits for machine 0's merge before its next round, and the rounds train on 2 processes."""
    tiny_recipe_inputs(tmp_path)
    nodes = tmp_path / "nodes.yaml"
    nodes.write_text((CONF / "ddp_2cpu.yaml").read_text().replace("num_machines: 1", "num_machines: 2"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    args = ["bash", str(TEMPLATE), "--stage", "3", "--stop-stage", "4", "--rounds", "focus,feedback", "--base-model",
            "M0", "--train-cuts", "train.jsonl.gz", "--dev-cuts", "dev.jsonl.gz", "--conf-dir", "conf",
            "--accelerate-config", str(nodes), "--main-process-ip", "127.0.0.1", "--main-process-port", str(port)]
    machines = [subprocess.Popen([*args, "--machine-rank", str(rank)], cwd=tmp_path, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for rank in (0, 1)]
    try:
        outs = [m.communicate(timeout=420) for m in machines]
    finally:
        for m in machines:
            if m.poll() is None:
                m.kill()
    for m, (_, err) in zip(machines, outs):
        assert m.returncode == 0, err[-3000:]
    err1 = outs[1][1]
    assert "--machine_rank 1 --main_process_ip 127.0.0.1" in err1
    assert "M1.focus: waiting for machine 0 to finish it" in err1
    assert err1.index("M1.focus: waiting") < err1.index("Stage 4: feedback: M1 -> M2")
    exp = tmp_path / "exp"
    for round_name, model in (("focus", "M1"), ("feedback", "M2")):
        start = json.loads((exp / round_name / "train_log.jsonl").read_text().splitlines()[0])
        assert start["processes"] == 2, start
        assert (exp / model / "lineage.json").is_file()
