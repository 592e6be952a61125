"""The conversion pipeline: model -> ONNX -> onnx2tf -> full-int8 TFLite -> validated artifact.

Every output is written to a temporary file and renamed into place only when the whole
conversion, validation and gates succeed, so a failed run never leaves a partial file or replaces
an earlier good artifact.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_runtime.evaluation import DatasetError, evaluate, find_labelled_images, split_by_class
from edge_runtime.fileio import atomic_write, atomic_write_many, pid_alive
from edge_runtime.labels import imagenet_classes
from edge_runtime.metadata import ModelInfo
from edge_runtime.preprocess import Preprocessing, read_image, PreprocessingError

from .calibration import DEFAULT_SCALES, load_views
from .calibration_data import default_check_dir, list_calibration_images
from .errors import ConvertError, GateError, check_stop
from .fidelity import check_views, half_figures, labelled_figures, unlabelled_figures

MIN_CALIB_IMAGES = 20
WORK_PREFIX = ".convert-"  # the working folder beside the output: .convert-PID-XXXXXXXX
_WORK_DIR = re.compile(r"^\.convert-(\d+)-[A-Za-z0-9_]+$")
WORK_BYTES, WORK_PER_FLOAT_BYTE = 48 << 20, 10  # free space a conversion needs (measured: 46 MB at most)
ROUNDING_CROPS = 96  # calibration views whose convolution inputs drive GPTQ weight rounding
HOLDOUT_EVERY = 5  # every 5th calibration image is held out to validate on unseen photos


@dataclass
class ConvertOptions:
    out: Path
    weights: str | None = None
    arch: str | None = None
    onnx: Path | None = None
    calib: Path | None = None
    check: Path | None = None  # unlabelled photos for the gates without --val (default: check_data/)
    val: Path | None = None
    val_half: str | None = None  # "tune" | "report": only that half (by class) of --val
    input_type: str = "uint8"
    output_type: str = "uint8"  # the exact score head's type (convert/head.py)
    report: Path | None = None
    min_agreement: float | None = 0.95  # fraction, top-1 agreement int8 vs float
    max_top1_drop: float | None = 1.0  # points
    equalize: float = 0.5
    percentile: float = 99.99
    output_margin: float = 2.0
    bias_correction: float = 0.5
    weight_rounding: str = "gptq"  # gptq | nearest (TFLite's own rounding)
    calib_scales: tuple[float, ...] = DEFAULT_SCALES
    preprocessing: Preprocessing | None = None  # for --onnx
    labels: list[str] | None = None  # for --onnx
    model_name: str | None = None
    quiet: bool = False


@dataclass
class Source:
    """What is being converted, with everything the artifact must carry."""

    name: str
    preprocessing: Preprocessing
    labels: list[str]
    wnids: list[str]
    sha256: str
    torch_model: object | None = None  # PixelModel-compatible float model (pixels in)
    onnx_path: Path | None = None
    extra: dict = field(default_factory=dict)


def sibling_paths(out: Path) -> tuple[Path, Path]:
    """The float ONNX and float TFLite kept beside an int8 artifact (derived from its name)."""
    stem = out.stem[:-5] if out.stem.endswith("_int8") else out.stem
    return out.with_name(f"{stem}_float.onnx"), out.with_name(f"{stem}_float.tflite")


def _progress(opts: ConvertOptions, t0: float, msg: str, check: bool = True) -> None:
    if check:
        check_stop()  # between steps: a SIGTERM whose exception was swallowed still stops the run
    if not opts.quiet:
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def _check_writable(out: Path, others: tuple[Path | None, ...] = ()) -> None:
    """Every output can be written: checked before the long work starts."""
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConvertError(f"{out}: cannot create the output folder ({e.strerror})") from None
    for path in (out, *others):
        if path is None:
            continue
        if path.is_dir():
            raise ConvertError(f"{path}: is a folder; a file path expected")
        folder = path.parent if str(path.parent) else Path(".")
        if (folder.exists() and not os.access(folder, os.W_OK)) or (path.exists() and not os.access(path, os.W_OK)):
            raise ConvertError(f"{path}: output path is not writable")


def _check_space(folder: Path, float_bytes: int) -> None:
    """Enough free space for the working folder and the outputs, before the long work starts."""
    need = WORK_BYTES + WORK_PER_FLOAT_BYTE * float_bytes
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise ConvertError(f"{folder}: {free / 1e6:.1f} MB free, about {need / 1e6:.0f} MB needed for the "
                           "conversion's working files and outputs")


def _check_numbers(opts: ConvertOptions) -> None:
    """The numeric settings are finite and in range (NaN would otherwise fail deep inside the work)."""
    ranges = {"--percentile": (opts.percentile, 50.0, 100.0), "--output-margin": (opts.output_margin, 1.0, 100.0),
              "--equalize": (opts.equalize, 0.0, 1.0), "--bias-correction": (opts.bias_correction, 0.0, 1.0),
              "--min-agreement": (opts.min_agreement, 0.0, 1.0), "--max-top1-drop": (opts.max_top1_drop, 0.0, 100.0)}
    for flag, (value, low, high) in ranges.items():
        if value is not None and not low <= value <= high:  # also false for NaN
            raise ConvertError(f"{flag} {value}: {low:g}..{high:g} expected")
    if not opts.calib_scales or not all(0.5 <= v <= 8 for v in opts.calib_scales):
        raise ConvertError(f"--calib-scales {opts.calib_scales}: scales between 0.5 and 8 expected")


def remove_stale_work_dirs(folder: Path) -> list[str]:
    """Remove working folders that conversions killed before they could clean up left in ``folder``
    (``.convert-PID-*`` whose process is gone). Returns the names removed."""
    removed = []
    for entry in folder.iterdir() if folder.is_dir() else ():
        m = _WORK_DIR.match(entry.name)
        if m and entry.is_dir() and int(m[1]) != os.getpid() and not pid_alive(int(m[1])):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed


def _load_source(opts: ConvertOptions) -> Source:
    if opts.onnx is not None:
        from .export import classifier_signature
        from .weights import sha256_file

        if not Path(opts.onnx).is_file():
            raise ConvertError(f"{opts.onnx}: ONNX file not found")
        _, size, classes = classifier_signature(Path(opts.onnx))
        _check_onnx_runs(Path(opts.onnx), size, classes)
        pp = opts.preprocessing or Preprocessing(input_size=size, resize=(round(size[0] * 256 / 224), 0),
                                                 channel_order="RGB", mean=(123.675, 116.28, 103.53),
                                                 std=(58.395, 57.12, 57.375))
        if pp.input_size != size:
            raise ConvertError(f"--input-size {pp.input_size} does not match the ONNX input {size}")
        labels = opts.labels or (list(imagenet_classes()[1]) if classes == 1000 else [str(i) for i in range(classes)])
        if len(labels) != classes:
            raise ConvertError(f"{len(labels)} labels given for a model with {classes} outputs")
        wnids = list(imagenet_classes()[0]) if classes == 1000 and not opts.labels else []
        return Source(opts.model_name or Path(opts.onnx).stem, pp, labels, wnids, sha256_file(Path(opts.onnx)),
                      onnx_path=Path(opts.onnx))
    from .pixel_model import PixelModel
    from .weights import load_model

    model, record = load_model(opts.weights or "deep-compression", opts.arch)
    return Source(opts.model_name or record.name, record.preprocessing, list(record.labels), list(record.wnids),
                  record.sha256, torch_model=PixelModel(model, record.preprocessing),
                  extra={"arch": record.arch, "weights": record.name})


def _check_onnx_runs(path: Path, size: tuple[int, int], classes: int) -> None:
    """Run the ONNX model once: it must load and give the output its graph declares (a model whose
    declared shape is false would otherwise fail after the whole conversion)."""
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        out = sess.run(None, {inp.name: np.zeros((1, 3, *size), np.float32)})[0]
    except Exception as e:  # onnxruntime raises its own types for models it cannot run
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ConvertError(f"{path}: ONNX Runtime cannot run this model ({first})") from None
    if tuple(np.shape(out)) != (1, classes):
        raise ConvertError(f"{path}: the graph declares an output of shape (1, {classes}), running it gives "
                           f"{tuple(np.shape(out))}")


def _calibration_sets(calib: Path, pp: Preprocessing) -> tuple[list[Path], list[Path], list[str]]:
    from .calibration_data import list_calibration_images

    paths, skipped = list_calibration_images(calib)
    readable = []
    for p in paths:
        try:
            read_image(str(p))
            readable.append(p)
        except PreprocessingError:
            skipped.append(f"{p.name} (unreadable image)")
    held = readable[HOLDOUT_EVERY - 1::HOLDOUT_EVERY]
    used = [p for p in readable if p not in held]
    if len(used) < MIN_CALIB_IMAGES:
        raise ConvertError(f"{calib}: {len(used)} usable calibration images after holding out every "
                           f"{HOLDOUT_EVERY}th ({len(skipped)} files skipped); at least {MIN_CALIB_IMAGES} "
                           "expected (real photos of the scenes the camera will see)")
    return used, held, skipped


def _onnx_with_normalization(src: Path, pp: Preprocessing, dest: Path) -> None:
    """Prepend a 1x1 conv that maps BGR 0..255 pixels to the user's normalized input."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    init = {i.name for i in graph.initializer}
    inp = [i for i in graph.input if i.name not in init][0]
    w = np.zeros((3, 3, 1, 1), np.float32)
    for out_c in range(3):
        in_c = 2 - out_c if pp.channel_order == "RGB" else out_c  # pixels arrive BGR
        w[out_c, in_c] = 1.0 / pp.std[out_c]
    b = -np.asarray(pp.mean, np.float32) / np.asarray(pp.std, np.float32)
    raw = "pixels"
    graph.initializer.extend([numpy_helper.from_array(w, "pixels_norm_w"), numpy_helper.from_array(b, "pixels_norm_b")])
    node = helper.make_node("Conv", [raw, "pixels_norm_w", "pixels_norm_b"], [inp.name], name="pixels_normalize")
    graph.node.insert(0, node)
    new_in = helper.make_tensor_value_info(raw, onnx.TensorProto.FLOAT, [1, 3, *pp.input_size])
    graph.input.remove(inp)
    graph.input.insert(0, new_in)
    onnx.checker.check_model(model)
    onnx.save(model, str(dest))


def _onnx_predict(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def predict(batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
        return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])

    return predict


def _int8_predict(path: Path):
    from edge_runtime.classify import Classifier

    return Classifier(path, threads=2).predict_batch


def _conv_weights(model) -> list[np.ndarray]:
    """Every convolution's weights in module order (the order of the exported graph's convolutions)."""
    from torch import nn

    return [m.weight.detach().numpy().copy() for m in model.modules() if isinstance(m, nn.Conv2d)]


def convert(opts: ConvertOptions) -> dict:
    """Run the whole pipeline; returns the report. Raises ConvertError / GateError."""
    import torch

    from .export import export_onnx
    from .equalize import equalize_from_ranges
    from .rounding import gptq_round
    from .statistics import rescale_moments, shared_statistics
    from .tflite import onnx_to_saved_model, quantize_int8
    from .calibration_data import default_calib_dir

    t0 = time.perf_counter()
    out = Path(opts.out)
    if out.suffix != ".tflite":
        raise ConvertError(f"--out {out}: a .tflite path expected")
    _check_writable(out, (*sibling_paths(out), Path(opts.report) if opts.report else None))
    for name in remove_stale_work_dirs(out.parent if str(out.parent) else Path(".")):
        _progress(opts, t0, f"removed {name}, left by a conversion that was killed")
    _check_numbers(opts)
    if opts.input_type not in ("uint8", "int8", "float32"):
        raise ConvertError(f"--input-type {opts.input_type}: uint8, int8 or float32 expected")
    if opts.output_type not in ("uint8", "int8", "float32"):
        raise ConvertError(f"--output-type {opts.output_type}: uint8, int8 or float32 expected")
    if opts.weight_rounding not in ("gptq", "nearest"):
        raise ConvertError(f"--weight-rounding {opts.weight_rounding}: gptq or nearest expected")
    rounding_summary: dict = {"weight_rounding": {"method": "nearest (TFLite's quantizer)"}}
    float_onnx_out, float_tflite_out = sibling_paths(out)
    _progress(opts, t0, "loading model")
    src = _load_source(opts)
    _check_space(out.parent if str(out.parent) else Path("."), _float_bytes(src))
    pp = src.preprocessing
    calib_dir = Path(opts.calib) if opts.calib else default_calib_dir()
    used, held, skipped = _calibration_sets(calib_dir, pp)
    crops, _ = load_views(used, pp, scales=opts.calib_scales)
    check_dir = Path(opts.check) if opts.check else default_check_dir()
    check_paths = list_calibration_images(check_dir)[0]
    if {p.resolve() for p in check_paths} & {p.resolve() for p in used}:
        raise ConvertError(f"--check {check_dir}: holds calibration photos; the check must be unseen photos")
    held_views, held_groups, _ = check_views(held, pp)
    extra_views, extra_groups, _ = check_views(check_paths, pp)
    _progress(opts, t0, f"calibration: {len(used)} images -> {len(crops)} views, {len(held)} held out, "
                        f"{len(skipped)} skipped; check: {len(held_views) + len(extra_views)} views")
    tmpdir = tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-", dir=out.parent if str(out.parent) else ".")
    try:
        work = Path(tmpdir).resolve()  # onnx2tf runs with its own working directory
        float_onnx = work / "float.onnx"
        to_tf = work / "equalized.onnx"  # float-equivalent: the float TFLite and the float reference
        rounded = None  # (weights on the int8 grid, the float weights they replace), if rounded by GPTQ
        t_conv = time.perf_counter()  # conversion: everything from here to the int8 bytes, not validation
        _progress(opts, t0, "exporting ONNX")
        if src.torch_model is not None:
            folded = src.torch_model.folded()
            export_onnx(folded, pp.input_size, float_onnx)
            x = torch.from_numpy(crops.transpose(0, 3, 1, 2).astype(np.float32))
            subset = x[::max(1, -(-len(x) // ROUNDING_CROPS))]
            _progress(opts, t0, f"calibration statistics: one pass over {len(subset)} views")
            ranges, moments = shared_statistics(folded, [subset[i:i + 16] for i in range(0, len(subset), 16)])
            eq, input_scales = folded, {}
            if opts.equalize > 0:
                eq, input_scales = equalize_from_ranges(folded, ranges, strength=opts.equalize)
            if eq is not folded:
                export_onnx(eq, pp.input_size, to_tf)
            else:
                to_tf = float_onnx
            if opts.weight_rounding == "gptq":
                _progress(opts, t0, "rounding weights onto the int8 grid (GPTQ)")
                rounded_model, rounding_summary = gptq_round(
                    eq, moments_by_name=rescale_moments(moments, eq, input_scales))
                rounded = (_conv_weights(rounded_model), _conv_weights(eq))
        else:
            _onnx_with_normalization(src.onnx_path, pp, float_onnx)
            to_tf = float_onnx
        _progress(opts, t0, "onnx2tf: ONNX -> TensorFlow")
        saved_model, float_tflite = onnx_to_saved_model(to_tf, work / "tf", crops)
        _progress(opts, t0, "calibrating and quantizing to int8")
        int8, cal_summary = quantize_int8(saved_model, crops, opts.input_type, opts.percentile, opts.output_margin,
                                          bias_correction=opts.bias_correction, log_path=work / "tflite.log",
                                          progress=lambda m: _progress(opts, t0, m), rounded=rounded)
        from .artifact import rgb_input, finish_artifact
        from .head import score_head

        int8, output = score_head(int8, opts.output_type)
        try:
            int8, order = rgb_input(int8), "RGB"  # stock clients (MediaPipe) feed RGB
        except ConvertError as e:  # a graph whose input feeds more than convolutions keeps BGR
            order, output = "BGR", {**output, "note": f"input kept BGR: {e}"}
        conversion_s = time.perf_counter() - t_conv
        calibration = {"images": len(used), "views": int(len(crops)), "held_out": len(held),
                       "skipped": len(skipped), "folder": calib_dir.name,
                       "equalization_strength": opts.equalize if src.torch_model is not None else 0.0,
                       **rounding_summary, **cal_summary}
        info = ModelInfo(preprocessing=pp, labels=src.labels, model_name=src.name, input_dtype=opts.input_type,
                         input_channel_order=order, wnids=src.wnids,
                         extra={"weights_sha256": src.sha256, "calibration": calibration, "output": output,
                                "quantization": {"weights": "int8 per-channel", "activations": "int8",
                                                 "output": f"{opts.output_type} exact score head"}, **src.extra})
        candidate = work / "candidate.tflite"
        candidate.write_bytes(finish_artifact(int8, info))
        _progress(opts, t0, "validating int8 against float")
        f_pred, q_pred = _onnx_predict(float_onnx), _int8_predict(candidate)
        validation: dict = {}
        all_views = np.concatenate([held_views, extra_views])
        f_check, q_check = f_pred(all_views), q_pred(all_views)
        validation["unlabelled"] = {"folders": [calib_dir.name + f" (every {HOLDOUT_EVERY}th, held out)",
                                                check_dir.name],
                                    **unlabelled_figures(f_check, q_check, held_groups + extra_groups)}
        if len(held_views):
            k = len(held_views)
            validation["calibration_holdout"] = {"images": len(held),
                                                 **unlabelled_figures(f_check[:k], q_check[:k], held_groups)}
        if opts.val:
            try:
                images = find_labelled_images(opts.val, src.wnids, src.labels)
                if opts.val_half:
                    images = split_by_class(images, opts.val_half)
                fr = evaluate(images, f_pred, pp, keep_scores=True, progress=not opts.quiet)
                qr = evaluate(images, q_pred, pp, keep_scores=True, progress=not opts.quiet)
            except DatasetError as e:
                raise ConvertError(f"--val: {e}") from None
            validation["val"] = {"folder": Path(opts.val).name, "half": opts.val_half or "all",
                                 "skipped": fr.n_skipped, "float_top5": round(fr.top5, 3),
                                 "int8_top5": round(qr.top5, 3),
                                 **labelled_figures(fr.scores, qr.scores, fr.targets)}
            if not opts.val_half:
                validation["val"]["halves"] = half_figures(fr.scores, qr.scores, fr.targets)
        final = finish_artifact(int8, dataclasses.replace(info, extra={**info.extra, "validation": validation}))
        report = {"model": src.name, "out": str(out), "input_type": opts.input_type, "output_type": opts.output_type,
                  "sizes": {"float_onnx": float_onnx.stat().st_size, "float_tflite": float_tflite.stat().st_size,
                            "int8_tflite": len(final)},
                  "conversion_seconds": round(conversion_s, 1),
                  "total_seconds": round(time.perf_counter() - t0, 1),
                  "calibration": calibration, "validation": validation,
                  "gates": _gates(opts, validation)}
        if opts.report:
            atomic_write(Path(opts.report), (json.dumps(report, indent=2) + "\n").encode())
        if report["gates"]["failed"]:
            raise GateError("; ".join(report["gates"]["failed"]) + f" (report: {opts.report or 'not written'})")
        # the artifact and its float siblings are replaced together or not at all
        check_stop()
        atomic_write_many({float_onnx_out: float_onnx.read_bytes(), float_tflite_out: float_tflite.read_bytes(),
                           out: final})
    finally:  # also on SIGTERM (the command line turns it into an exception) and Ctrl-C
        shutil.rmtree(tmpdir, ignore_errors=True)
    _progress(opts, t0, f"wrote {out} ({len(final)} bytes)", check=False)
    return report


def _float_bytes(src: Source) -> int:
    """Bytes of the float weights being converted (drives the free space a conversion needs)."""
    if src.torch_model is not None:
        return sum(p.numel() * 4 for p in src.torch_model.parameters())
    return Path(src.onnx_path).stat().st_size


def _gates(opts: ConvertOptions, validation: dict) -> dict:
    failed = []
    figures = validation.get("val") or validation.get("unlabelled") or {}
    if opts.min_agreement is not None and figures:
        if figures["agreement"] < 100 * opts.min_agreement:
            failed.append(f"top-1 agreement {figures['agreement']:.1f}% < {100 * opts.min_agreement:.1f}%")
    if opts.max_top1_drop is not None and "top1_drop" in figures:
        if figures["top1_drop"] > opts.max_top1_drop:
            failed.append(f"top-1 drop {figures['top1_drop']:.2f} points > {opts.max_top1_drop:.2f}")
    return {"min_agreement": opts.min_agreement, "max_top1_drop": opts.max_top1_drop, "failed": failed,
            "passed": not failed}


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
        rows += [f"| top-1 float / int8 | {v['float_top1']:.1f}% / {v['int8_top1']:.1f}% |",
                 f"| top-5 float / int8 | {v['float_top5']:.1f}% / {v['int8_top5']:.1f}% |",
                 f"| top-1 drop ({v['images']} images) | {_with_ci(v, 'top1_drop', ' points')} |",
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
    rows.append(f"| gates | {'passed' if report['gates']['passed'] else 'FAILED: ' + '; '.join(report['gates']['failed'])} |")
    return "\n".join(rows)
