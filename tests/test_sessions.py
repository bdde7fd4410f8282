"""Track 2: session manifests, RTTM/STM/SegLST files, diarizers, speaker segments,
transcription and tcpWER/cpWER/DER scoring (equal to meeteval's own CLI)."""

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from ilt.cli.main import cli
from ilt.components import Diarizer, Turn
from ilt.core.registry import create
from ilt.errors import IltInputError
from ilt.testing.dummies import espeak_available, espeak_cuts
from ilt.track2.formats import (
    read_rttm,
    read_segments,
    reference_segments,
    session_cuts,
    write_rttm,
    write_seglst,
    write_stm,
)

MEETEVAL_WER = Path(sys.executable).with_name("meeteval-wer")


def _session(tmp_path, turns, duration=6.0, session_id="conv1", language="en", audio=None):
    """A session cut: a wav of ``duration`` s and one supervision per ``(start, end, speaker, text)``."""
    from lhotse import Recording, SupervisionSegment

    wav = tmp_path / f"{session_id}.wav"
    if audio is None:
        audio = 0.01 * np.random.default_rng(0).standard_normal(int(duration * 16000)).astype(np.float32)
    sf.write(wav, audio, 16000)
    recording = Recording.from_file(wav, recording_id=session_id)
    sups = [SupervisionSegment(id=f"{session_id}-{n}", recording_id=session_id, start=s, duration=e - s,
                               speaker=f"{session_id}-{spk}", text=text, language=language,
                               custom={"accent": "American"})
            for n, (s, e, spk, text) in enumerate(turns)]
    from lhotse import RecordingSet, SupervisionSet

    return session_cuts(RecordingSet.from_recordings([recording]), SupervisionSet.from_segments(sups))


# ---------------------------------------------------------------- data: session manifests and files


def test_prepare_mlc_slm_writes_session_manifests(tmp_path):
    from ilt.data.mlc_slm import prepare_mlc_slm

    conv = tmp_path / "corpus" / "dev" / "English" / "American" / "dev_001"
    conv.parent.mkdir(parents=True)
    sf.write(conv.with_suffix(".wav"), np.zeros(16000 * 4, dtype=np.float32), 16000)
    conv.with_suffix(".txt").write_text("0.5\t1.5\tA\tHello, world.\n2.0\t3.25\tB\tGood morning!\n", encoding="utf-8")
    out = tmp_path / "manifests"
    prepare_mlc_slm(tmp_path / "corpus", out)
    assert not (out / "mlc_slm_sessions_dev.jsonl.gz").exists()  # only on request
    prepare_mlc_slm(tmp_path / "corpus", out, sessions=True)  # segment manifests exist: built from them
    from lhotse import CutSet

    sessions = CutSet.from_file(out / "mlc_slm_sessions_dev.jsonl.gz")
    [cut] = list(sessions)
    assert cut.id == "English-American-dev_001" and cut.duration == 4.0
    assert [(s.start, s.speaker, s.text) for s in cut.supervisions] == [
        (0.5, "English-American-dev_001-A", "Hello, world."), (2.0, "English-American-dev_001-B", "Good morning!")]
    assert (out / "mlc_slm_ref_dev.rttm").read_text().splitlines() == [
        "SPEAKER English-American-dev_001 1 0.500 1.000 <NA> <NA> English-American-dev_001-A <NA> <NA>",
        "SPEAKER English-American-dev_001 1 2.000 1.250 <NA> <NA> English-American-dev_001-B <NA> <NA>"]
    assert (out / "mlc_slm_ref_dev.stm").read_text().splitlines()[1] == \
        "English-American-dev_001 1 English-American-dev_001-B 2.000 3.250 Good morning!"
    seglst = json.loads((out / "mlc_slm_ref_dev.seglst.json").read_text())
    assert seglst[0] == {"session_id": "English-American-dev_001", "speaker": "English-American-dev_001-A",
                         "start_time": 0.5, "end_time": 1.5, "words": "Hello, world.", "language": "en"}


def test_seglst_stm_rttm_writing_and_reading(tmp_path):
    segments = [
        {"session_id": "s1", "speaker": "B", "start_time": 3.0, "end_time": 4.5, "words": "second  turn"},
        {"session_id": "s1", "speaker": "A", "start_time": 0.25, "end_time": 2.0, "words": "first turn"},
        {"session_id": "s0", "speaker": "A", "start_time": 1.0, "end_time": 1.5, "words": ""},
    ]
    write_stm(segments, tmp_path / "x.stm")
    assert (tmp_path / "x.stm").read_text().splitlines() == [
        "s0 1 A 1.000 1.500", "s1 1 A 0.250 2.000 first turn", "s1 1 B 3.000 4.500 second turn"]
    write_seglst(segments, tmp_path / "x.json")
    assert [s["start_time"] for s in json.loads((tmp_path / "x.json").read_text())] == [1.0, 0.25, 3.0]
    for path in (tmp_path / "x.stm", tmp_path / "x.json"):  # both read back to the same segments
        back = read_segments(path)
        assert [(s["session_id"], s["speaker"], s["start_time"], s["end_time"], s["words"]) for s in back] == [
            ("s0", "A", 1.0, 1.5, ""), ("s1", "A", 0.25, 2.0, "first turn"), ("s1", "B", 3.0, 4.5, "second turn")]
    # meeteval reads both files as the same SegLST
    import meeteval

    assert meeteval.io.load(tmp_path / "x.stm").to_seglst().T["words"] == \
        meeteval.io.load(tmp_path / "x.json").to_seglst().T["words"]
    with pytest.raises(IltInputError, match="speaker 'two words' is empty or has whitespace"):
        write_stm([{**segments[0], "speaker": "two words"}], tmp_path / "bad.stm")
    write_rttm({"s1": [Turn(2.0, 3.0, "B"), Turn(0.0, 1.5, "A")], "s0": []}, tmp_path / "x.rttm")
    assert read_rttm(tmp_path / "x.rttm") == {"s1": [Turn(0.0, 1.5, "A"), Turn(2.0, 3.0, "B")]}
    (tmp_path / "bad.rttm").write_text(";; comment\nSPEAKER s1 1 zero 1.0 <NA> <NA> A <NA> <NA>\n")
    with pytest.raises(IltInputError, match=r"bad.rttm:2: start 'zero' or duration '1.0' is not a number"):
        read_rttm(tmp_path / "bad.rttm")


# ---------------------------------------------------------------- scoring


def _write(path, segments):
    path.write_text(json.dumps(segments), encoding="utf-8")
    return path


def _cli_tcpwer(ref, hyp, tmp_path, name):
    out = tmp_path / f"{name}.json"
    subprocess.run([str(MEETEVAL_WER), "tcpwer", "-r", str(ref), "-h", str(hyp), "--collar", "5",
                    "--average-out", str(out), "--per-reco-out", str(tmp_path / f"{name}_per_reco.json")],
                   check=True, capture_output=True)
    return json.loads(out.read_text())


def test_tcpwer_equals_meeteval_cli_with_speaker_swap_and_time_shift(tmp_path):
    en = [{"session_id": "en1", "speaker": "A", "start_time": 0.0, "end_time": 2.0, "words": "hello world",
           "language": "en"},
          {"session_id": "en1", "speaker": "B", "start_time": 3.0, "end_time": 5.0, "words": "good morning to you",
           "language": "en"}]
    ja = [{"session_id": "ja1", "speaker": "A", "start_time": 0.0, "end_time": 1.0, "words": "こんにちは。",
           "language": "ja"}]
    # The diarizer swapped the labels (A's words by "spk1", B's by "spk0"), and B's turn is
    # 10 s late: beyond the 5 s collar, so tcpWER counts its 4 words deleted and inserted.
    hyp = [{"session_id": "en1", "speaker": "spk1", "start_time": 0.0, "end_time": 2.0, "words": "Hello world!"},
           {"session_id": "en1", "speaker": "spk0", "start_time": 13.0, "end_time": 15.0,
            "words": "good morning to you"},
           {"session_id": "ja1", "speaker": "spk0", "start_time": 0.0, "end_time": 1.0, "words": "こんにちわ"}]
    ref_path, hyp_path = _write(tmp_path / "ref.json", en + ja), _write(tmp_path / "hyp.json", hyp)
    res = CliRunner().invoke(cli, ["score", "--sessions", "--ref", str(ref_path), "--hyp", str(hyp_path),
                                   "--out", str(tmp_path / "score")])
    assert res.exit_code == 0, res.output
    rows = {r["group"]: r for r in json.loads((tmp_path / "score" / "scores.json").read_text())["rows"]}
    assert (rows["en"]["errors"], rows["en"]["ins"], rows["en"]["del"], rows["en"]["ref_units"]) == (8, 4, 4, 6)
    assert rows["en"]["cpwer"] == 0.0  # cpWER ignores times: the swap alone costs nothing
    assert (rows["ja"]["unit"], rows["ja"]["sub"], rows["ja"]["ref_units"]) == ("char", 1, 5)  # CER
    assert rows["Overall"]["tcpwer"] == pytest.approx(100 * 9 / 11) and rows["Overall"]["unit"] == "mixed"
    # DER (pyannote.metrics): B's 2 s missed and 2 s false alarm over 4 s of speech; ja exact
    assert rows["en"]["der"] == pytest.approx(100.0) and rows["ja"]["der"] == pytest.approx(0.0)
    # meeteval's own CLI on the normalised files ilt scored gives the same numbers ...
    cli_all = _cli_tcpwer(tmp_path / "score" / "ref_norm.seglst.json", tmp_path / "score" / "hyp_norm.seglst.json",
                          tmp_path, "all")
    assert (cli_all["errors"], cli_all["length"], cli_all["insertions"], cli_all["deletions"],
            cli_all["substitutions"]) == (9, 11, 4, 4, 1)
    assert cli_all["error_rate"] * 100 == pytest.approx(rows["Overall"]["tcpwer"])
    per_reco = json.loads((tmp_path / "all_per_reco.json").read_text())
    assert (per_reco["en1"]["errors"], per_reco["en1"]["length"]) == (rows["en"]["errors"], rows["en"]["ref_units"])


def test_score_sessions_missing_and_foreign_sessions(tmp_path):
    from ilt.track2.transcribe import score_sessions

    ref = [{"session_id": s, "speaker": "A", "start_time": 0.0, "end_time": 1.0, "words": "a b", "language": "en"}
           for s in ("s1", "s2")]
    hyp = [{"session_id": "s1", "speaker": "x", "start_time": 0.0, "end_time": 1.0, "words": "a b"},
           {"session_id": "other", "speaker": "x", "start_time": 0.0, "end_time": 1.0, "words": "c"}]
    result = score_sessions(_write(tmp_path / "r.json", ref), _write(tmp_path / "h.json", hyp), tmp_path / "o")
    overall = result["rows"][-1]
    assert (overall["errors"], overall["del"], overall["ref_units"]) == (2, 2, 4)  # s2: all deleted
    assert result["skipped"] == {"hypothesis session without reference": 1, "reference session without hypothesis": 1}
    with pytest.raises(IltInputError, match="none of its 1 session"):
        score_sessions(tmp_path / "r.json", _write(tmp_path / "h2.json", hyp[1:]), tmp_path / "o")
    with pytest.raises(IltInputError, match="need a 'language'"):
        score_sessions(_write(tmp_path / "r2.json", [{k: v for k, v in ref[0].items() if k != "language"}]),
                       tmp_path / "h.json", tmp_path / "o")


# ---------------------------------------------------------------- diarizers


def test_rttm_diarizer_and_unknown_recordings(tmp_path):
    [session] = _session(tmp_path, [(0.5, 2.0, "A", "hi")], duration=3.0)
    rttm = tmp_path / "sys.rttm"
    rttm.write_text("SPEAKER conv1 1 0.40 1.70 <NA> <NA> spk7 <NA> <NA>\n")
    diarizer = create("diarizer", "rttm", files=[str(rttm)])
    assert isinstance(diarizer, Diarizer)
    diarizer.check_sessions({"conv1"})
    assert diarizer.diarize(session) == [Turn(0.4, 2.1, "spk7")]
    rttm.write_text("SPEAKER conv1 1 0.40 1.70 <NA> <NA> spk7 <NA> <NA>\n"
                    "SPEAKER elsewhere-9 1 0.0 1.0 <NA> <NA> spk0 <NA> <NA>\n")
    with pytest.raises(IltInputError, match=r"sys.rttm: 1 recording\(s\) of the RTTM are not sessions "
                                            r"\(e.g. 'elsewhere-9'; sessions e.g. 'conv1'\)"):
        create("diarizer", "rttm", files=str(rttm)).check_sessions({"conv1"})
    # through the command: one line, exit status 1, no traceback
    manifest = tmp_path / "sessions.jsonl.gz"
    _session(tmp_path, [(0.5, 2.0, "A", "hi")], duration=3.0).to_file(manifest)
    res = CliRunner().invoke(cli, ["diarize", "--sessions", str(manifest), "--diarizer",
                                   f"{{name: rttm, files: [{rttm}]}}", "--out", str(tmp_path / "d")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "Error:" in res.output and "not sessions" in res.output and len(res.output.strip().splitlines()) == 1


def test_pyannote_diarizer_errors_and_stand_in_pipeline(tmp_path, monkeypatch):
    from pyannote.core import Annotation, Segment

    with pytest.raises(Exception, match="pipeline_dir"):
        create("diarizer", "pyannote")
    with pytest.raises(IltInputError, match="no pyannote pipeline here"):
        create("diarizer", "pyannote", pipeline_dir=str(tmp_path / "missing"))
    (tmp_path / "pipe").mkdir()
    (tmp_path / "pipe" / "config.yaml").write_text("pipeline: {name: x}\n")
    monkeypatch.setitem(sys.modules, "pyannote.audio", None)  # not installed
    with pytest.raises(IltInputError, match="pyannote.audio is not installed"):
        create("diarizer", "pyannote", pipeline_dir=str(tmp_path / "pipe"))

    calls = {}

    class StandIn:  # what Pipeline.from_pretrained returns: called with the in-memory waveform
        def __call__(self, audio, **options):
            calls["shape"], calls["rate"], calls["options"] = tuple(audio["waveform"].shape), \
                audio["sample_rate"], options
            annotation = Annotation()
            annotation[Segment(0.5, 1.5)] = "SPEAKER_01"
            annotation[Segment(2.0, 2.8)] = "SPEAKER_00"
            return types.SimpleNamespace(speaker_diarization=annotation)  # pyannote.audio 4 output

    fake = types.ModuleType("pyannote.audio")
    fake.Pipeline = types.SimpleNamespace(from_pretrained=lambda path: calls.update(path=path) or StandIn())
    monkeypatch.setitem(sys.modules, "pyannote.audio", fake)
    diarizer = create("diarizer", "pyannote", pipeline_dir=str(tmp_path / "pipe"), num_speakers=2, device="")
    [session] = _session(tmp_path, [], duration=3.0)
    assert diarizer.diarize(session) == [Turn(0.5, 1.5, "SPEAKER_01"), Turn(2.0, 2.8, "SPEAKER_00")]
    assert calls == {"path": str(tmp_path / "pipe" / "config.yaml"), "shape": (1, 48000), "rate": 16000,
                     "options": {"num_speakers": 2}}


def _two_voice_conversation(tmp_path):
    """A real two-voice conversation: espeak-ng male and female voices taking turns, 0.4-0.7 s pauses."""
    a = espeak_cuts(tmp_path / "a", ["the weather is lovely this morning", "we could walk to the river later",
                                     "i will bring some bread and cheese"], voice="en-us+m3", prefix="a")
    b = espeak_cuts(tmp_path / "b", ["that sounds like a wonderful plan", "shall we invite your brother too",
                                     "he would enjoy a long walk outside"], voice="en-us+f3", prefix="b")
    pieces, turns, t = [], [], 0.0
    for n, (ca, cb) in enumerate(zip(a, b)):
        for spk, cut in (("A", ca), ("B", cb)):
            gap = np.zeros(int(16000 * (0.4 + 0.1 * n)), dtype=np.float32)
            audio = cut.load_audio()[0]
            loud = np.flatnonzero(np.abs(audio) > 0.01)  # espeak's silent head and tail are no speech
            audio = audio[max(0, loud[0] - 480): loud[-1] + 480]
            pieces += [gap, audio]
            t += len(gap) / 16000
            turns.append((round(t, 3), round(t + len(audio) / 16000, 3), spk, cut.supervisions[0].text))
            t += len(audio) / 16000
    pieces.append(np.zeros(8000, dtype=np.float32))
    audio = np.concatenate(pieces) + 3e-4 * np.random.default_rng(0).standard_normal(sum(map(len, pieces)))
    return _session(tmp_path, turns, audio=audio.astype(np.float32))


@pytest.mark.skipif(not espeak_available(), reason="needs espeak-ng and sox")
def test_offline_diarizer_on_two_espeak_voices(tmp_path):
    from ilt.track2.transcribe import _der_components

    sessions = _two_voice_conversation(tmp_path)
    [session] = sessions
    ref = reference_segments(sessions)
    ders = {}
    for vad in ("webrtc", "energy"):
        turns = create("diarizer", "offline", num_speakers=2, vad=vad).diarize(session)
        assert {t.speaker for t in turns} == {"spk0", "spk1"}
        hyp = [{"session_id": session.id, "speaker": t.speaker, "start_time": t.start, "end_time": t.end}
               for t in turns]
        c = _der_components(ref, hyp, collar=0.0)[session.id]
        ders[vad] = 100 * (c["confusion"] + c["missed detection"] + c["false alarm"]) / c["total"]
    print(f"offline diarizer DER on a {session.duration:.1f} s two-voice espeak conversation: "
          + ", ".join(f"{vad} VAD {der:.2f}%" for vad, der in ders.items()))
    assert all(der < 10.0 for der in ders.values()), ders
    # without num_speakers, the distance threshold finds the two voices too
    turns = create("diarizer", "offline").diarize(session)
    assert len({t.speaker for t in turns}) == 2


# ---------------------------------------------------------------- segments and transcription


def test_speaker_segments_split_long_turns_evenly(tmp_path):
    from ilt.track2.transcribe import oracle_turns, speaker_segments

    sessions = _session(tmp_path, [(1.0, 71.0, "A", "long")], duration=75.0)
    [session] = sessions
    segments = list(speaker_segments(sessions, {"conv1": [Turn(1.0, 71.0, "spk0"), Turn(72.0, 74.5, "spk1")]}))
    assert [(c.id, round(c.start, 3), round(c.duration, 3)) for c in segments] == [
        ("conv1-spk0-00001000-00024333", 1.0, 23.333), ("conv1-spk0-00024333-00047667", 24.333, 23.334),
        ("conv1-spk0-00047667-00071000", 47.667, 23.333), ("conv1-spk1-00072000-00074500", 72.0, 2.5)]
    sup = segments[3].supervisions[0]
    assert (sup.language, sup.speaker, sup.custom) == ("en", "spk1", {"session": "conv1", "speaker": "spk1",
                                                                      "accent": "American"})
    full = session.load_audio()[0]
    assert np.allclose(segments[3].load_audio()[0], full[72 * 16000: int(74.5 * 16000)])
    assert oracle_turns(sessions) == {"conv1": [Turn(1.0, 71.0, "conv1-A")]}  # --oracle: the reference turns


def test_transcribe_sessions_and_score_with_tiny_whisper(tmp_path, monkeypatch):
    from ilt.testing.dummies import tiny_whisper_dir

    model = tiny_whisper_dir(tmp_path / "model", layers=1)
    manifest = tmp_path / "sessions.jsonl.gz"
    _session(tmp_path, [(0.2, 1.4, "A", "hello there"), (1.6, 2.9, "B", "general kenobi")],
             duration=3.0).to_file(manifest)
    rttm = tmp_path / "ref.rttm"
    rttm.write_text("SPEAKER conv1 1 0.2 1.2 <NA> <NA> A <NA> <NA>\nSPEAKER conv1 1 1.6 1.3 <NA> <NA> B <NA> <NA>\n")
    args = ["transcribe-sessions", "--model", str(model), "--sessions", str(manifest), "--rttm", str(rttm),
            "--out", str(tmp_path / "out"), "-o", "max_new_tokens=4", "-o", "beam_size.default=1", "-o", "fallback_temperatures=[]"]
    res = CliRunner().invoke(cli, [a for a in args if a not in ("--rttm", str(rttm))])
    assert res.exit_code == 2 and "either --rttm FILE or --oracle" in res.output  # a usage error
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    hyp = json.loads((tmp_path / "out" / "hyp.seglst.json").read_text())
    assert [(h["speaker"], h["start_time"], h["end_time"]) for h in hyp] == [("A", 0.2, 1.4), ("B", 1.6, 2.9)]
    assert len((tmp_path / "out" / "hyp.stm").read_text().splitlines()) == 2
    scores = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert scores["rows"][-1]["ref_units"] == 4 and scores["rows"][-1]["der"] == pytest.approx(0.0)  # oracle turns
    # a re-run reuses the finished decode
    import ilt.asr.decode

    monkeypatch.setattr(ilt.asr.decode, "decode_files", lambda *a, **k: pytest.fail("decoded again"))
    assert CliRunner().invoke(cli, args).exit_code == 0


# ---------------------------------------------------------------- untrusted input (docs/security.md)

BAD_IDS = ["../x", "/abs/x", "a\x00b", "a\nb", "x" * 300]


def _manifest_with_id(tmp_path, session_id):
    """A session manifest whose one session has the ID ``session_id`` (written as JSON, as anyone could)."""
    import gzip

    [cut] = _session(tmp_path, [(0.5, 2.0, "A", "hi")], duration=3.0)
    data = cut.to_dict()
    data["id"] = session_id
    path = tmp_path / "evil_sessions.jsonl.gz"
    path.write_bytes(gzip.compress((json.dumps(data) + "\n").encode()))
    return path


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("session_id", BAD_IDS)
def test_a_session_id_that_is_a_path_is_refused(tmp_path, session_id):
    from reliability_table import check

    manifest = _manifest_with_id(tmp_path, session_id)
    rttm = tmp_path / "sys.rttm"
    rttm.write_text("SPEAKER conv1 1 0.40 1.70 <NA> <NA> spk7 <NA> <NA>\n")
    before = _tree(tmp_path)
    res = CliRunner().invoke(cli, ["diarize", "--sessions", str(manifest), "--diarizer", "offline",
                                   "--out", str(tmp_path / "d")])
    shown = session_id[:12] + ("…" if len(session_id) > 12 else "")
    check("bad input", f"session ID {shown!r} (diarize: per_session/<id>.rttm)", "exit 1, one Error: line naming "
          "the manifest and the session ID; nothing written", f"exit {res.exit_code}: "
          f"{res.output.strip().replace(str(tmp_path), '…')[:160]}",
          res.exit_code == 1 and len(res.output.strip().splitlines()) == 1 and "session ID" in res.output
          and "cannot be part of a file name" in res.output and _tree(tmp_path) == before)


@pytest.mark.parametrize("speaker", ["../x", "a/b", "x" * 300])
def test_a_speaker_label_that_is_a_path_is_refused(tmp_path, speaker):
    from ilt.track2.transcribe import speaker_segments

    sessions = _session(tmp_path, [(0.5, 2.0, "A", "hi")], duration=3.0)
    with pytest.raises(IltInputError, match="sys.rttm: speaker label .* cannot be part of a file name"):
        speaker_segments(sessions, {"conv1": [Turn(0.5, 2.0, speaker)]}, where="sys.rttm")


def test_per_session_turns_are_reused_only_when_made_from_the_same_session_and_diarizer(tmp_path):
    from ilt.track2.transcribe import diarize_sessions

    manifest = tmp_path / "sessions.jsonl.gz"
    _session(tmp_path, [(0.5, 2.0, "A", "hi")], duration=3.0).to_file(manifest)
    rttm = tmp_path / "sys.rttm"
    rttm.write_text("SPEAKER conv1 1 0.40 1.70 <NA> <NA> spk7 <NA> <NA>\n")
    spec = {"name": "rttm", "options": {"files": [str(rttm)]}}
    from ilt.config import ComponentSpec

    diarizer = ComponentSpec(spec["name"], spec["options"])
    out = tmp_path / "d"
    (out / "per_session").mkdir(parents=True)
    (out / "per_session" / "conv1.rttm").write_text("SPEAKER conv1 1 0.0 3.0 <NA> <NA> planted <NA> <NA>\n")
    assert diarize_sessions(manifest, diarizer, out) == {"conv1": [Turn(0.4, 2.1, "spk7")]}
    [kept] = [p for p in (out / "per_session").glob("conv1.*.rttm")]
    # a file keyed by this session and diarizer is reused ...
    kept.write_text("SPEAKER conv1 1 0.0 1.0 <NA> <NA> again <NA> <NA>\n")
    assert diarize_sessions(manifest, diarizer, out) == {"conv1": [Turn(0.0, 1.0, "again")]}
    # ... but not once the session is another recording (same ID, other audio)
    _session(tmp_path, [(0.5, 2.0, "A", "hi")], duration=4.0).to_file(manifest)
    assert diarize_sessions(manifest, diarizer, out) == {"conv1": [Turn(0.4, 2.1, "spk7")]}
    # nor a file that names another session
    [kept] = [p for p in (out / "per_session").glob("conv1.*.rttm") if p.read_text().count("spk7")]
    kept.write_text("SPEAKER conv9 1 0.0 1.0 <NA> <NA> other <NA> <NA>\n")
    assert diarize_sessions(manifest, diarizer, out) == {"conv1": [Turn(0.4, 2.1, "spk7")]}


def test_a_decode_is_reused_only_for_the_same_model_config_and_segments(tmp_path, monkeypatch):
    from reliability_table import check

    import ilt.asr.decode
    from ilt.testing.dummies import tiny_whisper_dir
    from ilt.track2.transcribe import DECODE_FINGERPRINT

    model_a = tiny_whisper_dir(tmp_path / "A", layers=1, seed=0)
    model_b = tiny_whisper_dir(tmp_path / "B", layers=1, seed=1)
    manifest = tmp_path / "sessions.jsonl.gz"
    _session(tmp_path, [(0.2, 1.4, "A", "hello there"), (1.6, 2.9, "B", "general kenobi")],
             duration=3.0).to_file(manifest)
    real = ilt.asr.decode.decode_files
    decoded = []
    monkeypatch.setattr(ilt.asr.decode, "decode_files", lambda *a, **k: decoded.append(Path(a[0]).name)
                        or real(*a, **k))

    def run(model, *options):
        args = ["transcribe-sessions", "--model", str(model), "--sessions", str(manifest), "--oracle",
                "--out", str(tmp_path / "out"), "-o", "max_new_tokens=2", "-o", "beam_size.default=1",
                "-o", "fallback_temperatures=[]", *options]
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, res.output

    run(model_a)
    run(model_a)  # the same: reused
    run(model_b)  # another model, same IDs: decoded again
    run(model_b, "-o", "max_new_tokens=3")  # another config: decoded again
    fingerprint = json.loads((tmp_path / "out" / DECODE_FINGERPRINT).read_text())
    check("bad input", "transcribe-sessions rerun with another model or decoding config (same segment IDs)",
          "decoded again: decode/ is reused only under the same fingerprint (model weights, adapter, config, "
          "segments)", f"decodes per run: {decoded} (runs: A, A, B, B with max_new_tokens=3)",
          decoded == ["A", "B", "B"] and set(fingerprint) == {"model", "adapter", "decode_config", "segments"})


@pytest.mark.skipif(not espeak_available(), reason="needs espeak-ng and sox")
def test_the_offline_diarizer_reads_a_long_session_block_by_block(tmp_path, monkeypatch):
    import ilt.data.audio
    import ilt.plugins.diarizers as diarizers
    from ilt.track2.transcribe import _der_components

    sessions = _two_voice_conversation(tmp_path)
    [session] = sessions
    monkeypatch.setattr(ilt.data.audio, "LONG_AUDIO_SECONDS", 3.0)  # 3 s blocks stand in for 10 minutes
    monkeypatch.setattr(diarizers, "_session_audio", lambda s: pytest.fail("the whole session was loaded"))
    reads = []
    real = ilt.data.audio.load_window
    monkeypatch.setattr(ilt.data.audio, "load_window", lambda *a: reads.append(a[3]) or real(*a))
    turns = create("diarizer", "offline", num_speakers=2, vad="webrtc").diarize(session)
    hyp = [{"session_id": session.id, "speaker": t.speaker, "start_time": t.start, "end_time": t.end} for t in turns]
    c = _der_components(reference_segments(sessions), hyp, collar=0.0)[session.id]
    der = 100 * (c["confusion"] + c["missed detection"] + c["false alarm"]) / c["total"]
    print(f"offline diarizer, {session.duration:.1f} s read in 3 s blocks: DER {der:.2f}%")
    assert {t.speaker for t in turns} == {"spk0", "spk1"} and der < 10.0
    assert reads and max(reads) <= 3.0 + 1.5  # a block, plus one embedding window of the next


def test_pyannote_reads_a_long_whole_file_session_itself(tmp_path, monkeypatch):
    import ilt.data.audio
    import ilt.plugins.diarizers as diarizers

    [session] = _session(tmp_path, [], duration=3.0)
    monkeypatch.setattr(ilt.data.audio, "LONG_AUDIO_SECONDS", 2.0)
    seen = {}
    diarizer = object.__new__(diarizers.PyannoteDiarizer)
    diarizer.options = {}

    def pipeline(audio, **options):
        seen.update(audio)
        from pyannote.core import Annotation
        return Annotation()

    diarizer.pipeline = pipeline
    assert diarizer.diarize(session) == []
    assert seen == {"uri": "conv1", "audio": str(tmp_path / "conv1.wav")}  # no waveform in memory
