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
    _checked("ce", check_cross_entropy, {"label_smoothing": label_smoothing})
    return CrossEntropy(float(label_smoothing))


def check_cross_entropy(options: dict[str, Any]) -> None:
    """``ce``'s ``validate``: ``label_smoothing`` is a number in ``[0, 1)``.

    :raises ConfigError: naming the option.
    """
    value = options.get("label_smoothing", 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) \
            or not 0.0 <= value < 1.0:
        raise ConfigError(f"label_smoothing: expected a number in [0, 1), got {value!r}")


cross_entropy.validate = check_cross_entropy  # type: ignore[attr-defined]


def _number(key: str, value: Any, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0 or (positive and value == 0):
        raise ConfigError(f"{key}: expected a finite number {'> 0' if positive else '>= 0'}, got {value!r}")


def check_distill(options: dict[str, Any]) -> None:
    """``distill``'s ``validate``: ``temperature`` > 0, ``kl_weight`` >= 0,
    ``top_k`` a whole number >= 1 or null. (``experts`` is checked when the
    loss is built: ``ilt experts distill`` fills it in.)

    :raises ConfigError: naming the option.
    """
    _number("temperature", options.get("temperature", 2.0), positive=True)
    _number("kl_weight", options.get("kl_weight", 0.5), positive=False)
    top_k = options.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ConfigError(f"top_k: expected a whole number >= 1 or null, got {top_k!r}")


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

    _checked("distill", check_distill, {"temperature": temperature, "kl_weight": kl_weight, "top_k": top_k})
    if kl_weight > 0 and not experts:
        raise ConfigError("task.loss.experts: the distill loss needs its teachers: run `ilt experts distill "
                          "--experts DIR`, or write experts: {LANG: ADAPTER_DIR, ...} (or kl_weight: 0)")
    return DistillLoss(temperature=float(temperature), kl_weight=float(kl_weight), cache_dir=cache_dir, top_k=top_k,
                       experts=experts, teacher_model=teacher_model)


distill.validate = check_distill  # type: ignore[attr-defined]


def _checked(loss: str, validate: Any, options: dict[str, Any]) -> None:
    """Run a loss's ``validate`` for a direct call of its factory: the error names the loss."""
    try:
        validate(options)
    except ConfigError as exc:
        raise ConfigError(f"loss {loss}: {exc}") from None


@hookimpl
def ilt_register_losses(register):
    register("ce", cross_entropy)
    register("distill", distill)
