"""What the pluggable components other than backbones are.

Each kind of component is registered by name through one hook of
:mod:`ilt.hookspecs` (``register(name, factory)``) and chosen by name in a
YAML file, optionally with options (``loss: {name: ce, label_smoothing: 0.1}``).
``ilt.plugins.create(kind, name_or_spec, **options)`` calls the factory with
those options; the factory returns an object implementing the protocol below:

========== =========================== ==========================================
kind       hook                        the factory's product
========== =========================== ==========================================
loss       ``ilt_register_losses``     :class:`Loss`
voter      ``ilt_register_voters``     :class:`Voter`
augmenter  ``ilt_register_augmenters`` :class:`Augmenter`
selector   ``ilt_register_selectors``  :class:`Selector`
diarizer   ``ilt_register_diarizers``  :class:`Diarizer`
backbone   ``ilt_register_backbones``  :class:`ilt.backbone.Backbone`
========== =========================== ==========================================

The protocols are ``runtime_checkable``: ``isinstance(obj, Voter)`` checks that
the methods exist (not their signatures). ``create`` checks the same when it
builds a component (:func:`ilt.core.registry.contract_problem`) and names what
is missing. Nothing here imports torch or Lhotse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover - annotations only
    import torch
    from lhotse import CutSet

    from ilt.backbone import Backbone, Batch
    from ilt.core.runtime import Skips

#: ``cut.custom`` key a scoring :class:`Selector` sets on each cut it keeps.
SELECT_SCORE = "select_score"
#: ``cut.custom`` key an :class:`Augmenter` sets to the ID of the prompt cut it used.
PROMPT_ID = "prompt_id"


# --------------------------------------------------------------------------- losses


@runtime_checkable
class Loss(Protocol):
    """A training loss of a knowledge task (``task.loss`` in a round YAML).

    The factory takes the YAML's options as keyword arguments (the built-in
    ``ce`` takes ``label_smoothing``) and returns the loss object; it is built
    once per round and then called once per micro-batch, for training and for
    the dev loss: ``loss(backbone, model, batch)``. The object itself is
    called, so it is a function or defines ``__call__``; a method named
    ``loss`` is not part of the contract.
    """

    def __call__(self, backbone: Backbone, model: Any, batch: Batch) -> torch.Tensor:
        """The scalar loss of one collated ``batch`` (from ``backbone.collate``)
        under ``model``, which may be PEFT-wrapped and is already on the
        batch's device. It must be differentiable with respect to the LoRA
        weights and averaged (not summed) over the batch, so that gradient
        accumulation and ``train.lr`` keep their meaning. Besides its
        tensors, ``batch`` names its cuts (``cut_ids``) and their languages
        (``languages``, in order; empty when a backbone does not give them)."""


# --------------------------------------------------------------------------- voters


@dataclass(frozen=True)
class Hypothesis:
    """One model's hypothesis for one utterance, as a :class:`Voter` gets it.

    :param text: the transcript (normalised as the decoder wrote it; may be empty).
    :param score: mean log-probability per token (``<= 0``; higher is more
        confident), or ``None`` when the decoder gave no score.
    :param model: the name of the model that produced it (unique per utterance).
    :param tokens: optionally the hypothesis split into tokens (words or
        sub-words, the decoder's choice), for alignment-based voting (ROVER).
    :param token_scores: optionally one log-probability per entry of ``tokens``.
    """

    text: str
    score: float | None
    model: str
    tokens: tuple[str, ...] | None = None
    token_scores: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.tokens is not None:
            object.__setattr__(self, "tokens", tuple(self.tokens))
        if self.token_scores is not None:
            object.__setattr__(self, "token_scores", tuple(float(s) for s in self.token_scores))
            if self.tokens is None or len(self.tokens) != len(self.token_scores):
                raise ValueError(f"hypothesis of model {self.model!r}: token_scores needs tokens of the same "
                                 f"length, got {len(self.token_scores)} score(s) for "
                                 f"{'no' if self.tokens is None else len(self.tokens)} token(s)")


@dataclass(frozen=True)
class Vote:
    """The pseudo-label a :class:`Voter` chose for one utterance.

    :param text: the label; it may differ from every hypothesis (ROVER builds it
        token by token).
    :param agreement: how far the models agree on ``text``, in ``[0, 1]``: ``1``
        when every hypothesis supports it. Majority voting uses the fraction of
        models that produced exactly ``text``; the caller may drop utterances
        below a threshold.
    """

    text: str
    agreement: float

    def __post_init__(self) -> None:
        agreement = float(self.agreement)
        if math.isnan(agreement) or not 0.0 <= agreement <= 1.0:
            raise ValueError(f"vote {self.text!r}: agreement must be in [0, 1], got {self.agreement!r}")
        object.__setattr__(self, "agreement", agreement)


@runtime_checkable
class Voter(Protocol):
    """Builds one pseudo-label from the hypotheses of N models (majority, ROVER...)."""

    def vote(self, hypotheses: Sequence[Hypothesis], language: str | None) -> Vote:
        """Vote on one utterance.

        :param hypotheses: one per model that decoded the utterance, at least
            one. The result must not depend on their order: break ties by
            scores and texts (and model names), never by position.
        :param language: the utterance's ISO 639-1 code (``None``: unknown), for
            language-specific tokenisation (characters for ``ja``, ``th``...).
        :returns: the label and its agreement.
        """


# --------------------------------------------------------------------------- augmenters


@dataclass(frozen=True)
class AugmentTarget:
    """One new utterance an :class:`Augmenter` is asked to produce.

    :param id: the ID of the cut to create (unique within one call).
    :param text: what the new utterance says.
    :param language: its ISO 639-1 code (``None``: the prompt's language).
    :param prompt_id: the ID of the cut in ``prompts`` whose voice and style to
        copy; ``None`` lets the augmenter choose one (or use none).
    """

    id: str
    text: str
    language: str | None = None
    prompt_id: str | None = None


@runtime_checkable
class Augmenter(Protocol):
    """Makes new training audio, for example a TTS engine prompted by real speech."""

    def augment(self, prompts: CutSet, targets: Sequence[AugmentTarget], out_dir: Path) -> CutSet:
        """Produce one new cut per target.

        :param prompts: cuts whose audio and first supervision's text (and
            language, speaker) are the prompts of a voice-cloning engine; an
            engine that needs no prompt ignores them (may be empty).
        :param targets: what to produce; a ``prompt_id`` names a cut of ``prompts``.
        :param out_dir: where to write the audio files (created if missing); a
            file is written completely or not at all.
        :returns: a ``CutSet`` with, per target it could produce, a cut with ID
            ``target.id``, its audio under ``out_dir`` and one supervision
            carrying ``target.text``, the language and the prompt's speaker;
            ``cut.custom[PROMPT_ID]`` names the prompt it used, if any. A target
            it cannot produce (unsupported language, failed synthesis) is left
            out and logged once; the caller counts the missing IDs. Audio of a
            wrong sample rate is allowed: the backbone resamples.
        """


# --------------------------------------------------------------------------- selectors


@runtime_checkable
class Selector(Protocol):
    """Keeps the part of a pool of cuts that fits a reference set (for example
    synthetic speech whose speaker embedding is close to the real speakers)."""

    def select(self, pool: CutSet, reference: CutSet) -> CutSet:
        """The cuts of ``pool`` to keep, in ``pool``'s order, otherwise unchanged.

        A selector that ranks cuts by a score sets ``cut.custom[SELECT_SCORE]``
        (a float, higher is closer to ``reference``) on each cut it keeps, so
        the scores are written with the selected manifest; thresholds and
        quotas are the selector's options.
        """


@runtime_checkable
class ScoringSelector(Selector, Protocol):
    """A :class:`Selector` whose choice is a threshold on a per-cut score.

    Optional: ``ilt select`` uses :meth:`scores` when a selector has it, so it
    can report the distribution of the scores of *every* candidate (to choose
    a threshold) and apply its own ``--threshold``; for any other selector it
    calls :meth:`Selector.select`. ``select`` must keep exactly the cuts whose
    score is above the selector's threshold option.
    """

    def scores(self, pool: CutSet, reference: CutSet, skips: Skips | None = None) -> dict[str, float]:
        """Each ``pool`` cut's score (higher is closer to ``reference``), by cut ID.

        A cut it cannot score (no speech, unreadable audio) is left out and,
        when ``skips`` is given, counted there by reason.
        """


# --------------------------------------------------------------------------- diarizers


@dataclass(frozen=True)
class Turn:
    """One speaker turn of a session, as a :class:`Diarizer` finds it.

    :param start: seconds from the start of the recording.
    :param end: seconds from the start of the recording, ``> start``.
    :param speaker: a label unique within the session (``"spk0"``; a
        diarizer's labels need not match the reference's: scoring permutes them).
    """

    start: float
    end: float
    speaker: str

    def __post_init__(self) -> None:
        start, end = float(self.start), float(self.end)
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end <= start:
            raise ValueError(f"turn of speaker {self.speaker!r}: need 0 <= start < end, got {start!r}, {end!r}")
        if not str(self.speaker) or any(c.isspace() for c in str(self.speaker)):
            raise ValueError(f"turn at {start:.2f} s: speaker label {self.speaker!r} is empty or has whitespace")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)
        object.__setattr__(self, "speaker", str(self.speaker))

    @property
    def duration(self) -> float:
        return self.end - self.start


@runtime_checkable
class Diarizer(Protocol):
    """Finds who speaks when in a whole conversation (Track 2 of MLC-SLM)."""

    def diarize(self, session: Any) -> list[Turn]:
        """The speaker turns of one session.

        :param session: a Lhotse cut spanning one whole recording (its ID is
            the recording ID; its supervisions, the reference turns, must not
            be used). Load its audio with ``ilt.data.audio.load_checked``.
        :returns: turns sorted by start; turns of different speakers may
            overlap; an empty list when nobody speaks. An input the diarizer
            cannot handle is an :class:`ilt.errors.IltInputError` naming it.

        A diarizer reading results made elsewhere (the built-in ``rttm``) may
        also define ``check_sessions(recording_ids: set[str]) -> None``: ilt
        calls it once with every session's ID before diarizing, and it raises
        :class:`ilt.errors.IltInputError` when its results name recordings
        that are not among them.
        """


__all__ = [
    "PROMPT_ID",
    "SELECT_SCORE",
    "AugmentTarget",
    "Augmenter",
    "Diarizer",
    "Hypothesis",
    "Loss",
    "ScoringSelector",
    "Selector",
    "Turn",
    "Vote",
    "Voter",
]
