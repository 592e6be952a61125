"""The benchmark's bad inputs: a truncated model with peers, a corrupt first
model beside a good one, an artifact whose PyTorch model is not this machine's (converted from ONNX,
or from other weights), a stale ONNX Runtime int8 model, a bad --threads: one line or a note, never
a traceback, never a figure that compares the wrong things."""
import json
import shutil
import subprocess
import sys

import pytest

from edge_runtime.metadata import read_model_info
from realworld import ROOT, edit_record, one_error_line, small_filesystem


def _bench(*args):
    args = (*args, "--runs", 3, "--warmup", 0, "--min-seconds", 0)
    return subprocess.run([sys.executable, "-m", "tools.benchmark", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


@pytest.fixture
def artifact_set(int8_model, tmp_path):
    """A copy of the session's artifact with its float siblings, which a test may damage or edit."""
    info = read_model_info(int8_model)
    for name in [int8_model.name, *info.extra["siblings"].values()]:
        shutil.copy(int8_model.with_name(name), tmp_path / name)
    return tmp_path / int8_model.name


def test_truncated_model_with_peers_gives_one_line(artifact_set):
    data = artifact_set.read_bytes()
    artifact_set.write_bytes(data[: len(data) // 3])
    proc = _bench("--model", artifact_set, "--peers", "onnxruntime-int8,tflite-fp32", "--no-verify")
    assert proc.returncode == 2 and "truncated or corrupt" in one_error_line(proc), proc.stderr
    assert "peer onnxruntime-int8 skipped" in proc.stdout and "peer tflite-fp32 skipped" in proc.stdout


def test_a_failed_first_model_gives_no_agreement(artifact_set, int8_model, val500_dir, tmp_path):
    """The first model is corrupt: the second one must not show "agree 100.0" against itself."""
    images = tmp_path / "images"
    images.mkdir()
    for f in sorted(val500_dir.iterdir())[:8]:
        (images / f.name).write_bytes(f.read_bytes())
    bad = tmp_path / "bad_int8.tflite"
    bad.write_bytes(int8_model.read_bytes()[:500_000])  # cut short: it cannot load
    report = tmp_path / "r.json"
    proc = _bench("--model", bad, "--model", artifact_set, "--val", images, "--no-verify", "--report", report)
    assert "Traceback" not in proc.stderr, proc.stderr
    results = json.loads(report.read_text())["results"]
    assert "error" in results[0] and "accuracy" in results[1]
    assert "agreement" not in results[1]
    assert any("agreement not measured" in n for n in json.loads(report.read_text())["notes"])


def test_pytorch_peer_only_for_the_weights_the_artifact_came_from(artifact_set, weights_env):
    from convert.peers import PeerUnavailable, torch_weights
    from tools.benchmark import build_cases

    info = read_model_info(artifact_set)
    assert torch_weights(info).name == "compressed_SqueezeNet.net"  # the real one is found
    cases, notes = build_cases([artifact_set], [1], ["pytorch"])
    assert [c.runtime for c in cases] == ["tflite", "pytorch"] and not notes
    onnx_made = edit_record(artifact_set.read_bytes(), lambda r: (r.pop("weights"), r.pop("weights_sha256")))
    other = edit_record(artifact_set.read_bytes(), lambda r: r.update(weights_sha256="0" * 64))
    for data, why in ((onnx_made, "converted from ONNX"), (other, "is not the file the artifact was converted from")):
        artifact_set.write_bytes(data)
        with pytest.raises(PeerUnavailable, match=why):
            torch_weights(read_model_info(artifact_set))
        cases, notes = build_cases([artifact_set], [1], ["pytorch"])
        assert [c.runtime for c in cases] == ["tflite"] and len(notes) == 1
        assert notes[0].startswith("peer pytorch skipped: ") and why in notes[0]


def test_stale_onnxruntime_int8_model_is_made_again(artifact_set):
    """A ``_qdq_int8.onnx`` left from an earlier conversion (it records another float ONNX) is made
    again from the current float ONNX; a current one is reused."""
    import onnx
    import onnxruntime as ort

    from convert.peers import SOURCE_KEY, qdq_model
    from edge_runtime.fileio import sha256_file

    def made_from(path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta() \
            .custom_metadata_map.get(SOURCE_KEY)

    float_onnx = artifact_set.with_name(read_model_info(artifact_set).extra["siblings"]["float_onnx"])
    qdq = float_onnx.with_name(float_onnx.name.replace("_float.onnx", "_qdq_int8.onnx"))
    stale = onnx.load(str(float_onnx))
    onnx.helper.set_model_props(stale, {SOURCE_KEY: "0" * 64})  # made from an earlier float model
    onnx.save(stale, str(qdq))
    assert qdq_model(artifact_set) == qdq
    assert made_from(qdq) == sha256_file(float_onnx)
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(qdq)).graph.node)  # made again, quantized
    mtime = qdq.stat().st_mtime_ns
    assert qdq_model(artifact_set) == qdq and qdq.stat().st_mtime_ns == mtime  # current: reused


def test_unwritable_outputs_and_a_bad_reference_fail_before_measuring(tmp_path, capsys):
    """--report into a folder or under a file, a --source or --val that is not there, or a --reference that
    is not a results file: one line at once, not after minutes of measuring (no case is started)."""
    from tools.benchmark import main

    (tmp_path / "out").mkdir()
    (tmp_path / "ref.json").write_text("[1, 2]")
    (tmp_path / "a_file").write_text("x")
    for flags, line in ((["--report", tmp_path / "out"], "--report"), (["--csv", tmp_path / "out"], "--csv"),
                        (["--report", tmp_path / "a_file" / "r.json"], "a_file is a file, not a folder"),
                        (["--source", tmp_path / "typo.mp4"], "--source"), (["--val", tmp_path / "nope"], "--val"),
                        (["--reference", tmp_path / "ref.json"], "a JSON object expected")):
        assert main(["--model", str(ROOT / "missing.tflite"), *map(str, flags)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and line in err and len(err.splitlines()) == 1, err  # "[1/1] ..." not begun


def test_an_output_folder_that_takes_no_file_or_a_full_disk_is_one_line(tmp_path, capsys):
    """/proc passes access() for root but takes no file: refused before measuring. A disk that fills up:
    one line naming the flag and the user's path (not the hidden temporary file), the earlier report kept."""
    from tools.benchmark import main

    missing = str(ROOT / "missing.tflite")  # its case fails at once: no measuring, the outputs are still written
    for flag, name in (("--report", "r.json"), ("--csv", "r.csv"), ("--plot", "p.png")):
        assert main(["--model", missing, flag, f"/proc/{name}"]) == 2
        err = capsys.readouterr().err
        assert err == f"error: {flag} /proc/{name}: cannot create a file in /proc (No such file or directory)\n", err
    with small_filesystem(tmp_path / "sd", "64k") as sd:
        (sd / "r.json").write_text('{"old": 1}')
        (sd / "fill").write_bytes(b"x" * (60 << 10))
        assert main(["--model", missing, "--report", str(sd / "r.json")]) == 2
        err = capsys.readouterr().err
        assert err.splitlines()[-1] == f"error: --report {sd / 'r.json'}: No space left on device (not written)", err
        assert "Traceback" not in err and (sd / "r.json").read_text() == '{"old": 1}'
        assert sorted(f.name for f in sd.iterdir()) == ["fill", "r.json"]


def test_a_malformed_reference_is_one_line_before_measuring(tmp_path, capsys):
    """A --reference that is JSON but not a report (wrong types, a NaN that would pass every comparison, 100,000
    nested brackets): one line naming what is wrong, before any case is started."""
    from tools.benchmark import main

    good = json.loads((ROOT / "benchmarks" / "reference-x86_64-2core.json").read_text())
    case = good["results"][0]

    def edited(**changes):
        return json.dumps({**good, "results": [{**case, **changes}]})

    above_0 = "a latency above 0 ms expected, got"
    for text, line in (('{"results": "x"}', "results: a list of cases expected, got 'x'"),
                       (edited(latency_ms="x"), "results[0].latency_ms: an object of percentiles expected, got 'x'"),
                       (edited(latency_ms={"p50": None}), f"results[0].latency_ms.p50: {above_0} None"),
                       (edited(latency_ms={"p50": float("nan")}), f"results[0].latency_ms.p50: {above_0} nan"),
                       (edited(peak_rss_mb="72"), "results[0].peak_rss_mb: a memory size above 0 MB expected"),
                       (edited(label=5), "results[0].label: a case label (text) expected, got 5"),
                       (edited(accuracy={"top1": 101}), "results[0].accuracy.top1: a percentage from 0 to 100"),
                       (json.dumps({**good, "machine": {"isa": 3}}), "machine: an object, its isa a list of names"),
                       ("[" * 100_000 + "]" * 100_000, "nested too deeply (a --report file expected)")):
        ref = tmp_path / "ref.json"
        ref.write_text(text)
        assert main(["--model", str(ROOT / "missing.tflite"), "--reference", str(ref)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --reference {ref}: {line}") and len(err.splitlines()) == 1, err
    # UTF-16 (which json.loads of bytes reads) hid brackets from the nesting count (its U+2200 is the bytes of a
    # quote): a RecursionError, or a crash after onnx2tf's import. Read as UTF-8 text, it is not JSON
    for text, line in ((('["\u2200",' + "[" * 100_000 + "]" * 100_000 + "]").encode("utf-16-le"),
                        "not a benchmark report: not JSON (Expecting value"),
                       (b'{"results": "\xff"}', "not UTF-8 text")):
        ref.write_bytes(text)
        assert main(["--model", str(ROOT / "missing.tflite"), "--reference", str(ref)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --reference {ref}: {line}") and len(err.splitlines()) == 1, err
    stored = ROOT / "benchmarks" / "reference-x86_64-2core.json"
    assert main(["--model", str(ROOT / "missing.tflite"), "--reference", str(stored)]) == 2  # no model: its case fails
    assert "error: --reference" not in capsys.readouterr().err  # the stored reference passes


def test_fail_on_regression_fails_when_nothing_was_compared(artifact_set, tmp_path):
    """A regression gate whose reference holds no case of this run's labels (another file name, other
    threads) compared nothing: it fails with one line instead of passing."""
    other = tmp_path / "renamed_int8.tflite"
    other.write_bytes(artifact_set.read_bytes())
    r = _bench("--model", other, "--threads", 1, "--reference", ROOT / "benchmarks" / "reference-x86_64-2core.json",
               "--fail-on-regression")
    assert r.returncode == 3 and "error: no case matches a case of --reference" in r.stderr, r.stderr[-2000:]


def test_sigterm_while_measuring_is_one_line(artifact_set, tmp_path):
    """A benchmark stopped while it measures (Ctrl-C, SIGTERM from a CI timeout): one line, nothing written
    and no case left running, not a traceback."""
    import signal
    import time

    from realworld import Process, wait_for

    run = Process("tools.benchmark", "--model", artifact_set, "--threads", 1, "--runs", 100000, "--min-seconds", 60,
                  "--report", tmp_path / "r.json")
    wait_for(lambda: any(line.startswith("[1/1]") for line in run.err), 60, "the first case started")
    time.sleep(1)
    run.stop(signal.SIGTERM)
    assert run.proc.returncode == 130 and run.err[-1].startswith("error: interrupted: nothing written"), run.err
    assert not any("Traceback" in line for line in run.err) and not (tmp_path / "r.json").exists()


def test_bad_threads_give_one_line(capsys):
    from tools.benchmark import build_parser

    for bad in ("x", "0", "1,y", ""):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(["--model", "m.tflite", "--threads", bad])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.splitlines()[-1].startswith("python -m tools.benchmark: error: argument --threads:"), err
    assert build_parser().parse_args(["--model", "m.tflite", "--threads", "1,2,4"]).threads == [1, 2, 4]


def test_a_tolerance_that_would_disable_the_gate_is_refused(capsys):
    """--tolerance nan or inf passed a reference 10,000x faster with exit 0 and no regression line."""
    from tools.benchmark import build_parser

    for bad in ("nan", "inf", "-inf", "-0.1", "x"):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(["--model", "m.tflite", f"--tolerance={bad}", "--fail-on-regression"])
        assert e.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == \
            f"python -m tools.benchmark: error: argument --tolerance: {bad!r}: 0 or a positive number expected"
    assert [build_parser().parse_args(["--model", "m.tflite", "--tolerance", t]).tolerance for t in ("0", "0.05")] \
        == [0.0, 0.05]


def test_an_unknown_peer_is_refused_with_the_known_ones(capsys):
    """--peers nosuch printed a note and exited 0 having measured no peer: a typo passed a CI job."""
    from edge_runtime import bench
    from tools.benchmark import build_parser

    for bad, name in (("nosuch", "nosuch"), ("tflite-fp32, onnxruntme", "onnxruntme")):
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(["--model", "m.tflite", "--peers", bad])
        assert e.value.code == 2
        assert capsys.readouterr().err.splitlines()[-1] == "python -m tools.benchmark: error: argument --peers: " \
            f"unknown peer {name!r}: one of {', '.join(bench.PEERS)}"
    assert "onnxruntime" in bench.PEERS and "tflite-fp32" in bench.PEERS
    assert build_parser().parse_args(["--model", "m.tflite", "--peers", "tflite-fp32, onnxruntime,"]).peers == \
        ["tflite-fp32", "onnxruntime"]


def test_models_of_one_file_name_are_told_apart():
    """Two artifacts of one file name (two sweeps, two versions) get labels of their own, so the table, the
    CSV and --reference never mix them up."""
    from pathlib import Path

    from tools.benchmark import build_cases

    cases, _ = build_cases([Path("v1/m_int8.tflite"), Path("v2/m_int8.tflite"), Path("v2/other.tflite")], [1, 2],
                           [], verify=False)
    labels = [c.label for c in cases]
    assert labels == ["v1/m_int8 tflite x1", "v1/m_int8 tflite x2", "v2/m_int8 tflite x1", "v2/m_int8 tflite x2",
                      "other tflite x1", "other tflite x2"] and len(set(labels)) == len(labels)


def test_a_model_path_that_is_a_folder_and_a_streams_password_in_the_report(tmp_path):
    """--model FOLDER said "model file not found"; the report's settings kept a stream's password."""
    proc = _bench("--model", tmp_path, "--source", "rtsp://admin:S3cret@127.0.0.1:9/stream", "--report",
                  tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert report["results"][0]["error"] == f"{tmp_path}: a folder, not a model file (a .tflite file expected)"
    assert report["settings"]["source"] == "rtsp://admin:***@127.0.0.1:9/stream"
    assert "S3cret" not in proc.stdout + proc.stderr + (tmp_path / "r.json").read_text()


def test_the_converter_and_the_benchmark_record_a_pi_alike(monkeypatch):
    """The converter's report read /proc/cpuinfo on its own and took its first of "Model"/"Hardware": on a
    Raspberry Pi (Hardware listed first) it named the SoC where the benchmark named the board. One reading now."""
    import io

    from convert.provenance import environment
    from edge_runtime import bench

    pi5 = ("processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp "
           "asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU part\t: 0xd0b\n\nHardware\t: BCM2835\n"
           "Revision\t: d04170\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n")
    monkeypatch.setattr(bench, "open", lambda path: io.StringIO(pi5), raising=False)
    assert bench.cpu_record() == ("Raspberry Pi 5 Model B Rev 1.0", ["asimddp"])
    env = environment()
    assert (env["cpu"], env["isa"]) == ("Raspberry Pi 5 Model B Rev 1.0", ["asimddp"])
