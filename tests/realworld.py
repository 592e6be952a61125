"""Real-world conditions for the reliability tests: small filesystems, stalled and dropping network
streams, processes stopped by signals. Needs root for mount (CI runs as root): fails, never skips."""
from __future__ import annotations

import contextlib
import io
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def small_filesystem(folder: Path, size: str = "2m", read_only: bool = False):
    """A tmpfs of ``size`` mounted on ``folder`` (a full SD card in miniature), unmounted after."""
    folder.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(folder)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"cannot mount a tmpfs on {folder} (root needed, as in CI): {proc.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def clip_jpegs(clip: Path, limit: int | None = None) -> list[bytes]:
    """The frames of a real clip, JPEG-encoded as an IP camera sends them."""
    cap, out = cv2.VideoCapture(str(clip)), []
    while limit is None or len(out) < limit:
        ok, frame = cap.read()
        if not ok:
            break
        out.append(cv2.imencode(".jpg", frame)[1].tobytes())
    return out


class MjpegServer:
    """A local HTTP MJPEG camera (multipart/x-mixed-replace, as IP cameras serve it).

    ``plan`` says what each successive connection does: ("send", n) sends n frames then closes the
    connection (a dropped stream), ("stall", n) sends n frames then keeps the connection open and
    silent, ("loop", 0) sends frames for ever. Connections after the plan loop.
    """

    def __init__(self, frames: list[bytes], plan: list[tuple[str, int]], fps: float = 30.0, port: int = 0) -> None:
        self.frames, self.plan, self.fps, self.connections = frames, list(plan), fps, 0
        self.sent = 0
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                what, n = server.plan[server.connections] if server.connections < len(server.plan) else ("loop", 0)
                server.connections += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                try:
                    while what == "loop" or i < n:
                        jpg = server.frames[i % len(server.frames)]
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                         % len(jpg) + jpg + b"\r\n")
                        self.wfile.flush()
                        server.sent += 1
                        i += 1
                        time.sleep(1 / server.fps)
                    if what == "stall":
                        server.release.wait(600)
                except OSError:
                    pass

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/stream.mjpg"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


class SilentServer:
    """Accepts TCP connections and never sends a byte (a camera that hangs during start-up)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.accepted: list[socket.socket] = []
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/stream.mjpg"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        for c in self.accepted:
            c.close()
        self.sock.close()


def run_module(module: str, *args, memory_limit: int | None = None, file_limit: int | None = None,
               timeout: float = 300):
    """``python -m MODULE ARGS`` to completion (optionally under a virtual memory limit, as
    ``ulimit -v`` sets it, or a limit on the size of one file, as ``ulimit -f``), output captured."""
    def limit() -> None:
        if memory_limit:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
        if file_limit:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          preexec_fn=limit if memory_limit or file_limit else None)


def convert_main(*args) -> subprocess.CompletedProcess:
    """``python -m convert ARGS`` in this process, for bad inputs that fail before the work (the
    libraries are imported once, not once per case; torch alone takes over a second): the exit code and
    stderr as a child's would be, and an uncaught exception fails the test as a traceback would."""
    from convert.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse
            rc = e.code
    return subprocess.CompletedProcess(args, rc, out.getvalue(), err.getvalue())


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The one error line of a failed command: a non-zero exit, no traceback, exactly one line on stderr
    that starts with ``error:`` (or argparse's ``PROG: error:``), returned."""
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:") or ": error: " in line]
    assert len(errors) == 1, proc.stderr[-2000:]
    return errors[0]


class Process:
    """A ``python -m edge_runtime``/``convert`` process whose output is collected as it comes (so a
    chatty process never blocks on a full pipe), stopped by a signal and timed."""

    def __init__(self, module: str, *args, env: dict | None = None) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        # SIGHUP at its default, as in a user's terminal, even when the suite itself runs under nohup
        self.proc = subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(s, l), daemon=True)
                         for s, l in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def stop(self, sig: int, limit: float = 30.0) -> float:
        """Send ``sig``; the seconds until the process ended."""
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        self.proc.wait(timeout=limit)
        elapsed = time.monotonic() - t0
        for t in self._readers:
            t.join(timeout=5)
        return elapsed

    def wait(self, limit: float = 120.0) -> int:
        rc = self.proc.wait(timeout=limit)
        for t in self._readers:
            t.join(timeout=5)
        return rc

    @property
    def stderr(self) -> str:
        return "\n".join(self.err)


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def video_frames(path: Path) -> int:
    """Frames that actually decode from a video file (0 when it does not open)."""
    cap, n = cv2.VideoCapture(str(path)), 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def edit_record(model: bytes, edit) -> bytes:
    """The artifact with its JSON record changed by ``edit(record)`` in place (same length: padded
    with spaces, the WordNet ids dropped when room is needed) and its integrity checksum sealed
    again when it has one: a model a user edited deliberately, not a damaged one."""
    import json

    from edge_runtime import integrity
    from edge_runtime.metadata import METADATA_NAME, read_metadata_bytes

    raw = read_metadata_bytes(model, METADATA_NAME)
    at = model.find(raw)
    record = json.loads(raw)
    edit(record)
    sealed = integrity.DIGEST_KEY in record
    if sealed:
        record[integrity.DIGEST_KEY] = integrity.PLACEHOLDER
    body = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    if len(body) > len(raw):
        record.pop("wnids", None)
        body = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
    assert len(body) <= len(raw), (len(body), len(raw))
    out = model[:at] + body.ljust(len(raw)) + model[at + len(raw):]
    return integrity.seal(out) if sealed else out


def tiny_onnx(path: Path, classes: int = 10, declared: int | None = None) -> Path:
    """A small real ONNX image classifier (conv, ReLU, pooling, dense) with fixed weights; its graph
    may declare a false number of classes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
             numpy_helper.from_array(rng.normal(0, 0.5, (classes, 8)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.zeros(classes, np.float32), "b2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, declared or classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
