"""What rank 0 decides before training: options, data, split, model, resume state; and the record
saved with the weights."""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from edge_runtime.fileio import atomic_write, folder_clash_problem
from edge_runtime.flags import MAX_LR
from edge_runtime.preprocess import Preprocessing

from ..errors import TrainError
from . import checkpoint as ckpt
from . import data as D
from .model import init_model
from .options import TrainOptions, resolve_identity

CALIB_PER_CLASS = (3, 20)  # calibration sample: ceil(100 / classes) images per class, within these bounds
# What a run writes in its folder: files, and working folders of images that a new run removes (when run.json
# says that they are the run's own) and refuses otherwise
RUN_FILES = ("best.pt", "last.pt", "results.csv", "curves.png", "confusion.png", "metrics.json", "run.json", ".lock")
WORK_FOLDERS = ("calib", "val", "frames", "frames-val")


def check_out(o: TrainOptions) -> None:
    """Create the run folder; refuse one that is not writable, that holds a run (unless resuming it), or that
    holds working folders of images that no run recorded (they would be merged with the run's own).

    Raises:
        TrainError: naming the folder and why.
    """
    out = Path(o.out)
    if not o.resume and not (out / "run.json").exists():  # a folder this trainer did not make: merged, not ours
        foreign = [name for name in WORK_FOLDERS if (out / name).exists() or (out / name).is_symlink()]
        if foreign:
            raise TrainError(f"--out {out}: holds {foreign[0]}/, which no training run recorded (no run.json): "
                             "a run's own working folders are made new; choose another --out, or move it away")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainError(f"--out {out}: cannot create the run folder ({e.strerror})") from None
    if not out.is_dir() or not os.access(out, os.W_OK | os.X_OK):
        raise TrainError(f"--out {out}: the run folder is not writable")
    # a run stopped before its first checkpoint left nothing to resume or protect: it starts over
    has_run = (out / "last.pt").exists() or (out / "best.pt").exists()
    if o.resume and not (out / "last.pt").exists():
        raise TrainError(f"--resume: {out} holds no last.pt to resume (start without --resume)")
    if not o.resume and has_run:
        raise TrainError(f"--out {out} already holds a training run: pass --resume to continue it, "
                         "or choose another --out (nothing is overwritten)")
    lock_run(out)
    if not o.resume and (out / "run.json").exists():  # a run stopped before its first checkpoint: its own
        for name in WORK_FOLDERS:  # working folders (only in a folder it recorded)
            if (out / name).is_dir():
                shutil.rmtree(out / name)
    if not (out / "run.json").exists():  # the folder is a run's before its working folders are made: a run killed
        atomic_write(out / "run.json", json.dumps({"status": "starting"}) + "\n")  # while making them left its own


_LOCKS: dict[Path, object] = {}  # run folder -> the open lock file, held until release_run


def lock_run(out: Path) -> None:
    """Hold an exclusive lock on ``out`` until :func:`release_run` (or this process ends): a second
    run into the same folder (a resume started while the killed run's processes still live: a kill -9
    of torchrun leaves its workers running) is refused instead of both writing the checkpoints."""
    import fcntl

    key = out.resolve()
    if key in _LOCKS:
        return
    f = open(out / ".lock", "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise TrainError(f"--out {out}: another training run is writing to it; stop that run first "
                         "(after a kill -9 of torchrun, its worker processes may still be running)") from None
    _LOCKS[key] = f


def release_run(out: Path) -> None:
    f = _LOCKS.pop(Path(out).resolve(), None)
    if f is not None:
        f.close()  # closing the file releases the lock


def record(o: TrainOptions, arch: str, classes: list[str], pp: Preprocessing, summary: dict,
           calib_dir: Path | None, val_dir: Path | None, content_hash: str) -> dict:
    """The plain-data record saved with the weights (what the converter and evaluator need)."""
    return {"format": ckpt.FORMAT, "version": ckpt.VERSION, "name": Path(o.out).name, "arch": arch,
            "arch_kwargs": dict(o.arch_kwargs or {}), "num_classes": len(classes), "labels": list(classes),
            "preprocessing": pp.to_dict(), "weights_init": o.weights,
            "calib_dir": str(calib_dir) if calib_dir else None, "val_dir": str(val_dir) if val_dir else None,
            "data": {"train": str(Path(o.data).resolve()), "val": str(Path(o.val).resolve()) if o.val else None,
                     "val_split": o.val_split, "content_hash": content_hash},
            "summary": summary}


def _link_items(items, classes: list[str], dest: Path) -> Path:
    """A class-folder copy of some samples (hard links where possible): a labelled folder the
    evaluator and the converter read, and that stays valid if the data folder moves."""
    for path, target, group in items:
        name = "__".join(Path(group).parts[1:]) if len(Path(group).parts) > 1 else Path(group).name
        if Path(path).name != Path(group).name:  # a frame of a clip
            name = Path(path).name
        link = dest / classes[target] / name
        if link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, link)
        except OSError:
            shutil.copy2(path, link)
    return dest


def _calibration_sample(items, classes: list[str]):
    k = max(CALIB_PER_CLASS[0], min(CALIB_PER_CLASS[1], math.ceil(100 / len(classes))))
    out = []
    for c in range(len(classes)):
        mine = sorted((i for i in items if i[1] == c), key=lambda i: hashlib.sha256(os.fsencode(i[0])).hexdigest())
        out.extend(mine[:k])
    return out


def prepare(o: TrainOptions, preflight: Callable[[int, Path], None] | None = None) -> dict:
    """Everything rank 0 decides before training: options, data, split, model, resume state. A run folder
    this call creates is removed again when it fails (bad data, options, a full disk, Ctrl-C, or
    ``preflight``, called with the model's float32 weight bytes and the run's calibration folder, raising:
    what comes after training checks what it needs before the training starts)."""
    new = _first_missing(Path(o.out))
    had = {name for name in (*WORK_FOLDERS, "run.json") if (Path(o.out) / name).exists()}
    try:
        setup = _prepare(o)
        if preflight is not None:
            preflight(sum(t.numel() * 4 for t in setup["state"].values()
                          if isinstance(t, torch.Tensor) and t.is_floating_point()), Path(setup["calib_dir"]))
        return setup
    except BaseException:
        if new is not None:
            release_run(Path(o.out))
            shutil.rmtree(new, ignore_errors=True)
        elif Path(o.out).resolve() in _LOCKS:  # a folder that was there, and this run's: only what this call
            for name in set(WORK_FOLDERS) - had:  # made (a next run would find it unrecorded)
                shutil.rmtree(Path(o.out) / name, ignore_errors=True)
            if "run.json" not in had:  # the stub check_out wrote
                (Path(o.out) / "run.json").unlink(missing_ok=True)
        raise


def _first_missing(out: Path) -> Path | None:
    """The outermost folder on the way to ``out`` that does not exist yet (None: ``out`` exists)."""
    missing = None
    for folder in (out, *out.parents):
        if folder.exists() or folder.is_symlink():
            break
        missing = folder
    return missing


def _prepare(o: TrainOptions) -> dict:
    saved = None
    batch_given = o.resume or o.batch_size is not None
    problem = folder_clash_problem("--out", o.out, (("--data", o.data), ("--val", o.val), ("--test", o.test)),
                                   WORK_FOLDERS)
    if problem:  # before the data are read: a run folder inside them would look like a class
        raise TrainError(problem)
    for folder, what in ((o.data, "--data"), (o.val, "--val"), (o.test, "--test")):
        if folder is not None:  # before the run folder is made
            D.check_folder(folder, what)
    if o.resume:
        check_out(o)
        saved = ckpt.load(Path(o.out) / "last.pt", resume=True)
        o = resolve_identity(o, saved["train_state"]["options"])
    else:
        o = resolve_identity(o, None)
        check_out(o)
    out = Path(o.out)
    train_scan = D.scan(o.data, out / "frames", o.frame_stride)
    classes = train_scan.classes
    if o.val is not None:
        val_scan = D.scan(o.val, out / "frames-val", o.frame_stride, classes=classes, what="--val")
        train_items, val_items, val_hash = train_scan.items, val_scan.items, val_scan.content_hash
        val_split = None
    else:
        train_items, val_items = D.split(train_scan.items, o.val_split if o.val_split is not None else 0.15,
                                         len(classes))
        val_hash, val_scan = "", None
        o.val_split = o.val_split if o.val_split is not None else 0.15
        val_split = o.val_split
    if not batch_given and o.batch_size > len(train_items):  # a small dataset: the default batch takes all of it
        world = max(1, int(os.environ.get("WORLD_SIZE", "1")))  # torchrun: a multiple of the processes
        o.batch_size = max(world, len(train_items) // world * world)
    if o.batch_size < 1 or o.batch_size > len(train_items):
        raise TrainError(f"--batch-size {o.batch_size}: between 1 and the {len(train_items)} training images expected")
    if saved is not None:
        was = saved["record"]
        if was["labels"] != classes:
            raise TrainError(f"--resume: {out} was trained on classes {', '.join(was['labels'][:8])}..., "
                             f"--data {o.data} has {', '.join(classes[:8])}...")
        if was["data"]["content_hash"] != train_scan.content_hash or \
                saved["train_state"]["val_hash"] != val_hash:
            raise TrainError(f"--resume: the data differ from those {out} was trained on (content hash "
                             f"{train_scan.content_hash[:12]} vs {was['data']['content_hash'][:12]}); "
                             "a resumed run continues on the same images")
    torch.manual_seed(o.seed)  # the new classifier's initialization
    model, pp, arch, new_head, kwargs = init_model(o, classes)
    if o.arch is None:
        o.arch = arch
    o.arch_kwargs = kwargs
    if o.epochs < 0 or (o.epochs == 0 and o.dsd is None):
        raise TrainError(f"--epochs {o.epochs}: at least 1 expected (or 0 with --dsd)")
    if o.freeze_epochs is None:  # a default never exceeds --epochs (--epochs 0 --dsd: no head phase)
        o.freeze_epochs = min(1, o.epochs) if new_head and o.weights != "none" else 0
    if o.lr is None:
        o.lr = 0.04 * o.batch_size / 512
    if o.input_size is None:
        o.input_size = pp.input_size[0]
    if not (0 <= o.freeze_epochs <= o.epochs):
        raise TrainError(f"--freeze-epochs {o.freeze_epochs}: between 0 and --epochs {o.epochs} expected")
    if o.dsd is not None and not 0.0 < o.dsd < 1.0:
        raise TrainError(f"--dsd {o.dsd}: a sparsity between 0 and 1 expected (e.g. 0.5)")
    if not (0 < o.lr <= MAX_LR and 0 < o.finetune_lr and o.lr * o.finetune_lr <= MAX_LR) or o.min_scale <= 0 \
            or o.min_scale > 1:  # --finetune-lr is a factor of --lr: the full phase's rate is their product
        raise TrainError(f"--lr {o.lr:g} / --finetune-lr {o.finetune_lr:g} / min scale {o.min_scale:g}: rates (--lr "
                         f"and --lr x --finetune-lr) above 0 and at most {MAX_LR:g}, 0 < min scale <= 1 expected")
    calib_dir = _link_items(_calibration_sample(train_items, classes), classes, out / "calib")
    # The folder the converter and the evaluator validate on: --val itself when it holds only photos; else
    # (the split, or clips the converter does not read) the samples validated on, frames as photos.
    val_dir = Path(o.val).resolve() if o.val is not None and not val_scan.clips else (
        _link_items(val_items, classes, out / "val") if val_items else None)
    test_items = None
    if o.test is not None:
        test_items = D.scan(o.test, None, o.frame_stride, classes=classes, what="--test").items
    state = saved["model"] if saved is not None else model.state_dict()
    return {"options": o, "classes": classes, "train_items": train_items, "val_items": val_items,
            "test_items": test_items, "pp": pp.to_dict(), "arch": arch,
            "arch_kwargs": kwargs, "state": state,
            "train_state": saved["train_state"] if saved is not None else None,
            "content_hash": train_scan.content_hash, "val_hash": val_hash,
            "calib_dir": str(calib_dir.resolve()), "val_dir": str(val_dir.resolve()) if val_dir else None,
            "counts": {"train": _counts(train_items, classes), "val": _counts(val_items, classes),
                       "skipped": len(train_scan.skipped) + (len(val_scan.skipped) if val_scan else 0),
                       "skipped_files": (train_scan.skipped + (val_scan.skipped if val_scan else []))[:200],
                       "clips": train_scan.clips, "val_split": val_split}}


def _counts(items, classes) -> dict:
    c = [0] * len(classes)
    for _, t, _ in items:
        c[t] += 1
    return dict(zip(classes, c))
