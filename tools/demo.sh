#!/usr/bin/env bash
# The main job on a fresh machine: set up, convert the Deep Compression SqueezeNet to int8 TFLite
# (weights downloaded once, or taken from $SQUEEZENET_EDGE_WEIGHTS_DIR), then classify the sample clip.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
.venv/bin/python -m convert tflite --weights deep-compression --out build/squeezenet1_0_int8.tflite \
    --report build/report.json
.venv/bin/python -m edge_runtime --source samples/sample_clip.mp4 --model build/squeezenet1_0_int8.tflite \
    --headless --log-interval 0.1 --record build/sample_annotated.mp4
