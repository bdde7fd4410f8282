"""The one parser of a component spec: a registered name, or a mapping
``{name: NAME, OPTION: VALUE, ...}`` (or an object with ``name`` and
``options``, such as :class:`ilt.config.ComponentSpec`).

It sits in the lowest layer because both :mod:`ilt.core.registry`
(``create(kind, spec)``) and :mod:`ilt.config` (``ComponentSpec.from_yaml``)
read specs; the command line reads its YAML text into a value first
(:func:`ilt.cli.options.parse_component`).
"""

from __future__ import annotations

from typing import Any

from ilt.errors import ConfigError


def split_component(value: Any, where: str = "component") -> tuple[str, dict[str, Any]]:
    """``(name, options)`` of a component spec; ``options`` is a new dict (not a deep copy).

    :param value: ``"ce"``, ``{"name": "ce", "label_smoothing": 0.1}``, or an
        object with a ``name`` string and an ``options`` dict.
    :param where: the config key or option the value comes from, for errors.
    :raises ConfigError: a mapping without ``name``, an option name that is
        not a string, an empty name, or a value of another type; the message
        starts with ``where``.
    """
    if isinstance(value, str):
        name, options = value, {}
    elif isinstance(value, dict):
        if "name" not in value:
            raise ConfigError(f"{where}: a component mapping needs a 'name' key (the registered name), "
                              f"got keys {', '.join(map(str, value)) or '(none)'}")
        name, options = value["name"], {k: v for k, v in value.items() if k != "name"}
    elif isinstance(getattr(value, "name", None), str) and isinstance(getattr(value, "options", None), dict):
        name, options = value.name, dict(value.options)
    else:
        raise ConfigError(f"{where}: expected a component name or a mapping {{name: NAME, OPTION: VALUE}}, "
                          f"got {value!r}")
    bad = [k for k in options if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{where}: option names must be strings, got {bad[0]!r}")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}.name: expected a non-empty string, got {name!r}")
    return name, options
