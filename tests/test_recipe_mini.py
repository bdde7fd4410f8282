"""The mini recipe through run.sh in stage slices, tiny and on CPU, with the real tiny.en.

The recipe runs in a scratch copy of the egs/ layout (symlinks to the real
scripts: egs/mini/run.sh and egs/TEMPLATE/ilt.sh, which it calls; the CI configs
of tests/data/mini_ci_conf) so a developer's own egs/mini/{corpus,data,exp} are
never touched.
"""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CI_CONF = Path(__file__).parent / "data" / "mini_ci_conf"
TINY = ["--synth-opts", "--convs-per-accent 1 1 1 --utts-per-conv 2 --languages en es --pool-convs-per-accent 1",
        "--m0", "whisper-tiny.en", "--test-sets", "test", "--pseudo-min-agreement", "0",
        "--round-overrides", "all:train.max_dev_cuts=3"]  # instead of the demo's scale

pytestmark = pytest.mark.skipif(not shutil.which("espeak-ng") or not shutil.which("sox"),
                                reason="needs espeak-ng and sox (make sysdeps)")


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe")
    (root / "egs" / "mini").mkdir(parents=True)
    (root / "egs" / "TEMPLATE").mkdir()
    (root / "tools").symlink_to(ROOT / "tools")
    (root / "egs" / "TEMPLATE" / "ilt.sh").symlink_to(ROOT / "egs" / "TEMPLATE" / "ilt.sh")
    for name in ("run.sh", "local"):
        (root / "egs" / "mini" / name).symlink_to(ROOT / "egs" / "mini" / name)
    (root / "egs" / "mini" / "conf").symlink_to(CI_CONF)
    return root / "egs" / "mini"


def run(recipe, *args, check=True):
    env = {**os.environ, "PATH": f"{Path(os.sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(recipe / "run.sh"), *TINY, *args], check=False, env=env, capture_output=True,
                          text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"run.sh {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def prepared(recipe):
    """Stages -1..2: corpus, M0 (converted tiny.en), manifests, M0 decoded, extra data."""
    run(recipe, "--stage", "-1", "--stop-stage", "2")
    return recipe


def test_stage_slices_end_to_end(prepared):
    recipe = prepared
    manifests = recipe / "data" / "manifests"
    for split in ("train", "dev", "test"):
        assert (manifests / f"mlc_slm_cuts_{split}.jsonl.gz").is_file()
    # the pool is prepared without text; its true text only scores the pseudo-labels
    from ilt.data.manifests import load_cuts

    pool = load_cuts(recipe / "data" / "extra" / "mlc_slm_cuts_pool.jsonl.gz")
    truth = load_cuts(recipe / "data" / "extra" / "mlc_slm_cuts_pool_truth.jsonl.gz")
    assert sorted(pool.ids) == sorted(truth.ids) and len(pool) > 0
    assert not any(s.text for c in pool for s in c.supervisions)
    assert all(s.text for c in truth for s in c.supervisions)
    assert (recipe / "exp" / "decode" / "M0" / "test" / "scores.json").is_file()

    run(recipe, "--stage", "3", "--stop-stage", "5")
    exp = recipe / "exp"
    for model in ("M1", "M2", "M3"):
        assert (exp / model / "model.safetensors").is_file()
    lineage = json.loads((exp / "M3" / "lineage.json").read_text())
    chain = []
    while lineage:
        chain.append(lineage["round"])
        lineage = lineage.get("parent")
    assert chain == ["fix", "feedback", "focus"]
    # stage 5: M0, M1 and M2 voted the pool's labels; Fix trained on them
    summary = json.loads((exp / "pseudo" / "summary.json").read_text())
    assert summary["models"] == ["M0", "M1", "M2"] and summary["cuts"] == len(pool)
    assert (exp / "pseudo" / "score" / "scores.json").is_file()
    assert "pseudo/cuts.jsonl.gz" in (exp / "fix" / "round.yaml").read_text()
    for round_ in ("focus", "feedback", "fix"):
        assert (exp / round_ / "command.txt").read_text().startswith("ilt round")
        assert "max_dev_cuts: 3\n" in (exp / round_ / "round.yaml").read_text()  # --round-overrides

    again = run(recipe, "--stage", "3", "--stop-stage", "5")
    assert again.stderr.count("done already") == 4  # three rounds and the pseudo-labels
    assert "pseudo-labels done already" in again.stderr

    out = run(recipe, "--stage", "6", "--stop-stage", "6").stdout
    header = next(line for line in out.splitlines() if line.startswith("| group"))
    assert header.split("|")[3:7] == [" M0 ", " M1 ", " M2 ", " M3 "]
    assert "| **Overall** |" in out and "| en-American |" in out
    for suffix in ("md", "json", "png", "html"):
        assert (exp / "report" / f"report_test.{suffix}").stat().st_size > 0
    card = (exp / "M3" / "README.md").read_text()  # the model card, with the test error rates
    assert card.startswith("---\n") and "model-index" in card
    assert (exp / "decode" / "M3" / "test" / "text").is_file()  # the submission file

    # Stage 7, Track 2: the last model on oracle and diarized turns, scored by tcpWER
    run(recipe, "--stage", "7", "--stop-stage", "7", "--track2-models", "last", "--track2-turns", "oracle,diarized")
    assert (exp / "diarize" / "test" / "diarization.rttm").stat().st_size > 0
    for seg in ("oracle", "diarized"):
        scores = json.loads((exp / "track2" / seg / "M3" / "test" / "scores.json").read_text())
        assert "tcpwer" in json.dumps(scores).lower(), scores
    assert not (exp / "track2" / "oracle" / "M0").exists() and not (exp / "track2" / "oracle" / "M2").exists()

    # An ablation chain whose rounds are a prefix of the finished one trains and decodes nothing.
    out = run(recipe, "--stage", "3", "--stop-stage", "6", "--rounds", "focus,feedback",
              "--exp-dir", "exp_prefix", "--reuse-exp", "exp")
    assert out.stderr.count("reused") == 5  # M1, M2, and the decodes of M0, M1, M2
    assert (recipe / "exp_prefix" / "M2").is_symlink()
    assert (recipe / "exp_prefix" / "M2").resolve() == (exp / "M2").resolve()
    header = next(line for line in out.stdout.splitlines() if line.startswith("| group"))
    assert header.split("|")[3:6] == [" M0 ", " M1 ", " M2 "]


def test_missing_input_names_the_stage(recipe, tmp_path):
    proc = run(recipe, "--stage", "4", "--stop-stage", "4", "--exp-dir", str(tmp_path / "exp"),
               "--data-dir", str(tmp_path / "nodata"), check=False)
    assert proc.returncode != 0
    assert "run stage" in proc.stderr


def test_unknown_option_and_round_are_errors(recipe):
    proc = run(recipe, "--stag", "3", check=False)
    assert proc.returncode != 0 and "unknown option --stag" in proc.stderr
    proc = run(recipe, "--stage", "3", "--stop-stage", "3", "--rounds", "focus,polish", check=False)
    assert proc.returncode != 0 and "unknown round 'polish'" in proc.stderr


@pytest.mark.reliability  # test_kill.py kills the recipe between rounds too: `make reliability`
def test_killed_mid_stage_resumes(prepared):
    """Kill stage 3 after its first checkpoint; the re-run resumes from it and finishes."""
    recipe = prepared
    exp = recipe / "exp_kill"
    env = {**os.environ, "PATH": f"{Path(os.sys.executable).parent}:{os.environ['PATH']}"}
    cmd = ["bash", str(recipe / "run.sh"), *TINY, "--stage", "3", "--stop-stage", "3", "--exp-dir", str(exp)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    checkpoint = exp / "focus" / "checkpoints" / "step-1"
    deadline = time.time() + 600
    while not checkpoint.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoint.is_dir(), "no checkpoint before the recipe ended"
    assert not (exp / ".done" / "M1.focus").exists(), "stage finished before it could be killed"

    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
    events = [json.loads(line) for line in (exp / "focus" / "train_log.jsonl").read_text().splitlines()]
    resumes = [e for e in events if e.get("event") == "resume"]
    assert resumes and resumes[0]["step"] >= 1
    assert (exp / ".done" / "M1.focus").is_file()
    assert (exp / "M1" / "lineage.json").is_file()
