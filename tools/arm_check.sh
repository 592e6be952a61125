#!/usr/bin/env bash
# Does an int8 artifact decide the same top-1 on 64-bit ARM (a Raspberry Pi) as on this x86 machine?
# Builds a Debian 12 bookworm arm64 root with Raspberry Pi OS Bookworm's stack (python3 3.11,
# python3-numpy 1.24, python3-opencv 4.6 from Debian's archive, tflite-runtime 2.14 from PyPI), runs the
# device runtime's top-1 dump in it under qemu-user emulation, and compares it with the same dump on x86
# (the runtime's default for an int8 model: TFLite's builtin kernels). Gates: the same top-1 on at least
# 99.5% of images and of frames, exact ties at the top at most 0.5% of images
# (tools/interpreter_agreement.py). Emulation is slow (about 1 s per image on a 2-core x86 machine) and its
# timings mean nothing for a Pi: this checks arithmetic, not speed. Needs root (debootstrap, chroot,
# binfmt_misc), and access to Debian's archive (apt-get, debootstrap) and PyPI (pip); the arm64 root is
# kept in WORKDIR/arm64-root and reused.
# Exit status: 0 the same top-1 (gates met), 3 not (a gate missed), 2 bad arguments, 77 this machine cannot
# emulate arm64 (neither root nor password-less sudo, or a kernel that refuses binfmt_misc: an unprivileged
# container): .ci/run says so.
# Usage: tools/arm_check.sh MODEL.tflite VAL_DIR [WORKDIR]     (WORKDIR default: build/arm64)
#   EVERY=N    every Nth image of VAL_DIR, in name order (default 5: on val500, 50 of each half; 1: all)
#   CLIP=path  a video whose frames are classified too (default samples/sample_clip.mp4; empty: none)
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: tools/arm_check.sh MODEL.tflite VAL_DIR [WORKDIR]" >&2; exit 2; }
MODEL=$(realpath -m "$1")  # the caller's paths, before the cd below
VAL=$(realpath -m "$2")
EVERY=${EVERY:-5}
CLIP=${CLIP-samples/sample_clip.mp4}
[ -z "$CLIP" ] || [ ! -e "$CLIP" ] || CLIP=$(realpath "$CLIP")
PROJECT=$(realpath "$(dirname "$0")/..")
WORK=$(realpath -m "${3:-$PROJECT/build/arm64}")
cd "$PROJECT"
X86_PYTHON=${X86_PYTHON:-.venv/bin/python}
ROOT="$WORK/arm64-root"
[ -f "$MODEL" ] || { echo "arm_check: error: no model at $MODEL" >&2; exit 2; }
[ -d "$VAL" ] || { echo "arm_check: error: no image folder at $VAL" >&2; exit 2; }
[[ "$EVERY" =~ ^[1-9][0-9]*$ ]] || { echo "arm_check: error: EVERY=$EVERY: a positive whole number expected" >&2; exit 2; }
[ -z "$CLIP" ] || [ -f "$CLIP" ] || { echo "arm_check: error: no video at CLIP=$CLIP" >&2; exit 2; }
cannot() { echo "arm_check: cannot emulate arm64 here: $1" >&2; exit 77; }
if [ "$(id -u)" -ne 0 ]; then  # as tools/setup.sh: a CI user with password-less sudo runs it as root
  sudo -n true 2>/dev/null || cannot "needs root or password-less sudo (debootstrap, chroot, binfmt_misc)"
  exec sudo -n --preserve-env=EVERY,CLIP,X86_PYTHON bash "$PROJECT/tools/arm_check.sh" "$MODEL" "$VAL" "$WORK"
fi
mkdir -p "$WORK"
export PYTHONDONTWRITEBYTECODE=1  # no root-owned __pycache__ left in the project

missing=""
for pkg in qemu-user-static debootstrap binfmt-support; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  echo "arm_check: installing$missing" >&2
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null
fi
[ -e /proc/sys/fs/binfmt_misc/register ] || mount binfmt_misc -t binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null \
  || cannot "the kernel refuses to mount binfmt_misc (an unprivileged container?)"
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64  # a failure here fails

if [ ! -x "$ROOT/usr/bin/python3" ] || [ ! -e "$ROOT/.complete" ]; then
  echo "arm_check: making the arm64 root in $ROOT (a few minutes: its second stage runs emulated)" >&2
  if [ -e "$ROOT" ]; then  # an unfinished one of ours is made again; anything else is left alone
    [ -e "$ROOT.made-here" ] || { echo "arm_check: error: $ROOT exists and was not made here" >&2; exit 2; }
    rm -rf "$ROOT"
  fi
  touch "$ROOT.made-here"
  debootstrap --arch=arm64 --variant=minbase --foreign --include=python3,python3-numpy,python3-opencv \
    bookworm "$ROOT" http://deb.debian.org/debian > "$WORK/debootstrap.log" 2>&1
  cp /usr/bin/qemu-aarch64-static "$ROOT/usr/bin/"
  chroot "$ROOT" /debootstrap/debootstrap --second-stage >> "$WORK/debootstrap.log" 2>&1
  rm -rf "$WORK/wheels"
  "$X86_PYTHON" -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_34_aarch64 \
    --python-version 3.11 --implementation cp --abi cp311 "tflite-runtime==2.14.0" -d "$WORK/wheels"
  site="$ROOT/usr/local/lib/python3.11/dist-packages"
  mkdir -p "$site"
  "$X86_PYTHON" -m zipfile -e "$WORK"/wheels/tflite_runtime-2.14.0-*.whl "$site"
  touch "$ROOT/.complete"
fi

# what the device needs: the runtime and the agreement tool (tools/ reads convert/__init__.py's one line)
DATA="$ROOT/data"
rm -rf "$DATA"
mkdir -p "$DATA/src/convert" "$DATA/val"
cp -a edge_runtime tools "$DATA/src/"
cp convert/__init__.py "$DATA/src/convert/"
cp "$MODEL" "$DATA/model.tflite"
find "$VAL" -type f | sort | awk -v n="$EVERY" '(NR - 1) % n == 0' | while IFS= read -r f; do
  rel=${f#"$VAL"/}; mkdir -p "$DATA/val/$(dirname "$rel")"; cp "$f" "$DATA/val/$rel"
done
clip_args=(); x86_clip=()
if [ -n "$CLIP" ]; then  # decoded once, here, to PNG: Debian's FFmpeg and the x86 OpenCV wheel's decode
  mkdir -p "$DATA/frames"  # some frames differently, which is not what this checks
  "$X86_PYTHON" - "$CLIP" "$DATA/frames" <<'PY'
import sys, cv2
cap, n = cv2.VideoCapture(sys.argv[1]), 0
while (frame := cap.read()[1]) is not None:
    cv2.imwrite(f"{sys.argv[2]}/{n:05d}.png", frame)
    n += 1
sys.exit(0 if n else f"arm_check: error: no frame decoded from {sys.argv[1]}")
PY
  clip_args=(--source /data/frames); x86_clip=(--source "$DATA/frames")
fi
chroot "$ROOT" /usr/bin/python3 -c 'import platform, numpy, cv2, tflite_runtime
print("== arm64 root:", platform.machine(), "python", platform.python_version(), "numpy", numpy.__version__,
      "opencv", cv2.__version__, "tflite-runtime", tflite_runtime.__version__)'
n_frames=$( [ -n "$CLIP" ] && find "$DATA/frames" -type f | wc -l || echo 0)
echo "== top-1 of $(find "$DATA/val" -type f | wc -l) images and $n_frames frames, emulated aarch64 (about 1 s each)"
t=$(date +%s)
chroot "$ROOT" /usr/bin/env PYTHONPATH=/data/src /usr/bin/python3 -m tools.interpreter_agreement dump \
  --model /data/model.tflite --val /data/val "${clip_args[@]}" --report /data/top1-aarch64.json
echo "   $(( $(date +%s) - t )) s"
PYTHONPATH="$PWD" "$X86_PYTHON" -m tools.interpreter_agreement dump --model "$MODEL" --val "$DATA/val" \
  "${x86_clip[@]}" --report "$WORK/top1-x86.json"
cp "$DATA/top1-aarch64.json" "$WORK/top1-aarch64.json"
echo "== the same top-1 on aarch64 (tflite-runtime 2.14) and x86 (the runtime's default interpreter)"
PYTHONPATH="$PWD" "$X86_PYTHON" -m tools.interpreter_agreement compare "$WORK/top1-x86.json" \
  "$WORK/top1-aarch64.json" --min-agreement 0.995 --max-ties 0.005
