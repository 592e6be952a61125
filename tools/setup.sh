#!/usr/bin/env bash
# Create .venv with the converter + runtime + test dependencies. Idempotent; offline-safe once cached.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages the tests and tools use: Fashion-MNIST (training tests), Chromium + its driver (the
# browser test of the web view), ffmpeg. Installed only when missing, so local runs stay fast.
APT_PACKAGES="dataset-fashion-mnist chromium chromium-driver ffmpeg"
missing=""
for pkg in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  if ! command -v apt-get >/dev/null; then
    echo "setup: error: Debian packages missing:$missing (install them with your system's package manager)" >&2
    exit 1
  fi
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing Debian packages:$missing" >&2
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
fi
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)" >&2
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch is pinned exactly: a looser requirement pulls a multi-GB CUDA build. The rest at the versions CI
# last passed with (tools/constraints.txt), so a new upload to PyPI cannot change what this installs.
python -m pip install -q -c tools/constraints.txt -e ".[convert,bench,dev]"
# onnx2tf 1.x pins protobuf 4, which conflicts with tensorflow 2.21: install it without its pins
# (its real dependencies are in the [convert] extra).
python -m pip install -q --no-deps "onnx2tf==1.29.24"
# MediaPipe Tasks (the stock client the tests prove the artifact with) in its own venv: it brings its own
# OpenCV, which would overwrite .venv's cv2. Built once, here, so the test suite only uses it.
PYTHON="$PY" bash tools/mediapipe_env.sh build/mediapipe-env/venv
echo "setup: ready ($(python -c 'import torch, tensorflow as tf, onnx2tf, numpy, cv2; print(f"torch {torch.__version__}, tensorflow {tf.__version__}, onnx2tf {onnx2tf.__version__}, numpy {numpy.__version__}, opencv {cv2.__version__}")' 2>/dev/null))" >&2
