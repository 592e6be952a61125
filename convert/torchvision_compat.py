"""``import torchvision`` beside the CPU build of torch: the project's one place that imports it.

Why: PyPI's torchvision 0.28.0 (the release matching torch 2.13.0) is a CUDA build. Its compiled
ops library fails to load beside the CPU torch, so the ``torchvision::nms`` / ``torchvision::qnms``
schemas are never defined, and ``import torchvision`` then raises ``RuntimeError: operator
torchvision::nms does not exist`` while registering their fake (meta) kernels. Defining the two
schemas first lets the import finish; nothing here calls them (datasets and transforms v2 do not
need compiled ops). With a torchvision whose ops load (a CPU build), the plain import succeeds and
nothing is defined.
"""
from __future__ import annotations

import sys
from types import ModuleType

_LIBRARY = None  # kept alive: the schemas are dropped when the Library object is collected


def _define_missing_schemas() -> None:
    global _LIBRARY
    import torch

    _LIBRARY = torch.library.Library("torchvision", "DEF")
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


def import_torchvision() -> ModuleType:
    """The ``torchvision`` module, importable even when its compiled ops do not load."""
    try:
        import torchvision
    except RuntimeError as e:
        if "torchvision::" not in str(e) or _LIBRARY is not None:
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]  # drop the half-initialized modules before importing again
        _define_missing_schemas()
        import torchvision
    return torchvision
