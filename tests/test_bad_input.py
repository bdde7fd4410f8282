"""Bad input of every kind (issue 16): the table of what a user sees and what is kept.

Each row of :data:`CASES` builds one kind of bad input next to good input, runs
the ``ilt`` command a user would run, and checks that it ends in

* ``error``: exit status 1 and one ``Error:`` line naming the file (or key) and
  the fix, nothing else from the error path (no traceback); or
* ``skip``: success, the bad item counted under its reason, the good items done; or
* ``kept``: success, the odd-but-valid input used (resampled, averaged, ...).

No case may lose good work. The fast slice (``make test``) runs the commands
in-process through click's runner; ``make reliability`` (``ILT_RELIABILITY=1``)
runs them again as real ``ilt`` processes (real stderr, real exit status) and
adds the cases that need a process of their own (a read-only or full disk in
a mount namespace, SIGTERM during a merge). tools/reliability.py writes the
table (case, expected, observed, pass) into docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from reliability_table import check

from ilt.testing.configs import fast_decode_yaml, round_yaml

ILT = Path(sys.executable).parent / "ilt"
SUBPROCESS = os.environ.get("ILT_RELIABILITY", "") not in ("", "0")

DECODE_YAML = fast_decode_yaml(batch_size=4)
ROUND_YAML = round_yaml(lr=0.001, micro_batch=2, max_steps=2)


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("Error:")]

    def one_line_error(self) -> str | None:
        """The error line when the run failed with exactly one and no traceback, else None."""
        if self.code == 0 or "Traceback" in self.stderr + self.stdout or len(self.error_lines) != 1:
            return None
        return self.error_lines[0]


def run_ilt(args: list[Any], *, subprocess_: bool = SUBPROCESS, env: dict[str, str] | None = None,
            prefix: list[str] | None = None, timeout: float = 300) -> Run:
    """``ilt ARGS`` in-process (click's runner) or as a real process."""
    args = [str(a) for a in args]
    if subprocess_ or prefix:
        proc = subprocess.run([*(prefix or []), str(ILT), *args], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})})
        return Run(proc.returncode, proc.stdout, proc.stderr)
    from click.testing import CliRunner

    from ilt.cli.main import cli

    result = CliRunner().invoke(cli, args)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        stderr += "".join(traceback.format_exception(result.exception))  # an escaped exception: a traceback
    return Run(result.exit_code, result.stdout, stderr)


# --------------------------------------------------------------------------- inputs


def write_wav(path: Path, audio: np.ndarray, rate: int = 16000, subtype: str | None = None) -> Path:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, rate, subtype=subtype)
    return path


def tone(seconds: float = 1.0, rate: int = 16000, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.1 * np.sin(2 * np.pi * (150 + 40 * seed) * t)).astype(np.float32)


def cut_of(wav: Path, cut_id: str, text: str | None = "hello world", language: str | None = "en",
           supervisions: list[tuple[float, float, str]] | None = None) -> Any:
    """A cut over the whole of ``wav`` with one supervision (or the given ``(start, duration, text)`` ones)."""
    from lhotse import Recording, SupervisionSegment

    recording = Recording.from_file(wav, recording_id=cut_id)
    cut = recording.to_cut()
    cut.id = cut_id
    spans = supervisions or [(0.0, recording.duration, text)]
    cut.supervisions = [SupervisionSegment(id=f"{cut_id}-{i}", recording_id=cut_id, start=s, duration=d, text=t,
                                           language=language) for i, (s, d, t) in enumerate(spans)]
    return cut


def manifest(path: Path, cuts: list[Any]) -> Path:
    from lhotse import CutSet

    from ilt.data.manifests import save_manifest

    return save_manifest(CutSet.from_cuts(cuts), path)


class Ctx:
    """The good inputs every case starts from: a tiny model, configs, good cuts."""

    def __init__(self, root: Path) -> None:
        from ilt.testing.dummies import tiny_whisper_dir

        self.root = root
        self.model = tiny_whisper_dir(root / "M0")
        self.decode_yaml = root / "decode.yaml"
        self.decode_yaml.write_text(DECODE_YAML)
        self.round_yaml = root / "focus.yaml"
        self.round_yaml.write_text(ROUND_YAML)
        self.good = [cut_of(write_wav(root / "audio" / f"good{i}.wav", tone(1.0, seed=i)), f"good{i}",
                            ["hello world", "good morning"][i]) for i in range(2)]

    def dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # ---- the two commands most cases run
    def decode(self, name: str, cuts: list[Any]) -> tuple[Run, Path]:
        out = self.root / name / "out"
        cuts_path = manifest(self.dir(name) / "cuts.jsonl.gz", cuts)
        return run_ilt(["decode", "--model", self.model, "--cuts", cuts_path, "--out", out,
                        "--conf", self.decode_yaml]), out

    def train(self, name: str, cuts: list[Any], config: Path | None = None) -> tuple[Run, Path]:
        out = self.root / name / "out"
        cuts_path = manifest(self.dir(name) / "train.jsonl.gz", cuts)
        return run_ilt(["train", "--config", config or self.round_yaml, "--model", self.model,
                        "--train", cuts_path, "--out", out]), out


# --------------------------------------------------------------------------- expectations


def decoded_ids(out: Path) -> list[str]:
    path = out / "hyps.jsonl"
    return [json.loads(line)["id"] for line in path.read_text().splitlines()] if path.is_file() else []


def expect_decode_skip(run: Run, out: Path, reason: str, bad: str) -> tuple[bool, str]:
    stats = json.loads((out / "decode_stats.json").read_text()) if (out / "decode_stats.json").is_file() else {}
    ids = decoded_ids(out)
    observed = f"exit {run.code}; skips {stats.get('skips')}; decoded {ids}"
    ok = (run.code == 0 and stats.get("skips") == {reason: 1} and bad not in ids
          and {"good0", "good1"} <= set(ids))
    return ok, observed


def expect_decoded(run: Run, out: Path, bad: str) -> tuple[bool, str]:
    stats = json.loads((out / "decode_stats.json").read_text()) if (out / "decode_stats.json").is_file() else {}
    ids = decoded_ids(out)
    observed = f"exit {run.code}; skips {stats.get('skips')}; decoded {ids}"
    return run.code == 0 and not stats.get("skips") and {bad, "good0", "good1"} <= set(ids), observed


def expect_train_skip(run: Run, out: Path, reason: str) -> tuple[bool, str]:
    summary = [line for line in run.stdout.splitlines() if line.startswith("skipped:")]
    kept = (out / "best" / "adapter_model.safetensors").is_file()
    observed = f"exit {run.code}; {summary[0] if summary else 'no skip line'}; best/ written: {kept}"
    return run.code == 0 and bool(summary) and f"1 {reason}" in summary[0] and kept, observed


def expect_trained(run: Run, out: Path) -> tuple[bool, str]:
    summary = [line for line in run.stdout.splitlines() if line.startswith("skipped:")]
    kept = (out / "best" / "adapter_model.safetensors").is_file()
    observed = f"exit {run.code}; {summary[0] if summary else 'no skip'}; best/ written: {kept}"
    return run.code == 0 and not summary and kept, observed


def expect_error(run: Run, names: list[str], fix: str) -> tuple[bool, str]:
    line = run.one_line_error()
    if line is None:
        tail = (run.stderr.strip().splitlines() or ["(nothing on stderr)"])[-1]
        return False, f"exit {run.code}; not one clean error line: {tail[:300]}"
    ok = all(str(n) in line for n in names) and re.search(fix, line) is not None
    return ok, line


# --------------------------------------------------------------------------- the cases


def _corrupt(ctx: Ctx):
    wav = write_wav(ctx.root / "audio" / "corrupt.wav", tone())
    cut = cut_of(wav, "bad")
    wav.write_bytes(wav.read_bytes()[:60])  # a truncated file: the header promises more
    run, out = ctx.decode("corrupt", [*ctx.good, cut])
    return expect_decode_skip(run, out, "unreadable audio", "bad")


def _empty(ctx: Ctx):
    run, out = ctx.decode("empty", [*ctx.good, cut_of(write_wav(ctx.root / "audio" / "empty.wav",
                                                               np.zeros(0, np.float32)), "bad")])
    return expect_decode_skip(run, out, "empty audio", "bad")


def _nan(ctx: Ctx):
    audio = tone()
    audio[100:200] = np.nan
    wav = write_wav(ctx.root / "audio" / "nan.wav", audio, subtype="FLOAT")
    run, out = ctx.decode("nan", [*ctx.good, cut_of(wav, "bad")])
    return expect_decode_skip(run, out, "non-finite audio", "bad")


def _silent_train(ctx: Ctx):
    wav = write_wav(ctx.root / "audio" / "silent.wav", np.zeros(16000, np.float32))
    run, out = ctx.train("silent", [*ctx.good, cut_of(wav, "bad")])
    return expect_train_skip(run, out, "silent audio (all zeros)")


def _silent_decode(ctx: Ctx):
    wav = write_wav(ctx.root / "audio" / "silent.wav", np.zeros(16000, np.float32))
    run, out = ctx.decode("silent-decode", [*ctx.good, cut_of(wav, "bad")])
    return expect_decoded(run, out, "bad")


def _stereo(ctx: Ctx):
    wav = write_wav(ctx.root / "audio" / "stereo.wav", np.stack([tone(), tone(seed=3)], axis=1))
    run, out = ctx.decode("stereo", [*ctx.good, cut_of(wav, "bad")])
    return expect_decoded(run, out, "bad")


def _rate(ctx: Ctx):
    wav = write_wav(ctx.root / "audio" / "8k.wav", tone(rate=8000), rate=8000)
    run, out = ctx.decode("rate", [*ctx.good, cut_of(wav, "bad")])
    return expect_decoded(run, out, "bad")


def _three_hours(ctx: Ctx):
    """Three hours of (near-silent) FLAC: training skips it by its duration,
    without loading 0.7 GB of samples."""
    import soundfile as sf

    path = ctx.root / "audio" / "3h.flac"
    rate, block = 1000, np.full(1000 * 60, 1e-3, np.float32)
    with sf.SoundFile(path, "w", rate, 1, subtype="PCM_16") as fh:
        for _ in range(180):  # minutes
            fh.write(block)
    run, out = ctx.train("3h", [*ctx.good, cut_of(path, "bad")])
    return expect_train_skip(run, out, "audio too long")


def _no_text(ctx: Ctx):
    wav = write_wav(ctx.root / "audio" / "notext.wav", tone())
    run, out = ctx.train("no-text", [*ctx.good, cut_of(wav, "bad", text=None)])
    return expect_train_skip(run, out, "empty transcript")


def _empty_text(ctx: Ctx):
    wav = write_wav(ctx.root / "audio" / "emptytext.wav", tone())
    run, out = ctx.train("empty-text", [*ctx.good, cut_of(wav, "bad", text="  ")])
    return expect_train_skip(run, out, "empty transcript")


def _unknown_script(ctx: Ctx):
    wav = write_wav(ctx.root / "audio" / "script.wav", tone())
    text = "\U000104a0\U000104a1 \uf8d0\uf8d1"  # Osmanya and Klingon (private use): bytes to byte-level BPE
    run, out = ctx.train("script", [*ctx.good, cut_of(wav, "odd", text=text)])
    return expect_trained(run, out)


def _unknown_language_decode(ctx: Ctx):
    wav = write_wav(ctx.root / "audio" / "xx.wav", tone())
    run, out = ctx.decode("lang-decode", [*ctx.good, cut_of(wav, "bad", language="xx")])
    return expect_decode_skip(run, out, "unsupported language", "bad")


def _unknown_language_train(ctx: Ctx):
    wav = write_wav(ctx.root / "audio" / "xx.wav", tone())
    run, out = ctx.train("lang-train", [*ctx.good, cut_of(wav, "bad", language="xx")])
    return expect_train_skip(run, out, "language 'xx' is not supported by this Whisper model")


def _duplicate_decode(ctx: Ctx):
    run, out = ctx.decode("dup-decode", [*ctx.good, ctx.good[1]])
    return expect_error(run, [ctx.root / "dup-decode" / "cuts.jsonl.gz", "'good1'"], "unique")


def _duplicate_train(ctx: Ctx):
    run, out = ctx.train("dup-train", [*ctx.good, ctx.good[0]])
    return expect_error(run, [ctx.root / "dup-train" / "train.jsonl.gz", "'good0'"], "unique")


def _negative_segment(ctx: Ctx):
    data = ctx.dir("kaldi-neg")
    wav = write_wav(ctx.root / "audio" / "long.wav", tone(3.0))
    (data / "wav.scp").write_text(f"rec1 {wav}\n")
    (data / "segments").write_text("u1 rec1 0.0 1.0\nu2 rec1 -0.5 2.0\n")
    (data / "text").write_text("u1 hello\nu2 world\n")
    (data / "utt2spk").write_text("u1 s1\nu2 s1\n")
    run = run_ilt(["prepare", "kaldi", data, ctx.root / "kaldi-neg-out", "--language", "en"])
    return expect_error(run, [f"{data / 'segments'}:2"], "start")


def _overlapping_segments(ctx: Ctx):
    wav = write_wav(ctx.root / "audio" / "overlap.wav", tone(1.5))
    cut = cut_of(wav, "bad", supervisions=[(0.0, 1.0, "hello there"), (0.5, 1.0, "general")])
    run, out = ctx.train("overlap", [*ctx.good, cut])
    return expect_train_skip(run, out, "several supervisions")


def _missing_manifest(ctx: Ctx):
    missing = ctx.root / "nowhere" / "cuts.jsonl.gz"
    run = run_ilt(["train", "--config", ctx.round_yaml, "--model", ctx.model, "--train", missing,
                   "--out", ctx.root / "missing" / "out"])
    return expect_error(run, [missing], "not found")


def _truncated_manifest(ctx: Ctx):
    good = manifest(ctx.dir("trunc") / "full.jsonl.gz", [*ctx.good] * 1)
    data = good.read_bytes()
    path = ctx.root / "trunc" / "cuts.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    run = run_ilt(["decode", "--model", ctx.model, "--cuts", path, "--out", ctx.root / "trunc" / "out",
                   "--conf", ctx.decode_yaml])
    return expect_error(run, [path], "write it again")


def _no_tokenizer(ctx: Ctx):
    model = ctx.root / "M-no-tokenizer"
    shutil.copytree(ctx.model, model, dirs_exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (model / name).unlink(missing_ok=True)
    cuts = manifest(ctx.dir("no-tok") / "cuts.jsonl.gz", ctx.good)
    run = run_ilt(["decode", "--model", model, "--cuts", cuts, "--out", ctx.root / "no-tok" / "out",
                   "--conf", ctx.decode_yaml])
    return expect_error(run, [model, "tokenizer.json"], "copy them")


def _bin_weights(ctx: Ctx):
    import torch
    from safetensors.torch import load_file

    model = ctx.root / "M-bin"
    shutil.copytree(ctx.model, model, dirs_exist_ok=True)
    if (model / "model.safetensors").is_file():
        torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
        (model / "model.safetensors").unlink()
    cuts = manifest(ctx.dir("bin") / "cuts.jsonl.gz", ctx.good)
    run = run_ilt(["decode", "--model", model, "--cuts", cuts, "--out", ctx.root / "bin" / "out",
                   "--conf", ctx.decode_yaml])
    return expect_error(run, [model, "pytorch_model.bin"], "save_pretrained")


def _yaml(ctx: Ctx, name: str, text: str, names: list[str], fix: str):
    config = ctx.root / f"{name}.yaml"
    config.write_text(text)
    cuts = manifest(ctx.dir(name) / "train.jsonl.gz", ctx.good)
    run = run_ilt(["train", "--config", config, "--model", ctx.model, "--train", cuts,
                   "--out", ctx.root / name / "out"])
    ok, observed = expect_error(run, [config, *names], fix)
    return ok and not (ctx.root / name / "out").exists(), observed


def _yaml_typo(ctx: Ctx):
    return _yaml(ctx, "typo", ROUND_YAML.replace("lr:", "lrr:"), ["train.lrr"], "lr")


def _yaml_type(ctx: Ctx):
    return _yaml(ctx, "type", ROUND_YAML.replace("max_steps: 2", "max_steps: two"), ["train.max_steps"], "int")


def _yaml_component(ctx: Ctx):
    return _yaml(ctx, "component", ROUND_YAML.replace("loss: ce", "loss: cee"), ["cee"], "ce")


def _yaml_syntax(ctx: Ctx):
    broken = ROUND_YAML.replace("train:\n", "train: [\n", 1)  # an unclosed flow sequence
    assert broken != ROUND_YAML
    return _yaml(ctx, "syntax", broken, [], "YAML|yaml")


def _not_an_adapter(ctx: Ctx):
    run = run_ilt(["merge", "--model", ctx.model, "--adapter", ctx.model, "--out", ctx.root / "M-merge"])
    return expect_error(run, [ctx.model], "best/")


@dataclass
class Case:
    name: str
    kind: str          # error | skip | kept
    expected: str      # what the user should see, and what is kept
    run: Callable[[Ctx], tuple[bool, str]]


CASES = [
    Case("corrupt (truncated) WAV", "skip", "decode: counted skip 'unreadable audio'; the good cuts decoded", _corrupt),
    Case("empty WAV (0 samples)", "skip", "decode: counted skip 'empty audio'; the good cuts decoded", _empty),
    Case("NaN samples", "skip", "decode: counted skip 'non-finite audio'; the good cuts decoded", _nan),
    Case("silent audio, training", "skip", "train: counted skip 'silent audio'; best/ written", _silent_train),
    Case("silent audio, decoding", "kept", "decode: decoded like any cut (no skip)", _silent_decode),
    Case("stereo audio", "kept", "decode: channels averaged, decoded", _stereo),
    Case("8 kHz audio (wrong rate)", "kept", "decode: resampled to 16 kHz, decoded", _rate),
    Case("3-hour audio, training", "skip", "train: counted skip 'audio too long', decided from the duration "
                                           "without loading the samples; best/ written", _three_hours),
    Case("missing transcript", "skip", "train: counted skip 'empty transcript'; best/ written", _no_text),
    Case("empty (blank) transcript", "skip", "train: counted skip 'empty transcript'; best/ written", _empty_text),
    Case("text in an unknown script", "kept", "train: byte-level BPE encodes any script; trained", _unknown_script),
    Case("unknown language code, decoding", "skip", "decode: counted skip 'unsupported language'", _unknown_language_decode),
    Case("unknown language code, training", "skip", "train: counted skip naming the language; best/ written",
         _unknown_language_train),
    Case("duplicate cut IDs, decoding", "error", "one line: the manifest, the repeated ID, make IDs unique",
         _duplicate_decode),
    Case("duplicate cut IDs, training", "error", "one line: the manifest, the repeated ID, make IDs unique",
         _duplicate_train),
    Case("negative segment time (Kaldi segments)", "error", "one line: segments:LINE, start >= 0 and end > start",
         _negative_segment),
    Case("overlapping supervisions in one cut", "skip", "train: counted skip 'several supervisions' (one label "
                                                        "per cut); best/ written", _overlapping_segments),
    Case("missing manifest", "error", "one line: the path, not found", _missing_manifest),
    Case("truncated .jsonl.gz", "error", "one line: the manifest, truncated, write it again", _truncated_manifest),
    Case("model dir without tokenizer files", "error", "one line: the model dir, the missing files, copy them",
         _no_tokenizer),
    Case("model dir with .bin weights only", "error", "one line: the model dir, the .bin file, the conversion "
                                                      "command", _bin_weights),
    Case("YAML typo (unknown key)", "error", "one line: the file, train.lrr, did you mean lr; nothing written",
         _yaml_typo),
    Case("YAML wrong type", "error", "one line: the file, train.max_steps, expected int; nothing written",
         _yaml_type),
    Case("unknown component name", "error", "one line: the file, 'cee', the known losses; nothing written",
         _yaml_component),
    Case("YAML syntax error", "error", "one line: the file, the YAML error; nothing written", _yaml_syntax),
    Case("merge of a directory that is not an adapter", "error", "one line: the path, give best/ or a "
                                                                 "checkpoint", _not_an_adapter),
]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return Ctx(tmp_path_factory.mktemp("bad_input"))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(ctx, case):
    ok, observed = case.run(ctx)
    mode = "process" if SUBPROCESS else "in-process"
    check("bad input", case.name, f"{case.kind}: {case.expected}", f"[{mode}] {observed}", ok)


def test_the_table_has_every_kind():
    assert len(CASES) >= 20 and len({c.name for c in CASES}) == len(CASES)
    assert {c.kind for c in CASES} == {"error", "skip", "kept"}


# --------------------------------------------------------------------------- a disk of its own


def _mount_namespace() -> bool:
    """Whether this user may mount in a private mount namespace (root, or unprivileged user namespaces)."""
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-m", "true"], capture_output=True).returncode == 0


needs_mounts = pytest.mark.skipif(not _mount_namespace(), reason="needs `unshare -m` (a private mount namespace)")


def _in_namespace(setup: str, after: str = "") -> list[str]:
    """A prefix running the command in a private mount namespace after ``setup``, then ``after``."""
    return ["unshare", "-m", "sh", "-c", f'{setup} || exit 99; "$@"; rc=$?; {after or ":"}; exit $rc', "sh"]


@pytest.mark.reliability
@needs_mounts
def test_read_only_output_directory(ctx):
    ro = ctx.dir("read-only")
    cuts = manifest(ctx.dir("ro-input") / "cuts.jsonl.gz", ctx.good)
    run = run_ilt(["decode", "--model", ctx.model, "--cuts", cuts, "--out", ro / "out", "--conf", ctx.decode_yaml],
                  prefix=_in_namespace(f"mount --bind {ro} {ro} && mount -o remount,bind,ro {ro}"))
    ok, observed = expect_error(run, [ro / "out"], "writable output directory")
    check("bad input", "read-only output directory", "error: one line: the path, read-only, choose a writable "
          "output directory", f"[process] {observed}", ok and run.code != 99)


@pytest.mark.reliability
@needs_mounts
def test_disk_full_during_a_checkpoint_write(ctx):
    """A 2.5 MB file system: round.yaml, the log and checkpoint step-1 (about
    1.8 MB with a rank-64 LoRA) fit, step-2 does not. The run must stop with
    one line naming the checkpoint, the cause and the fix, leave step-1
    complete and no partial step-2, and resume from step-1 elsewhere."""
    disk, saved = ctx.dir("full-disk"), ctx.root / "full-disk-after"
    config = ctx.root / "big-lora.yaml"
    config.write_text(ROUND_YAML.replace("r: 4", "r: 64").replace("max_steps: 2", "max_steps: 3, save_every: 1"))
    cuts = manifest(ctx.dir("full-input") / "train.jsonl.gz", ctx.good)
    args = ["train", "--config", config, "--model", ctx.model, "--train", cuts, "--out", disk / "out"]
    run = run_ilt(args, prefix=_in_namespace(f"mount -t tmpfs -o size=2500k tmpfs {disk}",
                                             f"cp -a {disk}/. {saved}/"))
    ok, observed = expect_error(run, [disk / "out" / "checkpoints" / "step-2", "no space left"], "free disk space")
    from ilt.training.checkpoint import list_checkpoints

    kept = [s for s, _ in list_checkpoints(saved / "out")]
    partial = sorted(p.name for p in (saved / "out" / "checkpoints").glob(".*"))
    resumed = run_ilt(["train", *args[1:-1], saved / "out"], subprocess_=True)
    ok = ok and kept == [1] and not partial and resumed.code == 0 and "resumed from" in resumed.stdout
    check("bad input", "disk full during a checkpoint write (ENOSPC on a 2.5 MB tmpfs)",
          "error: one line: the checkpoint, no space left, free space and rerun; step-1 kept whole, no partial "
          "step-2; the rerun resumes from step-1",
          f"[process] {observed}; checkpoints kept: {kept}; partial: {partial or 'none'}; rerun on a free disk: "
          f"exit {resumed.code}, {(resumed.stdout.splitlines() or ['?'])[0]}", ok)
