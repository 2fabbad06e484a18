"""Experiments for the UniLoss paper: data, models, training loop and the ``uniloss`` command.

This subpackage needs the ``experiments`` extra (``pip install "uniloss[experiments]"``); the core
library in :mod:`uniloss` depends on torch alone and never imports it.
"""

# Experiments defined in their own modules register themselves in .registry on import (one line
# per module); importing them here, not from .registry, keeps the modules free of import cycles.
from . import pose  # noqa: E402,F401
from . import multiclass  # noqa: E402,F401
