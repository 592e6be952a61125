"""Benchmark library: latency percentiles, load time, memory, size, accuracy and end-to-end FPS.

Every (model, runtime, threads) case runs in its own child process, so peak memory is per case and
no runtime's thread pool (ONNX Runtime's spins by default) steals cores from the next one. Needs only
the device dependencies for ``.tflite`` cases; peers that need more are skipped with a note.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

Predict = Callable[[np.ndarray], np.ndarray]  # one H x W x 3 uint8 crop -> class scores
# loader(case, the reference artifact's metadata) -> load(): (predict, Classifier or None), timed as load time
Loader = Callable[[Any, Any], Callable[[], tuple[Predict, Any]]]


class PeerUnavailable(ValueError):
    """A peer cannot run for this artifact (no sibling recorded, package missing); the message says why."""


@dataclass
class Case:
    label: str
    runtime: str  # a key of RUNNERS: tflite, tflite-fp32, or a workstation peer (convert/peers.py)
    path: str
    threads: int
    reference_tflite: str  # the int8 artifact whose metadata gives preprocessing and labels
    verify: bool = True  # check the artifact's integrity checksum on load
    module: str = "edge_runtime.bench"  # the child runs ``python -m module``, which registers ``runtime``


@dataclass(frozen=True)
class Peer:
    """Another runtime measured beside an int8 artifact, on the model file ``model_for(artifact)`` names."""

    name: str
    module: str  # the module that registers its runner (the child process runs it)
    model_for: Callable[[Path], Path]  # raises PeerUnavailable


RUNNERS: dict[str, Loader] = {}
PEERS: dict[str, Peer] = {}


def register_runner(name: str, loader: Loader) -> None:
    """Make ``name`` measurable in the child process of the module that calls this."""
    RUNNERS[name] = loader


def register_peer(peer: Peer, loader: Loader) -> None:
    """A peer runtime (its runner and how it finds its model file for an artifact)."""
    PEERS[peer.name] = peer
    register_runner(peer.name, loader)


def sibling(int8_path: Path, kind: str) -> Path:
    """A float sibling of an artifact (``float_onnx`` or ``float_tflite``), as its metadata names it.

    Raises:
        PeerUnavailable: the artifact records no such sibling, or the file is not beside it.
    """
    from .metadata import MetadataError, read_model_info

    try:
        info = read_model_info(int8_path)
    except MetadataError as e:
        raise PeerUnavailable(str(e)) from None
    name = ((info.extra.get("siblings") if info else None) or {}).get(kind)
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise PeerUnavailable(f"{int8_path.name} records no {kind} sibling (convert it again to keep one)")
    path = int8_path.with_name(name)
    if not path.is_file():
        raise PeerUnavailable(f"{path}: the {kind} sibling recorded in {int8_path.name} is not there")
    return path


# Instruction-set features that decide int8 versus float speed (XNNPACK's int8 kernels use them):
# x86 AVX2 / AVX-512 / VNNI, ARM dot product (asimddp) and i8mm.
INT8_ISA = {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"}


def cpu_record() -> tuple[str, list[str]]:
    """The CPU's name and its int8 instruction sets (of :data:`INT8_ISA`), from /proc/cpuinfo: the one reading
    of it, for the benchmark's machine record and the converter's report alike."""
    info: dict[str, str] = {}
    try:
        for line in open("/proc/cpuinfo"):
            key, sep, value = line.partition(":")
            if sep:
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    # x86: "model name"; Raspberry Pi: "Model" (the board) or "Hardware"; x86's lowercase "model" is a number
    name = info.get("model name") or info.get("Model") or info.get("Hardware") or platform.processor() or ""
    flags = set((info.get("flags") or info.get("Features") or "").split())
    return name, sorted(flags & INT8_ISA)


def host() -> dict:
    """What every record of a run names: the CPU and its int8 instruction sets (:func:`cpu_record`), cores,
    architecture, OS, Python (the benchmark's :func:`machine` and the converter's report build on it)."""
    cpu, isa = cpu_record()
    return {"cpu": cpu, "isa": isa, "cores": os.cpu_count(), "arch": platform.machine(), "os": platform.platform(),
            "python": platform.python_version()}


def machine() -> dict:
    """The machine record: :func:`host`, the interpreter, numpy and OpenCV versions, frequency governor."""
    import cv2

    from .interpreter import backend_version, find_backend

    governor = None
    try:
        governor = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        pass
    try:
        backend = find_backend()[1]
        version = backend_version(backend)
    except Exception as e:  # noqa: BLE001 (reported, not fatal)
        backend, version = f"none ({e})", ""
    rec = {**host(), "interpreter": backend, "interpreter_version": version,
           "numpy": np.__version__, "opencv": cv2.__version__, "governor": governor}
    if governor and governor != "performance":
        rec["warning"] = f"CPU frequency governor is '{governor}', not 'performance': latencies may vary"
    return rec


def _rss_peak_mb() -> float:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _classifier(case: Case, preprocessing=None, keep: bool = True,
                xnnpack: bool | None = None) -> Callable[[], tuple[Predict, Any]]:
    """A loader running ``case.path`` through the runtime's classifier (``preprocessing``: for a model
    without its own record); ``keep``: return the classifier for the pipeline figures; ``xnnpack``:
    XNNPACK kernels instead of TFLite's builtin ones (None: as the runtime chooses)."""
    from .classify import Classifier

    def load():
        clf = Classifier(case.path, threads=case.threads, preprocessing=preprocessing, verify=case.verify,
                         xnnpack=xnnpack)

        def predict(crop):
            clf.set_crop(crop)
            clf.invoke()
            return clf.logits()
        return predict, clf if keep else None
    return load


def _tflite(case: Case, info) -> Callable[[], tuple[Predict, Any]]:
    return _classifier(case)


def _tflite_xnnpack(case: Case, info) -> Callable[[], tuple[Predict, Any]]:
    """The int8 artifact on XNNPACK's kernels (faster where the interpreter has them; ~2% of decisions differ)."""
    return _classifier(case, xnnpack=True)


def _tflite_float(case: Case, info) -> Callable[[], tuple[Predict, Any]]:
    """The float sibling, on XNNPACK (no int8 rounding to keep exact): its own record says RGB or BGR; a
    sibling written before it carried one takes BGR pixels with the artifact's preprocessing."""
    import dataclasses

    return _classifier(case, dataclasses.replace(info.preprocessing, channel_order="BGR") if info else None,
                       keep=False, xnnpack=True)


register_runner("tflite", _tflite)
register_peer(Peer("tflite-xnnpack", "edge_runtime.bench", lambda int8: int8), _tflite_xnnpack)
register_peer(Peer("tflite-fp32", "edge_runtime.bench", lambda int8: sibling(int8, "float_tflite")), _tflite_float)


def measure(case: Case, runs: int, warmup: int, min_seconds: float, images: str | None,
            source: str | None) -> dict:
    """Run one case in this process (the child) and return its figures."""
    import cv2

    from .preprocess import resize_crop

    from .metadata import read_model_info

    if case.runtime not in RUNNERS:
        raise ValueError(f"unknown runtime {case.runtime!r}: one of {', '.join(RUNNERS)} expected")
    info = read_model_info(case.reference_tflite)
    pp = info.preprocessing if info else None
    load = RUNNERS[case.runtime](case, info)
    t0 = time.perf_counter()
    predict, clf = load()
    load_s = time.perf_counter() - t0
    frame = cv2.imread(str(Path(__file__).resolve().parents[1] / "calib_data" / "skimage_coffee.jpg"))
    if frame is None:
        frame = np.full((480, 640, 3), 127, np.uint8)
    crop = resize_crop(frame, pp)
    t0 = time.perf_counter()
    out = np.asarray(predict(crop))
    first_s = time.perf_counter() - t0
    if out.ndim != 1 or out.size < 2:
        raise ValueError(f"output of shape {out.shape}: not a classifier")
    for _ in range(warmup):
        predict(crop)
    lat = []
    start = time.perf_counter()
    while len(lat) < runs or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        predict(crop)
        lat.append(time.perf_counter() - t)
    ms = np.asarray(lat) * 1000
    res = {"label": case.label, "runtime": case.runtime, "path": case.path, "threads": case.threads,
           "size_bytes": os.path.getsize(case.path),
           "compressed_bytes": len(zlib.compress(Path(case.path).read_bytes(), 9)),
           "load_ms": round(load_s * 1000, 2), "first_inference_ms": round(first_s * 1000, 2),
           "latency_ms": {"count": int(ms.size), "mean": float(ms.mean()), "std": float(ms.std()),
                          "min": float(ms.min()), "p50": float(np.percentile(ms, 50)),
                          "p90": float(np.percentile(ms, 90)), "p99": float(np.percentile(ms, 99)),
                          "max": float(ms.max())},
           "throughput_per_s": float(1000 / ms.mean()), "samples_ms": [round(float(v), 4) for v in ms[:2000]]}
    if images:
        from .evaluation import evaluate, find_labelled_images
        from .metadata import read_model_info

        info = read_model_info(case.reference_tflite)
        found = find_labelled_images(images, info.wnids, info.labels)
        r = evaluate(found, lambda b: np.stack([predict(c) for c in b]), pp, progress=False)
        res["accuracy"] = {"top1": r.top1, "top5": r.top5, "images": r.n_used, "skipped": r.n_skipped,
                           "top1_indices": [t[0] for t in r.top5_indices]}
    if source and case.runtime == "tflite":
        from . import app
        from .sources import open_source

        src = open_source(source, fit=clf.preprocessing)
        with open(os.devnull, "w") as null:
            stats = app.run(clf, src, app.RunOptions(top_k=5, out=null, log_interval=1e9))
        res["pipeline"] = {"frames": stats.frames, "fps": stats.fps,
                           "invoke_only_fps": res["throughput_per_s"],
                           "ratio": stats.fps / res["throughput_per_s"] if res["throughput_per_s"] else 0.0}
    res["peak_rss_mb"] = round(_rss_peak_mb(), 1)
    return res


def run_case(case: Case, runs: int, warmup: int, min_seconds: float, images: str | None, source: str | None,
             timeout: float = 1800) -> dict:
    """Measure one case in a child process; failures come back as {"error": "..."}."""
    payload = json.dumps({"case": case.__dict__, "runs": runs, "warmup": warmup, "min_seconds": min_seconds,
                          "images": images, "source": source})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                                       os.environ.get("PYTHONPATH", "")]))
    try:
        proc = subprocess.run([sys.executable, "-m", case.module, payload], capture_output=True,
                              text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**case.__dict__, "label": case.label, "error": f"timed out after {timeout:.0f}s"}
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = [l for l in proc.stderr.strip().splitlines() if l.strip()]
        return {**case.__dict__, "error": (err[-1] if err else f"exit code {proc.returncode}")[:300]}
    return json.loads(lines[-1])


def child_main(payload: str) -> int:
    """The child process: measure the case in ``payload`` and print its figures as one JSON line."""
    p = json.loads(payload)
    try:
        res = measure(Case(**p["case"]), p["runs"], p["warmup"], p["min_seconds"], p["images"], p["source"])
    except ImportError as e:
        print(f"skipped: {e.name or e} is not installed", file=sys.stderr)
        return 3
    except Exception as e:  # noqa: BLE001 (the parent prints it as one line)
        print(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}", file=sys.stderr)
        return 2
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1]))
