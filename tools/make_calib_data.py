"""Rebuild calib_data/ (calibration) and check_data/ (unlabelled checking, never calibration) from
redistributable photos and clips installed on this machine.

Sources (both with clear terms):
  * scikit-image's bundled photos (public domain / CC0, per skimage.data docstrings);
  * Debian's opencv-doc sample images and clips (Apache-2.0 AND BSD-3-Clause per its copyright file).
Usage: apt-get install opencv-doc && pip install scikit-image scikit-learn matplotlib && python -m tools.make_calib_data
       (the same with --check rebuilds check_data/)
  * scikit-learn's two sample photos (CC BY 2.0, attribution in the manifest) and matplotlib's
    grace_hopper.jpg (public domain).
"""
from __future__ import annotations

import csv
import hashlib
import os
import sys
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "convert" / "calib_data"  # packaged with the converter; calib_data/ links to it
OCV = Path("/usr/share/doc/opencv-doc/examples")
MAX_SIDE = 320  # shorter side; enough for a 256 resize and a 227/224 crop

SKIMAGE = {  # file: (licence, description)
    "astronaut.png": ("public domain (NASA)", "astronaut portrait"),
    "chelsea.png": ("CC0 (Stefan van der Walt)", "cat"),
    "coffee.png": ("CC0 (Rachel Michetti)", "cup of coffee"),
    "rocket.jpg": ("public domain (SpaceX)", "rocket on launch pad"),
    "hubble_deep_field.jpg": ("public domain (NASA)", "galaxies"),
    "camera.png": ("CC0 (Lav Varshney)", "cameraman outdoors, grayscale"),
    "brick.png": ("CC0 (CC0Textures)", "brick wall"),
    "grass.png": ("CC0 (CC0Textures)", "grass"),
    "gravel.png": ("CC0 (CC0Textures)", "gravel"),
    "retina.jpg": ("CC0 1.0", "retina fundus photo"),
    "coins.png": ("no known copyright restrictions (Brooklyn Museum)", "coins"),
}
OPENCV = {
    "data/HappyFish.jpg": "fish", "data/aero1.jpg": "aerial view", "data/aloeL.jpg": "aloe plant",
    "data/apple.jpg": "apple", "data/baboon.jpg": "baboon face", "data/basketball1.png": "basketball",
    "data/blox.jpg": "wooden blocks", "data/board.jpg": "circuit board", "data/building.jpg": "building",
    "data/butterfly.jpg": "butterfly", "data/fruits.jpg": "fruit still life", "data/home.jpg": "house",
    "data/leuvenA.jpg": "street in Leuven", "data/messi5.jpg": "football player",
    "data/orange.jpg": "orange", "data/rubberwhale1.png": "toys (Middlebury rubber whale)",
    "data/smarties.png": "sweets", "data/squirrel_cls.jpg": "squirrel", "data/starry_night.jpg": "painting",
    "data/stuff.jpg": "desk objects", "data/box_in_scene.png": "box among objects", "data/graf1.png": "graffiti wall",
    "data/Blender_Suzanne1.jpg": "rendered monkey head", "data/cards.png": "playing cards",
    "data/chicky_512.png": "chick toy", "data/ela_original.jpg": "outdoor scene",
    "data/licenseplate_motion.jpg": "car licence plate", "data/box.png": "box",
    "alphamat/input_images/plant.jpg": "potted plant", "text/scenetext01.jpg": "street sign",
    "text/scenetext02.jpg": "shop front", "text/scenetext03.jpg": "sign", "text/scenetext04.jpg": "sign on wall",
    "text/scenetext05.jpg": "street scene", "text/scenetext06.jpg": "storefront",
    "ximgproc/stanford.png": "Stanford campus", "hfs/data/000.jpg": "outdoor scene",
    "fuzzy/input.png": "portrait", "data/left.jpg": "books on a table", "data/sudoku.png": "newspaper puzzle",
    "data/pca_test1.jpg": "objects on a table",
}
OTHERS = {  # (python package, path inside it): (licence, description)
    ("sklearn", "datasets/images/china.jpg"): ("CC BY 2.0, danielbuechele (flickr), via scikit-learn", "temple in China"),
    ("sklearn", "datasets/images/flower.jpg"): ("CC BY 2.0, vultilion (flickr), via scikit-learn", "flower"),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"): ("public domain (US Navy)", "portrait in uniform"),
}
# Clips: (file, fractions of its length to take a frame at, description); Megamind's shots are distinct.
CLIPS = [("data/vtest.avi", (0.5,), "pedestrians"), ("data/tree.avi", (0.5,), "tree in wind"),
         ("data/Megamind.avi", (0.02, 0.4, 0.6, 0.85), "animated film shot")]
OCV_LICENCE = "Apache-2.0 AND BSD-3-Clause (Debian opencv-doc 4.6.0)"

# check_data/: photos and frames that calibration never sees, for the converter's gates without --val.
# Views of the calibration scenes themselves (aloeR, leuvenB, graf3, rubberwhale2, ...) are left out:
# they would make the check look better than a new scene. Frames of one clip share a name up to their
# last "_NNNN" (the converter treats them as one correlated group when it computes the interval).
CHECK_SKIMAGE = {
    # licences as skimage.data's docstrings state them (images without one there are left out)
    "clock_motion.png": ("public domain (photographer Stefan van der Walt)", "wall clock, motion blur"),
    "ihc.png": ("no known copyright restrictions (CMMI, via scikit-image)", "stained tissue under a microscope"),
    "text.png": ("public domain (Wikipedia File:Corner.png, via scikit-image)", "text on a wall, grayscale"),
    "horse.png": ("CC0 (Andreas Preuss, openclipart)", "horse silhouette"),
}
CHECK_OPENCV = {
    "text/scenetext_segmented_word01.jpg": ("opencv_sign1", "sign"),
    "text/scenetext_segmented_word02.jpg": ("opencv_sign2", "sign"),
    "text/scenetext_segmented_word03.jpg": ("opencv_sign3", "sign"),
    "text/scenetext_segmented_word04.jpg": ("opencv_sign4", "sign"),
    "text/scenetext_segmented_word05.jpg": ("opencv_sign5", "sign"),
    "data/text_defocus.jpg": ("opencv_text-defocus", "defocused printed text"),
    "data/text_motion.jpg": ("opencv_text-motion", "motion-blurred printed text"),
    "data/LinuxLogo.jpg": ("opencv_linux-logo", "penguin logo"),
    "data/WindowsLogo.jpg": ("opencv_windows-logo", "window logo"),
    "data/imageTextN.png": ("opencv_image-text", "text on a page"),
    "ximgproc/peilin_plane.png": ("opencv_plane", "aeroplane shape"),
    "data/left01.jpg": ("opencv_chessboard_01", "person holding a chessboard"),
    "data/left04.jpg": ("opencv_chessboard_04", "person holding a chessboard"),
    "data/left08.jpg": ("opencv_chessboard_08", "person holding a chessboard"),
    "data/left12.jpg": ("opencv_chessboard_12", "person holding a chessboard"),
    "data/right02.jpg": ("opencv_chessboard_22", "person holding a chessboard"),
    "data/right09.jpg": ("opencv_chessboard_29", "person holding a chessboard"),
}
# (clip, every Nth frame, frames of it in calib_data/ to keep clear of, +- frames, description)
CHECK_CLIPS = [("data/vtest.avi", 40, 30, "pedestrians"), ("data/Megamind.avi", 9, 8, "animated film shot"),
               ("data/tree.avi", 6, 6, "tree in wind")]


def shrink(image):
    h, w = image.shape[:2]
    s = MAX_SIDE / min(h, w)
    return image if s >= 1 else cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)


def _write_manifest(out: Path, rows: list) -> None:
    tmp = out / ".MANIFEST.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "source", "licence", "description", "sha256"])
        w.writerows(sorted(rows))
    os.replace(tmp, out / "MANIFEST.csv")
    print(f"{len(rows)} images in {out}", file=sys.stderr)


def _saver(out: Path, rows: list):
    def save(image, name, source, licence, description):
        path = out / name
        cv2.imwrite(str(path), shrink(image), [cv2.IMWRITE_JPEG_QUALITY, 90])
        rows.append([name, source, licence, description, hashlib.sha256(path.read_bytes()).hexdigest()])
    return save


def _calib_frames(f: str, n: int) -> list[int]:
    return [int(n * frac) for clip, fractions, _ in CLIPS if clip == f for frac in fractions]


def make_check() -> int:
    skimage = _import("skimage")

    sk_dir = Path(skimage.__file__).parent / "data"
    out = ROOT / "convert" / "check_data"  # packaged with the converter; check_data/ links to it
    out.mkdir(exist_ok=True)
    rows: list = []
    save = _saver(out, rows)
    for f, (licence, desc) in CHECK_SKIMAGE.items():
        img = cv2.imread(str(sk_dir / f), cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"error: missing skimage/data/{f}")
        save(img, f"skimage_{Path(f).stem.replace('_', '-')}.jpg",
             f"scikit-image {skimage.__version__}: skimage/data/{f}", licence, desc)
    for f, (name, desc) in CHECK_OPENCV.items():
        img = cv2.imread(str(OCV / f), cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"error: missing {OCV / f} (apt-get install opencv-doc)")
        save(img, f"{name}.jpg", f"opencv-doc: examples/{f}", OCV_LICENCE, desc)
    for f, step, clear, desc in CHECK_CLIPS:
        cap = cv2.VideoCapture(str(OCV / f))
        taken = _calib_frames(f, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        i = 0
        while True:  # decoded in order: some clips' frame counts (tree.avi: 444 for 68) are wrong
            ok, frame = cap.read()
            if not ok:
                break
            if i % step == step // 2 and not any(abs(i - t) <= clear for t in taken):
                save(frame, f"opencv_{Path(f).stem}_{i:04d}.jpg", f"opencv-doc: examples/{f} frame {i}",
                     OCV_LICENCE, desc)
            i += 1
        cap.release()
    _write_manifest(out, rows)
    return 0


def _import(package: str):
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        raise SystemExit(f"error: the photos come with the Python package {package}: pip install scikit-image "
                         f"scikit-learn matplotlib") from None


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tools.make_calib_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="rebuild check_data/ instead of calib_data/")
    args = parser.parse_args(argv)
    if args.check:
        return make_check()
    skimage = _import("skimage")

    sk_dir = Path(skimage.__file__).parent / "data"
    OUT.mkdir(exist_ok=True)
    rows = []
    save = _saver(OUT, rows)

    for f, (licence, desc) in SKIMAGE.items():
        img = cv2.imread(str(sk_dir / f), cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"error: missing skimage/data/{f}")
        save(img, f"skimage_{Path(f).stem}.jpg", f"scikit-image {skimage.__version__}: skimage/data/{f}", licence, desc)
    for f, desc in OPENCV.items():
        img = cv2.imread(str(OCV / f), cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"error: missing {OCV / f} (apt-get install opencv-doc)")
        name = "opencv_" + f.replace("/", "_").replace("data_", "").rsplit(".", 1)[0] + ".jpg"
        save(img, name, f"opencv-doc: examples/{f}", OCV_LICENCE, desc)
    for (package, rel), (licence, desc) in OTHERS.items():
        mod = _import(package)
        img = cv2.imread(str(Path(mod.__file__).parent / rel), cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"error: missing {rel} in {package}")
        save(img, f"{package}_{Path(rel).stem}.jpg", f"{package} {mod.__version__}: {rel}", licence, desc)
    for f, fractions, desc in CLIPS:
        cap = cv2.VideoCapture(str(OCV / f))
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        for frac in fractions:
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(n * frac))
            ok, frame = cap.read()
            if ok:
                save(frame, f"opencv_{Path(f).stem}_{int(frac * 100):02d}.jpg",
                     f"opencv-doc: examples/{f} frame {int(n * frac)}", OCV_LICENCE, desc)
        cap.release()
    _write_manifest(OUT, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
