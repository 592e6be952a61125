"""The design-space explorer on real Fashion-MNIST images: two variants (v1.0 and a v1.0 with 25% 3x3
filters, built from the paper's metaparameters) trained for one epoch on 300 images, converted to int8
and measured by the benchmark harness, as users run it (the tool in its own process). At 32x32, v1.0's
ceil-mode pool after fire4 pads its input, which the converter's ranges once took for activations.

The first sweep finds one variant's run folder blocked by a file: that variant fails, is reported in
one line, and the other is finished; ``--resume`` then finishes the failed one without redoing the
other. Figures are checked against independent computations (the evaluator on the artifact, the
model's own parameter and MAC counts, file sizes); the converter runs with cheap settings (rounding
to nearest, no equalization or bias correction): this test is about the sweep, not about fidelity.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from convert.design_space.analysis import beyond_chance
from convert.design_space.counting import macs, parameters
from convert.models import create_model
from conftest import fashion_mnist_subset
from realworld import one_error_line

ROOT = Path(__file__).resolve().parents[1]
GRID = "pct_3x3=0.5,0.25"
CHEAP = ["--weight-rounding", "nearest", "--equalize", "0", "--bias-correction", "0"]


def _tool(*args, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "tools.design_space", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


# ---------------------------------------------------------------- a real sweep

@pytest.fixture(scope="module")
def fm(tmp_path_factory) -> Path:
    return fashion_mnist_subset(tmp_path_factory, "fm-design", train=30, test=20)


@pytest.fixture(scope="module")
def sweep(fm, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("design") / "sweep"
    (out / "runs").mkdir(parents=True)
    blocker = out / "runs" / "pct3x3-0.25"
    blocker.write_text("a file where the variant's run folder should go")
    args = ["--data", fm, "--out", out, "--epochs", "1", "--input-size", "32", "--threads", "2",
            "--batch-size", "32", "--lr", "0.005", "--rounds", "1", "--runs", "10", "--min-seconds", "0",
            *CHEAP, "--quiet"]
    first = _tool(*args, "--grid", GRID, "--budget-ms", "10")
    blocker.unlink()
    best = out / "runs" / "v1.0" / "best.pt"
    first_mtime = best.stat().st_mtime_ns if best.exists() else None
    # resumed as the README says, without --grid or --budget-ms: the sweep that was started goes on (not the
    # default one), and its report keeps the recommendation for the budget it was started with
    second = _tool(*args, "--resume")
    return out, first, second, first_mtime


def test_a_failing_variant_is_reported_and_the_sweep_goes_on(sweep):
    out, first, _, _ = sweep
    assert first.returncode == 1 and "pct3x3-0.25: training:" in one_error_line(first), first.stderr[-2000:]
    assert "| v1.0 (paper v1.0) |" in first.stdout


def test_resume_finishes_the_failed_variant_only(sweep, fm):
    out, _, second, first_mtime = sweep
    assert second.returncode == 0, second.stderr[-2000:]
    assert (out / "runs" / "v1.0" / "best.pt").stat().st_mtime_ns == first_mtime  # not retrained
    results = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in results["variants"]] == ["v1.0", "pct3x3-0.25"]
    assert all(r["status"] == "ok" for r in results["variants"])
    again = _tool("--data", fm, "--out", out, "--grid", GRID)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "already holds a sweep" in again.stderr


def test_figures_are_the_models_own(sweep, fm):
    from edge_runtime.classify import Classifier
    from edge_runtime.evaluation import evaluate, find_labelled_images
    from edge_runtime.metadata import read_model_info

    out = sweep[0]
    results = json.loads((out / "results.json").read_text())
    assert results["timing"]["threads"] == 2 and results["machine"]["cpu"]
    for row, (arch, kwargs) in zip(results["variants"], [("squeezenet1_0", {}), ("squeezenet_custom", {"pct_3x3": 0.25})]):
        assert (row["arch"], row["arch_kwargs"]) == (arch, kwargs)
        model = create_model(arch, num_classes=10, **kwargs)
        assert row["params"] == parameters(model) and row["macs"] == macs(model, 32)
        int8 = out / "models" / f"{row['name']}_int8.tflite"
        assert row["int8_bytes"] == int8.stat().st_size and row["int8_file"] == int8.name
        info = read_model_info(int8)
        assert info.labels[0] == "Ankle boot" and len(info.labels) == 10 and info.model_name == row["name"]
        assert info.preprocessing.input_size == (32, 32)
        # the harness's int8 top-1 is the evaluator's on the same artifact and test images
        clf = Classifier(int8)
        r = evaluate(find_labelled_images(fm / "test", info.wnids, info.labels), clf.predict_batch,
                     clf.preprocessing, progress=False)
        assert row["test_images"] == r.n_used == 200 and row["int8_test_top1"] == pytest.approx(r.top1, abs=1e-9)
        assert row["int8_test_top1"] == pytest.approx(100 * row["test_correct"].count("1") / 200)
        assert row["int8_test_top1_ci95_low"] <= row["int8_test_top1"] <= row["int8_test_top1_ci95_high"]
        assert 0 <= row["float_test_top1"] <= 100 and abs(row["float_test_top1"] - row["int8_test_top1"]) <= 15
        assert row["int8_val_top1"] is not None and row["float_val_top1"] is not None
        assert 0 < row["p50_ms"] <= row["p90_ms"] and row["peak_rss_mb"] > 10
    custom = results["variants"][1]
    assert custom["params"] < results["variants"][0]["params"]  # fewer 3x3 filters, fewer weights
    for name in ("pareto.png", "curves.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG" and (out / name).stat().st_size > 10_000
    md = (out / "report.md").read_text()
    assert "## Recommendation (10 ms budget)" in md and "v1.0 (paper v1.0)" in md
    # a recommendation only when a variant learned beyond chance (1 epoch on 300 images may not)
    assert ("ship **" in md) == any(beyond_chance(r) for r in results["variants"]), md
    assert all(r["classes"] == 10 for r in results["variants"])
    assert "hold the series pct_3x3 0.25, 0.5 (plotted in curves.png, too short to test)" in md
    assert (out / "results.csv").read_text().splitlines()[0].startswith("name,paper_default,arch")


def test_device_results_are_merged(sweep, tmp_path):
    out = sweep[0]
    models = sorted((out / "models").glob("*_int8.tflite"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    bench = subprocess.run([sys.executable, "-m", "tools.benchmark",
                            *[a for m in models for a in ("--model", m)], "--threads", "1", "--runs", "5",
                            "--min-seconds", "0", "--warmup", "1", "--json", tmp_path / "device.json"],
                           env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert bench.returncode == 0, bench.stderr[-2000:]
    r = _tool("--out", out, "--device-results", tmp_path / "device.json", "--budget-ms", "10")
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    device = {Path(r["path"]).name: r for r in json.loads((tmp_path / "device.json").read_text())["results"]}
    for row in results["variants"]:
        measured = device[row["int8_file"]]
        assert row["device_threads"] == 1 and row["device_p50_ms"] == pytest.approx(measured["latency_ms"]["p50"], abs=1e-3)
    assert "Device timings merged" in (out / "report.md").read_text()
    (tmp_path / "broken.json").write_text("{not json")
    bad = _tool("--out", out, "--device-results", tmp_path / "broken.json")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --device-results") and "Traceback" not in bad.stderr
