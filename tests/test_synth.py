"""The espeak-ng corpus synthesiser of the mini recipe: layout, disjoint splits, determinism, prep."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from ilt.data.mlc_slm import prepare_mlc_slm, utterance_id

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "egs/mini/local/synth_corpus.py"

pytestmark = pytest.mark.skipif(
    not (shutil.which("espeak-ng") and shutil.which("sox")), reason="needs espeak-ng and sox"
)

TINY = ["--convs-per-accent", "1", "1", "1", "--utts-per-conv", "3", "--languages", "en", "es",
        "--accents", "American", "Scottish", "--pool", "--pool-convs-per-accent", "1"]


def synth(out: Path, *extra: str) -> str:
    res = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *TINY, *extra],
                         capture_output=True, text=True, check=True)
    return res.stdout


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "corpus"
    synth(out)
    return out


def read_txt(path: Path) -> list[tuple[float, float, str, str]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        start, end, spk, text = line.split("\t")
        rows.append((float(start), float(end), spk, text))
    return rows


def test_layout(corpus):
    wavs = sorted(p.relative_to(corpus).as_posix() for p in corpus.rglob("*.wav"))
    assert wavs == [
        "dev/English/American/dev_001.wav", "dev/English/Scottish/dev_001.wav", "dev/Spanish/dev_001.wav",
        # the pool: the chosen accents with other voices, two accents of its own, other sentences
        "pool/English/American/pool_001.wav", "pool/English/Lancastrian/pool_001.wav",
        "pool/English/NewYork/pool_001.wav", "pool/English/Scottish/pool_001.wav", "pool/Spanish/pool_001.wav",
        "test/English/American/test_001.wav", "test/English/Scottish/test_001.wav", "test/Spanish/test_001.wav",
        "train/English/American/train_001.wav", "train/English/Scottish/train_001.wav", "train/Spanish/train_001.wav",
    ]
    for w in corpus.rglob("*.wav"):
        info = sf.info(str(w))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        rows = read_txt(w.with_suffix(".txt"))
        assert [r[2] for r in rows] == ["A", "B", "A"]
        assert all(0 < s < e <= info.duration for s, e, _, _ in rows)
        assert all(rows[i][1] < rows[i + 1][0] for i in range(len(rows) - 1))  # pauses between turns
    info = json.loads((corpus / "synth_info.json").read_text())
    spk = {c["path"]: c["speakers"] for c in info["conversations"]}
    main, pool = spk["train/English/American/train_001"], spk["pool/English/American/pool_001"]
    assert main["A"].split()[0] != main["B"].split()[0]  # two different voices
    assert {v.split()[0] for v in main.values()}.isdisjoint(v.split()[0] for v in pool.values())


def test_sentences_disjoint_across_splits(corpus):
    by_split: dict[str, set[str]] = {}
    for t in corpus.rglob("*.txt"):
        split = t.relative_to(corpus).parts[0]
        by_split.setdefault(split, set()).update(r[3] for r in read_txt(t))
    assert set(by_split) == {"train", "dev", "test", "pool"}
    names = sorted(by_split)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not by_split[a] & by_split[b], (a, b)
    assert not any(ch.isdigit() for texts in by_split.values() for s in texts for ch in s)


def test_deterministic_and_idempotent(corpus, tmp_path):
    again = tmp_path / "again"
    synth(again, "--jobs", "1")
    assert digest(again) == digest(corpus)
    assert "already synthesised" in synth(again)
    other = tmp_path / "other"
    synth(other, "--seed", "1")
    assert digest(other) != digest(corpus)


def test_prepare_on_synthetic_corpus(corpus, tmp_path):
    result = prepare_mlc_slm(corpus, tmp_path / "data")
    assert sorted(result) == ["dev", "pool", "test", "train"]
    assert len(result["train"]) == 3 * 3 and len(result["pool"]) == 5 * 3
    for split, cuts in result.items():
        expected = {}
        for t in (corpus / split).rglob("*.txt"):
            rec_id = "-".join(t.relative_to(corpus / split).with_suffix("").parts)
            for s, e, spk, text in read_txt(t):
                expected[utterance_id(rec_id, spk, s, e)] = (s, e, text)
        assert {c.id for c in cuts} == set(expected)
        for cut in cuts:
            s, e, text = expected[cut.id]
            sup = cut.supervisions[0]
            assert sup.text == text and sup.language in ("en", "es")
            assert cut.start == pytest.approx(s) and cut.duration == pytest.approx(e - s, abs=1e-6)
            assert cut.load_audio().shape[1] == cut.num_samples
    accents = {c.supervisions[0].custom["accent"] for c in result["train"]}
    assert accents == {"American", "Scottish", "Spanish"}
