"""Scoring (ilt.asr.score): counts against jiwer, meeteval and NIST sclite; files; CLI."""

import json
import os
import re
import shutil
import subprocess

import jiwer
import pytest
from click.testing import CliRunner

from ilt.asr.score import load_hypotheses, score, score_files
from ilt.data.text import normalize, tokens_for_scoring
from ilt.errors import IltInputError

EN1 = "English-American-0517_001-A-000123-000456"
EN2 = "English-American-0517_001-B-000500-000900"
EN3 = "English-British-0042_003-A-001000-001500"
EN_EMPTY = "English-American-0517_001-A-002000-002100"
FR1 = "French-0101_002-A-000000-000300"
JA1 = "Japanese-0007_001-A-000000-000200"
JA2 = "Japanese-0007_001-B-000300-000600"
KO1 = "Korean-0003_004-A-000100-000400"
TH1 = "Thai-0011_001-A-000000-000150"
TH2 = "Thai-0011_001-B-000200-000350"

REFS = {
    EN1: ("en", "Hello, how are you doing today?", "American"),
    EN2: ("en", "I bought a new iPhone last week.", "American"),
    EN3: ("en", "It's a well-known fact, isn't it?", "British"),
    EN_EMPTY: ("en", "", "American"),  # eval-style blank transcript: skipped, counted
    FR1: ("fr", "Bonjour, comment ça va ?", None),
    JA1: ("ja", "今日はいい天気ですね。", None),
    JA2: ("ja", "iPhoneを買いました。", None),
    KO1: ("ko", "안녕하세요, 반갑습니다!", None),
    TH1: ("th", "สวัสดีครับ", None),
    TH2: ("th", "ขอบคุณมาก", None),  # no hypothesis: all deletions, counted
}
HYPS = {
    EN1: "hello how are you today",
    EN2: "I bought the new iphone last week and",
    EN3: "its a well known fact isn't it",
    EN_EMPTY: "uh",
    FR1: "bonjour comment sa va",
    JA1: "今日はいい天気です",
    JA2: "アイフォンを買いました",
    KO1: "안녕하세요 반값습니다",
    TH1: "สวัสดีค่ะ",
    "Stray-0001_001-A-000000-000100": "not in the references",  # skipped, counted
}
GROUPS = {"en": [EN1, EN2, EN3], "fr": [FR1], "ja": [JA1, JA2], "ko": [KO1], "th": [TH1, TH2]}


def _units(utt_id, side):
    lang = REFS[utt_id][0]
    text = REFS[utt_id][1] if side == "ref" else HYPS.get(utt_id, "")
    return " ".join(tokens_for_scoring(text, lang))


@pytest.fixture(scope="module")
def result():
    return score(REFS, HYPS)


# --------------------------------------------------------------------------- pure function


def test_rows_counts_and_skips(result):
    assert [r.group for r in result.rows] == ["en", "fr", "ja", "ko", "th"]
    assert [r.unit for r in result.rows] == ["word", "word", "char", "char", "char"]
    assert [r.utts for r in result.rows] == [3, 1, 2, 1, 2]
    assert result.counts == {"scored": 9, "missing_hypothesis": 1, "empty_reference": 1,
                             "hypothesis_without_reference": 1}
    assert result.skipped == {"empty_reference": [EN_EMPTY],
                              "hypothesis_without_reference": ["Stray-0001_001-A-000000-000100"]}
    th2 = next(u for u in result.utterances if u.id == TH2)
    assert th2.missing_hyp and th2.dele == th2.ref_units == 9 and th2.hits == th2.sub == th2.ins == 0
    # Checked by hand: "doing" deleted; a->the and "and" inserted; it's->its, well-known->well
    # and "known" inserted.
    en = result.row("en")
    assert (en.sub, en.dele, en.ins, en.ref_units) == (3, 1, 2, 19)
    assert result.row("ko").ref_units == 10 and result.row("ko").errors == 1  # 값 for 갑
    assert result.overall.unit == "mixed"


def test_rows_equal_jiwer_on_the_same_normalised_input(result):
    for group, ids in GROUPS.items():
        row = result.row(group)
        refs = [_units(i, "ref") for i in ids]
        hyps = [_units(i, "hyp") for i in ids]
        assert row.errors / row.ref_units == jiwer.wer(refs, hyps), group
        out = jiwer.process_words(refs, hyps)
        assert (row.sub, row.dele, row.ins, row.hits) == (
            out.substitutions, out.deletions, out.insertions, out.hits), group
    # Pure-script CER rows also equal jiwer's own character error rate on the
    # normalised text with spaces removed (JA2 holds a Latin word, left out).
    for group, ids in {"ja": [JA1], "ko": [KO1], "th": [TH1, TH2]}.items():
        sub = score({i: REFS[i] for i in ids}, {i: HYPS[i] for i in ids if i in HYPS})
        nospace = [("".join(normalize(REFS[i][1], group).split()),
                    "".join(normalize(HYPS.get(i, ""), group).split())) for i in ids]
        expected = jiwer.cer([r for r, _ in nospace], [h for _, h in nospace])
        assert sub.overall.errors / sub.overall.ref_units == expected, group
    # ...and the whole set pooled is jiwer's WER over the CER-spaced units.
    ids = [i for ids in GROUPS.values() for i in ids]
    assert result.overall.errors / result.overall.ref_units == jiwer.wer(
        [_units(i, "ref") for i in ids], [_units(i, "hyp") for i in ids])


def test_overall_is_pooled_not_the_mean_of_rows():
    refs = {"en1": ("en", "one two three four five six seven eight nine ten", None),
            "en2": ("en", "eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty",
                    None),
            "ja1": ("ja", "日本", None)}
    hyps = {"en1": "one two three four five six seven eight nine tin",
            "en2": "eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen plenty",
            "ja1": "日"}
    res = score(refs, hyps)
    assert res.row("en").error_rate == 10.0
    assert res.row("ja").error_rate == 50.0
    assert res.overall.errors == 3 and res.overall.ref_units == 22
    assert res.overall.error_rate == 100.0 * 3 / 22  # 13.636..., not (10 + 50) / 2 = 30
    assert res.overall.error_rate != pytest.approx(30.0)


def test_equal_to_meeteval_mixed_scripts(result):
    from meeteval.io import SegLST
    from meeteval.wer.wer.siso import siso_word_error_rate_multifile

    def seglst(side, ids):
        return SegLST([{"session_id": i, "words": _units(i, side)} for i in ids])

    total = None
    for group, ids in GROUPS.items():
        per_utt = siso_word_error_rate_multifile(seglst("ref", ids), seglst("hyp", ids))
        er = sum(per_utt.values())
        row = result.row(group)
        assert (row.errors, row.ref_units) == (er.errors, er.length), group
        assert row.errors / row.ref_units == er.error_rate, group
        for utt in (u for u in result.utterances if u.group == group):
            assert (utt.errors, utt.ref_units) == (per_utt[utt.id].errors, per_utt[utt.id].length)
        total = er if total is None else total + er
    assert (result.overall.errors, result.overall.ref_units) == (total.errors, total.length) == (26, 69)
    # The S/D/I split of this set agrees too; in general tied alignments may
    # split differently (kaldialign prefers del+ins, rapidfuzz substitutions).
    assert (result.overall.sub, result.overall.dele, result.overall.ins) == (
        total.substitutions, total.deletions, total.insertions)


def test_group_by_accent():
    res = score(REFS, HYPS, group_by="accent")
    assert [r.group for r in res.rows] == ["en-American", "en-British", "fr", "ja", "ko", "th"]
    assert res.row("en-American").utts == 2 and res.row("en-British").utts == 1
    assert res.overall == score(REFS, HYPS).overall


def test_markdown_and_dict(result):
    md = result.to_markdown()
    assert md.splitlines()[0] == "| language | unit | error % | sub | del | ins | ref units | utts |"
    overall = result.overall
    assert f"| Overall | mixed | {overall.error_rate:.2f} | {overall.sub} | {overall.dele} | {overall.ins} " \
           f"| {overall.ref_units} | 9 |" in md
    assert "1 reference(s) without a hypothesis" in md
    data = json.loads(result.to_json())
    assert data["overall"]["errors"] == 26 and data["overall"]["ref_units"] == 69
    assert [r["group"] for r in data["rows"]] == ["en", "fr", "ja", "ko", "th"]
    assert data["rows"][0]["del"] == result.row("en").dele


def test_bad_arguments():
    with pytest.raises(ValueError, match="group_by"):
        score(REFS, HYPS, group_by="speaker")
    with pytest.raises(IltInputError, match="none of the 1 hypothesis IDs"):
        score(REFS, {"other-id": "x"})
    with pytest.raises(IltInputError, match="no language"):
        score({"u": (None, "some text", None)}, {"u": "some text"})


# --------------------------------------------------------------------------- files


def _write_cuts(path, refs):
    from lhotse import CutSet, MonoCut, SupervisionSegment
    from lhotse.testing.dummies import dummy_recording

    cuts = []
    for n, (cut_id, (lang, text, accent)) in enumerate(refs.items()):
        rec = dummy_recording(n, duration=2.0)
        sup = SupervisionSegment(id=cut_id, recording_id=rec.id, start=0.0, duration=2.0, text=text,
                                 language=lang, speaker=cut_id.rsplit("-", 2)[0],
                                 custom={"accent": accent} if accent else None)
        cuts.append(MonoCut(id=cut_id, start=0.0, duration=2.0, channel=0, recording=rec, supervisions=[sup]))
    CutSet.from_cuts(cuts).to_file(path)
    return path


def _write_jsonl(path, hyps):
    path.write_text("".join(json.dumps({"id": k, "text": v, "lang": "xx"}, ensure_ascii=False) + "\n"
                            for k, v in hyps.items()), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def scored_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("score")
    ref = _write_cuts(tmp / "cuts.jsonl.gz", REFS)
    hyp = _write_jsonl(tmp / "hyp.jsonl", HYPS)
    res = score_files(ref, hyp, tmp / "out")
    return tmp, res


def test_score_files_writes_everything(scored_dir, result):
    tmp, res = scored_dir
    out = tmp / "out"
    assert sorted(p.name for p in out.iterdir()) == ["details.jsonl", "hyp.trn", "ref.trn", "scores.json",
                                                     "scores.md"]
    assert res.rows == result.rows and res.overall == result.overall
    assert (out / "scores.md").read_text(encoding="utf-8") == result.to_markdown()
    data = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    assert data["overall"] == result.overall.to_dict() and data["counts"] == result.counts
    ref_lines = (out / "ref.trn").read_text(encoding="utf-8").splitlines()
    hyp_lines = (out / "hyp.trn").read_text(encoding="utf-8").splitlines()
    assert len(ref_lines) == len(hyp_lines) == 9
    assert ref_lines[0] == f"hello how are you doing today (en-{EN1})"
    assert f"今 日 は い い 天 気 で す ね (ja-{JA1})" in ref_lines
    assert f"(th-{TH2})" in hyp_lines  # missing hypothesis: empty body
    details = [json.loads(line) for line in (out / "details.jsonl").read_text(encoding="utf-8").splitlines()]
    by_id = {d["id"]: d for d in details}
    assert by_id[TH2]["status"] == "missing_hypothesis" and by_id[TH2]["del"] == 9
    assert by_id[EN_EMPTY]["status"] == "empty_reference"
    assert by_id["Stray-0001_001-A-000000-000100"]["status"] == "hypothesis_without_reference"
    assert by_id[KO1]["ref"] == "안 녕 하 세 요 반 갑 습 니 다" and by_id[KO1]["sub"] == 1


def test_trn_round_trip(scored_dir, result):
    """Our hyp.trn read back as hypotheses gives the same table."""
    tmp, _ = scored_dir
    res = score_files(tmp / "cuts.jsonl.gz", tmp / "out" / "hyp.trn", tmp / "out_trn")
    assert res.rows == result.rows and res.overall == result.overall
    assert res.counts["hypothesis_without_reference"] == 0


def _sclite():
    found = shutil.which("sclite")
    if not found and os.access("/usr/lib/sctk/bin/sclite", os.X_OK):  # Debian's sctk keeps it off PATH
        found = "/usr/lib/sctk/bin/sclite"
    return found


_RSUM_ROW = re.compile(r"^\s*\|\s*(\S+)\s*\|\s*(\d+)\s+(\d+)\s*\|\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*\|")


@pytest.mark.skipif(_sclite() is None, reason="NIST sclite not installed")
def test_sclite_on_written_trn_gives_the_same_totals(scored_dir, result):
    tmp, _ = scored_dir
    out = tmp / "out"
    proc = subprocess.run(
        [_sclite(), "-r", str(out / "ref.trn"), "trn", "-h", str(out / "hyp.trn"), "trn",
         "-i", "rm", "-e", "utf-8", "-o", "rsum", "stdout"],
        capture_output=True, text=True, check=True, timeout=30,
    )
    rows = {}
    for line in proc.stdout.splitlines():
        m = _RSUM_ROW.match(line)
        if m:
            spk, snt, wrd, _corr, sub, dele, ins, err, _serr = m.groups()
            rows[spk] = tuple(int(v) for v in (snt, wrd, sub, dele, ins, err))
    assert set(rows) == {"en", "fr", "ja", "ko", "th", "Sum"}, proc.stdout
    for group, (snt, wrd, sub, dele, ins, err) in rows.items():
        ours = result.overall if group == "Sum" else result.row(group)
        assert (snt, wrd, err) == (ours.utts, ours.ref_units, ours.errors), group
        assert (sub, dele, ins) == (ours.sub, ours.dele, ours.ins), group
    assert rows["Sum"] == (9, 69, 8, 12, 6, 26)


@pytest.mark.skipif(_sclite() is None, reason="NIST sclite not installed")
def test_sclite_weighted_alignment_can_count_more_errors(tmp_path):
    """Known, documented divergence: sclite's costs (sub 4, ins/del 3) can prefer
    an alignment with more errors than the minimum the other tools report."""
    refs = {"u1": ("en", "p q r a b", None)}
    hyps = {"u1": "a b x y z"}
    res = score(refs, hyps)
    assert (res.overall.errors, res.overall.sub) == (5, 5)
    ref = _write_cuts(tmp_path / "c.jsonl.gz", refs)
    score_files(ref, _write_jsonl(tmp_path / "h.jsonl", hyps), tmp_path / "out")
    proc = subprocess.run(
        [_sclite(), "-r", str(tmp_path / "out" / "ref.trn"), "trn", "-h", str(tmp_path / "out" / "hyp.trn"), "trn",
         "-i", "rm", "-e", "utf-8", "-o", "rsum", "stdout"],
        capture_output=True, text=True, check=True, timeout=30,
    )
    sums = [m.groups() for m in map(_RSUM_ROW.match, proc.stdout.splitlines()) if m and m[1] == "Sum"]
    assert sums and sums[0][3:8] == ("2", "0", "3", "3", "6")  # corr sub del ins err


# --------------------------------------------------------------------------- bad input


def test_malformed_hypothesis_lines_name_file_and_line(tmp_path):
    cases = {
        "bad.jsonl": ('{"id": "a", "text": "x"}\n{not json\n', r"bad\.jsonl:2: not valid JSON"),
        "notobj.jsonl": ('["a", "x"]\n', r"notobj\.jsonl:1: expected a JSON object"),
        "noid.jsonl": ('\n{"text": "x"}\n', r"noid\.jsonl:2: 'id'"),
        "notext.jsonl": ('{"id": "a"}\n', r"notext\.jsonl:1: 'text' of 'a'"),
        "dup.jsonl": ('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n',
                      r"dup\.jsonl:2: hypothesis ID 'a' already on line 1"),
        "bad.trn": ("hello (a)\nno id here\n", r"bad\.trn:2: expected 'text \(utterance-id\)'"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_text(content, encoding="utf-8")
        with pytest.raises(IltInputError, match=message):
            load_hypotheses(path)
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"id": "a", "text": "x"}\n{"id": "b", "text": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(IltInputError, match=r"latin1\.jsonl:2: not UTF-8"):
        load_hypotheses(latin1)


def test_trn_ids_with_and_without_group_prefix(tmp_path):
    path = tmp_path / "h.trn"
    path.write_text(f"hello (en-{EN1})\nbonjour ({FR1})\n\n日 本 (odd-id)\n", encoding="utf-8")
    assert load_hypotheses(path, REFS) == {EN1: "hello", FR1: "bonjour", "odd-id": "日 本"}


def test_unreadable_or_empty_references(tmp_path):
    hyp = _write_jsonl(tmp_path / "hyp.jsonl", HYPS)
    garbage = tmp_path / "refs.jsonl.gz"
    garbage.write_bytes(b"this is not gzip")
    with pytest.raises(IltInputError, match=r"refs\.jsonl\.gz: cannot read reference cuts"):
        score_files(garbage, hyp, tmp_path / "out")
    blank = _write_cuts(tmp_path / "blank.jsonl.gz", {EN1: ("en", " ?! ", None)})
    with pytest.raises(IltInputError, match=r"blank\.jsonl\.gz: no reference with text"):
        score_files(blank, hyp, tmp_path / "out")
    assert not (tmp_path / "out" / "scores.json").exists()


# --------------------------------------------------------------------------- CLI


def test_cli_score(tmp_path, result):
    from ilt.cli.main import cli

    ref = _write_cuts(tmp_path / "cuts.jsonl.gz", REFS)
    hyp = _write_jsonl(tmp_path / "hyp.jsonl", HYPS)
    out = tmp_path / "exp" / "score"
    run = CliRunner().invoke(cli, ["score", "--ref", str(ref), "--hyp", str(hyp), "--out", str(out)])
    assert run.exit_code == 0, run.output
    assert result.to_markdown() in run.output
    for name in ("scores.md", "scores.json", "ref.trn", "hyp.trn", "details.jsonl"):
        assert (out / name).is_file(), name
    data = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    assert data["overall"]["error_rate"] == 100.0 * 26 / 69
    assert {r["group"]: (r["errors"], r["ref_units"]) for r in data["rows"]} == {
        r.group: (r.errors, r.ref_units) for r in result.rows}

    run = CliRunner().invoke(cli, ["score", "--ref", str(ref), "--hyp", str(hyp), "--out", str(out),
                                   "--group-by", "accent"])
    assert run.exit_code == 0, run.output
    assert "| en-British | word |" in run.output

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "text": 3}\n', encoding="utf-8")
    run = CliRunner().invoke(cli, ["score", "--ref", str(ref), "--hyp", str(bad), "--out", str(out)])
    assert run.exit_code == 1
    assert "bad.jsonl:1: 'text' of 'x' must be a string" in run.output
    assert "Traceback" not in run.output


# --------------------------------------------------------------------------- found by mutation testing
# (docs/reliability.md, "Mutation testing"): each test below kills mutants that the tests above let live.


def _cut(cut_id, *sups):
    """A cut with supervisions ``(start, text, language, accent)``, listed in the order given."""
    from lhotse import MonoCut, SupervisionSegment
    from lhotse.testing.dummies import dummy_recording

    rec = dummy_recording(0, duration=4.0)
    segments = [SupervisionSegment(id=f"{cut_id}-{n}", recording_id=rec.id, start=start, duration=0.5, text=text,
                                   language=lang, custom={"accent": accent} if accent else None)
                for n, (start, text, lang, accent) in enumerate(sups)]
    return MonoCut(id=cut_id, start=0.0, duration=4.0, channel=0, recording=rec, supervisions=segments)


def test_alignment_counts_add_up_separate_deletions_and_insertions():
    res = score({"d": ("en", "one two three four five", None), "i": ("en", "one two three", None)},
                {"d": "two four five", "i": "uh one er two three"})
    by_id = {u.id: (u.sub, u.dele, u.ins, u.hits) for u in res.utterances}
    assert by_id == {"d": (0, 2, 0, 3), "i": (0, 0, 2, 3)}


def test_details_and_scores_json_hold_every_field(tmp_path, caplog):
    import logging

    refs = {"u1": ("en", "Hello, how are you doing today?", "American"), "u2": ("ja", "今日はいい天気ですね。", None),
            "u3": ("en", "Fine thanks", "British")}
    hyps = {"u1": "hello how are you today", "u2": "今日はいい天気です"}
    ref, hyp = _write_cuts(tmp_path / "cuts.jsonl.gz", refs), _write_jsonl(tmp_path / "hyp.jsonl", hyps)
    with caplog.at_level(logging.INFO, logger="ilt"):
        res = score_files(ref, hyp, tmp_path / "out", group_by="accent")
    assert f"score: {hyp}: 3 utterance(s), overall 22.22% (4 errors / 18 units) -> {tmp_path / 'out'}" \
        in caplog.messages
    raw = (tmp_path / "out" / "details.jsonl").read_text(encoding="utf-8")
    assert '"ref": "今 日 は い い 天 気 で す ね"' in raw  # UTF-8, not \u escapes
    details = {d["id"]: d for d in map(json.loads, raw.splitlines())}
    assert details["u1"] == {"id": "u1", "status": "scored", "group": "en-American", "language": "en",
                             "accent": "American", "unit": "word", "ref": "hello how are you doing today",
                             "hyp": "hello how are you today", "sub": 0, "del": 1, "ins": 0, "hits": 5,
                             "ref_units": 6, "errors": 1}
    assert details["u3"]["status"] == "missing_hypothesis" and details["u3"]["hyp"] == ""
    assert (details["u2"]["group"], details["u2"]["language"], details["u2"]["accent"]) == ("ja", "ja", None)
    data = json.loads((tmp_path / "out" / "scores.json").read_text(encoding="utf-8"))
    assert (data["group_by"], data["ref"], data["hyp"]) == ("accent", str(ref), str(hyp))
    assert data["normalisation"].startswith("MLC-SLM challenge: lowercase, punctuation deleted (apostrophes")
    assert data["rows"][0] == {"group": "en-American", "unit": "word", "error_rate": 100.0 / 6, "sub": 0,
                               "del": 1, "ins": 0, "hits": 5, "errors": 1, "ref_units": 6, "utts": 1}
    assert data["overall"]["group"] == "Overall" and data["overall"]["unit"] == "mixed"
    assert json.loads(res.to_json()) == res.to_dict()
    assert res.to_json().startswith('{\n  "group_by": "accent",\n')
    accented = score({"q": ("fr", "oui", "Québécois")}, {"q": "oui"}, group_by="accent")
    assert '"group": "fr-Québécois"' in accented.to_json()  # UTF-8, not \u escapes
    # the sclite speaker field: the group with non-word characters turned into "_"
    assert "(en_American-u1)" in (tmp_path / "out" / "hyp.trn").read_text(encoding="utf-8").split()
    # a perfect score is logged as 0.00%
    perfect = _write_jsonl(tmp_path / "perfect.jsonl", {"u1": refs["u1"][1]})
    one = _write_cuts(tmp_path / "one.jsonl.gz", {"u1": refs["u1"]})
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ilt"):
        score_files(one, perfect, tmp_path / "out1")
    assert any("overall 0.00% (0 errors / 6 units)" in m for m in caplog.messages)


def test_markdown_table_and_notes_exactly():
    res = score({"a": ("en", "one two", None), "b": ("en", "", None), "c": ("fr", "un", None)},
                {"a": "one", "s": "stray"})
    assert res.to_markdown() == (
        "| language | unit | error % | sub | del | ins | ref units | utts |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|\n"
        "| en | word | 50.00 | 0 | 1 | 0 | 2 | 1 |\n"
        "| fr | word | 100.00 | 0 | 1 | 0 | 1 | 1 |\n"
        "| Overall | word | 66.67 | 0 | 2 | 0 | 3 | 2 |\n"
        "\n"
        "Note: 1 reference(s) without a hypothesis, scored as empty; 1 reference(s) with empty text skipped; "
        "1 hypothesis ID(s) without a reference skipped.\n")
    with pytest.raises(KeyError, match=r"no row 'de'; rows: \['en', 'fr'\]"):
        res.row("de")
    # nothing to score: no rows, and an Overall row without a rate
    empty = score({"b": ("en", " ?! ", None)}, {})
    assert empty.rows == [] and (empty.overall.unit, empty.overall.error_rate) == ("-", None)
    assert empty.to_markdown().splitlines()[2:] == ["| Overall | - | n/a | 0 | 0 | 0 | 0 | 0 |", "",
                                                    "Note: 1 reference(s) with empty text skipped."]


def test_skips_are_logged_with_counts_and_examples(caplog):
    import logging

    refs = {"r0": ("en", "yes", None), **{f"r{i}": ("en", "no", None) for i in range(1, 5)},
            **{f"e{i}": ("en", "", None) for i in range(1, 5)}}
    with caplog.at_level(logging.WARNING, logger="ilt"):
        score(refs, {"r0": "yes", "s1": "stray"})
    assert caplog.messages == [
        "score: 4 reference(s) have no hypothesis, scored as empty (e.g. r1, r2, r3)",
        "score: skipped 4 empty reference (e.g. e1, e2, e3)",
        "score: skipped 1 hypothesis without reference (e.g. s1)",
    ]


def test_unrelated_hypotheses_error_shows_examples_of_both():
    with pytest.raises(IltInputError, match=re.escape(
            f"none of the 4 hypothesis IDs is a reference ID (e.g. 's1', 's2', 's3'; references e.g. {EN1!r}): "
            "are the hypotheses for this reference set?")):
        score(REFS, {f"s{i}": "x" for i in range(1, 5)})


def test_reference_of_joins_supervisions_in_time_order():
    from ilt.asr.score import reference_of

    # listed out of order; a whitespace-only supervision in another language does not count
    cut = _cut("c1", (1.0, "world", "en", None), (0.0, "Hello", "en", "American"), (2.0, "  ", "de", None))
    language, text, accent = reference_of(cut)
    assert (language, text.split(), accent) == ("en", ["Hello", "world"], "American")
    # the language is that of the supervisions with text
    assert reference_of(_cut("c2", (0.0, None, "de", None), (1.0, "bonjour", "fr", None)))[:2] == ("fr", "bonjour")
    # no text: the first supervision's language; no supervision: nothing
    assert reference_of(_cut("c3", (0.0, None, "en", None))) == ("en", None, None)
    assert reference_of(_cut("c4")) == (None, None, None)


def test_reference_errors_name_the_manifest_and_the_cut(tmp_path):
    from lhotse import CutSet

    from ilt.asr.score import load_references, reference_of, references

    mixed = _cut("mix", (0.0, "hello", "en", None), (1.0, "bonjour", "fr", None))
    with pytest.raises(IltInputError, match=r"^cut 'mix' mixes languages \['en', 'fr'\]$"):
        reference_of(mixed)
    with pytest.raises(IltInputError, match=r"^m\.jsonl: cut 'mix' mixes languages"):
        references([mixed], "m.jsonl")
    ok = _cut("ok", (0.0, "hello", "en", None))
    with pytest.raises(IltInputError, match=r"^cuts: cut ID 'ok' appears twice$"):
        references([ok, ok])
    with pytest.raises(IltInputError, match=r"^m\.jsonl: cut ID 'ok' appears twice$"):
        references([ok, ok], "m.jsonl")
    path = tmp_path / "mixed.jsonl.gz"
    CutSet.from_cuts([mixed]).to_file(path)
    with pytest.raises(IltInputError, match=rf"^{re.escape(str(path))}: cut 'mix' mixes languages"):
        load_references(path)
    from lhotse import RecordingSet

    recs = tmp_path / "recs.jsonl.gz"
    RecordingSet.from_recordings([ok.recording]).to_file(recs)
    with pytest.raises(IltInputError, match=r"recs\.jsonl\.gz: expected a CutSet, found RecordingSet$"):
        load_references(recs)
    garbage = tmp_path / "refs.jsonl.gz"
    garbage.write_bytes(b"this is not gzip")
    with pytest.raises(IltInputError, match=r"refs\.jsonl\.gz: cannot read reference cuts: BadGzipFile: "):
        load_references(garbage)


def test_gzipped_hypotheses_jsonl_and_trn(tmp_path):
    import gzip

    jsonl = tmp_path / "hyp.jsonl.gz"
    jsonl.write_bytes(gzip.compress('{"id": "a", "text": "ça va"}\n'.encode()))
    assert load_hypotheses(jsonl) == {"a": "ça va"}
    trn = tmp_path / "hyp.trn.gz"
    trn.write_bytes(gzip.compress("ça va (en-a)\n".encode()))
    assert load_hypotheses(trn, ["a"]) == {"a": "ça va"}
    with pytest.raises(IltInputError, match=r"missing\.jsonl: cannot read hypotheses: .*No such file"):
        load_hypotheses(tmp_path / "missing.jsonl")


def test_more_malformed_hypothesis_lines(tmp_path):
    cases = {
        "empty_id.jsonl": ('{"id": "", "text": "x"}\n', r"empty_id\.jsonl:1: 'id' must be a non-empty string, got ''"),
        "int_id.jsonl": ('{"id": 5, "text": "x"}\n', r"int_id\.jsonl:1: 'id' must be a non-empty string, got 5"),
        "after_id.trn": ("hello (a) XX\n", r"after_id\.trn:1: expected 'text \(utterance-id\)', got 'hello \(a\) XX'"),
        "long.trn": ("x" * 100 + "\n", rf"long\.trn:1: expected 'text \(utterance-id\)', got '{'x' * 80}'$"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_text(content, encoding="utf-8")
        with pytest.raises(IltInputError, match=message):
            load_hypotheses(path)


def test_cut_ids_that_cannot_go_in_a_trn_file(tmp_path):
    ref = _write_cuts(tmp_path / "cuts.jsonl.gz", {"a (1)": ("en", "hello", None)})
    hyp = _write_jsonl(tmp_path / "hyp.jsonl", {"a (1)": "hello"})
    with pytest.raises(IltInputError, match=r"cut ID 'a \(1\)' has whitespace, parentheses or control characters "
                                            r"and cannot go in a \.trn file"):
        score_files(ref, hyp, tmp_path / "out")


def test_has_references(tmp_path):
    from ilt.asr.score import has_references

    assert has_references(_write_cuts(tmp_path / "dev.jsonl.gz", {"a": ("en", "", None), "b": ("fr", "Oui.", None)}))
    # an eval set: no text, or text that normalises to nothing
    assert not has_references(_write_cuts(tmp_path / "eval.jsonl.gz", {"a": ("en", None, None),
                                                                       "b": ("en", " ?! ", None)}))
