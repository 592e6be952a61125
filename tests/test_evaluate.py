import json
import shutil
import subprocess
import sys

import pytest

from convert.torch_eval import evaluate_torch
from edge_runtime.evaluation import DatasetError, find_labelled_images
from realworld import convert_main


def test_deep_compression_accuracy_on_val500(release_on_val500):
    """The faithful port: top-1 65.4%, top-5 84.6% (within 0.4 points) on the 500 images."""
    result = release_on_val500
    assert result.n_used == 500 and result.n_skipped == 0
    assert abs(result.top1 - 65.4) <= 0.4, result.top1
    assert abs(result.top5 - 84.6) <= 0.4, result.top5


def test_class_folder_layout_and_unreadable_files(float_model, val500_dir, tmp_path):
    model, record = float_model
    files = sorted(val500_dir.iterdir())[:6]
    for f in files:  # one sub-folder per class, named by class name
        cls = record.labels[record.wnids.index(f.name[:9])]
        (tmp_path / cls).mkdir()
        shutil.copy(f, tmp_path / cls / "img.jpg")
    (tmp_path / record.labels[0] / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("hello")
    flat = evaluate_torch(model, record, str(val500_dir), limit=6, progress=False)
    nested = evaluate_torch(model, record, str(tmp_path), progress=False)
    assert nested.n_used == 6 and nested.n_skipped == 2
    assert sorted(nested.targets) == sorted(flat.targets)
    assert nested.top1 == flat.top1


def test_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="no labelled images"):
        find_labelled_images(tmp_path, ["n01440764"], ["tench"])


def test_cli_json_and_errors(weights_env, val500_dir, tmp_path):
    cmd = [sys.executable, "-m", "convert", "evaluate", "--weights", "deep-compression",
           "--val", str(val500_dir), "--limit", "20", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result["images"] == 20 and 0 <= result["top1"] <= result["top5"] <= 100
    bad = convert_main("evaluate", "--weights", tmp_path / "missing.pth", "--val", val500_dir)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().startswith("error:") and len(bad.stderr.strip().splitlines()) == 1
    empty = convert_main("evaluate", "--weights", "deep-compression", "--val", tmp_path)
    assert empty.returncode == 2 and "no labelled images" in empty.stderr and "Traceback" not in empty.stderr
