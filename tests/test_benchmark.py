"""The benchmark harness run for real on the converted model (few runs): structure and sanity only."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from realworld import one_error_line

ROOT = Path(__file__).resolve().parents[1]


def _bench(*args):
    return subprocess.run([sys.executable, "-m", "tools.benchmark", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=900)


@pytest.fixture(scope="module")
def bench_run(int8_model, tmp_path_factory, val500_dir, sample_clip, weights_env):
    out = tmp_path_factory.mktemp("bench")
    images = out / "images"
    images.mkdir()
    for f in sorted(val500_dir.iterdir())[:20]:
        (images / f.name).write_bytes(f.read_bytes())
    proc = _bench("--model", int8_model, "--model", out / "missing.tflite", "--threads", "1,2", "--runs", "20",
                  "--min-seconds", "0.2", "--warmup", "2", "--peers", "tflite-xnnpack,tflite-fp32,onnxruntime,opencv-dnn",
                  "--val", images, "--source", sample_clip, "--report", out / "b.json", "--csv", out / "b.csv",
                  "--plot", out / "b.png")
    return proc, out, images


def test_figures_are_sane(bench_run, int8_model):
    proc, out, images = bench_run
    assert proc.returncode == 2  # the missing model is an error ...
    assert "missing.tflite: model file not found" in proc.stderr and "Traceback" not in proc.stderr
    data = json.loads((out / "b.json").read_text())
    ok = [r for r in data["results"] if "error" not in r]
    assert len(ok) == 10  # ... and everything else is still measured: 2 int8 + 4 peers x 2 threads
    assert len(data["results"]) == 12
    for r in ok:
        L = r["latency_ms"]
        assert L["count"] >= 20 and 0 < L["min"] <= L["p50"] <= L["p90"] <= L["p99"] <= L["max"]
        assert L["min"] <= L["mean"] <= L["max"] and r["throughput_per_s"] == pytest.approx(1000 / L["mean"])
        assert r["size_bytes"] == Path(r["path"]).stat().st_size and 0 < r["compressed_bytes"] <= r["size_bytes"] * 1.01
        assert r["peak_rss_mb"] > 10 and r["load_ms"] > 0 and r["first_inference_ms"] > 0
        assert r["accuracy"]["images"] == 20 and 0 <= r["accuracy"]["top1"] <= r["accuracy"]["top5"] <= 100
    first = ok[0]
    assert first["pipeline"]["frames"] == 180 and first["pipeline"]["fps"] > 0
    int8 = [r for r in ok if r["path"] == first["path"] and r["runtime"] == first["runtime"]]
    assert len(int8) == 2 and int8[1]["agreement"] == 100.0  # the builtin kernels decide alike on 1 and 2 threads
    xnnpack = [r for r in ok if r["runtime"] == "tflite-xnnpack"]  # the same file, rounded by XNNPACK
    assert len(xnnpack) == 2 and all(r["agreement"] >= 85.0 and r["size_bytes"] == first["size_bytes"] for r in xnnpack)
    # The float peers run one float graph through three runtimes, each with its own feeding code (colour order,
    # layout, scaling): they decide alike, and like the int8 model on most of the 20 photos.
    floats = [r for r in ok if r["runtime"] in ("tflite-fp32", "onnxruntime", "opencv-dnn")]
    assert len(floats) == 6
    reference = floats[0]["accuracy"]["top1_indices"]
    for r in floats:
        same = sum(a == b for a, b in zip(r["accuracy"]["top1_indices"], reference))
        assert same >= 19 and r["agreement"] >= 85.0, (r["label"], r["runtime"], same, r["agreement"])
    m = data["machine"]
    assert m["cores"] and m["interpreter"] and isinstance(m["isa"], list)
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if "model name" in cpuinfo:  # x86: the CPU's name, not the family's model number printed above it
        assert m["cpu"] in cpuinfo and not m["cpu"].isdigit(), m["cpu"]
    rows = list(csv.DictReader(open(out / "b.csv")))
    assert len(rows) == 12 and (out / "b.png").stat().st_size > 10_000


def test_accuracy_equals_the_evaluator(bench_run, int8_model):
    from edge_runtime.classify import Classifier
    from edge_runtime.evaluation import evaluate, find_labelled_images
    _, out, images = bench_run
    data = json.loads((out / "b.json").read_text())
    clf = Classifier(int8_model)
    r = evaluate(find_labelled_images(images, clf.info.wnids, clf.info.labels), clf.predict_batch,
                 clf.preprocessing, progress=False)
    assert data["results"][0]["accuracy"]["top1"] == r.top1 and data["results"][0]["accuracy"]["top5"] == r.top5


def test_reference_regression_and_atomic_results(bench_run, int8_model, tmp_path):
    _, out, _ = bench_run
    ref = json.loads((out / "b.json").read_text())
    for r in ref["results"]:
        if "latency_ms" in r:
            r["latency_ms"]["p50"] /= 10  # pretend the reference was 10x faster
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    (tmp_path / "keep.json").write_text("previous results")
    proc = _bench("--model", int8_model, "--runs", "5", "--min-seconds", "0", "--reference", tmp_path / "ref.json",
                  "--fail-on-regression", "--report", tmp_path / "keep.json")
    assert proc.returncode == 3 and "regression:" in proc.stdout  # a gate missed: not a crash (1), not bad input (2)
    assert "note: reference measured on" not in proc.stdout  # same machine: no cross-machine note
    assert json.loads((tmp_path / "keep.json").read_text())["results"]  # replaced whole, never partial
    bad = _bench("--model", tmp_path / "ref.json", "--runs", "5", "--min-seconds", "0", "--report", tmp_path / "x.json")
    assert bad.returncode == 2, bad.stderr
    assert one_error_line(bad) == (f"error: {tmp_path / 'ref.json'}: not a TFLite model (file identifier 'TFL3' "
                                   "expected at byte 4)"), bad.stderr  # refused before any case runs (the integrity check)


def test_reference_from_another_cpu_is_named():
    from edge_runtime.bench_report import machine_difference

    here = {"cpu": "AMD EPYC", "isa": ["avx2"], "cores": 2, "arch": "x86_64"}
    assert machine_difference(here, dict(here)) is None
    note = machine_difference(dict(here, cpu="Intel Xeon", isa=["avx2", "avx512_vnni"]), here)
    assert "Intel Xeon" in note and "avx512_vnni" in note and "AMD EPYC" in note


def test_peers_are_found_through_the_artifacts_metadata(int8_model, tmp_path):
    """Float siblings come from the names the converter recorded, not from the artifact's file name."""
    import dataclasses
    import shutil

    from convert.artifact import embed_metadata
    from edge_runtime.metadata import read_model_info
    from tools.benchmark import build_cases

    renamed = tmp_path / "renamed.tflite"  # a name the siblings cannot be derived from
    shutil.copyfile(int8_model, renamed)
    for sibling in read_model_info(int8_model).extra["siblings"].values():
        shutil.copyfile(Path(int8_model).with_name(sibling), tmp_path / sibling)
    cases, notes = build_cases([renamed], [1], ["tflite-fp32", "onnxruntime", "opencv-dnn"])
    assert [c.runtime for c in cases] == ["tflite", "tflite-fp32", "onnxruntime", "opencv-dnn"] and not notes
    assert {Path(c.path).name for c in cases[1:]} == {"squeezenet1_0_float.tflite", "squeezenet1_0_float.onnx"}
    assert cases[2].module == "convert.peers" and cases[1].module == "edge_runtime.bench"
    info = read_model_info(int8_model)
    bare = tmp_path / "bare.tflite"  # an artifact that records no siblings: the peers say why they are skipped
    bare.write_bytes(embed_metadata(Path(int8_model).read_bytes(), dataclasses.replace(
        info, extra={k: v for k, v in info.extra.items() if k != "siblings"})))
    cases, notes = build_cases([bare], [1], ["onnxruntime", "nope"])
    assert [c.runtime for c in cases] == ["tflite"]
    assert notes == ["peer onnxruntime skipped: bare.tflite records no float_onnx sibling (convert it again to keep one)",
                     "unknown peer 'nope': one of tflite-xnnpack, tflite-fp32, onnxruntime, onnxruntime-int8, opencv-dnn, pytorch"]
