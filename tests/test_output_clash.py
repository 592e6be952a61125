"""An output that is an input (or another output) is refused before any work, by one shared check
(edge_runtime.fileio.clash_problem): the same path, a symlink or a hard link. Each case once destroyed the
input and exited 0 (found by a walk-through). Also: a training run or a sweep folder inside, equal to or
around the data, and a run folder holding calib/ or val/ that no run made."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import fashion_mnist_subset
from realworld import ROOT, convert_main, one_error_line

PHOTOS = sorted((ROOT / "convert" / "calib_data").glob("*.jpg"))


def _run(module: str, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _photos(root: Path) -> Path:
    """Two class folders of real photos (24 each) under root/train, 6 each under root/val."""
    for i, p in enumerate(PHOTOS[:60]):
        folder = root / ("val" if i % 5 == 0 else "train") / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / p.name).write_bytes(p.read_bytes())
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_report_onto_the_model_is_refused_and_the_model_kept(tmp_path):
    """tools.benchmark --report M and convert evaluate --report M, M the --model: M became the JSON report."""
    model = tmp_path / "m_int8.tflite"
    model.write_bytes(b"TFL3 model bytes the command must not replace")
    os.link(model, tmp_path / "hard.tflite")
    (tmp_path / "soft.tflite").symlink_to(model)
    before = model.read_bytes()
    for report in (model, tmp_path / "hard.tflite", tmp_path / "soft.tflite"):
        line = one_error_line(_run("tools.benchmark", "--model", model, "--runs", 5, "--min-seconds", 0,
                                   "--report", report))
        assert line.startswith(f"error: --report {report}: the same file as --model"), line
        assert "writing it would destroy the input" in line
    line = one_error_line(_run("convert", "evaluate", "--model", model, "--val", tmp_path, "--report", model))
    assert line == (f"error: --report {model}: the same file as --model (writing it would destroy the input); "
                    "choose another path")
    assert model.read_bytes() == before and not (tmp_path / "m_int8.tflite.json").exists()


def test_compress_onto_its_own_weights_is_refused(tmp_path, weights_env):
    """convert compress --weights dc.sqz --out dc.sqz replaced the input container."""
    sqz = tmp_path / "dc.sqz"
    r = _run("convert", "compress", "--weights", "deep-compression", "--out", sqz, "--lossless", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    before, mtime = sqz.read_bytes(), sqz.stat().st_mtime_ns
    line = one_error_line(_run("convert", "compress", "--weights", sqz, "--out", sqz, "--bits", 8, "--finetune-steps",
                               0, "--quiet"))  # (was exit 0, the container re-coded at 8 bits in its place)
    assert line.startswith(f"error: --out {sqz}: the same file as --weights"), line
    line = one_error_line(_run("convert", "compress", "--weights", sqz, "--out", tmp_path / "b.sqz",
                               "--report", sqz, "--quiet"))
    assert line.startswith(f"error: --report {sqz}: the same file as --weights"), line
    assert sqz.read_bytes() == before and sqz.stat().st_mtime_ns == mtime and not (tmp_path / "b.sqz").exists()


def test_converter_outputs_that_are_its_input_or_each_other(tmp_path):
    """convert tflite --onnx a_float.onnx --out a_int8.tflite rewrote its input as the new float sibling;
    --report onto --out or a sibling was silently not written. Refused before the model is even read."""
    onnx_in = tmp_path / "a_float.onnx"
    onnx_in.write_bytes(b"the user's float ONNX")
    line = one_error_line(_run("convert", "tflite", "--onnx", onnx_in, "--out", tmp_path / "a_int8.tflite",
                               "--no-gates"))
    assert line == (f"error: --out {tmp_path / 'a_int8.tflite'}: its float ONNX sibling {onnx_in} is the --onnx "
                    f"input (it would be replaced); choose another --out, e.g. --out "
                    f"{tmp_path / 'a_onnx_int8.tflite'}")
    for report, what in (("d_int8.tflite", "--out"), ("d_float.tflite", "the float TFLite beside --out"),
                         ("d_float.onnx", "the float ONNX beside --out")):
        line = one_error_line(_run("convert", "tflite", "--out", tmp_path / "d_int8.tflite",
                                   "--report", tmp_path / report))
        assert line == (f"error: --report {tmp_path / report}: the same file as {what} (one output would "
                        "replace the other); choose another path"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_float.onnx"]
    assert onnx_in.read_bytes() == b"the user's float ONNX"


@pytest.mark.parametrize("tool", ["tools.runtime_bench", "tools.interpreter_agreement"])
def test_other_tools_refuse_an_output_onto_the_model(tmp_path, tool):
    model = tmp_path / "m_int8.tflite"
    model.write_bytes(b"model")
    flag = "--report"
    args = ["dump"] if tool == "tools.interpreter_agreement" else []
    line = one_error_line(_run(tool, *args, "--model", model, flag, model))
    assert line.startswith(f"error: {flag} {model}: the same file as --model"), line
    assert model.read_bytes() == b"model"


def test_train_out_inside_equal_to_or_around_the_data_is_refused(tmp_path, weights_env):
    """--data ds/train --out ds mixed hard-linked training images into the user's ds/val; --out equal to --data
    wrote best.pt, calib/, val/ into it; --out ds/train/newrun was 'class folder newrun has no files'. (In this
    process: every case is refused before the work.)"""
    ds = _photos(tmp_path / "ds")
    before = _files(ds)
    quick = ["--weights", "none", "--input-size", "32", "--epochs", "1", "--quiet"]
    for out, how in ((ds / "train", "the --data folder"), (ds / "train" / "newrun", f"inside --data {ds / 'train'}"),
                     (ds / "train" / "a" / "..", "the --data folder")):
        line = one_error_line(convert_main("train", "--data", ds / "train", "--out", out, *quick))
        assert line == (f"error: --out {out}: {how} (its files would be mixed into the data); choose another --out, "
                        "outside it"), line
    line = one_error_line(convert_main("train", "--data", ds / "train", "--out", ds, *quick))  # ds/val is the user's
    assert line.startswith(f"error: --out {ds}: holds val/, which no training run recorded"), line
    work = tmp_path / "w"  # data inside the folder a run writes its calibration sample into
    shutil.copytree(ds / "train", work / "calib" / "photos")
    line = one_error_line(convert_main("train", "--data", work / "calib" / "photos", "--out", work, *quick))
    assert line.startswith(f"error: --out {work}: holds --data {work / 'calib' / 'photos'} where it writes"), line
    line = one_error_line(convert_main("train", "--data", ds / "train", "--val", ds / "val", "--out",
                               ds / "val" / "run", *quick))
    assert line.startswith(f"error: --out {ds / 'val' / 'run'}: inside --val {ds / 'val'}"), line
    assert _files(ds) == before and not (ds / "train" / "newrun").exists()

    # a folder holding a calib/ or val/ that no run recorded: the run would have merged into it
    run = tmp_path / "run"
    (run / "val" / "a").mkdir(parents=True)
    (run / "val" / "a" / "mine.jpg").write_bytes(PHOTOS[0].read_bytes())
    line = one_error_line(convert_main("train", "--data", ds / "train", "--out", run, *quick))
    assert line.startswith(f"error: --out {run}: holds val/, which no training run recorded"), line
    assert sorted(p.name for p in run.rglob("*")) == ["a", "mine.jpg", "val"]

    # outputs onto the run's own files or among the images
    for flag, path, expected in (("--report", tmp_path / "r" / "best.pt", "the same file as the run's best.pt"),
                                 ("--report", ds / "train" / "r.json", f"inside --data {ds / 'train'}"),
                                 ("--tflite", tmp_path / "r" / "calib" / "m.tflite", "inside the run's calib/")):
        line = one_error_line(convert_main("train", "--data", ds / "train", "--out", tmp_path / "r", flag, path,
                                   *quick))
        assert line.startswith(f"error: {flag} {path}: {expected}"), line
    assert not (tmp_path / "r").exists() and _files(ds) == before


def test_design_space_out_inside_the_data_is_refused(tmp_path):
    ds = _photos(tmp_path / "ds")
    (ds / "test").symlink_to(ds / "val")
    line = one_error_line(_run("tools.design_space", "--data", ds, "--out", ds / "train", "--quiet"))
    assert line.startswith(f"error: --out {ds / 'train'}: inside --data {ds}"), line
    assert not (ds / "train" / "runs").exists() and not (ds / "train" / "results.json").exists()


def test_a_started_sweep_is_refused_without_resume_and_resumed_with_its_settings(tmp_path_factory):
    """A sweep killed in its first variant (no results.json then), run again without --resume and another
    --epochs, auto-resumed the variant and failed with '--resume: ... trained with --epochs 2, not 3'."""
    fm = fashion_mnist_subset(tmp_path_factory, "fm-started", train=30, test=10)
    out = tmp_path_factory.mktemp("started") / "sweep"
    args = ["--data", fm, "--out", out, "--grid", "pct_3x3=0.25", "--input-size", "32", "--batch-size", "32",
            "--lr", "0.005", "--rounds", "1", "--runs", "5", "--min-seconds", "0", "--weight-rounding", "nearest",
            "--equalize", "0", "--bias-correction", "0", "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "tools.design_space", *map(str, args), "--epochs", "2"], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    last = out / "runs" / "pct3x3-0.25" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert last.exists() and proc.returncode == 143, err[-2000:]

    line = one_error_line(_run("tools.design_space", *args, "--epochs", "3"))
    assert line == (f"error: --out {out} already holds a sweep: pass --resume to continue it, or choose another "
                    "--out (nothing is overwritten)"), line
    again = _run("tools.design_space", "--data", fm, "--out", out, "--resume", "--rounds", "1", "--runs", "5",
                 "--min-seconds", "0", "--quiet")  # the sweep's own --epochs 2, grid and settings
    assert again.returncode == 0, again.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["epochs"] == 2 and [r["status"] for r in results["variants"]] == ["ok"]


def test_benchmark_same_model_twice_and_a_reference_that_is_not_a_report(tmp_path):
    model = tmp_path / "m_int8.tflite"
    model.write_bytes(b"model")
    line = one_error_line(_run("tools.benchmark", "--model", model, "--model", tmp_path / "." / "m_int8.tflite"))
    assert line == f"error: --model {model}: given twice; each model once", line
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    line = one_error_line(_run("tools.benchmark", "--model", model, "--reference", notes))
    assert line.startswith(f"error: --reference {notes}: not a benchmark report: not JSON"), line


def test_benchmark_labels_of_same_named_files_in_same_named_folders_differ():
    from tools.benchmark import build_cases

    cases, _ = build_cases([Path("a/x/m.tflite"), Path("b/x/m.tflite"), Path("c/y/m.tflite")], [2], [])
    assert [c.label for c in cases] == ["a/x/m tflite x2", "b/x/m tflite x2", "y/m tflite x2"]


def test_an_out_that_is_no_tflite_path_is_one_line_before_the_clash_check(tmp_path):
    """The clash check named the float siblings of --out before --out was checked: `--out .` and `--out /`
    ended in ValueError ('has an empty name'), a traceback, where 'a .tflite path expected' was said."""
    for out in (".", "/", str(tmp_path)):
        line = one_error_line(convert_main("tflite", "--weights", "deep-compression", "--out", out))
        assert line == f"error: --out {out}: a .tflite path expected", line


def test_a_run_killed_while_making_its_working_folders_can_start_again(tmp_path):
    """run.json was first written after the working folders (calib/, frames/: minutes for clips): a run killed
    in between left a folder every later run refused as holding 'calib/, which no training run recorded'.
    The folder is marked as a run's before they are made, so the next run starts over."""
    from convert.train.options import TrainOptions
    from convert.train.setup import check_out, release_run

    out = tmp_path / "run"
    check_out(TrainOptions(data=tmp_path, out=out))  # what a run does first ...
    release_run(out)
    (out / "calib" / "a").mkdir(parents=True)  # ... and what it had made when it was killed
    assert (out / "run.json").exists()
    check_out(TrainOptions(data=tmp_path, out=out))  # the next run: not refused, the killed one's folders gone
    release_run(out)
    assert not (out / "calib").exists()


def test_capture_into_its_own_source_folder_is_refused(tmp_path):
    """capture --source photos/parcel --label parcel --out photos copied every photo into the folder it read:
    duplicates that leak across a training run's split. Refused, the folder unchanged."""
    photos = _photos(tmp_path / "ds") / "train"
    before = _files(photos)
    for args in (["--source", photos / "a", "--label", "a", "--out", photos],
                 ["--source", photos, "--label", "new", "--out", photos / "a"]):
        line = one_error_line(_run("edge_runtime", "capture", *args))
        assert "(its files would be mixed into the data)" in line, line
    assert _files(photos) == before
