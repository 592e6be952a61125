"""Headless device service: the live annotated view in a browser, metrics for Prometheus, health.

``python -m edge_runtime --camera 0 --serve 8080`` serves, with the standard library's threaded HTTP
server, a fixed set of routes (nothing else exists: no file serving, no path to traverse):

- ``/``              one static page (``web/index.html``, no build step, no CDN), usable on a phone
- ``/stream.mjpg``   the annotated frames as MJPEG (multipart/x-mixed-replace)
- ``/predictions``   the latest result record as JSON (the ``--json`` line's schema)
- ``/events``        server-sent events: one message per classified frame, at most ``stream_fps``
                     per second (the newest record; ``frame`` says which frames were skipped; while
                     an MJPEG viewer watches, the record of each frame it is sent)
- ``/model``         the model's name, input size, classes, interpreter and sha256 as JSON
- ``/metrics``       Prometheus exposition (needs the optional ``prometheus_client`` package)
- ``/healthz``       200 while frames flow, 503 with a JSON reason while the camera is down

The inference loop never waits for a viewer: :meth:`Service.publish` (the loop's observer) only
swaps the newest frame and record into a slot under a lock. One encoder thread draws the overlay and
encodes JPEG only while an MJPEG client watches, at most ``stream_fps`` times per second, once for all
clients; each client thread sends the newest JPEG and a client that does not take it within
``write_timeout`` is dropped. Security: 127.0.0.1 by default; with a token every route except
``/healthz`` requires it (``Authorization: Bearer TOKEN`` or ``?token=TOKEN``, compared in constant
time); request lines and headers are bounded; connections and streams are counted and capped.
"""
from __future__ import annotations

import collections
import hashlib
import hmac
import ipaddress
import logging
import re
import statistics
import threading
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import cv2
import numpy as np

from .classify import Prediction
from .fileio import tell
from .overlay import draw

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
METRICS_MISSING = "metrics disabled: the optional prometheus_client package is not installed " \
                  "(pip install prometheus_client)"
_LOOPBACK_NAMES = {"localhost", "localhost.", "ip6-localhost"}


class ServeError(ValueError):
    """A serving option is malformed (the message says what is expected)."""


@dataclass
class ServeOptions:
    """How the service listens and how much it may send.

    Attributes:
        host, port: address to listen on (port 0 picks a free one).
        token: required on every route except ``/healthz`` when set.
        max_clients: simultaneous streams (MJPEG and ``/events``); more get 503.
        stream_fps: most MJPEG frames and ``/events`` messages per second and client.
        jpeg_quality: 1..100.
        write_timeout: a client that takes no data for this long is dropped (seconds).
        head_timeout: a client must send its request line and headers within this time (seconds).
        stall_seconds: ``/healthz`` turns 503 when no frame was classified for this long (at least;
            three frame intervals for slow sources).
    """

    host: str = DEFAULT_HOST
    port: int = 8080
    token: str | None = None
    max_clients: int = 4
    stream_fps: float = 15.0
    jpeg_quality: int = 75
    write_timeout: float = 5.0
    head_timeout: float = 5.0
    stall_seconds: float = 2.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ServeError(f"port {self.port}: 0..65535 expected")
        if not 1 <= self.max_clients <= 64:
            raise ServeError(f"--max-clients {self.max_clients}: 1..64 expected")
        if not 0.1 <= self.stream_fps <= 120:
            raise ServeError(f"--stream-fps {self.stream_fps}: 0.1..120 expected")
        if not 1 <= self.jpeg_quality <= 100:
            raise ServeError(f"--jpeg-quality {self.jpeg_quality}: 1..100 expected")
        if not (0.1 <= self.write_timeout <= 600 and 0.1 <= self.head_timeout <= 600):
            raise ServeError(f"--client-timeout {self.write_timeout}: 0.1..600 seconds expected")
        if self.token is not None and not (8 <= len(self.token) <= 256 and self.token.isascii()
                                           and self.token.isprintable() and " " not in self.token):
            raise ServeError(f"--token (or EDGE_RUNTIME_TOKEN) of {len(self.token)} characters: 8..256 printable ASCII characters without "
                             "spaces expected (what a browser and an Authorization header carry)")

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def parse_address(text: str) -> tuple[str, int]:
    """``[HOST:]PORT`` (``8080``, ``0.0.0.0:8080``, ``[::1]:8080``) as (host, port).

    Raises:
        ServeError: not of that form.
    """
    m = re.fullmatch(r"(?:\[([0-9A-Fa-f:.]+)\]:|([A-Za-z0-9.\-]+):)?(\d{1,5})", text.strip())
    if not m or int(m.group(3)) > 65535:
        raise ServeError(f"--serve {text!r}: [HOST:]PORT expected, e.g. 8080, 0.0.0.0:8080 or [::1]:8080")
    return m.group(1) or m.group(2) or DEFAULT_HOST, int(m.group(3))


def is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def model_summary(classifier) -> dict[str, Any]:
    """What the page and the model info metric show about the model (from its embedded metadata)."""
    h, w = classifier.preprocessing.input_size
    # the bytes that run, read once at start: not the file, which an update may have replaced since
    return {"name": classifier.info.model_name, "file": classifier.path.name,
            "sha256": hashlib.sha256(classifier.model_bytes).hexdigest(),
            "input_size": [h, w], "classes": classifier.num_classes, "interpreter": classifier.backend}


class FrameHub:
    """The latest-value slot between the loop and the viewers, and the shared JPEG encoder.

    ``publish`` (the loop) takes a lock for a few assignments and wakes only threads that are
    waiting for a new frame; everything else happens on the viewers' threads.
    """

    def __init__(self, stream_fps: float, jpeg_quality: int) -> None:
        self.interval, self.quality = 1.0 / stream_fps, jpeg_quality
        self._lock = threading.Lock()
        self._new_frame = threading.Condition(self._lock)  # publish -> encoder, event streams
        self._new_jpeg = threading.Condition(self._lock)  # encoder -> MJPEG clients
        self._waiting = 0  # threads waiting on _new_frame: publish notifies only when > 0
        self.seq, self.frame, self.record, self.annotated = 0, None, None, False
        self.published_at = 0.0  # time.monotonic() of the latest frame
        self.jpeg, self.jpeg_record, self.jpeg_seq, self.jpegs = None, None, 0, 0
        self.viewers = 0  # MJPEG clients
        self.closed = False
        self._closed_event = threading.Event()
        self._encoder = threading.Thread(target=self._encode_loop, name="serve:encoder", daemon=True)
        self._encoder.start()

    def publish(self, frame: np.ndarray, record: dict, annotated: bool) -> None:
        with self._lock:
            self.frame, self.record, self.annotated = frame, record, annotated
            self.seq += 1
            self.published_at = time.monotonic()
            if self._waiting:
                self._new_frame.notify_all()

    def wait_record(self, after: int, timeout: float) -> tuple[int, dict | None]:
        """The newest (seq, record) once it is newer than ``after``; (after, None) on timeout/close."""
        with self._lock:
            self._waiting += 1
            try:
                self._new_frame.wait_for(lambda: self.closed or self.seq > after, timeout)
            finally:
                self._waiting -= 1
            if self.closed or self.seq <= after:
                return after, None
            return self.seq, self.record

    def add_viewer(self) -> None:
        with self._lock:
            if self.viewers == 0:
                self.jpeg = None  # never show a stale frame to a new viewer
            self.viewers += 1
            self._new_frame.notify_all()

    def remove_viewer(self) -> None:
        with self._lock:
            self.viewers -= 1

    def wait_jpeg(self, after: int, timeout: float) -> tuple[int, bytes | None, dict | None]:
        """The newest encoded frame and its record once newer than ``after``; (after, None, None) on
        timeout or close."""
        with self._lock:
            fresh = lambda: self.jpeg is not None and self.jpeg_seq > after  # noqa: E731
            self._new_jpeg.wait_for(lambda: self.closed or fresh(), timeout)
            if self.closed or not fresh():
                return after, None, None
            return self.jpeg_seq, self.jpeg, self.jpeg_record

    def _encode_loop(self) -> None:
        done = 0
        while True:
            with self._lock:
                while not self.closed and not (self.viewers > 0 and self.seq > done):
                    if self.viewers == 0:
                        self._new_frame.wait()  # add_viewer or close wakes it; publish does not
                        continue
                    self._waiting += 1
                    self._new_frame.wait()
                    self._waiting -= 1
                if self.closed:
                    return
                done, frame, record, annotated = self.seq, self.frame, self.record, self.annotated
            started = time.monotonic()
            if not annotated:  # the loop did not draw (no window, no recording): draw on a copy here
                preds = [Prediction(t["index"], t["label"], t["score"]) for t in record["top"]]
                frame = draw(frame.copy(), preds, record["inference_ms"], record["fps"])
            ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            if ok:
                with self._lock:
                    self.jpeg, self.jpeg_record, self.jpeg_seq = buf.tobytes(), record, self.jpeg_seq + 1
                    self.jpegs += 1
                    self._new_jpeg.notify_all()
            self.pause(self.interval - (time.monotonic() - started))  # the frame-rate cap

    def pause(self, seconds: float) -> None:
        """Sleep up to ``seconds``, returning early when the hub closes."""
        if seconds > 0:
            self._closed_event.wait(seconds)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._closed_event.set()
            self._new_frame.notify_all()
            self._new_jpeg.notify_all()
        self._encoder.join(timeout=2)


class _Metrics:
    """Prometheus metrics on a private registry; None when prometheus_client is not installed."""

    BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

    @classmethod
    def create(cls, service: "Service") -> "_Metrics | None":
        try:
            return cls(service)
        except ImportError:  # prometheus_client is optional (pure Python, the `metrics` extra)
            return None

    def __init__(self, service: "Service") -> None:
        from prometheus_client import CollectorRegistry, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        self.inference = Histogram(
            "edge_runtime_inference_seconds", "Resize/crop into the input tensor and invoke, per frame "
            "(inference_ms of the result record)", buckets=self.BUCKETS, registry=self.registry)
        self.frame_interval = Histogram(
            "edge_runtime_frame_interval_seconds", "End to end: time between consecutive classified frames "
            "(everything the loop does per frame)", buckets=self.BUCKETS, registry=self.registry)
        self.registry.register(_StateCollector(service))

    def observe(self, inference_s: float, interval_s: float | None) -> None:
        self.inference.observe(inference_s)
        if interval_s is not None:
            self.frame_interval.observe(interval_s)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


class _StateCollector:
    """Counters and gauges read from the service and the source at scrape time."""

    def __init__(self, service: "Service") -> None:
        self.service = service

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        s, src = self.service, getattr(self.service.source, "stats", None)

        def counter(name: str, doc: str, value: float):
            return CounterMetricFamily(f"edge_runtime_{name}", doc, value=value)

        yield counter("frames", "Frames classified", s.frames)
        yield counter("camera_reconnects", "Successful reopenings of the camera or stream after a failure",
                      getattr(src, "reconnects", 0))
        yield counter("corrupt_frames", "Frames that decoded to nothing usable and were skipped",
                      getattr(src, "corrupt", 0))
        yield counter("dropped_frames", "Camera frames replaced by a newer one before inference took them",
                      getattr(src, "dropped", 0))
        yield counter("stream_frames", "JPEG frames encoded for MJPEG viewers", s.hub.jpegs)
        yield counter("clients_rejected", "Connections refused because the client limit was reached",
                      s.rejected)
        yield counter("clients_dropped", "Stream clients dropped because they stopped taking data", s.dropped)
        fps = GaugeMetricFamily("edge_runtime_fps", "Current frames per second (moving average; 0 while "
                                                    "/healthz says down)")
        fps.add_metric([], s.hub.record["fps"] if s.health()[0] == 200 else 0.0)
        yield fps
        clients = GaugeMetricFamily("edge_runtime_clients", "Clients connected", labels=["route"])
        for route, n in sorted(s.client_counts().items()):
            clients.add_metric([route], n)
        yield clients
        healthy = GaugeMetricFamily("edge_runtime_healthy", "1 while frames flow (as /healthz), else 0")
        healthy.add_metric([], 1.0 if s.health()[0] == 200 else 0.0)
        yield healthy
        last = GaugeMetricFamily("edge_runtime_last_frame_timestamp_seconds", "Unix time of the latest result")
        last.add_metric([], s.hub.record["time"] if s.hub.record else 0.0)
        yield last
        info = InfoMetricFamily("edge_runtime_model", "The model being run")
        m = s.model
        info.add_metric([], {"name": m["name"], "sha256": m["sha256"], "classes": str(m["classes"]),
                             "interpreter": m["interpreter"],
                             "input_size": f"{m['input_size'][0]}x{m['input_size'][1]}"})
        yield info


class FramePace:
    """The pace of classified frames, for ``/healthz``: how long without one means the camera is down."""

    def __init__(self, stall_seconds: float, window: int = 25) -> None:
        self.stall_seconds = stall_seconds
        self.intervals: collections.deque[float] = collections.deque(maxlen=window)
        self._last: float | None = None

    def tick(self, now: float) -> float | None:
        """A frame was classified at ``now`` (monotonic seconds); returns the interval since the last one."""
        interval = None if self._last is None else now - self._last
        self._last = now
        if interval is not None:
            self.intervals.append(interval)
        return interval

    def stall_limit(self) -> float:
        """Seconds without a classified frame that mean down: ``stall_seconds``, or three typical frame
        intervals of a slow source. Typical is the median of the recent intervals, so the gaps of outages
        (a few long intervals among many short ones) never stretch it, while a camera that is slow all
        the time is not called down between its frames."""
        return max(self.stall_seconds, 3 * statistics.median(self.intervals)) if self.intervals else self.stall_seconds


class Service:
    """The HTTP service for one running loop.

    Args:
        classifier: the loaded :class:`~edge_runtime.classify.Classifier` (model facts for the page).
        source: the frame source (its ``stats`` feed reconnect/corrupt/dropped counters and health; None
            while it opens: set it then, and ``waiting`` to why it is not open meanwhile).
        opts: :class:`ServeOptions`.

    Use :meth:`publish` as the loop's observer, :meth:`start` before the loop and :meth:`close` after.
    """

    def __init__(self, classifier, source, opts: ServeOptions) -> None:
        self.opts, self.source = opts, source
        self.waiting: str | None = None  # why the source is not open yet (the command line sets it)
        self.model = model_summary(classifier)
        self.page = resources.files(__package__).joinpath("web/index.html").read_bytes()
        self.frames, self.rejected, self.dropped = 0, 0, 0
        self.pace = FramePace(opts.stall_seconds)
        self._clients: dict[str, int] = {}
        self._streams = 0
        self._count_lock = threading.Lock()
        self._token_digest = hashlib.sha256(opts.token.encode()).digest() if opts.token else None
        self.server = None  # serve_http.Server while started
        self._thread: threading.Thread | None = None
        self.hub = FrameHub(opts.stream_fps, opts.jpeg_quality)
        self.metrics = _Metrics.create(self)

    # -- the loop's side: never blocks ---------------------------------------------------------
    def publish(self, frame: np.ndarray, record: dict, annotated: bool) -> None:
        """The loop's observer (see :data:`edge_runtime.app.Observer`): returns at once."""
        interval = self.pace.tick(time.monotonic())
        self.frames += 1
        self.hub.publish(frame, record, annotated)
        if self.metrics:
            self.metrics.observe(record["inference_ms"] / 1000.0, interval)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> str:
        """Listen and serve in a background thread; returns the URL.

        Raises:
            OSError: the address cannot be bound (in use, not local, no permission).
        """
        from .serve_http import Server  # http.server and email load only when serving

        self.server = Server(self)
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="serve:http", daemon=True)
        self._thread.start()
        return self.url

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{port}/"

    def close(self) -> None:
        """Stop listening, end every stream, close every client connection."""
        self.hub.close()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server.close_connections()
            self._thread.join(timeout=2)
            self.server = None

    # -- state the handlers read ------------------------------------------------------------------
    def health(self) -> tuple[int, dict]:
        """(200, {...}) while frames flow, (503, {"status": "down", "reason": ...}) otherwise."""
        reconnects = getattr(getattr(self.source, "stats", None), "reconnects", 0)
        with self.hub._lock:
            seq, published_at, record = self.hub.seq, self.hub.published_at, self.hub.record
        if seq == 0:
            reason = f"waiting for the source: {self.waiting}" if self.waiting else "starting: no frame classified yet"
            return 503, {"status": "down", "reason": reason, "reconnects": reconnects}
        age = time.monotonic() - published_at
        if age > self.pace.stall_limit():
            return 503, {"status": "down", "reason": f"no frame classified for {age:.1f} s: the camera is down, "
                                                     f"reconnecting or stalled", "frame": record["frame"],
                         "age_seconds": round(age, 3), "reconnects": reconnects}
        return 200, {"status": "ok", "frame": record["frame"], "fps": record["fps"], "age_seconds": round(age, 3),
                     "reconnects": reconnects}

    def client_counts(self) -> dict[str, int]:
        with self._count_lock:
            return {r: self._clients.get(r, 0) for r in ("stream.mjpg", "events", "other")}

    def enter(self, route: str, stream: bool) -> bool:
        """Count a client in; False when it is a stream over ``max_clients``."""
        with self._count_lock:
            if stream:
                if self._streams >= self.opts.max_clients:
                    self.rejected += 1
                    return False
                self._streams += 1
            self._clients[route] = self._clients.get(route, 0) + 1
            return True

    def client_dropped(self) -> None:
        with self._count_lock:
            self.dropped += 1

    def leave(self, route: str, stream: bool) -> None:
        with self._count_lock:
            self._clients[route] -= 1
            if stream:
                self._streams -= 1

    def authorized(self, headers, query: dict[str, list[str]]) -> bool:
        if self._token_digest is None:
            return True
        given = None
        auth = headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        elif query.get("token"):
            given = query["token"][0]
        if given is None:
            return False
        # equal-length digests: the comparison's time says nothing about the token or its length
        return hmac.compare_digest(hashlib.sha256(given.encode("utf-8", "replace")).digest(), self._token_digest)

    def host_allowed(self, host_header: str | None) -> bool:
        """Without a token on a loopback address, only loopback Host names (against DNS rebinding)."""
        if self._token_digest is not None or not self.opts.loopback:
            return True
        if not host_header:
            return False
        host = host_header.strip()
        if host.startswith("["):
            host = host[1:host.find("]")] if "]" in host else host
        else:
            host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        return is_loopback(host)


def start(classifier, source, opts: ServeOptions, err=None) -> Service:
    """Create and start the service, printing warnings, then where it listens, to ``err`` (default stderr;
    a log on a full card loses the lines, never the service).

    Raises:
        OSError: the address cannot be bound.
    """
    service = Service(classifier, source, opts)
    if service.metrics is None:
        tell(f"warning: {METRICS_MISSING}", err)
    if not opts.loopback and not opts.token:
        tell(f"warning: listening on {opts.host} without --token: anyone who can reach this address can "
             "watch the camera; set --token (or EDGE_RUNTIME_TOKEN)", err)
    url = service.start()
    tell(f"serving on {url}", err)  # last: tools wait for this line
    return service


def add_arguments(parser) -> None:
    """The service's flags, in their own group of ``python -m edge_runtime``."""
    g = parser.add_argument_group("web view, metrics and health (--serve)")
    g.add_argument("--serve", metavar="[HOST:]PORT",
                   help=f"serve the live view (/), MJPEG (/stream.mjpg), results (/predictions, /events), "
                        f"Prometheus metrics (/metrics) and health (/healthz) on this address; HOST defaults to "
                        f"{DEFAULT_HOST} (use 0.0.0.0:PORT with --token to reach it from the network)")
    g.add_argument("--token", default=None,
                   help="require this token (8..256 printable ASCII characters, no spaces) on every route "
                        "except /healthz, as 'Authorization: Bearer TOKEN' or ?token=TOKEN (default: "
                        "$EDGE_RUNTIME_TOKEN; the variable keeps it out of the process list)")
    g.add_argument("--max-clients", type=int, default=None,
                   help=f"simultaneous streams (MJPEG or /events) served; more get 503; an open page uses "
                        f"two (default {ServeOptions.max_clients})")
    g.add_argument("--stream-fps", type=float, default=None,
                   help=f"most MJPEG frames and /events messages per second per client "
                        f"(default {ServeOptions.stream_fps:g})")
    g.add_argument("--client-timeout", type=float, default=None,
                   help=f"seconds a client may take to send its request, or to take data from a stream, "
                        f"before it is dropped (default {ServeOptions.write_timeout:g})")
    g.add_argument("--jpeg-quality", type=int, default=None,
                   help=f"JPEG quality of the MJPEG stream, 1..100 (default {ServeOptions.jpeg_quality})")


def options_from_args(args, environ=None) -> ServeOptions:
    """ServeOptions from parsed flags (``--token`` falls back to ``$EDGE_RUNTIME_TOKEN``), or None
    without ``--serve``.

    Raises:
        ServeError: a malformed address, an option out of range, or a serving flag without ``--serve``.
    """
    import os

    given = {f: getattr(args, f) for f in ("token", "max_clients", "stream_fps", "jpeg_quality", "client_timeout")
             if getattr(args, f) is not None}
    if not args.serve:
        if given:
            raise ServeError(f"--{next(iter(given)).replace('_', '-')} applies only with --serve [HOST:]PORT")
        return None
    host, port = parse_address(args.serve)
    if "token" not in given:
        given["token"] = (environ if environ is not None else os.environ).get("EDGE_RUNTIME_TOKEN") or None
    timeout = given.pop("client_timeout", None)
    if timeout is not None:
        given["write_timeout"] = given["head_timeout"] = timeout
    return ServeOptions(host=host, port=port, **given)
