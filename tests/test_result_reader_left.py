"""A command's result read by a reader that leaves first (`... | head -1`): the run ends as it would have, with
its own exit code and every file it was asked to write, and says nothing about the pipe. Before, the benchmark
and `compress` printed before writing their --report (a broken pipe cost the file after the whole run) and every
command ended with "error: Broken pipe" (exit 2) or Python's "Exception ignored ... BrokenPipeError" (exit 120).
The reader here closes its end before the first line, so every write of the result meets a closed pipe.
(The figures are shown before the files are written: a --report on a full disk still leaves them on the screen.)"""
import json
import os
import subprocess
import sys

from realworld import ROOT


def _reader_left(*args) -> tuple[int, str]:
    """(exit code, stderr) of ``python -m ARGS`` whose stdout's reader has left."""
    proc = subprocess.Popen([sys.executable, "-m", *map(str, args)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    proc.stdout.close()
    err = proc.stderr.read().decode()
    return proc.wait(timeout=600), err


def test_the_benchmark_keeps_its_report_csv_and_plot(int8_model, tmp_path):
    out = {name: tmp_path / name for name in ("report.json", "results.csv", "latency.png")}
    rc, err = _reader_left("tools.benchmark", "--model", int8_model, "--runs", 3, "--warmup", 0, "--min-seconds", 0,
                           "--report", out["report.json"], "--csv", out["results.csv"], "--plot", out["latency.png"])
    assert rc == 0 and "error" not in err and "Exception" not in err, err
    results = json.loads(out["report.json"].read_text())["results"]
    assert results[0]["latency_ms"]["p50"] > 0 and out["latency.png"].stat().st_size > 1000
    assert out["results.csv"].read_text().count("\n") == 1 + len(results)


def test_evaluate_and_compress_keep_their_reports(weights_env, val500_dir, tmp_path):
    rc, err = _reader_left("convert", "evaluate", "--weights", "deep-compression", "--val", val500_dir, "--limit", 10,
                           "--quiet", "--report", tmp_path / "evaluate.json")
    assert rc == 0 and err == "", err
    assert json.loads((tmp_path / "evaluate.json").read_text())["images"] == 10

    rc, err = _reader_left("convert", "compress", "--weights", "deep-compression", "--lossless", "--quiet",
                           "--out", tmp_path / "lossless.sqz", "--report", tmp_path / "compress.json")
    assert rc == 0 and err == "", err
    assert json.loads((tmp_path / "compress.json").read_text())["bytes"] == (tmp_path / "lossless.sqz").stat().st_size


def test_a_full_disk_behind_the_result_is_still_an_error(weights_env, val500_dir):
    """Only a reader that left is quiet: a result that cannot be written (`> /dev/full`) fails the run."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "convert", "evaluate", "--weights", "deep-compression", "--val",
                               val500_dir, "--limit", "4", "--quiet"], cwd=ROOT, stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=600)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1] == "error: No space left on device", proc.stderr
