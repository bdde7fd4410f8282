"""The espeak-ng corpus synthesiser of the mini recipe: 11 languages, scripts, disjoint splits,
the pool's held-aside truth, determinism, presets, prep; the converged track's extra test sets and per-group channel."""

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


# --- the converged track's corpus: more test sets, a channel of each group's own ------------------

SMALL = ["--track", "converged", "--convs-per-accent", "1", "1", "1", "--utts-per-conv", "2",
         "--accents", "American", "Scottish", "--pool", "--pool-text", "aside", "--thirdparty",
         "--thirdparty-utts-per-conv", "2", "--jobs", "1"]
TESTS = ("test", "test2", "test3")
CONVERGED_ISOS = ("en", "es", "de")


def synth_small(out: Path, *extra: str) -> str:
    res = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *SMALL, *extra],
                         capture_output=True, text=True, check=True)
    return res.stdout


@pytest.fixture(scope="module")
def shifted(tmp_path_factory) -> Path:
    """The converged preset at a tiny size: 3 test sets, --shift per-group."""
    out = tmp_path_factory.mktemp("converged") / "corpus"
    synth_small(out)
    return out


@pytest.fixture(scope="module")
def unshifted(tmp_path_factory) -> Path:
    """The same corpus with --shift none."""
    out = tmp_path_factory.mktemp("converged") / "plain"
    synth_small(out, "--shift", "none")
    return out


def _speakers(corpus: Path) -> dict[str, dict[str, list[str]]]:
    """split -> group directory -> the espeak voice+variant of every speaker (synth_info.json)."""
    result: dict[str, dict[str, list[str]]] = {}
    for c in json.loads((corpus / "synth_info.json").read_text())["conversations"]:
        split, group = c["path"].split("/")[0], "/".join(c["path"].split("/")[1:-1])
        result.setdefault(split, {}).setdefault(group, []).extend(v.split()[0] for v in c["speakers"].values())
    return result


def _files(corpus: Path, split: str) -> dict[str, bytes]:
    return {p.relative_to(corpus).as_posix(): p.read_bytes()
            for p in sorted((corpus / split).rglob("*")) if p.is_file()}


def test_converged_preset_sizes():
    args = synth_corpus.parse_args(["--out", "x", "--track", "converged", "--pool", "--thirdparty"])
    assert (args.languages, args.test_sets, args.shift) == (["en", "es", "de"], 3, "per-group")
    counts: dict[str, int] = {}
    for c in synth_corpus.plan(args):
        counts[c.split] = counts.get(c.split, 0) + len(c.turns)
    assert counts == {"train": 192, "dev": 144, "test": 48, "test2": 48, "test3": 48,
                      "pool": 8 * 8, "thirdparty": 8 * 6}  # 4 accents + es + de; the pool adds 2 accents
    with pytest.raises(SystemExit):
        synth_corpus.parse_args(["--out", "x", "--test-sets", str(synth_corpus.MAX_TEST_SETS + 1)])
    # a language without sentences for an extra test set is named, with the file to write
    res = subprocess.run([sys.executable, str(SCRIPT), "--out", "unused", "--languages", "fr", "--test-sets", "2"],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "fr.test2.txt: no sentences for fr in test2/" in res.stderr.strip().splitlines()[-1]


def test_extra_test_sets_have_new_sentences_and_new_voices(shifted, tmp_path):
    test_groups = {split: sorted(p.relative_to(shifted / split).with_suffix("").parent.as_posix()
                                 for p in (shifted / split).rglob("*.wav")) for split in TESTS}
    assert test_groups["test"] == ["English/American", "English/Scottish", "German", "Spanish"]
    assert test_groups["test2"] == test_groups["test3"] == test_groups["test"]  # the same groups
    # sentences: the lists are sized, distinct, and disjoint from every other list
    for iso in CONVERGED_ISOS:
        for split in ("test2", "test3"):
            ss = synth_corpus.load_sentences(iso, split)
            assert len(ss) >= 24 and len({s.text for s in ss}) == len(ss), (iso, split)
            assert all(6 <= len(s.text.split()) <= 14 for s in ss), (iso, split)
    synth_corpus.check_disjoint(list(CONVERGED_ISOS), [*LISTS, "test2", "test3"])
    texts: dict[str, set[str]] = {}
    for split in ("train", "dev", *TESTS, "pool_truth", "thirdparty"):
        texts[split] = {r[3] for t in (shifted / split).rglob("*.txt") for r in read_txt(t)}
    for split in ("test2", "test3"):
        listed = {s.text for iso in CONVERGED_ISOS for s in synth_corpus.load_sentences(iso, split)}
        assert texts[split] and texts[split] <= listed
        assert all(not texts[split] & texts[other] for other in texts if other != split), split
    # voices: each extra test set speaks with its own variants, over each group's own voice
    speakers = _speakers(shifted)
    variants = {split: {v.split("+")[1] for vs in groups.values() for v in vs} for split, groups in speakers.items()}
    for split in ("test2", "test3"):
        own = synth_corpus.TEST_SET_VARIANTS[split]
        assert variants[split] <= set(own["male"] + own["female"])
        assert all(not variants[split] & variants[other] for other in variants if other != split), split
        for group, voices in speakers[split].items():
            assert {v.split("+")[0] for v in voices} == {v.split("+")[0] for v in speakers["test"][group]}
    # ilt prepare reads them like test/
    cuts = prepare_mlc_slm(shifted, tmp_path / "data", splits=("test2", "test3"))
    assert {len(cuts["test2"]), len(cuts["test3"])} == {4 * 2}
    assert {c.supervisions[0].language for c in cuts["test3"]} == set(CONVERGED_ISOS)


def test_channel_is_the_groups_own_and_deterministic():
    groups = [f"English/{a}" for a in (*synth_corpus.ENGLISH_ACCENTS, *synth_corpus.POOL_ONLY_ACCENTS)]
    groups += [name for name, _, _ in synth_corpus.OTHER_LANGUAGES.values()]
    chains = {g: synth_corpus.channel_for(g) for g in groups}
    assert all(synth_corpus.channel_for(g) == ch for g, ch in chains.items())  # a function of the name
    assert len({ch.describe() for ch in chains.values()}) == len(groups)  # no two groups alike
    for ch in chains.values():
        assert 100 <= abs(ch.pitch) <= 300 and 0.04 <= abs(ch.tempo - 1) <= 0.12
        assert 80 <= ch.band[0] <= 400 and 3200 <= ch.band[1] <= 7000
    # the same group has the same channel in every split, whatever the seed; the pool's splits none
    for seed in ("0", "1"):
        args = synth_corpus.parse_args(["--out", "x", *SMALL, "--seed", seed])
        for c in synth_corpus.plan(args):
            ch = synth_corpus.channel_of(args, c)
            if c.split in synth_corpus.POOL_VOICED:
                assert ch is None
            else:
                assert ch == chains[c.rel.parent.as_posix()]
    plain = synth_corpus.parse_args(["--out", "x", *SMALL, "--shift", "none"])
    assert all(synth_corpus.channel_of(plain, c) is None for c in synth_corpus.plan(plain))


def _band_energy(path: Path, low: float, high: float = float("inf")) -> float:
    """The fraction of a wav's energy between ``low`` and ``high`` Hz."""
    import numpy as np

    audio, rate = sf.read(str(path), dtype="float64")
    power = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / rate)
    return float(power[(freqs > low) & (freqs < high)].sum() / power.sum())


def test_shift_changes_the_audio_of_its_groups_only(shifted, unshifted, tmp_path):
    # the pool's voiced splits are the same files with and without the shift
    for split in ("pool", "pool_truth", "thirdparty"):
        assert _files(shifted, split) == _files(unshifted, split), split
    info = json.loads((shifted / "synth_info.json").read_text())
    plain_info = json.loads((unshifted / "synth_info.json").read_text())
    assert "channels" not in plain_info and "shift" not in plain_info["settings"]
    assert info["settings"]["shift"] == "per-group"
    assert info["channels"] == {g: synth_corpus.channel_for(g).describe()
                                for g in ("English/American", "English/Scottish", "Spanish", "German")}
    for split in ("train", "dev", *TESTS):
        for wav in (shifted / split).rglob("*.wav"):
            plain = unshifted / wav.relative_to(shifted)
            assert wav.read_bytes() != plain.read_bytes()
            rows, plain_rows = read_txt(wav.with_suffix(".txt")), read_txt(plain.with_suffix(".txt"))
            assert [r[2:] for r in rows] == [r[2:] for r in plain_rows]  # same turns and text
            assert rows != plain_rows  # the tempo moved the turn times
            assert all(float(r[1]) <= sf.info(str(wav)).duration for r in rows)
            # the group's own band limit: almost no energy above its low-pass (the clean audio has
            # 100 times more there), while the band just below it is kept (not another group's lower one)
            cutoff = synth_corpus.channel_for(wav.relative_to(shifted / split).parent.as_posix()).band[1]
            above = _band_energy(wav, cutoff + 400)
            assert above < 1e-6 and _band_energy(plain, cutoff + 400) > 100 * above, (wav, cutoff)
            below = (cutoff - 1200, cutoff - 300)
            assert _band_energy(wav, *below) > 0.1 * _band_energy(plain, *below), (wav, cutoff)
    # running twice gives the same samples
    again = tmp_path / "again"
    synth_small(again)
    assert digest(again) == digest(shifted)


def test_new_options_leave_existing_outputs_unchanged(corpus, unshifted, tmp_path):
    # The plans of the default, demo and multilingual corpora are those of the script before
    # --test-sets and --shift existed (hashes computed with it): same seeds, voices, sentences, pauses.
    pinned = {"": "44f897378244dac2", "demo": "ff2cb23a6a7bf90a", "multilingual": "93d7162817abfe6e"}
    for track, expected in pinned.items():
        args = synth_corpus.parse_args(["--out", "x", *(["--track", track] if track else []), "--pool", "--thirdparty"])
        rows = [[c.path().as_posix(), c.language, [[lab, spk.key(), s.text, s.spoken] for lab, spk, s in c.turns],
                 c.gaps] for c in synth_corpus.plan(args)]
        assert hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode()).hexdigest()[:16] == expected, track
        assert all(synth_corpus.channel_of(args, c) is None for c in synth_corpus.plan(args))
    settings = json.loads((corpus / "synth_info.json").read_text())["settings"]
    assert not {"test_sets", "shift"} & set(settings)
    # one test set, no shift: exactly the files of the corpus with three test sets, less test2/ and test3/
    one = tmp_path / "one"
    synth_small(one, "--shift", "none", "--test-sets", "1")
    assert not (one / "test2").exists()
    for split in ("train", "dev", "test", "pool", "pool_truth", "thirdparty"):
        assert _files(one, split) == _files(unshifted, split), split
    assert "test_sets" not in json.loads((one / "synth_info.json").read_text())["settings"]
