"""A command's result read by a reader that leaves first (`... | head -1`): the run ends as it would have, with
its own exit code and every file it was asked to write, and says nothing about the pipe. Before, the benchmark
and `compress` printed before writing their --report (a broken pipe cost the file after the whole run) and every
command ended with "error: Broken pipe" (exit 2) or Python's "Exception ignored ... BrokenPipeError" (exit 120).
The reader here closes its end before the first line, so every write of the result meets a closed pipe.
A result that cannot be shown for another reason (`> /dev/full`) is one error line naming <stdout>, exit 2, after
the files are written; a closed stdout (`>&-`) takes nothing, as print does. The children run without
PYTHONUNBUFFERED (a buffered stdout is what a user's shell gives: Python's exit-time flush must not fail again)."""
import json
import os
import subprocess
import sys

import pytest

from realworld import ROOT

FULL = "error: <stdout>: No space left on device"


def _run(stdout: str, *args) -> tuple[int, str]:
    """(exit code, stderr) of ``python -m ARGS`` whose stdout is a pipe whose reader left ("left"), /dev/full
    ("full") or closed ("closed")."""
    cmd = [sys.executable, "-m", *map(str, args)]
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "PYTHONPATH": str(ROOT)}
    if stdout == "closed":
        cmd = ["sh", "-c", 'exec "$@" >&-', "sh", *cmd]
    with open("/dev/full", "w") as full:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE,
                                stdout={"left": subprocess.PIPE, "full": full, "closed": None}[stdout])
    if stdout == "left":
        proc.stdout.close()
    err = proc.stderr.read().decode()
    return proc.wait(timeout=600), err


@pytest.mark.parametrize("stdout", ["left", "full"])
def test_the_benchmark_keeps_its_report_csv_and_plot(int8_model, tmp_path, stdout):
    out = {name: tmp_path / name for name in ("report.json", "results.csv", "latency.png")}
    rc, err = _run(stdout, "tools.benchmark", "--model", int8_model, "--runs", 3, "--warmup", 0, "--min-seconds", 0,
                   "--report", out["report.json"], "--csv", out["results.csv"], "--plot", out["latency.png"])
    if stdout == "left":
        assert rc == 0 and "error" not in err and "Exception" not in err, err
    else:
        assert rc == 2 and err.strip().splitlines()[-1] == FULL and "Exception" not in err, err
    results = json.loads(out["report.json"].read_text())["results"]
    assert results[0]["latency_ms"]["p50"] > 0 and out["latency.png"].stat().st_size > 1000
    assert out["results.csv"].read_text().count("\n") == 1 + len(results)


@pytest.mark.parametrize("stdout", ["left", "closed", "full"])
def test_evaluate_and_compress_keep_their_reports(weights_env, val500_dir, tmp_path, stdout):
    def ends_as_asked(rc, err):
        if stdout == "full":
            assert rc == 2 and err.strip().splitlines()[-1] == FULL and "Exception" not in err, err
        else:
            assert rc == 0 and err == "", err

    ends_as_asked(*_run(stdout, "convert", "evaluate", "--weights", "deep-compression", "--val", val500_dir,
                        "--limit", 4, "--quiet", "--report", tmp_path / "evaluate.json"))
    assert json.loads((tmp_path / "evaluate.json").read_text())["images"] == 4

    ends_as_asked(*_run(stdout, "convert", "compress", "--weights", "deep-compression", "--lossless", "--quiet",
                        "--out", tmp_path / "lossless.sqz", "--report", tmp_path / "compress.json"))
    assert json.loads((tmp_path / "compress.json").read_text())["bytes"] == (tmp_path / "lossless.sqz").stat().st_size
