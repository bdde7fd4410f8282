"""``ilt`` sub-commands that live in their own module, one module per concern.

Each module in :data:`COMMAND_MODULES` defines ``COMMANDS``: the click
commands (or groups) it adds to the root ``ilt`` group. Shared options and the
user-facing error are in :mod:`ilt.cli.options`. Heavy libraries are
imported inside the commands, so ``ilt --help`` stays fast.
"""

from __future__ import annotations

import importlib

import click

#: Modules whose ``COMMANDS`` the root group adds, in this order.
COMMAND_MODULES: list[str] = [
    "ilt.cli.export_commands",
    "ilt.cli.knowledge_commands",
    "ilt.cli.select_commands",
    "ilt.cli.track2_commands",
    "ilt.cli.experts_commands",
]


def load_commands(modules: list[str]) -> list[click.Command]:
    commands: list[click.Command] = []
    for name in modules:
        commands.extend(importlib.import_module(name).COMMANDS)
    return commands
