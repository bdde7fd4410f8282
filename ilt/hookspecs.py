"""The plugin contract of ``ilt``.

Every extension point is one hook here. A hook receives a ``register`` callback
and the plugin calls it once per component it provides::

    from ilt import hookimpl

    @hookimpl
    def ilt_register_voters(register):
        register("majority", MajorityVoter)

``register(name, factory)`` stores ``factory`` under ``name`` for the hook's
kind. Plugins return nothing: the order in which pluggy calls hooks (last
registered first) never decides anything, because components are always
chosen by name from configuration.

The factory is called later through ``ilt.plugins.create(kind, name_or_spec,
*args, **options)``: with the positional arguments the hook documents (a
backbone's ``model_dir``) and, as keyword arguments, the options the YAML gives
(``loss: {name: ce, label_smoothing: 0.1}``). Declare options as keyword
parameters with defaults and simple annotations (``float``, ``int``, ``str``,
``bool``, ``Literal``...): ``ilt config check`` checks option names and types
against the factory's signature. A factory taking ``**options`` accepts
anything. What each factory returns is a protocol of :mod:`ilt.components`
(or :class:`ilt.backbone.Backbone`); ``create`` checks, when it builds the
component, that every member of the protocol is there and callable (a loss is
the object ilt calls, so it defines ``__call__``), and raises a
:class:`ilt.plugins.PluginError` saying what is missing otherwise.

A factory rejects bad option values (ranges) with an optional
``validate(options: dict) -> None``: a function attribute of a function
factory, or a classmethod or staticmethod of a class factory. It raises
``ValueError`` (or :class:`ilt.config.ConfigError`) with a message starting
with the option's name (``epsilon: must be in [0, 1], got 1.5``). ``ilt
config check`` runs it without building anything and puts the file and the
dotted key in front (``conf/fix.yaml: task.loss.epsilon: ...``); ``create``
runs it before the factory. A :class:`ilt.config.ConfigError` raised by the
factory itself reaches the user unchanged; any other exception is reported as
a :class:`ilt.plugins.PluginError` naming the component and its package.

A name registered twice within one kind is an error naming both packages. A
plugin that fails to import, or whose hook raises, is skipped with a warning.
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
        dtype=None, device=None, **options)`` must return an object implementing
        :class:`ilt.backbone.Backbone`: it loads a model and its processor from a
        local directory, names LoRA target modules for a scope (``attention``,
        ``wide``) or accepts explicit names, collates Lhotse cuts into batches,
        computes the generative loss, generates hypotheses, scores them (mean token
        log-probability, the confidence voters use) and saves a full model.
        ``model_dir``, ``dtype`` and ``device`` come from the caller; other
        keyword parameters are options of the YAML's ``backbone:`` (round and
        decode configs). A missing or wrong ``model_dir`` is an
        :class:`ilt.errors.IltInputError` naming it. Optionally the factory
        takes ``tokenizer_only: bool = False``: when true it reads no weights and
        may return a light object with only ``name`` and ``tokenize`` (what
        token-frequency analysis needs); callers load backbones without that
        parameter fully.
    """


@hookspec
def ilt_register_augmenters(register: Register) -> None:
    """Register audio or text augmenters (for example TTS engines).

    :param register: call ``register(name, factory)``. ``factory(**options)``
        returns an :class:`ilt.components.Augmenter`: ``augment(prompts,
        targets, out_dir) -> CutSet`` produces one new cut per
        :class:`ilt.components.AugmentTarget` (ID, text, language, prompt cut),
        prompted by the audio and transcripts of the ``prompts`` cuts, with its
        audio written under ``out_dir``.
    """


@hookspec
def ilt_register_selectors(register: Register) -> None:
    """Register data selectors (for example speaker-embedding similarity).

    :param register: call ``register(name, factory)``. ``factory(**options)``
        returns an :class:`ilt.components.Selector`: ``select(pool, reference)
        -> CutSet`` returns the cuts of ``pool`` to keep, in order; a scoring
        selector sets ``cut.custom["select_score"]`` on each kept cut. One
        whose choice is a threshold on a score may also implement
        :class:`ilt.components.ScoringSelector` (``scores(pool, reference,
        skips)``), so ``ilt select`` can show every candidate's score; a
        factory taking ``cache_dir`` gets ``ilt select --cache-dir``.
    """


@hookspec
def ilt_register_voters(register: Register) -> None:
    """Register hypothesis voters for pseudo-labelling.

    :param register: call ``register(name, factory)``. ``factory(**options)``
        returns an :class:`ilt.components.Voter`: ``vote(hypotheses, language)
        -> Vote`` builds one pseudo-label (and its agreement in ``[0, 1]``) from
        the :class:`ilt.components.Hypothesis` of each of N models (text, mean
        token log-probability, model name, optional tokens) for one utterance.
    """


@hookspec
def ilt_register_losses(register: Register) -> None:
    """Register training losses for knowledge tasks.

    :param register: call ``register(name, factory)``. ``factory(**options)``
        returns an :class:`ilt.components.Loss`: a callable ``loss(backbone,
        model, batch) -> torch.Tensor`` giving a scalar loss for one collated
        batch. The round YAML names the loss and its options in ``task.loss``
        (``ce``, or ``{name: ce, label_smoothing: 0.1}``).
    """


@hookspec
def ilt_register_corpora(register: Register) -> None:
    """Register corpus preparation functions.

    :param register: call ``register(name, factory)``. The factory is the
        prepare function itself: ``factory(corpus_dir, out_dir, **options)``
        reads a corpus from ``corpus_dir``, writes Lhotse
        manifests (``*.jsonl.gz``) atomically under ``out_dir`` and returns a
        dict mapping split names to ``CutSet`` objects. It is exposed as
        ``ilt prepare NAME``; its keyword-only options with defaults become
        command-line options.
    """


@hookspec
def ilt_register_diarizers(register: Register) -> None:
    """Register speaker diarizers (Track 2: who speaks when in a whole conversation).

    :param register: call ``register(name, factory)``. ``factory(**options)``
        returns an :class:`ilt.components.Diarizer`: ``diarize(session) ->
        list[Turn]`` gives the :class:`ilt.components.Turn` (start, end,
        speaker label) of one session, a Lhotse cut spanning a whole recording.
        ``ilt diarize --diarizer '{name: NAME, OPTION: VALUE}'`` chooses one;
        a missing model or library is an :class:`ilt.errors.IltInputError`
        saying what to install or pass.
    """
