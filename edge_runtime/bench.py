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

import numpy as np

PEERS = ("tflite-fp32", "onnxruntime", "onnxruntime-int8", "opencv-dnn", "pytorch")


@dataclass
class Case:
    label: str
    runtime: str  # tflite | tflite-fp32 | onnxruntime | onnxruntime-int8 | opencv-dnn | pytorch
    path: str
    threads: int
    reference_tflite: str  # the int8 artifact whose metadata gives preprocessing and labels
    verify: bool = True  # check the artifact's integrity checksum on load


def peer_path(int8_path: Path, runtime: str) -> Path:
    """Where the converter keeps the float siblings of an int8 artifact."""
    stem = int8_path.stem[:-5] if int8_path.stem.endswith("_int8") else int8_path.stem
    return {"tflite-fp32": int8_path.with_name(f"{stem}_float.tflite"),
            "onnxruntime": int8_path.with_name(f"{stem}_float.onnx"),
            "onnxruntime-int8": int8_path.with_name(f"{stem}_qdq_int8.onnx"),
            "opencv-dnn": int8_path.with_name(f"{stem}_float.onnx"),
            "pytorch": int8_path.with_name(f"{stem}_float.onnx")}[runtime]


# Instruction-set features that decide int8 versus float speed (XNNPACK's int8 kernels use them):
# x86 AVX2 / AVX-512 / VNNI, ARM dot product (asimddp) and i8mm.
INT8_ISA = {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"}


def machine() -> dict:
    """The machine record: CPU, cores, OS, Python, package versions, frequency governor."""
    import cv2

    from .interpreter import backend_version, find_backend

    info: dict[str, str] = {}
    try:
        for line in open("/proc/cpuinfo"):
            key, sep, value = line.partition(":")
            if sep:
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    # x86: "model name"; Raspberry Pi: "Model" (the board) or "Hardware"; x86's lowercase "model" is a number
    cpu = info.get("model name") or info.get("Model") or info.get("Hardware") or platform.processor() or ""
    flags = set((info.get("flags") or info.get("Features") or "").split())
    isa = sorted(flags & INT8_ISA)
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
    rec = {"cpu": cpu, "isa": isa, "cores": os.cpu_count(), "arch": platform.machine(), "os": platform.platform(),
           "python": platform.python_version(), "interpreter": backend, "interpreter_version": version,
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


def _runner(case: Case):
    """(load function returning a predict(crop)->scores callable, layout) for one runtime."""
    from .metadata import read_model_info

    info = read_model_info(case.reference_tflite)
    pp = info.preprocessing if info else None
    if case.runtime == "tflite":
        from .classify import Classifier

        def load():
            clf = Classifier(case.path, threads=case.threads, verify=case.verify)

            def predict(crop):
                clf.set_crop(crop)
                clf.invoke()
                return clf.logits()
            return predict, clf
        return load, pp
    if case.runtime == "tflite-fp32":
        from .interpreter import create_interpreter

        def load():
            it, _ = create_interpreter(case.path, case.threads)
            i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]

            def predict(crop):
                it.set_tensor(i, crop[None].astype(np.float32))
                it.invoke()
                return it.get_tensor(o)[0]
            return predict, None
        return load, pp
    if case.runtime in ("onnxruntime", "onnxruntime-int8"):
        import onnxruntime as ort

        def load():
            so = ort.SessionOptions()
            so.intra_op_num_threads = case.threads
            so.inter_op_num_threads = 1
            # each case has its own process, so ONNX Runtime keeps its default spinning thread pool
            sess = ort.InferenceSession(case.path, so, providers=["CPUExecutionProvider"])
            name = sess.get_inputs()[0].name

            def predict(crop):
                return sess.run(None, {name: crop.transpose(2, 0, 1)[None].astype(np.float32)})[0][0]
            return predict, None
        return load, pp
    if case.runtime == "opencv-dnn":
        import cv2

        def load():
            cv2.setNumThreads(case.threads)
            net = cv2.dnn.readNetFromONNX(case.path)

            def predict(crop):
                net.setInput(crop.transpose(2, 0, 1)[None].astype(np.float32))
                return net.forward()[0]
            return predict, None
        return load, pp
    if case.runtime == "pytorch":
        import torch

        def load():
            torch.set_num_threads(case.threads)
            from convert.weights import load_model
            from convert.pixel_model import PixelModel

            name = (info.extra.get("weights") if info else None) or "deep-compression"
            model, record = load_model(name)
            pixel = PixelModel(model, record.preprocessing).eval()

            def predict(crop):
                with torch.no_grad():
                    return pixel(torch.from_numpy(crop.transpose(2, 0, 1)[None].astype(np.float32)))[0].numpy()
            return predict, None
        return load, pp
    raise ValueError(f"unknown runtime {case.runtime}")


def measure(case: Case, runs: int, warmup: int, min_seconds: float, images: str | None,
            source: str | None) -> dict:
    """Run one case in this process (the child) and return its figures."""
    import cv2

    from .preprocess import resize_crop

    load, pp = _runner(case)
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

        src = open_source(source)
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
        proc = subprocess.run([sys.executable, "-m", "edge_runtime.bench", payload], capture_output=True,
                              text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**case.__dict__, "label": case.label, "error": f"timed out after {timeout:.0f}s"}
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = [l for l in proc.stderr.strip().splitlines() if l.strip()]
        return {**case.__dict__, "error": (err[-1] if err else f"exit code {proc.returncode}")[:300]}
    return json.loads(lines[-1])


def _child(payload: str) -> int:
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
    sys.exit(_child(sys.argv[1]))
