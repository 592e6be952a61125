"""Training data: labelled folders -> samples -> a deterministic split -> torch datasets.

Layouts (as the evaluator reads them): one sub-folder per class (images at any depth below it), and
ImageNet-style files at the top level whose names start with a WordNet id (``n01443537_x.JPEG``).
Video clips inside a class folder give every ``frame_stride``-th frame (frame 0, N, 2N, ...), written
once as lossless PNGs under the run's ``frames/`` folder so they are ordinary images from then on
(also for the converter's calibration). Every file is read and decoded once while scanning: files
that are not images, or do not decode, are counted and listed, never fatal.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from edge_runtime.evaluation import IMAGE_SUFFIXES
from edge_runtime.fileio import atomic_write, sha256_file
from edge_runtime.preprocess import (ImageTooLarge, Preprocessing, PreprocessingError, read_image, read_image_bytes,
                                     resize_crop)

from ..errors import ProcessError, TrainError

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}
DEFAULT_FRAME_STRIDE = 15  # about two frames a second from a 30 fps clip: neighbours differ
MAX_CLIP_BYTES = 4 << 30
MAX_CLIP_FRAMES = 1_000_000
_WNID = re.compile(r"^(n\d{8})")


@dataclass
class Scan:
    """What a labelled folder holds.

    Attributes:
        items: (image path, class index, group) per sample; frames of one clip share its group, so a
            split never puts neighbouring frames on both sides.
        skipped: "relative path (reason)" for every file that is not a usable image.
    """

    root: Path
    classes: list[str]
    items: list[tuple[str, int, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    content_hash: str = ""
    clips: int = 0

    def counts(self) -> list[int]:
        c = [0] * len(self.classes)
        for _, t, _ in self.items:
            c[t] += 1
        return c


def _class_of(rel: Path) -> str | None:
    if len(rel.parts) > 1:
        return rel.parts[0]
    m = _WNID.match(rel.name)
    return m.group(1) if m else None


def _visible_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def _check_image(path: Path) -> tuple[str | None, str]:
    """(None, sha256) for a decodable image, else (reason, "")."""
    try:  # the budgets read_image applies when training reads it (file size, then pixels from the header)
        data, _ = read_image_bytes(str(path))
    except ImageTooLarge as e:
        return str(e).split(": ", 1)[-1], ""
    except PreprocessingError:
        return "unreadable image", ""
    # decoding at 1/8 scale reads the whole stream (JPEG's DCT scaling makes it cheap)
    image = cv2.imdecode(data, cv2.IMREAD_REDUCED_COLOR_8) if data.size else None
    if image is None or image.size == 0:
        return "unreadable image", ""
    return None, hashlib.sha256(data.tobytes()).hexdigest()


def extract_frames(clip: Path, dest: Path, stride: int) -> list[Path]:
    """Every ``stride``-th frame of a clip as PNG files in ``dest`` (kept if already there)."""
    cap = cv2.VideoCapture(str(clip))
    paths: list[Path] = []
    try:
        if not cap.isOpened():
            return paths
        index = 0
        while index < MAX_CLIP_FRAMES and cap.grab():
            if index % stride == 0:
                ok, frame = cap.retrieve()
                if ok and frame is not None and frame.size:
                    path = dest / f"{clip.stem}_f{index:06d}.png"
                    if not path.exists():
                        ok, data = cv2.imencode(".png", frame)
                        if ok:
                            atomic_write(path, data.tobytes())
                    paths.append(path)
            index += 1
    finally:
        cap.release()
    return paths


def check_folder(root: str | Path, what: str = "--data") -> Path:
    """``root`` as a Path when it is a folder (checked before a run folder is made for it).

    Raises:
        TrainError: it is not.
    """
    root = Path(root)
    if not root.is_dir():
        raise TrainError(f"{what} {root}: not a directory (one sub-folder of images per class expected)")
    return root


def scan(root: str | Path, frames_dir: Path | None = None, frame_stride: int = DEFAULT_FRAME_STRIDE,
         classes: list[str] | None = None, what: str = "--data") -> Scan:
    """Find the labelled samples under ``root``.

    Args:
        root: the data folder.
        frames_dir: where sampled video frames go (clips are skipped when None).
        frame_stride: keep frame 0, N, 2N, ... of each clip.
        classes: the class list to map to (for a validation folder); None: the folder's own classes.
        what: the flag name used in error messages.

    Raises:
        TrainError: missing or empty folder, fewer than two classes, a class folder without files or
            without a readable image, or (with ``classes``) class folders unknown to the training set.
    """
    root = check_folder(root, what)
    if frame_stride < 1:
        raise TrainError(f"--frame-stride {frame_stride}: at least 1 expected")
    files = _visible_files(root)
    found = sorted({c for c in (_class_of(p.relative_to(root)) for p in files) if c is not None})
    for c in found:  # a class name becomes the model's labels, UTF-8 text (other names are only read and hashed)
        shown = os.fsencode(c).decode("utf-8", "backslashreplace")
        if shown != c:
            raise TrainError(f"{what} {root}: class folder '{shown}' has a name that is not UTF-8 text (class names "
                             "become the model's labels); rename it")
    if classes is None:
        if not files:
            raise TrainError(f"{what} {root}: empty folder (one sub-folder of images per class expected)")
        if len(found) < 2:
            raise TrainError(f"{what} {root}: {len(found)} class found ({', '.join(found) or 'none'}); "
                             "at least 2 class folders expected")
        empty = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name not in found)
        if empty:  # a class the user meant to teach, with nothing in it yet (a capture that never started)
            raise TrainError(f"{what} {root}: class folder {empty[0]!r} has no files"
                             + (f" (nor {', '.join(map(repr, empty[1:]))})" if empty[1:] else "")
                             + "; add its images or remove it")
        classes = found
    else:
        unknown = [c for c in found if c not in classes]
        if unknown:
            raise TrainError(f"{what} {root}: classes unknown to the training set: {', '.join(unknown[:10])}"
                             f"{' ...' if len(unknown) > 10 else ''} (training classes: {', '.join(classes)})")
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # bad files are counted, not logged
    try:
        out = _scan_files(root, files, classes, frames_dir, frame_stride)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not out.items:
        raise TrainError(f"{what} {root}: no readable image ({len(out.skipped)} files skipped)")
    if what == "--data":
        for c, n in zip(classes, out.counts()):
            if n == 0:
                unreadable = sum(1 for s in out.skipped if Path(s).parts[0] == c)
                raise TrainError(f"{what} {root}: class folder {c!r} has no readable image "
                                 f"({unreadable} files skipped)")
    return out


def _scan_files(root: Path, files: list[Path], classes: list[str], frames_dir: Path | None,
                frame_stride: int) -> Scan:
    index = {c: i for i, c in enumerate(classes)}
    out = Scan(root, list(classes))
    digest = hashlib.sha256()
    for path in files:
        rel = path.relative_to(root)
        cls = _class_of(rel)
        suffix = path.suffix.lower()
        if cls is None:
            out.skipped.append(f"{rel} (no class: not in a class folder, no WordNet id in its name)")
            continue
        if suffix in VIDEO_SUFFIXES and frames_dir is not None:
            if path.stat().st_size > MAX_CLIP_BYTES:
                out.skipped.append(f"{rel} (clip larger than {MAX_CLIP_BYTES >> 30} GB)")
                continue
            frames = extract_frames(path, frames_dir / cls / "__".join(rel.parts[1:-1]), frame_stride)
            if not frames:
                out.skipped.append(f"{rel} (no decodable frame)")
                continue
            out.clips += 1
            digest.update(os.fsencode(f"{rel}\0{cls}\0{sha256_file(path)}\0stride={frame_stride}\n"))
            out.items.extend((str(f), index[cls], str(rel)) for f in frames)
            continue
        if suffix not in IMAGE_SUFFIXES:
            out.skipped.append(f"{rel} (not an image file)")
            continue
        reason, sha = _check_image(path)
        if reason:
            out.skipped.append(f"{rel} ({reason})")
            continue
        digest.update(os.fsencode(f"{rel}\0{cls}\0{sha}\n"))
        out.items.append((str(path), index[cls], str(rel)))
    out.content_hash = digest.hexdigest()
    return out


def split(items: list[tuple[str, int, str]], fraction: float, classes: int
          ) -> tuple[list[tuple[str, int, str]], list[tuple[str, int, str]]]:
    """Stratified, deterministic train/validation split by group (file or clip).

    Within each class the groups are ordered by a hash of their relative path, and the first
    ``round(fraction * groups)`` (at least one, when the class has two or more) go to validation:
    the same files every run, independent of the seed, stable when files are added elsewhere.
    """
    if not 0.0 <= fraction < 1.0:
        raise TrainError(f"--val-split {fraction}: 0 <= fraction < 1 expected")
    train, val = [], []
    for c in range(classes):
        groups = sorted({g for _, t, g in items if t == c}, key=lambda g: hashlib.sha256(os.fsencode(g)).hexdigest())
        k = min(len(groups) - 1, max(1 if fraction > 0 else 0, round(fraction * len(groups))))
        held = set(groups[:max(k, 0)])
        for item in items:
            if item[1] == c:
                (val if item[2] in held else train).append(item)
    return sorted(train), sorted(val)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed for one sample's augmentation: a function of (seed, epoch, sample) only, so the
    images seen do not depend on worker count, process count or where a run was resumed."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def augmentation(input_size: int, min_scale: float):
    """Random resized crop, horizontal flip, mild colour jitter (torchvision transforms v2, on RGB).

    No hue jitter: it costs more than the other two together (0.85 ms per 64x64 crop here)."""
    from ..torchvision_compat import import_torchvision

    import_torchvision()
    from torchvision.transforms import v2
    return v2.Compose([v2.RandomResizedCrop(input_size, scale=(min_scale, 1.0), antialias=True),
                       v2.RandomHorizontalFlip(),
                       v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2)])


class TrainSet(torch.utils.data.Dataset):
    """Augmented training crops: CHW uint8 in BGR order, the device camera's pixel layout."""

    def __init__(self, items: list[tuple[str, int, str]], input_size: int, seed: int, min_scale: float) -> None:
        self.items, self.seed, self.epoch = items, seed, 0
        self.transform = augmentation(input_size, min_scale)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, target, _ = self.items[i]
        image = _read(path)
        rgb = torch.from_numpy(np.ascontiguousarray(image[..., ::-1])).permute(2, 0, 1)
        outer = torch.get_rng_state()  # the transforms draw from the global generator
        torch.manual_seed(sample_seed(self.seed, self.epoch, i))
        try:
            rgb = self.transform(rgb)
        finally:
            torch.set_rng_state(outer)
        return rgb.flip(0).contiguous(), target


class EvalSet(torch.utils.data.Dataset):
    """Evaluation crops made by the one preprocessing (:func:`edge_runtime.preprocess.resize_crop`)."""

    def __init__(self, items: list[tuple[str, int, str]], pp: Preprocessing) -> None:
        self.items, self.pp = items, pp

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, target, _ = self.items[i]
        crop = resize_crop(_read(path, self.pp), self.pp)
        return torch.from_numpy(crop).permute(2, 0, 1).contiguous(), target


def _read(path: str, fit: Preprocessing | None = None) -> np.ndarray:
    """A training image (full size: the augmentation's crops zoom in), or with ``fit`` one read as the
    evaluator reads it."""
    try:
        return read_image(path, fit=fit)
    except PreprocessingError:
        raise ProcessError(f"{path}: became unreadable during training (it decoded when the data was scanned)") \
            from None


def worker_init(_worker_id: int) -> None:
    """DataLoader workers: one OpenCV thread each (the cores belong to the training processes)."""
    cv2.setNumThreads(1)
