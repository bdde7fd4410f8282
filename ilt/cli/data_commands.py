"""``ilt prepare NAME`` (Lhotse manifests, one sub-command per corpus plugin),
``ilt config check`` and ``ilt plugins``: the data and the components a run
starts from."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import click

from ilt.cli.options import (
    DeprecatedArgument,
    IltError,
    IltOption,
    error_line,
    out_or_positional,
)

#: Plugin parameters whose items are ``KEY=VALUE`` pairs: repeatable, never split at commas.
KEY_VALUE_PARAMETERS = frozenset({"option"})


@click.command("plugins")
def plugins_cmd() -> None:
    """List every registered component: kind, name and package.

    A third-party plugin that fails to load is left out with a warning.
    """
    from ilt.core.registry import get_registry

    rows = [(c.kind, c.name, c.package) for c in get_registry()]
    width = [max(len(r[i]) for r in rows + [("kind", "name", "package")]) for i in range(3)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(("kind", "name", "package"), width)))
    for row in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, width)))


@click.group("config")
def config() -> None:
    """Validate and show configuration files."""


@config.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def config_check(files: tuple[str, ...]) -> None:
    """Validate YAML FILES against their schemas; list every error.

    Component names (``backbone``, ``task.loss``) must be registered, and their
    options must be parameters of the registered factory.
    """
    from ilt.config import ConfigError, check_file
    from ilt.core.registry import get_registry

    registry = get_registry()
    failed = 0
    for path in files:
        try:
            cfg = check_file(path, registry=registry)
        except ConfigError as exc:
            failed += 1
            click.echo(f"FAIL {exc}", err=True)
        else:
            click.echo(f"ok   {path} ({type(cfg).__name__})")
    if failed:
        raise IltError(f"{failed} of {len(files)} file(s) invalid")


def option_of_parameter(p: inspect.Parameter) -> click.Option:
    """The ``--option`` of a corpus plugin's keyword parameter (its default gives the type).

    ``force`` becomes ``--overwrite/--no-overwrite`` (``--force/--no-force`` a
    hidden alias); a tuple or list default makes a list option.
    """
    flag = "--" + p.name.replace("_", "-")
    if p.name == "force":
        return IltOption(["--overwrite/--no-overwrite", "force"], aliases=["--force/--no-force"], default=p.default,
                         show_default=True, help="Write the manifests again even if they exist.")
    if isinstance(p.default, bool):
        return IltOption([f"{flag}/--no-{p.name.replace('_', '-')}"], default=p.default, show_default=True)
    if isinstance(p.default, (tuple, list)):
        key_value = p.name in KEY_VALUE_PARAMETERS
        return IltOption([flag], multiple=True, split_commas=not key_value, default=p.default, show_default=True,
                         metavar="KEY=VALUE" if key_value else None,
                         help="(repeatable)" if key_value else "(repeatable or comma-separated)")
    kind = type(p.default) if p.default is not None else str
    return IltOption([flag], type=kind, default=p.default, show_default=True)


def options_from_signature(fn) -> list[click.Option]:
    """Keyword-only parameters with defaults become ``--options``."""
    return [option_of_parameter(p) for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty]


class CorpusGroup(click.Group):
    """``ilt prepare NAME``: one sub-command per registered corpus."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from ilt.core.registry import get_registry

        return get_registry().names("corpus")

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from ilt.core.registry import PluginError

        try:  # --help works even when the registry cannot be built
            super().format_commands(ctx, formatter)
        except PluginError as exc:
            with formatter.section("Commands"):
                formatter.write_text(f"(the corpus plugins could not be listed: {error_line(exc)})")

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from ilt.core.registry import PluginError, get_registry

        registry = get_registry()  # a registry that cannot be built is an error of the run (exit 1)
        try:
            component = registry.get("corpus", name)
        except PluginError as exc:  # an unknown corpus name: a usage error, as an unknown command is
            raise click.UsageError(str(exc), ctx) from None
        prepare = component.factory

        def callback(corpus_dir: str, out_dir: str | None, out: str | None, **options: Any) -> None:
            out_dir = out_or_positional(out, out_dir, "OUT_DIR")
            options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}
            result = component.create(Path(corpus_dir), Path(out_dir), **options)
            for split, cuts in result.items():
                click.echo(f"{name}: {split}: {len(cuts)} cuts -> {out_dir}")

        params = [
            click.Argument(["corpus_dir"], type=click.Path(exists=True, file_okay=False)),
            DeprecatedArgument(["out_dir"], type=click.Path(file_okay=False)),
            click.Option(["--out"], type=click.Path(file_okay=False),
                         help="The manifests' directory (required; the old positional OUT_DIR still works)."),
            *options_from_signature(prepare),
        ]
        doc = (inspect.getdoc(prepare) or "").split("\n\n")[0]
        return click.Command(name, callback=callback, params=params,
                             help=f"{doc}\n\n(package: {component.package})")


@click.group("prepare", cls=CorpusGroup)
def prepare() -> None:
    """Prepare Lhotse manifests for a corpus (one sub-command per corpus plugin)."""


COMMANDS: list[click.Command] = [plugins_cmd, config, prepare]
