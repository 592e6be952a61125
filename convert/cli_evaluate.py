"""``python -m convert evaluate``: top-1 / top-5 of weights on a folder of labelled images."""
from __future__ import annotations

import argparse
import json

from pathlib import Path

from edge_runtime.evaluation import DatasetError
from edge_runtime.flags import deprecated, positive_int

from .errors import ConvertError

EXAMPLES = """examples:
  python -m convert evaluate --weights deep-compression --val ../shared/imagenet/val500
  python -m convert evaluate --weights build/squeezenet1_0_dc.sqz --val photos/ --json
  python -m convert evaluate --weights my_squeezenet.pth --arch squeezenet1_1 --val val/ --limit 100
  python -m convert evaluate --model build/squeezenet1_0_int8.tflite --val ../shared/imagenet/val500
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="top-1/top-5 of weights or a converted .tflite on labelled images",
                       description="Measure top-1 and top-5 accuracy of a float model (named weights or a weights\n"
                                   "file) or of a converted .tflite (run by the device runtime) on a folder of\n"
                                   "labelled images, with the model's own preprocessing.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", type=Path, metavar="MODEL.tflite",
                       help="a converted .tflite (the name the runtime and the benchmark use for it; the same "
                            "as --weights MODEL.tflite)")
    which.add_argument("--weights",
                       help="a named source (deep-compression, squeezenet1_0, squeezenet1_1) or a weights file "
                            "(.net, .pth state dict, or a compressed container), or a converted .tflite artifact "
                            "(run by the device runtime, with the preprocessing and labels it carries)")
    p.add_argument("--arch", help="architecture for a plain checkpoint (default: the weights' own)")
    images = p.add_mutually_exclusive_group(required=True)  # a group: the hidden old spelling counts too
    images.add_argument("--val", help="labelled images: files named by WordNet id, or one sub-folder per class")
    deprecated(images, "--images", "--val", "val")
    p.add_argument("--limit", type=positive_int, help="use only the first N labelled images")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of text")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--report", type=Path, help="also write the JSON object to this file")
    p.add_argument("--no-verify", action="store_true",
                   help="with a .tflite: evaluate it even if its integrity checksum does not match (experiments)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.model is not None:
        if Path(args.model).suffix != ".tflite":
            raise ConvertError(f"--model {args.model}: a .tflite expected (other weights go to --weights)")
        args.weights = str(args.model)
    if not args.val:
        raise ConvertError("--val: a folder of labelled images is required")
    if args.report:
        from .outputs import check_no_clash, check_output_path
        from .pipeline import weights_file

        check_no_clash([("--report", args.report)], [("--model" if args.model is not None else "--weights",
                                                      weights_file(args.weights)), ("--val", args.val)])
        check_output_path(args.report, "--report")
    extra = {}
    if str(args.weights).endswith(".tflite"):
        name, sha256, result, extra["content_sha256"] = _evaluate_tflite(args)
    else:
        from .torch_eval import evaluate_torch
        from .weights import load_model

        model, record = load_model(args.weights, args.arch)
        try:
            result = evaluate_torch(model, record, args.val, limit=args.limit, progress=not (args.json or args.quiet))
        except DatasetError as e:
            raise ConvertError(str(e)) from None
        name, sha256 = record.name, record.sha256
    record_json = json.dumps({"weights": name, "sha256": sha256, **extra, **result.to_dict()})
    if args.report:
        from edge_runtime.fileio import atomic_write

        atomic_write(args.report, record_json + "\n")
    from edge_runtime.fileio import write_result

    write_result(record_json if args.json else
                 f"{name}: {result.figures_text()}  ({result.n_used} images, {result.n_skipped} skipped)")
    return 0


def _evaluate_tflite(args: argparse.Namespace):
    """(name, the file's sha256, EvalResult, the embedded content sha256 or None) of a converted artifact,
    run by the device runtime. The file's sha256 is what the runtime's /model and metrics report."""
    from edge_runtime.classify import Classifier, ModelError
    from edge_runtime.evaluation import evaluate, find_labelled_images
    from edge_runtime.fileio import sha256_file

    try:
        clf = Classifier(args.weights, verify=not args.no_verify)
        images = find_labelled_images(args.val, clf.info.wnids, clf.info.labels)
        if args.limit:
            images.paths, images.targets = images.paths[:args.limit], images.targets[:args.limit]
        result = evaluate(images, clf.predict_batch, clf.preprocessing, progress=not (args.json or args.quiet))
    except (ModelError, DatasetError) as e:
        raise ConvertError(str(e)) from None
    return clf.info.model_name, sha256_file(clf.path), result, clf.content_sha256
