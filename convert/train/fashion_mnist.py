"""Fashion-MNIST (Debian package ``dataset-fashion-mnist``) written out as class folders.

The package ships the gzipped IDX files under ``/usr/share/datasets/fashion-mnist``; torchvision's
``FashionMNIST`` dataset parses them (its raw folder is filled with the decompressed files), and each
image becomes a lossless PNG in ``OUT/train/<class>/`` or ``OUT/test/<class>/``: the layout the
trainer, the evaluator and the converter read.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import cv2
import numpy as np

from edge_runtime.fileio import atomic_write

from ..errors import ConvertError

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def folder_name(label: str) -> str:
    """A class name as a folder name ("T-shirt/top" -> "T-shirt_top")."""
    return label.replace("/", "_")


def load_split(source: Path, train: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(N x 28 x 28 uint8 images, N labels, class names) of one split, parsed by torchvision.

    Raises:
        ConvertError: the IDX files are missing (install the Debian package dataset-fashion-mnist).
    """
    from ..torchvision_compat import import_torchvision

    missing = [f for f in FILES if not (source / f).is_file()]
    if missing:
        raise ConvertError(f"{source}: {', '.join(missing)} missing (sudo apt-get install dataset-fashion-mnist)")
    datasets = import_torchvision().datasets
    with tempfile.TemporaryDirectory(prefix="fashion-mnist-") as tmp:
        raw = Path(tmp) / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        for f in FILES:  # torchvision checks that both splits are present
            datasets.utils.extract_archive(str(source / f), str(raw))
        ds = datasets.FashionMNIST(tmp, train=train, download=False)
        return ds.data.numpy(), ds.targets.numpy(), list(ds.classes)


def export(out: Path, source: Path = DEFAULT_SOURCE, per_class: dict[str, int | None] | None = None) -> dict:
    """Write ``out/train`` and ``out/test`` as one folder per class of PNG files.

    Args:
        out: destination folder (created); existing files with the same names are left as they are.
        source: folder holding the four gzipped IDX files.
        per_class: {"train": N, "test": M} keeps the first N / M images of each class (None: all).

    Returns:
        {"train": count, "test": count, "classes": [...]}.
    """
    per_class = per_class or {}
    summary: dict = {}
    for split, train in (("train", True), ("test", False)):
        images, labels, classes = load_split(source, train)
        limit = per_class.get(split)
        taken = {c: 0 for c in range(len(classes))}
        written = 0
        for i, (image, label) in enumerate(zip(images, labels)):
            label = int(label)
            if limit is not None and taken[label] >= limit:
                continue
            taken[label] += 1
            path = out / split / folder_name(classes[label]) / f"{split}_{i:05d}.png"
            if not path.exists():
                ok, data = cv2.imencode(".png", image)
                if not ok:
                    raise ConvertError(f"{path}: PNG encoding failed")
                atomic_write(path, data.tobytes())
            written += 1
        summary[split] = written
        summary["classes"] = classes
    return summary
