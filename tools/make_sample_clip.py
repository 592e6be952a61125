"""Rebuild samples/sample_clip.mp4: slow pans over opencv-doc sample photos (Apache-2.0 / BSD-3-Clause).

Usage: apt-get install opencv-doc ffmpeg && python -m tools.make_sample_clip
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

DATA = Path("/usr/share/doc/opencv-doc/examples/data")
PHOTOS = ["orange.jpg", "apple.jpg", "squirrel_cls.jpg", "butterfly.jpg", "baboon.jpg", "fruits.jpg"]
SIZE, FPS, SECONDS_EACH = (320, 240), 15, 2.0
OUT = Path(__file__).resolve().parents[1] / "samples" / "sample_clip.mp4"


def frames():
    w, h = SIZE
    for name in PHOTOS:
        img = cv2.imread(str(DATA / name))
        n = int(FPS * SECONDS_EACH)
        for k in range(n):  # a slow zoom-and-pan, like a hand-held camera closing in
            z = 1.0 + 0.25 * k / n
            ih, iw = img.shape[:2]
            cw, ch = int(iw / z), int(ih / z)
            x0, y0 = (iw - cw) * k // (2 * n), (ih - ch) // 2
            yield cv2.resize(img[y0:y0 + ch, x0:x0 + cw], (w, h), interpolation=cv2.INTER_AREA)


def main(argv: list[str] | None = None) -> int:
    import argparse

    argparse.ArgumentParser(prog="python -m tools.make_sample_clip", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    missing = [name for name in PHOTOS if not (DATA / name).is_file()]
    if missing:
        print(f"error: missing {DATA / missing[0]} (apt-get install opencv-doc)", file=sys.stderr)
        return 2
    OUT.parent.mkdir(exist_ok=True)
    cmd = ["ffmpeg", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{SIZE[0]}x{SIZE[1]}",
           "-r", str(FPS), "-i", "-", "-c:v", "libx264", "-preset", "slow", "-crf", "26", "-pix_fmt", "yuv420p",
           "-movflags", "+faststart", "-map_metadata", "-1", "-fflags", "+bitexact", str(OUT)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    for f in frames():
        proc.stdin.write(np.ascontiguousarray(f).tobytes())
    proc.stdin.close()
    if proc.wait() != 0:
        print("ffmpeg failed", file=sys.stderr)
        return 1
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
