"""Recordings survive full storage, read-only folders, kill -9 and frames of changing size, with the
real runtime on the real clip and photos."""
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import termios
import time

import cv2
import pytest

from realworld import ROOT, Process, one_error_line, run_module, small_filesystem, video_frames, wait_for


def _runtime(*args):
    return run_module("edge_runtime", *args)


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_full_storage_keeps_the_earlier_recording(int8_model, sample_clip, tmp_path, suffix):
    """An SD card that fills up while recording: one line, a non-zero exit, the earlier recording
    untouched, and the frames recorded before the card filled kept in a playable file."""
    with small_filesystem(tmp_path / "sd", "2m") as sd:
        rec = sd / f"rec{suffix}"
        first = _runtime("--source", sample_clip, "--model", int8_model, "--headless", "--record", rec,
                         "--max-frames", 20)
        assert first.returncode == 0, first.stderr
        before = rec.read_bytes()
        assert video_frames(rec) == 20
        full = _runtime("--source", sample_clip, "--loop", "--model", int8_model, "--headless", "--record", rec,
                        "--max-frames", 5000)
        assert full.returncode == 1, full.stderr
        assert "storage full" in one_error_line(full)
        assert len(full.stderr.splitlines()) < 10  # no flood of writer warnings
        assert rec.read_bytes() == before  # the earlier recording is intact
        cut = sd / f"rec.incomplete{suffix}"
        frames = video_frames(cut)
        assert frames > 20 and f"recorded {cut}" in full.stderr  # what fitted is playable
        assert not list(sd.glob(".*partial*"))


def test_a_restarted_run_never_replaces_the_earlier_recording(int8_model, sample_clip, tmp_path):
    """A service restarted with the same --record (or two runs in a row) keeps both recordings: the
    second goes to NAME.<start time>.EXT, and the summary names it."""
    rec = tmp_path / "cam.mkv"
    for frames in (12, 7):
        r = _runtime("--source", sample_clip, "--model", int8_model, "--headless", "--record", rec,
                     "--max-frames", frames)
        assert r.returncode == 0, r.stderr
    again = list(tmp_path.glob("cam.*.mkv"))
    assert video_frames(rec) == 12 and len(again) == 1 and video_frames(again[0]) == 7
    assert re.fullmatch(r"cam\.\d{8}-\d{6}\.mkv", again[0].name) and f"recorded {again[0]}" in r.stderr


def test_record_keep_is_a_loop_recording(int8_model, sample_clip, tmp_path):
    """--record-keep N keeps the newest N segments of the name (a restarted run's included), deleting the
    oldest as each new one is finished, so a device recording for weeks never fills its card."""
    rec = tmp_path / "loop.mkv"
    for frames in (75, 45):  # 15 frames per 1 s segment: 5 segments, then 3 more
        r = _runtime("--source", sample_clip, "--loop", "--model", int8_model, "--headless", "--record", rec,
                     "--record-segment", 1, "--record-keep", 2, "--max-frames", frames)
        assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.glob("loop*")) == ["loop-00007.mkv", "loop-00008.mkv"]
    assert all(video_frames(p) == 15 for p in tmp_path.glob("loop*"))
    r = _runtime("--source", sample_clip, "--model", int8_model, "--headless", "--record-keep", 2)
    assert r.returncode == 2 and "--record-keep: only with --record-segment" in one_error_line(r)


def test_a_loop_recording_on_full_storage_deletes_its_own_oldest_segments(int8_model, sample_clip, tmp_path):
    """A card already full, with 9 segments of a loop recording and another file: --record-keep 3 keeps 3 of
    them from the start instead of stopping on the full card (under systemd it restarted for ever). With a
    keep the card cannot hold, its own oldest segments go as the space runs low; the other file never does."""
    segment = tmp_path / "segment.mkv"  # a real segment of the clip (90 frames: 230 KB)
    cap, writer = cv2.VideoCapture(str(sample_clip)), cv2.VideoWriter(str(segment), cv2.VideoWriter_fourcc(*"mp4v"),
                                                                     15, (320, 240))
    for _ in range(90):
        writer.write(cap.read()[1])
    writer.release()
    cap.release()
    with small_filesystem(tmp_path / "sd", "3m") as sd:
        for i in range(1, 10):
            (sd / f"cam-{i:05d}.mkv").write_bytes(segment.read_bytes())
        other = os.open(sd / "other.bin", os.O_WRONLY | os.O_CREAT)  # the rest of the card: not the recording's
        try:
            while os.write(other, b"\x5a" * 4096):
                pass
        except OSError:  # full
            pass
        finally:
            os.close(other)
        kept = (sd / "other.bin").read_bytes()
        assert os.statvfs(sd).f_bavail == 0

        def run(keep, frames):
            return _runtime("--source", sample_clip, "--loop", "--model", int8_model, "--headless", "--record",
                            sd / "cam.mkv", "--record-segment", 2, "--record-keep", keep, "--max-frames", frames)

        def segments():
            return sorted(p.name for p in sd.glob("cam*"))

        first = run(3, 90)  # 3 segments of 30 frames
        assert first.returncode == 0, first.stderr
        assert segments() == ["cam-00010.mkv", "cam-00011.mkv", "cam-00012.mkv"]
        assert "WARNING" not in first.stderr  # keep 3 made the room, nothing more was deleted
        more = run(50, 180)  # 6 more: 9 segments do not fit on the card
        assert more.returncode == 0, more.stderr
        assert "deleting the oldest to make room" in more.stderr
        names = segments()
        assert 2 <= len(names) < 9 and names[-1] == "cam-00018.mkv"
        assert names == [f"cam-{i:05d}.mkv" for i in range(19 - len(names), 19)]  # the newest, none missing
        assert all(video_frames(sd / n) == 30 for n in names)
        assert (sd / "other.bin").read_bytes() == kept
        assert not list(sd.glob(".*partial*"))


def test_file_size_limit_keeps_the_earlier_recording_and_segments_stay_under_it(int8_model, sample_clip, tmp_path):
    """A limit on one file's size that free space does not show (ulimit -f here; a FAT card's 4 GiB on a
    device): the writer would fail silently there. A single file stops with one line and a non-zero exit,
    the earlier recording untouched and the frames before the limit kept; segments end early and every
    frame is recorded."""
    limit = 1_000_000
    rec = tmp_path / "rec.mkv"
    first = _runtime("--source", sample_clip, "--model", int8_model, "--headless", "--record", rec, "--max-frames", 20)
    assert first.returncode == 0, first.stderr
    before = rec.read_bytes()
    cut = run_module("edge_runtime", "--source", sample_clip, "--loop", "--model", int8_model, "--headless",
                     "--record", rec, "--max-frames", 3000, file_limit=limit)
    assert cut.returncode == 1 and "size limit of 1,000,000 bytes" in one_error_line(cut), cut.stderr
    assert rec.read_bytes() == before
    kept = tmp_path / "rec.incomplete.mkv"
    assert 20 < video_frames(kept) < 3000 and kept.stat().st_size <= limit
    segments = run_module("edge_runtime", "--source", sample_clip, "--loop", "--model", int8_model, "--headless",
                          "--record", tmp_path / "seg.mp4", "--record-segment", 600, "--max-frames", 200,
                          file_limit=limit)
    assert segments.returncode == 0, segments.stderr
    files = sorted(tmp_path.glob("seg-*.mp4"))
    assert len(files) >= 2 and all(f.stat().st_size <= limit for f in files)
    assert sum(video_frames(f) for f in files) == 200
    assert not list(tmp_path.glob(".*partial*"))


def test_read_only_folder_fails_before_starting(int8_model, sample_clip, tmp_path):
    with small_filesystem(tmp_path / "ro", "1m", read_only=True) as ro:
        proc = _runtime("--source", sample_clip, "--model", int8_model, "--headless", "--record", ro / "rec.mp4")
    assert proc.returncode == 2
    assert one_error_line(proc) == f"error: --record {ro / 'rec.mp4'}: the folder {ro} is not writable"
    proc = _runtime("--source", sample_clip, "--model", int8_model, "--headless", "--record", "/proc/rec.mp4")
    assert proc.returncode == 2 and one_error_line(proc) == (  # it started, then called /proc a full disk: exit 1
        "error: --record /proc/rec.mp4: cannot create a file in /proc (No such file or directory)")
    proc = _runtime("--source", sample_clip, "--model", int8_model, "--record", tmp_path / "rec.gif")
    assert proc.returncode == 2 and one_error_line(proc) and ".mkv" in proc.stderr


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_kill_9_keeps_every_finished_segment(int8_model, sample_clip, tmp_path, suffix):
    """A device killed (or powered off) while recording keeps every finished segment playable; the
    next run recovers the unfinished one when its container plays without a trailer (.mkv: what the
    writer had flushed), else removes it and says so."""
    rec = tmp_path / f"cam{suffix}"
    run = Process("edge_runtime", "--source", sample_clip, "--loop", "--model", int8_model, "--headless",
                  "--record", rec, "--record-segment", 4)

    def partial_flushed() -> bool:  # the writer flushes in steps of 256 KB
        sizes = []
        for p in tmp_path.glob(".cam-*.partial*"):
            try:
                sizes.append(p.stat().st_size)
            except FileNotFoundError:  # renamed into place since the glob
                pass
        return any(size > 300_000 for size in sizes)

    def mid_segment() -> bool:
        return len(list(tmp_path.glob(f"cam-*{suffix}"))) >= 2 and partial_flushed()

    deadline = time.monotonic() + 90
    try:
        while True:  # frozen (SIGSTOP) while the files are looked at, so the kill finds them as seen
            wait_for(mid_segment, max(1.0, deadline - time.monotonic()),
                     "two finished segments and a third being written")
            run.proc.send_signal(signal.SIGSTOP)
            os.waitpid(run.proc.pid, os.WUNTRACED)  # stopped, not only signalled
            if mid_segment():
                break
            run.proc.send_signal(signal.SIGCONT)  # the segment was finished in between: the next one
    finally:
        run.proc.send_signal(signal.SIGKILL)  # also when the wait failed: no runtime left looping
    run.wait()
    segments = sorted(tmp_path.glob(f"cam-*{suffix}"))
    assert len(segments) >= 2
    for seg in segments:  # 4 s at the clip's 15 FPS each, all playable
        assert video_frames(seg) == 60, seg
    assert len(list(tmp_path.glob(".cam-*.partial*"))) == 1  # the segment being written when it died

    again = _runtime("--source", sample_clip, "--model", int8_model, "--headless", "--record", rec,
                     "--record-segment", 4, "--max-frames", 15)
    assert again.returncode == 0, again.stderr
    assert not list(tmp_path.glob(".*partial*"))
    new = sorted(tmp_path.glob(f"cam-*{suffix}"))
    if suffix == ".mkv":
        assert "recovered" in again.stderr and len(new) == len(segments) + 2
        assert 0 < video_frames(new[-2]) <= 60  # the interrupted segment, up to its last flush
    elif "recovered" in again.stderr:  # killed between closing the file and renaming it: complete
        assert len(new) == len(segments) + 2 and video_frames(new[-2]) == 60
    else:  # an .mp4 without its index cannot play: removed, and said so
        assert "nothing playable" in again.stderr and len(new) == len(segments) + 1
    assert new[-1].name == f"cam-{len(new):05d}{suffix}"  # numbering goes on, nothing replaced
    assert video_frames(new[-1]) == 15


def test_folder_of_mixed_sizes_records_every_frame_and_names_files(int8_model, tmp_path):
    """Photos of different sizes are all written to the recording (scaled into it), and every JSON
    line names its file, also after a skipped one."""
    photos = tmp_path / "photos"
    photos.mkdir()
    names = sorted(p.name for p in (ROOT / "calib_data").glob("*.jpg"))[:10] + ["opencv_orange.jpg",
                                                                                "skimage_coffee.jpg"]
    sizes = set()
    for name in names:
        image = cv2.imread(str(ROOT / "calib_data" / name))
        sizes.add(image.shape[:2])
        (photos / name).write_bytes((ROOT / "calib_data" / name).read_bytes())
    assert len(sizes) >= 4, sizes
    (photos / names[3]).write_bytes(b"\xff\xd8\xff\xe0 truncated")  # one unreadable file among them
    rec = tmp_path / "folder.mkv"
    proc = _runtime("--source", photos, "--model", int8_model, "--json", "--record", rec)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [l["file"] for l in lines] == [n for n in names if n != names[3]]
    assert video_frames(rec) == len(names) - 1
    by_file = {l["file"]: l["top"][0]["label"] for l in lines}
    assert by_file["skimage_coffee.jpg"] == "espresso" and by_file["opencv_orange.jpg"] in ("orange", "lemon")


def test_a_stop_ends_a_run_whose_json_reader_stopped_reading(int8_model, sample_clip, tmp_path):
    """`--json | consumer` with a consumer that stalls (a logger, an MQTT client that lost its broker): the
    loop sat in the pipe write, SIGTERM waited for the reader, and a service manager's SIGKILL lost the
    recording. The stop ends the run with the recording finished while the pipe is still full."""
    out = tmp_path / "rec.mkv"
    read_end, write_end = os.pipe()  # a reader that never reads
    proc = subprocess.Popen([sys.executable, "-m", "edge_runtime", "--source", str(sample_clip), "--loop", "--json",
                             "--model", str(int8_model), "--threads", "1", "--record", str(out)], cwd=ROOT,
                            stdout=write_end, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    os.close(write_end)
    try:
        wait_for(lambda: _queued(read_end) >= 50_000 or proc.poll() is not None, 120, "a full pipe")
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(1.0)  # well past the moment the loop blocked
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=30)[1]  # before the fix: never, while nobody read
    finally:
        os.close(read_end)
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "stopped by signal" in err and "Traceback" not in err, err
    assert video_frames(out) > 100 and not list(tmp_path.glob(".*partial*"))


def _queued(fd: int) -> int:
    """Bytes waiting in a pipe."""
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)


def test_a_cut_line_taken_back_never_takes_bytes_after_it(tmp_path):
    """The part of a line a full disk cut short is removed only when it ends the file: written over an older
    file (systemd's StandardOutput=file: writes from its start) the older bytes after it stay."""
    from edge_runtime.output import _take_back

    path = tmp_path / "results.jsonl"
    path.write_bytes(b'{"frame": 1}\n{"frame": 2}\n')
    fd = os.open(path, os.O_WRONLY)  # not appending: over the older file
    try:
        os.write(fd, b"#####")  # a line cut short after 5 bytes
        _take_back(fd, 5)
    finally:
        os.close(fd)
    assert path.read_bytes() == b'#####me": 1}\n{"frame": 2}\n'  # left as it is, nothing after it lost
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b'{"frame": 3, "to')
        _take_back(fd, 16)
        os.write(fd, b'{"frame": 4}\n')
    finally:
        os.close(fd)
    assert path.read_bytes() == b'#####me": 1}\n{"frame": 2}\n{"frame": 4}\n'


def test_json_output_on_a_full_disk_or_a_closed_pipe(int8_model, sample_clip, tmp_path):
    """`--json >> results.jsonl` on a card that fills: exit 2 (which the README's unit never restarts) with
    'error: No space left on device', the file ending in half a line that the next run's first line joined.
    Now: exit 1 with one line naming stdout, the file ends with its last whole line (the part the full card
    cut short is taken back), and the next run after a file that ends mid-line (a kill) starts on a new line.
    `--json | head -1`: a stop (exit 0), not an error."""
    with small_filesystem(tmp_path / "sd", "64k") as sd:
        results = sd / "results.jsonl"
        with open(results, "ab") as f:
            full = subprocess.run([sys.executable, "-m", "edge_runtime", "--source", str(sample_clip), "--loop",
                                   "--json", "--model", str(int8_model), "--threads", "1", "--max-frames", "5000"],
                                  cwd=ROOT, stdout=f, stderr=subprocess.PIPE, text=True, timeout=300,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert full.returncode == 1, full.stderr
        assert one_error_line(full) == "error: cannot write the results to stdout (No space left on device)"
        lines = results.read_bytes().split(b"\n")
        assert len(lines) > 50 and lines[-1] == b"" and all(json.loads(line)["top"] for line in lines[:-1])
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b'{"frame": 1, "top": [{"label": "capu')  # what a full card left
    with open(cut, "ab") as f:
        again = subprocess.run([sys.executable, "-m", "edge_runtime", "--source", str(sample_clip), "--json",
                                "--model", str(int8_model), "--threads", "1", "--max-frames", "3"], cwd=ROOT,
                               stdout=f, stderr=subprocess.PIPE, text=True, timeout=120,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert again.returncode == 0, again.stderr
    lines = cut.read_text().splitlines()
    assert len(lines) == 4 and [json.loads(line)["frame"] for line in lines[1:]] == [1, 2, 3], lines
    head = subprocess.run(f"'{sys.executable}' -m edge_runtime --source '{sample_clip}' --loop --json "
                          f"--model '{int8_model}' --threads 1 | head -1", shell=True, cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert json.loads(head.stdout)["frame"] == 1, head.stdout
    assert "stopped by a closed output" in head.stderr and "error" not in head.stderr.lower(), head.stderr


def test_a_recording_folder_removed_while_recording_is_one_line(int8_model, sample_clip, tmp_path):
    """The storage failing under a recording (here: its folder removed, as a card pulled out does) raised
    FileNotFoundError out of the loop: a traceback. One line and exit 1."""
    folder = tmp_path / "rec"
    proc = Process("edge_runtime", "--source", sample_clip, "--loop", "--model", int8_model, "--headless", "--json",
                   "--threads", "1", "--record", folder / "cam.mkv")
    wait_for(lambda: len(proc.out) >= 20 or proc.proc.poll() is not None, 60, "20 classified frames")
    shutil.rmtree(folder)
    rc = proc.wait(60)
    assert rc == 1 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No such file or directory" in errors[0], proc.stderr


def test_a_recording_folder_turned_read_only_while_recording_is_one_line(int8_model, sample_clip, tmp_path):
    """A card that remounts itself read-only after an error (ext4's errors=remount-ro), here a read-only tmpfs
    mounted over the recording's folder mid-file: the file being written could be neither finished nor removed,
    and the second removal's EROFS ended the run with a traceback. One line and exit 1; the partial file stays
    for the next run to recover (a .mkv keeps its frames up to its last flush)."""
    with small_filesystem(tmp_path / "sd", "20m") as sd:
        folder = sd / "rec"
        folder.mkdir()
        proc = Process("edge_runtime", "--source", sample_clip, "--loop", "--model", int8_model, "--headless",
                       "--json", "--threads", "1", "--record", folder / "cam.mkv")
        try:
            wait_for(lambda: len(proc.out) >= 20 or proc.proc.poll() is not None, 60, "20 classified frames")
            with small_filesystem(folder, "1m", read_only=True):
                rc = proc.wait(60)
        finally:
            if proc.proc.poll() is None:
                proc.proc.kill()
        assert rc == 1 and "Traceback" not in proc.stderr, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and str(folder / "cam.mkv") in errors[0], proc.stderr
        assert len(list(folder.glob(".cam.*.partial.mkv"))) == 1 and not (folder / "cam.mkv").exists()


def test_a_panorama_first_among_photos_is_recorded_within_the_largest_side(int8_model, tmp_path):
    """A photo over 8191 pixels wide first in a folder (a panorama) made the recording its size, which the MPEG-4
    writer cannot open: the run ended after one frame. The recording keeps its proportions within 4096 pixels
    a side, and the photo after it is scaled into it."""
    import numpy as np

    photos = tmp_path / "photos"
    photos.mkdir()
    wide = np.zeros((1200, 8400, 3), np.uint8)
    wide[:, ::2] = (40, 120, 200)
    cv2.imwrite(str(photos / "a_wide.png"), wide)
    shutil.copy(ROOT / "calib_data" / "skimage_coffee.jpg", photos / "b_coffee.jpg")
    rec = tmp_path / "photos.mp4"
    proc = _runtime("--source", photos, "--model", int8_model, "--json", "--record", rec)
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["file"] for line in proc.stdout.splitlines()] == ["a_wide.png", "b_coffee.jpg"]
    cap = cv2.VideoCapture(str(rec))
    try:
        size = (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        cap.release()
    assert size == (4096, 584) and video_frames(rec) == 2, size


def test_a_partial_left_under_this_process_id_is_recovered_not_written_over(tmp_path):
    """After a power cut a boot-time service often gets the process id it had before: the unfinished segment
    of the run before carried this process's id, was taken for its own, and the next segment of that index was
    written over it (the frames the README says the next run recovers). A partial this process is not writing
    is recovered."""
    import numpy as np

    from edge_runtime.record import Recorder

    part = tmp_path / f".cam-00003.{os.getpid()}.partial.mkv"
    writer = cv2.VideoWriter(str(part), cv2.VideoWriter_fourcc(*"mp4v"), 15, (64, 48))
    for i in range(10):
        writer.write(np.full((48, 64, 3), 20 * i, np.uint8))
    writer.release()
    rec = Recorder(tmp_path / "cam.mkv", 15, segment_seconds=1)
    assert not part.exists() and video_frames(tmp_path / "cam-00003.mkv") == 10
    rec.write(np.zeros((48, 64, 3), np.uint8))
    rec.close()
    assert rec.files == [tmp_path / "cam-00004.mkv"]
