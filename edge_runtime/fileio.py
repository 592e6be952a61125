"""Write files so that readers only ever see the old or the complete new content."""
from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import signal
import threading
from pathlib import Path
from typing import Callable


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new hidden file beside ``path``, created with mode 0666 less the umask (as ``open`` does;
    ``tempfile.mkstemp`` would make it 0600, and the rename would keep that)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path}: no free temporary name beside it")


def _is_temp_of(name: str | Path, path: Path) -> bool:
    """``name`` is one of :func:`_create_temp`'s files for ``path``."""
    name = Path(name)
    return name.parent == path.parent and name.name.startswith(f".{path.name}.") and name.suffix == ".tmp"


def fsync_path(path: str | Path) -> None:
    """Flush a file's or a folder's entries to the storage (a power cut keeps what was renamed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: bytes | str, check: Callable[[Path], None] | None = None) -> None:
    """Write ``data`` to a temporary file beside ``path``, optionally ``check`` it, then rename it
    into place. On any error the temporary file is removed and ``path`` is left untouched."""
    atomic_write_many({Path(path): data}, check={Path(path): check} if check else None)


def atomic_write_many(files: dict[Path, bytes | str],
                      check: dict[Path, Callable[[Path], None]] | None = None) -> None:
    """Write a set of files that belong together (an artifact and its siblings): every one goes to
    a temporary file first, and only when all are written (and checked) are they renamed into
    place, so a failure (a full disk, a folder in the way) replaces none of them."""
    temps: dict[Path, Path] = {}
    path = None
    try:
        for path, data in files.items():
            path = Path(path)
            if path.is_dir():
                raise IsADirectoryError(21, "Is a directory", str(path))
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = _create_temp(path)
            temps[path] = tmp
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
                f.flush()
                os.fsync(f.fileno())
            if check and check.get(path) is not None:
                check[path](tmp)
        with _signals_held():  # a SIGTERM or Ctrl-C now would leave half the set renamed
            for path, tmp in temps.items():
                os.replace(tmp, path)
        for folder in {p.parent for p in temps}:
            fsync_path(folder)
    except OSError as e:  # about the file being written: named as the caller named it, not its hidden temporary
        if path is None or e.errno is None or (e.filename is not None and not _is_temp_of(e.filename, path)):
            raise
        raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)


@contextlib.contextmanager
def _signals_held():
    """SIGTERM and SIGINT that arrive while the block runs are delivered right after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = {sig: signal.signal(sig, lambda num, _frame: caught.append(num)) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        for sig in caught:
            signal.raise_signal(sig)


def free_name(path: Path, tag: str) -> Path:
    """``path`` itself when it does not exist, else ``STEM.TAG.EXT``, ``STEM.TAG-2.EXT``... (never an
    existing file)."""
    if not path.exists():
        return path
    for i in range(1, 10_000):
        candidate = path.with_name(f"{path.stem}.{tag}{'' if i == 1 else f'-{i}'}{path.suffix}")
        if not candidate.exists():
            return candidate
    raise FileExistsError(f"{path}: no free name with .{tag}")


def pid_alive(pid: int) -> bool:
    """A process with this id exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sha256_file(path: str | Path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class FileTooLarge(ValueError):
    """A file over the size its reader accepts (the message names it and both sizes)."""


def read_bounded(path: str | Path, limit: int) -> bytes:
    """The bytes of an untrusted file, refused above ``limit`` bytes: before reading when its size says
    so, and while reading when it does not (a growing file, a FIFO, /dev/zero).

    Raises:
        FileTooLarge: over the limit.
        OSError: missing or unreadable.
    """
    size = os.stat(path).st_size
    if size > limit:
        raise FileTooLarge(f"{path}: {size:,} bytes, over the limit of {limit:,}")
    with open(path, "rb") as f:
        data = f.read(size) if size else b""  # no buffer larger than the file is allocated
        more = f.read(1)
        if not more:  # the usual case: the file holds what its size says
            return data
        chunks, total = [data, more], len(data) + 1
        while total <= limit and (chunk := f.read(min(1 << 20, limit + 1 - total))):  # what the size did not say
            chunks.append(chunk)
            total += len(chunk)
    if total > limit:
        raise FileTooLarge(f"{path}: over the limit of {limit:,} bytes")
    return b"".join(chunks)


def output_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot take an output file, or None: checked before the work that makes it."""
    path = Path(path)
    if path.is_dir():
        return "is a folder; a file path expected"
    for parent in path.parents:  # the nearest existing folder on the way must be a folder
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, not a folder"
            break
    folder = path.parent if str(path.parent) else Path(".")
    if (folder.exists() and not os.access(folder, os.W_OK)) or (path.exists() and not os.access(path, os.W_OK)):
        return "output path is not writable"
    existing = next((p for p in path.parents if p.exists()), Path("."))
    try:  # access() says yes to root everywhere, and to /proc: create what atomic_write will create, and remove it
        fd, tmp = _create_temp(existing / path.name)
    except OSError:
        return "output path is not writable"
    os.close(fd)
    os.unlink(tmp)
    return None
