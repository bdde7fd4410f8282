# A tiny third-party ilt plugin, built and installed into a temp dir by tests/test_plugins.py.
from setuptools import setup

setup(
    name="ilt-fake-plugin",
    version="0.0.1",
    py_modules=["ilt_fake_plugin"],
    entry_points={"ilt": ["fake = ilt_fake_plugin"]},
)
