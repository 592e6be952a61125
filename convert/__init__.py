"""Workstation / CI side: the SqueezeNet model family, weights, evaluation, int8 TFLite conversion."""
__version__ = "0.1.0"
