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


def main() -> None:  # console script entry point
    cli(prog_name="ilt")


if __name__ == "__main__":
    sys.exit(main())
