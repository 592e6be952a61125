"""A stock client reads the artifact: MediaPipe Tasks' ImageClassifier (pinned, in its own venv built
by tools/mediapipe_check.sh, since mediapipe brings opencv-contrib-python, which would overwrite the
project venv's cv2) loads the converted model, reports its class names and decides the same top-1
as this project's runtime: on all 500 val500 images for the ImageNet model, and on the 500 test images
of a model trained with ``python -m convert train`` (its own class names, converted from ``best.pt``
with no other flag).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV_DIR = ROOT / "build" / "mediapipe-env"  # kept between runs: the venv is built once per machine


def _check(model: Path, images: Path, work: Path, min_agreement: float = 0.99) -> subprocess.CompletedProcess:
    env = {**os.environ, "RUNTIME_PYTHON": sys.executable, "PYTHONPATH": str(ROOT),
           "MEDIAPIPE_VENV": str(ENV_DIR / "venv")}
    ENV_DIR.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["bash", str(ROOT / "tools" / "mediapipe_check.sh"), str(model), str(images), str(work),
                           str(min_agreement)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


def test_mediapipe_classifies_val500_like_the_runtime(int8_model, val500_dir, tmp_path):
    proc = _check(Path(int8_model), val500_dir, tmp_path / "imagenet")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    mp = json.loads((tmp_path / "imagenet" / "top1-mediapipe.json").read_text())
    assert len(mp["val"]["top1"]) == 500 and mp["heads"] == [1]
    assert mp["val"]["names"][0] == "tench"  # n01440764_tench.JPEG, named by the artifact's own label file
    assert "same top-1" in proc.stdout and "named all 500 top-1 classes" in proc.stdout


def test_mediapipe_classifies_a_trained_model_with_its_own_names(trained_converted, fmnist, tmp_path):
    proc = _check(Path(trained_converted["out"]), fmnist / "test", tmp_path / "fashion")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    mp = json.loads((tmp_path / "fashion" / "top1-mediapipe.json").read_text())
    assert len(mp["val"]["top1"]) == 500 and mp["heads"] == [1]
    names = set(mp["val"]["names"])
    folders = {p.name for p in (fmnist / "test").iterdir() if p.is_dir()}
    assert len(folders) == 10 and names <= folders and len(names) >= 5, (names, folders)
