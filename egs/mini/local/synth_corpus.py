#!/usr/bin/env python3
"""Synthesise a small MLC-SLM-layout corpus with espeak-ng and sox.

    python egs/mini/local/synth_corpus.py --out data/mini_corpus [--seed 0] [--pool]

Writes ``<out>/<split>/<Language>/<Accent>/<conv>.wav`` (English) and
``<out>/<split>/<Language>/<conv>.wav`` (other languages), each beside a
``<conv>.txt`` with ``start<TAB>end<TAB>speaker<TAB>text`` lines, for the splits
train, dev and test, whose sentences are disjoint. A conversation is one 16 kHz
mono wav in which two espeak-ng voices (speakers A and B) take turns, with
short pauses between them; the times in the ``.txt`` are measured on the
synthesised audio.

``--pool`` adds a ``pool/`` split: a "third-party" corpus of other voices
(other espeak variants, two more English accents) reading other sentences.

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

#: Language directory, ISO code and espeak voice per accent (main corpus).
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
#: ISO code -> (directory name, main voice, pool voice).
OTHER_LANGUAGES: dict[str, tuple[str, str, str]] = {
    "es": ("Spanish", "es", "es-419"),
    "de": ("German", "de", "de"),
    "fr": ("French", "fr-fr", "fr-be"),
    "it": ("Italian", "it", "it"),
}
#: espeak-ng variants: main corpus speakers and pool speakers never overlap.
MAIN_VARIANTS = {"male": ("m1", "m2", "m3"), "female": ("f1", "f2", "f3")}
POOL_VARIANTS = {"male": ("m4", "m5", "m6", "m7"), "female": ("f4", "f5")}


@dataclass(frozen=True)
class Speaker:
    voice: str  # espeak voice+variant
    speed: int  # words per minute
    pitch: int  # 0..99

    def key(self) -> str:
        return f"{self.voice} -s {self.speed} -p {self.pitch}"


@dataclass
class Conversation:
    rel: Path  # relative to the corpus root, without suffix
    language: str  # ISO
    turns: list[tuple[str, Speaker, str]]  # (label, speaker, sentence)
    gaps: list[float]  # seconds before each turn, then the trailing pause


def rng_for(*parts: object) -> random.Random:
    """A deterministic RNG per name (string seeds are hashed with SHA-512, not PYTHONHASHSEED)."""
    return random.Random("/".join(map(str, parts)))


def load_sentences(iso: str, split: str) -> list[str]:
    path = SENTENCES / f"{iso}.{split}.txt"
    lines = [" ".join(line.split()) for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line]


def check_disjoint(languages: list[str], splits: list[str]) -> None:
    for iso in languages:
        seen: dict[str, str] = {}
        for split in splits:
            for s in load_sentences(iso, split):
                key = "".join(ch for ch in s.lower() if ch.isalnum())
                if key in seen and seen[key] != split:
                    sys.exit(f"sentence in both {seen[key]} and {split} ({iso}): {s}")
                seen[key] = split


def plan(args: argparse.Namespace) -> list[Conversation]:
    """Every conversation's sentences, voices and pauses, drawn from the seeded RNGs."""
    splits = list(SPLITS) + (["pool"] if args.pool else [])
    convs_per = dict(zip(SPLITS, args.convs_per_accent))
    convs_per["pool"] = args.pool_convs_per_accent
    caps = dict(zip(SPLITS, args.sentences_per_split))
    caps["pool"] = 0
    conversations = []
    for split in splits:
        variants = POOL_VARIANTS if split == "pool" else MAIN_VARIANTS
        groups: list[tuple[str, Path, str]] = []  # (iso, directory, voice)
        for iso in args.languages:
            if iso == "en":
                accents = {a: v for a, v in ENGLISH_ACCENTS.items() if a in args.accents}
                if split == "pool":
                    accents.update(POOL_ONLY_ACCENTS)
                groups += [("en", Path("English") / accent, voice) for accent, voice in accents.items()]
            else:
                name, main_voice, pool_voice = OTHER_LANGUAGES[iso]
                groups.append((iso, Path(name), pool_voice if split == "pool" else main_voice))
        for iso, directory, voice in groups:
            sentences = load_sentences(iso, split)
            if caps[split]:
                sentences = sentences[: caps[split]]
            rng = rng_for(args.seed, split, directory.as_posix())
            order: list[str] = []
            for k in range(convs_per[split]):
                males, females = list(variants["male"]), list(variants["female"])
                pair = [rng.choice(males), rng.choice(females)]
                rng.shuffle(pair)
                speakers = {
                    label: Speaker(f"{voice}+{var}", rng.randint(150, 185), rng.randint(35, 65))
                    for label, var in zip("AB", pair)
                }
                turns = []
                for t in range(args.utts_per_conv):
                    if not order:  # walk the sentences in a fresh random order, again and again
                        order = list(sentences)
                        rng.shuffle(order)
                    label = "AB"[t % 2]
                    turns.append((label, speakers[label], order.pop()))
                gaps = [round(rng.uniform(0.2, 0.5), 3)]
                gaps += [round(rng.uniform(0.25, 0.7), 3) for _ in range(len(turns) - 1)]
                gaps.append(round(rng.uniform(0.3, 0.5), 3))
                rel = Path(split) / directory / f"{split}_{k + 1:03d}"
                conversations.append(Conversation(rel, iso, turns, gaps))
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


def noise_floor(n: int, name: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return (np.random.default_rng(seed).standard_normal(n) * 3e-4).astype(np.float32)


def render(conv: Conversation, utts: dict[tuple[Speaker, str], np.ndarray], out: Path, rate: int) -> float:
    """Assemble, resample with sox, write the wav and the txt; return the duration in seconds."""
    pieces, lines, pos = [], [], 0
    for (label, speaker, text), gap in zip(conv.turns, conv.gaps):
        silence = int(round(gap * ESPEAK_RATE))
        pieces.append(np.zeros(silence, dtype=np.float32))
        pos += silence
        audio = utts[(speaker, text)]
        pieces.append(audio)
        lines.append(f"{pos / ESPEAK_RATE:.3f}\t{(pos + len(audio)) / ESPEAK_RATE:.3f}\t{label}\t{text}\n")
        pos += len(audio)
    pieces.append(np.zeros(int(round(conv.gaps[-1] * ESPEAK_RATE)), dtype=np.float32))
    signal = np.concatenate(pieces)
    signal += noise_floor(len(signal), conv.rel.as_posix())
    buf = io.BytesIO()
    sf.write(buf, signal, ESPEAK_RATE, format="WAV", subtype="FLOAT")

    wav, txt = out / conv.rel.with_suffix(".wav"), out / conv.rel.with_suffix(".txt")
    wav.parent.mkdir(parents=True, exist_ok=True)
    tmp_wav = wav.with_name(f".{wav.name}.tmp.wav")
    # -R: repeatable; -D: no dither, so the output is a pure function of the input.
    subprocess.run(["sox", "-R", "-D", "-t", "wav", "-", "-b", "16", "-e", "signed-integer", "-c", "1",
                    str(tmp_wav), "gain", "-1", "rate", str(rate)],
                   input=buf.getvalue(), capture_output=True, check=True)
    os.replace(tmp_wav, wav)
    tmp_txt = txt.with_name(f".{txt.name}.tmp")
    tmp_txt.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp_txt, txt)
    return sf.info(str(wav)).duration


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="corpus directory to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--utts-per-conv", type=int, default=8, help="turns per conversation")
    p.add_argument("--convs-per-accent", type=int, nargs=3, default=[4, 2, 2], metavar=("TRAIN", "DEV", "TEST"),
                   help="conversations per accent (or per non-English language) in train, dev, test")
    p.add_argument("--sentences-per-split", type=int, nargs=3, default=[0, 0, 0],
                   metavar=("TRAIN", "DEV", "TEST"), help="use only the first N sentences of each list (0: all)")
    p.add_argument("--languages", nargs="+", default=["en", *OTHER_LANGUAGES],
                   choices=["en", *OTHER_LANGUAGES], help="ISO codes")
    p.add_argument("--accents", nargs="+", default=list(ENGLISH_ACCENTS), choices=list(ENGLISH_ACCENTS),
                   help="English accents")
    p.add_argument("--pool", action="store_true", help="also write the third-party pool/ split")
    p.add_argument("--pool-convs-per-accent", type=int, default=2)
    p.add_argument("--rate", type=int, default=16000, help="output sampling rate")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--force", action="store_true", help="re-synthesise even if the corpus exists")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found: apt-get install espeak-ng sox")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                if k not in ("out", "jobs", "force")}
    info_path = args.out / "synth_info.json"
    if not args.force and info_path.is_file():
        if json.loads(info_path.read_text(encoding="utf-8")).get("settings") == settings:
            print(f"{args.out}: already synthesised with these settings (--force to redo)")
            return 0

    t0 = time.time()
    check_disjoint(args.languages, list(SPLITS) + (["pool"] if args.pool else []))
    conversations = plan(args)
    jobs = sorted({(spk, text) for c in conversations for _, spk, text in c.turns}, key=lambda j: (j[0].key(), j[1]))
    with ThreadPoolExecutor(max(1, args.jobs)) as ex:
        utts = dict(zip(jobs, ex.map(lambda j: espeak(*j), jobs)))
        durations = list(ex.map(lambda c: render(c, utts, args.out, args.rate), conversations))

    # Remove the conversations of an earlier run that this one did not write again.
    if info_path.is_file():
        now = {c.rel.as_posix() for c in conversations}
        for old in json.loads(info_path.read_text(encoding="utf-8")).get("conversations", []):
            if old["path"] not in now:
                for suffix in (".wav", ".txt"):
                    (args.out / (old["path"] + suffix)).unlink(missing_ok=True)

    info = {
        "settings": settings,
        "conversations": [
            {"path": c.rel.as_posix(), "language": c.language, "duration": round(d, 3),
             "speakers": {label: spk.key() for label, spk, _ in c.turns}}
            for c, d in zip(conversations, durations)
        ],
    }
    tmp = info_path.with_name(".synth_info.json.tmp")
    tmp.write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, info_path)
    n_utts = sum(len(c.turns) for c in conversations)
    print(f"{args.out}: {len(conversations)} conversations, {n_utts} utterances, "
          f"{sum(durations) / 60:.1f} min of audio in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
