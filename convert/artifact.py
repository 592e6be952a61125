"""Write the finished ``.tflite`` artifact (converter side; the runtime reads it without TF).

One file carries: the graph; the project's JSON record (preprocessing, labels, calibration,
validation, how to read the output); the standard TFLite Metadata (what MediaPipe Tasks and other
stock clients read) with the labels as an associated file in a zip appended to the flatbuffer;
and, written last, the integrity checksum over all of it (:mod:`edge_runtime.integrity`).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from edge_runtime import integrity
from edge_runtime.metadata import METADATA_NAME, ModelInfo

from .errors import ConvertError

@dataclasses.dataclass(frozen=True)
class FinishedGraph:
    """The quantized graph as the artifact carries it."""

    tflite: bytes  # with the exact score head, and RGB input where the graph allows it
    input_channel_order: str  # "RGB", or "BGR" when the input feeds more than convolutions
    output: dict  # how to read the output (convert/head.py); recorded in the artifact


def finish_graph(int8: bytes, output_type: str = "uint8") -> FinishedGraph:
    """The int8 graph with :func:`convert.head.score_head`'s exact score head and RGB input (stock
    clients such as MediaPipe feed RGB); a graph whose input feeds other ops keeps BGR, and says so."""
    from .head import score_head

    int8, output = score_head(int8, output_type)
    try:
        int8, order = rgb_input(int8), "RGB"
    except ConvertError as e:
        order, output = "BGR", {**output, "note": f"input kept BGR: {e}"}
    return FinishedGraph(int8, order, output)


def artifact_record(src, graph: FinishedGraph, input_type: str, output_type: str, calibration: dict,
                    validation: dict | None = None, siblings: dict[str, str] | None = None) -> ModelInfo:
    """The record an artifact of ``src`` (a :class:`convert.source.Source`) carries: what the runtime
    needs (preprocessing, labels, input, how to read the output), how it was made (weights hash,
    calibration, validation) and the file names of the float models kept beside it (``siblings``:
    kind -> name, e.g. "float_onnx")."""
    extra = {"weights_sha256": src.sha256, "calibration": calibration, "output": graph.output,
             "quantization": {"weights": "int8 per-channel", "activations": "int8",
                              "output": f"{output_type} exact score head"}, **src.extra}
    if siblings:
        extra["siblings"] = dict(siblings)
    if validation is not None:
        extra["validation"] = validation
    return ModelInfo(preprocessing=src.preprocessing, labels=src.labels, model_name=src.name,
                     input_dtype=input_type, input_channel_order=graph.input_channel_order, wnids=src.wnids,
                     extra=extra)


def embed_metadata(tflite: bytes, info: ModelInfo, standard: bytes | None = None) -> bytes:
    """The same model with ``info`` (and the standard ``TFLITE_METADATA`` record, when given)
    stored in the flatbuffer's ``metadata`` list.

    Standard interpreters ignore metadata entries, so the file still loads everywhere. Existing
    entries of the same names are replaced.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    from .standard_metadata import STANDARD_NAME

    entries = [(METADATA_NAME, info.to_json_bytes())]
    if standard is not None:
        entries.append((STANDARD_NAME, standard))
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite))
    names = {name.encode() for name, _ in entries}
    for m in model.metadata or []:
        if m.name in names:  # an entry being replaced: its buffer would otherwise stay as dead bytes
            model.buffers[m.buffer].data = None
    model.metadata = [m for m in (model.metadata or []) if m.name not in names]
    for name, data in entries:
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(data, np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = name.encode()
        entry.buffer = len(model.buffers) - 1
        model.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def finish_artifact(tflite: bytes, info: ModelInfo, description: str = "", version: str = "1",
                   author: str = "squeezenet-edge", license: str = "") -> bytes:
    """The finished artifact: both metadata records, the label file appended, the checksum sealed.

    ``info.extra["output"]`` says how to read the output: the exact score head's summary
    (:func:`convert.head.score_head`), or plain logits (the float sibling); the standard record
    describes the same to stock clients.
    """
    from .standard_metadata import LABEL_FILE, ClassifierDescription, append_files, build, label_file

    out = info.extra.get("output") or {}
    head = "floor_logits" in out  # the exact score head: logit minus the best class's logit
    arithmetic = ("float32 arithmetic" if info.input_dtype == "float32" and not head
                  else "integer arithmetic (int8 weights and activations)")
    desc = ClassifierDescription(
        name=info.model_name, description=description or f"{info.model_name}: {len(info.labels)}-class image "
        f"classifier, {arithmetic}", version=version, author=author,
        license=license or str(info.extra.get("license", "")), input_size=info.preprocessing.input_size,
        input_float=info.input_dtype == "float32", channel_order=info.input_channel_order, labels=list(info.labels),
        output_description=(f"{out['meaning']} (natural log of the class's probability relative to the best "
                            "class; the best class reads 0, exactly)") if head else "class logits",
        output_min=out.get("floor_logits") if head else None, output_max=0.0 if head else None)
    sealed = dataclasses.replace(info, extra={**info.extra, integrity.DIGEST_KEY: integrity.PLACEHOLDER})
    model = embed_metadata(tflite, sealed, build(desc))
    model = append_files(model, {LABEL_FILE: label_file(info.labels)})
    return integrity.seal(model)


def float_sibling(float_tflite: bytes, src, artifact_name: str) -> bytes:
    """The float TFLite kept beside the artifact, as self-describing as the artifact: RGB input where
    the graph allows it (:func:`rgb_input`, exact), the project's record (float32 pixels 0..255, the
    same preprocessing and labels, plain logits out) and the standard metadata, whose normalization
    options (mean 0, std 1: the normalization is folded into the graph) let MediaPipe feed it.

    Args:
        float_tflite: onnx2tf's float TFLite (BGR pixels 0..255 as float32 in, logits out).
        src: the :class:`convert.source.Source` it was made from.
        artifact_name: the int8 artifact's file name, recorded as the model this one is the float peer of.
    """
    try:
        graph, order, note = rgb_input(float_tflite), "RGB", None
    except ConvertError as e:
        graph, order, note = float_tflite, "BGR", f"input kept BGR: {e}"
    return finish_artifact(graph, sibling_info(src, artifact_name, order, note))


def float_onnx_sibling(onnx_path, src, artifact_name: str) -> bytes:
    """The float ONNX kept beside the artifact (BGR pixels 0..255 in: the normalization is in the
    graph), with the float TFLite's record as its ``metadata_props`` entry :data:`METADATA_NAME`, so
    that ``convert tflite --onnx`` of it adds no second normalization and keeps the labels,
    preprocessing and the weights' margin-band mix (:func:`convert.source.onnx_record` reads it).
    The model's other properties are kept."""
    import onnx

    model = onnx.load(str(onnx_path))
    explicit_pointwise_pads(model)
    record = sibling_info(src, artifact_name, "BGR").to_json_bytes().decode()
    kept = [(p.key, p.value) for p in model.metadata_props if p.key != METADATA_NAME]
    del model.metadata_props[:]
    for key, value in (*kept, (METADATA_NAME, record)):
        model.metadata_props.add(key=key, value=value)
    return model.SerializeToString()


def explicit_pointwise_pads(model) -> int:
    """Padding of 1x1 convolutions (SqueezeNet v1.0's conv10 has pad 1: a 15x15 map from 13x13) moved into
    Pad nodes before them, in place; the number moved. The same function (ONNX Runtime: bit-identical), but
    OpenCV's DNN (5.0) computes a padded 1x1 convolution's border wrongly: logits up to 6 apart and
    another top-1 on some photos, for a user who runs the float ONNX with cv2.dnn."""
    import onnx
    from onnx import helper, numpy_helper

    weights = {t.name: t for t in model.graph.initializer}
    nodes, moved = [], 0
    for node in model.graph.node:
        attrs = {a.name: a for a in node.attribute}
        w = weights.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        pads = list(attrs["pads"].ints) if "pads" in attrs else []
        if w is None or list(w.dims[2:]) != [1, 1] or not any(pads) or "auto_pad" in attrs:
            nodes.append(node)
            continue
        k = len(pads) // 2  # ONNX: begins of each spatial axis, then ends; Pad: all axes (N, C too)
        name = f"{node.name or node.output[0]}_pads"
        model.graph.initializer.append(numpy_helper.from_array(
            np.array([0, 0, *pads[:k], 0, 0, *pads[k:]], dtype=np.int64), name))
        nodes.append(helper.make_node("Pad", [node.input[0], name], [f"{name}_out"], mode="constant"))
        node.input[0] = f"{name}_out"
        attrs["pads"].ints[:] = [0] * len(pads)
        nodes.append(node)
        moved += 1
    if moved:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        onnx.checker.check_model(model)
    return moved


def sibling_info(src, artifact_name: str, order: str, note: str | None = None) -> ModelInfo:
    """The record of a float model kept beside the artifact ``artifact_name``: float32 pixels 0..255 in
    channel ``order`` (the normalization is in the graph), plain logits out."""
    output = {"name": "logits", "dtype": "float32", "meaning": "logits", "exact_top1": False,
              **({"note": note} if note else {})}
    extra = {"weights_sha256": src.sha256, "output": output, "float_sibling_of": artifact_name,
             "quantization": {"weights": "float32", "activations": "float32"}, **src.extra}
    if src.check_reference:
        extra["check_reference"] = list(src.check_reference)
    return ModelInfo(preprocessing=src.preprocessing, labels=src.labels, model_name=src.name, input_dtype="float32",
                     input_channel_order=order, wnids=src.wnids, extra=extra)


def rgb_input(tflite: bytes) -> bytes:
    """The same model taking RGB instead of BGR pixels: the input channels of the first
    convolution's filters are reversed (exact: the input's quantization is one scale for all
    channels; stock clients such as MediaPipe feed RGB).

    Raises:
        ConvertError: the input does not feed convolutions over 3 channels directly.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite))
    sg = model.subgraphs[0]
    feeds = {int(sg.inputs[0])}
    convs = []
    for op in sg.operators:
        if not any(int(i) in feeds for i in op.inputs):
            continue
        name = flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)
        if name in ("QUANTIZE", "PAD", "PADV2"):  # per-element or one pad value: channel order passes through
            feeds.add(int(op.outputs[0]))
        elif name == "CONV_2D" and int(op.inputs[0]) in feeds:
            convs.append(op)
        else:
            raise ConvertError(f"the input feeds a {name}: only convolutions can take RGB by reordering filters")
    if not convs:
        raise ConvertError("no convolution reads the model input: cannot reorder its channels")
    users = {}
    for op in sg.operators:
        for i in op.inputs:
            users[int(i)] = users.get(int(i), 0) + 1
    buffer_users = {}  # the converter stores equal constants once: two filters can share one buffer
    for t in (t for g in model.subgraphs for t in g.tensors):
        buffer_users[t.buffer] = buffer_users.get(t.buffer, 0) + 1
    for op in convs:
        w = sg.tensors[int(op.inputs[1])]
        buf = model.buffers[w.buffer]
        if users.get(int(op.inputs[1]), 0) != 1 or int(w.shape[-1]) != 3 or buf.data is None:
            raise ConvertError("the first convolution's filter is shared or not over 3 channels")
        dtype = {9: np.int8, 0: np.float32}.get(int(w.type))
        if dtype is None:
            raise ConvertError(f"first convolution filter of type {w.type}: int8 or float32 expected")
        data = np.frombuffer(bytes(buf.data), dtype).reshape([int(v) for v in w.shape])
        if buffer_users[w.buffer] > 1:  # another tensor's bytes too: the reversed filter gets its own buffer
            buffer_users[w.buffer] -= 1
            buf = schema.BufferT()
            model.buffers.append(buf)
            w.buffer = len(model.buffers) - 1
        buf.data = np.frombuffer(np.ascontiguousarray(data[..., ::-1]).tobytes(), np.uint8)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def op_report(tflite: bytes) -> dict:
    """Operator names and the tensor types of a model, read from the flatbuffer (for the int8 proof)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite))
    ops = []
    for sg in model.subgraphs:
        for op in sg.operators:
            ops.append(flatbuffer_utils.opcode_to_name(model, op.opcodeIndex))
    types = {flatbuffer_utils.type_to_name(t.type) for sg in model.subgraphs for t in sg.tensors}
    return {"ops": sorted(set(ops)), "op_count": len(ops), "tensor_types": sorted(types)}
