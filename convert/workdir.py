"""A conversion's hidden working folder beside its output, and the clean-up of those killed runs left.

A live run holds a lock on a file in its folder for as long as it works, and the kernel releases it
when the process ends (a ``kill -9`` too). The clean-up asks the lock, not the process id in the name:
two CI jobs in containers that share the output folder see different process ids (a live job's id is
no process in the other's namespace), so the id alone took a running conversion's folder for a dead one.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from edge_runtime.fileio import NO_LOCKS, pid_alive

WORK_PREFIX = ".convert-"  # the working folder beside the output: .convert-PID-XXXXXXXX
_WORK_DIR = re.compile(r"^\.convert-(\d+)-[A-Za-z0-9_]+$")
LOCK_NAME = "lock"  # held by the live run


@contextlib.contextmanager
def work_dir(folder: Path) -> Iterator[Path]:
    """A new working folder in ``folder``, locked by this process while the block runs, removed after
    (also on an exception, SIGTERM and Ctrl-C). It gets its final name only once its lock is held, so
    the clean-up of another run never finds it unlocked."""
    staging = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-", suffix=".new", dir=folder)).resolve()
    work = staging.with_name(staging.name[:-len(".new")])
    lock = None
    try:
        lock = open(staging / LOCK_NAME, "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError as e:  # a filesystem without locks (some FUSE, SMB, 9p mounts): the process id rule
            if e.errno not in NO_LOCKS:
                raise
        os.rename(staging, work)
        yield work
    finally:
        shutil.rmtree(work if work.exists() else staging, ignore_errors=True)
        if lock is not None:
            lock.close()  # after the removal: the folder is never unlocked while it exists


def _abandoned(folder: Path, pid: int) -> bool:
    """No live run holds ``folder``: its lock is free (or, in a folder from before the lock or on a filesystem
    without locks, its process is gone)."""
    try:
        with open(folder / LOCK_NAME, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno not in NO_LOCKS:
            return False  # held by a live run (EWOULDBLOCK), or unreadable: left alone
    return pid != os.getpid() and not pid_alive(pid)


def remove_stale_work_dirs(folder: Path) -> list[str]:
    """Remove the working folders that conversions killed before they could clean up left in ``folder``
    (``.convert-PID-*`` that no live run holds). Returns the names removed."""
    removed = []
    for entry in folder.iterdir() if folder.is_dir() else ():
        m = _WORK_DIR.match(entry.name)
        if m and entry.is_dir() and _abandoned(entry, int(m[1])):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed
