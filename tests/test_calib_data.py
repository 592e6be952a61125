import csv
import hashlib
from pathlib import Path

import cv2
import numpy as np

from convert.calibration_data import default_calib_dir, list_calibration_images

ROOT = Path(__file__).resolve().parents[1]
NEAR_DUPLICATE = 0.95  # correlation of normalized 16x16 grey thumbnails


def test_manifest_matches_the_files():
    folder = default_calib_dir()
    rows = list(csv.DictReader(open(folder / "MANIFEST.csv")))
    files = sorted(p.name for p in folder.glob("*.jpg"))
    assert sorted(r["file"] for r in rows) == files
    for r in rows:
        assert r["licence"].strip() and r["source"].strip()
        assert hashlib.sha256((folder / r["file"]).read_bytes()).hexdigest() == r["sha256"], r["file"]
        assert "imagenet" not in r["source"].lower()


def _thumbnail(img: np.ndarray) -> np.ndarray:
    """16x16 grey thumbnail, zero mean, unit norm: the dot product of two is their correlation."""
    t = cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), (16, 16), interpolation=cv2.INTER_AREA)
    t = t.astype(np.float64).ravel() - t.mean()
    return t / (np.linalg.norm(t) + 1e-9)


def _most_similar(images: list[np.ndarray]) -> tuple[int, int, float]:
    flat = np.stack([_thumbnail(img) for img in images])
    corr = flat @ flat.T
    np.fill_diagonal(corr, -1.0)
    i, j = np.unravel_index(np.argmax(corr), corr.shape)
    return int(i), int(j), float(corr[i, j])


def test_at_least_60_distinct_real_photos():
    paths, skipped = list_calibration_images(default_calib_dir())
    assert skipped == []
    images = [cv2.imread(str(p)) for p in paths]
    assert all(img is not None for img in images)
    assert len(images) >= 60
    i, j, corr = _most_similar(images)  # no two photos are near-duplicates
    assert corr < NEAR_DUPLICATE, (paths[i].name, paths[j].name, corr)


def test_the_distinctness_check_catches_a_near_duplicate():
    paths, _ = list_calibration_images(default_calib_dir())
    images = [cv2.imread(str(p)) for p in paths[:10]]
    # the same photo again, re-encoded smaller and a little brighter, as a careless copy would be
    copy = cv2.convertScaleAbs(cv2.resize(images[3], None, fx=0.7, fy=0.7), alpha=1.1, beta=8)
    i, j, corr = _most_similar(images + [copy])
    assert {i, j} == {3, 10} and corr >= NEAR_DUPLICATE, (i, j, corr)
