"""One model, one frame: resize/crop into the input tensor -> invoke -> top-k.

Quantization constants are always read from the model, never assumed; integer outputs are widened
before the zero point is subtracted.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .integrity import verify as verify_checksum
from .interpreter import create_interpreter
from .labels import imagenet_classes
from .metadata import MAX_LABELS, MetadataError, ModelInfo, model_info, read_model_bytes
from .preprocess import Preprocessing, resize_crop

log = logging.getLogger(__name__)


class ModelError(ValueError):
    """The model is missing, unreadable or not an image classifier this runtime can drive."""


def model_file_problem(path: str | Path) -> str | None:
    """Why ``path`` is no model file to read, as the end of an error line after the path (None when it is a
    file): not there, a folder, or something else (a device, a pipe: read, it may never end)."""
    path = Path(path)
    if path.is_file():
        return None
    if path.is_dir():
        return "a folder, not a model file (a .tflite file expected)"
    if path.exists():
        return "not a regular file (a .tflite file expected)"
    return "model file not found"


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    score: float  # softmax probability


def input_tensor(crop: np.ndarray, dtype, scale: float, zero_point: int) -> np.ndarray:
    """An HxWx3 uint8 crop as a model input of ``dtype``: uint8 as it is, int8 quantized with the
    model's own input parameters, float32 as pixel values 0..255."""
    if dtype == np.uint8:
        return crop
    if dtype == np.int8:
        return np.clip(np.round(crop / (scale or 1.0) + zero_point), -128, 127).astype(np.int8)
    return crop.astype(np.float32)


class Classifier:
    """A TFLite image classifier driven by its embedded metadata.

    Args:
        model_path: the ``.tflite`` file.
        threads: interpreter threads.
        preprocessing: used only for a plain model without embedded metadata (with a warning).
        edgetpu: load the Edge TPU delegate.
        backend: force one interpreter package ("ai-edge-litert", "tflite-runtime", "tensorflow").
        xnnpack: XNNPACK kernels where the interpreter has them instead of TFLite's builtin ones
            (faster; about 2% of int8 decisions differ); None: builtin for a quantized model, XNNPACK
            for a float one (see :func:`edge_runtime.interpreter.create_interpreter`). ``self.xnnpack``
            says what was chosen.
        verify: check the integrity checksum the converter recorded (a few ms); False loads a
            damaged or edited file anyway (for experiments).

    Raises:
        ModelError: missing/corrupt/damaged model, wrong input or output shape.
    """

    def __init__(self, model_path: str | Path, threads: int | None = 2,
                 preprocessing: Preprocessing | None = None, edgetpu: bool = False,
                 backend: str | None = None, verify: bool = True, xnnpack: bool | None = None) -> None:
        path = Path(model_path)
        problem = model_file_problem(path)
        if problem:
            raise ModelError(f"{path}: {problem}")
        # one read: the bytes checked here are the bytes that run (a file replaced while the runtime is up,
        # an over-the-air update, changes nothing until the next start)
        try:
            self.model_bytes = read_model_bytes(path)
            info = model_info(self.model_bytes)
            self.content_sha256 = verify_checksum(self.model_bytes) if verify else None
        except MetadataError as e:
            raise ModelError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None
        try:
            self.interpreter, self.backend, self.xnnpack = create_interpreter(
                str(path), threads, edgetpu, backend, xnnpack, model_content=self.model_bytes)
        except ValueError as e:
            raise ModelError(str(e)) from None
        inp = self.interpreter.get_input_details()
        out = self.interpreter.get_output_details()
        if len(inp) != 1 or len(inp[0]["shape"]) != 4 or inp[0]["shape"][0] != 1 or inp[0]["shape"][3] != 3:
            raise ModelError(f"{path}: input of shape (1, H, W, 3) expected, got "
                             f"{[list(d['shape']) for d in inp]}: not an image classifier")
        if len(out) != 1 or len(out[0]["shape"]) != 2 or out[0]["shape"][0] != 1:
            raise ModelError(f"{path}: one output of shape (1, classes) expected, got "
                             f"{[list(d['shape']) for d in out]}: not an image classifier")
        self.input_index = inp[0]["index"]
        self.output_index = out[0]["index"]
        self.input_dtype = np.dtype(inp[0]["dtype"])
        self.input_scale, self.input_zero_point = inp[0]["quantization"]
        self.output_scale, self.output_zero_point = out[0]["quantization"]
        self.num_classes = int(out[0]["shape"][1])
        if not 1 <= self.num_classes <= MAX_LABELS:
            raise ModelError(f"{path}: output of {self.num_classes} classes: 1..{MAX_LABELS} expected")
        h, w = int(inp[0]["shape"][1]), int(inp[0]["shape"][2])
        if info is None:
            if preprocessing is None:
                raise ModelError(f"{path}: no embedded metadata; give the preprocessing "
                                 "(--resize, --channel-order, ...) on the command line")
            log.warning("%s has no embedded metadata: using the preprocessing given on the command line", path)
            if hasattr(preprocessing, "complete"):
                preprocessing = preprocessing.complete(h, w)
            labels = list(imagenet_classes()[1]) if self.num_classes == 1000 else \
                [str(i) for i in range(self.num_classes)]
            info = ModelInfo(preprocessing=preprocessing, labels=labels, model_name=path.stem,
                             input_dtype=self.input_dtype.name, input_channel_order=preprocessing.channel_order)
        if info.preprocessing.input_size != (h, w):
            raise ModelError(f"{path}: metadata says input {info.preprocessing.input_size}, "
                             f"the graph takes {(h, w)}")
        if len(info.labels) != self.num_classes:
            raise ModelError(f"{path}: {len(info.labels)} labels for {self.num_classes} outputs")
        self.info = info
        self.path = path
        self._rgb = info.input_channel_order == "RGB"
        self._direct = self.input_dtype == np.uint8  # crop straight into the tensor, no arithmetic

    @property
    def preprocessing(self) -> Preprocessing:
        return self.info.preprocessing

    def set_frame(self, frame_bgr: np.ndarray) -> None:
        """Resize/crop one BGR frame into the interpreter's input tensor."""
        if self._direct:
            view = self.interpreter.tensor(self.input_index)()
            resize_crop(frame_bgr, self.info.preprocessing, out=view[0], rgb=self._rgb)
            del view  # the interpreter refuses to invoke while a view of its memory is alive
        else:
            self.set_crop(resize_crop(frame_bgr, self.info.preprocessing))

    def set_crop(self, crop: np.ndarray) -> None:
        """Copy an already cropped HxWx3 uint8 BGR image (as resize_crop returns it) into the input;
        models that take RGB get the channels swapped here."""
        if self._rgb:
            crop = np.ascontiguousarray(crop[..., ::-1])
        data = input_tensor(crop, self.input_dtype, self.input_scale, self.input_zero_point)
        self.interpreter.set_tensor(self.input_index, data[None])

    def invoke(self) -> None:
        self.interpreter.invoke()

    def raw_output(self) -> np.ndarray:
        return self.interpreter.get_tensor(self.output_index)[0]

    def logits(self) -> np.ndarray:
        """The dequantized output of the last invoke, float32 (num_classes,): logits, or for artifacts
        with the exact score head (``info.extra["output"]``) each class's logit minus the best one's,
        which ranks and softmaxes the same."""
        raw = self.raw_output()
        if raw.dtype in (np.int8, np.uint8, np.int16) and self.output_scale:
            return (raw.astype(np.int32) - self.output_zero_point).astype(np.float32) * self.output_scale
        return raw.astype(np.float32)

    def top_k(self, k: int = 5) -> list[Prediction]:
        """The k best classes of the last invoke with softmax probabilities, best first."""
        logits = self.logits()
        k = max(1, min(k, logits.size))
        idx = np.argpartition(-logits, k - 1)[:k]
        idx = idx[np.argsort(-logits[idx], kind="stable")]
        e = np.exp(logits - logits.max())
        probs = e[idx] / e.sum()
        return [Prediction(int(i), self.info.labels[i], float(p)) for i, p in zip(idx, probs)]

    def predict_batch(self, crops: np.ndarray) -> np.ndarray:
        """Dequantized logits (N x classes) for N cropped images: the evaluator's ``predict``."""
        out = []
        for crop in crops:
            self.set_crop(crop)
            self.invoke()
            out.append(self.logits())
        return np.stack(out)

    def classify(self, frame_bgr: np.ndarray, k: int = 5) -> list[Prediction]:
        self.set_frame(frame_bgr)
        self.invoke()
        return self.top_k(k)
