"""The val500 halves (settings chosen on one, figures quoted on the other) and the intervals of figures."""
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.evaluation import DatasetError, class_half, find_labelled_images, split_by_class
from edge_runtime.intervals import paired_difference, wilson


def test_val500_halves_are_by_class_disjoint_and_deterministic(val500_dir, float_model):
    _, record = float_model
    images = find_labelled_images(val500_dir, record.wnids, record.labels)
    tune, report = split_by_class(images, "tune"), split_by_class(images, "report")
    assert len(tune.paths) == len(report.paths) == 250
    assert not set(tune.paths) & set(report.paths)
    assert not set(tune.targets) & set(report.targets)  # no class on both sides
    assert set(tune.paths) | set(report.paths) == set(images.paths)
    assert all(t % 4 == 0 for t in tune.targets) and all(t % 4 == 2 for t in report.targets)
    again = split_by_class(find_labelled_images(val500_dir, record.wnids, record.labels), "report")
    assert again.paths == report.paths  # same rule, same order, every time
    # the rule is by class index alone: classes 0,1 tune, 2,3 report, ...
    assert [class_half(i) for i in range(6)] == ["tune", "tune", "report", "report", "tune", "tune"]
    assert record.labels[tune.targets[0]] == "tench" and record.labels[report.targets[0]] == "great_white_shark"
    with pytest.raises(DatasetError, match="tune, report"):
        split_by_class(images, "train")


def test_wilson_interval():
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and abs(hi - 0.2775) < 1e-4  # the textbook value
    lo, hi = wilson(475, 500)  # 95%: about +-2 points on 500 images
    assert 0.926 < lo < 0.929 and 0.965 < hi < 0.967
    with pytest.raises(ValueError):
        wilson(11, 10)


def test_paired_difference_interval_covers_about_95_percent():
    """Simulated top-1 drops on 250 images: 63% both right, 4% only float right, 2% only int8 right."""
    rng = np.random.default_rng(0)
    covered, widths = 0, []
    for _ in range(400):
        kind = rng.choice(4, size=250, p=[0.63, 0.04, 0.02, 0.31])  # both, float only, int8 only, neither
        f_ok, q_ok = np.isin(kind, (0, 1)), np.isin(kind, (0, 2))
        d, lo, hi = paired_difference(list(f_ok), list(q_ok))
        assert lo <= d <= hi
        widths.append(hi - lo)
        covered += lo <= 0.02 <= hi
    assert 0.91 <= covered / 400 <= 0.99, covered
    assert np.mean(widths) < 0.07  # paired: far narrower than two independent 65% figures (~0.17)
    d, lo, hi = paired_difference([True, False] * 50, [True, False] * 50)
    assert d == 0.0 and lo < 0 < hi


def test_report_carries_intervals_and_halves(converted):
    val = converted["validation"]["val"]
    assert val["half"] == "all" and val["images"] == 500
    lo, hi = val["agreement_ci95"]
    assert lo < val["agreement"] < hi and hi - lo < 5
    lo, hi = val["top1_drop_ci95"]
    assert lo <= val["top1_drop"] <= hi
    halves = val["halves"]
    assert halves["tune"]["images"] == halves["report"]["images"] == 250
    for h in ("tune", "report"):
        assert halves[h]["agreement_ci95"][0] < halves[h]["agreement"] < halves[h]["agreement_ci95"][1]
    assert halves["report_minus_tune"]["agreement"] == pytest.approx(
        halves["report"]["agreement"] - halves["tune"]["agreement"], abs=1e-6)
    hold = converted["validation"]["calibration_holdout"]
    assert len(hold["agreement_ci95"]) == 2


def test_gates_without_val_judge_many_unlabelled_views(converted):
    """Without --val the gates read the unlabelled check: held-out calibration photos and check_data/,
    hundreds of views in dozens of independent groups, with a cluster-robust interval; for weights
    with a reference mix (the ImageNet release), its agreement weighted to that mix of near-ties."""
    from convert.pipeline import ConvertOptions

    u = converted["validation"]["unlabelled"]
    assert u["views"] >= 600 and u["groups"] >= 30, u
    lo, hi = u["agreement_ci95"]
    assert lo <= u["agreement"] <= hi and hi - lo < 10 and u["design_effect"] >= 1.0
    std = u["standardized"]
    assert std["views"] == u["views"] and std["groups"] == u["groups"]
    assert sum(b["views"] for b in std["strata"]) == u["views"] and min(b["views"] for b in std["strata"]) >= 20
    assert std["agreement"] == pytest.approx(sum(b["weight"] * b["agreement"] for b in std["strata"]), abs=0.1)
    assert std["agreement_ci95"][0] <= std["agreement"] <= std["agreement_ci95"][1]
    without_val = {k: v for k, v in converted["validation"].items() if k != "val"}
    opts = ConvertOptions(out=Path("x.tflite"))
    strict = ConvertOptions(out=Path("x.tflite"), min_agreement=(std["agreement"] + 0.5) / 100)
    assert opts.gates().judge(without_val)["passed"] == (std["agreement"] >= 95.0)
    assert not strict.gates().judge(without_val)["passed"]
    raw_only = {"unlabelled": {k: v for k, v in u.items() if k != "standardized"}}
    assert ConvertOptions(out=Path("x.tflite"), min_agreement=(u["agreement"] + 0.5) / 100).gates().judge(
        raw_only)["failed"] and opts.gates().judge(raw_only)["passed"] == (u["agreement"] >= 95.0)


def test_the_gates_unlabelled_figure_predicts_the_labelled_one(converted):
    """The check photos hold far more near-ties than ImageNet photos, and int8 disagrees with float
    almost only there: their raw agreement is several points below val500's, while the same views
    weighted to the tuning half's mix of near-ties land within 2 points of the reporting half's
    agreement, which no choice saw (measured 95.7% vs 95.6%; raw 91.5%)."""
    u, halves = converted["validation"]["unlabelled"], converted["validation"]["val"]["halves"]
    assert abs(u["standardized"]["agreement"] - halves["report"]["agreement"]) <= 2.0, (u, halves["report"])
    assert u["agreement"] < u["standardized"]["agreement"]
    near, decided = u["standardized"]["strata"][0], u["standardized"]["strata"][-1]
    assert near["agreement"] < 80 and decided["agreement"] >= 99  # disagreement lives in the near-ties


def test_check_reference_is_measured_on_the_tuning_half(release_on_val500, float_model):
    """The release weights' reference mix is what tools/check_reference measures on val500's tuning half."""
    from convert.fidelity import band_counts_by_half

    _, record = float_model
    result = release_on_val500
    assert band_counts_by_half(result.scores, result.targets)["tune"] == record.check_reference
    assert sum(record.check_reference) == 250


def test_standardized_interval_weighs_strata_and_counts_groups_once():
    from edge_runtime.intervals import clustered_interval, standardized_interval

    # stratum 0: 4 of 8 agree (near-ties); stratum 1: 8 of 8; eight groups of two views
    same = [1, 0, 1, 0, 1, 0, 1, 0] + [1] * 8
    strata = [0] * 8 + [1] * 8
    groups = [f"g{i // 2}" for i in range(16)]
    even = standardized_interval(same, strata, groups, (1, 1))
    assert even["agreement"] == 75.0 == clustered_interval([1] * 4 + [2] * 4, [2] * 8)["agreement"]
    mostly_decided = standardized_interval(same, strata, groups, (1, 9))
    assert mostly_decided["agreement"] == 95.0 and [b["views"] for b in mostly_decided["strata"]] == [8, 8]
    assert mostly_decided["agreement_ci95"][0] < 95.0 < mostly_decided["agreement_ci95"][1]
    # the same outcomes, but whole groups of near-ties agree or not: a wider interval
    clumped = standardized_interval([1, 1, 0, 0, 1, 1, 0, 0] + [1] * 8, strata, groups, (1, 1))
    assert clumped["agreement"] == 75.0
    width = [r["agreement_ci95"][1] - r["agreement_ci95"][0] for r in (even, clumped)]
    assert width[1] > width[0] + 3, width
    with pytest.raises(ValueError, match="stratum 2"):
        standardized_interval(same, strata, groups, (1, 1, 1))
    with pytest.raises(ValueError, match="strata 0 to 0"):
        standardized_interval(same, strata, groups, (1,))


def test_check_data_is_never_calibration_data():
    from convert.calibration_data import default_calib_dir, default_check_dir, list_calibration_images

    calib = {p.read_bytes() for p in list_calibration_images(default_calib_dir())[0]}
    check = list_calibration_images(default_check_dir())[0]
    assert len(check) >= 70 and not calib & {p.read_bytes() for p in check}
    manifest = (default_check_dir() / "MANIFEST.csv").read_text().splitlines()
    assert len(manifest) == len(check) + 1 and all(p.name in "\n".join(manifest) for p in check)


def test_clustered_interval_counts_correlated_views_once():
    from edge_runtime.intervals import clustered_interval

    same = clustered_interval([8, 8, 0, 8], [8, 8, 8, 8])  # whole photos agree or not
    spread = clustered_interval([6, 6, 6, 6], [8, 8, 8, 8])  # same 75%, spread evenly
    assert same["agreement"] == spread["agreement"] == 75.0
    assert same["design_effect"] > 4 and spread["design_effect"] == 1.0
    assert same["agreement_ci95"][1] - same["agreement_ci95"][0] > spread["agreement_ci95"][1] - spread["agreement_ci95"][0]


def test_one_pass_statistics_match_the_equalized_models_own(float_model):
    """Convert once: GPTQ's input moments of the equalized model, derived from the one pass over the
    unequalized model, equal those measured on the equalized model itself (equalization is exact)."""
    import torch

    from convert.equalize import equalize_from_ranges
    from convert.pixel_model import PixelModel
    from convert.rounding import input_moments
    from convert.statistics import rescale_moments, shared_statistics
    from edge_runtime.preprocess import read_image, resize_crop

    model, record = float_model
    folded = PixelModel(model, record.preprocessing).folded()
    root = Path(__file__).resolve().parents[1] / "calib_data"
    crops = np.stack([resize_crop(read_image(str(root / f)), record.preprocessing)
                      for f in ("skimage_coffee.jpg", "skimage_chelsea.jpg", "opencv_fruits.jpg", "opencv_box.jpg")])
    x = [torch.from_numpy(crops.transpose(0, 3, 1, 2).astype(np.float32))]
    ranges, moments = shared_statistics(folded, x)
    eq, scales = equalize_from_ranges(folded, ranges, strength=0.5)
    assert len(scales) == 25 and any(float(s.max()) > 2 for s in scales.values())  # really rescaled
    derived = rescale_moments(moments, eq, scales)
    convs = [m for m in eq.modules() if isinstance(m, torch.nn.Conv2d)]
    names = {m: n for n, m in eq.named_modules()}
    direct = input_moments(eq, convs, x)
    for conv in convs:
        a, b = derived[names[conv]], direct[conv]
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6 * float(b.abs().max())), names[conv]


def test_the_trainers_frames_of_a_clip_are_one_correlated_group(sample_clip, tmp_path):
    """A run trained on clips holds out frames the trainer names ``<clip>_f<frame>.png``: the unlabelled
    check must count them as one clip, as it counts the check folder's ``<clip>_<frame>`` files (it counted
    each such frame as an independent photo: an interval narrower than the data allows)."""
    from convert.fidelity import check_views
    from convert.train.data import extract_frames
    from convert.weights import CAFFE_IMAGENET

    frames = extract_frames(sample_clip, tmp_path, 30)
    assert len(frames) == 6 and all(f.name.startswith(f"{sample_clip.stem}_f") for f in frames)
    check = Path(__file__).resolve().parents[1] / "convert" / "check_data"
    photos = [check / "opencv_vtest_0020.jpg", check / "opencv_vtest_0060.jpg", check / "opencv_plane.jpg"]
    views, groups, skipped = check_views(frames + photos, CAFFE_IMAGENET)
    assert not skipped and len(views) == len(groups) == 8 * 9  # four scales, each mirrored
    assert set(groups[:48]) == {sample_clip.stem}
    assert groups[48::8] == ["opencv_vtest", "opencv_vtest", "opencv_plane"]


def test_a_cameras_photo_names_are_separate_photos(tmp_path):
    """A user's --check of phone and camera photos (IMG_0001.jpg, IMG_20241130_101502.jpg, ...) was taken for
    frames of one clip called 'IMG': one group, an interval of [18.7, 99.9] for 95% agreement and '1 photos
    or clips' in the report. Those names are photos of their own; a capture session's frames (label_NNNNNN),
    ffmpeg's frame_NNNN and the numbered frames of a phone's video (IMG_1234_0001) stay one clip each."""
    from convert.fidelity import check_views
    from convert.weights import CAFFE_IMAGENET

    calib = Path(__file__).resolve().parents[1] / "convert" / "calib_data"
    sources = sorted(calib.glob("skimage_*.jpg"))[:6]
    names = ["IMG_0001.jpg", "IMG_0002.jpg", "dsc_0042.jpg", "IMG_20241130_101502.jpg",
             "PXL_20241130_101502123.jpg", "20241130_101503.jpg", "mug_000001.jpg", "mug_000002.jpg",
             "frame_0001.jpg", "frame_0002.jpg", "IMG_1234_0001.jpg", "IMG_1234_0002.jpg",
             "20241130_101502_0001.jpg", "20241130_101502_0002.jpg", "0_000001.jpg", "0_000002.jpg"]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(sources[i % len(sources)].read_bytes())
    _, groups, skipped = check_views(sorted(tmp_path.iterdir()), CAFFE_IMAGENET)
    assert not skipped and len(groups) == 8 * len(names)
    assert sorted(set(groups)) == sorted(["IMG_0001", "IMG_0002", "dsc_0042", "IMG_20241130_101502",
                                          "PXL_20241130_101502123", "20241130_101503", "mug", "frame",
                                          "IMG_1234", "20241130_101502", "0"])  # the last three: a video's frames
