"""Shared fixtures. Test data comes from ../shared, or from a cache filled once from the public
sources (tests/testdata.py); when neither is possible every test that needs it fails with one line
saying how to provide it, never skips."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import testdata

ROOT = Path(__file__).resolve().parents[1]
SHARED = testdata.shared_dir()


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"required test data missing: {path} (../shared beside the project, or the test-data cache)",
                    pytrace=False)
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The test-data folder: ../shared, or the filled cache of the same layout."""
    try:
        return testdata.data_root()
    except testdata.TestDataMissing as e:
        missing = str(e)
    pytest.fail(missing, pytrace=False)  # outside the except: the one line, no exception chain


@pytest.fixture(scope="session")
def dc_dir(shared_dir: Path) -> Path:
    """The Deep Compression SqueezeNet v1.0 release folder."""
    return _require(shared_dir / "models" / "squeezenet_v1.0_deep_compression")


@pytest.fixture(scope="session")
def dc_net_file(dc_dir: Path) -> Path:
    return _require(dc_dir / "compressed_SqueezeNet.net")


@pytest.fixture(scope="session")
def val500_dir(shared_dir: Path) -> Path:
    return _require(shared_dir / "imagenet" / "val500")


@pytest.fixture(scope="session")
def weights_env(dc_dir: Path):
    """Point the weight resolver at the shared folder, as CI does."""
    import os

    old = os.environ.get("SQUEEZENET_EDGE_WEIGHTS_DIR")
    os.environ["SQUEEZENET_EDGE_WEIGHTS_DIR"] = str(dc_dir)
    yield dc_dir
    if old is None:
        os.environ.pop("SQUEEZENET_EDGE_WEIGHTS_DIR", None)
    else:
        os.environ["SQUEEZENET_EDGE_WEIGHTS_DIR"] = old


@pytest.fixture(scope="session")
def offline_env(tmp_path_factory) -> dict:
    """Environment for a child process in which every network connection is refused."""
    folder = tmp_path_factory.mktemp("offline")
    (folder / "sitecustomize.py").write_text(
        "import socket\n"
        "def _refuse(*a, **k):\n    raise OSError('network disabled by test')\n"
        "socket.socket.connect = _refuse\nsocket.socket.connect_ex = _refuse\n"
        "socket.create_connection = _refuse\nsocket.getaddrinfo = _refuse\n")
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(folder), str(ROOT), os.environ.get("PYTHONPATH", "")]))


def convert_cli(args: list, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m convert tflite ARGS`` from the project folder."""
    return subprocess.run([sys.executable, "-m", "convert", "tflite", *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, env=env)


@pytest.fixture(scope="session")
def converted(tmp_path_factory, weights_env, val500_dir, offline_env) -> dict:
    """THE full conversion of the suite: the real Deep Compression SqueezeNet with the default settings,
    validated on val500, by the command line with every network connection refused (conversions never
    go online). Returns the report, ``report["out"]`` the int8 artifact (float ONNX and TFLite beside it).
    Gates are off here: test_report_figures checks the figures, .ci/run converts with the gates on.
    Tests that need an artifact use this one (``int8_model``); a test that must convert again uses
    QUICK settings (see ``trained_converted``) unless it is about fidelity. Not --quiet: its table and
    progress lines are kept beside the report (stdout.txt, stderr.txt).
    """
    folder = tmp_path_factory.mktemp("artifact")
    out = folder / "squeezenet1_0_int8.tflite"
    proc = convert_cli(["--weights", "deep-compression", "--out", out, "--val", val500_dir, "--no-gates",
                        "--report", folder / "report.json"], env=offline_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder / "stdout.txt").write_text(proc.stdout)
    (folder / "stderr.txt").write_text(proc.stderr)
    return json.loads((folder / "report.json").read_text())


# Cheap settings for conversions that are about behaviour, not fidelity: one view per calibration photo
# instead of eight, no equalization, TFLite's own weight rounding (one onnx2tf run instead of two, and
# without equalization or GPTQ no statistics pass over the views), no bias correction. The full settings run once per session (``converted``) and in .ci/run, whose gated
# conversion must give the suite's artifact byte for byte.
QUICK = ("--calib-scales", "1", "--equalize", "0", "--weight-rounding", "nearest", "--bias-correction", "0",
         "--quiet")


@pytest.fixture(scope="session")
def int8_model(converted) -> Path:
    return Path(converted["out"])


@pytest.fixture(scope="session")
def float_model(weights_env):
    from convert.weights import load_model

    return load_model("deep-compression")


@pytest.fixture(scope="session")
def release_on_val500(float_model, val500_dir):
    """The release float model's evaluation on val500 under PyTorch (scores kept), run once."""
    from convert.torch_eval import evaluate_torch

    model, record = float_model
    return evaluate_torch(model, record, str(val500_dir), keep_scores=True, progress=False)


@pytest.fixture(scope="session")
def photo_batches(float_model):
    """(fit, held): the first 16 and the last 8 calibration photos, one centre view each, as the float
    NCHW pixel batches the converter's statistics take (for the tests of the float-graph stages)."""
    import numpy as np
    import torch

    from convert.calibration import load_views

    _, record = float_model
    photos = sorted((ROOT / "calib_data").glob("*.jpg"))

    def batch(paths):
        crops, _ = load_views(paths, record.preprocessing, scales=(1.0,), mirror=False)
        return torch.from_numpy(crops.transpose(0, 3, 1, 2).astype(np.float32))

    return batch(photos[:16]), batch(photos[-8:])


@pytest.fixture(scope="session")
def sample_clip() -> Path:
    return ROOT / "samples" / "sample_clip.mp4"


# The suite's time budget: the README's command must finish in 6 minutes on the 2-core CI machine.
# Every run prints the slowest tests (--durations in pyproject.toml) and this line; tests/README.md
# gives each area its share.
BUDGET_SECONDS = 360


# The trainer's shared run (tests/test_train.py, the converter and MediaPipe tests use it): two short
# epochs at 32x32 on a 2,000-image Fashion-MNIST subset.
TRAIN_SETTINGS = ["--input-size", "32", "--epochs", "2", "--val-split", "0.15", "--threads", "2", "--seed", "3",
                  "--quiet"]


def fashion_mnist_subset(tmp_path_factory, name: str, train: int, test: int) -> Path:
    """The first ``train`` / ``test`` Fashion-MNIST images of each class as class folders (the Debian
    package's files); fails in one line when the package is missing."""
    from convert.train.fashion_mnist import DEFAULT_SOURCE, export

    if not (DEFAULT_SOURCE / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"{DEFAULT_SOURCE} missing: install the Debian package dataset-fashion-mnist (tools/setup.sh)")
    root = tmp_path_factory.mktemp(name)
    export(root, per_class={"train": train, "test": test})
    return root


@pytest.fixture(scope="session")
def fmnist(tmp_path_factory) -> Path:
    """200 training and 50 test images per class, plus one corrupt image and one stray file."""
    root = fashion_mnist_subset(tmp_path_factory, "fmnist", train=200, test=50)
    (root / "train" / "Bag" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "train" / "Bag" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="session")
def run_dir(fmnist, weights_env, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "reference"
    # a process of its own, as users run it: torch is not imported yet, so the CLI's OMP_WAIT_POLICY
    # (idle threads sleep) applies; in this process torch spins and runs 5x slower on a busy machine
    # --tflite: best.pt then goes through the converter with its defaults and gates (out/../reference_int8.tflite)
    r = subprocess.run([sys.executable, "-m", "convert", "train", "--data", str(fmnist / "train"), "--test",
                        str(fmnist / "test"), "--out", str(out), "--tflite", str(out.parent / "reference_int8.tflite"),
                        *TRAIN_SETTINGS], env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    (out.parent / "train.stdout").write_text(r.stdout)
    return out


@pytest.fixture(scope="session")
def trained_converted(run_dir, tmp_path_factory) -> dict:
    """``run_dir/best.pt`` converted as users do: no --arch, --labels, --calib or --val (the checkpoint's
    record gives them), QUICK settings. Returns the report; ``report["out"]`` the int8 artifact."""
    folder = tmp_path_factory.mktemp("trained_artifact")
    out = folder / "fashion_int8.tflite"
    proc = convert_cli(["--weights", run_dir / "best.pt", "--out", out, "--no-gates", "--report",
                        folder / "report.json", *QUICK])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((folder / "report.json").read_text())


def pytest_sessionstart(session):
    session.config._suite_t0 = time.monotonic()


def pytest_terminal_summary(terminalreporter, config):
    t0 = getattr(config, "_suite_t0", None)
    if t0 is not None:
        spent = time.monotonic() - t0
        terminalreporter.write_line(f"suite time: {spent:.0f} s of the {BUDGET_SECONDS} s budget "
                                    f"({os.cpu_count()} cores; see tests/README.md)")
