"""Classify labelled images with MediaPipe Tasks' ImageClassifier (run it in the MediaPipe venv that
tools/mediapipe_check.sh builds): writes the same JSON dump as ``interpreter_agreement.py dump``,
plus the class names MediaPipe reported, so the two can be compared.

Each image gets the project's resize and center crop (edge_runtime.preprocess, from the artifact's
own record), handed to MediaPipe as an RGB image of the model's input size: MediaPipe then reads the
standard metadata, feeds the pixels and reads the scores; the comparison is of the model file as a
stock client uses it. ``--full-image`` instead hands MediaPipe the whole photo with the crop as its
region of interest (MediaPipe resamples it itself: a few decisions differ from that alone).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.mediapipe_classify", description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True, help="the .tflite artifact")
    p.add_argument("--val", type=Path, required=True, help="labelled images (files named by WordNet id)")
    p.add_argument("--full-image", action="store_true", help="whole photo + region of interest")
    p.add_argument("--report", type=Path, required=True, help="the JSON dump to write")
    args = p.parse_args(argv)

    import mediapipe as mp
    import numpy as np
    from mediapipe.tasks import python as mp_tasks
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.components.containers import rect

    from edge_runtime.evaluation import find_labelled_images
    from edge_runtime.metadata import read_model_info
    from edge_runtime.preprocess import read_image, resize_crop

    from edge_runtime.evaluation import DatasetError
    from edge_runtime.metadata import MetadataError

    try:
        info = read_model_info(args.model)
        if info is None:
            raise MetadataError(f"{args.model}: no embedded metadata (convert it with python -m convert tflite)")
        images = find_labelled_images(args.val, info.wnids, info.labels)
    except (MetadataError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    options = vision.ImageClassifierOptions(base_options=mp_tasks.BaseOptions(model_asset_path=str(args.model)),
                                            max_results=5)
    top, tied, names, files, heads = [], [], [], [], set()
    with vision.ImageClassifier.create_from_options(options) as classifier:
        for path in images.paths:
            image = read_image(str(path), fit=info.preprocessing)
            roi = None
            if args.full_image:
                rh, rw = info.preprocessing.resized_shape(*image.shape[:2])
                ch, cw = info.preprocessing.input_size
                fy, fx = ch / rh, cw / rw
                roi = vision.ImageProcessingOptions(region_of_interest=rect.RectF(
                    left=(1 - fx) / 2, top=(1 - fy) / 2, right=(1 + fx) / 2, bottom=(1 + fy) / 2))
                rgb = image[..., ::-1]
            else:
                rgb = resize_crop(image, info.preprocessing)[..., ::-1]
            result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB,
                                                  data=np.ascontiguousarray(rgb)), roi)
            heads.add(len(result.classifications))
            cats = result.classifications[0].categories
            top.append(cats[0].index)
            tied.append(len(cats) > 1 and cats[1].score == cats[0].score)
            names.append(cats[0].category_name)
            files.append(path.name)
    out = {"backend": "mediapipe" + (" full-image" if args.full_image else ""), "version": mp.__version__,
           "model": str(args.model), "heads": sorted(heads),
           "val": {"files": files, "top1": top, "tied": tied, "names": names}}
    args.report.write_text(json.dumps(out))
    print(f"mediapipe {mp.__version__}: {len(top)} images -> {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
