"""The conversion: source -> float graphs -> int8 model -> validation -> artifact, each stage a module.

    stage           module                  output
    source          convert/source.py       Source (model, labels, preprocessing, hash); CalibrationSet
                    convert/calibration.py  (calibration views, held-out photos); CheckViews (validate.py)
    float graphs    convert/float_graphs.py FloatGraphs (reference and equalized + split ONNX, GPTQ-rounded weights)
    quantize        convert/quantize.py     Int8Model (int8 bytes, float TFLite, calibration summary)
    validate        convert/validate.py     validation figures, and the gates' verdict on them
    write           convert/artifact.py     FinishedGraph (exact score head, RGB input); the artifact
                                            (records, standard metadata, labels, checksum) and its float
                                            TFLite sibling finished the same way; here: the artifact and
                                            its float siblings replaced together, or not at all

Everything is checked before the long work starts (outputs writable, free space, settings in range);
a failed or interrupted run leaves no partial file and never replaces an earlier good artifact.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.evaluation import shows_top5
from edge_runtime.fileio import atomic_write_many, same_file

from .artifact import artifact_record, finish_artifact, finish_graph, float_onnx_sibling, float_sibling
from .calibration import DEFAULT_SCALES, calibration_set
from .calibration_data import default_calib_dir, default_check_dir
from .errors import ConvertError, GateError, check_stop
from .outputs import check_no_clash, check_output_path
from .provenance import digests, environment
from .float_graphs import float_graphs
from .quantize import QuantizeSettings, quantize
from .source import OnnxInput, float_bytes, load_source
from .validate import Gates, labelled_images, unlabelled_views, validate
from .workdir import remove_stale_work_dirs, work_dir

WORK_BYTES, WORK_PER_FLOAT_BYTE = 48 << 20, 10  # free space a conversion needs (measured: 46 MB at most)


@dataclass
class ConvertOptions:
    """Everything a conversion is told, grouped by the stage that uses it."""

    out: Path
    # source
    weights: str | None = None
    arch: str | None = None
    onnx: Path | None = None
    onnx_input: OnnxInput | None = None  # with onnx: its preprocessing (None fields: the ONNX defaults)
    labels: list[str] | None = None  # with onnx
    model_name: str | None = None
    # calibration (default: the weights' own photos, else the converter's calib_data/)
    calib: Path | None = None
    calib_scales: tuple[float, ...] = DEFAULT_SCALES
    # float graphs
    equalize: float = 0.5
    weight_rounding: str = "gptq"  # gptq | nearest (TFLite's own rounding)
    split_squeeze: int = 1  # first fires whose squeeze output gets a 2x finer int8 grid (convert/split_squeeze.py)
    # quantize
    input_type: str = "uint8"
    output_type: str = "uint8"  # the exact score head's type (convert/head.py)
    percentile: float = 99.99
    output_margin: float = 2.0
    bias_correction: float = 0.5
    # validate: unlabelled views (held-out photos + check), and labelled images (default: the weights' own)
    check: Path | None = None  # unlabelled photos for the gates without --val (default: check_data/)
    val: Path | None = None
    val_half: str | None = None  # "tune" | "report": only that half (by class) of --val
    min_agreement: float | None = Gates.min_agreement  # fraction, top-1 agreement int8 vs float
    max_top1_drop: float | None = Gates.max_top1_drop  # points
    # output
    report: Path | None = None
    quiet: bool = False
    command: list[str] | None = None  # the command line's arguments, recorded in the report

    def quantize_settings(self) -> QuantizeSettings:
        return QuantizeSettings(self.input_type, self.percentile, self.output_margin, self.bias_correction)

    def gates(self) -> Gates:
        return Gates(self.min_agreement, self.max_top1_drop)


class Progress:
    """Progress lines on stderr with the seconds since the start (silent when ``quiet``); between the
    steps it also stops the run when a SIGTERM arrived (see :func:`convert.errors.check_stop`)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet, self.t0 = quiet, time.perf_counter()

    def __call__(self, message: str, check: bool = True) -> None:
        if check:
            check_stop()
        if not self.quiet:
            print(f"[{time.perf_counter() - self.t0:6.1f}s] {message}", file=sys.stderr, flush=True)


def convert(opts: ConvertOptions) -> dict:
    """Run the stages; returns the report.

    Raises:
        ConvertError: bad options or inputs; GateError (carrying the report) when a gate is missed.
    """
    progress = Progress(opts.quiet)
    out = check_options(opts, progress)
    progress("loading model")
    src = load_source(opts.weights, opts.arch, opts.onnx, opts.onnx_input, opts.labels, opts.model_name)
    check_space(out.parent, float_bytes(src))
    for flag, what, given, recorded in (("--calib", "calibration", opts.calib, src.calib_dir),
                                        ("--val", "labelled validation", opts.val, src.val_dir)):
        if given is None and recorded is not None and not recorded.is_dir():  # a training run's, moved or gone
            raise ConvertError(f"{opts.weights}: its {what} folder {recorded} is not found (neither beside it): "
                               f"pass {flag} DIR, photos of the model's classes")
    val = opts.val or src.val_dir
    val_images = labelled_images(Path(val), src, opts.val_half) if val else None  # refused before the work
    calib = calibration_set(Path(opts.calib or src.calib_dir or default_calib_dir()), src.preprocessing,
                            opts.calib_scales)
    check = unlabelled_views(calib, Path(opts.check or default_check_dir()), src.preprocessing)
    progress(f"calibration: {len(calib.images)} images -> {len(calib.views)} views, {len(calib.held_out)} held "
             f"out, {len(calib.skipped)} skipped; check: {len(check.views)} views")
    # also removed on SIGTERM (the command line turns it into an exception) and Ctrl-C
    with work_dir(out.parent) as work:  # onnx2tf runs with its own working directory: absolute paths
        # TensorFlow's and TFLite's own lines: with --quiet into a log in the working folder; without, their
        # start-up and information lines dropped (a failure is still one line, raised after the redirect ends)
        with native_stderr_to(work / "tensorflow.log", show=not opts.quiet):
            t_conv = time.perf_counter()  # conversion: everything from here to the int8 bytes, not validation
            graphs = float_graphs(src, calib.views, work, opts.equalize, opts.weight_rounding,
                                  opts.split_squeeze, progress)
            int8 = quantize(graphs, calib.views, work, opts.quantize_settings(), progress)
            graph = finish_graph(int8.tflite, opts.output_type)
            conversion_s = time.perf_counter() - t_conv
            calibration = {**calib.summary(), **graphs.summary, **int8.summary}
            siblings = sibling_record(out)

            def record(validation: dict | None = None):
                return artifact_record(src, graph, opts.input_type, opts.output_type, calibration, validation,
                                       siblings)

            candidate = work / "candidate.tflite"
            candidate.write_bytes(finish_artifact(graph.tflite, record()))
            progress("validating int8 against float")
            validation = validate(graphs.reference, candidate, src, check, val, opts.val_half, opts.quiet,
                                  val_images, progress)
        final = finish_artifact(graph.tflite, record(validation))
        float_tflite = float_sibling(int8.float_tflite.read_bytes(), src, out.name)
        float_onnx = float_onnx_sibling(graphs.reference, src, out.name)
        report = {"model": src.name, "classes": len(src.labels), "out": str(out), "input_type": opts.input_type,
                  "output_type": opts.output_type,
                  "sizes": {"float_onnx": len(float_onnx),
                            "float_tflite": len(float_tflite), "int8_tflite": len(final)},
                  "conversion_seconds": round(conversion_s, 1),
                  "total_seconds": round(time.perf_counter() - progress.t0, 1),
                  "calibration": calibration, "validation": validation, "gates": opts.gates().judge(validation),
                  "command": opts.command, "environment": environment()}
        if not report["gates"]["failed"]:  # the outputs it writes (a missed gate writes none)
            report["sha256"] = digests({"int8_tflite": final, "float_tflite": float_tflite, "float_onnx": float_onnx})
        report_file = {Path(opts.report): (json.dumps(report, indent=2) + "\n").encode()} if opts.report else {}
        if report["gates"]["failed"]:
            if report_file:
                atomic_write_many(report_file)
            hint = "" if validation.get("val") else OWN_CHECK_HINT if opts.check else UNLABELLED_HINT
            raise GateError("; ".join(report["gates"]["failed"]) + f" (report: {opts.report or 'not written'})"
                            + hint, report)
        write_artifact(out, final, float_onnx, float_tflite, report_file)
    progress(f"wrote {out} ({len(final)} bytes)", check=False)
    return report


# A gate missed on the unlabelled check views: those photos are less decided than most (their plain agreement
# runs a few points under a labelled set's), so say how to judge on photos like the user's own.
UNLABELLED_HINT = ("; judged without labels on the check photos: judge on photos like yours with --val DIR (labelled) "
                   "or `convert tflite --check DIR` (unlabelled)")
OWN_CHECK_HINT = "; judged without labels on the --check photos: --val DIR judges on labelled photos like yours"


def check_int8_out(path: str | Path, flag: str = "--out") -> Path:
    """A conversion's .tflite output and its float siblings can be written (checked before the long work:
    by the converter, and by train and compress before theirs when they end with one).

    Raises:
        ConvertError: not a .tflite path, or an output that cannot be written.
    """
    out = Path(path)
    if out.suffix != ".tflite":
        raise ConvertError(f"{flag} {out}: a .tflite path expected")
    check_writable(out, sibling_paths(out))
    return out


def to_int8(weights: Path, out: Path, val: Path | None, quiet: bool, min_agreement: float = Gates.min_agreement,
            max_top1_drop: float = Gates.max_top1_drop, report: Path | None = None) -> dict:
    """``weights`` through the converter with its default settings and the given gates (validated on ``val``,
    else the weights' own validation folder); its figures for the calling command's report (``report``, the
    path a missed gate's message names).

    Raises:
        ConvertError: as :func:`convert`; GateError when a gate is missed (nothing is written), its ``report``
            these same figures, for the calling command's report.
    """
    if not quiet:
        print(f"{weights} -> int8 TFLite (the converter's defaults and gates)", file=sys.stderr, flush=True)
    try:
        conv = convert(ConvertOptions(out=out, weights=str(weights), val=val, quiet=quiet,
                                      min_agreement=min_agreement, max_top1_drop=max_top1_drop))
    except GateError as e:  # the conversion writes no report of its own here: the calling command's holds it
        raise GateError(str(e).replace("(report: not written)", f"(report: {report or 'not written'})"),
                        _int8_figures(e.report, out)) from None
    return _int8_figures(conv, out)


def _int8_figures(conv: dict, out: Path) -> dict:
    """The part of a conversion report (:func:`convert`'s) that ``train``/``compress --tflite`` report."""
    v = conv["validation"].get("val", {})
    return {"out": str(out), "bytes": conv["sizes"]["int8_tflite"], "top1": v.get("int8_top1"),
            "top1_float": v.get("float_top1"), "top1_drop": v.get("top1_drop"),
            "agreement": v.get("agreement"), "halves": v.get("halves"),
            "unlabelled": conv["validation"].get("unlabelled"), "gates": conv["gates"]}


# What TensorFlow and TFLite write on every conversion, to nobody's use: absl's note and its INFO lines
# (oneDNN "slightly different numerical results", "Could not find cuda drivers", the CPU's instructions),
# TFLite's XNNPACK line and the quantizer's settings. Their warnings and errors (W, E, F lines) are kept.
NATIVE_NOISE = (r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
                r"|I\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] .*"
                r"|To enable the following instructions: .*"
                r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\."
                r"|fully_quantize: \d+, inference_type: .*")

# The filter between file descriptor 2 and the real stderr: a process of its own, so that it still passes
# on a library's last line when that library aborts this one (it ends at end of input, not at a signal:
# Ctrl-C and SIGTERM reach the whole process group, and this process then says why it stopped through it).
_FILTER = """
import os, re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
noise, out = re.compile(sys.argv[1].encode()), True
for line in sys.stdin.buffer:
    if out and not noise.fullmatch(line.rstrip(b"\\r\\n")):
        try:
            while line:
                line = line[os.write(1, line):]
        except OSError:  # a reader that left: keep reading, so that the converter never blocks on it
            out = False
"""


@contextlib.contextmanager
def native_stderr_to(log_path: Path, show: bool = False):
    """Send what C++ libraries write to file descriptor 2 (not only Python's sys.stderr) to ``log_path``;
    with ``show``, through a filter to the real stderr instead, which drops :data:`NATIVE_NOISE` and passes
    everything else (Python's own lines, the libraries' warnings and errors) as it is written."""
    if sys.__stderr__ is None:  # started without a stderr (2>&-): fd 2 may be any file opened since
        yield
        return
    import subprocess

    with contextlib.suppress(AttributeError, OSError, ValueError):
        sys.stderr.flush()
    saved = os.dup(2)
    child = None
    try:
        if show:
            try:
                child = subprocess.Popen([sys.executable, "-I", "-S", "-c", _FILTER, NATIVE_NOISE],
                                         stdin=subprocess.PIPE, stdout=saved, stderr=saved)
            except OSError:  # no process to be had (out of processes or memory): every line, as before
                yield
                return
            target = child.stdin
        else:
            target = open(log_path, "ab")
        with target:
            os.dup2(target.fileno(), 2)
            try:
                yield
            finally:
                with contextlib.suppress(AttributeError, OSError, ValueError):
                    sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        if child:  # its input has ended (unless a process started in the block holds it): it passes on what
            with contextlib.suppress(subprocess.TimeoutExpired):  # it holds before the caller's next line, also
                child.wait(timeout=5)  # after an error or a signal (`terminated (SIGTERM)` came first)
        os.close(saved)


def check_options(opts: ConvertOptions, progress: Progress) -> Path:
    """The output path, after checking everything that can be checked before the long work: the
    outputs can be written, settings are in range; working folders of killed runs are removed.

    Raises:
        ConvertError: not a .tflite path, an output that cannot be written, a setting out of range.
    """
    check_onnx_not_sibling(opts.onnx, Path(opts.out))
    check_no_clash([*int8_outputs(Path(opts.out)), ("--report", opts.report)],
                   [("--weights", weights_file(opts.weights)), ("--onnx", opts.onnx), ("--calib", opts.calib),
                    ("--check", opts.check), ("--val", opts.val)])
    out = check_int8_out(opts.out, "--out")
    if opts.report:
        check_output_path(opts.report, "--report")
    for name in remove_stale_work_dirs(out.parent):
        progress(f"removed {name}, left by a conversion that was killed")
    ranges = {"--percentile": (opts.percentile, 50.0, 100.0), "--output-margin": (opts.output_margin, 1.0, 100.0),
              "--equalize": (opts.equalize, 0.0, 1.0), "--bias-correction": (opts.bias_correction, 0.0, 1.0)}
    for flag, (value, low, high) in ranges.items():
        if value is not None and not low <= value <= high:  # also false for NaN
            raise ConvertError(f"{flag} {value}: {low:g}..{high:g} expected")
    check_gates(opts.min_agreement, opts.max_top1_drop)
    if not opts.calib_scales or not all(0.5 <= v <= 8 for v in opts.calib_scales):
        raise ConvertError(f"--calib-scales {opts.calib_scales}: scales between 0.5 and 8 expected")
    if opts.input_type not in ("uint8", "int8", "float32"):
        raise ConvertError(f"--input-type {opts.input_type}: uint8, int8 or float32 expected")
    if opts.output_type not in ("uint8", "int8", "float32"):
        raise ConvertError(f"--output-type {opts.output_type}: uint8, int8 or float32 expected")
    if opts.weight_rounding not in ("gptq", "nearest"):
        raise ConvertError(f"--weight-rounding {opts.weight_rounding}: gptq or nearest expected")
    if not 0 <= opts.split_squeeze <= 8:
        raise ConvertError(f"--split-squeeze {opts.split_squeeze}: 0..8 expected")
    if opts.val is not None and not Path(opts.val).is_dir():  # its labels are checked once the classes are known
        raise ConvertError(f"--val {opts.val}: not a folder of labelled images")
    return out


def check_gates(min_agreement: float | None, max_top1_drop: float | None) -> None:
    """The gates are in range (checked before the work: ``train`` and ``compress`` before theirs).

    Raises:
        ConvertError: naming the flag, e.g. ``--min-agreement 95.0: 0..1 expected`` (a fraction).
    """
    for flag, value, high in (("--min-agreement", min_agreement, 1.0), ("--max-top1-drop", max_top1_drop, 100.0)):
        if value is not None and not 0.0 <= value <= high:  # also false for NaN
            raise ConvertError(f"{flag} {value}: 0..{high:g} expected")


def check_writable(out: Path, others: tuple[Path | None, ...] = ()) -> None:
    """Every output can be written (its folder is created if missing)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConvertError(f"{out}: cannot create the output folder ({e.strerror})") from None
    for path in (out, *others):
        if path is not None:
            check_output_path(path)


def check_space(folder: Path, float_weight_bytes: int) -> None:
    """Enough free space for the working folder and the outputs."""
    need = WORK_BYTES + WORK_PER_FLOAT_BYTE * float_weight_bytes
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise ConvertError(f"{folder}: {free / 1e6:.1f} MB free, about {need / 1e6:.0f} MB needed for the "
                           "conversion's working files and outputs")


def sibling_paths(out: Path) -> tuple[Path, Path]:
    """The float ONNX and float TFLite kept beside an int8 artifact (named after it)."""
    stem = out.stem[:-5] if out.stem.endswith("_int8") else out.stem
    return out.with_name(f"{stem}_float.onnx"), out.with_name(f"{stem}_float.tflite")


def int8_outputs(out: Path, flag: str = "--out") -> list[tuple[str, Path]]:
    """The files a conversion to ``out`` writes, named for :func:`convert.outputs.check_no_clash` (``out``
    alone when it is no .tflite path: :func:`check_int8_out` refuses it then)."""
    if Path(out).suffix != ".tflite":
        return [(flag, out)]
    onnx_path, tflite_path = sibling_paths(out)
    return [(flag, out), (f"the float ONNX beside {flag}", onnx_path), (f"the float TFLite beside {flag}", tflite_path)]


def weights_file(weights: str | Path | None) -> Path | None:
    """``--weights`` when it names a file (not a named source such as deep-compression)."""
    return Path(weights) if weights is not None and Path(weights).exists() else None


def check_onnx_not_sibling(onnx: Path | None, out: Path) -> None:
    """``--onnx X_float.onnx`` (a float sibling the converter wrote) with the ``--out`` it was written beside
    would replace the input with the new sibling: refused, naming an ``--out`` whose siblings are other files.

    Raises:
        ConvertError: the float ONNX beside ``out`` is the ``onnx`` file.
    """
    if onnx is None or out.suffix != ".tflite":  # (no .tflite path: check_int8_out says so)
        return
    onnx_path = sibling_paths(out)[0]
    if not same_file(onnx, onnx_path):
        return
    stem = onnx_path.stem[:-6] if onnx_path.stem.endswith("_float") else onnx_path.stem
    raise ConvertError(f"--out {out}: its float ONNX sibling {onnx_path} is the --onnx input (it would be "
                       f"replaced); choose another --out, e.g. --out {out.with_name(f'{stem}_onnx_int8.tflite')}")


def sibling_record(out: Path) -> dict[str, str]:
    """The siblings' file names as the artifact records them (benchmarks find the float models by them)."""
    onnx_path, tflite_path = sibling_paths(out)
    return {"float_onnx": onnx_path.name, "float_tflite": tflite_path.name}


def write_artifact(out: Path, artifact: bytes, float_onnx: bytes, float_tflite: bytes,
                   report: dict[Path, bytes] | None = None) -> None:
    """The artifact, its float siblings (finished by :func:`convert.artifact.float_sibling` and
    :func:`convert.artifact.float_onnx_sibling`) and its report (``{path: bytes}``), replaced together or not at
    all (two successful conversions into one folder at once leave one's whole set, never one's report beside the
    other's artifact; a missed gate writes its report alone)."""
    check_stop()
    onnx_out, tflite_out = sibling_paths(out)
    atomic_write_many({**(report or {}), onnx_out: float_onnx, tflite_out: float_tflite, out: artifact})


def _with_ci(figures: dict, key: str, unit: str) -> str:
    ci = figures.get(f"{key}_ci95")
    return f"{figures[key]:.1f}{unit}" + (f" (95% CI {ci[0]:.1f} to {ci[1]:.1f})" if ci else "")


def markdown_table(report: dict) -> str:
    """A short Markdown summary of a conversion report."""
    rows = ["| figure | value |", "| --- | --- |"]
    s = report["sizes"]
    rows += [f"| int8 .tflite | {s['int8_tflite']:,} bytes |", f"| float .tflite | {s['float_tflite']:,} bytes |",
             f"| conversion time | {report['conversion_seconds']} s |"]
    v = report["validation"].get("val")
    if v:
        rows += [f"| top-1 float / int8 | {v['float_top1']:.1f}% / {v['int8_top1']:.1f}% |"]
        if shows_top5(report["classes"]):
            rows += [f"| top-5 float / int8 | {v['float_top5']:.1f}% / {v['int8_top5']:.1f}% |"]
        rows += [f"| top-1 drop ({v['images']} images) | {_with_ci(v, 'top1_drop', ' points')} |",
                 f"| top-1 agreement ({v['images']} images) | {_with_ci(v, 'agreement', '%')} |",
                 f"| logit error mean / max | {v['mean_abs_logit_error']:.3f} / {v['max_abs_logit_error']:.3f} |"]
        for half, h in v.get("halves", {}).items():
            if half in ("tune", "report"):
                rows.append(f"| {half} half ({h['images']} images): agreement / top-1 drop | "
                            f"{_with_ci(h, 'agreement', '%')} / {_with_ci(h, 'top1_drop', ' points')} |")
    u = report["validation"].get("unlabelled")
    if u:
        rows.append(f"| agreement on {u['views']} unlabelled views ({u['groups']} photos or clips never used "
                    f"for calibration) | {_with_ci(u, 'agreement', '%')} |")
        if u.get("standardized"):
            rows.append(f"| the same, weighted to the weights' own photos' mix of near-ties (what the gates judge "
                        f"without --val) | {_with_ci(u['standardized'], 'agreement', '%')} |")
    rows.append(f"| gates | {gates_text(report['gates'])} |")
    return "\n".join(rows)


def gates_text(gates: dict) -> str:
    """The gates' verdict in a few words: passed, FAILED and what, or not applied and what the default gates
    would have missed (a report written before ``applied`` existed reads as applied)."""
    if gates.get("applied", True):
        return "passed" if gates["passed"] else "FAILED: " + "; ".join(gates["failed"])
    missed = gates.get("default_missed") or []
    return "not applied (--no-gates); " + ("the default gates would have failed: " + "; ".join(missed) if missed
                                            else "the default gates would have passed")
