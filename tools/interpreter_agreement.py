"""Does the runtime decide the same top-1 on every TFLite interpreter? (device_env_check.sh runs it)

``dump`` classifies labelled images and every frame of a clip with one interpreter (run it in each
device environment; it needs only the runtime's dependencies); ``compare`` reads the dumps, prints
the agreement of every pair and the exact ties at the top, and fails below the given gates.

Each dump also records a digest of every input tensor and its OpenCV version: two environments' OpenCV
(their FFmpeg) can decode a clip slightly otherwise (OpenCV 4.10 and 5.0 differ by up to 2 levels in a few
pixels of an MPEG-4 clip's later frames, enough to move a near-tie), so ``compare`` says how many inputs
differed and the agreement on the inputs that did not: the interpreters' own share of a difference.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from edge_runtime.fileio import atomic_write, outputs_problem, read_bounded
from edge_runtime.flags import GATE_MISSED, deprecated, threads_arg

MAX_DUMP_BYTES = 16 << 20  # a dump of 500 images and a few thousand frames is well under 1 MB


EXAMPLES = """examples:
  python -m tools.interpreter_agreement dump --model build/squeezenet1_0_int8.tflite \\
      --val ../shared/imagenet/val500 --source samples/sample_clip.mp4 --report build/top1-litert.json
  python -m tools.interpreter_agreement compare build/top1-*.json --min-agreement 0.98 --max-ties 0.005
"""


def dump(args: argparse.Namespace) -> int:
    import cv2
    import numpy as np

    from edge_runtime.classify import Classifier, ModelError
    from edge_runtime.evaluation import DatasetError, find_labelled_images, iter_crops
    from edge_runtime.interpreter import InterpreterUnavailable, backend_version
    from edge_runtime.sources import SourceError, open_source

    problem = outputs_problem([("--report", args.report)], [("--model", args.model), ("--val", args.val),
                                                            ("--source", args.source)])
    if problem:  # before every image and frame is classified
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        clf = Classifier(args.model, threads=args.threads, backend=args.backend, verify=not args.no_verify,
                         xnnpack=args.xnnpack)
        images = find_labelled_images(args.val, clf.info.wnids, clf.info.labels) if args.val else None
    except (ModelError, InterpreterUnavailable, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def decide() -> tuple[int, bool, str]:
        """The top-1, whether it is an exact tie, and a digest of the input it was decided on."""
        fed = hashlib.blake2b(clf.interpreter.get_tensor(clf.input_index).tobytes(), digest_size=8).hexdigest()
        clf.invoke()
        scores = clf.raw_output()
        best = scores.max()
        return int(np.argmax(scores)), bool(np.count_nonzero(scores == best) > 1), fed

    out: dict = {"backend": clf.backend + (" xnnpack" if clf.xnnpack else ""), "version": backend_version(clf.backend),
                 "model": str(args.model), "opencv": cv2.__version__}
    if images is not None:
        top, tied, inputs, names, targets = [], [], [], [], []
        for i, crop, *_ in iter_crops(images.paths, clf.preprocessing):
            if crop is None:
                continue
            clf.set_crop(crop)
            t, tie, fed = decide()
            top.append(t), tied.append(tie), inputs.append(fed)
            names.append(images.paths[i].name), targets.append(images.targets[i])
        out["val"] = {"files": names, "top1": top, "tied": tied, "inputs": inputs, "targets": targets}
    if args.source:
        try:
            source = open_source(args.source, fit=clf.preprocessing)
        except SourceError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        top, tied, inputs = [], [], []
        for frame in source:
            clf.set_frame(frame)
            t, tie, fed = decide()
            top.append(t), tied.append(tie), inputs.append(fed)
        source.close()
        out["clip"] = {"frames": len(top), "top1": top, "tied": tied, "inputs": inputs}
    atomic_write(args.report, json.dumps(out))
    print(f"{clf.backend} {out['version']}: {len(out.get('val', {}).get('top1', []))} images, "
          f"{out.get('clip', {}).get('frames', 0)} frames -> {args.report}")
    return 0


def _halves(dumps: list[dict]) -> list[dict]:
    """Each dump's labelled part also split into the val halves (edge_runtime.evaluation.class_half)."""
    from edge_runtime.evaluation import HALVES, class_half

    for d in dumps:
        val = d.get("val")
        if not val or "targets" not in val:
            continue
        for half in HALVES:
            keep = [i for i, t in enumerate(val["targets"]) if class_half(t) == half]
            d[f"val {half} half"] = {k: [val[k][i] for i in keep] for k in ("top1", "tied", "inputs") if k in val}
    return dumps


def _inputs_note(a: dict, b: dict, part: str) -> str:
    """How many of ``part``'s inputs the two dumps' environments made otherwise (decoded or resized by
    another OpenCV), and the agreement on the inputs they made alike; "" when none differ (or a dump
    written before digests were recorded)."""
    fa, fb = a[part].get("inputs"), b[part].get("inputs")
    if not fa or not fb:
        return ""
    alike = [i for i, (x, y) in enumerate(zip(fa, fb)) if x == y]
    if len(alike) == len(fa):
        return ""
    same = sum(a[part]["top1"][i] == b[part]["top1"][i] for i in alike)
    va, vb = a.get("opencv", "?"), b.get("opencv", "?")
    versions = f"OpenCV {va} / {vb}" if va != vb else f"OpenCV {va} in both"
    return (f"; {len(fa) - len(alike)} inputs differ ({versions}: decoded or resized otherwise), "
            + (f"same top-1 on {100 * same / len(alike):.1f}% of the {len(alike)} alike" if alike else "none alike"))


def compare(args: argparse.Namespace) -> int:
    try:
        dumps = _halves([json.loads(read_bounded(p, MAX_DUMP_BYTES)) for p in args.dumps])
    except (OSError, ValueError) as e:
        print(f"error: cannot read a dump ({e})", file=sys.stderr)
        return 2
    failed = []
    parts = ["val"] + sorted({k for d in dumps for k in d if k.startswith("val ")}) + ["clip"]
    for part in parts:
        runs = [d for d in dumps if part in d]
        if not runs:
            continue
        n = len(runs[0][part]["top1"])
        if any(len(r[part]["top1"]) != n for r in runs):
            print(f"error: the dumps cover different {part} items", file=sys.stderr)
            return 2
        if not n:
            if part.startswith("val "):  # a subset of images whose classes all lie in the other half
                print(f"{part}: no items")
                continue
            print(f"error: the dumps hold no {part} items to compare", file=sys.stderr)
            return 2
        for r in runs:
            ties = sum(r[part]["tied"]) / n
            print(f"{part}: {r['backend']} {r['version']}: exact ties at the top {100 * ties:.1f}% of {n}")
            if args.max_ties is not None and ties > args.max_ties and part == "val":  # the clip: reported
                failed.append(f"{part} ties {100 * ties:.1f}% > {100 * args.max_ties:.1f}% ({r['backend']})")
        for i, a in enumerate(runs):
            for b in runs[i + 1:]:
                same = sum(x == y for x, y in zip(a[part]["top1"], b[part]["top1"])) / n
                print(f"{part}: same top-1 {a['backend']} / {b['backend']}: {100 * same:.1f}% of {n}"
                      + _inputs_note(a, b, part))
                if args.min_agreement is not None and same < args.min_agreement and part in ("val", "clip"):
                    failed.append(f"{part} {a['backend']}/{b['backend']} {100 * same:.1f}% < "
                                  f"{100 * args.min_agreement:.1f}%")
    if failed:
        print("error: " + "; ".join(failed), file=sys.stderr)
        return GATE_MISSED
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.interpreter_agreement",
                                description=__doc__.splitlines()[0], epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump", help="top-1 of every image and frame with one interpreter")
    d.add_argument("--model", type=Path, required=True, help="the .tflite artifact")
    d.add_argument("--val", type=Path, help="labelled images (files named by WordNet id, or class folders)")
    d.add_argument("--source", help="a video file: every frame is classified")
    d.add_argument("--backend", help="force an interpreter (ai-edge-litert, tflite-runtime, tensorflow)")
    d.add_argument("--threads", type=threads_arg, default=2, help="interpreter threads (default 2)")
    d.add_argument("--xnnpack", action="store_const", const=True, default=None,
                   help="XNNPACK kernels where the interpreter has them instead of the builtin ones (faster, "
                        "int8 rounded differently; default: as the runtime, builtin for int8, XNNPACK for float)")
    d.add_argument("--no-verify", action="store_true", help="skip the artifact's integrity check")
    d.add_argument("--report", type=Path, help="the JSON dump to write (required)")
    deprecated(d, "--out", "--report", "report", type=Path)
    d.set_defaults(func=dump)
    c = sub.add_parser("compare", help="agreement of the dumps, pair by pair")
    c.add_argument("dumps", nargs="+", help="JSON dumps written by `dump`")
    c.add_argument("--min-agreement", type=float, help="gate: least fraction with the same top-1, every pair")
    c.add_argument("--max-ties", type=float,
                   help="gate: largest fraction of the labelled images with an exact tie at the top (the clip's "
                        "frames, one scene, are reported)")
    c.set_defaults(func=compare)
    args = p.parse_args(argv)
    if args.cmd == "dump" and args.report is None:  # not required=True: the old spelling --out sets it too
        d.error("the following arguments are required: --report")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
