"""What every ``ilt`` command shares: the user-facing error, the saved
command line, config loading with overrides, and option sets used by more
than one command. Command modules (``ilt.cli.commands_registry.*``) and ``ilt.cli.main`` import
from here, so no command module imports the root group."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click


class IltError(click.ClickException):
    """A user-facing error: printed without a traceback, exit status 1."""


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


#: The click type of every ``--model``-like option (see :class:`ModelParam`).
MODEL = ModelParam()


def command_line() -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in ["ilt", *sys.argv[1:]])


def parse_sources(values: tuple[str, ...]) -> list[tuple[str, float]] | None:
    """``CUTS`` or ``CUTS:WEIGHT`` (weight defaults to 1)."""
    if not values:
        return None
    sources = []
    for value in values:
        path, sep, weight = value.rpartition(":")
        if not sep or not path.endswith((".gz", ".jsonl")):
            path, weight = value, ""
        try:
            sources.append((path, float(weight) if weight else 1.0))
        except ValueError:
            raise IltError(f"--train {value!r}: weight {weight!r} is not a number") from None
    return sources


def is_main_process() -> bool:
    """Rank 0 under `accelerate launch`/torchrun, or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


def save_command(out_dir: str | Path) -> None:
    """Write the exact command into ``out_dir/command.txt`` (main process only)."""
    from ilt.core.files import write_text_atomic

    if is_main_process():
        write_text_atomic(Path(out_dir) / "command.txt", command_line() + "\n")


override_option = click.option(
    "-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a config key, e.g. -o train.max_steps=10 (repeatable; validated like the file).")


def load_config(path: str | None, cls: type, overrides: tuple[str, ...]) -> Any:
    """A config file with its overrides, its components checked against the
    registry before anything heavy loads (as `ilt config check` does)."""
    from ilt.config import check_components, load_with_overrides
    from ilt.core.registry import get_registry

    cfg = load_with_overrides(path, cls, overrides)
    check_components(cfg, get_registry(), path or "<defaults>")
    return cfg


def parse_weights(weights: str | None) -> list[float] | None:
    try:
        return [float(w) for w in weights.split(",")] if weights else None
    except ValueError:
        raise IltError(f"--weights {weights!r}: expected comma-separated numbers") from None


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
        click.option("--conf", "conf_path", type=click.Path(exists=True, dir_okay=False),
                     help="Decoding YAML (default: built-in defaults, see conf/decode.yaml)."),
        click.option("--scores", is_flag=True,
                     help="Add each hypothesis' confidence (mean token log-probability) to hyps.jsonl."),
        override_option,
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def run_decode(model_dir, adapter_dir, cuts_path, out_dir, conf_path, scores, overrides, experts_dir=None,
               expert_batching="mixed") -> list[dict[str, Any]]:
    from ilt.asr.decode import decode_files
    from ilt.config import DecodeConfig

    cfg = load_config(conf_path, DecodeConfig, overrides)
    if experts_dir is not None:
        from ilt.experts.train import decode_expert_files

        if adapter_dir is not None:
            raise IltError("--adapter and --experts: give one (the experts are LoRAs on the base model)")
        return decode_expert_files(experts_dir, cuts_path, out_dir, cfg, model_dir=model_dir,
                                   batching=expert_batching, scores=scores)
    if model_dir is None:
        raise IltError("Missing option '--model' (or --experts DIR, whose experts.json names the base model)")
    return decode_files(model_dir, cuts_path, out_dir, cfg, adapter=adapter_dir, scores=scores)


def parse_component(value: str, option: str) -> Any:
    """A registered name or a YAML mapping ``{name: NAME, OPTION: VALUE}`` given
    on the command line, as an :class:`ilt.config.ComponentSpec`."""
    import yaml

    from ilt.config import ComponentSpec

    try:
        return ComponentSpec.from_yaml(yaml.safe_load(value), option)
    except yaml.YAMLError as exc:
        raise IltError(f"{option} {value!r}: not a name or YAML mapping: {exc}") from None
