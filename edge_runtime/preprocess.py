"""The one implementation of image preprocessing.

Calibration, validation, the evaluator, the benchmark and the camera loop all call
:func:`resize_crop`. It does only geometry (resize, crop, channel order) on uint8 pixels: the
arithmetic (mean/std) is folded into the model graph, so the device never does float math per frame.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import cv2
import numpy as np

from .fileio import FileTooLarge, read_bounded
from .image_size import ImageHeaderError, image_size

# The pixel budget of one image: larger ones are refused from their header, before decoding (a
# decoded image costs 3 bytes per pixel, and a small file can claim any size). 50 megapixels is an
# 8160x6120 photo, 150 MB decoded.
MAX_IMAGE_PIXELS = 50_000_000
MAX_IMAGE_BYTES = 256 << 20  # an image file larger than this is not read at all
# A network input's side in pixels: what every record, --input-size flag and trainer accepts.
MIN_INPUT_SIDE, MAX_INPUT_SIDE = 8, 4096
# JPEG decodes at 1/2, 1/4 or 1/8 scale in a fraction of the time and memory of a full decode (libjpeg's DCT
# scaling: an averaging downscale, not a subsampling). A photo read for a model is decoded at the smallest of
# these that keeps at least REDUCED_MARGIN times the pixels per side the model's resize keeps, so the resize
# that follows still shrinks it at least that much (a 12-megapixel phone photo for a 256 resize: 1/4).
_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))
REDUCED_MARGIN = 2

_INTERPOLATIONS = {"linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA, "cubic": cv2.INTER_CUBIC}
_ORDERS = ("BGR", "RGB")


class PreprocessingError(ValueError):
    """A preprocessing record or an image does not fit what is expected."""


class ImageTooLarge(PreprocessingError):
    """An image over the pixel (or file size) budget, refused before decoding."""


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects of its input pixels; travels with the weights and the artifact.

    Attributes:
        input_size: (height, width) of the network input.
        resize: (height, width) of the exact resize before the crop, or ``(s, 0)`` to resize the
            shorter side to ``s`` keeping the aspect ratio.
        channel_order: channel order the *float* network was trained on ("BGR" or "RGB").
        mean, std: per-channel statistics in ``channel_order``, in 0..255 pixel units.
        interpolation: "linear", "area" or "cubic".
    """

    input_size: tuple[int, int]
    resize: tuple[int, int]
    channel_order: str = "RGB"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    interpolation: str = "linear"
    crop: str = field(default="center")

    def __post_init__(self) -> None:
        h, w = self.input_size
        rh, rw = self.resize
        if not (MIN_INPUT_SIDE <= h <= MAX_INPUT_SIDE and MIN_INPUT_SIDE <= w <= MAX_INPUT_SIDE):
            raise PreprocessingError(f"input_size {self.input_size}: {MIN_INPUT_SIDE}..{MAX_INPUT_SIDE} expected "
                                     "per side")
        if rw == 0:
            if not (min(h, w) <= rh <= 8192):
                raise PreprocessingError(f"shorter-side resize {rh}: {min(h, w)}..8192 expected")
        elif not (h <= rh <= 8192 and w <= rw <= 8192):
            raise PreprocessingError(f"resize {self.resize}: from input_size {self.input_size} to 8192 per side "
                                     "expected")
        if self.channel_order not in _ORDERS:
            raise PreprocessingError(f"channel_order {self.channel_order!r}: one of {_ORDERS} expected")
        if self.interpolation not in _INTERPOLATIONS:
            raise PreprocessingError(
                f"interpolation {self.interpolation!r}: one of {sorted(_INTERPOLATIONS)} expected")
        if self.crop != "center":
            raise PreprocessingError(f"crop {self.crop!r}: 'center' expected")
        if len(self.mean) != 3 or len(self.std) != 3 or not all(math.isfinite(v) for v in (*self.mean, *self.std)) \
                or any(s <= 0 for s in self.std):
            raise PreprocessingError(f"mean {self.mean} / std {self.std}: 3 finite values, std > 0 expected")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Any) -> "Preprocessing":
        """Build from untrusted JSON; raises PreprocessingError on anything malformed."""
        if not isinstance(d, dict):
            raise PreprocessingError(f"preprocessing: an object expected, got {type(d).__name__}")
        try:
            return cls(
                input_size=_pair(d["input_size"], int),
                resize=_pair(d["resize"], int),
                channel_order=str(d.get("channel_order", "RGB")),
                mean=_triple(d.get("mean", (0, 0, 0))),
                std=_triple(d.get("std", (1, 1, 1))),
                interpolation=str(d.get("interpolation", "linear")),
                crop=str(d.get("crop", "center")),
            )
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, PreprocessingError):
                raise
            raise PreprocessingError(f"preprocessing record malformed: {e!r}") from None

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of the image after the resize step, for a source of that size."""
        rh, rw = self.resize
        if rw:
            return rh, rw
        if height <= width:
            return rh, max(self.input_size[1], round(width * rh / height))
        return max(self.input_size[0], round(height * rh / width)), rh


def _int(v: Any) -> int:
    """A whole number from untrusted JSON (an int, or a float with no fraction), bounded."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise PreprocessingError(f"a whole number expected, got {clean(v)}")
    if isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
        raise PreprocessingError(f"a whole number expected, got {clean(v)}")
    if not -(1 << 31) <= v < 1 << 31:
        raise PreprocessingError(f"{clean(v)}: out of range")
    return int(v)


def _float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise PreprocessingError(f"a finite number expected, got {clean(v)}")
    return float(v)


def clean(v: Any, limit: int = 40) -> str:
    """A short printable rendering of an untrusted value for an error message."""
    text = repr(v) if not isinstance(v, (list, dict)) else type(v).__name__
    text = text if len(text) <= limit else text[:limit] + "..."
    return "".join(c if c.isprintable() else "?" for c in text)


def _pair(v: Any, t: type = int) -> tuple[int, int]:
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise PreprocessingError(f"a pair expected, got {clean(v)}")
    return (_int(v[0]), _int(v[1]))


def _triple(v: Any) -> tuple[float, float, float]:
    if not isinstance(v, (list, tuple)) or len(v) != 3:
        raise PreprocessingError(f"three values expected, got {clean(v)}")
    return (_float(v[0]), _float(v[1]), _float(v[2]))


def resize_crop(image_bgr: np.ndarray, pp: Preprocessing, out: np.ndarray | None = None,
                rgb: bool = False) -> np.ndarray:
    """Resize then center-crop a BGR uint8 image to ``pp.input_size``.

    Args:
        image_bgr: HxWx3 uint8 image in OpenCV's BGR order (HxW grayscale is accepted).
        pp: the model's preprocessing record.
        out: optional HxWx3 uint8 destination (for example the interpreter's input buffer);
            the crop is copied into it, so the caller needs no further copy.
        rgb: return RGB instead of BGR (for models whose input is RGB).

    Returns:
        The HxWx3 uint8 crop (``out`` when given).

    Raises:
        PreprocessingError: the image is empty or not 8-bit, 1- or 3-channel.
        ImageTooLarge: the resized image would exceed :data:`MAX_IMAGE_PIXELS`.
    """
    if image_bgr is None or not isinstance(image_bgr, np.ndarray) or image_bgr.size == 0:
        raise PreprocessingError("empty image: an HxWx3 uint8 array expected")
    if image_bgr.dtype != np.uint8:
        raise PreprocessingError(f"image dtype {image_bgr.dtype}: uint8 expected")
    if image_bgr.ndim == 2:
        image_bgr = cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
    elif image_bgr.ndim != 3 or image_bgr.shape[2] not in (3, 4):
        raise PreprocessingError(f"image shape {image_bgr.shape}: HxWx3 expected")
    elif image_bgr.shape[2] == 4:
        image_bgr = cv2.cvtColor(image_bgr, cv2.COLOR_BGRA2BGR)
    h, w = image_bgr.shape[:2]
    rh, rw = pp.resized_shape(h, w)
    if rh * rw > MAX_IMAGE_PIXELS:  # a thin strip resized by its shorter side grows without bound
        raise ImageTooLarge(f"image of {w}x{h} pixels: resized to {rw}x{rh} it would exceed the budget of "
                            f"{MAX_IMAGE_PIXELS:,} pixels")
    resized = image_bgr if (rh, rw) == (h, w) else cv2.resize(
        image_bgr, (rw, rh), interpolation=_INTERPOLATIONS[pp.interpolation])
    ch, cw = pp.input_size
    y0, x0 = (rh - ch) // 2, (rw - cw) // 2
    crop = resized[y0:y0 + ch, x0:x0 + cw]
    if rgb:
        crop = crop[..., ::-1]
    if out is None:
        return np.ascontiguousarray(crop)
    if out.shape[-3:] != (ch, cw, 3):
        raise PreprocessingError(f"destination shape {out.shape}: (..., {ch}, {cw}, 3) expected")
    np.copyto(out.reshape(ch, cw, 3), crop, casting="unsafe")
    return out


def decode_scale(fit: Preprocessing, width: int, height: int) -> int:
    """The JPEG decoding scale (1, 2, 4 or 8) :func:`read_image` uses for an image of ``width`` x ``height``
    read for ``fit``: the largest that keeps :data:`REDUCED_MARGIN` times the pixels ``fit``'s resize keeps on
    each side, whichever way the photo's orientation tag turns it."""
    def keeps(scale: int, h: int, w: int) -> bool:
        rh, rw = fit.resized_shape(h, w)
        return h // scale >= REDUCED_MARGIN * rh and w // scale >= REDUCED_MARGIN * rw

    return next((scale for scale, _ in _REDUCED if keeps(scale, height, width) and keeps(scale, width, height)), 1)


def read_image_bytes(path: str, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[np.ndarray, tuple[int, int, str]]:
    """An image file's bytes and its header's (width, height, format), within both budgets, undecoded:
    :func:`read_image`'s checks, for a reader that decodes otherwise (the training scan's 1/8 scale).

    Raises:
        ImageTooLarge: the header claims more than ``max_pixels`` pixels, or the file is over
            :data:`MAX_IMAGE_BYTES`.
        PreprocessingError: unreadable file or unknown format.
    """
    name = os.path.basename(path)
    try:
        data = np.frombuffer(read_bounded(path, MAX_IMAGE_BYTES), dtype=np.uint8)
    except FileTooLarge:
        raise ImageTooLarge(f"{name}: over the image file budget of {MAX_IMAGE_BYTES:,} bytes") from None
    except OSError as e:
        raise PreprocessingError(f"{name}: cannot read ({e.strerror or e})") from None
    try:
        w, h, fmt = image_size(memoryview(data))
    except ImageHeaderError as e:
        raise PreprocessingError(f"{name}: not a readable image ({e})") from None
    if w * h > max_pixels:
        raise ImageTooLarge(f"{name}: {fmt} of {w}x{h} pixels, over the budget of {max_pixels:,} pixels")
    return data, (w, h, fmt)


def read_image(path: str, max_pixels: int = MAX_IMAGE_PIXELS, fit: Preprocessing | None = None) -> np.ndarray:
    """Decode an image file to BGR uint8, after checking its size from its header.

    The one image reader of the project (runtime folder source, evaluator, calibration). With ``fit``, the
    preprocessing the image is read for, a large JPEG is decoded at a reduced scale (:func:`decode_scale`):
    what every reader of photos for a model passes, so they all see the same pixels.

    Raises:
        ImageTooLarge: the header claims more than ``max_pixels`` pixels, or the file is over
            :data:`MAX_IMAGE_BYTES`; nothing was decoded.
        PreprocessingError: unreadable file, unknown format, corrupt data, or not enough memory.
    """
    return read_images(path, [fit], max_pixels)[0]


def read_images(path: str, fits: Sequence[Preprocessing | None], max_pixels: int = MAX_IMAGE_PIXELS
                ) -> list[np.ndarray]:
    """``read_image(path, fit=f)`` for each ``f`` of ``fits``, the file read once and decoded once per scale
    (views of several sizes: each cut from the photo decoded for its own size). Raises as read_image."""
    name = os.path.basename(path)
    data, (w, h, fmt) = read_image_bytes(path, max_pixels)
    scales = [decode_scale(fit, w, h) if fit is not None and fmt == "JPEG" else 1 for fit in fits]
    decoded = {scale: _decode(data, scale, name, (w, h, fmt)) for scale in dict.fromkeys(scales)}
    return [decoded[scale] for scale in scales]


def _decode(data: np.ndarray, scale: int, name: str, header: tuple[int, int, str]) -> np.ndarray:
    w, h, fmt = header
    try:
        image = cv2.imdecode(data, dict(_REDUCED).get(scale, cv2.IMREAD_COLOR))
    except (cv2.error, MemoryError) as e:  # out of memory, or a decoder's own limit
        first = str(e).strip().splitlines()[-1][:120] if str(e).strip() else type(e).__name__
        raise PreprocessingError(f"{name}: cannot decode this {w}x{h} {fmt} ({first})") from None
    if image is None:
        raise PreprocessingError(f"{name}: not a readable image (corrupt {fmt} data)")
    return image
