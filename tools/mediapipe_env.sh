#!/usr/bin/env bash
# Build (once) the venv holding the pinned MediaPipe that tools/mediapipe_check.sh runs: its own venv,
# because mediapipe brings opencv-contrib-python, which would overwrite the project venv's cv2.
# Idempotent: a venv that already imports the pinned version is left alone. tools/setup.sh calls it,
# so the tests find it built.
# Usage: tools/mediapipe_env.sh [VENV]   (default build/mediapipe-env/venv; PYTHON: the interpreter;
#        MEDIAPIPE_NO_INSTALL=1: never install, only say whether the venv is ready; the tests set it)
set -euo pipefail
cd "$(dirname "$0")/.."
MEDIAPIPE_VERSION=1.2.2
venv=${1:-build/mediapipe-env/venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
have() { "$venv/bin/python" -c "import mediapipe, sys; sys.exit(mediapipe.__version__ != '$MEDIAPIPE_VERSION')" 2>/dev/null; }
have && exit 0
if [ "${MEDIAPIPE_NO_INSTALL:-0}" = 1 ]; then
  echo "mediapipe_env: error: $venv has no mediapipe $MEDIAPIPE_VERSION; build it first: bash tools/setup.sh" \
       "(or bash tools/mediapipe_env.sh $venv)" >&2
  exit 1
fi
[ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
echo "mediapipe_env: installing mediapipe==$MEDIAPIPE_VERSION into $venv" >&2
"$venv/bin/python" -m pip install -q "mediapipe==$MEDIAPIPE_VERSION"
have || { echo "mediapipe_env: error: mediapipe $MEDIAPIPE_VERSION does not import in $venv" >&2; exit 1; }
