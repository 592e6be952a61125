"""Bounded input: image sizes from headers and a pixel budget, before
anything is decoded; metadata parsed with bounded depth, sizes and finite numbers; one line each."""
import contextlib
import io
import json
import struct
import sys
import zlib

import cv2
import numpy as np
import pytest

from edge_runtime.image_size import ImageHeaderError, image_size
from edge_runtime.metadata import METADATA_NAME, read_metadata_bytes
from edge_runtime.preprocess import MAX_IMAGE_PIXELS, ImageTooLarge, PreprocessingError, read_image
from realworld import ROOT, one_error_line, run_module

PHOTO = ROOT / "calib_data" / "skimage_coffee.jpg"


def _png(width: int, height: int) -> bytes:
    """A real, valid 1-bit grayscale PNG of any size: a few KB of file for a gigabyte of pixels."""
    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    z = zlib.compressobj(9)
    data = b"".join(z.compress(row) for _ in range(height)) + z.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return _png(20000, 20000)  # 400 megapixels: 1.2 GB decoded


def _runtime(*args, limit_bytes: int | None = None):
    return run_module("edge_runtime", *args, memory_limit=limit_bytes)


@pytest.mark.parametrize("ext,params", [
    (".jpg", []), (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]), (".png", []), (".bmp", []),
    (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]), (".tiff", []),
    (".ppm", []), (".pgm", []), (".pbm", []), (".pam", []), (".pfm", [])])
def test_header_size_matches_the_decoded_image(ext, params):
    image = cv2.imread(str(PHOTO))[:301, :457]  # odd sizes: width and height cannot be swapped unnoticed
    if ext == ".pfm":
        image = image.astype(np.float32) / 255
    if ext in (".pgm", ".pbm"):
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    ok, data = cv2.imencode(ext, image, params)
    assert ok
    w, h, _ = image_size(data.tobytes())
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    assert (h, w) == decoded.shape[:2] == (301, 457)


def test_reads_are_bounded_even_where_the_size_says_nothing(tmp_path):
    """A file whose size reads 0 (a FIFO, /dev/zero, a file still growing) is cut at the limit while it is
    read: an image named by such a path is refused, not a process filling its memory."""
    from edge_runtime.fileio import FileTooLarge, read_bounded

    with pytest.raises(FileTooLarge, match="over the limit of 1,000 bytes"):
        read_bounded("/dev/zero", 1000)
    assert read_bounded("/dev/null", 10) == b""
    with pytest.raises(ImageTooLarge, match="over the image file budget"):
        read_image("/dev/zero")


def test_unknown_or_corrupt_headers_are_refused(tmp_path):
    jpeg = PHOTO.read_bytes()
    for data in (b"GIF89a\x01\x00\x01\x00", jpeg[:40], b"\x89PNG\r\n\x1a\n" + b"\x00" * 8, b"BM" + b"\x00" * 10,
                 b"\xff\xd8\xff" + b"\xff\xe0\x00\x02" * 2000):
        with pytest.raises(ImageHeaderError):
            image_size(data)
        (tmp_path / "x.jpg").write_bytes(data)
        with pytest.raises(PreprocessingError, match="not a readable image"):
            read_image(str(tmp_path / "x.jpg"))


def test_images_over_the_pixel_budget_are_refused_before_decoding(tmp_path, bomb):
    (tmp_path / "bomb.png").write_bytes(bomb)
    with pytest.raises(ImageTooLarge, match="20000x20000 pixels, over the budget of 50,000,000"):
        read_image(str(tmp_path / "bomb.png"))
    (tmp_path / "strip.png").write_bytes(_png(200_000, 1))  # small, but resized by its shorter side: huge
    from edge_runtime.preprocess import Preprocessing, resize_crop

    strip = read_image(str(tmp_path / "strip.png"))
    with pytest.raises(ImageTooLarge, match="would exceed"):
        resize_crop(strip, Preprocessing(input_size=(227, 227), resize=(256, 0)))
    assert MAX_IMAGE_PIXELS == 50_000_000  # the documented budget


def test_folder_with_a_decompression_bomb_under_a_memory_limit(int8_model, tmp_path, bomb):
    """A Pi-sized memory limit: the 20000x20000 PNG is skipped and counted, every other photo is
    classified, and each JSON line names its file."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("opencv_orange.jpg", "skimage_coffee.jpg"):
        (folder / name).write_bytes((ROOT / "calib_data" / name).read_bytes())
    (folder / "big.png").write_bytes(bomb)
    proc = _runtime("--source", folder, "--model", int8_model, "--json", limit_bytes=1_500_000_000)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "images over the pixel budget skipped: 1" in proc.stderr
    results = {(l := json.loads(line))["file"]: l["top"][0]["label"] for line in proc.stdout.splitlines()}
    assert results == {"opencv_orange.jpg": results["opencv_orange.jpg"], "skimage_coffee.jpg": "espresso"}
    assert results["opencv_orange.jpg"] in ("orange", "lemon")


def test_evaluate_skips_a_decompression_bomb(weights_env, val500_dir, tmp_path, bomb):
    folder = tmp_path / "val"
    folder.mkdir()
    names = sorted(p.name for p in val500_dir.iterdir())[:3]
    for name in names:
        (folder / name).write_bytes((val500_dir / name).read_bytes())
    (folder / f"{names[0][:9]}_bomb.png").write_bytes(bomb)  # named like an ImageNet file of a real class
    from convert.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["evaluate", "--weights", "deep-compression", "--val", str(folder), "--json"]) == 0
    report = json.loads(out.getvalue())
    assert report["images"] == 3 and report["skipped"] == 1
    assert "over the budget" in report["skipped_files"][0]


def _with_record(model: bytes, record: bytes) -> bytes:
    """The real artifact with its metadata record replaced in place (padded: JSON allows spaces)."""
    raw = read_metadata_bytes(model, METADATA_NAME)
    assert raw and len(record) <= len(raw), (len(record), len(raw))
    at = model.find(raw)
    return model[:at] + record.ljust(len(raw)) + model[at + len(raw):]


def _record(model: bytes) -> dict:
    return json.loads(read_metadata_bytes(model, METADATA_NAME))


def test_json_nesting_is_counted_without_parsing():
    """The nesting bound is checked before the parser (whose own bound is the recursion limit, which onnx2tf
    lifts to 2**31 - 1: a deep record then crashed the process): strings and escapes do not count, and
    text that never closes a string is counted in one pass (a rescan per quote took hours on 4 MB)."""
    from edge_runtime.metadata import MetadataError, json_depth, parse_json

    cases = {b"3": 0, b"{}": 1, rb'{"a":[1,{"b":"[[[["}]}': 3, rb'[{"a":"[[[\"]]"}]': 2, rb'["\\",[[1]]]': 3,
             b'["abc': 1, b"[" * 100_000 + b"]" * 100_000: 100_000}
    assert {text: json_depth(text) for text in cases} == cases
    assert json_depth(b'"' + b'\"' * 2_000_000) == 0  # an unterminated string of escaped quotes, 4 MB
    with pytest.raises(MetadataError, match="nests more than 32 levels"):
        parse_json(b"[" * 100_000 + b"]" * 100_000)


@pytest.mark.parametrize("case,expected", [
    ("deep", "nests more than 32 levels"), ("deep_list", "nests more than 32 levels"),
    ("infinite_resize", "finite numbers"), ("nan_mean", "finite numbers"), ("huge_int", "not readable JSON"), ("float_size", "whole number"),
    ("negative_size", "8..4096 expected"), ("labels_not_strings", "every entry must be a string")])
def test_hostile_metadata_gives_one_line(int8_model, sample_clip, tmp_path, case, expected):
    model = int8_model.read_bytes()
    rec = _record(model)
    del rec["wnids"]  # room for the longer hostile values in the same bytes
    if case == "deep":
        half = len(read_metadata_bytes(model)) // 2
        body = b"[" * half + b"]" * half
    elif case == "deep_list":
        rec["extra"] = json.loads("[" * 40 + "]" * 40)
    elif case == "infinite_resize":
        rec["preprocessing"]["resize"] = [1e999, 0]
    elif case == "nan_mean":
        rec["preprocessing"]["mean"] = [float("nan"), 0, 0]
    elif case == "huge_int":
        rec["preprocessing"]["resize"] = [int("9" * 5000), 0]
    elif case == "float_size":
        rec["preprocessing"]["input_size"] = [227.5, 227]
    elif case == "negative_size":
        rec["preprocessing"]["input_size"] = [-227, 227]
    elif case == "labels_not_strings":
        rec["labels"] = [[["x"]]] * 1000
    if case != "deep":
        sys.set_int_max_str_digits(10_000)
        body = json.dumps(rec, separators=(",", ":"), allow_nan=True).encode()
    bad = tmp_path / f"{case}.tflite"
    bad.write_bytes(_with_record(model, body))
    proc = _runtime("--source", sample_clip, "--model", bad, "--json", "--max-frames", 2)
    assert proc.returncode == 2 and expected in one_error_line(proc), proc.stderr
    assert not proc.stdout


@pytest.fixture(scope="module")
def zero_class_model(tmp_path_factory):
    """A real TFLite classifier graph with an output of shape (1, 0), converted by TensorFlow (in this
    process: the session's conversion has imported it already)."""
    import tensorflow as tf

    class ZeroClasses(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 32, 32, 3], tf.float32)])
        def f(self, x):
            return tf.reshape(tf.reduce_mean(x, axis=[1, 2])[:, :0], [1, 0])

    m = ZeroClasses()
    path = tmp_path_factory.mktemp("zero") / "zero_classes.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([m.f.get_concrete_function()], m).convert())
    return path


def test_model_with_zero_classes_gives_one_line(zero_class_model, sample_clip):
    proc = _runtime("--source", sample_clip, "--model", zero_class_model, "--max-frames", 2)
    assert proc.returncode == 2, proc.stderr
    assert one_error_line(proc) == f"error: {zero_class_model}: output of 0 classes: 1..100000 expected"
