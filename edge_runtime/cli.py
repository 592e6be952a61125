"""``python -m edge_runtime``: live classification from a camera, a video, an image folder or a stream."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path

from . import serve
from .classify import Classifier, ModelError
from .fileio import TellHandler, tell
from .interpreter import InterpreterUnavailable
from .flags import (CHANNEL_ORDER_HELP, RESIZE_HELP, TOP_K, add_stream_timeout, deprecated, nonnegative_int,
                    positive_int, probability_arg, resize_arg, seconds_arg, threads_arg)
from .metadata import MetadataError, read_model_info
from .preprocess import Preprocessing, PreprocessingError

PLAIN_RESIZE = (256, 256)
DEFAULT_MODEL = Path("build/squeezenet1_0_int8.tflite")
EXAMPLES = """examples:
  python -m edge_runtime --camera 0
  python -m edge_runtime --source samples/sample_clip.mp4 --headless --json --max-frames 50
  python -m edge_runtime --source rtsp://192.0.2.10/stream --model build/squeezenet1_0_int8.tflite --threads 4
  python -m edge_runtime --camera 0 --serve 8080                 # then open http://127.0.0.1:8080/
  EDGE_RUNTIME_TOKEN=long-secret python -m edge_runtime --camera 0 --serve 0.0.0.0:8080
  python -m edge_runtime --camera 0 --headless --record rec/cam.mkv --record-segment 300
  python -m edge_runtime capture --camera 0 --label parcel --out photos --every 2 --count 100
"""


SOURCE_ENV = "EDGE_RUNTIME_SOURCE"  # a stream URL with a password, kept out of the process list


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    """--camera | --source, and --picamera: the frame sources (shared with ``capture``; one of them is
    required, ``--source`` falling back to ``$EDGE_RUNTIME_SOURCE``: see :func:`parse_with_source`)."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--camera", type=int, metavar="N", help="camera index (OpenCV, or Picamera2 with --picamera)")
    src.add_argument("--source", metavar="PATH_OR_URL",
                     help=f"video file, photo, image folder, or RTSP/HTTP stream (default ${SOURCE_ENV}, which "
                          "keeps a stream's password out of the process list)")
    p.add_argument("--picamera", action="store_true", help="use Picamera2 (libcamera) for --camera")


def parse_with_source(p: argparse.ArgumentParser, argv: list[str] | None, environ=None) -> argparse.Namespace:
    """``p.parse_args(argv)`` with a frame source: ``--camera``, ``--source`` or ``$EDGE_RUNTIME_SOURCE``."""
    args = p.parse_args(argv)
    if args.camera is None and args.source is None:
        args.source = (os.environ if environ is None else environ).get(SOURCE_ENV) or None
        if args.source is None:
            p.error(f"one of the arguments --camera --source is required (or ${SOURCE_ENV})")
    return args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edge_runtime", epilog=EXAMPLES,
                                usage="%(prog)s (--camera N | --source PATH_OR_URL) [options]\n"
                                      "       %(prog)s capture ...  (labelled photos for training: capture -h)",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Classify camera frames with an int8 TFLite model: top-k labels, "
                                            "overlay, FPS; headless and JSON modes; reconnects cameras.")
    add_source_arguments(p)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                   help=f"the .tflite model (default: {DEFAULT_MODEL}, what `python -m convert tflite` writes)")
    p.add_argument("--threads", type=threads_arg, default=2, help="interpreter threads (default 2)")
    p.add_argument("--top-k", type=positive_int, default=TOP_K, help=f"labels shown per frame (default {TOP_K})")
    p.add_argument("--threshold", type=probability_arg, default=0.0,
                   help="hide labels below this probability (default 0)")
    p.add_argument("--headless", action="store_true", help="no window (forced when no display is available)")
    p.add_argument("--json", action="store_true",
                   help="one JSON line per classified frame on stdout (see --json-interval)")
    p.add_argument("--json-interval", type=seconds_arg, default=0.0, metavar="SECONDS",
                   help="with --json: at most one line per SECONDS, the first at once (default 0: every frame; "
                        "an image folder: every file; /predictions and /events keep every frame)")
    p.add_argument("--max-frames", type=positive_int, help="stop after N classified frames")
    p.add_argument("--record", type=Path, metavar="OUT.mp4",
                   help="record the annotated frames (.mp4, .mkv, .ts, .avi); finished only when closed: "
                        "use --record-segment, and .mkv or .ts, to keep what was recorded if the device dies")
    p.add_argument("--record-segment", type=seconds_arg, default=0.0, metavar="SECONDS",
                   help="cut the recording into files of SECONDS of video each (OUT-00001.mp4, ...; of real time "
                        "for a camera or stream); every finished file survives a kill or a power cut "
                        "(default: one file)")
    p.add_argument("--record-keep", type=nonnegative_int, default=0, metavar="N",
                   help="with --record-segment: keep only the newest N segments of this name (earlier runs' "
                        "included), deleting the oldest as each new one is finished, and sooner when the storage "
                        "runs low (a loop recording that never fills the storage; default 0: keep all)")
    add_stream_timeout(p)
    p.add_argument("--loop", action="store_true", help="restart a video file at its end")
    p.add_argument("--disconnect-every", type=nonnegative_int, default=0, metavar="N",
                   help="with a video file: unplug the simulated camera every N frames (soak tests)")
    deprecated(p, "--simulate-disconnect-every", "--disconnect-every", "disconnect_every", type=nonnegative_int)
    p.add_argument("--disconnect-seconds", type=seconds_arg, default=0.0, metavar="S",
                   help="with --disconnect-every: the camera stays unplugged S seconds each time "
                        "(default 0: it comes back at the first reopen attempt)")
    deprecated(p, "--simulate-disconnect-seconds", "--disconnect-seconds", "disconnect_seconds", type=seconds_arg)
    p.add_argument("--edgetpu", action="store_true", help="load the Edge TPU delegate (libedgetpu.so.1)")
    kernels = p.add_mutually_exclusive_group()
    kernels.add_argument("--xnnpack", action="store_const", const=True, default=None,
                         help="XNNPACK kernels where the interpreter has them (ai-edge-litert, tf.lite) instead of "
                              "TFLite's builtin ones: 2-3x faster for int8 on x86, but it rounds int8 layers "
                              "differently, so about 2%% of decisions differ from what the converter validated "
                              "and tflite-runtime computes (default: builtin kernels for an int8 model, XNNPACK "
                              "for a float one)")
    kernels.add_argument("--builtin-kernels", dest="xnnpack", action="store_const", const=False,
                         help="TFLite's builtin kernels for a float model too (an int8 model runs on them anyway)")
    p.add_argument("--no-verify", action="store_true",
                   help="load the model even if its integrity checksum does not match (experiments only)")
    p.add_argument("--log-interval", type=seconds_arg, default=1.0,
                   help="seconds between headless text lines (default 1; an image folder: a line per file)")
    pre = p.add_argument_group("preprocessing of a plain .tflite without embedded metadata (refused for a "
                               "model that carries its own)")
    pre.add_argument("--resize", type=resize_arg, metavar="N|HxW",
                     help=f"{RESIZE_HELP} (default {PLAIN_RESIZE[0]}x{PLAIN_RESIZE[1]}, at least the input size)")
    pre.add_argument("--channel-order", choices=("RGB", "BGR"), help=f"{CHANNEL_ORDER_HELP} (default RGB)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    serve.add_arguments(p)
    return p


def has_display() -> bool:
    """A window can be shown: a display is set and this OpenCV build has a GUI backend."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    import cv2

    try:
        cv2.namedWindow("edge_runtime")
        return True
    except cv2.error:  # opencv-python-headless has no GUI
        return False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["capture"]:  # python -m edge_runtime capture ...: labelled photos for training
        from .capture import main as capture_main

        return capture_main(argv[1:])
    args = parse_with_source(build_parser(), argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, handlers=[TellHandler()],
                        format="%(asctime)s %(levelname)s %(message)s")
    from . import app
    from .record import RecordingError
    from .sources import EXIT_UNAVAILABLE, SourceError, SourceUnavailable, quiet_opencv

    if not args.verbose:
        quiet_opencv()

    misuse = _flags_without_effect(args)
    if misuse:
        tell(f"error: {misuse}")
        return 2
    stop = threading.Event()
    app.install_stop_signals(stop)  # from here on SIGTERM / Ctrl-C end the process within 2 s
    display = not args.headless and not args.json and has_display()
    opts = app.RunOptions(top_k=args.top_k, threshold=args.threshold, max_frames=args.max_frames,
                          json_lines=args.json, display=display, record=args.record,
                          record_segment=args.record_segment, record_keep=args.record_keep,
                          log_interval=args.log_interval, json_interval=args.json_interval)
    service = source = None
    try:
        try:
            serve_opts, clf = _load(args, stop)
            if serve_opts:  # listening before the source opens: a device whose camera is missing is reachable
                try:
                    service = serve.start(clf, None, serve_opts)
                except OSError as e:
                    tell(f"error: cannot listen on {args.serve}: {e.strerror or e}")
                    return 2
            source = _open(args, stop, service, clf.preprocessing)
        except _Stopped as e:
            tell(f"stopped by signal while {e}")
            return 0
        except SourceUnavailable as e:  # a camera or stream not there (yet): a service manager tries again
            tell(f"error: {e}")
            return EXIT_UNAVAILABLE
        except (RecordingError, serve.ServeError, _FlagNotApplicable, ModelError, InterpreterUnavailable,
                PreprocessingError, SourceError) as e:
            hint = (" (convert one with: python -m convert tflite)" if isinstance(e, ModelError)
                    and args.model == DEFAULT_MODEL and not args.model.exists() else "")
            tell(f"error: {e}{hint}")
            return 2
        stats = app.run(clf, source, opts, stop, observer=service.publish if service else None)
    finally:
        if service:
            service.close()
        if source:
            source.close()
    s = source.stats
    too_large = s.too_large + stats.too_large
    skipped = f"corrupt frames skipped: {s.corrupt}" + (f"; images over the pixel budget skipped: {too_large}"
                                                        if too_large else "") + \
        (f"; {s.ended_early}" if s.ended_early else "")
    files = stats.recorded
    recorded = "" if not files else f"; recorded {', '.join(map(str, files))}" if len(files) <= 3 else \
        f"; recorded {len(files)} files in {files[0].parent} ({files[0].name} .. {files[-1].name})"
    kernels = "XNNPACK" if clf.xnnpack else "builtin kernels"
    lines = [f"{stats.frames} frames in {stats.seconds:.1f}s ({stats.fps:.1f} FPS, mean invoke "
             f"{1000 * stats.invoke_seconds / max(stats.frames, 1):.1f} ms) with {clf.backend} ({kernels}); "
             f"{skipped}; reconnects: {s.reconnects}; stopped by {stats.stopped_by}{recorded}"]
    nothing = stats.frames == 0 and stats.stopped_by == "end of source"  # a source that gave nothing to classify
    if stats.error:
        lines.append(f"error: {stats.error}")
    elif nothing:
        lines.append(f"error: the source ended before any frame could be classified ({skipped})")
    tell("\n".join(lines))  # a log on a full card loses the account, not the run's outcome
    return 1 if stats.error or nothing else 0


class _Stopped(Exception):
    """SIGTERM / Ctrl-C arrived while the run was starting (the message says during what)."""


def _load(args: argparse.Namespace, stop: threading.Event):
    """(serve options, classifier), checked in the order a user fixes them: the recording target, the
    web view's options, the model.

    Raises:
        RecordingError, serve.ServeError, _FlagNotApplicable, ModelError, InterpreterUnavailable,
        PreprocessingError: one line for the user; _Stopped: a stop signal came first.
    """
    from .fileio import clash_problem
    from .record import RecordingError, check_target

    if args.record:
        if problem := clash_problem([("--record", args.record)], [("--model", args.model)]):  # (onto --source: kept)
            raise RecordingError(problem)
        check_target(args.record)
    serve_opts = serve.options_from_args(args)
    clf = Classifier(args.model, threads=args.threads, edgetpu=args.edgetpu,
                     preprocessing=_fallback_preprocessing(args), verify=not args.no_verify, xnnpack=args.xnnpack)
    if stop.is_set():
        raise _Stopped("loading the model")
    return serve_opts, clf


WAIT_FIRST, WAIT_MAX = 5.0, 60.0  # --serve: seconds before trying a missing camera or stream again


def _open(args: argparse.Namespace, stop: threading.Event, service: serve.Service | None, fit: Preprocessing):
    """The frame source. A camera or stream that is not there raises SourceUnavailable (the service
    manager tries again later), except with ``service``: the process is reachable and waits for it
    itself, trying again after 5, 10, 20 ... 60 s (one attempt each after the first round), its health saying
    why it waits; rounds 1, 2, 4, 8... are said (a camera missing for a month: 16 lines, not 130,000).

    Raises:
        SourceError (SourceUnavailable): one line for the user; _Stopped: a stop signal came first.
    """
    from .sources import SourceError, SourceUnavailable, open_source, said_at

    delay, rounds = WAIT_FIRST, 0
    while True:
        try:
            source = open_source(args.camera if args.camera is not None else args.source,
                                 camera=args.camera is not None, picamera=args.picamera, loop=args.loop,
                                 disconnect_every=args.disconnect_every,
                                 disconnect_seconds=args.disconnect_seconds, stream_timeout=args.stream_timeout,
                                 startup_attempts=1 if rounds else 3, stop=stop, fit=fit)
        except SourceUnavailable as e:
            if stop.is_set():
                raise _Stopped("opening the source") from None
            if service is None:
                raise
            service.waiting, rounds = str(e), rounds + 1
            if said_at(rounds):
                tell(f"warning: {e}; trying again in {delay:.0f} s (--serve keeps the process up; said again "
                     f"at round {2 * rounds})")
            if stop.wait(delay):
                raise _Stopped("opening the source") from None
            delay = min(2 * delay, WAIT_MAX)
            continue
        except SourceError:
            if stop.is_set():
                raise _Stopped("opening the source") from None
            raise
        if service is not None:
            service.source, service.waiting = source, None
        return source


def _flags_without_effect(args: argparse.Namespace) -> str | None:
    """A flag that would be silently ignored with the others given, said as one line (else None)."""
    from .sources import is_image_file, is_stream

    video_file = args.source is not None and not is_stream(args.source) and not Path(args.source).is_dir() \
        and not is_image_file(args.source)
    rules = (("--record-segment", args.record_segment, "--record", args.record is not None),
             ("--record-keep", args.record_keep, "--record-segment", bool(args.record_segment)),
             ("--json-interval", args.json_interval, "--json", args.json),
             ("--picamera", args.picamera, "--camera N", args.camera is not None),
             ("--disconnect-seconds", args.disconnect_seconds, "--disconnect-every", bool(args.disconnect_every)),
             ("--loop", args.loop, "a video file as --source", video_file),
             ("--disconnect-every", args.disconnect_every, "a video file as --source", video_file))
    for flag, given, needs, ok in rules:
        if given and not ok:
            return f"{flag}: only with {needs} (it would have no effect)"
    return None


class _FlagNotApplicable(ValueError):
    """A plain-model preprocessing flag given for a model that carries its own preprocessing."""


def _fallback_preprocessing(args: argparse.Namespace) -> "_LazyPreprocessing":
    """Preprocessing for a model without metadata: input size comes from the graph at load time."""
    given = [flag for flag, value in (("--resize", args.resize), ("--channel-order", args.channel_order))
             if value is not None]
    if given and args.model.is_file():
        try:
            info = read_model_info(args.model)
        except MetadataError:
            info = None  # the classifier reports it
        if info is not None:
            raise _FlagNotApplicable(f"{', '.join(given)}: {args.model} carries its own preprocessing (embedded "
                                     "metadata); these flags apply only to a plain .tflite")
    return _LazyPreprocessing(args.resize or PLAIN_RESIZE, args.channel_order or "RGB")


class _LazyPreprocessing:
    """Marker the classifier completes with the graph's input size (see Classifier)."""

    def __init__(self, resize: tuple[int, int], order: str) -> None:
        self.resize, self.order = resize, order

    def complete(self, h: int, w: int) -> Preprocessing:
        rh, rw = self.resize
        resize = (max(rh, min(h, w)), 0) if rw == 0 else (max(rh, h), max(rw, w))
        return Preprocessing(input_size=(h, w), resize=resize, channel_order=self.order)


if __name__ == "__main__":
    sys.exit(main())
