"""The converter's bad inputs and interrupted runs: one line and a
non-zero exit, outputs checked before the long work, no mismatched siblings, no working folder left
behind (SIGTERM, kill -9), outputs that follow the umask, and non-finite weights refused."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import QUICK
from edge_runtime.fileio import atomic_write, atomic_write_many, pid_alive
from realworld import (ROOT, Process, convert_main as _main, one_error_line, run_module, small_filesystem,
                       tiny_onnx, wait_for)


def _convert(*args):
    return run_module("convert", *args)


def test_out_is_a_folder_or_unwritable_fails_before_any_work(tmp_path):
    (tmp_path / "taken.tflite").mkdir()
    err = one_error_line(_main("tflite", "--out", tmp_path / "taken.tflite"))
    assert "is a folder" in err
    (tmp_path / "m_float.onnx").mkdir()  # a sibling in the way
    assert "m_float.onnx: is a folder" in one_error_line(_main("tflite", "--out", tmp_path / "m_int8.tflite"))
    with small_filesystem(tmp_path / "ro", "1m", read_only=True) as ro:
        assert "not writable" in one_error_line(_main("tflite", "--out", ro / "m.tflite"))


def test_full_storage_fails_before_the_long_work(weights_env, tmp_path):
    with small_filesystem(tmp_path / "sd", "2m") as sd:
        err = one_error_line(_main("tflite", "--weights", "deep-compression", "--out", sd / "m_int8.tflite"))
        assert "MB free, about" in err and "MB needed" in err
        assert not list(sd.iterdir())


def test_bad_flag_values_give_one_line(tmp_path):
    for args in (["tflite", "--calib-scales", "x"], ["tflite", "--calib-scales", "1,nan"],
                 ["tflite", "--percentile", "nan", "--out", tmp_path / "m.tflite"],
                 ["tflite", "--mean", "nan,0,0", "--onnx", tiny_onnx(tmp_path / "t.onnx"),
                  "--out", tmp_path / "m.tflite"],
                 ["compress", "--weights", "deep-compression", "--out", tmp_path / "c.sqz", "--bits", "x"],
                 ["compress", "--weights", "deep-compression", "--out", tmp_path / "c.sqz", "--sparsity", "f=y"],
                 ["compress", "--weights", "deep-compression", "--out", tmp_path / "c.sqz", "--sparsity", "1.5"],
                 ["compress", "--weights", "deep-compression", "--out", tmp_path / "c.sqz", "--sparsity", "features=-3"]):
        proc = _main(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        one_error_line(proc)
    assert not list(tmp_path.glob("*.sqz")) and not list(tmp_path.glob("*.tflite"))


def test_a_labels_file_that_does_not_fit_is_refused_even_when_empty(tmp_path):
    """--labels gives one name per line: an empty or blank file names 0 classes and is refused like a file of
    the wrong length, not replaced by the model's class numbers."""
    onnx_path = tiny_onnx(tmp_path / "t.onnx", classes=2)
    for name, text, count in (("empty.txt", "", 0), ("blank.txt", " \n\n\t\n", 0), ("three.txt", "a\nb\nc\n", 3)):
        (tmp_path / name).write_text(text)
        err = one_error_line(_main("tflite", "--onnx", onnx_path, "--labels", tmp_path / name,
                                   "--out", tmp_path / "t_int8.tflite"))
        assert err.endswith(f"{count} labels given for a model with 2 outputs"), err
    assert not list(tmp_path.glob("t_*"))


def test_compress_with_a_missing_val_folder_writes_nothing(weights_env, tmp_path):
    err = one_error_line(_main("compress", "--weights", "deep-compression", "--out", tmp_path / "c.sqz",
                              "--val", tmp_path / "no_such_folder"))
    assert "--val" in err and "not a folder" in err
    assert not (tmp_path / "c.sqz").exists()


def test_a_val_folder_with_no_image_of_the_models_classes_is_refused_before_calibration(weights_env, val500_dir,
                                                                                          tmp_path):
    """An empty --val, or one whose class folders are not the model's classes, is refused once the classes are
    known: before calibration, not after the whole conversion."""
    (tmp_path / "empty").mkdir()
    for name in ("cat", "dog"):  # real photos, in folders named by classes the model does not have
        (tmp_path / "other" / name).mkdir(parents=True)
        for photo in sorted(val500_dir.iterdir())[:2]:
            (tmp_path / "other" / name / photo.name).write_bytes(photo.read_bytes())
    for val in ("empty", "other"):
        proc = _main("tflite", "--weights", "deep-compression", "--out", tmp_path / "m_int8.tflite",
                     "--val", tmp_path / val)
        assert f"--val: {tmp_path / val}: " in one_error_line(proc)
        if val == "other":
            assert "none of its 2 class folders is a class of the model (its labels: tench, goldfish" in proc.stderr
        assert "calibration:" not in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "other"]


def test_an_empty_check_or_calib_folder_is_named_by_its_role(weights_env, tmp_path):
    """An empty --check said "no images found for calibration", as if it were the calibration folder."""
    (tmp_path / "empty").mkdir()
    for flag, role in (("--check", "--check"), ("--calib", "calibration folder")):
        err = one_error_line(_main("tflite", "--weights", "deep-compression", "--out", tmp_path / "m_int8.tflite",
                                   flag, tmp_path / "empty"))
        assert err == f"error: {role} {tmp_path / 'empty'}: no images found (0 other files)", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_onnx_with_a_false_output_shape_fails_at_once(tmp_path):
    liar = tiny_onnx(tmp_path / "liar.onnx", classes=10, declared=5)
    err = one_error_line(_main("tflite", "--onnx", liar, "--out", tmp_path / "liar_int8.tflite"))
    assert "declares an output of shape (1, 5), running it gives (1, 10)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["liar.onnx"]


def test_sigterm_and_kill_9_leave_no_working_folder(tmp_path):
    """SIGTERM during the conversion removes its working folder at once; a kill -9 cannot, so the next
    run in that folder removes what the dead one left. An earlier artifact is never touched."""
    model = tiny_onnx(tmp_path / "tiny.onnx")
    out = tmp_path / "tiny_int8.tflite"
    out.write_bytes(b"an earlier artifact")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        run = Process("convert", "tflite", "--onnx", model, "--out", out, "--no-gates")
        wait_for(lambda: list(tmp_path.glob(".convert-*")), 240, "the conversion's working folder")
        run.stop(sig, limit=60)
        if sig == signal.SIGTERM:
            assert run.proc.returncode == 143 and "Traceback" not in run.stderr, run.stderr
            assert run.err[-1] == "terminated (SIGTERM): no partial output was left"
            assert out.read_bytes() == b"an earlier artifact"
            assert not list(tmp_path.glob(".convert-*")) and not list(tmp_path.glob(".*.tmp"))
    assert len(list(tmp_path.glob(".convert-*"))) == 1  # what kill -9 left
    few = tmp_path / "three_photos"
    few.mkdir()
    for name in ("skimage_coffee.jpg", "opencv_orange.jpg", "opencv_baboon.jpg"):
        (few / name).write_bytes((ROOT / "calib_data" / name).read_bytes())
    err = one_error_line(_convert("tflite", "--onnx", model, "--out", out, "--calib", few))
    assert "at least 20 expected" in err
    assert not list(tmp_path.glob(".convert-*"))  # removed by the next run
    assert out.read_bytes() == b"an earlier artifact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["three_photos", "tiny.onnx", "tiny_int8.tflite"]


def test_a_live_conversion_in_another_container_keeps_its_working_folder(tmp_path):
    """Two CI jobs in containers (process-id namespaces of their own) convert into one shared folder. The
    second's clean-up of killed runs' folders judged by the process id in the name, which names no process
    in its namespace: it removed the first's working folder and the first failed (`error: .../equalized.onnx:
    No such file or directory`). The first is stopped (SIGSTOP) while the second runs, so no timing decides."""
    model = tiny_onnx(tmp_path / "tiny.onnx")
    out = tmp_path / "a_int8.tflite"
    ns = 'echo 4190000 > /proc/sys/kernel/ns_last_pid && "$@"'  # its process id: 4190001, none here
    first = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", ns, "sh", sys.executable,
                              "-m", "convert", "tflite", "--onnx", model, "--out", out, "--no-gates", *QUICK],
                             cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: list(tmp_path.glob(".convert-*")) or first.poll() is not None, 240,
                 "the first conversion's working folder")
        assert first.poll() is None, first.communicate()[1][-2000:]  # (unshare refused: said, not waited for)
        os.killpg(first.pid, signal.SIGSTOP)
        (work,) = tmp_path.glob(".convert-*")
        assert not pid_alive(int(work.name.split("-")[1])), work  # the id names no process in this namespace
        few = tmp_path / "three_photos"
        few.mkdir()
        for name in ("skimage_coffee.jpg", "opencv_orange.jpg", "opencv_baboon.jpg"):
            (few / name).write_bytes((ROOT / "calib_data" / name).read_bytes())
        second = _convert("tflite", "--onnx", model, "--out", tmp_path / "b_int8.tflite", "--calib", few)
        assert "at least 20 expected" in one_error_line(second)  # it got past the clean-up
        assert work.is_dir() and "removed" not in second.stderr, second.stderr
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert out.stat().st_size > 0 and not list(tmp_path.glob(".convert-*"))


@pytest.mark.parametrize("own_check", [False, True])
def test_a_gate_missed_without_labels_says_how_to_judge_on_your_own_photos(tmp_path, val500_dir, own_check):
    """No labels and no reference mix (a user's ONNX): the gates judge the plain agreement on the check
    photos (the converter's, which are less decided than most, or the user's --check); a miss writes no
    .tflite and its one line says which flags judge on photos like the user's. A gate of 100% on a small
    real classifier misses deterministically."""
    model = tiny_onnx(tmp_path / "tiny.onnx")
    out = tmp_path / "tiny_int8.tflite"
    check = []
    if own_check:  # 50 unseen photos of the user's
        folder = tmp_path / "mine"
        folder.mkdir()
        for p in sorted(val500_dir.iterdir())[::10]:
            (folder / p.name).write_bytes(p.read_bytes())
        check = ["--check", folder]
    err = one_error_line(_convert("tflite", "--onnx", model, "--out", out, *QUICK, *check, "--min-agreement", "1",
                                  "--report", tmp_path / "r.json"))
    report = json.loads((tmp_path / "r.json").read_text())
    assert "val" not in report["validation"] and "standardized" not in report["validation"]["unlabelled"]
    assert report["validation"]["unlabelled"]["folders"][1] == ("mine" if own_check else "check_data")
    agreement = report["validation"]["unlabelled"]["agreement"]
    assert report["gates"]["failed"] == [f"top-1 agreement on the unlabelled views {agreement:.1f}% < 100.0%"]
    hint = ("judged without labels on the --check photos: --val DIR judges on labelled photos like yours" if own_check
            else "judged without labels on the check photos: judge on photos like yours with --val DIR (labelled) "
            "or `convert tflite --check DIR` (unlabelled)")
    assert err == f"error: {report['gates']['failed'][0]} (report: {tmp_path / 'r.json'}); {hint}"
    assert not out.exists() and not list(tmp_path.glob("*.tflite")) and not list(tmp_path.glob(".convert-*"))


def test_a_set_of_outputs_is_replaced_together_or_not_at_all(tmp_path):
    with small_filesystem(tmp_path / "sd", "1m") as sd:
        old = {sd / "a_float.onnx": b"old onnx", sd / "a_float.tflite": b"old tflite", sd / "a_int8.tflite": b"old"}
        for path, data in old.items():
            path.write_bytes(data)
        new = {sd / "a_float.onnx": b"n" * 300_000, sd / "a_float.tflite": b"n" * 300_000,
               sd / "a_int8.tflite": b"n" * 600_000}  # the last one does not fit
        with pytest.raises(OSError, match="No space left"):
            atomic_write_many(new)
        assert {p: p.read_bytes() for p in old} == old
        assert sorted(p.name for p in sd.iterdir()) == sorted(p.name for p in old)  # no temporary file left
        (sd / "a_float.tflite").unlink()
        (sd / "a_float.tflite").mkdir()  # a folder in the way
        with pytest.raises(IsADirectoryError):
            atomic_write_many({sd / "a_int8.tflite": b"new", sd / "a_float.tflite": b"new"})
        assert (sd / "a_int8.tflite").read_bytes() == b"old"


def test_two_sets_written_into_one_folder_at_once_leave_one_whole_set(tmp_path):
    """Two conversions finishing together in one folder: each renames its set (artifact, siblings, report)
    under the folder's lock, so the files end up all one run's, never one's report beside the other's
    artifact. Here the folder's lock is held while both sets are ready: neither renames anything until it
    is released (without the lock each would rename at once), then one set wins whole."""
    import fcntl
    import threading

    names = ("m_int8.tflite", "m_float.tflite", "m_float.onnx", "report.json")
    for name in names:
        (tmp_path / name).write_text("old")
    folder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        writers = [threading.Thread(target=atomic_write_many, args=({tmp_path / n: run for n in names},))
                   for run in ("run A", "run B")]
        for w in writers:
            w.start()
        renamed = lambda: {(tmp_path / n).read_text() for n in names} != {"old"}  # noqa: E731
        wait_for(lambda: len(list(tmp_path.glob(".*"))) == 2 * len(names) or renamed(), 30, "both sets written")
        for w in writers:
            w.join(0.5)
        assert not renamed() and all(w.is_alive() for w in writers)
    finally:
        os.close(folder)  # releases the lock
    for w in writers:
        w.join(30)
    assert {(tmp_path / n).read_text() for n in names} in ({"run A"}, {"run B"})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_one_folder_named_two_ways_in_a_set_is_locked_once(tmp_path, monkeypatch):
    """`--out build/m.tflite --report $PWD/build/report.json`: the folder lock took 'build' and its absolute
    path for two folders, and the second flock waited for ever on the first (SIGTERM held, only kill -9
    ended it). One folder is one lock however it is named: the set is written without waiting."""
    import time

    from edge_runtime import fileio

    (tmp_path / "build").mkdir()
    monkeypatch.chdir(tmp_path)
    t0 = time.monotonic()
    atomic_write_many({Path("build/m_int8.tflite"): b"model", tmp_path / "build" / "report.json": b"{}",
                       Path("build/../build/m_float.tflite"): b"float"})
    assert time.monotonic() - t0 < fileio.LOCK_WAIT  # (it would give up the lock after LOCK_WAIT, not hang)
    assert sorted(p.name for p in (tmp_path / "build").iterdir()) == ["m_float.tflite", "m_int8.tflite",
                                                                       "report.json"]


def test_a_folder_the_filesystem_cannot_fsync_takes_the_set(tmp_path, monkeypatch):
    """Some FUSE and SMB mounts refuse fsync on a folder (EINVAL, EOPNOTSUPP): the renamed set is in place and
    the write succeeds (the files themselves were fsynced). Any other failure of the folder's fsync (EIO: the
    storage may have lost the renames) is still an error. The refusal is injected at os.fsync, for folders only."""
    import errno
    import stat

    real, refusal = os.fsync, []

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(refusal[-1], os.strerror(refusal[-1]))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    for code in (errno.EINVAL, errno.EOPNOTSUPP):
        refusal.append(code)
        atomic_write_many({tmp_path / "m_int8.tflite": f"model {code}", tmp_path / "report.json": f"{code}"})
        assert (tmp_path / "m_int8.tflite").read_text() == f"model {code}"
        assert (tmp_path / "report.json").read_text() == f"{code}"
    refusal.append(errno.EIO)
    with pytest.raises(OSError, match="Input/output error"):
        atomic_write_many({tmp_path / "report.json": "after"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_int8.tflite", "report.json"]  # no temporary left


def test_an_output_nobody_can_create_is_refused_before_the_work(tmp_path, weights_env):
    """/proc takes no new file, even from root, whom access() lets write anywhere: `compress --report` there
    wrote the container, printed success, then failed; `tflite --report` failed after the whole conversion,
    naming a hidden temporary file. Now every output is tried before the work, and a write that still
    fails at the end (a full card) names the path the user gave."""
    onnx_path = tiny_onnx(tmp_path / "t.onnx", classes=2)
    for args, expect in (
            (("compress", "--weights", "deep-compression", "--out", tmp_path / "c.sqz", "--lossless", "--report",
              "/proc/c.json"),
             "error: --report /proc/c.json: cannot create a file in /proc (No such file or directory)"),
            (("tflite", "--onnx", onnx_path, "--out", tmp_path / "t_int8.tflite", *QUICK, "--report", "/proc/t.json"),
             "error: --report /proc/t.json: cannot create a file in /proc (No such file or directory)"),
            (("tflite", "--onnx", onnx_path, "--out", "/proc/t_int8.tflite", *QUICK),
             "error: /proc/t_int8.tflite: cannot create a file in /proc (No such file or directory)")):
        assert one_error_line(_main(*args)) == expect
    assert [p.name for p in tmp_path.iterdir()] == ["t.onnx"]
    with small_filesystem(tmp_path / "sd", "1m") as sd:
        with pytest.raises(OSError, match="No space left") as info:
            atomic_write(sd / "big.json", b"x" * 2_000_000)
        assert info.value.filename == str(sd / "big.json") and not list(sd.iterdir())


def test_outputs_follow_the_umask(tmp_path, int8_model):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "report.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o640
    assert int8_model.stat().st_mode & 0o777 == 0o666 & ~old  # the session's artifact, written by convert


def test_non_finite_weights_are_refused(dc_net_file, weights_env, tmp_path):
    import torch

    from convert.compress import container as sqz
    from convert.compress.pipeline import CompressOptions, shared_layers
    from convert.errors import WeightsError
    from convert.weights import load_model

    model, _ = load_model("deep-compression")
    layers = shared_layers(model, str(dc_net_file), CompressOptions(weights=str(dc_net_file), out=tmp_path / "x",
                                                                    lossless=True))
    layers[3].codebook[7] = np.nan  # a valid container (its CRC matches) holding NaN
    bad = tmp_path / "nan.sqz"
    bad.write_bytes(sqz.encode(sqz.Container("deep-compression", "squeezenet1_0", 1000, layers)))
    with pytest.raises(sqz.ContainerError, match="NaN or Inf"):
        sqz.decode(bad.read_bytes())
    err = one_error_line(_main("evaluate", "--weights", bad, "--val", ROOT / "calib_data"))
    assert "NaN or Inf" in err
    state = model.state_dict()
    state["features.0.bias"][0] = float("inf")
    torch.save(state, tmp_path / "inf.pth")
    with pytest.raises(WeightsError, match="features.0.bias holds NaN or Inf"):
        load_model(str(tmp_path / "inf.pth"))
