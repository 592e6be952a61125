"""``python -m convert compress``: pruning, weight sharing and Huffman coding into a .sqz container."""
from __future__ import annotations

import argparse
from pathlib import Path

from edge_runtime.fileio import HeldResult
from edge_runtime.flags import deprecated, positive_int

from .cli_tflite import add_gate_flags, gates_of, missed_gate, write_report
from .errors import ConvertError, GateError

EXAMPLES = """examples:
  python -m convert compress --weights deep-compression --out build/squeezenet1_0.sqz --lossless
  python -m convert compress --weights deep-compression --out build/squeezenet1_0_dc.sqz \\
      --val ../shared/imagenet/val500
  python -m convert compress --weights deep-compression --out build/squeezenet1_0_440k.sqz --size-budget 440000
  python -m convert compress --weights deep-compression --out build/squeezenet1_0_6bit.sqz --bits 6 \\
      --finetune-images photos/ --val ../shared/imagenet/val500
  python -m convert tflite --weights build/squeezenet1_0_dc.sqz --out build/squeezenet1_0_dc_int8.tflite
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compress", help="Deep Compression: prune, share weights, Huffman-code into a .sqz file",
                       description="Magnitude pruning, per-layer k-means weight sharing, centroid fine-tuning "
                                   "by distillation on unlabelled photos, and Huffman coding into a .sqz container "
                                   "that `evaluate` and `tflite` accept as --weights.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="named weights or a weights file (.net, .pth, .sqz)")
    p.add_argument("--out", required=True, type=Path, help="the .sqz container to write")
    p.add_argument("--size-budget", type=positive_int, default=None,
                   help="bytes the container may take; bits and extra pruning are chosen per layer to fit, "
                        "by each layer's output distortion on unlabelled calibration photos (default 500000; "
                        "not with --bits, --sparsity or --lossless, which fix them)")
    p.add_argument("--bits", help="fixed bits per layer instead of the automatic choice: '8' or "
                                  "'8,classifier.1=6,features.12=7'")
    p.add_argument("--sparsity", help="extra pruning per layer prefix, e.g. 'features.12.expand3x3=0.8'")
    p.add_argument("--lossless", action="store_true", help="keep a .net release's codebooks and codes (Huffman only)")
    p.add_argument("--finetune-images", type=Path,
                   help="unlabelled photos for centroid fine-tuning by distillation from the uncompressed model "
                        "(default: the converter's calibration photos)")
    p.add_argument("--finetune-steps", type=int, default=None,
                   help="fine-tuning steps (default 150; 0: none). Not with --lossless")
    p.add_argument("--val", type=Path, help="labelled images: report float and compressed top-1")
    p.add_argument("--sensitivity", action="store_true", help="print the per-layer sensitivity table (needs --val)")
    p.add_argument("--sensitivity-limit", type=positive_int, default=100,
                   help="use only the first N images of --val for the sensitivity table (default 100)")
    deprecated(p, "--limit", "--sensitivity-limit", "sensitivity_limit", type=positive_int)
    p.add_argument("--tflite", type=Path, help="also convert the container to an int8 .tflite here and report it")
    p.add_argument("--report", type=Path, help="write the report as JSON here")
    add_gate_flags(p, "--tflite")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    gates = gates_of(args)  # given without --tflite: refused before any work
    from .compress.pipeline import DEFAULT_BUDGET, CompressOptions, compress
    from .outputs import check_no_clash, check_output_path
    from .pipeline import check_gates, check_int8_out, int8_outputs, to_int8, weights_file

    check_no_clash([("--out", args.out), ("--report", args.report),
                    *(int8_outputs(args.tflite, "--tflite") if args.tflite else [])],
                   [("--weights", weights_file(args.weights)), ("--finetune-images", args.finetune_images),
                    ("--val", args.val)])
    if args.report:  # before the compression's work, like every other output
        check_output_path(args.report, "--report")
    if args.tflite:
        check_int8_out(args.tflite, "--tflite")
        check_gates(*gates)
    fixed = [flag for flag, given in (("--bits", args.bits), ("--sparsity", args.sparsity),
                                      ("--lossless", args.lossless)) if given]
    if args.size_budget is not None and fixed:
        raise ConvertError(f"--size-budget: not with {fixed[0]} (the budget chooses bits and pruning; "
                           f"{fixed[0]} fixes them)")
    if not str(args.out).endswith(".sqz"):
        raise ConvertError(f"--out {args.out}: a .sqz container path expected (--tflite OUT.tflite converts it too)")
    if args.lossless and args.finetune_steps:
        raise ConvertError("--finetune-steps: not with --lossless (which keeps the release's codebooks as they are)")
    report = compress(CompressOptions(weights=args.weights, out=args.out, bits=args.bits, sparsity=args.sparsity,
                                      size_budget=DEFAULT_BUDGET if args.size_budget is None else args.size_budget,
                                      lossless=args.lossless, finetune_images=args.finetune_images,
                                      finetune_steps=150 if args.finetune_steps is None else args.finetune_steps,
                                      val=args.val,
                                      sensitivity=args.sensitivity, limit=args.sensitivity_limit,
                                      quiet=args.quiet))
    if args.tflite:
        try:
            report["int8"] = to_int8(Path(report["out"]), args.tflite, args.val, args.quiet, *gates, args.report)
        except GateError as e:  # the container is written: the report says so and holds the int8 figures
            raise missed_gate(e, f"the container {report['out']} is kept: convert it with `python -m convert "
                                 f"tflite --weights {report['out']} --out {args.tflite}` once that is mended",
                              report, args.report) from None
    line = f"{report['out']}: {report['bytes']:,} bytes, decodes in {report['decode_seconds']:.2f} s"
    if "top1_compressed" in report:
        line += f"; top-1 {report['top1_compressed']:.1f}% (uncompressed {report['top1_float']:.1f}%)"
        for half, h in report.get("halves", {}).items():
            line += (f"; {half} half: {h['top1_compressed']:.1f}% vs {h['top1_float']:.1f}% "
                     f"(drop {h['top1_drop']:.1f}, 95% CI {h['top1_drop_ci95'][0]:.1f} to {h['top1_drop_ci95'][1]:.1f})")
    if "int8" in report and report["int8"]["top1"] is not None:
        i = report["int8"]
        line += (f"\n| model | bytes | top-1 |\n| --- | --- | --- |\n"
                 f"| float (source) | - | {report.get('top1_float', float('nan')):.1f}% |\n"
                 f"| compressed float | {report['bytes']:,} | {report.get('top1_compressed', float('nan')):.1f}% |\n"
                 f"| int8 TFLite | {i['bytes']:,} | {i['top1']:.1f}% (agreement {i['agreement']:.1f}%) |")
    result = HeldResult()  # a reader that left (`| head -1`) is no error; a result not shown is said after the report
    result.show(line)
    write_report(args.report, report)
    return result.exit_code(0)
