"""Experiments for the UniLoss paper: data, models, training loop and the ``uniloss`` command.

This subpackage needs the ``experiments`` extra (``pip install "uniloss[experiments]"``); the core
library in :mod:`uniloss` depends on torch alone and never imports it.
"""
