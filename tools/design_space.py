"""Design-space explorer: the SqueezeNet paper's sweeps as accuracy against int8 size and latency.

Thin CLI over convert/design_space/: every variant is trained by the project's trainer, converted by
its converter and measured by its benchmark harness; see that package for what is measured how.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from edge_runtime.fileio import HeldResult, write_result
from edge_runtime.flags import (lr_arg, nonnegative_int, positive_float, positive_int, seconds_arg, square_size_arg,
                                threads_arg)


EXAMPLES = """examples:
  python -m tools.make_fashion_mnist --out build/fm-6k --train-per-class 600 --test-per-class 300
  nice -n 10 python -m tools.design_space --data build/fm-6k --out build/design --sweep reduced --budget-ms 10
  python -m tools.design_space --data build/fm-6k --out build/design --resume          # after a kill
  python -m tools.design_space --data build/fm-6k --out build/grid --grid "sr=0.25,0.5;pct_3x3=0.25,0.75" --epochs 2
  python -m tools.design_space --sweep all --list --input-size 224                     # parameters and MACs only
then on the device (no torch needed; build/design/models/ copied there as models/), and back on the workstation:
  python -m tools.benchmark $(for m in models/*_int8.tflite; do echo --model $m; done) --threads 4 --report pi.json
  python -m tools.design_space --out build/design --device-results pi.json --threads 4 --budget-ms 10
"""


def parse(argv):
    from convert.design_space.explore import SweepOptions as D
    from convert.design_space.variants import SWEEPS

    p = argparse.ArgumentParser(prog="python -m tools.design_space",
                                description="Train, convert to int8 and benchmark the SqueezeNet paper's design-space "
                                            "variants (squeeze ratio, share of 3x3 filters, bypass); write results.csv/"
                                            "json, pareto.png, curves.png and report.md with a recommendation.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="labelled images: DIR/train and DIR/test class folders (as written by "
                                             "tools/make_fashion_mnist.py), or training class folders with --test")
    p.add_argument("--test", type=Path, help="labelled test images (default DIR/test): reported, never used to choose")
    p.add_argument("--out", type=Path, help="the sweep folder: results.csv/json, pareto.png, curves.png, report.md, "
                                            "models/ (int8 variants + float siblings), runs/ (training runs)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--sweep", choices=sorted(SWEEPS), default=None,
                       help="the paper's sweeps: sr (SR 0.125..1.0), pct3x3 (1%%..99%% at SR 0.5), bypass (none, simple, "
                            "complex), all (their union and v1.1), reduced (9 variants around v1.0; the default)")
    which.add_argument("--grid", help='a product of metaparameters, e.g. "sr=0.25,0.5;pct_3x3=0.5;bypass=none,simple" '
                                      "(keys: sr, pct_3x3, bypass, version, base_e, incr_e, freq)")
    p.add_argument("--epochs", type=positive_int, help=f"training epochs of every variant (default {D.epochs})")
    p.add_argument("--input-size", type=square_size_arg, metavar="N|NxN",
                   help=f"square network input in pixels (default {D.input_size})")
    p.add_argument("--batch-size", type=positive_int, help=f"training batch of every variant (default {D.batch_size})")
    p.add_argument("--lr", type=lr_arg, help=f"base learning rate of every variant, decayed linearly (default {D.lr})")
    p.add_argument("--min-scale", type=positive_float, help="smallest area fraction of the random resized training crops "
                                                   "(default: the trainer's)")
    p.add_argument("--seed", type=nonnegative_int, help=f"seed of every variant's training (default {D.seed})")
    p.add_argument("--threads", type=threads_arg, help=f"interpreter threads of the latency figures (default {D.threads}); "
                                               "with --device-results, which of the device's thread counts to merge "
                                               "(default: the only one it measured)")
    p.add_argument("--rounds", type=positive_int, help=f"interleaved timing rounds over all variants (default {D.timing_rounds})")
    p.add_argument("--runs", type=positive_int, help=f"minimum timed invocations per variant and round (default {D.timing_runs})")
    p.add_argument("--min-seconds", type=seconds_arg,
                   help=f"minimum timed duration per variant and round (default {D.timing_min_seconds})")
    p.add_argument("--resume", action="store_true", help="continue the sweep in --out: finished variants are kept, a "
                                                         "killed training run continues from its last epoch")
    p.add_argument("--budget-ms", type=positive_float, help="latency budget of the recommendation in report.md")
    p.add_argument("--device-results", type=Path, metavar="FILE",
                   help="JSON of tools/benchmark.py run on the target device over --out's models/: merge its timings "
                        "(matched by file name and size), redraw and re-recommend; nothing is trained")
    conv = p.add_argument_group("converter settings (as in python -m convert tflite; default: the converter's own)")
    conv.add_argument("--weight-rounding", choices=("gptq", "nearest"),
                      help="weights onto the int8 grid: gptq (the converter's default) or nearest (faster)")
    conv.add_argument("--equalize", type=float, help="cross-layer range equalization strength, 0 to disable")
    conv.add_argument("--bias-correction", type=float, help="empirical bias correction strength, 0 to disable")
    p.add_argument("--list", action="store_true", help="print the variants with parameters and MACs, then exit")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p.parse_args(argv)


CONVERT_SETTINGS = ("weight_rounding", "equalize", "bias_correction")


def _list(args) -> int:
    from convert.design_space.counting import macs, parameters
    from convert.design_space.explore import SweepOptions
    from convert.design_space.variants import check_input_size, select
    from convert.models import create_model

    size = args.input_size or SweepOptions.input_size
    variants = select(args.sweep, args.grid)
    check_input_size(variants, size)
    lines = [f"{'variant':24} {'arch':30} {'params (10 classes)':>20} {'MMACs at ' + str(size):>14}"]
    for v in variants:
        arch, kw = v.arch()
        m = create_model(arch, num_classes=10, **kw)
        lines.append(f"{v.name:24} {arch:30} {parameters(m):20,} {macs(m, size) / 1e6:14.1f}")
    write_result("\n".join(lines))  # `--list | head -3`: the reader has what it wanted
    return 0


def _device(args) -> int:
    from convert.design_space import results as R
    from convert.design_space.explore import finish
    from convert.design_space.report import table
    from convert.design_space.variants import DesignSpaceError

    if args.out is None:
        raise DesignSpaceError("--device-results needs --out: the sweep folder whose models/ the device measured")
    res = R.load(args.out)
    if res is None:
        raise DesignSpaceError(f"--out {args.out}: holds no sweep (results.json) to merge device timings into")
    d = R.merge_device(res, args.device_results, args.threads)
    if args.budget_ms is not None:
        res["budget_ms"] = args.budget_ms
    finish(args.out, res, res.get("budget_ms"))
    write_result(table(res))
    print(f"merged {len(d['matched'])} variants measured on {d['machine'].get('cpu') or 'the device'} at "
          f"{d['threads']} threads" + (f"; not in this sweep: {', '.join(d['unmatched'])}" if d["unmatched"] else ""),
          file=sys.stderr)
    return 0


def _sweep(args) -> int:
    from convert.design_space import results as R
    from convert.design_space.explore import SweepOptions, explore
    from convert.design_space.report import recommendation, table
    from convert.design_space.variants import DesignSpaceError, select

    if args.data is None or args.out is None:
        raise DesignSpaceError("--data and --out are required (or --list, or --out with --device-results)")
    stored = ((R.load(args.out) or {}).get("settings") or {}) if args.resume else {}
    if args.sweep is None and args.grid is None:  # --resume: the sweep that was started, not the default
        spec = stored.get("sweep")
        if isinstance(spec, str) and spec:
            args.grid, args.sweep = (spec, None) if "=" in spec else (None, spec)
    given = {"test": args.test, "epochs": args.epochs, "input_size": args.input_size, "seed": args.seed,
             "batch_size": args.batch_size, "lr": args.lr, "min_scale": args.min_scale, "threads": args.threads,
             "timing_rounds": args.rounds, "timing_runs": args.runs, "timing_min_seconds": args.min_seconds}
    for key in ("test", "epochs", "input_size", "seed", "batch_size", "lr", "min_scale"):
        if given[key] is None and stored.get(key) is not None:  # --resume: the sweep's own, unless given
            given[key] = Path(stored[key]) if key == "test" else stored[key]
    convert_settings = {**(stored.get("convert_settings") if isinstance(stored.get("convert_settings"), dict) else {}),
                        **{k: getattr(args, k) for k in CONVERT_SETTINGS if getattr(args, k) is not None}}
    res = explore(SweepOptions(data=args.data, out=args.out, variants=select(args.sweep, args.grid),
                               sweep=args.grid or args.sweep or "reduced", resume=args.resume, budget_ms=args.budget_ms,
                               quiet=args.quiet, convert_settings=convert_settings,
                               **{k: v for k, v in given.items() if v is not None}))
    budget = res.get("budget_ms")
    result = HeldResult()  # the files are written; a table that cannot be shown is said last, failed variants first
    result.show(table(res) + ("" if budget is None else "\n\n" + recommendation(res, budget)))
    for name in res["failed"]:
        row = next(r for r in res["variants"] if r["name"] == name)
        print(f"error: {name}: {row['error']}", file=sys.stderr)
    written = [n for n in ("results.csv", "results.json", "pareto.png", "curves.png", "report.md")
               if (args.out / n).exists()]
    print(f"{args.out}: {', '.join(written)} ({res['wall_seconds'] / 60:.1f} min)", file=sys.stderr)
    return result.exit_code(1 if res["failed"] else 0)


def main(argv: list[str] | None = None) -> int:
    # Idle OpenMP threads sleep instead of spinning (as in `python -m convert train`): set before torch loads.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = parse(argv)
    from convert.cli import run_guarded

    work = _list if args.list else _device if args.device_results is not None else _sweep
    return run_guarded(lambda: work(args), stopped="finished variants are saved; --resume continues")


if __name__ == "__main__":
    sys.exit(main())
