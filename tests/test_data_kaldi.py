"""prepare_kaldi: a Kaldi data directory through Lhotse's importer, checked and written atomically."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from ilt.data.kaldi import prepare_kaldi
from ilt.data.manifests import load_cuts, load_supervisions
from ilt.errors import IltInputError


def wav(path: Path, seconds: float, sr: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), sr, subtype="PCM_16")
    return path


def kaldi_dir(root: Path, sr: int = 16000, segments: bool = True) -> Path:
    d = root / "kaldi"
    d.mkdir(parents=True)
    a, b = wav(root / "audio/rec1.wav", 4.0, sr), wav(root / "audio/rec2.wav", 3.0, sr)
    (d / "wav.scp").write_text(f"rec1 {a}\nrec2 {b}\n")
    if segments:
        (d / "segments").write_text("utt1 rec1 0.0 1.5\nutt2 rec1 2.0 3.9\nutt3 rec2 0.5 2.5\n")
        (d / "text").write_text("utt1 hello world\nutt2 good  morning\nutt3 see you later\n")
        (d / "utt2spk").write_text("utt1 spk1\nutt2 spk2\nutt3 spk1\n")
    else:
        (d / "text").write_text("rec1 first recording\nrec2 second one\n")
        (d / "utt2spk").write_text("rec1 spkA\nrec2 spkB\n")
    return d


def test_import_with_segments(tmp_path):
    d, out = kaldi_dir(tmp_path), tmp_path / "out"
    result = prepare_kaldi(d, out, language="de", name="mykaldi", accent="Bavarian")
    cuts = result["mykaldi"]
    assert [c.id for c in cuts] == ["utt1", "utt2", "utt3"]
    sups = [c.supervisions[0] for c in cuts]
    assert [s.language for s in sups] == ["de"] * 3
    assert [s.text for s in sups] == ["hello world", "good morning", "see you later"]
    assert [s.speaker for s in sups] == ["spk1", "spk2", "spk1"]
    assert sups[0].custom == {"accent": "Bavarian"}
    assert cuts["utt2"].start == pytest.approx(2.0) and cuts["utt2"].duration == pytest.approx(1.9)
    assert cuts["utt3"].load_audio().shape == (1, 32000)
    assert cuts["utt1"].recording.sources[0].source == str(tmp_path / "audio/rec1.wav")
    for kind in ("recordings", "supervisions", "cuts"):
        assert (out / f"mykaldi_{kind}.jsonl.gz").is_file()
    assert len(load_supervisions(out / "mykaldi_supervisions.jsonl.gz")) == 3


def test_import_without_segments_and_default_name(tmp_path):
    d = kaldi_dir(tmp_path, sr=8000, segments=False)
    result = prepare_kaldi(d, tmp_path / "out")
    cuts = result["kaldi"]  # named after the directory
    assert sorted(c.id for c in cuts) == ["rec1", "rec2"]
    assert cuts["rec1"].sampling_rate == 8000 and cuts["rec1"].duration == pytest.approx(4.0)
    assert cuts["rec2"].supervisions[0].language == "en"


def test_missing_files_and_bad_language(tmp_path):
    d = kaldi_dir(tmp_path)
    with pytest.raises(IltInputError, match="unknown language code 'xx'"):
        prepare_kaldi(d, tmp_path / "out", language="xx")
    (d / "text").unlink()
    (d / "utt2spk").unlink()
    with pytest.raises(IltInputError, match=r"missing Kaldi file\(s\): text, utt2spk"):
        prepare_kaldi(d, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_entries_name_file_and_line(tmp_path):
    d = kaldi_dir(tmp_path)
    scp = (d / "wav.scp").read_text()
    (d / "wav.scp").write_text(scp + f"rec3 {tmp_path}/nope.wav\n")
    with pytest.raises(IltInputError, match=r"wav\.scp:3: cannot read audio .*nope\.wav"):
        prepare_kaldi(d, tmp_path / "out")
    (d / "wav.scp").write_text(scp)
    (d / "segments").write_text("utt1 rec1 0.0 1.5\nutt2 rec1 two 3.9\nutt3 rec2 0.5 2.5\n")
    with pytest.raises(IltInputError, match=r"segments:2: non-numeric time"):
        prepare_kaldi(d, tmp_path / "out")
    (d / "segments").write_text("utt1 rec1 0.0 1.5\nutt2 rec9 2.0 3.9\n")
    with pytest.raises(IltInputError, match=r"segments:2: recording 'rec9' is not in wav\.scp"):
        prepare_kaldi(d, tmp_path / "out")
    (d / "segments").write_text("utt1 rec1 0.0 1.5\nutt2 rec1 2.0 3.9\nutt3 rec2 0.5 2.5\nutt4 rec2 2.5 2.9\n")
    with pytest.raises(IltInputError, match=r"text: no entry for utterance\(s\) utt4"):
        prepare_kaldi(d, tmp_path / "out")


def test_skips_and_idempotency(tmp_path, caplog):
    d, out = kaldi_dir(tmp_path), tmp_path / "out"
    (d / "text").write_text("utt1 hello world\nutt2\nutt3 see you later\n")  # utt2: empty transcript
    (d / "segments").write_text("utt1 rec1 0.0 1.5\nutt2 rec1 2.0 3.9\nutt3 rec2 0.5 3.5\n")  # utt3 past the end
    caplog.set_level(logging.INFO, logger="ilt")
    cuts = prepare_kaldi(d, out, name="k")["k"]
    assert [c.id for c in cuts] == ["utt1"]
    msgs = [r.getMessage() for r in caplog.records]
    assert any("utt2" in m and "empty transcript" in m for m in msgs)
    assert any("utt3" in m and "segment past end of audio" in m for m in msgs)
    stamp = (out / "k_cuts.jsonl.gz").stat().st_mtime_ns
    assert [c.id for c in prepare_kaldi(d, out, name="k")["k"]] == ["utt1"]
    assert (out / "k_cuts.jsonl.gz").stat().st_mtime_ns == stamp
    assert any("exists, skipping" in r.getMessage() for r in caplog.records)
    (d / "text").write_text("utt1\nutt2\nutt3\n")
    with pytest.raises(IltInputError, match="no usable utterance"):
        prepare_kaldi(d, out, name="k", force=True)
    assert [c.id for c in load_cuts(out / "k_cuts.jsonl.gz")] == ["utt1"]  # old manifest intact


def test_cli_prepare_kaldi(tmp_path):
    from ilt.cli.main import cli

    d, out = kaldi_dir(tmp_path), tmp_path / "out"
    res = CliRunner().invoke(cli, ["prepare", "kaldi", str(d), str(out), "--language", "fr", "--name", "fr_test"])
    assert res.exit_code == 0, res.output
    assert "kaldi: fr_test: 3 cuts" in res.output
    assert load_cuts(out / "fr_test_cuts.jsonl.gz")[0].supervisions[0].language == "fr"
    res = CliRunner().invoke(cli, ["prepare", "kaldi", str(d), str(out), "--language", "zz"])
    assert res.exit_code == 1 and "unknown language code 'zz'" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("segments", [True, False])
def test_evaluation_set_without_transcripts(tmp_path, segments):
    from ilt.asr.score import has_references

    d = kaldi_dir(tmp_path, segments=segments)
    (d / "text").unlink()
    with pytest.raises(IltInputError, match=r"missing Kaldi file\(s\): text \(an evaluation set without "
                                            r"transcripts: pass --no-transcripts\)"):
        prepare_kaldi(d, tmp_path / "out", name="ev")
    cuts = prepare_kaldi(d, tmp_path / "out", name="ev", transcripts=False)["ev"]
    ids = ["utt1", "utt2", "utt3"] if segments else ["rec1", "rec2"]
    assert [c.id for c in cuts] == ids
    assert all(c.supervisions[0].text is None and c.supervisions[0].language == "en" for c in cuts)
    assert not has_references(tmp_path / "out" / "ev_cuts.jsonl.gz")


def test_cli_no_transcripts_flag(tmp_path):
    from ilt.cli.main import cli

    d = kaldi_dir(tmp_path)
    (d / "text").unlink()
    res = CliRunner().invoke(cli, ["prepare", "kaldi", str(d), str(tmp_path / "out"), "--name", "ev",
                                   "--no-transcripts"])
    assert res.exit_code == 0, res.output
    assert "kaldi: ev: 3 cuts" in res.output
