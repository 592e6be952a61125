import csv
import hashlib
from pathlib import Path

import cv2
import numpy as np

from convert.calibration_data import default_calib_dir, list_calibration_images

ROOT = Path(__file__).resolve().parents[1]


def test_manifest_matches_the_files():
    folder = default_calib_dir()
    rows = list(csv.DictReader(open(folder / "MANIFEST.csv")))
    files = sorted(p.name for p in folder.glob("*.jpg"))
    assert sorted(r["file"] for r in rows) == files
    for r in rows:
        assert r["licence"].strip() and r["source"].strip()
        assert hashlib.sha256((folder / r["file"]).read_bytes()).hexdigest() == r["sha256"], r["file"]
        assert "imagenet" not in r["source"].lower()


def test_at_least_60_distinct_real_photos():
    paths, skipped = list_calibration_images(default_calib_dir())
    assert skipped == []
    thumbs = []
    for p in paths:
        img = cv2.imread(str(p))
        assert img is not None, p
        t = cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), (16, 16), interpolation=cv2.INTER_AREA)
        thumbs.append((t.astype(np.float32) - t.mean()) / (t.std() + 1e-6))
    assert len(thumbs) >= 60
    # no two photos are near-duplicates (normalized 16x16 thumbnails correlate below 0.95)
    flat = np.stack([t.ravel() for t in thumbs]) / 16.0
    corr = flat @ flat.T / 16.0
    np.fill_diagonal(corr, 0)
    i, j = np.unravel_index(np.argmax(corr), corr.shape)
    assert corr[i, j] < 0.95, (paths[i].name, paths[j].name, corr[i, j])
