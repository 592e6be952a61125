"""``python -m convert SUBCOMMAND``: thin argument parsing over the library; errors are one line.

Each subcommand lives in its own module ``convert.cli_<name>`` exposing ``register(subparsers)``,
which adds its parser and sets ``func(args) -> int``.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import io
import os
import signal
import sys
import threading
import time
from typing import Callable

from edge_runtime.classify import ModelError
from edge_runtime.evaluation import DatasetError
from edge_runtime.metadata import MetadataError
from edge_runtime.preprocess import PreprocessingError

from edge_runtime.flags import GATE_MISSED

from .errors import STOP, ConvertError, GateError, ProcessError, Terminated

SUBCOMMANDS = ("evaluate", "tflite", "compress", "train")
RANK0_GRACE = 60.0  # seconds a torchrun process other than rank 0 waits, after an error rank 0 says, for rank 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m convert",
        description="SqueezeNet-family models: evaluate, compress, and convert to fully int8 TFLite.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"convert.cli_{name}")
        except ModuleNotFoundError as e:
            if e.name != f"convert.cli_{name}":
                raise
            continue
        module.register(sub)
    return parser


def _terminate(*_args) -> None:
    STOP.set()
    raise Terminated()


def _unraisable(info) -> None:
    """A Terminated that landed where Python cannot raise it (a weakref callback, a __del__) is not
    printed: STOP is set, and the run stops at its next step (convert.errors.check_stop)."""
    if not isinstance(info.exc_value, Terminated):
        sys.__unraisablehook__(info)


def run_guarded(func: Callable[[], int | None], stopped: str = "no partial output was left") -> int:
    """Run a command's work: SIGTERM unwinds like Ctrl-C, every error a user can cause is one line.

    Args:
        func: the work; returns the exit code (None: 0).
        stopped: what the line printed on Ctrl-C or SIGTERM says about the outputs.

    Returns:
        the exit code: func's, 2 for an error a user can fix (bad input, a file problem), GATE_MISSED
        for a missed validation gate, 130 for Ctrl-C, 143 for SIGTERM (an unexpected error: Python's 1).
    """
    STOP.clear()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    hook, sys.unraisablehook = sys.unraisablehook, _unraisable
    try:
        return int(func() or 0)
    except GateError as e:  # the run worked and the model missed a gate: a CI tells it from a typo by the code
        _say_error(str(e), shared=True)
        return GATE_MISSED
    except (ConvertError, DatasetError, MetadataError, PreprocessingError, ModelError) as e:
        _say_error(str(e), shared=not isinstance(e, ProcessError))
        return 2
    except OSError as e:  # a full disk, a folder that went away during the run...
        _say_error(os_error_text(e))
        return 2
    except KeyboardInterrupt:  # torchrun passes Ctrl-C and SIGTERM to every process: rank 0 says it
        _say_error(f"interrupted: {stopped}", shared=True, prefix="", wait=False)
        return 130
    except Terminated:
        _say_error(f"terminated (SIGTERM): {stopped}", shared=True, prefix="", wait=False)
        return 143
    finally:
        sys.unraisablehook = hook
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def torchrun_rank() -> tuple[int, int]:
    """(rank, processes) of this process in a torchrun run, from the environment torchrun sets (as
    :func:`convert.train.distributed.init` reads it, without importing torch); (0, 1) outside one."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1


def _say(line: str) -> None:
    """One line on stderr in one write: the processes of a torchrun run share the terminal, and print()'s
    separate writes of the text and the line break glued two processes' lines into one."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _say_error(text: str, shared: bool = False, prefix: str = "error: ", wait: bool = True) -> None:
    """``error: TEXT`` (``prefix``). Under torchrun an error every process finds alike (``shared``: a user's
    error, from the same options and data; rank 0's checks of the data are broadcast to the others) is printed
    by rank 0 alone, and the other processes (``wait``) outlive it (:func:`_outlive_rank0`); any other (an
    OSError, a :class:`ProcessError`) names the process it happened in, so a failure of one process stays
    visible. torchrun adds its own failure report after the line."""
    rank, processes = torchrun_rank()
    if processes > 1 and shared and rank != 0:
        if wait:
            _outlive_rank0()
        return
    _say(f"{prefix}rank {rank} of {processes}: {text}" if processes > 1 and not shared else f"{prefix}{text}")


class _Released(Exception):
    """torchrun stopped this process (rank 0 has ended)."""


def _release(*_args) -> None:
    raise _Released()


def _outlive_rank0(seconds: float = RANK0_GRACE) -> None:
    """Wait, on a rank other than 0 that leaves an error to rank 0, until torchrun stops this process (which it
    does once rank 0 has ended) or ``seconds`` have passed. torchrun stops every process when the first one
    ends with an error: a rank that left first stopped rank 0 before it had said the error, and the run ended
    with torchrun's report alone (seen in CI: rank 1 refused a flag while rank 0 was still starting). SIGTERM
    or Ctrl-C end the wait; the process then ends with its own exit code."""
    if threading.current_thread() is not threading.main_thread() or "TORCHELASTIC_RUN_ID" not in os.environ:
        return  # not started by torchrun (RANK and WORLD_SIZE set by something else): nobody would stop the wait
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _release)
        time.sleep(seconds)
    except (_Released, Terminated, KeyboardInterrupt):  # Terminated: a SIGTERM just before the handler changed
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def os_error_text(e: OSError) -> str:
    """The file an OSError concerns and why. A copy or a rename names two files, its source first (shutil's
    copy does so for a full disk too): when the storage being written is full or read-only, the file it
    concerns is the destination."""
    if e.filename2 is not None and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG):
        where = f"{e.filename2}: "
    elif e.filename2 is not None:
        where = f"{e.filename} -> {e.filename2}: "
    else:
        where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or e}"


def main(argv: list[str] | None = None) -> int:
    rank, processes = torchrun_rank()
    if processes > 1 and rank != 0:  # a flag argparse refuses: every process finds it, rank 0 alone says it
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                args = build_parser().parse_args(argv)
        except SystemExit as e:
            if e.code:
                _outlive_rank0()
            raise
    else:
        args = build_parser().parse_args(argv)
    args.command = list(sys.argv[1:] if argv is None else argv)  # recorded in the reports
    from .compress import container  # noqa: F401 (registers .sqz with the weights loader)

    return run_guarded(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
