"""Built-in training losses for knowledge tasks (``task.loss`` in a round YAML).

``ce`` is the generative cross-entropy of the transcript given the audio, as
the backbone computes it (:meth:`ilt.backbone.Backbone.loss`): labels padded
with -100 are ignored, the loss is averaged over the batch's label tokens.
Its option ``label_smoothing`` (default 0) mixes the one-hot targets with the
uniform distribution over the vocabulary, as ``torch.nn.functional.cross_entropy``
does::

    task:
      loss: {name: ce, label_smoothing: 0.1}

``distill`` distils LoRA language experts into the round's LoRA (see
:mod:`ilt.experts.distill`): the cross-entropy plus ``kl_weight * T^2 *
KL(teacher_T || student_T)`` on the label positions, each cut's teacher the
expert of its language; ``ilt experts distill --experts DIR`` fills in
``experts`` and ``teacher_model``::

    task:
      loss: {name: distill, temperature: 2.0, kl_weight: 0.5, cache_dir: null}
"""

from __future__ import annotations

import math
from typing import Any

from ilt.config import ConfigError
from ilt.hookspecs import hookimpl


class CrossEntropy:
    """:class:`ilt.components.Loss`: the backbone's generative cross-entropy."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def __call__(self, backbone: Any, model: Any, batch: Any) -> Any:
        if self.label_smoothing == 0.0:  # exactly the backbone's plain loss, for any backbone
            return backbone.loss(model, batch)
        return backbone.loss(model, batch, label_smoothing=self.label_smoothing)

    def __repr__(self) -> str:
        return f"CrossEntropy(label_smoothing={self.label_smoothing})"


def cross_entropy(*, label_smoothing: float = 0.0) -> CrossEntropy:
    """The ``ce`` factory.

    :param label_smoothing: weight in ``[0, 1)`` of the uniform distribution
        mixed into the targets (0: plain cross-entropy).
    """
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
            or math.isnan(label_smoothing) or not 0.0 <= label_smoothing < 1.0:
        raise ConfigError(f"task.loss.label_smoothing: expected a number in [0, 1), got {label_smoothing!r}")
    return CrossEntropy(float(label_smoothing))


def _number(key: str, value: Any, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (positive and value == 0):
        raise ConfigError(f"task.loss.{key}: expected a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def distill(*, temperature: float = 2.0, kl_weight: float = 0.5, cache_dir: str | None = None,
            top_k: int | None = None, experts: dict[str, str] | None = None,
            teacher_model: str | None = None) -> Any:
    """The ``distill`` factory (:class:`ilt.experts.distill.DistillLoss`).

    :param temperature: softmax temperature ``T`` of both distributions (> 0).
    :param kl_weight: weight of ``T^2 * KL`` beside the cross-entropy (0: plain cross-entropy).
    :param cache_dir: keep teacher logits here, per cut and teacher (null: compute them every time).
    :param top_k: compare over the teacher's ``top_k`` tokens per position (null: the full vocabulary).
    :param experts: ``{language: adapter directory}`` of the teachers (``ilt experts distill`` sets it).
    :param teacher_model: the base model the experts were trained on (default: the student's base).
    """
    from ilt.experts.distill import DistillLoss

    temperature = _number("temperature", temperature, positive=True)
    kl_weight = _number("kl_weight", kl_weight, positive=False)
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ConfigError(f"task.loss.top_k: expected a whole number >= 1 or null, got {top_k!r}")
    if kl_weight > 0 and not experts:
        raise ConfigError("task.loss.experts: the distill loss needs its teachers: run `ilt experts distill "
                          "--experts DIR`, or write experts: {LANG: ADAPTER_DIR, ...} (or kl_weight: 0)")
    return DistillLoss(temperature=temperature, kl_weight=kl_weight, cache_dir=cache_dir, top_k=top_k,
                       experts=experts, teacher_model=teacher_model)


@hookimpl
def ilt_register_losses(register):
    register("ce", cross_entropy)
    register("distill", distill)
