"""Empirical bias correction of an int8 TFLite model (Nagel et al., 2019, "data-free quantization", sec. 4.2,
with calibration images in place of batch-norm statistics).

Rounding weights to int8 shifts the mean of every output channel: with all-positive inputs (pixels,
ReLU outputs) the rounding errors of one filter add up instead of cancelling, and the shift travels
down the network. For each layer, in graph order, the mean of every output channel is measured on the
calibration crops in the int8 model (with the layers above already corrected) and in the float model,
and the difference is subtracted from that channel's int32 bias. The float function is the target;
no label is used.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable

import numpy as np

from .errors import ConvertError

BIASED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
MIN_ACTIVE = 0.05  # below this fraction of positive outputs a channel's mean says little about its bias


def _interpreter(model: bytes):
    import tensorflow as tf

    it = tf.lite.Interpreter(model_content=model, experimental_preserve_all_tensors=True, num_threads=2)
    it.allocate_tensors()
    ops = [o for o in it._get_ops_details()  # noqa: SLF001 (the public API has no op list)
           if o["op_name"] in BIASED_OPS and len(o["inputs"]) > 2 and int(o["inputs"][2]) >= 0]
    return it, ops


def _feed(it, crop: np.ndarray) -> None:
    from edge_runtime.classify import input_tensor

    d = it.get_input_details()[0]
    it.set_tensor(d["index"], input_tensor(crop, d["dtype"], *d["quantization"])[None])


def _channel_stats(it, ops: list[dict], crops: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per op: the mean of each output channel (real values) and the fraction of positive outputs
    (1 where the channel ever goes negative, i.e. has no ReLU)."""
    quant = {d["index"]: d["quantization"] for d in it.get_tensor_details()}
    sums = [None] * len(ops)
    pos = [None] * len(ops)
    neg = [None] * len(ops)
    for crop in crops:
        _feed(it, crop)
        it.invoke()
        for k, op in enumerate(ops):
            t = int(op["outputs"][0])
            v = it.get_tensor(t).astype(np.float32)
            scale, zero = quant[t]
            if scale:
                v = (v - zero) * scale
            v = v.reshape(-1, v.shape[-1])
            m, p, n = v.mean(0), (v > 0).mean(0), (v < 0).any(0)
            sums[k] = m if sums[k] is None else sums[k] + m
            pos[k] = p if pos[k] is None else pos[k] + p
            neg[k] = n if neg[k] is None else neg[k] | n
    means = [s / len(crops) for s in sums]
    active = [np.where(n, 1.0, p / len(crops)) for p, n in zip(pos, neg)]
    return means, active


def _unshare_biases(model: bytes) -> bytes:
    """Give every bias its own buffer (the converter shares identical constants, e.g. zero biases)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    m = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    sg = m.subgraphs[0]
    uses = Counter(t.buffer for t in sg.tensors)
    changed = False
    for op in sg.operators:
        if flatbuffer_utils.opcode_to_name(m, op.opcodeIndex) not in BIASED_OPS or len(op.inputs) < 3:
            continue
        if op.inputs[2] < 0 or uses[sg.tensors[op.inputs[2]].buffer] < 2:
            continue
        tensor = sg.tensors[op.inputs[2]]
        buf = schema.BufferT()
        buf.data = np.array(m.buffers[tensor.buffer].data, dtype=np.uint8).copy()
        m.buffers.append(buf)
        uses[tensor.buffer] -= 1
        tensor.buffer = len(m.buffers) - 1
        changed = True
    return bytes(flatbuffer_utils.convert_object_to_bytearray(m)) if changed else model


def read_bias(model: bytes | bytearray, tensor: int, channels: int) -> tuple[np.ndarray, int]:
    """(the int32 values of a bias tensor, their byte offset inside the flatbuffer)."""
    from tensorflow.lite.python import schema_py_generated as schema

    root = schema.Model.GetRootAs(model, 0)
    buf = root.Buffers(root.Subgraphs(0).Tensors(tensor).Buffer())
    if buf.DataLength() != 4 * channels:
        raise ConvertError(f"bias correction: a bias tensor holds {buf.DataLength()} bytes, "
                           f"{4 * channels} expected")
    start = buf._tab.Vector(buf._tab.Offset(4))  # noqa: SLF001 (field 0 of Buffer: data)
    return np.frombuffer(bytes(model[start:start + 4 * channels]), np.int32).copy(), start


def _cut_after(model: bytes, ops: list[dict]) -> bytes:
    """The model up to ``ops`` (the layers of one level), their outputs its outputs: a level is measured
    without running the layers below it, which no measurement reads (about half the work of the pass). The
    layers kept are the same ops on the same tensors, so they compute the same int8 values."""
    from tensorflow.lite.tools import flatbuffer_utils

    m = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    sg = m.subgraphs[0]
    sg.operators = sg.operators[:max(int(op["index"]) for op in ops) + 1]
    sg.outputs = [int(op["outputs"][0]) for op in ops]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(m))


def _levels(ops: list[dict]) -> list[list[int]]:
    """Consecutive ops reading the same tensor (a fire module's two expands) are corrected together."""
    levels: list[list[int]] = []
    for k, op in enumerate(ops):
        if levels and int(ops[levels[-1][0]]["inputs"][0]) == int(op["inputs"][0]):
            levels[-1].append(k)
        else:
            levels.append([k])
    return levels


def correct_biases(int8_model: bytes, float_model: bytes, crops: np.ndarray, strength: float = 0.5,
                   progress: Callable[[str], None] | None = None) -> tuple[bytes, dict]:
    """Subtract ``strength`` times each output channel's mean int8-vs-float error from its bias.

    Args:
        int8_model: the quantized model (int8 weights, int32 biases).
        float_model: the float model it was quantized from (same ops in the same order).
        crops: calibration crops (N x H x W x 3 uint8), as the model's input receives them.
        strength: 1 corrects the measured mean error fully; less damps it (errors measured on a few
            dozen photos are noisy, and the layers below still respond to every correction).
    Returns:
        (the corrected model, a summary for the artifact).
    """
    fit, fops = _interpreter(float_model)
    f_means, f_active = _channel_stats(fit, fops, crops)
    del fit
    data = bytearray(_unshare_biases(int8_model))
    _, qops = _interpreter(bytes(data))
    if len(qops) != len(fops):
        raise ConvertError(f"bias correction: float model has {len(fops)} biased layers, int8 model {len(qops)}")
    shifts = []
    levels = _levels(qops)
    for n, level in enumerate(levels):
        it, ops = _interpreter(_cut_after(bytes(data), [qops[k] for k in level]))  # the same tensors as data's
        q_means, _ = _channel_stats(it, [ops[k] for k in level], crops)
        details = {d["index"]: d["quantization_parameters"] for d in it.get_tensor_details()}
        for k, q_mean in zip(level, q_means):
            inp, w, b = (int(i) for i in qops[k]["inputs"][:3])
            bias_scale = details[inp]["scales"][0] * np.asarray(details[w]["scales"], np.float64)
            err = (q_mean - f_means[k]) / np.maximum(f_active[k], MIN_ACTIVE)
            bias, start = read_bias(data, b, len(err))
            new = bias.astype(np.int64) - np.round(strength * err / bias_scale).astype(np.int64)
            new = np.clip(new, np.iinfo(np.int32).min, np.iinfo(np.int32).max).astype(np.int32)
            data[start:start + 4 * len(err)] = new.tobytes()
            shifts.append(float(np.mean(np.abs(err)) / max(float(np.mean(np.abs(f_means[k]))), 1e-9)))
        del it
        if progress and (n + 1) % 4 == 0:
            progress(f"bias correction {n + 1}/{len(levels)} layers")
    summary = {"bias_correction": {"strength": strength, "layers": len(qops), "crops": int(len(crops)),
                                   "mean_relative_shift": round(float(np.mean(shifts)), 5)}}
    return bytes(data), summary
