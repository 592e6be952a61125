"""``python -m convert tflite``: a model to a self-describing, fully int8 TFLite file, gated."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge_runtime.flags import CHANNEL_ORDER_HELP, RESIZE_HELP, input_size_arg, resize_arg

from .errors import ConvertError, GateError
from .validate import Gates

EXAMPLES = """examples:
  # the Deep Compression SqueezeNet v1.0, validated on labelled images, gates on:
  python -m convert tflite --weights deep-compression --out build/squeezenet1_0_int8.tflite \\
      --val ../shared/imagenet/val500 --report build/report.json
  # a torchvision checkpoint of v1.1, calibrated on your own photos:
  python -m convert tflite --weights squeezenet1_1-b8a52dc0.pth --arch squeezenet1_1 --calib photos/ \\
      --out build/squeezenet1_1_int8.tflite
  # your own ONNX classifier (NCHW, normalized RGB input):
  python -m convert tflite --onnx my_classifier.onnx --labels labels.txt --mean 123.675,116.28,103.53 \\
      --std 58.395,57.12,57.375 --out build/my_classifier_int8.tflite
"""


def _floats(text: str) -> tuple[float, float, float]:
    parts = [float(x) for x in text.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: three comma-separated numbers expected")
    return parts[0], parts[1], parts[2]


def _scales(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(0.5 <= v <= 8 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated scales between 0.5 and 8 expected, e.g. 1,1.3")
    return values


GATE_DEFAULTS = {"--min-agreement": Gates.min_agreement, "--max-top1-drop": Gates.max_top1_drop}


def add_gate_flags(p: argparse.ArgumentParser, of: str | None = None, labelled: str = "--val") -> None:
    """The converter's gates: ``tflite``'s, or those of the conversion flag ``of`` (``train``/``compress
    --tflite``), which then default to None so that :func:`gates_of` can refuse them without it.
    ``labelled`` names the labelled images they are judged on (the unlabelled check views without any)."""
    what = f" of {of}" if of else ""
    p.add_argument("--min-agreement", type=float, default=None if of else GATE_DEFAULTS["--min-agreement"],
                   help=f"gate{what}: minimum top-1 agreement int8 vs float, as a fraction (default "
                        f"{Gates.min_agreement}; on {labelled}, else on the unlabelled check views)")
    p.add_argument("--max-top1-drop", type=float, default=None if of else GATE_DEFAULTS["--max-top1-drop"],
                   help=f"gate{what}: maximum top-1 drop in points on {labelled} (default {Gates.max_top1_drop})")


def gates_of(args: argparse.Namespace, of: str = "--tflite") -> tuple[float, float]:
    """The gates of the conversion flag ``of`` (see :func:`add_gate_flags`), the converter's defaults where
    not given.

    Raises:
        ConvertError: a gate given without ``of`` (nothing would be converted, the gate silently ignored).
    """
    values = {flag: getattr(args, flag[2:].replace("-", "_")) for flag in GATE_DEFAULTS}
    given = [flag for flag, value in values.items() if value is not None]
    if given and getattr(args, of[2:].replace("-", "_")) is None:
        raise ConvertError(f"{', '.join(given)}: only with {of} (gates of its int8 conversion; without {of} "
                           "nothing is converted)")
    return tuple(GATE_DEFAULTS[flag] if value is None else value for flag, value in values.items())


def write_report(path: Path | None, report: dict) -> None:
    """``report`` as JSON at ``path`` (if given), atomically: ``train``'s and ``compress``'s --report."""
    if path:
        from edge_runtime.fileio import atomic_write

        atomic_write(path, json.dumps(report, indent=1) + "\n")


def missed_gate(e: GateError, kept: str, report: dict, path: Path | None) -> GateError:
    """A gate of ``train``/``compress --tflite`` missed: ``e``'s line with ``kept`` (what is kept, and how to
    convert it later) and the int8 figures go in the command's ``report``, written to ``path``; returns the
    error to raise (a missed gate stays one: exit code 3)."""
    text = f"{e}; {kept}"
    report["int8"] = {**e.report, "error": text}
    write_report(path, report)
    return GateError(text, e.report)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tflite", help="convert to a fully int8 TFLite file with embedded metadata",
                       description="PyTorch or ONNX classifier -> ONNX -> onnx2tf -> fully int8 TFLite, "
                                   "calibrated on real photos, validated against the float model, with "
                                   "labels and preprocessing embedded. Writes nothing unless every gate passes.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--weights", help="named weights (deep-compression, squeezenet1_0, squeezenet1_1) or a "
                                       "file (.net, .pth, a training run's best.pt, compressed container); "
                                       "default deep-compression")
    src.add_argument("--onnx", type=Path, help="your own ONNX image classifier (1x3xHxW in, 1xN out)")
    p.add_argument("--arch", help="architecture for a plain checkpoint (see list_models())")
    p.add_argument("--out", type=Path, default=Path("build/squeezenet1_0_int8.tflite"),
                   help="int8 artifact path; the float .onnx/.tflite are kept beside it "
                        "(default: build/squeezenet1_0_int8.tflite)")
    p.add_argument("--calib", type=Path, help="folder of calibration photos (default: the project's calib_data/)")
    p.add_argument("--check", type=Path,
                   help="unlabelled photos never used for calibration, judged by the gates when --val is not "
                        "given, together with the held-out calibration photos (default: the project's check_data/)")
    p.add_argument("--val", type=Path, help="labelled images for the report and the gates "
                                            "(files named by WordNet id, or one sub-folder per class)")
    p.add_argument("--val-half", choices=("tune", "report"),
                   help="use only this half of --val, split by class (edge_runtime.evaluation.class_half): "
                        "settings are chosen on 'tune', figures quoted on 'report' (default: all of --val, "
                        "reported whole and per half)")
    p.add_argument("--input-type", choices=("uint8", "int8", "float32"), default="uint8",
                   help="input tensor type (default uint8: camera pixels go in unchanged)")
    p.add_argument("--output-type", choices=("uint8", "int8", "float32"), default="uint8",
                   help="the score head's type (default uint8: what MediaPipe Tasks and other stock clients "
                        "read; the arithmetic stays integer; float32 adds one float multiply at the end)")
    p.add_argument("--report", type=Path, help="write the validation report as JSON here")
    add_gate_flags(p)
    p.add_argument("--no-gates", action="store_true", help="report the figures but never fail on them")
    p.add_argument("--equalize", type=float, default=0.5,
                   help="cross-layer range equalization strength for SqueezeNet models, 0 to disable (default 0.5)")
    p.add_argument("--percentile", type=float, default=99.99,
                   help="activation range: largest per-image percentile over the calibration views (default 99.99)")
    p.add_argument("--output-margin", type=float, default=2.0,
                   help="factor on the calibrated max of the output logits (default 2.0)")
    p.add_argument("--bias-correction", type=float, default=0.5,
                   help="strength of the empirical bias correction of the int8 layers, 0 to disable (default 0.5)")
    p.add_argument("--weight-rounding", choices=("gptq", "nearest"), default="gptq",
                   help="SqueezeNet weights onto the int8 grid: gptq = minimize each convolution's output error "
                        "on the calibration views (default), nearest = TFLite's own rounding")
    p.add_argument("--split-squeeze", type=int, default=1, metavar="N",
                   help="SqueezeNet: give the squeeze output of the first N fires a 2x finer int8 grid, exact in "
                        "float (+4%% multiply-adds per fire on v1.0; default 1, 0 to disable)")
    from .calibration import DEFAULT_SCALES

    scales = ",".join(f"{v:g}" for v in DEFAULT_SCALES)
    p.add_argument("--calib-scales", type=_scales, default=DEFAULT_SCALES,
                   help=f"resize scales of the calibration views, each also mirrored (default {scales})")
    from .presets import ONNX_DEFAULTS as D

    def onnx_only(default: str, text: str) -> str:
        return (f"with --onnx: {text} (default {default}, from torchvision's ImageNet record; a *_float.onnx "
                "the converter wrote gives its own)")

    p.add_argument("--labels", type=Path,
                   help="with --onnx: a text file with one class name per line (default: ImageNet's for 1000 "
                   "outputs, else 0..N-1; the record's for a *_float.onnx the converter wrote)")
    p.add_argument("--input-size", type=input_size_arg, metavar="N|HxW",
                   help="with --onnx: N (square) or HxW, checked against the ONNX input")
    p.add_argument("--resize", type=resize_arg, metavar="N|HxW",
                   help=onnx_only(f"shorter side {D.resize[0]}/{D.input_size[0]} of the input size", RESIZE_HELP))
    p.add_argument("--channel-order", choices=("RGB", "BGR"), help=onnx_only(D.channel_order, CHANNEL_ORDER_HELP))
    p.add_argument("--mean", type=_floats, help=onnx_only(",".join(f"{v:g}" for v in D.mean),
                                                          "per-channel mean in 0..255 units, model channel order"))
    p.add_argument("--std", type=_floats, help=onnx_only(",".join(f"{v:g}" for v in D.std),
                                                         "per-channel std in 0..255 units, model channel order"))
    p.add_argument("--name", help="model name recorded in the artifact")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


ONNX_ONLY = ("labels", "input_size", "resize", "channel_order", "mean", "std")


def _onnx_input(args: argparse.Namespace):
    """The user's word on their ONNX model's input; refuses the ONNX-only flags without --onnx."""
    from .source import OnnxInput

    if args.onnx is None:
        given = [f"--{name.replace('_', '-')}" for name in ONNX_ONLY if getattr(args, name) is not None]
        if given:
            raise ConvertError(f"{', '.join(given)}: only with --onnx (the weights' record gives their "
                               "labels and preprocessing)")
        return None
    if args.arch:
        raise ConvertError("--arch: only with --weights (an ONNX file carries its own architecture)")
    return OnnxInput(input_size=args.input_size, resize=args.resize, channel_order=args.channel_order, mean=args.mean,
                     std=args.std)


def _labels(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    from edge_runtime.fileio import read_bounded

    try:  # at most MAX_LABELS names of MAX_LABEL_CHARS characters, with room for blank lines
        text = read_bounded(path, 32 << 20).decode("utf-8")
        return [line.strip() for line in text.splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise ConvertError(f"--labels {path}: cannot read ({e})") from None


def run(args: argparse.Namespace) -> int:
    from edge_runtime.fileio import HeldResult, write_result

    from .errors import GateError
    from .pipeline import ConvertOptions, convert, markdown_table

    opts = ConvertOptions(out=args.out, weights=args.weights, arch=args.arch, onnx=args.onnx,
                          onnx_input=_onnx_input(args), labels=_labels(args.labels), model_name=args.name,
                          calib=args.calib, calib_scales=args.calib_scales,
                          equalize=args.equalize, weight_rounding=args.weight_rounding, split_squeeze=args.split_squeeze,
                          input_type=args.input_type, output_type=args.output_type, percentile=args.percentile,
                          output_margin=args.output_margin, bias_correction=args.bias_correction,
                          check=args.check, val=args.val, val_half=args.val_half,
                          min_agreement=None if args.no_gates else args.min_agreement,
                          max_top1_drop=None if args.no_gates else args.max_top1_drop,
                          report=args.report, quiet=args.quiet, command=getattr(args, "command", None))
    try:
        report = convert(opts)
    except GateError as e:  # the missed gate is what the run ends with (its exit code), its table shown or not
        result = HeldResult()
        result.show(markdown_table(e.report))
        result.say()  # a table that could not be shown; the gate's line and exit code follow
        raise
    write_result(markdown_table(report))
    return 0
