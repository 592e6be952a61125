"""The edge runtime on real video and photos with the real converted model."""
import io
import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_runtime import app
from edge_runtime.classify import Classifier, ModelError
from edge_runtime.preprocess import resize_crop
from edge_runtime.sources import CaptureSource, DisconnectingCapture, SourceError, open_source
from realworld import Process, one_error_line, run_module, video_frames, wait_for

ROOT = Path(__file__).resolve().parents[1]


def _runtime(*args, **kw):
    return subprocess.run([sys.executable, "-m", "edge_runtime", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, **kw)


def test_json_mode_on_the_sample_clip(int8_model, sample_clip):
    proc = _runtime("--source", sample_clip, "--model", int8_model, "--json", "--top-k", "3")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(l) for l in proc.stdout.splitlines()]
    assert len(lines) == 180  # every frame of the file, in order
    assert [l["frame"] for l in lines] == list(range(1, 181))
    for l in lines:
        assert len(l["top"]) == 3 and l["inference_ms"] > 0
        scores = [t["score"] for t in l["top"]]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0001
    assert lines[0]["top"][0]["label"] == "lemon"  # the clip opens on an orange; the float model says lemon


def test_top1_matches_float_model_on_video_frames(int8_model, float_model, sample_clip):
    """The int8 runtime names the float model's class on real decoded frames."""
    from convert.torch_eval import torch_predict
    from edge_runtime.preprocess import resize_crop

    model, record = float_model
    predict = torch_predict(model, record)
    clf = Classifier(int8_model)
    cap = cv2.VideoCapture(str(sample_clip))
    agree, n, k, confident = 0, 0, 0, []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        k += 1
        if k % 10:
            continue
        logits = predict(resize_crop(frame, record.preprocessing)[None])[0]
        p = np.exp(logits - logits.max())
        float_top, float_p = int(np.argmax(logits)), float(p.max() / p.sum())
        same = clf.classify(frame, k=1)[0].index == float_top
        agree += same
        n += 1
        if float_p >= 0.5:
            confident.append(same)
    # every frame the float model is sure about must agree; the ambiguous ones mostly
    assert n == 18 and agree >= 14, (agree, n)
    assert len(confident) >= 6 and all(confident), confident


def test_folder_source_skips_corrupt_images(int8_model, tmp_path):
    for name in ("skimage_coffee.jpg", "skimage_chelsea.jpg", "opencv_orange.jpg"):
        (tmp_path / name).write_bytes((ROOT / "calib_data" / name).read_bytes())
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff corrupt")
    source = open_source(str(tmp_path))
    results, out = [], io.StringIO()
    stats = app.run(Classifier(int8_model), source, app.RunOptions(top_k=1, out=out),
                    on_result=lambda i, p: results.append(p[0].label))
    assert stats.frames == 3 and source.stats.corrupt == 1
    assert results == ["lemon", "Egyptian_cat", "espresso"]  # in file order; what the float model says of each
    # headless text: a line per file (a clip's frames are a line per --log-interval)
    assert [line.split(":")[0] for line in out.getvalue().splitlines()] == [
        "frame 1 (opencv_orange.jpg)", "frame 2 (skimage_chelsea.jpg)", "frame 3 (skimage_coffee.jpg)"]


def test_json_interval_thins_the_lines_of_a_stream_not_of_a_folder(int8_model, sample_clip, tmp_path, monkeypatch):
    """`--json` into a fleet's journal is a line per frame (about 470 MB a day at 15 FPS): `--json-interval S`
    writes the first result at once, then at most one line per S seconds (its frame number tells how many
    frames it stands for); a folder's files are each written, and the flag without --json is refused."""
    from edge_runtime.cli import _flags_without_effect, build_parser

    def lines(source, interval):
        out = io.StringIO()
        stats = app.run(Classifier(int8_model), open_source(str(source)),
                        app.RunOptions(top_k=1, max_frames=12, json_lines=True, json_interval=interval, out=out))
        return stats.frames, [json.loads(line)["frame"] for line in out.getvalue().splitlines()]

    assert lines(sample_clip, 0.0) == (12, list(range(1, 13)))
    assert lines(sample_clip, 3600.0) == (12, [1])
    # the loop's clock made to advance 1 s per reading (a reading before the run, two per frame: frame k
    # ends at 2k + 1 s): at most one line per 3 s is frames 1, 3 (7 s), 5 (11 s), 7, 9, 11
    ticks = iter(range(1, 1000))
    monkeypatch.setattr(app, "time", type("Clock", (), {"perf_counter": staticmethod(lambda: float(next(ticks))),
                                                         "time": staticmethod(time.time)}))
    assert lines(sample_clip, 3.0) == (12, [1, 3, 5, 7, 9, 11])
    monkeypatch.undo()
    for name in ("skimage_coffee.jpg", "skimage_chelsea.jpg", "opencv_orange.jpg"):
        (tmp_path / name).write_bytes((ROOT / "calib_data" / name).read_bytes())
    assert lines(tmp_path, 3600.0) == (3, [1, 2, 3])
    refused = _flags_without_effect(build_parser().parse_args(["--camera", "0", "--json-interval", "1"]))
    assert refused == "--json-interval: only with --json (it would have no effect)"
    assert _flags_without_effect(build_parser().parse_args(["--camera", "0", "--json", "--json-interval", "1"])) is None


def test_a_file_name_of_other_bytes_is_shown_not_a_traceback(int8_model, tmp_path):
    """A photo named in Latin-1 (an unzipped Windows archive: 'caf\\xe9.jpg') in a folder source: headless text
    names every file, and the lines to a pipe went out as UTF-8 with no room for the undecodable byte: a
    UnicodeEncodeError ended the run. The name is shown escaped, under any locale."""
    folder = tmp_path / "photos"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.jpg")
    (folder / name).write_bytes((ROOT / "calib_data" / "opencv_orange.jpg").read_bytes())
    for lang in ("C.UTF-8", "C"):
        proc = subprocess.run([sys.executable, "-m", "edge_runtime", "--source", str(folder), "--model", str(int8_model),
                               "--headless", "--threads", "1"], capture_output=True, cwd=ROOT, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "LC_ALL": lang, "LANG": lang})
        err = proc.stderr.decode(errors="replace")
        assert proc.returncode == 0 and b"frame 1 (caf" in proc.stdout and "Traceback" not in err, err


def test_one_photo_as_source_is_decoded_as_a_folders_photos(int8_model, sample_clip, tmp_path):
    """A photo given as --source was read by VideoCapture (FFmpeg's JPEG decoder: 66% of this photo's pixels
    differ from OpenCV's imread, by up to 41 levels), so it could get another answer than the same photo in a
    folder, the evaluator and the converter (opencv-doc's fruits.jpg: lemon alone, orange in a folder). One
    decoding for both now; a photo that is not one is one line, exit 2, and --loop with a photo is refused.
    A short headless run shows its first result at once (a clip of 3 frames printed no label at all)."""
    from edge_runtime.cli import _flags_without_effect, build_parser

    photo = tmp_path / "one" / "matplotlib_grace_hopper.jpg"
    photo.parent.mkdir()
    photo.write_bytes((ROOT / "calib_data" / photo.name).read_bytes())

    def records(source):
        proc = _runtime("--source", source, "--model", int8_model, "--json")
        assert proc.returncode == 0, proc.stderr
        return [{k: v for k, v in json.loads(line).items() if k in ("file", "top")}
                for line in proc.stdout.splitlines()]

    alone = records(photo)
    assert alone == records(photo.parent) and len(alone) == 1 and alone[0]["file"] == photo.name
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    proc = _runtime("--source", bad, "--model", int8_model, "--headless")
    assert proc.returncode == 2 and "bad.png: " in one_error_line(proc)
    assert "--loop: only with a video file" in _flags_without_effect(build_parser().parse_args(
        ["--source", str(photo), "--loop"]))
    proc = _runtime("--source", sample_clip, "--model", int8_model, "--headless", "--max-frames", "3")
    assert proc.returncode == 0 and proc.stdout.startswith("frame 1: "), (proc.stdout, proc.stderr)


def test_truncated_video_is_read_to_where_it_breaks(int8_model, sample_clip, tmp_path):
    data = sample_clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    proc = _runtime("--source", cut, "--model", int8_model, "--json")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    frames = [json.loads(l)["frame"] for l in proc.stdout.splitlines()]
    # about the first half of the 180 frames (104 with OpenCV 5 here), in order, then a clean end
    assert 80 <= len(frames) <= 120 and frames == list(range(1, len(frames) + 1)), len(frames)
    assert "stopped by end of source" in proc.stderr
    # said as what it is (it was "corrupt frames skipped: 5": the failed reads where the clip ends)
    assert f"the clip ended at frame {len(frames)} of 180 (unreadable from there)" in proc.stderr
    assert "corrupt frames skipped: 0;" in proc.stderr


def test_a_clip_cut_short_ends_where_it_breaks_with_no_frame_called_corrupt(sample_clip, tmp_path, caplog):
    """OpenCV fails reads where a cut clip breaks (a read may also fail and the next succeed, skipping nothing):
    the end is said once as a warning, and only frames really passed over are counted as corrupt."""
    data = sample_clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    source = open_source(str(cut))
    frames = sum(1 for _ in source)
    assert 80 <= frames <= 120 and source.stats.corrupt == 0, source.stats
    assert (source.stats.ended_at, source.stats.length) == (frames, 180)
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"{cut}: the clip ended at frame {frames} of 180 (unreadable from there)"]
    whole = open_source(str(sample_clip))
    assert sum(1 for _ in whole) == 180 and whole.stats.ended_at == 0 and whole.stats.ended_early == ""


def test_a_named_pipe_is_read_as_a_video_and_other_non_files_are_named(sample_clip, tmp_path):
    """A FIFO (mkfifo, /dev/stdin from a pipe) was "no such file, folder or stream URL"; it is read, every frame,
    until its writer closes it. A device is "not a regular file"; a camera device names --camera."""
    import threading

    fifo = tmp_path / "live.mp4"
    os.mkfifo(fifo)

    def write() -> None:
        with open(fifo, "wb") as f:
            f.write(sample_clip.read_bytes())

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    source = open_source(str(fifo))
    assert sum(1 for _ in source) == 180
    writer.join(10)
    with pytest.raises(SourceError, match="a named pipe is read once"):
        open_source(str(fifo), loop=True)
    with pytest.raises(SourceError, match="^/dev/zero: not a regular file "):
        open_source("/dev/zero")
    with pytest.raises(SourceError, match="no such file, folder or stream URL"):
        open_source(str(tmp_path / "missing.mp4"))


def test_a_model_path_that_is_no_file_is_named_as_what_it_is(tmp_path):
    """--model FOLDER and --model /dev/zero said "model file not found"."""
    for path, said in ((tmp_path, "a folder, not a model file (a .tflite file expected)"),
                       (Path("/dev/zero"), "not a regular file (a .tflite file expected)"),
                       (tmp_path / "none.tflite", "model file not found")):
        with pytest.raises(ModelError) as e:
            Classifier(path)
        assert str(e.value) == f"{path}: {said}"


def test_a_full_stderr_does_not_fail_a_run_that_worked(int8_model, val500_dir, tmp_path):
    """A headless device whose log (stderr) is on a full card: the end-of-run account cannot be written, but
    the run classified its source and its records are whole, so it ends with 0 (it ended with 1, its error
    unsaid). A run that failed still ends with 1."""
    photos = tmp_path / "photos"
    photos.mkdir()
    photo = sorted(val500_dir.iterdir())[0]
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as a service runs it
    command = [sys.executable, "-m", "edge_runtime", "--source", str(photos), "--model", str(int8_model), "--json"]
    (photos / photo.name).write_bytes(photo.read_bytes())
    with open("/dev/full", "w") as full:
        proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=full, text=True, cwd=ROOT, env=buffered,
                              timeout=120)
        assert proc.returncode == 0
        assert json.loads(proc.stdout)["top"][0]["label"] == "tench", proc.stdout
        (photos / photo.name).write_bytes(b"\xff\xd8\xff corrupt")
        proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=full, text=True, cwd=ROOT, env=buffered,
                              timeout=120)
        assert proc.returncode == 1 and proc.stdout == ""


def test_sources_with_nothing_to_classify_fail_with_one_line(int8_model, tmp_path):
    """A folder of unreadable files: one line and exit 1 (not "0 frames" and success). An empty --source
    (not the current folder), flags that would have no effect with the source given, and a clip whose
    frames are over the pixel budget (refused at open, before a frame is decoded) are refused."""
    from edge_runtime.cli import _flags_without_effect, build_parser
    from edge_runtime.sources import SourceTooLarge

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.jpg").write_bytes(b"\xff\xd8\xff corrupt")
    (bad / "empty.png").write_bytes(b"")
    proc = _runtime("--source", bad, "--model", int8_model, "--headless")
    assert proc.returncode == 1 and "ended before any frame could be classified" in one_error_line(proc)
    with pytest.raises(SourceError, match="--source: empty"):
        open_source("")
    for flags, line in ((["--source", str(bad), "--loop"], "--loop: only with a video file"),
                        (["--source", str(bad), "--record-segment", "5"], "--record-segment: only with --record"),
                        (["--camera", "0", "--disconnect-every", "9"], "--disconnect-every: only with a video")):
        assert line in _flags_without_effect(build_parser().parse_args(flags))  # refused, not silently ignored
    assert _flags_without_effect(build_parser().parse_args(["--source", "clip.mp4", "--loop"])) is None
    huge = tmp_path / "huge.avi"
    writer = cv2.VideoWriter(str(huge), cv2.VideoWriter_fourcc(*"MJPG"), 1, (8000, 7000))
    writer.write(np.zeros((7000, 8000, 3), np.uint8))
    writer.release()
    with pytest.raises(SourceTooLarge, match="frames of 8000x7000 pixels, over the budget"):
        open_source(str(huge))


def test_disconnects_are_recovered(int8_model, sample_clip):
    opened = []

    def opener():
        opened.append(1)
        return DisconnectingCapture(cv2.VideoCapture(str(sample_clip)), 40)

    source = CaptureSource(opener, "flaky camera", latest=True, reconnect=True, backoff=(0.01, 0.05))
    stats = app.run(Classifier(int8_model), source, app.RunOptions(max_frames=150, out=open(os.devnull, "w")))
    assert stats.frames == 150
    wait_for(lambda: not source._thread.is_alive(), 10, "the capture thread to end")  # not mid-reconnect
    assert source.stats.reconnects >= 2 and len(opened) == source.stats.reconnects + 1


def test_cli_soak_mode_recovers_every_disconnect(int8_model, sample_clip):
    proc = _runtime("--source", sample_clip, "--model", int8_model, "--headless", "--max-frames", 500,
                    "--disconnect-every", 100)
    assert proc.returncode == 0, proc.stderr
    import re

    reconnects = int(re.search(r"reconnects: (\d+)", proc.stderr).group(1))
    assert "500 frames" in proc.stderr and "corrupt frames skipped: 0" in proc.stderr
    assert reconnects in (4, 5)  # the decode thread may already have reopened after frame 500


def test_camera_that_never_opens_fails_cleanly():
    with pytest.raises(SourceError, match="cannot open"):
        CaptureSource(lambda: cv2.VideoCapture("/nonexistent.mp4"), "camera 9", latest=True, reconnect=True,
                      backoff=(0.01, 0.01), startup_attempts=2)


def test_latest_frame_source_drops_stale_frames(sample_clip):
    live = CaptureSource(lambda: cv2.VideoCapture(str(sample_clip)), "fast stream", latest=True, reconnect=True,
                         backoff=(0.0, 0.0))  # the clip, looping, decoded as fast as a live stream
    time.sleep(0.5)  # inference stalls; the capture thread keeps only the newest frame
    first = live.read(timeout=5)
    live.close()
    assert first is not None and live.stats.dropped > 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])  # SIGHUP: the SSH session went away
def test_sigterm_finalizes_the_recording(int8_model, sample_clip, tmp_path, sig):
    out = tmp_path / "rec.mp4"
    proc = Process("edge_runtime", "--source", sample_clip, "--loop", "--model", int8_model, "--headless",
                   "--record", out, "--json")
    # 30 frames classified (and recorded), then the signal
    wait_for(lambda: len(proc.out) >= 30 or proc.proc.poll() is not None, 60, "30 classified frames")
    assert proc.proc.poll() is None, proc.stderr
    proc.stop(sig)
    assert proc.proc.returncode == 0, proc.stderr
    assert "stopped by signal" in proc.stderr and "Traceback" not in proc.stderr
    assert video_frames(out) >= 30
    assert not list(tmp_path.glob(".*partial*"))


def test_bad_model_and_missing_camera_give_one_line(tmp_path, sample_clip):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"TFL3" * 100)
    import torch

    checkpoint = tmp_path / "best.pt"  # what `convert train` writes: the runtime says to convert it
    torch.save({"model": {}}, checkpoint)
    onnx_model = tmp_path / "model.onnx"  # what `convert tflite --onnx` takes
    torch.onnx.export(torch.nn.Conv2d(3, 2, 1).eval(), torch.zeros(1, 3, 8, 8), str(onnx_model), dynamo=False)
    for args, expected in ((["--source", sample_clip, "--model", tmp_path / "none.tflite"], "model file not found"),
                           (["--source", sample_clip, "--model", bad], f"{bad}: model file is truncated or corrupt"),
                           (["--camera", "7", "--model", bad], "model file is truncated or corrupt"),
                           (["--source", tmp_path / "missing.mp4", "--model", bad], "truncated or corrupt"),
                           (["--source", sample_clip, "--model", checkpoint],
                            f"{checkpoint}: not a TFLite model (file identifier 'TFL3' expected at byte 4): a "
                            "PyTorch checkpoint? convert it first: python -m convert tflite --weights"),
                           (["--source", sample_clip, "--model", onnx_model],
                            "an ONNX model? convert it first: python -m convert tflite --onnx FILE")):
        proc = _runtime(*args)
        assert proc.returncode == 2, proc.stderr
        assert expected in one_error_line(proc), (args, proc.stderr)
    proc = _runtime("--camera", "7", "--model", ROOT / "build" / "x.tflite")
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {ROOT / 'build' / 'x.tflite'}: model file not found"


def test_a_model_replaced_on_disk_while_running_changes_nothing(int8_model, tmp_path, sample_clip):
    """An over-the-air update that overwrites the file in place (same size, or another model) while the
    runtime runs: the bytes that passed the checksum at start are the bytes that keep running."""
    live = tmp_path / "live.tflite"
    live.write_bytes(int8_model.read_bytes())
    from edge_runtime.preprocess import resize_crop

    clf = Classifier(live)
    cap = cv2.VideoCapture(str(sample_clip))
    crops = np.stack([resize_crop(cap.read()[1], clf.preprocessing) for _ in range(4)])
    cap.release()
    before = clf.predict_batch(crops)
    with live.open("r+b") as f:  # the same size, every weight byte changed: what `dd conv=notrunc` did
        data = bytearray(f.read())
        data[len(data) // 4: len(data) // 2] = bytes(b ^ 0x5A for b in data[len(data) // 4: len(data) // 2])
        f.seek(0)
        f.write(bytes(data))
    assert np.array_equal(clf.predict_batch(crops), before)
    with pytest.raises(ModelError, match="integrity check failed"):  # the next start refuses the damaged file
        Classifier(live)


def test_no_camera_names_the_alternative(int8_model):
    proc = _runtime("--camera", "7", "--model", int8_model)
    assert proc.returncode == 75 and "--source" in proc.stderr and "Traceback" not in proc.stderr  # EX_TEMPFAIL


def test_hostile_metadata_is_refused(int8_model, tmp_path):
    from edge_runtime.metadata import METADATA_NAME

    data = int8_model.read_bytes()
    raw = data.find(b'"format":"squeezenet-edge/1"')
    assert raw > 0
    evil = bytearray(data)
    evil[raw:raw + 28] = b'"format":"squeezenet-edge/X"'  # same length, unknown schema
    bad = tmp_path / "evil.tflite"
    bad.write_bytes(bytes(evil))
    with pytest.raises(ModelError, match="format"):
        Classifier(bad)
    assert METADATA_NAME.encode() in data


def test_runtime_never_imports_heavy_packages(int8_model, sample_clip):
    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'tensorflow', 'onnx', 'onnxruntime', 'onnx2tf'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from edge_runtime.cli import main\n"
        f"rc = main(['--source', r'{sample_clip}', '--model', r'{int8_model}', '--json', '--max-frames', '3'])\n"
        "assert rc == 0\n"
        "assert not any(m.split('.')[0] in ('torch', 'tensorflow', 'onnx') for m in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 3


def _without_metadata(model: Path, dest: Path) -> Path:
    """``model`` as a plain TFLite file: no metadata entries, no appended label file."""
    from tensorflow.lite.tools import flatbuffer_utils

    m = flatbuffer_utils.convert_bytearray_to_object(bytearray(model.read_bytes()))
    for entry in m.metadata or []:
        m.buffers[entry.buffer].data = None
    m.metadata = None
    dest.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(m)))
    return dest


def test_float_sibling_and_plain_tflite_and_missing_edgetpu(int8_model, sample_clip, tmp_path):
    from convert.pipeline import sibling_paths

    sibling = sibling_paths(int8_model)[1]  # the float TFLite kept beside the artifact carries its own record
    proc = _runtime("--source", sample_clip, "--model", sibling, "--json", "--max-frames", 2)
    assert proc.returncode == 0 and "no embedded metadata" not in proc.stderr, proc.stderr[-2000:]
    assert "(XNNPACK)" in proc.stderr.splitlines()[-1], proc.stderr[-500:]  # a float model's default kernels
    assert json.loads(proc.stdout.splitlines()[0])["top"][0]["label"] == "lemon"  # the float model's answer
    clf = Classifier(sibling)
    assert clf.input_dtype == np.float32 and clf.info.input_channel_order == "RGB" and clf.content_sha256
    # kernels by model: XNNPACK for the float one (last-bit differences only), builtin for the int8 one
    # (the arithmetic the converter validated), unless asked otherwise
    builtin, int8 = Classifier(sibling, xnnpack=False), Classifier(int8_model)
    assert clf.xnnpack and not builtin.xnnpack and not int8.xnnpack and Classifier(int8_model, xnnpack=True).xnnpack
    ok, frame = cv2.VideoCapture(str(sample_clip)).read()
    crop = resize_crop(frame, clf.preprocessing)[None]
    a, b = clf.predict_batch(crop), builtin.predict_batch(crop)
    assert not np.array_equal(a, b)  # other kernels ran (measured: 1e-5 apart), deciding alike
    assert np.argmax(a) == np.argmax(b) and np.abs(a - b).max() < 1e-3 * np.abs(b).max()
    plain = _without_metadata(sibling, tmp_path / "plain_float.tflite")  # the same graph with no record
    proc = _runtime("--source", sample_clip, "--model", plain, "--json", "--max-frames", 2,
                    "--channel-order", "RGB", "--resize", "256x256", "--builtin-kernels")
    assert proc.returncode == 0 and "no embedded metadata" in proc.stderr
    assert "(builtin kernels)" in proc.stderr.splitlines()[-1], proc.stderr[-500:]
    assert json.loads(proc.stdout.splitlines()[0])["top"][0]["label"] == "lemon"
    # the plain-model flags are refused for a model that carries its own preprocessing
    proc = _runtime("--source", sample_clip, "--model", int8_model, "--resize", "256", "--max-frames", 2)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --resize: ") and "own preprocessing" in proc.stderr
    proc = _runtime("--source", sample_clip, "--model", int8_model, "--edgetpu", "--max-frames", 2)
    assert proc.returncode == 2 and "libedgetpu" in proc.stderr and "Traceback" not in proc.stderr


def test_kernels_follow_the_model(tmp_path):
    """The default kernels by model: XNNPACK for a float model, the builtin kernels for any model with
    quantized tensors, per tensor or per channel (a dynamic-range model: int8 weights, float activations)."""
    import tensorflow as tf

    keras = tf.keras
    net = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(64, 3),
                            keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5)])
    models = {}
    for name, optimize in (("float", False), ("dynamic_range", True)):
        converter = tf.lite.TFLiteConverter.from_keras_model(net)
        if optimize:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]  # int8 weights per channel, float activations
        models[name] = tmp_path / f"{name}.tflite"
        models[name].write_bytes(converter.convert())
    from edge_runtime.preprocess import Preprocessing

    pp = Preprocessing(input_size=(16, 16), resize=(16, 16), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert Classifier(models["float"], preprocessing=pp, verify=False).xnnpack
    assert not Classifier(models["dynamic_range"], preprocessing=pp, verify=False).xnnpack
    assert Classifier(models["dynamic_range"], preprocessing=pp, verify=False, xnnpack=True).xnnpack


def test_interpreter_agreement_on_a_subset_inside_one_half(int8_model, val500_dir, tmp_path):
    """tools/interpreter_agreement (CI's device check, tools/arm_check.sh) on photos whose classes all
    lie in the tuning half: the reporting half has no items and is said to be empty, not divided by."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for f in sorted(val500_dir.iterdir())[0:6:2]:  # classes 0, 4, 8: all in the tuning half
        (photos / f.name).write_bytes(f.read_bytes())
    dump = run_module("tools.interpreter_agreement", "dump", "--model", int8_model, "--val", photos,
                      "--report", tmp_path / "a.json")
    assert dump.returncode == 0, dump.stderr
    r = run_module("tools.interpreter_agreement", "compare", tmp_path / "a.json", tmp_path / "a.json",
                   "--min-agreement", 0.995)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "val report half: no items" in r.stdout and "val tune half: same top-1" in r.stdout, r.stdout
    # one photo decided otherwise (as another interpreter might): a missed gate, exit 3 as in every command
    other = json.loads((tmp_path / "a.json").read_text())
    backend = other["backend"]
    other["backend"], other["val"]["top1"][0] = "other", other["val"]["top1"][0] + 1
    (tmp_path / "c.json").write_text(json.dumps(other))
    r = run_module("tools.interpreter_agreement", "compare", tmp_path / "a.json", tmp_path / "c.json",
                   "--min-agreement", 0.995)
    assert r.returncode == 3 and one_error_line(r).startswith("error: val ") and "66.7% < 99.5%" in r.stderr, r.stderr
    assert "inputs differ" not in r.stdout  # the same input, decided otherwise: the interpreters' own difference
    # ... unless the other environment's OpenCV made that input otherwise (as 4.10 and 5.0 decode an MPEG-4 clip)
    other["opencv"], other["val"]["inputs"][0] = "4.10.0", "0" * 16
    (tmp_path / "c.json").write_text(json.dumps(other))
    r = run_module("tools.interpreter_agreement", "compare", tmp_path / "a.json", tmp_path / "c.json")
    versions = f"OpenCV {json.loads((tmp_path / 'a.json').read_text())['opencv']} / 4.10.0"
    assert r.returncode == 0 and f"val: same top-1 {backend} / other: 66.7% of 3; 1 inputs differ ({versions}: " \
        "decoded or resized otherwise), same top-1 on 100.0% of the 2 alike" in r.stdout, r.stdout
    # nothing readable at all is no agreement: refused, not passed
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / sorted(val500_dir.iterdir())[0].name).write_bytes(b"not a jpeg")
    assert run_module("tools.interpreter_agreement", "dump", "--model", int8_model, "--val", broken,
                      "--report", tmp_path / "b.json").returncode == 0
    r = run_module("tools.interpreter_agreement", "compare", tmp_path / "b.json", tmp_path / "b.json",
                   "--min-agreement", 0.995)
    assert r.returncode == 2 and one_error_line(r) == "error: the dumps hold no val items to compare"


def test_a_looping_file_that_disappears_is_retried_with_back_off_and_said(int8_model, sample_clip, tmp_path):
    """--loop whose file is gone at its end (deleted, replaced, its storage unmounted): the capture thread tried
    to open it again with no pause and said nothing (a core at 100% for as long as the run went on, /healthz down
    with no line why). Now it is an outage: one warning, the back-off of a reconnect, and a reconnect once the
    file is back."""
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(sample_clip.read_bytes())
    run = Process("edge_runtime", "--source", clip, "--loop", "--model", int8_model, "--json")
    try:
        wait_for(lambda: run.out, 60, "the first result")
        clip.unlink()  # the file being read stays readable to its end (an open file), then cannot be opened
        wait_for(lambda: "cannot open the file again" in run.stderr, 60, "the loop's end")
        time.sleep(2)
        clip.write_bytes(sample_clip.read_bytes())
        wait_for(lambda: "reconnected after" in run.stderr, 60, "the file back")
    finally:
        run.stop(signal.SIGTERM)
    assert run.proc.returncode == 0 and "Traceback" not in run.stderr, run.stderr
    attempts = int(re.search(r"reconnected after (\d+) attempts", run.stderr)[1])
    assert attempts <= 6, run.stderr  # 0, 0.5, 1.5, 3.5 s...: a few attempts in 2 s, not thousands
    assert "reconnects: 1;" in run.stderr


def test_a_looping_clip_cut_short_starts_over_where_it_breaks_said_once(int8_model, sample_clip, tmp_path):
    """--loop over a clip unreadable from its middle on (a copy cut short): every pass ended as a camera
    that stopped delivering, three warning lines and a counted reconnect per pass (the fleet's flapping-camera
    alert fired on a file). Now each pass ends there as at the clip's end, said once, as without --loop."""
    data = sample_clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    proc = _runtime("--source", cut, "--loop", "--model", int8_model, "--json", "--max-frames", 300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stdout.splitlines()) == 300  # two passes and more
    warnings = [line for line in proc.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "the clip ended at frame" in warnings[0], proc.stderr
    assert "reconnects: 0;" in proc.stderr and "(unreadable from there); reconnects" in proc.stderr
