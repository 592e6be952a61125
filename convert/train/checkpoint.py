"""Checkpoints: a state dict plus a plain-data record, loadable with ``torch.load(weights_only=True)``.

``best.pt`` holds ``{"model": state_dict, "record": {...}}``; ``last.pt`` adds ``"train_state"``
(optimizer, schedule, epoch, RNG states, DSD masks, best so far, the per-epoch history), so a killed
run resumes where its last completed epoch ended. Every file is written atomically.
"""
from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import torch

from edge_runtime.fileio import atomic_write

from ..errors import TrainError
from ..weights import TRAINING_FORMAT as FORMAT  # one definition: the weights loader reads these records

VERSION = 1


def save(path: Path, obj: dict) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


def load(path: Path) -> dict:
    """A checkpoint written by :func:`save` (never unpickles objects: ``weights_only=True``).

    Raises:
        TrainError: missing, too large, not loadable, or not a training checkpoint.
    """
    from ..weights import read_weights_only

    path = Path(path)
    if not path.is_file():
        raise TrainError(f"{path}: no such checkpoint")
    obj = read_weights_only(path)
    if not is_training_checkpoint(obj):
        raise TrainError(f"{path}: not a training checkpoint of this project (record format {FORMAT!r} expected)")
    return obj


def is_training_checkpoint(obj) -> bool:
    return (isinstance(obj, dict) and isinstance(obj.get("record"), dict)
            and obj["record"].get("format") == FORMAT and isinstance(obj.get("model"), dict))


def rng_state() -> dict:
    """Python, numpy and torch generator states as weights-only-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached": float(cached)}}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
