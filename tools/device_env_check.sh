#!/usr/bin/env bash
# Prove the device runtime needs only numpy + OpenCV + a TFLite interpreter, on both device stacks:
#   (a) ai-edge-litert with numpy 2 and OpenCV >= 4.10, plus the optional prometheus_client (the metrics
#       extra), at the versions CI last passed with (tools/constraints.txt: OpenCV 5.0 at the time of writing)
#   (b) tflite-runtime 2.14 with numpy 1.26 and OpenCV 4.x (the Raspberry Pi OS Bookworm stack)
# Each venv gets the project's edge_runtime only (no torch / tensorflow / onnx) and runs the real
# runtime on the sample clip with a converted model, checking its output and that nothing heavy loaded.
# With VAL_DIR, the same artifact then classifies VAL_DIR and every frame of the sample clip with
# ai-edge-litert, tflite-runtime 2.14 and tf.lite (the workstation venv, $TF_PYTHON): with the
# runtime's default for an int8 model (TFLite's builtin kernels) top-1 must be the same on every pair of
# images and frames;
# with --xnnpack (which rounds intermediate int8 layers differently) the agreement is measured against
# a looser gate; exact ties at the top at most 0.5%.
# Any converted model (the sample clip's first frame must be a lemon or an orange where the model has
# those classes, as the ImageNet ones do).
# Usage: tools/device_env_check.sh MODEL.tflite [WORKDIR] [VAL_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=$(realpath "$1")
WORK=${2:-build/device-envs}
VAL=${3:-}
TF_PYTHON=${TF_PYTHON:-.venv/bin/python}
mkdir -p "$WORK"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

check() {
  local name=$1; shift
  local venv="$WORK/$name"
  [ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
  "$venv/bin/python" -m pip install -q "$@"
  echo "== device env $name: $("$venv/bin/python" -c 'import numpy, cv2; print("numpy", numpy.__version__, "opencv", cv2.__version__)')"
  PYTHONPATH="$PWD" "$venv/bin/python" - "$MODEL" <<'PY'
import io, json, sys, contextlib
for heavy in ("torch", "tensorflow", "onnx", "onnxruntime"):
    try:
        __import__(heavy)
    except ImportError:
        continue
    sys.exit(f"{heavy} is importable in the device environment")
from edge_runtime.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    rc = main(["--source", "samples/sample_clip.mp4", "--model", sys.argv[1], "--json", "--max-frames", "30"])
lines = [json.loads(l) for l in out.getvalue().splitlines()]
assert rc == 0 and len(lines) == 30, (rc, len(lines))
first = lines[0]["top"][0]["label"]
from edge_runtime.metadata import read_model_info
if {"lemon", "orange"} <= set(read_model_info(sys.argv[1]).labels):  # an ImageNet model: the clip shows a lemon
    assert first in ("lemon", "orange"), first
from edge_runtime.interpreter import find_backend
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "tensorflow", "onnx"))
assert not loaded, loaded
print(f"ok: {find_backend()[1]} classified 30 frames, first frame: {first}")
PY
  # the web service (--serve) in the same environment; /metrics only where prometheus_client is installed
  PYTHONPATH="$PWD" "$venv/bin/python" -m tools.serve_check "$MODEL"
  if [ -n "$VAL" ]; then  # top-1 of every image and clip frame, for the comparison below
    for kernels in default xnnpack; do
      flag=""; [ $kernels = xnnpack ] && flag=--xnnpack
      PYTHONPATH="$PWD" "$venv/bin/python" -m tools.interpreter_agreement dump --model "$MODEL" --val "$VAL" \
        --source samples/sample_clip.mp4 $flag --report "$WORK/top1-$name-$kernels.json"
    done
  fi
}

check litert-numpy2 -c tools/constraints.txt "numpy>=2" "opencv-python-headless>=4.10" "ai-edge-litert" \
    "prometheus_client>=0.17"  # (the versions CI last passed with; the tflite-runtime stack's are pinned here)
check tflite-runtime-numpy1 "numpy==1.26.4" "opencv-python-headless>=4.8,<4.11" "tflite-runtime==2.14.0"

if [ -n "$VAL" ]; then
  for kernels in default xnnpack; do
    flag=""; [ $kernels = xnnpack ] && flag=--xnnpack
    PYTHONPATH="$PWD" "$TF_PYTHON" -m tools.interpreter_agreement dump --backend tensorflow --model "$MODEL" \
      --val "$VAL" --source samples/sample_clip.mp4 $flag --report "$WORK/top1-tflite-$kernels.json" 2>/dev/null
  done
  echo "== the same top-1 on every interpreter (the runtime's default for int8: TFLite's builtin kernels)"
  "$TF_PYTHON" -m tools.interpreter_agreement compare "$WORK"/top1-*-default.json --min-agreement 0.995 --max-ties 0.005
  echo "== --xnnpack: ai-edge-litert and tf.lite on XNNPACK, tflite-runtime 2.14 on its builtin int8 kernels"
  # measured on x86 (AMD EPYC), three conversions: 97.8-98.8% of val500 and 95.0-96.7% of the clip's 180
  # frames between tflite-runtime 2.14 and the XNNPACK interpreters, 100% between ai-edge-litert and tf.lite
  "$TF_PYTHON" -m tools.interpreter_agreement compare "$WORK"/top1-*-xnnpack.json --min-agreement 0.94 --max-ties 0.005
fi
