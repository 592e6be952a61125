#!/usr/bin/env bash
# Prove a stock client reads the artifact: MediaPipe Tasks' ImageClassifier (pinned, in its own venv:
# mediapipe brings opencv-contrib-python, which would overwrite the workstation venv's cv2) loads
# MODEL, reports its class names, and decides the same top-1 as this project's runtime on VAL_DIR (both
# on XNNPACK).
# Usage: tools/mediapipe_check.sh MODEL.tflite VAL_DIR [WORKDIR] [MIN_AGREEMENT]
#   (MEDIAPIPE_VENV: the venv to use, default build/mediapipe-env/venv, built by tools/mediapipe_env.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$(realpath "$1")
VAL=$(realpath "$2")
WORK=${3:-build/mediapipe-env}
MIN=${4:-0.99}
RUNTIME_PYTHON=${RUNTIME_PYTHON:-.venv/bin/python}
mkdir -p "$WORK"
venv=${MEDIAPIPE_VENV:-build/mediapipe-env/venv}  # one venv for every check, built once (tools/setup.sh does)
bash tools/mediapipe_env.sh "$venv"
PYTHONPATH="$PWD" "$venv/bin/python" -m tools.mediapipe_classify --model "$MODEL" --val "$VAL" --report "$WORK/top1-mediapipe.json"
# MediaPipe's CPU inference applies XNNPACK, which rounds int8 layers differently from TFLite's builtin
# kernels (the runtime's default): compare it with the runtime on the same kernels (--xnnpack)
PYTHONPATH="$PWD" "$RUNTIME_PYTHON" -m tools.interpreter_agreement dump --model "$MODEL" --val "$VAL" --xnnpack \
  --report "$WORK/top1-runtime.json"
PYTHONPATH="$PWD" "$RUNTIME_PYTHON" - "$MODEL" "$WORK/top1-mediapipe.json" <<'PY'
import json, sys
from edge_runtime.metadata import read_model_info
labels = read_model_info(sys.argv[1]).labels
d = json.load(open(sys.argv[2]))
wrong = [(i, n) for i, n in zip(d["val"]["top1"], d["val"]["names"]) if labels[i] != n]
assert d["heads"] == [1], d["heads"]
assert not wrong, f"MediaPipe reported names that are not the artifact's labels: {wrong[:3]}"
print(f"ok: MediaPipe {d['version']} named all {len(d['val']['names'])} top-1 classes with the artifact's labels")
PY
"$RUNTIME_PYTHON" -m tools.interpreter_agreement compare "$WORK/top1-runtime.json" "$WORK/top1-mediapipe.json" --min-agreement "$MIN"
