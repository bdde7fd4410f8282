# A third-party ilt plugin that fails on import, installed into a temp dir by the
# `broken_plugin_site` fixture of tests/conftest.py.
from setuptools import setup

setup(
    name="ilt-broken-plugin",
    version="0.0.1",
    py_modules=["ilt_broken_plugin"],
    entry_points={"ilt": ["broken = ilt_broken_plugin"]},
)
