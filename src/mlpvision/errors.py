"""The errors mlpvision raises on purpose: bad input named with its fix.

The ``mlpvision`` command prints these (and :class:`mlpvision.CheckpointError`) as one line and exits with status 2;
any other exception is a bug or an environment problem and keeps its traceback (see :mod:`mlpvision.cli.main`).
:class:`UsageError` is a ``ValueError``, so code that caught ``ValueError`` from mlpvision's checks still does.
"""
from __future__ import annotations

__all__ = ['MlpvisionError', 'UsageError']


class MlpvisionError(Exception):
    """Base of the errors mlpvision raises on purpose; the message says what is wrong and how to fix it."""


class UsageError(MlpvisionError, ValueError):
    """A bad option, argument or input (a value out of range, an unknown name, a run folder already taken)."""
