"""TTS augmenters (espeak on the real engine; f5tts and sparktts up to the model
call, on recording stand-ins) and `ilt augment tts`: outputs, resume, bad input."""

import json
import sys
import types

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from ilt.cli.main import cli
from ilt.components import PROMPT_ID, Augmenter, AugmentTarget
from ilt.config import ConfigError
from ilt.core.registry import create
from ilt.data.manifests import load_cuts, save_manifest
from ilt.testing.dummies import espeak_available, make_cuts

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng not installed")


def _prompts(tmp_path):
    return make_cuts(tmp_path / "prompts", [
        {"id": "p-a", "text": "good morning everyone", "speaker": "spk-a", "accent": "British"},
        {"id": "p-b", "text": "see you tomorrow", "speaker": "spk-b"},
        {"id": "p-de", "text": "guten Tag", "speaker": "spk-c", "language": "de"},
        {"id": "p-none", "text": None, "speaker": "spk-d"},
    ])


@needs_espeak
def test_espeak_speaks_each_target_in_a_voice_fixed_by_the_prompt_speaker(tmp_path):
    prompts = _prompts(tmp_path)
    engine = create("augmenter", "espeak")
    assert isinstance(engine, Augmenter)
    targets = [AugmentTarget("t1", "a rare word", prompt_id="p-a"), AugmentTarget("t2", "another one", prompt_id="p-a"),
               AugmentTarget("t3", "ein seltenes Wort", prompt_id="p-de"),
               AugmentTarget("t4", "no voice for this", language="yo", prompt_id="p-b"),
               AugmentTarget("t5", "unknown prompt", prompt_id="p-missing")]
    cuts = {c.id: c for c in engine.augment(prompts, targets, tmp_path / "out")}
    assert sorted(cuts) == ["t1", "t2", "t3"]  # Yoruba: no espeak voice; p-missing: not a prompt
    for cut in cuts.values():
        audio, rate = sf.read(cut.recording.sources[0].source)
        assert rate == 16000 and audio.ndim == 1 and cut.duration > 0.3
        assert np.abs(audio).max() > 0.05  # real speech, not silence
    t1, t3 = cuts["t1"], cuts["t3"]
    assert t1.supervisions[0].text == "a rare word" and t1.supervisions[0].speaker == "spk-a"
    assert t1.supervisions[0].language == "en" and t1.supervisions[0].custom["accent"] == "British"
    assert t1.custom[PROMPT_ID] == "p-a" and t3.supervisions[0].language == "de"
    # the same speaker always gets the same voice; the voice is of the target's language
    assert cuts["t2"].custom["tts"]["voice"] == t1.custom["tts"]["voice"]
    assert t1.custom["tts"]["voice"].startswith("en") and t3.custom["tts"]["voice"].startswith("de+")
    assert create("augmenter", "espeak").speaker_voice("spk-a", "en") == engine.speaker_voice("spk-a", "en")
    assert create("augmenter", "espeak", voices=["en-us"]).speaker_voice("spk-a", "en")[0].startswith("en-us+")
    by_accent = create("augmenter", "espeak", accent_voices={"British": "en-gb-x-rp"})
    british = by_accent.augment(prompts, targets[:1], tmp_path / "out2")[0]
    assert british.custom["tts"]["voice"].startswith("en-gb-x-rp+")


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


@needs_espeak
def test_ilt_augment_tts_writes_audio_and_cuts_resumes_and_counts_skips(tmp_path):
    prompts = tmp_path / "prompts.jsonl.gz"
    save_manifest(_prompts(tmp_path), prompts)
    texts = _write(tmp_path / "selected.txt", "en\tthe quick brown fox\nen\tjumps over the dog\n"
                   "de\tein kleiner Satz\nfr\tpersonne ne parle ici\n\n")
    out = tmp_path / "tts"
    args = ["augment", "tts", "--augmenter", "espeak", "--prompts", str(prompts), "--texts", texts,
            "--out", str(out), "--chunk-size", "2", "--per-sentence", "2"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sentences"] == 4 and summary["targets"] == 6 and summary["produced"] == 6
    assert summary["skipped"] == {"prompt without transcript": 1, "sentence in a language no prompt speaks": 1}
    cuts = load_cuts(out / "cuts.jsonl.gz")
    assert len(cuts) == 6 and (out / ".done").is_file() and (out / "command.txt").is_file()
    en = [c for c in cuts if c.supervisions[0].language == "en"]
    # two prompt voices per sentence, English sentences only with English prompts
    assert {c.custom[PROMPT_ID] for c in en} == {"p-a", "p-b"}
    assert {c.custom[PROMPT_ID] for c in cuts if c.supervisions[0].language == "de"} == {"p-de"}

    # a finished run is not redone
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "audio").iterdir()}
    assert CliRunner().invoke(cli, args).exit_code == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "audio").iterdir()} == stamps
    # killed during the last chunk: only that chunk is synthesised again
    (out / ".done").unlink()
    (out / "cuts.jsonl.gz").unlink()
    (out / "parts" / "part-00002.jsonl.gz").unlink()
    assert CliRunner().invoke(cli, args).exit_code == 0
    now = {p.name: p.stat().st_mtime_ns for p in (out / "audio").iterdir()}
    redone = sorted(name for name in now if now[name] != stamps[name])
    assert len(redone) == 2 and len(load_cuts(out / "cuts.jsonl.gz")) == 6
    # other inputs into the same directory: refused unless --force
    res = CliRunner().invoke(cli, args[:-4] + ["--chunk-size", "3", "--per-sentence", "2"])
    assert res.exit_code == 1 and "--overwrite" in res.output

    # --languages: only the English sentences are spoken (the paper's TTS is for English accents)
    only = tmp_path / "tts_en"
    res = CliRunner().invoke(cli, [*args[:args.index("--out")], "--out", str(only), "--languages", "en",
                                   "--per-sentence", "2"])
    assert res.exit_code == 0, res.output
    summary = json.loads((only / "summary.json").read_text())
    assert summary["targets"] == summary["produced"] == 4
    assert summary["skipped"]["sentence in a language not asked for (--languages)"] == 2
    assert {c.supervisions[0].language for c in load_cuts(only / "cuts.jsonl.gz")} == {"en"}
    res = CliRunner().invoke(cli, [*args[:args.index("--out")], "--out", str(tmp_path / "x"), "--languages", "xx"])
    assert res.exit_code == 1 and "--languages" in res.output


def test_tts_bad_input_is_one_line_errors(tmp_path):
    prompts = tmp_path / "prompts.jsonl.gz"
    save_manifest(_prompts(tmp_path), prompts)
    good = _write(tmp_path / "t.txt", "en\thello there\n")

    def run(*extra, texts=good, cuts=prompts):
        res = CliRunner().invoke(cli, ["augment", "tts", "--prompts", str(cuts), "--texts", texts,
                                       "--out", str(tmp_path / "o"), *extra])
        assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
        return res.output

    assert "no sentences" in run("--augmenter", "espeak", texts=_write(tmp_path / "empty.txt", "\n  \n"))
    out = run("--augmenter", "espek")
    assert "unknown augmenter 'espek'" in out and "did you mean 'espeak'" in out
    no_text = tmp_path / "no_text.jsonl.gz"
    save_manifest(make_cuts(tmp_path / "nt", [{"id": "x", "text": None}, {"id": "y", "text": " "}]), no_text)
    assert "no usable prompt cut" in run("--augmenter", "espeak", cuts=no_text)
    assert "f5tts runs from local files only" in run("--augmenter", "f5tts")


# --------------------------------------------------------------------------- hub-only engines, up to the model call


class _Recorder:
    """Stand-in engines: record every call, return a 1 s tone at the engine's own rate."""

    calls: list = []

    @staticmethod
    def tone(rate):
        return (0.3 * np.sin(2 * np.pi * 220 * np.arange(rate) / rate)).astype(np.float32)


def _fake_f5(monkeypatch):
    class F5TTS:
        def __init__(self, **kwargs):
            _Recorder.calls.append(("init", kwargs))

        def infer(self, ref_file, ref_text, gen_text, **kwargs):
            audio, rate = sf.read(ref_file)  # the prompt must be a readable wav of the prompt cut
            _Recorder.calls.append(("infer", dict(ref_text=ref_text, gen_text=gen_text, ref_seconds=len(audio) / rate,
                                                  **kwargs)))
            list(kwargs["progress"].tqdm([1, 2]))  # F5-TTS reports its batches through progress.tqdm
            return _Recorder.tone(24000), 24000, None

    api = types.ModuleType("f5_tts.api")
    api.F5TTS = F5TTS
    monkeypatch.setitem(sys.modules, "f5_tts", types.ModuleType("f5_tts"))
    monkeypatch.setitem(sys.modules, "f5_tts.api", api)


def _f5_files(tmp_path):
    (tmp_path / "ckpt.safetensors").write_bytes(b"x")
    (tmp_path / "vocab.txt").write_text("a\n")
    (tmp_path / "vocos").mkdir()
    return dict(ckpt_file=str(tmp_path / "ckpt.safetensors"), vocab_file=str(tmp_path / "vocab.txt"),
                vocoder_dir=str(tmp_path / "vocos"))


def test_f5tts_without_local_files_names_what_is_missing(tmp_path, monkeypatch):
    with pytest.raises(ConfigError) as err:
        create("augmenter", "f5tts", vocab_file=str(tmp_path / "nope.txt"))
    message = str(err.value)
    assert "ckpt_file" in message and "vocoder_dir" in message and "not found: " in message
    monkeypatch.setitem(sys.modules, "f5_tts.api", None)  # not installed
    with pytest.raises(ConfigError, match="cannot import f5_tts.api.F5TTS"):
        create("augmenter", "f5tts", **_f5_files(tmp_path))


def test_f5tts_calls_the_api_with_the_prompt_audio_and_transcript(tmp_path, monkeypatch):
    _fake_f5(monkeypatch)
    _Recorder.calls = []
    files = _f5_files(tmp_path)
    engine = create("augmenter", "f5tts", **files, nfe_step=8)
    prompts = _prompts(tmp_path)
    targets = [AugmentTarget("f1", "rare words here", prompt_id="p-a"),
               AugmentTarget("f2", "more rare words", prompt_id="p-none")]  # no transcript: left out
    cuts = list(engine.augment(prompts, targets, tmp_path / "out"))
    assert [c.id for c in cuts] == ["f1"]
    init, infer = _Recorder.calls[0], _Recorder.calls[1]
    assert init == ("init", {"model": "F5TTS_v1_Base", "ckpt_file": files["ckpt_file"],
                             "vocab_file": files["vocab_file"], "vocoder_local_path": files["vocoder_dir"],
                             "device": "cpu"})
    assert infer[1]["ref_text"] == "good morning everyone" and infer[1]["gen_text"] == "rare words here"
    assert infer[1]["ref_seconds"] == pytest.approx(1.0) and infer[1]["nfe_step"] == 8
    assert len(_Recorder.calls) == 2  # the model is loaded once
    assert cuts[0].sampling_rate == 16000 and cuts[0].duration == pytest.approx(1.0)
    assert cuts[0].custom[PROMPT_ID] == "p-a" and cuts[0].supervisions[0].speaker == "spk-a"
    assert not list((tmp_path / "out").glob(".prompts*"))  # temporary prompt files are removed


def test_sparktts_loads_the_repository_module_and_calls_inference(tmp_path, monkeypatch):
    class SparkTTS:
        sample_rate = 16000

        def __init__(self, model_dir, device):
            assert sys.path[0] == str((tmp_path / "repo").resolve())  # its own modules import while it builds
            _Recorder.calls.append(("init", str(model_dir), device))

        def inference(self, text, prompt_speech_path, prompt_text, **kwargs):
            assert sys.path[0] == str((tmp_path / "repo").resolve())
            assert sf.info(str(prompt_speech_path)).samplerate == 16000
            _Recorder.calls.append(("inference", text, prompt_text, sorted(kwargs)))
            return _Recorder.tone(16000)

    cli_pkg, module = types.ModuleType("cli"), types.ModuleType("cli.SparkTTS")
    module.SparkTTS = SparkTTS
    monkeypatch.setitem(sys.modules, "cli", cli_pkg)
    monkeypatch.setitem(sys.modules, "cli.SparkTTS", module)
    with pytest.raises(ConfigError, match="repo_dir .*model_dir"):
        create("augmenter", "sparktts")
    (tmp_path / "repo").mkdir()
    (tmp_path / "ckpt").mkdir()
    monkeypatch.setattr(sys, "path", list(sys.path))
    before = list(sys.path)
    _Recorder.calls = []
    engine = create("augmenter", "sparktts", repo_dir=str(tmp_path / "repo"), model_dir=str(tmp_path / "ckpt"))
    assert sys.path == before  # the repository is on sys.path only while it imports, builds and runs
    cuts = list(engine.augment(_prompts(tmp_path), [AugmentTarget("s1", "hello again", prompt_id="p-b")],
                               tmp_path / "out"))
    assert sys.path == before
    assert [c.id for c in cuts] == ["s1"] and cuts[0].duration == pytest.approx(1.0)
    assert _Recorder.calls == [("init", str(tmp_path / "ckpt"), "cpu"),
                               ("inference", "hello again", "see you tomorrow", ["temperature", "top_k", "top_p"])]


# --------------------------------------------------------------------------- untrusted prompts (docs/security.md)

BAD_IDS = ["../x", "/abs/x", "a\x00b", "a\nb", "x" * 300]


@pytest.mark.parametrize("prompt_id", BAD_IDS)
def test_a_prompt_id_that_is_a_path_is_refused(tmp_path, prompt_id):
    import gzip

    from reliability_table import check

    from ilt.errors import IltInputError
    from ilt.plugins.augmenters import prompt_wav

    [cut] = list(_prompts(tmp_path))[:1]
    data = cut.to_dict()
    data["id"] = prompt_id
    prompts = tmp_path / "evil_prompts.jsonl.gz"
    prompts.write_bytes(gzip.compress((json.dumps(data) + "\n").encode()))
    texts = _write(tmp_path / "t.txt", "en\thello there\n")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    res = CliRunner().invoke(cli, ["augment", "tts", "--prompts", str(prompts), "--texts", texts, "--augmenter",
                                   "espeak", "--out", str(tmp_path / "o")])
    shown = prompt_id[:12] + ("…" if len(prompt_id) > 12 else "")
    check("bad input", f"prompt ID {shown!r} (augment tts: <id>.prompt.wav)", "exit 1, one Error: line naming the "
          "prompt manifest and the ID; nothing written", f"exit {res.exit_code}: "
          f"{res.output.strip().replace(str(tmp_path), '…')[:160]}",
          res.exit_code == 1 and len(res.output.strip().splitlines()) == 1 and "prompt ID" in res.output
          and "cannot be part of a file name" in res.output
          and sorted(p.name for p in tmp_path.rglob("*")) == before)
    # the engines' own helper refuses it too, before reading any audio
    with pytest.raises(IltInputError, match="prompt ID"):
        prompt_wav(type("Cut", (), {"id": prompt_id})(), tmp_path)


def test_a_long_prompt_is_left_out_without_reading_it(tmp_path, monkeypatch):
    import ilt.data.audio
    from ilt.plugins.augmenters import MAX_PROMPT_SECONDS, _LeftOut, prompt_wav

    [long] = make_cuts(tmp_path / "long", [{"id": "p-long", "text": "hello", "duration": MAX_PROMPT_SECONDS + 5}])
    monkeypatch.setattr(ilt.data.audio, "load_mono", lambda *a: pytest.fail("the long prompt was read"))
    with pytest.raises(_LeftOut, match="p-long: audio too long"):
        prompt_wav(long, tmp_path)
