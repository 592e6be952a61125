"""``python -m convert train``: fine-tune a SqueezeNet-family model on class folders (torchrun-aware)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edge_runtime.fileio import inside, write_result
from edge_runtime.flags import (RESIZE_HELP, lr_arg, nonnegative_int, positive_float, positive_int, resize_arg,
                                square_size_arg)

from .cli_tflite import add_gate_flags, gates_of, missed_gate, write_report
from .errors import ConvertError, GateError

EXAMPLES = """examples:
  python -m convert train --data photos/ --out runs/parcel --epochs 10 --input-size 128
  python -m convert train --data build/fashion-mnist/train --val-split 0.1 --input-size 64 \\
      --out build/runs/fmnist --test build/fashion-mnist/test
  python -m convert train --data build/fashion-mnist/train --out build/runs/fmnist --resume
  python -m convert train --data build/fashion-mnist/train --val-split 0.1 --weights build/runs/fmnist/best.pt \\
      --epochs 0 --dsd 0.5 --out build/runs/fmnist-dsd
  torchrun --nproc-per-node 2 -m convert train --data photos/ --out runs/parcel-ddp
then:
  python -m convert tflite --weights runs/parcel/best.pt --out build/parcel_int8.tflite
  python -m convert train --data photos --out runs/parcel --tflite build/parcel_int8.tflite   # both in one
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune on your own classes (folders of images or clips)",
                       description="Train a SqueezeNet-family classifier on one sub-folder of images (or video "
                                   "clips) per class: transfer learning from the Deep Compression ImageNet "
                                   "weights, from scratch or from a checkpoint; the paper's solver, optional "
                                   "DSD, resume, and DistributedDataParallel under torchrun. Writes best.pt, "
                                   "last.pt, results.csv, curves.png, confusion.png, metrics.json, run.json.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path,
                   help="training images: one sub-folder per class (images at any depth, video clips sampled "
                        "every --frame-stride frames), or files named by WordNet id")
    p.add_argument("--out", required=True, type=Path, help="the run folder (refused if it holds a run, unless --resume)")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val", type=Path, help="labelled validation images (class folders named as in --data)")
    val.add_argument("--val-split", type=float,
                     help="hold out this fraction of each class of --data for validation, by file (default 0.15; "
                          "deterministic: the same files every run)")
    p.add_argument("--test", type=Path, help="labelled images evaluated after each phase (reported, never used to choose)")
    p.add_argument("--arch", help="registered architecture (default: the weights' own, else squeezenet1_0)")
    p.add_argument("--weights", help="initial weights: deep-compression (default; ImageNet), none (from scratch), "
                                     "a named source, or a file (.pt from a run, .pth, .net, .sqz)")
    p.add_argument("--epochs", type=nonnegative_int, help="epochs of training, --freeze-epochs included (default 10)")
    p.add_argument("--batch-size", type=positive_int,
                   help="global batch, split among torchrun processes (default 64, or all training images when fewer)")
    p.add_argument("--lr", type=lr_arg, help="base learning rate, decayed linearly to 0 in each phase, at most 10 "
                                        "(default 0.04 x batch / 512: the paper's rate)")
    p.add_argument("--finetune-lr", type=lr_arg,
                   help="rate of the all-layers phase after --freeze-epochs, relative to --lr (default 0.5)")
    p.add_argument("--freeze-epochs", type=nonnegative_int,
                   help="epochs training only the new classifier first (default 1 with a new classifier on "
                        "trained features, else 0)")
    p.add_argument("--input-size", type=square_size_arg, metavar="N|NxN",
                   help="square network input in pixels (default: the weights' own)")
    p.add_argument("--resize", type=resize_arg, metavar="N|HxW",
                   help=f"evaluation and conversion {RESIZE_HELP} (default: the weights' resize-to-crop ratio)")
    p.add_argument("--min-scale", type=positive_float, help="smallest area fraction of the random resized crop (default 0.35)")
    p.add_argument("--dsd", type=float, metavar="SPARSITY",
                   help="after training, dense-sparse-dense: prune every layer to SPARSITY, retrain, then retrain dense")
    p.add_argument("--dsd-epochs", type=positive_int, help="epochs of each DSD phase (default 3)")
    p.add_argument("--frame-stride", type=positive_int, help="keep every N-th frame of video clips (default 15)")
    p.add_argument("--seed", type=nonnegative_int, help="seed of shuffling, augmentation and dropout (default 0)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last completed epoch")
    p.add_argument("--workers", type=nonnegative_int, default=0, help="data-loading worker processes per training process (default 0)")
    p.add_argument("--threads", type=positive_int, help="torch threads per process (default: the cores / local processes)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="cpu (gloo) or cuda (nccl); default cpu")
    p.add_argument("--report", type=Path, help="also write the summary as JSON to this file")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.add_argument("--tflite", type=Path, metavar="OUT.tflite",
                   help="then convert best.pt to an int8 .tflite here (the converter's defaults and gates, "
                        "validated on the run's validation images): what `convert tflite --weights RUN/best.pt` does")
    add_gate_flags(p, "--tflite", labelled="the run's validation images")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def _conversion_preflight(tflite: Path):
    """What ``--tflite``'s conversion needs, checked before the first epoch rather than after the run: free
    space for it, and enough photos in the run's calibration sample."""
    from .calibration import calibration_photos
    from .pipeline import check_space
    from .train.setup import CALIB_PER_CLASS

    def check(weight_bytes: int, calib_dir: Path) -> None:
        check_space(Path(tflite).parent, weight_bytes)
        try:
            calibration_photos(calib_dir, f"--tflite: the run's calibration sample (up to {CALIB_PER_CLASS[1]} "
                                          "training images per class)")
        except ConvertError as e:
            raise ConvertError(f"{e}: add training images, or train without --tflite and convert with "
                               "`python -m convert tflite --weights RUN/best.pt --calib DIR`") from None
    return check


def run(args: argparse.Namespace) -> int:
    import os

    gates = gates_of(args)  # given without --tflite: refused before any work

    # Idle OpenMP threads sleep instead of spinning. On a busy machine (2 cores shared by several
    # jobs) spinning threads make torch 3.6x slower with 2 threads (40 vs 147 images/s, measured);
    # it only takes effect before torch is first imported, which is here for the CLI.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from .outputs import check_no_clash, check_output_path
    from .pipeline import check_gates, check_int8_out, int8_outputs, to_int8, weights_file
    from .train import TrainOptions, train
    from .train.setup import RUN_FILES, WORK_FOLDERS

    check_no_clash([*((f"the run's {name}", args.out / name) for name in RUN_FILES), ("--report", args.report),
                    *(int8_outputs(args.tflite, "--tflite") if args.tflite else [])],
                   [("--data", args.data), ("--val", args.val), ("--test", args.test),
                    ("--weights", weights_file(args.weights))])
    for flag, path in (("--report", args.report), ("--tflite", args.tflite)):
        for name, folder in (("--data", args.data), ("--val", args.val), ("--test", args.test),
                             *((f"the run's {d}/", args.out / d) for d in WORK_FOLDERS)):
            if path is not None and folder is not None and inside(path, folder):  # among the images
                raise ConvertError(f"{flag} {path}: inside {name} {folder} (a file among the images); "
                                   "choose another path")
    if args.report:
        check_output_path(args.report, "--report")
    if args.tflite:
        check_int8_out(args.tflite, "--tflite")
        check_gates(*gates)

    summary = train(TrainOptions(
        data=args.data, out=args.out, val=args.val, val_split=args.val_split, test=args.test, arch=args.arch,
        weights=args.weights, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        finetune_lr=args.finetune_lr, freeze_epochs=args.freeze_epochs, input_size=args.input_size,
        resize=args.resize, min_scale=args.min_scale, dsd=args.dsd, dsd_epochs=args.dsd_epochs,
        frame_stride=args.frame_stride, seed=args.seed, resume=args.resume, workers=args.workers,
        threads=args.threads, device=args.device, quiet=args.quiet, argv=sys.argv[:]),
        preflight=_conversion_preflight(args.tflite) if args.tflite else None)
    if summary.get("rank", 0):
        return 0
    if args.tflite:  # after the run's reports: a failed conversion leaves the run whole and says so
        best = Path(args.out) / "best.pt"
        try:
            summary["int8"] = to_int8(best, args.tflite, None, args.quiet, *gates, args.report)
        except ConvertError as e:
            kept = (f"the run in {args.out} is kept: convert it with `python -m convert tflite --weights {best} "
                    f"--out {args.tflite}` once that is mended (--calib DIR, --val DIR)")
            if isinstance(e, GateError):  # its figures go in --report too
                raise missed_gate(e, kept, summary, args.report) from None
            raise ConvertError(f"{e}; {kept}") from None
    write_report(args.report, summary)
    if args.json:
        write_result(json.dumps(summary))
    else:
        line = f"{args.out}: best epoch {summary['best_epoch']}"
        if summary["val_top1"] is not None:
            line += f", validation top-1 {summary['val_top1']:.2f}%"
            from edge_runtime.evaluation import shows_top5

            if shows_top5(summary["num_classes"]):
                line += f" top-5 {summary['val_top5']:.2f}%"
        tests = [p for p in summary["phases"] if p.get("test")]
        if tests:
            line += f"; test top-1 after {tests[-1]['phase']}: {tests[-1]['test']['top1']:.2f}%"
        line += f"; {summary['train_seconds']:.0f} s of training"
        if args.tflite:
            i = summary["int8"]
            figures = "" if i["top1"] is None else (f", validation top-1 {i['top1']:.2f}% (float {i['top1_float']:.2f}%), "
                                                    f"agreement with the float model {i['agreement']:.1f}%")
            line += f"\n{i['out']}: {i['bytes']:,} bytes{figures}"
        write_result(line)
    return 0
