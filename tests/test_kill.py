"""Kill anywhere (issue 16, part 1): SIGKILL `ilt train`, `ilt decode`,
`ilt pseudo-label`, `ilt merge` and the recipe between rounds, then run the
same command again.

The kill points are found by watching the files a run writes, not by hooks in
the library: a step's log line, a checkpoint's temporary directory
(``checkpoints/.step-N.tmp``), an adapter's (``.best.*.tmp``), a step line
whose evaluation line has not come yet. When the watched state appears the
process is stopped (SIGSTOP), the state is checked again (so the process is
certainly inside that window), and it is killed (SIGKILL).

Training: one uninterrupted run is the reference; a second run is killed at
nine points chosen at random (seed ``ILT_KILL_SEED``, default 16) and resumed
after each; after every kill no visible checkpoint or adapter may be partial,
and the finished run's ``best/`` and ``final/`` must equal the reference's
(max abs diff <= 1e-6; on CPU they are bitwise equal). The tenth point is
between the rounds of egs/TEMPLATE/ilt.sh.

Slow (about a dozen processes): marked ``reliability``, run by `make reliability`.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from reliability_table import check

from ilt.testing.configs import fast_decode_yaml, round_yaml

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ILT = BIN / "ilt"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}:{os.environ['PATH']}"}
SEED = int(os.environ.get("ILT_KILL_SEED", "16"))
TOL = 1e-6
STEPS, SAVE_EVERY, EVAL_EVERY = 16, 2, 4
ROUND = round_yaml(lora={"lora_dropout": 0.1}, lr=0.003, micro_batch=2, max_steps=STEPS, save_every=SAVE_EVERY,
                   eval_every=EVAL_EVERY, num_buckets=1)
DECODE = fast_decode_yaml(max_new_tokens=8, batch_size=1)


# --------------------------------------------------------------------------- watching and killing


def start(args: list[object], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([str(a) for a in args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, **kwargs)


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], *, delay: float = 0.0,
              sig: int = signal.SIGKILL, timeout: float = 300) -> bool:
    """Send ``sig`` to the process group once ``ready()`` holds (after ``delay``
    seconds); with no delay, only while the process is stopped and ``ready()``
    still holds (inside the window). False when the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            if delay:
                time.sleep(delay)
                os.killpg(proc.pid, sig)
                return True
            os.killpg(proc.pid, signal.SIGSTOP)
            if ready():
                os.killpg(proc.pid, sig)
                if sig != signal.SIGKILL:
                    os.killpg(proc.pid, signal.SIGCONT)
                return True
            os.killpg(proc.pid, signal.SIGCONT)
        time.sleep(0.001)
    os.killpg(proc.pid, signal.SIGKILL)
    raise TimeoutError(f"{proc.args}: the kill point never came")


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def run(args: list[object], timeout: float = 600) -> tuple[int, str, str]:
    return finish(start(args), timeout)


# --------------------------------------------------------------------------- inputs


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from ilt.data.manifests import save_manifest
    from ilt.testing.dummies import make_cuts, tiny_whisper_dir

    root = tmp_path_factory.mktemp("kill")
    texts = ["hello world", "good morning", "thank you", "see you soon", "bonjour", "good night",
             "how are you", "fine thanks"]
    train = save_manifest(make_cuts(root / "train", [{"id": f"t{i}", "text": t, "duration": 0.5 + 0.15 * i}
                                                     for i, t in enumerate(texts)]), root / "train.jsonl.gz")
    dev = save_manifest(make_cuts(root / "dev", [{"id": f"d{i}", "text": t, "duration": 0.6 + 0.2 * i}
                                                 for i, t in enumerate(texts[:4])]), root / "dev.jsonl.gz")
    many = save_manifest(make_cuts(root / "many", [{"id": f"u{i:02d}", "text": texts[i % 8], "duration": 0.5 + 0.05 * i}
                                                   for i in range(12)]), root / "many.jsonl.gz")
    (root / "focus.yaml").write_text(ROUND)
    (root / "decode.yaml").write_text(DECODE)
    return {"root": root, "model": tiny_whisper_dir(root / "M0"), "model2": tiny_whisper_dir(root / "M0b", seed=1),
            "train": train, "dev": dev, "many": many}


def train_args(setup, out: Path) -> list[object]:
    return [ILT, "train", "--config", setup["root"] / "focus.yaml", "--model", setup["model"], "--train",
            setup["train"], "--dev", setup["dev"], "--decode-config", setup["root"] / "decode.yaml", "--out", out]


def _log(out: Path) -> list[dict]:
    path = out / "train_log.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    found = []
    for line in lines:
        try:
            found.append(json.loads(line))
        except ValueError:  # a line being written
            break
    return found


def _logged(out: Path, event: str, step: int) -> bool:
    return any(r.get("event") == event and r.get("step") == step for r in _log(out))


ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "round.yaml", "score.json", "manifests.json"}


def partial_outputs(out: Path) -> list[str]:
    """Visible checkpoints and adapters that are not complete (should be none)."""
    from safetensors.torch import load_file

    problems = []
    dirs = [p / "adapter" for p in sorted((out / "checkpoints").glob("step-*"))]
    dirs += [out / name for name in ("best", "final") if (out / name).exists()]
    for directory in dirs:
        missing = ADAPTER_FILES - {p.name for p in directory.iterdir()} if directory.is_dir() else ADAPTER_FILES
        if missing:
            problems.append(f"{directory}: missing {sorted(missing)}")
            continue
        try:
            load_file(directory / "adapter_model.safetensors")
            json.loads((directory / "score.json").read_text())
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the finding
            problems.append(f"{directory}: {type(exc).__name__}")
    for ckpt in sorted((out / "checkpoints").glob("step-*")):
        names = {p.name for p in ckpt.iterdir()}
        missing = {"state.json", "state.safetensors", "rng_state_0.json"} - names
        if missing:
            problems.append(f"{ckpt}: no optimizer/RNG state ({sorted(missing)} missing)")
        pickles = sorted(n for n in names if n.endswith((".pkl", ".bin")))
        if pickles:
            problems.append(f"{ckpt}: pickle files {pickles}")
    return problems


def max_abs_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = load_file(a), load_file(b)
    if x.keys() != y.keys():
        return float("inf")
    return max(float((x[k] - y[k]).abs().max()) for k in x)


# --------------------------------------------------------------------------- the kill points


def kill_points(rng: random.Random) -> list[tuple[str, int]]:
    """Nine ``(kind, step)`` in the order a run reaches them."""
    saves = list(range(SAVE_EVERY, STEPS, SAVE_EVERY))
    evals = list(range(EVAL_EVERY, STEPS, EVAL_EVERY))
    plain = [s for s in range(1, STEPS) if s % SAVE_EVERY and s % EVAL_EVERY]
    points = [("step", s) for s in rng.sample(plain, 3)]
    points += [("checkpoint write", s) for s in rng.sample(saves, 2)]
    points += [("dev evaluation", s) for s in rng.sample(evals, 2)]
    points += [("best/ write", rng.choice(evals)), ("final/ write", STEPS)]
    order = {"step": 0, "dev evaluation": 1, "best/ write": 2, "checkpoint write": 3, "final/ write": 4}
    return sorted(points, key=lambda p: (p[1], order[p[0]]))


def ready_for(kind: str, step: int, out: Path) -> tuple[Callable[[], bool], float]:
    ckpt_tmp = out / "checkpoints" / f".step-{step}.tmp"
    if kind == "step":  # a random moment of the next step's forward/backward
        return (lambda: _logged(out, "step", step)), random.Random(step).uniform(0.0, 0.1)
    if kind == "checkpoint write":
        return (lambda: ckpt_tmp.is_dir()), 0.0
    if kind == "dev evaluation":
        return (lambda: _logged(out, "step", step) and not _logged(out, "eval", step)), 0.0
    name = "best" if kind == "best/ write" else "final"
    return (lambda: _logged(out, "step", step) and any(p.is_dir() for p in out.glob(f".{name}.*.tmp"))), 0.0


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "focus"
    code, _, err = run(train_args(setup, out))
    assert code == 0, err[-2000:]
    return out


def test_train_killed_at_nine_random_points_resumes_to_the_same_adapter(setup, reference, tmp_path):
    from ilt.training.checkpoint import list_checkpoints

    rng = random.Random(SEED)
    out = tmp_path / "focus"
    for kind, step in kill_points(rng):
        ready, delay = ready_for(kind, step, out)
        proc = start(train_args(setup, out))
        hit = kill_when(proc, ready, delay=delay)
        proc.communicate(timeout=60)
        problems = partial_outputs(out)
        done = [s for s, _ in list_checkpoints(out)]
        observed = (f"killed {'in the window' if hit else 'NOT (the run ended first)'}; checkpoints after the kill: "
                    f"{done}; partial outputs: {problems or 'none'}")
        check("kill", f"SIGKILL `ilt train` during {kind} (step {step}, seed {SEED})",
              "killed there; no visible checkpoint or adapter half-written", observed, hit and not problems)
    code, stdout, err = run(train_args(setup, out))
    diffs = {name: max_abs_diff(reference / name / "adapter_model.safetensors", out / name / "adapter_model.safetensors")
             for name in ("best", "final")}
    leftovers = sorted(p.name for p in [*out.glob(".*.tmp"), *(out / "checkpoints").glob(".*.tmp")])
    ok = code == 0 and all(d <= TOL for d in diffs.values()) and not leftovers and not partial_outputs(out)
    check("kill", "`ilt train` resumed after the nine kills",
          f"best/ and final/ equal to an uninterrupted run (max abs diff <= {TOL:g})",
          f"exit {code}; max abs diff {diffs}; temporaries left: {leftovers or 'none'}", ok)


def test_recipe_killed_between_rounds_resumes(setup, tmp_path):
    """The tenth point: SIGKILL egs/TEMPLATE/ilt.sh when round 1 is done, before round 2 ends."""
    conf = tmp_path / "conf"
    conf.mkdir()
    for name in ("focus", "feedback"):
        (conf / f"{name}.yaml").write_text(ROUND.replace("name: focus", f"name: {name}")
                                           .replace(f"max_steps: {STEPS}", "max_steps: 4"))
    (conf / "decode.yaml").write_text(DECODE)

    def recipe(exp: Path) -> list[object]:
        return ["bash", ROOT / "egs" / "TEMPLATE" / "ilt.sh", "--stage", "3", "--stop-stage", "4",
                "--rounds", "focus,feedback", "--base-model", setup["model"], "--train-cuts", setup["train"],
                "--dev-cuts", setup["dev"], "--conf-dir", conf, "--exp-dir", exp]

    code, _, err = run(recipe(tmp_path / "full"))
    assert code == 0, err[-3000:]
    exp = tmp_path / "killed"
    proc = start(recipe(exp), cwd=tmp_path)
    hit = kill_when(proc, lambda: (exp / ".done" / "M1.focus").is_file(), delay=0.5)
    proc.communicate(timeout=60)
    m2_before = (exp / "M2").exists()
    code, _, err = run(recipe(exp))
    diff = max_abs_diff(tmp_path / "full" / "feedback" / "best" / "adapter_model.safetensors",
                        exp / "feedback" / "best" / "adapter_model.safetensors") if code == 0 else float("inf")
    skipped = "focus done already" in err
    ok = hit and not m2_before and code == 0 and skipped and diff <= TOL
    check("kill", "SIGKILL egs/TEMPLATE/ilt.sh between rounds (after focus, during feedback)",
          f"rerun skips focus, finishes feedback; its best/ equals an uninterrupted run (<= {TOL:g})",
          f"killed: {hit}; M2 visible after the kill: {m2_before}; rerun exit {code}, focus skipped: {skipped}; "
          f"max abs diff {diff}", ok)


def test_decode_killed_resumes_without_redoing_finished_batches(setup, tmp_path):
    def args(out):
        return [ILT, "decode", "--model", setup["model"], "--cuts", setup["many"], "--out", out,
                "--conf", setup["root"] / "decode.yaml"]

    assert run(args(tmp_path / "full"))[0] == 0
    out = tmp_path / "killed"
    journal = out / ".decode.journal.jsonl"
    proc = start(args(out))
    hit = kill_when(proc, lambda: journal.is_file() and len(journal.read_text().splitlines()) >= 6)
    proc.communicate(timeout=60)
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) if out.is_dir() else []
    code, _, err = run(args(out))
    resumed = re.search(r"resuming: (\d+) record\(s\)", err)
    same = all((tmp_path / "full" / f).read_bytes() == (out / f).read_bytes() for f in ("hyps.jsonl", "hyp.trn"))
    ok = hit and code == 0 and resumed is not None and int(resumed.group(1)) >= 5 and same and not journal.exists()
    check("kill", "SIGKILL `ilt decode` after 5 of 12 batches",
          "rerun decodes only the rest; hyps.jsonl and hyp.trn identical to an uninterrupted run",
          f"killed: {hit}; outputs visible after the kill: {visible or 'none'}; rerun: "
          f"{resumed.group(0) if resumed else 'no resume'}; identical: {same}", ok)


def test_pseudo_label_killed_resumes(setup, tmp_path):
    def args(out):
        return [ILT, "pseudo-label", "--models", setup["model"], "--models", setup["model2"], "--cuts",
                setup["many"], "--voter", "majority", "--out", out, "--conf", setup["root"] / "decode.yaml"]

    assert run(args(tmp_path / "full"))[0] == 0
    out = tmp_path / "killed"
    second = out / "hyps" / "M0b" / ".decode.journal.jsonl"
    proc = start(args(out))
    hit = kill_when(proc, lambda: second.is_file() and len(second.read_text().splitlines()) >= 4)
    proc.communicate(timeout=60)
    code, _, err = run(args(out))
    first_cached = "model 1/2 M0: decoded already" in err
    resumed = re.search(r"resuming: (\d+) record\(s\)", err)
    same = all((tmp_path / "full" / f).read_bytes() == (out / f).read_bytes()
               for f in ("cuts.jsonl.gz", "summary.json"))
    ok = hit and code == 0 and first_cached and resumed is not None and same
    check("kill", "SIGKILL `ilt pseudo-label` while the second model decodes",
          "rerun: model 1 not decoded again, model 2 resumes; cuts.jsonl.gz and summary.json identical",
          f"killed: {hit}; model 1 cached: {first_cached}; model 2: {resumed.group(0) if resumed else 'no resume'}; "
          f"identical: {same}", ok)


def _merge_args(setup, adapter: Path, out: Path) -> list[object]:
    return [ILT, "merge", "--model", setup["model"], "--adapter", adapter, "--out", out]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_merge_killed_never_shows_a_partial_model(setup, reference, tmp_path, sig):
    from safetensors.torch import load_file

    adapter = reference / "best"
    assert run(_merge_args(setup, adapter, tmp_path / "M1-full"))[0] == 0
    out = tmp_path / "M1"
    for attempt in range(5):  # the write window is short: try again if the merge finished first
        proc = start(_merge_args(setup, adapter, out))
        hit = kill_when(proc, lambda: any(p.is_dir() for p in tmp_path.glob(".M1.*.tmp")), sig=sig)
        code, _, err = finish(proc, 60)
        if hit:
            break
        shutil.rmtree(out, ignore_errors=True)
    visible = out.exists()
    left = sorted(p.name for p in tmp_path.glob(".M1.*"))
    error = [line for line in err.splitlines() if line.startswith("Error:")]
    code2, _, _ = run(_merge_args(setup, adapter, out))
    a, b = load_file(tmp_path / "M1-full" / "model.safetensors"), load_file(out / "model.safetensors")
    same = a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    clean = not list(tmp_path.glob(".M1.*"))
    if sig == signal.SIGTERM:
        ok = hit and not visible and not left and len(error) == 1 and "Traceback" not in err
        observed = f"{error[0] if error else 'no error line'}; {out.name} visible: {visible}; temporaries: {left or 'none'}"
        case, expected = ("SIGTERM during `ilt merge`", "one line (stopped by SIGTERM, rerun); no model dir, "
                                                          "no temporary left")
    else:
        ok = hit and not visible
        observed = f"{out.name} visible after the kill: {visible}; temporaries left by the kill: {left or 'none'}"
        case, expected = "SIGKILL during `ilt merge`", "no model dir visible; the rerun removes the temporary"
    ok = ok and code2 == 0 and same and clean
    check("kill" if sig == signal.SIGKILL else "bad input", case, expected,
          f"{observed}; rerun: exit {code2}, weights equal to an uninterrupted merge: {same}, clean: {clean}", ok)
