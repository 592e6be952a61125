"""Frame sources behind one small interface, with reconnects for cameras and streams.

``open_source(spec)`` returns an iterable of BGR frames. Files are read in order, every frame
(reproducible tests and benchmarks), by a decode thread that runs ahead of inference through a
small bounded queue. Cameras and streams use a capture thread that keeps only the newest frame, so
results never lag behind the scene; when the device stops delivering or disconnects it is reopened
with exponential back-off while the process keeps running, and attempts 1, 2, 4, 8... of each outage
are logged. Network streams have open and read timeouts, and a stream that ends is a dropped connection (a warning and a
reconnect), never an end of file. A source that fails again within :data:`STABLE_SECONDS` of each
reconnect (a camera that drops every connection after a frame, a snapshot URL) stays one outage: its lines
stay few, and a connection that held for less than the back-off waits it out, so the back-off grows: not a
reconnect and three lines per frame. Nothing here blocks the caller for more than a fraction of a second,
so a stop request (SIGTERM, Ctrl-C) is obeyed promptly even while a stream stalls.
"""
from __future__ import annotations

import logging
import os
import queue
import re
import stat
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np

from .evaluation import IMAGE_SUFFIXES
from .preprocess import MAX_IMAGE_PIXELS, ImageTooLarge, Preprocessing, PreprocessingError, read_image

log = logging.getLogger(__name__)

_END = object()
_POLL = 0.1  # seconds between checks of a stop request while waiting
STREAM_TIMEOUT = 10.0  # seconds: open and read timeout of network streams
STABLE_SECONDS = 30.0  # a live source that fails again sooner after a reconnect is still the same outage


def quiet_opencv() -> None:
    """OpenCV's and FFmpeg's own log lines off (a garbled clip makes FFmpeg print hundreds; this
    project's messages say what failed in one line). FFmpeg reads its variable when it first opens a
    file, so this works after cv2 is imported; OpenCV's level is set directly."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    logging_api = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging_api is not None and hasattr(logging_api, "setLogLevel"):
        logging_api.setLogLevel(logging_api.LOG_LEVEL_ERROR)


class SourceError(RuntimeError):
    """A source cannot be opened (the message says what to use instead)."""


class SourceUnavailable(SourceError):
    """A camera or stream that cannot be opened at start: it may come up later (a service manager
    retries; the runtime's command line exits with :data:`EXIT_UNAVAILABLE`)."""


EXIT_UNAVAILABLE = 75  # EX_TEMPFAIL (sysexits.h): try again later


class SourceTooLarge(SourceError):
    """The source's frames are over the pixel budget (refused before any frame is decoded)."""


@dataclass
class SourceStats:
    frames: int = 0
    corrupt: int = 0  # frames that decoded to nothing usable, skipped
    too_large: int = 0  # images over the pixel budget, skipped unread
    dropped: int = 0  # camera frames replaced by a newer one before inference took them
    reconnects: int = 0  # successful reopenings after a failure
    attempts: int = 0  # reopen attempts, successful or not
    fps_hint: float = 0.0
    ended_at: int = 0  # a clip unreadable from this frame on, before its end (0: it was read to its end)
    length: int = 0  # with ended_at: the frames the clip says it has

    @property
    def ended_early(self) -> str:
        """What the early end of a clip was, as a user reads it ("" when the clip was read to its end)."""
        return f"the clip ended at frame {self.ended_at} of {self.length} (unreadable from there)" \
            if self.ended_at else ""


_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)(.*)@")  # to the last "@": a raw "#", "?" or "/" in a password
_SECRET_QUERY = re.compile(r"([?&;][^=&;#]*(?:pass|pwd|token|secret|key|auth|sig|credential)[^=&;#]*=)[^&;#]*", re.I)


def masked(spec: str | int) -> str:
    """A --source as shown in logs, errors and output: a stream URL's password and secret-looking query
    values (password=, token=, key=...) as ``***`` (``rtsp://admin:***@cam/stream``); anything else as given.
    OpenCV is given the real URL. An "@" in a stream's path may hide more than the password, never less."""
    text = str(spec)
    if not is_stream(text):
        return text
    m = _USERINFO.match(text)
    if m and ":" in m[2]:
        text = f"{m[1]}{m[2].split(':', 1)[0]}:***@{text[m.end():]}"
    return _SECRET_QUERY.sub(r"\1***", text)


def said_at(attempt: int) -> bool:
    """Attempt (or round) ``attempt`` of an outage, counted from 1, is said: 1, 2, 4, 8... (a day-long outage
    is ~14 lines, not 10,000)."""
    return attempt & (attempt - 1) == 0


def _position(cap: Any) -> float:
    """The index of the next frame a file's capture reads (0 where it cannot tell)."""
    return float(cap.get(cv2.CAP_PROP_POS_FRAMES) or 0) if hasattr(cap, "get") else 0.0


def _valid(frame: Any) -> bool:
    return isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[2] == 3 and frame.size > 0 \
        and frame.dtype == np.uint8


class CaptureSource:
    """Frames from an object with OpenCV's capture interface (``read()``, ``release()``).

    Args:
        opener: returns an opened capture, or raises/returns one whose ``isOpened()`` is False.
        name: for logs and errors.
        latest: keep only the newest frame (cameras, streams) instead of every frame in order (files).
        reconnect: reopen after a failure instead of ending (cameras, streams, looping files).
        backoff: (first, maximum) delay in seconds between reopen attempts.
        startup_attempts: how many times to try the first open before giving up.
        live: a camera or stream: it has no end, a failure is always a disconnect.
        stop: a stop request from outside (signals): ends the start-up and the frames promptly.

    ``frame_time`` is when the frame :meth:`read` returned last arrived from the device or the network
    (``time.monotonic()`` seconds, stamped by the capture thread): a live recording places frames by it.

    Raises:
        SourceError: the source cannot be opened, or ``stop`` was set while opening it.
    """

    def __init__(self, opener: Callable[[], Any], name: str, latest: bool, reconnect: bool,
                 backoff: tuple[float, float] = (0.5, 8.0), startup_attempts: int = 1,
                 queue_size: int = 4, failures_before_reopen: int = 5, live: bool = False,
                 stop: threading.Event | None = None) -> None:
        self.opener, self.name, self.latest, self.reconnect = opener, name, latest, reconnect
        self.backoff, self.failures_before_reopen, self.live = backoff, failures_before_reopen, live
        self.stats = SourceStats()
        self.frame_time: float | None = None
        self._stop = threading.Event()
        self._outer_stop = stop
        self._closed = False
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._latest: Any = None
        self._cond = threading.Condition()
        self._too_large: str | None = None  # the frame size of a source over the pixel budget
        self._up_since: float | None = None  # when the last reconnect succeeded (time.monotonic())
        self._outage: tuple[float, int, float] | None = None  # (down since, attempts, next delay) of the last one
        self._flaps = 0  # reconnects of that outage that failed again within STABLE_SECONDS
        self._cap = self._open_first(startup_attempts)
        self._thread = threading.Thread(target=self._run, name=f"capture:{name}", daemon=True)
        self._thread.start()

    def _try_open(self) -> Any | None:
        try:
            cap = self.opener()
        except Exception as e:  # a driver error is a failed attempt, not a crash
            log.debug("open %s raised %r", self.name, e)
            return None
        if cap is None or (hasattr(cap, "isOpened") and not cap.isOpened()):
            if cap is not None:
                cap.release()
            return None
        get = getattr(cap, "get", lambda _p: 0.0)
        w, h = int(get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        if w * h > MAX_IMAGE_PIXELS:  # every frame would be that large: refused before any is decoded
            cap.release()
            self._too_large = f"{w}x{h}"
            return None
        fps = get(cv2.CAP_PROP_FPS)
        self.stats.fps_hint = float(fps) if fps and 0 < fps < 1000 else self.stats.fps_hint
        return cap

    def _stopping(self) -> bool:
        return self._stop.is_set() or (self._outer_stop is not None and self._outer_stop.is_set())

    def _open_first(self, attempts: int) -> Any:
        """The first open, in a helper thread so that a stop request is obeyed while a driver or a
        network connection blocks (the helper is abandoned: it ends by itself at its timeout)."""
        delay = self.backoff[0]
        for i in range(max(1, attempts)):
            box: list = []
            helper = threading.Thread(target=lambda: box.append(self._try_open()), daemon=True,
                                      name=f"open:{self.name}")
            helper.start()
            while helper.is_alive() and not self._stopping():
                helper.join(_POLL)
            if self._stopping():
                raise SourceError(f"stopped while opening {self.name}")
            if box and box[0] is not None:
                return box[0]
            if self._too_large:
                raise SourceTooLarge(f"{self.name}: frames of {self._too_large} pixels, over the budget of "
                                  f"{MAX_IMAGE_PIXELS:,} pixels")
            if i + 1 < attempts:
                log.warning("cannot open %s (attempt %d/%d), retrying in %.1fs", self.name, i + 1, attempts, delay)
                end = time.monotonic() + delay
                while time.monotonic() < end and not self._stopping():
                    time.sleep(min(_POLL, max(0.0, end - time.monotonic())))
                delay = min(delay * 2, self.backoff[1])
        raise SourceError(f"cannot open {self.name}")

    def _flapping(self) -> bool:
        """A camera or stream failed again within STABLE_SECONDS of its last reconnect: the same outage goes on."""
        return self._outage is not None and self._up_since is not None \
            and time.monotonic() - self._up_since < STABLE_SECONDS

    def _reopen(self, quiet: bool = False, resume: bool = False) -> Any | None:
        """Reopen with back-off; ``resume``: the last reconnect did not hold, so its outage's back-off and
        attempt count go on (the back-off waited first when the connection held for less) and only attempts
        2, 4, 8... are said.
        ``quiet``: a looping file starting over, said only when it cannot be opened again (then an outage)."""
        log_reconnect = log.debug if quiet else log.warning
        if resume and self._outage:
            (down_since, attempt, delay), up = self._outage, time.monotonic() - self._up_since
            self._flaps += 1
            if up < delay:  # it held for less than the back-off: wait it out (one that delivered a while: at once)
                if self._stop.wait(delay):
                    return None
                delay = min(delay * 2, self.backoff[1])
        else:
            down_since, attempt, delay, resume = time.monotonic(), 0, self.backoff[0], False
        while not self._stop.is_set():
            self.stats.attempts += 1
            attempt += 1
            if said_at(attempt):
                if resume:
                    log_reconnect("%s: failed again %.0f s after reconnecting (%d reconnects in %.0f s did not hold); "
                                  "reopening (attempt %d)", self.name, up, self._flaps,
                                  time.monotonic() - down_since, attempt)
                else:
                    log_reconnect("%s: reopening (attempt %d, down %.0f s)", self.name, attempt,
                                  time.monotonic() - down_since)
            cap = self._try_open()
            if cap is not None:
                if quiet and attempt == 1:
                    return cap  # restarting a looping file is not a reconnect
                self.stats.reconnects += 1
                if not resume:
                    log_reconnect("%s: reconnected after %d attempts (down %.0f s)", self.name, attempt,
                                  time.monotonic() - down_since)
                self._up_since, self._outage = time.monotonic(), (down_since, attempt, delay)
                return cap
            if quiet and attempt == 1:  # deleted, replaced, its storage gone: retried with back-off, not in a spin
                log_reconnect = log.warning
                log.warning("%s: cannot open the file again to start it over (--loop); retrying", self.name)
            self._stop.wait(delay)
            delay = min(delay * 2, self.backoff[1])
        return None

    def _stable(self, now: float) -> None:
        """A frame at ``now``: once the source has delivered for STABLE_SECONDS since its last reconnect,
        that outage is over (and said to be, when reconnects failed again meanwhile)."""
        if now - self._up_since >= STABLE_SECONDS:
            if self._flaps:
                log.warning("%s: delivering again for %.0f s; the %d reconnects before this one (over %.0f s) each "
                            "failed again within %.0f s", self.name, now - self._up_since, self._flaps,
                            self._up_since - self._outage[0], STABLE_SECONDS)
            self._outage, self._flaps = None, 0

    def _publish(self, frame: Any) -> None:
        """Hand ``frame`` (a (frame, arrival time) pair, or _END) to :meth:`read`."""
        if frame is _END and not self.latest:  # the end marker must always get through
            while True:
                try:
                    self._queue.put(_END, timeout=0.1)
                    return
                except queue.Full:
                    if self._stop.is_set():  # nobody will read the rest: make room
                        try:
                            self._queue.get_nowait()
                        except queue.Empty:
                            pass
        if self.latest:
            with self._cond:
                if self._latest is not None and self._latest is not _END:
                    self.stats.dropped += 1
                self._latest = frame
                self._cond.notify_all()
        else:
            while not self._stop.is_set():
                try:
                    self._queue.put(frame, timeout=0.1)
                    return
                except queue.Full:
                    continue

    def _run(self) -> None:
        cap, failures, read_to = self._cap, 0, 0.0
        try:
            while not self._stop.is_set():
                ok, frame = cap.read()
                if ok and not self.reconnect:  # a file: the frames its failed reads skipped, if any
                    if failures:
                        self.stats.corrupt += self._skipped(cap, read_to, failures)
                    read_to = _position(cap)
                if ok:
                    failures = 0
                if ok and _valid(frame):
                    now = time.monotonic()
                    if self._outage is not None:
                        self._stable(now)
                    self._publish((frame, now))
                    continue
                if ok:  # decoded, but nothing usable: a corrupt frame
                    self.stats.corrupt += 1
                    continue
                failures += 1
                length = 0.0 if self.live else self._length(cap)
                at_end = bool(length) and _position(cap) >= length
                if not self.reconnect:  # a file: its end, a frame that failed to decode, or the rest unreadable
                    if at_end or not length:
                        break
                    if failures >= self.failures_before_reopen:  # not a frame skipped: the clip ends here
                        self._ended_early(cap, length)
                        break
                    continue
                if not at_end and failures < self.failures_before_reopen:
                    continue  # a live source may fail a read or two before it recovers by itself
                if length and not at_end:  # a looping file unreadable from some frame on: each pass ends there
                    self._ended_early(cap, length)
                    at_end = True
                flapping = self.live and self._flapping()  # a camera or stream: a looping file never pauses
                if at_end:  # a looping file: start again, nothing went wrong
                    log.debug("%s: end of file, starting again", self.name)
                elif not flapping:
                    log.warning("%s stopped delivering frames; reconnecting", self.name)
                cap.release()
                cap = self._reopen(quiet=at_end, resume=flapping)
                failures = 0
                if cap is None:
                    break
        finally:
            if cap is not None:
                cap.release()
            self._publish(_END)

    def _ended_early(self, cap: Any, length: float) -> None:
        """A file is unreadable from the current frame on: said once (a looping file's every pass ends there)."""
        if not self.stats.ended_at:
            self.stats.ended_at, self.stats.length = max(1, int(_position(cap))), int(length)
            log.warning("%s: %s", self.name, self.stats.ended_early)

    @staticmethod
    def _skipped(cap: Any, read_to: float, failures: int) -> int:
        """Frames of a file passed over by the failed reads before a good one: by the file's position where
        the capture tells it (a failed read often skips nothing), else one per failed read."""
        now = _position(cap)
        return max(0, int(now - read_to) - 1) if now > 0 else failures

    @staticmethod
    def _length(cap: Any) -> float:
        """Frame count of a file; 0 for live devices (they have no end)."""
        n = float(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if hasattr(cap, "get") else 0.0
        return n if n > 0 else 0.0  # FFmpeg reports a huge negative count for streams

    def read(self, timeout: float | None = None) -> np.ndarray | None:
        """The next frame (newest for cameras), or None at the end of the source, after ``timeout``
        seconds without a frame, or when a stop was requested (checked every 0.1 s)."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._stopping():
                return None
            wait = _POLL if end is None else min(_POLL, end - time.monotonic())
            if wait <= 0:
                return None
            if self.latest:
                with self._cond:
                    if not self._cond.wait_for(lambda: self._latest is not None, timeout=wait):
                        continue
                    frame, self._latest = self._latest, (None if self._latest is not _END else _END)
            else:
                try:
                    frame = self._queue.get(timeout=wait)
                except queue.Empty:
                    continue
                if frame is _END:
                    self._queue.put(_END)
            break
        if frame is _END:
            return None
        frame, self.frame_time = frame
        self.stats.frames += 1
        return frame

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            frame = self.read()
            if frame is None:
                return
            yield frame

    def request_stop(self) -> None:
        """Ask the capture thread to end; safe to call from a signal handler."""
        self._stop.set()

    def close(self, wait: float = 0.5) -> None:
        """End the capture thread; one stuck in a driver or network read is left to end by itself
        (it is a daemon and releases its device at its timeout), so closing never blocks long.
        Closing again returns at once."""
        self._stop.set()
        if self._closed:
            return
        self._closed = True
        self._thread.join(timeout=wait)
        if self._thread.is_alive():
            log.debug("%s: capture thread still blocked in a read; not waiting for it", self.name)


class FolderSource:
    """Every image of a folder in name order, or one image file; unreadable files and images over the
    pixel budget are skipped and counted. ``current_path`` names the file of the frame last yielded.
    Images are decoded as everywhere else (:func:`edge_runtime.preprocess.read_image`, for ``fit``)."""

    def __init__(self, folder: Path, stop: threading.Event | None = None, fit: Preprocessing | None = None) -> None:
        self.name = str(folder)
        if folder.is_file():
            self.paths, self.root = [folder], folder.parent
        else:
            self.paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not self.paths:
                raise SourceError(f"{folder}: no images in this folder")
            self.root = folder
        self.stats = SourceStats()
        self.current_path: Path | None = None
        self._stop = stop or threading.Event()
        self.fit = fit

    def __iter__(self) -> Iterator[np.ndarray]:
        for path in self.paths:
            if self._stop.is_set():
                return
            try:
                frame = read_image(str(path), fit=self.fit)
            except ImageTooLarge as e:
                self.stats.too_large += 1
                log.warning("skipping %s", e)
                continue
            except PreprocessingError as e:
                self.stats.corrupt += 1
                log.warning("skipping %s", e)
                continue
            self.stats.frames += 1
            self.current_path = path
            yield frame

    def request_stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        pass


class _Picamera2Capture:
    """Picamera2 (libcamera) behind OpenCV's read()/release() interface, frames in BGR."""

    def __init__(self, index: int, size: tuple[int, int]) -> None:
        from picamera2 import Picamera2  # only on Raspberry Pi OS

        self.cam = Picamera2(index)
        # "RGB888" in libcamera is B,G,R byte order in memory: OpenCV's BGR.
        self.cam.configure(self.cam.create_video_configuration(main={"size": size, "format": "RGB888"}))
        self.cam.start()

    def isOpened(self) -> bool:
        return True

    def read(self):
        try:
            return True, self.cam.capture_array("main")
        except Exception:
            return False, None

    def release(self) -> None:
        try:
            self.cam.stop()
            self.cam.close()
        except Exception:
            pass


class DisconnectingCapture:
    """Wraps a capture so it "unplugs" after ``every`` frames: read() then fails until the source
    reopens it, as a USB camera pulled out does. For soak tests and for rehearsing a deployment
    (``--disconnect-every``); the recovery path exercised is the real one.
    ``on_unplug`` is called once when it unplugs."""

    def __init__(self, cap: Any, every: int, on_unplug: Callable[[], None] | None = None) -> None:
        self.cap, self.every, self.delivered, self.on_unplug = cap, every, 0, on_unplug

    def isOpened(self) -> bool:
        return self.cap.isOpened()

    def read(self):
        if self.delivered >= self.every:
            if self.on_unplug:
                self.on_unplug()
                self.on_unplug = None
            return False, None
        ok, frame = self.cap.read()
        if not ok:  # a looping device: wrap around at the end of the file
            self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self.cap.read()
        self.delivered += ok
        return ok, frame

    def get(self, prop: int) -> float:
        return 0.0 if prop == cv2.CAP_PROP_FRAME_COUNT else self.cap.get(prop)  # a live device has no end

    def release(self) -> None:
        self.cap.release()


class SimulatedCamera:
    """A video file played as a camera unplugged every ``every`` frames that stays away for
    ``down_seconds`` (reopen attempts fail meanwhile, as with a cable pulled out)."""

    def __init__(self, path: str, every: int, down_seconds: float = 0.0) -> None:
        self.path, self.every, self.down_seconds = path, every, down_seconds
        self.unplugged_at: float | None = None

    def _unplugged(self) -> None:
        self.unplugged_at = time.monotonic()

    def open(self) -> DisconnectingCapture | None:
        if self.unplugged_at is not None and time.monotonic() - self.unplugged_at < self.down_seconds:
            return None
        return DisconnectingCapture(cv2.VideoCapture(self.path), self.every, on_unplug=self._unplugged)


def is_image_file(path: str | Path) -> bool:
    """Whether a --source path names one image file (by its suffix, as a folder's images are found)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES and Path(path).is_file()


def is_stream(spec: str) -> bool:
    """Whether a --source names a network stream (a URL) rather than a file, folder or camera."""
    return "://" in str(spec)


def _stream_capture(url: str, timeout: float) -> Any:
    """An FFmpeg capture of a network stream with open and read timeouts (OpenCV waits 30 s by default)."""
    ms = int(1000 * timeout)
    return cv2.VideoCapture(url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])


def _check_file(spec: str) -> bool:
    """Whether a --source path that is not a folder is a named pipe (True) or a regular file (False).

    Raises:
        SourceError: nothing there, or something that is neither (a device, a socket): said as what it is.
    """
    path = Path(spec)
    try:
        mode = path.stat().st_mode
    except OSError as e:
        if isinstance(e, FileNotFoundError):
            raise SourceError(f"{spec}: no such file, folder or stream URL") from None
        raise SourceError(f"{spec}: cannot read ({e.strerror or e})") from None
    if stat.S_ISREG(mode) or stat.S_ISFIFO(mode):  # a FIFO: /dev/stdin from a pipe, or one made by mkfifo
        return stat.S_ISFIFO(mode)
    if stat.S_ISCHR(mode) and path.name.startswith("video"):
        raise SourceError(f"{spec}: a camera device; use --camera N (its number) instead of --source")
    raise SourceError(f"{spec}: not a regular file (a video file, a photo, an image folder, a named pipe or a "
                      "stream URL expected)")


def open_source(spec: str | int, *, camera: bool = False, picamera: bool = False, loop: bool = False,
                startup_attempts: int = 3, size: tuple[int, int] = (640, 480),
                backoff: tuple[float, float] = (0.5, 8.0), disconnect_every: int = 0,
                disconnect_seconds: float = 0.0, stream_timeout: float = STREAM_TIMEOUT,
                stop: threading.Event | None = None, fit: Preprocessing | None = None):
    """Open a frame source.

    Args:
        spec: camera index (with ``camera``), a video file, a photo, an image folder, a named pipe (read as
            a video file that ends when its writer closes it: ``/dev/stdin`` from a pipe), or an RTSP/HTTP URL
            (shown everywhere through :func:`masked`).
        picamera: use Picamera2 for the camera (Raspberry Pi OS's libcamera stack).
        loop: restart a video file at its end (soak tests, demos).
        disconnect_every: with a video file, simulate a camera unplugged every N frames.
        disconnect_seconds: how long the simulated camera stays unplugged each time.
        stream_timeout: seconds a network stream may take to open or to deliver the next packet.
        stop: a stop request (signals): obeyed while opening and reading.
        fit: the model's preprocessing: photos are decoded for it (a large JPEG at a reduced scale, as the
            evaluator and the converter read it: :func:`edge_runtime.preprocess.read_image`).

    Raises:
        SourceError: cannot be opened (the message names the alternative), or stopped while opening.
    """
    if camera:
        index = int(spec)
        if not picamera and sys.platform.startswith("linux") and not Path(f"/dev/video{index}").exists():
            raise SourceUnavailable(f"no camera found at index {index} (/dev/video{index} does not exist); for a "
                                    "video file, an image folder or a stream use --source PATH_OR_URL")
        if picamera:
            try:
                import picamera2  # noqa: F401
            except ImportError:
                raise SourceError("--picamera needs the picamera2 package (sudo apt install python3-picamera2)") from None
            opener = lambda: _Picamera2Capture(index, size)  # noqa: E731
        else:
            def opener():
                cap = cv2.VideoCapture(index)
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
                return cap
        try:
            return CaptureSource(opener, f"camera {index}", latest=True, reconnect=True, backoff=backoff,
                                 startup_attempts=startup_attempts, live=True, stop=stop)
        except SourceError:
            if stop is not None and stop.is_set():
                raise
            raise SourceUnavailable(f"no camera found at index {index}; for a video file, an image folder or a "
                                    f"stream use --source PATH_OR_URL") from None
    spec = str(spec)
    if not spec.strip():  # Path("") is the current folder: never what was meant
        raise SourceError("--source: empty; a video file, an image folder or a stream URL expected")
    if is_stream(spec):
        if not 0 < stream_timeout <= 3600:
            raise SourceError(f"stream timeout {stream_timeout} s: 0 < seconds <= 3600 expected")
        try:  # named by masked(): a password in the URL is never logged (OpenCV gets the real URL)
            return CaptureSource(lambda: _stream_capture(spec, stream_timeout), masked(spec), latest=True,
                                 reconnect=True, backoff=backoff, startup_attempts=startup_attempts, live=True,
                                 stop=stop)
        except SourceTooLarge:
            raise
        except SourceError:
            if stop is not None and stop.is_set():
                raise
            tries = f"{startup_attempts} attempts, each" if startup_attempts > 1 else "1 attempt,"
            raise SourceUnavailable(f"cannot open stream {masked(spec)} ({tries} given up to {stream_timeout:g} s "
                                    "for video: --stream-timeout)") from None
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path, stop=stop, fit=fit)
    pipe = _check_file(spec)
    if pipe and (loop or disconnect_every):
        raise SourceError(f"{spec}: a named pipe is read once, as it comes; --loop and --disconnect-every need a "
                          "video file")
    if is_image_file(path):  # one photo, decoded as a folder's photos, the evaluator's and the converter's are
        try:  # (FFmpeg's JPEG decoding, through VideoCapture, gives other pixels: another top-1 for some photos)
            read_image(str(path), fit=fit)
        except PreprocessingError as e:
            raise SourceError(str(e)) from None
        return FolderSource(path, stop=stop, fit=fit)
    if disconnect_every:
        return CaptureSource(SimulatedCamera(str(path), disconnect_every, disconnect_seconds).open,
                             f"{path} (disconnects every {disconnect_every} frames)", latest=False,
                             reconnect=True, backoff=(0.05, 1.0), stop=stop)
    try:  # a named pipe too: read as a file (every frame, in order) that ends when its writer closes it
        return CaptureSource(lambda: cv2.VideoCapture(str(path)), str(path), latest=False, reconnect=loop,
                             backoff=backoff, stop=stop)  # (its first attempt is at once: no pause at a loop's end)
    except SourceTooLarge:
        raise
    except SourceError:
        if stop is not None and stop.is_set():
            raise
        raise SourceError(f"{spec}: {'a named pipe without' if pipe else 'not'} a video OpenCV can decode") from None
