"""Decoding pools across processes (issue 24, deliverable 5): pseudo-labels under
`accelerate launch` with 2 CPU processes (gloo), and a decode journal keyed by
cut ID, so a run killed with 2 processes resumes with 1.

* A sharded pseudo-label pass (2 processes, each decoding half the pool for
  each voting model, the main process voting and writing) gives the same
  ``cuts.jsonl.gz``, ``votes.jsonl``, ``summary.json`` and per-model
  ``hyps.jsonl`` (texts and confidences) as one process. Batches of one cut
  keep each cut's computation the same whatever the shard.
* SIGKILL of the 2-process run while the second model decodes (both ranks
  have journaled batches), then a rerun with 1 process: the first model's
  pass is reused (its fingerprint matches), the second decodes only the cuts
  that neither rank's journal holds, and the outputs equal the uninterrupted
  one-process run's.
* In-process: the journal merges every rank's file whatever the process
  count (counters add up, a torn line is cut off, files of another key go),
  and ``decode_files`` resumes from another run's two rank files, decoding
  only what is missing.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from test_two_processes import launch_command

from ilt.testing.configs import fast_decode_yaml

ILT = Path(sys.executable).parent / "ilt"
POOL = 16
DECODE = fast_decode_yaml(max_new_tokens=8, batch_size=1)
OUTPUTS = ("cuts.jsonl.gz", "votes.jsonl", "summary.json", "hyps/A/hyps.jsonl", "hyps/B/hyps.jsonl")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two different tiny random Whispers (A, B), an unlabelled pool, and the one-process pseudo-labels."""
    from ilt.asr.pseudo import pseudo_label, voting_models
    from ilt.config import load_decode
    from ilt.data.manifests import save_manifest
    from ilt.testing.dummies import make_cuts, tiny_whisper_dir

    root = tmp_path_factory.mktemp("sharded")
    pool = save_manifest(make_cuts(root / "pool", [{"id": f"p{i:02d}", "text": None, "duration": 0.5 + 0.05 * i}
                                                   for i in range(POOL)]), root / "pool.jsonl.gz")
    models = [tiny_whisper_dir(root / "A", seed=0), tiny_whisper_dir(root / "B", seed=1)]
    (root / "decode.yaml").write_text(DECODE)
    one = root / "one"
    pseudo_label(voting_models(models), pool, one, voter="majority", decode_config=load_decode(root / "decode.yaml"))
    return {"root": root, "pool": pool, "models": models, "one": one}


def _args(setup, out: Path) -> list[object]:
    return ["pseudo-label", "--models", setup["models"][0], "--models", setup["models"][1], "--cuts", setup["pool"],
            "--voter", "majority", "--out", out, "--decode-config", setup["root"] / "decode.yaml"]


def _same_outputs(a: Path, b: Path) -> list[str]:
    """The output files that differ between the runs in ``a`` and ``b``."""
    return [name for name in OUTPUTS if (a / name).read_bytes() != (b / name).read_bytes()]


def _journaled(path: Path) -> set[str]:
    """Cut IDs in the whole lines of one journal file (a line cut short by the kill is not one)."""
    done = set()
    for line in path.read_text(encoding="utf-8").splitlines(keepends=True)[1:]:
        if line.endswith("\n"):
            entry = json.loads(line)
            done.update(r["id"] for r in entry["records"])
    return done


def kill_all_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 300) -> bool:
    """SIGKILL ``proc`` and every process under it once ``ready()`` holds,
    checked again while they are all stopped (SIGSTOP), so the kill lands
    inside the window. torchrun starts each worker in its own session, so the
    workers are found by parentage (psutil), not by process group. False
    when the run ended first."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if ready():
            try:
                tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
            except psutil.NoSuchProcess:
                return False
            for p in tree:
                p.send_signal(signal.SIGSTOP)
            hit = ready()
            for p in tree:
                p.send_signal(signal.SIGKILL if hit else signal.SIGCONT)
            if hit:
                return True
        time.sleep(0.001)
    raise TimeoutError(f"{proc.args}: the kill point never came")


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines()) if path.is_file() else 0


@pytest.mark.two_processes
def test_sharded_pseudo_label_equals_one_process(setup, tmp_path):
    cmd, env = launch_command(_args(setup, tmp_path / "two"))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert _same_outputs(setup["one"], tmp_path / "two") == []
    # each model's pass was split between the ranks: 8 cuts each, twice (A, then B)
    shards = sorted(int(n) for n in re.findall(r"decode: (\d+) cut\(s\), ", proc.stderr))
    assert shards == [POOL // 2] * 4, proc.stderr[-3000:]
    assert proc.stdout.count("pseudo-labelled") == 1  # said once, by the main process
    assert not list((tmp_path / "two").rglob(".decode.journal*"))
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["cuts"] == POOL and summary["models"] == ["A", "B"]


@pytest.mark.two_processes
def test_killed_with_two_processes_resumes_with_one(setup, tmp_path):
    out = tmp_path / "killed"
    cmd, env = launch_command(_args(setup, out))
    journals = [out / "hyps" / "B" / ".decode.journal.jsonl", out / "hyps" / "B" / ".decode.journal.1.jsonl"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # the key line and at least two finished batches in each rank's file, B's pass not done
    hit = kill_all_when(proc, lambda: all(_lines(j) >= 3 for j in journals))
    proc.communicate(timeout=60)
    assert hit, "the run ended before the kill point"
    assert (out / "hyps" / "A" / ".done").is_file() and not (out / "hyps" / "B" / ".done").exists()
    done = _journaled(journals[0]) | _journaled(journals[1])
    assert 4 <= len(done) < POOL and not (out / "summary.json").exists()

    rerun = subprocess.run([str(ILT), *map(str, _args(setup, out))], capture_output=True, text=True, timeout=300,
                           env=env)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "model 1/2 A: decoded already" in rerun.stderr
    resumed = re.search(r"decode: (\d+) of (\d+) cut\(s\) finished already; (\d+) left", rerun.stderr)
    assert resumed is not None, rerun.stderr[-3000:]
    assert [int(n) for n in resumed.groups()] == [len(done), POOL, POOL - len(done)]
    assert _same_outputs(setup["one"], out) == []
    assert not list(out.rglob(".decode.journal*"))


def test_journal_merges_every_rank_file(tmp_path):
    from ilt.core.journal import Journal
    from ilt.core.runtime import Skips

    key = {"model": "m", "cuts": "c"}

    def journal(rank: int, adopt: bool = True) -> Journal:
        name = ".j.jsonl" if rank == 0 else f".j.{rank}.jsonl"
        return Journal(tmp_path / name, key, shared=True, adopt=adopt).load()

    three = [journal(rank, adopt=rank == 0) for rank in range(3)]  # a run of 3 processes: all load, then write
    for j, ids in zip(three, (["a", "b"], ["c"], ["d"])):
        skips = Skips("t")
        j.restore(skips)
        for n, cut in enumerate(ids, 1):
            j.append([{"id": cut, "text": cut}], skips, {"chunks": n, "note": "x"})
        j.close()
    with (tmp_path / ".j.1.jsonl").open("a") as f:  # killed half-way through a line
        f.write('{"records": [{"id": "e"')
    Journal(tmp_path / ".j.5.jsonl", {"other": 1}).append([{"id": "z"}], Skips("t"), {})  # another key

    main, other = journal(0), journal(1, adopt=False)  # rerun with 2 processes
    assert main.done == other.done == {"a", "b", "c", "d"}
    assert sorted(r["id"] for r in main.records) == ["a", "b", "c", "d"] and other.records == []
    assert main.counters == {"chunks": 2 + 1 + 1, "note": "x"}  # increments added up over the files
    main.drop_stale(2)
    assert not (tmp_path / ".j.5.jsonl").exists()
    skips = Skips("t")
    other.restore(skips)
    other.append([{"id": "f"}], skips, {"chunks": 1})  # after the torn line is cut off
    other.close()
    assert journal(0).done == {"a", "b", "c", "d", "f"}
    main.remove()
    assert not list(tmp_path.glob(".j*"))


def test_decode_files_resumes_another_process_count(setup, tmp_path, monkeypatch):
    """Two rank files of a killed 2-process run; one process decodes only the rest."""
    from ilt.asr.decode import Decoder, decode_files, decode_journal
    from ilt.config import load_decode
    from ilt.core.runtime import Skips

    config = load_decode(setup["root"] / "decode.yaml")
    model, pool = setup["models"][0], setup["pool"]
    reference = decode_files(model, pool, tmp_path / "ref", config, progress=False)
    out = tmp_path / "out"
    journals = [decode_journal(model, None, pool, out, config, False, rank, adopt=rank == 0) for rank in (0, 1)]
    for journal, part in zip(journals, (reference[0:6:2], reference[1:6:2])):
        skips = Skips("t")
        journal.restore(skips)
        for n, record in enumerate(part, 1):
            journal.append([record], skips, {"chunks": n})  # the counters so far
        journal.close()
    decoded: list[str] = []
    original = Decoder.decode_batch

    def counting(self, batch):
        decoded.extend(cut.id for cut in batch)
        return original(self, batch)

    monkeypatch.setattr(Decoder, "decode_batch", counting)
    records = decode_files(model, pool, out, config, progress=False)
    assert sorted(decoded) == sorted(r["id"] for r in reference[6:])
    assert records == reference
    assert (out / "hyps.jsonl").read_bytes() == (tmp_path / "ref" / "hyps.jsonl").read_bytes()
    assert json.loads((out / "decode_stats.json").read_text())["chunks"] == POOL
    assert not list(out.glob(".decode.journal*"))


def test_each_pass_is_reused_while_its_fingerprint_holds(setup, tmp_path, monkeypatch):
    """A rerun reads each model's kept pass back; another decoding config (a new
    fingerprint) decodes every pass again."""
    import shutil

    import ilt.asr.decode
    from ilt.asr.pseudo import pseudo_label, voting_models
    from ilt.config import load_decode

    out = tmp_path / "out"
    shutil.copytree(setup["one"], out)
    real, calls = ilt.asr.decode.decode_files, []

    def counting(model_dir, *args, **kwargs):
        calls.append(Path(model_dir).name)
        return real(model_dir, *args, **kwargs)

    monkeypatch.setattr(ilt.asr.decode, "decode_files", counting)
    config = load_decode(setup["root"] / "decode.yaml")
    models = voting_models(setup["models"])
    pseudo_label(models, setup["pool"], out, voter="majority", decode_config=config)
    assert calls == [] and _same_outputs(setup["one"], out) == []
    config.max_new_tokens = 3
    pseudo_label(models, setup["pool"], out, voter="majority", decode_config=config)
    assert calls == ["A", "B"]
    assert json.loads((out / "hyps" / "A" / ".done").read_text())["decode_config"] != json.loads(
        (setup["one"] / "hyps" / "A" / ".done").read_text())["decode_config"]


def _sessions(root: Path) -> tuple[Path, Path]:
    """Two sessions of 4 s with two speakers each, and their turns as RTTM."""
    import numpy as np
    import soundfile as sf
    from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet

    from ilt.track2.formats import session_cuts

    recordings, sups, rttm = [], [], []
    for n, session in enumerate(("s1", "s2")):
        wav = root / f"{session}.wav"
        sf.write(wav, 0.01 * np.random.default_rng(n).standard_normal(4 * 16000).astype(np.float32), 16000)
        recordings.append(Recording.from_file(wav, recording_id=session))
        for k, (start, end, speaker) in enumerate([(0.2, 1.4, "A"), (1.6, 2.9, "B"), (3.0, 3.9, "A")]):
            sups.append(SupervisionSegment(id=f"{session}-{k}", recording_id=session, start=start,
                                           duration=end - start, speaker=speaker, text="hello there", language="en"))
            rttm.append(f"SPEAKER {session} 1 {start} {end - start:.1f} <NA> <NA> {speaker} <NA> <NA>\n")
    manifest = root / "sessions.jsonl.gz"
    session_cuts(RecordingSet.from_recordings(recordings), SupervisionSet.from_segments(sups)).to_file(manifest)
    (root / "turns.rttm").write_text("".join(rttm))
    return manifest, root / "turns.rttm"


@pytest.mark.two_processes
def test_hard_cases_and_transcribe_sessions_shard_like_one_process(setup, tmp_path):
    """`ilt augment hard-cases` and `ilt transcribe-sessions` under 2 processes
    write what one process writes (each decodes half; the main one writes)."""
    from ilt.data.manifests import save_manifest
    from ilt.knowledge.text_tasks import TokenStats
    from ilt.testing.dummies import make_cuts

    model, conf = setup["models"][0], setup["root"] / "decode.yaml"
    train = save_manifest(make_cuts(tmp_path / "audio", [{"id": f"t{i}", "text": "the cat", "duration": 0.6 + 0.1 * i}
                                                         for i in range(6)]), tmp_path / "train.jsonl.gz")
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps(TokenStats(20, 200, {"en": {" the": 201}}, {"en": 1}).to_json()))
    sessions, rttm = _sessions(tmp_path)
    commands = {
        "hard": (["augment", "hard-cases", "--model", model, "--cuts", train, "--stats", stats,
                  "--decode-config", conf], ["cuts.jsonl.gz", "candidates.jsonl.gz", "summary.json",
                                             "decode/hyps.jsonl"]),
        "sessions": (["transcribe-sessions", "--model", model, "--sessions", sessions, "--rttm", rttm,
                      "--decode-config", conf], ["hyp.seglst.json", "hyp.stm", "decode/hyps.jsonl", "scores.json"]),
    }
    for name, (args, outputs) in commands.items():
        one = subprocess.run([str(ILT), *map(str, args), "--out", str(tmp_path / f"{name}1")], capture_output=True,
                             text=True, timeout=300)
        assert one.returncode == 0, one.stderr[-3000:]
        cmd, env = launch_command([*args, "--out", tmp_path / f"{name}2"])
        two = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert two.returncode == 0 and "Traceback" not in two.stderr, two.stderr[-3000:]
        shards = sorted(int(n) for n in re.findall(r"decode: (\d+) cut\(s\), ", two.stderr))
        assert shards == [3, 3], (name, two.stderr[-3000:])  # 6 cuts or 6 speaker segments, half each
        differ = [f for f in outputs if (tmp_path / f"{name}1" / f).read_bytes() != (tmp_path / f"{name}2" / f).read_bytes()]
        if name == "sessions":  # scores.json names the files it scored, in each run's own --out: compare the scores
            differ = [f for f in differ if f != "scores.json"]
            rows = [json.loads((tmp_path / f"sessions{n}" / "scores.json").read_text())["rows"] for n in (1, 2)]
            assert rows[0] == rows[1] and rows[0]
        assert differ == [], name
        assert two.stdout.count("\n") == one.stdout.count("\n")  # said once, by the main process
