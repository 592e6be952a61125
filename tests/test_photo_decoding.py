"""Photos read for a model: a large JPEG is decoded at the reduced scale the model's resize needs (libjpeg's
DCT scaling), the same way by the runtime's folder source, the evaluator and the converter."""
import dataclasses
import json

import cv2
import numpy as np
import pytest

from edge_runtime.preprocess import Preprocessing, decode_scale, read_image, resize_crop
from realworld import run_module

CAFFE = Preprocessing(input_size=(227, 227), resize=(256, 256), channel_order="BGR")  # the release model's
SHORTER = Preprocessing(input_size=(224, 224), resize=(256, 0))  # torchvision's


@pytest.fixture(scope="module")
def mosaic(val500_dir, tmp_path_factory):
    """A 3000x2250 photo with real detail at full resolution: 6 x 6 ImageNet photos of 500x375, side by side,
    as a 12-megapixel phone photo of a busy scene (an upscaled photo would have no detail to alias)."""
    tiles = []
    for path in sorted(val500_dir.iterdir()):
        image = cv2.imread(str(path))
        if image.shape[0] >= 375 and image.shape[1] >= 500:
            tiles.append(image[:375, :500])
        if len(tiles) == 36:
            break
    image = np.vstack([np.hstack(tiles[r * 6:r * 6 + 6]) for r in range(6)])
    folder = tmp_path_factory.mktemp("mosaic")
    cv2.imwrite(str(folder / "mosaic.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    cv2.imwrite(str(folder / "mosaic.png"), image)
    return folder


def test_decode_scale_keeps_twice_what_the_resize_keeps():
    for pp in (CAFFE, SHORTER):
        assert decode_scale(pp, 640, 480) == 1  # a camera's photo
        assert decode_scale(pp, 1920, 1080) == 2
        assert decode_scale(pp, 4000, 3000) == 4  # a phone's
        assert decode_scale(pp, 7000, 7000) == 8
    assert decode_scale(CAFFE, 8000, 600) == 1  # the short side is what is kept
    # the exact resize of a wide input: a tall photo may be turned by its orientation tag, so both ways count
    wide = Preprocessing(input_size=(64, 256), resize=(64, 256))
    assert decode_scale(wide, 2048, 2048) == 4 and decode_scale(wide, 2048, 512) == 1


def test_a_large_jpeg_is_decoded_reduced_and_closer_to_an_averaging_resize(mosaic):
    """The reduced decode is an averaging downscale: the crop it gives is nearer to the full photo shrunk by
    area averaging (what an anti-aliased resize sees) than the full decode's bilinear resize, which samples 4
    of every 70 pixels here."""
    jpg = str(mosaic / "mosaic.jpg")
    full = read_image(jpg)
    assert full.shape == (2250, 3000, 3)
    reduced = read_image(jpg, fit=CAFFE)
    assert decode_scale(CAFFE, 3000, 2250) == 4 and reduced.shape == (563, 750, 3)
    assert np.array_equal(reduced, cv2.imdecode(np.fromfile(jpg, np.uint8), cv2.IMREAD_REDUCED_COLOR_4))
    # other formats are decoded whole by every decoder: read at full size
    assert read_image(str(mosaic / "mosaic.png"), fit=CAFFE).shape == full.shape

    def psnr(a, b):
        return 10 * np.log10(255 ** 2 / np.mean((a.astype(float) - b.astype(float)) ** 2))

    ideal = resize_crop(full, dataclasses.replace(CAFFE, interpolation="area"))
    near_reduced, near_full = psnr(resize_crop(reduced, CAFFE), ideal), psnr(resize_crop(full, CAFFE), ideal)
    assert near_reduced > near_full + 3, (near_reduced, near_full)


def test_the_runtime_reads_a_large_photo_as_the_evaluator_does(int8_model, mosaic, tmp_path):
    """The runtime's folder source passes the model's preprocessing: its scores are those of the evaluator's
    crop (read_image with fit), not of a full decode's."""
    from edge_runtime.classify import Classifier
    from edge_runtime.evaluation import iter_crops

    folder = tmp_path / "one"
    folder.mkdir()
    (folder / "mosaic.jpg").write_bytes((mosaic / "mosaic.jpg").read_bytes())
    proc = run_module("edge_runtime", "--source", folder, "--model", int8_model, "--json", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    [line] = proc.stdout.splitlines()
    shown = [(t["index"], t["score"]) for t in json.loads(line)["top"]]

    clf = Classifier(int8_model, threads=1)
    [(_, crop, _)] = list(iter_crops([folder / "mosaic.jpg"], clf.preprocessing))

    def top(crop):
        clf.set_crop(crop)
        clf.invoke()
        return [(p.index, round(p.score, 4)) for p in clf.top_k(5)]

    assert shown == top(crop)
    assert top(resize_crop(read_image(str(folder / "mosaic.jpg")), clf.preprocessing)) != shown  # it can fail


def test_each_calibration_view_is_cut_from_the_photo_decoded_for_its_size(mosaic):
    """The converter's views of a photo at 1.0x-2.2x its model's resize: the 1.0x view is the runtime's crop of
    that photo (decoded at 1/4 here), the 1.3x one is cut from a decode at 1/2, the 2.2x one from the whole
    photo (each needs twice its pixels)."""
    from convert.calibration import DEFAULT_SCALES, views

    jpg = mosaic / "mosaic.jpg"
    assert DEFAULT_SCALES == (1.0, 1.3, 1.7, 2.2)
    crops = views(jpg, CAFFE, DEFAULT_SCALES, mirror=False)
    for crop, scale, decoded in zip(crops, DEFAULT_SCALES, (4, 2, 2, 1)):
        fit = dataclasses.replace(CAFFE, resize=(round(256 * scale),) * 2)
        assert decode_scale(fit, 3000, 2250) == decoded
        assert np.array_equal(crop, resize_crop(read_image(str(jpg), fit=fit), fit)), scale
    assert np.array_equal(crops[0], resize_crop(read_image(str(jpg), fit=CAFFE), CAFFE))
