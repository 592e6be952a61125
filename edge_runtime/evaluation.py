"""Top-1 / top-5 of any model on a folder of labelled images (device side: numpy + OpenCV only).

Two layouts: ImageNet style, where a file name starts with the WordNet id of its class
(``n01443537_goldfish.JPEG``), and one sub-folder per class named by WordNet id, class name or index.
The model is a pluggable ``predict(batch) -> scores`` over uint8 crops made by
:func:`edge_runtime.preprocess.resize_crop`, so the float and int8 models see identical pixels.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .preprocess import ImageTooLarge, Preprocessing, PreprocessingError, read_image, resize_crop

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
_WNID = re.compile(r"^(n\d{8})")

Predict = Callable[[np.ndarray], np.ndarray]


class DatasetError(ValueError):
    """The image folder is missing, empty, or its labels cannot be mapped to the model's classes."""


@dataclass
class LabelledImages:
    paths: list[Path]
    targets: list[int]
    skipped: list[str] = field(default_factory=list)  # files that are not images or have no known class


def shows_top5(classes: int | None) -> bool:
    """Whether top-5 is worth printing: a model of 5 classes or fewer always has it at 100% (``None``, a
    class count not known: printed)."""
    return classes is None or classes > 5


@dataclass
class EvalResult:
    top1: float  # percent
    top5: float
    n_used: int
    n_skipped: int
    skipped: list[str]
    files: list[str]
    targets: list[int]
    top5_indices: list[list[int]]
    scores: np.ndarray | None = None  # (n_used, classes) when kept
    classes: int | None = None  # the model's (None: not known, top-5 shown)

    def figures_text(self) -> str:
        """``top-1 X%  top-5 Y%``, or top-1 alone where top-5 says nothing (:func:`shows_top5`)."""
        return f"top-1 {self.top1:.1f}%" + (f"  top-5 {self.top5:.1f}%" if shows_top5(self.classes) else "")

    def to_dict(self) -> dict:
        return {"top1": round(self.top1, 3), "top5": round(self.top5, 3), "images": self.n_used,
                "skipped": self.n_skipped, "skipped_files": self.skipped[:50]}


def find_labelled_images(root: str | Path, wnids: Sequence[str], labels: Sequence[str]) -> LabelledImages:
    """Discover (path, class index) pairs in either layout; non-images and unknown classes are skipped.

    Raises:
        DatasetError: the folder does not exist or holds no usable image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a directory of labelled images")
    by_key: dict[str, int] = {}
    for i, name in enumerate(labels):
        by_key[name.lower()] = i
    for i, w in enumerate(wnids):
        by_key[w.lower()] = i
    wnid_index = {w: i for i, w in enumerate(wnids)}
    out = LabelledImages([], [])
    unknown_folders: set[str] = set()  # class folders holding images, named by no class of the model
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            out.skipped.append(f"{rel} (not an image file)")
            continue
        target = None
        if len(rel.parts) > 1:  # one sub-folder per class
            key = rel.parts[0].lower()
            target = by_key.get(key)
            if target is None and key.isdigit() and int(key) < len(labels):
                target = int(key)
        else:
            m = _WNID.match(path.name)
            target = wnid_index.get(m.group(1)) if m else None
        if target is None:
            if len(rel.parts) > 1:
                unknown_folders.add(rel.parts[0])
                out.skipped.append(f"{rel} ({_not_a_class_folder(path, rel.parts[0], wnid_index)})")
            else:
                out.skipped.append(f"{rel} (no known class in its name)")
            continue
        out.paths.append(path)
        out.targets.append(target)
    if not out.paths and unknown_folders:
        n = len(unknown_folders)
        which = "its class folder is not" if n == 1 else f"none of its {n} class folders is"
        raise DatasetError(f"{root}: {which} a class of the model (its labels: {_some(labels)}; "
                           f"folders: {_some(sorted(unknown_folders))})")
    if not out.paths:
        raise DatasetError(f"{root}: no labelled images found (expected files named by WordNet id, "
                           f"e.g. n01443537_goldfish.JPEG, or one sub-folder per class); "
                           f"{len(out.skipped)} files skipped")
    return out


def _not_a_class_folder(path: Path, folder: str, wnid_index: dict[str, int]) -> str:
    """Why a file in a sub-folder has no class: the sub-folder names none (a file inside it is read by its
    folder, never by its own name, even when the name starts with a WordNet id of the model)."""
    m = _WNID.match(path.name)
    if m and m.group(1) in wnid_index:
        return (f"in the sub-folder {folder}, which is not a class of the model: files named by WordNet id are "
                "read by their name only at the top of the folder, a file in a sub-folder by the sub-folder's name")
    return f"its folder {folder} is not a class of the model"


def _some(names: Sequence[str], k: int = 5, width: int = 32) -> str:
    """The first ``k`` of ``names`` for a one-line message: each printable and at most ``width`` characters."""
    def clip(name: str) -> str:
        name = "".join(c if c.isprintable() else "?" for c in name)
        return name if len(name) <= width else name[:width - 3] + "..."

    shown = ", ".join(clip(n) for n in names[:k])
    return shown + (f", ... ({len(names)} in all)" if len(names) > k else "")


HALVES = ("tune", "report")


def class_half(index: int) -> str:
    """The half of a labelled set that class ``index`` belongs to: the rule every figure follows.

    Classes are dealt out in pairs by index: 0-1 "tune", 2-3 "report", 4-5 "tune", ... i.e.
    ``"tune" if (index // 2) % 2 == 0 else "report"``. Settings are chosen on the tuning half only and
    quoted on the reporting half, whose images and classes no choice has seen. On val500 (one image of
    every even ImageNet class) the tuning half is the classes with ``index % 4 == 0`` and the reporting
    half those with ``index % 4 == 2``: 250 images each, the same mix of animals, objects and scenes.
    """
    if index < 0:
        raise ValueError(f"class index {index}: >= 0 expected")
    return HALVES[(index // 2) % 2]


def split_by_class(images: LabelledImages, half: str) -> LabelledImages:
    """The images of ``images`` whose class lies in ``half`` ("tune" or "report"), order kept.

    Deterministic and disjoint: a class, and so every image of it, is in exactly one half.
    Raises DatasetError for another half name or when the half holds no image.
    """
    if half not in HALVES:
        raise DatasetError(f"half {half!r}: one of {', '.join(HALVES)} expected")
    keep = [i for i, t in enumerate(images.targets) if class_half(t) == half]
    if not keep:
        raise DatasetError(f"the {half} half holds no image (classes {sorted(set(images.targets))[:10]}...)")
    return LabelledImages([images.paths[i] for i in keep], [images.targets[i] for i in keep], list(images.skipped))


def iter_crops(paths: Iterable[Path], pp: Preprocessing):
    """Yield (index, crop, None) for each readable path, (index, None, why) for the others
    (unreadable, or over the pixel budget: see :func:`edge_runtime.preprocess.read_image`)."""
    for i, path in enumerate(paths):
        try:
            yield i, resize_crop(read_image(str(path), fit=pp), pp), None
        except ImageTooLarge as e:
            yield i, None, str(e).removeprefix(f"{path.name}: ")
        except PreprocessingError:
            yield i, None, "unreadable image"


def progress_every(total: int, least: int = 50, lines: int = 20) -> int:
    """Items between progress lines: every ``least``, or a multiple of it so that a long pass prints about
    ``lines`` lines (a CI log of ImageNet's 50,000 images got 1,000 lines per model)."""
    return least * max(1, -(-total // (least * lines)))


def evaluate(images: LabelledImages, predict: Predict, pp: Preprocessing, batch_size: int = 16,
             keep_scores: bool = False, progress: bool = True) -> EvalResult:
    """Run ``predict`` over every readable image and score top-1 / top-5 against the labels."""
    used_files, targets, top5, all_scores = [], [], [], []
    classes = 0  # the model's, from the scores' width
    skipped = list(images.skipped)
    batch, batch_idx = [], []
    n = len(images.paths)
    every = progress_every(n)

    def flush() -> None:
        nonlocal classes
        if not batch:
            return
        scores = np.asarray(predict(np.stack(batch)))
        if scores.ndim != 2 or scores.shape[0] != len(batch):
            raise DatasetError(f"predict returned shape {scores.shape}, ({len(batch)}, classes) expected")
        classes = scores.shape[1]
        for j, i in enumerate(batch_idx):
            order = np.argsort(-scores[j], kind="stable")[:5]
            top5.append([int(c) for c in order])
            used_files.append(str(images.paths[i]))
            targets.append(images.targets[i])
        if keep_scores:
            all_scores.append(scores.astype(np.float32))
        batch.clear()
        batch_idx.clear()

    for i, crop, why in iter_crops(images.paths, pp):
        if crop is None:
            skipped.append(f"{images.paths[i].name} ({why})")
        else:
            batch.append(crop)
            batch_idx.append(i)
            if len(batch) == batch_size:
                flush()
        if progress and ((i + 1) % every == 0 or i + 1 == n > every):
            print(f"  evaluated {i + 1}/{n} images", file=sys.stderr, flush=True)
    flush()
    if not top5:
        raise DatasetError("no readable images to evaluate")
    t = np.asarray(targets)
    p = np.asarray(top5)
    return EvalResult(top1=100.0 * float(np.mean(p[:, 0] == t)),
                      top5=100.0 * float(np.mean((p == t[:, None]).any(axis=1))),
                      n_used=len(t), n_skipped=len(skipped), skipped=skipped, files=used_files,
                      targets=targets, top5_indices=top5,
                      scores=np.concatenate(all_scores) if keep_scores else None, classes=classes)
