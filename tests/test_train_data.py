"""Training data discovery and the device-side capture tool, on real images and the real sample clip
(no training here: fast)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from convert.errors import TrainError
from convert.train import data as D
from realworld import convert_main, one_error_line

ROOT = Path(__file__).resolve().parents[1]
CALIB = ROOT / "calib_data"
CLIP = ROOT / "samples" / "sample_clip.mp4"


def _clip_frames() -> int:
    cap = cv2.VideoCapture(str(CLIP))
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n


def test_class_folders_clips_and_wordnet_names(tmp_path):
    root = tmp_path / "data"
    photos = sorted(CALIB.glob("*.jpg"))
    for i, p in enumerate(photos[:12]):
        dest = root / ("fruit" if i % 2 else "scene") / ("deep" if i == 5 else "") / p.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dest)
    (root / "walk").mkdir()
    shutil.copy(CLIP, root / "walk" / "clip.mp4")
    shutil.copy(photos[12], root / f"n01443537_{photos[12].name}")  # ImageNet-style name at the top
    (root / "stray.jpg").write_bytes(photos[13].read_bytes())  # no class: counted, not fatal
    (root / "scene" / "README.md").write_text("notes")
    shutil.copy(photos[0], root / "fruit" / os.fsdecode(b"caf\xe9.jpg"))  # a latin-1 name: trained on like any other
    scan = D.scan(root, tmp_path / "frames", frame_stride=10)
    assert scan.classes == ["fruit", "n01443537", "scene", "walk"]
    frames = -(-_clip_frames() // 10)
    assert scan.counts() == [7, 1, 6, frames] and scan.clips == 1
    assert len(list((tmp_path / "frames" / "walk").glob("*.png"))) == frames
    assert {s.split(" ")[0] for s in scan.skipped} == {"stray.jpg", "scene/README.md"}
    again = D.scan(root, tmp_path / "frames", frame_stride=10)  # frames reused, same content hash
    assert again.content_hash == scan.content_hash
    assert D.scan(root, tmp_path / "frames2", frame_stride=5).content_hash != scan.content_hash
    train, val = D.split(scan.items, 0.3, len(scan.classes))
    # a clip's frames stay on one side; each class with 2+ files gives at least one to validation
    assert {t for _, t, _ in val} == {0, 2} and all(t != 3 for _, t, _ in val)
    assert D.split(scan.items, 0.3, len(scan.classes)) == (train, val)
    # training warns that "walk" (one clip) and n01443537 (one file) have no validation images, even with --quiet
    r = subprocess.run([sys.executable, "-m", "convert", "train", "--data", str(root), "--out", str(tmp_path / "run"),
                        "--weights", "none", "--arch", "squeezenet1_1", "--input-size", "32", "--epochs", "1",
                        "--batch-size", "8", "--val-split", "0.3", "--threads", "2", "--quiet"],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert r.returncode == 0 and "warning: no validation images of n01443537, walk:" in r.stderr, r.stderr[-2000:]
    (root / "parcel").mkdir()  # a class folder with nothing in it yet (a capture that never started)
    with pytest.raises(TrainError, match="class folder 'parcel' has no files"):
        D.scan(root, tmp_path / "frames", frame_stride=10)


def test_class_folder_name_that_is_not_utf8_is_refused(tmp_path):
    """A class name becomes the model's labels (UTF-8 text): a folder whose name is not (bytes from a latin-1
    system, or edge_runtime capture --label) is one line naming it, and the run folder the command made is
    removed again (files with such names are used: test_class_folders_clips_and_wordnet_names)."""
    root = tmp_path / "data"
    for i, p in enumerate(sorted(CALIB.glob("*.jpg"))[:4]):
        folder = root / ("dog" if i % 2 else os.fsdecode(b"d\xffg"))
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, folder / p.name)
    r = convert_main("train", "--data", root, "--out", tmp_path / "runs" / "r", "--weights", "none")
    assert one_error_line(r) == (f"error: --data {root}: class folder 'd\\xffg' has a name that is not UTF-8 "
                                 "text (class names become the model's labels); rename it")
    assert not (tmp_path / "runs").exists()


def test_split_is_stratified_and_stable_when_files_are_added():
    items = [(f"/d/c{c}/{i}.png", c, f"c{c}/{i}.png") for c in range(3) for i in range(40)]
    train, val = D.split(items, 0.25, 3)
    assert [sum(1 for _, t, _ in val if t == c) for c in range(3)] == [10, 10, 10]
    more = items + [(f"/d/c0/extra{i}.png", 0, f"c0/extra{i}.png") for i in range(4)]
    _, val2 = D.split(more, 0.25, 3)
    kept = set(v[0] for v in val) & set(v[0] for v in val2)
    assert len(kept) >= 25  # adding files moves few of the others
    with pytest.raises(TrainError, match="--val-split 1.5"):
        D.split(items, 1.5, 3)


def test_unreadable_and_oversized_files_are_counted(tmp_path):
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        shutil.copy(CALIB / "opencv_apple.jpg", tmp_path / c / "ok.jpg")
    (tmp_path / "a" / "truncated.png").write_bytes((CALIB / "opencv_apple.jpg").read_bytes()[:0] + b"\x89PNG")
    (tmp_path / "b" / "empty.jpg").write_bytes(b"")
    scan = D.scan(tmp_path, None)
    assert scan.counts() == [1, 1] and len(scan.skipped) == 2


def _capture(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_runtime", "capture", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120, **kw)


def test_capture_writes_new_jpegs_and_never_overwrites(tmp_path):
    out = tmp_path / "photos"
    (out / "porch").mkdir(parents=True)
    keep = out / "porch" / "porch_000001.jpg"
    keep.write_bytes(b"the user's own photo")
    r = _capture("--source", str(CLIP), "--label", "porch", "--out", str(out), "--every", "0.5", "--count", "4")
    assert r.returncode == 0, r.stderr
    assert keep.read_bytes() == b"the user's own photo"
    files = sorted(p.name for p in (out / "porch").iterdir())
    assert files == ["porch_000000.jpg", "porch_000001.jpg", "porch_000002.jpg", "porch_000003.jpg",
                     "porch_000004.jpg"]  # no temporary file left behind
    image = cv2.imread(str(out / "porch" / "porch_000002.jpg"))
    assert image is not None and image.shape[2] == 3 and image.std() > 5
    first = cv2.imread(str(out / "porch" / "porch_000000.jpg")).astype(np.int16)
    assert np.abs(first - image).mean() > 1  # half a second apart in the clip: different frames
    assert (os.stat(out / "porch" / "porch_000000.jpg").st_mode & 0o777) == 0o666 & ~_umask()  # as open() makes files
    r = _capture("--source", str(CLIP), "--label", "porch", "--out", str(out), "--count", "1", "--quiet")
    assert r.returncode == 0 and (out / "porch" / "porch_000005.jpg").exists()


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


@pytest.mark.parametrize("args, expect", [
    (["--label", "../up"], "--label '../up'"),
    (["--label", ".hidden"], "--label '.hidden'"),
    (["--label", "porch\udcff"], "1-100 characters of UTF-8"),  # the byte 0xff: no class name for the labels
    (["--label", "x", "--count", "0"], "--count 0"),
    (["--label", "x", "--camera", "7"], "no camera found at index 7"),
])
def test_capture_bad_input_one_line(tmp_path, args, expect):
    """Exit 2 for bad flags, 75 (EX_TEMPFAIL, as the runtime) for a camera that is not there (yet)."""
    src = [] if "--camera" in args else ["--source", str(CLIP)]
    r = _capture(*src, *args, "--out", str(tmp_path / "o"))
    code = 75 if "--camera" in args else 2
    assert r.returncode == code and len(r.stderr.strip().splitlines()) == 1 and expect in r.stderr, r.stderr
    assert not (tmp_path / "o").exists()  # no empty class folder left for training to trip on


def test_capture_from_a_source_with_no_frame_fails(tmp_path):
    """A folder of nothing but a broken photo: exit 1 as the runtime's, not "0 photos" and 0, and no empty
    class folder left behind."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8 not a photo")
    r = _capture("--source", str(tmp_path / "in"), "--label", "porch", "--out", str(tmp_path / "o"))
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "error: the source ended before any photo was saved (0 frames read)"
    assert not (tmp_path / "o").exists()


def test_capture_from_a_folder_saves_every_photo(tmp_path):
    """A folder of photos was timed as a 30 fps clip: 10 photos gave 1 at the default --every 1. Every photo is
    saved, in name order; --every, which has no meaning for photos, is refused rather than ignored."""
    photos = sorted(CALIB.glob("*.jpg"))[:10]
    (tmp_path / "in").mkdir()
    for p in photos:
        shutil.copy(p, tmp_path / "in" / p.name)
    r = _capture("--source", str(tmp_path / "in"), "--label", "fish", "--out", str(tmp_path / "o"), "--quiet")
    assert r.returncode == 0 and r.stderr.startswith("10 photos of 'fish' "), r.stderr
    saved = sorted((tmp_path / "o" / "fish").iterdir())
    assert [p.name for p in saved] == [f"fish_{i:06d}.jpg" for i in range(10)]
    for original, copy in zip(photos, saved):  # the same photo, re-encoded at --jpeg-quality 95
        a, b = (cv2.imread(str(f)).astype(np.int16) for f in (original, copy))
        assert a.shape == b.shape and np.abs(a - b).mean() < 3
    r = _capture("--source", str(tmp_path / "in"), "--label", "fish", "--out", str(tmp_path / "o"), "--every", "2")
    assert r.returncode == 2 and one_error_line(r).startswith("error: --every: only with a camera, a video file")
    assert len(list((tmp_path / "o" / "fish").iterdir())) == 10


def test_capture_on_full_storage_keeps_what_it_saved(tmp_path):
    """A card that fills up while capturing: one line, exit 1 (a failure while running, as the runtime's:
    a unit may restart it), every photo saved before it whole, no partial file."""
    from realworld import small_filesystem

    with small_filesystem(tmp_path / "sd", "300k") as sd:
        r = _capture("--source", str(CLIP), "--label", "porch", "--out", str(sd), "--every", "0", "--quiet")
        assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "cannot write a photo (No space left on device)" in r.stderr, r.stderr
        photos = sorted((sd / "porch").iterdir())
        assert photos and f"; {len(photos)} saved" in r.stderr and all(p.suffix == ".jpg" for p in photos)
        assert all(cv2.imread(str(p)) is not None for p in photos)  # each one whole


def test_capture_whose_log_is_full_or_gone_saves_every_photo(tmp_path):
    """A headless capture whose stderr is on a full card, or a pipe whose reader left: its lines are lost, its
    photos are not. Before, the first 'saved' line failed and ended the capture with 1 photo of 12 (exit 120
    on the full card)."""
    buffered = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},  # as a service runs it
                "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "edge_runtime", "capture", "--source", str(CLIP), "--label", "porch",
               "--every", "1"]
    with open("/dev/full", "w") as full:
        r = subprocess.run([*command, "--out", str(tmp_path / "full")], stderr=full, env=buffered, cwd=ROOT,
                           timeout=120)
    assert r.returncode == 0 and len(list((tmp_path / "full" / "porch").iterdir())) == 12
    gone = subprocess.Popen([*command, "--out", str(tmp_path / "gone")], stderr=subprocess.PIPE, env=buffered,
                            cwd=ROOT)
    gone.stderr.close()
    assert gone.wait(timeout=120) == 0 and len(list((tmp_path / "gone" / "porch").iterdir())) == 12


def test_capture_unwritable_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = _capture("--source", str(CLIP), "--label", "x", "--out", str(blocker / "sub"), "--count", "1")
    assert r.returncode == 2 and "cannot create" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_train_resize_means_what_it_means_everywhere(weights_env, tmp_path):
    """train's --resize is the one N|HxW flag: N the shorter side (aspect kept), HxW exactly; without it
    the weights' resize-to-crop ratio at the new input size (256x256 for 227 -> 72x72 for 64)."""
    from convert.cli import build_parser
    from convert.train.model import init_model
    from convert.train.options import TrainOptions

    def pp_for(*flags):
        args = build_parser().parse_args(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r"), *flags])
        o = TrainOptions(data=tmp_path, out=tmp_path, weights="deep-compression", input_size=args.input_size,
                         resize=args.resize)
        return init_model(o, ["a", "b"])[1]

    assert pp_for("--input-size", "64").resize == (72, 72)
    assert pp_for("--input-size", "64", "--resize", "80").resize == (80, 0)
    assert pp_for("--input-size", "64", "--resize", "80x96").resize == (80, 96)
    with pytest.raises(TrainError, match="--resize 40x40"):
        pp_for("--input-size", "64", "--resize", "40x40")  # smaller than the crop


def test_initial_models_for_variants(weights_env, tmp_path):
    """ImageNet weights start any variant they fit (the complex bypass's 1x1 shortcuts start fresh); a
    variant they do not fit is refused with the first mismatching shape."""
    import torch

    from convert.train.model import HEAD_BIAS, init_model
    from convert.train.options import TrainOptions
    from convert.weights import load_model

    classes = ["a", "b", "c"]
    dc, _ = load_model("deep-compression")
    opts = TrainOptions(data=tmp_path, out=tmp_path, weights="deep-compression", arch="squeezenet1_0_complex_bypass",
                        input_size=64)
    model, pp, arch, new_head, _ = init_model(opts, classes)
    assert arch == "squeezenet1_0_complex_bypass" and new_head and pp.input_size == (64, 64)
    assert torch.equal(model.state_dict()["features.3.expand3x3.weight"], dc.state_dict()["features.3.expand3x3.weight"])
    assert "features.3.shortcut.weight" in model.state_dict()
    assert model.classifier[1].weight.shape[0] == 3 and torch.all(model.classifier[1].bias == HEAD_BIAS)
    # the Caffe-scale weights are rescaled exactly: same features / 58, the scale folded into std
    assert pp.std == (58.0, 58.0, 58.0) and pp.mean == (104.0, 117.0, 123.0) and pp.channel_order == "BGR"
    with pytest.raises(TrainError, match="features.0.weight has shape"):
        init_model(TrainOptions(data=tmp_path, out=tmp_path, weights="deep-compression", arch="squeezenet1_1",
                                input_size=64), classes)
    scratch, pp, arch, new_head, _ = init_model(TrainOptions(data=tmp_path, out=tmp_path, weights="none",
                                                             arch="squeezenet1_1", input_size=96), classes)
    assert arch == "squeezenet1_1" and pp.input_size == (96, 96) and pp.channel_order == "RGB"


def test_fashion_mnist_export_into_an_earlier_one_holds_what_it_says(tmp_path):
    """`tools.make_fashion_mnist` again into the same --out with smaller counts said '200 training and 100 test
    images' while the folder held 400: the images not asked for any more are removed, the line says so; a file
    no export writes is never removed (refused, nothing changed)."""
    from convert.train.fashion_mnist import DEFAULT_SOURCE

    if not (DEFAULT_SOURCE / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"{DEFAULT_SOURCE} missing: install the Debian package dataset-fashion-mnist (tools/setup.sh)")
    out = tmp_path / "fm"

    def make(train: int, test: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tools.make_fashion_mnist", "--out", str(out),
                               "--train-per-class", str(train), "--test-per-class", str(test)],
                              capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})

    def count(split: str) -> int:
        return sum(1 for p in (out / split).rglob("*") if p.is_file())

    first = make(40, 10)
    assert first.returncode == 0 and first.stdout == f"{out}: 400 training and 100 test images in 10 classes\n"
    kept = sorted((out / "train" / "Bag").iterdir())[:20]
    mtimes = [p.stat().st_mtime_ns for p in kept]
    second = make(20, 10)
    assert second.returncode == 0, second.stderr
    assert second.stdout == (f"{out}: 200 training and 100 test images in 10 classes "
                             "(200 images of an earlier export removed)\n")
    assert (count("train"), count("test")) == (200, 100)
    assert sorted((out / "train" / "Bag").iterdir()) == kept and [p.stat().st_mtime_ns for p in kept] == mtimes
    (out / "train" / "Bag" / "mine.jpg").write_bytes(b"a user's own photo")
    third = make(10, 10)
    assert third.returncode == 2 and third.stderr == (f"error: --out {out}: holds 1 file(s) this export did not "
                                                      "write (e.g. train/Bag/mine.jpg); an empty folder or an "
                                                      "earlier export expected\n")
    assert (count("train"), count("test")) == (201, 100)
