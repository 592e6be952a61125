"""Errors a user can cause; the command line prints them as one line and exits non-zero."""
from __future__ import annotations

import threading


class ConvertError(Exception):
    """Base class: bad input or an unmet expectation, with a message that says what was expected."""


class WeightsError(ConvertError):
    """Weights are missing, corrupt, of the wrong hash, or do not fit the model."""


class GateError(ConvertError):
    """A validation gate was missed: the message lists the missed gates, ``report`` holds every figure
    (the conversion report, as :func:`convert.pipeline.convert` would have returned it)."""

    def __init__(self, message: str, report: dict | None = None) -> None:
        super().__init__(message)
        self.report = report or {}


class TrainError(ConvertError):
    """Training cannot start or continue: bad data folder, options, or a run that does not match."""


class ProcessError(TrainError):
    """A TrainError of this process alone in a torchrun run (an image that became unreadable on its machine):
    every process that meets one prints it, where the errors all processes find alike are printed by rank 0."""


class Terminated(BaseException):
    """SIGTERM: unwinds like Ctrl-C, so working folders are removed and nothing half-written stays."""


# Set by the command line's SIGTERM handler. An exception raised from a signal handler can land where
# Python swallows it (a weakref callback during an import, a __del__), so the long work also checks
# this between its steps and before it writes anything (check_stop).
STOP = threading.Event()


def check_stop() -> None:
    """Raise :class:`Terminated` when a SIGTERM arrived (even one whose exception was swallowed)."""
    if STOP.is_set():
        raise Terminated()
