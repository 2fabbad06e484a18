import pytest


class Crash(Exception):
    """What the ``crash_after_first_checkpoint`` fixture raises."""


@pytest.fixture
def crash_after_first_checkpoint(monkeypatch):
    """``run(fn)`` calls ``fn()`` with ``uniloss train`` dying right after its first checkpoint
    (epoch 1) is written, as a killed process would, then restores normal saving."""
    from uniloss.experiments import train as T

    real_save = T.save_checkpoint

    def save_then_crash(state, path):
        real_save(state, path)
        raise Crash

    def run(fn):
        monkeypatch.setattr(T, "save_checkpoint", save_then_crash)
        try:
            with pytest.raises(Crash):
                fn()
        finally:
            monkeypatch.setattr(T, "save_checkpoint", real_save)

    return run
