"""Audio loading and the bad-audio checks (ilt.data.audio) on real small WAV files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from lhotse import Recording

from ilt.data.audio import (
    EMPTY,
    NON_FINITE,
    SILENT,
    TOO_LONG,
    UNREADABLE,
    AudioProblem,
    check_audio,
    error_detail,
    load_checked,
    open_recording,
)

SR = 16000


def tone(seconds: float, rate: int = SR, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def cut_of(path: Path, samples: np.ndarray, rate: int = SR, subtype: str = "PCM_16") -> object:
    sf.write(path, samples, rate, subtype=subtype)
    return Recording.from_file(path, recording_id=path.stem).to_cut()


def test_good_wav_loads_as_mono_float32(tmp_path):
    x = tone(1.0)
    audio = load_checked(cut_of(tmp_path / "good.wav", x), SR)
    assert isinstance(audio, np.ndarray)
    assert audio.dtype == np.float32 and audio.shape == (SR,)
    assert np.abs(audio - x).max() < 1e-3  # int16 quantisation only


def test_stereo_channels_are_averaged(tmp_path):
    x = tone(0.5)
    audio = load_checked(cut_of(tmp_path / "stereo.wav", np.stack([x, 0.5 * x], axis=1), subtype="FLOAT"), SR)
    assert audio.shape == (SR // 2,)
    np.testing.assert_allclose(audio, 0.75 * x, atol=1e-6)


def test_8khz_is_resampled_to_16khz(tmp_path):
    audio = load_checked(cut_of(tmp_path / "8k.wav", tone(0.5, rate=8000), rate=8000), SR)
    assert isinstance(audio, np.ndarray) and audio.shape == (SR // 2,)
    spectrum = np.abs(np.fft.rfft(audio))
    peak_hz = np.argmax(spectrum) * SR / audio.size
    assert abs(peak_hz - 440.0) <= 4.0


def test_empty_wav(tmp_path):
    problem = load_checked(cut_of(tmp_path / "empty.wav", np.zeros(0, np.float32)), SR)
    assert problem == AudioProblem(EMPTY) and str(problem) == "empty audio"
    assert open_recording(tmp_path / "empty.wav", "empty") == AudioProblem(EMPTY)


def test_garbage_file_is_unreadable(tmp_path):
    cut = cut_of(tmp_path / "bad.wav", tone(0.5))
    (tmp_path / "bad.wav").write_bytes(b"this is not a wav file" * 10)
    problem = load_checked(cut, SR)
    assert isinstance(problem, AudioProblem) and problem.reason == UNREADABLE == "unreadable audio"
    assert str(problem).startswith("unreadable audio: ") and problem.detail
    opened = open_recording(tmp_path / "bad.wav", "bad")
    assert isinstance(opened, AudioProblem) and opened.reason == UNREADABLE
    assert "LibsndfileError" in opened.detail and "\n" not in opened.detail


def test_truncated_file_is_unreadable(tmp_path):
    path = tmp_path / "trunc.wav"
    cut = cut_of(path, tone(1.0))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])  # the manifest still says 1 s
    problem = load_checked(cut, SR)
    assert isinstance(problem, AudioProblem) and problem.reason == UNREADABLE
    assert len(problem.detail) <= 200 and "\n" not in problem.detail


def test_missing_file_is_unreadable(tmp_path):
    cut = cut_of(tmp_path / "gone.wav", tone(0.2))
    (tmp_path / "gone.wav").unlink()
    assert load_checked(cut, SR).reason == UNREADABLE
    assert open_recording(tmp_path / "gone.wav", "gone").reason == UNREADABLE


def test_non_finite_float_wav(tmp_path):
    x = tone(0.5)
    x[100] = np.nan
    cut = cut_of(tmp_path / "nan.wav", x, subtype="FLOAT")
    assert load_checked(cut, SR) == AudioProblem(NON_FINITE)
    assert load_checked(cut, 8000) == AudioProblem(NON_FINITE)  # after resampling too
    y = tone(0.5)
    y[7] = np.inf
    assert load_checked(cut_of(tmp_path / "inf.wav", y, subtype="FLOAT"), SR).reason == "non-finite audio"


def test_silent_audio_only_when_asked(tmp_path):
    cut = cut_of(tmp_path / "silent.wav", np.zeros(SR, np.float32))
    audio = load_checked(cut, SR)  # decoding: silence is decoded
    assert isinstance(audio, np.ndarray) and audio.shape == (SR,) and not audio.any()
    problem = load_checked(cut, SR, reject_silent=True)
    assert problem == AudioProblem(SILENT) and str(problem) == "silent audio (all zeros)"


def test_too_long_only_with_a_window(tmp_path):
    cut = cut_of(tmp_path / "long.wav", tone(2.0))
    assert isinstance(load_checked(cut, SR), np.ndarray)  # decoding chunks long audio
    problem = load_checked(cut, SR, max_samples=SR)
    assert problem.reason == TOO_LONG
    assert str(problem) == "audio too long: 2.00 s, the model window is 1 s"
    assert isinstance(load_checked(cut, SR, max_samples=2 * SR), np.ndarray)  # exactly the window fits


def test_check_order_and_passes():
    assert check_audio(np.zeros(0, np.float32), SR, reject_silent=True, max_samples=1).reason == EMPTY
    nan_long = np.full(10, np.nan, np.float32)
    assert check_audio(nan_long, SR, reject_silent=True, max_samples=1).reason == NON_FINITE
    assert check_audio(np.zeros(10, np.float32), SR, reject_silent=True, max_samples=1).reason == SILENT
    assert check_audio(np.ones(10, np.float32), SR, reject_silent=True, max_samples=10) is None


def test_open_recording_good_file(tmp_path):
    sf.write(tmp_path / "ok.wav", tone(0.25), SR, subtype="PCM_16")
    rec = open_recording(tmp_path / "ok.wav", "rec-1")
    assert isinstance(rec, Recording)
    assert rec.id == "rec-1" and rec.num_samples == SR // 4 and rec.sampling_rate == SR


def test_error_detail_is_one_short_line():
    assert error_detail(OSError("first line\nsecond line")) == "OSError: first line"
    assert error_detail(ValueError("")) == "ValueError"
    assert len(error_detail(RuntimeError("x" * 500))) == 200


# --------------------------------------------------------------------------- long audio in windows


def test_windows_cover_the_cut_and_match_the_whole_load(tmp_path):
    from ilt.data.audio import (
        AudioWindow,
        iter_windows,
        load_window,
        load_windows_checked,
        window_bounds,
    )

    x = tone(7.3)
    cut = cut_of(tmp_path / "long.wav", x)
    bounds = window_bounds(7.3, 2.0)
    assert len(bounds) == 4 and abs(sum(d for _, d in bounds) - 7.3) < 1e-9
    pieces = list(iter_windows(cut, SR, 2.0))
    whole = load_checked(cut, SR)
    assert abs(sum(p.size for p in pieces) - whole.size) <= len(pieces)
    np.testing.assert_allclose(np.concatenate(pieces)[:1000], whole[:1000], atol=1e-6)
    np.testing.assert_allclose(load_window(cut, SR, 2.0, 1.0), whole[2 * SR:3 * SR], atol=1e-6)
    windows, seconds = load_windows_checked(cut, SR, 2.0)
    assert all(isinstance(w, AudioWindow) for w in windows) and abs(seconds - 7.3) < 1e-3
    assert [w.shape[-1] for w in windows] == [p.size for p in pieces]
    np.testing.assert_array_equal(np.asarray(windows[1], dtype=np.float32), pieces[1])


def test_a_long_cut_with_bad_samples_is_a_problem_found_window_by_window(tmp_path):
    from ilt.data.audio import load_windows_checked

    x = tone(5.0)
    x[3 * SR + 5] = np.nan
    cut = cut_of(tmp_path / "nan.wav", x, subtype="FLOAT")
    assert load_windows_checked(cut, SR, 2.0) == AudioProblem(NON_FINITE)
    (tmp_path / "gone.wav").unlink(missing_ok=True)
    gone = cut_of(tmp_path / "gone.wav", tone(1.0))
    (tmp_path / "gone.wav").unlink()
    problem = load_windows_checked(gone, SR, 2.0)
    assert isinstance(problem, AudioProblem) and problem.reason == UNREADABLE


def test_windows_refuse_a_command_source(tmp_path, monkeypatch):
    import pytest
    from lhotse import AudioSource

    from ilt.data.audio import iter_windows
    from ilt.errors import IltInputError

    monkeypatch.delenv("ILT_ALLOW_AUDIO_COMMANDS", raising=False)
    cut = cut_of(tmp_path / "a.wav", tone(1.0))
    marker = tmp_path / "ran"
    cut.recording.sources[0] = AudioSource(type="command", channels=[0],
                                           source=f"touch {marker}; cat {tmp_path / 'a.wav'}")
    with pytest.raises(IltInputError, match="type 'command' is refused"):
        next(iter_windows(cut, SR, 0.5))
    assert not marker.exists()


_TWO_HOURS = r'''
import json, resource, sys, time
from pathlib import Path
import numpy as np, soundfile as sf
from lhotse import Recording
from ilt.asr.decode import Decoder
from ilt.config import DecodeConfig, from_dict
from ilt.core.registry import create
from ilt.testing.dummies import tiny_whisper_dir

tmp, windows = Path(sys.argv[1]), int(sys.argv[2])
audio = tmp / "two_hours.flac"
rate, seconds = 16000, 2 * 3600
with sf.SoundFile(audio, "w", rate, 1, subtype="PCM_16") as fh:  # written block by block
    t = np.arange(rate * 60) / rate
    block = (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    for _ in range(seconds // 60):
        fh.write(block)
del t, block
cut = Recording.from_file(audio, recording_id="two-hours").to_cut()
model_dir = tiny_whisper_dir(tmp / "M0", max_source_positions=1500)  # a 30 s window
backbone = create("backbone", "whisper", model_dir=str(model_dir))
config = from_dict(DecodeConfig, {"beam_size": {"default": 1}, "max_new_tokens": 3, "batch_size": 2,
                                  "fallback_temperatures": []})
decoder = Decoder(backbone, None, config)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
started = time.monotonic()
[(_, chunks, duration)] = decoder.load_batch([cut])
texts = decoder.decode(list(chunks[:windows]), "en")
detected = decoder.detect_languages([cut])  # language ID: the first window only
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"duration": duration, "chunks": len(chunks), "decoded": len(texts), "detected": len(detected),
                  "seconds":
                  time.monotonic() - started, "rss_before_mb": before / 1024, "peak_rss_mb": peak / 1024,
                  "flac_mb": audio.stat().st_size / 1e6}))
'''


def test_a_two_hour_recording_decodes_in_bounded_memory(tmp_path):
    """A 2-hour 16 kHz FLAC: read window by window for decoding (all 240
    windows read once to check them, then the first windows decoded by a tiny
    random Whisper, greedy, 3 tokens, and its language detected from its first
    window); the process's peak resident memory is
    measured and must stay far below what loading the recording whole as
    float32 takes (2 h x 16 kHz x 4 bytes = 460.8 MB)."""
    import json
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _TWO_HOURS, str(tmp_path), "4"], capture_output=True, text=True,
                          cwd=Path(__file__).parent.parent, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    whole_mb = 2 * 3600 * SR * 4 / 1e6
    print(f"\n2-hour FLAC ({got['flac_mb']:.1f} MB): {got['chunks']} windows, {got['decoded']} decoded in "
          f"{got['seconds']:.1f} s; peak RSS {got['peak_rss_mb']:.0f} MB (before loading {got['rss_before_mb']:.0f} "
          f"MB); whole-file float32 would be {whole_mb:.0f} MB")
    assert got["chunks"] == 240 and got["decoded"] == 4 and got["detected"] == 1 and abs(got["duration"] - 7200) < 1
    assert got["peak_rss_mb"] - got["rss_before_mb"] < 150, got


def test_language_id_reads_only_the_first_window_of_a_long_cut(tmp_path, monkeypatch):
    import ilt.data.audio
    from ilt.data.audio import load_checked_head, window_bounds

    cut = cut_of(tmp_path / "long.wav", tone(7.0))
    assert load_checked_head(cut, SR, 2.0).size == 7 * SR  # up to LONG_AUDIO_SECONDS: the whole cut, as before
    monkeypatch.setattr(ilt.data.audio, "LONG_AUDIO_SECONDS", 3.0)
    head = load_checked_head(cut, SR, 2.0)
    assert head.size == round(window_bounds(7.0, 2.0)[0][1] * SR) == 28000
    np.testing.assert_allclose(head, tone(7.0)[:28000], atol=1e-4)
