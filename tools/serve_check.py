#!/usr/bin/env python3
"""Prove ``python -m edge_runtime --serve`` in a device-only environment (numpy, OpenCV, a TFLite
interpreter, and prometheus_client only if installed): start it on the sample clip, read the page,
a result, two MJPEG frames (decoded with OpenCV), /metrics (Prometheus text, or the one line that says
how to enable it) and /healthz, then stop it with SIGTERM and check it exits cleanly.

    tools/serve_check.py MODEL.tflite        # called by tools/device_env_check.sh in each device venv
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def first_jpegs(url: str, n: int) -> list[np.ndarray]:
    """The first ``n`` parts of an MJPEG stream, decoded with OpenCV."""
    frames = []
    with urllib.request.urlopen(url, timeout=20) as r:
        assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace"), r.headers["Content-Type"]
        while len(frames) < n:
            if r.readline().rstrip(b"\r\n") != b"--frame":
                continue
            headers = {}
            while (line := r.readline()) not in (b"\r\n", b"\n", b""):
                key, _, value = line.decode().partition(":")
                headers[key.strip().lower()] = value.strip()
            data = r.read(int(headers["content-length"]))
            frames.append(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
    return frames


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.serve_check", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example:\n  python -m tools.serve_check build/squeezenet1_0_int8.tflite")
    p.add_argument("model", metavar="MODEL.tflite", help="the int8 .tflite to serve (on samples/sample_clip.mp4)")
    model = str(Path(p.parse_args(argv).model).resolve())  # the service runs in the project folder
    proc = subprocess.Popen([sys.executable, "-m", "edge_runtime", "--source", "samples/sample_clip.mp4", "--loop",
                             "--model", model, "--headless", "--serve", "127.0.0.1:0"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("serving on "):
            break
    else:
        sys.exit(f"--serve did not start: {''.join(lines)}")
    url = lines[-1].split()[2]
    try:
        status, page = fetch(url)
        assert status == 200 and b'<img id="video"' in page, status
        deadline = time.monotonic() + 30
        while fetch(url + "predictions")[0] != 200:
            assert time.monotonic() < deadline, "no result after 30 s"
            time.sleep(0.05)
        record = json.loads(fetch(url + "predictions")[1])
        assert record["top"] and record["frame"] > 0, record
        frames = first_jpegs(url + "stream.mjpg", 2)
        assert all(f is not None and f.shape == (240, 320, 3) for f in frames)
        metrics_status, body = fetch(url + "metrics")
        with_metrics = importlib.util.find_spec("prometheus_client") is not None
        if with_metrics:
            from prometheus_client.parser import text_string_to_metric_families

            names = {f.name for f in text_string_to_metric_families(body.decode())}
            assert metrics_status == 200 and {"edge_runtime_frames", "edge_runtime_model_info"} <= names, names
        else:
            assert metrics_status == 404 and b"pip install prometheus_client" in body, (metrics_status, body)
            assert any("metrics disabled" in l for l in lines), lines
        status, body = fetch(url + "healthz")
        assert status == 200 and json.loads(body)["status"] == "ok", body
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        rc = proc.wait(30)
    assert rc == 0 and "stopped by signal" in rest and "Traceback" not in rest, (rc, rest)
    print(f"ok: --serve {'with' if with_metrics else 'without'} prometheus_client: page, result "
          f"({record['top'][0]['label']}), 2 MJPEG frames, /metrics {metrics_status}, "
          f"/healthz 200, SIGTERM exit 0")
    return 0


if __name__ == "__main__":
    sys.exit(main())
