"""What every ``ilt`` command shares: the user-facing error, the option
conventions, the saved command line, config loading with overrides, and the
option sets used by more than one command. The command modules (listed in
:data:`ilt.cli.main.COMMAND_MODULES`) import from here, so no command module
imports the root group.

The conventions every command follows (README, "Command-line conventions"):

* **Usage errors exit 2**, as click's own do (:class:`click.UsageError`, or
  :class:`click.BadParameter` naming the option); an error in the data, the
  files or the run exits 1 (:class:`IltError`, or a library error).
* **One name per meaning:** ``--decode-config`` is the decoding YAML,
  ``--overwrite`` replaces an existing output, ``--out`` is the output, and
  every option that reads a model takes a directory or a hub ID (:data:`MODEL`).
  The older names (``--conf``, ``--force``, a positional output) still work
  for one release, hidden from ``--help`` (:class:`IltOption`'s ``aliases``,
  :class:`DeprecatedArgument`).
* **Lists:** a list option is repeatable, and each value may also hold several
  items separated by commas: ``--models A --models B`` is ``--models A,B``
  (:func:`list_option`). ``KEY=VALUE`` options (``-o/--override``, ``ilt
  prepare lhotse --option``) repeat but are never split, since a value may
  hold commas.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Sequence

import click


class IltError(click.ClickException):
    """A user-facing error in the data, the files or the run: printed without
    a traceback, exit status 1. A bad flag or flag combination is a
    :class:`click.UsageError` instead (exit status 2)."""


def error_line(exc: BaseException) -> str:
    """The one-line message shown for ``exc`` without ``--debug``.

    The library's user-facing errors (:class:`ilt.config.ConfigError`,
    :class:`ilt.core.registry.PluginError`, :class:`ilt.errors.IltInputError`)
    are shown as they are; anything else as an unexpected error with a hint.
    """
    from ilt.config import ConfigError
    from ilt.core.files import os_error_line
    from ilt.core.registry import PluginError
    from ilt.errors import IltInputError

    text = " ".join(str(exc).split())
    if isinstance(exc, (ConfigError, PluginError, IltInputError)):
        return text or type(exc).__name__
    if os_error_line(exc):  # no space, read-only, permissions: the file and the fix
        return os_error_line(exc)
    return (f"unexpected {type(exc).__name__}{': ' + text if text else ''} "
            f"(run `ilt --debug ...` to see the traceback)")


# --------------------------------------------------------------------------- option conventions


def split_list(values: Sequence[Any]) -> list[Any]:
    """The items of a list option's values: each string split at commas, blanks dropped."""
    items: list[Any] = []
    for value in values:
        if isinstance(value, str):
            items.extend(piece.strip() for piece in value.split(",") if piece.strip())
        else:
            items.append(value)
    return items


class IltOption(click.Option):
    """A :class:`click.Option` with the two conventions of every ``ilt`` command.

    :param aliases: older spellings (``"--conf"``, ``"--force/--no-force"``)
        that keep working for one release but are left out of ``--help`` and
        of error messages.
    :param split_commas: a list option (implies ``multiple=True``): each value
        given may hold several items separated by commas.
    """

    def __init__(self, param_decls: Sequence[str], *, aliases: Sequence[str] = (), split_commas: bool = False,
                 **attrs: Any) -> None:
        if split_commas:
            attrs["multiple"] = True
        super().__init__([*param_decls, *aliases], **attrs)
        self.aliases = frozenset(part for alias in aliases for part in alias.split("/"))
        self.split_commas = split_commas

    def type_cast_value(self, ctx: click.Context, value: Any) -> Any:
        if self.split_commas and isinstance(value, (tuple, list)):
            value = split_list(value)
        return super().type_cast_value(ctx, value)

    def _visible(self, method: str, ctx: click.Context) -> Any:
        """``method`` of the option as if the aliases were not among its names."""
        opts, secondary = self.opts, self.secondary_opts
        self.opts = [o for o in opts if o not in self.aliases]
        self.secondary_opts = [o for o in secondary if o not in self.aliases]
        try:
            return getattr(super(), method)(ctx)
        finally:
            self.opts, self.secondary_opts = opts, secondary

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        return self._visible("get_help_record", ctx)

    def get_error_hint(self, ctx: click.Context) -> str:
        return self._visible("get_error_hint", ctx)


def option(*param_decls: str, **attrs: Any) -> Any:
    """:func:`click.option` with :class:`IltOption` (``aliases=``, ``split_commas=``)."""
    return click.option(*param_decls, cls=IltOption, **attrs)


def list_option(*param_decls: str, **attrs: Any) -> Any:
    """A list option: repeatable, and each value may hold comma-separated items."""
    return option(*param_decls, split_commas=True, **attrs)


class DeprecatedArgument(click.Argument):
    """A positional argument an option replaced (an output directory now given
    as ``--out``): still accepted for one release, left out of the usage line.
    It is optional; the command resolves it with :func:`out_or_positional`."""

    def __init__(self, param_decls: Sequence[str], **attrs: Any) -> None:
        super().__init__(param_decls, required=False, **attrs)

    def get_usage_pieces(self, ctx: click.Context) -> list[str]:
        return []


def out_or_positional(out: str | None, positional: str | None, what: str = "OUT") -> str:
    """The output given as ``--out`` or (deprecated) as the positional ``what``."""
    if out and positional:
        raise click.UsageError(f"the output is given twice: --out {out} and {what} {positional}; give --out only")
    if not (out or positional):
        raise click.UsageError("Missing option '--out'.")
    return out or positional  # type: ignore[return-value]


class ModelParam(click.ParamType):
    """A model: an existing local directory, or a Hugging Face Hub ID
    ``ORG/NAME[@REVISION]`` resolved to its cached snapshot (downloaded when
    online; ``HF_HUB_OFFLINE=1`` uses the cache only). The value is the local
    directory; a hub snapshot's path names its commit, which the lineage records."""

    name = "model"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "DIR|ORG/NAME[@REV]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from ilt.errors import IltInputError
        from ilt.models.hub import resolve_model

        if isinstance(value, Path):
            value = str(value)
        try:
            return str(resolve_model(value))
        except IltInputError as exc:
            self.fail(str(exc), param, ctx)


#: The click type of every option or argument that reads a model (see :class:`ModelParam`).
MODEL = ModelParam()


def decode_config_option(help: str = "Decoding YAML (default: built-in defaults, see conf/decode.yaml).") -> Any:
    """``--decode-config``: the decoding YAML of every command that decodes (old name ``--conf``)."""
    return option("--decode-config", "decode_config", aliases=("--conf",),
                  type=click.Path(exists=True, dir_okay=False), help=help)


def overwrite_option(help: str = "Replace an existing output directory.") -> Any:
    """``--overwrite``: replace an existing output (old name ``--force`` where a command had it)."""
    return option("--overwrite", "overwrite", is_flag=True, aliases=("--force",), help=help)


override_option = click.option(
    "-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a config key, e.g. -o train.max_steps=10 (repeatable; validated like the file).")


# --------------------------------------------------------------------------- helpers of the commands


def command_line() -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in ["ilt", *sys.argv[1:]])


def parse_sources(values: Sequence[str]) -> list[tuple[str, float]] | None:
    """``CUTS`` or ``CUTS:WEIGHT`` (weight defaults to 1)."""
    if not values:
        return None
    sources = []
    for value in values:
        path, sep, weight = value.rpartition(":")
        if not sep or not (path.endswith((".gz", ".jsonl")) or path.startswith("shar:")):  # shar:DIR[:WEIGHT]
            path, weight = value, ""
        try:
            sources.append((path, float(weight) if weight else 1.0))
        except ValueError:
            raise click.BadParameter(f"{value!r}: weight {weight!r} is not a number",
                                     param_hint="'--train'") from None
    return sources


def is_main_process() -> bool:
    """Rank 0 under `accelerate launch`/torchrun, or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


def save_command(out_dir: str | Path) -> None:
    """Write the exact command into ``out_dir/command.txt`` (main process only)."""
    from ilt.core.files import write_text_atomic

    if is_main_process():
        write_text_atomic(Path(out_dir) / "command.txt", command_line() + "\n")


def load_config(path: str | None, cls: type, overrides: tuple[str, ...]) -> Any:
    """A config file with its overrides, its components checked against the
    registry before anything heavy loads (as `ilt config check` does)."""
    from ilt.config import check_components, load_with_overrides
    from ilt.core.registry import get_registry

    cfg = load_with_overrides(path, cls, overrides)
    check_components(cfg, get_registry(), path or "<defaults>")
    return cfg


def parse_weights(weights: Sequence[str]) -> list[float] | None:
    """The numbers of a ``--weights`` list option (``None`` when none is given)."""
    try:
        return [float(w) for w in weights] if weights else None
    except ValueError:
        raise click.BadParameter(f"{','.join(weights)!r}: expected numbers, e.g. 0.8,0.2",
                                 param_hint="'--weights'") from None


def parse_component(value: str, option: str) -> Any:
    """A registered name or a YAML mapping ``{name: NAME, OPTION: VALUE}`` given
    on the command line, as an :class:`ilt.config.ComponentSpec`. The one
    command-line parser of components (``--voter``, ``--selector``,
    ``--augmenter``, ``--diarizer``); the YAML value is then read by
    :meth:`ilt.config.ComponentSpec.from_yaml`, as a config file's is."""
    import yaml

    from ilt.config import ComponentSpec
    from ilt.errors import ConfigError

    try:
        return ComponentSpec.from_yaml(yaml.safe_load(value), option)
    except yaml.YAMLError as exc:
        raise click.BadParameter(f"{value!r}: not a name or YAML mapping: {' '.join(str(exc).split())}",
                                 param_hint=f"'{option}'") from None
    except ConfigError as exc:  # its message starts with the option
        raise click.UsageError(str(exc)) from None


# --------------------------------------------------------------------------- decoding


def decode_options(fn):
    """The options of `ilt decode`, shared by `ilt evaluate`."""
    options = [
        click.option("--model", "model_dir", type=MODEL,
                     help="A model directory, or a hub ID ORG/NAME[@REVISION] (its cached snapshot); "
                          "required unless --experts names the base model."),
        click.option("--adapter", "adapter_dir", type=click.Path(exists=True, file_okay=False),
                     help="A LoRA on top of --model, unmerged: a round's best/ or final/, or a checkpoint "
                          "checkpoints/step-N."),
        click.option("--experts", "experts_dir", type=click.Path(file_okay=False),
                     help="LoRA language experts (`ilt experts train --out DIR`): each cut decodes with its "
                          "language's expert (detected by the base model when the cut has none; the base model "
                          "when its language has no expert) on the base model experts.json names (or --model)."),
        click.option("--expert-batching", type=click.Choice(["mixed", "per-group"]), default="mixed",
                     show_default=True,
                     help="With --experts: mixed puts several languages and experts in one batch (PEFT "
                          "adapter_names); per-group decodes one language after another."),
        click.option("--cuts", "cuts_path", required=True, type=click.Path(exists=True, dir_okay=False)),
        click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False)),
        decode_config_option(),
        click.option("--scores", is_flag=True,
                     help="Add each hypothesis' confidence (mean token log-probability) to hyps.jsonl."),
        override_option,
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def run_decode(model_dir, adapter_dir, cuts_path, out_dir, decode_config, scores, overrides, experts_dir=None,
               expert_batching="mixed") -> list[dict[str, Any]]:
    """Decode ``cuts_path`` into ``out_dir`` with a model, an adapter on it, or language experts."""
    from ilt.asr.decode import decode_files
    from ilt.config import DecodeConfig

    if experts_dir is not None and adapter_dir is not None:
        raise click.UsageError("--adapter and --experts: give one (the experts are LoRAs on the base model)")
    if experts_dir is None and model_dir is None:
        raise click.UsageError("Missing option '--model' (or --experts DIR, whose experts.json names the base model)")
    cfg = load_config(decode_config, DecodeConfig, overrides)
    if experts_dir is not None:
        from ilt.experts.train import decode_expert_files

        return decode_expert_files(experts_dir, cuts_path, out_dir, cfg, model_dir=model_dir,
                                   batching=expert_batching, scores=scores)
    return decode_files(model_dir, cuts_path, out_dir, cfg, adapter=adapter_dir, scores=scores)
