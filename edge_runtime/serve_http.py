"""The HTTP side of the device service (:mod:`edge_runtime.serve`): a threaded server from the standard
library that counts its connections and refuses those over the cap at once, and a handler that reads a
bounded request head, answers only the fixed routes (GET/HEAD) and streams MJPEG and server-sent events.
"""
from __future__ import annotations

import http.server
import io
import json
import logging
import re
import select
import socket
import socketserver
import sys
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .serve import METRICS_MISSING, Service

log = logging.getLogger(__name__)

MAX_REQUEST_LINE = 2048  # bytes; longer gets 414
MAX_HEADER_LINE = 8192  # bytes per header line; longer gets 431
MAX_HEADERS = 64  # header lines; more gets 431
MAX_HEAD = 16384  # bytes of all header lines together; more gets 431
# bytes the kernel may hold for one stream client: a few video frames, a few seconds of /events records (at
# 256 KiB a client that stopped reading /events held its slot for 70 s before the write timeout began)
STREAM_SEND_BUFFER = {"mjpeg": 256 * 1024, "events": 16 * 1024}
_REQUEST_LINE = re.compile(rb"^[A-Z]{1,16} /\S* HTTP/1\.[01]\r?\n$")


class _HeadError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Handler(http.server.BaseHTTPRequestHandler):
    """Fixed routes, bounded request head, GET/HEAD only; errors are 4xx with a JSON body."""

    server: "Server"
    server_version = "edge_runtime"
    sys_version = ""
    disable_nagle_algorithm = True
    ROUTES = {"/": "_page", "/index.html": "_page", "/stream.mjpg": "_mjpeg", "/events": "_events",
              "/predictions": "_predictions", "/model": "_model", "/metrics": "_metrics", "/healthz": "_healthz"}
    PUBLIC = {"/healthz"}

    def setup(self) -> None:
        self.timeout = self.server.service.opts.head_timeout
        super().setup()

    def handle(self) -> None:  # one request per connection (HTTP/1.0 semantics)
        self.close_connection = True
        self.requestline, self.request_version, self.command = "", "HTTP/1.0", None
        try:
            self.handle_one_request()
        except (OSError, ValueError) as e:  # a client that went away or stalled: nothing to answer
            log.debug("client %s: %s", self.client_address, e)

    def handle_one_request(self) -> None:
        try:
            line, head = self._read_head()
        except _HeadError as e:
            self._error(e.status, str(e))
            return
        except OSError:
            return  # never sent a whole request in time (or went away): close
        finally:
            self.server.head_done(self.connection)
        if not line:
            return
        if not _REQUEST_LINE.match(line):
            self._error(400, "malformed request line")
            return
        self.raw_requestline = line
        # parse_request reads the (already bounded) headers from here
        self._socket_rfile, self.rfile = self.rfile, io.BytesIO(head)
        if not self.parse_request():
            return
        if self.command not in ("GET", "HEAD"):
            self._error(405, f"method {self.command} not allowed: GET or HEAD expected", {"Allow": "GET, HEAD"})
            return
        url = urlsplit(self.path)
        handler = self.ROUTES.get(url.path)
        if handler is None:
            self._error(404, "no such route; the routes are /, /stream.mjpg, /events, /predictions, /model, "
                             "/metrics and /healthz")
            return
        svc = self.server.service
        if not svc.host_allowed(self.headers.get("Host")):
            self._error(403, "Host not allowed: this server listens on a loopback address (use localhost)")
            return
        try:
            query = parse_qs(url.query, max_num_fields=8)
        except ValueError:
            self._error(400, "too many query parameters")
            return
        if url.path not in self.PUBLIC and not svc.authorized(self.headers, query):
            self._error(401, "missing or wrong token: send 'Authorization: Bearer TOKEN' or ?token=TOKEN",
                        {"WWW-Authenticate": 'Bearer realm="edge_runtime"'})
            return
        stream = handler in ("_mjpeg", "_events")
        route = url.path.lstrip("/") if stream else "other"
        if not svc.enter(route, stream):
            self._error(503, f"too many clients: at most {svc.opts.max_clients} streams", {"Retry-After": "5"})
            return
        try:
            getattr(self, handler)()
        finally:
            svc.leave(route, stream)

    def finish(self) -> None:
        super().finish()
        if getattr(self, "_socket_rfile", None) is not None:
            self._socket_rfile.close()

    def _read_head(self) -> tuple[bytes, bytes]:
        line = self.rfile.readline(MAX_REQUEST_LINE + 1)
        if len(line) > MAX_REQUEST_LINE:
            raise _HeadError(414, f"request line over {MAX_REQUEST_LINE} bytes")
        if not line:
            return b"", b""
        head = bytearray()
        for _ in range(MAX_HEADERS + 1):
            h = self.rfile.readline(MAX_HEADER_LINE + 1)
            if len(h) > MAX_HEADER_LINE:
                raise _HeadError(431, f"header line over {MAX_HEADER_LINE} bytes")
            head += h
            if len(head) > MAX_HEAD:
                raise _HeadError(431, f"headers over {MAX_HEAD} bytes")
            if h in (b"\r\n", b"\n", b""):
                return line, bytes(head)
        raise _HeadError(431, f"more than {MAX_HEADERS} header lines")

    # -- responses ------------------------------------------------------------------------------
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (stdlib's signature)
        log.debug("%s %s", self.client_address[0], format % args)

    def _headers(self, status: int, content_type: str, length: int | None, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Connection", "close")
        self.end_headers()

    def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
        self._headers(status, content_type, len(body), extra)
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's own refusals (in parse_request) as the same JSON error line."""
        self.close_connection = True
        self._error(code, message or self.responses.get(code, ("error",))[0])

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode() + b"\n", "application/json")

    def _error(self, status: int, message: str, extra: dict | None = None) -> None:
        self._send(status, json.dumps({"error": message}).encode() + b"\n", "application/json", extra)

    def _page(self) -> None:
        self._send(200, self.server.service.page, "text/html; charset=utf-8", {
            "Content-Security-Policy": "default-src 'none'; img-src 'self'; connect-src 'self'; "
                                       "style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
                                       "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"})

    def _predictions(self) -> None:
        record = self.server.service.hub.record
        if record is None:
            self._json(503, {"error": "no frame classified yet"})
        else:
            self._json(200, record)

    def _model(self) -> None:
        self._json(200, self.server.service.model)

    def _healthz(self) -> None:
        status, body = self.server.service.health()
        self._json(status, body)

    def _metrics(self) -> None:
        metrics = self.server.service.metrics
        if metrics is None:
            self._error(404, METRICS_MISSING)
            return
        body, content_type = metrics.render(self.headers.get("Accept"))
        self._send(200, body, content_type)

    def _stream_start(self, content_type: str, kind: str) -> bool:
        svc = self.server.service
        self.connection.settimeout(svc.opts.write_timeout)
        # a bounded send buffer: a client that stops reading is found within seconds, not megabytes
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SEND_BUFFER[kind])
        self._headers(200, content_type, None)
        return self.command != "HEAD"

    def _write_or_drop(self, data: bytes) -> bool:
        try:
            self.wfile.write(data)
            return True
        except TimeoutError:
            self.server.service.client_dropped()
            log.info("dropped stream client %s: it took no data for %.0f s", self.client_address[0],
                     self.server.service.opts.write_timeout)
            return False
        except OSError:  # the client went away
            return False

    def _client_gone(self) -> bool:
        """The client closed its side (a stream client never sends anything after its request)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _mjpeg(self) -> None:
        hub = self.server.service.hub
        if not self._stream_start("multipart/x-mixed-replace; boundary=frame", "mjpeg"):
            return
        hub.add_viewer()
        try:
            if not self._write_or_drop(b"--frame\r\n"):
                return
            seq = 0
            while not hub.closed:
                seq, jpeg, record = hub.wait_jpeg(seq, timeout=1.0)
                if jpeg is None:
                    if self._client_gone():  # no frames (camera down): notice clients that left
                        return
                    continue
                # the boundary right after the frame tells the browser the part is complete; X-Frame
                # is the frame number of the result record drawn on it
                part = b"Content-Type: image/jpeg\r\nContent-Length: %d\r\nX-Frame: %d\r\n\r\n" % (
                    len(jpeg), record["frame"])
                if not self._write_or_drop(part + jpeg + b"\r\n--frame\r\n"):
                    return
        finally:
            hub.remove_viewer()

    def _events(self) -> None:
        """One message per classified frame, at most ``stream_fps`` per second; while a video viewer
        watches, the record of each video frame (so a page's labels match its picture)."""
        hub = self.server.service.hub
        if not self._stream_start("text/event-stream; charset=utf-8", "events") or \
                not self._write_or_drop(b"retry: 2000\n\n"):
            return
        seq, jpeg_seq, sent_frame, last_write = 0, 0, 0, time.monotonic()
        while not hub.closed:
            video = hub.viewers > 0
            if video:
                jpeg_seq, _, record = hub.wait_jpeg(jpeg_seq, timeout=1.0)  # paced by the encoder
            else:
                seq, record = hub.wait_record(seq, timeout=1.0)
            now = time.monotonic()
            if record is None or record["frame"] <= sent_frame:
                if record is None and self._client_gone():
                    return
                if now - last_write > 10:  # a comment line now and then finds clients that went away
                    if not self._write_or_drop(b": keep-alive\n\n"):
                        return
                    last_write = now
                continue
            if not self._write_or_drop(b"id: %d\ndata: %s\n\n" % (record["frame"], json.dumps(record).encode())):
                return
            sent_frame, last_write = record["frame"], now
            if not video:  # the interval from the end of this write: a client never gets two messages closer,
                hub.pause(hub.interval)  # even when this thread was held up between its clock and its write


class Server(http.server.ThreadingHTTPServer):
    """A threaded HTTP server that counts its connections and refuses those over the cap at once."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 16

    def __init__(self, service: Service) -> None:
        self.service = service
        # streams plus room for short requests (scrapes, health checks, the page itself)
        self.max_connections = 2 * service.opts.max_clients + 8
        self._conn_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._heads: dict[socket.socket, float] = {}  # still sending the request head: since when
        if ":" in service.opts.host:
            self.address_family = socket.AF_INET6
        super().__init__((service.opts.host, service.opts.port), Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host up in DNS (getfqdn); a device may have no DNS
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def process_request(self, request: socket.socket, client_address) -> None:
        with self._conn_lock:
            full = len(self._connections) >= self.max_connections
            if not full:
                self._connections.add(request)
                self._heads[request] = time.monotonic()
        if full:
            with self.service._count_lock:
                self.service.rejected += 1
            try:  # a short canned answer fits the socket buffer: never blocks the accept loop
                request.setblocking(False)
                request.recv(MAX_HEAD)  # what already arrived, so closing does not reset the answer away
            except OSError:
                pass
            try:
                request.settimeout(0.2)
                body = b'{"error": "too many connections"}\n'
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Retry-After: 5\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
                                % (len(body), body))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: socket.socket, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._conn_lock:
                self._connections.discard(request)
                self._heads.pop(request, None)

    def head_done(self, request: socket.socket) -> None:
        with self._conn_lock:
            self._heads.pop(request, None)

    def service_actions(self) -> None:
        """Called by serve_forever between polls: close connections whose request head takes longer
        than --client-timeout in total (a client sending a byte now and then never times out a read)."""
        limit = time.monotonic() - self.service.opts.head_timeout
        with self._conn_lock:
            late = [sock for sock, since in self._heads.items() if since < limit]
            for sock in late:
                del self._heads[sock]
        for sock in late:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close_connections(self) -> None:
        with self._conn_lock:
            conns = list(self._connections)
        for sock in conns:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address) -> None:  # one line, the traceback only with -v
        log.warning("error serving %s: %s", client_address[0], sys.exc_info()[1])
        log.debug("traceback", exc_info=True)
