"""Output paths are checked before any work: a run never ends by finding that it cannot write its result."""
from __future__ import annotations

from pathlib import Path

from edge_runtime.fileio import clash_problem, output_problem

from .errors import ConvertError


def check_output_path(path: str | Path, flag: str = "") -> None:
    """``path`` can be written: not a folder, and its folder (if it exists yet) and the file writable.

    Raises:
        ConvertError: it cannot, naming the flag that gave it.
    """
    problem = output_problem(path)
    if problem:
        raise ConvertError(f"{flag} {path}: {problem}" if flag else f"{path}: {problem}")


def check_no_clash(outputs, inputs=()) -> None:
    """No output is an input or another output (:func:`edge_runtime.fileio.clash_problem`: resolved paths,
    hard links and symlinks count); checked before any work, so that nothing is written.

    Raises:
        ConvertError: naming both.
    """
    problem = clash_problem(outputs, inputs)
    if problem:
        raise ConvertError(problem)
