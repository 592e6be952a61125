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


def load(path: Path, resume: bool = False) -> dict:
    """A checkpoint written by :func:`save` (never unpickles objects: ``weights_only=True``), its
    fields checked before use; with ``resume``, the training state that ``last.pt`` adds too.

    Raises:
        TrainError: missing, too large, not loadable, not a training checkpoint, or a field of the
            wrong kind.
    """
    from ..weights import read_weights_only

    path = Path(path)
    if not path.is_file():
        raise TrainError(f"{path}: no such checkpoint")
    obj = read_weights_only(path)
    if not is_training_checkpoint(obj):
        raise TrainError(f"{path}: not a training checkpoint of this project (record format {FORMAT!r} expected)")
    check_fields(obj, path, resume)
    return obj


# The fields training reads, and their kinds (the record is plain data from an untrusted file).
RECORD_FIELDS = {"arch": str, "labels": list, "preprocessing": dict}
RESUME_FIELDS = {"options": dict, "epoch": int, "history": list, "best": dict, "phases": list, "val_hash": str,
                 "rng": dict}


def check_fields(obj: dict, path: Path, resume: bool) -> None:
    """Every field training reads is present and of its kind, so a damaged or hand-edited checkpoint is
    one line, not a traceback halfway through setting up.

    Raises:
        TrainError: the first field that is not.
    """
    def expect(where: dict, fields: dict, prefix: str) -> None:
        for name, kind in fields.items():
            if not isinstance(where.get(name), kind) or isinstance(where.get(name), bool):
                raise TrainError(f"{path}: not a usable checkpoint ({prefix}{name}: {kind.__name__} expected)")

    rec = obj["record"]
    expect(rec, RECORD_FIELDS, "record.")
    if not rec["labels"] or not all(isinstance(label, str) for label in rec["labels"]):
        raise TrainError(f"{path}: not a usable checkpoint (record.labels: class names expected)")
    if not resume:
        return
    state = obj.get("train_state")
    if not isinstance(state, dict):
        raise TrainError(f"{path}: holds no training state to resume from (best.pt cannot be resumed; last.pt can)")
    expect(state, RESUME_FIELDS, "train_state.")
    expect(rec, {"data": dict}, "record.")
    if state["epoch"] < 0 or not isinstance(rec["data"].get("content_hash"), str):
        raise TrainError(f"{path}: not a usable checkpoint (train_state.epoch or record.data.content_hash)")


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
    """Restore :func:`rng_state`'s values.

    Raises:
        TrainError: the values are not generator states (a damaged or hand-edited checkpoint).
    """
    try:
        random.setstate(tuple(state["python"]))
        torch.set_rng_state(state["torch"])
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as e:
        raise TrainError(f"the checkpoint's random generator states cannot be restored ({e})") from None
