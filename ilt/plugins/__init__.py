"""The plugin manager and the component registry.

Built-in components live in this package and use the same hooks as third-party
plugins (see :mod:`ilt.hookspecs`). Third parties ship a package with::

    entry_points={"ilt": ["myplugin = my_package.ilt_plugin"]}

``ILT_LOAD_PLUGINS`` limits which external plugins load: a comma-separated list
of distribution names; set to an empty string, no external plugin loads.
Built-ins always load.

Nothing happens at import time: :func:`build_plugin_manager` and
:func:`get_registry` build everything when called.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import pluggy

from ilt import hookspecs

ENTRY_POINT_GROUP = "ilt"
BUILTIN_PACKAGE = "ilt"

#: Modules that hold the built-in hook implementations.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "ilt.plugins.corpora",
    "ilt.plugins.losses",
    "ilt.plugins.whisper",
)

#: Component kind for each registration hook.
KINDS: dict[str, str] = {
    "backbone": "ilt_register_backbones",
    "augmenter": "ilt_register_augmenters",
    "selector": "ilt_register_selectors",
    "voter": "ilt_register_voters",
    "loss": "ilt_register_losses",
    "corpus": "ilt_register_corpora",
}


class PluginError(Exception):
    """A plugin could not be loaded, registered or found."""


def build_plugin_manager(load_entry_points: bool = True) -> pluggy.PluginManager:
    """Return a new plugin manager holding the built-ins and the external plugins.

    :param load_entry_points: also load external plugins from the entry-point
        group ``ilt`` (restricted by ``ILT_LOAD_PLUGINS``).
    """
    pm = pluggy.PluginManager("ilt")
    pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    if load_entry_points:
        _load_entry_points(pm)
    pm.check_pending()
    return pm


def _allowed_distributions() -> set[str] | None:
    value = os.environ.get("ILT_LOAD_PLUGINS")
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


def _load_entry_points(pm: pluggy.PluginManager) -> None:
    allowed = _allowed_distributions()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "<unknown>"
        if dist != BUILTIN_PACKAGE and allowed is not None and dist not in allowed:
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party plugin must name itself
            raise PluginError(
                f"cannot load plugin {ep.name!r} ({ep.value}) from package {dist!r}: {exc}"
            ) from exc
        if pm.is_registered(plugin):  # a built-in also declared as an entry point
            continue
        pm.register(plugin, name=f"{dist}:{ep.name}")


def package_of(pm: pluggy.PluginManager, plugin: Any) -> str:
    """The distribution that provides ``plugin``: ``ilt`` for built-ins.

    External plugins are registered under ``"<distribution>:<entry point>"``;
    a plugin registered by hand (``pm.register(obj, name=...)``) is reported
    under the part of its name before ``:``.
    """
    name = pm.get_name(plugin) or repr(plugin)
    if name in DEFAULT_PLUGINS:
        return BUILTIN_PACKAGE
    return name.split(":", 1)[0]


@dataclass(frozen=True)
class Component:
    """One registered component."""

    kind: str
    name: str
    factory: Callable[..., Any]
    package: str


@dataclass
class Registry:
    """Every registered component, by kind and name."""

    components: dict[str, dict[str, Component]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )

    @classmethod
    def from_plugin_manager(cls, pm: pluggy.PluginManager) -> "Registry":
        registry = cls()
        for kind, hook_name in KINDS.items():
            hook = getattr(pm.hook, hook_name)
            # Call each implementation on its own so every registration knows
            # which package made it (needed for duplicate-name errors).
            for impl in hook.get_hookimpls():
                package = package_of(pm, impl.plugin)
                impl.function(register=functools.partial(registry.add, kind, package=package))
        return registry

    def add(self, kind: str, name: str, factory: Callable[..., Any], *, package: str) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"package {package!r} registered a {kind} with an invalid name {name!r}")
        if not callable(factory):
            raise PluginError(f"package {package!r} registered {kind} {name!r} with a non-callable factory")
        known = self.components[kind]
        if name in known:
            raise PluginError(
                f"{kind} {name!r} is registered twice: by package {known[name].package!r} "
                f"and by package {package!r}"
            )
        known[name] = Component(kind, name, factory, package)

    def get(self, kind: str, name: str) -> Component:
        if kind not in self.components:
            raise PluginError(f"unknown component kind {kind!r}; known kinds: {', '.join(KINDS)}")
        try:
            return self.components[kind][name]
        except KeyError:
            known = ", ".join(sorted(self.components[kind])) or "(none)"
            raise PluginError(f"unknown {kind} {name!r}; known: {known}") from None

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

    def __iter__(self) -> Iterator[Component]:
        for kind in KINDS:
            for name in sorted(self.components[kind]):
                yield self.components[kind][name]


@functools.lru_cache(maxsize=1)
def get_registry() -> Registry:
    """The registry of the built-ins plus the installed external plugins.

    Built once per process on first use; tests that register plugins call
    ``get_registry.cache_clear()`` before and after.
    """
    return Registry.from_plugin_manager(build_plugin_manager())


def create(kind: str, name: str, /, *args: Any, **kwargs: Any) -> Any:
    """Look ``name`` up among the components of ``kind`` and call its factory."""
    return get_registry().get(kind, name).factory(*args, **kwargs)
