"""Benchmark results as a person reads them: table, CSV, comparison with a reference, plot.

Device side (numpy only; the plot needs matplotlib and is skipped with a note without it).
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from .fileio import atomic_write


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
        latency, acc, pipe = r["latency_ms"], r.get("accuracy", {}), r.get("pipeline", {})
        rows.append(f"{r['label'][:34]:34} {r['size_bytes'] / 1024:8.0f} {r['load_ms']:8.1f} {latency['p50']:8.2f} "
                    f"{latency['p90']:8.2f} {latency['p99']:8.2f} {latency['mean']:8.2f} {r['peak_rss_mb']:7.1f} "
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


def _expect(ok: bool, where: str, expected: str, got: object) -> None:
    if not ok:
        raise ValueError(f"{where}: {expected} expected, got {repr(got)[:60]}")


def _number(value: object, low: float, high: float = math.inf) -> bool:
    """A finite number from ``low`` to ``high`` (NaN and booleans are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and low <= value <= high


def check_reference(reference: object) -> dict:
    """``reference`` (the parsed JSON of a --report file) when it holds what :func:`compare` and
    :func:`machine_difference` read, every figure a finite number (a NaN would pass every comparison).

    Raises:
        ValueError: the first part that is not as a report has it ("results[0].latency_ms.p50: ... expected").
    """
    if not isinstance(reference, dict):
        raise ValueError(f"a JSON object expected (a --report file of python -m tools.benchmark), got a "
                         f"{type(reference).__name__}")
    machine = reference.get("machine", {})
    isa = machine.get("isa") if isinstance(machine, dict) else None
    names = isa is None or isinstance(isa, list) and all(isinstance(f, str) for f in isa)
    _expect(isinstance(machine, dict) and names, "machine", "an object, its isa a list of names", machine)
    results = reference.get("results")
    _expect(isinstance(results, list), "results", "a list of cases", results)
    for i, r in enumerate(results):
        _expect(isinstance(r, dict), f"results[{i}]", "a case (an object)", r)
        if "error" in r:  # a case that failed: never compared
            continue
        _expect(isinstance(r.get("label"), str), f"results[{i}].label", "a case label (text)", r.get("label"))
        latency = r.get("latency_ms")
        _expect(isinstance(latency, dict), f"results[{i}].latency_ms", "an object of percentiles", latency)
        p50 = latency.get("p50")
        _expect(_number(p50, 0) and p50 > 0, f"results[{i}].latency_ms.p50", "a latency above 0 ms", p50)
        rss = r.get("peak_rss_mb")
        _expect(_number(rss, 0) and rss > 0, f"results[{i}].peak_rss_mb", "a memory size above 0 MB", rss)
        if "accuracy" in r:
            accuracy = r["accuracy"]
            _expect(isinstance(accuracy, dict), f"results[{i}].accuracy", "an object", accuracy)
            _expect(_number(accuracy.get("top1"), 0, 100), f"results[{i}].accuracy.top1", "a percentage from 0 to 100",
                    accuracy.get("top1"))
    return reference


def compare(results: list[dict], reference: dict, tolerance: float) -> tuple[list[str], int]:
    """(the regressions beyond ``tolerance``, how many cases had a reference case of the same label)."""
    ref = {r["label"]: r for r in reference.get("results", []) if "error" not in r}
    worse, compared = [], 0
    for r in results:
        old = ref.get(r["label"])
        if not old or "error" in r:
            continue
        compared += 1
        pairs = [("p50 latency", r["latency_ms"]["p50"], old["latency_ms"]["p50"], True),
                 ("peak RSS", r["peak_rss_mb"], old["peak_rss_mb"], True)]
        if "accuracy" in r and "accuracy" in old:
            pairs.append(("top-1", r["accuracy"]["top1"], old["accuracy"]["top1"], False))
        for name, now, before, lower_is_better in pairs:
            bad = now > before * (1 + tolerance) if lower_is_better else now < before * (1 - tolerance)
            if bad:
                worse.append(f"{r['label']}: {name} {now:.2f} vs reference {before:.2f} (tolerance {tolerance:.0%})")
    return worse, compared


def plot(results: list[dict], path: Path) -> str | None:
    try:
        from .plotting import matplotlib_agg

        matplotlib_agg()
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
        points: dict[tuple[float, float], list[str]] = {}  # cases at one point (a file on 1 and 2 threads) share a label
        for r in ok:
            if "accuracy" in r:
                points.setdefault((r["size_bytes"] / 1024, r["accuracy"]["top1"]), []).append(r["label"])
        for (kb, top1), labels in points.items():
            ax2.scatter(kb, top1, s=60)
            ax2.annotate("\n".join(labels), (kb, top1), fontsize=8, xytext=(4, 4), textcoords="offset points")
        ax2.margins(x=0.25, y=0.15)  # room for the labels
        ax2.set_xlabel("file size (KB, as in the table)")
        ax2.set_ylabel("top-1 (%)")
        ax2.set_title("Size versus top-1")
        ax2.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write(path, buf.getvalue())
    return None


def add_agreement(results: list[dict]) -> str | None:
    """Top-1 agreement of every case with the first case, the first model's (in place). When that
    case measured no accuracy (it failed), no agreement is given: returns a note saying so."""
    base = results[0] if results else None
    if base is None or "accuracy" not in base:
        if any("accuracy" in r for r in results):
            return (f"agreement not measured: the first case ({base['label']}) has no accuracy "
                    f"({base.get('error', 'not measured')})")
        return None
    a = base["accuracy"]["top1_indices"]
    for r in results:
        if "accuracy" in r:
            b = r["accuracy"]["top1_indices"]
            r["agreement"] = 100.0 * sum(x == y for x, y in zip(a, b)) / max(len(a), 1)
    return None


CSV_COLUMNS = ["label", "runtime", "threads", "size_bytes", "compressed_bytes", "load_ms", "first_inference_ms",
               "count", "mean", "std", "min", "p50", "p90", "p99", "max", "peak_rss_mb", "top1", "top5",
               "agreement", "e2e_fps", "error"]


def to_csv(results: list[dict]) -> str:
    """One row per case (figures not measured are empty)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for r in results:
        latency, acc = r.get("latency_ms", {}), r.get("accuracy", {})
        w.writerow([r["label"], r["runtime"], r["threads"], r.get("size_bytes"), r.get("compressed_bytes"),
                    r.get("load_ms"), r.get("first_inference_ms"),
                    *(latency.get(k) for k in ("count", "mean", "std", "min", "p50", "p90", "p99", "max")),
                    r.get("peak_rss_mb"), acc.get("top1"), acc.get("top5"), r.get("agreement"),
                    r.get("pipeline", {}).get("fps"), r.get("error", "")])
    return buf.getvalue()
