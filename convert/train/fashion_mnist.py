"""Fashion-MNIST (Debian package ``dataset-fashion-mnist``) written out as class folders.

The package ships the gzipped IDX files under ``/usr/share/datasets/fashion-mnist``; torchvision's
``FashionMNIST`` dataset parses them (its raw folder is filled with the decompressed files), and each
image becomes a lossless PNG in ``OUT/train/<class>/`` or ``OUT/test/<class>/``: the layout the
trainer, the evaluator and the converter read.
"""
from __future__ import annotations

import re
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


# what an export writes: OUT/SPLIT/CLASS/SPLIT_NNNNN.png (NNNNN: the image's index in the split), and the
# temporary file of one an interrupted export was writing (edge_runtime.fileio.atomic_write)
_OWN_FILE = re.compile(r"^\.?(train|test)_\d{5}\.png(\.[0-9a-f]+\.tmp)?$")


def export(out: Path, source: Path = DEFAULT_SOURCE, per_class: dict[str, int | None] | None = None) -> dict:
    """Write ``out/train`` and ``out/test`` as one folder per class of PNG files: exactly the images
    asked for. ``out`` may be missing, empty or an earlier export (of any size): its images that are
    asked for again are kept as they are, the others removed, so the counts returned are what it holds.

    Args:
        out: destination folder (created).
        source: folder holding the four gzipped IDX files.
        per_class: {"train": N, "test": M} keeps the first N / M images of each class (None: all).

    Returns:
        {"train": count, "test": count, "classes": [...], "removed": files of an earlier export removed}.

    Raises:
        ConvertError: the IDX files are missing, or ``out`` holds a file this export did not write
            (nothing is written or removed then).
    """
    per_class = per_class or {}
    splits = {split: load_split(source, train) for split, train in (("train", True), ("test", False))}
    wanted: dict[Path, np.ndarray] = {}
    summary: dict = {}
    for split, (images, labels, classes) in splits.items():
        limit = per_class.get(split)
        taken = {c: 0 for c in range(len(classes))}
        for i, (image, label) in enumerate(zip(images, labels)):
            label = int(label)
            if limit is not None and taken[label] >= limit:
                continue
            taken[label] += 1
            wanted[out / split / folder_name(classes[label]) / f"{split}_{i:05d}.png"] = image
        summary[split] = sum(taken.values())
        summary["classes"] = classes
    stale = files_to_remove(out, set(wanted), {folder_name(c) for c in summary["classes"]})
    for path in stale:
        path.unlink()
    for path, image in wanted.items():
        if not path.exists():
            ok, data = cv2.imencode(".png", image)
            if not ok:
                raise ConvertError(f"{path}: PNG encoding failed")
            atomic_write(path, data.tobytes())
    summary["removed"] = len(stale)
    return summary


def files_to_remove(out: Path, wanted: set[Path], class_folders: set[str]) -> list[Path]:
    """The files of an earlier export in ``out`` that are not ``wanted`` now.

    Raises:
        ConvertError: ``out`` is not a folder, or holds a file no export writes (a user's own data is
            never removed: the message names one such file).
    """
    if out.exists() and not out.is_dir():
        raise ConvertError(f"--out {out}: not a folder")
    stale, foreign = [], []
    for path in sorted(out.rglob("*")) if out.is_dir() else ():
        if path.is_dir() or path in wanted:
            continue
        rel = path.relative_to(out)
        own = (len(rel.parts) == 3 and rel.parts[0] in ("train", "test") and rel.parts[1] in class_folders
               and _OWN_FILE.match(rel.parts[2]) and rel.parts[2].lstrip(".").startswith(rel.parts[0]))
        (stale if own else foreign).append(path)
    if foreign:
        raise ConvertError(f"--out {out}: holds {len(foreign)} file(s) this export did not write (e.g. "
                           f"{foreign[0].relative_to(out)}); an empty folder or an earlier export expected")
    return stale
