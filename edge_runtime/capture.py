"""``python -m edge_runtime capture``: labelled training photos from the device's camera.

Frames come from the runtime's own sources (camera, Picamera2, video file, stream, image folder) and
are written as JPEGs into ``OUT/LABEL/``, the folder layout ``python -m convert train`` reads.
Every file is written to a temporary name and linked into place only if that name is free, so an
existing photo is never overwritten and a reader never sees half a file. A camera, a stream or a clip
gives a photo every ``--every`` seconds (a clip by its own timeline); a folder of photos gives every
photo. Headless: no window. numpy and OpenCV only, like the rest of the runtime.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .fileio import tell

EXAMPLES = """examples:
  python -m edge_runtime capture --camera 0 --label parcel --out photos --every 2 --count 100
  python -m edge_runtime capture --camera 0 --picamera --label empty_porch --out photos --count 100
  python -m edge_runtime capture --source walkthrough.mp4 --label bench --out photos --every 0.5
  python -m edge_runtime capture --source phone_photos/ --label parcel --out photos   # every photo
then, on a workstation:
  python -m convert train --data photos --out runs/porch
"""
_LABEL = re.compile(r"^[^/\\\x00]{1,100}$")
MAX_INDEX = 10_000_000
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class CaptureError(RuntimeError):
    """Bad label or output folder, or a photo that cannot be written (message says which)."""


@dataclass
class CaptureStats:
    saved: int = 0
    frames: int = 0
    seconds: float = 0.0
    stopped_by: str = "end of source"
    last: Path | None = None


def check_label(label: str) -> str:
    """A class name usable as one folder name (the trainer's class list is the folder names)."""
    if not _LABEL.match(label) or label.strip() in ("", ".", "..") or label.startswith(".") or not _utf8(label):
        raise CaptureError(f"--label {label!r}: a class name usable as a folder name expected "
                           "(1-100 characters of UTF-8, no '/', not starting with '.')")
    return label


def _utf8(text: str) -> bool:
    """Whether ``text`` is valid UTF-8 (bytes that are not arrive from the shell as surrogates): class names
    end up in the model's labels and metadata, which are UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def write_new(folder: Path, stem: str, data: bytes, start: int = 0) -> tuple[Path, int]:
    """Write ``data`` as ``folder/stem_NNNNNN.jpg`` with the first free number >= ``start``.

    The bytes go to a temporary file which is hard-linked to the final name: linking fails when the
    name exists, so nothing is overwritten even with two captures writing into one folder.
    """
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".capture.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; photos get the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        for index in range(start, MAX_INDEX):
            path = folder / f"{stem}_{index:06d}.jpg"
            try:
                os.link(tmp, path)
                return path, index + 1
            except FileExistsError:
                continue
        raise CaptureError(f"{folder}: no free file name below {stem}_{MAX_INDEX:06d}.jpg")
    finally:
        os.unlink(tmp)


def prepare_folder(out: Path, label: str) -> Path:
    """Create ``out/label`` and check that photos can be written there."""
    folder = Path(out) / check_label(label)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CaptureError(f"--out {out}: cannot create {folder} ({e.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CaptureError(f"--out {out}: {folder} is not writable")
    return folder


def capture(source, out: Path, label: str, every: float = 1.0, count: int | None = None, quality: int = 95,
            stop: threading.Event | None = None, log=print) -> CaptureStats:
    """Save a frame from ``source`` every ``every`` seconds into ``out/label`` until ``count`` photos,
    the end of the source, or ``stop``.

    Live sources are timed by the clock; clips by their own frame rate (frame index / fps), so a
    clip gives the same photos however fast it decodes. A folder of photos (or one photo) has no
    time: every photo is saved and ``every`` does not apply.
    """
    from .sources import FolderSource

    try:
        folder = prepare_folder(out, label)
    except CaptureError:
        source.close()
        raise
    stop = stop or threading.Event()
    live = bool(getattr(source, "latest", False))
    if isinstance(source, FolderSource):
        every = 0.0
    fps = getattr(getattr(source, "stats", None), "fps_hint", 0.0) or 30.0
    stats = CaptureStats()
    stem, next_index, next_time = _safe_stem(label), 0, 0.0
    t0 = time.monotonic()
    try:
        for frame in source:
            if stop.is_set():
                stats.stopped_by = "signal"
                break
            stats.frames += 1
            now = time.monotonic() - t0 if live else (stats.frames - 1) / fps
            if now + 1e-9 < next_time or not isinstance(frame, np.ndarray) or frame.size == 0:
                continue
            ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
            if not ok:
                raise CaptureError("JPEG encoding failed for a frame")
            try:
                stats.last, next_index = write_new(folder, stem, jpeg.tobytes(), next_index)
            except OSError as e:
                raise CaptureError(f"{folder}: cannot write a photo ({e.strerror}); {stats.saved} saved") from None
            stats.saved += 1
            next_time = now + every
            log(f"saved {stats.last} ({stats.saved}{f'/{count}' if count else ''})")
            if count and stats.saved >= count:
                stats.stopped_by = "count reached"
                break
        else:
            if stop.is_set():
                stats.stopped_by = "signal"
    except KeyboardInterrupt:
        stats.stopped_by = "interrupt"
    finally:
        stats.seconds = time.monotonic() - t0
        source.close()
    return stats


def _safe_stem(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("._") or "photo"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edge_runtime capture", epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Save labelled photos for training from a camera, a video file, a "
                                            "stream or an image folder: JPEGs in OUT/LABEL/, never overwriting.")
    from .cli import add_source_arguments
    from .flags import add_stream_timeout, deprecated, seconds_arg

    add_source_arguments(p)
    p.add_argument("--label", required=True, help="class name: photos go to OUT/LABEL/")
    p.add_argument("--out", type=Path, required=True, help="data folder (one sub-folder per class)")
    p.add_argument("--every", type=seconds_arg, metavar="SECONDS",
                   help="seconds between saved photos: by the clock for a camera or a stream, by the clip's "
                        "timeline for a video file (default 1; 0: every frame); a folder of photos gives "
                        "every photo")
    p.add_argument("--count", type=int, metavar="N",
                   help="stop after N saved photos (not frames read: the runtime's --max-frames counts "
                        "frames; default: until Ctrl-C or the source ends)")
    p.add_argument("--jpeg-quality", type=int, default=95, metavar="Q",
                   help="JPEG quality 1-100 of the saved photos (default 95)")
    deprecated(p, "--quality", "--jpeg-quality", "jpeg_quality", type=int)
    add_stream_timeout(p)
    p.add_argument("--quiet", action="store_true", help="no line per saved photo")
    return p


def main(argv: list[str] | None = None) -> int:
    from .cli import parse_with_source

    args = parse_with_source(build_parser(), argv)
    from .app import install_stop_signals
    from .sources import (EXIT_UNAVAILABLE, SourceError, SourceUnavailable, is_image_file, is_stream, open_source,
                          quiet_opencv)

    quiet_opencv()

    if args.count is not None and args.count < 1:
        tell(f"error: --count {args.count}: 1 or more photos expected")
        return 2
    if not 1 <= args.jpeg_quality <= 100:
        tell(f"error: --jpeg-quality {args.jpeg_quality}: 1..100 expected")
        return 2
    photos = args.source is not None and not is_stream(args.source) and (Path(args.source).is_dir()
                                                                         or is_image_file(args.source))
    if photos and args.every is not None:  # refused, not silently ignored
        tell(f"error: --every: only with a camera, a video file or a stream (a folder of photos gives every "
             f"photo: {args.source})")
        return 2
    if photos and Path(args.source).is_dir():  # copies of the photos among them, or the copies read again
        from .fileio import folder_clash_problem

        problem = folder_clash_problem("--out", args.out / args.label, [("--source", args.source)], (".",))
        if problem:
            tell(f"error: {problem}")
            return 2
    stop = threading.Event()
    install_stop_signals(stop)  # before anything is opened: a stop while the source opens is obeyed there
    created = [p for p in (args.out, args.out / args.label) if not p.exists()]
    try:
        prepare_folder(args.out, args.label)  # before the camera is opened
        source = open_source(args.camera if args.camera is not None else args.source,
                             camera=args.camera is not None, picamera=args.picamera,
                             stream_timeout=args.stream_timeout, stop=stop)
    except (CaptureError, SourceError) as e:
        _remove_empty(created)
        if stop.is_set():  # as the runtime: a stop is no failure
            tell("stopped by signal while opening the source")
            return 0
        tell(f"error: {e}")
        return EXIT_UNAVAILABLE if isinstance(e, SourceUnavailable) else 2  # as the runtime: try again later
    say = (lambda _m: None) if args.quiet else tell  # a full log loses lines, never photos
    every = 1.0 if args.every is None else args.every
    try:
        stats = capture(source, args.out, args.label, every, args.count, args.jpeg_quality, stop, say)
    except CaptureError as e:  # while saving (storage full): 1, as the runtime's failures while running
        tell(f"error: {e}")
        return 1
    if not stats.saved:
        _remove_empty(created)
        if stats.stopped_by == "end of source":  # as the runtime: a source with nothing in it is a failure
            tell(f"error: the source ended before any photo was saved ({stats.frames} frames read)")
            return 1
    tell(f"{stats.saved} photos of {args.label!r} in {args.out / args.label} from {stats.frames} frames in "
         f"{stats.seconds:.1f}s; stopped by {stats.stopped_by}")
    return 0


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders this run created, deepest first, if they are still empty: no empty class folder
    is left for training to trip on."""
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()
