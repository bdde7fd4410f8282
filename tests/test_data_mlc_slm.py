"""prepare_mlc_slm on tiny hand-made corpora: IDs, metadata, bad input, idempotency, atomicity."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from ilt.data.languages import WHISPER_LANGUAGES
from ilt.data.manifests import load_cuts, load_recordings, load_supervisions
from ilt.data.mlc_slm import LANGUAGES, prepare_mlc_slm, utterance_id
from ilt.errors import IltInputError

SR = 16000


def wav(path: Path, seconds: float, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.size)
    sf.write(path, x.astype(np.float32), SR, subtype="PCM_16")
    return path


def txt(path: Path, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def good_corpus(root: Path) -> Path:
    """train/ with an accented English and an accent-less Spanish conversation; dev/ with one English."""
    wav(root / "train/English/American/0517_001.wav", 6.0)
    txt(root / "train/English/American/0517_001.txt",
        "1.23\t4.57\tA\tHello there, how are you?",
        "4.80\t5.90\tB\tFine,  thanks.")
    wav(root / "train/Spanish/0001_002.wav", 3.0, seed=1)
    txt(root / "train/Spanish/0001_002.txt", "0.5\t2.5\tO1\tHola, ¿qué tal?")
    wav(root / "dev/English/British/0600_001.wav", 3.0, seed=2)
    txt(root / "dev/English/British/0600_001.txt", "0.10\t2.00\tA\tGood morning.")
    return root


def test_language_directory_table():
    assert len(LANGUAGES) == 11
    assert LANGUAGES["English"] == "en" and LANGUAGES["Japanese"] == "ja" and LANGUAGES["Vietnamese"] == "vi"
    assert len(set(LANGUAGES.values())) == 11
    # Every directory name is the English name Whisper gives the code.
    assert all(WHISPER_LANGUAGES[iso] == name for name, iso in LANGUAGES.items())


def test_utterance_id_follows_baseline():
    assert utterance_id("English-American-0517_001", "A", 1.23, 4.57) == "English-American-0517_001-A-000123-000457"
    # The baseline computes int(round(t, 2) * 100), float truncation included:
    # 4.56 * 100 == 455.99999999999994 -> 000455, 0.29 -> 000028.
    assert utterance_id("x", "A", 1.23, 4.56) == "x-A-000123-000455"
    assert utterance_id("x", "B", 0.29, 12345.6) == "x-B-000028-1234560"


def test_ids_language_accent_speaker(tmp_path):
    out = tmp_path / "data"
    result = prepare_mlc_slm(good_corpus(tmp_path / "corpus"), out)
    assert list(result) == ["dev", "train"]
    cuts = {c.id: c for c in result["train"]}
    assert set(cuts) == {
        "English-American-0517_001-A-000123-000457",
        "English-American-0517_001-B-000480-000590",
        "Spanish-0001_002-O1-000050-000250",
    }
    c = cuts["English-American-0517_001-A-000123-000457"]
    (sup,) = c.supervisions
    assert (sup.language, sup.text, sup.speaker) == ("en", "Hello there, how are you?", "English-American-0517_001-A")
    assert sup.custom == {"accent": "American", "conversation": "0517_001"}
    assert c.recording_id == "English-American-0517_001"
    assert c.start == pytest.approx(1.23) and c.duration == pytest.approx(4.57 - 1.23)
    assert c.load_audio().shape == (1, c.num_samples)
    assert cuts["English-American-0517_001-B-000480-000590"].supervisions[0].text == "Fine, thanks."
    es = cuts["Spanish-0001_002-O1-000050-000250"].supervisions[0]
    assert (es.language, es.custom["accent"], es.text) == ("es", "Spanish", "Hola, ¿qué tal?")
    # Files on disk, readable with our loaders.
    for kind in ("recordings", "supervisions", "cuts"):
        assert (out / f"mlc_slm_{kind}_train.jsonl.gz").is_file()
    assert len(load_recordings(out / "mlc_slm_recordings_train.jsonl.gz")) == 2
    assert len(load_supervisions(out / "mlc_slm_supervisions_dev.jsonl.gz")) == 1
    assert [c.id for c in load_cuts(out / "mlc_slm_cuts_dev.jsonl.gz")] == ["English-British-0600_001-A-000010-000200"]


def test_single_split_layout_and_split_selection(tmp_path):
    corpus = tmp_path / "corpus"
    wav(corpus / "English/Indian/c1.wav", 2.0)
    txt(corpus / "English/Indian/c1.txt", "0\t1\tA\tone two")
    result = prepare_mlc_slm(corpus, tmp_path / "out", default_split="pool")
    assert [c.id for c in result["pool"]] == ["English-Indian-c1-A-000000-000100"]
    assert (tmp_path / "out/mlc_slm_cuts_pool.jsonl.gz").is_file()
    with pytest.raises(IltInputError, match=r"no split 'dev'; found: pool"):
        prepare_mlc_slm(corpus, tmp_path / "out", splits=("dev",), default_split="pool")
    with pytest.raises(IltInputError, match="no MLC-SLM data found"):
        prepare_mlc_slm(tmp_path / "out", tmp_path / "out2")


def test_eval_split_without_text(tmp_path):
    corpus = good_corpus(tmp_path / "corpus")
    wav(corpus / "eval/English/American/0900_001.wav", 4.0)
    txt(corpus / "eval/English/American/0900_001.txt", "0.5\t1.5\tA", "2.0\t3.0\tB")
    result = prepare_mlc_slm(corpus, tmp_path / "out", splits=("eval", "dev"))
    assert list(result) == ["eval", "dev"]
    sups = [c.supervisions[0] for c in result["eval"]]
    assert [s.id for s in sups] == ["English-American-0900_001-A-000050-000150", "English-American-0900_001-B-000200-000300"]
    assert all(s.text is None and s.language == "en" for s in sups)
    assert len(load_cuts(tmp_path / "out/mlc_slm_cuts_eval.jsonl.gz")) == 2
    assert result["dev"][0].supervisions[0].text == "Good morning."


def test_bad_input_is_counted_and_named(tmp_path, caplog):
    corpus = good_corpus(tmp_path / "corpus")
    d = corpus / "train/English/American"
    bad = txt(d / "0517_002.txt",
              "0.5\t1.0\tA\tfine line",                # kept
              "0.5\t1.0",                              # 2 columns
              "zero\t1.0\tA\tnon numeric",             # non-numeric time
              "2.0\t1.0\tA\tbackwards",                # start >= end
              "1.5\t9.0\tB\tway past the end",         # past the end of the 3 s audio
              "2.0\t3.04\tB\twithin tolerance",        # kept, clipped to 3.0
              "1.2\t1.4\tA\t ",                        # empty transcript in a transcribed split
              "0.5\t1.0\tA\tsame id again")            # duplicate utterance id
    wav(d / "0517_002.wav", 3.0)
    txt(d / "0517_003.txt", "0\t1\tA\tno audio")       # missing wav
    wav(d / "0517_004.wav", 1.0)                       # missing txt
    (d / "0517_005.wav").write_bytes(b"RIFF not really a wav")  # corrupt
    txt(d / "0517_005.txt", "0\t1\tA\tcorrupt audio")
    wav(corpus / "train/Klingon/c1.wav", 1.0)           # unknown language
    txt(corpus / "train/Klingon/c1.txt", "0\t1\tA\tqapla")

    caplog.set_level(logging.WARNING, logger="ilt")
    result = prepare_mlc_slm(corpus, tmp_path / "out", splits=("train",))
    ids = {c.id for c in result["train"]}
    assert "English-American-0517_002-A-000050-000100" in ids
    clipped = result["train"]["English-American-0517_002-B-000200-000304"]
    assert clipped.duration == pytest.approx(1.0)
    assert len(ids) == 3 + 2

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    def named(reason: str, item: str) -> bool:
        return any(reason in w and item in w for w in warnings)
    assert named("malformed line", f"{bad}:2")
    assert named("malformed line", f"{bad}:3")
    assert named("start >= end", f"{bad}:4")
    assert named("segment past end of audio", f"{bad}:5")
    assert named("empty transcript", f"{bad}:7")
    assert named("duplicate utterance id", f"{bad}:8")
    assert named("missing wav", str(d / "0517_003.txt"))
    assert named("missing transcript file", str(d / "0517_004.wav"))
    assert named("unreadable audio", str(d / "0517_005.wav"))
    assert any("Format not recognised" in w for w in warnings if "0517_005.wav" in w)
    assert named("unknown language directory", str(corpus / "train/Klingon"))
    report = [w for w in warnings if "skipped 10 item(s)" in w]
    assert report and "2 malformed line" in report[0] and "1 unreadable audio" in report[0]


def test_idempotent_and_force(tmp_path, caplog):
    corpus, out = good_corpus(tmp_path / "corpus"), tmp_path / "out"
    prepare_mlc_slm(corpus, out)
    cuts_file = out / "mlc_slm_cuts_train.jsonl.gz"
    before = cuts_file.read_bytes()
    stamp = cuts_file.stat().st_mtime_ns
    caplog.set_level(logging.INFO, logger="ilt")
    again = prepare_mlc_slm(corpus, out)
    assert cuts_file.stat().st_mtime_ns == stamp
    assert any("skipping split 'train'" in r.getMessage() for r in caplog.records)
    assert len(again["train"]) == 3
    prepare_mlc_slm(corpus, out, force=True)
    assert cuts_file.read_bytes() == before  # rebuilt, byte-identical (no timestamps in gzip)
    assert not list(out.glob(".*tmp*"))


def test_failure_leaves_old_manifests_intact(tmp_path):
    corpus, out = good_corpus(tmp_path / "corpus"), tmp_path / "out"
    prepare_mlc_slm(corpus, out)
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    # Break the dev split completely: its only segment now runs past the audio.
    txt(corpus / "dev/English/British/0600_001.txt", "0.10\t9.00\tA\tGood morning.")
    (corpus / "train/Spanish/0001_002.txt").write_text("0.5\t1.5\tO1\tchanged\n", encoding="utf-8")
    with pytest.raises(IltInputError, match=r"split 'dev' has no usable utterance"):
        prepare_mlc_slm(corpus, out, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old  # train untouched too


def test_load_cuts_errors_name_the_file(tmp_path):
    with pytest.raises(IltInputError, match=r"missing\.jsonl\.gz: cut manifest not found"):
        load_cuts(tmp_path / "missing.jsonl.gz")
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(IltInputError, match=r"broken\.jsonl\.gz: cannot read cut manifest"):
        load_cuts(broken)


def test_cli_prepare_mlc_slm(tmp_path):
    from ilt.cli.main import cli

    runner = CliRunner()
    res = runner.invoke(cli, ["prepare", "--help"])
    assert res.exit_code == 0 and "mlc-slm" in res.output and "kaldi" in res.output
    res = runner.invoke(cli, ["prepare", "mlc-slm", "--help"])
    assert res.exit_code == 0 and "--splits" in res.output and "--overwrite / --no-overwrite" in res.output

    corpus, out = good_corpus(tmp_path / "corpus"), tmp_path / "out"
    res = runner.invoke(cli, ["prepare", "mlc-slm", str(corpus), str(out), "--splits", "train"])
    assert res.exit_code == 0, res.output
    assert "mlc-slm: train: 3 cuts" in res.output
    assert (out / "mlc_slm_cuts_train.jsonl.gz").is_file() and not (out / "mlc_slm_cuts_dev.jsonl.gz").exists()

    empty = tmp_path / "empty"
    (empty / "English").mkdir(parents=True)
    res = runner.invoke(cli, ["prepare", "mlc-slm", str(empty), str(tmp_path / "out2")])
    assert res.exit_code == 1
    assert "has no usable utterance" in res.output and "Traceback" not in res.output
