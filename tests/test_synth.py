"""The espeak-ng corpus synthesiser of the mini recipe: 11 languages, scripts, disjoint splits,
the pool's held-aside truth, determinism, presets, prep."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import soundfile as sf

from ilt.data.mlc_slm import LANGUAGES as LANGUAGE_DIRS
from ilt.data.mlc_slm import prepare_mlc_slm, utterance_id

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "egs/mini/local/synth_corpus.py"

pytestmark = pytest.mark.skipif(
    not (shutil.which("espeak-ng") and shutil.which("sox")), reason="needs espeak-ng and sox"
)

TINY = ["--convs-per-accent", "1", "1", "1", "--utts-per-conv", "2", "--languages", "all",
        "--accents", "American", "Scottish", "--pool", "--pool-convs-per-accent", "1", "--pool-text", "aside"]
ISO_TO_DIR = {iso: name for name, iso in LANGUAGE_DIRS.items()}
SPLITS = ("train", "dev", "test", "pool")
LISTS = (*SPLITS, "thirdparty")  # every sentence list (thirdparty/ is written only with --thirdparty)


def load_module():
    spec = importlib.util.spec_from_file_location("synth_corpus", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


synth_corpus = load_module()


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


def read_txt(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]


def texts_by_split(corpus: Path) -> dict[str, dict[str, set[str]]]:
    """split -> language directory -> transcripts (the pool's from pool_truth/)."""
    result: dict[str, dict[str, set[str]]] = {}
    for split in SPLITS:
        root = corpus / ("pool_truth" if split == "pool" else split)
        for t in root.rglob("*.txt"):
            lang = t.relative_to(root).parts[0]
            result.setdefault(split, {}).setdefault(lang, set()).update(r[3] for r in read_txt(t))
    return result


def test_all_languages_and_layout(corpus):
    wavs = sorted(p.relative_to(corpus).as_posix() for p in corpus.rglob("*.wav"))
    others = [ISO_TO_DIR[iso] for iso in synth_corpus.OTHER_LANGUAGES]
    for split in ("train", "dev", "test"):
        expected = [f"{split}/English/{a}/{split}_001.wav" for a in ("American", "Scottish")]
        expected += [f"{split}/{name}/{split}_001.wav" for name in others]
        assert sorted(w for w in wavs if w.startswith(f"{split}/")) == sorted(expected)
    pool_accents = ("American", "Lancastrian", "NewYork", "Scottish")  # two accents of the pool's own
    expected = [f"pool/English/{a}/pool_001.wav" for a in pool_accents] + [f"pool/{n}/pool_001.wav" for n in others]
    assert sorted(w for w in wavs if w.startswith("pool/")) == sorted(expected)
    assert sorted(w for w in wavs if w.startswith("pool_truth/")) == sorted(
        "pool_truth/" + w.split("/", 1)[1] for w in expected)
    assert len(set(LANGUAGE_DIRS) - {p.name for p in (corpus / "test").iterdir()}) == 0  # all 11

    for w in corpus.rglob("*.wav"):
        info = sf.info(str(w))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        rows = read_txt(w.with_suffix(".txt"))
        assert [r[2] for r in rows] == ["A", "B"]
        times = [(float(r[0]), float(r[1])) for r in rows]
        assert all(0 < s < e <= info.duration for s, e in times)
        assert times[0][1] < times[1][0]  # a pause between the turns
        assert all(e - s > 0.8 for s, e in times), (w, times)  # real speech, not an empty utterance
    info = json.loads((corpus / "synth_info.json").read_text())
    spk = {c["path"]: c["speakers"] for c in info["conversations"]}
    main, pool = spk["train/English/American/train_001"], spk["pool/English/American/pool_001"]
    assert main["A"].split()[0] != main["B"].split()[0]  # two different voices
    assert {v.split()[0] for v in main.values()}.isdisjoint(v.split()[0] for v in pool.values())


def _scripts(text: str) -> set[str]:
    """The scripts of a text's letters (the long-vowel mark ー counts as katakana)."""
    return {unicodedata.name(ch).split()[0].split("-")[0] for ch in text if ch.isalpha()}


def test_native_scripts(corpus):
    texts = texts_by_split(corpus)
    allowed = {"Japanese": {"CJK", "HIRAGANA", "KATAKANA"}, "Korean": {"HANGUL"}, "Thai": {"THAI"},
               "Russian": {"CYRILLIC"}, "Vietnamese": {"LATIN"}}
    for lang, scripts in allowed.items():
        for split in SPLITS:
            for text in texts[split][lang]:
                assert text and _scripts(text) <= scripts, (lang, text)
    assert any("CJK" in _scripts(t) for t in texts["test"]["Japanese"])  # kanji, not only kana
    assert not any(" " in t for split in SPLITS for t in texts[split]["Japanese"])
    # What espeak-ng speaks instead: a kana reading for Japanese, a Latin respelling for Thai.
    for split in LISTS:
        for s in synth_corpus.load_sentences("ja", split):
            assert _scripts(s.spoken) <= {"HIRAGANA", "KATAKANA"}, s
        for s in synth_corpus.load_sentences("th", split):
            assert _scripts(s.spoken) == {"LATIN"} and "|" not in s.text, s


def test_espeak_speaks_each_language_in_its_own_voice():
    """espeak-ng switches to English (``(en)`` in its phonemes) on text it cannot read, e.g. kanji."""
    for iso in ("ja", "ko", "th", "ru", "vi", "pt"):
        voice = synth_corpus.OTHER_LANGUAGES[iso][1]
        spoken = "\n".join(s.spoken for split in LISTS for s in synth_corpus.load_sentences(iso, split))
        phonemes = subprocess.run(["espeak-ng", "-b", "1", "-q", "-x", "-v", voice], input=spoken.encode(),
                                  capture_output=True, check=True).stdout.decode()
        assert phonemes.strip() and not re.search(r"\([a-z]{2,3}\)", phonemes), (iso, phonemes[:300])


def test_sentence_lists_disjoint_and_sized(corpus):
    for iso in synth_corpus.LANGUAGES:
        lists = {split: synth_corpus.load_sentences(iso, split) for split in LISTS}
        assert sum(map(len, lists.values())) >= 40 and len(lists["thirdparty"]) >= 20, iso
        if iso not in ("ja", "th"):  # languages written with spaces: 5-15 words
            assert all(5 <= len(s.text.split()) <= 15 for ss in lists.values() for s in ss), iso
        for split, ss in lists.items():
            assert len({s.text for s in ss}) == len(ss), (iso, split)  # no sentence twice in a list
    synth_corpus.check_disjoint(synth_corpus.LANGUAGES, list(LISTS))
    texts = texts_by_split(corpus)
    for lang in texts["test"]:
        for i, a in enumerate(SPLITS):
            for b in SPLITS[i + 1:]:
                assert not texts[a][lang] & texts[b][lang], (lang, a, b)
    assert not any(ch.isdigit() for split in texts.values() for ts in split.values() for t in ts for ch in t)


def test_pool_text_held_aside(corpus, tmp_path):
    for t in (corpus / "pool").rglob("*.txt"):
        truth = corpus / "pool_truth" / t.relative_to(corpus / "pool")
        rows, true_rows = read_txt(t), read_txt(truth)
        assert all(len(r) == 3 for r in rows)  # start, end, speaker: no text
        assert [r[:3] for r in true_rows] == rows and all(r[3] for r in true_rows)
        assert t.with_suffix(".wav").read_bytes() == truth.with_suffix(".wav").read_bytes()
    result = prepare_mlc_slm(corpus, tmp_path / "data", splits=("pool", "pool_truth"))
    pool, truth = result["pool"], result["pool_truth"]
    assert sorted(c.id for c in pool) == sorted(c.id for c in truth)
    assert all(c.supervisions[0].text is None for c in pool)
    assert all(c.supervisions[0].text for c in truth)


def test_deterministic_and_idempotent(corpus, tmp_path):
    again = tmp_path / "again"
    synth(again, "--jobs", "1")
    assert digest(again) == digest(corpus)
    assert "already synthesised" in synth(again)
    # Another seed draws other voices, orders and pauses (checked on the plan: no audio needed).
    plans = [synth_corpus.plan(synth_corpus.parse_args(["--out", "x", *TINY, "--seed", seed])) for seed in "01"]
    assert [(c.turns, c.gaps) for c in plans[0]] != [(c.turns, c.gaps) for c in plans[1]]


def test_track_presets():
    demo = synth_corpus.parse_args(["--out", "x", "--track", "demo"])
    assert demo.languages == ["en", "es", "de"] and len(demo.accents) == 4
    full = synth_corpus.parse_args(["--out", "x", "--track", "multilingual", "--utts-per-conv", "4"])
    assert full.languages == synth_corpus.LANGUAGES and len(synth_corpus.LANGUAGES) == 11
    assert full.utts_per_conv == 4 and full.convs_per_accent == [3, 1, 1]  # explicit beats the preset
    plain = synth_corpus.parse_args(["--out", "x"])  # no track: the old defaults
    assert plain.languages == ["en", "es", "de", "fr", "it"] and plain.convs_per_accent == [4, 2, 2]


def test_thai_word_missing_from_lexicon_is_named():
    with pytest.raises(SystemExit, match="not in .*th.lexicon.tsv: ไม่มี"):
        synth_corpus._thai("ผม|ไม่มี", {"ผม": "pổm"}, "th.test.txt:1")
    s = synth_corpus._thai("ขอโทษ|ครับ ไป|ไหน", {"ขอโทษ": "a", "ครับ": "b", "ไป": "c", "ไหน": "d"}, "x")
    assert (s.text, s.spoken) == ("ขอโทษครับ ไปไหน", "a b, c d")


def test_prepare_on_synthetic_corpus(corpus, tmp_path):
    result = prepare_mlc_slm(corpus, tmp_path / "data", splits=("train", "dev", "test"))
    assert len(result["train"]) == 12 * 2  # 2 accents + 10 languages, one 2-turn conversation each
    for split, cuts in result.items():
        expected = {}
        for t in (corpus / split).rglob("*.txt"):
            rec_id = "-".join(t.relative_to(corpus / split).with_suffix("").parts)
            for s, e, spk, text in read_txt(t):
                expected[utterance_id(rec_id, spk, float(s), float(e))] = (float(s), float(e), text)
        assert {c.id for c in cuts} == set(expected)
        for cut in cuts:
            s, e, text = expected[cut.id]
            sup = cut.supervisions[0]
            assert sup.text == text and sup.language in synth_corpus.LANGUAGES
            assert cut.start == pytest.approx(s) and cut.duration == pytest.approx(e - s, abs=1e-6)
    assert {c.supervisions[0].language for c in result["test"]} == set(synth_corpus.LANGUAGES)
    accents = {c.supervisions[0].custom["accent"] for c in result["train"]}
    assert accents == {"American", "Scottish", *(ISO_TO_DIR[i] for i in synth_corpus.OTHER_LANGUAGES)}


def test_thirdparty_split_is_labelled_pool_voiced_and_leaves_the_rest_unchanged(corpus, tmp_path):
    out = tmp_path / "with_thirdparty"
    synth(out, "--thirdparty")
    # without --thirdparty nothing changes: every other file, synth_info.json included (its settings
    # name no third-party option), is byte-identical to the corpus written without it
    assert not (corpus / "thirdparty").exists()
    plain = json.loads((corpus / "synth_info.json").read_text())["settings"]
    assert not any(k.startswith("thirdparty") for k in plain)
    others = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()
                    and p.relative_to(out).parts[0] not in ("thirdparty", "synth_info.json"))
    assert others == sorted(p.relative_to(corpus) for p in corpus.rglob("*") if p.is_file()
                            and p.name != "synth_info.json")
    assert all((out / p).read_bytes() == (corpus / p).read_bytes() for p in others)
    info = json.loads((out / "synth_info.json").read_text())
    assert {k: v for k, v in info["settings"].items() if not k.startswith("thirdparty")} == plain
    assert "already synthesised" in synth(out, "--thirdparty")

    # the split: one conversation per group (the pool's English accents), transcribed
    others_dirs = [ISO_TO_DIR[iso] for iso in synth_corpus.OTHER_LANGUAGES]
    expected = [f"English/{a}/thirdparty_001.wav" for a in ("American", "Lancastrian", "NewYork", "Scottish")]
    expected += [f"{n}/thirdparty_001.wav" for n in others_dirs]
    root = out / "thirdparty"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.wav")) == sorted(expected)
    lists = {iso: {s.text for s in synth_corpus.load_sentences(iso, "thirdparty")} for iso in synth_corpus.LANGUAGES}
    dir_to_iso = {name: iso for iso, name in ISO_TO_DIR.items()}
    for t in root.rglob("*.txt"):
        rows = read_txt(t)
        assert len(rows) == 2 and all(len(r) == 4 and r[3] for r in rows), t  # labelled
        iso = dir_to_iso[t.relative_to(root).parts[0]]
        assert {r[3] for r in rows} <= lists[iso], t  # its own sentences, no other split's
    # its speakers are the pool's voices and variants, never a main-corpus speaker
    speakers = {c["path"].split("/")[0]: set() for c in info["conversations"]}
    for c in info["conversations"]:
        speakers[c["path"].split("/")[0]].update(v.split()[0] for v in c["speakers"].values())
    assert speakers["thirdparty"].isdisjoint(speakers["train"] | speakers["dev"] | speakers["test"])
    assert all(v.split("+")[1] in synth_corpus.POOL_VARIANTS["male"] + synth_corpus.POOL_VARIANTS["female"]
               for v in speakers["thirdparty"])
    cuts = prepare_mlc_slm(out, tmp_path / "data", splits=("thirdparty",))["thirdparty"]
    assert len(cuts) == 2 * len(expected) and all(c.supervisions[0].text for c in cuts)
    assert {c.supervisions[0].language for c in cuts} == set(synth_corpus.LANGUAGES)
