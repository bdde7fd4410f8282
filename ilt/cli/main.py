"""The ``ilt`` command line: one sub-command per recipe stage, thin over the library.

Every command is registered one way: it lives in a command module of
``ilt.cli`` whose ``COMMANDS`` list holds it, and :data:`COMMAND_MODULES` below
is the one list of those modules. A command module imports from
:mod:`ilt.cli.options` (the shared options and conventions), never this root
group; a sub-command joins its group inside its own module.
"""

from __future__ import annotations

import logging
import os
import sys
from types import ModuleType
from typing import Any

import click

from ilt.cli import (
    compare_commands,
    data_commands,
    decode_commands,
    experts_commands,
    export_commands,
    knowledge_commands,
    plan_commands,
    recipe_commands,
    report_commands,
    select_commands,
    track2_commands,
    train_commands,
)
from ilt.cli.options import IltError, error_line
from ilt.core.runtime import setup_logging

log = logging.getLogger("ilt")

#: The command modules whose ``COMMANDS`` make up ``ilt``, by concern.
COMMAND_MODULES: tuple[ModuleType, ...] = (
    data_commands,        # plugins, config check, prepare
    train_commands,       # train, merge, round
    plan_commands,        # plan (memory per device, before training)
    decode_commands,      # decode, evaluate, score, pseudo-label
    compare_commands,     # compare
    report_commands,      # report
    export_commands,      # convert ct2, export ct2, card
    knowledge_commands,   # augment token-stats/select-text/hard-cases/tts
    select_commands,      # select
    track2_commands,      # diarize, transcribe-sessions
    experts_commands,     # experts train/fuse/distill
    recipe_commands,      # stage (the recipes' done-markers)
)


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("ILT_DEBUG", "") not in ("", "0")


class IltGroup(click.Group):
    """The ``ilt`` group: any exception of a command (or of listing commands)
    becomes one ``Error: ...`` line and exit status 1, unless ``--debug``
    asks for the traceback. Click's own exceptions (usage errors, exit status
    2; ``--help``) pass unchanged."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            raise IltError(error_line(exc)) from None


def build_cli(modules: tuple[ModuleType, ...] = COMMAND_MODULES) -> click.Group:
    """The root ``ilt`` group with the ``COMMANDS`` of ``modules``; two commands of one name are refused."""

    @click.group("ilt", cls=IltGroup)
    @click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
    @click.option("--debug", is_flag=True, envvar="ILT_DEBUG",
                  help="Show the full traceback of an error (also ILT_DEBUG=1).")
    @click.version_option(package_name="ilt")
    def root(verbose: bool, debug: bool) -> None:
        """Iterative LoRA Training for speech foundation models."""
        setup_logging(verbose)

    for module in modules:
        for command in module.COMMANDS:
            if command.name in root.commands:
                raise RuntimeError(f"ilt {command.name}: defined in {module.__name__} and another command module")
            root.add_command(command)
    return root


cli = build_cli()


def _stop_on_signal(signum: int, frame: Any) -> None:
    """SIGTERM (``kill``, a scheduler's pre-emption) unwinds like an error: the
    atomic writers remove their partial outputs, finished work stays."""
    import signal

    raise SystemExit(f"Error: stopped by {signal.Signals(signum).name}; partial outputs removed, finished "
                     f"work kept: rerun the same command to resume")


def main() -> None:  # console script entry point
    """Run ``ilt``; an error raised outside any command is one line too, unless ``--debug``."""
    import signal

    signal.signal(signal.SIGTERM, _stop_on_signal)
    try:
        cli.main(prog_name="ilt")
    except Exception as exc:  # IltGroup handles commands; this catches the rest
        if _debug_requested(sys.argv[1:]):
            raise
        IltError(error_line(exc)).show()
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
