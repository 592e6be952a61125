"""Preprocessing records of the ImageNet weight families, in one place (no torch needed).

A record says what a model expects of its input pixels (see :class:`edge_runtime.preprocess.Preprocessing`);
weights records, the ONNX defaults and the command lines all take them from here.
"""
from __future__ import annotations

import dataclasses

from edge_runtime.preprocess import Preprocessing

# The Caffe release (Deep Compression SqueezeNet): BGR, mean subtracted, 256x256 then 227x227.
CAFFE_IMAGENET = Preprocessing(input_size=(227, 227), resize=(256, 256), channel_order="BGR",
                               mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0))
# torchvision's ImageNet classifiers: RGB, mean/std (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) in
# 0..255 units, shorter side 256 then 224x224. Also the defaults for a user's ONNX classifier.
TORCHVISION_IMAGENET = Preprocessing(input_size=(224, 224), resize=(256, 0), channel_order="RGB",
                                     mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))
ONNX_DEFAULTS = TORCHVISION_IMAGENET


def at_input_size(record: Preprocessing, size: tuple[int, int]) -> Preprocessing:
    """``record`` for another input size, keeping its resize-to-crop ratio (256/224 for torchvision's)."""
    (h, w), (rh, rw) = record.input_size, record.resize
    if rw == 0:
        resize = (round(min(size) * rh / min(h, w)), 0)
    else:
        resize = (round(size[0] * rh / h), round(size[1] * rw / w))
    return dataclasses.replace(record, input_size=size, resize=resize)
