"""Network streams and stop signals: a real local HTTP camera that stalls with
its connection open, drops, or never answers; SIGTERM and Ctrl-C end the runtime within 2 s in every
state, with the recording finished and no traceback."""
import json
import re
import signal

import cv2
import pytest

from realworld import MjpegServer, Process, SilentServer, clip_jpegs, video_frames, wait_for


@pytest.fixture(scope="module")
def jpegs(sample_clip):
    return clip_jpegs(sample_clip)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_while_a_stream_stalls_finishes_the_recording(int8_model, jpegs, tmp_path, sig):
    """The camera sends 30 frames, then keeps its TCP connection open and sends nothing."""
    server = MjpegServer(jpegs, [("stall", 30)])
    rec = tmp_path / "rec.mp4"
    try:
        run = Process("edge_runtime", "--source", server.url, "--model", int8_model, "--json", "--record", rec,
                      "--stream-timeout", 60)
        wait_for(lambda: server.sent == 30, 60, "the camera to send its 30 frames")
        wait_for(lambda: len(run.out) > 0, 30, "classified frames")
        elapsed = run.stop(sig)
    finally:
        server.close()
    assert elapsed < 2.0, elapsed
    assert run.proc.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr and "stopped by signal" in run.stderr
    assert json.loads(run.out[0])["top"][0]["label"] in ("orange", "lemon")  # the clip opens on an orange
    assert abs(_seconds_recorded([rec]) - _seconds_classified(run.out)) < 1.0  # up to the last frame received


def _seconds_classified(json_lines: list[str]) -> float:
    times = [json.loads(line)["time"] for line in json_lines]
    return times[-1] - times[0]


def _seconds_recorded(files: list) -> float:
    """The length of a recording (its files' frames over the frame rate the files state)."""
    total = 0.0
    for path in files:
        cap = cv2.VideoCapture(str(path))
        fps = cap.get(cv2.CAP_PROP_FPS)
        cap.release()
        total += video_frames(path) / fps
    return total


def test_a_live_recording_keeps_real_time(int8_model, jpegs, tmp_path):
    """A stream that states 25 FPS (FFmpeg's figure for MJPEG) and sends 5, as a camera slower than it says or
    a device slower than its camera: the recording is 25 FPS with each frame placed by the time it arrived
    (repeated until the next), so it lasts as long as the frames took to come, and --record-segment cuts it
    by time. (It was one frame per classified frame at the stated rate: 5 s of stream played in 1 s.)"""
    server = MjpegServer(jpegs, [("loop", 0)], fps=5)
    try:
        run = Process("edge_runtime", "--source", server.url, "--model", int8_model, "--json",
                      "--record", tmp_path / "live.mkv", "--record-segment", 1, "--max-frames", 25)
        rc = run.wait(90)
    finally:
        server.close()
    assert rc == 0, run.stderr
    files = sorted(tmp_path.glob("live-*.mkv"))
    assert [cv2.VideoCapture(str(f)).get(cv2.CAP_PROP_FPS) for f in files] == [25.0] * len(files)
    frames = [video_frames(f) for f in files]
    assert frames[:-1] == [25] * (len(files) - 1) and 0 < frames[-1] <= 25, frames  # 1 s each
    assert _seconds_classified(run.out) > 3  # 25 frames at 5 FPS: about 5 s
    assert abs(_seconds_recorded(files) - _seconds_classified(run.out)) < 1.0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_during_start_up_against_a_silent_server(int8_model, tmp_path, sig):
    """The server accepts the connection and never answers: the runtime is still opening it."""
    server = SilentServer()
    try:
        run = Process("edge_runtime", "--source", server.url, "--model", int8_model, "--headless",
                      "--record", tmp_path / "rec.mp4")
        wait_for(lambda: server.accepted, 30, "the runtime to connect")
        elapsed = run.stop(sig)
    finally:
        server.close()
    assert elapsed < 2.0, elapsed
    assert run.proc.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    assert "stopped by signal while opening the source" in run.stderr
    assert not list(tmp_path.iterdir())  # nothing recorded, nothing left behind


def _with_password(url: str) -> tuple[str, str]:
    """The server's URL with a user and password in it, and the same URL as every message must show it."""
    return url.replace("http://", "http://admin:S3cret@"), url.replace("http://", "http://admin:***@")


@pytest.mark.parametrize("given", ["--source", "EDGE_RUNTIME_SOURCE"])
def test_silent_server_times_out_with_one_line(int8_model, given):
    """The URL's password never reaches a log line or the error (journald keeps them); OpenCV gets the real
    URL (the camera's server is reached, with the user and password). Given as $EDGE_RUNTIME_SOURCE, it is
    not in the process list either."""
    server = SilentServer()
    url, shown = _with_password(server.url)
    source, env = (["--source", url], None) if given == "--source" else ([], {"EDGE_RUNTIME_SOURCE": url})
    try:
        run = Process("edge_runtime", *source, "--model", int8_model, "--headless", "--stream-timeout", 1, env=env)
        rc = run.wait(60)
    finally:
        server.close()
    assert rc == 75 and "Traceback" not in run.stderr  # EX_TEMPFAIL: a service manager tries again later
    errors = [l for l in run.err if l.startswith("error:")]
    assert errors == [f"error: cannot open stream {shown} (3 attempts, each given up to 1 s for video: "
                      "--stream-timeout)"]
    assert "S3cret" not in run.stderr + "\n".join(run.out) and f"cannot open {shown} (attempt 1/3)" in run.stderr
    assert len(server.accepted) == 3  # three start-up attempts, each given up after its timeout


def test_capture_stops_while_the_stream_opens(tmp_path):
    """capture obeys SIGTERM while its stream is still opening, as the runtime does (it died with 143 and left
    an empty OUT/a); its --stream-timeout is the runtime's, and the password stays hidden in its lines too."""
    server = SilentServer()
    url, shown = _with_password(server.url)
    try:
        run = Process("edge_runtime", "capture", "--source", url, "--label", "a", "--out", tmp_path / "out")
        wait_for(lambda: server.accepted, 30, "capture to connect")
        run.stop(signal.SIGTERM)
        timed = Process("edge_runtime", "capture", "--source", url, "--label", "a", "--out", tmp_path / "out",
                        "--stream-timeout", 1)
        rc = timed.wait(60)
    finally:
        server.close()
    assert run.proc.returncode == 0 and run.err == ["stopped by signal while opening the source"], run.stderr
    assert rc == 75 and timed.err[-1] == (f"error: cannot open stream {shown} (3 attempts, each given up to 1 s "
                                          "for video: --stream-timeout)"), timed.stderr
    assert "S3cret" not in timed.stderr and len(server.accepted) == 4  # 1 + the 3 attempts of --stream-timeout 1
    assert not (tmp_path / "out").exists()  # nothing saved, no empty class folder left


def test_masked_hides_a_password_and_secret_query_values():
    from edge_runtime.sources import masked

    assert masked("rtsp://admin:S3cret@10.0.0.2:554/stream") == "rtsp://admin:***@10.0.0.2:554/stream"
    assert masked("rtsp://admin:p@ss/w@cam/s?x=1") == "rtsp://admin:***@cam/s?x=1"  # a raw '@' or '/' in it
    for raw in ("pa#ss", "pa?ss", "p#a?s/s@"):  # the whole URL was shown when a raw '#' or '?' was in it
        assert masked(f"rtsp://admin:{raw}@cam/s") == "rtsp://admin:***@cam/s", raw
    assert masked("http://cam/video.cgi?user=admin&password=abc&res=hd&Token=t") == \
        "http://cam/video.cgi?user=admin&password=***&res=hd&Token=***"
    for plain in ("rtsp://cam/stream", "rtsp://viewer@cam/stream", "clip.mp4", "photos/a:b@c.jpg"):
        assert masked(plain) == plain


@pytest.mark.parametrize("failure", ["send", "stall"])
def test_a_dropped_or_stalled_stream_is_a_reconnect(int8_model, jpegs, failure):
    """The connection closes (send) or goes silent (stall) after 20 frames; the runtime says so as a
    warning, reconnects, counts it, and goes on classifying."""
    server = MjpegServer(jpegs, [(failure, 20)])
    try:
        run = Process("edge_runtime", "--source", server.url, "--model", int8_model, "--json",
                      "--stream-timeout", 2, "--max-frames", 40)  # 1 s: a starved thread could time out too
        rc = run.wait(90)
    finally:
        server.close()
    assert rc == 0, run.stderr
    assert server.connections == 2 and len(run.out) == 40
    assert any("WARNING" in l and "stopped delivering frames" in l for l in run.err), run.stderr
    assert "reconnects: 1;" in run.stderr and "Traceback" not in run.stderr


def test_a_source_is_required_from_a_flag_or_the_environment(capsys):
    from edge_runtime.cli import build_parser, parse_with_source

    with pytest.raises(SystemExit) as e:
        parse_with_source(build_parser(), ["--headless"], environ={})
    assert e.value.code == 2 and capsys.readouterr().err.strip().endswith(
        "error: one of the arguments --camera --source is required (or $EDGE_RUNTIME_SOURCE)")
    assert parse_with_source(build_parser(), ["--camera", "0"], environ={"EDGE_RUNTIME_SOURCE": "x.mp4"}).source is None


def test_a_stream_that_drops_every_connection_backs_off_and_says_so_in_few_lines(int8_model, jpegs):
    """A camera that drops every connection after one frame (its client limit, a snapshot URL): each reconnect
    held for one frame, so the runtime reconnected at once, for ever, with three warning lines per frame (75 a
    second into the journal, 25 connections a second to the camera). Now reconnects that fail again within
    30 s are one outage: its back-off goes on growing and only attempts 1, 2, 4, 8... are said."""
    server = MjpegServer(jpegs, [("send", 1)] * 1000)
    try:
        run = Process("edge_runtime", "--source", server.url, "--model", int8_model, "--json", "--stream-timeout", 2)
        wait_for(lambda: server.connections >= 6, 60, "six connections")  # about 7.5 s: 0.5 + 1 + 2 + 4
        run.stop(signal.SIGTERM)
    finally:
        server.close()
    assert run.proc.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    warnings = [line for line in run.err if "WARNING" in line]
    # stopped delivering, reopening (attempt 1), reconnected; failed again at attempts 2 and 4 (was 15 lines)
    assert len(warnings) <= 5, run.stderr
    assert "failed again 0 s after reconnecting (3 reconnects in" in warnings[-1], run.stderr
    assert int(re.search(r"reconnects: (\d+);", run.stderr)[1]) >= 5 and len(run.out) >= 5


def test_a_stream_that_drops_every_few_seconds_is_reopened_at_once_in_few_lines(int8_model, jpegs):
    """A camera that ends each session after 2 s of video (30 frames at 15 FPS) is reopened at once, as before:
    only a connection that held for less than the back-off waits it out; its lines stay few all the same."""
    server = MjpegServer(jpegs, [("send", 30)] * 1000, fps=15)
    try:
        run = Process("edge_runtime", "--source", server.url, "--model", int8_model, "--json", "--stream-timeout", 2)
        wait_for(lambda: server.connections >= 6, 120, "six connections")
        run.stop(signal.SIGTERM)
    finally:
        server.close()
    assert run.proc.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    warnings = [line for line in run.err if "WARNING" in line]
    assert len(warnings) <= 5, run.stderr  # was 15
    assert all("failed again 2 s after" in line for line in warnings[3:]), run.stderr
    times = [json.loads(line)["time"] for line in run.out]
    assert max(b - a for a, b in zip(times, times[1:])) < 3.0  # no back-off pause (the fifth would be 4 s)
