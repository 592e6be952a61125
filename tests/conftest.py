"""Shared fixtures. Data from ../shared is required: a missing file fails loudly, never skips."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__import__("os").environ.get("SQUEEZENET_EDGE_SHARED", ROOT.parent / "shared"))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"required shared data missing: {path} (CI provides ../shared beside the project)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _require(SHARED)


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
def converted(tmp_path_factory, weights_env, val500_dir) -> dict:
    """The real Deep Compression SqueezeNet converted once per session, validated on val500.

    Returns the conversion report, with ``report["out"]`` the int8 artifact; the float ONNX and
    float TFLite lie beside it. Gates are off here: the gate tests and .ci/run check them.
    """
    from convert.pipeline import ConvertOptions, convert

    out = tmp_path_factory.mktemp("artifact") / "squeezenet1_0_int8.tflite"
    return convert(ConvertOptions(out=out, weights="deep-compression", val=val500_dir, min_agreement=None,
                                  max_top1_drop=None, quiet=True))


@pytest.fixture(scope="session")
def int8_model(converted) -> Path:
    return Path(converted["out"])


@pytest.fixture(scope="session")
def float_model(weights_env):
    from convert.weights import load_model

    return load_model("deep-compression")


@pytest.fixture(scope="session")
def sample_clip() -> Path:
    return ROOT / "samples" / "sample_clip.mp4"
