import os

import pytest

# Keep thread counts predictable on the 2-core CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def fresh_registry():
    """Rebuild the component registry before and after a test that changes plugins."""
    from ilt.plugins import get_registry

    get_registry.cache_clear()
    try:
        yield get_registry
    finally:
        get_registry.cache_clear()
