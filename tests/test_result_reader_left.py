"""A command's result read by a reader that leaves first (`... | head -1`): the run ends as it would have, with
its own exit code and every file it was asked to write, and says nothing about the pipe. Before, the benchmark
and `compress` printed before writing their --report (a broken pipe cost the file after the whole run) and every
command ended with "error: Broken pipe" (exit 2) or Python's "Exception ignored ... BrokenPipeError" (exit 120).
The reader here closes its end before the first line, so every write of the result meets a closed pipe.
A result that cannot be shown for another reason (`> /dev/full`) is one error line naming <stdout>, after the
files are written: exit 2, or the run's own code when it failed on its own (a failed case, a missed gate); a
closed stdout (`>&-`) takes nothing, as print does. The children run without
PYTHONUNBUFFERED (a buffered stdout is what a user's shell gives: Python's exit-time flush must not fail again)."""
import errno
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import QUICK
from edge_runtime.fileio import HeldResult, TellHandler, tell, write_result
from realworld import ROOT, small_filesystem, tiny_onnx

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


def test_a_full_stdout_leaves_a_failed_run_its_own_exit_code(int8_model, tmp_path):
    """stdout on a full disk is said, but a run that failed on its own ends with its own code and says why.
    Before, the benchmark skipped its failed cases' error lines (they came after the table) and ended with 2
    before comparing with --reference, so --fail-on-regression's 3 became 2; the converter's missed gate said
    nothing of the stdout it could not show."""
    renamed = tmp_path / "renamed_int8.tflite"  # a label the stored reference does not hold: nothing compared
    renamed.write_bytes(Path(int8_model).read_bytes())
    fast = ["--runs", 3, "--warmup", 0, "--min-seconds", 0]
    rc, err = _run("full", "tools.benchmark", "--model", renamed, "--threads", 1, *fast,
                   "--reference", ROOT / "benchmarks" / "reference-x86_64-2core.json", "--fail-on-regression")
    assert rc == 3 and FULL in err.splitlines() and "error: no case matches a case of --reference" in err, err
    rc, err = _run("full", "tools.benchmark", "--model", tmp_path / "missing.tflite", *fast)
    failed = [line for line in err.splitlines() if line.startswith("error: missing")]
    assert rc == 2 and FULL in err.splitlines() and len(failed) == 1 and "missing.tflite" in failed[0], err

    model = tiny_onnx(tmp_path / "tiny.onnx")  # a gate of 100% on a small real classifier misses deterministically
    rc, err = _run("full", "convert", "tflite", "--onnx", model, "--out", tmp_path / "tiny_int8.tflite", *QUICK,
                   "--min-agreement", 1, "--quiet")
    assert rc == 3 and err.splitlines()[-2] == FULL, err
    assert err.splitlines()[-1].startswith("error: top-1 agreement on the unlabelled views"), err
    assert not (tmp_path / "tiny_int8.tflite").exists()


def test_the_benchmarks_json_is_its_result_and_its_table_a_log(int8_model, tmp_path):
    """With --json the JSON on stdout is the result and the table on stderr the run's account: a full log
    (stderr on /dev/full) loses the table and the progress lines, not the run. Before, it ended with 2 after
    writing the JSON (the table on stderr was held as a result that could not be shown)."""
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}, "PYTHONPATH": str(ROOT)}
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "tools.benchmark", "--model", str(int8_model), "--threads", "1",
                            "--runs", "3", "--warmup", "0", "--min-seconds", "0", "--json",
                            "--report", str(tmp_path / "report.json")],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=full, text=True, timeout=600)
    assert r.returncode == 0
    shown = json.loads(r.stdout)
    assert [row["label"] for row in shown["results"]] == ["squeezenet1_0_int8 tflite x1"]
    assert shown == json.loads((tmp_path / "report.json").read_text())


def test_the_held_result_of_a_stream_without_a_descriptor(tmp_path, capsys):
    """A result that could not be shown is held until the run knows its outcome: raised when the run would
    end with 0, said beside a failure that keeps its code. A stream without a descriptor of its own (a
    wrapped stdout) keeps its error: before, discarding its writes turned it into 'fileno'."""
    class Wrapped(io.StringIO):
        def __init__(self, name, code):
            super().__init__()
            self.name, self.code = name, code

        def write(self, text):
            raise OSError(self.code, os.strerror(self.code))

    with pytest.raises(OSError, match="No space left on device") as info:
        write_result("a table", Wrapped("<wrapped>", errno.ENOSPC))
    assert info.value.filename == "<wrapped>"

    with open("/dev/full", "w") as full:
        result = HeldResult()
        result.show("a table", full)
        result.show("a second table", Wrapped("<second>", errno.EIO))  # the first failure is the one said
        assert result.exit_code(3) == 3 and capsys.readouterr().err == "error: /dev/full: No space left on device\n"
        with pytest.raises(OSError, match="No space left on device") as info:
            result.exit_code(0)
        assert info.value.filename == "/dev/full"


def test_a_log_on_a_card_full_for_a_while_loses_only_what_came_while_it_was_full(tmp_path):
    """A line that cannot be written on a full card is dropped; the lines after it are written once there is
    room again. Before, the first failure pointed the descriptor at /dev/null: a long-running service's log
    (its own lines, logging's, TFLite's) was silent until it restarted."""
    with small_filesystem(tmp_path / "sd", "64k") as sd:
        with open(sd / "filler", "wb") as filler, pytest.raises(OSError, match="No space left"):
            filler.write(b"x" * (1 << 20))
            filler.flush()
        with open(sd / "log.txt", "w") as log:
            tell("lost while the card is full", log)
            (sd / "filler").unlink()
            tell("written when there is room again", log)
            tell("and after it", log)
        assert (sd / "log.txt").read_text() == "written when there is room again\nand after it\n"


def test_logging_on_a_card_full_for_a_while_loses_only_what_came_while_it_was_full(tmp_path):
    """The service's logging (a reconnect's warning, a library's) writes as tell does: logging's own
    StreamHandler kept the line it could not write in the stream's buffer (it came back later, out of place)
    and printed a traceback for it on the same full stderr."""
    with small_filesystem(tmp_path / "sd", "64k") as sd:
        with open(sd / "filler", "wb") as filler, pytest.raises(OSError, match="No space left"):
            filler.write(b"x" * (1 << 20))
            filler.flush()
        with open(sd / "log.txt", "w") as log:
            logger = logging.getLogger("test.full_card")
            logger.propagate = False
            handler = TellHandler(log)
            handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
            logger.addHandler(handler)
            try:
                logger.warning("lost while the card is full")
                (sd / "filler").unlink()
                logger.warning("written when there is room again")
            finally:
                logger.removeHandler(handler)
        assert (sd / "log.txt").read_text() == "WARNING written when there is room again\n"


def test_a_log_line_is_lost_never_the_run_with_no_descriptor_free_or_a_closed_stream():
    """tell on a full log with every descriptor taken (EMFILE): its os.dup failed, and the OSError ended the
    run (exit 120 and no 'ok'). On a closed stream it raised ValueError, as print does."""
    code = ("import os\n"
            "from edge_runtime.fileio import tell\n"
            "held = []\n"
            "try:\n"
            "    while True:\n"
            "        held.append(os.open(os.devnull, os.O_RDONLY))\n"
            "except OSError as e:\n"
            "    assert e.errno == 24, e\n"
            "try:\n"
            "    tell('while no descriptor is free')\n"
            "finally:\n"
            "    for fd in held:\n"
            "        os.close(fd)\n"
            "closed = open(os.devnull, 'w')\n"
            "closed.close()\n"
            "tell('on a closed stream', closed)\n"
            "tell('when descriptors are free again')\n"
            "print('ok')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
                           stdout=subprocess.PIPE, stderr=full, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, "ok\n")
