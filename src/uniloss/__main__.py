"""``python -m uniloss``: the ``uniloss`` command, :mod:`uniloss.experiments.cli` (it needs the
``experiments`` extra: ``pip install "uniloss[experiments]"``). Importing this module runs nothing."""

if __name__ == "__main__":
    import sys

    try:
        from uniloss.experiments.cli import main
    except ImportError as exc:  # the core installed alone
        sys.exit(f"python -m uniloss needs the experiments extra ({exc}): pip install \"uniloss[experiments]\"")
    sys.exit(main())
