import os
import subprocess
import sys
from pathlib import Path

import pytest

# Keep thread counts predictable on the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny random multilingual Whisper ``M0``, one per test module (tests may write beside it)."""
    from ilt.testing.dummies import tiny_whisper_dir

    return tiny_whisper_dir(tmp_path_factory.mktemp("m0") / "M0")


@pytest.fixture
def fresh_registry():
    """Rebuild the component registry before and after a test that changes plugins."""
    from ilt.core.registry import get_registry

    get_registry.cache_clear()
    try:
        yield get_registry
    finally:
        get_registry.cache_clear()


def _pip_install_plugin(src: Path, target: Path) -> Path:
    """Build and install the plugin package at ``src`` into the directory ``target``
    (offline, no dependencies) and return ``target``, ready for ``sys.path``."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(src)],
        check=True, capture_output=True,
    )
    return target


@pytest.fixture(scope="session")
def broken_plugin_site(tmp_path_factory):
    """A directory holding the installed distribution ``ilt-broken-plugin``,
    whose ``ilt`` entry point raises on import (tests/data/ilt_broken_plugin)."""
    target = _pip_install_plugin(DATA / "ilt_broken_plugin", tmp_path_factory.mktemp("broken_site"))
    assert (target / "ilt_broken_plugin.py").exists()
    return target


@pytest.fixture
def broken_plugin_env(broken_plugin_site):
    """``os.environ`` for a subprocess (``ilt train``...) in which the broken
    third-party plugin is installed and loaded: ``PYTHONPATH`` starts with its
    site directory and ``ILT_LOAD_PLUGINS`` is unset. The command must still
    work, with one warning naming ``ilt-broken-plugin`` on stderr."""
    env = dict(os.environ)
    env.pop("ILT_LOAD_PLUGINS", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(broken_plugin_site), env.get("PYTHONPATH")) if p)
    return env


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "reliability: a slow reliability check (kill points, two processes, bad input through "
                   "subprocesses); skipped unless ILT_RELIABILITY=1 (`make reliability`)")
    config.addinivalue_line(
        "markers", "two_processes: runs `ilt` under `accelerate launch` with 2 CPU processes (gloo); "
                   "part of `make test` (CI), deselect with -m 'not two_processes'")


def pytest_collection_modifyitems(config, items):
    """`make test` runs the fast slice; `make reliability` (ILT_RELIABILITY=1) runs everything."""
    if os.environ.get("ILT_RELIABILITY", "") not in ("", "0"):
        return
    skip = pytest.mark.skip(reason="slow reliability check: run `make reliability` (ILT_RELIABILITY=1)")
    for item in items:
        if "reliability" in item.keywords:
            item.add_marker(skip)
