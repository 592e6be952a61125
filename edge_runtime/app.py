"""The frame loop: per frame one resize/crop into the input tensor, invoke, top-k (+ draw when shown)."""
from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TextIO

import cv2
import numpy as np

from .classify import Classifier
from .output import LineOutput, OutputError
from .overlay import FpsMeter, draw, summary_line
from .preprocess import ImageTooLarge
from .record import Recorder, RecordingError

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    top_k: int = 5
    threshold: float = 0.0
    max_frames: int | None = None
    json_lines: bool = False
    display: bool = False
    record: Path | None = None
    record_segment: float = 0.0  # seconds of video per recorded file (0: one file)
    record_keep: int = 0  # with segments: keep only the newest N (0: all)
    log_interval: float = 1.0  # seconds between headless text lines
    json_interval: float = 0.0  # seconds between --json lines (0: every frame)
    out: TextIO = field(default_factory=lambda: sys.stdout)


@dataclass
class RunStats:
    frames: int = 0
    seconds: float = 0.0
    invoke_seconds: float = 0.0
    first_result_seconds: float | None = None
    stopped_by: str = "end of source"
    too_large: int = 0  # frames refused by the preprocessing's pixel budget, skipped
    error: str | None = None  # why the run failed (the recording could not be written...)
    recorded: list[Path] = field(default_factory=list)  # finished recording files

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0


def result_record(frame_no: int, preds: list, infer_ms: float, fps: float, file: str | None = None) -> dict:
    """The result of one classified frame: the ``--json`` line, ``/predictions`` and ``/events``
    all carry exactly this record (one schema, built here only). ``file`` names the image a
    folder source's frame comes from."""
    return {"frame": frame_no, **({"file": file} if file else {}), "time": round(time.time(), 3),
            "inference_ms": round(infer_ms, 2), "fps": round(fps, 1),
            "top": [{"index": p.index, "label": p.label, "score": round(p.score, 4)} for p in preds]}


# Called once per classified frame with (frame, record, annotated): the BGR frame, the
# result_record, and whether the overlay is already drawn on it. The loop never touches the frame
# again after the call; the observer must return at once and must not modify the frame.
Observer = Callable[[np.ndarray, dict, bool], None]


def install_stop_signals(stop: threading.Event, source=None) -> None:
    """SIGTERM, SIGINT and SIGHUP set ``stop`` (and end the source) so the loop ends cleanly and releases
    the camera and finalizes the recording. Install it before opening anything: every wait of the
    runtime checks ``stop`` at least every 0.1 s, so the process ends within 2 s in any state."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handler(*_args) -> None:
        stop.set()
        if source is not None and hasattr(source, "request_stop"):
            source.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    # SIGHUP: the terminal or SSH session went away; the recording is finished as for SIGTERM, except
    # under nohup (which ignores SIGHUP so the run goes on)
    if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, handler)


def run(classifier: Classifier, source, opts: RunOptions, stop: threading.Event | None = None,
        on_result: Callable[[int, list], None] | None = None, observer: Observer | None = None) -> RunStats:
    """Classify frames from ``source`` until it ends, ``max_frames``, or ``stop`` is set.

    ``on_result(frame_no, predictions)`` and ``observer(frame, record, annotated)`` (see
    :data:`Observer`, e.g. the web service's ``publish``) are called once per classified frame."""
    stop = stop or threading.Event()
    stats, fps_meter = RunStats(), FpsMeter()
    t_start = time.perf_counter()
    last_line: float | None = None  # the first result is shown at once, then one every log_interval / json_interval
    recorder = None
    try:
        out = LineOutput(opts.out, stop)
        if opts.record:
            recorder = Recorder(opts.record, getattr(getattr(source, "stats", None), "fps_hint", 0.0),
                                segment_seconds=opts.record_segment, keep=opts.record_keep)
        live = bool(getattr(source, "live", False))  # a camera or stream: recorded in real time
        for frame in source:
            if stop.is_set():
                stats.stopped_by = "signal"
                break
            t0 = time.perf_counter()
            try:
                classifier.set_frame(frame)
            except ImageTooLarge as e:  # a thin strip that resizing would blow up: skip it, go on
                stats.too_large += 1
                log.warning("skipping %s%s", f"{_file_name(source)}: " if _file_name(source) else "", e)
                continue
            classifier.invoke()
            t1 = time.perf_counter()
            preds = [p for p in classifier.top_k(opts.top_k) if p.score >= opts.threshold]
            infer_ms = 1000 * (t1 - t0)
            fps = fps_meter.tick()
            stats.frames += 1
            stats.invoke_seconds += t1 - t0
            if stats.first_result_seconds is None:
                stats.first_result_seconds = t1 - t_start
            if on_result:
                on_result(stats.frames, preds)
            name = _file_name(source)
            record = result_record(stats.frames, preds, infer_ms, fps, name) if opts.json_lines or observer else None
            if opts.json_lines or not opts.display:  # a JSON or text line per file of a folder, else per interval
                interval = opts.json_interval if opts.json_lines else opts.log_interval
                if name or last_line is None or t1 - last_line >= interval:
                    line = json.dumps(record) if opts.json_lines else \
                        f"frame {stats.frames}{f' ({name})' if name else ''}: {summary_line(preds, infer_ms, fps)}"
                    out.write(line + "\n")
                    last_line = t1
            annotated = bool(opts.display or recorder)
            if annotated:
                draw(frame, preds, infer_ms, fps)
                if recorder:
                    recorder.write(frame, getattr(source, "frame_time", None) if live else None)
            if observer:
                observer(frame, record, annotated)
            if opts.display:
                cv2.imshow("edge_runtime", frame)
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    stats.stopped_by = "user"
                    break
            if opts.max_frames and stats.frames >= opts.max_frames:
                stats.stopped_by = "max frames"
                break
        else:
            if stop.is_set():
                stats.stopped_by = "signal"
    except KeyboardInterrupt:
        stats.stopped_by = "interrupt"
    except RecordingError as e:
        stats.stopped_by, stats.error = "recording error", str(e)
    except OutputError as e:  # a reader that went away is a stop; a full disk under stdout a failure
        stats.stopped_by = "a closed output" if e.closed else "output error"
        stats.error = None if e.closed else str(e)
    except OSError as e:  # the storage failed under a recording (a folder removed, EIO): one line, not a traceback
        stats.stopped_by = "an I/O error"
        stats.error = f"{e.filename}: {e.strerror or e}" if e.filename else f"{e.strerror or e}"
    finally:
        stats.seconds = time.perf_counter() - t_start
        source.close()
        if recorder:
            try:
                recorder.close()
            except RecordingError as e:
                stats.error = stats.error or str(e)
            stats.recorded = list(recorder.files)
        if opts.display:
            cv2.destroyAllWindows()
    return stats


def _file_name(source) -> str | None:
    """The image file a folder source's current frame comes from, relative to the folder."""
    path = getattr(source, "current_path", None)
    if path is None:
        return None
    root = getattr(source, "root", None)
    try:
        return str(path.relative_to(root)) if root else path.name
    except ValueError:
        return path.name
