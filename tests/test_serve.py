"""The device service (`--serve`) with real HTTP clients, a real browser and the real model on the clip.

Most tests share one server process (module fixture) running the CLI on the looping sample clip.
"""
from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest

from edge_runtime import serve
from edge_runtime.interpreter import find_backend
from edge_runtime.metadata import read_model_info
from realworld import MjpegServer, SilentServer, clip_jpegs, wait_for

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-token-5f2a9c1e"
BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage")  # a container's 64 MB /dev/shm would crash the renderer
BACKEND = find_backend()[1]  # the interpreter package the runtime will pick here
NO_PROMETHEUS = "import sys; sys.modules['prometheus_client'] = None; " \
                "from edge_runtime.cli import main; sys.exit(main())"


class Runtime:
    """``python -m edge_runtime ... --serve 127.0.0.1:0`` in a subprocess; stderr collected by a thread."""

    def __init__(self, model: Path, clip: Path, *args: str, launcher: tuple[str, ...] = ("-m", "edge_runtime")):
        self.model = model
        cmd = [sys.executable, *launcher, "--source", str(clip), "--model", str(model), "--headless",
               "--serve", "127.0.0.1:0", *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.url: str | None = None
        ready = threading.Event()

        def drain():
            for line in self.proc.stderr:
                self.lines.append(line)
                if line.startswith("serving on "):
                    self.url = line.split()[2]
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(90) or self.url is None:
            self.proc.kill()
            pytest.fail(f"the runtime did not start serving: {''.join(self.lines)}")
        u = urlsplit(self.url)
        self.host, self.port = u.hostname, u.port

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def request(self, path: str, token: str | None = TOKEN, headers: dict | None = None, method: str = "GET",
                timeout: float = 10) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        hdrs = dict(headers or {})
        if token:
            hdrs["Authorization"] = f"Bearer {token}"
        conn.request(method, path, headers=hdrs)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body

    def frame(self, token: str | None = TOKEN) -> int:
        status, _, body = self.request("/predictions", token)
        assert status == 200, body
        return json.loads(body)["frame"]

    def raw(self, data: bytes, timeout: float = 10) -> bytes:
        """Send raw bytes, return the whole answer (the server closes after one response)."""
        with socket.create_connection((self.host, self.port), timeout=timeout) as s:
            s.sendall(data)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return out

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


def open_stream(rt: Runtime, path: str, token: str | None = TOKEN) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection(rt.host, rt.port, timeout=10)
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
    return conn.getresponse()


def mjpeg_frames(resp: http.client.HTTPResponse, n: int, numbers: list | None = None) -> list[np.ndarray]:
    """Parse ``n`` parts of a multipart/x-mixed-replace stream and decode each JPEG with OpenCV
    (their X-Frame numbers go to ``numbers``)."""
    ctype = resp.getheader("Content-Type")
    assert ctype.startswith("multipart/x-mixed-replace") and "boundary=" in ctype, ctype
    boundary = b"--" + ctype.split("boundary=")[1].strip().encode()
    if not getattr(resp, "parts_read", 0):  # the stream opens with a boundary line
        assert resp.readline().rstrip(b"\r\n") == boundary
    frames = []
    for _ in range(n):
        headers = {}
        while (line := resp.readline()) not in (b"\r\n", b"\n", b""):
            k, _, v = line.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        assert headers["content-type"] == "image/jpeg", headers
        if numbers is not None:
            numbers.append(int(headers["x-frame"]))
        data = resp.read(int(headers["content-length"]))
        assert resp.readline() == b"\r\n" and resp.readline().rstrip(b"\r\n") == boundary
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert img is not None, "a part is not a decodable JPEG"
        frames.append(img)
    resp.parts_read = getattr(resp, "parts_read", 0) + n
    return frames


def sse_messages(resp: http.client.HTTPResponse, n: int) -> list[tuple[int, dict]]:
    assert resp.getheader("Content-Type").startswith("text/event-stream")
    out, fields = [], {}
    while len(out) < n:
        line = resp.readline().decode().rstrip("\n")
        if not line:
            if "data" in fields:
                out.append((int(fields["id"]), json.loads(fields["data"])))
            fields = {}
            continue
        if line.startswith(":"):
            continue
        k, _, v = line.partition(":")
        fields[k] = v.lstrip()
    return out


def check_record(rec: dict, labels: list[str]) -> None:
    """The --json line's schema, with labels of the model."""
    assert set(rec) == {"frame", "time", "inference_ms", "fps", "top"}, rec
    assert rec["frame"] > 0 and rec["inference_ms"] > 0 and abs(rec["time"] - time.time()) < 60
    scores = [t["score"] for t in rec["top"]]
    assert len(rec["top"]) == 3 and scores == sorted(scores, reverse=True)
    for t in rec["top"]:
        assert labels[t["index"]] == t["label"]


def metrics(rt: Runtime) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    status, headers, body = rt.request("/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain"), (status, body[:200])
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def sample(families: dict, family: str, sample_name: str | None = None, **labels) -> float:
    for s in families[family].samples:
        if (sample_name is None or s.name == sample_name) and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError(f"{family} {sample_name} {labels}")


@pytest.fixture(scope="module")
def labels(int8_model) -> list[str]:
    return read_model_info(int8_model).labels


@pytest.fixture(scope="module")
def server(int8_model, sample_clip):
    rt = Runtime(int8_model, sample_clip, "--loop", "--top-k", "3", "--token", TOKEN, "--max-clients", "3",
                 "--stream-fps", "10", "--client-timeout", "2")
    deadline = time.monotonic() + 30
    while rt.request("/predictions")[0] != 200:
        assert time.monotonic() < deadline and rt.proc.poll() is None, rt.stderr
        time.sleep(0.05)
    yield rt
    assert rt.stop() == 0, rt.stderr
    assert "Traceback" not in rt.stderr, rt.stderr


def test_page_and_model_facts(server, int8_model):
    status, headers, body = server.request("/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    page = body.decode()
    assert '<img id="video"' in page and "EventSource" in page and 'name="viewport"' in page
    assert "http://" not in page and "https://" not in page  # nothing from the network (no CDN)
    assert "default-src 'none'" in headers["content-security-policy"]
    status, _, body = server.request("/model")
    info, embedded = json.loads(body), read_model_info(int8_model)
    assert status == 200 and info["name"] == embedded.model_name and "squeezenet1_0" in info["name"]
    assert info["input_size"] == [227, 227] and info["classes"] == 1000 and info["interpreter"] == BACKEND
    assert info["sha256"] == hashlib.sha256(int8_model.read_bytes()).hexdigest()


def test_model_facts_describe_the_bytes_that_run(int8_model, tmp_path):
    """/model and the model info metric hashed the file at each request: after a model update moved a new
    (here: damaged) file into place, they named bytes the running process never loaded."""
    from edge_runtime.classify import Classifier

    live = tmp_path / "live.tflite"
    shutil.copy(int8_model, live)
    clf = Classifier(live, threads=1)
    live.write_bytes(int8_model.read_bytes()[:1000])  # the update's mv: another file under the name
    assert serve.model_summary(clf)["sha256"] == hashlib.sha256(int8_model.read_bytes()).hexdigest()


def test_predictions_follow_the_loop(server, labels):
    status, headers, body = server.request("/predictions")
    first = json.loads(body)
    assert status == 200 and headers["content-type"] == "application/json"
    check_record(first, labels)
    deadline = time.monotonic() + 10
    while (second := json.loads(server.request("/predictions")[2]))["frame"] <= first["frame"]:
        assert time.monotonic() < deadline, "the result does not follow the loop"
        time.sleep(0.05)
    check_record(second, labels)


def test_mjpeg_stream_decodes_capped_and_annotated(server):
    t0 = time.monotonic()  # before the request: parts that wait in the socket while the test is descheduled count as slow
    resp = open_stream(server, "/stream.mjpg")
    assert resp.status == 200
    frames = mjpeg_frames(resp, 12)
    seconds = time.monotonic() - t0
    resp.close()
    assert all(f.shape == (240, 320, 3) for f in frames)  # the clip's size
    assert len({hashlib.sha1(f.tobytes()).hexdigest() for f in frames}) >= 10  # live, not one frame repeated
    assert 11 / seconds <= 10 * 1.3, f"{11 / seconds:.1f} frames/s over the cap of 10"
    # the overlay: a black box with white text at the top left, the clip's colours elsewhere
    box = frames[-1][2:20, 2:60]
    assert (box < 40).mean() > 0.5 and (box > 200).any()


def test_events_carry_the_json_schema_at_the_capped_rate(server, labels):
    t0 = time.monotonic()  # before the request (see the MJPEG test)
    resp = open_stream(server, "/events")
    assert resp.status == 200
    msgs = sse_messages(resp, 8)
    seconds = time.monotonic() - t0
    resp.close()
    ids = [i for i, _ in msgs]
    assert ids == sorted(ids) and len(set(ids)) == 8
    for i, rec in msgs:
        assert rec["frame"] == i
        check_record(rec, labels)
    assert 7 / seconds <= 10 * 1.3
    # while a video viewer watches, the events carry the records of the video frames (labels match picture)
    video, numbers = open_stream(server, "/stream.mjpg"), []
    mjpeg_frames(video, 1, numbers)  # the viewer is registered before /events opens
    events = open_stream(server, "/events")
    mjpeg_frames(video, 7, numbers)
    ids = [i for i, _ in sse_messages(events, 4)]
    mjpeg_frames(video, 3, numbers)
    video.close()
    events.close()
    assert set(ids) <= set(numbers), (ids, numbers)


def test_metrics_in_prometheus_text_format(server, int8_model):
    families = metrics(server)
    frames = sample(families, "edge_runtime_frames", "edge_runtime_frames_total")
    assert frames > 0
    assert sample(families, "edge_runtime_inference_seconds", "edge_runtime_inference_seconds_count") > 0
    assert sample(families, "edge_runtime_inference_seconds", "edge_runtime_inference_seconds_bucket", le="+Inf") \
        == sample(families, "edge_runtime_inference_seconds", "edge_runtime_inference_seconds_count")
    assert sample(families, "edge_runtime_frame_interval_seconds", "edge_runtime_frame_interval_seconds_count") > 0
    assert sample(families, "edge_runtime_fps") > 1
    assert sample(families, "edge_runtime_healthy") == 1
    for name in ("camera_reconnects", "corrupt_frames", "dropped_frames", "clients_rejected", "clients_dropped"):
        assert families[f"edge_runtime_{name}"].type == "counter"
    assert sample(families, "edge_runtime_corrupt_frames") == 0
    assert sample(families, "edge_runtime_clients", route="other") >= 1  # this scrape
    info = families["edge_runtime_model_info"].samples[0]
    assert info.labels == {"name": read_model_info(int8_model).model_name, "classes": "1000", "interpreter": BACKEND,
                           "sha256": hashlib.sha256(int8_model.read_bytes()).hexdigest(), "input_size": "227x227"}
    deadline = time.monotonic() + 10
    while sample(metrics(server), "edge_runtime_frames", "edge_runtime_frames_total") <= frames:
        assert time.monotonic() < deadline, "the frame counter does not rise"
        time.sleep(0.05)
    # every series the shipped Prometheus examples use exists
    names = {s.name for f in families.values() for s in f.samples}
    used = set(re.findall(r"edge_runtime_[a-z_]+", (ROOT / "examples" / "edge-runtime-alerts.yml").read_text()))
    assert len(used) >= 6 and used <= names, used - names


def test_frames_are_encoded_only_while_a_viewer_watches(server):
    def counters():
        f = metrics(server)
        return (sample(f, "edge_runtime_stream_frames"), sample(f, "edge_runtime_frames", "edge_runtime_frames_total"),
                sample(f, "edge_runtime_clients", route="stream.mjpg"))

    deadline = time.monotonic() + 10
    while counters()[2] != 0:  # earlier tests' streams are gone
        assert time.monotonic() < deadline
        time.sleep(0.05)
    encoded, frames, _ = counters()
    deadline = time.monotonic() + 10
    while (after := counters())[1] <= frames + 5:  # the loop runs (however slowly the machine goes) ...
        assert time.monotonic() < deadline, "the loop stopped"
        time.sleep(0.1)
    assert after[0] == encoded  # ... and nothing is encoded
    resp = open_stream(server, "/stream.mjpg")
    mjpeg_frames(resp, 3)
    assert counters()[0] >= encoded + 3 and counters()[2] == 1
    resp.close()


def test_token_is_required_everywhere_but_healthz(server):
    for path in ("/", "/stream.mjpg", "/events", "/predictions", "/model", "/metrics"):
        for token in (None, "wrong-token-123"):
            status, headers, body = server.request(path, token=token)
            assert status == 401 and "token" in json.loads(body)["error"], (path, token, status)
            assert headers["www-authenticate"].startswith("Bearer")
    assert server.request(f"/predictions?token={TOKEN}", token=None)[0] == 200  # the page's way
    assert server.request(f"/predictions?token={TOKEN[:-1]}", token=None)[0] == 401
    status, _, body = server.request("/healthz", token=None)
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_bad_requests_get_4xx_and_never_disturb_the_loop(server):
    start = server.frame()
    idle = socket.create_connection((server.host, server.port))  # connects and never sends a request
    stalled = socket.socket()  # asks for the stream and never reads it
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect((server.host, server.port))
    stalled.sendall(f"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
    dropped_before = sample(metrics(server), "edge_runtime_clients_dropped")
    auth = f"Authorization: Bearer {TOKEN}\r\n".encode()
    trickled: list[float] = []

    def trickle():  # a byte of header every 0.3 s: no single read ever times out
        t0 = time.monotonic()
        with socket.create_connection((server.host, server.port)) as s:
            s.sendall(b"GET / HTTP/1.1\r\n")
            try:
                for _ in range(100):
                    s.sendall(b"X")
                    time.sleep(0.3)
            except OSError:
                trickled.append(time.monotonic() - t0)  # the server closed it

    slow = threading.Thread(target=trickle)
    slow.start()

    def status_of(answer: bytes) -> int:
        assert answer.startswith(b"HTTP/1."), answer[:100]
        return int(answer.split()[1])

    cases = {
        b"GET /../../etc/passwd HTTP/1.1\r\n" + auth + b"\r\n": 404,
        b"GET /%2e%2e/%2e%2e/etc/passwd HTTP/1.1\r\n" + auth + b"\r\n": 404,
        b"GET /samples/sample_clip.mp4 HTTP/1.1\r\n" + auth + b"\r\n": 404,
        b"POST /predictions HTTP/1.1\r\nContent-Length: 3\r\n" + auth + b"\r\nabc": 405,
        b"DELETE / HTTP/1.1\r\n" + auth + b"\r\n": 405,
        b"GARBAGE\r\n\r\n": 400,
        b"GET / HTTP/2.0\r\n\r\n": 400,
        b"GET http://example.com/ HTTP/1.1\r\n\r\n": 400,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(64)) + b"\r\n\r\n": 400,  # TLS hello
        b"GET /" + b"a" * 3000 + b" HTTP/1.1\r\n\r\n": 414,
        b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n": 431,
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(70)) + b"\r\n": 431,
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"c" * 2000) for i in range(10)) + b"\r\n": 431,
        b"GET /predictions?" + b"&".join(b"a%d=1" % i for i in range(20)) + b" HTTP/1.1\r\n" + auth + b"\r\n": 400,
    }
    for request, expected in cases.items():
        answer = server.raw(request)
        assert status_of(answer) == expected, (request[:60], answer[:200])
        assert b"Traceback" not in answer and answer.rstrip().endswith(b"}")  # a JSON error line
    # the loop goes on while the idle, stalled and trickling clients are still connected (waited for: on
    # a loaded 2-core machine the requests above can all fit between two classified frames)
    wait_for(lambda: server.frame() > start, 10, f"a frame classified after frame {start}")

    # many clients at once: every one gets an answer; streams over --max-clients (3) get 503
    results: list[int] = []

    def client(path):
        try:
            if path != "/stream.mjpg":
                results.append(server.request(path, timeout=15)[0])
                return
            resp = open_stream(server, path)
            if resp.status == 200:
                mjpeg_frames(resp, 1)
                time.sleep(1.0)  # hold the slot while the others arrive
            resp.close()
            results.append(resp.status)
        except (OSError, http.client.HTTPException) as e:
            results.append(repr(e))

    threads = [threading.Thread(target=client, args=(p,)) for p in ["/stream.mjpg"] * 6 + ["/healthz"] * 24]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 30 and set(results) <= {200, 503}, results
    assert 1 <= results.count(503) <= 27 and results.count(200) >= 3, results

    # the idle and the trickling clients are closed by the server (--client-timeout 2), the stalled stream
    # is dropped
    slow.join(35)
    assert trickled and trickled[0] < 10, trickled
    idle.settimeout(15)
    assert idle.recv(100) == b""
    idle.close()
    deadline = time.monotonic() + 60  # its send buffer fills at the stream's rate, slower on a slow machine
    while sample(metrics(server), "edge_runtime_clients_dropped") <= dropped_before:
        assert time.monotonic() < deadline, "a stream client that never reads was not dropped"
        time.sleep(0.25)
    stalled.close()
    end = server.frame()
    assert end > start + 50, (start, end)  # the loop kept classifying throughout
    status, _, body = server.request("/healthz", token=None)
    assert status == 200, body


def test_browser_shows_the_live_view(server, labels, tmp_path, capsys):
    """Headless Chromium (Debian's chromium + chromium-driver) loads the page: the DOM shows a label
    of the model and the video region of a screenshot is a real picture. The screenshot is kept."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service as ChromeService
    from selenium.webdriver.support.ui import WebDriverWait

    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.fail("headless browser test needs Debian's chromium and chromium-driver (tools/setup.sh installs them)")
    opts = Options()
    opts.binary_location = chromium
    for flag in BROWSER_FLAGS + ("--window-size=900,700",):
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")  # a new, empty profile
    driver = webdriver.Chrome(service=ChromeService(driver_path), options=opts)
    try:
        driver.set_page_load_timeout(30)
        driver.get(f"{server.url}?token={TOKEN}")  # the page passes the token on to its requests
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(
            "const v = document.getElementById('video');"
            "return v.complete && v.naturalWidth > 0 && document.querySelectorAll('#top li').length > 0"))
        shown = driver.execute_script("return [...document.querySelectorAll('#top .label')].map(e => e.textContent)")
        assert shown and all(label in labels for label in shown), shown
        assert driver.find_element("id", "model-name").text == read_model_info(server.model).model_name
        assert "227x227" in driver.find_element("id", "model-facts").text
        assert driver.find_element("id", "status").text == "live"
        rect = driver.execute_script("const r = document.getElementById('video').getBoundingClientRect();"
                                     "return [r.x, r.y, r.width, r.height, window.devicePixelRatio]")
        png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    out = ROOT / "build" / "serve-browser.png"  # kept as a build artifact
    out.parent.mkdir(exist_ok=True)
    out.write_bytes(png)
    with capsys.disabled():
        print(f"\nbrowser screenshot: {out}")
    shot = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    x, y, w, h = (int(round(v * rect[4])) for v in rect[:4])  # CSS pixels -> screenshot pixels
    assert w > 200 and h > 150, rect
    video = shot[y:y + h, x:x + w]
    gray = cv2.cvtColor(video, cv2.COLOR_BGR2GRAY)
    assert gray.std() > 20 and (gray < 10).mean() < 0.8, (gray.mean(), gray.std())  # a picture, not blank
    assert len(np.unique(video.reshape(-1, 3) // 32, axis=0)) > 20  # the clip's colours, not a flat fill


def test_outages_never_stretch_the_stall_allowance():
    """/healthz's allowance follows the typical frame interval: ten 10 s outages between bursts of five
    frames leave it at 2 s (counted into a mean, they stretched it to 6.5 s, so a camera that went down
    again read "ok" for 6.5 s), while a camera that sends a frame every 2.5 s is given three of its intervals
    instead of being called down between its frames."""
    from edge_runtime.serve import FramePace

    pace, t = FramePace(2.0), 0.0
    for _ in range(10):
        for _ in range(5):
            t += 0.03
            pace.tick(t)
        t += 10.0  # unplugged
        pace.tick(t)
    assert pace.stall_limit() == 2.0
    slow = FramePace(2.0)
    for k in range(30):
        slow.tick(2.5 * k)
    assert slow.stall_limit() == pytest.approx(7.5)


def test_healthz_turns_503_while_the_camera_is_unplugged(int8_model, sample_clip):
    # 503 from 2 s without a frame (the stall limit) until the reconnect: a window of about 2 s
    rt = Runtime(int8_model, sample_clip, "--disconnect-every", "60",
                 "--disconnect-seconds", "4")
    try:
        seen, deadline, fps_while_down = [], time.monotonic() + 40, []
        while time.monotonic() < deadline:
            status, _, body = rt.request("/healthz", token=None)
            state = json.loads(body)
            if not seen or seen[-1][0] != status:
                seen.append((status, state))
            if status == 503 and seen[:-1] and not fps_while_down:  # down before and after the scrape
                fps = sample(metrics(rt), "edge_runtime_fps")
                if rt.request("/healthz", token=None)[0] == 503:
                    fps_while_down.append(fps)
            if [s for s, _ in seen][-3:] == [200, 503, 200] and fps_while_down:  # else the next outage
                break
            time.sleep(0.1)
        statuses = [s for s, _ in seen]
        assert statuses[-3:] == [200, 503, 200], seen
        down = seen[-2][1]
        assert down["status"] == "down" and "camera is down" in down["reason"], down
        assert seen[-1][1]["reconnects"] >= 1 and seen[-1][1]["frame"] > down["frame"]
        assert sample(metrics(rt), "edge_runtime_camera_reconnects") >= 1
        assert fps_while_down == [0.0]  # the gauge does not go on showing the last rate while the camera is out
    finally:
        assert rt.stop() == 0, rt.stderr


def test_sigterm_closes_streams_and_finalizes_the_recording_without_prometheus(int8_model, sample_clip, tmp_path):
    """Without the optional prometheus_client: /metrics says so in one line, the rest works; without a
    token on 127.0.0.1, only loopback Host names are answered (DNS rebinding)."""
    out = tmp_path / "rec.mp4"
    rt = Runtime(int8_model, sample_clip, "--loop", "--record", str(out), launcher=("-c", NO_PROMETHEUS))
    try:
        assert "metrics disabled: the optional prometheus_client package is not installed" in rt.stderr
        status, _, body = rt.request("/metrics", token=None)
        assert status == 404 and "pip install prometheus_client" in json.loads(body)["error"]
        assert rt.request("/model", token=None, headers={"Host": "attacker.example:80"})[0] == 403
        assert rt.request("/model", token=None, headers={"Host": f"localhost:{rt.port}"})[0] == 200
        mjpeg, events = open_stream(rt, "/stream.mjpg", None), open_stream(rt, "/events", None)
        mjpeg_frames(mjpeg, 2)
        sse_messages(events, 2)
        while rt.frame(None) < 60:
            time.sleep(0.05)
        rt.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        for resp in (mjpeg, events):  # both streams end: the server closed them
            while resp.read(65536):
                assert time.monotonic() - t0 < 10
        assert rt.proc.wait(30) == 0, rt.stderr
    finally:
        rt.stop()
    assert "stopped by signal" in rt.stderr and "Traceback" not in rt.stderr, rt.stderr
    classified = int(re.search(r"(\d+) frames in", rt.stderr).group(1))
    cap = cv2.VideoCapture(str(out))
    frames = 0
    while cap.read()[0]:
        frames += 1
    assert frames == classified >= 60 and not list(tmp_path.glob(".*partial*")), (frames, classified)


def test_bad_serve_flags_give_one_line(int8_model, sample_clip):
    for kw, message in (({"serve": "127.0.0.1:99999"}, "[HOST:]PORT expected"),
                        ({"serve": "a b"}, "[HOST:]PORT expected"),
                        ({"token": "0123456789"}, "--token applies only with --serve"),
                        ({"serve": "0", "token": "short"}, "8..256 printable ASCII"),
                        ({"serve": "0", "token": "0123456789\n"}, "8..256 printable ASCII"),  # never matches a header
                        ({"serve": "0", "token": "0123456789\udcff"}, "8..256 printable ASCII"),  # not UTF-8: crashed
                        ({"serve": "0", "max_clients": "0"}, "--max-clients 0: 1..64 expected"),
                        ({"serve": "0", "stream_fps": "0"}, "--stream-fps 0.0: 0.1..120 expected"),
                        ({"serve": "0", "client_timeout": "0"}, "--client-timeout 0.0: 0.1..600")):
        with pytest.raises(serve.ServeError, match=re.escape(message)):
            serve.options_from_args(_args(**kw))
    # the CLI turns them into one line and exit 2; a port in use too (after loading the model)
    base = [sys.executable, "-m", "edge_runtime", "--source", str(sample_clip), "--model", str(int8_model)]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for args, message in ((["--serve", "a b"], "[HOST:]PORT expected"),
                              (["--serve", f"127.0.0.1:{port}"], f"cannot listen on 127.0.0.1:{port}")):
            proc = subprocess.run(base + args, cwd=ROOT, capture_output=True, text=True, timeout=60)
            lines = [l for l in proc.stderr.splitlines() if not l.startswith("INFO:")]  # TFLite's own line
            assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], (args, proc.stderr)


def test_other_addresses_warn_without_a_token(int8_model):
    from edge_runtime.classify import Classifier

    clf = Classifier(int8_model)
    for token, warned in ((None, True), (TOKEN, False)):
        err = io.StringIO()
        svc = serve.start(clf, None, serve.ServeOptions(host="0.0.0.0", port=0, token=token), err=err)
        svc.close()
        assert err.getvalue().splitlines()[-1].startswith("serving on http://0.0.0.0:")
        assert ("warning: listening on 0.0.0.0 without --token" in err.getvalue()) == warned, err.getvalue()
    assert serve.parse_address("8080") == ("127.0.0.1", 8080)
    assert serve.parse_address("[::1]:81") == ("::1", 81) and serve.parse_address("0.0.0.0:80") == ("0.0.0.0", 80)
    env_token = serve.options_from_args(_args(serve="9000"), environ={"EDGE_RUNTIME_TOKEN": "from-the-env-1"})
    assert env_token.token == "from-the-env-1" and env_token.port == 9000


def _args(**kw):
    from edge_runtime.cli import build_parser

    argv = ["--source", "x"] + [a for k, v in kw.items() for a in (f"--{k.replace('_', '-')}", v)]
    return build_parser().parse_args(argv)


def test_a_stream_missing_at_start_is_waited_for_while_serving(int8_model, sample_clip):
    """A camera or stream not there at start made the runtime exit 75 before it listened: a fleet saw the
    device unreachable, not its camera down. With --serve it listens first, /healthz says what it waits for,
    and the source opens when it comes (without --serve: exit 75 as before, for the service manager)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/stream.mjpg"
    rt, camera = Runtime(int8_model, url, "--stream-timeout", "1"), None
    try:
        wait_for(lambda: "trying again in 5 s" in rt.stderr or rt.proc.poll() is not None, 60, "a failed open")
        status, _, body = rt.request("/healthz", token=None)
        reason = json.loads(body)["reason"]
        assert status == 503 and reason.startswith(f"waiting for the source: cannot open stream {url}"), reason
        camera = MjpegServer(clip_jpegs(sample_clip, 30), [("loop", 0)], port=port)
        wait_for(lambda: rt.request("/healthz", token=None)[0] == 200, 60, "frames of the stream that came")
    finally:
        if camera:
            camera.close()
        assert rt.stop() == 0, rt.stderr
    assert "Traceback" not in rt.stderr, rt.stderr


def test_a_device_whose_log_is_full_still_serves(int8_model, sample_clip):
    """A device whose log (stderr) is on a full card: `--serve` died at start, exit 120 (its "serving on" line
    could not be written), and the device was unreachable; the wait for its missing camera would have died at
    its first warning too. Now the lines are lost and the service is not: it listens, waits for the stream,
    classifies it when it comes, and ends with 0 on SIGTERM. Run buffered, as a service manager runs it."""
    with socket.socket() as a, socket.socket() as b:  # two free ports, told apart
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        port, camera_port = a.getsockname()[1], b.getsockname()[1]

    def healthz() -> tuple[int | None, str]:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            status, body = resp.status, resp.read().decode()
            conn.close()
            return status, json.loads(body).get("reason", "") if status == 503 else ""
        except (OSError, ValueError):
            return None, ""

    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with open("/dev/full", "w") as full:
        proc = subprocess.Popen([sys.executable, "-m", "edge_runtime", "--model", str(int8_model), "--headless",
                                 "--source", f"http://127.0.0.1:{camera_port}/stream.mjpg", "--stream-timeout", "1",
                                 "--serve", f"127.0.0.1:{port}"], cwd=ROOT, env=buffered,
                                stdout=subprocess.DEVNULL, stderr=full)
    camera = None
    try:
        wait_for(lambda: healthz()[1].startswith("waiting for the source") or proc.poll() is not None, 90,
                 "the service waiting for its source (its start-up attempts failed)")
        assert proc.poll() is None, proc.returncode
        time.sleep(1)  # past the first round's warning ("trying again in 5 s"), said as the wait begins
        camera = MjpegServer(clip_jpegs(sample_clip, 30), [("loop", 0)], port=camera_port)
        wait_for(lambda: healthz()[0] == 200 or proc.poll() is not None, 60, "frames of the stream that came")
        assert proc.poll() is None, proc.returncode
    finally:
        if camera:
            camera.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_a_source_missing_for_long_is_said_at_rounds_1_2_4_8_only(int8_model):
    """Waiting under --serve for a stream that is not there said three lines a round (two start-up retries and
    the wait), a round a minute: 130,000 lines a month into the journal for a camera unplugged at a remote site.
    Now the rounds after the first make one attempt each, and only rounds 1, 2, 4, 8... are said."""
    camera = SilentServer()  # accepts and never answers: each attempt is given up after --stream-timeout
    rt = Runtime(int8_model, camera.url, "--stream-timeout", "1")
    try:
        wait_for(lambda: "trying again in 10 s" in rt.stderr, 60, "the second round")
        second = len(camera.accepted)
        wait_for(lambda: len(camera.accepted) > second, 30, "the third round")
        time.sleep(2)  # its attempt given up, as its wait begins
    finally:
        assert rt.stop() == 0, rt.stderr
        camera.close()
    said = [line for line in rt.lines if camera.url in line]
    assert len(said) == 4, rt.stderr  # round 1: two retries and the wait; round 2: the wait; round 3: nothing
    assert second == 4 and "(1 attempt, given up to 1 s for video" in said[-1], rt.stderr
