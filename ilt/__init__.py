"""ilt: Iterative LoRA Training for speech foundation models.

Plugins import the hook marker from here (``from ilt import hookimpl``); see
:mod:`ilt.hookspecs` for the hooks and :mod:`ilt.components` for what the
registered factories return.
"""

from ilt.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["__version__", "hookimpl"]
