"""Figures of an int8 model against its float model, with 95% intervals, overall and per half.

Agreement is the fraction of images where both name the same top-1 class (no labels needed); the
top-1 drop is float top-1 minus int8 top-1 on labelled images, a paired difference. Halves follow
:func:`edge_runtime.evaluation.class_half`: settings are chosen on "tune", figures quoted on "report".
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from edge_runtime.evaluation import HALVES, class_half
from edge_runtime.intervals import clustered_interval, paired_difference, percent_interval, standardized_interval

from .head import comparable


def agreement_figures(f_scores: np.ndarray, q_scores: np.ndarray) -> dict:
    """Top-1 agreement (percent, with its Wilson 95% interval), logit errors and exact ties at the top."""
    f_top, q_top = f_scores.argmax(1), q_scores.argmax(1)
    same = int(np.sum(f_top == q_top))
    err = np.abs(comparable(f_scores) - comparable(q_scores))  # logits relative to the best, as the head gives
    ties = int(np.sum((q_scores == q_scores.max(1, keepdims=True)).sum(1) > 1))
    return {"agreement": round(100.0 * same / len(f_top), 3), "agreement_ci95": percent_interval(same, len(f_top)),
            "int8_ties_at_top": ties, "mean_abs_logit_error": round(float(err.mean()), 5),
            "max_abs_logit_error": round(float(err.max()), 5)}


def labelled_figures(f_scores: np.ndarray, q_scores: np.ndarray, targets: np.ndarray) -> dict:
    """Top-1 of both models, the top-1 drop with Newcombe's paired 95% interval, and the agreement figures."""
    t = np.asarray(targets)
    f_ok, q_ok = f_scores.argmax(1) == t, q_scores.argmax(1) == t
    drop, lo, hi = paired_difference(f_ok.tolist(), q_ok.tolist())
    return {"images": int(len(t)), "float_top1": round(100.0 * float(f_ok.mean()), 3),
            "int8_top1": round(100.0 * float(q_ok.mean()), 3), "top1_drop": round(100.0 * drop, 3),
            "top1_drop_ci95": [round(100 * lo, 1), round(100 * hi, 1)], **agreement_figures(f_scores, q_scores)}


def half_figures(f_scores: np.ndarray, q_scores: np.ndarray, targets) -> dict:
    """:func:`labelled_figures` on each half by class, and report minus tune for agreement and drop."""
    t = np.asarray(targets)
    halves = np.array([class_half(int(c)) for c in t])
    out: dict = {}
    for half in HALVES:
        keep = halves == half
        if keep.any():
            out[half] = labelled_figures(f_scores[keep], q_scores[keep], t[keep])
    if len(out) == 2:
        out["report_minus_tune"] = {k: round(out["report"][k] - out["tune"][k], 3)
                                    for k in ("agreement", "top1_drop")}
    return out


# The views every unlabelled check uses (fixed: a tuning setting must not change what it is judged on)
CHECK_SCALES = (1.0, 1.3, 1.7, 2.2)


# Camera and phone photo names (IMG_0001, dsc_0042, IMG_20241130_101502, PXL_20241130_101502123,
# 20241130_101502): separate photos, not the frames of a clip called "IMG"; numbered frames of such a name's
# video (IMG_1234_0001, 20241130_101502_0001) stay one clip
_CAMERA_PHOTO = re.compile(r"(?:IMG|DSC|DSCF|DSCN|PXL|MVIMG|PANO|CIMG|DJI|PICT)_(?:\d{8}_)?\d+|\d{8}_\d{6}",
                           re.IGNORECASE)


def group_of(path: Path) -> str:
    """Views of one file, and files named ``<clip>_<frame number>`` (or ``<clip>_f<frame number>``, the
    trainer's frames of a clip: convert/train/data.py), form one correlated group; a camera's or phone's
    photo name (:data:`_CAMERA_PHOTO`) is a photo of its own."""
    stem = Path(path).stem
    return stem if _CAMERA_PHOTO.fullmatch(stem) else re.sub(r"_f?\d+$", "", stem)


def check_views(paths: list[Path], pp) -> tuple[np.ndarray, list[str], list[str]]:
    """(N x H x W x 3 uint8 views, the group of each view, unreadable files) of unlabelled photos:
    each photo at CHECK_SCALES, each also mirrored, through the one preprocessing."""
    from edge_runtime.preprocess import PreprocessingError

    from .calibration import views

    crops, groups, skipped = [], [], []
    for path in paths:
        try:
            vs = views(path, pp, CHECK_SCALES, mirror=True)
        except PreprocessingError:
            skipped.append(str(path))
            continue
        crops += vs
        groups += [group_of(path)] * len(vs)
    return (np.stack(crops) if crops else np.zeros((0, *pp.input_size, 3), np.uint8)), groups, skipped


# Bands of the float model's top-two logit margin: how decided a view is. Int8 and float disagree almost
# only on near-ties, at the same rate per band on the check views as on ImageNet photos, but the check
# photos hold far more near-ties (42% of views below 0.5, against 18% of val500), so their raw agreement
# says how ambiguous they are as much as how faithful the int8 model is.
MARGIN_EDGES = (0.1, 0.25, 0.5, 1.0)


def margin_bands(f_scores: np.ndarray) -> np.ndarray:
    """The band (0 .. len(MARGIN_EDGES)) of each row's top-two margin, in the float model's logits."""
    top2 = np.sort(np.asarray(f_scores, np.float64), 1)[:, -2:]
    return np.digitize(top2[:, 1] - top2[:, 0], MARGIN_EDGES)


def margin_band_counts(f_scores: np.ndarray) -> tuple[int, ...]:
    """How many rows fall in each margin band: a weights record's ``check_reference`` when measured on its
    labelled tuning images (``python -m tools.check_reference``)."""
    return tuple(int(c) for c in np.bincount(margin_bands(f_scores), minlength=len(MARGIN_EDGES) + 1))


def band_counts_by_half(f_scores: np.ndarray, targets) -> dict[str, tuple[int, ...]]:
    """:func:`margin_band_counts` of each half by class: "tune" is a weights record's ``check_reference``."""
    halves = np.array([class_half(int(t)) for t in targets])
    return {h: margin_band_counts(np.asarray(f_scores)[halves == h]) for h in HALVES}


def unlabelled_figures(f_scores: np.ndarray, q_scores: np.ndarray, groups: list[str],
                       reference: tuple[int, ...] = ()) -> dict:
    """Agreement on unlabelled views with a cluster-robust 95% interval (groups of correlated views).

    With ``reference`` (how many of the weights' own labelled tuning images fall in each margin band,
    :data:`MARGIN_EDGES`), also ``standardized``: the same views' agreement per band, weighted to the
    reference's mix, i.e. the agreement expected on photos as decided as the ones the weights are
    for; the gates judge it when there is no ``--val``.
    """
    same = f_scores.argmax(1) == q_scores.argmax(1)
    keys = sorted(set(groups))
    g = np.array(groups)
    stats = clustered_interval([int(same[g == k].sum()) for k in keys], [int((g == k).sum()) for k in keys])
    ties = int(np.sum((q_scores == q_scores.max(1, keepdims=True)).sum(1) > 1))
    out = {**stats, "int8_ties_at_top": ties,
           "mean_abs_logit_error": round(float(np.abs(comparable(f_scores) - comparable(q_scores)).mean()), 5)}
    if reference:
        try:
            out["standardized"] = standardized_interval(same.tolist(), margin_bands(f_scores).tolist(), groups,
                                                        reference)
        except ValueError as e:  # a band the reference weighs has no check view: only the raw figure
            out["standardized_skipped"] = str(e)
    return out
