"""The built-in voters ``majority`` and ``rover`` (ilt/plugins/voters.py)."""

from __future__ import annotations

import itertools
import math

import pytest
from click.testing import CliRunner

from ilt.cli.main import cli
from ilt.components import Hypothesis as H
from ilt.components import Vote, Voter
from ilt.config import ConfigError
from ilt.core.registry import PluginError, create, get_registry
from ilt.data.text import tokens_for_scoring
from ilt.plugins.voters import MajorityVoter, RoverVoter, build_network, join_units

REFERENCE = "the cat sat on the mat"
# each hypothesis has a different single-word error; the most confident one is wrong
ONE_ERROR_EACH = [H("a cat sat on the mat", -0.1, "m1"), H("the bat sat on the mat", -0.2, "m2"),
                  H("the cat sat in the mat", -0.3, "m3")]
# insertions, deletions and equal scores, so alignment order matters
MIXED = [H("the cat sat on the mat", -0.4, "m1"), H("cat sat on a mat today", -0.4, "m2"),
         H("the the cat sat mat", None, "m3"), H("a cat on the mat", -0.1, "m4")]

VOTERS = {
    "majority": MajorityVoter(),
    "rover": RoverVoter(),
    "rover-weighted": RoverVoter(alpha=0.3, null_confidence=0.5),
    "rover-null-ties": RoverVoter(null_wins_ties=True),
}


# ---------------------------------------------------------------- order invariance


@pytest.mark.parametrize("voter", VOTERS, ids=str)
@pytest.mark.parametrize("hyps,language", [(ONE_ERROR_EACH, "en"), (MIXED, "en"), (MIXED, None),
                                           ([H("今日は晴れ", -0.2, "a"), H("今日わ晴れです", -0.2, "b"),
                                             H("京都は晴れです", None, "c")], "ja")])
def test_result_does_not_depend_on_the_order_of_hypotheses(voter, hyps, language):
    votes = {VOTERS[voter].vote(list(p), language) for p in itertools.permutations(hyps)}
    assert len(votes) == 1, votes


def test_the_alignment_alone_depends_on_order():
    """The data of the invariance test is order-sensitive: only canonical ordering makes rover invariant."""
    units = [tokens_for_scoring(h.text, "en") for h in MIXED]
    networks = set()
    for p in itertools.permutations(units):  # each slot as a multiset, so column order does not count
        networks.add(tuple(tuple(sorted(slot, key=lambda u: (u is None, u or ""))) for slot in build_network(p)))
    assert len(networks) > 1


# ---------------------------------------------------------------- agreement


@pytest.mark.parametrize("voter", VOTERS, ids=str)
def test_identical_hypotheses_agree_fully(voter):
    hyps = [H("Hello world", -0.5, "a"), H("Hello world", None, "b"), H("Hello world", -0.1, "c")]
    vote = VOTERS[voter].vote(hyps, "en")
    assert vote.agreement == 1.0
    expected = "Hello world" if voter == "majority" else "hello world"  # rover returns scoring units
    assert vote.text == expected


def test_rover_agreement_is_the_mean_winning_share():
    hyps = [H("a b", -0.1, "x"), H("a c", -0.1, "y"), H("a b", -0.1, "z")]
    assert RoverVoter().vote(hyps, "en") == Vote("a b", (1 + 2 / 3) / 2)


# ---------------------------------------------------------------- rover vs majority


def test_rover_recovers_the_reference_where_majority_cannot():
    majority = MajorityVoter().vote(ONE_ERROR_EACH, "en")
    rover = RoverVoter().vote(ONE_ERROR_EACH, "en")
    assert rover.text == REFERENCE
    assert majority.text != REFERENCE
    assert majority == Vote("a cat sat on the mat", 1 / 3)  # no majority: the most confident wins
    assert rover.agreement == pytest.approx((3 * 1 + 3 * 2 / 3) / 6)  # three slots with one error


def test_majority_ties_break_by_score_then_text():
    assert MajorityVoter().vote([H("b", -0.5, "x"), H("a", -0.5, "y")], "en").text == "a"
    assert MajorityVoter().vote([H("b", -0.1, "x"), H("a", None, "y")], "en").text == "b"
    assert MajorityVoter().vote([H("b", None, "x"), H("a", None, "y"), H("b", None, "z")], "en").text == "b"


# ---------------------------------------------------------------- normalisation and characters


def test_majority_votes_normalisation_equal_hypotheses_together():
    hyps = [H("Hello, World!", -0.5, "a"), H("hello world", -0.2, "b"), H("hello word", -0.01, "c")]
    assert MajorityVoter().vote(hyps, "en") == Vote("hello world", 2 / 3)
    # by exact text, nothing agrees and the most confident wins
    assert MajorityVoter(normalized=False).vote(hyps, "en") == Vote("hello word", 1 / 3)
    # Korean is scored by characters: the spacing does not split the vote
    ko = [H("안녕 하세요", -0.3, "a"), H("안녕하세요", -0.4, "b"), H("안녕하세오", -0.1, "c")]
    assert MajorityVoter().vote(ko, "ko") == Vote("안녕 하세요", 2 / 3)


def test_rover_votes_characters_for_japanese():
    hyps = [H("今日わ晴れ", -0.1, "a"), H("今日は晴れ", -0.3, "b"), H("京日は晴れ", -0.2, "c")]
    assert MajorityVoter().vote(hyps, "ja").text == "今日わ晴れ"
    vote = RoverVoter().vote(hyps, "ja")
    assert vote.text == "今日は晴れ"
    assert vote.agreement == pytest.approx((3 * 1 + 2 * 2 / 3) / 5)


def test_rover_keeps_latin_runs_in_cer_text_as_units():
    hyps = [H("iPhoneを買った", -0.1, "a"), H("iphone を買た", -0.2, "b"), H("ipadを買った", -0.3, "c")]
    vote = RoverVoter().vote(hyps, "ja")
    assert vote.text == "iphoneを買った"
    assert tokens_for_scoring(vote.text, "ja") == ["iphone", "を", "買", "っ", "た"]
    units = ["new", "york", "に", "行", "く"]
    assert join_units(units, "ja") == "new yorkに行く"
    assert tokens_for_scoring(join_units(units, "ja"), "ja") == units
    assert join_units(units, "en") == "new york に 行 く"


# ---------------------------------------------------------------- empty input


@pytest.mark.parametrize("voter", VOTERS, ids=str)
def test_all_empty_hypotheses_agree_on_nothing(voter):
    assert VOTERS[voter].vote([H("", None, "a"), H("", -0.2, "b")], "en") == Vote("", 1.0)
    assert VOTERS[voter].vote([H("", None, "a")], "ja") == Vote("", 1.0)


def test_some_empty_hypotheses():
    hyps = [H("", -0.1, "a"), H("", -0.2, "b"), H("hello", -0.3, "c")]
    assert MajorityVoter().vote(hyps, "en") == Vote("", 2 / 3)
    assert RoverVoter().vote(hyps, "en") == Vote("", 2 / 3)
    assert RoverVoter().vote(hyps[1:], "en") == Vote("hello", 1 / 2)  # a tie: the word wins
    assert RoverVoter(null_wins_ties=True).vote(hyps[1:], "en") == Vote("", 1 / 2)
    # punctuation only normalises to nothing: majority gives "" too
    assert MajorityVoter().vote([H("...", -0.1, "a"), H("", None, "b")], "en") == Vote("", 1.0)


@pytest.mark.parametrize("voter", VOTERS, ids=str)
def test_no_hypotheses_is_an_error(voter):
    with pytest.raises(ValueError, match="no hypotheses"):
        VOTERS[voter].vote([], "en")


# ---------------------------------------------------------------- confidence


def test_confident_minority_wins_only_with_alpha_below_one():
    hyps = [H("the cat", -2.0, "a"), H("the cat", -2.0, "b"), H("the bat", -0.01, "c")]
    assert RoverVoter().vote(hyps, "en").text == "the cat"
    assert RoverVoter(alpha=0.2).vote(hyps, "en").text == "the bat"
    # a hypothesis without a score has confidence 0
    unscored = [H("the cat", -0.5, "a"), H("the bat", None, "b")]
    assert RoverVoter(alpha=0.5).vote(unscored, "en").text == "the cat"


def test_null_confidence_decides_a_tie_in_counts():
    hyps = [H("a b", -0.05, "x"), H("a", -0.05, "y")]  # slot 2: "b" (conf ~0.95) against NULL
    assert RoverVoter(alpha=0.5, null_confidence=0.99).vote(hyps, "en").text == "a"
    assert RoverVoter(alpha=0.5, null_confidence=0.5).vote(hyps, "en").text == "a b"


# ---------------------------------------------------------------- registry


def test_voters_are_registered_plugins():
    get_registry.cache_clear()
    try:
        rover = create("voter", "rover", alpha=0.5)
        assert isinstance(rover, RoverVoter) and rover.alpha == 0.5
        assert isinstance(rover, Voter) and isinstance(create("voter", "majority"), Voter)
        assert set(get_registry().get("voter", "rover").options()) == {"alpha", "null_confidence",
                                                                        "null_wins_ties"}
        with pytest.raises(ConfigError, match="alpha"):
            create("voter", "rover", alpha=1.5)
        with pytest.raises(PluginError, match="accepted options"):
            create("voter", "majority", alpha=0.5)
        res = CliRunner().invoke(cli, ["plugins"])
        assert res.exit_code == 0, res.output
        rows = [line.split() for line in res.output.splitlines()]
        assert ["voter", "majority", "ilt"] in rows and ["voter", "rover", "ilt"] in rows
    finally:
        get_registry.cache_clear()


# ---------------------------------------------------------------- found by mutation testing (docs/reliability.md)


def test_option_errors_name_the_voter_and_the_option():
    for kwargs, name in [({"alpha": 1.5}, "alpha"), ({"alpha": True}, "alpha"),
                         ({"null_confidence": -0.1}, "null_confidence"),
                         ({"null_confidence": "0.5"}, "null_confidence")]:
        with pytest.raises(ConfigError, match=rf"^voter rover: {name}: must be a number in \[0, 1\], got "):
            RoverVoter(**kwargs)
    with pytest.raises(ConfigError, match=r"^voter rover: null_wins_ties: must be true or false, got 'yes'$"):
        RoverVoter(null_wins_ties="yes")
    with pytest.raises(ConfigError, match=r"^voter majority: normalized: must be true or false, got 1$"):
        MajorityVoter(normalized=1)
    both_ends = RoverVoter(alpha=0, null_confidence=1)  # [0, 1] is closed
    assert (both_ends.alpha, both_ends.null_confidence) == (0.0, 1.0)
    for name, voter in (("majority", MajorityVoter()), ("rover", RoverVoter())):
        with pytest.raises(ValueError, match=rf"^voter '{name}': no hypotheses to vote on"):
            voter.vote([], "en")


def test_rover_confidence_of_a_word_is_the_mean_over_its_voters():
    # alpha 0 votes by confidence alone: "a" has two voters at 0.5 (mean 0.5), "b" one at 0.8
    hyps = [H("a", math.log(0.5), "m1"), H("a", math.log(0.5), "m2"), H("b", math.log(0.8), "m3")]
    assert RoverVoter(alpha=0.0).vote(hyps, "en") == Vote("b", 1 / 3)


def test_rover_score_mixes_frequency_share_and_confidence():
    # alpha 0.5: "a" 0.5 * 2/3 + 0.5 * 0.3 = 0.483 < "b" 0.5 * 1/3 + 0.5 * 0.95 = 0.642
    hyps = [H("a", math.log(0.3), "m1"), H("a", math.log(0.3), "m2"), H("b", math.log(0.95), "m3")]
    assert RoverVoter(alpha=0.5).vote(hyps, "en").text == "b"
    assert RoverVoter(alpha=1.0).vote(hyps, "en").text == "a"


def test_rover_confidence_is_at_most_one():
    # a positive score (not a log-probability) counts as confidence 1, not exp(0.5) = 1.65:
    # "a" 0.5 * 1/3 + 0.5 * 1 = 0.667 < "b" 0.5 * 2/3 + 0.5 * 1 = 0.833
    hyps = [H("a", 0.5, "m1"), H("b", 0.0, "m2"), H("b", 0.0, "m3")]
    assert RoverVoter(alpha=0.5).vote(hyps, "en").text == "b"


def test_rover_ties_between_words_go_to_the_more_confident_then_the_smaller():
    # equal counts: the more confident word wins even when it sorts after the other
    hyps = [H("y", math.log(0.9), "m1"), H("x", math.log(0.6), "m2")]
    assert RoverVoter().vote(hyps, "en") == Vote("y", 0.5)
    # equal counts and confidences: the smaller unit, in every slot (not the first hypothesis' unit)
    hyps = [H("a z", -0.1, "m1"), H("b y", -0.1, "m2")]
    assert RoverVoter().vote(hyps, "en") == Vote("a y", 0.5)


def test_rover_builds_the_network_from_the_most_confident_hypothesis_first():
    hyps = [H("a c d d", -0.2, "m0"), H("c b b c", -0.1, "m1"), H("c", -0.3, "m2")]
    best_first = [["c", "b", "b", "c"], ["a", "c", "d", "d"], ["c"]]

    def as_multisets(slots):  # the network up to the order of its hypotheses' columns
        return sorted(sorted(slot, key=lambda u: (u is None, u or "")) for slot in slots)

    assert as_multisets(build_network(best_first)) != as_multisets(build_network(best_first[::-1]))
    vote = RoverVoter().vote(hyps, "en")
    assert vote.text == "c b b c" and vote.agreement == pytest.approx(8 / 15)


def test_each_sequence_is_aligned_to_the_most_frequent_unit_of_each_slot():
    # slot 2 holds b, b, a: it is represented by "b", so "x a b" inserts "a" and matches "b"
    assert build_network([["x", "b"], ["x", "b"], ["x", "a"], ["x", "a", "b"]]) == [
        ["x"] * 4, [None, None, None, "a"], ["b", "b", "a", "b"]]
    # slot 2 holds b, a, a tie: the smaller "a" represents it, so "x a b" matches "a" and appends "b"
    assert build_network([["x", "b"], ["x", "a"], ["x", "a", "b"]]) == [
        ["x"] * 3, ["b", "a", "a"], [None, None, "b"]]
