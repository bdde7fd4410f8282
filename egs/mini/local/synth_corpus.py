#!/usr/bin/env python3
"""Synthesise a small MLC-SLM-layout corpus (the challenge's 11 languages) with espeak-ng and sox.

    python egs/mini/local/synth_corpus.py --out corpus [--track demo|multilingual|converged] [--pool]
        [--thirdparty] [--test-sets K] [--shift none|per-group]

Writes ``<out>/<split>/<Language>/<Accent>/<conv>.wav`` (English) and
``<out>/<split>/<Language>/<conv>.wav`` (other languages), each beside a
``<conv>.txt`` with ``start<TAB>end<TAB>speaker<TAB>text`` lines, for the splits
train, dev and test, whose sentences are disjoint. A conversation is one 16 kHz
mono wav in which two espeak-ng voices (speakers A and B) take turns, with
short pauses between them; the times in the ``.txt`` are measured on the
synthesised audio (the exact turns, for a reference RTTM).

Languages: en (accents American, British, Scottish, Caribbean, WestMidlands),
fr, de, it, es, pt, ru, ja, ko, th, vi. Japanese, Korean and Thai transcripts
are in their own scripts. espeak-ng reads kanji as "Chinese letter", so a
Japanese sentence line is ``text<TAB>kana reading`` and espeak speaks the
reading. espeak-ng's Thai rules are a stub (the vowels า ี ะ ำ are spoken as
"s"), so a Thai line is its words separated by ``|`` and each word's reading
comes from ``sentences/th.lexicon.tsv``: a Vietnamese-orthography respelling
(tones as Vietnamese tone marks) that espeak's Vietnamese voice speaks. The
transcript is always the native text (for Thai, the words joined).

``--pool`` adds a ``pool/`` split: a "third-party" corpus of other voices
(other espeak variants and voices, two more English accents) reading other
sentences, and ``pool_truth/``: the same conversations (hard-linked wavs) with
their true transcripts, held aside so that a recipe can pseudo-label ``pool/``
and score the labels (``ilt prepare mlc-slm OUT DIR --splits pool_truth`` gives
the same cut IDs as ``pool``, with text). ``--pool-text aside`` writes
``pool/`` without the text column (an unlabelled corpus); ``inline`` (the
default) keeps it there too.

``--thirdparty`` adds a labelled ``thirdparty/`` split: another "third-party"
corpus, spoken by the pool's voices (never a main-corpus speaker) reading the
sentences of ``sentences/<iso>.thirdparty.txt``, which no other split reads,
with their transcripts. The knowledge tasks of the recipe use it as labelled
third-party data: its text for rare-token selection, its audio for
speaker-similarity selection. ``pool/`` stays unlabelled and is only
pseudo-labelled. Without ``--thirdparty`` every other file, ``synth_info.json``
included, is what it was before the option existed.

``--test-sets K`` (default 1) adds the splits ``test2/`` ... ``testK/`` (K at most 3),
sized like ``test/`` and with its groups (the same English accents and languages,
each with its own espeak voice), so that per-language error rates compare
across them; each reads its own sentences (``sentences/<iso>.test2.txt``...,
written for en, es and de; disjoint from every other list) and each has espeak
variants of its own (``TEST_SET_VARIANTS``), used by no other split: new
sentences and new voices, for repeating a comparison over test sets.

``--shift per-group`` (default ``none``) gives every group (an English accent,
or a language) a channel of its own, so that a per-language or per-accent
expert has a shift of its own to learn: a fixed sox chain (``channel_for``),
drawn from the group's name alone (not from ``--seed``): its speakers' pitch
(100-300 cents up or down) and tempo (4-12% faster or slower), applied to each
utterance before the turn times are measured, then over the whole conversation
a noise floor of its own colour and level (-60 to -48 dBFS, spectral slope
from white to brown), 6 dB of headroom, a room (sox reverb), a band limit
(high-pass 80-400 Hz, low-pass 3.2-7 kHz: from a telephone to a fair
microphone) and a microphone colour (one peaking equaliser, 4-9 dB up or
down). The same group has the same channel in train, dev and every test set.
The splits spoken by the pool's voices (``pool/``, ``pool_truth/``,
``thirdparty/``) are not shifted: they stand for third-party corpora recorded
elsewhere, so the in-domain channel is exactly what they lack (the selection
and pseudo-labelling of the recipe bridge a real channel gap), and they stay
byte-identical with and without ``--shift``. ``synth_info.json`` records
``test_sets`` and ``shift`` in its settings, and each group's chain under
``channels``, only when they are not the defaults: a corpus written before
these options existed is not synthesised again.

``--track`` picks a preset size (demo: 4 English accents + es, de, small;
multilingual: all 11 languages; converged: 4 English accents + es, de, with
4/3/1 conversations of 8 turns per group in train/dev/test (192, 144 and 48
cuts), 3 test sets and ``--shift per-group``); options given explicitly
override it.

The output depends only on the arguments: the same arguments give
byte-identical files. ``<out>/synth_info.json`` records the arguments and every
conversation's voices; a re-run with the same arguments and that file present
does nothing (``--force`` redoes it).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
SENTENCES = HERE / "sentences"

ESPEAK_RATE = 22050  # espeak-ng's output rate
SPLITS = ("train", "dev", "test")
POOL, TRUTH = "pool", "pool_truth"
THIRDPARTY = "thirdparty"
#: Splits spoken by the pool's voices and variants (never the main corpus speakers).
POOL_VOICED = (POOL, THIRDPARTY)
#: Options of ``--thirdparty``: recorded in synth_info.json only when it is on.
THIRDPARTY_KEYS = ("thirdparty", "thirdparty_convs_per_accent", "thirdparty_utts_per_conv")
#: Options recorded in synth_info.json only when they differ from these values (a corpus written
#: before they existed keeps its settings, so it is not synthesised again).
OFF_VALUES: dict[str, object] = {"test_sets": 1, "shift": "none"}
SHIFTS = ("none", "per-group")

#: English accent directory -> espeak voice (main corpus).
ENGLISH_ACCENTS: dict[str, str] = {
    "American": "en-us",
    "British": "en-gb-x-rp",
    "Scottish": "en-gb-scotland",
    "Caribbean": "en-029",
    "WestMidlands": "en-gb-x-gbcwmd",
}
#: Accents heard only in the pool (distractors for data selection).
POOL_ONLY_ACCENTS: dict[str, str] = {
    "NewYork": "en-us-nyc",
    "Lancastrian": "en-gb-x-gbclan",
}
#: ISO code -> (directory name, main voice, pool voice). Thai is read from its
#: lexicon's Vietnamese-orthography respelling (see the module docstring).
OTHER_LANGUAGES: dict[str, tuple[str, str, str]] = {
    "es": ("Spanish", "es", "es-419"),
    "de": ("German", "de", "de"),
    "fr": ("French", "fr-fr", "fr-be"),
    "it": ("Italian", "it", "it"),
    "pt": ("Portuguese", "pt-br", "pt"),
    "ru": ("Russian", "ru", "ru-lv"),
    "ja": ("Japanese", "ja", "ja"),
    "ko": ("Korean", "ko", "ko"),
    "th": ("Thai", "vi", "vi-vn-x-central"),
    "vi": ("Vietnamese", "vi", "vi-vn-x-south"),
}
LANGUAGES = ["en", *OTHER_LANGUAGES]
#: espeak-ng variants: main corpus speakers and pool speakers never overlap.
MAIN_VARIANTS = {"male": ("m1", "m2", "m3"), "female": ("f1", "f2", "f3")}
POOL_VARIANTS = {"male": ("m4", "m5", "m6", "m7"), "female": ("f4", "f5")}
#: The variants of the extra test sets (``--test-sets``): each set's own, used by no other split.
TEST_SET_VARIANTS = {
    "test2": {"male": ("m8", "Mike", "max"), "female": ("steph", "aunty")},
    "test3": {"male": ("Alex", "rob", "quincy"), "female": ("Annie", "Andrea")},
}
MAX_TEST_SETS = 1 + len(TEST_SET_VARIANTS)

#: Preset sizes; an option given on the command line wins over its preset value.
TRACKS: dict[str, dict[str, object]] = {
    "demo": {"languages": ["en", "es", "de"], "accents": ["American", "British", "Scottish", "Caribbean"],
             "convs_per_accent": [2, 1, 1], "utts_per_conv": 4, "pool_convs_per_accent": 1,
             "pool_utts_per_conv": 1, "thirdparty_utts_per_conv": 3},
    "multilingual": {"languages": LANGUAGES, "accents": ["American", "British", "Scottish", "Caribbean"],
                     "convs_per_accent": [3, 1, 1], "utts_per_conv": 8, "pool_convs_per_accent": 1,
                     "thirdparty_utts_per_conv": 6},
    # Rounds that can converge, dev sets that can choose, three test sets of new sentences and
    # voices, and a channel of each group's own (train 192 cuts, dev 144, test 48 per test set).
    "converged": {"languages": ["en", "es", "de"], "accents": ["American", "British", "Scottish", "Caribbean"],
                  "convs_per_accent": [4, 3, 1], "utts_per_conv": 8, "test_sets": 3, "shift": "per-group",
                  "pool_convs_per_accent": 1, "thirdparty_utts_per_conv": 6},
}
DEFAULTS: dict[str, object] = {
    "languages": ["en", "es", "de", "fr", "it"], "accents": list(ENGLISH_ACCENTS),
    "convs_per_accent": [4, 2, 2], "utts_per_conv": 8, "pool_convs_per_accent": 2,
    "pool_utts_per_conv": None,  # None: --utts-per-conv
    "thirdparty_convs_per_accent": 1, "thirdparty_utts_per_conv": None,  # None: --utts-per-conv
    **OFF_VALUES,
}


@dataclass(frozen=True)
class Speaker:
    voice: str  # espeak voice+variant
    speed: int  # words per minute
    pitch: int  # 0..99

    def key(self) -> str:
        return f"{self.voice} -s {self.speed} -p {self.pitch}"


@dataclass(frozen=True)
class Sentence:
    text: str  # the transcript
    spoken: str  # what espeak-ng reads (the text itself, or its reading)


@dataclass
class Conversation:
    rel: Path  # relative to the split directory, without suffix
    split: str
    language: str  # ISO
    turns: list[tuple[str, Speaker, Sentence]]  # (label, speaker, sentence)
    gaps: list[float]  # seconds before each turn, then the trailing pause

    def path(self, split: str | None = None) -> Path:
        return Path(split or self.split) / self.rel


def rng_for(*parts: object) -> random.Random:
    """A deterministic RNG per name (string seeds are hashed with SHA-512, not PYTHONHASHSEED)."""
    return random.Random("/".join(map(str, parts)))


@dataclass(frozen=True)
class Channel:
    """A group's own acoustic shift (``--shift per-group``): its speakers' pitch and tempo, its
    room, its microphone's band and colour, and its noise floor."""

    pitch: int  # cents, every utterance
    tempo: float  # every utterance (sox tempo: the duration divides by it)
    reverb: tuple[int, int, int]  # reverberance %, HF damping %, room scale %
    band: tuple[int, int]  # Hz: sox sinc band-pass
    eq: tuple[int, int]  # Hz, dB: one peaking equaliser (the microphone's colour)
    noise: tuple[float, int]  # spectral slope (0 white, 1 pink, 2 brown), level in dBFS

    def utterance_effects(self) -> list[str]:
        """sox effects on each utterance alone (they change its length: the turn times are
        measured after them)."""
        return ["pitch", str(self.pitch), "tempo", "-s", f"{self.tempo:.3f}"]

    def conversation_effects(self) -> list[str]:
        """sox effects on the whole conversation, before the output's gain and rate (they keep the
        length). 6 dB of headroom first: the room and the equaliser add energy."""
        return ["gain", "-6", "reverb", *map(str, self.reverb), "sinc", f"{self.band[0]}-{self.band[1]}",
                "equalizer", str(self.eq[0]), "1q", str(self.eq[1])]

    def describe(self) -> str:
        """The chain in words, as synth_info.json records it."""
        return (f"utterance: {' '.join(self.utterance_effects())}; conversation: noise slope "
                f"{self.noise[0]:.2f} at {self.noise[1]} dBFS, {' '.join(self.conversation_effects())}")

    def noise_floor(self, n: int, name: str) -> np.ndarray:
        """``n`` samples of the group's coloured noise (power falling as 1/f^slope), seeded by ``name``."""
        spectrum = np.fft.rfft(seeded_rng(f"channel/{name}").standard_normal(n))
        freqs = np.fft.rfftfreq(n, 1 / ESPEAK_RATE)
        spectrum *= np.maximum(freqs, 20.0) ** (-self.noise[0] / 2)  # below 20 Hz: flat
        noise = np.fft.irfft(spectrum, n)
        noise *= 10 ** (self.noise[1] / 20) / max(float(np.sqrt(np.mean(noise ** 2))), 1e-12)
        return noise.astype(np.float32)


def channel_for(group: str) -> Channel:
    """The channel of a group (``English/Scottish``, ``Spanish``...): a pure function of its name,
    not of ``--seed`` (a group sounds the same whichever voices a seed draws)."""
    rng = rng_for("shift", group)
    sign = rng.choice((-1, 1))
    return Channel(
        pitch=sign * rng.randint(100, 300),
        tempo=round(1 + rng.choice((-1, 1)) * rng.uniform(0.04, 0.12), 3),
        reverb=(rng.randint(10, 60), rng.randint(20, 80), rng.randint(20, 100)),
        band=(rng.randint(80, 400), rng.randint(3200, 7000)),
        eq=(round(400 * 2 ** rng.uniform(0, 3)), rng.choice((-1, 1)) * rng.randint(4, 9)),
        noise=(round(rng.uniform(0, 2), 2), rng.randint(-60, -48)),
    )


def _sox_float(audio: np.ndarray, effects: list[str]) -> np.ndarray:
    """``audio`` (float32 at ESPEAK_RATE) through sox ``effects``, back as float32 at the same rate."""
    buf = io.BytesIO()
    sf.write(buf, audio, ESPEAK_RATE, format="WAV", subtype="FLOAT")
    proc = subprocess.run(["sox", "-R", "-D", "-t", "wav", "-", "-t", "wav", "-e", "floating-point", "-b", "32",
                           "-", *effects], input=buf.getvalue(), capture_output=True, check=True)
    out, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    assert rate == ESPEAK_RATE, rate
    return out


def extra_test_splits(count: int) -> list[str]:
    """The extra test splits of ``--test-sets count``: test2 ... test<count>."""
    return [f"test{k}" for k in range(2, count + 1)]


def _clean(line: str) -> str:
    return " ".join(line.split())


def load_lexicon(iso: str) -> dict[str, str]:
    """``<iso>.lexicon.tsv``: word<TAB>reading per line (``#`` starts a comment)."""
    path = SENTENCES / f"{iso}.lexicon.tsv"
    lexicon: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        word, sep, reading = line.partition("\t")
        if not sep or not word.strip() or not reading.strip():
            sys.exit(f"{path}:{n}: expected 'word<TAB>reading'")
        if word.strip() in lexicon:
            sys.exit(f"{path}:{n}: {word.strip()!r} is listed twice")
        lexicon[word.strip()] = _clean(reading)
    return lexicon


def _thai(line: str, lexicon: dict[str, str], where: str) -> Sentence:
    """A ``|``-separated Thai line: the words joined are the text, their readings the speech."""
    phrases = [[w for w in phrase.split("|") if w] for phrase in line.split()]
    missing = sorted({w for phrase in phrases for w in phrase if w not in lexicon})
    if missing:
        sys.exit(f"{where}: not in {SENTENCES / 'th.lexicon.tsv'}: {' '.join(missing)}")
    text = " ".join("".join(phrase) for phrase in phrases)
    spoken = ", ".join(" ".join(lexicon[w] for w in phrase) for phrase in phrases)
    return Sentence(text, spoken)


def load_sentences(iso: str, split: str) -> list[Sentence]:
    """``<iso>.<split>.txt``: one sentence per line; ``text<TAB>reading`` where espeak needs a reading."""
    path = SENTENCES / f"{iso}.{split}.txt"
    if not path.is_file():
        sys.exit(f"{path}: no sentences for {iso} in {split}/ (write the file, or leave {iso} or {split} out)")
    lexicon = load_lexicon(iso) if iso == "th" else {}
    sentences = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if lexicon:
            sentences.append(_thai(line, lexicon, f"{path}:{n}"))
            continue
        text, _, reading = line.partition("\t")
        sentences.append(Sentence(_clean(text), _clean(reading) or _clean(text)))
    return sentences


def check_disjoint(languages: list[str], splits: list[str]) -> None:
    """No sentence (compared on its lower-cased letters and digits) in two of the splits' lists."""
    for iso in languages:
        seen: dict[str, str] = {}
        for split in splits:
            for s in load_sentences(iso, split):
                key = "".join(ch for ch in s.text.lower() if ch.isalnum())
                if key in seen and seen[key] != split:
                    sys.exit(f"sentence in both {seen[key]} and {split} ({iso}): {s.text}")
                seen[key] = split


def groups_of(args: argparse.Namespace, split: str) -> list[tuple[str, Path, str]]:
    """(ISO, directory, espeak voice) per accent or language of a split."""
    groups: list[tuple[str, Path, str]] = []
    for iso in args.languages:
        if iso == "en":
            accents = {a: v for a, v in ENGLISH_ACCENTS.items() if a in args.accents}
            if split in POOL_VOICED:
                accents.update(POOL_ONLY_ACCENTS)
            groups += [("en", Path("English") / accent, voice) for accent, voice in accents.items()]
        else:
            name, main_voice, pool_voice = OTHER_LANGUAGES[iso]
            groups.append((iso, Path(name), pool_voice if split in POOL_VOICED else main_voice))
    return groups


def plan(args: argparse.Namespace) -> list[Conversation]:
    """Every conversation's sentences, voices and pauses, drawn from the seeded RNGs."""
    tests = extra_test_splits(args.test_sets)
    splits = [*SPLITS, *tests] + ([POOL] if args.pool else []) + ([THIRDPARTY] if args.thirdparty else [])
    convs_per = dict(zip(SPLITS, args.convs_per_accent))
    convs_per[POOL] = args.pool_convs_per_accent
    convs_per[THIRDPARTY] = args.thirdparty_convs_per_accent
    turns_per = dict.fromkeys(SPLITS, args.utts_per_conv)
    turns_per[POOL] = args.pool_utts_per_conv or args.utts_per_conv
    turns_per[THIRDPARTY] = args.thirdparty_utts_per_conv or args.utts_per_conv
    caps = dict(zip(SPLITS, args.sentences_per_split))
    caps[POOL] = caps[THIRDPARTY] = 0
    for test in tests:  # sized like test/
        convs_per[test], turns_per[test], caps[test] = convs_per["test"], turns_per["test"], caps["test"]
    conversations = []
    for split in splits:
        variants = POOL_VARIANTS if split in POOL_VOICED else TEST_SET_VARIANTS.get(split, MAIN_VARIANTS)
        for iso, directory, voice in groups_of(args, split):
            sentences = load_sentences(iso, split)
            if caps[split]:
                sentences = sentences[: caps[split]]
            rng = rng_for(args.seed, split, directory.as_posix())
            order: list[Sentence] = []
            for k in range(convs_per[split]):
                pair = [rng.choice(variants["male"]), rng.choice(variants["female"])]
                rng.shuffle(pair)
                speakers = {
                    label: Speaker(f"{voice}+{var}", rng.randint(150, 185), rng.randint(35, 65))
                    for label, var in zip("AB", pair)
                }
                turns = []
                for t in range(turns_per[split]):
                    if not order:  # walk the sentences in a fresh random order, again and again
                        order = list(sentences)
                        rng.shuffle(order)
                    label = "AB"[t % 2]
                    turns.append((label, speakers[label], order.pop()))
                gaps = [round(rng.uniform(0.2, 0.5), 3)]
                gaps += [round(rng.uniform(0.25, 0.7), 3) for _ in range(len(turns) - 1)]
                gaps.append(round(rng.uniform(0.3, 0.5), 3))
                rel = directory / f"{split}_{k + 1:03d}"
                conversations.append(Conversation(rel, split, iso, turns, gaps))
    return conversations


def espeak(speaker: Speaker, text: str) -> np.ndarray:
    """One utterance at 22.05 kHz, float32, leading/trailing silence trimmed to 30 ms."""
    voice_args = ["-v", speaker.voice, "-s", str(speaker.speed), "-p", str(speaker.pitch)]
    proc = subprocess.run(["espeak-ng", "-b", "1", *voice_args, "--stdout"],
                          input=text.encode("utf-8"), capture_output=True, check=True)
    audio, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    assert rate == ESPEAK_RATE, rate
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    if loud.size == 0:
        raise RuntimeError(f"espeak-ng produced silence for {speaker.key()}: {text!r}")
    margin = int(0.03 * ESPEAK_RATE)
    return audio[max(0, loud[0] - margin): loud[-1] + margin + 1]


def utterance(speaker: Speaker, text: str, channel: Channel | None) -> np.ndarray:
    """One espeak utterance, through its group's per-utterance effects when it has a channel."""
    audio = espeak(speaker, text)
    return audio if channel is None else _sox_float(audio, channel.utterance_effects())


def channel_of(args: argparse.Namespace, conv: Conversation) -> Channel | None:
    """The channel of a conversation's group under ``--shift``; None for the pool's voiced splits
    (third-party corpora, recorded elsewhere: see the module docstring) and without a shift."""
    if args.shift == "none" or conv.split in POOL_VOICED:
        return None
    return channel_for(conv.rel.parent.as_posix())


def seeded_rng(key: str) -> np.random.Generator:
    """A NumPy generator seeded by the sha256 of ``key`` (the same key, the same samples)."""
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))


def noise_floor(n: int, name: str) -> np.ndarray:
    return (seeded_rng(name).standard_normal(n) * 3e-4).astype(np.float32)


def _write_text(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, path)


def _link(src: Path, dst: Path) -> None:
    """``dst`` becomes a hard link to ``src`` (a copy where the file system has none)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp.wav")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def render(conv: Conversation, utts: dict[tuple[Speaker, str, Channel | None], np.ndarray], out: Path,
           rate: int, pool_text: str, channel: Channel | None = None) -> float:
    """Assemble, resample with sox, write the wav and the txt; return the duration in seconds.

    A pool conversation also goes to ``pool_truth/`` (hard-linked wav, transcribed txt); its
    ``pool/`` txt keeps the text only with ``pool_text == "inline"``. With a ``channel`` the
    utterances are those it shifted, its noise floor is added and its conversation effects run
    before the output's gain and rate.
    """
    pieces, rows, pos = [], [], 0
    for (label, speaker, sentence), gap in zip(conv.turns, conv.gaps):
        silence = round(gap * ESPEAK_RATE)
        pieces.append(np.zeros(silence, dtype=np.float32))
        pos += silence
        audio = utts[(speaker, sentence.spoken, channel)]
        pieces.append(audio)
        rows.append((f"{pos / ESPEAK_RATE:.3f}\t{(pos + len(audio)) / ESPEAK_RATE:.3f}\t{label}", sentence.text))
        pos += len(audio)
    pieces.append(np.zeros(round(conv.gaps[-1] * ESPEAK_RATE), dtype=np.float32))
    signal = np.concatenate(pieces)
    signal += noise_floor(len(signal), conv.path().as_posix())
    if channel is not None:
        signal += channel.noise_floor(len(signal), conv.path().as_posix())
    buf = io.BytesIO()
    sf.write(buf, signal, ESPEAK_RATE, format="WAV", subtype="FLOAT")

    wav = out / conv.path().with_suffix(".wav")
    wav.parent.mkdir(parents=True, exist_ok=True)
    tmp_wav = wav.with_name(f".{wav.name}.tmp.wav")
    # -R: repeatable; -D: no dither, so the output is a pure function of the input.
    subprocess.run(["sox", "-R", "-D", "-t", "wav", "-", "-b", "16", "-e", "signed-integer", "-c", "1",
                    str(tmp_wav), *(channel.conversation_effects() if channel else []),
                    "gain", "-1", "rate", str(rate)],
                   input=buf.getvalue(), capture_output=True, check=True)
    os.replace(tmp_wav, wav)
    transcribed = [f"{times}\t{text}\n" for times, text in rows]
    if conv.split == POOL:
        _link(wav, out / conv.path(TRUTH).with_suffix(".wav"))
        _write_text(out / conv.path(TRUTH).with_suffix(".txt"), transcribed)
        if pool_text == "aside":
            transcribed = [f"{times}\n" for times, _ in rows]
    _write_text(wav.with_suffix(".txt"), transcribed)
    return sf.info(str(wav)).duration


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="corpus directory to write")
    p.add_argument("--track", choices=list(TRACKS),
                   help="preset languages, accents and sizes (explicit options override it): "
                   + "; ".join(f"{name}: {preset}" for name, preset in TRACKS.items()))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--utts-per-conv", type=int, help=f"turns per conversation ({DEFAULTS['utts_per_conv']})")
    p.add_argument("--convs-per-accent", type=int, nargs=3, metavar=("TRAIN", "DEV", "TEST"),
                   help="conversations per English accent and per other language in train, dev, test "
                   f"({' '.join(map(str, DEFAULTS['convs_per_accent']))})")
    p.add_argument("--sentences-per-split", type=int, nargs=3, default=[0, 0, 0],
                   metavar=("TRAIN", "DEV", "TEST"), help="use only the first N sentences of each list (0: all)")
    p.add_argument("--languages", nargs="+", choices=[*LANGUAGES, "all"],
                   help=f"ISO codes, or all ({' '.join(DEFAULTS['languages'])})")
    p.add_argument("--accents", nargs="+", choices=list(ENGLISH_ACCENTS), help="English accents (all five)")
    p.add_argument("--pool", action="store_true", help="also write the third-party pool/ split and pool_truth/")
    p.add_argument("--pool-convs-per-accent", type=int, help=f"({DEFAULTS['pool_convs_per_accent']})")
    p.add_argument("--pool-utts-per-conv", type=int, help="turns per pool conversation (default: --utts-per-conv)")
    p.add_argument("--pool-text", choices=["inline", "aside"], default="inline",
                   help="aside: pool/ has no transcripts (only pool_truth/ has them); inline: both have")
    p.add_argument("--thirdparty", action="store_true",
                   help="also write the labelled third-party split thirdparty/ (pool voices, its own sentences)")
    p.add_argument("--thirdparty-convs-per-accent", type=int,
                   help=f"({DEFAULTS['thirdparty_convs_per_accent']})")
    p.add_argument("--thirdparty-utts-per-conv", type=int,
                   help="turns per third-party conversation (default: --utts-per-conv)")
    p.add_argument("--test-sets", type=int,
                   help=f"test sets: test/ and test2/ ... testK/, each with its own sentences and voices "
                   f"(1 to {MAX_TEST_SETS}; default {OFF_VALUES['test_sets']})")
    p.add_argument("--shift", choices=SHIFTS,
                   help="per-group: a fixed acoustic channel of each accent's or language's own in train, dev "
                   f"and every test set (not the pool's voiced splits); default {OFF_VALUES['shift']}")
    p.add_argument("--rate", type=int, default=16000, help="output sampling rate")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--force", action="store_true", help="re-synthesise even if the corpus exists")
    args = p.parse_args(argv)
    preset = TRACKS.get(args.track, {})
    for key, default in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, preset.get(key, default))
    if not 1 <= args.test_sets <= MAX_TEST_SETS:
        p.error(f"--test-sets {args.test_sets}: 1 to {MAX_TEST_SETS} (each extra test set has its own variants "
                "in TEST_SET_VARIANTS and sentences in sentences/<iso>.test<K>.txt)")
    if "all" in args.languages:
        args.languages = list(LANGUAGES)
    args.languages = [iso for iso in LANGUAGES if iso in args.languages]  # canonical order
    args.accents = [a for a in ENGLISH_ACCENTS if a in args.accents]
    return args


def remove_stale(out: Path, info_path: Path, conversations: list[Conversation]) -> None:
    """Remove the conversations of an earlier run that this one did not write again."""
    if not info_path.is_file():
        return
    now = {c.path(split).as_posix() for c in conversations
           for split in ([c.split, TRUTH] if c.split == POOL else [c.split])}
    for old in json.loads(info_path.read_text(encoding="utf-8")).get("conversations", []):
        paths = [old["path"]]
        if old["path"].startswith(f"{POOL}/"):
            paths.append(f"{TRUTH}/{old['path'][len(POOL) + 1:]}")
        for path in paths:
            if path not in now:
                for suffix in (".wav", ".txt"):
                    (out / (path + suffix)).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install espeak-ng sox")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in ("out", "jobs", "force", "track") and (args.thirdparty or k not in THIRDPARTY_KEYS)
                and (k not in OFF_VALUES or v != OFF_VALUES[k])}
    info_path = args.out / "synth_info.json"
    if (not args.force and info_path.is_file()
            and json.loads(info_path.read_text(encoding="utf-8")).get("settings") == settings):
        print(f"{args.out}: already synthesised with these settings (--force to redo)")
        return 0

    t0 = time.time()
    check_disjoint(args.languages, [*SPLITS, *extra_test_splits(args.test_sets), *POOL_VOICED])
    conversations = plan(args)
    channels = [channel_of(args, c) for c in conversations]
    jobs = sorted({(spk, s.spoken, ch) for c, ch in zip(conversations, channels) for _, spk, s in c.turns},
                  key=lambda j: (j[0].key(), j[1], j[2].describe() if j[2] else ""))
    with ThreadPoolExecutor(max(1, args.jobs)) as ex:
        utts = dict(zip(jobs, ex.map(lambda j: utterance(*j), jobs)))
        durations = list(ex.map(lambda c, ch: render(c, utts, args.out, args.rate, args.pool_text, ch),
                                conversations, channels))
    remove_stale(args.out, info_path, conversations)

    info = {
        "settings": settings,
        "conversations": [
            {"path": c.path().as_posix(), "language": c.language, "duration": round(d, 3),
             "speakers": {label: spk.key() for label, spk, _ in c.turns}}
            for c, d in zip(conversations, durations)
        ],
    }
    if args.shift != "none":  # only then, so that a corpus without it keeps its synth_info.json
        info["channels"] = {c.rel.parent.as_posix(): ch.describe() for c, ch in zip(conversations, channels) if ch}
    tmp = info_path.with_name(".synth_info.json.tmp")
    tmp.write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, info_path)
    n_utts = sum(len(c.turns) for c in conversations)
    print(f"{args.out}: {len(conversations)} conversations, {n_utts} utterances, "
          f"{sum(durations) / 60:.1f} min of audio in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
