#!/usr/bin/env python3
"""Figures of the edge runtime (issue: edge runtime): end-to-end throughput versus invoke-only rate,
peak resident memory, start-up to the first classified frame, and a soak with simulated disconnects.
With --serve, the web service's figures instead: end-to-end FPS without --serve and serving 0, 1 and 2
MJPEG clients (interleaved, several repetitions, ratios per repetition), peak RSS of the CLI process
with 2 clients, and the time from the process start to the first frame visible in headless Chromium.

    python tools/runtime_bench.py --model build/squeezenet1_0_int8.tflite --source samples/sample_clip.mp4
    python tools/runtime_bench.py --serve --reps 5 --frames 1500 --json build/serve_bench.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
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


# A separate process of N MJPEG viewers: reads and parses the stream like a browser on another device
# (without decoding, which would cost this machine's CPU, not the device's); prints its frame counts
# when its stdin closes.
MJPEG_VIEWERS = r"""
import http.client, sys, threading
from urllib.parse import urlsplit
u, n = urlsplit(sys.argv[1]), int(sys.argv[2])
counts = [0] * n
def view(i):
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    conn.request("GET", "/stream.mjpg")
    r = conn.getresponse()
    while line := r.readline():
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
            r.readline()
            r.read(length)
            counts[i] += 1
for i in range(n):
    threading.Thread(target=view, args=(i,), daemon=True).start()
sys.stdin.read()
print(" ".join(map(str, counts)), flush=True)
"""
BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync")


def _viewers(url: str, n: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", MJPEG_VIEWERS, url, str(n)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)


def _viewer_counts(proc: subprocess.Popen) -> list[int]:
    """Close the viewers' stdin; their frame counts."""
    out, _ = proc.communicate(timeout=30)
    return [int(x) for x in out.split()]


def serve_run(clf, source: str, frames: int, clients: int | None) -> dict:
    """One end-to-end run of the loop on the looping clip: without the service (``clients`` None) or
    serving with ``clients`` MJPEG viewers attached before the first frame."""
    from edge_runtime import app, serve
    from edge_runtime.sources import open_source

    src = open_source(source, loop=True)
    service, viewers = None, None
    if clients is not None:
        service = serve.Service(clf, src, serve.ServeOptions(port=0, max_clients=max(4, clients)))
        service.start()
        if clients:
            viewers = _viewers(service.url, clients)
            deadline = time.monotonic() + 20
            while service.hub.viewers < clients:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{clients} MJPEG viewers did not connect")
                time.sleep(0.01)
    try:
        with open(os.devnull, "w") as null:
            stats = app.run(clf, src, app.RunOptions(max_frames=frames, out=null, log_interval=1e9),
                            observer=service.publish if service else None)
    finally:
        counts = []
        if viewers:
            counts = _viewer_counts(viewers)
        if service:
            service.close()
    return {"fps": stats.fps, "seconds": stats.seconds, "delivered": counts,
            "encoded": service.hub.jpegs if service else 0}


def serve_cost(model: Path, source: str, threads: int, frames: int, reps: int) -> dict:
    """End-to-end FPS without --serve and serving 0, 1, 2 MJPEG clients, interleaved (the order
    rotates each repetition); ratios are taken within a repetition, then the median over them."""
    from edge_runtime.classify import Classifier

    clf = Classifier(model, threads=threads)
    variants = [None, 0, 1, 2]
    name = {None: "no_serve", 0: "0_clients", 1: "1_client", 2: "2_clients"}
    serve_run(clf, source, min(frames, 300), 2)  # warm-up: caches, threads, the viewers' interpreter
    runs: dict[str, list[dict]] = {name[v]: [] for v in variants}
    for rep in range(reps):
        for v in variants[rep % 4:] + variants[:rep % 4]:
            r = serve_run(clf, source, frames, v)
            runs[name[v]].append(r)
            print(f"rep {rep + 1}/{reps} {name[v]:>9}: {r['fps']:.1f} FPS, {r['encoded']} JPEGs encoded, "
                  f"delivered {r['delivered']}", file=sys.stderr, flush=True)
    out = {"frames_per_run": frames, "reps": reps, "runs": runs, "median_fps": {}, "ratio_to_no_serve": {},
           "ratio_to_0_clients": {}}
    for key, rs in runs.items():
        out["median_fps"][key] = statistics.median(r["fps"] for r in rs)
        out["ratio_to_no_serve"][key] = statistics.median(
            r["fps"] / b["fps"] for r, b in zip(rs, runs["no_serve"]))
        out["ratio_to_0_clients"][key] = statistics.median(
            r["fps"] / b["fps"] for r, b in zip(rs, runs["0_clients"]))
    return out


def _start_cli(model: Path, source: str, *args: str) -> tuple[subprocess.Popen, str | None]:
    """The runtime CLI serving on a free local port; returns the process and its URL (None without --serve)."""
    proc = subprocess.Popen([sys.executable, "-m", "edge_runtime", "--source", source, "--loop", "--headless",
                             "--model", str(model), *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    if "--serve" not in args:
        return proc, None
    for line in proc.stderr:
        if line.startswith("serving on "):
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained
            return proc, line.split()[2]
    raise RuntimeError(f"the runtime did not start serving (exit {proc.wait()})")


def _peak_rss_mb(pid: int) -> dict:
    fields = {}
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(("VmHWM:", "VmRSS:")):
            fields[line.split(":")[0]] = int(line.split()[1]) / 1024
    return {"peak_rss_mb": fields.get("VmHWM"), "rss_mb": fields.get("VmRSS")}


def serve_rss(model: Path, source: str, seconds: float) -> dict:
    """RSS of the CLI process after ``seconds`` of running: without --serve, and serving 2 MJPEG clients."""
    out = {}
    for key, args, clients in (("no_serve", (), 0), ("serve_2_clients", ("--serve", "127.0.0.1:0"), 2)):
        proc, url = _start_cli(model, source, *args)
        viewers = _viewers(url, clients) if clients else None
        time.sleep(seconds)
        out[key] = _peak_rss_mb(proc.pid)
        if viewers:
            out[key]["delivered"] = _viewer_counts(viewers)
        proc.terminate()
        proc.wait(30)
    return out


def first_frame_in_browser(model: Path, source: str, reps: int) -> dict:
    """Seconds from starting ``python -m edge_runtime --serve`` to the first MJPEG frame drawn in headless
    Chromium (started beforehand, as a viewer's browser is), median of ``reps`` starts."""
    import shutil
    import tempfile

    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service as ChromeService
    except ImportError:
        return {"error": "selenium is not installed (the dev extra)"}
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        return {"error": "Debian's chromium and chromium-driver are not installed"}
    opts = Options()
    opts.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="runtime-bench-chromium-")
    for flag in BROWSER_FLAGS + (f"--user-data-dir={profile}", "--window-size=900,700"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=ChromeService(chromedriver), options=opts)
    times, steps = [], []
    try:
        driver.get("about:blank")
        for _ in range(reps):
            t0 = time.perf_counter()
            proc, url = _start_cli(model, source, "--serve", "127.0.0.1:0")
            t_serving = time.perf_counter()
            driver.get(url)
            t_page = time.perf_counter()
            while not driver.execute_script("const v = document.getElementById('video');"
                                            "return v.complete && v.naturalWidth > 0"):
                if time.perf_counter() - t0 > 60:
                    raise RuntimeError("no frame in the browser after 60 s")
                time.sleep(0.005)
            t_frame = time.perf_counter()
            times.append(t_frame - t0)
            steps.append({"serving_s": t_serving - t0, "page_loaded_s": t_page - t0, "first_frame_s": t_frame - t0})
            proc.terminate()
            proc.wait(30)
            driver.get("about:blank")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    return {"median_s": statistics.median(times), "runs": steps}


def serve_figures(args) -> dict:
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
    res = {"cpu": cpu, "cores": os.cpu_count(), "threads": args.threads, "load_before": os.getloadavg(),
           "fps": serve_cost(args.model, args.source, args.threads, args.frames, args.reps),
           "rss": serve_rss(args.model, args.source, 8.0),
           "first_frame_in_browser": first_frame_in_browser(args.model, args.source, 3),
           "load_after": os.getloadavg()}
    f, b = res["fps"], res["first_frame_in_browser"]
    print(json.dumps(res, indent=1))
    print(f"end-to-end FPS (median of {args.reps} interleaved repetitions of {args.frames} frames): "
          + ", ".join(f"{k} {v:.1f}" for k, v in f["median_fps"].items()))
    print("ratio to no --serve: " + ", ".join(f"{k} {v:.3f}" for k, v in f["ratio_to_no_serve"].items())
          + "; ratio to 0 clients: " + ", ".join(f"{k} {v:.3f}" for k, v in f["ratio_to_0_clients"].items())
          + " (goal: 2 clients >= 0.90)")
    print(f"RSS with 2 clients: peak {res['rss']['serve_2_clients']['peak_rss_mb']:.1f} MB "
          f"(without --serve {res['rss']['no_serve']['peak_rss_mb']:.1f} MB); first frame in the browser "
          + (f"{b['median_s']:.2f} s after the start" if "median_s" in b else b["error"]))
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "build" / "squeezenet1_0_int8.tflite", help="int8 .tflite")
    p.add_argument("--source", default=str(ROOT / "samples" / "sample_clip.mp4"), help="video clip")
    p.add_argument("--threads", type=int, default=2, help="interpreter threads (default 2)")
    p.add_argument("--frames", type=int, default=3000, help="frames for the throughput run (default 3000)")
    p.add_argument("--soak-frames", type=int, default=10_000, help="frames of the soak (default 10000)")
    p.add_argument("--disconnect-every", type=int, default=1000, help="simulated disconnect interval (default 1000)")
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("--serve", action="store_true",
                   help="measure the web service instead: FPS with 0/1/2 MJPEG clients, RSS, first frame in a browser")
    p.add_argument("--reps", type=int, default=5, help="with --serve: interleaved repetitions (default 5)")
    args = p.parse_args(argv)
    if args.serve:
        res = serve_figures(args)
        if args.json:
            args.json.write_text(json.dumps(res, indent=1) + "\n")
        return 0
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
