"""Errors a user can cause; the command line prints them as one line and exits non-zero."""


class ConvertError(Exception):
    """Base class: bad input or an unmet expectation, with a message that says what was expected."""


class WeightsError(ConvertError):
    """Weights are missing, corrupt, of the wrong hash, or do not fit the model."""


class GateError(ConvertError):
    """A validation gate was missed (the figures are in the message)."""


class TrainError(ConvertError):
    """Training cannot start or continue: bad data folder, options, or a run that does not match."""
