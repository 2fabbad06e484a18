"""The docstring examples of the core library run as written."""

import doctest
import importlib

import pytest

MODULES = ["uniloss", "uniloss._decomposition", "uniloss._interpolation", "uniloss._metrics",
           "uniloss._module", "uniloss.functional", "uniloss.testing", "uniloss.decoders",
           "uniloss._decoded", "uniloss.zoo"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert failures == 0
    assert tried > 0, f"{name} has no example"
