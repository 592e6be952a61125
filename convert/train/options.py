"""What a training run is: its options, their defaults, and the phases they give."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TrainError
from .data import DEFAULT_FRAME_STRIDE

# Options that define a run: --resume continues a run only with the same values.
IDENTITY = ("arch", "arch_kwargs", "weights", "epochs", "batch_size", "lr", "finetune_lr", "freeze_epochs", "input_size",
            "resize", "min_scale", "dsd", "dsd_epochs", "seed", "val_split", "momentum", "weight_decay",
            "frame_stride")

@dataclass
class TrainOptions:
    """What to train. ``None`` means the default (or, with ``resume``, the run's own value)."""

    data: Path
    out: Path
    val: Path | None = None
    val_split: float | None = None  # default 0.15 (without --val)
    test: Path | None = None  # labelled images evaluated after each phase, never used for choices
    arch: str | None = None  # default: the initial weights' architecture, else squeezenet1_0
    arch_kwargs: dict | None = None  # builder arguments, e.g. {"sr": 0.5} for squeezenet_custom; default {}
    weights: str | None = None  # "deep-compression" (default), "none", a named source or a file
    epochs: int | None = None  # default 10 (head + full phases)
    batch_size: int | None = None  # global batch (divided among processes); default 64
    lr: float | None = None  # default 0.04 * batch / 512 (the paper's rate, scaled linearly)
    finetune_lr: float | None = None  # full-phase rate relative to lr after a head phase; default 0.5
    freeze_epochs: int | None = None  # default 1 with a new classifier on trained features, else 0
    input_size: int | None = None  # default: the initial weights' own
    resize: tuple[int, int] | None = None  # evaluation resize before the centre crop, (N, 0) shorter side or (H, W)
    # exactly (a run recorded before N|HxW holds an int); default: the weights' resize-to-crop ratio
    min_scale: float | None = None  # random resized crop's smallest area fraction; default 0.35
    dsd: float | None = None  # sparsity of DSD's sparse phase (e.g. 0.5); None: no DSD
    dsd_epochs: int | None = None  # epochs of each DSD phase; default 3
    seed: int | None = None  # default 0
    momentum: float | None = None
    weight_decay: float | None = None
    frame_stride: int | None = None
    resume: bool = False
    workers: int = 0
    device: str = "cpu"
    threads: int | None = None
    quiet: bool = False
    argv: list[str] = field(default_factory=list)  # the command line, for run.json


DEFAULTS = {"weights": "deep-compression", "epochs": 10, "batch_size": 64, "finetune_lr": 0.5, "min_scale": 0.35,
            "dsd_epochs": 3, "seed": 0, "momentum": 0.9, "weight_decay": 2e-4, "frame_stride": DEFAULT_FRAME_STRIDE}


@dataclass
class Phase:
    name: str
    epochs: int
    lr: float
    head_only: bool = False
    sparsity: float | None = None


def plan(o: TrainOptions) -> list[Phase]:
    """The phases of a run with resolved options."""
    phases = []
    rest = o.epochs - o.freeze_epochs
    if o.freeze_epochs:
        phases.append(Phase("head", o.freeze_epochs, o.lr, head_only=True))
    full_lr = o.lr * (o.finetune_lr if o.freeze_epochs else 1.0)
    if rest:
        phases.append(Phase("full", rest, full_lr))
    if o.dsd is not None:
        phases.append(Phase("sparse", o.dsd_epochs, full_lr, sparsity=o.dsd))
        phases.append(Phase("redense", o.dsd_epochs, full_lr / 10))
    return phases


def options_dict(o: TrainOptions) -> dict:
    """The options as plain data (for run.json and the checkpoint)."""
    d = {}
    for f in dataclasses.fields(o):
        v = getattr(o, f.name)
        d[f.name] = str(v) if isinstance(v, Path) else v
    return d


def resolve_identity(o: TrainOptions, saved: dict | None) -> TrainOptions:
    """Fill unset identity options from a resumed run (differences are errors), then defaults."""
    o = dataclasses.replace(o)
    if saved is not None:
        for name in IDENTITY:
            given, was = getattr(o, name), saved.get(name)
            if given is None:
                setattr(o, name, was)
            elif given != was:
                raise TrainError(f"--resume: {o.out} was trained with --{name.replace('_', '-')} {was}, not "
                                 f"{given} (a resumed run continues unchanged; start a new --out instead)")
        for name in ("data", "val"):
            if saved.get(name) and getattr(o, name) is None:
                setattr(o, name, Path(saved[name]))
    for name, value in DEFAULTS.items():
        if getattr(o, name) is None:
            setattr(o, name, value)
    return o
