#!/usr/bin/env python3
"""Figures of the edge runtime (issue: edge runtime): end-to-end throughput versus invoke-only rate,
peak resident memory, start-up to the first classified frame, and a soak with simulated disconnects.

    python tools/runtime_bench.py --model build/squeezenet1_0_int8.tflite --source samples/sample_clip.mp4
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def invoke_only_rate(model: Path, threads: int, seconds: float) -> float:
    import cv2

    from edge_runtime.classify import Classifier

    clf = Classifier(model, threads=threads)
    frame = cv2.imread(str(ROOT / "calib_data" / "skimage_coffee.jpg"))
    clf.set_frame(frame)
    for _ in range(20):
        clf.invoke()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        clf.invoke()
        n += 1
    return n / (time.perf_counter() - t0)


def end_to_end(model: Path, source: str, threads: int, frames: int) -> dict:
    from edge_runtime import app
    from edge_runtime.classify import Classifier
    from edge_runtime.sources import open_source

    clf = Classifier(model, threads=threads)
    src = open_source(source, loop=True)
    with open(os.devnull, "w") as null:
        stats = app.run(clf, src, app.RunOptions(max_frames=frames, out=null, log_interval=1e9))
    return {"frames": stats.frames, "fps": stats.fps}


def cli_process(model: Path, source: str, frames: int) -> dict:
    """Start-up to the first JSON line, and the process's peak RSS, for the real CLI process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "edge_runtime", "--source", source, "--loop", "--model",
                             str(model), "--json", "--max-frames", str(frames)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    first = proc.stdout.readline()
    startup = time.perf_counter() - t0
    assert first.startswith("{"), first
    proc.stdout.read()
    proc.wait()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"startup_to_first_frame_s": startup, "peak_rss_mb": peak, "returncode": proc.returncode}


def soak(model: Path, source: str, frames: int, every: int) -> dict:
    from edge_runtime import app
    from edge_runtime.classify import Classifier
    from edge_runtime.sources import open_source

    clf = Classifier(model, threads=2)
    src = open_source(source, disconnect_every=every)
    marks = {}

    def on_result(i, _preds):
        if i in (every, frames):
            marks[i] = rss_mb()

    with open(os.devnull, "w") as null:
        stats = app.run(clf, src, app.RunOptions(max_frames=frames, out=null, log_interval=1e9), on_result=on_result)
    return {"frames": stats.frames, "disconnects_expected": frames // every - 1, "reconnects": src.stats.reconnects,
            "corrupt": src.stats.corrupt, "rss_after_first_disconnect_mb": marks.get(every),
            "rss_end_mb": marks.get(frames),
            "rss_growth_mb": (marks.get(frames, 0) - marks.get(every, 0)) if marks else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "build" / "squeezenet1_0_int8.tflite", help="int8 .tflite")
    p.add_argument("--source", default=str(ROOT / "samples" / "sample_clip.mp4"), help="video clip")
    p.add_argument("--threads", type=int, default=2, help="interpreter threads (default 2)")
    p.add_argument("--frames", type=int, default=3000, help="frames for the throughput run (default 3000)")
    p.add_argument("--soak-frames", type=int, default=10_000, help="frames of the soak (default 10000)")
    p.add_argument("--disconnect-every", type=int, default=1000, help="simulated disconnect interval (default 1000)")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    invoke = invoke_only_rate(args.model, args.threads, 5.0)
    e2e = end_to_end(args.model, args.source, args.threads, args.frames)
    proc = cli_process(args.model, args.source, 300)
    so = soak(args.model, args.source, args.soak_frames, args.disconnect_every)
    res = {"invoke_only_fps": invoke, "end_to_end": e2e, "ratio": e2e["fps"] / invoke, "process": proc, "soak": so,
           "load": os.getloadavg()}
    print(json.dumps(res, indent=1))
    print(f"end-to-end {e2e['fps']:.1f} FPS / invoke-only {invoke:.1f}/s = {res['ratio']:.2f} (goal >= 0.85); "
          f"peak RSS {proc['peak_rss_mb']:.1f} MB (goal <= 120); start-up {proc['startup_to_first_frame_s']:.2f} s "
          f"(goal < 1.5); soak {so['frames']} frames, {so['reconnects']} reconnects for "
          f"{so['disconnects_expected']} disconnects, RSS growth {so['rss_growth_mb']:.1f} MB (goal < 5)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
