"""The calibration photo folder: listing, and the project's default one."""
from __future__ import annotations

from pathlib import Path

from edge_runtime.evaluation import IMAGE_SUFFIXES

MAX_CALIB_FILES = 100_000
DOC_SUFFIXES = {".md", ".txt", ".csv"}  # manifests and licences beside the photos


def default_calib_dir() -> Path:
    """The converter's own calibration photos, ``convert/calib_data/`` (real, redistributable photos; see
    its README and MANIFEST.csv); installed with the package, and ``calib_data/`` in the source tree."""
    return Path(__file__).resolve().parent / "calib_data"


def default_check_dir() -> Path:
    """The converter's ``convert/check_data/`` (``check_data/`` in the source tree): unlabelled photos and
    clip frames that calibration never sees, judged by the gates when no labelled ``--val`` is given (see
    its README and MANIFEST.csv); installed with the package."""
    return Path(__file__).resolve().parent / "check_data"


def list_calibration_images(folder: str | Path, what: str = "calibration folder") -> tuple[list[Path], list[str]]:
    """Image files under ``folder`` in a deterministic order, and the other files skipped (``what``:
    the folder's role, for the message).

    Raises:
        ConvertError: the folder is missing or holds no image.
    """
    from .errors import ConvertError

    folder = Path(folder)
    if not folder.is_dir():
        raise ConvertError(f"{what} {folder}: not found (a folder of photos expected)")
    paths, skipped = [], []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith(".") or p.suffix.lower() in DOC_SUFFIXES:
            continue
        (paths if p.suffix.lower() in IMAGE_SUFFIXES else skipped).append(p)
        if len(paths) > MAX_CALIB_FILES:
            raise ConvertError(f"{what} {folder}: more than {MAX_CALIB_FILES} images; pick a subset")
    if not paths:
        raise ConvertError(f"{what} {folder}: no images found ({len(skipped)} other files)")
    return paths, [f"{p.name} (not an image file)" for p in skipped]
