"""Built-in training losses for knowledge tasks (``task.loss`` in a round YAML).

``ce`` is the generative cross-entropy of the transcript given the audio, as
the backbone computes it (:meth:`ilt.backbone.Backbone.loss`): labels padded
with -100 are ignored, the loss is averaged over the batch's label tokens.
Its option ``label_smoothing`` (default 0) mixes the one-hot targets with the
uniform distribution over the vocabulary, as ``torch.nn.functional.cross_entropy``
does::

    task:
      loss: {name: ce, label_smoothing: 0.1}
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


@hookimpl
def ilt_register_losses(register):
    register("ce", cross_entropy)
