"""Per-hypothesis stopping rules for autoregressive decoding, for any backbone.

A batch generates until its longest hypothesis ends, so one hypothesis that
loops ("the the the ...") keeps every row of the batch, times the beams,
generating up to ``max_new_tokens``. Two rules end such a hypothesis at once,
each by forcing its next token to be end-of-text (the other rows continue):

* a **token budget** per utterance, from its audio duration
  (:func:`token_budget`): speech cannot hold more than so many tokens a
  second, so a longer hypothesis is a loop or a hallucination;
* a **loop stop**: the hypothesis' last tokens repeat one pattern
  (:func:`looping_rows`), e.g. one token 12 times or a 4-token phrase 3 times.

The text of a stopped hypothesis is kept as it is; only the wasted steps are
saved. A stopped loop is often invisible in that text: a loop of whitespace
tokens (the plain space, say) is stripped with the text, and a loop ended
after a dozen tokens is too short to raise the text's compression ratio. So
a backbone tells which final hypotheses ended in a loop
(:func:`ended_in_loop`, read from the token sequences ``generate`` returned)
and returns :class:`Hypotheses`, texts carrying these flags, for the
decoder's loop guard (:mod:`ilt.asr.decode`) to retry.

:class:`StopRules` applies both rules as a ``transformers`` logits
processor, which ``generate`` calls for greedy, sampling and beam search
alike (beam rows are ``utterance * beams + beam``).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

#: The longest repeated pattern :func:`looping_rows` looks for, in tokens.
MAX_LOOP_PERIOD = 32


def token_budget(seconds: float, tokens_per_second: float, slack: int, cap: int) -> int:
    """The most text tokens a hypothesis of ``seconds`` of audio may have:
    ``ceil(tokens_per_second * seconds) + slack``, at most ``cap``."""
    return max(1, min(int(cap), math.ceil(tokens_per_second * max(0.0, seconds)) + int(slack)))


def looping_rows(tokens: Any, min_tokens: int) -> Any:
    """A boolean tensor: which rows of ``tokens`` (rows x generated tokens)
    end in a loop, i.e. whose last ``max(min_tokens, 3 * p)`` tokens repeat a
    pattern of ``p`` tokens (at least three times over), for some ``p`` up to
    :data:`MAX_LOOP_PERIOD`."""
    import torch

    rows, length = tokens.shape
    found = torch.zeros(rows, dtype=torch.bool, device=tokens.device)
    for period in range(1, MAX_LOOP_PERIOD + 1):
        span = max(int(min_tokens), 3 * period)
        if span > length:
            break
        tail = tokens[:, length - span:]
        found |= (tail[:, period:] == tail[:, :-period]).all(dim=1)
    return found


def ended_in_loop(sequences: Iterable[Any], end_ids: Iterable[int | None], min_tokens: int | None) -> list[bool]:
    """Which of the final token sequences ``generate`` returned end in a loop.

    ``sequences``: one row of token IDs per hypothesis (a 2-D tensor or lists
    of ints), possibly with the decoder prompt in front and end-of-text and
    padding at the end. Each row's trailing ``end_ids`` tokens (end-of-text,
    padding) are dropped, and what is left is judged by :func:`looping_rows`
    with ``min_tokens``. Looking at the returned rows, not at the steps,
    makes this the same for greedy, sampling and beam search. ``min_tokens``
    ``None`` (or 0: the loop stop off) flags no row."""
    import torch

    rows = [row.tolist() if torch.is_tensor(row) else [int(t) for t in row] for row in sequences]
    if not min_tokens:
        return [False] * len(rows)
    ends = {int(i) for i in end_ids if i is not None}
    out = []
    for ids in rows:
        length = len(ids)
        while length and ids[length - 1] in ends:
            length -= 1
        out.append(bool(length) and bool(looping_rows(torch.tensor([ids[:length]]), min_tokens)[0]))
    return out


class Hypotheses(list):
    """Hypothesis texts (a ``list`` of ``str``, what a backbone's ``generate``
    returns) that also say, in :attr:`looped`, whether each one ended in a
    loop (:func:`ended_in_loop`). A backbone may return a plain list instead:
    its loops are then unknown, as if none had looped."""

    def __init__(self, texts: Iterable[str] = (), looped: Iterable[bool] | None = None) -> None:
        super().__init__(texts)
        #: per text: its token sequence ended in a loop
        self.looped: list[bool] = [False] * len(self) if looped is None else [bool(f) for f in looped]
        if len(self.looped) != len(self):
            raise ValueError(f"{len(self.looped)} loop flags for {len(self)} hypotheses")


class StopRules:
    """A ``transformers`` logits processor that forces end-of-text for each
    row past its utterance's token budget or caught in a loop.

    :param budgets: text-token budget of each utterance of the batch, in order
    :param prompt_length: decoder prompt tokens before the first text token
    :param eos_id: the end-of-text token
    :param loop_tokens: the ``min_tokens`` of :func:`looping_rows`; ``None``
        switches the loop stop off
    """

    def __init__(self, budgets: Sequence[int], prompt_length: int, eos_id: int,
                 loop_tokens: int | None = None) -> None:
        self.budgets = [int(b) for b in budgets]
        self.prompt_length = int(prompt_length)
        self.eos_id = int(eos_id)
        self.loop_tokens = loop_tokens
        #: end-of-text tokens forced by each rule (events over all steps and
        #: rows; under beam search a stopped beam may be replaced by another
        #: that is stopped in turn)
        self.stopped = {"budget": 0, "loop": 0}

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        rows = input_ids.shape[0]
        generated = input_ids[:, self.prompt_length:]
        if rows % len(self.budgets) == 0:
            budgets = torch.tensor(self.budgets, device=input_ids.device).repeat_interleave(rows // len(self.budgets))
        else:
            # Whisper's temperature fallback re-decodes a subset of the rows (say 1 of 5) without
            # saying which: every row gets the largest budget, which never stops one too early
            budgets = torch.full((rows,), max(self.budgets), device=input_ids.device)
        over = budgets <= generated.shape[1]
        looping = (looping_rows(generated, self.loop_tokens) & ~over if self.loop_tokens
                   else torch.zeros_like(over))
        # a row that already ended (end-of-text, then padding) is not counted again
        ended = (generated == self.eos_id).any(dim=1) if generated.shape[1] else torch.zeros_like(over)
        self.stopped["budget"] += int((over & ~ended).sum())
        self.stopped["loop"] += int((looping & ~ended).sum())
        stop = over | looping
        if bool(stop.any()):
            scores = scores.clone()
            scores[stop] = float("-inf")
            scores[stop, self.eos_id] = 0.0
        return scores
