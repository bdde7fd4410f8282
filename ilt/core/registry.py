"""The plugin manager and the component registry.

Built-in components live in this package and use the same hooks as third-party
plugins (see :mod:`ilt.hookspecs`). Third parties ship a package with::

    entry_points={"ilt": ["myplugin = my_package.ilt_plugin"]}

``ILT_LOAD_PLUGINS`` limits which external plugins load: a comma-separated list
of distribution names; set to an empty string, no external plugin loads.
Built-ins always load. A name in it that is not installed is warned about.

A failing external plugin stays local: one that cannot be imported, or whose
hook raises while registering, is skipped with one warning per process naming
the package, the entry point, the reason and the ``ILT_LOAD_PLUGINS`` value that
excludes it; everything else loads. Asking for a name such a plugin might have
provided gives an error that mentions it. A name registered twice stays a hard
error naming both packages.

Components are built with :func:`create`, which checks what the factory
returns against its kind's protocol (:data:`PROTOCOLS`) and runs the factory's
optional ``validate(options)`` first (:meth:`Component.check_options`, which
``ilt config check`` runs too). Nothing happens at import time:
:func:`build_plugin_manager` and :func:`get_registry` build everything when called.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.metadata
import inspect
import logging
import os
import re
import typing
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import pluggy

from ilt import hookspecs
from ilt.errors import ConfigError, IltInputError

log = logging.getLogger("ilt.plugins")

ENTRY_POINT_GROUP = "ilt"
BUILTIN_PACKAGE = "ilt"

#: Modules that hold the built-in hook implementations.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "ilt.plugins.corpora",
    "ilt.plugins.diarizers",
    "ilt.plugins.losses",
    "ilt.plugins.qwen2_audio",
    "ilt.plugins.selectors",
    "ilt.plugins.augmenters",
    "ilt.plugins.voters",
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
    "diarizer": "ilt_register_diarizers",
}

#: What the caller of a kind's factory passes itself, so a config may not:
#: (number of leading positional parameters, keyword names).
CALLER_ARGS: dict[str, tuple[int, tuple[str, ...]]] = {
    # factory(model_dir, *, dtype, device, [tokenizer_only], **options)
    "backbone": (1, ("dtype", "device", "tokenizer_only")),
    "corpus": (2, ()),  # factory(corpus_dir, out_dir, **options)
}

#: Errors a factory raises on purpose for bad user input: :func:`create` lets them through.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, IltInputError)

#: Warnings already shown in this process (each is shown once).
_REPORTED: set[str] = set()


class PluginError(Exception):
    """A plugin could not be loaded, registered, found or built."""


class _ContractError(PluginError):
    """A registration breaking the contract (duplicate or invalid name): always fatal."""


@dataclass(frozen=True)
class FailedPlugin:
    """An external plugin that was skipped because it failed."""

    package: str
    entry_point: str  # "name = module" for an entry point, else the plugin's name
    reason: str  # "ModuleNotFoundError: No module named 'x'"

    def describe(self) -> str:
        return f"package {self.package!r} (entry point {self.entry_point}): {self.reason}"


class IltPluginManager(pluggy.PluginManager):
    """A pluggy manager that also remembers the external plugins that failed to load."""

    def __init__(self) -> None:
        super().__init__("ilt")
        self.failed: list[FailedPlugin] = []
        #: ``"name = module"`` of each plugin loaded from an entry point, by its registered name
        self.entry_points: dict[str, str] = {}


def _warn_once(message: str) -> None:
    if message not in _REPORTED:
        _REPORTED.add(message)
        log.warning("%s", message)


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def normalize_package(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``ILT_fake.plugin`` -> ``ilt-fake-plugin``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def build_plugin_manager(load_entry_points: bool = True) -> IltPluginManager:
    """Return a new plugin manager holding the built-ins and the external plugins.

    :param load_entry_points: also load external plugins from the entry-point
        group ``ilt`` (restricted by ``ILT_LOAD_PLUGINS``); those that fail are
        kept out and listed in ``pm.failed``.
    """
    pm = IltPluginManager()
    pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    pm.check_pending()  # a built-in with a misspelled hook is our bug: loud
    if load_entry_points:
        _load_entry_points(pm)
    return pm


def _allowed_distributions() -> set[str] | None:
    value = os.environ.get("ILT_LOAD_PLUGINS")
    if value is None:
        return None
    return {normalize_package(name.strip()) for name in value.split(",") if name.strip()}


def _load_entry_points(pm: IltPluginManager) -> None:
    allowed = _allowed_distributions()
    declared = {BUILTIN_PACKAGE}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist is not None else "<unknown>"
        declared.add(normalize_package(dist))
        if dist != BUILTIN_PACKAGE and allowed is not None and normalize_package(dist) not in allowed:
            continue
        failure = _register_entry_point(pm, ep, dist)
        if failure is not None:
            pm.failed.append(failure)
    for name in sorted((allowed or set()) - declared):
        _warn_once(_not_installed(name, declared))


def _register_entry_point(pm: IltPluginManager, ep: Any, dist: str) -> FailedPlugin | None:
    """Load and register one entry point; a failure is returned, never raised."""
    where = f"{ep.name} = {ep.value}"
    try:
        plugin = ep.load()
    except Exception as exc:  # a broken third-party plugin must not take the others down
        return FailedPlugin(dist, where, _reason(exc))
    if pm.is_registered(plugin):  # a built-in also declared as an entry point
        return None
    try:
        pm.register(plugin, name=f"{dist}:{ep.name}")
        pm.check_pending()  # the others passed already: an unknown hook is this plugin's
    except Exception as exc:
        if pm.is_registered(plugin):
            pm.unregister(plugin)
        return FailedPlugin(dist, where, _reason(exc))
    pm.entry_points[f"{dist}:{ep.name}"] = where
    return None


def entry_point_of(pm: pluggy.PluginManager, plugin: Any) -> str:
    """``name = module`` of a registered plugin, as a skip warning names it:
    its entry point, or for a plugin registered by hand (``pm.register(obj,
    name="package:name")``) the part of its name after ``:`` and its module."""
    name = pm.get_name(plugin) or repr(plugin)
    recorded = getattr(pm, "entry_points", {}).get(name)
    if recorded is not None:
        return recorded
    module = getattr(plugin, "__name__", None) or type(plugin).__module__
    return f"{name.split(':', 1)[-1]} = {module}"


def _not_installed(name: str, declared: set[str]) -> str:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        state = "is not installed"
    else:
        state = f"is installed but declares no {ENTRY_POINT_GROUP!r} entry point"
    external = sorted(declared - {BUILTIN_PACKAGE})
    return (f"ILT_LOAD_PLUGINS names {name!r}, which {state}; packages with ilt plugins: "
            f"{', '.join(external) or '(none)'}")


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


def _signature(factory: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins and C callables have none
        return None


# --------------------------------------------------------------------------- contracts


def protocols() -> dict[str, type]:
    """The protocol each kind's factory returns (``corpus`` has none: its
    factory prepares manifests and returns what it wrote)."""
    from ilt.backbone import Backbone
    from ilt.components import Augmenter, Diarizer, Loss, Selector, Voter

    return {"backbone": Backbone, "loss": Loss, "voter": Voter, "augmenter": Augmenter, "selector": Selector,
            "diarizer": Diarizer}


#: What a backbone factory returns with ``tokenizer_only=True``: only these members.
TOKENIZER_ONLY_MEMBERS = ("tokenize",), ("name",)


def protocol_members(protocol: type) -> tuple[list[str], list[str]]:
    """``(methods, attributes)`` a class of ``protocol`` must have: its public
    methods (``__call__`` included) and its annotated attributes, in definition order."""
    methods: list[str] = []
    attributes: list[str] = []
    for cls in reversed(protocol.__mro__):
        if not getattr(cls, "_is_protocol", False) or cls is typing.Protocol:
            continue
        for name, value in vars(cls).items():
            if callable(value) and (name == "__call__" or not name.startswith("_")) and name not in methods:
                methods.append(name)
        attributes += [name for name in getattr(cls, "__annotations__", {}) if name not in attributes]
    return methods, attributes


def call_form(kind: str, protocol: type, method: str) -> str:
    """How ilt calls ``method`` of a ``kind``: ``loss(backbone, model, batch)``,
    ``voter.vote(hypotheses, language)``."""
    signature = _signature(getattr(protocol, method))
    params = list(signature.parameters.values())[1:] if signature is not None else []
    parts, star = [], False
    for p in params:
        if p.kind is p.KEYWORD_ONLY and not star:
            parts.append("*")
            star = True
        parts.append({p.VAR_POSITIONAL: f"*{p.name}", p.VAR_KEYWORD: f"**{p.name}"}.get(p.kind, p.name))
        star = star or p.kind is p.VAR_POSITIONAL
    return f"{kind}{'' if method == '__call__' else '.' + method}({', '.join(parts)})"


def contract_problem(kind: str, obj: Any, *, tokenizer_only: bool = False) -> str | None:
    """Why ``obj`` does not implement ``kind``'s protocol (a member missing or
    a method not callable), in words, or ``None`` when it does (or ``kind``
    has no protocol). Signatures are not checked."""
    protocol = protocols().get(kind)
    if protocol is None:
        return None
    methods, attributes = protocol_members(protocol)
    if kind == "backbone" and tokenizer_only:
        methods, attributes = map(list, TOKENIZER_ONLY_MEMBERS)
    missing = [m for m in methods if not callable(obj if m == "__call__" else getattr(obj, m, None))]
    absent = [a for a in attributes if not hasattr(obj, a)]
    if not missing and not absent:
        return None
    problems = ["is not callable"] if "__call__" in missing else []
    named = [m for m in missing if m != "__call__"]
    if named:
        problems.append(f"has no method {', '.join(named)}")
    if absent:
        problems.append(f"has no attribute {', '.join(absent)}")
    calls = "; ".join(call_form(kind, protocol, m) for m in missing)
    define = ", ".join([*missing, *absent])
    how = f": a {kind} is called as {calls}" if calls else ""
    return f"{type(obj).__name__}, which {' and '.join(problems)}{how}; define {define}"


# --------------------------------------------------------------------------- components


@dataclass(frozen=True)
class Component:
    """One registered component."""

    kind: str
    name: str
    factory: Callable[..., Any]
    package: str

    def describe(self) -> str:
        """``voter 'rover' (package 'ilt')``: how errors name the component."""
        return f"{self.kind} {self.name!r} (package {self.package!r})"

    def caller_options(self) -> tuple[str, ...]:
        """Keyword arguments the caller passes itself (a backbone's ``dtype``, ``device``)."""
        return CALLER_ARGS.get(self.kind, (0, ()))[1]

    def options(self) -> dict[str, inspect.Parameter] | None:
        """The factory's parameters a config may set, by name; ``None`` when it
        takes ``**kwargs`` (or has no signature) and so accepts anything."""
        signature = _signature(self.factory)
        if signature is None:
            return None
        count, keywords = CALLER_ARGS.get(self.kind, (0, ()))
        params = list(signature.parameters.values())
        if any(p.kind is p.VAR_KEYWORD for p in params):
            return None
        by_caller = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:count]
        return {p.name: p for p in params
                if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p not in by_caller
                and p.name not in keywords}

    def option_types(self) -> dict[str, Any]:
        """The factory's resolved type annotations (empty when they cannot be resolved)."""
        target = self.factory.__init__ if inspect.isclass(self.factory) else self.factory
        try:
            return typing.get_type_hints(target)
        except Exception:  # an annotation naming something not importable here
            return {}

    def validator(self) -> Callable[[dict[str, Any]], None] | None:
        """The factory's ``validate(options)``: an attribute of a function
        factory, or a classmethod or staticmethod of a class factory (an
        instance method of that name is not one); ``None`` without it."""
        if inspect.isclass(self.factory):
            static = inspect.getattr_static(self.factory, "validate", None)
            if not isinstance(static, (classmethod, staticmethod)):
                return None
        check = getattr(self.factory, "validate", None)
        return check if callable(check) else None

    def check_options(self, options: Mapping[str, Any], key: str | None = None) -> None:
        """Run the factory's ``validate(options)`` (see :meth:`validator`) on
        the options a config or command line gives.

        :param key: where the options were written: a config's dotted key
            (``pseudo.voter``) or a command-line option (``--voter``).
        :raises ilt.errors.ConfigError: what ``validate`` raised as a
            ``ValueError`` (``ConfigError`` is one), prefixed by ``key``: a
            message starting with an option's name (``epsilon: must be in
            [0, 1]``) reads ``pseudo.voter.epsilon: must be in [0, 1]`` (``--voter:
            epsilon: ...`` for a command-line option); without ``key``, by
            :meth:`describe`.
        :raises PluginError: ``validate`` raised anything else (chained).
        """
        check = self.validator()
        if check is None:
            return
        try:
            check(dict(options))
        except ValueError as exc:
            raise ConfigError(self._located(str(exc), options, key)) from None
        except Exception as exc:
            raise PluginError(f"{self.describe()}: validate() raised {_reason(exc)}; "
                              f"run with --debug for the traceback") from exc

    def _located(self, message: str, options: Mapping[str, Any], key: str | None) -> str:
        if key is None:
            return f"{self.describe()}: {message}"
        names = [*options, *(self.options() or {})]
        if not key.startswith("-") and any(message.startswith(f"{name}:") for name in names):
            return f"{key}.{message}"
        return f"{key}: {message}"

    def _unknown_option(self, options: Mapping[str, Any], exc: TypeError) -> str:
        """The binding error of ``options``, with a "did you mean" for an unknown name."""
        accepted = self.options()
        known = "anything" if accepted is None else (", ".join(accepted) or "none")
        unknown = [k for k in options if accepted is not None and k not in accepted
                   and k not in self.caller_options()]
        if not unknown:
            return f"{self.describe()}: {exc}; accepted options: {known}"
        close = difflib.get_close_matches(unknown[0], list(accepted or ()), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{self.describe()}: unknown option {unknown[0]!r}{hint}; accepted options: {known}"

    def create(self, *args: Any, **options: Any) -> Any:
        """Call the factory and check what it returns.

        First the options: an unknown one is a :class:`PluginError` listing
        the accepted ones (with a "did you mean"), and the factory's
        ``validate`` runs (:meth:`check_options`). Then the factory: an
        exception it raises becomes a :class:`PluginError` naming kind, name
        and package (the cause chained), except the user-input errors of
        :data:`USER_ERRORS`, which pass through. Last, the product must have
        the members of the kind's protocol (:func:`contract_problem`), or it
        is a :class:`PluginError` saying what is missing and how ilt calls it.
        """
        signature = _signature(self.factory)
        if signature is not None:
            try:
                signature.bind(*args, **options)
            except TypeError as exc:
                raise PluginError(self._unknown_option(options, exc)) from None
        self.check_options({k: v for k, v in options.items() if k not in self.caller_options()})
        try:
            made = self.factory(*args, **options)
        except (PluginError, *USER_ERRORS):
            raise
        except Exception as exc:
            raise PluginError(f"{self.describe()} raised {_reason(exc)}; run with --debug for the traceback") from exc
        problem = contract_problem(self.kind, made, tokenizer_only=bool(options.get("tokenizer_only")))
        if problem:
            raise PluginError(f"{self.describe()} returned {problem}")
        return made


@dataclass
class Registry:
    """Every registered component, by kind and name, plus the plugins that failed."""

    components: dict[str, dict[str, Component]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )
    failed: list[FailedPlugin] = field(default_factory=list)

    @classmethod
    def from_plugin_manager(cls, pm: pluggy.PluginManager) -> Registry:
        """Call every plugin's hooks; an external plugin whose hook raises is
        skipped as a whole (none of its names stay) and reported."""
        registry = cls(failed=list(getattr(pm, "failed", [])))
        for _, plugin in pm.list_name_plugin():
            if plugin is not None:  # None: a blocked name
                registry._add_plugin(pm, plugin)
        registry._report_failures(pm)
        return registry

    def _add_plugin(self, pm: pluggy.PluginManager, plugin: Any) -> None:
        package = package_of(pm, plugin)
        staged: list[Component] = []
        for kind, hook_name in KINDS.items():
            # Call each implementation on its own so every registration knows
            # which package made it (needed for duplicate-name errors).
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                register = functools.partial(self._stage, staged, kind, package=package)
                try:
                    impl.function(register=register)
                except _ContractError:
                    raise
                except Exception as exc:
                    if package == BUILTIN_PACKAGE:
                        raise  # our own bug: loud
                    self.failed.append(FailedPlugin(package, entry_point_of(pm, plugin),
                                                    f"{hook_name} raised {_reason(exc)}"))
                    return
        for component in staged:
            self.components[component.kind][component.name] = component

    def _stage(self, staged: list[Component], kind: str, name: str, factory: Callable[..., Any], *,
               package: str) -> None:
        self._check_new(kind, name, factory, package, staged)
        staged.append(Component(kind, name, factory, package))

    def _check_new(self, kind: str, name: str, factory: Callable[..., Any], package: str,
                   staged: Sequence[Component] = ()) -> None:
        if not isinstance(name, str) or not name:
            raise _ContractError(f"package {package!r} registered a {kind} with an invalid name {name!r}")
        if not callable(factory):
            raise _ContractError(f"package {package!r} registered {kind} {name!r} with a non-callable factory")
        previous = self.components[kind].get(name) or next(
            (c for c in staged if c.kind == kind and c.name == name), None)
        if previous is not None:
            raise _ContractError(
                f"{kind} {name!r} is registered twice: by package {previous.package!r} "
                f"and by package {package!r}; uninstall one of them or leave it out of ILT_LOAD_PLUGINS"
            )

    def add(self, kind: str, name: str, factory: Callable[..., Any], *, package: str) -> None:
        """Register one component directly (the hooks' ``register`` does the same)."""
        self._check_new(kind, name, factory, package)
        self.components[kind][name] = Component(kind, name, factory, package)

    def _report_failures(self, pm: pluggy.PluginManager) -> None:
        failed = {f.package for f in self.failed}
        loaded = {package_of(pm, p) for _, p in pm.list_name_plugin() if p is not None}
        keep = ",".join(sorted(loaded - failed - {BUILTIN_PACKAGE}))
        for failure in self.failed:
            _warn_once(f"plugin skipped: {failure.describe()}; commands that do not use it work as usual. "
                       f"To leave it out without this warning: export ILT_LOAD_PLUGINS='{keep}'")

    def get(self, kind: str, name: str) -> Component:
        if kind not in self.components:
            raise PluginError(f"unknown component kind {kind!r}; known kinds: {', '.join(KINDS)}")
        found = self.components[kind].get(name)
        if found is not None:
            return found
        known = sorted(self.components[kind])
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        message = f"unknown {kind} {name!r}{hint}; known: {', '.join(known) or '(none)'}"
        if self.failed:
            message += ("; it may come from a plugin that failed to load: "
                        + "; ".join(f.describe() for f in self.failed))
        raise PluginError(message)

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


def _split_spec(kind: str, spec: Any) -> tuple[str, dict[str, Any]]:
    from ilt.core.specs import split_component

    try:
        return split_component(spec, kind)
    except ConfigError as exc:
        raise PluginError(str(exc)) from None


def create(kind: str, spec: Any, /, *args: Any, **kwargs: Any) -> Any:
    """Build the component ``spec`` of ``kind`` and return what its factory returns.

    :param kind: one of :data:`KINDS` (``backbone``, ``loss``, ``voter``...).
    :param spec: a registered name (``"ce"``) or an :class:`ilt.config.ComponentSpec`
        (``config.task.loss``), whose options become keyword arguments.
    :param args: positional arguments the kind's contract gives the factory (a
        backbone's ``model_dir``, a corpus's ``corpus_dir, out_dir``).
    :param kwargs: more keyword arguments: the caller's own (a backbone's
        ``dtype``, ``device``) or options. A key given both here and in the
        spec's options is an error, not a silent override.
    :raises PluginError: unknown name (listing the known ones and any plugin
        that failed to load), unknown or clashing option, or a factory that
        raised (chained). :class:`ilt.config.ConfigError` and
        :class:`ilt.errors.IltInputError` raised by the factory pass through.

    Example: ``create("loss", "ce", label_smoothing=0.1)`` or
    ``create("backbone", config.backbone, model_dir, dtype=torch.bfloat16, device="cuda")``.
    """
    name, options = _split_spec(kind, spec)
    clash = sorted(set(options) & set(kwargs))
    if clash:
        raise PluginError(f"{kind} {name!r}: option(s) {', '.join(clash)} given both by the configuration and "
                          f"by the caller; remove them from the configuration")
    return get_registry().get(kind, name).create(*args, **options, **kwargs)


def describe(kind: str, spec: Any) -> str:
    """How errors name a component: ``voter 'rover' (package 'ilt')``.

    :param spec: a registered name or an :class:`ilt.config.ComponentSpec`.
    :raises PluginError: an unknown name.
    """
    name, _ = _split_spec(kind, spec)
    return get_registry().get(kind, name).describe()


@contextmanager
def component_errors(kind: str, spec: Any, method: str) -> Iterator[None]:
    """Name the component when one of its methods fails::

        with component_errors("voter", spec, "vote"):
            vote = voter.vote(hypotheses, language)

    An exception raised inside becomes a :class:`PluginError` such as
    ``voter 'x' (package 'y'): vote() raised RuntimeError: ...`` (the cause
    chained); :class:`PluginError` and the user-input errors of
    :data:`USER_ERRORS` pass through unchanged.
    """
    try:
        yield
    except (PluginError, *USER_ERRORS):
        raise
    except Exception as exc:
        raise PluginError(f"{describe(kind, spec)}: {method}() raised {_reason(exc)}; "
                          f"run with --debug for the traceback") from exc
