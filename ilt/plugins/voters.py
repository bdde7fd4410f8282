"""Built-in voters: pseudo-labels from the hypotheses of N models (ILT paper, section 2.3).

Both voters see text the way the scorer does: :func:`ilt.data.text.tokens_for_scoring`
in the utterance's language (lowercase, no punctuation, characters for the CER
languages ``ja``, ``ko``, ``th``, where runs of Latin letters or digits stay one
unit). A language of ``None`` is scored by words.

``majority``
    Hard voting over whole hypotheses. Hypotheses whose scoring units are equal
    form one group (``"Hello, world."`` and ``"hello world"`` vote together).
    The biggest group wins; a tie between groups goes to the group whose best
    hypothesis has the highest mean log-probability (``Hypothesis.score``;
    ``None`` counts as ``-inf``), then to the group whose units sort first. The
    label is the original text of the group's best hypothesis (highest score,
    then smallest text, then smallest model name); ``""`` when the group's
    units are empty. **Agreement** = size of the winning group / N.

``rover``
    Recogniser Output Voting Error Reduction (Fiscus 1997, SCTK's ``rover``).
    The hypotheses are aligned into one word transition network whose slots
    hold, per hypothesis, one scoring unit or NULL (nothing); then each slot
    votes. A candidate ``w`` of a slot scores::

        alpha * count(w) / N + (1 - alpha) * confidence(w)

    where ``confidence(w)`` is the mean, over the hypotheses voting for ``w``,
    of ``exp(Hypothesis.score)`` (the probability of the hypothesis' mean
    token; a ``None`` score counts as 0), and ``confidence(NULL)`` is the fixed
    option ``null_confidence`` (SCTK's "conf for NULL"). Per-token
    ``token_scores`` are not used: they belong to the decoder's sub-word
    tokens, not to scoring units. ``alpha = 1`` (the default) is a pure
    frequency vote. Ties: by ``null_wins_ties`` NULL beats or yields to a word
    of the same score; between words, the higher confidence and then the
    smaller unit wins. The winning units are joined with spaces, or for CER
    languages without them (a space only where two units would otherwise
    merge, e.g. two Latin words), so the label's scoring units are exactly the
    winners. **Agreement** = the mean over slots of the winner's vote share
    (count / N, NULL included), so 1 exactly when all hypotheses have the same
    units; ``""`` with agreement 1 when all are empty.

Order invariance: SCTK aligns the hypotheses into the network in input order,
so its output depends on that order. ``rover`` first sorts the hypotheses by a
key that does not depend on their position, ``(-score, units, model)`` (a
``None`` score last; model names are unique per utterance), and builds the
network in that order: the first hypothesis makes the slots, and each next one
is aligned (``rapidfuzz.distance.Levenshtein.opcodes``) to the network's
representative sequence, each slot's most frequent unit (ties: the smallest).
``majority``'s tie-breaks use only scores and texts. Neither result depends on
the order of the hypotheses.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from rapidfuzz.distance import Levenshtein

from ilt.components import Hypothesis, Vote
from ilt.config import ConfigError
from ilt.data.text import split_cer_chars, tokens_for_scoring, unit_of
from ilt.hookspecs import hookimpl

__all__ = ["MajorityVoter", "RoverVoter"]

#: A slot of the network: per hypothesis (in canonical order), its unit or None (NULL).
Slot = list[str | None]


def _language(language: str | None) -> str:
    return language or ""


def _units(hypothesis: Hypothesis, language: str | None) -> tuple[str, ...]:
    return tuple(tokens_for_scoring(hypothesis.text, _language(language)))


def _score(hypothesis: Hypothesis) -> float:
    return -math.inf if hypothesis.score is None else float(hypothesis.score)


def _check(hypotheses: Sequence[Hypothesis], voter: str) -> None:
    if len(hypotheses) == 0:
        raise ValueError(f"voter {voter!r}: no hypotheses to vote on (at least one is needed)")


def _checked(voter: str, validate: Any, options: dict[str, Any]) -> None:
    """Run a voter's ``validate`` for a direct construction: the error names the voter."""
    try:
        validate(options)
    except ConfigError as exc:
        raise ConfigError(f"voter {voter}: {exc}") from None


def join_units(units: Sequence[str], language: str | None) -> str:
    """The text whose scoring units are ``units``: joined by spaces for word
    languages; for CER languages without spaces, except between two units that
    would merge into one (``["new", "york", "に"]`` -> ``"new yorkに"``)."""
    if unit_of(_language(language)) != "char":
        return " ".join(units)
    out = ""
    for unit in units:
        if out and split_cer_chars(out[-1] + unit[0]).count(" ") == 0:
            out += " "
        out += unit
    return out


class MajorityVoter:
    """:class:`ilt.components.Voter` ``majority``: the most frequent normalised hypothesis.

    :param normalized: group hypotheses by their scoring units (``True``, the
        default) or by their exact text (``False``).
    """

    def __init__(self, *, normalized: bool = True) -> None:
        _checked("majority", self.validate, {"normalized": normalized})
        self.normalized = normalized

    @staticmethod
    def validate(options: dict[str, Any]) -> None:
        """Check the options a config gives (``ilt config check`` runs this).

        :raises ConfigError: ``normalized`` is not a boolean.
        """
        if "normalized" in options and not isinstance(options["normalized"], bool):
            raise ConfigError(f"normalized: must be true or false, got {options['normalized']!r}")

    def _key(self, hypothesis: Hypothesis, language: str | None) -> tuple[str, ...]:
        if self.normalized:
            return _units(hypothesis, language)
        return (hypothesis.text,) if hypothesis.text else ()

    def vote(self, hypotheses: Sequence[Hypothesis], language: str | None) -> Vote:
        """The label of the biggest group of equal hypotheses; agreement = its size / N."""
        _check(hypotheses, "majority")
        groups: dict[tuple[str, ...], list[Hypothesis]] = {}
        for hypothesis in hypotheses:
            groups.setdefault(self._key(hypothesis, language), []).append(hypothesis)
        key, members = min(groups.items(),
                           key=lambda kv: (-len(kv[1]), -max(_score(h) for h in kv[1]), kv[0]))
        best = min(members, key=lambda h: (-_score(h), h.text, h.model))
        return Vote(best.text if key else "", len(members) / len(hypotheses))

    def __repr__(self) -> str:
        return f"MajorityVoter(normalized={self.normalized})"


class RoverVoter:
    """:class:`ilt.components.Voter` ``rover``: align all hypotheses, vote slot by slot.

    :param alpha: weight in ``[0, 1]`` of the vote frequency against the
        confidence (1, the default: frequency only).
    :param null_confidence: confidence in ``[0, 1]`` of the empty (NULL) candidate.
    :param null_wins_ties: whether NULL wins a tie with a word (default: the word wins).
    """

    def __init__(self, *, alpha: float = 1.0, null_confidence: float = 0.7, null_wins_ties: bool = False) -> None:
        _checked("rover", self.validate, {"alpha": alpha, "null_confidence": null_confidence,
                                          "null_wins_ties": null_wins_ties})
        self.alpha = float(alpha)
        self.null_confidence = float(null_confidence)
        self.null_wins_ties = null_wins_ties

    @staticmethod
    def validate(options: dict[str, Any]) -> None:
        """Check the options a config gives (``ilt config check`` runs this).

        :raises ConfigError: ``alpha`` or ``null_confidence`` not a number in
            ``[0, 1]``, or ``null_wins_ties`` not a boolean.
        """
        for name in ("alpha", "null_confidence"):
            value = options.get(name, 0.0)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name}: must be a number in [0, 1], got {value!r}")
        if not isinstance(options.get("null_wins_ties", False), bool):
            raise ConfigError(f"null_wins_ties: must be true or false, got {options['null_wins_ties']!r}")

    def vote(self, hypotheses: Sequence[Hypothesis], language: str | None) -> Vote:
        """Build the network in canonical order and keep each slot's best candidate."""
        _check(hypotheses, "rover")
        ranked = sorted(((h, _units(h, language)) for h in hypotheses),
                        key=lambda hu: (-_score(hu[0]), hu[1], hu[0].model))
        slots = build_network([units for _, units in ranked])
        confidences = [0.0 if h.score is None else math.exp(min(float(h.score), 0.0)) for h, _ in ranked]
        winners, shares = [], []
        for slot in slots:
            unit, share = self._vote_slot(slot, confidences)
            shares.append(share)
            if unit is not None:
                winners.append(unit)
        agreement = math.fsum(shares) / len(shares) if shares else 1.0
        return Vote(join_units(winners, language), min(1.0, agreement))

    def _vote_slot(self, slot: Slot, confidences: Sequence[float]) -> tuple[str | None, float]:
        """The winning candidate of one slot (``None``: NULL) and its vote share."""
        n = len(slot)
        counts = Counter(slot)
        ranking = []
        for candidate, count in counts.items():
            if candidate is None:
                confidence = self.null_confidence
            else:
                confidence = math.fsum(c for c, u in zip(confidences, slot) if u == candidate) / count
            score = self.alpha * count / n + (1.0 - self.alpha) * confidence
            null_rank = 0 if (candidate is None) == self.null_wins_ties else 1  # the tie's winner first
            ranking.append(((-score, null_rank, -confidence, candidate or ""), candidate, count))
        _, winner, count = min(ranking, key=lambda r: r[0])
        return winner, count / n

    def __repr__(self) -> str:
        return (f"RoverVoter(alpha={self.alpha}, null_confidence={self.null_confidence}, "
                f"null_wins_ties={self.null_wins_ties})")


def _representative(slot: Slot) -> str:
    """The slot's most frequent unit (ties: the smallest); every slot has one."""
    counts = Counter(u for u in slot if u is not None)
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def build_network(sequences: Sequence[Sequence[str]]) -> list[Slot]:
    """The word transition network of ``sequences``, aligned in the order given.

    :returns: the slots in order; slot ``[k]`` is the unit of sequence ``k`` in
        that slot, or ``None`` (NULL). No slot is all NULL. Each sequence is
        aligned with ``rapidfuzz``'s Levenshtein opcodes to the network built
        so far, represented by each slot's most frequent unit.
    """
    slots: list[Slot] = []
    for k, units in enumerate(sequences):
        reference = [_representative(slot) for slot in slots]
        merged: list[Slot] = []
        for op in Levenshtein.opcodes(reference, list(units)):
            old, new = slots[op.src_start:op.src_end], list(units[op.dest_start:op.dest_end])
            paired = min(len(old), len(new)) if op.tag in ("equal", "replace") else 0
            for slot, unit in zip(old[:paired], new[:paired]):
                merged.append(slot + [unit])
            for slot in old[paired:]:  # deleted: this sequence has nothing there
                merged.append(slot + [None])
            for unit in new[paired:]:  # inserted: the earlier sequences have nothing there
                merged.append([None] * k + [unit])
        slots = merged
    return slots


@hookimpl
def ilt_register_voters(register):
    """Register ``majority`` and ``rover``."""
    register("majority", MajorityVoter)
    register("rover", RoverVoter)
