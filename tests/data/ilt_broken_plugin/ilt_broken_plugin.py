"""A third-party ilt plugin that cannot be imported, as when its own dependency
is missing or broken: ilt must skip it with a warning and keep working."""

raise RuntimeError("ilt-broken-plugin is broken on purpose (tests/data/ilt_broken_plugin)")
