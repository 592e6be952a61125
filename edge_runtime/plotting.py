"""Matplotlib for PNG files (the Agg backend), with no warning where the home folder is read-only."""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def matplotlib_agg():
    """``matplotlib`` with the Agg backend selected (call it before importing ``matplotlib.pyplot``).

    Matplotlib keeps its configuration and font cache under ``$XDG_CONFIG_HOME`` and ``$XDG_CACHE_HOME``
    (``~/.config``, ``~/.cache``). Where it cannot write there (a CI container's read-only home) it makes a
    temporary folder itself but warns on two lines in every run, ``--quiet`` or not; the same temporary folder
    is given here first, through ``$MPLCONFIGDIR`` (removed when the process ends), without the warning.

    Raises:
        ImportError: matplotlib is not installed.
    """
    if "matplotlib" not in sys.modules and not os.environ.get("MPLCONFIGDIR"):
        home = Path(os.path.expanduser("~"))
        bases = [os.environ.get("XDG_CONFIG_HOME") or home / ".config",
                 os.environ.get("XDG_CACHE_HOME") or home / ".cache"]
        if not all(Path(base).is_absolute() and _writable(Path(base) / "matplotlib") for base in bases):
            folder = tempfile.mkdtemp(prefix="matplotlib-")
            atexit.register(shutil.rmtree, folder, True)
            os.environ["MPLCONFIGDIR"] = folder
    # Ctrl-C or SIGTERM held until the native modules are loaded: an exception raised by the signal's handler
    # inside one's initialisation became its "ImportError: initialization failed" (not a stop), and the
    # half-loaded module aborted the interpreter at exit (a Fatal Python error, not exit code 143)
    main = threading.current_thread() is threading.main_thread()
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM}) if main else None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401 (its native modules, here)
    finally:
        if held is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
    return matplotlib
