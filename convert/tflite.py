"""ONNX -> TensorFlow (onnx2tf, offline) -> fully int8 TFLite (the TFLite converter's integer path)."""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from edge_runtime.evaluation import progress_every

from .errors import ConvertError

# onnx2tf fetches this file from the network for image-shaped inputs unless it is in the working
# directory; we always write it there (from the calibration photos), so conversion never goes online.
ONNX2TF_SAMPLE = "calibration_image_sample_data_20x128x128x3_float32.npy"
BIAS_CORRECTION_CROPS = 96
CALIBRATOR_CROPS = 8
# onnx2tf writes a ceil-mode max pool whose windows overhang the input as PADV2 (with the lowest float)
# + MAX_POOL_2D; those pad values are no activation and must not set a range (SqueezeNet v1.0 at 32x32:
# fire4's range became -3.4e38..x, scale 1.3e36, and XNNPACK refused the model).
PAD_SENTINEL = 1e30


@contextlib.contextmanager
def _quiet_cwd(workdir: Path, log_path: Path):
    """Run in ``workdir`` with stdout/stderr (onnx2tf and TF are chatty) sent to a log file."""
    old = os.getcwd()
    os.chdir(workdir)
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            yield
        finally:
            os.chdir(old)


def write_onnx2tf_sample(workdir: Path, crops: np.ndarray) -> None:
    """onnx2tf's sample file: 20x128x128x3 float32 in 0..1, made from our own calibration crops."""
    import cv2

    picks = [crops[i % len(crops)] for i in range(20)]
    small = np.stack([cv2.resize(c, (128, 128), interpolation=cv2.INTER_AREA) for c in picks])
    np.save(workdir / ONNX2TF_SAMPLE, small.astype(np.float32) / 255.0)


def onnx_to_saved_model(onnx_path: Path, workdir: Path, crops: np.ndarray) -> tuple[Path, Path]:
    """Convert with onnx2tf inside ``workdir``; returns (saved_model dir, float32 .tflite).

    Raises:
        ConvertError: onnx2tf failed (the last line of its log is quoted).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    limit = sys.getrecursionlimit()
    import onnx2tf  # sets the recursion limit to 2**31 - 1 for the whole process (its graph walks recurse)

    sys.setrecursionlimit(2**31 - 1)
    try:
        return _onnx2tf(onnx2tf, onnx_path, workdir, crops)
    finally:  # for its conversion only: beyond it a deep recursion should be a RecursionError, not a crash
        sys.setrecursionlimit(limit)


def _onnx2tf(onnx2tf, onnx_path: Path, workdir: Path, crops: np.ndarray) -> tuple[Path, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    write_onnx2tf_sample(workdir, crops)
    out_dir = workdir / "saved_model"
    log_path = workdir / "onnx2tf.log"
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    # Keras numbers its layers per process ("model_3/tf.nn.relu_51"); those names end up in the file, so
    # a second conversion in one process would differ in bytes from the first: start every run afresh.
    import tf_keras

    tf_keras.backend.clear_session()
    float_path = out_dir / f"{onnx_path.stem}_float32.tflite"
    try:
        with _quiet_cwd(workdir, log_path):
            # onnx2tf builds the Keras model; its own saving would also write a float16 TFLite nobody reads
            # (a third of its time), so the two outputs used here are written as onnx2tf writes them
            model = onnx2tf.convert(input_onnx_file_path=str(onnx_path.resolve()), output_folder_path=str(out_dir),
                                    output_signaturedefs=True, not_use_onnxsim=True, verbosity="error",
                                    disable_model_save=True)
            _write_saved_model(model, out_dir)
            float_path.write_bytes(_float_tflite(out_dir))
    except (Exception, SystemExit) as e:  # onnx2tf raises bare exceptions and sys.exit()s on errors
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] if log_path.exists() else []
        raise ConvertError(f"onnx2tf could not convert {onnx_path.name}: {e!r} {' '.join(tail)[:300]}") from None
    if not (out_dir / "saved_model.pb").exists() or not float_path.exists():
        raise ConvertError(f"onnx2tf wrote no SavedModel / float TFLite into {out_dir}")
    return out_dir, float_path


def _write_saved_model(model, out_dir: Path) -> None:
    """The SavedModel with its ``serving_default`` signature, as onnx2tf's ``output_signaturedefs`` writes it."""
    import tensorflow as tf
    import tf_keras

    def outputs(*inputs):  # named as the Keras model's outputs (the ONNX graph's), not "output_0"
        y = model(inputs)
        return dict(zip(model.output_names, y if isinstance(y, (list, tuple)) else [y]))

    archive = tf_keras.export.ExportArchive()
    archive.add_endpoint(name="serving_default", fn=outputs,
                         input_signature=[tf.TensorSpec(t.shape, t.dtype, t.name) for t in model.inputs])
    archive.write_out(str(out_dir))


def _float_tflite(saved_model: Path) -> bytes:
    """The float32 TFLite, with onnx2tf's settings (builtins, TF ops allowed), from the SavedModel just
    written (onnx2tf converts its Keras model, which saves that model once more)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    converter.unfold_batchmatmul = False
    return bytes(converter.convert())


def _calibrate(saved_model: Path, crops: np.ndarray, log) -> bytes:
    """The float model annotated with the TFLite calibrator's min/max statistics."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    # set_ranges replaces every statistic, so a few crops suffice to create the annotated model
    few = crops[::max(1, len(crops) // CALIBRATOR_CROPS)][:CALIBRATOR_CROPS]
    converter.representative_dataset = lambda: ([c[None].astype(np.float32)] for c in few)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter._experimental_calibrate_only = True  # noqa: SLF001 (documented TF hook for custom ranges)
    with contextlib.redirect_stdout(log):
        return bytes(converter.convert())


def _output_chain(sg, model) -> set[int]:
    """Output tensors plus the tensors feeding them through shape-only ops (they share one scale)."""
    from tensorflow.lite.tools import flatbuffer_utils

    chain = set(int(i) for i in sg.outputs)
    changed = True
    while changed:
        changed = False
        for op in sg.operators:
            name = flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)
            if name in ("RESHAPE", "SQUEEZE") and any(int(o) in chain for o in op.outputs):
                if int(op.inputs[0]) not in chain:
                    chain.add(int(op.inputs[0]))
                    changed = True
    return chain


def set_ranges(calibrated: bytes, crops: np.ndarray, percentile: float, output_margin: float,
               progress: Callable[[str], None] | None = None) -> tuple[bytes, dict]:
    """Replace min/max statistics: each activation's max (min) becomes the largest (smallest)
    per-image ``percentile`` (100 - ``percentile``) over the calibration crops (trims single-pixel
    outliers, keeps every image's bulk); the output logits keep their full range widened by
    ``output_margin`` (photos from a camera are often more confident than calibration photos, and
    a clipped logit ties); the input is pixels, 0..255 by definition.
    """
    import tensorflow as tf
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    sg = model.subgraphs[0]
    stat = [i for i, t in enumerate(sg.tensors)
            if t.quantization is not None and t.quantization.min is not None and len(t.quantization.min) == 1]
    inputs = {int(i) for i in sg.inputs}
    outputs = _output_chain(sg, model)
    interp = tf.lite.Interpreter(model_content=calibrated, experimental_preserve_all_tensors=True, num_threads=2)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]["index"]
    # the largest per-image upper percentile and the smallest lower one so far (0 where none: the
    # range is widened to include 0 below anyway)
    hi = np.zeros(len(stat))
    lo = np.zeros(len(stat))
    top = np.zeros(len(stat))
    bottom = np.zeros(len(stat))
    every = progress_every(len(crops))
    for k, crop in enumerate(crops):
        interp.set_tensor(inp, crop[None].astype(np.float32))
        interp.invoke()
        for j, i in enumerate(stat):
            v = interp.get_tensor(i).ravel()
            v = v[np.abs(v) < PAD_SENTINEL]
            if not v.size:
                continue
            v_max, v_min = float(v.max()), float(v.min())
            top[j] = max(top[j], v_max)
            bottom[j] = min(bottom[j], v_min)
            if v_max <= hi[j] and v_min >= lo[j]:
                continue  # this image's percentiles lie inside its min..max, so inside the range found
            if v.size > 50_000:  # a fixed stride keeps it deterministic and fast
                v = v[:: v.size // 50_000]
            v_lo, v_hi = np.percentile(v, (100 - percentile, percentile))
            lo[j], hi[j] = min(lo[j], v_lo), max(hi[j], v_hi)
        if progress and ((k + 1) % every == 0 or k + 1 == len(crops)):  # and the last, as the other passes
            progress(f"range statistics {k + 1}/{len(crops)}")
    del interp
    changed = 0
    for j, i in enumerate(stat):
        q = sg.tensors[i].quantization
        if i in inputs:
            new_min, new_max = 0.0, 255.0
        elif i in outputs:
            new_min, new_max = bottom[j] * output_margin, top[j] * output_margin
        else:
            new_min, new_max = lo[j], hi[j]
        q.min = np.array([min(new_min, 0.0)], np.float32)
        q.max = np.array([max(new_max, 1e-6)], np.float32)
        changed += 1
    summary = {"method": f"per-image p{percentile:g} max (activations), output max x{output_margin:g}",
               "tensors": changed}
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), summary


def replace_conv_weights(model_bytes: bytes, weights: list[np.ndarray], expected: list[np.ndarray]) -> bytes:
    """The float TFLite model with its CONV_2D filters replaced by ``weights`` (PyTorch layout
    O x I x kh x kw). Each filter must currently hold exactly the values of one of ``expected`` (the
    convolution ``weights`` replaces; TFLite may order independent convolutions differently): proof
    that every CONV_2D is a convolution of the model the weights belong to.

    Raises:
        ConvertError: another number of convolutions, or a filter that is none of the expected ones.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    sg = model.subgraphs[0]
    convs = [op for op in sg.operators if flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) == "CONV_2D"]
    if len(convs) != len(weights) or len(expected) != len(weights):
        raise ConvertError(f"weight rounding: {len(convs)} convolutions in the TFLite graph, {len(weights)} rounded")
    flat = [np.ascontiguousarray(np.asarray(e, np.float32).transpose(0, 2, 3, 1)).reshape(-1) for e in expected]
    unused = list(range(len(flat)))
    for i, op in enumerate(convs):
        buf = model.buffers[sg.tensors[op.inputs[1]].buffer]
        old = np.frombuffer(bytes(bytearray(buf.data)), np.float32)
        j = next((j for j in unused if flat[j].shape == old.shape and np.array_equal(flat[j], old)), None)
        if j is None:
            raise ConvertError(f"weight rounding: convolution {i} of the TFLite graph is not the model's")
        unused.remove(j)
        new = np.ascontiguousarray(np.asarray(weights[j], np.float32).transpose(0, 2, 3, 1))
        buf.data = np.frombuffer(new.tobytes(), np.uint8).copy()
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def quantize_int8(saved_model: Path, crops: np.ndarray, input_type: str = "uint8", percentile: float = 99.99,
                  output_margin: float = 2.0, bias_correction: float = 0.5,
                  reference: Path | None = None, log_path: Path | None = None,
                  progress: Callable[[str], None] | None = None,
                  rounded: tuple[list[np.ndarray], list[np.ndarray]] | None = None) -> tuple[bytes, dict]:
    """Full-integer post-training quantization: int8 per-channel weights, int8 activations,
    integer-only builtin ops, int8 output, ``input_type`` input (uint8 | int8 | float32).

    Args:
        crops: N x H x W x 3 uint8 calibration crops (pixels as the artifact receives them).
        bias_correction: strength of the empirical bias correction (0 = off), measured on at most
            BIAS_CORRECTION_CROPS evenly spaced crops.
        reference: the float SavedModel bias correction aims at, when ``saved_model`` approximates it
            (weights already rounded onto the int8 grid); default ``saved_model`` itself.
        rounded: (weights on the int8 grid, the float weights they replace), one per convolution in
            graph order: quantized instead of ``saved_model``'s own, which stay the bias-correction
            target (one onnx2tf run serves both).
    Returns:
        (the .tflite bytes, a summary of the range method).
    """
    import tensorflow as tf
    from tensorflow.lite.python import convert as tf_convert

    sink = open(log_path, "a") if log_path else open(os.devnull, "w")
    try:
        with sink:
            calibrated = _calibrate(saved_model, crops, sink)
            target = calibrated
            if rounded is not None:
                calibrated = replace_conv_weights(calibrated, *rounded)
            tuned, summary = set_ranges(calibrated, crops, percentile, output_margin, progress)
            with contextlib.redirect_stdout(sink):
                model = tf_convert.mlir_quantize(
                    tuned, fully_quantize=True,
                    input_data_type=tf.float32 if input_type == "float32" else tf.int8,
                    output_data_type=tf.int8)
            if bias_correction > 0:
                from .bias_correction import correct_biases

                subset = crops[::max(1, -(-len(crops) // BIAS_CORRECTION_CROPS))]
                with contextlib.redirect_stdout(sink):
                    if reference is not None:
                        target = _calibrate(reference, crops, sink)
                    model, bc_summary = correct_biases(bytes(model), target, subset, bias_correction,
                                                       progress)
                summary.update(bc_summary)
            if input_type == "uint8":
                model = uint8_input(bytes(model))
            model = compact_names(bytes(model))
    except ConvertError:
        raise
    except Exception as e:
        raise ConvertError(f"TFLite int8 conversion failed: {str(e).strip().splitlines()[0][:300]}") from None
    return bytes(model), summary


def compact_names(model_bytes: bytes) -> bytes:
    """Shorten the converter's fused tensor names ("a/Relu;a/Add;a/convolution;Const_49") to their
    first part; the file is smaller and the graph reads the same (inputs and outputs keep theirs)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    sg = model.subgraphs[0]
    keep = {int(i) for i in sg.inputs} | {int(i) for i in sg.outputs}
    for i, tensor in enumerate(sg.tensors):
        if i not in keep and tensor.name and b";" in tensor.name:
            tensor.name = tensor.name.split(b";")[0]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def uint8_input(model_bytes: bytes) -> bytes:
    """Give an int8-input model a uint8 input: a QUANTIZE op (uint8 -> int8, an integer requantize,
    as TF's converter inserts for ``inference_input_type=tf.uint8``) in front of the first layer."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    sg = model.subgraphs[0]
    old = int(sg.inputs[0])
    t_old = sg.tensors[old]
    if t_old.type != schema.TensorType.INT8:
        raise ConvertError(f"model input is {t_old.type}, int8 expected before the uint8 interface")
    quant_code = schema.BuiltinOperator.QUANTIZE
    index = next((i for i, oc in enumerate(model.operatorCodes)
                  if max(oc.builtinCode, oc.deprecatedBuiltinCode) == quant_code), None)
    if index is None:
        code = schema.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = quant_code
        code.version = 2
        model.operatorCodes.append(code)
        index = len(model.operatorCodes) - 1
    buffer = schema.BufferT()
    model.buffers.append(buffer)
    tensor = schema.TensorT()
    tensor.shape = t_old.shape
    tensor.shapeSignature = t_old.shapeSignature
    tensor.type = schema.TensorType.UINT8
    tensor.name = t_old.name
    tensor.buffer = len(model.buffers) - 1
    q = schema.QuantizationParametersT()
    q.scale = [float(t_old.quantization.scale[0])]
    q.zeroPoint = [int(t_old.quantization.zeroPoint[0]) + 128]
    tensor.quantization = q
    t_old.name = t_old.name + b"_int8"
    sg.tensors.append(tensor)
    new = len(sg.tensors) - 1
    op = schema.OperatorT()
    op.opcodeIndex = index
    op.inputs = [new]
    op.outputs = [old]
    sg.operators.insert(0, op)
    sg.inputs[0] = new
    for sig in model.signatureDefs or []:
        for entry in sig.inputs:
            if entry.tensorIndex == old:
                entry.tensorIndex = new
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
