"""Stage 3 of the conversion: float graphs -> TensorFlow (onnx2tf) -> fully int8 TFLite bytes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import ConvertError
from .float_graphs import FloatGraphs

EQUIVALENCE_VIEWS = 8  # calibration views on which onnx2tf's float TFLite must match the ONNX model
EQUIVALENCE_TOLERANCE = 1e-3  # relative to the largest logit


@dataclass(frozen=True)
class QuantizeSettings:
    """How activations are calibrated and the int8 model is finished (see :func:`convert.tflite.quantize_int8`)."""

    input_type: str = "uint8"  # uint8 | int8 | float32
    percentile: float = 99.99  # activation range: largest per-image percentile
    output_margin: float = 2.0  # factor on the calibrated range of the output logits
    bias_correction: float = 0.5  # strength, 0 = off


@dataclass(frozen=True)
class Int8Model:
    """The quantized model, before the metadata record is embedded."""

    tflite: bytes  # fully int8 .tflite
    float_tflite: Path  # float TFLite of ``FloatGraphs.to_tensorflow`` (kept beside the artifact)
    summary: dict  # the range method and bias correction, for the calibration record


def quantize(graphs: FloatGraphs, views: np.ndarray, work: Path, settings: QuantizeSettings,
             progress: Callable[[str], None] = lambda m: None) -> Int8Model:
    """Convert the float graph with onnx2tf (once) in ``work`` and quantize it, calibrated on ``views``.

    GPTQ-rounded weights (``graphs.rounded``) are written into a copy of the calibrated graph before
    quantization; the unrounded graph stays the float TFLite and the bias-correction target.
    """
    from .tflite import onnx_to_saved_model, quantize_int8

    progress("onnx2tf: ONNX -> TensorFlow")
    saved_model, float_tflite = onnx_to_saved_model(graphs.to_tensorflow, work / "tf", views)
    check_float_equivalence(graphs.reference, float_tflite, views[::max(1, len(views) // EQUIVALENCE_VIEWS)])
    progress("calibrating and quantizing to int8")
    int8, summary = quantize_int8(saved_model, views, settings.input_type, settings.percentile,
                                  settings.output_margin, bias_correction=settings.bias_correction,
                                  log_path=work / "tflite.log", progress=progress, rounded=graphs.rounded)
    return Int8Model(int8, float_tflite, summary)


def check_float_equivalence(reference: Path, float_tflite: Path, views: np.ndarray) -> None:
    """onnx2tf must not change what the model computes: its float TFLite gives the reference ONNX
    model's logits on ``views``.

    Raises:
        ConvertError: it does not (an operator onnx2tf converts wrongly); nothing is quantized.
    """
    from edge_runtime.interpreter import create_interpreter

    from .validate import onnx_predict

    expected = onnx_predict(reference)(views)
    interpreter, _, _ = create_interpreter(str(float_tflite), 2, xnnpack=True)  # float: no decision made here
    inp, out = interpreter.get_input_details()[0]["index"], interpreter.get_output_details()[0]["index"]
    got = []
    for view in views:
        interpreter.set_tensor(inp, view[None].astype(np.float32))
        interpreter.invoke()
        got.append(interpreter.get_tensor(out)[0].copy())
    error = float(np.abs(np.stack(got) - expected).max())
    scale = float(np.abs(expected).max())
    if error > EQUIVALENCE_TOLERANCE * max(scale, 1.0):
        raise ConvertError(f"onnx2tf changed what the model computes: its float TFLite differs from the ONNX "
                           f"model by up to {error:.3g} (largest logit {scale:.3g}) on {len(views)} calibration views; "
                           "an operator of this model is not converted faithfully")
