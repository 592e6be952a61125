"""PyTorch -> ONNX with a fixed input shape, and checks that an ONNX file is an image classifier."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from .errors import ConvertError

INPUT_NAME, OUTPUT_NAME = "pixels", "logits"
OPSET = 17


def export_onnx(model: nn.Module, input_size: tuple[int, int], path: Path) -> None:
    """Export ``model`` (NCHW float pixels in, logits out) to ONNX at a fixed 1x3xHxW shape."""
    import onnx

    h, w = input_size
    dummy = torch.zeros(1, 3, h, w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), dummy, str(path), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=OPSET, dynamo=False,
                          do_constant_folding=True)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def classifier_signature(path: Path):
    """(the loaded ONNX model, (H, W), classes) of an ONNX image classifier.

    Raises:
        ConvertError: unreadable file, or not one 1x3xHxW input and one 1xN output.
    """
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as e:  # onnx raises DecodeError, ValidationError, OSError...
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ConvertError(f"{path}: not a valid ONNX model ({first})") from None
    init = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init]

    def dims(value_info) -> list:
        return [d.dim_value if d.HasField("dim_value") else None
                for d in value_info.type.tensor_type.shape.dim]

    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ConvertError(f"{path}: one input and one output expected, got {len(inputs)} and "
                           f"{len(model.graph.output)}: not an image classifier")
    ind, outd = dims(inputs[0]), dims(model.graph.output[0])
    if len(ind) != 4 or ind[1] != 3 or ind[0] not in (1, None) or None in ind[2:]:
        raise ConvertError(f"{path}: input {inputs[0].name} of shape {ind}: 1x3xHxW (NCHW, fixed H and W) "
                           "expected for an image classifier")
    if len(outd) != 2 or outd[0] not in (1, None) or not outd[1]:
        raise ConvertError(f"{path}: output of shape {outd}: 1xN class scores expected for an image classifier")
    return model, (int(ind[2]), int(ind[3])), int(outd[1])
