"""``ilt stage``: the done-markers of recipe steps, for ``egs/TEMPLATE/ilt.sh``.

Thin commands over :mod:`ilt.core.stages`. Each prints one word on stdout for
the script to read, and exits 0; a usage error exits 2. The template runs them
as ``python -m ilt.cli.recipe_commands`` (the same group as ``ilt stage``), so
a step check costs a Python start, not the whole ``ilt`` command line.
"""

from __future__ import annotations

import click

from ilt.core import stages
from ilt.errors import IltInputError

DIR = click.Path(file_okay=False)
FORCE = click.option("--force", type=bool, default=False, show_default=True,
                     help="The template's --force (true/false): the step is redone, whatever its marker says.")
AFTER = click.option("--after", "after", multiple=True, metavar="KEY",
                     help="A step of the same DIR whose output this step reads (repeatable): its recorded "
                          "fingerprint becomes part of this one's.")
COMMAND = click.argument("command", nargs=-1, type=click.UNPROCESSED)


def _fingerprint(directory: str, command: tuple[str, ...], after: tuple[str, ...]) -> str | None:
    """The fingerprint of COMMAND after the steps AFTER, or None without a command."""
    if not command:
        if after:
            raise click.UsageError("--after needs the step's command after '--'")
        return None
    try:
        return stages.fingerprint(command, stages.upstream_fingerprints(directory, after))
    except IltInputError as exc:
        raise click.UsageError(str(exc)) from None


def _key(directory: str, key: str) -> str:
    """KEY, checked to name a marker file."""
    try:
        stages.marker(directory, key)
    except IltInputError as exc:
        raise click.BadParameter(str(exc), param_hint="KEY") from None
    return key


@click.group("stage")
def stage() -> None:
    """Done-markers of recipe steps (DIR/.done/KEY): whether a step finished, and
    from which command and inputs (its fingerprint)."""


@stage.command("check")
@click.argument("directory", type=DIR)
@click.argument("key")
@FORCE
@AFTER
@COMMAND
def check_cmd(directory: str, key: str, force: bool, after: tuple[str, ...], command: tuple[str, ...]) -> None:
    """Print the state of step KEY of DIR: done (skip it), new, changed (it
    finished from another COMMAND or inputs: run it again over its old output) or
    forced. With a COMMAND after '--', the marker must hold its fingerprint;
    without, any marker means done."""
    fp = _fingerprint(directory, command, after)
    click.echo(stages.check(directory, _key(directory, key), fp, force=force).value)


@stage.command("done")
@click.argument("directory", type=DIR)
@click.argument("key")
@AFTER
@COMMAND
def done_cmd(directory: str, key: str, after: tuple[str, ...], command: tuple[str, ...]) -> None:
    """Mark step KEY of DIR finished, from the COMMAND after '--' (its fingerprint),
    or with an empty marker. Prints the marker's path."""
    fp = _fingerprint(directory, command, after) or ""
    click.echo(stages.mark(directory, _key(directory, key), fp))


@stage.command("clear")
@click.argument("directory", type=DIR)
@click.argument("key")
def clear_cmd(directory: str, key: str) -> None:
    """Forget that step KEY of DIR finished: print removed, or absent when it had no marker."""
    click.echo("removed" if stages.clear(directory, _key(directory, key)) else "absent")


@stage.command("claim")
@click.argument("directory", type=DIR)
@click.argument("key")
@click.argument("value")
@FORCE
def claim_cmd(directory: str, key: str, value: str, force: bool) -> None:
    """Record that DIR belongs to VALUE (e.g. a base model's path) under KEY and
    print ok, or print the VALUE it belongs to already and record nothing
    (--force true: take it over)."""
    other = stages.claim(directory, _key(directory, key), value, force=force)
    click.echo("ok" if other is None else other)


@stage.command("reuse")
@click.argument("source", type=DIR)
@click.argument("directory", type=DIR)
@click.argument("key")
@click.argument("paths", nargs=-1, required=True)
@FORCE
def reuse_cmd(source: str, directory: str, key: str, paths: tuple[str, ...], force: bool) -> None:
    """When the experiment SOURCE finished step KEY, link its PATHS (relative to
    it) into DIR and mark KEY done there: print reused; else print no (also with
    --force true, or when DIR holds one of PATHS for real)."""
    _key(directory, key)
    click.echo("reused" if not force and stages.reuse(source, directory, key, paths) else "no")


COMMANDS: list[click.Command] = [stage]

if __name__ == "__main__":
    stage(prog_name="ilt stage")
