"""The converter, on the real Deep Compression model (converted once per session, see conftest)."""
import contextlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convert.artifact import op_report
from convert.pipeline import sibling_paths
from edge_runtime.classify import Classifier
from edge_runtime.metadata import read_model_info

from conftest import QUICK
from realworld import convert_main, one_error_line

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
    # the project's targets, which CI's gated conversion enforces too
    assert val["agreement"] >= 95.0, val
    assert val["top1_drop"] <= 1.0, val
    # 1,397,032 bytes before the standard metadata (928 bytes), the appended labels.txt (10,591 bytes) and
    # the split first squeeze (convert/split_squeeze.py: one more convolution, twice the expand inputs)
    assert converted["sizes"]["int8_tflite"] <= 1_425_000
    assert converted["sizes"]["int8_tflite"] == Path(converted["out"]).stat().st_size
    onnx_path, float_tflite = sibling_paths(Path(converted["out"]))
    assert onnx_path.stat().st_size == converted["sizes"]["float_onnx"] and float_tflite.exists()
    hold = converted["validation"]["calibration_holdout"]
    assert hold["images"] >= 10 and hold["agreement"] >= 80.0
    assert converted["calibration"]["bias_correction"]["layers"] == 27  # 26 + the split squeeze's second half
    assert converted["calibration"]["weight_rounding"]["layers"] == 26  # rounded before the split
    assert converted["calibration"]["squeeze_split"]["fires"] == ["features.3"]


def test_no_gates_says_the_gates_were_not_applied(converted):
    """--no-gates printed '| gates | passed |' and recorded passed, even for figures under a default gate: the
    report and the table say the gates were not applied, and what the default gates would have missed."""
    from convert.pipeline import markdown_table
    from convert.validate import Gates

    gates = converted["gates"]
    assert gates["applied"] is False and gates["passed"] is None and gates["failed"] == []
    assert gates["default_missed"] == Gates().missed(converted["validation"])
    table = (Path(converted["out"]).parent / "stdout.txt").read_text()
    assert "| gates | not applied (--no-gates); the default gates would have " in table, table
    assert "| gates | passed |" not in table
    # the walk-through's figures: 94.0% agreement, under the default 95% gate
    low = json.loads(json.dumps(converted))
    low["validation"]["val"]["agreement"] = 94.0
    low["gates"] = Gates(None, None).judge(low["validation"])
    assert low["gates"]["default_missed"][0] == "top-1 agreement 94.0% < 95.0%"
    assert markdown_table(low).splitlines()[-1] == ("| gates | not applied (--no-gates); the default gates would "
                                                    f"have failed: {'; '.join(low['gates']['default_missed'])} |")


def test_long_phases_print_progress(converted):
    """The statistics pass (43 s on a busy machine) and the check views through each model (a minute each) were
    silent: they print progress lines like the range statistics' (``[  39.9s] range statistics 50/384``)."""
    err = (Path(converted["out"]).parent / "stderr.txt").read_text()
    views = converted["validation"]["unlabelled"]["views"]
    for line in ("calibration statistics 16/96", "calibration statistics 96/96", "weight rounding 24/26 layers",
                 "range statistics 50/384", "range statistics 384/384",
                 f"unlabelled check views, float model 200/{views}",
                 f"unlabelled check views, float model {views}/{views}",
                 f"unlabelled check views, int8 model {views}/{views}"):
        assert re.search(r"^\[ *\d+\.\ds\] " + re.escape(line) + "$", err, re.M), line
    # TensorFlow's own start-up and information lines stayed in the working folder's log: a conversion
    # without --quiet printed nine among the progress lines ("Could not find cuda drivers on your machine",
    # oneDNN's "slightly different numerical results" in a byte-reproducible conversion)
    for noise in ("absl::InitializeLog", "oneDNN", "cuda", "XNNPACK delegate", "fully_quantize"):
        assert noise not in err, err
    assert all(line.startswith(("[", "  ", "|")) for line in err.splitlines()), err


def test_int8_top1_matches_float_on_real_photos(int8_model, float_model):
    """Classify real photos: the int8 artifact must name the same class as the float model."""
    from convert.torch_eval import torch_predict
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
    assert names == {"skimage_coffee.jpg": "espresso", "skimage_chelsea.jpg": "Egyptian_cat",
                     "opencv_orange.jpg": "lemon", "opencv_squirrel_cls.jpg": "fox_squirrel"}


@contextlib.contextmanager
def _unwritable(folder: Path):
    """A folder nobody can write to: read-only for a user, immutable (chattr +i) for root, who
    writes anywhere else (CI runs as root)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    proc = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"as root, the unwritable-output check needs chattr +i on {folder}: {proc.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def _run(args, **kw):
    return subprocess.run([sys.executable, "-m", "convert", "tflite", *args], capture_output=True, text=True,
                          cwd=ROOT, **kw)


def _in_process(args):
    return convert_main("tflite", *args)


def test_bad_inputs_give_one_line(tmp_path, weights_env):
    out = str(tmp_path / "m_int8.tflite")
    # a real process first (what a user sees), then the other cases in this process (convert_main)
    assert "no such weights file" in one_error_line(_run(["--weights", str(tmp_path / "nope.pth"), "--out", out]))
    corrupt = tmp_path / "bad.net"
    corrupt.write_bytes(b"\x01" * 1000)
    assert "truncated" in one_error_line(_in_process(["--weights", str(corrupt), "--out", out]))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no images" in one_error_line(_in_process(["--calib", str(empty), "--out", out]))
    # checked before the work, not after minutes of it
    assert one_error_line(_in_process(["--val", str(tmp_path / "nowhere"), "--out", out])) == \
        f"error: --val {tmp_path / 'nowhere'}: not a folder of labelled images"
    few = tmp_path / "few"
    few.mkdir()
    for f in sorted((ROOT / "calib_data").glob("*.jpg"))[:5]:
        (few / f.name).write_bytes(f.read_bytes())
    (few / "broken.jpg").write_bytes(b"garbage")
    assert "at least 20 expected" in one_error_line(_in_process(["--calib", str(few), "--out", out]))
    locked = tmp_path / "locked"
    locked.mkdir()
    with _unwritable(locked):
        out_locked = str(locked / "m_int8.tflite")
        assert one_error_line(_in_process(["--out", out_locked])) == f"error: {out_locked}: output path is not writable"
    assert "not found" in one_error_line(_in_process(["--onnx", str(tmp_path / "none.onnx"), "--out", out]))


def test_non_classifier_onnx(tmp_path):
    import torch

    class Seg(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x, 2)

    path = tmp_path / "seg.onnx"
    torch.onnx.export(Seg(), torch.zeros(1, 3, 32, 32), str(path), dynamo=False)
    err = one_error_line(_in_process(["--onnx", str(path), "--out", str(tmp_path / "x_int8.tflite")]))
    assert "output of shape [1, 3, 16, 16]: 1xN class scores expected for an image classifier" in err, err
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    assert "not a valid ONNX" in one_error_line(_in_process(["--onnx", str(tmp_path / "junk.onnx"),
                                                             "--out", str(tmp_path / "y_int8.tflite")]))


def test_gate_failure_keeps_the_previous_artifact(tmp_path, run_dir):
    """A model that misses its gate writes nothing: the trained Fashion-MNIST run (``run_dir``), converted
    as users do (its own calibration sample, its own validation split), asked to agree on every image."""
    out = tmp_path / "keep_int8.tflite"
    out.write_bytes(b"previous good artifact")
    # every one of 300 images must agree: QUICK settings on this 32x32 run (about 3% ties) do not reach that
    proc = _run(["--weights", str(run_dir / "best.pt"), "--out", str(out), *QUICK, "--min-agreement", "1",
                 "--report", str(tmp_path / "r.json")])
    err = one_error_line(proc)
    assert proc.returncode == 3, proc.returncode  # a missed gate, told apart from bad input (2) and a crash (1)
    report = json.loads((tmp_path / "r.json").read_text())
    agreement = report["validation"]["val"]["agreement"]
    assert agreement < 100 and report["gates"]["failed"][0] == f"top-1 agreement {agreement:.1f}% < 100.0%"
    assert err == f"error: {'; '.join(report['gates']['failed'])} (report: {tmp_path / 'r.json'})"
    assert out.read_bytes() == b"previous good artifact"
    assert not sibling_paths(out)[0].exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or p.name.startswith("convert-")]
    assert report["gates"]["passed"] is False and report["validation"]["val"]["images"] == 300
    assert "| gates | FAILED: top-1 agreement" in proc.stdout  # the table comes from the error's report


def test_report_names_what_made_the_bytes(trained_converted):
    """A CI job comparing artifacts reads why they differ in the report: each output's sha256, the command,
    the packages, the CPU and the variables that pick the kernels (the report had sizes alone)."""
    import hashlib
    from importlib import metadata

    from convert.provenance import KERNEL_ENV, environment

    out = Path(trained_converted["out"])
    onnx_path, tflite_path = sibling_paths(out)
    assert trained_converted["sha256"] == {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in
                                           (("int8_tflite", out), ("float_tflite", tflite_path),
                                            ("float_onnx", onnx_path))}
    command = trained_converted["command"]
    assert command[0] == "tflite" and command[command.index("--out") + 1] == str(out), command
    env = trained_converted["environment"]
    for name in ("torch", "tensorflow", "onnx2tf", "onnxruntime", "numpy"):
        assert env["packages"][name] == metadata.version(name), name
    assert env["cpu"] and env["cores"] == os.cpu_count() and env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["env"] == {k: os.environ[k] for k in KERNEL_ENV if k in os.environ}
    # a kernel variable set is recorded (the suite sets none: asked of the function itself)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
        assert environment()["env"]["ONEDNN_MAX_CPU_ISA"] == "AVX2"


def test_reproducible_and_offline(tmp_path, run_dir, trained_converted, offline_env):
    """The same inputs give the same bytes, in another process with every network connection refused:
    the trained run's checkpoint converted again (QUICK settings, as ``trained_converted``). The suite's
    full conversion, ``converted``, also runs offline; .ci/run checks that its gated conversion with the
    full settings gives that artifact byte for byte."""
    first = Path(trained_converted["out"])
    out = tmp_path / "again" / first.name  # the same name: the artifact records its siblings' names
    proc = _run(["--weights", str(run_dir / "best.pt"), "--out", str(out), *QUICK, "--no-gates"], env=offline_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.read_bytes() == first.read_bytes()
    assert proc.stderr == ""  # --quiet: not even TensorFlow's own lines (absl, oneDNN, XNNPACK...)


class _UsersClassifier:
    """The real Deep Compression SqueezeNet as a user would ship it in ONNX: trained, say, on RGB input
    normalized Inception-style ((pixels - 127.5) / 127.5), not the Caffe record of the release. The
    normalization lives in the first convolution's weights (exact: it has no padding)."""

    MEAN = STD = (127.5, 127.5, 127.5)

    @staticmethod
    def export(model, record, path: Path) -> None:
        import torch

        from convert.pixel_model import PixelModel

        users = PixelModel(model, record.preprocessing).folded()  # raw BGR pixels in
        conv = next(m for m in users.modules() if isinstance(m, torch.nn.Conv2d))
        with torch.no_grad():  # pixels_bgr = flip(127.5 * x + 127.5): x is the normalized RGB input
            w = conv.weight.flip(1)
            conv.bias.add_(127.5 * w.sum(dim=(1, 2, 3)))
            conv.weight.copy_(127.5 * w)
        torch.onnx.export(users.eval(), torch.zeros(1, 3, 227, 227), str(path), dynamo=False)

    @classmethod
    def normalize(cls, crops_bgr: np.ndarray) -> np.ndarray:
        """What the user's own code does before calling their model: BGR crops -> normalized NCHW RGB."""
        rgb = crops_bgr[..., ::-1].astype(np.float32)
        return np.ascontiguousarray(((rgb - np.float32(127.5)) / np.float32(127.5)).transpose(0, 3, 1, 2))


def test_users_onnx_classifier_with_its_own_normalization(tmp_path, float_model, val500_dir):
    """A real classifier exported to ONNX with its own mean/std and channel order: the converter's
    normalization in front of it must give what ONNX Runtime gives on the user's normalized input."""
    import onnxruntime as ort

    from edge_runtime.preprocess import read_image, resize_crop

    model, record = float_model
    onnx_path = tmp_path / "mine.onnx"
    _UsersClassifier.export(model, record, onnx_path)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"{i}:{name}" for i, name in enumerate(record.labels)))
    out = tmp_path / "mine_int8.tflite"
    check = tmp_path / "check"  # two unseen photos instead of the 73 of check_data/: this is not about fidelity
    check.mkdir()
    for p in sorted(val500_dir.iterdir())[1:3]:
        (check / p.name).write_bytes(p.read_bytes())
    proc = _run(["--onnx", str(onnx_path), "--labels", str(labels), "--out", str(out), "--no-gates", *QUICK,
                 "--check", str(check),
                 "--mean", "127.5,127.5,127.5", "--std", "127.5,127.5,127.5", "--channel-order", "RGB",
                 "--resize", "256x256"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = read_model_info(out)
    pp = info.preprocessing
    assert info.labels[281] == "281:tabby" and pp.input_size == (227, 227) and pp.resize == (256, 256)
    assert pp.channel_order == "RGB" and pp.mean == _UsersClassifier.MEAN and pp.std == _UsersClassifier.STD
    assert info.input_channel_order == "RGB" and set(op_report(out.read_bytes())["ops"]) <= INTEGER_OPS

    photos = sorted(val500_dir.iterdir())[::25]  # 20 real photos the calibration never saw
    crops = np.stack([resize_crop(read_image(str(p)), pp) for p in photos])
    users = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected = np.concatenate([users.run(None, {users.get_inputs()[0].name: _UsersClassifier.normalize(c[None])})[0]
                               for c in crops])
    # the float graph the converter built (normalization conv in front) takes the BGR pixels as they come
    ours = ort.InferenceSession(str(sibling_paths(out)[0]), providers=["CPUExecutionProvider"])
    got = np.concatenate([ours.run(None, {ours.get_inputs()[0].name: c[None].transpose(0, 3, 1, 2).astype(np.float32)})[0]
                          for c in crops])
    assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max(), np.abs(got - expected).max()
    # and the int8 artifact names the classes the user's model names
    int8_top = Classifier(out).predict_batch(crops).argmax(1)
    agree = int((int8_top == expected.argmax(1)).sum())
    assert agree >= 17, (agree, len(crops))


def test_users_onnx_whose_input_is_named_pixels(tmp_path):
    """The converter's normalization conv in front of a user's ONNX reads a tensor it names ``pixels``: a
    model whose own input has that name (any export with input_names=["pixels"], and the converter's own
    *_float.onnx fed back in) converts, and the int8 artifact classifies as ONNX Runtime does."""
    import onnx
    import onnxruntime as ort
    import torch

    from convert.float_graphs import prepend_normalization
    from edge_runtime.preprocess import read_image, resize_crop

    class Colour(torch.nn.Module):  # three classes: which colour channel of the normalized input is strongest
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)
            with torch.no_grad():
                self.conv.weight.copy_(4.0 * torch.eye(3)[:, :, None, None])
                self.conv.bias.zero_()

        def forward(self, x):
            return self.conv(x).mean(dim=(2, 3))

    onnx_path, out = tmp_path / "colour.onnx", tmp_path / "colour_int8.tflite"
    torch.onnx.export(Colour().eval(), torch.zeros(1, 3, 32, 32), str(onnx_path), input_names=["pixels"], dynamo=False)
    check = tmp_path / "check"  # two photos instead of the 73 of check_data/: this is not about fidelity
    check.mkdir()
    photos = sorted((ROOT / "convert" / "check_data").glob("*.jpg"))
    for p in photos[:2]:
        (check / p.name).write_bytes(p.read_bytes())
    proc = _in_process(["--onnx", onnx_path, "--out", out, "--check", check, "--no-gates", *QUICK])
    assert proc.returncode == 0, proc.stderr[-2000:]

    pp = read_model_info(out).preprocessing
    crops = np.stack([resize_crop(read_image(str(p)), pp) for p in photos[::8]])
    rgb = crops[..., ::-1].astype(np.float32)
    normalized = ((rgb - np.float32(pp.mean)) / np.float32(pp.std)).transpose(0, 3, 1, 2)
    users = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected = np.concatenate([users.run(None, {"pixels": n[None]})[0] for n in normalized])
    got = Classifier(out).predict_batch(crops)
    top2 = np.sort(expected, axis=1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > 0.3  # photos whose class a few int8 steps cannot change
    assert decided.sum() >= 5 and (got.argmax(1) == expected.argmax(1))[decided].all(), (got, expected)

    # the float sibling (BGR pixels in, its normalization inside, its input named pixels_1) fed back in with
    # no flags: its own record says so, so no second normalization goes in front (fresh names all the same)
    # (README: `convert tflite --onnx X_float.onnx --out X_onnx_int8.tflite`); with the --out it was written beside
    # it would be its own new sibling: refused in one line naming that --out, the sibling unchanged
    sibling, again = sibling_paths(out)[0], tmp_path / "colour_onnx_int8.tflite"
    before = sibling.read_bytes()
    proc = _in_process(["--onnx", sibling, "--out", out, "--check", check, "--no-gates", *QUICK])
    assert proc.returncode == 2 and proc.stderr.strip().endswith(f"choose another --out, e.g. --out {again}")
    assert sibling.read_bytes() == before
    proc = _in_process(["--onnx", sibling, "--out", again, "--check", check, "--no-gates", *QUICK])
    assert proc.returncode == 0, proc.stderr[-2000:]
    info, first = read_model_info(again), read_model_info(out)
    assert info.labels == first.labels and info.model_name == first.model_name == "colour"
    assert (info.preprocessing.input_size, info.preprocessing.resize) == (pp.input_size, pp.resize)
    assert (info.preprocessing.mean, info.preprocessing.std) == ((0, 0, 0), (1, 1, 1))
    # (the int8 normalization conv in front and the user's conv then have equal int8 filters, which the TFLite
    # converter stores in one buffer: reordering the first one's input channels must not reorder the other's)
    assert (Classifier(again).predict_batch(crops).argmax(1) == expected.argmax(1))[decided].all()
    # a record that is not the converter's, or does not fit the graph: one line, before any work
    from edge_runtime.metadata import METADATA_NAME
    own = {p.key: p.value for p in onnx.load(str(sibling)).metadata_props}[METADATA_NAME]
    assert '"labels":["0","1","2"]' in own and '"dtype":"float32"' in own
    for record, why in (("{not json", "unreadable"), (own.replace('"labels":["0","1","2"]', '"labels":["0"]'),
                                                      "names 1 labels, the graph has 3 outputs"),
                        (own.replace('"float_sibling_of"', '"other"'), "not the record of a float model"),
                        (own.replace('{', '{"check_reference":null,', 1), "check_reference is not"),
                        (own, "'utf-8' codec can't decode")):
        forged, model = tmp_path / "forged.onnx", onnx.load(str(sibling))
        onnx.helper.set_model_props(model, {METADATA_NAME: record})
        onnx.save(model, str(forged))
        if "utf-8" in why:  # a byte of the record that is not UTF-8 (protobuf then gives bytes, not text)
            forged.write_bytes(forged.read_bytes().replace(b'"model_name":"colour"', b'"model_name":"colou\xff"'))
        line = one_error_line(_in_process(["--onnx", forged, "--out", tmp_path / "f_int8.tflite"]))
        assert f"forged.onnx: its {METADATA_NAME} record" in line and why in line, line
    twice = tmp_path / "twice.onnx"
    prepend_normalization(sibling, pp, twice)
    graph = onnx.load(str(twice)).graph
    assert [i.name for i in graph.input] == ["pixels_2"] and graph.node[0].name == "pixels_normalize_1"


def test_a_model_onnx2tf_converts_wrongly_gives_one_line(tmp_path):
    """onnx2tf loses a channel flip (x.flip(1) in PyTorch): the converter compares its float TFLite with
    the ONNX model and refuses, instead of quantizing a different model."""
    import torch

    class FlipsChannels(torch.nn.Module):  # a small classifier whose graph reverses the colour channels
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 8, 3)
            self.fc = torch.nn.Linear(8, 10)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x.flip(1))).mean(dim=(2, 3)))

    path = tmp_path / "flips.onnx"
    torch.onnx.export(FlipsChannels().eval(), torch.zeros(1, 3, 64, 64), str(path), dynamo=False)
    err = one_error_line(_run(["--onnx", str(path), "--out", str(tmp_path / "flips_int8.tflite"), *QUICK]))
    assert err.startswith("error: onnx2tf changed what the model computes: its float TFLite differs"), err
    assert not list(tmp_path.glob("flips_*.tflite"))


def test_rounded_weights_are_placed_by_value(int8_model):
    """tflite.replace_conv_weights on the suite's float TFLite (27 convolutions, the split squeeze's two
    halves among them): each filter gets the weights of the model convolution it holds, whatever order
    they come in, and a filter that is none of the model's is refused."""
    from tensorflow.lite.tools import flatbuffer_utils

    from convert.errors import ConvertError
    from convert.tflite import replace_conv_weights

    _, float_tflite = sibling_paths(int8_model)
    data = float_tflite.read_bytes()

    def filters(model_bytes):
        m = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
        sg = m.subgraphs[0]
        out = []
        for op in sg.operators:
            if flatbuffer_utils.opcode_to_name(m, op.opcodeIndex) == "CONV_2D":
                t = sg.tensors[op.inputs[1]]
                w = np.frombuffer(bytes(bytearray(m.buffers[t.buffer].data)), np.float32).reshape(t.shape)
                out.append(w.transpose(0, 3, 1, 2))  # OHWI -> the model's OIHW
        return out

    expected = filters(data)
    assert len(expected) == 27
    order = list(range(len(expected)))[::-1]  # the model's order differs from the graph's
    replaced = filters(replace_conv_weights(data, [expected[j] + 1 for j in order], [expected[j] for j in order]))
    assert all(np.array_equal(r, e + 1) for r, e in zip(replaced, expected))
    wrong = [e.copy() for e in expected]
    wrong[5].flat[0] += 1
    with pytest.raises(ConvertError, match="convolution 5 of the TFLite graph is not the model's"):
        replace_conv_weights(data, expected, wrong)


def test_native_stderr_filter_keeps_what_matters_and_survives_a_failing_stderr(tmp_path):
    """What a conversion's libraries write to file descriptor 2 passes through a filter (convert.pipeline.
    native_stderr_to): TensorFlow's start-up lines are dropped, Python's lines and a library's error kept in
    order, and a library that aborts the process still has its last line shown. A stderr that fails (a full
    disk) leaves stderr as it found it, and a logging handler made inside writes to the real one after."""
    import subprocess
    import sys

    code = ("import logging, os, sys\nfrom pathlib import Path\nfrom convert.pipeline import native_stderr_to\n"
            "with native_stderr_to(Path(sys.argv[1]), show=True):\n"
            "    logging.getLogger('lib').addHandler(logging.StreamHandler())\n"
            "    print('progress', file=sys.stderr)\n"
            "    os.write(2, b'I0000 00:00:1796070820.224335    9283 port.cc:153] oneDNN custom operations are on.\\n'"
            " b'E0000 00:00:1796070820.3    9283 kernel.cc:42] a real error\\n')\n"
            "    print('more progress', file=sys.stderr)\n"
            "    if sys.argv[2] == 'abort':\n        os.abort()\n"
            "    if sys.argv[2] == 'raise':\n        raise SystemExit('terminated')\n"
            "logging.getLogger('lib').error('after')\n"
            "print(sys.stderr is sys.__stderr__, os.readlink('/proc/self/fd/2'))\n")
    run = [sys.executable, "-c", code, tmp_path / "t.log"]
    r = subprocess.run([*run, "-"], capture_output=True, text=True, cwd=ROOT)
    assert r.stderr == "progress\nE0000 00:00:1796070820.3    9283 kernel.cc:42] a real error\nmore progress\nafter\n", \
        r.stderr
    # an error or a signal inside: the lines before it come before its own (`terminated (SIGTERM)`)
    r = subprocess.run([*run, "raise"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 1 and r.stderr.endswith("a real error\nmore progress\nterminated\n"), r.stderr
    r = subprocess.run([*run, "abort"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode < 0 and r.stderr.endswith("a real error\nmore progress\n"), (r.returncode, r.stderr)
    with open("/dev/full", "w") as full:
        r = subprocess.run([*run, "-"], stdout=subprocess.PIPE, stderr=full, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0 and r.stdout == "True /dev/full\n", r.stdout
