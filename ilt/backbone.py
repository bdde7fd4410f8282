"""What a backbone is: the only model-specific code in ``ilt``.

A backbone plugin registers a factory ``factory(model_dir, *, dtype=None,
device=None) -> Backbone`` through ``ilt_register_backbones`` (optionally
with ``tokenizer_only=True``: a light object with only ``name`` and
:meth:`Backbone.tokenize`, no weights read). Everything else
(training loop, merging, decoding orchestration, voting, scoring) only talks to
this protocol, so a new model family is one plugin module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

#: LoRA scopes every backbone understands (the round YAML's ``target_modules``).
SCOPES = ("attention", "wide")


@dataclass
class Batch:
    """A collated training or evaluation batch.

    ``tensors`` goes to the model (features, labels, attention masks...);
    ``cut_ids`` lists the cuts it holds, in order; ``skipped`` maps the IDs of
    cuts dropped while collating to the reason (unreadable audio, text too
    long...), for counting and logging by the caller. ``languages`` is each
    held cut's language (its first supervision's), in order: what a loss
    that treats languages apart reads (``distill``: each cut's teacher); a
    backbone that does not fill it leaves it empty.
    """

    tensors: dict[str, Any]
    cut_ids: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    languages: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.cut_ids)

    def to(self, device: Any) -> "Batch":
        moved = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in self.tensors.items()}
        return Batch(moved, self.cut_ids, self.skipped, self.languages)


@runtime_checkable
class Backbone(Protocol):
    """A loaded speech foundation model plus its processor."""

    #: the registered name (``whisper``)
    name: str
    #: the underlying ``transformers`` model (a ``torch.nn.Module``)
    model: Any
    #: audio sampling rate the model expects
    sampling_rate: int
    #: longest audio (seconds) the model takes in one window; longer audio is
    #: chunked by the caller
    max_input_seconds: float

    def target_modules(self, spec: str | Sequence[str]) -> list[str]:
        """Module names for a LoRA: ``spec`` is a scope from :data:`SCOPES` or
        explicit names. Raises ``ValueError`` listing what exists when nothing
        matches."""

    def collate(self, cuts: Any) -> Batch:
        """Turn a Lhotse ``CutSet`` (with text and language on the first
        supervision) into a training batch with masked label padding."""

    def loss(self, model: Any, batch: Batch, *, label_smoothing: float = 0.0) -> Any:
        """The generative cross-entropy loss of ``batch`` under ``model`` (a
        scalar tensor, the mean over label tokens); ``model`` may be the
        PEFT-wrapped model. ``label_smoothing`` in ``[0, 1)`` is the weight of
        the uniform distribution mixed into the targets, as in
        ``torch.nn.functional.cross_entropy`` (the ``ce`` loss's option); at 0
        the loss is the plain cross-entropy."""

    def features(self, audios: Sequence[np.ndarray]) -> dict[str, Any]:
        """Model inputs for raw mono audio at :attr:`sampling_rate`, each at
        most :attr:`max_input_seconds` long."""

    def generate(self, model: Any, inputs: dict[str, Any], *, language: str | None,
                 num_beams: int = 1, max_new_tokens: int = 440, **kwargs: Any) -> list[str]:
        """Decode one batch of ``features()`` output in ``language`` (``None``:
        let the model decide) and return the hypothesis texts. A backbone that
        can tell which hypotheses ended in a repetition loop returns them as
        :class:`ilt.models.generation.Hypotheses` (a list with one ``looped``
        flag per text), so that the decoder's loop guard retries those whose
        text hides the loop; a plain list is read as "no loop known"."""

    def score(self, model: Any, inputs: dict[str, Any], texts: Sequence[str], *,
              language: str | None) -> list[tuple[float, int]]:
        """The confidence of hypotheses: for each text, its mean token
        log-probability given its audio (one batch of ``features()`` output,
        in order) and the number of tokens scored, teacher-forced over the
        tokens training would use for that text (so any search method's
        output, and any pseudo-label, is scored alike)."""

    def tokenize(self, text: str, language: str | None = None) -> list[str]:
        """The tokenizer's pieces for a transcript, exactly the text tokens
        training would use for it (no prompt or special tokens), as readable
        strings: what token-frequency analysis counts."""

    def save(self, model: Any, out_dir: str | Path) -> None:
        """Write a full model (safetensors) plus its processor to ``out_dir``."""


@runtime_checkable
class SupportsLanguageId(Protocol):
    """What a backbone adds for language-ID embeddings (:mod:`ilt.models.lid`; both
    built-in backbones have it). A backbone without it trains and decodes as
    usual; a round with ``train.lid_embeddings: true`` on it is refused."""

    def lid_modules(self) -> tuple[Any, Any]:
        """``(encoder, lm_head)`` of :attr:`Backbone.model`: the module whose
        output (``last_hidden_state``, width ``config.d_model`` or
        ``config.hidden_size``) gets the encoder-side vector, and the linear
        LM head whose input gets the decoder-side vector."""

    def detect_language(self, model: Any, inputs: dict[str, Any]) -> list[str | None]:
        """The model's own language decision for each input of one
        ``features()`` batch (an ISO 639-1 code, ``None`` when it gives none),
        without language-ID embeddings."""


