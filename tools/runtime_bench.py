"""``python -m tools.runtime_bench``: figures of the edge runtime: end-to-end throughput versus invoke-only rate,
peak resident memory, start-up to the first classified frame, and a soak with simulated disconnects.
With --serve, the web service's figures instead: end-to-end FPS without --serve and serving 0, 1 and 2
MJPEG clients (interleaved, several repetitions, ratios per repetition), peak RSS of the CLI process
with 2 clients, and the time from the process start to the first frame visible in headless Chromium.

    python -m tools.runtime_bench --model build/squeezenet1_0_int8.tflite --source samples/sample_clip.mp4
    python -m tools.runtime_bench --serve --reps 5 --max-frames 1500 --report build/serve_bench.json
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

from edge_runtime.bench import cpu_record
from edge_runtime.fileio import atomic_write, outputs_problem
from edge_runtime.flags import add_json_flag, deprecated, json_path_to_report, positive_int, threads_arg

ROOT = Path(__file__).resolve().parents[1]


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
    src = open_source(source, loop=True, fit=clf.preprocessing)
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
    src = open_source(source, disconnect_every=every, fit=clf.preprocessing)
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


# A separate process of MJPEG viewers, like browsers on other devices: it reads the streams and counts
# their parts without decoding (decoding would cost this machine's CPU, not the device's). Each line
# on its stdin sets how many streams it holds open ("2", "0", ...); at the end of stdin it prints the
# parts each stream received.
MJPEG_VIEWERS = r"""
import socket, sys, threading
from urllib.parse import urlsplit
u = urlsplit(sys.argv[1])
open_, counts = [], []
def view(sock, i):
    tail = b""
    try:
        while data := sock.recv(1 << 16):
            counts[i] += (tail + data).count(b"--frame\r\n")
            tail = data[-9:]
    except OSError:
        pass
for line in sys.stdin:
    want = int(line)
    while len(open_) > want:
        sock = open_.pop()
        sock.shutdown(socket.SHUT_RDWR)
    while len(open_) < want:
        sock = socket.create_connection((u.hostname, u.port))
        sock.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        counts.append(0)
        threading.Thread(target=view, args=(sock, len(counts) - 1), daemon=True).start()
        open_.append(sock)
print(" ".join(map(str, counts)), flush=True)
"""
BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync")


class Viewers:
    """The viewer process: ``set(n)`` holds n MJPEG streams open; ``close()`` returns parts per stream."""

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", MJPEG_VIEWERS, url], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def set(self, n: int, service=None, timeout: float = 20) -> None:
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while service is not None and service.hub.viewers != n:  # the server counts them in
            if time.monotonic() > deadline:
                raise RuntimeError(f"{n} MJPEG viewers expected, the server counts {service.hub.viewers}")
            time.sleep(0.01)

    def close(self) -> list[int]:
        out, _ = self.proc.communicate(timeout=30)
        return [int(x) for x in out.split()]


def _service_thread_cpu() -> dict[int, float]:
    """CPU seconds (scheduler's nanosecond count) of each thread of the web service in this process:
    the encoder, the HTTP server and its per-client handler threads."""
    out = {}
    for t in threading.enumerate():
        if t.name.startswith("serve:") or "process_request_thread" in t.name:
            try:
                with open(f"/proc/self/task/{t.native_id}/schedstat") as f:
                    out[t.native_id] = int(f.read().split()[0]) / 1e9
            except OSError:  # the thread ended meanwhile
                pass
    return out


def serve_cost(model: Path, source: str, threads: int, frames: int, reps: int) -> dict:
    """End-to-end FPS of the loop on the looping clip without the service, and serving with 0, 1 and 2
    MJPEG viewers attached, interleaved (the order rotates every repetition; one server and one viewer
    process throughout). Each run also records the process's CPU time per frame (all its threads: loop,
    interpreter, decoder, encoder, HTTP), which a shared machine disturbs far less than the frame rate.
    Ratios are taken within a repetition, then the median over repetitions."""
    from edge_runtime import app, serve
    from edge_runtime.classify import Classifier
    from edge_runtime.sources import open_source

    clf = Classifier(model, threads=threads)
    service = serve.Service(clf, None, serve.ServeOptions(port=0))
    service.start()
    viewers = Viewers(service.url)
    name = {None: "no_serve", 0: "0_clients", 1: "1_client", 2: "2_clients"}
    variants = list(name)
    runs: dict[str, list[dict]] = {v: [] for v in name.values()}

    publish_s = [0.0]

    def timed_publish(frame, record, annotated):  # the loop thread's share of serving
        t = time.perf_counter()
        service.publish(frame, record, annotated)
        publish_s[0] += time.perf_counter() - t

    def one(clients, n_frames):
        if clients is not None:
            viewers.set(clients, service)
        encoded, publish_s[0] = service.hub.jpegs, 0.0
        threads0, cpu0 = _service_thread_cpu(), os.times()
        with open(os.devnull, "w") as null:
            stats = app.run(clf, open_source(source, loop=True, fit=clf.preprocessing),
                            app.RunOptions(max_frames=n_frames, out=null, log_interval=1e9),
                            observer=timed_publish if clients is not None else None)
        cpu1, threads1 = os.times(), _service_thread_cpu()
        cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        serving = sum(t - threads0.get(tid, 0.0) for tid, t in threads1.items()) + publish_s[0]
        return {"fps": stats.fps, "cpu_ms_per_frame": 1000 * cpu / stats.frames,
                "serving_cpu_share": serving / cpu if cpu else 0.0,
                "publish_us_per_frame": 1e6 * publish_s[0] / stats.frames,
                "jpegs_encoded": service.hub.jpegs - encoded}

    try:
        one(2, min(frames, 300))  # warm-up
        for rep in range(reps):
            for v in variants[rep % 4:] + variants[:rep % 4]:
                r = one(v, frames)
                runs[name[v]].append(r)
                print(f"rep {rep + 1}/{reps} {name[v]:>9}: {r['fps']:6.1f} FPS, {r['cpu_ms_per_frame']:.2f} ms "
                      f"CPU/frame, serving {100 * r['serving_cpu_share']:.2f}% of the CPU, publish "
                      f"{r['publish_us_per_frame']:.1f} us/frame, {r['jpegs_encoded']} JPEGs",
                      file=sys.stderr, flush=True)
    finally:
        viewers.set(0)
        delivered = viewers.close()
        service.close()
    out = {"frames_per_run": frames, "reps": reps, "runs": runs, "viewer_parts_received": delivered}
    for key in ("fps", "cpu_ms_per_frame", "serving_cpu_share", "publish_us_per_frame"):
        out[f"median_{key}"] = {k: statistics.median(r[key] for r in rs) for k, rs in runs.items()}
    for base in ("no_serve", "0_clients"):  # FPS ratios, and the same implied by CPU time per frame
        out[f"fps_ratio_to_{base}"] = {k: statistics.median(r["fps"] / b["fps"] for r, b in zip(rs, runs[base]))
                                       for k, rs in runs.items()}
        out[f"cpu_ratio_to_{base}"] = {
            k: statistics.median(b["cpu_ms_per_frame"] / r["cpu_ms_per_frame"] for r, b in zip(rs, runs[base]))
            for k, rs in runs.items()}
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
        viewers = Viewers(url) if clients else None
        if viewers:
            viewers.set(clients)
        time.sleep(seconds)
        out[key] = _peak_rss_mb(proc.pid)
        if viewers:
            viewers.set(0)
            out[key]["viewer_parts_received"] = viewers.close()
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
    cpu = cpu_record()[0] or "unknown"  # (a Pi's board, where x86's "model name" is missing)
    res = {"cpu": cpu, "cores": os.cpu_count(), "threads": args.threads, "load_before": os.getloadavg(),
           "fps": serve_cost(args.model, args.source, args.threads, args.max_frames, args.reps),
           "rss": serve_rss(args.model, args.source, 8.0),
           "first_frame_in_browser": first_frame_in_browser(args.model, args.source, 3),
           "load_after": os.getloadavg()}
    f, b = res["fps"], res["first_frame_in_browser"]
    print(f"CPU: {cpu}; load average before {res['load_before'][0]:.1f}, after {res['load_after'][0]:.1f}")
    print(f"end-to-end FPS, median of {args.reps} interleaved repetitions of {args.max_frames} frames: "
          + ", ".join(f"{k} {v:.1f}" for k, v in f["median_fps"].items()))
    for base in ("no_serve", "0_clients"):
        print(f"ratio to {base}: FPS " + ", ".join(f"{k} {v:.3f}" for k, v in f[f"fps_ratio_to_{base}"].items())
              + "; by CPU time per frame " + ", ".join(f"{k} {v:.3f}" for k, v in f[f"cpu_ratio_to_{base}"].items()))
    print("share of the process's CPU spent serving (encoder + HTTP threads + publish on the loop thread): "
          + ", ".join(f"{k} {100 * v:.2f}%" for k, v in f["median_serving_cpu_share"].items())
          + "; publish on the loop thread: " + ", ".join(f"{k} {v:.1f} us/frame"
                                                       for k, v in f["median_publish_us_per_frame"].items()))
    print("goal: 2 clients >= 0.90 of 0 clients")
    print(f"RSS with 2 clients: peak {res['rss']['serve_2_clients']['peak_rss_mb']:.1f} MB "
          f"(without --serve {res['rss']['no_serve']['peak_rss_mb']:.1f} MB); first frame in the browser "
          + (f"{b['median_s']:.2f} s after the start (median of {len(b['runs'])})" if "median_s" in b else b["error"]))
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.runtime_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=ROOT / "build" / "squeezenet1_0_int8.tflite",
                   help="int8 .tflite (default build/squeezenet1_0_int8.tflite)")
    p.add_argument("--source", default=str(ROOT / "samples" / "sample_clip.mp4"),
                   help="video clip (default samples/sample_clip.mp4)")
    p.add_argument("--threads", type=threads_arg, default=2, help="interpreter threads (default 2)")
    p.add_argument("--max-frames", type=positive_int, default=3000,
                   help="frames of the throughput run (default 3000)")
    deprecated(p, "--frames", "--max-frames", "max_frames", type=positive_int)
    p.add_argument("--soak-frames", type=int, default=10_000, help="frames of the soak (default 10000)")
    p.add_argument("--disconnect-every", type=int, default=1000, help="simulated disconnect interval (default 1000)")
    add_json_flag(p, "print the figures as JSON on stdout")
    p.add_argument("--report", type=Path, help="write the figures as JSON here")
    p.add_argument("--serve", action="store_true",
                   help="measure the web service instead: FPS with 0/1/2 MJPEG clients, RSS, first frame in a browser")
    p.add_argument("--reps", type=int, default=5, help="with --serve: interleaved repetitions (default 5)")
    args = p.parse_args(argv)
    json_path_to_report(args)
    problem = outputs_problem([("--report", args.report)], [("--model", args.model), ("--source", args.source)])
    if problem:  # before minutes of measuring
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from edge_runtime.classify import Classifier, ModelError

    try:  # a missing or damaged model is one line, before any measuring
        Classifier(args.model, threads=1)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.serve:
        res = serve_figures(args)
        _output(res, args)
        return 0
    invoke = invoke_only_rate(args.model, args.threads, 5.0)
    e2e = end_to_end(args.model, args.source, args.threads, args.max_frames)
    proc = cli_process(args.model, args.source, 300)
    so = soak(args.model, args.source, args.soak_frames, args.disconnect_every)
    res = {"invoke_only_fps": invoke, "end_to_end": e2e, "ratio": e2e["fps"] / invoke, "process": proc, "soak": so,
           "load": os.getloadavg()}
    print(f"end-to-end {e2e['fps']:.1f} FPS / invoke-only {invoke:.1f}/s = {res['ratio']:.2f} (goal >= 0.85); "
          f"peak RSS {proc['peak_rss_mb']:.1f} MB (goal <= 120); start-up {proc['startup_to_first_frame_s']:.2f} s "
          f"(goal < 1.5); soak {so['frames']} frames, {so['reconnects']} reconnects for "
          f"{so['disconnects_expected']} disconnects, RSS growth {so['rss_growth_mb']:.1f} MB (goal < 5)")
    _output(res, args)
    return 0


def _output(res: dict, args: argparse.Namespace) -> None:
    if args.json:
        print(json.dumps(res, indent=1))
    if args.report:
        atomic_write(args.report, json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
