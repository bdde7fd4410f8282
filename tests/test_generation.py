"""Per-hypothesis stopping: token budgets from the audio duration, and the loop stop."""

import numpy as np
import pytest
import torch

from ilt.config import DecodeConfig
from ilt.models.generation import (
    Hypotheses,
    StopRules,
    ended_in_loop,
    looping_rows,
    token_budget,
)
from ilt.plugins.whisper import WhisperBackbone
from ilt.testing.dummies import tiny_whisper_dir

EOS = 7


def test_token_budget_grows_with_duration_and_is_capped():
    assert token_budget(2.0, 15.0, 16, 440) == 46
    assert token_budget(0.0, 15.0, 16, 440) == 16
    assert token_budget(30.0, 15.0, 16, 440) == 440
    assert DecodeConfig().token_budgets([1.0, 2.0], "ja") == [46, 76]
    assert DecodeConfig().token_budgets([1.0], "en") == [31]
    assert DecodeConfig(tokens_per_second={}).token_budgets([1.0], "en") == [440]


@pytest.mark.parametrize("tail,expected", [
    ([5] * 12, True),                       # one token 12 times
    ([5] * 11, False),                      # not long enough
    ([1, 2, 3, 4] * 3, True),               # a 4-token phrase three times
    ([1, 2, 3, 4] * 2 + [1, 2, 3, 9], False),
    ([9, 1, 2, 3, 4, 5] * 3, True),         # period 6: 18 tokens
    ([9, 1, 2, 3, 4, 5] * 2 + [9, 1, 2], False),
    (list(range(20)), False),
])
def test_looping_rows(tail, expected):
    tokens = torch.tensor([[8, 8] + tail])
    assert bool(looping_rows(tokens, 12)[0]) is expected


def test_stop_rules_force_end_of_text_per_row_and_per_beam():
    rules = StopRules([2, 5], prompt_length=1, eos_id=EOS, loop_tokens=None)
    # 2 utterances x 2 beams, prompt + 2 generated tokens
    ids = torch.tensor([[0, 1, 2], [0, 1, 3], [0, 4, 5], [0, 4, 6]])
    scores = rules(ids, torch.zeros(4, 10))
    assert scores[0].argmax() == EOS and scores[1].argmax() == EOS  # utterance 0: budget 2 reached
    assert torch.isinf(scores[0, :EOS]).all() and scores[0, EOS] == 0
    assert (scores[2:] == 0).all()  # utterance 1 goes on
    assert rules.stopped == {"budget": 2, "loop": 0}


def test_stop_rules_on_a_subset_of_the_rows_use_the_largest_budget():
    """Whisper's temperature fallback re-decodes some rows alone (1 of 2 here): no
    error, and no row stops before the largest budget of the batch."""
    rules = StopRules([2, 5], prompt_length=1, eos_id=EOS, loop_tokens=None)
    scores = rules(torch.tensor([[0, 1, 2]]), torch.zeros(1, 10))
    assert (scores == 0).all()  # 2 tokens: utterance 0's budget, but the row may be utterance 1's
    scores = rules(torch.tensor([[0, 1, 2, 3, 4, 5]]), torch.zeros(1, 10))
    assert scores[0].argmax() == EOS and rules.stopped["budget"] == 1


def test_stop_rules_end_a_loop_only_in_its_row():
    rules = StopRules([100, 100], prompt_length=2, eos_id=EOS, loop_tokens=12)
    ids = torch.tensor([[0, 0] + [3] * 12, [0, 0] + list(range(12))])
    scores = rules(ids, torch.zeros(2, 10))
    assert scores[0].argmax() == EOS and (scores[1] == 0).all()
    assert rules.stopped["loop"] == 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return WhisperBackbone.from_pretrained(tiny_whisper_dir(tmp_path_factory.mktemp("gen") / "m"))


def _text_tokens(backbone, model, feats, **kwargs):
    """Text-token IDs of each hypothesis, read from generate's raw output."""
    captured = []
    original = model.generate

    def spy(**kw):
        out = original(**kw)
        captured.append(out if torch.is_tensor(out) else out["sequences"])
        return out

    model.generate = spy
    try:
        backbone.generate(model, feats, language="en", **kwargs)
    finally:
        del model.generate
    special = set(backbone.tokenizer.all_special_ids)
    return [[t for t in row.tolist() if t not in special] for row in captured[0]]


@pytest.mark.parametrize("beams", [1, 3])
def test_each_hypothesis_ends_at_its_own_budget(tiny, beams):
    rng = np.random.default_rng(0)
    feats = tiny.features([rng.standard_normal(4000).astype(np.float32) for _ in range(2)])
    rows = _text_tokens(tiny, tiny.model, feats, num_beams=beams, max_new_tokens=[3, 9])
    assert len(rows[0]) <= 3 and len(rows[1]) <= 9
    assert len(rows[1]) > 3  # a random model rarely ends by itself: the budget decides
    if beams == 1:  # greedy: stopping row 0 early does not change row 1
        alone = _text_tokens(tiny, tiny.model, tiny.features([feats["input_features"][1].numpy()]),
                             num_beams=1, max_new_tokens=9)
        assert rows[1] == alone[0]


def _first_loop_end(row, loop_tokens):
    """The length of the shortest prefix of ``row`` that ends in a loop, or ``None``."""
    for end in range(loop_tokens, len(row) + 1):
        if bool(looping_rows(torch.tensor([row[:end]]), loop_tokens)[0]):
            return end
    return None


def test_the_loop_stop_cuts_a_looping_hypothesis_at_its_first_loop(tiny):
    """Greedy, with a budget (40) far above the loop length (12): the tiny
    random model repeats one token, so every hypothesis loops, and the loop
    stop ends each one where its first 12-token loop is complete."""
    rng = np.random.default_rng(1)
    feats = tiny.features([rng.standard_normal(4000).astype(np.float32) for _ in range(3)])
    plain = _text_tokens(tiny, tiny.model, feats, max_new_tokens=40)
    stopped = _text_tokens(tiny, tiny.model, feats, max_new_tokens=40, loop_tokens=12)
    assert all(len(row) == 40 for row in plain)  # without the stop, only the budget ends them
    for before, after in zip(plain, stopped):
        end = _first_loop_end(before, 12)
        assert end is not None and after == before[:end]


def test_the_loop_stop_never_stops_a_hypothesis_without_a_loop():
    """40 steps of a row that never repeats itself: the loop stop forces no
    end-of-text at any step, and its counter stays at zero."""
    rules = StopRules([100], prompt_length=1, eos_id=EOS, loop_tokens=12)
    rows = [0] + [t % 7 + 11 * (t // 7) for t in range(40)]  # no period repeats three times
    for step in range(2, len(rows) + 1):
        scores = rules(torch.tensor([rows[:step]]), torch.zeros(1, 10))
        assert (scores == 0).all()
    assert rules.stopped == {"budget": 0, "loop": 0}


SPACE, PAD = 220, 9


@pytest.mark.parametrize("row,expected", [
    ([0, 1, 2, 30, 31] + [SPACE] * 12 + [EOS], True),            # the loop stop's end: 12 spaces, end-of-text
    ([0, 1, 2, 30, 31] + [SPACE] * 12 + [EOS, PAD, PAD], True),  # ... then padding to the batch's longest
    ([0, 1, 2, 30, 31] + [SPACE] * 12, True),                    # a loop cut by the budget: no end-of-text
    ([0, 1, 2] + list(range(30, 44)) + [EOS], False),            # a plain hypothesis
    ([0, 1, 2, 30, 31, EOS] + [PAD] * 12, False),                # ended early: its padding is no loop
    ([0, 1, 2, 30, 31, EOS] + [EOS] * 12, False),                # padded with end-of-text (Whisper's pad)
    ([0, 1, 2] + [SPACE] * 11 + [EOS], False),                   # 11 spaces: short of 12
    ([SPACE] * 5 + [EOS], False),                                # a short row
    ([EOS, PAD], False),                                         # nothing generated
])
def test_ended_in_loop_reads_the_returned_sequences(row, expected):
    assert ended_in_loop([row], [EOS, PAD], 12) == [expected]
    width = 24  # the same rows as one right-padded tensor: same verdicts
    batch = torch.tensor([row + [PAD] * (width - len(row)), [0, 1, 2] + [SPACE] * 12 + [EOS] * (width - 15)])
    assert ended_in_loop(batch, [EOS, PAD], 12) == [expected, True]


def test_ended_in_loop_uses_the_loop_stops_criterion():
    """A 4-token phrase three times after the padding is dropped: the same
    criterion as :func:`looping_rows` (period up to MAX_LOOP_PERIOD)."""
    phrase = [1, 2, 3, 4]
    assert ended_in_loop([[0] + phrase * 3 + [EOS, PAD]], [EOS, PAD], 12) == [True]
    assert ended_in_loop([[0] + phrase * 2 + [1, 2, 3, 9, EOS]], [EOS, PAD], 12) == [False]
    assert ended_in_loop([[0] + [SPACE] * 12 + [EOS]], [EOS, None], None) == [False]  # loop stop off
    assert ended_in_loop(torch.zeros(0, 5, dtype=torch.long), [EOS], 12) == []


def test_hypotheses_are_a_list_of_texts_with_loop_flags():
    hyps = Hypotheses(["a", "b"], looped=[True, 0])
    assert hyps == ["a", "b"] and isinstance(hyps, list) and hyps.looped == [True, False]
    assert Hypotheses(["a"]).looped == [False] and Hypotheses().looped == []
    with pytest.raises(ValueError, match="1 loop flags for 2 hypotheses"):
        Hypotheses(["a", "b"], looped=[True])


def test_whisper_generate_flags_the_hypotheses_the_loop_stop_ended(tiny):
    """The tiny random model repeats one token (see above): with the loop stop
    every hypothesis ends in a loop and is flagged; without it none is
    flagged; with a budget shorter than a loop, none loops."""
    rng = np.random.default_rng(1)
    feats = tiny.features([rng.standard_normal(4000).astype(np.float32) for _ in range(3)])
    for beams in (1, 2):
        stopped = tiny.generate(tiny.model, feats, language="en", max_new_tokens=40, loop_tokens=12,
                                num_beams=beams)
        assert isinstance(stopped, Hypotheses) and stopped.looped == [True] * 3
    off = tiny.generate(tiny.model, feats, language="en", max_new_tokens=40, loop_tokens=None)
    assert isinstance(off, Hypotheses) and off.looped == [False] * 3
    short = tiny.generate(tiny.model, feats, language="en", max_new_tokens=5, loop_tokens=12)
    assert short.looped == [False] * 3
    assert tiny.generate(tiny.model, tiny.features([]), language="en").looped == []


def test_qwen2_audio_generate_flags_rows_by_its_end_and_pad_tokens(tmp_path, monkeypatch):
    """Qwen2-Audio's rows (prompt removed) end in one of the generation
    config's end-of-text tokens, then its padding: both are dropped before
    the loop is looked for. The generated rows are made by hand (the tiny
    random model ends at once), with padding (3) and a second end-of-text
    (4) apart from the tokenizer's (0)."""
    from ilt.core.registry import create
    from ilt.testing.tiny_qwen2_audio import tiny_qwen2_audio_dir

    qwen = create("backbone", "qwen2_audio", tiny_qwen2_audio_dir(tmp_path / "q"))
    eos = qwen.collator.eos_id
    monkeypatch.setattr(qwen.collator, "pad_id", 3)
    monkeypatch.setattr(qwen.model.generation_config, "eos_token_id", [eos, 4])
    rows = [[5] * 12 + [eos, 3, 3], [5] * 12 + [4, 3, 3], [5, 6, eos] + [3] * 12, [6, 5] * 6 + [eos, 3, 3]]
    seen = []

    def run(model, inputs, languages, gen, limits, loop_tokens, extra):
        seen.append((list(gen.eos_token_id), gen.pad_token_id))
        return [list(r) for r in rows]

    monkeypatch.setattr(qwen, "_run", run)
    feats = qwen.features([np.zeros(16000, dtype=np.float32)] * len(rows))
    hyps = qwen.generate(qwen.model, feats, language="en", loop_tokens=12)
    assert seen == [([eos, 4], 3)]
    assert isinstance(hyps, Hypotheses) and len(hyps) == 4 and hyps.looped == [True, True, False, True]
    assert qwen.generate(qwen.model, feats, language="en", loop_tokens=None).looped == [False] * 4
