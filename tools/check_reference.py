"""How decided a weights' own labelled photos are: the ``check_reference`` of its record (convert/weights.py).

Without ``--val`` the converter judges its unlabelled check views with their agreement weighted to this
mix: how many images of the tuning half (edge_runtime.evaluation.class_half) fall in each band of the
float model's top-two logit margin (convert.fidelity.MARGIN_EDGES). Measured on the tuning half only,
like every other setting; the reporting half is printed beside it for comparison.

  python -m tools.check_reference --weights deep-compression --val ../shared/imagenet/val500
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.check_reference", description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="deep-compression", help="named weights or a file (default deep-compression)")
    p.add_argument("--val", required=True, help="the weights' labelled images (val500 for the ImageNet weights)")
    args = p.parse_args(argv)

    from convert.compress import container  # noqa: F401 (registers .sqz with the weights loader)
    from convert.errors import ConvertError
    from convert.fidelity import MARGIN_EDGES, band_counts_by_half
    from convert.torch_eval import evaluate_torch
    from convert.weights import load_model
    from edge_runtime.evaluation import DatasetError

    try:
        model, record = load_model(args.weights)
        result = evaluate_torch(model, record, args.val, keep_scores=True)
    except (ConvertError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = band_counts_by_half(result.scores, result.targets)
    bands = ["< " + str(MARGIN_EDGES[0])] + [f"{a}-{b}" for a, b in zip(MARGIN_EDGES, MARGIN_EDGES[1:])] + \
        [">= " + str(MARGIN_EDGES[-1])]
    print("margin band (logits): " + ", ".join(bands))
    for half, c in counts.items():
        print(f"{half:6s} ({sum(c)} images): {c}")
    print(f"check_reference={counts['tune']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
