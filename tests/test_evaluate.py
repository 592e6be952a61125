import json
import shutil
import subprocess
import sys

import pytest

from convert.torch_eval import evaluate_torch, torch_predict
from edge_runtime.evaluation import DatasetError, evaluate, find_labelled_images
from realworld import convert_main, one_error_line


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


def test_top5_is_left_out_for_five_classes_or_fewer(float_model, val500_dir):
    """A model of 5 classes or fewer always has 100% top-5: the figures' line leaves it out."""
    model, record = float_model
    images = find_labelled_images(val500_dir, record.wnids, record.labels)
    images.paths, images.targets = images.paths[:8], images.targets[:8]
    predict = torch_predict(model, record)
    full = evaluate(images, predict, record.preprocessing, progress=False)
    assert full.classes == 1000 and "top-5" in full.figures_text()
    images.targets = [t % 3 for t in images.targets]  # the first three classes' scores, as a 3-class model
    few = evaluate(images, lambda crops: predict(crops)[:, :3], record.preprocessing, progress=False)
    assert few.classes == 3 and few.top5 == 100.0
    assert few.figures_text() == f"top-1 {few.top1:.1f}%"


def test_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="no labelled images"):
        find_labelled_images(tmp_path, ["n01440764"], ["tench"])


def test_class_folders_named_by_no_class_of_the_model_are_named_in_one_line(val500_dir, tmp_path):
    """Class sub-folders with real photos, none named by a class of the model: the message says so, naming a few
    of the model's labels and of the folders, in one bounded line (not "no labelled images found")."""
    photo = next(val500_dir.iterdir()).read_bytes()
    for name in ("many/cat", "many/dog", "many/horse\nbird", "one/cat"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "a.jpg").write_bytes(photo)
    with pytest.raises(DatasetError) as e:
        find_labelled_images(tmp_path / "many", [], [f"label{i}" for i in range(1000)])
    assert str(e.value) == (f"{tmp_path / 'many'}: none of its 3 class folders is a class of the model (its labels: "
                            "label0, label1, label2, label3, label4, ... (1000 in all); folders: cat, dog, horse?bird)")
    with pytest.raises(DatasetError, match=r"its class folder is not a class of the model \(its labels: tench; "
                                           r"folders: cat\)$"):
        find_labelled_images(tmp_path / "one", ["n01440764"], ["tench"])


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


def test_help_says_it_takes_a_tflite_and_that_val_is_required(tmp_path):
    """The help said "accuracy of a float model" (it also runs a .tflite) and showed [--val VAL] as optional."""
    help_text = convert_main("evaluate", "--help").stdout
    usage = help_text.split("\n\n")[0]
    assert " --val VAL " in usage and "[--val" not in usage, usage
    assert "converted .tflite" in help_text.split("\n\n")[1], help_text
    err = one_error_line(convert_main("evaluate", "--model", tmp_path / "m.tflite"))
    assert "--val" in err and "required" in err, err


def test_a_wordnet_named_file_in_a_sub_folder_is_skipped_for_its_folder(val500_dir, tmp_path):
    """'sub/n01532829_house_finch.JPEG (no known class in its name)': its name holds a known class; it is
    skipped because files in a sub-folder are read by the sub-folder's name, and the reason says so."""
    first, second = sorted(val500_dir.iterdir())[:2]
    shutil.copy(first, tmp_path / first.name)
    (tmp_path / "sub").mkdir()
    shutil.copy(second, tmp_path / "sub" / second.name)
    (tmp_path / "sub" / "photo.jpg").write_bytes(first.read_bytes())
    wnids = [first.name[:9], second.name[:9]]
    images = find_labelled_images(tmp_path, wnids, ["a", "b"])
    assert images.paths == [tmp_path / first.name]
    assert images.skipped == [
        f"sub/{second.name} (in the sub-folder sub, which is not a class of the model: files named by WordNet id "
        "are read by their name only at the top of the folder, a file in a sub-folder by the sub-folder's name)",
        "sub/photo.jpg (its folder sub is not a class of the model)"]


def test_a_long_pass_prints_about_twenty_progress_lines(trained_converted, fmnist, tmp_path):
    """A CI log of a large --val: a line every 50 images gave ImageNet's 50,000 images 1,000 lines per model.
    1,100 images (the Fashion-MNIST test images, each linked under 2.2 names; the trained run's small
    artifact) now give 11 lines, the last at 1100/1100 (22 before)."""
    files = sorted(p for p in (fmnist / "test").rglob("*.png"))
    for k in range(1100):
        f = files[k % len(files)]
        (tmp_path / f.parent.name).mkdir(exist_ok=True)
        (tmp_path / f.parent.name / f"{f.stem}_{k}{f.suffix}").symlink_to(f)
    proc = subprocess.run([sys.executable, "-m", "convert", "evaluate", "--model", trained_converted["out"], "--val",
                           str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip().startswith("evaluated ")]
    assert lines == [f"evaluated {n}/1100 images" for n in range(100, 1101, 100)], lines
