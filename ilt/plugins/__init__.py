"""The built-in plugins of ``ilt``, one module per component kind, and the
public plugin API.

Each module here implements hooks of :mod:`ilt.hookspecs` exactly as a
third-party plugin does (``whisper``, ``qwen2_audio``: backbones;
``augmenters``, ``selectors``, ``voters``, ``losses``, ``corpora``,
``diarizers``). The plugin manager itself lives in :mod:`ilt.core.registry`;
its public names are re-exported here, so ``from ilt.plugins import create``
is the stable way for plugins and scripts to build a component.
"""

from ilt.core.registry import (
    DEFAULT_PLUGINS,
    KINDS,
    Component,
    PluginError,
    Registry,
    build_plugin_manager,
    create,
    get_registry,
)

__all__ = ["DEFAULT_PLUGINS", "KINDS", "Component", "PluginError", "Registry", "build_plugin_manager",
           "create", "get_registry"]
