"""``train(opts) -> summary``: fine-tune or train a SqueezeNet-family model on class folders.

Phases run one after another, each with a fresh SGD optimizer (momentum 0.9, weight decay 0.0002,
the paper's solver) and a linear decay of its rate to zero: ``head`` (the new classifier only,
with ``--freeze-epochs``), ``full`` (all layers; after a head phase at ``finetune_lr`` times the
rate), and with ``--dsd`` ``sparse`` (magnitude masks kept) and ``redense`` (masks dropped, a tenth
of the rate). Rank 0 does all file I/O (scan, split, checkpoints, reports) and hands the other
processes what they need; every process reads its share of the images.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from edge_runtime.preprocess import Preprocessing, PreprocessingError

from ..errors import ConvertError, TrainError
from . import checkpoint as ckpt
from . import data as D
from . import distributed, dsd, report
from .loop import Progress, evaluate, linear_decay, train_one_epoch

# Options that define a run: --resume continues a run only with the same values.
IDENTITY = ("arch", "arch_kwargs", "weights", "epochs", "batch_size", "lr", "finetune_lr", "freeze_epochs", "input_size",
            "resize", "min_scale", "dsd", "dsd_epochs", "seed", "val_split", "momentum", "weight_decay",
            "frame_stride")
CALIB_PER_CLASS = (3, 20)
# A new classifier starts with every class's output above ReLU's threshold for every image. With
# SqueezeNet's bias of 0 about half the images of each class fall below it at once; a class whose
# own images all do is pushed lower by the others' and never recovers (seen on 2,000 Fashion-MNIST
# images: "Sandal" never predicted). Softmax ignores the common offset.
HEAD_BIAS = 1.0
INPUT_SCALE = 58.0  # pixel std of ImageNet photos (torchvision's normalization: 0.226 x 255)  # calibration sample: ceil(100 / classes) images per class, within these bounds


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
    resize: int | None = None  # evaluation resize before the centre crop; default: the weights' ratio
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
            "dsd_epochs": 3, "seed": 0, "momentum": 0.9, "weight_decay": 2e-4, "frame_stride": D.DEFAULT_FRAME_STRIDE}


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


def _say(ctx, quiet: bool, msg: str) -> None:
    if ctx.is_main and not quiet:
        print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- options and the run folder

def _options_dict(o: TrainOptions) -> dict:
    d = {}
    for f in dataclasses.fields(o):
        v = getattr(o, f.name)
        d[f.name] = str(v) if isinstance(v, Path) else v
    return d


def _resolve_identity(o: TrainOptions, saved: dict | None) -> TrainOptions:
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


def _check_out(o: TrainOptions) -> None:
    out = Path(o.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainError(f"--out {out}: cannot create the run folder ({e.strerror})") from None
    if not out.is_dir() or not os.access(out, os.W_OK | os.X_OK):
        raise TrainError(f"--out {out}: the run folder is not writable")
    has_run = (out / "last.pt").exists() or (out / "run.json").exists()
    if o.resume and not (out / "last.pt").exists():
        raise TrainError(f"--resume: {out} holds no last.pt to resume (start without --resume)")
    if not o.resume and has_run:
        raise TrainError(f"--out {out} already holds a training run: pass --resume to continue it, "
                         "or choose another --out (nothing is overwritten)")


# ---------------------------------------------------------------- model and preprocessing

def _init_model(o: TrainOptions, classes: list[str]) -> tuple[nn.Module, Preprocessing, str, bool, dict]:
    """(model, preprocessing, arch, head is new, arch kwargs) from --weights: a named source, none, or a file."""
    from ..models import UnknownModelError, create_model
    from ..weights import WEIGHTS, load_model

    n = len(classes)
    source = o.weights
    init_state, init_labels, pp_base, arch = None, None, None, o.arch
    kwargs = dict(o.arch_kwargs or {})
    if source == "none":
        pp_base = WEIGHTS["squeezenet1_0"].preprocessing  # ImageNet statistics, RGB
        arch = arch or "squeezenet1_0"
    elif Path(source).is_file() and _is_training_file(Path(source)):
        saved = ckpt.load(Path(source))
        rec = saved["record"]
        if arch and arch != rec["arch"]:
            raise TrainError(f"--weights {source} is a {rec['arch']} checkpoint, not --arch {arch}")
        arch = rec["arch"]
        saved_kwargs = dict(rec.get("arch_kwargs") or {})
        if o.arch_kwargs is not None and dict(o.arch_kwargs) != saved_kwargs:
            raise TrainError(f"--weights {source} is a {arch} checkpoint built with {saved_kwargs}, not {o.arch_kwargs}")
        kwargs = saved_kwargs
        pp_base = Preprocessing.from_dict(rec["preprocessing"])
        init_state, init_labels = saved["model"], list(rec["labels"])
    else:
        base, record = load_model(source, arch)
        if arch and arch != record.arch:
            raise TrainError(f"--weights {source} are {record.arch} weights, not --arch {arch}")
        arch, pp_base = record.arch, record.preprocessing
        init_state, init_labels = base.state_dict(), list(record.labels)
    try:
        model = create_model(arch, num_classes=n, **kwargs)
    except (UnknownModelError, ValueError, TypeError) as e:
        raise TrainError(f"--arch {arch} {kwargs or ''}: {e}") from None
    new_head = True
    with torch.no_grad():
        model.classifier[1].bias.fill_(HEAD_BIAS)
    if init_state is not None:
        own = model.state_dict()
        same_classes = init_labels == classes
        keep = {k: v for k, v in init_state.items()
                if k in own and (same_classes or not k.startswith("classifier."))}
        wrong = [k for k, v in keep.items() if tuple(v.shape) != tuple(own[k].shape)]
        if wrong:
            raise TrainError(f"--weights {source}: {wrong[0]} has shape {tuple(keep[wrong[0]].shape)}, "
                             f"{arch} expects {tuple(own[wrong[0]].shape)}")
        missing = [k for k in own if k not in keep and not k.startswith("classifier.")]
        if missing:
            raise TrainError(f"--weights {source}: no value for {missing[0]} of {arch}")
        own.update(keep)
        model.load_state_dict(own)
        new_head = not same_classes
        if new_head and max(pp_base.std) < INPUT_SCALE / 4:
            model, pp_base = _normalize_input_scale(model, pp_base)
    size = o.input_size or pp_base.input_size[0]
    rh, rw = pp_base.resize
    ratio = rh / pp_base.input_size[0]
    r = o.resize or round(size * ratio)
    try:
        pp = Preprocessing(input_size=(size, size), resize=(r, r if rw else 0), channel_order=pp_base.channel_order,
                           mean=pp_base.mean, std=pp_base.std, interpolation=pp_base.interpolation)
    except PreprocessingError as e:
        raise TrainError(f"--input-size {size} / --resize {r}: {e}") from None
    return model, pp, arch, new_head, kwargs


def _normalize_input_scale(model: nn.Module, pp: Preprocessing) -> tuple[nn.Module, Preprocessing]:
    """The same network with every activation divided by INPUT_SCALE, for weights trained on raw
    pixel differences (Caffe's mean subtraction, std 1: features reach several hundred).

    A ReLU network is positively homogeneous when its biases scale too: dividing the input and
    every bias by c divides every activation by c, so the features are exactly the old ones / c.
    A new classifier (initialized N(0, 0.01)) on features of that size starts with logits around
    1 instead of around 10, and its gradients are not c^2 too large (at the raw scale the first
    SGD steps push every class below ReLU's threshold and the network stops learning).
    """
    c = INPUT_SCALE / max(pp.std)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias") and not name.startswith("classifier."):
                p.div_(c)
    return model, dataclasses.replace(pp, std=tuple(s * c for s in pp.std))


def _is_training_file(path: Path) -> bool:
    from ..weights import read_weights_only

    if path.suffix not in (".pt", ".pth"):
        return False
    try:
        return ckpt.is_training_checkpoint(read_weights_only(path))
    except ConvertError:
        return False


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


# ---------------------------------------------------------------- data set-up (rank 0)

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
        mine = sorted((i for i in items if i[1] == c), key=lambda i: hashlib.sha256(i[0].encode()).hexdigest())
        out.extend(mine[:k])
    return out


def _prepare(o: TrainOptions) -> dict:
    """Everything rank 0 decides before training: options, data, split, model, resume state."""
    saved = None
    if o.resume:
        _check_out(o)
        saved = ckpt.load(Path(o.out) / "last.pt")
        o = _resolve_identity(o, saved["train_state"]["options"])
    else:
        o = _resolve_identity(o, None)
        _check_out(o)
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
    model, pp, arch, new_head, kwargs = _init_model(o, classes)
    if o.arch is None:
        o.arch = arch
    o.arch_kwargs = kwargs
    if o.freeze_epochs is None:
        o.freeze_epochs = 1 if new_head and o.weights != "none" else 0
    if o.lr is None:
        o.lr = 0.04 * o.batch_size / 512
    if o.input_size is None:
        o.input_size = pp.input_size[0]
    if not (0 <= o.freeze_epochs <= o.epochs):
        raise TrainError(f"--freeze-epochs {o.freeze_epochs}: between 0 and --epochs {o.epochs} expected")
    if o.dsd is not None and not 0.0 < o.dsd < 1.0:
        raise TrainError(f"--dsd {o.dsd}: a sparsity between 0 and 1 expected (e.g. 0.5)")
    if o.epochs < 0 or (o.epochs == 0 and o.dsd is None):
        raise TrainError(f"--epochs {o.epochs}: at least 1 expected (or 0 with --dsd)")
    if o.lr <= 0 or o.min_scale <= 0 or o.min_scale > 1:
        raise TrainError(f"--lr {o.lr} / min scale {o.min_scale}: lr > 0 and 0 < min scale <= 1 expected")
    calib_dir = _link_items(_calibration_sample(train_items, classes), classes, out / "calib")
    val_dir = Path(o.val).resolve() if o.val is not None else (
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


# ---------------------------------------------------------------- the run

def train(opts: TrainOptions) -> dict:
    """Train as the options say; writes the run folder (rank 0) and returns the summary.

    Raises:
        TrainError (a ConvertError): bad data, options, output folder, or a run that does not match.
    """
    cv2.setNumThreads(1)  # decoding and resizing happen per image; the cores go to the model
    ctx = distributed.init(opts.device, opts.threads)
    try:
        setup = None
        if ctx.is_main:
            try:
                setup = ("ok", _prepare(opts))
            except (ConvertError, PreprocessingError) as e:
                setup = ("error", str(e))
        status, setup = ctx.broadcast_object(setup)
        if status == "error":
            raise TrainError(setup)
        return _run(setup, ctx)
    finally:
        distributed.shutdown(ctx)


def _loaders(setup: dict, ctx, o: TrainOptions, pp: Preprocessing):
    world = ctx.world_size
    if o.batch_size % world:
        raise TrainError(f"--batch-size {o.batch_size}: a multiple of the {world} processes expected")
    per_process = o.batch_size // world
    train_set = D.TrainSet(setup["train_items"], o.input_size, o.seed, o.min_scale)
    sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=world, rank=ctx.rank, shuffle=True,
                                                  seed=o.seed, drop_last=False)
    common = {"num_workers": o.workers, "worker_init_fn": D.worker_init if o.workers else None}
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=per_process, sampler=sampler, **common)

    def eval_loader(items):
        if not items:
            return None
        shard = torch.utils.data.Subset(D.EvalSet(items, pp), range(ctx.rank, len(items), world))  # no padding
        return torch.utils.data.DataLoader(shard, batch_size=max(64, per_process), **common)

    return train_set, sampler, train_loader, eval_loader(setup["val_items"]), eval_loader(setup["test_items"])


def _run(setup: dict, ctx) -> dict:
    from ..models import create_model
    from ..pixel_model import PixelModel

    t_start = time.perf_counter()
    o: TrainOptions = setup["options"]
    classes, out = setup["classes"], Path(o.out)
    pp = Preprocessing.from_dict(setup["pp"])
    model = create_model(setup["arch"], num_classes=len(classes), **setup["arch_kwargs"]).to(ctx.device)
    model.load_state_dict(setup["state"])
    pixel = PixelModel(model, pp).to(ctx.device)
    train_set, sampler, train_loader, val_loader, test_loader = _loaders(setup, ctx, o, pp)
    phases = plan(o)
    total_epochs = sum(p.epochs for p in phases)
    ts = setup["train_state"] or {}
    done = int(ts.get("epoch", 0))
    history: list[dict] = list(ts.get("history", []))
    best = dict(ts.get("best", {"epoch": 0, "val_top1": -1.0}))
    phase_results: list[dict] = list(ts.get("phases", []))
    masks = ts.get("masks")
    if ts and done >= total_epochs:
        _say(ctx, o.quiet, f"{out}: all {total_epochs} epochs are done; nothing to resume")
        summary = _summary(history, best, phase_results, setup, done, total_epochs)
        summary["rank"] = ctx.rank
        return summary
    if ts.get("rng"):
        ckpt.set_rng_state(ts["rng"])
    if ctx.is_main:
        _write_run_json(out, o, setup, ctx, resumed_at=done if ts else None)
        if ts:
            report.write_results(out / "results.csv", history)
    _say(ctx, o.quiet, f"training {setup['arch']} on {len(setup['train_items'])} images of {len(classes)} classes "
                       f"(validation {len(setup['val_items'])}), {ctx.world_size} process(es) x "
                       f"{torch.get_num_threads()} threads, phases: "
                       + ", ".join(f"{p.name} {p.epochs}" for p in phases)
                       + (f"; resuming after epoch {done}" if ts else "")
                       + (f"; {setup['counts']['skipped']} files skipped (not images or unreadable: listed in "
                          f"run.json)" if setup["counts"]["skipped"] else ""))
    epoch = 0
    for index, phase in enumerate(phases):
        first, last = epoch + 1, epoch + phase.epochs
        epoch = last
        if last <= done:
            continue
        for name, p in model.named_parameters():
            p.requires_grad_(not phase.head_only or name.startswith("classifier."))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=phase.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_decay(phase.epochs * len(train_loader)))
        if first > done:  # the phase starts now (not a resume inside it)
            start: dict = {"val": _evaluate_quietly(pixel, val_loader, classes, ctx)}
            if phase.sparsity is not None:
                masks = dsd.magnitude_masks(model, phase.sparsity)
                dsd.apply_masks(model, masks)
                start["pruned_val"] = _evaluate_quietly(pixel, val_loader, classes, ctx)
                _say(ctx, o.quiet, f"pruned to sparsity {dsd.sparsity(model):.3f}: validation top-1 "
                                   f"{_f(start['val'])} -> {_f(start['pruned_val'])} before retraining")
            else:
                masks = None
            phase_results = [r for r in phase_results if r["phase"] != phase.name] + [
                {"phase": phase.name, "epochs": phase.epochs, "lr": phase.lr, "start": start}]
        else:
            optimizer.load_state_dict(ts["optimizer"])
            scheduler.load_state_dict(ts["scheduler"])
        net = pixel
        if ctx.distributed:
            net = nn.parallel.DistributedDataParallel(pixel, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
        for e in range(max(first, done + 1), last + 1):
            torch.manual_seed(D.sample_seed(o.seed, e, 1_000_000_000 + ctx.rank))  # dropout
            sampler.set_epoch(e)
            train_set.epoch = e
            lr = optimizer.param_groups[0]["lr"]
            bar = Progress(len(train_loader), f"epoch {e}/{total_epochs} {phase.name}", ctx.is_main and not o.quiet)
            stats = train_one_epoch(net, train_loader, optimizer, scheduler, ctx, masks=masks,
                                    masked_model=model, progress=bar)
            bar.close()
            val = evaluate(pixel, val_loader, len(classes), ctx) if val_loader is not None else None
            row = {"epoch": e, "phase": phase.name, "lr": lr, "train_loss": stats["loss"], "train_top1": stats["top1"],
                   "val_loss": val["loss"] if val else None, "val_top1": val["top1"] if val else None,
                   "val_top5": val["top5"] if val else None, "seconds": stats["seconds"],
                   "images_per_s": stats["images_per_s"]}
            history.append(row)
            improved = val is None or val["top1"] > best["val_top1"]
            if improved:
                best = {"epoch": e, "val_top1": val["top1"] if val else None, "val_top5": val["top5"] if val else None,
                        "val_loss": val["loss"] if val else None, "phase": phase.name,
                        "confusion": val["confusion"].tolist() if val else None}
            end_of_phase = e == last
            if end_of_phase:
                result = phase_results[-1]
                result.update({"end": _brief(val), "sparsity": round(dsd.sparsity(model), 4)})
                if test_loader is not None:
                    result["test"] = _brief(evaluate(pixel, test_loader, len(classes), ctx))
            _say(ctx, o.quiet, f"epoch {e}/{total_epochs} {phase.name}: lr {lr:.5f} train loss {stats['loss']:.4f} "
                               f"top-1 {stats['top1']:.2f}%" + (f", val loss {val['loss']:.4f} top-1 {val['top1']:.2f}% "
                                                                f"top-5 {val['top5']:.2f}%" if val else "")
                               + f", {stats['seconds']:.0f}s, {stats['images_per_s']:.0f} img/s"
                               + (" *" if improved and val else "")
                               + (f"; test top-1 {phase_results[-1]['test']['top1']:.2f}%" if end_of_phase and test_loader is not None else ""))
            if ctx.is_main:
                summary = _summary(history, best, phase_results, setup, e, total_epochs)
                rec = record(o, setup["arch"], classes, pp, summary, Path(setup["calib_dir"]),
                             Path(setup["val_dir"]) if setup["val_dir"] else None, setup["content_hash"])
                state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                if improved:
                    ckpt.save(out / "best.pt", {"model": state, "record": rec})
                train_state = {"epoch": e, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                               "rng": ckpt.rng_state(), "best": best, "history": history, "phases": phase_results,
                               "masks": masks,
                               "options": _options_dict(o), "val_hash": setup["val_hash"]}
                ckpt.save(out / "last.pt", {"model": state, "record": rec, "train_state": train_state})
                report.write_results(out / "results.csv", history)
                report.plot_curves(out / "curves.png", history)
        done = last
    summary = _summary(history, best, phase_results, setup, total_epochs, total_epochs)
    summary["wall_seconds_this_process"] = round(time.perf_counter() - t_start, 1)
    summary["rank"] = ctx.rank
    if ctx.is_main:
        _final_reports(out, classes, best, summary, setup)
    ctx.barrier()
    return summary


def _f(figures: dict | None) -> str:
    return f"{figures['top1']:.2f}%" if figures else "-"


def _brief(figures: dict | None) -> dict | None:
    if not figures:
        return None
    return {"top1": round(figures["top1"], 3), "top5": round(figures["top5"], 3),
            "loss": round(figures["loss"], 5), "images": figures["images"]}


def _evaluate_quietly(pixel, loader, classes, ctx) -> dict | None:
    return _brief(evaluate(pixel, loader, len(classes), ctx)) if loader is not None else None


def _summary(history, best, phases, setup, epoch, total) -> dict:
    train_rows = [r for r in history if r.get("images_per_s")]
    return {"epochs_done": epoch, "epochs": total, "best_epoch": best["epoch"], "best_phase": best.get("phase"),
            "val_top1": None if best.get("val_top1") is None else round(best["val_top1"], 3),
            "val_top5": None if best.get("val_top5") is None else round(best["val_top5"], 3),
            "last_val_top1": history[-1]["val_top1"] if history else None,
            "train_images": len(setup["train_items"]), "val_images": len(setup["val_items"]),
            "train_seconds": round(sum(r["seconds"] for r in history), 1),
            "images_per_s": round(float(np.mean([r["images_per_s"] for r in train_rows])), 1) if train_rows else None,
            "phases": phases}


def _write_run_json(out: Path, o: TrainOptions, setup: dict, ctx, resumed_at: int | None) -> None:
    path = out / "run.json"
    previous = {}
    if resumed_at is not None and path.exists():
        import json

        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):
            previous = {}
    run = previous or {"options": _options_dict(o), "argv": list(o.argv), "seed": o.seed,
                       "versions": report.versions(), "processes": ctx.world_size,
                       "threads_per_process": torch.get_num_threads(),
                       "data": {"train": str(Path(o.data).resolve()), "content_hash": setup["content_hash"],
                                "val": str(Path(o.val).resolve()) if o.val else None,
                                "val_content_hash": setup["val_hash"] or None, "classes": setup["classes"],
                                **setup["counts"]},
                       "calib_dir": setup["calib_dir"], "val_dir": setup["val_dir"],
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resumed": []}
    if resumed_at is not None:
        run.setdefault("resumed", []).append({"after_epoch": resumed_at, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                              "processes": ctx.world_size, "argv": list(o.argv)})
    report.write_json(path, run)


def _final_reports(out: Path, classes: list[str], best: dict, summary: dict, setup: dict) -> None:
    metrics = {"classes": classes, "best_epoch": best["epoch"], "best_phase": best.get("phase"),
               "val_top1": summary["val_top1"], "val_top5": summary["val_top5"], "phases": summary["phases"],
               "summary": {k: v for k, v in summary.items() if k != "phases"}}
    if best.get("confusion") is not None:
        confusion = np.asarray(best["confusion"], dtype=np.int64)
        metrics["per_class"] = report.per_class(confusion, classes)
        metrics["confusion"] = confusion.tolist()
        report.plot_confusion(out / "confusion.png", confusion, classes,
                              f"validation, best epoch {best['epoch']} ({summary['val_top1']:.2f}% top-1)")
    report.write_json(out / "metrics.json", metrics)
