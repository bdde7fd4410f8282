"""The plugin contract of ``ilt``.

Every extension point is one hook here. A hook receives a ``register`` callback
and the plugin calls it once per component it provides::

    from ilt import hookimpl

    @hookimpl
    def ilt_register_voters(register):
        register("majority", MajorityVoter)

``register(name, factory)`` stores ``factory`` under ``name`` for the hook's
kind. The factory is called later, by name, with the keyword arguments the
caller documents for that kind. Plugins return nothing: the order in which
pluggy calls hooks (last registered first) never decides anything, because
components are always chosen by name from configuration.

A name registered twice within one kind is an error naming both packages.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("ilt")
hookimpl = pluggy.HookimplMarker("ilt")

Register = Callable[[str, Callable[..., Any]], None]


@hookspec
def ilt_register_backbones(register: Register) -> None:
    """Register speech model backbones.

    :param register: call ``register(name, factory)``. ``factory(model_dir, *,
        dtype=None, device=None)`` must return an object implementing
        :class:`ilt.backbone.Backbone`: it loads a model and its processor from a
        local directory, names LoRA target modules for a scope (``attention``,
        ``wide``) or accepts explicit names, collates Lhotse cuts into batches,
        computes the generative loss, generates hypotheses and saves a full model.
    """


@hookspec
def ilt_register_augmenters(register: Register) -> None:
    """Register audio or text augmenters (for example TTS engines).

    :param register: call ``register(name, factory)``. ``factory(**options)``
        returns an object whose ``augment(cuts, out_dir)`` takes a Lhotse
        ``CutSet`` and returns a new ``CutSet`` of augmented cuts whose audio was
        written under ``out_dir``.
    """


@hookspec
def ilt_register_selectors(register: Register) -> None:
    """Register data selectors (for example speaker-embedding similarity).

    :param register: call ``register(name, factory)``. ``factory(**options)``
        returns an object whose ``select(pool, reference)`` takes two Lhotse
        ``CutSet`` objects and returns the subset of ``pool`` to keep.
    """


@hookspec
def ilt_register_voters(register: Register) -> None:
    """Register hypothesis voters for pseudo-labelling.

    :param register: call ``register(name, factory)``. ``factory(**options)``
        returns a callable ``vote(hypotheses: list[str]) -> str`` that picks or
        builds one label from the hypotheses of N models for one utterance.
    """


@hookspec
def ilt_register_losses(register: Register) -> None:
    """Register training losses for knowledge tasks.

    :param register: call ``register(name, factory)``. ``factory(**options)``
        returns a callable ``loss(backbone, model, batch) -> torch.Tensor``
        giving a scalar loss for one collated batch. The round YAML names the
        loss in ``task.loss``.
    """


@hookspec
def ilt_register_corpora(register: Register) -> None:
    """Register corpus preparation functions.

    :param register: call ``register(name, factory)``. The factory is the
        prepare function itself: ``factory(corpus_dir, out_dir, **options)`` reads a corpus from ``corpus_dir``, writes Lhotse
        manifests (``*.jsonl.gz``) atomically under ``out_dir`` and returns a
        dict mapping split names to ``CutSet`` objects. It is exposed as
        ``ilt prepare NAME``; its keyword-only options with defaults become
        command-line options.
    """
