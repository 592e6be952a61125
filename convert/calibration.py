"""Calibration samples for post-training quantization: real photos through the one preprocessing.

Each photo gives several deterministic views (the center crop, its mirror image, and tighter
crops at three larger scales), so a few dozen scenes cover the range of object sizes and positions a
camera sees. Crops come from :func:`edge_runtime.preprocess.resize_crop`, exactly as on the device.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.preprocess import Preprocessing, PreprocessingError, read_image, read_images, resize_crop

# Scales of the resize relative to the record's resize (1.0 = the validation view). Measured on
# val500 (top-1 agreement int8 vs float, all else default): (1.0, 1.3) 93.6%, these four 94.6%.
DEFAULT_SCALES = (1.0, 1.3, 1.7, 2.2)


def views(path: Path, pp: Preprocessing, scales: tuple[float, ...] = DEFAULT_SCALES,
          mirror: bool = True) -> list[np.ndarray]:
    """Deterministic calibration views of one photo file (uint8 crops in the model's input layout), each scale
    cut from the photo decoded for it, as the runtime decodes it for a model of that resize (a large JPEG
    reduced: :func:`edge_runtime.preprocess.read_images`).

    Raises:
        PreprocessingError: unreadable, or over the budgets.
    """
    fits = [_scaled(pp, s) for s in scales]
    out = []
    for image, fit in zip(read_images(str(path), fits), fits):
        crop = resize_crop(image, fit)
        out.append(crop)
        if mirror:
            out.append(np.ascontiguousarray(crop[:, ::-1]))
    return out


def _scaled(pp: Preprocessing, s: float) -> Preprocessing:
    """``pp`` with its resize ``s`` times larger: the view of one scale."""
    rh, rw = pp.resize
    return dataclasses.replace(pp, resize=(max(pp.input_size[0], round(rh * s)), round(rw * s) if rw else 0))


def load_views(paths: list[Path], pp: Preprocessing, scales: tuple[float, ...] = DEFAULT_SCALES,
               mirror: bool = True) -> tuple[np.ndarray, list[str]]:
    """(N x H x W x 3 uint8 crops, skipped files) for a list of image paths."""
    crops, skipped = [], []
    for path in paths:
        try:
            crops.extend(views(path, pp, scales, mirror))
        except PreprocessingError:
            skipped.append(str(path))
    return (np.stack(crops) if crops else np.zeros((0, *pp.input_size, 3), np.uint8)), skipped


MIN_CALIB_IMAGES = 20
HOLDOUT_EVERY = 5  # every 5th calibration image is held out to validate on unseen photos


@dataclass(frozen=True)
class CalibrationSet:
    """The calibration photos of a conversion and their views."""

    folder: Path
    images: list[Path]  # photos whose views calibrate the ranges
    held_out: list[Path]  # every HOLDOUT_EVERY-th readable photo, checked against instead
    skipped: list[str]  # files that are not readable images, with the reason
    views: np.ndarray  # N x H x W x 3 uint8: DEFAULT_SCALES (or the given scales) views of ``images``, mirrored

    def summary(self) -> dict:
        """The record the artifact and the report carry."""
        return {"images": len(self.images), "views": int(len(self.views)), "held_out": len(self.held_out),
                "skipped": len(self.skipped), "folder": self.folder.name}


def calibration_set(folder: Path, pp: Preprocessing, scales: tuple[float, ...] = DEFAULT_SCALES) -> CalibrationSet:
    """The photos of ``folder`` split into calibration and held-out images, with the calibration views.

    Raises:
        ConvertError: no folder, or fewer than MIN_CALIB_IMAGES usable photos.
    """
    used, held, skipped = calibration_photos(folder)
    views, _ = load_views(used, pp, scales=scales)
    return CalibrationSet(Path(folder), used, held, skipped, views)


def calibration_photos(folder: Path, name: str | None = None) -> tuple[list[Path], list[Path], list[str]]:
    """(calibration photos, held-out photos, skipped files) of ``folder``: its readable images, every
    HOLDOUT_EVERY-th held out (also what ``train --tflite`` checks before training; ``name``: the folder
    as the message names it, default its path).

    Raises:
        ConvertError: no folder, or fewer than MIN_CALIB_IMAGES usable photos.
    """
    from .calibration_data import list_calibration_images
    from .errors import ConvertError

    paths, skipped = list_calibration_images(folder)
    readable = []
    for p in paths:
        try:
            read_image(str(p))
            readable.append(p)
        except PreprocessingError:
            skipped.append(f"{p.name} (unreadable image)")
    held = readable[HOLDOUT_EVERY - 1::HOLDOUT_EVERY]
    used = [p for p in readable if p not in held]
    if len(used) < MIN_CALIB_IMAGES:
        raise ConvertError(f"{name or folder}: {len(used)} usable calibration images after holding out every "
                           f"{HOLDOUT_EVERY}th ({len(skipped)} files skipped); at least {MIN_CALIB_IMAGES} "
                           "expected (real photos of the scenes the camera will see)")
    return used, held, skipped
