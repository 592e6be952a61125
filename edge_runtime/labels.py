"""ImageNet-1k class table (index, WordNet id, name) shipped with the runtime as a fact table."""
from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(wnids, names) of the 1000 ImageNet-1k classes in standard index order."""
    text = resources.files(__package__).joinpath("data/imagenet_classes.tsv").read_text("utf-8")
    rows = [line.split("\t") for line in text.splitlines()[1:] if line.strip()]
    if [int(r[0]) for r in rows] != list(range(1000)):
        raise RuntimeError("data/imagenet_classes.tsv is damaged: indices 0..999 expected")
    return tuple(r[1] for r in rows), tuple(r[2] for r in rows)
