"""The artifact's outputs, standard metadata and integrity checksum, on the real converted model."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.classify import Classifier, ModelError
from edge_runtime.metadata import read_model_info
from realworld import one_error_line

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished(int8_model) -> Path:
    """The converter's artifact in its finished form: exact uint8 score head, RGB input, both
    metadata records, labels appended, checksum sealed."""
    info = read_model_info(int8_model)
    assert "output" in info.extra and info.input_channel_order == "RGB"  # the converter writes it finished
    return Path(int8_model)


@pytest.fixture(scope="module")
def val_crops(val500_dir, int8_model) -> np.ndarray:
    from edge_runtime.preprocess import read_image, resize_crop

    pp = read_model_info(int8_model).preprocessing
    paths = sorted(val500_dir.glob("*.JPEG"))[::10]
    return np.stack([resize_crop(read_image(str(p)), pp) for p in paths])


def _scores(path: Path, crops: np.ndarray, interpreter_class, rgb: bool) -> np.ndarray:
    it = interpreter_class(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()
    assert len(out) == 1
    rows = []
    for crop in crops:
        it.set_tensor(inp["index"], np.ascontiguousarray(crop[..., ::-1] if rgb else crop)[None])
        it.invoke()
        rows.append(it.get_tensor(out[0]["index"])[0].copy())
    return np.stack(rows)


def _exact_relative_sums(path: Path, crops: np.ndarray, rgb: bool, builtin: bool = False
                         ) -> tuple[np.ndarray, float]:
    """The reference: the model's last int8 feature map (the input of the pool, or of the exact
    head's CAST) made the output, summed exactly in numpy, relative to the best class."""
    from tensorflow.lite.tools import flatbuffer_utils

    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(Path(path).read_bytes()))
    sg = model.subgraphs[0]
    name = lambda op: flatbuffer_utils.opcode_to_name(model, op.opcodeIndex)  # noqa: E731
    op = next(op for op in sg.operators if name(op) == "MEAN" or (name(op) == "CAST" and len(
        sg.tensors[int(op.inputs[0])].shape) == 4))
    sg.outputs = [int(op.inputs[0])]
    model.signatureDefs = []
    kernels = {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES} if builtin else {}
    it = Interpreter(model_content=bytes(flatbuffer_utils.convert_object_to_bytearray(model)), num_threads=1,
                     **kernels)
    it.allocate_tensors()
    sums = []
    for crop in crops:
        it.set_tensor(it.get_input_details()[0]["index"], np.ascontiguousarray(crop[..., ::-1] if rgb else crop)[None])
        it.invoke()
        sums.append(it.get_tensor(it.get_output_details()[0]["index"]).astype(np.int64).sum(axis=(0, 1, 2)))
    sums = np.stack(sums)
    return sums - sums.max(axis=1, keepdims=True), float(sg.tensors[int(op.inputs[0])].quantization.scale[0])


def test_score_head_is_the_exact_integer_reduction(finished, val_crops):
    """uint8 scores = 255 + max(floor((S_c - max S) / d), -255), bit for bit, on two interpreters;
    the best class alone reads 255 unless two int32 sums are equal. The RGB graph decides as the
    BGR one did (its first filters are reordered, nothing else)."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from convert.artifact import op_report

    ops = op_report(finished.read_bytes())
    assert "MEAN" not in ops["ops"] and {"CAST", "SUM", "REDUCE_MAX"} <= set(ops["ops"])
    assert "FLOAT32" not in ops["tensor_types"]
    out = read_model_info(finished).extra["output"]
    assert out["dtype"] == "uint8" and out["exact_top1"] and out["positions"] == 225
    rel, map_scale = _exact_relative_sums(finished, val_crops, rgb=True)
    d = round(out["step_logits"] / out["unit_logits"])
    assert abs(out["unit_logits"] - map_scale / 225) < 1e-9 and d >= 1
    expected = np.maximum(np.floor_divide(rel, d), -255) + 255
    for cls in (Interpreter, tf.lite.Interpreter):
        got = _scores(finished, val_crops, cls, rgb=True)
        assert got.dtype == np.uint8 and np.array_equal(got.astype(np.int64), expected)
    clf = Classifier(finished)
    assert clf.info.input_channel_order == "RGB"
    assert clf.output_zero_point == 255 and abs(clf.output_scale - out["step_logits"]) < 1e-6
    # the runtime decides on TFLite's builtin kernels (XNNPACK, above, rounds some layers differently)
    builtin, _ = _exact_relative_sums(finished, val_crops, rgb=True, builtin=True)
    assert np.array_equal(clf.predict_batch(val_crops).argmax(1), builtin.argmax(1))
    clf.set_crop(val_crops[0])
    clf.invoke()
    top = clf.top_k(3)
    assert top[0].index == int(rel[0].argmax()) and top[0].score > top[1].score >= top[2].score


def test_standard_metadata_and_label_file(finished):
    """TFLITE_METADATA (file identifier M001) names the model, the RGB image input and the score
    output, whose TENSOR_AXIS_LABELS file is packed in the zip appended to the model."""
    from edge_runtime.metadata import read_metadata_bytes

    data = finished.read_bytes()
    standard = read_metadata_bytes(data, "TFLITE_METADATA")
    assert standard is not None and standard[4:8] == b"M001"
    for text in (b"labels.txt", b"image_classifier", b"squeezenet", b"1.0.0"):
        assert text in standard
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.namelist() == ["labels.txt"]
        labels = z.read("labels.txt").decode().splitlines()
    info = read_model_info(finished)
    assert labels == info.labels and labels[281] == "tabby"


def _flip(path: Path, dest: Path, offsets) -> Path:
    data = bytearray(path.read_bytes())
    for o in offsets:
        data[o] ^= 0xFF
    dest.write_bytes(bytes(data))
    return dest


def _weight_offsets(path: Path, count: int = 16) -> list[int]:
    """File offsets of ``count`` bytes inside the largest constant buffer (conv10's weights)."""
    from tensorflow.lite.tools import flatbuffer_utils

    data = path.read_bytes()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    big = max((b for b in model.buffers if b.data is not None), key=lambda b: len(b.data))
    start = bytes(data).find(bytes(big.data[:64]))
    assert start > 0
    return [start + 1000 + 997 * i for i in range(count)]


def test_damaged_weights_are_refused(finished, tmp_path):
    """16 flipped bytes inside the weights: refused with one line; verify=False loads it."""
    from edge_runtime.integrity import verify_file

    assert len(verify_file(finished)) == 64
    bad = _flip(finished, tmp_path / "damaged_int8.tflite", _weight_offsets(finished))
    with pytest.raises(ModelError) as e:
        Classifier(bad)
    assert "integrity check failed" in str(e.value) and "\n" not in str(e.value)
    assert Classifier(bad, verify=False).content_sha256 is None
    # a change in the metadata record or in the appended label file is caught too, by the checksum alone: the
    # first letter of the model's name changes case (still valid JSON), and a byte of the label file flips
    data = finished.read_bytes()
    name = data.find(b'"model_name"')
    letter = data.find(b'"', name + len(b'"model_name"')) + 1
    assert name > 0 and chr(data[letter]).isalpha()
    renamed = tmp_path / "renamed.tflite"
    renamed.write_bytes(data[:letter] + bytes([data[letter] ^ 0x20]) + data[letter + 1:])
    assert Classifier(renamed, verify=False).info.model_name != read_model_info(finished).model_name
    for bad in (renamed, _flip(finished, tmp_path / "m.tflite", [len(data) - 200])):
        with pytest.raises(ModelError, match="integrity check failed"):
            Classifier(bad)


def test_older_artifacts_without_a_checksum_still_load(finished, tmp_path):
    """An artifact carrying only the project's JSON record (no checksum, no standard metadata, as
    the converter wrote them before) loads with nothing to verify."""
    from convert.artifact import embed_metadata
    from edge_runtime.integrity import DIGEST_KEY

    info = read_model_info(finished)
    old = dataclasses.replace(info, extra={k: v for k, v in info.extra.items() if k != DIGEST_KEY})
    path = tmp_path / "old_int8.tflite"
    path.write_bytes(embed_metadata(finished.read_bytes(), old))
    clf = Classifier(path)
    assert clf.content_sha256 is None and clf.info.labels == info.labels


def _cli(*args: str) -> "subprocess.CompletedProcess":
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_runtime_evaluator_and_benchmark_refuse_a_damaged_model(finished, val500_dir, tmp_path, sample_clip):
    """The three command lines refuse 16 flipped weight bytes with one line and a non-zero exit;
    --no-verify runs them anyway."""
    bad = _flip(finished, tmp_path / "damaged_int8.tflite", _weight_offsets(finished))
    images = tmp_path / "five"
    images.mkdir()
    for p in sorted(val500_dir.glob("*.JPEG"))[:5]:
        (images / p.name).write_bytes(p.read_bytes())
    runtime = ["-m", "edge_runtime", "--source", sample_clip, "--model", bad, "--json", "--max-frames", "1"]
    evaluator = ["-m", "convert", "evaluate", "--weights", bad, "--val", images, "--json"]
    benchmark = ["-m", "tools.benchmark", "--model", bad, "--runs", "2", "--warmup", "0", "--min-seconds", "0",
                 "--threads", "1"]
    for argv in (runtime, evaluator, benchmark):
        assert "integrity check failed" in one_error_line(_cli(*argv)), argv
        ok = _cli(*argv, "--no-verify")
        assert ok.returncode == 0, (argv, ok.stderr[-2000:])
    good = json.loads(_cli("-m", "convert", "evaluate", "--weights", finished, "--val", images, "--json").stdout)
    assert good["images"] == 5 and good["sha256"] == hashlib.sha256(finished.read_bytes()).hexdigest()  # as /model
    assert good["content_sha256"] == Classifier(finished).content_sha256 != good["sha256"]  # the sealed content


def test_the_float_onnx_gives_the_same_logits_in_opencv_dnn(int8_model, val_crops):
    """SqueezeNet v1.0's conv10 is a 1x1 convolution with pad 1, whose border OpenCV's DNN (5.0) computes
    wrongly (logits up to 6 apart, another top-1 on some photos; the benchmark's opencv-dnn peer agreed on
    95%): the float ONNX kept beside the artifact has that padding in a Pad node, the same function, and
    cv2.dnn gives ONNX Runtime's logits."""
    import cv2
    import onnx
    from convert.pipeline import sibling_paths
    from convert.validate import onnx_predict

    onnx_path, _ = sibling_paths(Path(int8_model))
    assert "Pad" in {n.op_type for n in onnx.load(str(onnx_path)).graph.node}
    net, got = cv2.dnn.readNetFromONNX(str(onnx_path)), []
    for crop in val_crops:
        net.setInput(crop.transpose(2, 0, 1)[None].astype(np.float32))
        got.append(net.forward().ravel())
    got, expected = np.stack(got), onnx_predict(onnx_path)(val_crops)
    assert np.abs(got - expected).max() < 1e-3 * np.abs(expected).max()
    assert np.array_equal(got.argmax(1), expected.argmax(1))


def test_float_sibling_is_self_describing_and_rgb(int8_model, val_crops):
    """The float TFLite kept beside the artifact carries the project's record (float32 RGB pixels,
    plain logits), the standard metadata with the labels file, and the checksum; with its first
    filters reordered for RGB it gives the float ONNX reference's logits (BGR in) on real photos."""
    from convert.pipeline import sibling_paths
    from convert.validate import onnx_predict
    from edge_runtime.metadata import read_metadata_bytes

    onnx_path, sibling = sibling_paths(Path(int8_model))
    info = read_model_info(sibling)
    assert info.input_dtype == "float32" and info.input_channel_order == "RGB"
    assert info.extra["output"]["meaning"] == "logits" and info.extra["float_sibling_of"] == Path(int8_model).name
    assert info.labels == read_model_info(int8_model).labels and info.extra["license"]
    data = sibling.read_bytes()
    standard = read_metadata_bytes(data, "TFLITE_METADATA")
    assert standard is not None and standard[4:8] == b"M001" and b"float32" in standard
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert z.read("labels.txt").decode().splitlines() == info.labels
    clf = Classifier(sibling)  # verifies the checksum
    assert clf.content_sha256 and clf.input_dtype == np.float32
    got = clf.predict_batch(val_crops)
    expected = onnx_predict(onnx_path)(val_crops)
    assert np.abs(got - expected).max() < 1e-3 * np.abs(expected).max()
    assert np.array_equal(got.argmax(1), expected.argmax(1))
