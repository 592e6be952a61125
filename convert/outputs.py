"""Output paths are checked before any work: a run never ends by finding that it cannot write its result."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import ConvertError


def check_output_path(path: str | Path, flag: str = "") -> None:
    """``path`` can be written: not a folder, and its folder (if it exists yet) and the file writable.

    Raises:
        ConvertError: it cannot, naming the flag that gave it.
    """
    path = Path(path)
    name = f"{flag} {path}" if flag else str(path)
    if path.is_dir():
        raise ConvertError(f"{name}: is a folder; a file path expected")
    folder = path.parent if str(path.parent) else Path(".")
    if (folder.exists() and not os.access(folder, os.W_OK)) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConvertError(f"{name}: output path is not writable")
