"""Stage 1 of the conversion: what is converted (a weights source or a user's ONNX classifier).

The :class:`Source` record carries everything the artifact must say about the model (name, labels,
preprocessing, file hash) and the image folders that belong with the weights, if their record names any.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from edge_runtime.labels import imagenet_classes
from edge_runtime.preprocess import Preprocessing

from .errors import ConvertError
from .presets import ONNX_DEFAULTS, at_input_size


@dataclass(frozen=True)
class OnnxInput:
    """What a user says about their ONNX classifier's input; ``None`` takes the value from
    :data:`convert.presets.ONNX_DEFAULTS` (torchvision's ImageNet record at the model's input size)."""

    input_size: tuple[int, int] | None = None  # only checked against the ONNX input
    resize: tuple[int, int] | None = None  # before the center crop: (N, 0) shorter side to N, or (H, W)
    channel_order: str | None = None  # the model's channel order ("RGB" or "BGR")
    mean: tuple[float, float, float] | None = None  # 0..255 units, model channel order
    std: tuple[float, float, float] | None = None

    def preprocessing(self, onnx_size: tuple[int, int], base: Preprocessing | None = None) -> Preprocessing:
        """The full record for an ONNX input of ``onnx_size`` (H, W), from ``base`` (the file's own
        record, :func:`onnx_record`) or :data:`convert.presets.ONNX_DEFAULTS` where the user said nothing.

        Raises:
            ConvertError: ``input_size`` given and different from the ONNX input.
        """
        if self.input_size is not None and tuple(self.input_size) != tuple(onnx_size):
            raise ConvertError(f"--input-size {self.input_size[0]}x{self.input_size[1]} does not match the "
                               f"ONNX input {onnx_size[0]}x{onnx_size[1]}")
        pp = base or at_input_size(ONNX_DEFAULTS, tuple(onnx_size))
        given = {"channel_order": self.channel_order, "mean": self.mean, "std": self.std,
                 "resize": tuple(self.resize) if self.resize else None}
        return dataclasses.replace(pp, **{k: v for k, v in given.items() if v is not None})


@dataclass(frozen=True)
class Source:
    """What is being converted, with everything the artifact must carry."""

    name: str
    preprocessing: Preprocessing
    labels: list[str]
    wnids: list[str]
    sha256: str  # of the weights or ONNX file actually loaded
    torch_model: object | None = None  # PixelModel: raw BGR pixels in, logits out
    onnx_path: Path | None = None  # a user's ONNX classifier (normalized input), when no torch model
    calib_dir: Path | None = None  # calibration photos named by the weights' record
    val_dir: Path | None = None  # labelled validation images named by the weights' record
    check_reference: tuple[int, ...] = ()  # the weights' margin-band mix (convert.fidelity.unlabelled_figures)
    extra: dict = field(default_factory=dict)  # recorded in the artifact as is (arch, weights name)


def load_source(weights: str | None = None, arch: str | None = None, onnx: Path | None = None,
                onnx_input: OnnxInput | None = None, labels: list[str] | None = None,
                name: str | None = None) -> Source:
    """The model to convert: ``onnx`` if given, else ``weights`` (default "deep-compression").

    Raises:
        ConvertError: missing or unloadable model, labels that do not fit it.
    """
    if onnx is not None:
        return _onnx_source(Path(onnx), onnx_input or OnnxInput(), labels, name)
    from .pixel_model import PixelModel
    from .weights import load_model

    model, record = load_model(weights or "deep-compression", arch)
    return Source(name or record.name, record.preprocessing, list(record.labels), list(record.wnids),
                  record.sha256, torch_model=PixelModel(model, record.preprocessing),
                  calib_dir=record.calib_dir, val_dir=record.val_dir, check_reference=record.check_reference,
                  extra={"arch": record.arch, "weights": record.name,
                         **({"license": record.licence} if record.licence else {})})


def _onnx_source(path: Path, onnx_input: OnnxInput, labels: list[str] | None, name: str | None) -> Source:
    from .export import classifier_signature
    from .weights import sha256_file

    if not path.is_file():
        raise ConvertError(f"{path}: ONNX file not found")
    model, size, classes = classifier_signature(path)
    check_onnx_runs(path, size, classes)
    own = onnx_record(model, path, size, classes)  # the converter's own float ONNX describes itself
    pp = onnx_input.preprocessing(size, own.preprocessing if own else None)
    if labels is None and own is not None:
        labels, wnids = own.labels, own.wnids
    else:
        wnids = list(imagenet_classes()[0]) if classes == 1000 and labels is None else []
    if labels is None:  # an empty --labels file is not "no --labels": it is refused below
        labels = list(imagenet_classes()[1]) if classes == 1000 else [str(i) for i in range(classes)]
    if len(labels) != classes:
        raise ConvertError(f"{len(labels)} labels given for a model with {classes} outputs")
    return Source(name or (own and own.model_name) or path.stem, pp, labels, wnids, sha256_file(path),
                  onnx_path=path, check_reference=own.check_reference if own else (),
                  extra=own.extra if own else {})


@dataclass(frozen=True)
class OnnxRecord:
    """What a float ONNX the converter wrote says about itself (:func:`convert.artifact.float_onnx_sibling`)."""

    preprocessing: Preprocessing  # for its input: BGR pixels 0..255, no mean or std (they are in the graph)
    labels: list[str]
    wnids: list[str]
    model_name: str
    check_reference: tuple[int, ...]
    extra: dict  # arch, weights, license as recorded


def onnx_record(model, path: Path, size: tuple[int, int], classes: int) -> OnnxRecord | None:
    """The converter's record in the metadata of ``model`` (the ONNX file ``path``, loaded; its
    ``metadata_props`` key :data:`edge_runtime.metadata.METADATA_NAME`), or None for an ONNX model without
    one. Read as untrusted: bounded, its schema checked, and refused when it does not fit the graph.

    Raises:
        ConvertError: a record that is malformed or does not describe this graph.
    """
    from edge_runtime.metadata import METADATA_NAME, MetadataError, ModelInfo, clean_text

    from .fidelity import MARGIN_EDGES

    props = [p.value for p in model.metadata_props if p.key == METADATA_NAME]
    if not props:
        return None
    raw = props[-1]  # protobuf gives bytes for a string field that is not UTF-8
    try:
        info = ModelInfo.from_json_bytes(raw if isinstance(raw, bytes) else raw.encode("utf-8"))
    except MetadataError as e:
        raise ConvertError(f"{path}: its {METADATA_NAME} record is unreadable ({e})") from None
    pp = info.preprocessing
    problem = ("it is not the record of a float model the converter wrote (no float_sibling_of)"
               if not isinstance(info.extra.get("float_sibling_of"), str)
               else "it does not say float32 pixels in" if info.input_dtype != "float32"
               else f"it says input {pp.input_size[0]}x{pp.input_size[1]}, the graph takes {size[0]}x{size[1]}"
               if tuple(pp.input_size) != tuple(size)
               else f"it names {len(info.labels)} labels, the graph has {classes} outputs"
               if len(info.labels) != classes else None)
    if problem:
        raise ConvertError(f"{path}: its {METADATA_NAME} record does not fit the model: {problem}")
    reference = info.extra.get("check_reference", [])
    if reference != [] and not (isinstance(reference, list) and len(reference) == len(MARGIN_EDGES) + 1
                          and all(type(c) is int and 0 <= c <= 10**9 for c in reference) and sum(reference) > 0):
        raise ConvertError(f"{path}: its {METADATA_NAME} record's check_reference is not "
                           f"{len(MARGIN_EDGES) + 1} counts of images")
    extra = {k: clean_text(info.extra[k]) for k in ("arch", "weights", "license")
             if isinstance(info.extra.get(k), str)}
    return OnnxRecord(dataclasses.replace(pp, channel_order=info.input_channel_order, mean=(0.0, 0.0, 0.0),
                                          std=(1.0, 1.0, 1.0)),
                      info.labels, info.wnids if len(info.wnids) == classes else [], info.model_name,
                      tuple(reference), extra)


def check_onnx_runs(path: Path, size: tuple[int, int], classes: int) -> None:
    """Run the ONNX model once: it must load and give the output its graph declares (a model whose
    declared shape is false would otherwise fail after the whole conversion).

    Raises:
        ConvertError: ONNX Runtime cannot run it, or its output is not (1, classes).
    """
    import numpy as np
    import onnxruntime as ort

    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        out = sess.run(None, {inp.name: np.zeros((1, 3, *size), np.float32)})[0]
    except Exception as e:  # onnxruntime raises its own types for models it cannot run
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ConvertError(f"{path}: ONNX Runtime cannot run this model ({first})") from None
    if tuple(np.shape(out)) != (1, classes):
        raise ConvertError(f"{path}: the graph declares an output of shape (1, {classes}), running it gives "
                           f"{tuple(np.shape(out))}")


def float_bytes(src: Source) -> int:
    """Bytes of the float weights being converted (drives the free space a conversion needs)."""
    if src.torch_model is not None:
        return sum(p.numel() * 4 for p in src.torch_model.parameters())
    return Path(src.onnx_path).stat().st_size
