"""The artifact's output: one standard (1, classes) score head whose top-1 is exact.

A requantized 8-bit logit output ties at the top on about 5% of images (step 0.23 logits), and
which tied class wins depends on the kernels. Instead, the int8 graph ends at the last int8
feature map; integer ops reduce it exactly in int32 (the global average pool as a sum) and give
each class its score relative to the best class:

    S_c = sum over the map positions of q_c            (int32, exact on every interpreter)
    D_c = S_c - max_k S_k                              (<= 0; 0 exactly for the best class)
    out = 255 + max(floor(D_c / d), -255)              (uint8; zero point 255, scale d * unit)

so the best class alone reads 255 (two classes tie only when their int32 sums are equal), every
other class reads less, and a stock client dequantizing with the tensor's own scale and zero point
gets ``logit_c - max logit`` (the log of each class's probability relative to the best one), to
``d * unit`` logits, down to -255 steps. ``unit`` is one step of the sum in logits (the map's scale
over its positions); ``d`` makes the 255 steps cover :data:`WINDOW_LOGITS`. int8 uses zero point
127; float32 gives ``D_c * unit`` unclamped (an exact integer cast, then one rounded multiply).
A model whose graph does not end in a global average pool gets the same head on its int8 logits
(exact relative to them, with their resolution).
"""
from __future__ import annotations

import math

import numpy as np

from .errors import ConvertError

OUTPUT_TYPES = ("uint8", "int8", "float32")
OUTPUT_NAME = "scores"
WINDOW_LOGITS = 12.0  # a class 12 logits below the best has a probability ratio of 6e-6: the floor


def _tail_model(shape: list[int], reduce_axes: list[int], d: int, unit: float, output_type: str) -> bytes:
    """The integer tail as its own TFLite graph, converted by TF (so op versions and options are TF's)."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec(shape, tf.int8)])
    def tail(q):
        s = tf.cast(q, tf.int32)
        if reduce_axes:
            s = tf.reduce_sum(s, axis=reduce_axes)
        s = tf.reshape(s, [1, -1])
        rel = s - tf.reduce_max(s, axis=1, keepdims=True)
        if output_type == "float32":
            return tf.cast(rel, tf.float32) * tf.constant(unit, tf.float32)
        if d > 1:
            rel = tf.math.floordiv(rel, tf.constant(d, tf.int32))
        rel = tf.maximum(rel, tf.constant(-255, tf.int32))
        if output_type == "uint8":
            return tf.cast(rel + 255, tf.uint8)
        return tf.cast(rel + 127, tf.int8)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([tail.get_concrete_function()], tail)
    return bytes(converter.convert())


def _producers(sg) -> dict[int, object]:
    return {int(o): op for op in sg.operators for o in op.outputs}


def _find_evidence(model, sg) -> tuple[int, list[int], float, int]:
    """(int8 tensor to reduce, axes to sum, one step of the sum in logits, positions summed).

    The output is followed back through shape-only ops; a global average pool (MEAN over the
    spatial axes of an NHWC int8 map) is replaced by an exact sum, anything else is used as is.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    if len(sg.outputs) != 1:
        raise ConvertError(f"the int8 model has {len(sg.outputs)} outputs: one (1, classes) output expected")
    prod = _producers(sg)
    t = int(sg.outputs[0])
    while t in prod and flatbuffer_utils.opcode_to_name(model, prod[t].opcodeIndex) in ("RESHAPE", "SQUEEZE"):
        t = int(prod[t].inputs[0])
    op = prod.get(t)
    if op is not None and flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) == "MEAN":
        x = sg.tensors[int(op.inputs[0])]
        axes_t = sg.tensors[int(op.inputs[1])]
        axes = np.frombuffer(bytes(model.buffers[axes_t.buffer].data), np.int32) % len(x.shape)
        if len(x.shape) == 4 and sorted(axes.tolist()) == [1, 2] and x.type == _int8():
            positions = int(x.shape[1]) * int(x.shape[2])
            return int(op.inputs[0]), [1, 2], float(x.quantization.scale[0]) / positions, positions
    out = sg.tensors[t]
    if out.type != _int8() or int(np.prod(out.shape)) != int(out.shape[-1]):
        raise ConvertError(f"the model's output {list(out.shape)} is not an int8 (1, classes) tensor")
    return t, [], float(out.quantization.scale[0]), 1


def _int8() -> int:
    from tensorflow.lite.python import schema_py_generated as schema

    return schema.TensorType.INT8


def score_head(model_bytes: bytes, output_type: str = "uint8") -> tuple[bytes, dict]:
    """Replace the int8 model's output with the exact relative score head (see the module doc).

    Returns:
        (the new model bytes, a summary for the metadata: how to read the output).
    Raises:
        ConvertError: unknown output type, or a graph whose output is not a class score vector.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    if output_type not in OUTPUT_TYPES:
        raise ConvertError(f"--output-type {output_type}: one of {', '.join(OUTPUT_TYPES)} expected")
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    if len(model.subgraphs) != 1:
        raise ConvertError(f"the int8 model has {len(model.subgraphs)} subgraphs: one expected")
    sg = model.subgraphs[0]
    source, axes, unit, positions = _find_evidence(model, sg)
    if positions * 256 >= 1 << 24:
        raise ConvertError(f"{positions} positions to sum: the exact int32 score needs fewer than 65,536")
    d = max(1, math.ceil(WINDOW_LOGITS / (255 * unit)))
    tail = flatbuffer_utils.convert_bytearray_to_object(
        bytearray(_tail_model([int(v) for v in sg.tensors[source].shape], axes, d, unit, output_type)))
    new_out = _splice(model, sg, tail, source)
    out_t = sg.tensors[new_out]
    out_t.name = OUTPUT_NAME.encode()
    step = d * unit
    if output_type != "float32":
        q = schema.QuantizationParametersT()
        q.scale = [float(step)]
        q.zeroPoint = [255 if output_type == "uint8" else 127]
        out_t.quantization = q
    for sig in model.signatureDefs or []:
        sig.outputs[0].tensorIndex = new_out
        sig.outputs[0].name = OUTPUT_NAME.encode()
    _drop_dead(sg)
    summary = {"name": OUTPUT_NAME, "dtype": output_type, "meaning": "logit minus the best class's logit",
               "exact_top1": True, "reduction": "int32 sum over the last int8 map" if axes else "int8 logits",
               "positions": positions, "unit_logits": unit, "step_logits": step if output_type != "float32" else unit,
               "floor_logits": None if output_type == "float32" else -255 * step}
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model)), summary


def _splice(model, sg, tail, source: int) -> int:
    """Append the tail graph's ops after ``source``; the tail's output becomes the model's output."""
    tsg = tail.subgraphs[0]
    opcode_map = {}
    for i, oc in enumerate(tail.operatorCodes):
        code = max(oc.builtinCode, oc.deprecatedBuiltinCode)
        j = next((k for k, mc in enumerate(model.operatorCodes)
                  if max(mc.builtinCode, mc.deprecatedBuiltinCode) == code and mc.version == oc.version), None)
        if j is None:
            model.operatorCodes.append(oc)
            j = len(model.operatorCodes) - 1
        opcode_map[i] = j
    tensor_map = {int(tsg.inputs[0]): source}
    for i, t in enumerate(tsg.tensors):
        if i in tensor_map:
            continue
        buf = tail.buffers[t.buffer]
        if buf.data is not None and len(buf.data):
            model.buffers.append(buf)
            t.buffer = len(model.buffers) - 1
        else:
            empty = type(buf)()
            model.buffers.append(empty)
            t.buffer = len(model.buffers) - 1
        sg.tensors.append(t)
        tensor_map[i] = len(sg.tensors) - 1
    for op in tsg.operators:
        op.opcodeIndex = opcode_map[op.opcodeIndex]
        op.inputs = [tensor_map[int(i)] if i >= 0 else -1 for i in op.inputs]
        op.outputs = [tensor_map[int(i)] for i in op.outputs]
        sg.operators.append(op)
    new_out = tensor_map[int(tsg.outputs[0])]
    sg.outputs = [new_out]
    return new_out


def _drop_dead(sg) -> None:
    """Remove the operators whose outputs nobody reads any more (the old pool and reshape)."""
    while True:
        used = {int(i) for op in sg.operators for i in op.inputs} | {int(i) for i in sg.outputs}
        dead = [op for op in sg.operators if not any(int(o) in used for o in op.outputs)]
        if not dead:
            return
        sg.operators = [op for op in sg.operators if op not in dead]


def comparable(scores: np.ndarray, floor: float = -WINDOW_LOGITS) -> np.ndarray:
    """Scores as the head gives them, for comparing models: each row's logits minus its best one,
    floored at ``floor`` (float logits and the head's relative scores become comparable)."""
    scores = np.asarray(scores, np.float64)
    return np.maximum(scores - scores.max(axis=-1, keepdims=True), floor)
