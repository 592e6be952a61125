"""The converter, on the real Deep Compression model (converted once per session, see conftest)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from convert.artifact import op_report
from convert.pipeline import sibling_paths
from edge_runtime.classify import Classifier
from edge_runtime.metadata import read_model_info

ROOT = Path(__file__).resolve().parents[1]
INTEGER_OPS = {"CONV_2D", "MAX_POOL_2D", "CONCATENATION", "MEAN", "PAD", "RESHAPE", "QUANTIZE",
               # the exact score head (convert/head.py): int32 arithmetic on the last int8 map
               "CAST", "SUM", "REDUCE_MAX", "SUB", "FLOOR_DIV", "MAXIMUM", "ADD"}


def test_artifact_is_fully_integer(int8_model):
    ops = op_report(int8_model.read_bytes())
    assert set(ops["ops"]) <= INTEGER_OPS, ops["ops"]
    assert "DEQUANTIZE" not in ops["ops"]
    assert set(ops["tensor_types"]) <= {"INT8", "UINT8", "INT32"}, ops["tensor_types"]  # no float tensor at all
    clf = Classifier(int8_model)
    assert clf.input_dtype == np.uint8 and clf.interpreter.get_output_details()[0]["dtype"] == np.uint8


def test_embedded_metadata(int8_model, float_model):
    _, record = float_model
    info = read_model_info(int8_model)
    assert info.preprocessing == record.preprocessing
    assert info.labels == list(record.labels) and info.labels[281] == "tabby"
    assert info.input_dtype == "uint8" and info.input_channel_order == "RGB"
    assert info.extra["weights_sha256"] == record.sha256
    assert info.extra["calibration"]["images"] >= 40
    assert info.extra["validation"]["val"]["images"] == 500


def test_standard_interpreters_load_it_unchanged(int8_model, sample_clip):
    import cv2
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    ok, frame = cv2.VideoCapture(str(sample_clip)).read()
    assert ok
    outs = []
    for cls in (Interpreter, tf.lite.Interpreter):
        it = cls(model_path=str(int8_model))
        it.allocate_tensors()
        from edge_runtime.preprocess import resize_crop
        crop = resize_crop(frame, read_model_info(int8_model).preprocessing)
        it.set_tensor(it.get_input_details()[0]["index"], crop[None])
        it.invoke()
        outs.append(it.get_tensor(it.get_output_details()[0]["index"]).copy())
    assert np.array_equal(outs[0], outs[1])


def test_report_figures(converted):
    val = converted["validation"]["val"]
    assert abs(val["float_top1"] - 65.4) <= 0.4
    # the targets, which CI's gated conversion enforces too
    assert val["agreement"] >= 95.0, val
    assert val["top1_drop"] <= 1.0, val
    # 1,397,032 bytes before the standard metadata (928 bytes) and the appended labels.txt (10,591 bytes)
    assert converted["sizes"]["int8_tflite"] <= 1_412_000
    assert converted["sizes"]["int8_tflite"] == Path(converted["out"]).stat().st_size
    onnx_path, float_tflite = sibling_paths(Path(converted["out"]))
    assert onnx_path.stat().st_size == converted["sizes"]["float_onnx"] and float_tflite.exists()
    hold = converted["validation"]["calibration_holdout"]
    assert hold["images"] >= 10 and hold["agreement"] >= 80.0
    assert converted["calibration"]["bias_correction"]["layers"] == 26
    assert converted["calibration"]["weight_rounding"]["layers"] == 26


def test_int8_top1_matches_float_on_real_photos(int8_model, float_model):
    """Classify real photos: the int8 artifact must name the same class as the float model."""
    from convert.evaluate import torch_predict
    from edge_runtime.preprocess import read_image, resize_crop

    model, record = float_model
    predict = torch_predict(model, record)
    clf = Classifier(int8_model)
    names = {}
    for name in ("skimage_coffee.jpg", "skimage_chelsea.jpg", "opencv_orange.jpg", "opencv_squirrel_cls.jpg"):
        image = read_image(str(ROOT / "calib_data" / name))
        float_top = int(np.argmax(predict(resize_crop(image, record.preprocessing)[None])[0]))
        int8_top = clf.classify(image, k=1)[0]
        assert int8_top.index == float_top, (name, int8_top, float_top)
        names[name] = int8_top.label
    assert names["opencv_orange.jpg"] in ("orange", "lemon")


def _run(args, **kw):
    return subprocess.run([sys.executable, "-m", "convert", "tflite", *args], capture_output=True, text=True,
                          cwd=ROOT, **kw)


def _one_line_error(proc):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    return errors[0]


def test_bad_inputs_give_one_line(tmp_path, weights_env):
    out = str(tmp_path / "m_int8.tflite")
    assert "no such weights file" in _one_line_error(_run(["--weights", str(tmp_path / "nope.pth"), "--out", out]))
    corrupt = tmp_path / "bad.net"
    corrupt.write_bytes(b"\x01" * 1000)
    assert "truncated" in _one_line_error(_run(["--weights", str(corrupt), "--out", out]))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images" in _one_line_error(_run(["--calib", str(empty), "--out", out]))
    few = tmp_path / "few"
    few.mkdir()
    for f in sorted((ROOT / "calib_data").glob("*.jpg"))[:5]:
        (few / f.name).write_bytes(f.read_bytes())
    (few / "broken.jpg").write_bytes(b"garbage")
    assert "at least 20 expected" in _one_line_error(_run(["--calib", str(few), "--out", out]))
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root can write anywhere
            assert "not writable" in _one_line_error(_run(["--out", str(locked / "m.tflite")]))
    finally:
        locked.chmod(0o700)
    assert "not found" in _one_line_error(_run(["--onnx", str(tmp_path / "none.onnx"), "--out", out]))


def test_non_classifier_onnx(tmp_path):
    import torch

    class Seg(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x, 2)

    path = tmp_path / "seg.onnx"
    torch.onnx.export(Seg(), torch.zeros(1, 3, 32, 32), str(path), dynamo=False)
    err = _one_line_error(_run(["--onnx", str(path), "--out", str(tmp_path / "x_int8.tflite")]))
    assert "not an image classifier" in err or "1xN" in err
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    assert "not a valid ONNX" in _one_line_error(_run(["--onnx", str(tmp_path / "junk.onnx"),
                                                       "--out", str(tmp_path / "y_int8.tflite")]))


def test_gate_failure_keeps_the_previous_artifact(tmp_path, weights_env, val500_dir):
    out = tmp_path / "keep_int8.tflite"
    out.write_bytes(b"previous good artifact")
    proc = _run(["--out", str(out), "--val", str(val500_dir), "--min-agreement", "0.999",
                 "--report", str(tmp_path / "r.json"), "--quiet"])
    err = _one_line_error(proc)
    assert "agreement" in err and "< 99.9%" in err
    assert out.read_bytes() == b"previous good artifact"
    assert not sibling_paths(out)[0].exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or p.name.startswith("convert-")]
    assert json.loads((tmp_path / "r.json").read_text())["gates"]["passed"] is False
    assert "| gates | FAILED" in proc.stdout


def test_offline_and_reproducible(tmp_path, int8_model, weights_env, val500_dir):
    """A second conversion with every network connection refused gives the same bytes."""
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import socket\n"
        "def _refuse(*a, **k):\n    raise OSError('network disabled by test')\n"
        "socket.socket.connect = _refuse\nsocket.socket.connect_ex = _refuse\n"
        "socket.create_connection = _refuse\nsocket.getaddrinfo = _refuse\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}")
    out = tmp_path / "again_int8.tflite"
    proc = _run(["--out", str(out), "--quiet", "--no-gates", "--val", str(val500_dir)], env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.read_bytes() == Path(int8_model).read_bytes()


def test_users_onnx_classifier(tmp_path):
    """A user's own ONNX classifier (RGB, normalized input, 10 classes) converts with its labels."""
    import torch

    from convert.models import create_model

    torch.manual_seed(0)
    model = create_model("squeezenet1_1", num_classes=10).eval()
    onnx_path = tmp_path / "mine.onnx"
    torch.onnx.export(model, torch.zeros(1, 3, 224, 224), str(onnx_path), dynamo=False)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class_{i}" for i in range(10)))
    out = tmp_path / "mine_int8.tflite"
    proc = _run(["--onnx", str(onnx_path), "--labels", str(labels), "--out", str(out), "--no-gates", "--quiet"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = read_model_info(out)
    assert info.labels[3] == "class_3" and info.preprocessing.input_size == (224, 224)
    assert info.preprocessing.channel_order == "RGB" and info.input_channel_order == "RGB"
    assert set(op_report(out.read_bytes())["ops"]) <= INTEGER_OPS
    from edge_runtime.preprocess import read_image

    preds = Classifier(out).classify(read_image(str(ROOT / "calib_data" / "skimage_coffee.jpg")), k=3)
    assert len(preds) == 3 and all(p.label.startswith("class_") for p in preds)
