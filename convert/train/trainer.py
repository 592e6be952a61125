"""``train(opts) -> summary``: fine-tune or train a SqueezeNet-family model on class folders.

Phases run one after another, each with a fresh SGD optimizer (momentum 0.9, weight decay 0.0002,
the paper's solver) and a linear decay of its rate to zero: ``head`` (the new classifier only,
with ``--freeze-epochs``), ``full`` (all layers; after a head phase at ``finetune_lr`` times the
rate), and with ``--dsd`` ``sparse`` (magnitude masks kept) and ``redense`` (masks dropped, a tenth
of the rate). Rank 0 does all file I/O (scan, split, checkpoints, reports) and hands the other
processes what they need; every process reads its share of the images.
"""
from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from edge_runtime.evaluation import shows_top5
from edge_runtime.preprocess import Preprocessing, PreprocessingError

from ..errors import ConvertError, TrainError
from . import checkpoint as ckpt
from . import data as D
from . import distributed, dsd, report
from .loop import Progress, evaluate, linear_decay, train_one_epoch
from .options import Phase, TrainOptions, options_dict, plan
from .setup import prepare, record, release_run


def _say(ctx, quiet: bool, msg: str) -> None:
    if ctx.is_main and not quiet:
        print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the run

def train(opts: TrainOptions, preflight: Callable[[int, Path], None] | None = None) -> dict:
    """Train as the options say; writes the run folder (rank 0) and returns the summary.

    ``preflight`` (rank 0, before the first epoch) is given the model's float32 weight bytes and the run's
    calibration folder, and raises a ConvertError when what follows the run cannot be done (``train
    --tflite``: too little free space, too few calibration photos).

    Raises:
        TrainError (a ConvertError): bad data, options, output folder, or a run that does not match.
    """
    cv2.setNumThreads(1)  # decoding and resizing happen per image; the cores go to the model
    ctx = distributed.init(opts.device, opts.threads)
    try:
        setup = None
        if ctx.is_main:
            try:
                setup = ("ok", prepare(opts, preflight))
            except (ConvertError, PreprocessingError) as e:
                setup = ("error", str(e))
        status, setup = ctx.broadcast_object(setup)
        if status == "error":
            raise TrainError(setup)
        return _Run(setup, ctx).go()
    finally:
        if ctx.is_main:
            release_run(Path(opts.out))
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


class _Run:
    """One process's share of a run: the model, its loaders, and what the run has done so far (restored
    from last.pt's train_state on --resume). ``go()`` trains the phases still to do and returns the summary."""

    def __init__(self, setup: dict, ctx):
        from ..models import create_model
        from ..pixel_model import PixelModel

        self.t_start = time.perf_counter()
        self.setup, self.ctx, self.o = setup, ctx, setup["options"]
        self.out = Path(self.o.out)
        self.classes = setup["classes"]
        self.pp = Preprocessing.from_dict(setup["pp"])
        self.model = create_model(setup["arch"], num_classes=len(self.classes), **setup["arch_kwargs"]).to(ctx.device)
        self.model.load_state_dict(setup["state"])
        # channels-last weights and batches (train_one_epoch, evaluate): SqueezeNet's forward and backward
        # pass on the CPU is 1.5x faster in that layout (64 and 96 px, 2 threads), a whole epoch with its data
        # loading 1.17x; checkpoints hold the same values
        self.model.to(memory_format=torch.channels_last)
        self.pixel = PixelModel(self.model, self.pp).to(ctx.device)
        self.train_set, self.sampler, self.train_loader, self.val_loader, self.test_loader = _loaders(
            setup, ctx, self.o, self.pp)
        self.phases = plan(self.o)
        self.total = sum(p.epochs for p in self.phases)
        self.saved: dict = setup["train_state"] or {}
        self.done = int(self.saved.get("epoch", 0))
        self.history: list[dict] = list(self.saved.get("history", []))
        self.best = dict(self.saved.get("best", {"epoch": 0, "val_top1": -1.0}))
        self.phase_results: list[dict] = list(self.saved.get("phases", []))
        self.masks = self.saved.get("masks")

    def go(self) -> dict:
        ctx, o = self.ctx, self.o
        if self.saved and self.done >= self.total:
            _say(ctx, o.quiet, f"{self.out}: all {self.total} epochs are done; nothing to resume")
            return {**self._summary(self.done), "rank": ctx.rank}
        self._begin()
        epoch = 0
        for phase in self.phases:
            first, last = epoch + 1, epoch + phase.epochs
            epoch = last
            if last > self.done:
                self._phase(phase, first, last)
                self.done = last
        summary = {**self._summary(self.total), "wall_seconds_this_process": round(time.perf_counter() - self.t_start, 1),
                   "rank": ctx.rank}
        if ctx.is_main:
            _final_reports(self.out, self.classes, self.best, summary, self.setup)
            font, boxes = report.undrawable(self.classes)
            if boxes and self.best.get("confusion") is not None:
                _say(ctx, o.quiet, f"{self.out / 'confusion.png'}: {len(boxes)} class name(s) drawn as empty boxes "
                                   f"(e.g. {boxes[0]}): the plot's font, {font}, has no glyph for some of their "
                                   "characters; metrics.json names every class")
        ctx.barrier()
        return summary

    def _summary(self, epoch: int) -> dict:
        return _summary(self.history, self.best, self.phase_results, self.setup, epoch, self.total)

    def _begin(self) -> None:
        """Restore the random state of a resume, write run.json (and the resumed results.csv), say what runs."""
        setup, ctx, o, ts = self.setup, self.ctx, self.o, self.saved
        if ts.get("rng"):
            ckpt.set_rng_state(ts["rng"])
        if ctx.is_main:
            _write_run_json(self.out, o, setup, ctx, resumed_at=self.done if ts else None)
            if ts:
                report.write_results(self.out / "results.csv", self.history)
        _say(ctx, o.quiet, f"training {setup['arch']} on {len(setup['train_items'])} images of {len(self.classes)} "
                           f"classes (validation {len(setup['val_items'])}), {ctx.world_size} process(es) x "
                           f"{torch.get_num_threads()} threads, phases: "
                           + ", ".join(f"{p.name} {p.epochs}" for p in self.phases)
                           + (f"; resuming after epoch {self.done}" if ts else "")
                           + (f"; {setup['counts']['skipped']} files skipped (not images or unreadable: listed in "
                              f"run.json)" if setup["counts"]["skipped"] else ""))
        unseen = [c for c, n in setup["counts"]["val"].items() if n == 0]
        if setup["val_items"] and unseen:  # one file or one clip (a clip's frames never split); even with --quiet
            _say(ctx, False, f"warning: no validation images of {', '.join(unseen)}: best.pt is chosen without "
                               f"them (add photos or another clip, or give --val)")

    def _phase(self, phase: Phase, first: int, last: int) -> None:
        """Epochs max(first, done + 1) .. last of one phase, with its own optimizer (restored when resuming
        inside the phase)."""
        model, ctx, o = self.model, self.ctx, self.o
        for name, p in model.named_parameters():
            p.requires_grad_(not phase.head_only or name.startswith("classifier."))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=phase.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_decay(phase.epochs * len(self.train_loader)))
        if first > self.done:  # the phase starts now (not a resume inside it)
            self.masks, start = _start_phase(phase, model, self.pixel, self.val_loader, self.classes, ctx, o.quiet)
            self.phase_results = [r for r in self.phase_results if r["phase"] != phase.name] + [
                {"phase": phase.name, "epochs": phase.epochs, "lr": phase.lr, "start": start}]
        else:
            optimizer.load_state_dict(self.saved["optimizer"])
            scheduler.load_state_dict(self.saved["scheduler"])
        net = self.pixel
        if ctx.distributed:
            net = nn.parallel.DistributedDataParallel(
                self.pixel, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
        for e in range(max(first, self.done + 1), last + 1):
            self._epoch(e, phase, last, net, optimizer, scheduler)

    def _epoch(self, e: int, phase: Phase, last: int, net: nn.Module, optimizer, scheduler) -> None:
        """Train epoch e, validate, and (rank 0) save best.pt / last.pt and the reports."""
        ctx, o, n_classes = self.ctx, self.o, len(self.classes)
        torch.manual_seed(D.sample_seed(o.seed, e, 1_000_000_000 + ctx.rank))  # dropout
        self.sampler.set_epoch(e)
        self.train_set.epoch = e
        lr = optimizer.param_groups[0]["lr"]
        bar = Progress(len(self.train_loader), f"epoch {e}/{self.total} {phase.name}", ctx.is_main and not o.quiet)
        stats = train_one_epoch(net, self.train_loader, optimizer, scheduler, ctx, masks=self.masks,
                                masked_model=self.model, progress=bar)
        bar.close()
        _check_finite(e, phase, lr, stats["loss"], self.model)
        val = evaluate(self.pixel, self.val_loader, n_classes, ctx) if self.val_loader is not None else None
        self.history.append({"epoch": e, "phase": phase.name, "lr": lr, "train_loss": stats["loss"],
                             "train_top1": stats["top1"], "val_loss": val and val["loss"],
                             "val_top1": val and val["top1"], "val_top5": val and val["top5"],
                             "seconds": stats["seconds"], "images_per_s": stats["images_per_s"]})
        improved = val is None or better(val, self.best)
        if improved:
            self.best = {"epoch": e, "phase": phase.name, "val_top1": val and val["top1"],
                         "val_top5": val and val["top5"], "val_loss": val and val["loss"],
                         "confusion": val["confusion"].tolist() if val else None}
        test = None
        if e == last:
            self.phase_results[-1].update({"end": _brief(val), "sparsity": round(dsd.sparsity(self.model), 4)})
            if self.test_loader is not None:
                test = self.phase_results[-1]["test"] = _brief(evaluate(self.pixel, self.test_loader, n_classes, ctx))
        _say(ctx, o.quiet, _epoch_line(self.history[-1], self.total, val, improved, test, n_classes))
        if ctx.is_main:
            train_state = {"epoch": e, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                           "rng": ckpt.rng_state(), "best": self.best, "history": self.history,
                           "phases": self.phase_results, "masks": self.masks, "options": options_dict(o),
                           "val_hash": self.setup["val_hash"]}
            _save_epoch(self.out, self.model, o, self.setup, self.pp, train_state, improved, self.total)


def _check_finite(e: int, phase: Phase, lr: float, loss: float, model: nn.Module) -> None:
    """Stop a run that diverged, before its epoch is saved: the epoch's loss (summed over every process) and
    the weights (DDP keeps them equal) must be finite, so every process stops together and no checkpoint
    holds NaN or Inf (the converter and the evaluator would refuse it).

    Raises:
        TrainError: they are not; the checkpoints of earlier epochs stay as they were.
    """
    finite_weights = all(bool(torch.isfinite(v).all()) for v in model.state_dict().values() if v.is_floating_point())
    if math.isfinite(loss) and finite_weights:
        return
    kept = "the checkpoints of the earlier epochs are kept" if e > 1 else "no checkpoint was written"
    raise TrainError(f"training diverged at epoch {e} ({phase.name} phase at rate {lr:.4g}: "
                     f"{f'train loss {loss:.4g}' if not math.isfinite(loss) else 'weights not finite'}): "
                     f"lower --lr; {kept}")


def better(val: dict, best: dict) -> bool:
    """Is this validation better than the best so far: a higher top-1, or the same top-1 at a lower loss
    (on a small validation set several epochs reach the same top-1, often 100%; the later, better
    fitted one is the model a user wants in best.pt)."""
    if val["top1"] != best["val_top1"]:
        return val["top1"] > best["val_top1"]
    return best.get("val_loss") is None or val["loss"] < best["val_loss"]


def _start_phase(phase: Phase, model: nn.Module, pixel: nn.Module, val_loader, classes: list[str], ctx,
                 quiet: bool) -> tuple[dict | None, dict]:
    """(masks, validation figures at the start) of a phase; the sparse phase prunes here."""
    start: dict = {"val": _evaluate_quietly(pixel, val_loader, classes, ctx)}
    if phase.sparsity is None:
        return None, start
    masks = dsd.magnitude_masks(model, phase.sparsity)
    dsd.apply_masks(model, masks)
    start["pruned_val"] = _evaluate_quietly(pixel, val_loader, classes, ctx)
    _say(ctx, quiet, f"pruned to sparsity {dsd.sparsity(model):.3f}: validation top-1 "
                     f"{_f(start['val'])} -> {_f(start['pruned_val'])} before retraining")
    return masks, start


def _save_epoch(out: Path, model: nn.Module, o: TrainOptions, setup: dict, pp: Preprocessing, train_state: dict,
                improved: bool, total_epochs: int) -> None:
    """best.pt (when improved), then last.pt, then the reports: each written atomically, so a kill at
    any moment leaves last.pt of the previous epoch or of this one, and --resume rewrites the rest."""
    e, history = train_state["epoch"], train_state["history"]
    summary = _summary(history, train_state["best"], train_state["phases"], setup, e, total_epochs)
    rec = record(o, setup["arch"], setup["classes"], pp, summary, Path(setup["calib_dir"]),
                 Path(setup["val_dir"]) if setup["val_dir"] else None, setup["content_hash"])
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if improved:
        ckpt.save(out / "best.pt", {"model": state, "record": rec})
    ckpt.save(out / "last.pt", {"model": state, "record": rec, "train_state": train_state})
    report.write_results(out / "results.csv", history)
    report.plot_curves(out / "curves.png", history)


def _epoch_line(row: dict, total: int, val: dict | None, improved: bool, test: dict | None, classes: int) -> str:
    line = (f"epoch {row['epoch']}/{total} {row['phase']}: lr {row['lr']:.5f} train loss {row['train_loss']:.4f} "
            f"top-1 {row['train_top1']:.2f}%")
    if val:
        line += f", val loss {val['loss']:.4f} top-1 {val['top1']:.2f}%"
        line += f" top-5 {val['top5']:.2f}%" if shows_top5(classes) else ""
    line += f", {row['seconds']:.0f}s, {row['images_per_s']:.0f} img/s" + (" *" if improved and val else "")
    return line + (f"; test top-1 {test['top1']:.2f}%" if test else "")


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
            "last_val_top1": history[-1]["val_top1"] if history else None, "num_classes": len(setup["classes"]),
            "train_images": len(setup["train_items"]), "val_images": len(setup["val_items"]),
            "train_seconds": round(sum(r["seconds"] for r in history), 1),
            "images_per_s": round(float(np.mean([r["images_per_s"] for r in train_rows])), 1) if train_rows else None,
            "phases": phases}


def _write_run_json(out: Path, o: TrainOptions, setup: dict, ctx, resumed_at: int | None) -> None:
    path = out / "run.json"
    previous = {}
    if resumed_at is not None and path.exists():
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):
            previous = {}
    run = previous or {"options": options_dict(o), "argv": list(o.argv), "seed": o.seed,
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
