"""Issue 25's end-to-end case: manifests made by someone else, whose audio
source is a shell command and whose IDs and languages try to leave ``--out``,
go through prepare (Kaldi import), decode, experts train, transcribe-sessions
and pseudo-label. Nothing runs, nothing is written outside ``--out``, and
every command exits 1 with one ``Error:`` line and no traceback
(docs/security.md)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from reliability_table import check

#: Cut, session and speaker IDs and a language code that would name files outside --out.
ESCAPING_ID = "../../../escaped-id"
ESCAPING_LANGUAGE = "../../../escaped-lang"


def _cut(cut_id: str, source: dict, language: str, speaker: str = "spk1") -> dict:
    return {"id": cut_id, "start": 0.0, "duration": 1.0, "channel": 0, "type": "MonoCut",
            "supervisions": [{"id": cut_id, "recording_id": cut_id, "start": 0.0, "duration": 1.0, "channel": 0,
                              "text": "hello world", "language": language, "speaker": speaker}],
            "recording": {"id": cut_id, "sources": [source], "sampling_rate": 16000, "num_samples": 16000,
                          "duration": 1.0}}


def _manifest(path: Path, cuts: list[dict]) -> Path:
    path.write_bytes(gzip.compress("".join(json.dumps(c) + "\n" for c in cuts).encode()))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """``inputs/`` (a tiny model, a wav, manifests, a Kaldi directory, configs), ``out/`` and the
    marker a planted command would create."""
    from ilt.testing.dummies import tiny_whisper_dir

    root = tmp_path_factory.mktemp("world")
    inputs = root / "inputs"
    inputs.mkdir()
    wav = inputs / "a.wav"
    sf.write(wav, (0.1 * np.sin(np.arange(16000) / 5)).astype(np.float32), 16000)
    marker = root / "pwned"
    command = {"type": "command", "channels": [0], "source": f"touch {marker}; cat {wav}"}
    file_source = {"type": "file", "channels": [0], "source": str(wav)}
    evil = [_cut(ESCAPING_ID, command, ESCAPING_LANGUAGE, ESCAPING_ID), _cut("ok-1", command, "en")]
    data = inputs / "kaldi"
    data.mkdir()
    (data / "wav.scp").write_text(f"{ESCAPING_ID} touch {marker}; cat {wav} |\n")
    (data / "text").write_text(f"{ESCAPING_ID} hello world\n")
    (data / "utt2spk").write_text(f"{ESCAPING_ID} spk1\n")
    (inputs / "experts.yaml").write_text("name: experts\nlora: {r: 4}\ntrain: {max_steps: 1, micro_batch: 1, "
                                         "precision: fp32}\nexperts: {min_cuts: 1}\n")
    (inputs / "decode.yaml").write_text("beam_size: {default: 1}\nmax_new_tokens: 2\nfallback_temperatures: []\n")
    return {
        "root": root, "out": root / "out", "marker": marker, "model": tiny_whisper_dir(inputs / "M0", layers=1),
        "kaldi": data, "config": inputs / "experts.yaml", "decode": inputs / "decode.yaml",
        "command": _manifest(inputs / "command_cuts.jsonl.gz", evil),
        # the same IDs and language with plain file sources: the names alone must be refused
        "file": _manifest(inputs / "file_cuts.jsonl.gz",
                          [_cut(ESCAPING_ID, file_source, ESCAPING_LANGUAGE, ESCAPING_ID),
                           _cut("ok-1", file_source, ESCAPING_LANGUAGE)]),
    }


def _commands(w: dict, manifest: str) -> dict[str, list[str]]:
    cuts, out = str(w[manifest]), w["out"] / manifest
    return {
        "prepare kaldi": ["prepare", "kaldi", str(w["kaldi"]), "--out", str(out / "prepared"), "--language", "en"],
        "decode": ["decode", "--model", str(w["model"]), "--cuts", cuts, "--out", str(out / "decode"),
                   "--decode-config", str(w["decode"])],
        "experts train": ["experts", "train", "--config", str(w["config"]), "--model", str(w["model"]),
                          "--train", cuts, "--out", str(out / "experts")],
        "transcribe-sessions": ["transcribe-sessions", "--model", str(w["model"]), "--sessions", cuts, "--oracle",
                                "--out", str(out / "sessions"), "--decode-config", str(w["decode"])],
        "pseudo-label": ["pseudo-label", "--models", f"{w['model']},{w['model']}", "--cuts", cuts,
                         "--out", str(out / "pseudo"), "--decode-config", str(w["decode"])],
    }


def _outside(root: Path, out: Path) -> list[tuple[str, int, int]]:
    """Every path under ``root`` but not under ``out``, with its size and mtime."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == out or out in here.parents:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            st = (here / name).lstat()
            found.append((str((here / name).relative_to(root)), st.st_size, st.st_mtime_ns))
    return sorted(found)


def _run(args: list[str]):
    from ilt.cli.main import cli

    result = CliRunner().invoke(cli, args)
    escaped = result.exception is not None and not isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    return result.exit_code, lines, escaped


#: Every step on the command manifest; with file sources, the steps where an ID or a language names a file
#: (prepare kaldi reads no manifest; decode and pseudo-label keep IDs as data, and hyp.trn refuses unsafe
#: IDs: tests/test_security.py).
CASES = [("command", step) for step in ("prepare kaldi", "decode", "experts train", "transcribe-sessions",
                                        "pseudo-label")] + [("file", "experts train"), ("file", "transcribe-sessions")]


@pytest.mark.parametrize("manifest,step", CASES)
def test_untrusted_manifests_run_nothing_write_nothing_outside_out_and_fail_in_one_line(world, monkeypatch,
                                                                                      manifest, step):
    monkeypatch.delenv("ILT_ALLOW_AUDIO_COMMANDS", raising=False)
    before = _outside(world["root"], world["out"])
    code, lines, escaped = _run(_commands(world, manifest)[step])
    after = _outside(world["root"], world["out"])
    ran = world["marker"].exists()
    shown = " | ".join(lines).replace(str(world["root"]), "…")[:200]
    expected = "type 'command'" if manifest == "command" else "cannot be part of a file name"
    what = ("command source, escaping IDs and languages" if manifest == "command"
            else "file source, escaping IDs and languages")
    check("bad input", f"end to end: `ilt {step}` on a manifest with a {what}",
          "exit 1, one Error: line, no traceback; the command never runs; nothing written outside --out",
          f"[CliRunner] exit {code}: {shown}; command ran: {ran}; written outside --out: "
          f"{sorted(set(after) - set(before))[:3]}",
          code == 1 and len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0]
          and not escaped and not ran and after == before)
