"""The one flag vocabulary of ``python -m convert``, ``python -m edge_runtime`` and ``tools/``.

The same flag means the same thing everywhere:

    --val DIR        labelled images (files named by WordNet id, or one sub-folder per class)
    --limit N        use only the first N of the labelled images
    --out PATH       the output file
    --json           JSON to stdout (a switch)
    --report FILE    a JSON report written to FILE
    --top-k K        labels per image (default 5)
    --threads N      interpreter / inference threads
    --resize N|HxW   before the center crop: N = shorter side to N (aspect kept), HxW = exactly HxW
    --input-size N|HxW  the network's input: N = N x N (training and the design space take squares)
    --model PATH     a converted .tflite to run (the runtime, the benchmark, convert evaluate)
    --channel-order  RGB|BGR: the channel order of the model's input tensor
    --quiet          no progress lines
    --stream-timeout SECONDS  an RTSP/HTTP stream's open and read timeout (the runtime, capture)
    --jpeg-quality Q JPEG quality 1-100 of what is encoded (the runtime's MJPEG view, capture's photos)

Old spellings keep working for one release, with a one-line deprecation warning on stderr.

Exit codes, the same in every command: 0 done; 2 a flag, an input or an output a person must fix;
GATE_MISSED (3) a quality gate missed (the converter's --min-agreement / --max-top1-drop, the benchmark's
--fail-on-regression); Python's 1 with a traceback is a bug (the runtime's own codes: README, systemd).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from .fileio import tell

TOP_K = 5
GATE_MISSED = 3  # exit code: a quality gate was missed (told apart from bad input, 2, and a crash, 1)


class _Deprecated(argparse.Action):
    """An old spelling: stores into the new flag's destination and says so once on stderr."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        tell(f"warning: {option_string} is deprecated and goes in the next release; use {self.new}")
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def deprecated(parser: argparse.ArgumentParser | argparse._ArgumentGroup, old: str, new: str, dest: str,
               **kwargs) -> None:
    """Accept ``old`` as a hidden alias of ``new`` (same ``dest``), warning when it is used.

    For a switch pass ``nargs=0, const=True``; otherwise ``type=`` as the new flag has.
    """
    parser.add_argument(old, action=_Deprecated, new=new, dest=dest, help=argparse.SUPPRESS,
                        default=argparse.SUPPRESS, **kwargs)


def add_json_flag(parser: argparse.ArgumentParser, what: str) -> None:
    """``--json``: ``what`` (e.g. "print the figures as JSON on stdout"); its old spelling ``--json PATH`` is
    moved to ``--report PATH`` by :func:`json_path_to_report`."""
    parser.add_argument("--json", nargs="?", const=True, default=None, metavar="FILE",
                        help=f"{what} (--json FILE: the deprecated spelling of --report FILE)")


def json_path_to_report(args: argparse.Namespace) -> None:
    """The old spelling ``--json PATH`` (a ``--json`` declared with ``nargs="?"``) moved to ``--report
    PATH``, with the deprecation warning (in place)."""
    if args.json not in (None, True):
        tell("warning: --json PATH is deprecated and goes in the next release; use --report PATH "
             "(--json alone prints JSON on stdout)")
        args.report, args.json = Path(args.json), None


def resize_arg(text: str) -> tuple[int, int]:
    """``--resize``: "N" -> (N, 0), the shorter side to N keeping the aspect; "HxW" -> (H, W) exactly."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1 and parts[0] > 0:
        return parts[0], 0
    if len(parts) == 2 and min(parts) > 0:
        return parts[0], parts[1]
    raise argparse.ArgumentTypeError(f"{text!r}: N (shorter side) or HxW (exact) expected, e.g. 256 or 256x256")


def resize_text(resize: tuple[int, int]) -> str:
    """The --resize spelling of a (height, width) resize: "N" for (N, 0), else "HxW"."""
    return f"{resize[0]}" if not resize[1] else f"{resize[0]}x{resize[1]}"


def input_size_arg(text: str) -> tuple[int, int]:
    """``--input-size``: "N" -> (N, N), a square; "HxW" -> (H, W); each side in the range every
    preprocessing record accepts (8..4096)."""
    from .preprocess import MAX_INPUT_SIDE, MIN_INPUT_SIDE

    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(MIN_INPUT_SIDE <= v <= MAX_INPUT_SIDE for v in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: N (square) or HxW expected, each side {MIN_INPUT_SIDE}.."
                                         f"{MAX_INPUT_SIDE}, e.g. 224 or 224x224")
    return parts[0], parts[1]


def square_size_arg(text: str) -> int:
    """``--input-size`` where the input is square (training, the design space): "N" or "NxN" -> N."""
    h, w = input_size_arg(text)
    if h != w:
        raise argparse.ArgumentTypeError(f"{text!r}: a square input expected here (N or NxN, e.g. 128)")
    return h


def _number(text: str, kind: type, ok, expected: str):
    """``text`` as ``kind`` when ``ok`` holds for it (NaN never does); else argparse's one-line error."""
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"{text!r}: {expected} expected")
    return value


def nonnegative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "0 or a positive integer")


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v > 0, "a positive integer")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: math.isfinite(v) and v > 0, "a positive number")


def nonnegative_float(text: str) -> float:
    return _number(text, float, lambda v: math.isfinite(v) and v >= 0, "0 or a positive number")


MAX_THREADS = 256  # a board has 4; more only costs start-up time


def threads_arg(text: str) -> int:
    """Interpreter or inference threads: 1 to :data:`MAX_THREADS`."""
    return _number(text, int, lambda v: 1 <= v <= MAX_THREADS, f"a number of threads from 1 to {MAX_THREADS}")


def probability_arg(text: str) -> float:
    """A probability from 0 to 1 (NaN refused)."""
    return _number(text, float, lambda v: 0 <= v <= 1, "a probability from 0 to 1")


# Training rates above this only diverge (the paper's is 0.04 x batch / 512); far above, past float32's range,
# torch cannot even take the step.
MAX_LR = 10.0


def lr_arg(text: str) -> float:
    """A learning rate, or a factor of one (``--finetune-lr``): above 0, at most :data:`MAX_LR`."""
    return _number(text, float, lambda v: 0 < v <= MAX_LR, f"a rate above 0 and at most {MAX_LR:g}")


def seconds_arg(text: str) -> float:
    """A number of seconds from 0 to a day (NaN and infinity refused)."""
    return _number(text, float, lambda v: 0 <= v <= 86400, "a number of seconds from 0 to 86400")


CHANNEL_ORDER_HELP = "the channel order of the model's input tensor"
RESIZE_HELP = "before the center crop: N = shorter side to N (aspect kept), HxW = exactly HxW"


def add_stream_timeout(parser: argparse.ArgumentParser) -> None:
    """``--stream-timeout SECONDS``: one definition for every command that reads a --source."""
    from .sources import STREAM_TIMEOUT  # (OpenCV's module: imported by the commands that read a source)

    parser.add_argument("--stream-timeout", type=seconds_arg, default=STREAM_TIMEOUT, metavar="SECONDS",
                        help="an RTSP/HTTP stream that takes longer to open or to deliver data is reconnected "
                             f"(default {STREAM_TIMEOUT:g})")
