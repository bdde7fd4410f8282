"""Built-in training losses for knowledge tasks (``task.loss`` in a round YAML).

``ce`` is the generative cross-entropy of the transcript given the audio, as
the backbone computes it (:meth:`ilt.backbone.Backbone.loss`): labels padded
with -100 are ignored, the loss is averaged over the batch's label tokens.
"""

from __future__ import annotations

from typing import Any, Callable

from ilt.hookspecs import hookimpl


def cross_entropy() -> Callable[[Any, Any, Any], Any]:
    """``loss(backbone, model, batch)``: the backbone's generative cross-entropy."""

    def loss(backbone: Any, model: Any, batch: Any) -> Any:
        return backbone.loss(model, batch)

    return loss


@hookimpl
def ilt_register_losses(register):
    register("ce", cross_entropy)
