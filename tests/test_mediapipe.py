"""A stock client reads the artifact: MediaPipe Tasks' ImageClassifier (pinned, in its own venv built
by tools/mediapipe_check.sh, since mediapipe brings opencv-contrib-python, which would overwrite the
project venv's cv2) loads the converted model, reports its class names and decides the same top-1
as this project's runtime on the same kernels (XNNPACK: MediaPipe's CPU inference applies it; the
runtime's default builtin kernels round int8 layers differently, 98% the same): on all 500 val500
images for the ImageNet model, on every fifth of them (100) for its float sibling, and on the 500 test
images of a model trained with ``python -m convert train`` (its own class names, converted from
``best.pt`` with no other flag).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV_DIR = ROOT / "build" / "mediapipe-env"  # kept between runs: the venv is built once per machine
NO_INSTALL = {**os.environ, "MEDIAPIPE_NO_INSTALL": "1"}  # tools/setup.sh builds the venv; tests never download


def _check(model: Path, images: Path, work: Path, min_agreement: float = 0.99) -> subprocess.CompletedProcess:
    env = {**NO_INSTALL, "RUNTIME_PYTHON": sys.executable, "PYTHONPATH": str(ROOT),
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
    """The 2-epoch 32x32 run: its last feature map is 1x1, so the exact head sums one int8 value per
    class and about 4% of the images tie at the top; a tie is broken by each client's own rule (the
    runtime takes the lowest index). Wherever the top is unique MediaPipe must decide the same."""
    proc = _check(Path(trained_converted["out"]), fmnist / "test", tmp_path / "fashion", min_agreement=0.0)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    mp = json.loads((tmp_path / "fashion" / "top1-mediapipe.json").read_text())
    runtime = json.loads((tmp_path / "fashion" / "top1-runtime.json").read_text())["val"]
    assert len(mp["val"]["top1"]) == 500 and mp["heads"] == [1] and mp["val"]["files"] == runtime["files"]
    names = set(mp["val"]["names"])
    folders = {p.name for p in (fmnist / "test").iterdir() if p.is_dir()}
    assert len(folders) == 10 and names <= folders and len(names) >= 5, (names, folders)
    unique = [i for i, tied in enumerate(runtime["tied"]) if not tied]
    assert len(unique) >= 450, f"{500 - len(unique)} of 500 images tie at the top"
    same = sum(runtime["top1"][i] == mp["val"]["top1"][i] for i in unique)
    assert same >= 0.99 * len(unique), f"MediaPipe decides like the runtime on {same} of {len(unique)} untied images"


def test_mediapipe_classifies_with_the_float_sibling(int8_model, val500_dir, tmp_path):
    """The float TFLite kept beside the artifact: MediaPipe feeds its float32 RGB input through the
    normalization options (mean 0, std 1) and decides as the runtime does with the same file."""
    from convert.pipeline import sibling_paths

    photos = tmp_path / "photos"  # every fifth of val500 (a colour or scaling mistake shows on any 100)
    photos.mkdir()
    for p in sorted(val500_dir.iterdir())[::5]:
        (photos / p.name).symlink_to(p)
    proc = _check(sibling_paths(Path(int8_model))[1], photos, tmp_path / "float")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    mp = json.loads((tmp_path / "float" / "top1-mediapipe.json").read_text())
    assert len(mp["val"]["top1"]) == 100 and mp["heads"] == [1] and mp["val"]["names"][0] == "tench"


def test_readme_snippet_classifies_with_the_artifact(int8_model, val500_dir, tmp_path):
    """The README's "use the model elsewhere" lines, run as written (model and photo paths replaced)
    in the MediaPipe venv, name the class this project's runtime names for the same picture (a
    227x227 crop written losslessly, so MediaPipe resizes nothing)."""
    import re

    import cv2

    from edge_runtime.classify import Classifier
    from edge_runtime.preprocess import read_image, resize_crop

    section = (ROOT / "README.md").read_text().split("## Use the model elsewhere", 1)[1].split("\n## ", 1)[0]
    snippet = "\n".join(line[4:] for line in section.splitlines() if line.startswith("    "))
    assert snippet.count("\n") == 4 and "build/squeezenet1_0_int8.tflite" in snippet and "photo.jpg" in snippet
    clf = Classifier(int8_model)
    crop = resize_crop(read_image(str(sorted(val500_dir.glob("*.JPEG"))[1])), clf.preprocessing)
    photo = tmp_path / "photo.png"
    assert cv2.imwrite(str(photo), crop)
    clf.set_crop(cv2.imread(str(photo)))
    clf.invoke()
    expected = clf.top_k(1)[0].label
    code = snippet.replace("build/squeezenet1_0_int8.tflite", str(int8_model)).replace("photo.jpg", str(photo))
    ENV_DIR.mkdir(parents=True, exist_ok=True)
    ready = subprocess.run(["bash", str(ROOT / "tools" / "mediapipe_env.sh"), str(ENV_DIR / "venv")], cwd=ROOT,
                           env=NO_INSTALL, capture_output=True, text=True)
    assert ready.returncode == 0, ready.stderr
    proc = subprocess.run([str(ENV_DIR / "venv" / "bin" / "python"), "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0 and "Exception ignored" not in proc.stderr, proc.stderr[-2000:]  # closed in order
    names = re.findall(r"category_name='([^']*)'", proc.stdout)
    assert len(names) == 5 and names[0] == expected, (proc.stdout[-2000:], expected)
