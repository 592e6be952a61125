#!/usr/bin/env python3
"""Benchmark .tflite models on this device, side by side with other runtimes.

Thin CLI over edge_runtime/bench.py: each case runs in its own child process.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_runtime import bench  # noqa: E402
from edge_runtime.fileio import atomic_write  # noqa: E402

EXAMPLES = """examples:
  python tools/benchmark.py --model build/squeezenet1_0_int8.tflite --threads 1,2,4
  python tools/benchmark.py --model build/squeezenet1_0_int8.tflite --peers onnxruntime,tflite-fp32,opencv-dnn,pytorch \\
      --images ../shared/imagenet/val500 --source samples/sample_clip.mp4 --json build/bench.json --plot build/bench.png
  python tools/benchmark.py --model build/squeezenet1_0_int8.tflite --reference benchmarks/reference-x86_64-2core.json \\
      --fail-on-regression
"""


def parse(argv):
    p = argparse.ArgumentParser(description="Latency percentiles, load time, size, memory and accuracy of "
                                            "TFLite models and their float peers, each case in its own process.",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, type=Path, help=".tflite model (repeat for several)")
    p.add_argument("--threads", default="2", help="comma-separated thread counts (default 2)")
    p.add_argument("--runs", type=int, default=100, help="minimum timed runs (default 100)")
    p.add_argument("--warmup", type=int, default=10, help="untimed warm-up runs (default 10)")
    p.add_argument("--min-seconds", type=float, default=2.0, help="minimum timed duration per case (default 2)")
    p.add_argument("--images", help="labelled images: adds top-1/top-5 and agreement with the first case")
    p.add_argument("--source", help="video clip: adds end-to-end FPS through the runtime's frame loop")
    p.add_argument("--peers", default="", help=f"comma-separated peers of the first model: {','.join(bench.PEERS)}")
    p.add_argument("--json", type=Path, help="write results as JSON (atomically)")
    p.add_argument("--csv", type=Path, help="write results as CSV (atomically)")
    p.add_argument("--plot", type=Path, help="write a PNG plot (needs matplotlib)")
    p.add_argument("--no-verify", action="store_true",
                   help="benchmark models whose integrity checksum does not match (experiments only)")
    p.add_argument("--reference", type=Path, help="stored results to compare with")
    p.add_argument("--tolerance", type=float, default=0.3, help="allowed relative regression (default 0.3)")
    p.add_argument("--fail-on-regression", action="store_true", help="exit 1 when a figure regresses past tolerance")
    return p.parse_args(argv)


def prepare_qdq(int8_model: Path) -> Path | None:
    """ONNX Runtime's own int8 (QDQ) version of the float ONNX, calibrated on calib_data/."""
    target = bench.peer_path(int8_model, "onnxruntime-int8")
    if target.exists():
        return target
    try:
        import numpy as np
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

        from edge_runtime.metadata import read_model_info
        from edge_runtime.preprocess import read_image, resize_crop
    except ImportError:
        return None
    pp = read_model_info(int8_model).preprocessing
    photos = sorted((Path(__file__).resolve().parents[1] / "calib_data").glob("*.jpg"))
    crops = [resize_crop(read_image(str(p)), pp).transpose(2, 0, 1)[None].astype(np.float32) for p in photos]
    source = bench.peer_path(int8_model, "onnxruntime")
    import onnxruntime as ort
    name = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({name: c} for c in crops)

        def get_next(self):
            return next(self.it, None)

    atomic_write(target, b"", check=lambda tmp: quantize_static(
        str(source), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8))
    return target


def build_cases(args) -> tuple[list[bench.Case], list[str]]:
    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    cases, notes = [], []
    for m in args.model:
        for t in threads:
            cases.append(bench.Case(f"{m.stem} tflite x{t}", "tflite", str(m), t, str(m), not args.no_verify))
    first = args.model[0]
    for peer in [p.strip() for p in args.peers.split(",") if p.strip()]:
        if peer not in bench.PEERS:
            notes.append(f"unknown peer {peer!r}: one of {', '.join(bench.PEERS)}")
            continue
        path = prepare_qdq(first) if peer == "onnxruntime-int8" and first.exists() else bench.peer_path(first, peer)
        if path is None or not Path(path).exists():
            notes.append(f"peer {peer} skipped: {path or 'onnxruntime not installed'} not found")
            continue
        for t in threads:
            cases.append(bench.Case(f"{peer} x{t}", peer, str(path), t, str(first)))
    return cases, notes


def _cell(value: float | None, width: int) -> str:
    """A figure with one decimal, or "-" when it was not measured."""
    return f"{value:{width}.1f}" if value is not None else f"{'-':>{width}}"


def table(results: list[dict]) -> str:
    head = f"{'case':34} {'size KB':>8} {'load ms':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'RSS MB':>7} {'top-1':>6} {'agree':>6} {'e2e FPS':>8}"
    rows = [head, "-" * len(head)]
    for r in results:
        if "error" in r:
            rows.append(f"{r['label']:34} {'error: ' + r['error']}")
            continue
        L, acc, pipe = r["latency_ms"], r.get("accuracy", {}), r.get("pipeline", {})
        rows.append(f"{r['label'][:34]:34} {r['size_bytes'] / 1024:8.0f} {r['load_ms']:8.1f} {L['p50']:8.2f} "
                    f"{L['p90']:8.2f} {L['p99']:8.2f} {L['mean']:8.2f} {r['peak_rss_mb']:7.1f} "
                    f"{_cell(acc.get('top1'), 6)} {_cell(r.get('agreement'), 6)} {_cell(pipe.get('fps'), 8)}")
    return "\n".join(rows)


def machine_difference(reference: dict, current: dict) -> str | None:
    """A line when the reference was measured on another CPU (latencies then compare across machines)."""
    keys = ("cpu", "isa", "cores", "arch")
    if not reference or not current or all(reference.get(k) == current.get(k) for k in keys):
        return None

    def show(m: dict) -> str:
        isa = m.get("isa")
        flags = "ISA not recorded" if isa is None else "/".join(isa) or "no int8 ISA flags"
        return f"{m.get('cpu') or '?'} ({m.get('cores')} cores, {flags})"
    return f"reference measured on {show(reference)}, this machine is {show(current)}: latency differences " \
           "include the CPU, not only the model"


def compare(results: list[dict], reference: dict, tolerance: float) -> list[str]:
    ref = {r["label"]: r for r in reference.get("results", []) if "error" not in r}
    worse = []
    for r in results:
        old = ref.get(r["label"])
        if not old or "error" in r:
            continue
        pairs = [("p50 latency", r["latency_ms"]["p50"], old["latency_ms"]["p50"], True),
                 ("peak RSS", r["peak_rss_mb"], old["peak_rss_mb"], True)]
        if "accuracy" in r and "accuracy" in old:
            pairs.append(("top-1", r["accuracy"]["top1"], old["accuracy"]["top1"], False))
        for name, now, before, lower_is_better in pairs:
            bad = now > before * (1 + tolerance) if lower_is_better else now < before * (1 - tolerance)
            if bad:
                worse.append(f"{r['label']}: {name} {now:.2f} vs reference {before:.2f} (tolerance {tolerance:.0%})")
    return worse


def plot(results: list[dict], path: Path) -> str | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed"
    ok = [r for r in results if "error" not in r]
    has_acc = any("accuracy" in r for r in ok)
    fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(13 if has_acc else 8, 0.5 * len(ok) + 2.5))
    axes = list(axes) if has_acc else [axes]
    ax = axes[0]
    ax.boxplot([r["samples_ms"] for r in ok], orientation="horizontal", showfliers=False)
    ax.set_yticks(range(1, len(ok) + 1), [r["label"] for r in ok])
    ax.set_xlabel("invoke latency (ms), box = p25..p75, whiskers 1.5 IQR")
    ax.set_title("Latency per model / runtime")
    ax.grid(axis="x", alpha=0.3)
    if has_acc:
        ax2 = axes[1]
        for r in ok:
            if "accuracy" in r:
                ax2.scatter(r["size_bytes"] / 1e6, r["accuracy"]["top1"], s=60)
                ax2.annotate(r["label"], (r["size_bytes"] / 1e6, r["accuracy"]["top1"]), fontsize=8,
                             xytext=(4, 4), textcoords="offset points")
        ax2.set_xlabel("file size (MB)")
        ax2.set_ylabel("top-1 (%)")
        ax2.set_title("Size versus top-1")
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write(path, buf.getvalue())
    return None


def main(argv=None) -> int:
    args = parse(argv)
    if not args.no_verify:
        from edge_runtime.integrity import verify_file
        from edge_runtime.metadata import MetadataError

        for m in args.model:
            try:
                if Path(m).is_file():
                    verify_file(m)
            except MetadataError as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
    cases, notes = build_cases(args)
    results = []
    for i, case in enumerate(cases):
        print(f"[{i + 1}/{len(cases)}] {case.label} ...", file=sys.stderr, flush=True)
        if not Path(case.path).is_file():
            results.append({**case.__dict__, "error": f"{case.path}: model file not found"})
            continue
        results.append(bench.run_case(case, args.runs, args.warmup, args.min_seconds, args.images,
                                      args.source if case.runtime == "tflite" else None))
    base = next((r for r in results if "accuracy" in r), None)
    for r in results:
        if base and "accuracy" in r and r is not base:
            a, b = base["accuracy"]["top1_indices"], r["accuracy"]["top1_indices"]
            r["agreement"] = 100.0 * sum(x == y for x, y in zip(a, b)) / max(len(a), 1)
        elif r is base:
            r["agreement"] = 100.0
    out = {"machine": bench.machine(), "settings": {k: str(v) for k, v in vars(args).items()},
           "notes": notes + ["each case ran in its own child process (ONNX Runtime with its default spinning pool)"],
           "results": results}
    print(table(results))
    for n in out["notes"] + ([out["machine"]["warning"]] if "warning" in out["machine"] else []):
        print(f"note: {n}")
    for r in results:
        if "error" in r:
            print(f"error: {r['label']}: {r['error']}", file=sys.stderr)
        if "pipeline" in r:
            p = r["pipeline"]
            print(f"{r['label']}: end-to-end {p['fps']:.1f} FPS over {p['frames']} frames = "
                  f"{p['ratio']:.2f} of the invoke-only rate {p['invoke_only_fps']:.1f}/s")
    if args.json:
        atomic_write(args.json, json.dumps(out, indent=1) + "\n")
    if args.csv:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["label", "runtime", "threads", "size_bytes", "compressed_bytes", "load_ms", "first_inference_ms",
                    "count", "mean", "std", "min", "p50", "p90", "p99", "max", "peak_rss_mb", "top1", "top5",
                    "agreement", "e2e_fps", "error"])
        for r in results:
            L, acc = r.get("latency_ms", {}), r.get("accuracy", {})
            w.writerow([r["label"], r["runtime"], r["threads"], r.get("size_bytes"), r.get("compressed_bytes"),
                        r.get("load_ms"), r.get("first_inference_ms"), *(L.get(k) for k in
                        ("count", "mean", "std", "min", "p50", "p90", "p99", "max")), r.get("peak_rss_mb"),
                        acc.get("top1"), acc.get("top5"), r.get("agreement"), r.get("pipeline", {}).get("fps"),
                        r.get("error", "")])
        atomic_write(args.csv, buf.getvalue())
    if args.plot:
        msg = plot(results, args.plot)
        if msg:
            print(f"note: {msg}")
    rc = 0 if all("error" not in r for r in results) else 2
    if args.reference:
        try:
            reference = json.loads(args.reference.read_text())
        except (OSError, ValueError) as e:
            print(f"error: --reference {args.reference}: {e}", file=sys.stderr)
            return 2
        note = machine_difference(reference.get("machine", {}), out["machine"])
        if note:
            print(f"note: {note}")
        worse = compare(results, reference, args.tolerance)
        for w in worse:
            print(f"regression: {w}")
        if worse and args.fail_on_regression:
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
