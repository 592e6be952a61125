"""``python -m convert SUBCOMMAND``: thin argument parsing over the library; errors are one line.

Each subcommand lives in its own module ``convert.cli_<name>`` exposing ``register(subparsers)``,
which adds its parser and sets ``func(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from edge_runtime.metadata import MetadataError
from edge_runtime.preprocess import PreprocessingError

from .errors import ConvertError

SUBCOMMANDS = ("evaluate", "tflite", "compress")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m convert",
        description="SqueezeNet-family models: evaluate, compress, and convert to fully int8 TFLite.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"convert.cli_{name}")
        except ModuleNotFoundError as e:
            if e.name != f"convert.cli_{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConvertError, MetadataError, PreprocessingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
