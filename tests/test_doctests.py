"""The docstring examples of every module of the package run as written.

The modules are collected with ``pkgutil.walk_packages`` over ``uniloss`` (the experiments and
their data loaders included), so a new module is covered without editing this file.
"""

import doctest
import importlib
import pkgutil

import pytest

import uniloss

_WALK_ERRORS = []


def _modules():
    names = ["uniloss"] + [info.name for info in pkgutil.walk_packages(
        uniloss.__path__, "uniloss.", onerror=_WALK_ERRORS.append)]
    return sorted(names)


MODULES = _modules()

# Public modules without a docstring example, and why (private modules, a name part starting with
# "_", need none). Examples that need data sets on disk or print machine-specific paths are marked
# "# doctest: +SKIP" where they stand (data.loaders, data.paths, multiclass's split loaders); every
# other example runs, in about two seconds in all.
NO_EXAMPLE = {
    "uniloss.experiments": "a package docstring only",
    "uniloss.experiments.data": "a package docstring only (its modules have the examples)",
    "uniloss.experiments.data.loaders": "every loader reads a data set from disk (+SKIP)",
    "uniloss.experiments.data.paths": "its examples print machine-specific paths (+SKIP)",
    "uniloss.experiments.checkpoint": "file I/O of a training run",
    "uniloss.experiments.cli": "the command line (tested in tests/experiments/test_cli.py)",
    "uniloss.experiments.digits": "a training demo of minutes",
    "uniloss.experiments.metric_wins": "a benchmark of many training runs",
    "uniloss.experiments.registry": "a table of experiments",
    "uniloss.experiments.reproduce": "runs the paper's experiments",
    "uniloss.experiments.train": "the training loop (tested in tests/test_training.py)",
}


def _is_private(name):
    return any(part.startswith("_") for part in name.split("."))


def test_every_module_is_collected():
    assert _WALK_ERRORS == []
    for name in ("uniloss.distributed", "uniloss.zoo", "uniloss._metrics", "uniloss.experiments.models",
                 "uniloss.experiments.augment", "uniloss.experiments.metrics", "uniloss.experiments.published",
                 "uniloss.experiments.data.idx"):
        assert name in MODULES
    assert set(NO_EXAMPLE) <= set(MODULES), sorted(set(NO_EXAMPLE) - set(MODULES))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    failures, tried = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert failures == 0
    if not _is_private(name) and name not in NO_EXAMPLE:
        assert tried > 0, f"{name} has no example"
