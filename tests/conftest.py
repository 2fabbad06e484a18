import os
import sys

# torch.compile's tests compile in this process: inductor's pool of compile workers (spawned
# processes) once left a full run waiting on a worker for 15 minutes.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

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
