"""Self-describing artifacts: the JSON record embedded in a ``.tflite`` file, read without TensorFlow.

The converter stores one UTF-8 JSON object in the TFLite flatbuffer's standard ``metadata`` list
under the name :data:`METADATA_NAME`; interpreters ignore unknown metadata entries, so the file
loads unchanged everywhere. This module reads it with a small, bounds-checked flatbuffer walker and
treats every byte as hostile: lengths are bounded, strings are sanitised, the schema is checked.
"""
from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .fileio import FileTooLarge, read_bounded
from .preprocess import Preprocessing, PreprocessingError

METADATA_NAME = "squeezenet_edge.json"
FORMAT = "squeezenet-edge/1"
MAX_JSON_BYTES = 4 << 20
MAX_LABELS = 100_000
MAX_LABEL_CHARS = 200
MAX_MODEL_BYTES = 1 << 31
MAX_JSON_DEPTH = 32  # nesting of objects and lists (the record itself uses 4)

# TFLite schema field ids (tensorflow/lite/schema/schema.fbs)
_MODEL_BUFFERS, _MODEL_METADATA = 4, 6
_METADATA_NAME, _METADATA_BUFFER = 0, 1
_BUFFER_DATA, _BUFFER_OFFSET, _BUFFER_SIZE = 0, 1, 2


class MetadataError(ValueError):
    """The model file or its embedded record is malformed."""


@dataclass
class ModelInfo:
    """What the runtime needs to know about a model, as embedded by the converter."""

    preprocessing: Preprocessing
    labels: list[str]
    model_name: str = "unknown"
    input_dtype: str = "uint8"
    input_channel_order: str = "BGR"
    wnids: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json_bytes(self) -> bytes:
        record = dict(self.extra)
        record.update({
            "format": FORMAT,
            "model_name": self.model_name,
            "input": {"dtype": self.input_dtype, "channel_order": self.input_channel_order},
            "preprocessing": self.preprocessing.to_dict(),
            "labels": list(self.labels),
        })
        if self.wnids:
            record["wnids"] = list(self.wnids)
        data = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
        if len(data) > MAX_JSON_BYTES:
            raise MetadataError(f"metadata record is {len(data)} bytes: at most {MAX_JSON_BYTES} expected")
        return data

    @classmethod
    def from_json_bytes(cls, data: bytes) -> "ModelInfo":
        record = parse_json(data)
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            got = record.get("format") if isinstance(record, dict) else type(record).__name__
            raise MetadataError(f"metadata format {got!r}: {FORMAT!r} expected")
        try:
            pp = Preprocessing.from_dict(record.get("preprocessing"))
        except PreprocessingError as e:
            raise MetadataError(f"metadata: {e}") from None
        inp = record.get("input") if isinstance(record.get("input"), dict) else {}
        dtype = inp.get("dtype", "uint8")
        if dtype not in ("uint8", "int8", "float32"):
            raise MetadataError(f"metadata input dtype {dtype!r}: uint8, int8 or float32 expected")
        order = inp.get("channel_order", "BGR")
        if order not in ("BGR", "RGB"):
            raise MetadataError(f"metadata channel order {order!r}: BGR or RGB expected")
        extra = {k: v for k, v in record.items()
                 if k not in ("format", "model_name", "input", "preprocessing", "labels", "wnids")}
        return cls(preprocessing=pp, labels=_string_list(record.get("labels"), "labels"),
                   model_name=clean_text(record.get("model_name", "unknown")),
                   input_dtype=dtype, input_channel_order=order,
                   wnids=_string_list(record.get("wnids", []), "wnids"), extra=extra)


def _refuse_constant(name: str) -> float:
    raise MetadataError(f"metadata record holds {name}: finite numbers expected")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise MetadataError(f"metadata record holds the number {text[:20]}: finite numbers expected")
    return value


# a string, or an unterminated one to the end (every match succeeds: no rescans, linear in the length)
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.?[^"\\]*)*(?:"|\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")


def json_depth(data: bytes) -> int:
    """How deeply lists and objects nest in UTF-8 JSON text, counted without parsing it (so without
    recursion: the parser's own bound is the interpreter's recursion limit, which a library can lift far
    past what the stack holds; onnx2tf sets it to 2**31 - 1 on import). Parse the text as UTF-8 only
    (``json.loads`` of bytes also reads UTF-16, whose bytes this count does not see as brackets)."""
    brackets = np.frombuffer(_NOT_BRACKET.sub(b"", _JSON_STRING.sub(b"", data)), np.uint8)
    steps = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1)
    return int(steps.cumsum().max(initial=0))


def parse_json(data: bytes) -> Any:
    """Untrusted JSON with bounded size and nesting and only finite numbers.

    Raises:
        MetadataError: too large, too deep, not UTF-8 JSON text, or NaN/Infinity/overflowing numbers.
    """
    if len(data) > MAX_JSON_BYTES:
        raise MetadataError(f"metadata record is {len(data)} bytes: at most {MAX_JSON_BYTES} expected")
    if json_depth(data) > MAX_JSON_DEPTH:
        raise MetadataError(f"metadata record nests more than {MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float)
    except MetadataError:
        raise
    except (UnicodeDecodeError, ValueError) as e:  # also integers over Python's 4300 digits
        raise MetadataError(f"metadata record is not readable JSON ({str(e)[:120]})") from None


def clean_text(value: Any, limit: int = MAX_LABEL_CHARS) -> str:
    """A printable, bounded version of an untrusted string (no control or escape characters)."""
    text = str(value)[:limit]
    return "".join(c if c.isprintable() else "?" for c in text)


def _string_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list):
        raise MetadataError(f"metadata {what}: a list of strings expected, got {type(value).__name__}")
    if len(value) > MAX_LABELS:
        raise MetadataError(f"metadata {what}: {len(value)} entries, at most {MAX_LABELS} expected")
    if not all(isinstance(v, str) for v in value):
        raise MetadataError(f"metadata {what}: every entry must be a string")
    return [clean_text(v) for v in value]


class _FlatBuffer:
    """Just enough of the flatbuffer wire format to walk a TFLite model, with bounds checks."""

    def __init__(self, buf: bytes) -> None:
        self.buf = buf

    def _u(self, fmt: str, pos: int) -> int:
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > len(self.buf):
            raise MetadataError(f"model file is truncated or corrupt (read at {pos} past {len(self.buf)} bytes)")
        return struct.unpack_from(fmt, self.buf, pos)[0]

    def root(self) -> int:
        return self._u("<I", 0)

    def field(self, table: int, fid: int) -> int | None:
        vtable = table - self._u("<i", table)
        vsize = self._u("<H", vtable)
        slot = 4 + 2 * fid
        if slot + 2 > vsize:
            return None
        off = self._u("<H", vtable + slot)
        return table + off if off else None

    def deref(self, pos: int) -> int:
        return pos + self._u("<I", pos)

    def vector(self, table: int, fid: int) -> tuple[int, int]:
        """(start, length) of a vector field; (0, 0) when absent."""
        pos = self.field(table, fid)
        if pos is None:
            return 0, 0
        vec = self.deref(pos)
        n = self._u("<I", vec)
        if n > len(self.buf):
            raise MetadataError(f"model file is corrupt (vector of {n} entries in {len(self.buf)} bytes)")
        return vec + 4, n

    def table_at(self, vec_start: int, i: int) -> int:
        return self.deref(vec_start + 4 * i)

    def string(self, table: int, fid: int) -> str:
        start, n = self.vector(table, fid)
        if start + n > len(self.buf):
            raise MetadataError("model file is corrupt (string runs past the end)")
        return self.buf[start:start + n].decode("utf-8", "replace")

    def scalar(self, table: int, fid: int, fmt: str, default: int = 0) -> int:
        pos = self.field(table, fid)
        return default if pos is None else self._u(fmt, pos)


def _check_identifier(model: bytes) -> None:
    if len(model) >= 8 and model[4:8] == b"TFL3":
        return
    hint = ""
    if model[:4] == b"PK\x03\x04":  # a zip archive: what torch.save writes
        hint = ": a PyTorch checkpoint? convert it first: python -m convert tflite --weights FILE --out X.tflite"
    elif model[:1] == b"\x08" and any(k in model[:256] for k in (b"pytorch", b"onnx", b"tf2onnx", b"skl2onnx")):
        hint = ": an ONNX model? convert it first: python -m convert tflite --onnx FILE --out X.tflite"
    raise MetadataError(f"not a TFLite model (file identifier 'TFL3' expected at byte 4){hint}")


def buffer_spans(model: bytes) -> list[tuple[int, int]]:
    """(start, length) of every non-empty data buffer of a TFLite flatbuffer (the weights, the
    metadata records), in buffer order, bounds-checked.

    Raises:
        MetadataError: the bytes are not a well-formed TFLite flatbuffer.
    """
    _check_identifier(model)
    fb = _FlatBuffer(model)
    buf_start, buf_n = fb.vector(fb.root(), _MODEL_BUFFERS)
    spans = []
    for i in range(buf_n):
        buffer = fb.table_at(buf_start, i)
        start, n = fb.vector(buffer, _BUFFER_DATA)
        if n == 0:  # large models keep buffers after the flatbuffer, addressed by offset/size
            start, n = fb.scalar(buffer, _BUFFER_OFFSET, "<Q"), fb.scalar(buffer, _BUFFER_SIZE, "<Q")
        if n and start + n > len(model):
            raise MetadataError(f"buffer {i} runs past the end of the model ({start} + {n} > {len(model)})")
        if n:
            spans.append((start, n))
    return spans


def read_metadata_bytes(model: bytes, name: str = METADATA_NAME) -> bytes | None:
    """The raw bytes of the named metadata entry of a TFLite flatbuffer, or None when absent.

    Raises:
        MetadataError: the bytes are not a well-formed TFLite flatbuffer.
    """
    span = metadata_span(model, name)
    return None if span is None else bytes(model[span[0]:span[0] + span[1]])


def metadata_span(model: bytes, name: str = METADATA_NAME) -> tuple[int, int] | None:
    """(offset, length) in the file of the named metadata entry's bytes, or None when absent.

    Raises:
        MetadataError: the bytes are not a well-formed TFLite flatbuffer.
    """
    _check_identifier(model)
    fb = _FlatBuffer(model)
    root = fb.root()
    meta_start, meta_n = fb.vector(root, _MODEL_METADATA)
    buf_start, buf_n = fb.vector(root, _MODEL_BUFFERS)
    for i in range(meta_n):
        entry = fb.table_at(meta_start, i)
        if fb.string(entry, _METADATA_NAME) != name:
            continue
        index = fb.scalar(entry, _METADATA_BUFFER, "<I")
        if index >= buf_n:
            raise MetadataError(f"metadata {name!r} names buffer {index}, the model has {buf_n}")
        buffer = fb.table_at(buf_start, index)
        start, n = fb.vector(buffer, _BUFFER_DATA)
        if n == 0:  # large models keep buffers after the flatbuffer, addressed by offset/size
            start = fb.scalar(buffer, _BUFFER_OFFSET, "<Q")
            n = fb.scalar(buffer, _BUFFER_SIZE, "<Q")
        if n > MAX_JSON_BYTES or start + n > len(model):
            raise MetadataError(f"metadata {name!r} is {n} bytes at {start}: corrupt or over {MAX_JSON_BYTES}")
        return start, n
    return None


def read_model_bytes(path: str | Path) -> bytes:
    """A model file's bytes, refused above :data:`MAX_MODEL_BYTES` before it is read.

    Raises:
        MetadataError: unreadable or too large, with the path.
    """
    path = Path(path)
    try:
        return read_bounded(path, MAX_MODEL_BYTES)
    except FileTooLarge as e:
        raise MetadataError(str(e)) from None
    except OSError as e:
        raise MetadataError(f"{path}: cannot read model file ({e.strerror or e})") from None


def read_model_info(path: str | Path) -> ModelInfo | None:
    """The embedded :class:`ModelInfo` of a ``.tflite`` file, or None for a plain model.

    Raises:
        MetadataError: unreadable file, corrupt flatbuffer, or a malformed record.
    """
    return model_info(read_model_bytes(path))


def model_info(model: bytes) -> ModelInfo | None:
    """The embedded :class:`ModelInfo` of a ``.tflite`` model's bytes, or None for a plain model.

    Raises:
        MetadataError: corrupt flatbuffer or a malformed record.
    """
    raw = read_metadata_bytes(model)
    return None if raw is None else ModelInfo.from_json_bytes(raw)
