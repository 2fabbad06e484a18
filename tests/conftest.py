import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # the oracle helpers in tests/_reference.py

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)
