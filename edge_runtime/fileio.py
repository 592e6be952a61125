"""Write files so that readers only ever see the old or the complete new content."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import secrets
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, TextIO

NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # flock's errors on a filesystem that has no locks


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
    """Write a set of files that belong together (an artifact, its siblings and its report): every one
    goes to a temporary file first, and only when all are written (and checked) are they renamed into
    place, so a failure (a full disk, a folder in the way) replaces none of them. The renames hold a lock
    on each folder (:func:`_folders_locked`): two of this project's processes writing the same set at once
    leave one's set whole, never one's artifact beside the other's report.

    Raises:
        OSError: naming the output path whose writing failed (never the temporary file).
    """
    temps: dict[Path, Path] = {}
    try:
        for path, data in files.items():
            path = Path(path)
            with _naming(path):
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
        # the locks first (a wait for them can be stopped); a SIGTERM or Ctrl-C after would leave half the set renamed
        with _folders_locked({p.parent for p in temps}) as folders:
            with _signals_held():
                for path, tmp in temps.items():
                    with _naming(path):
                        os.replace(tmp, path)
            for fd in folders:  # the renames reach the storage (a power cut keeps the new set)
                try:
                    os.fsync(fd)
                except OSError as e:  # a filesystem that cannot sync a folder (some FUSE, SMB mounts): as written
                    if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                        raise
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)


LOCK_WAIT = 5.0  # seconds a set waits for another writer's lock on its folder before it goes without


@contextlib.contextmanager
def _folders_locked(folders) -> Iterator[list[int]]:
    """An exclusive lock on each of ``folders`` while the block runs, which gets a descriptor of each folder
    that could be opened (to fsync after its renames). Folders are told apart by the folder
    itself (device and inode: ``build`` and its absolute path are one) and locked in that order, so two sets
    never wait for each other. The lock is a courtesy between this project's writers: a folder held by
    anything else for longer than :data:`LOCK_WAIT` (``flock DIR cmd`` around the whole command), a
    filesystem without locks (NFS refuses them on a folder) or a folder that cannot be read goes without."""
    with contextlib.ExitStack() as held:
        fds: dict[tuple[int, int], int] = {}
        for folder in folders:
            try:
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            except OSError:
                continue
            held.callback(os.close, fd)
            st = os.fstat(fd)
            fds.setdefault((st.st_dev, st.st_ino), fd)
        deadline = time.monotonic() + LOCK_WAIT
        for _key, fd in sorted(fds.items()):
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        break  # held by something else for long: written without it
                    time.sleep(0.02)
                except OSError:  # NO_LOCKS, or a lock the folder refuses: written without it
                    break
        yield list(fds.values())


@contextlib.contextmanager
def _naming(path: Path):
    """An OSError raised while writing ``path`` names ``path`` itself: a full disk names no file, a
    folder that takes no files (/proc) names the hidden temporary one, and neither is what the user gave."""
    try:
        yield
    except OSError as e:
        if e.filename == str(path) or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from e  # OSError() picks the subclass of the errno


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


def discard_writes(stream) -> None:
    """Point ``stream``'s file descriptor at /dev/null: its reader went away (a broken pipe), and later
    writes, Python's exit-time flush included, should neither fail nor say so. A stream whose fileno() fails
    (a StringIO, a capture) is left as it is: its later writes may fail again."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # a stream without a descriptor of its own (a wrapper, a closed file)
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


STDOUT = "stdout"  # write_result's default: sys.stdout as it is when called


def write_result(text: str, stream: TextIO | None | str = STDOUT) -> None:
    """A command's result (a table, a summary line, JSON) on ``stream`` (default stdout), in one write and
    flushed. A reader that went away before it was read (``| head -1``) has what it wanted: the rest is dropped
    and later writes go nowhere (:func:`discard_writes`), so the run ends with its own exit code and the files
    it wrote. A closed stream (``>&-``: Python's ``None``) takes nothing, as ``print`` does.

    Raises:
        OSError: any other failure (a full disk behind ``>``), naming the stream (``<stdout>``); the text is
        dropped, so that Python's own last flush neither fails again nor changes the exit code.
    """
    def failed(stream, e: OSError) -> None:
        discard_writes(stream)
        raise OSError(e.errno, e.strerror, getattr(stream, "name", None)) from None

    _write_line(text, sys.stdout if stream is STDOUT else stream, failed)


def tell(line: str, stream: TextIO | None = None) -> None:
    """A line of a run's account on ``stream`` (default stderr): its progress, its end, its error. One that
    cannot be written is lost, never the run's work or its exit code: on a full card the line is dropped and
    the next ones are written once there is room again; a reader that left takes nothing more
    (:func:`discard_writes`); a closed stream takes nothing."""
    stream = sys.stderr if stream is None else stream
    with contextlib.suppress(OSError, ValueError):  # ValueError: a stream closed under us
        try:
            _write_line(line, stream, _drop_pending)
        except UnicodeEncodeError:  # a strict encoding (PYTHONIOENCODING=ascii:strict): the line escaped
            _write_line(line.encode("ascii", "backslashreplace").decode("ascii"), stream, _drop_pending)


def _write_line(text: str, stream: TextIO | None, failed: Callable[[TextIO, OSError], None]) -> None:
    """``text`` and a line break on ``stream`` in one write, flushed; a reader gone (a broken pipe) gets
    nothing more, any other OSError goes to ``failed``."""
    if stream is None:
        return
    try:
        stream.write(text if text.endswith("\n") else text + "\n")
        stream.flush()
    except BrokenPipeError:
        discard_writes(stream)
    except OSError as e:
        failed(stream, e)


_DROPPING = threading.Lock()  # two threads' drops at once would leave a descriptor on /dev/null


def _drop_pending(stream: TextIO, _error: OSError | None = None) -> None:
    """Empty ``stream``'s buffer into /dev/null and give it its descriptor back (as inheritable as it was): text
    that could not be written (a full disk) is lost instead of failing every later write and Python's last
    flush. With no descriptor free (EMFILE) it raises OSError and the text stays in the buffer."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):
        return
    with _DROPPING, contextlib.ExitStack() as undo:
        inheritable = os.get_inheritable(fd)
        saved = os.dup(fd)
        undo.callback(os.close, saved)
        null = os.open(os.devnull, os.O_WRONLY)
        undo.callback(os.close, null)
        undo.callback(os.dup2, saved, fd, inheritable)  # before the dup2: a signal between them still restores
        os.dup2(null, fd)
        with contextlib.suppress(OSError, ValueError):
            stream.flush()


class TellHandler(logging.StreamHandler):
    """logging's lines (a library's warnings, the service's) written as :func:`tell` writes a line: one that
    cannot be written is lost, and the lines after it reach the log once there is room. logging's own
    StreamHandler kept a failed line in the stream's buffer and printed a traceback for it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 (a record whose arguments do not format: logging's own report)
            self.handleError(record)
            return
        tell(text, self.stream)


class HeldResult:
    """A command's results shown as they come (:func:`write_result`), with the first that cannot be shown
    (a full disk behind ``>``) held until the run has written its files and knows how it ends: the figures
    go first (a --report that meets a full disk still leaves them on the screen), the files are never lost
    to the screen, and the run's own failure (a missed gate, a failed case) keeps its exit code.
    """

    def __init__(self) -> None:
        self.unshown: OSError | None = None

    def show(self, text: str, stream: TextIO | None | str = STDOUT) -> None:
        try:
            write_result(text, stream)
        except OSError as e:
            self.unshown = self.unshown or e

    def exit_code(self, code: int) -> int:
        """``code``, the run's own outcome; a result that could not be shown is said on stderr beside a
        failure, and raised when the run would otherwise end with 0.

        Raises:
            OSError: the held failure, when ``code`` is 0.
        """
        if self.unshown is not None and code == 0:
            raise self.unshown
        self.say()
        return code

    def say(self) -> None:
        """The ``error:`` line of a result that could not be shown, if one could not, on stderr: beside a
        failure that the run ends with."""
        e = self.unshown  # stderr may be the stream that failed: tell loses the line then
        if e is not None:
            tell(f"error: {e.filename}: {e.strerror or e}" if e.filename else f"error: {e.strerror or e}")


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
    nearest = Path(".")
    for nearest in path.parents:  # the nearest existing folder on the way must be a folder
        if nearest.exists():
            if not nearest.is_dir():
                return f"{nearest} is a file, not a folder"
            break
    folder = path.parent if str(path.parent) else Path(".")
    if (folder.exists() and not os.access(folder, os.W_OK)) or (path.exists() and not os.access(path, os.W_OK)):
        return "output path is not writable"
    try:  # what access() does not see, as root: a folder that takes no files (/proc, sysfs)
        fd, tmp = _create_temp(nearest / path.name)
    except OSError as e:
        return f"cannot create a file in {nearest} ({e.strerror})"
    os.close(fd)
    os.unlink(tmp)
    return None


def same_file(a: str | Path, b: str | Path) -> bool:
    """``a`` and ``b`` name one file or folder: the same path once resolved (a symlink followed), or, when both
    exist, the same inode (a hard link)."""
    if Path(a).resolve() == Path(b).resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def clash_problem(outputs, inputs=()) -> str | None:
    """Why writing ``outputs`` would destroy one of ``inputs`` or another output, or None: checked before any
    work, beside :func:`output_problem` (which checks each output alone).

    Args:
        outputs: (name, path) of every file a command writes, the name being what the line calls it
            ("--report", "the float ONNX beside --out"); None paths are skipped.
        inputs: (name, path) of every file or folder it reads; None paths are skipped.
    Returns:
        one line naming both, e.g. "--report m.tflite: the same file as --model (writing it would destroy the
        input); choose another path".
    """
    given = [(name, Path(path)) for name, path in outputs if path is not None]
    read = [(name, Path(path)) for name, path in inputs if path is not None]

    def other(name: str, path: Path, this: Path) -> str:
        return name if str(path) == str(this) else f"{name} {path}"

    for i, (name, path) in enumerate(given):
        for in_name, in_path in read:
            if same_file(path, in_path):
                kind = "folder" if in_path.is_dir() else "file"
                return (f"{name} {path}: the same {kind} as {other(in_name, in_path, path)} (writing it would "
                        "destroy the input); choose another path")
        for out_name, out_path in given[:i]:
            if same_file(path, out_path):
                return (f"{name} {path}: the same file as {other(out_name, out_path, path)} (one output would "
                        "replace the other); choose another path")
    return None


def outputs_problem(outputs, inputs=()) -> str | None:
    """The first problem of a command's outputs, or None: one is an input or another output
    (:func:`clash_problem`), or one cannot be written (:func:`output_problem`); one line naming the flag."""
    problem = clash_problem(outputs, inputs)
    for name, path in outputs:
        if problem is None and path is not None and (alone := output_problem(path)):
            problem = f"{name} {path}: {alone}"
    return problem


def inside(path: str | Path, folder: str | Path) -> bool:
    """``path`` is ``folder`` or somewhere under it (resolved paths: a symlink followed)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents or same_file(path, folder)


def folder_clash_problem(name: str, folder: str | Path, inputs, writes=()) -> str | None:
    """Why an output folder (a run's, a sweep's) would mix its files with an input folder, or None: it is one of
    ``inputs`` ((name, path) pairs, None paths skipped), lies inside one, or holds one inside the sub-folders
    ``writes`` it writes into (an input elsewhere in it, beside those, is left alone: ``--out .`` with
    ``--data photos``).

    Returns:
        one line, e.g. "--out ds/train/run: inside --data ds/train (its files would be mixed into the data); ...".
    """
    for in_name, in_path in inputs:
        if in_path is None:
            continue
        if inside(folder, in_path) and inside(in_path, folder):
            how = f"the {in_name} folder"
        elif inside(folder, in_path):
            how = f"inside {in_name} {in_path}"
        elif any(inside(in_path, Path(folder) / w) for w in writes):
            how = f"holds {in_name} {in_path} where it writes its own files"
        else:
            continue
        return f"{name} {folder}: {how} (its files would be mixed into the data); choose another {name}, outside it"
    return None
