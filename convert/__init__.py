"""Workstation / CI side: the SqueezeNet model family, weights, evaluation, int8 TFLite conversion."""
import sys

__version__ = "0.1.0"


def missing_package_line(name: str | None) -> str:
    """The one line a workstation command (``python -m convert``, ``python -m tools.NAME``) stops with
    when ``name`` is not installed for the Python running it (dependency-free: it runs before any import
    that could fail)."""
    return (f"error: {name} is not installed for {sys.executable}: run `source .venv/bin/activate` "
            f"(made by `bash tools/setup.sh`) or install the project (`pip install .`)")
