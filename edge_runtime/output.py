"""The runtime's result lines (``--json``, headless text) on their way out: a stop is never held up by a
reader that stops reading, a line is written whole or not at all where the output allows it (a file on a
disk that fills keeps its whole lines), and an output that cannot be written ends the run with one line
instead of a traceback."""
from __future__ import annotations

import contextlib
import errno
import os
import select
import stat
import threading
from typing import TextIO

POLL = 0.1  # seconds between looks at the stop event while the reader does not read


class OutputError(RuntimeError):
    """The output cannot be written (full storage, a file size limit, a closed reader)."""

    def __init__(self, message: str, closed: bool = False) -> None:
        super().__init__(message)
        self.closed = closed  # the reader went away (a broken pipe): a stop, not a failure


class LineOutput:
    """Writes lines to ``out``. When ``out`` is a file descriptor, the bytes go straight to it: to a pipe
    or a terminal only once it can take them, looking at ``stop`` every 0.1 s meanwhile (a line that a
    stop cuts short is dropped: nobody was reading it). In a file, the part of a line that a full disk cut
    short is taken back; an appended file that ends in the middle of a line all the same (a run killed while
    writing, a file that could not be shortened) gets a line break first, so the next line stays whole.

    Raises:
        OutputError: from :meth:`write`, when the output cannot take the line.
    """

    def __init__(self, out: TextIO | None, stop: threading.Event | None = None) -> None:
        self.out, self.stop = out, stop or threading.Event()
        self.fd: int | None = None
        self.waits = False  # a pipe, a socket or a terminal: writes may block
        # the text stream's encoding (a label, a file name undecodable in it: escaped, never an error)
        self.encoding = getattr(out, "encoding", None) or "utf-8"
        self.errors = getattr(out, "errors", None) or "strict"
        try:
            fd = out.fileno()
            mode = os.fstat(fd).st_mode
        except (AttributeError, OSError, ValueError):
            return  # a StringIO, a closed stream: written as a text stream
        self.fd, self.waits = fd, not stat.S_ISREG(mode)
        if self.waits:
            self._poller = select.poll()
            self._poller.register(fd, select.POLLOUT)
        out.flush()  # what the text stream holds goes first
        self._broken_line = stat.S_ISREG(mode) and _ends_mid_line(fd)

    def write(self, text: str) -> None:
        if self.out is None:  # stdout closed (>&-): nobody can read the results
            raise OutputError("stdout is closed", closed=True)
        if self.fd is None:
            try:
                self.out.write(text)
                self.out.flush()
            except OSError as e:
                raise _output_error(e, self.fd) from None
            return
        data = (b"\n" if self._broken_line else b"") + self._encode(text)
        self._broken_line = False
        try:
            if not self.waits:  # a file: the line in one write; one a full disk cuts short is taken back
                written = 0
                try:
                    while data:
                        n = os.write(self.fd, data)
                        data, written = data[n:], written + n
                except OSError:
                    _take_back(self.fd, written)
                    raise
                return
            while data:
                if not self._writable():
                    return  # stopped while the reader did not read: the rest of the line is dropped
                try:
                    n = os.write(self.fd, data[:select.PIPE_BUF])  # a pipe that polls writable takes this much
                except BlockingIOError:  # a non-blocking descriptor (shared with a parent): wait again
                    continue
                data = data[n:]
        except OSError as e:
            raise _output_error(e, self.fd) from None

    def _encode(self, text: str) -> bytes:
        try:
            return text.encode(self.encoding, self.errors)
        except UnicodeEncodeError:  # a file name of other bytes (surrogates), a label the locale cannot show
            return text.encode(self.encoding, "backslashreplace")

    def _writable(self) -> bool:
        """The descriptor takes data now, or once it does; False when a stop came first."""
        while True:
            stopping = self.stop.is_set()  # a last look without waiting: a reader keeping up gets the line
            if self._poller.poll(0 if stopping else int(POLL * 1000)):
                return True
            if stopping:
                return False


def _take_back(fd: int, written: int) -> None:
    """Remove the last ``written`` bytes of a regular file (the part of a line a full disk cut short), so it
    ends with a whole line; a file that cannot be shortened, or holds bytes after ours, is left as it is (the
    next run's first line then starts on a new line)."""
    if written:
        with contextlib.suppress(OSError):
            end = os.lseek(fd, 0, os.SEEK_CUR)
            if os.fstat(fd).st_size != end:  # bytes after ours (an older file written over, another writer)
                return
            os.ftruncate(fd, end - written)
            os.lseek(fd, end - written, os.SEEK_SET)


def _ends_mid_line(fd: int) -> bool:
    """A regular file whose last byte is not a line break (read through /proc: ``fd`` may be write-only)."""
    try:
        if os.fstat(fd).st_size == 0:
            return False
        with open(f"/proc/self/fd/{fd}", "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"
    except OSError:
        return False


def _output_error(e: OSError, fd: int | None) -> OutputError:
    where = "stdout" if fd == 1 else "the output"
    if e.errno == errno.EPIPE:
        return OutputError(f"{where} was closed by its reader (broken pipe)", closed=True)
    return OutputError(f"cannot write the results to {where} ({e.strerror or e})")
