"""What made a conversion's bytes, for its report: the command, the packages, the CPU, the settings that
the environment gives the libraries. A CI job that compares two artifacts reads there why they differ."""
from __future__ import annotations

import hashlib
import os
from importlib import metadata

# The packages whose kernels and graph rewriting decide the artifact's bytes (and the runtime's checks)
PACKAGES = ("torch", "tensorflow", "onnx", "onnx2tf", "onnxruntime", "numpy", "ai-edge-litert", "opencv-python",
            "opencv-python-headless")
# Environment variables that pick the libraries' kernels or thread counts (README, "Converting")
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "OPENBLAS_CORETYPE",
              "TF_ENABLE_ONEDNN_OPTS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
              "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    """The machine and the software a conversion ran on: the benchmark's record of the host
    (:func:`edge_runtime.bench.host`: CPU and its int8 instruction sets, cores, OS, Python), the packages of
    :data:`PACKAGES` that are installed, the variables of :data:`KERNEL_ENV` that are set."""
    from edge_runtime.bench import host

    packages = {name: v for name in PACKAGES if (v := _version(name)) is not None}
    return {**host(), "packages": packages, "env": {k: os.environ[k] for k in KERNEL_ENV if k in os.environ}}


def digests(files: dict[str, bytes]) -> dict[str, str]:
    """sha256 of each named output, as ``sha256sum`` prints it."""
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
