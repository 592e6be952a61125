"""Embed the metadata record into a ``.tflite`` (converter side; the runtime reads it without TF)."""
from __future__ import annotations

import numpy as np

from edge_runtime.metadata import METADATA_NAME, ModelInfo


def embed_metadata(tflite: bytes, info: ModelInfo) -> bytes:
    """The same model with ``info`` stored in the flatbuffer's standard ``metadata`` list.

    Standard interpreters ignore unknown metadata names, so the file still loads everywhere.
    An existing entry of the same name is replaced.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(tflite))
    model.metadata = [m for m in (model.metadata or []) if m.name != METADATA_NAME.encode()]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(info.to_json_bytes(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME.encode()
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
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
