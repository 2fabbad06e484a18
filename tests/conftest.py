import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # the oracle helpers in tests/_reference.py

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture
def empty_caches():
    """The library's module-level tensor caches emptied, so that the test's first call is the one
    that fills them (a first call under inference_mode must not poison them)."""
    from uniloss import _cache

    clear = _cache.clear_all
    clear()
    yield
    clear()
