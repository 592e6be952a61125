"""Write Fashion-MNIST (Debian package dataset-fashion-mnist) as class folders for `python -m convert train`.

examples:
  python -m tools.make_fashion_mnist --out build/fashion-mnist
  python -m tools.make_fashion_mnist --out build/fmnist-small --train-per-class 200 --test-per-class 50
then:
  python -m convert train --data build/fashion-mnist/train --val-split 0.1 --out build/runs/fmnist
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


from convert.errors import ConvertError
from convert.train.fashion_mnist import DEFAULT_SOURCE, export


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.make_fashion_mnist",
                                description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True,
                   help="destination: OUT/train/<class>/, OUT/test/<class>/; a missing or empty folder, or an "
                        "earlier export, which is made to hold exactly the images asked for (its others removed)")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help=f"gzipped IDX files (default {DEFAULT_SOURCE})")
    p.add_argument("--train-per-class", type=int, help="keep the first N training images of each class (default all)")
    p.add_argument("--test-per-class", type=int, help="keep the first N test images of each class (default all)")
    args = p.parse_args(argv)
    try:
        s = export(args.out, args.source, {"train": args.train_per_class, "test": args.test_per_class})
    except (ConvertError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    removed = f" ({s['removed']} images of an earlier export removed)" if s["removed"] else ""
    print(f"{args.out}: {s['train']} training and {s['test']} test images in {len(s['classes'])} classes{removed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
