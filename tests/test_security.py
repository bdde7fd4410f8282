"""Untrusted input stays data (docs/security.md): audio sources that would run
a command are refused, names from data cannot leave their folder, and a
directory swap killed half-way is repaired on the next start."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from reliability_table import check

from ilt.core.files import (
    atomic_dir,
    atomic_path,
    recover_replaced_dir,
    remove_stale_temporaries,
    replace_dir,
    safe_name,
    write_text_atomic,
)
from ilt.errors import IltInputError

# --------------------------------------------------------------------------- audio sources


def _wav(path: Path) -> Path:
    sf.write(path, (0.1 * np.sin(np.arange(8000) / 5)).astype(np.float32), 8000)
    return path


def _command_manifest(tmp_path: Path, marker: Path, wav: Path, kind: str = "command") -> Path:
    """A cut manifest whose recording source runs ``touch MARKER; cat WAV`` (or
    fetches a URL) when its audio is loaded."""
    source = f"touch {marker}; cat {wav}" if kind == "command" else "http://127.0.0.1:9/x.wav"
    cut = {"id": "evil-cut", "start": 0.0, "duration": 1.0, "channel": 0, "type": "MonoCut",
           "supervisions": [{"id": "evil-cut", "recording_id": "evil-rec", "start": 0.0, "duration": 1.0,
                             "channel": 0, "text": "hi", "language": "en"}],
           "recording": {"id": "evil-rec", "sources": [{"type": kind, "channels": [0], "source": source}],
                         "sampling_rate": 8000, "num_samples": 8000, "duration": 1.0}}
    path = tmp_path / f"{kind}_cuts.jsonl.gz"
    path.write_bytes(gzip.compress((json.dumps(cut) + "\n").encode()))
    return path


@pytest.mark.parametrize("kind", ["command", "url"])
def test_a_command_source_is_refused_when_the_manifest_loads(tmp_path, monkeypatch, kind):
    from ilt.data.manifests import load_cuts

    monkeypatch.delenv("ILT_ALLOW_AUDIO_COMMANDS", raising=False)
    marker = tmp_path / "pwned"
    path = _command_manifest(tmp_path, marker, _wav(tmp_path / "a.wav"), kind)
    with pytest.raises(IltInputError) as err:
        load_cuts(path)
    message = str(err.value)
    check("bad input", f"manifest with a '{kind}' audio source", "error: one line: the manifest, the cut ID, the "
          "source type, the opt-in; nothing run", f"[in-process load_cuts] {message.replace(str(tmp_path), '…')}; "
          f"command ran: {marker.exists()}",
          "\n" not in message and "'evil-cut'" in message and f"type {kind!r}" in message
          and message.startswith(str(path)) and "ILT_ALLOW_AUDIO_COMMANDS=1" in message and not marker.exists())


def test_a_command_source_is_refused_before_audio_loads_and_in_training_streams(tmp_path, monkeypatch):
    from lhotse import CutSet

    from ilt.config import DataSource
    from ilt.core.runtime import Skips
    from ilt.data.audio import load_checked, load_mono
    from ilt.data.mix import open_source

    monkeypatch.delenv("ILT_ALLOW_AUDIO_COMMANDS", raising=False)
    marker = tmp_path / "pwned"
    path = _command_manifest(tmp_path, marker, _wav(tmp_path / "a.wav"))
    cut = next(iter(CutSet.from_jsonl(path)))  # built without ilt's reader
    for load in (load_mono, load_checked):
        with pytest.raises(IltInputError, match="cut 'evil-cut': audio source of type 'command' is refused"):
            load(cut, 8000)
    with pytest.raises(IltInputError, match=r"command_cuts\.jsonl\.gz: cut 'evil-cut'"):
        open_source(DataSource(str(path), 1.0), Skips("train"))
    mixed = cut.pad(duration=2.0)  # a MixedCut: the track's recording is checked too
    with pytest.raises(IltInputError, match="type 'command'"):
        load_mono(mixed, 8000)
    assert not marker.exists()


def test_the_opt_in_loads_a_command_source(tmp_path, monkeypatch):
    from ilt.data.audio import load_mono
    from ilt.data.manifests import load_cuts

    monkeypatch.setenv("ILT_ALLOW_AUDIO_COMMANDS", "1")
    marker = tmp_path / "ran"
    cuts = load_cuts(_command_manifest(tmp_path, marker, _wav(tmp_path / "a.wav")))
    assert not marker.exists()  # loading the manifest runs nothing
    audio = load_mono(next(iter(cuts)), 8000)
    assert audio.shape == (8000,) and marker.exists()  # the user asked for it


def test_a_kaldi_pipe_is_refused_without_the_opt_in(tmp_path, monkeypatch):
    from ilt.data.kaldi import prepare_kaldi

    monkeypatch.delenv("ILT_ALLOW_AUDIO_COMMANDS", raising=False)
    data = tmp_path / "data"
    data.mkdir()
    marker = tmp_path / "pwned"
    wav = _wav(tmp_path / "a.wav")
    (data / "wav.scp").write_text(f"rec1 touch {marker}; cat {wav} |\n")
    (data / "text").write_text("rec1 hello\n")
    (data / "utt2spk").write_text("rec1 spk1\n")
    with pytest.raises(IltInputError) as err:
        prepare_kaldi(data, tmp_path / "out", sampling_rate=8000)
    message = str(err.value)
    check("bad input", "Kaldi wav.scp entry ending in '|' (a command)", "error: one line: wav.scp:LINE, the "
          "recording, the opt-in; nothing run, nothing written",
          f"[in-process prepare_kaldi] {message.replace(str(tmp_path), '…')}; command ran: {marker.exists()}",
          message.startswith(f"{data / 'wav.scp'}:1: recording 'rec1': audio source of type 'command'")
          and "\n" not in message and not marker.exists() and not (tmp_path / "out").exists())


# --------------------------------------------------------------------------- names from data

BAD_NAMES = ["../x", "..", ".", "/etc/passwd", "a/b", "a\x00b", "a\nb", "x" * 300, "", " a", "-rf", ".hidden",
             "a b", "é"]


@pytest.mark.parametrize("value", BAD_NAMES)
def test_safe_name_refuses_what_could_leave_the_folder(value):
    with pytest.raises(IltInputError) as err:
        safe_name(value, "session ID", "sessions.jsonl")
    message = str(err.value)
    assert "\n" not in message and message.startswith("sessions.jsonl: session ID ")
    assert "cannot be part of a file name" in message and len(message) < 300


@pytest.mark.parametrize("value", ["en", "en-US", "cut_1.2-a", "A" * 128, "0"])
def test_safe_name_keeps_ordinary_names(value):
    assert safe_name(value, "cut ID") == value


@pytest.mark.parametrize("value", ["../x", "/abs", "a\x00b", "a\nb", "x" * 300])
def test_names_from_data_are_checked_where_manifests_are_named(tmp_path, value):
    from ilt.data.kaldi import prepare_kaldi
    from ilt.data.manifests import manifest_paths

    with pytest.raises(IltInputError, match="manifest name") as err:
        manifest_paths(tmp_path, value)
    check("bad input", f"name from data {value[:12]!r}{'…' if len(value) > 12 else ''} as a file name",
          "error: one line: what the name is, the rule, rename it", f"[in-process] {err.value}",
          "\n" not in str(err.value) and "cannot be part of a file name" in str(err.value))
    with pytest.raises(IltInputError, match="split name"):
        manifest_paths(tmp_path, "corpus", value)
    with pytest.raises(IltInputError, match="^--name: manifest name"):
        prepare_kaldi(tmp_path, tmp_path / "out", name=value)
    assert not (tmp_path / "out").exists()


def _ref_manifest(tmp_path: Path, cut_id: str) -> Path:
    cut = {"id": cut_id, "start": 0.0, "duration": 1.0, "channel": 0, "type": "MonoCut",
           "supervisions": [{"id": cut_id, "recording_id": "r", "start": 0.0, "duration": 1.0, "channel": 0,
                             "text": "hello world", "language": "en"}],
           "recording": {"id": "r", "sources": [{"type": "file", "channels": [0], "source": "/nonexistent.wav"}],
                         "sampling_rate": 8000, "num_samples": 8000, "duration": 1.0}}
    path = tmp_path / "ref.jsonl"
    path.write_text(json.dumps(cut) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("cut_id", ["a\x00b", "a\nb", "a(b)", "a b", "a\tb"])
def test_trn_ids_that_would_break_a_line_are_refused(tmp_path, cut_id):
    from ilt.asr.score import score_files

    hyps = tmp_path / "hyps.jsonl"
    hyps.write_text(json.dumps({"id": cut_id, "text": "hello world"}) + "\n", encoding="utf-8")
    with pytest.raises(IltInputError) as err:
        score_files(_ref_manifest(tmp_path, cut_id), hyps, tmp_path / "out")
    check("bad input", f"cut ID {cut_id!r} written to hyp.trn", "error: one line: the cut ID, rename it; no .trn",
          f"[in-process score_files] {err.value}; hyp.trn written: {(tmp_path / 'out' / 'hyp.trn').exists()}",
          "cannot go in a .trn file" in str(err.value) and "\n" not in str(err.value)
          and not (tmp_path / "out" / "hyp.trn").exists())


def test_a_hypothesis_cannot_add_a_trn_line_or_id(tmp_path):
    from ilt.asr.score import load_hypotheses, score_files

    hyps = tmp_path / "hyps.jsonl"
    hyps.write_text(json.dumps({"id": "u1", "text": "hello (en-u2)\x0bworld"}) + "\n", encoding="utf-8")
    score_files(_ref_manifest(tmp_path, "u1"), hyps, tmp_path / "out")
    trn = (tmp_path / "out" / "hyp.trn").read_text(encoding="utf-8")
    assert trn.count("\n") == 1 and trn.count("(") == 1 and trn.rstrip().endswith("(en-u1)")
    assert list(load_hypotheses(tmp_path / "out" / "hyp.trn", ["u1"])) == ["u1"]


# --------------------------------------------------------------------------- crash consistency

_KILL_BETWEEN_RENAMES = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from ilt.core import files
    calls = []
    real = os.replace
    def replace(a, b):
        calls.append(1)
        if len(calls) == 2 and sys.argv[3] == "between-renames":
            os._exit(9)  # SIGKILL-like: no cleanup, no finally
        real(a, b)
    def rmtree(*args, **kwargs):
        os._exit(9)
    files.os.replace = replace
    if sys.argv[3] == "before-cleanup":
        files.shutil.rmtree = rmtree
    files.replace_dir(sys.argv[1], sys.argv[2])
""")


def _swap_killed(tmp_path: Path, when: str) -> tuple[Path, Path]:
    dst, src = tmp_path / "best", tmp_path / ".best.new.tmp"
    dst.mkdir()
    (dst / "weights").write_text("old")
    src.mkdir()
    (src / "weights").write_text("new")
    proc = subprocess.run([sys.executable, "-c", _KILL_BETWEEN_RENAMES, str(src), str(dst), when],
                          cwd=Path(__file__).parent.parent)
    assert proc.returncode == 9
    return dst, src


def test_a_swap_killed_between_its_renames_is_restored_on_the_next_start(tmp_path):
    dst, src = _swap_killed(tmp_path, "between-renames")  # the old copy aside, the new one not in
    assert not dst.exists() and list(tmp_path.glob(".best.*.old"))
    remove_stale_temporaries(dst)  # what every writer runs first
    restored = (dst / "weights").read_text() if dst.exists() else None
    left = sorted(p.name for p in tmp_path.iterdir())
    check("kill", "SIGKILL between the two renames of a directory swap (best/)", "the next start restores the "
          "previous best/ and removes the .old copy", f"restored: {restored!r}; left: {left}",
          restored == "old" and left == ["best"])


def test_a_swap_killed_after_its_renames_drops_the_old_copy(tmp_path):
    dst, _ = _swap_killed(tmp_path, "before-cleanup")  # the new one in, the old copy not yet removed
    olds = list(tmp_path.glob(".best.*.old"))
    assert (dst / "weights").read_text() == "new" and len(olds) == 1
    assert recover_replaced_dir(dst) == olds
    assert (dst / "weights").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["best"]


def test_replace_dir_and_atomic_dir_repair_first(tmp_path):
    dst, _ = _swap_killed(tmp_path, "between-renames")
    with atomic_dir(dst) as tmp:  # restores the old copy, then replaces it
        assert (dst / "weights").read_text() == "old"
        (tmp / "weights").write_text("newer")
    assert (dst / "weights").read_text() == "newer" and not list(tmp_path.glob(".best.*.old"))
    remove_stale_temporaries(dst)  # the killed writer's own temporary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_checkpoint_cleanup_repairs_an_interrupted_checkpoint_swap(tmp_path):
    from ilt.training.checkpoint import list_checkpoints, remove_partial_writes

    root = tmp_path / "checkpoints"
    root.mkdir()
    old = root / ".step-4.abc123.old" / "step-4"
    old.mkdir(parents=True)
    remove_partial_writes(tmp_path)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4] and sorted(os.listdir(root)) == ["step-4"]


def test_atomic_writes_use_a_private_directory_and_leave_nothing(tmp_path):
    target = tmp_path / "cuts.jsonl.gz"
    with atomic_path(target) as tmp:
        holder = tmp.parent
        assert holder.parent == tmp_path and holder.name.startswith(".cuts.jsonl.gz.") and holder.name.endswith(".tmp")
        assert tmp.name == target.name and not tmp.exists() and (holder.stat().st_mode & 0o077) == 0
        tmp.write_bytes(b"data")
    assert target.read_bytes() == b"data" and sorted(os.listdir(tmp_path)) == [target.name]
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"data" and sorted(os.listdir(tmp_path)) == [target.name]
    write_text_atomic(tmp_path / "x.txt", "é\n")
    assert (tmp_path / "x.txt").read_text(encoding="utf-8") == "é\n"


def test_replace_dir_swaps_and_removes_the_old_copy(tmp_path):
    dst, src = tmp_path / "best", tmp_path / "new"
    dst.mkdir()
    (dst / "w").write_text("old")
    src.mkdir()
    (src / "w").write_text("new")
    replace_dir(src, dst)
    assert (dst / "w").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["best"]


# --------------------------------------------------------------------------- checkpoints without pickle


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny random Whisper and a 4-cut training manifest."""
    from ilt.data.manifests import save_manifest
    from ilt.testing.dummies import make_cuts, tiny_whisper_dir

    tmp = tmp_path_factory.mktemp("ckpt")
    cuts = make_cuts(tmp / "train", [{"id": f"t{i}", "text": "hello world", "duration": 1.5} for i in range(4)])
    return tiny_whisper_dir(tmp / "M0"), save_manifest(cuts, tmp / "train.jsonl.gz")


def _config(**train):
    from ilt.config import RoundConfig, from_dict

    return from_dict(RoundConfig, {"name": "focus", "lora": {"r": 4},
                                   "train": {"lr": 1e-3, "micro_batch": 2, "precision": "fp32", **train}})


class _Planted:
    """A pickle whose unpickling creates a file (what a planted checkpoint file could do)."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoints_hold_no_pickle_and_a_planted_one_is_never_opened(tiny_run, tmp_path, monkeypatch):
    import pickle

    import torch

    from ilt.training.loop import train_round

    base_dir, train_cuts = tiny_run
    monkeypatch.delenv("ILT_ALLOW_PICKLE_CHECKPOINTS", raising=False)
    config = _config(max_steps=2, save_every=1, warmup_steps=1)
    kwargs = dict(train_cuts=[(train_cuts, 1.0)])
    out = tmp_path / "run"
    train_round(config, base_dir, out, **kwargs)
    step2 = out / "checkpoints" / "step-2"
    names = sorted(p.name for p in step2.iterdir())
    assert names == ["adapter", "rng_state_0.json", "rng_state_0.safetensors", "state.json", "state.safetensors"]
    state = json.loads((step2 / "state.json").read_text())
    assert state["format"] == 1 and state["train_state"]["step"] == 2 and state["scheduler"]["last_epoch"] == 2

    marker = tmp_path / "pwned"
    for name in ("custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "random_states_0.pkl", "optimizer.bin"):
        (step2 / name).write_bytes(pickle.dumps(_Planted(marker)))
        torch.save(_Planted(marker), step2 / f"torch_{name}")
    resumed = train_round(_config(max_steps=2, save_every=1, warmup_steps=1), base_dir, out, **kwargs)
    check("bad input", "pickle files planted in checkpoints/step-N (their unpickling creates a file)",
          "resume reads state.json and safetensors only: the pickles are never opened",
          f"[in-process train_round] resumed from {resumed.resumed_from.name}; file created: {marker.exists()}",
          resumed.resumed_from == step2 and resumed.steps == 2 and not marker.exists())

    # A checkpoint of an older version (Accelerate's pickles, no state.json) is refused, one line.
    (step2 / "state.json").unlink()
    with pytest.raises(IltInputError) as err:
        train_round(config, base_dir, out, **kwargs)
    message = str(err.value)
    check("bad input", "checkpoint of an older version (pickle files, no state.json)", "error: one line: the "
          "checkpoint, delete it or opt in; nothing unpickled",
          f"[in-process train_round] {message.replace(str(tmp_path), '…')}; file created: {marker.exists()}",
          message.startswith(f"{step2}: checkpoint of an older ilt version holds pickle files")
          and "ILT_ALLOW_PICKLE_CHECKPOINTS=1" in message and f"delete {out / 'checkpoints'}" in message
          and "\n" not in message and not marker.exists())



def test_a_local_looking_model_path_is_never_fetched(tmp_path, monkeypatch):
    import ilt.models.hub as hub

    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp").mkdir()
    calls = []
    monkeypatch.setattr(hub, "snapshot_download_dir", lambda *a, **k: calls.append(a))
    with pytest.raises(IltInputError) as err:
        hub.resolve_model("exp/M0")
    check("bad input", "model path exp/M0 that does not exist (exp/ does)", "error: one line: no such local "
          "directory, write hf:exp/M0 for the hub; no hub call", f"[in-process resolve_model] {err.value}; "
          f"hub calls: {len(calls)}", str(err.value) == "exp/M0: no such local directory exp/M0; to download from "
          "the Hugging Face Hub write hf:exp/M0" and not calls)


# --------------------------------------------------------------------------- resume: same base model and data


def test_resume_onto_another_base_model_or_changed_data_stops_naming_what_changed(tiny_run, tmp_path):
    import shutil

    from ilt.data.manifests import save_manifest
    from ilt.testing.dummies import make_cuts, tiny_whisper_dir
    from ilt.training.checkpoint import RUN_INPUTS
    from ilt.training.loop import train_round

    base_dir, train_cuts = tiny_run
    cuts = tmp_path / "train.jsonl.gz"
    shutil.copy(train_cuts, cuts)
    out = tmp_path / "run"
    config = _config(max_steps=2, save_every=1, warmup_steps=1)

    def killed(step, record):
        if step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # killed after its first checkpoint
        train_round(config, base_dir, out, train_cuts=[(cuts, 1.0)], on_step=killed)
    assert json.loads((out / RUN_INPUTS).read_text())["base_model"]["sha256"]

    other_base = tiny_whisper_dir(tmp_path / "M0", seed=7)  # same folder name, other weights
    with pytest.raises(IltInputError) as err:
        train_round(config, other_base, out, train_cuts=[(cuts, 1.0)])
    message = str(err.value)
    check("bad input", "resume onto another base model (same config, checkpoints in --out)", "error: one line "
          "naming the base model's old and new weight hash; nothing trained",
          f"[in-process train_round] {message.replace(str(tmp_path), '…')[:170]}",
          message.startswith(f"{out}: holds checkpoints trained on other inputs: base model M0 (sha256 ")
          and "\n" not in message and [p.name for p in (out / "checkpoints").iterdir()] == ["step-1"])

    save_manifest(make_cuts(tmp_path / "other", [{"id": f"t{i}", "text": "other words", "duration": 1.5}
                                                 for i in range(4)]), cuts)  # same path, other cuts
    with pytest.raises(IltInputError) as err:
        train_round(config, base_dir, out, train_cuts=[(cuts, 1.0)])
    message = str(err.value)
    check("bad input", "resume with a training manifest changed in place (same path)", "error: one line naming "
          "the manifest and its old and new sha256", f"[in-process train_round] "
          f"{message.replace(str(tmp_path), '…')[:170]}",
          f"train manifest {cuts} sha256" in message and "base model" not in message and "\n" not in message)
    shutil.copy(train_cuts, cuts)  # the same inputs again: resumes
    assert train_round(config, base_dir, out, train_cuts=[(cuts, 1.0)]).resumed_from == out / "checkpoints" / "step-1"
