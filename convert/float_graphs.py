"""Stage 2 of the conversion: the float model as ONNX graphs that take raw BGR pixels.

A PyTorch source is exported with its normalization folded into the first convolution, then
(SqueezeNet) range-equalized, its weights GPTQ-rounded onto the int8 grid and its first squeeze output
split onto a finer one, all from one pass over the calibration views; a user's ONNX classifier gets a
1x1 normalization convolution in front of its input.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edge_runtime.preprocess import Preprocessing

from .source import Source

ROUNDING_VIEWS = 96  # calibration views of the one statistics pass (equalization ranges, GPTQ moments)
STATISTICS_BATCH = 16  # views per forward pass of that pass
NEAREST = {"weight_rounding": {"method": "nearest (TFLite's quantizer)"}}


@dataclass(frozen=True)
class FloatGraphs:
    """The float model as ONNX graphs in the work folder (1x3xHxW float input of BGR pixels 0..255), and
    the weights GPTQ rounded onto the int8 grid."""

    reference: Path  # the float model as given: validated against, kept beside the artifact
    to_tensorflow: Path  # float-equivalent (equalized) graph: onnx2tf converts it once, the float TFLite
    # (weights on the int8 grid, the float weights of ``to_tensorflow`` they replace), one per convolution
    # in graph order; quantized instead of the graph's own weights. None: TFLite's rounding.
    rounded: tuple[list[np.ndarray], list[np.ndarray]] | None
    summary: dict  # equalization strength and weight rounding, for the calibration record


def float_graphs(src: Source, views: np.ndarray, work: Path, equalize_strength: float = 0.5,
                 weight_rounding: str = "gptq", split_squeeze: int = 1,
                 progress: Callable[[str], None] = lambda m: None) -> FloatGraphs:
    """Write the source's float graphs into ``work``.

    One pass over at most ROUNDING_VIEWS of ``views`` gives the equalization ranges, the GPTQ input
    moments (rescaled for the equalized model, exactly) and the split squeeze outputs' thresholds.

    Args:
        views: N x H x W x 3 uint8 calibration views.
        equalize_strength: cross-layer range equalization strength, 0 = off (PyTorch sources only).
        weight_rounding: "gptq" or "nearest" (PyTorch sources only; ONNX sources use TFLite's rounding).
        split_squeeze: how many of the first fires get their squeeze output split onto a finer int8
            grid (convert/split_squeeze.py; SqueezeNet sources only), 0 = none.
    """
    reference = work / "float.onnx"
    if src.torch_model is None:
        progress("putting the normalization in front of the ONNX model")
        prepend_normalization(src.onnx_path, src.preprocessing, reference)
        return FloatGraphs(reference, reference, None, {"equalization_strength": 0.0, **NEAREST})
    import torch

    from .equalize import equalize_from_ranges
    from .export import export_onnx
    from .split_squeeze import split_squeezes, thresholds
    from .statistics import rescale_moments, shared_statistics

    progress("exporting ONNX")
    pp = src.preprocessing
    folded = src.torch_model.folded()
    export_onnx(folded, pp.input_size, reference)
    x = torch.from_numpy(views.transpose(0, 3, 1, 2).astype(np.float32))
    subset = x[::max(1, -(-len(x) // ROUNDING_VIEWS))]
    want_ranges, want_moments = equalize_strength > 0 or split_squeeze > 0, weight_rounding == "gptq"
    batches = [subset[i:i + STATISTICS_BATCH] for i in range(0, len(subset), STATISTICS_BATCH)]
    if want_ranges or want_moments:  # no equalization, no split and nearest rounding need no pass
        progress(f"calibration statistics: one pass over {len(subset)} views")
        batches = counted(batches, len(subset), "calibration statistics", progress)
    ranges, moments = shared_statistics(folded, batches, want_ranges=want_ranges, want_moments=want_moments)
    equalized, input_scales, to_tensorflow = folded, {}, reference
    if equalize_strength > 0:
        equalized, input_scales = equalize_from_ranges(folded, ranges, strength=equalize_strength)
    split = thresholds(equalized, ranges, input_scales, split_squeeze)  # {} for 0
    exported = split_squeezes(equalized, split)
    if exported is not folded:
        to_tensorflow = work / "equalized.onnx"
        export_onnx(exported, pp.input_size, to_tensorflow)
    summary, rounded = {"equalization_strength": equalize_strength, **NEAREST}, None
    if split:
        summary["squeeze_split"] = {"fires": list(split), "method": "relu(y) = min(relu(y), T) + relu(y - T), "
                                    "T = half the measured range: a 2x finer int8 grid, exact in float"}
    if weight_rounding == "gptq":
        from .rounding import gptq_round

        progress("rounding weights onto the int8 grid (GPTQ)")
        model, rounding = gptq_round(equalized, progress=progress,
                                     moments_by_name=rescale_moments(moments, equalized, input_scales))
        summary.update(rounding)
        # splitting scales whole channels of the rounded weights, so they stay on their int8 grid
        rounded = (conv_weights(split_squeezes(model, split)), conv_weights(exported))
    return FloatGraphs(reference, to_tensorflow, rounded, summary)


def counted(batches: list, total: int, what: str, progress: Callable[[str], None], every: int = 16) -> Iterator:
    """``batches`` one by one, with a progress line ``WHAT N/TOTAL`` each time another ``every`` items
    (and the last) have been used: the pass takes half a minute on a busy 2-core machine."""
    done, said = 0, 0
    for batch in batches:
        yield batch
        done += len(batch)
        if done - said >= every or done == total:
            progress(f"{what} {done}/{total}")
            said = done


def conv_weights(model) -> list[np.ndarray]:
    """Every convolution's weights in module order (tflite.replace_conv_weights matches them to the
    graph's convolutions by value)."""
    from torch import nn

    return [m.weight.detach().numpy().copy() for m in model.modules() if isinstance(m, nn.Conv2d)]


def _graph_names(graph) -> set[str]:
    """Every tensor and node name a graph and its subgraphs (If, Loop, Scan bodies) use."""
    names = {v.name for v in (*graph.input, *graph.output, *graph.value_info, *graph.initializer)}
    for node in graph.node:
        names.update((*node.input, *node.output, node.name))
        for attr in node.attribute:
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                names |= _graph_names(sub)
    return names


def _fresh_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``... : the first not in ``taken`` (which it joins)."""
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def prepend_normalization(src: Path, pp: Preprocessing, dest: Path) -> None:
    """Write ``src`` with a 1x1 conv in front that maps BGR 0..255 pixels to the model's normalized input.

    The conv's names are made unique against the user's graph (whose input may itself be called
    ``pixels``, as the converter's own ``*_float.onnx`` is).
    """
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
    taken = _graph_names(graph)
    raw, w_name, b_name, node_name = (_fresh_name(n, taken) for n in
                                      ("pixels", "pixels_norm_w", "pixels_norm_b", "pixels_normalize"))
    graph.initializer.extend([numpy_helper.from_array(w, w_name), numpy_helper.from_array(b, b_name)])
    node = helper.make_node("Conv", [raw, w_name, b_name], [inp.name], name=node_name)
    graph.node.insert(0, node)
    new_in = helper.make_tensor_value_info(raw, onnx.TensorProto.FLOAT, [1, 3, *pp.input_size])
    graph.input.remove(inp)
    graph.input.insert(0, new_in)
    onnx.checker.check_model(model)
    onnx.save(model, str(dest))
