"""Frame sources behind one small interface, with reconnects for cameras and streams.

``open_source(spec)`` returns an iterable of BGR frames. Files are read in order, every frame
(reproducible tests and benchmarks), by a decode thread that runs ahead of inference through a
small bounded queue. Cameras and streams use a capture thread that keeps only the newest frame, so
results never lag behind the scene; when the device stops delivering or disconnects it is reopened
with exponential back-off while the process keeps running, and every attempt is logged.
"""
from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np

from .evaluation import IMAGE_SUFFIXES
from .preprocess import PreprocessingError, read_image

log = logging.getLogger(__name__)

_END = object()


class SourceError(RuntimeError):
    """A source cannot be opened (the message says what to use instead)."""


@dataclass
class SourceStats:
    frames: int = 0
    corrupt: int = 0  # frames that decoded to nothing usable, skipped
    dropped: int = 0  # camera frames replaced by a newer one before inference took them
    reconnects: int = 0  # successful reopenings after a failure
    attempts: int = 0  # reopen attempts, successful or not
    fps_hint: float = 0.0
    events: list[str] = field(default_factory=list)


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
    """

    def __init__(self, opener: Callable[[], Any], name: str, latest: bool, reconnect: bool,
                 backoff: tuple[float, float] = (0.5, 8.0), startup_attempts: int = 1,
                 queue_size: int = 4, failures_before_reopen: int = 5) -> None:
        self.opener, self.name, self.latest, self.reconnect = opener, name, latest, reconnect
        self.backoff, self.failures_before_reopen = backoff, failures_before_reopen
        self.stats = SourceStats()
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._latest: Any = None
        self._cond = threading.Condition()
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
        fps = getattr(cap, "get", lambda _p: 0.0)(cv2.CAP_PROP_FPS) if hasattr(cap, "get") else 0.0
        self.stats.fps_hint = float(fps) if fps and 0 < fps < 1000 else self.stats.fps_hint
        return cap

    def _open_first(self, attempts: int) -> Any:
        delay = self.backoff[0]
        for i in range(max(1, attempts)):
            cap = self._try_open()
            if cap is not None:
                return cap
            if i + 1 < attempts:
                log.warning("cannot open %s (attempt %d/%d), retrying in %.1fs", self.name, i + 1, attempts, delay)
                time.sleep(delay)
                delay = min(delay * 2, self.backoff[1])
        raise SourceError(f"cannot open {self.name}")

    def _reopen(self, quiet: bool = False) -> Any | None:
        delay = self.backoff[0]
        say = log.debug if quiet else log.warning
        while not self._stop.is_set():
            self.stats.attempts += 1
            say("%s: reopening (attempt %d)", self.name, self.stats.attempts)
            cap = self._try_open()
            if cap is not None:
                if quiet:
                    return cap  # restarting a looping file is not a reconnect
                self.stats.reconnects += 1
                self.stats.events.append(f"reconnected after {self.stats.attempts} attempts")
                say("%s: reconnected", self.name)
                return cap
            self._stop.wait(delay)
            delay = min(delay * 2, self.backoff[1])
        return None

    def _publish(self, frame: Any) -> None:
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
        cap, failures = self._cap, 0
        try:
            while not self._stop.is_set():
                ok, frame = cap.read()
                if ok and _valid(frame):
                    failures = 0
                    self._publish(frame)
                    continue
                if ok:  # decoded, but nothing usable: a corrupt frame
                    self.stats.corrupt += 1
                    continue
                failures += 1
                length = self._length(cap)
                at_end = bool(length) and cap.get(cv2.CAP_PROP_POS_FRAMES) >= length
                if not self.reconnect:  # a file: its end, or a frame that failed to decode
                    if at_end or not length or failures >= self.failures_before_reopen:
                        break
                    self.stats.corrupt += 1
                    continue
                if not at_end and failures < self.failures_before_reopen:
                    continue  # a live source may fail a read or two before it recovers by itself
                if at_end:  # a looping file: start again, nothing went wrong
                    log.debug("%s: end of file, starting again", self.name)
                else:
                    log.warning("%s stopped delivering frames", self.name)
                cap.release()
                cap = self._reopen(quiet=at_end)
                failures = 0
                if cap is None:
                    break
        finally:
            if cap is not None:
                cap.release()
            self._publish(_END)

    @staticmethod
    def _length(cap: Any) -> float:
        """Frame count of a file; 0 for live devices and streams (they have no end)."""
        return float(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if hasattr(cap, "get") else 0.0

    def read(self, timeout: float | None = None) -> np.ndarray | None:
        """The next frame (newest for cameras), or None at the end of the source."""
        if self.latest:
            with self._cond:
                if not self._cond.wait_for(lambda: self._latest is not None, timeout=timeout):
                    return None
                frame, self._latest = self._latest, (None if self._latest is not _END else _END)
        else:
            frame = self._queue.get(timeout=timeout)
            if frame is _END:
                self._queue.put(_END)
        if frame is _END:
            return None
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

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class FolderSource:
    """Every image of a folder in name order; unreadable files are skipped and counted."""

    def __init__(self, folder: Path) -> None:
        self.name = str(folder)
        self.paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise SourceError(f"{folder}: no images in this folder")
        self.stats = SourceStats()

    def __iter__(self) -> Iterator[np.ndarray]:
        self._stopped = False
        for path in self.paths:
            if self._stopped:
                return
            try:
                frame = read_image(str(path))
            except PreprocessingError:
                self.stats.corrupt += 1
                log.warning("skipping unreadable image %s", path.name)
                continue
            self.stats.frames += 1
            yield frame

    def request_stop(self) -> None:
        self._stopped = True

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
    (``--simulate-disconnect-every``); the recovery path exercised is the real one.
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


def _is_stream(spec: str) -> bool:
    return "://" in spec


def open_source(spec: str | int, *, camera: bool = False, picamera: bool = False, loop: bool = False,
                startup_attempts: int = 3, size: tuple[int, int] = (640, 480),
                backoff: tuple[float, float] = (0.5, 8.0), disconnect_every: int = 0,
                disconnect_seconds: float = 0.0):
    """Open a frame source.

    Args:
        spec: camera index (with ``camera``), a video file, an image folder, or an RTSP/HTTP URL.
        picamera: use Picamera2 for the camera (Raspberry Pi OS's libcamera stack).
        loop: restart a video file at its end (soak tests, demos).
        disconnect_every: with a video file, simulate a camera unplugged every N frames.
        disconnect_seconds: how long the simulated camera stays unplugged each time.

    Raises:
        SourceError: cannot be opened; the message names the alternative.
    """
    if camera:
        index = int(spec)
        if not picamera and sys.platform.startswith("linux") and not Path(f"/dev/video{index}").exists():
            raise SourceError(f"no camera found at index {index} (/dev/video{index} does not exist); to classify "
                              "a video file, an image folder or a stream instead use --source PATH_OR_URL")
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
                                 startup_attempts=startup_attempts)
        except SourceError:
            raise SourceError(f"no camera found at index {index}; to classify a video file, an image folder "
                              f"or a stream instead use --source PATH_OR_URL") from None
    spec = str(spec)
    if _is_stream(spec):
        try:
            return CaptureSource(lambda: cv2.VideoCapture(spec), spec, latest=True, reconnect=True,
                                 backoff=backoff, startup_attempts=startup_attempts)
        except SourceError:
            raise SourceError(f"cannot open stream {spec}") from None
    path = Path(spec)
    if path.is_dir():
        return FolderSource(path)
    if not path.is_file():
        raise SourceError(f"{spec}: no such file, folder or stream URL")
    if disconnect_every:
        return CaptureSource(SimulatedCamera(str(path), disconnect_every, disconnect_seconds).open,
                             f"{path} (disconnects every {disconnect_every} frames)", latest=False,
                             reconnect=True, backoff=(0.05, 1.0))
    try:
        return CaptureSource(lambda: cv2.VideoCapture(str(path)), str(path), latest=False, reconnect=loop,
                             backoff=(0.0, 0.0) if loop else backoff)
    except SourceError:
        raise SourceError(f"{spec}: not a video OpenCV can decode") from None
