"""Recordings that survive full disks, kills and power loss.

Each video file is written under a hidden temporary name (``.NAME.PID.partial.EXT``), then closed,
checked (it opens and holds the frames written), flushed to the storage (fsync) and renamed into
place, so a reader never sees a half-written file and an earlier recording is never replaced: a
recording whose name is taken is kept as ``NAME.<start time>.EXT`` (a run restarted with the same
``--record``), one cut short by a failure as ``NAME.incomplete.EXT``. With ``segment_seconds`` the
recording is cut into files ``STEM-00001.EXT``, ``STEM-00002.EXT``... of that many seconds of video,
as video recorders do: a killed or powered-off device keeps every finished segment (``keep``: only
the newest N, a loop recording). ``.mkv`` and ``.ts`` also keep the frames of the unfinished file (they play
without a trailer); an unfinished ``.mp4`` cannot be played. Partial files left by a killed run are recovered
(or removed when they hold nothing playable) the next time a recording starts in that folder.

Every file has a constant frame rate. Frames written with their capture time (a camera or a stream) are
placed by it, so the recording keeps real time on a device slower than its camera: the previous frame is
repeated until the next one's time, a frame whose place is already filled is dropped, and a gap longer
than :data:`MAX_FILL_SECONDS` (an outage: a stream reconnecting, a camera unplugged) is left out, as is
the part of a gap whose repeats would take more than :data:`REPEAT_SHARE` of its time to encode. Segments
are then that many seconds of real time. Frames written without a time (files, photos) follow one another.

Free space is checked before every frame: when it falls below what the writer may still need
(its buffer and the file's trailer), the file is finished cleanly and :class:`RecordingError` says
so, instead of the writer failing silently on a full disk; a loop recording first deletes its own oldest
finished segments to make room (never another file). The same holds for a limit on the size of
one file (``ulimit -f``, or the 4 GiB of a FAT-formatted SD card), which free space does not show:
segments end early to stay under it, a single file stops with the error. The recording has the first frame's
size (scaled down to :data:`MAX_SIDE` at most); frames of another size are scaled into it (letterboxed), never
dropped.
"""
from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import re
import resource
import time
from pathlib import Path

import cv2
import numpy as np

from .fileio import free_name, fsync_path, output_problem, pid_alive

log = logging.getLogger(__name__)

FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".ts": "mp4v", ".avi": "MJPG"}
WRITER_BUFFER = 256 << 10  # FFmpeg's writer flushes in steps of this size (measured); room for two
TRAILER_BASE, TRAILER_PER_FRAME = 16 << 10, 32  # the container's index written at close
MAX_SIDE = 4096  # a recording's longest side: a 4K camera's (and the Pi HQ camera's 4056) whole; MPEG-4 stops at 8191
MAX_FILL_SECONDS = 5.0  # a longer gap between a live source's frames is an outage: left out, not filled
REPEAT_SHARE = 0.5  # of the real time a gap stands for, at most this much is spent encoding its repeats
_PARTIAL = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.partial(?P<suffix>\.[A-Za-z0-9]+)$")


class RecordingError(RuntimeError):
    """A recording cannot be started or continued (the message says what and where)."""


def check_target(path: Path) -> None:
    """Fail early (before any model or camera is opened) when ``path`` cannot take a recording.

    Raises:
        RecordingError: unknown container, a folder in the way, or a folder that is not writable.
    """
    path = Path(path)
    if path.suffix.lower() not in FOURCC:
        raise RecordingError(f"--record {path}: a video file expected ({', '.join(sorted(FOURCC))})")
    if path.is_dir():
        raise RecordingError(f"--record {path}: is a folder, a video file name expected")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RecordingError(f"--record {path}: cannot create the folder {parent} ({e.strerror})") from None
    if not os.access(parent, os.W_OK):
        raise RecordingError(f"--record {path}: the folder {parent} is not writable")
    problem = output_problem(path)  # what access() does not see as root: a folder that takes no file (/proc)
    if problem:
        raise RecordingError(f"--record {path}: {problem}")


def free_bytes(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


FAT_FILE_LIMIT = (4 << 30) - 1  # the largest file FAT32 (and exFAT-less SD cards) can hold


def _filesystem(folder: Path) -> str:
    """The type of the filesystem holding ``folder`` (from /proc/mounts; "" when unknown)."""
    try:
        mounts = Path("/proc/mounts").read_text(errors="replace").splitlines()[:10_000]
    except OSError:
        return ""
    where, best = str(Path(folder).resolve()), ("", "")
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3:
            point = parts[1].replace("\\040", " ")
            inside = where == point or where.startswith(point.rstrip("/") + "/")
            if inside and len(point) > len(best[0]):
                best = (point, parts[2])
    return best[1]


def file_size_limit(folder: Path) -> int | None:
    """The most bytes one file in ``folder`` may hold (``ulimit -f``, FAT), or None for no limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    limits = [] if soft == resource.RLIM_INFINITY else [soft]
    if _filesystem(folder) in ("vfat", "msdos", "fat"):
        limits.append(FAT_FILE_LIMIT)
    return min(limits, default=None)


def letterbox(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``frame`` scaled to fit ``size`` (width, height) keeping its proportions, on black."""
    w, h = size
    fh, fw = frame.shape[:2]
    s = min(w / fw, h / fh)
    nw, nh = max(1, min(w, round(fw * s))), max(1, min(h, round(fh * s)))
    out = np.zeros((h, w, 3), np.uint8)
    y0, x0 = (h - nh) // 2, (w - nw) // 2
    out[y0:y0 + nh, x0:x0 + nw] = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA)
    return out


def readable(path: Path) -> tuple[bool, int]:
    """(the first frame decodes, the frame count the container declares) of a video file."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return False, 0
        ok = cap.read()[0]
        return bool(ok), max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))
    finally:
        cap.release()


_WRITING: set[Path] = set()  # the partial files this process is writing now (never recovered under them)


def recover_partials(folder: Path, stem: str, suffix: str) -> list[str]:
    """Finish what killed runs left in ``folder``: a playable partial file of this recording is
    renamed to a visible name, an unplayable one is removed. Returns what was done, one line each."""
    done = []
    ours = re.compile(rf"^{re.escape(stem)}(-\d+)?$")  # this recording's file or one of its segments
    for p in sorted(folder.glob(f".{glob.escape(stem)}*.partial{suffix}")):
        m = _PARTIAL.match(p.name)
        pid = int(m["pid"]) if m else 0
        if not m or not ours.match(m["name"]) or p.resolve() in _WRITING or (pid != os.getpid() and pid_alive(pid)):
            continue  # (a partial of this process id that it is not writing: a run before a power cut whose
            # process had the same id, as a boot-time service often gets; its index would be written over)
        ok, _ = readable(p)
        if ok:
            target = free_name(folder / f"{m['name']}{m['suffix']}", "recovered")
            os.replace(p, target)
            fsync_path(folder)
            done.append(f"recovered {target.name} from an interrupted recording")
        else:
            size = p.stat().st_size
            p.unlink()
            done.append(f"removed {p.name}: an interrupted recording with nothing playable ({size:,} bytes)")
    for line in done:
        log.warning("%s", line)
    return done


class Recorder:
    """Writes annotated frames to ``path`` (or to segments of ``segment_seconds`` next to it).

    Args:
        path: the video file (``.mp4``, ``.mkv``, ``.ts``, ``.avi``...).
        fps: frame rate written into the file (a source's stated rate; 15 when unknown).
        segment_seconds: cut the recording into files of this many seconds of video (0: one file).
        keep: with segments, keep only the newest ``keep`` finished segments of this name (earlier runs'
            included: older ones are deleted at the start, then the oldest as each new one is finished), and
            when the storage runs low delete the oldest sooner: a loop recording (0: keep all).

    Raises:
        RecordingError: from the constructor when the target cannot be written; from
            :meth:`write` when the storage is (nearly) full or the writer fails; from :meth:`close`
            when the last file cannot be finished.
    """

    def __init__(self, path: Path, fps: float, segment_seconds: float = 0.0, keep: int = 0) -> None:
        self.path = Path(path)
        check_target(self.path)
        self.fps = fps if fps and 0 < fps < 1000 else 15.0
        self.segment_frames = max(1, round(segment_seconds * self.fps)) if segment_seconds else 0
        self.folder, self.stem, self.suffix = self.path.parent, self.path.stem, self.path.suffix
        self.size: tuple[int, int] | None = None  # (width, height) of the recording
        self.files: list[Path] = []  # finished files, in order (those --record-keep deleted removed)
        self.keep = keep if self.segment_frames else 0
        self.frames = 0  # frames written over all files
        self.recovered = recover_partials(self.folder, self.stem, self.suffix)
        self._size_limit = file_size_limit(self.folder)  # fixed for the run: looked up once, not per frame
        self._writer = None
        self._tmp: Path | None = None
        self._target: Path | None = None
        self._in_file = 0
        self._step = WRITER_BUFFER
        self._last_size = 0
        self._failed: str | None = None
        self._next_index = self._first_free_index() if self.segment_frames else 0
        self._started = time.strftime("%Y%m%d-%H%M%S")
        self._t0: float | None = None  # capture time of the first timed frame: slot 0 of the timeline
        self._slot = 0  # the next slot of that timeline (a slot is 1 / fps seconds)
        self._last: np.ndarray | None = None  # the frame written last, repeated over a gap
        self._encode_s = 0.0  # seconds one frame takes to write (moving average), which bounds the repeats
        self._short_of_space = False  # the storage held fewer than ``keep`` segments (said once)
        if self.keep:
            self._drop_oldest()

    def _segments(self) -> list[tuple[int, Path]]:
        """This recording's finished segments in the folder (earlier runs' too), by index."""
        pattern = re.compile(rf"^{re.escape(self.stem)}-(\d{{5,}}){re.escape(self.suffix)}$")  # as _open names them
        return sorted((int(m[1]), p) for p in self.folder.iterdir() if (m := pattern.match(p.name)))

    def _first_free_index(self) -> int:
        return max((i for i, _ in self._segments()), default=0) + 1

    def _drop_oldest(self) -> None:
        for _, old in self._segments()[:-self.keep]:
            self._remove(old)

    def _remove(self, segment: Path) -> None:
        """Delete one of this recording's finished segments (--record-keep); a failure is a warning."""
        try:
            segment.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("--record-keep: cannot remove %s (%s)", segment, e.strerror or e)
            return
        if segment in self.files:
            self.files.remove(segment)

    def _make_room(self, needed: int) -> int:
        """A loop recording short of space: delete this recording's oldest finished segments until ``needed``
        bytes are free, or none when deleting them all would not free that much (they are not lost for
        nothing). Returns the bytes free."""
        free = free_bytes(self.folder)
        old = []
        for _, p in self._segments():
            try:
                st = p.stat()
            except OSError:
                continue
            if st.st_nlink == 1:  # a segment also linked elsewhere (a backup, an upload queue) frees nothing
                old.append((p, st.st_blocks * 512))
        if free + sum(size for _, size in old) < needed:
            return free
        for p, _ in old:
            if free >= needed:
                break
            if not self._short_of_space:
                self._short_of_space = True
                log.warning("--record-keep %d: the storage of %s is full with %d segments of this recording; "
                            "deleting the oldest to make room", self.keep, self.folder, len(old))
            self._remove(p)
            was, free = free, free_bytes(self.folder)
            if free <= was:  # held open or in a snapshot: deleting more would lose them for nothing
                break
        return free

    def _reserve(self) -> int:
        """Bytes the writer may still need: two buffer flushes and the trailer."""
        return 2 * self._step + TRAILER_BASE + TRAILER_PER_FRAME * self._in_file

    def _open(self) -> None:
        if self.segment_frames:
            self._target = self.folder / f"{self.stem}-{self._next_index:05d}{self.suffix}"
            self._next_index += 1
        else:
            self._target = self.path
        self._tmp = self.folder / f".{self._target.stem}.{os.getpid()}.partial{self.suffix}"
        self._in_file, self._last_size = 0, 0
        self._check_space()
        fourcc = cv2.VideoWriter_fourcc(*FOURCC[self.suffix.lower()])
        _WRITING.add(self._tmp.resolve())
        self._writer = cv2.VideoWriter(str(self._tmp), fourcc, self.fps, self.size)
        if not self._writer.isOpened():
            self._writer = None
            _WRITING.discard(self._tmp.resolve())
            self._tmp.unlink(missing_ok=True)
            raise RecordingError(f"cannot write video {self._target} of {self.size[0]}x{self.size[1]} pixels "
                                 "(OpenCV's writer did not open)")
        self._in_file, self._last_size = 0, 0

    def _check_space(self) -> None:
        free = free_bytes(self.folder)
        if free < self._reserve() and self.keep:
            free = self._make_room(self._reserve())
        if free < self._reserve():
            raise RecordingError(f"storage full in {self.folder} ({free:,} bytes free, {self._reserve():,} needed "
                                 "to finish the file): recording stopped")
        limit = self._size_limit
        if limit is not None and self._last_size + self._reserve() > limit:
            if self._in_file == 0:
                raise RecordingError(f"{self.folder}: one file may hold at most {limit:,} bytes here (ulimit -f or "
                                     "a FAT card), too few for a frame and the file's index: recording stopped")
            if not self.segment_frames:
                raise RecordingError(f"{self._target}: the file reached the size limit of {limit:,} bytes for one "
                                     "file here (ulimit -f or a FAT card): recording stopped (--record-segment "
                                     "keeps recording in files under it)")
            self._finish()  # this segment ends early, the next one starts with the next frame

    def write(self, frame: np.ndarray, at: float | None = None) -> None:
        """Append one BGR frame (scaled into the recording's size when its size differs).

        Args:
            frame: the frame; the recorder keeps it (to repeat it) and never modifies it.
            at: when the frame was captured (``time.monotonic()`` seconds), for a live source: the frame goes
                to its time's place in the file, the previous frame repeated up to it (a gap over
                :data:`MAX_FILL_SECONDS` is left out), or it is dropped when that place is filled already.
                None: right after the previous frame (a file's frames, photos).
        """
        if self._failed:
            return
        try:
            if self.size is None:  # the first frame's within MAX_SIDE (a panorama among photos), even (encoders)
                h, w = frame.shape[:2]
                scale = min(1.0, MAX_SIDE / max(w, h))
                w, h = max(2, round(w * scale)), max(2, round(h * scale))
                self.size = (w - w % 2, h - h % 2)
            if (frame.shape[1], frame.shape[0]) != self.size:
                frame = letterbox(frame, self.size)
            repeats = 0
            if at is not None:
                if self._t0 is None:
                    self._t0 = at
                slot = math.floor((at - self._t0) * self.fps + 0.5)
                if slot < self._slot:  # faster than the file's rate: this frame's place is taken
                    return
                repeats = slot - self._slot
                if repeats > MAX_FILL_SECONDS * self.fps:  # an outage: the file goes on from this frame
                    self._t0 += repeats / self.fps
                    repeats = 0
                # repeats may take at most REPEAT_SHARE of the time they stand for: an encoder slower than the
                # file's rate (a small board, a camera stating 60 FPS) leaves the rest out, not the loop starved
                allowed = int(REPEAT_SHARE * repeats / (self.fps * self._encode_s)) if self._encode_s else repeats
                if allowed < repeats:
                    self._t0 += (repeats - allowed) / self.fps
                    repeats = allowed
                self._slot += repeats + 1
            for _ in range(repeats):
                self._put(self._last)
            self._put(frame)
            self._last = frame
        except RecordingError as e:
            self._failed = str(e)
            raise

    def _put(self, frame: np.ndarray) -> None:
        """Write one frame of the recording's size to the current file (opening and cutting files)."""
        if self._writer is not None:
            self._check_space()  # may end a segment at the size limit
        if self._writer is None:
            self._open()
        t = time.perf_counter()
        self._writer.write(frame)
        took = time.perf_counter() - t  # the encoder alone (not a file's opening): what bounds the repeats
        self._encode_s = 0.8 * self._encode_s + 0.2 * took if self._encode_s else took
        self._in_file += 1
        self.frames += 1
        try:
            grown = self._tmp.stat().st_size
        except OSError as e:
            raise RecordingError(f"{self._target}: the file being written disappeared ({e.strerror})") from None
        self._step = max(self._step, grown - self._last_size)
        self._last_size = grown
        if self.segment_frames and self._in_file >= self.segment_frames:
            self._finish()

    def _finish(self) -> None:
        """Close the current file, check it, flush it to the storage and rename it into place."""
        writer, tmp, target, n = self._writer, self._tmp, self._target, self._in_file
        self._writer = None
        if writer is None:
            return
        writer.release()
        _WRITING.discard(tmp.resolve())
        ok, declared = readable(tmp)
        if not ok or (self.suffix.lower() in (".mp4", ".m4v", ".mov", ".avi") and declared != n):
            tmp.unlink(missing_ok=True)
            raise RecordingError(f"{target}: the file written is not playable ({declared} of {n} frames); "
                                 + ("it was discarded, the earlier recording is kept" if target.exists()
                                    else "it was discarded"))
        if target.exists():  # never replace a recording: a cut one goes to NAME.incomplete.EXT, a whole one
            target = free_name(target, "incomplete" if self._failed else self._started)  # to NAME.<start>.EXT
        fsync_path(tmp)
        os.replace(tmp, target)
        fsync_path(self.folder)
        self.files.append(target)
        if self.keep:
            self._drop_oldest()

    def close(self) -> None:
        """Finish the file being written (also after a failure: the frames before it are kept).

        Raises:
            RecordingError: the last file could not be finished.
        """
        try:
            self._finish()
        except OSError as e:
            if self._tmp is not None:
                with contextlib.suppress(OSError):  # a card that went read-only keeps it: the next run recovers it
                    self._tmp.unlink(missing_ok=True)
            raise RecordingError(f"{self._target}: cannot finish the recording ({e.strerror or e})") from None
