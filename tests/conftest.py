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
