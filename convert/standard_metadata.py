"""Standard TFLite Metadata (the schema MediaPipe Tasks and the TFLite Support library read).

Written with the ``flatbuffers`` package from the published schema (``metadata_schema.fbs``, file
identifier ``M001``): the well-kept writers of the field (tflite-support, MediaPipe's
``metadata_writers``) do not install beside the converter's stack (tflite-support pins
protobuf < 4 against TensorFlow's 7; MediaPipe brings a second OpenCV that overwrites ``cv2``).
The record goes into the model's ``metadata`` list under ``TFLITE_METADATA``; associated files
(the label file) are packed as a zip archive appended to the flatbuffer, as the schema's
populator does, so any zip reader lists them and interpreters ignore them.
"""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

STANDARD_NAME = "TFLITE_METADATA"
FILE_IDENTIFIER = b"M001"
MIN_PARSER_VERSION = "1.0.0"  # only fields of the schema's first version are used
LABEL_FILE = "labels.txt"

# enum values of metadata_schema.fbs
_TENSOR_AXIS_LABELS = 2
_COLOR_UNKNOWN, _COLOR_RGB = 0, 1
_CONTENT_FEATURE, _CONTENT_IMAGE = 1, 2
_PROCESS_NORMALIZATION = 1


@dataclass
class ClassifierDescription:
    """What a stock client needs to know about an image classifier."""

    name: str
    description: str
    version: str
    author: str
    license: str
    input_size: tuple[int, int]  # (height, width)
    input_float: bool  # float32 pixels 0..255 in (needs normalization options) or uint8/int8
    channel_order: str  # "RGB" (what stock clients feed), or "BGR" (declared unknown: MediaPipe refuses it)
    labels: list[str]
    output_description: str
    output_min: float | None
    output_max: float | None


def _string_vector(b, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _float_vector(b, values: list[float]) -> int:
    b.StartVector(4, len(values), 4)
    for v in reversed(values):
        b.PrependFloat32(v)
    return b.EndVector()


def _table(b, fields: list[tuple[str, int, object]]) -> int:
    """One table from (kind, field id, value) triples: kind is 'off', 'u8', 'u32'."""
    b.StartObject(max(fid for _, fid, _ in fields) + 1 if fields else 0)
    for kind, fid, value in fields:
        if value is None:
            continue
        if kind == "off":
            b.PrependUOffsetTRelativeSlot(fid, value, 0)
        elif kind == "u8":
            b.PrependUint8Slot(fid, value, 0)
        elif kind == "u32":
            b.PrependUint32Slot(fid, value, 0)
    return b.EndObject()


def _stats(b, lo: float | None, hi: float | None) -> int | None:
    if lo is None and hi is None:
        return None
    vmax = _float_vector(b, [hi]) if hi is not None else None
    vmin = _float_vector(b, [lo]) if lo is not None else None
    return _table(b, [("off", 0, vmax), ("off", 1, vmin)])


def build(desc: ClassifierDescription) -> bytes:
    """The ModelMetadata flatbuffer for ``desc`` (file identifier M001)."""
    import flatbuffers

    b = flatbuffers.Builder(1024)
    s = b.CreateString
    # input: an image of the model's size; pixels 0..255 (mean/std are folded into the graph, so the
    # normalization options are mean 0, std 1: a client feeding float32 passes the pixel values as they are)
    rgb = desc.channel_order == "RGB"
    size = _table(b, [("u32", 0, desc.input_size[1]), ("u32", 1, desc.input_size[0])])
    image = _table(b, [("u8", 0, _COLOR_RGB if rgb else _COLOR_UNKNOWN), ("off", 1, size)])
    in_content = _table(b, [("u8", 0, _CONTENT_IMAGE), ("off", 1, image)])
    norm = _table(b, [("off", 0, _float_vector(b, [0.0, 0.0, 0.0])), ("off", 1, _float_vector(b, [1.0, 1.0, 1.0]))])
    unit = _table(b, [("u8", 0, _PROCESS_NORMALIZATION), ("off", 1, norm)])
    units = _string_vector(b, [unit])
    in_stats = _stats(b, 0.0, 255.0)
    in_tensor = _table(b, [("off", 0, s("image")),
                           ("off", 1, s(f"{desc.channel_order} pixels 0..255"
                                        f"{' as float32' if desc.input_float else ''}, resized and center-cropped "
                                        f"to {desc.input_size[1]}x{desc.input_size[0]}")),
                           ("off", 3, in_content), ("off", 4, units), ("off", 5, in_stats)])
    # output: one score per class, labels as the standard associated file
    feature = _table(b, [])
    out_content = _table(b, [("u8", 0, _CONTENT_FEATURE), ("off", 1, feature)])
    labels = _table(b, [("off", 0, s(LABEL_FILE)), ("off", 1, s("class names, one per output index")),
                        ("u8", 2, _TENSOR_AXIS_LABELS)])
    out_tensor = _table(b, [("off", 0, s("scores")), ("off", 1, s(desc.output_description)),
                            ("off", 3, out_content), ("off", 5, _stats(b, desc.output_min, desc.output_max)),
                            ("off", 6, _string_vector(b, [labels]))])
    subgraph = _table(b, [("off", 0, s("image_classifier")),
                          ("off", 2, _string_vector(b, [in_tensor])),
                          ("off", 3, _string_vector(b, [out_tensor]))])
    root = _table(b, [("off", 0, s(desc.name)), ("off", 1, s(desc.description)), ("off", 2, s(desc.version)),
                      ("off", 3, _string_vector(b, [subgraph])), ("off", 4, s(desc.author)),
                      ("off", 5, s(desc.license)), ("off", 7, s(MIN_PARSER_VERSION))])
    b.Finish(root, file_identifier=FILE_IDENTIFIER)
    return bytes(b.Output())


def label_file(labels: list[str]) -> bytes:
    return ("\n".join(labels) + "\n").encode("utf-8")


def append_files(model: bytes, files: dict[str, bytes]) -> bytes:
    """``model`` followed by a zip archive of ``files`` (stored, fixed timestamps: reproducible)."""
    buf = io.BytesIO(model)
    buf.seek(0, io.SEEK_END)
    with zipfile.ZipFile(buf, "a", compression=zipfile.ZIP_STORED) as z:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            z.writestr(info, files[name])
    return buf.getvalue()

