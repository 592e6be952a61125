"""Stage 4 of the conversion: the int8 model against the float model, and the gates on the figures.

Without labels the gates judge the agreement on unlabelled views no calibration saw (the held-out
calibration photos and the check folder, with a cluster-robust interval: views of one photo are one
group), weighted to the weights' own mix of near-ties when their record has one
(:func:`convert.fidelity.unlabelled_figures`); with ``--val`` on the labelled images, reported whole
and per half by class (:mod:`convert.fidelity`).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edge_runtime.evaluation import (DatasetError, LabelledImages, evaluate, find_labelled_images, progress_every,
                                     split_by_class)
from edge_runtime.preprocess import Preprocessing

from .calibration import HOLDOUT_EVERY, CalibrationSet
from .errors import ConvertError, check_stop
from .fidelity import check_views, half_figures, labelled_figures, unlabelled_figures
from .source import Source

Predict = Callable[[np.ndarray], np.ndarray]  # N x H x W x 3 uint8 BGR crops -> N x classes scores


@dataclass(frozen=True)
class CheckViews:
    """Unlabelled views never used for calibration: the held-out calibration photos' first, then the
    check folder's; ``groups`` names the photo (or clip) of each view."""

    views: np.ndarray
    groups: list[str]
    held_views: int  # how many of ``views`` come from the held-out calibration photos
    held_images: int
    folders: list[str]


def unlabelled_views(calib: CalibrationSet, check_dir: Path, pp: Preprocessing) -> CheckViews:
    """The views the gates judge without labels.

    Raises:
        ConvertError: the check folder holds calibration photos (the check must be unseen photos).
    """
    from .calibration_data import list_calibration_images

    check_paths = list_calibration_images(check_dir, "--check")[0]
    if {p.resolve() for p in check_paths} & {p.resolve() for p in calib.images}:
        raise ConvertError(f"--check {check_dir}: holds calibration photos; the check must be unseen photos")
    held, held_groups, _ = check_views(calib.held_out, pp)
    extra, extra_groups, _ = check_views(check_paths, pp)
    return CheckViews(np.concatenate([held, extra]), held_groups + extra_groups, len(held), len(calib.held_out),
                      [f"{calib.folder.name} (every {HOLDOUT_EVERY}th, held out)", Path(check_dir).name])


@dataclass(frozen=True)
class Gates:
    """Figures an artifact must reach to be written (``None`` = not checked)."""

    min_agreement: float | None = 0.95  # fraction: top-1 agreement int8 vs float
    max_top1_drop: float | None = 1.0  # points of top-1 on labelled images

    def judge(self, validation: dict) -> dict:
        """The gates' verdict on :func:`validate`'s figures: labelled images first, else the unlabelled
        views (their agreement standardized to the weights' reference mix when the weights have one).

        Both thresholds ``None`` (``--no-gates``): ``applied`` False, ``passed`` None (nothing was judged),
        and ``default_missed`` lists what the default gates would have missed on the same figures."""
        if self.min_agreement is None and self.max_top1_drop is None:
            return {"applied": False, "min_agreement": None, "max_top1_drop": None, "failed": [], "passed": None,
                    "default_missed": Gates().missed(validation)}
        failed = self.missed(validation)
        return {"applied": True, "min_agreement": self.min_agreement, "max_top1_drop": self.max_top1_drop,
                "failed": failed, "passed": not failed}

    def missed(self, validation: dict) -> list[str]:
        """The gates ``validation``'s figures miss, one phrase each (empty: none)."""
        failed = []
        unlabelled = validation.get("unlabelled") or {}
        if validation.get("val"):
            figures, on = validation["val"], ""
        elif unlabelled.get("standardized"):
            figures, on = unlabelled["standardized"], " on the unlabelled views, weighted to the weights' near-tie mix"
        else:
            figures, on = unlabelled, " on the unlabelled views"
        if self.min_agreement is not None and figures:
            if figures["agreement"] < 100 * self.min_agreement:
                failed.append(f"top-1 agreement{on} {figures['agreement']:.1f}% < {100 * self.min_agreement:.1f}%")
        if self.max_top1_drop is not None and "top1_drop" in figures:
            if figures["top1_drop"] > self.max_top1_drop:
                failed.append(f"top-1 drop {figures['top1_drop']:.2f} points > {self.max_top1_drop:.2f}")
        return failed


def labelled_images(val: Path, src: Source, val_half: str | None = None) -> LabelledImages:
    """The images of ``val`` whose class is one of the model's (only ``val_half``'s classes when given):
    listed before the long work, so a folder with none of them is refused at once.

    Raises:
        ConvertError: ``val`` is not a folder, or holds no image of the model's classes (in that half).
    """
    try:
        images = find_labelled_images(val, src.wnids, src.labels)
        return split_by_class(images, val_half) if val_half else images
    except DatasetError as e:
        raise ConvertError(f"--val: {e}") from None


def validate(reference: Path, int8_tflite: Path, src: Source, check: CheckViews, val: Path | None = None,
             val_half: str | None = None, quiet: bool = False, images: LabelledImages | None = None,
             progress: Callable[[str], None] = lambda m: None) -> dict:
    """Compare the int8 artifact with the float ONNX model on ``check``'s views and, with ``val``, on
    labelled images (``val_half``: only that half by class; else the whole folder and each half;
    ``images``: ``val``'s, when :func:`labelled_images` already listed them; ``progress``: a line every
    CHECK_PROGRESS_EVERY check views, as the pipeline's other progress lines).

    Raises:
        ConvertError: ``val`` is not a usable labelled folder.
    """
    float_predict, int8_predict = onnx_predict(reference), tflite_predict(int8_tflite)
    f_check = predict_views(float_predict, check.views, "unlabelled check views, float model", progress)
    q_check = predict_views(int8_predict, check.views, "unlabelled check views, int8 model", progress)
    validation: dict = {"unlabelled": {"folders": check.folders,
                                       **unlabelled_figures(f_check, q_check, check.groups, src.check_reference)}}
    k = check.held_views
    if k:
        validation["calibration_holdout"] = {"images": check.held_images,
                                             **unlabelled_figures(f_check[:k], q_check[:k], check.groups[:k])}
    if val:
        images = images or labelled_images(val, src, val_half)
        try:
            results = []
            for which, predict in (("float model (ONNX Runtime)", float_predict), ("int8 artifact", int8_predict)):
                if not quiet:
                    print(f"  {which} on {len(images.paths)} labelled images of {val}", file=sys.stderr, flush=True)
                results.append(evaluate(images, predict, src.preprocessing, keep_scores=True, progress=not quiet))
            float_result, int8_result = results
        except DatasetError as e:
            raise ConvertError(f"--val: {e}") from None
        validation["val"] = {"folder": Path(val).name, "half": val_half or "all", "skipped": float_result.n_skipped,
                             "float_top5": round(float_result.top5, 3), "int8_top5": round(int8_result.top5, 3),
                             **labelled_figures(float_result.scores, int8_result.scores,
                                                float_result.targets)}
        if not val_half:
            validation["val"]["halves"] = half_figures(float_result.scores, int8_result.scores, float_result.targets)
    return validation


CHECK_PROGRESS_EVERY = 200  # check views between progress lines (680 views take about a minute per model)


def predict_views(predict: Predict, views: np.ndarray, what: str, progress: Callable[[str], None]) -> np.ndarray:
    """``predict`` over ``views`` in chunks, with a progress line ``WHAT N/TOTAL`` after each (after each
    :func:`~edge_runtime.evaluation.progress_every` views on a long pass) and the last."""
    scores = []
    every = progress_every(len(views), least=CHECK_PROGRESS_EVERY)
    for i in range(0, len(views), CHECK_PROGRESS_EVERY):
        scores.append(predict(views[i:i + CHECK_PROGRESS_EVERY]))
        done = min(i + CHECK_PROGRESS_EVERY, len(views))
        if done % every == 0 or done == len(views):
            progress(f"{what} {done}/{len(views)}")
        else:
            check_stop()
    return np.concatenate(scores) if scores else predict(views)


def onnx_predict(path: Path) -> Predict:
    """The float ONNX model (BGR pixels in) under ONNX Runtime, one image at a time, 2 threads."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def predict(batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
        return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])

    return predict


def tflite_predict(path: Path) -> Predict:
    """The artifact under the device runtime's classifier (its own metadata, 2 threads)."""
    from edge_runtime.classify import Classifier

    return Classifier(path, threads=2).predict_batch
